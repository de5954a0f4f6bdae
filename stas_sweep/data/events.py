"""Event-camera data sets through spikingjelly: CIFAR10-DVS and DVS128 Gesture.

Items are ``(frames, label)`` with ``frames`` a float32 ``[T, 2, S, S]`` tensor of event
counts (2 polarities), integrated by spikingjelly with ``frames_number=T,
split_by='number'`` (each frame holds ~1/T of the sample's events), then resized to
``img_size`` if that is not 128. A batch is ``[B, T, 2, S, S]``, which the models take as
frames. The split of a sample is fixed by the data, not by a seed.

How spikingjelly 2.0 builds a data set under ``root`` (``datasets/base.py``), and what is
therefore checked first, before spikingjelly is called:

1. ``root/events_np/`` (one ``.npz`` with arrays ``t, x, y, p`` per sample). If this folder
   exists, spikingjelly uses it as is and never looks at the raw files; otherwise it
   verifies the MD5 of every file in ``root/download/`` (downloading missing ones only for
   CIFAR10-DVS, *deleting* files whose MD5 is wrong), extracts them into ``root/extract/``
   and converts them into ``events_np/``.
2. ``root/frames_number_{T}_split_by_number/``: the frames for this T, integrated once from
   ``events_np/`` and reused afterwards (a new T makes a new folder).
3. While step 1 or 2 runs, spikingjelly keeps a marker file ``events_np.building`` /
   ``frames_number_{T}_split_by_number.building`` next to the folder; if it is interrupted,
   the marker stays and every later call refuses to start.

So a usable ``root`` has either a complete ``events_np/`` or all raw files (with the right
MD5) in ``download/`` (or, for CIFAR10-DVS, ``download=True`` and network access), and no
leftover marker. Anything else raises :class:`DatasetNotFoundError` naming what to fix,
and nothing under ``root`` is created or changed. Note that preprocessing writes
``extract/``, ``events_np/`` and the frames folder under ``root``: two processes must not
build the same frames at the same time (build once before launching parallel trials).

CIFAR10-DVS layout (10 classes x 1,000 samples, no official split)::

    root/download/{airplane,automobile,bird,cat,deer,dog,frog,horse,ship,truck}.zip   (raw, figshare)
    root/events_np/<class>/cifar10_<class>_<i>.npz                                   (made from them)

It is split 9:1 inside each class exactly as the reference code's
``split_to_train_test_set(0.9, dataset, 10)`` (``random_split=False``): the first
``ceil(0.9 n)`` samples of each class in file-name order train, the rest validate. The
indices are computed from the file list, without loading every sample.

DVS128 Gesture layout (11 classes; the official per-subject split of
``trials_to_train.txt`` / ``trials_to_test.txt``; label ``k`` is folder ``k``, i.e. gesture
``k + 1`` of ``gesture_mapping.csv``, see :func:`_numeric_labels`)::

    root/download/{DvsGesture.tar.gz, gesture_mapping.csv, LICENSE.txt, README.txt}  (raw, IBM)
    root/events_np/{train,test}/<label 0..10>/<user>_<lighting>_<k>.npz               (made from them)
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Callable, Sequence

from torch.utils.data import Dataset

from .errors import DataError, DatasetNotFoundError
from .recipes import TensorAugment

__all__ = ["EVENT_DATASETS", "check_events", "build_events", "per_class_split", "TransformedSubset"]

_EXT = (".npz", ".npy")

CIFAR10_DVS_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
GESTURE_CLASSES = tuple(str(i) for i in range(11))

EVENT_DATASETS = {
    "cifar10-dvs": {"num_classes": 10, "splits": ("",), "classes": CIFAR10_DVS_CLASSES},
    "dvs128-gesture": {"num_classes": 11, "splits": ("train", "test"), "classes": GESTURE_CLASSES},
}


def _spikingjelly_class(name: str):
    if name == "cifar10-dvs":
        from spikingjelly.datasets.cifar10_dvs import CIFAR10DVS
        return CIFAR10DVS
    from spikingjelly.datasets.dvs128_gesture import DVS128Gesture
    return DVS128Gesture


def frames_dir_name(timesteps: int) -> str:
    """spikingjelly's folder for frames integrated with ``frames_number=timesteps, split_by='number'``."""
    return f"frames_number_{timesteps}_split_by_number"


def _layout(name: str, root: Path, timesteps: int, resources: Sequence[str]) -> str:
    raw = f"{root}/download/{{{', '.join(resources)}}}"
    if name == "cifar10-dvs":
        events = f"{root}/events_np/<class: {', '.join(CIFAR10_DVS_CLASSES)}>/cifar10_<class>_<i>.npz"
    else:
        events = f"{root}/events_np/{{train,test}}/<label 0..10>/<user>_<lighting>_<k>.npz"
    return (
        f"either the raw files  {raw}\n"
        f"or the converted events  {events}  (arrays t, x, y, p)\n"
        f"spikingjelly then writes {root}/extract/ (from the raw files), {root}/events_np/ and "
        f"{root}/{frames_dir_name(timesteps)}/"
    )


def _how(name: str, root: Path, resources: Sequence[tuple[str, str, str]]) -> str:
    if name == "cifar10-dvs":
        urls = "\n".join(f"  {f}: {url}" for f, url, _ in resources)
        return (
            "pass download=True (data config `download: true`) and spikingjelly fetches the 10 zips from figshare,\n"
            f"or download them yourself (https://figshare.com/articles/dataset/CIFAR10-DVS_New/4724671) into "
            f"{root}/download/:\n{urls}\n"
            "or copy an events_np/ folder that spikingjelly made elsewhere into the root."
        )
    url = resources[0][1]
    files = ", ".join(f for f, _, _ in resources)
    return (
        "DVS128 Gesture cannot be downloaded automatically (IBM Box needs a browser): download\n"
        f"  {files}\nfrom {url}\n"
        f"into {root}/download/ (do not extract the tar.gz; spikingjelly does),\n"
        "or copy an events_np/ folder that spikingjelly made elsewhere into the root."
    )


def _complete(folder: Path, splits: Sequence[str], classes: Sequence[str]) -> str | None:
    """None if every ``folder/<split>/<class>`` has a sample file; else what is missing."""
    missing, empty = [], []
    for split in splits:
        for c in classes:
            d = folder / split / c if split else folder / c
            if not d.is_dir():
                missing.append(str(d.relative_to(folder)))
            elif not any(p.suffix in _EXT for p in d.iterdir()):
                empty.append(str(d.relative_to(folder)))
    if not missing and not empty:
        return None
    parts = []
    if missing:
        parts.append(f"missing class folder(s) {', '.join(missing[:6])}" + (" ..." if len(missing) > 6 else ""))
    if empty:
        parts.append(f"class folder(s) without .npz files {', '.join(empty[:6])}" + (" ..." if len(empty) > 6 else ""))
    return " and ".join(parts)


def _md5(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def check_events(name: str, root: str | Path, timesteps: int, download: bool = False) -> Path:
    """Raise :class:`DatasetNotFoundError` unless spikingjelly can build ``name`` under ``root``
    without downloading (or, with ``download=True``, by downloading: CIFAR10-DVS only).

    Reads only; creates nothing. Returns the absolute root.
    """
    root = Path(root).expanduser().absolute()
    spec = EVENT_DATASETS[name]
    sj = _spikingjelly_class(name)
    resources = sj.resource_url_md5()
    layout = _layout(name, root, timesteps, [f for f, _, _ in resources])
    how = _how(name, root, resources)

    def fail(problem: str):
        raise DatasetNotFoundError(name, root, problem, layout, how)

    frames = root / frames_dir_name(timesteps)
    for folder in (root / "events_np", frames):
        marker = folder.with_name(folder.name + ".building")
        if marker.exists():
            also = f" (and {root / 'extract'}, which may be partial)" if folder.name == "events_np" else ""
            fail(f"spikingjelly's marker {marker} is left over from an interrupted preprocessing run (or another "
                 f"process is building it right now). If no other process is running, delete {folder} and "
                 f"{marker}{also} and retry.")

    events_np = root / "events_np"
    if events_np.is_dir():
        if frames.is_dir():  # frames already integrated: spikingjelly reads only them
            problem = _complete(frames, spec["splits"], spec["classes"])
            if problem:
                fail(f"the frames folder {frames} is incomplete ({problem}); delete it to rebuild it from events_np/")
        else:
            problem = _complete(events_np, spec["splits"], spec["classes"])
            if problem:
                fail(f"{events_np} is incomplete: {problem}")
        return root

    download_root = root / "download"
    missing = [f for f, _, _ in resources if not (download_root / f).is_file()]
    if missing:
        if download and sj.downloadable():
            return root  # spikingjelly downloads what is missing
        problem = f"no {events_np} and " + (
            f"no {download_root}" if not download_root.is_dir() else f"missing {', '.join(missing)} in {download_root}"
        )
        if download:
            problem += " (download=True cannot help: this data set is not downloadable automatically)"
        fail(problem)
    # spikingjelly deletes (and, for CIFAR10-DVS, re-downloads) any raw file whose MD5 is wrong: check first.
    bad = [f for f, _, md5 in resources if _md5(download_root / f) != md5]
    if bad:
        fail(f"no {events_np}, and the MD5 of {', '.join(bad)} in {download_root} does not match the official "
             f"release (truncated or different download?); spikingjelly would delete these files. Replace them.")
    return root


def per_class_split(targets: Sequence[int], train_ratio: float, num_classes: int) -> tuple[list[int], list[int]]:
    """spikingjelly's ``split_to_train_test_set(train_ratio, ds, num_classes)`` (``random_split=False``)
    computed from the labels: the first ``ceil(n_c * train_ratio)`` indices of each class train."""
    by_class: list[list[int]] = [[] for _ in range(num_classes)]
    for i, y in enumerate(targets):
        by_class[int(y)].append(i)
    train, val = [], []
    for idx in by_class:
        k = math.ceil(len(idx) * train_ratio)
        train.extend(idx[:k])
        val.extend(idx[k:])
    return train, val


class TransformedSubset(Dataset):
    """``Subset`` of ``dataset`` at ``indices`` with its own ``transform`` on the sample.

    Lets the train and validation parts of one folder get different transforms (the
    reference scripts augment both parts alike).
    """

    def __init__(self, dataset: Dataset, indices: Sequence[int], transform: Callable | None = None) -> None:
        self.dataset, self.indices, self.transform = dataset, list(indices), transform

    @property
    def targets(self) -> list[int]:
        base = self.dataset.targets
        return [int(base[i]) for i in self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        x, y = self.dataset[self.indices[i]]
        return (self.transform(x) if self.transform is not None else x), y


def build_events(name: str, root: str | Path, timesteps: int, img_size: int, recipe: dict, augment: bool,
                 download: bool = False) -> tuple[Dataset, Dataset]:
    """(train, val) frame data sets of ``name`` after :func:`check_events`."""
    if not isinstance(timesteps, int) or timesteps <= 0:
        raise DataError(f"timesteps must be a positive int, got {timesteps!r}")
    root = check_events(name, root, timesteps, download)
    if download:
        root.mkdir(parents=True, exist_ok=True)  # spikingjelly writes its marker into root
    train_tf = TensorAugment(img_size, recipe["hflip"], recipe["translate"], augment=augment)
    eval_tf = TensorAugment(img_size, augment=False)
    sj = _spikingjelly_class(name)
    kw = dict(data_type="frame", frames_number=timesteps, split_by="number")
    with _frames_built_or_removed(name, root, timesteps):
        if name == "cifar10-dvs":
            base = sj(str(root), **kw)
            train_idx, val_idx = per_class_split(base.targets, 0.9, EVENT_DATASETS[name]["num_classes"])
            return TransformedSubset(base, train_idx, train_tf), TransformedSubset(base, val_idx, eval_tf)
        train = _numeric_labels(sj(str(root), train=True, transform=train_tf, **kw))
        val = _numeric_labels(sj(str(root), train=False, transform=eval_tf, **kw))
        return train, val


def _unreadable_events(events_np: Path) -> list[tuple[Path, str]]:
    """The ``.npz`` files under ``events_np`` that numpy cannot read as arrays ``t, x, y, p``."""
    import numpy as np

    bad = []
    for f in sorted(events_np.rglob("*.npz")):
        try:
            with np.load(f) as z:
                missing = {"t", "x", "y", "p"} - set(z.files)
                for k in z.files:
                    z[k]  # reads (and decompresses) every array
            if missing:
                bad.append((f, f"no array(s) {', '.join(sorted(missing))}"))
        except Exception as e:  # noqa: BLE001 - any failure to read is what we report
            bad.append((f, f"{type(e).__name__}: {e}"))
    return bad


class _frames_built_or_removed:
    """Around spikingjelly's frame integration: if it fails, remove the partial frames folder
    and its ``.building`` marker (spikingjelly leaves both, and every later call then refuses
    to start), and when the cause is an unreadable ``.npz`` raise :class:`DataError` naming it."""

    def __init__(self, name: str, root: Path, timesteps: int) -> None:
        self.name, self.root = name, Path(root)
        self.frames = self.root / frames_dir_name(timesteps)
        self.marker = self.frames.with_name(self.frames.name + ".building")
        self.existed = self.frames.exists()

    def __enter__(self):
        return self

    def __exit__(self, kind, err, tb) -> bool:
        if err is None or self.existed or not isinstance(err, Exception):
            return False
        import shutil

        if self.frames.exists():
            shutil.rmtree(self.frames, ignore_errors=True)
        self.marker.unlink(missing_ok=True)
        bad = _unreadable_events(self.root / "events_np")
        if bad:
            f, why = bad[0]
            more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
            raise DataError(f"{self.name}: event file {f} cannot be read ({why}){more}; replace or delete it "
                            f"and retry (the partial {self.frames.name} folder was removed)") from None
        return False


def _numeric_labels(ds):
    """Label = the gesture number of its folder (0..10), not the folder's rank in string order.

    torchvision's ``DatasetFolder`` numbers sorted folder names, and ``'10' < '2'``: plain
    spikingjelly gives folder ``10`` label 2, ``2`` label 3 ... (a consistent permutation,
    harmless for accuracy, confusing for per-class plots). Here label ``k`` is folder ``k``,
    i.e. gesture ``k + 1`` of ``gesture_mapping.csv``.
    """
    rank_to_label = [int(c) for c in ds.classes]
    ds.samples = sorted(((path, rank_to_label[t]) for path, t in ds.samples), key=lambda s: (s[1], s[0]))
    ds.imgs = ds.samples
    ds.targets = [t for _, t in ds.samples]
    ds.classes = sorted(ds.classes, key=int)
    ds.class_to_idx = {c: int(c) for c in ds.classes}
    return ds
