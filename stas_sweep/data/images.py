"""Static image data sets on disk: CIFAR-10/100 (torchvision's format) and ImageNet (class folders).

CIFAR-10, ``root`` holds torchvision's extracted python version of the data set::

    root/cifar-10-batches-py/{data_batch_1, ..., data_batch_5, test_batch, batches.meta}

CIFAR-100::

    root/cifar-100-python/{train, test, meta}

(``root`` may also be the ``cifar-10-batches-py`` / ``cifar-100-python`` folder itself.)
``download=True`` lets torchvision fetch and extract the official archive into ``root``.
By default every file's MD5 is checked against the official release, as torchvision does;
``verify_checksums=False`` only requires the files to exist (for a locally written or
re-packed copy in the same pickle layout, e.g. the tests' tiny data sets).

ImageNet, ``root`` holds one folder per class in both splits (torchvision ``ImageFolder``)::

    root/train/<wnid>/*.JPEG
    root/val/<wnid>/*.JPEG

``train`` and ``val`` must list the same class folders, so that a label means the same
class in both (``ImageFolder`` numbers the sorted folder names).
"""

from __future__ import annotations

import os
from pathlib import Path

from torchvision.datasets import CIFAR10, CIFAR100, ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS

from .errors import DataError, DatasetNotFoundError

__all__ = ["LocalCIFAR10", "LocalCIFAR100", "cifar_root", "check_cifar", "check_imagenet", "build_cifar",
           "build_imagenet"]


class _ChecksumSwitch:
    """Mixin for torchvision's CIFAR: ``verify_checksums=False`` checks existence instead of MD5.

    torchvision's ``check_integrity(path, md5=None)`` only tests that the file exists; the
    instance copies of ``train_list`` / ``test_list`` / ``meta`` get ``md5=None``. Everything
    else (reading, downloading) is torchvision's own code.
    """

    def __init__(self, root, *args, verify_checksums: bool = True, **kwargs) -> None:
        if not verify_checksums:
            cls = type(self)
            self.train_list = [[f, None] for f, _ in cls.train_list]
            self.test_list = [[f, None] for f, _ in cls.test_list]
            self.meta = {**cls.meta, "md5": None}
        super().__init__(root, *args, **kwargs)


class LocalCIFAR10(_ChecksumSwitch, CIFAR10):
    """torchvision ``CIFAR10`` with a ``verify_checksums`` switch (default True: torchvision's behaviour)."""


class LocalCIFAR100(_ChecksumSwitch, CIFAR100):
    """torchvision ``CIFAR100`` with a ``verify_checksums`` switch (default True: torchvision's behaviour)."""


_CIFAR = {"cifar10": LocalCIFAR10, "cifar100": LocalCIFAR100}


def _cifar_files(cls) -> list[str]:
    return [f for f, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]


def cifar_root(name: str, root: str | Path) -> Path:
    """The torchvision ``root`` for ``root``: accepts the parent or the ``cifar-...`` folder itself."""
    root = Path(root).expanduser().absolute()
    return root.parent if root.name == _CIFAR[name].base_folder else root


def _cifar_layout(name: str, root: Path) -> str:
    cls = _CIFAR[name]
    return f"{root}/{cls.base_folder}/{{{', '.join(_cifar_files(cls))}}}  (torchvision's python pickles)"


def _cifar_how(name: str, root: Path) -> str:
    cls = _CIFAR[name]
    return (
        f"pass download=True (data config `download: true`) to let torchvision fetch {cls.url}\n"
        f"or download {cls.filename} yourself and extract it in {root} (tar xzf {cls.filename})"
    )


def check_cifar(name: str, root: str | Path, download: bool) -> Path:
    """Raise :class:`DatasetNotFoundError` unless the CIFAR files exist (or ``download`` will fetch them)."""
    root = cifar_root(name, root)
    if download:
        return root
    folder = root / _CIFAR[name].base_folder
    missing = [f for f in _cifar_files(_CIFAR[name]) if not (folder / f).is_file()]
    if missing:
        problem = (f"folder {folder} does not exist" if not folder.is_dir()
                   else f"missing {', '.join(missing)} in {folder}")
        raise DatasetNotFoundError(name, root, problem, _cifar_layout(name, root), _cifar_how(name, root))
    return root


def build_cifar(name: str, root: str | Path, download: bool, verify_checksums: bool, train_tf, eval_tf):
    """(train, val) torchvision CIFAR data sets (the official 50k/10k split), after :func:`check_cifar`."""
    root = check_cifar(name, root, download)
    cls = _CIFAR[name]
    if download:
        root.mkdir(parents=True, exist_ok=True)
    try:
        train = cls(root, train=True, transform=train_tf, download=download, verify_checksums=verify_checksums)
        val = cls(root, train=False, transform=eval_tf, download=False, verify_checksums=verify_checksums)
    except RuntimeError as err:  # torchvision: "Dataset not found or corrupted" (MD5 mismatch)
        if "corrupted" not in str(err):
            raise
        raise DatasetNotFoundError(
            name, root,
            f"the files in {root / cls.base_folder} do not match the official release's MD5 checksums "
            f"(torchvision: {err}). For a copy you made or re-packed yourself in the same pickle layout, "
            f"pass verify_checksums=False.",
            _cifar_layout(name, root), _cifar_how(name, root),
        ) from None
    return train, val


_IMAGENET_LAYOUT = """\
{root}/train/<class folder, e.g. n01440764>/<images: .JPEG/.jpg/.png ...>
{root}/val/<the same class folders>/<images>"""

_IMAGENET_HOW = """\
ImageNet cannot be downloaded automatically: get ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar
from https://image-net.org (registration needed), extract the training archive into train/ (one folder
per class: untar each class tar inside it) and sort the 50,000 validation images into val/<class>/
folders (e.g. with the widely used valprep.sh script); any other data set in the same class-folder
layout works too."""


def _class_folders(split: Path) -> list[str]:
    with os.scandir(split) as it:
        return sorted(e.name for e in it if e.is_dir())


def _has_image(folder: Path) -> bool:
    for _, _, files in os.walk(folder, followlinks=True):
        if any(f.lower().endswith(IMG_EXTENSIONS) for f in files):
            return True
    return False


def check_imagenet(root: str | Path, name: str = "imagenet") -> Path:
    """Raise :class:`DatasetNotFoundError` unless ``root/train`` and ``root/val`` hold the same class folders."""
    root = Path(root).expanduser().absolute()
    layout, how = _IMAGENET_LAYOUT.format(root=root), _IMAGENET_HOW

    def fail(problem: str):
        raise DatasetNotFoundError(name, root, problem, layout, how)

    classes = {}
    for split in ("train", "val"):
        folder = root / split
        if not folder.is_dir():
            fail(f"folder {folder} does not exist")
        classes[split] = _class_folders(folder)
        if not classes[split]:
            fail(f"{folder} has no class folders (images lying directly in it are not labelled; "
                 f"sort them into one folder per class)")
        empty = [c for c in classes[split] if not _has_image(folder / c)]
        if empty:
            fail(f"class folder(s) without images in {folder}: {', '.join(empty[:5])}"
                 + (f" and {len(empty) - 5} more" if len(empty) > 5 else ""))
    if classes["train"] != classes["val"]:
        only_t = sorted(set(classes["train"]) - set(classes["val"]))
        only_v = sorted(set(classes["val"]) - set(classes["train"]))
        fail(f"train/ and val/ have different class folders (only in train: {only_t[:5]}, only in val: "
             f"{only_v[:5]}), so the labels would not agree")
    return root


def build_imagenet(root: str | Path, train_tf, eval_tf) -> tuple[ImageFolder, ImageFolder]:
    """(train, val) ``ImageFolder`` data sets; call :func:`check_imagenet` first (not repeated here:
    it walks every class folder)."""
    root = Path(root).expanduser().absolute()
    return (ImageFolder(str(root / "train"), transform=train_tf, loader=load_image),
            ImageFolder(str(root / "val"), transform=eval_tf, loader=load_image))


def load_image(path: str):
    """torchvision's default image loader, with an unreadable or corrupt file named in a
    :class:`DataError` instead of a PIL traceback from inside the training loop."""
    from torchvision.datasets.folder import default_loader

    try:
        return default_loader(path)
    except (OSError, ValueError, SyntaxError) as e:  # PIL: UnidentifiedImageError (OSError), truncated files
        raise DataError(f"image {path} cannot be read ({type(e).__name__}: {e}); replace or delete it") from None
