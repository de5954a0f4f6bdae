"""Small building blocks shared by the three backbones.

Tensor layout follows spikingjelly: multi-step tensors are ``[T, B, ...]``; stateless layers
(convolutions, linear layers, batch norm, pooling) run on the flattened ``[T*B, ...]`` batch
through :class:`spikingjelly.activation_based.layer.SeqToANNContainer`, so batch-norm statistics
are shared over time and batch exactly as in the reference code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from spikingjelly.activation_based import layer
from torch import nn

from .neuron import FusedLIF
from .packing import Packing

SeqToANN = layer.SeqToANNContainer


def lif(v_threshold: float = 1.0) -> FusedLIF:
    """The LIF neuron every reference model uses: tau=2, hard reset to 0, detached reset,
    sigmoid surrogate (alpha=4), multi-step. ``attn_lif`` and SDT's talking-heads LIF use
    ``v_threshold=0.5``.

    A :class:`~stas_sweep.models.neuron.FusedLIF`: the dynamics and spikes of spikingjelly's
    ``LIFNode(tau=2.0, v_threshold=v_threshold, v_reset=0.0, detach_reset=True,
    surrogate_function=surrogate.Sigmoid(alpha=4.0), step_mode="m")`` as one autograd node
    (spikingjelly 2.0 runs that node as a Python loop on CPU)."""
    return FusedLIF(tau=2.0, v_threshold=v_threshold, v_reset=0.0, detach_reset=True, alpha=4.0)


def fire(node: FusedLIF, x: torch.Tensor, mask: torch.Tensor | Packing | None) -> torch.Tensor:
    """Run a LIF layer on token tensor ``x`` ``[T, B, K, C]`` with the halting keep-mask
    ``mask`` ``[T, B, K]`` (1 = token still running, 0 = halted), or on running rows ``[R, C]``
    of a :class:`Packing`.

    Halted tokens get no input current (their membranes only leak) and their spikes are
    forced to exactly zero, so they neither send nor receive attention and fire nothing.
    """
    if mask is None:
        return node(x)
    if isinstance(mask, Packing):
        return mask.fire(node, x)
    m = mask.unsqueeze(-1).to(x.dtype)  # [T, B, N, 1]
    return node(x * m) * m


class TokenLinear(nn.Module):
    """A 1x1 projection on tokens followed by batch norm over channels.

    Equivalent to the reference code's ``Linear`` / ``Conv1d(k=1)`` / ``Conv2d(k=1)`` + BN:
    input ``[T, B, K, C_in]`` -> output ``[T, B, K, C_out]``, or packed rows ``[R, C_in]`` ->
    ``[R, C_out]`` (batch-norm statistics then come from the running rows only).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool) -> None:
        super().__init__()
        self.fc = nn.Linear(in_features, out_features, bias=bias)
        self.bn = nn.BatchNorm1d(out_features)

    def forward(self, x: torch.Tensor, pk: Packing | None = None) -> torch.Tensor:
        if x.dim() == 2:  # packed rows [cap, C_in]
            y = self.fc(x)
            if not self.training:
                return self.bn(y)
            if (pk.few if pk is not None else y.shape[0] < 2):  # too few running rows for batch statistics
                bn = self.bn
                return F.batch_norm(y, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
            if pk is None or pk.pad is None:
                return self.bn(y)
            return masked_batch_norm(self.bn, y, pk.pad)
        T, B, K, _ = x.shape
        y = self.fc(x.flatten(0, 2))  # [T*B*K, C_out]
        y = self.bn(y)  # BN over channels; statistics over time, batch and tokens
        return y.reshape(T, B, K, -1)


def masked_batch_norm(bn: nn.BatchNorm1d, y: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
    """Training-mode batch norm of ``y`` ``[cap, C]`` with statistics over the rows where ``pad``
    ``[cap, 1]`` is False: ``bn`` on those rows alone (running statistics updated alike), without
    reading their number back to the host. Statistics in float32 (``y`` may be half under AMP)."""
    keep = (~pad).to(torch.float32)                           # [cap, 1]
    n = keep.sum()
    y32 = y.float()
    mean = (y32 * keep).sum(0) / n                            # [C]
    d = (y32 - mean) * keep
    var = (d * d).sum(0) / n                                  # biased, as batch norm normalises
    if bn.track_running_stats:
        with torch.no_grad():
            bn.num_batches_tracked.add_(1)
            m = bn.momentum if bn.momentum is not None else 1.0 / bn.num_batches_tracked.float()
            bn.running_mean.lerp_(mean, m)
            bn.running_var.lerp_(var * n / (n - 1), m)        # unbiased, as batch norm stores
    out = (y32 - mean) * torch.rsqrt(var + bn.eps)
    if bn.affine:
        out = out * bn.weight + bn.bias
    return out.to(y.dtype)
