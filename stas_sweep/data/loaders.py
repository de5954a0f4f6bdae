"""Loaders whose randomness depends only on (seed, epoch), and timm's Mixup/CutMix.

A resumed run must see the same batches as an uninterrupted one. :func:`build_loaders`
therefore returns a training loader (:class:`EpochDataLoader`) in which, for epoch ``e``:

* the shuffle order is ``torch.randperm`` under a generator seeded with
  ``epoch_seed(seed, e)`` (:class:`EpochShuffleSampler`);
* with ``workers > 0``, the workers' base seed comes from the loader's generator re-seeded
  with ``epoch_seed(seed, e)``; PyTorch seeds each worker's torch, ``random`` and numpy
  RNGs from it, so augmentation draws are fixed too;
* with ``workers == 0``, augmentation runs in the caller's process under its own torch,
  ``random`` and numpy RNG states, seeded from ``epoch_seed(seed, e)`` and swapped in only
  while a batch is being assembled. The caller's global RNG streams (dropout, Mixup...)
  are neither read nor advanced by loading.

Each ``iter(loader)`` runs the next epoch (0, 1, 2 ...); ``loader.set_epoch(e)`` makes the
next ``iter`` run epoch ``e`` (call it when resuming, or at the top of every epoch). The
batches of epoch ``e`` are the same whatever happened before. (They do depend on
``workers``: 0 and >0 draw augmentations from different streams.)
"""

from __future__ import annotations

import random
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from .errors import DataError

__all__ = ["epoch_seed", "rank_seed", "EpochShuffleSampler", "EpochDistributedSampler", "EpochDataLoader", "build_loaders", "build_mixup", "FrameMixup"]


def epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit seed for ``(seed, epoch)`` (numpy ``SeedSequence``; distinct pairs do not collide
    the way ``seed + epoch`` would)."""
    if seed < 0 or epoch < 0:
        raise DataError(f"seed and epoch must be >= 0, got seed={seed}, epoch={epoch}")
    return int(np.random.SeedSequence([int(seed), int(epoch)]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def rank_seed(seed: int, rank: int) -> int:
    """The seed of worker ``rank`` of a data-parallel run whose seed is ``seed``: ``seed`` itself for
    rank 0 (one worker draws exactly what a single process draws), a 63-bit ``SeedSequence`` value
    for the others (kept apart from :func:`epoch_seed`'s by a third entry)."""
    if rank == 0:
        return int(seed)
    return int(np.random.SeedSequence([int(seed), int(rank), 1]).generate_state(1, np.uint64)[0] >> np.uint64(1))


class EpochShuffleSampler(Sampler[int]):
    """Indices ``0..n-1``, permuted by ``torch.randperm`` seeded with ``epoch_seed(seed, epoch)``
    (or in order when ``shuffle=False``). ``set_epoch`` as in ``DistributedSampler``."""

    def __init__(self, n: int, seed: int = 0, shuffle: bool = True) -> None:
        self.n, self.seed, self.shuffle, self.epoch = int(n), int(seed), shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.n))
        g = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


class EpochDistributedSampler(DistributedSampler):
    """Worker ``rank``'s share of :class:`EpochShuffleSampler`'s order: positions ``rank, rank +
    world, ...`` of the epoch's permutation (``set_epoch`` as in ``DistributedSampler``).

    Each worker's ``j``-th batch of ``b / world`` samples is then a slice of the same positions as a
    single process's ``j``-th batch of ``b``: the workers together see exactly its samples. With
    ``drop_last`` (training) the tail that does not divide over the workers is dropped; without
    (evaluation) nothing is padded or repeated, so the shares may differ by one sample and their
    sums are the whole set's.
    """

    def __init__(self, dataset: Dataset, seed: int, shuffle: bool, rank: int, world: int, drop_last: bool) -> None:
        super().__init__(dataset, num_replicas=world, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last)
        self.n = len(dataset)
        self.total = self.n - self.n % world if drop_last else self.n
        self.num_samples = len(range(rank, self.total, world))

    def __iter__(self) -> Iterator[int]:
        order = EpochShuffleSampler(self.n, self.seed, self.shuffle)
        order.set_epoch(self.epoch)
        return iter(list(order)[self.rank:self.total:self.num_replicas])

    def __len__(self) -> int:
        return self.num_samples


class _PrivateRNG:
    """Holds torch-CPU / ``random`` / numpy RNG states of its own and swaps them in around a call."""

    def __init__(self, seed: int) -> None:
        self.torch = torch.Generator().manual_seed(seed).get_state()
        self.py = random.Random(seed).getstate()
        self.np = np.random.RandomState(seed % 2**32).get_state()

    def run(self, fn):
        saved = torch.get_rng_state(), random.getstate(), np.random.get_state()
        torch.set_rng_state(self.torch)
        random.setstate(self.py)
        np.random.set_state(self.np)
        try:
            return fn()
        finally:
            self.torch, self.py, self.np = torch.get_rng_state(), random.getstate(), np.random.get_state()
            torch.set_rng_state(saved[0])
            random.setstate(saved[1])
            np.random.set_state(saved[2])


class _IsolatedIter:
    def __init__(self, it, rng: _PrivateRNG) -> None:
        self.it, self.rng = it, rng

    def __iter__(self):
        return self

    def __next__(self):
        return self.rng.run(lambda: next(self.it))

    def __len__(self) -> int:
        return len(self.it)


class EpochDataLoader(DataLoader):
    """A ``DataLoader`` whose batches in epoch ``e`` depend only on ``(seed, e)`` (module docstring).

    Args:
        dataset: map-style data set.
        seed: base seed (>= 0).
        shuffle: shuffle each epoch (training) or keep the order (evaluation).
        rank, world: this worker and the number of data-parallel workers; with ``world > 1`` the
            loader yields worker ``rank``'s share (:class:`EpochDistributedSampler`), and its
            augmentation draws from ``rank_seed(seed, rank)``.
        **kwargs: passed to ``DataLoader`` (batch_size, num_workers, drop_last, pin_memory,
            collate_fn ...); ``sampler``, ``shuffle``, ``generator`` and ``persistent_workers``
            are set here.
    """

    def __init__(self, dataset: Dataset, *, seed: int = 0, shuffle: bool = True, rank: int = 0, world: int = 1,
                 **kwargs) -> None:
        for k in ("sampler", "batch_sampler", "generator", "persistent_workers"):
            if k in kwargs:
                raise TypeError(f"EpochDataLoader sets {k!r} itself")
        sampler = EpochShuffleSampler(len(dataset), seed, shuffle) if world == 1 else \
            EpochDistributedSampler(dataset, seed, shuffle, rank, world, drop_last=kwargs.get("drop_last", False))
        super().__init__(dataset, sampler=sampler, generator=torch.Generator(), persistent_workers=False, **kwargs)
        self.seed = int(seed)
        self.draw_seed = rank_seed(seed, rank)  # this worker's augmentation stream
        self.next_epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Make the next ``iter(loader)`` produce epoch ``epoch``."""
        if epoch < 0:
            raise DataError(f"epoch must be >= 0, got {epoch}")
        self.next_epoch = int(epoch)

    def __iter__(self):
        epoch, self.next_epoch = self.next_epoch, self.next_epoch + 1
        s = epoch_seed(self.draw_seed, epoch)
        self.sampler.set_epoch(epoch)
        self.generator.manual_seed(s)  # the workers' base seed is drawn from it
        it = super().__iter__()
        return it if self.num_workers > 0 else _IsolatedIter(it, _PrivateRNG(s))


def build_loaders(train_ds: Dataset, val_ds: Dataset, batch_size: int, workers: int = 0, seed: int = 0, *,
                  val_batch_size: int | None = None, drop_last: bool = True, pin_memory: bool = False,
                  start_epoch: int = 0, rank: int = 0, world: int = 1) -> tuple[EpochDataLoader, EpochDataLoader]:
    """(train, val) loaders: train shuffled per epoch and reproducible (:class:`EpochDataLoader`),
    val in order with every sample (``drop_last=False``).

    Args:
        batch_size: training batch size. timm's Mixup needs an even batch, which
            ``drop_last=True`` (the default, as in timm's training loader) guarantees when
            ``batch_size`` is even.
        workers: DataLoader worker processes for both loaders.
        seed: base seed of the shuffling and augmentation streams.
        val_batch_size: defaults to ``batch_size``.
        start_epoch: the epoch the first ``iter(train_loader)`` produces (for resuming).
        rank, world: data-parallel worker and number of workers: each loader then yields the
            worker's share of every epoch, ``batch_size`` being the worker's batch.
    """
    if batch_size <= 0:
        raise DataError(f"batch_size must be positive, got {batch_size}")
    if drop_last and len(train_ds) < batch_size * world:
        raise DataError(f"the training set has {len(train_ds)} samples, fewer than batch_size={batch_size * world}: "
                         "with drop_last=True no batch would be produced")
    common = dict(num_workers=workers, pin_memory=pin_memory, rank=rank, world=world)
    train = EpochDataLoader(train_ds, seed=seed, shuffle=True, batch_size=batch_size, drop_last=drop_last, **common)
    train.set_epoch(start_epoch)
    val = EpochDataLoader(val_ds, seed=seed, shuffle=False, batch_size=val_batch_size or batch_size,
                          drop_last=False, **common)
    return train, val


_FRAME_MIXUP = None


def _frame_mixup_class():
    """``FrameMixup``, defined on first use so that importing this module does not import timm."""
    global _FRAME_MIXUP
    if _FRAME_MIXUP is not None:
        return _FRAME_MIXUP
    from timm.data import Mixup

    class FrameMixup(Mixup):
        """timm's ``Mixup`` that also takes event-frame batches ``[B, T, C, H, W]``.

        timm's CutMix pastes ``x[:, :, y0:y1, x0:x1]``, i.e. assumes 4-D input; frames are
        viewed as ``[B, T*C, H, W]`` for the call (the same box and lambda for every frame)
        and returned as ``[B, T, C, H, W]``. 4-D batches go straight to timm.
        """

        def __call__(self, x, target):
            if x.dim() != 5:
                return super().__call__(x, target)
            b, t, c, h, w = x.shape
            x4, target = super().__call__(x.reshape(b, t * c, h, w), target)
            return x4.reshape(b, t, c, h, w), target

    FrameMixup.__module__, FrameMixup.__qualname__ = __name__, "FrameMixup"  # picklable via __getattr__
    _FRAME_MIXUP = FrameMixup
    return FrameMixup


def build_mixup(mixup_alpha: float, cutmix_alpha: float, label_smoothing: float, num_classes: int,
                prob: float = 1.0, switch_prob: float = 0.5, mode: str = "batch", cutmix_minmax=None):
    """A ``timm.data.Mixup`` (the :class:`FrameMixup` subclass) or None when both alphas are 0
    (and no ``cutmix_minmax``), or ``prob`` is 0.

    ``mixup(x, y)`` mixes the batch in place and returns ``(x, soft_targets)`` with label
    smoothing folded in; train with ``timm.loss.SoftTargetCrossEntropy``. Recipe values:
    CIFAR mixup 0.5 / cutmix 0 / smoothing 0.1 / prob 1 / switch 0.5 / 'batch';
    ImageNet mixup 0.8 / cutmix 1.0. Its random draws use numpy's global RNG.
    """
    if mixup_alpha < 0 or cutmix_alpha < 0:
        raise DataError(f"mixup/cutmix alphas must be >= 0, got {mixup_alpha}, {cutmix_alpha}")
    if (mixup_alpha == 0 and cutmix_alpha == 0 and cutmix_minmax is None) or prob <= 0:
        return None
    return _frame_mixup_class()(
        mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, cutmix_minmax=cutmix_minmax, prob=prob,
        switch_prob=switch_prob, mode=mode, label_smoothing=label_smoothing, num_classes=num_classes,
    )


def __getattr__(name: str):  # ``from stas_sweep.data.loaders import FrameMixup`` without importing timm eagerly
    if name == "FrameMixup":
        return _frame_mixup_class()
    raise AttributeError(name)
