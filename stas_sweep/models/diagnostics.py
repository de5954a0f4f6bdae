"""Temporal similarity of block inputs (paper Fig. 2e, SPEC 2.2).

For block l, the mean over images, tokens and consecutive timestep pairs of
``cos(X_in[t, b, k, :], X_in[t+1, b, k, :])``. A pair where both vectors are zero (a silent or
halted token) counts as identical (1), a pair where only one is zero as 0.

It describes the static architecture (SPS against I-SPS), so by default it is measured with
halting switched off: a halted token's zeroed input would otherwise read as a change.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .vit import SpikingViT


@torch.no_grad()
def temporal_similarity(model: SpikingViT, x: torch.Tensor, *, with_halting: bool = False) -> list[float]:
    """Mean cosine similarity between consecutive timesteps of each block's input tokens."""
    if model.timesteps < 2:
        raise ValueError("temporal similarity needs timesteps >= 2")
    seen: dict[int, list[torch.Tensor]] = {l: [] for l in range(model.depth)}  # block inputs
    hooks = [
        block.register_forward_pre_hook(lambda _m, args, l=l: seen[l].append(args[0].detach()))
        for l, block in enumerate(model.blocks)
    ]
    was_training, halting, packed = model.training, model.halting, model.packed_halting
    model.eval()
    model.packed_halting = False  # the hooks read whole [T, B, K, D] token tensors
    if not with_halting:
        model.set_halting(None)
    try:
        model(x)
    finally:
        model.train(was_training)
        model.set_halting(halting)
        model.packed_halting = packed
        for h in hooks:
            h.remove()
    sims = []
    for l in range(model.depth):
        xs = seen[l][0]  # [T, B, K, D]: one call per block
        a, b = xs[:-1], xs[1:]
        cos = F.cosine_similarity(a, b, dim=-1, eps=1e-12)  # [T-1, B, K]
        za, zb = a.abs().sum(-1) == 0, b.abs().sum(-1) == 0
        cos = torch.where(za & zb, torch.ones_like(cos), cos)
        sims.append(float(cos.mean()))
    return sims


@torch.no_grad()
def calibrate_batchnorm(model: SpikingViT, x: torch.Tensor, steps: int = 3) -> None:
    """Set batch-norm running statistics from ``x`` (cumulative average over ``steps`` passes).

    A freshly built model in eval mode normalises with mean 0 / variance 1 and its LIF layers
    stay silent; measuring energy or similarity on an untrained model needs this first.
    """
    was_training = model.training
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    saved = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average
    model.train()
    try:
        for _ in range(steps):
            model(x)
    finally:
        for bn, m in zip(bns, saved):
            bn.momentum = m
        model.train(was_training)
