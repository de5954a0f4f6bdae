"""Data sets, recipes, loaders and Mixup (stas_sweep.data), all offline.

Every on-disk data set is written here, tiny, in the real format its library reads:
torchvision's CIFAR pickles, ImageFolder class folders, spikingjelly's ``events_np``
``.npz`` files (t, x, y, p) and, for the raw path, the CIFAR10-DVS ``.aedat`` zips and the
DVS128 Gesture ``DvsGesture.tar.gz`` (AEDAT 3.1 + label csv), with spikingjelly's MD5
table patched to the test files' checksums.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import random
import struct
import tarfile
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from stas_sweep.data import (
    CIFAR_MEAN, CIFAR_STD, DATASET_NAMES, DataInfo, DatasetNotFoundError, EpochDataLoader, build_datasets,
    build_loaders, build_mixup, epoch_seed,
)
from stas_sweep.data.events import per_class_split

CIFAR10_DVS_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def tree(path: Path) -> list[str]:
    """Everything under ``path`` (and whether it exists), to prove nothing was created."""
    if not path.exists():
        return ["missing"]
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------------------- digits
def test_digits_sizes_shapes_range_info():
    train, val, info = build_datasets("digits", augment=False)
    assert info == DataInfo("digits", 10, 1, 32, (0.0,), (1.0,), None)
    assert (len(train), len(val)) == (1437, 360)  # 80/20 of 1797
    x, y = train[0]
    assert x.shape == (1, 32, 32) and x.dtype == torch.float32 and isinstance(y, int)
    for ds in (train, val):
        assert ds.images.shape == (len(ds), 1, 32, 32)
        assert ds.images.min() >= 0.0 and ds.images.max() <= 1.0
        assert ds.images.max() > 0.99  # scaled by 16, not by 255
        assert set(ds.targets.tolist()) == set(range(10))
    # item i is sklearn image indices[i], divided by 16 and bilinearly upsampled 8 -> 32
    from sklearn.datasets import load_digits
    orig = torch.from_numpy(load_digits().images[int(train.indices[5])]).float() / 16
    up = torch.nn.functional.interpolate(orig[None, None], size=(32, 32), mode="bilinear", align_corners=False)[0]
    assert torch.allclose(train.images[5], up) and torch.equal(train[5][0], train.images[5])
    assert train[5][1] == int(load_digits().target[int(train.indices[5])])
    small = build_datasets("digits", img_size=16)[1]
    assert small[0][0].shape == (1, 16, 16)


def test_digits_fixed_stratified_split():
    a_train, a_val, _ = build_datasets("digits")
    b_train, b_val, _ = build_datasets("digits", img_size=8, augment=False)
    assert torch.equal(a_train.indices, b_train.indices) and torch.equal(a_val.indices, b_val.indices)
    assert torch.equal(a_train.targets, b_train.targets)
    idx = set(a_train.indices.tolist())
    assert not idx & set(a_val.indices.tolist()) and len(idx | set(a_val.indices.tolist())) == 1797
    from sklearn.datasets import load_digits
    total = Counter(load_digits().target.tolist())
    val_counts = Counter(a_val.targets.tolist())
    for c in range(10):  # stratified: every class is 20 % (+-1) in val
        assert abs(val_counts[c] - 0.2 * total[c]) <= 1, (c, val_counts[c], total[c])


def test_digits_are_scikit_learns_file_and_split_without_importing_it():
    """The file read with numpy equals ``load_digits()``, the stored split equals scikit-learn's
    ``train_test_split``, and building the data set does not import scikit-learn."""
    import subprocess
    import sys

    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from stas_sweep.data.digits import DIGITS_SPLIT_SEED, DIGITS_VAL_FRACTION, digits_split, load_digits_arrays

    images, labels = load_digits_arrays()
    ref = load_digits()
    assert np.array_equal(images, ref.images) and np.array_equal(labels, ref.target)
    train_idx, val_idx = train_test_split(np.arange(len(labels)), test_size=DIGITS_VAL_FRACTION, stratify=labels,
                                          random_state=DIGITS_SPLIT_SEED)
    ours = digits_split()
    assert np.array_equal(ours[0], np.sort(train_idx)) and np.array_equal(ours[1], np.sort(val_idx))
    code = ("import sys; from stas_sweep.data import build_datasets; build_datasets('digits', img_size=8); "
            "print('sklearn' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_digits_augmentation_is_seeded_shift():
    train, _, _ = build_datasets("digits")  # translate 1/16 of 32 -> shifts of up to 2 px
    torch.manual_seed(3)
    a = [train[i][0] for i in range(20)]
    torch.manual_seed(3)
    b = [train[i][0] for i in range(20)]
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert any(not torch.equal(u, train.images[i]) for i, u in enumerate(a))  # something moved
    for i, u in enumerate(a):  # each is the stored image shifted by <= 2 px with zero fill
        assert u.min() >= 0 and u.max() <= 1
        img = train.images[i]
        padded = torch.nn.functional.pad(img, (2, 2, 2, 2))
        assert any(torch.equal(u, padded[:, 2 - dy:34 - dy, 2 - dx:34 - dx])
                   for dx in range(-2, 3) for dy in range(-2, 3))


def test_digits_canvas_is_the_digits_at_seeded_places_on_an_empty_canvas():
    from stas_sweep.data.digits import DigitsCanvasDataset, DigitsDataset, canvas_positions

    train, val, info = build_datasets("digits-canvas", augment=False)
    assert info == DataInfo("digits-canvas", 10, 1, 32, (0.0,), (1.0,), None)
    plain_train, plain_val, _ = build_datasets("digits", augment=False)
    for ds, plain in ((train, plain_train), (val, plain_val)):  # the same fixed split and labels
        assert torch.equal(ds.indices, plain.indices) and torch.equal(ds.targets, plain.targets)
        assert ds.images.shape == (len(ds), 1, 32, 32) and ds.images.dtype == torch.float32
    x, y = train[7]
    assert x.shape == (1, 32, 32) and y == int(plain_train.targets[7])
    # each image is the 16 px digit at its position from the seed, zero everywhere else
    digits16 = DigitsDataset(True, 16).images
    positions = canvas_positions(32, 16, seed=0)
    assert torch.equal(train.positions, torch.from_numpy(positions[train.indices.numpy()]))
    for i in range(0, len(train), 97):
        r, c = train.positions[i].tolist()
        assert torch.equal(train.images[i, :, r:r + 16, c:c + 16], digits16[i])
        outside = train.images[i].clone()
        outside[:, r:r + 16, c:c + 16] = 0
        assert not outside.any()
    assert len({tuple(p) for p in train.positions.tolist()}) > 100  # places vary from digit to digit
    assert train.positions.min() == 0 and train.positions.max() == 16  # every place where the digit fits
    # the same seed gives the same canvases in another build; another seed moves the digits
    again = DigitsCanvasDataset(False, 32)
    assert torch.equal(again.images, val.images) and torch.equal(again.positions, val.positions)
    assert not torch.equal(DigitsCanvasDataset(False, 32, seed=1).positions, val.positions)
    small = DigitsCanvasDataset(False, 24)  # the digit takes half the side: 12 px on 24
    assert small.images.shape[-2:] == (24, 24) and small.positions.max() <= 12 and small.digit_size == 12


# --------------------------------------------------------------------------------------- loaders
def _epoch(loader):
    return [(x.clone(), y.clone()) for x, y in loader]


def _same(e1, e2):
    return len(e1) == len(e2) and all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(e1, e2))


def test_loaders_reproduce_epochs_and_leave_global_rng_alone():
    train, val, _ = build_datasets("digits")
    sub = torch.utils.data.Subset(train, range(96))
    tl, vl = build_loaders(sub, val, batch_size=32, seed=7)
    assert isinstance(tl, EpochDataLoader)
    torch.manual_seed(0)
    state = torch.get_rng_state()
    epochs = [_epoch(tl) for _ in range(3)]  # epochs 0, 1, 2 in a row
    assert torch.equal(torch.get_rng_state(), state)  # loading used its own RNG streams
    assert len(epochs[0]) == 3 and epochs[0][0][0].shape == (32, 1, 32, 32)
    assert not _same(epochs[0], epochs[1])
    resumed, _ = build_loaders(sub, val, batch_size=32, seed=7, start_epoch=2)
    torch.manual_seed(123)  # whatever the trainer did before does not matter
    assert _same(_epoch(resumed), epochs[2])
    tl.set_epoch(1)
    assert _same(_epoch(tl), epochs[1])
    other_seed, _ = build_loaders(sub, val, batch_size=32, seed=8)
    assert not _same(_epoch(other_seed), epochs[0])
    # every sample once per epoch; val in order and complete
    labels = torch.cat([y for _, y in epochs[0]])
    assert sorted(labels.tolist()) == sorted(train.targets[:96].tolist())
    assert torch.equal(torch.cat([y for _, y in vl]), val.targets)
    assert epoch_seed(0, 1) != epoch_seed(1, 0)
    with pytest.raises(ValueError, match="fewer than batch_size"):
        build_loaders(torch.utils.data.Subset(train, range(5)), val, batch_size=8)


def test_loaders_reproducible_with_workers():
    train, val, _ = build_datasets("digits")
    sub = torch.utils.data.Subset(train, range(32))
    a, _ = build_loaders(sub, val, batch_size=16, workers=1, seed=1, start_epoch=4)
    b, _ = build_loaders(sub, val, batch_size=16, workers=1, seed=1, start_epoch=4)
    assert _same(_epoch(a), _epoch(b))


# --------------------------------------------------------------------------------------- mixup
def test_build_mixup():
    from timm.data import Mixup

    assert build_mixup(0.0, 0.0, 0.1, 10) is None
    m = build_mixup(0.5, 0.0, 0.1, 100)  # the CIFAR recipe
    assert isinstance(m, Mixup)
    assert (m.mixup_alpha, m.cutmix_alpha, m.label_smoothing, m.num_classes) == (0.5, 0.0, 0.1, 100)
    assert (m.mix_prob, m.switch_prob, m.mode) == (1.0, 0.5, "batch")
    x, y = torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    xm, ym = m(x.clone(), y)
    assert xm.shape == x.shape and ym.shape == (4, 100) and torch.allclose(ym.sum(1), torch.ones(4))
    c = build_mixup(0.0, 1.0, 0.0, 11, prob=1.0)  # CutMix on event frames [B, T, C, H, W]
    frames = torch.arange(2 * 3 * 2 * 16 * 16, dtype=torch.float32).reshape(2, 3, 2, 16, 16)
    np.random.seed(0)
    fm, ym = c(frames.clone(), torch.tensor([1, 2]))
    assert fm.shape == frames.shape
    pasted = (fm != frames)  # one box, the same in every frame and channel
    assert pasted.any() and torch.equal(pasted[:, :1, :1].expand_as(pasted), pasted)
    assert torch.allclose(ym.sum(1), torch.ones(2))


# --------------------------------------------------------------------------------------- CIFAR
def _write_cifar(root: Path, name: str, n_train: int, n_test: int, seed: int = 0) -> dict:
    """torchvision's on-disk CIFAR (python version): pickled dicts, data uint8 [N, 3072] in CHW order."""
    rng = np.random.default_rng(seed)
    n_classes = 10 if name == "cifar10" else 100
    out = {}

    def batch(n, tag):
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, n_classes, size=n)]
        out.setdefault(tag, []).append((data, labels))
        d = {"batch_label": tag, "data": data, "filenames": [f"img_{i}.png" for i in range(n)]}
        if name == "cifar10":
            d["labels"] = labels
        else:
            d["fine_labels"], d["coarse_labels"] = labels, [v // 5 for v in labels]
        return d

    if name == "cifar10":
        folder = root / "cifar-10-batches-py"
        folder.mkdir(parents=True)
        for i in range(1, 6):
            (folder / f"data_batch_{i}").write_bytes(pickle.dumps(batch(n_train, "train")))
        (folder / "test_batch").write_bytes(pickle.dumps(batch(n_test, "test")))
        meta = {"label_names": [f"class{i}" for i in range(10)], "num_cases_per_batch": n_train, "num_vis": 3072}
        (folder / "batches.meta").write_bytes(pickle.dumps(meta))
    else:
        folder = root / "cifar-100-python"
        folder.mkdir(parents=True)
        (folder / "train").write_bytes(pickle.dumps(batch(n_train, "train")))
        (folder / "test").write_bytes(pickle.dumps(batch(n_test, "test")))
        meta = {"fine_label_names": [f"fine{i}" for i in range(100)],
                "coarse_label_names": [f"coarse{i}" for i in range(20)]}
        (folder / "meta").write_bytes(pickle.dumps(meta))
    return {k: (np.concatenate([d for d, _ in v]), sum((l for _, l in v), [])) for k, v in out.items()}


@pytest.mark.parametrize("name,n_train", [("cifar10", 5 * 4), ("cifar100", 12)])
def test_cifar_real_pickle_layout(tmp_path, name, n_train):
    written = _write_cifar(tmp_path, name, n_train // (5 if name == "cifar10" else 1), 6)
    train, val, info = build_datasets(name, tmp_path, augment=False, verify_checksums=False)
    assert info == DataInfo(name, 10 if name == "cifar10" else 100, 3, 32, CIFAR_MEAN, CIFAR_STD)
    assert (len(train), len(val)) == (n_train, 6)
    assert list(train.targets) == written["train"][1] and list(val.targets) == written["test"][1]
    mean, std = torch.tensor(CIFAR_MEAN)[:, None, None], torch.tensor(CIFAR_STD)[:, None, None]
    for ds, (data, labels) in ((train, written["train"]), (val, written["test"])):
        for i in (0, len(ds) - 1):
            x, y = ds[i]
            assert x.shape == (3, 32, 32) and y == labels[i]
            pixels = torch.from_numpy(data[i].reshape(3, 32, 32)).float() / 255
            assert torch.allclose(x * std + mean, pixels, atol=1e-5)  # normalised with the CIFAR mean/std
    # the recipe's augmented transform (RandAugment, flip, erasing) and another size
    aug_train, _, info64 = build_datasets(name, tmp_path / ("cifar-10-batches-py" if name == "cifar10" else
                                                           "cifar-100-python"), img_size=64, verify_checksums=False)
    torch.manual_seed(0)
    random.seed(0)
    assert aug_train[0][0].shape == (3, 64, 64) and info64.img_size == 64


def test_cifar_checksums_checked_by_default(tmp_path):
    _write_cifar(tmp_path, "cifar10", 2, 2)
    before = tree(tmp_path)
    with pytest.raises(DatasetNotFoundError) as err:
        build_datasets("cifar10", tmp_path)
    assert "MD5" in str(err.value) and "verify_checksums=False" in str(err.value)
    assert tree(tmp_path) == before


def test_cifar_recipe_defaults_and_overrides(tmp_path):
    _write_cifar(tmp_path, "cifar10", 2, 2)
    train, val, _ = build_datasets("cifar10", tmp_path, verify_checksums=False)
    r = repr(train.transform)
    assert "RandAugment(n=1" in r and "m=9, mstd=0.4" in r and "RandomHorizontalFlip(p=0.5)" in r
    assert "RandomErasing(p=0.25, mode=const" in r and "scale=(1.0, 1.0), ratio=(1.0, 1.0), interpolation=bicubic" in r
    assert "RandAugment" not in repr(val.transform) and "Normalize" in repr(val.transform)
    train2, _, _ = build_datasets("cifar10", tmp_path, verify_checksums=False, recipe={"aa": None, "reprob": 0.0})
    assert "RandAugment" not in repr(train2.transform) and "RandomErasing" not in repr(train2.transform)
    with pytest.raises(ValueError, match="unknown recipe key"):
        build_datasets("cifar10", tmp_path, verify_checksums=False, recipe={"randaug": "x"})


# --------------------------------------------------------------------------------------- ImageNet
def _write_imagenet(root: Path, classes=("n01", "n02", "n03"), per_class=2):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(per_class):
                arr = rng.integers(0, 256, size=(30 + i, 40, 3), dtype=np.uint8)
                Image.fromarray(arr).save(root / split / c / f"{c}_{i}.{'JPEG' if i % 2 else 'png'}")


def test_imagenet_class_folders(tmp_path):
    _write_imagenet(tmp_path)
    train, val, info = build_datasets("imagenet", tmp_path, img_size=32)
    assert info.num_classes == 3 and info.in_channels == 3 and info.img_size == 32 and not info.event_frames
    assert (len(train), len(val)) == (6, 6)
    assert train.classes == val.classes == ["n01", "n02", "n03"]
    assert sorted(train.targets) == [0, 0, 1, 1, 2, 2]
    for ds in (train, val):
        x, y = ds[5]
        assert x.shape == (3, 32, 32) and y == 2
    assert "mstd=0.5" in repr(train.transform) and "Resize(size=32" in repr(val.transform)


def test_imagenet_mismatched_or_flat_val(tmp_path):
    _write_imagenet(tmp_path)
    extra = tmp_path / "train" / "n04"
    extra.mkdir()
    (tmp_path / "train" / "n01" / "n01_0.png").rename(extra / "x.png")
    with pytest.raises(DatasetNotFoundError, match="different class folders"):
        build_datasets("imagenet", tmp_path)
    flat = tmp_path / "flat"
    (flat / "train" / "a").mkdir(parents=True)
    (tmp_path / "train" / "n02" / "n02_0.png").rename(flat / "train" / "a" / "x.png")
    (flat / "val").mkdir()
    (flat / "val" / "ILSVRC2012_val_00000001.JPEG").write_bytes(b"")
    with pytest.raises(DatasetNotFoundError, match="no class folders"):
        build_datasets("imagenet", flat)


# --------------------------------------------------------------------------------------- event data
def _events(rng, n: int) -> dict:
    return {"t": np.sort(rng.integers(0, 10_000, size=n)).astype(np.int64),
            "x": rng.integers(0, 128, size=n).astype(np.int64), "y": rng.integers(0, 128, size=n).astype(np.int64),
            "p": rng.integers(0, 2, size=n).astype(np.int64)}


def _hist(ev: dict) -> np.ndarray:
    h = np.zeros((2, 128, 128))
    np.add.at(h, (ev["p"], ev["y"], ev["x"]), 1)
    return h


def _write_cifar10_dvs_events(root: Path, per_class: int = 10, seed: int = 0) -> dict:
    """spikingjelly's converted layout: events_np/<class>/cifar10_<class>_<i>.npz with t, x, y, p."""
    rng = np.random.default_rng(seed)
    written = {}
    for c in CIFAR10_DVS_CLASSES:
        (root / "events_np" / c).mkdir(parents=True)
        for i in range(per_class):
            ev = _events(rng, 12)
            np.savez(root / "events_np" / c / f"cifar10_{c}_{i}.npz", **ev)
            written[(c, i)] = ev
    return written


def test_cifar10_dvs_events_np(tmp_path):
    from spikingjelly.datasets import split_to_train_test_set

    written = _write_cifar10_dvs_events(tmp_path)
    train, val, info = build_datasets("cifar10-dvs", tmp_path, timesteps=3, augment=False)
    assert info == DataInfo("cifar10-dvs", 10, 2, 128, (0.0, 0.0), (1.0, 1.0), 3) and info.event_frames
    assert (len(train), len(val)) == (90, 10)  # 9:1 inside every class
    assert Counter(train.targets) == {c: 9 for c in range(10)} and sorted(val.targets) == list(range(10))
    # the held-out sample of each class is its last file (spikingjelly's non-random split)
    base = train.dataset
    assert [Path(base.samples[i][0]).name for i in val.indices] == [f"cifar10_{c}_9.npz" for c in CIFAR10_DVS_CLASSES]
    ref_train, ref_val = split_to_train_test_set(0.9, base, 10)  # the reference code's call
    assert train.indices == ref_train.indices and val.indices == ref_val.indices
    for ds in (train, val):
        x, y = ds[len(ds) - 1]
        assert x.shape == (3, 2, 128, 128) and x.dtype == torch.float32 and y == 9
    x, y = val[0]
    assert np.array_equal(x.sum(0).numpy(), _hist(written[("airplane", 9)]))  # every event counted once
    assert (tmp_path / "frames_number_3_split_by_number").is_dir()  # spikingjelly's frame cache
    small_train, _, info64 = build_datasets("cifar10-dvs", tmp_path, timesteps=3, img_size=64)
    xs, _ = small_train[0]
    assert xs.shape == (3, 2, 64, 64) and info64.img_size == 64
    torch.manual_seed(1)
    a = small_train[0][0]
    torch.manual_seed(1)
    assert torch.equal(a, small_train[0][0])  # seeded augmentation


def _write_gesture_events(root: Path, n_train: int = 2, n_test: int = 1, seed: int = 0):
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        for label in range(11):
            d = root / "events_np" / split / str(label)
            d.mkdir(parents=True)
            for k in range(n):
                np.savez(d / f"user{label:02d}_fluorescent_{k}.npz", **_events(rng, 10))


def test_dvs128_gesture_events_np(tmp_path):
    _write_gesture_events(tmp_path)
    train, val, info = build_datasets("dvs128-gesture", tmp_path, timesteps=2, img_size=32)
    assert info == DataInfo("dvs128-gesture", 11, 2, 32, (0.0, 0.0), (1.0, 1.0), 2)
    assert (len(train), len(val)) == (22, 11)
    assert sorted(train.targets) == sorted(list(range(11)) * 2) and sorted(val.targets) == list(range(11))
    x, y = val[4]
    assert x.shape == (2, 2, 32, 32) and y == 4
    full, _, _ = build_datasets("dvs128-gesture", tmp_path, timesteps=2, augment=False)
    assert full[0][0].shape == (2, 2, 128, 128) and full[0][0].sum() == 10
    assert "hflip=0.0" in repr(train.transform)  # no flips: the data set has left/right-hand classes


def _aedat2(events: dict) -> bytes:
    """CIFAR10-DVS .aedat (AER-DAT2, big-endian address/timestamp pairs), inverse of spikingjelly's
    ``_load_origin_data``: it returns x = 127 - raw_y, y = 127 - raw_x, p = 1 - raw_p."""
    raw_x, raw_y, raw_p = 127 - events["y"], 127 - events["x"], 1 - events["p"]
    addr = (raw_x << 1) | (raw_y << 8) | raw_p
    pairs = np.stack([addr, events["t"]], 1).astype(">u4")
    return b"#!AER-DAT2.0\r\n# This is a test file\r\n" + pairs.tobytes()


def test_cifar10_dvs_from_raw_zips(tmp_path, monkeypatch):
    from spikingjelly.datasets.cifar10_dvs import CIFAR10DVS

    rng = np.random.default_rng(1)
    download = tmp_path / "download"
    download.mkdir()
    written = {}
    for c in CIFAR10_DVS_CLASSES:
        with zipfile.ZipFile(download / f"{c}.zip", "w") as zf:
            for i in range(2):
                written[(c, i)] = ev = _events(rng, 8)
                zf.writestr(f"{c}/cifar10_{c}_{i}.aedat", _aedat2(ev))
    table = [(f"{c}.zip", "https://example.invalid", md5(download / f"{c}.zip")) for c in CIFAR10_DVS_CLASSES]
    monkeypatch.setattr(CIFAR10DVS, "resource_url_md5", classmethod(lambda cls: table))
    train, val, _ = build_datasets("cifar10-dvs", tmp_path, timesteps=2, augment=False)
    assert (len(train), len(val)) == (20, 0)  # ceil(0.9 * 2) = 2 per class
    x, y = train[train.targets.index(3)]  # cat, sample 0
    assert y == 3 and np.array_equal(x.sum(0).numpy(), _hist(written[("cat", 0)]))
    made = {p.name for p in tmp_path.iterdir()}  # what spikingjelly writes under root (documented)
    assert made == {"download", "extract", "events_np", "frames_number_2_split_by_number"}


def test_cifar10_dvs_corrupted_zip_is_reported_not_deleted(tmp_path, monkeypatch):
    from spikingjelly.datasets.cifar10_dvs import CIFAR10DVS

    download = tmp_path / "download"
    download.mkdir()
    for c in CIFAR10_DVS_CLASSES:
        (download / f"{c}.zip").write_bytes(c.encode())
    table = [(f"{c}.zip", "u", md5(download / f"{c}.zip")) for c in CIFAR10_DVS_CLASSES]
    table[3] = ("cat.zip", "u", "0" * 32)
    monkeypatch.setattr(CIFAR10DVS, "resource_url_md5", classmethod(lambda cls: table))
    before = tree(tmp_path)
    with pytest.raises(DatasetNotFoundError, match="MD5 of cat.zip"):
        build_datasets("cifar10-dvs", tmp_path, download=True)
    assert tree(tmp_path) == before


def _aedat3(events: dict) -> bytes:
    """DVS128 Gesture .aedat (AEDAT 3.1): text header, then polarity packets (type 1, 8-byte events)."""
    n = len(events["t"])
    head = struct.pack("<HHIIIIII", 1, 0, 8, 4, 0, n, n, n)
    body = b"".join(struct.pack("<II", int(x) << 17 | int(y) << 2 | int(p) << 1 | 1, int(t))
                    for t, x, y, p in zip(events["t"], events["x"], events["y"], events["p"]))
    return b"#!AER-DAT3.1\r\n#Format: RAW\r\n#!END-HEADER\r\n" + head + body


def test_dvs128_gesture_from_raw_tar(tmp_path, monkeypatch):
    from spikingjelly.datasets.dvs128_gesture import DVS128Gesture

    rng = np.random.default_rng(2)
    files, recordings = {}, {}
    for user, split in (("user01_led", "train"), ("user24_led", "test")):
        ev = _events(rng, 66)
        ev["t"] = np.arange(66) * 10  # 6 events in each of 11 labelled windows of 60 us
        recordings[user] = ev
        files[f"DvsGesture/{user}.aedat"] = _aedat3(ev)
        rows = "".join(f"{label + 1},{label * 60},{label * 60 + 60}\n" for label in range(11))
        files[f"DvsGesture/{user}_labels.csv"] = ("class,startTime_usec,endTime_usec\n" + rows).encode()
    files["DvsGesture/trials_to_train.txt"] = b"user01_led.aedat\n"
    files["DvsGesture/trials_to_test.txt"] = b"user24_led.aedat\n"
    download = tmp_path / "download"
    download.mkdir()
    with tarfile.open(download / "DvsGesture.tar.gz", "w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    for name in ("gesture_mapping.csv", "LICENSE.txt", "README.txt"):
        (download / name).write_text(f"{name}\n")
    table = [(f, "https://example.invalid", md5(download / f))
             for f in ("DvsGesture.tar.gz", "gesture_mapping.csv", "LICENSE.txt", "README.txt")]
    monkeypatch.setattr(DVS128Gesture, "resource_url_md5", classmethod(lambda cls: table))
    train, val, _ = build_datasets("dvs128-gesture", tmp_path, timesteps=2, augment=False)
    assert (len(train), len(val)) == (11, 11) and sorted(val.targets) == list(range(11))
    x, y = val[val.targets.index(7)]
    ev = recordings["user24_led"]
    window = {k: v[7 * 6:8 * 6] for k, v in ev.items()}
    # label 7 is folder 7 (gesture 8 in gesture_mapping.csv), not the 8th folder in string order
    assert y == 7 and x.shape == (2, 2, 128, 128) and np.array_equal(x.sum(0).numpy(), _hist(window))
    assert val.classes == [str(k) for k in range(11)] and val.class_to_idx["10"] == 10
    assert val.targets == sorted(val.targets) and train.targets == list(range(11))


@pytest.mark.parametrize("name", ["cifar10-dvs", "dvs128-gesture"])
def test_event_leftover_marker_and_incomplete_events(tmp_path, name):
    if name == "cifar10-dvs":
        _write_cifar10_dvs_events(tmp_path, per_class=1)
        victim = tmp_path / "events_np" / "truck"
    else:
        _write_gesture_events(tmp_path, 1, 1)
        victim = tmp_path / "events_np" / "test" / "10"
    (tmp_path / "frames_number_4_split_by_number.building").touch()
    before = tree(tmp_path)
    with pytest.raises(DatasetNotFoundError, match="interrupted preprocessing") as err:
        build_datasets(name, tmp_path)
    assert "frames_number_4_split_by_number.building" in str(err.value) and tree(tmp_path) == before
    (tmp_path / "frames_number_4_split_by_number.building").unlink()
    for f in victim.iterdir():
        f.unlink()
    before = tree(tmp_path)
    with pytest.raises(DatasetNotFoundError, match="incomplete") as err:
        build_datasets(name, tmp_path)
    assert str(victim.relative_to(tmp_path / "events_np")) in str(err.value) and tree(tmp_path) == before


# --------------------------------------------------------------------------------------- missing data
LAYOUT_TOKEN = {
    "cifar10": "cifar-10-batches-py/{data_batch_1",
    "cifar100": "cifar-100-python/{train, test, meta}",
    "imagenet": "/val/<the same class folders>",
    "cifar10-dvs": "events_np/<class: airplane",
    "dvs128-gesture": "download/{DvsGesture.tar.gz, gesture_mapping.csv",
}
HOW_TOKEN = {
    "cifar10": "download=True",
    "cifar100": "download=True",
    "imagenet": "cannot be downloaded automatically",
    "cifar10-dvs": "figshare",
    "dvs128-gesture": "cannot be downloaded automatically",
}


@pytest.mark.parametrize("name", [n for n in DATASET_NAMES if not n.startswith("digits")])
@pytest.mark.parametrize("root_exists", [False, True])
def test_missing_dataset_is_one_clear_error(tmp_path, name, root_exists):
    root = tmp_path / "data" / name
    if root_exists:
        root.mkdir(parents=True)
    before = tree(tmp_path)
    with pytest.raises(DatasetNotFoundError) as err:
        build_datasets(name, root)
    msg = str(err.value)
    assert isinstance(err.value, FileNotFoundError)
    assert err.value.path == str(root.absolute()) and f"not found at {root.absolute()}" in msg
    assert "Expected layout:" in msg and LAYOUT_TOKEN[name] in msg
    assert "How to get it:" in msg and HOW_TOKEN[name] in msg
    assert tree(tmp_path) == before  # nothing created under (or as) root
    assert pickle.loads(pickle.dumps(err.value)).args == err.value.args


def test_not_downloadable_with_download_true_and_relative_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DatasetNotFoundError, match="not downloadable automatically") as err:
        build_datasets("dvs128-gesture", "gesture", download=True)
    assert err.value.path == str(Path.cwd() / "gesture")
    monkeypatch.setenv("STAS_SWEEP_DATA", str(tmp_path / "store"))
    with pytest.raises(DatasetNotFoundError) as err:
        build_datasets("CIFAR100")  # root=None: $STAS_SWEEP_DATA/<name>
    assert err.value.path == str(tmp_path / "store" / "cifar100")
    assert list(tmp_path.iterdir()) == []


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as err:
        build_datasets("mnist")
    for n in DATASET_NAMES:
        assert n in str(err.value)


def test_per_class_split_matches_reference_rule():
    targets = [0, 1, 0, 1, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0]  # class 0: 11 samples -> ceil(9.9) = 10 train;
    # class 1: 2 -> ceil(1.8) = 2, class 2: 1 -> ceil(0.9) = 1, so only class 0's last sample validates
    train, val = per_class_split(targets, 0.9, 3)
    assert val == [13] and sorted(train + val) == list(range(len(targets)))
