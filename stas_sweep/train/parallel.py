"""Data-parallel training over the GPUs one trial was given (``resources: {gpu: k}``).

Ray places a k-GPU trial on one node and sets ``CUDA_VISIBLE_DEVICES`` to its k devices; the
trainer then splits each batch over them with :class:`STASDataParallel` (``torch.nn.DataParallel``
with a gather that understands :class:`~stas_sweep.models.vit.STASOutput`). spikingjelly's
neurons copy their state per replica, so the simulation of each sub-batch is independent.
Batch-norm statistics are per replica, as with any DataParallel model.
"""

from __future__ import annotations

import torch
from torch import nn

from ..models.vit import STASOutput

_BATCHED = ("logits", "cells_processed", "halting_blocks", "active_tokens", "halting_scores", "halting_probs")
_MEANS = ("ponder_loss", "token_ratio")  # per-replica batch means -> full-batch means


def merge_outputs(outputs: list[STASOutput], device: torch.device) -> STASOutput:
    """Concatenate the per-replica outputs along the batch; average the scalar means."""
    sizes = [o.logits.shape[0] for o in outputs]
    n = float(sum(sizes))
    merged = {}
    for name in _BATCHED:
        parts = [getattr(o, name) for o in outputs]
        merged[name] = None if parts[0] is None else torch.cat([p.to(device) for p in parts])
    for name in _MEANS:
        merged[name] = sum(getattr(o, name).to(device) * (b / n) for o, b in zip(outputs, sizes))
    merged["method"] = outputs[0].method
    merged["decision_ops"] = tuple(sum(o.decision_ops[i] for o in outputs) for i in range(2))
    steps = [o.exit_steps for o in outputs]
    merged["exit_steps"] = None if steps[0] is None else torch.cat([s.to(device) for s in steps])
    return STASOutput(**merged)


class STASDataParallel(nn.DataParallel):
    """``nn.DataParallel`` for :class:`~stas_sweep.models.vit.SpikingViT`."""

    def gather(self, outputs, output_device):
        device = torch.device("cuda", output_device) if isinstance(output_device, int) else torch.device(output_device)
        return merge_outputs(list(outputs), device)


def wrap_data_parallel(model: nn.Module, device: torch.device, log=print) -> nn.Module:
    """The model to call in training: data-parallel when a CUDA trial sees several GPUs."""
    if device.type != "cuda" or torch.cuda.device_count() < 2:
        return model
    log(f"data-parallel training over {torch.cuda.device_count()} GPUs")
    return STASDataParallel(model)
