"""Data-parallel training over the workers of a ``torch.distributed`` group.

Ray Train's ``TorchTrainer`` starts the workers and the group (gloo on CPUs, NCCL on GPUs); the
trainer asks :func:`world` which worker it is and, with several, wraps its model in
``DistributedDataParallel``: each worker runs its share of the global batch and the gradients are
averaged, so K workers with batch ``b / K`` each take the optimiser steps one process takes with
batch ``b``. Sums over the workers (validation counts, training losses) go through
:func:`all_reduce_sums`.

``sync_bn``: :func:`sync_batch_norm` makes every batch norm of the model compute its training
statistics over the global batch (:class:`GlobalBatchNorm`, plain torch, so gloo on CPUs works as
well as NCCL; ``torch.nn.SyncBatchNorm`` refuses CPU tensors).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from .config import ConfigError


def world() -> tuple[int, int]:
    """``(rank, number of workers)`` of this process; ``(0, 1)`` outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def worker_batch(global_batch: int, workers: int, where: str = "batch_size") -> int:
    """The batch each of ``workers`` runs: the config's (global) batch split evenly, else a ConfigError."""
    if workers < 1:
        raise ConfigError(f"workers {workers}: give 1 or more")
    if global_batch % workers:
        divisors = [k for k in range(1, min(global_batch, 64) + 1) if global_batch % k == 0]
        raise ConfigError(f"{where} {global_batch} is the global batch and does not split over {workers} workers; "
                          f"give a multiple of {workers}, or workers in {divisors}")
    return global_batch // workers


def all_reduce_sums(values: dict[str, float], device: torch.device | str = "cpu") -> dict[str, float]:
    """``values`` summed over every worker (float64); unchanged outside a process group."""
    if world()[1] == 1:
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return dict(zip(keys, t.tolist()))


def average_gradients(params) -> None:
    """Average the gradients of ``params`` over the workers (modules outside the DDP wrapper)."""
    n = world()[1]
    if n == 1:
        return
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad.div_(n)


class _SumOverWorkers(torch.autograd.Function):
    """``x`` summed over the workers; its gradient is the gradients summed the same way (every
    worker's loss depends on every worker's share of the sum)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def sum_over_workers(x: torch.Tensor) -> torch.Tensor:
    return _SumOverWorkers.apply(x)


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm whose training statistics are those of the global batch: each worker's sums are
    added up with an autograd-aware all-reduce (its backward adds the gradients up the same way).

    The class of an existing ``BatchNorm1d``/``BatchNorm2d`` is switched to this one by
    :func:`sync_batch_norm`; outside a process group, in evaluation, or with one worker it is the
    plain batch norm.
    """

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and world()[1] > 1):
            return super().forward(x)
        all_reduce = sum_over_workers
        dims = [d for d in range(x.dim()) if d != 1]                    # all but channels
        x32 = x.float()
        count = torch.tensor(float(x.numel() // x.shape[1]), device=x.device)
        count = all_reduce(count)                                       # samples x positions, all workers
        mean = all_reduce(x32.sum(dims)) / count                        # [C]
        shape = [1, -1] + [1] * (x.dim() - 2)
        d = x32 - mean.view(shape)
        var = all_reduce((d * d).sum(dims)) / count                     # [C], biased as batch norm normalises
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.detach(), m)
                self.running_var.lerp_(var.detach() * count / (count - 1), m)  # unbiased, as batch norm stores
        out = d * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out.to(x.dtype)


def sync_batch_norm(model: nn.Module) -> int:
    """Switch every ``BatchNorm1d``/``BatchNorm2d`` of ``model`` to :class:`GlobalBatchNorm` in place
    (parameters and buffers are kept); returns how many."""
    n = 0
    for m in model.modules():
        if type(m) in (nn.BatchNorm1d, nn.BatchNorm2d):
            m.__class__ = GlobalBatchNorm
            n += 1
    return n


def check_sync_bn(cfg, workers: int, where: str = "config") -> None:
    """``sync_bn`` with halting and several workers is refused: a halting model skips the blocks whose
    tokens have all halted, which differs between workers, and a statistic all-reduced in a block one
    worker skips would wait for it forever."""
    if cfg.sync_bn and cfg.halting is not None and workers > 1:
        raise ConfigError(f"{where}: sync_bn: true with halting ({cfg.halting.method}) over {workers} workers: "
                          f"halting skips blocks per worker, so their batch statistics cannot be synchronised; "
                          f"use sync_bn: false for stage 2 (stage 1 may keep it)")
