"""Encoder blocks of the three backbones, with A-SSA masking.

Every block maps tokens ``[T, B, K, D]`` to tokens ``[T, B, K, D]`` and takes the halting
keep-mask ``[T, B, K]`` (or ``None`` for a static model). Masked (halted) tokens arrive with
a zero input; every LIF layer in the block gives them no input current and zero spikes
(:func:`~stas_sweep.models.layers.fire`), so their q/k/v, attention and MLP spikes are zero:
they neither attend nor are attended, and they fire nothing.

Given a :class:`~stas_sweep.models.packing.Packing` instead of a mask, a block maps the
running rows ``[cap, D]`` to ``[cap, D]``: the same layers on the running tokens only.

* ``spikformer`` (Zhou et al. 2022): SSA with LIF on q/k/v, ``x = (q k^T v) * 0.125`` (no
  softmax), ``attn_lif`` (V_th 0.5), proj -> BN -> LIF; spike outputs added to an integer
  residual stream.
* ``spikingformer`` (Zhou et al. 2023): pre-activation: every branch starts with a LIF and
  ends with BN, so the residual stream is real valued and every synapse sees spikes.
* ``spikedriven`` (Yao et al. 2023): spike-driven self-attention ``q * SN(sum_K k * v)``
  (column sums gated by a V_th 0.5 LIF), residuals inside the modules.

Dead modules of the reference code (unused LayerNorms, SDT's unused talking-heads conv and
DropPath) are left out, which is how the published parameter counts are obtained.
"""

from __future__ import annotations

import torch
from torch import nn

from .families import Family
from .layers import TokenLinear, fire, lif
from .packing import Packing

SSA_SCALE = 0.125  # the reference code's constant, not d ** -0.5


class SpikeMatmul(nn.Module):
    """Spiking self-attention products on binary q, k, v ``[T, B, heads, K, d]``.

    ``spikformer``/``spikingformer``: ``q @ (k^T @ v) * 0.125`` (linear order, equal to the
    reference's ``(q @ k^T) @ v``). ``spikedriven``: ``q * sum_K(k * v)`` before the
    talking-heads LIF. Kept as a module so the energy meter can see its inputs.
    """

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if self.kind == "ssa":
            return q @ (k.transpose(-2, -1) @ v) * SSA_SCALE  # [T, B, heads, K, d]
        return (k * v).sum(dim=-2, keepdim=True)  # [T, B, heads, 1, d]


def _heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    T, B, K, D = x.shape
    return x.reshape(T, B, K, num_heads, D // num_heads).transpose(2, 3)  # [T, B, heads, K, d]


def _merge(x: torch.Tensor) -> torch.Tensor:
    T, B, heads, K, d = x.shape
    return x.transpose(2, 3).reshape(T, B, K, heads * d)  # [T, B, K, D]


class Attention(nn.Module):
    """SSA (spikformer / spikingformer) or SDSA (spikedriven); see the module docstring."""

    def __init__(self, family: Family, dim: int, num_heads: int, qkv_bias: bool) -> None:
        super().__init__()
        self.num_heads = num_heads
        # spikformer feeds the residual stream straight into q/k/v; the others fire first
        self.entry_lif = lif() if family.branches_fire_first else None
        self.q, self.k, self.v = (TokenLinear(dim, dim, bias=qkv_bias) for _ in range(3))
        self.q_lif, self.k_lif, self.v_lif = lif(), lif(), lif()
        self.matmul = SpikeMatmul(family.attention)
        self.attn_lif = lif(v_threshold=0.5)  # SDT: the talking-heads LIF on the column sums
        self.proj = TokenLinear(dim, dim, bias=True)
        self.proj_lif = lif() if family.branches_end_in_spikes else None

    def forward(self, x: torch.Tensor, mask: torch.Tensor | Packing | None) -> torch.Tensor:
        packed = isinstance(mask, Packing)
        pk = mask if packed else None
        s = x if self.entry_lif is None else fire(self.entry_lif, x, mask)  # [T, B, K, D] or [cap, D]
        q, k, v = (fire(node, lin(s, pk), mask) for node, lin in
                   ((self.q_lif, self.q), (self.k_lif, self.k), (self.v_lif, self.v)))
        if packed:  # the products sum over each image's tokens: run them on [T, B, K, D]
            q, k, v = mask.unpack(q), mask.unpack(k), mask.unpack(v)
        q, k, v = (_heads(t, self.num_heads) for t in (q, k, v))  # [T, B, heads, K, d]
        a = self.matmul(q, k, v)
        if self.matmul.kind == "sdsa":
            a = _merge(q * self.attn_lif(a))  # binary channel mask per head, [T, B, K, D]
            a = mask.pack(a) if packed else a
        else:
            a = _merge(a)
            a = fire(self.attn_lif, mask.pack(a) if packed else a, mask)  # [T, B, K, D] or [cap, D]
        y = self.proj(a, pk)
        if self.proj_lif is not None:
            y = fire(self.proj_lif, y, mask)
        return y


class MLP(nn.Module):
    """fc1 (D -> 4D) -> BN -> LIF -> fc2 (4D -> D) -> BN [-> LIF for spikformer]."""

    def __init__(self, family: Family, dim: int, hidden: int) -> None:
        super().__init__()
        self.entry_lif = lif() if family.branches_fire_first else None
        self.fc1 = TokenLinear(dim, hidden, bias=True)
        self.fc1_lif = lif()
        self.fc2 = TokenLinear(hidden, dim, bias=True)
        self.fc2_lif = lif() if family.branches_end_in_spikes else None

    def forward(self, x: torch.Tensor, mask: torch.Tensor | Packing | None) -> torch.Tensor:
        pk = mask if isinstance(mask, Packing) else None
        s = x if self.entry_lif is None else fire(self.entry_lif, x, mask)
        y = self.fc2(fire(self.fc1_lif, self.fc1(s, pk), mask), pk)
        if self.fc2_lif is not None:
            y = fire(self.fc2_lif, y, mask)
        return y


class Block(nn.Module):
    """One encoder block: ``x = x + Attn(x)``; ``x = x + MLP(x)``.

    In ``spikformer`` both branches end in spikes (an integer residual stream); in
    ``spikingformer`` and ``spikedriven`` they end in BN (a real, membrane-like stream).
    Branch outputs of halted tokens are zeroed, so halted tokens stay exactly zero.
    """

    def __init__(self, family: Family, dim: int, num_heads: int, mlp_ratio: int, qkv_bias: bool) -> None:
        super().__init__()
        self.attn = Attention(family, dim, num_heads, qkv_bias)
        self.mlp = MLP(family, dim, dim * mlp_ratio)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | Packing | None = None) -> torch.Tensor:
        if isinstance(mask, Packing):  # running rows [cap, D] only
            x = x + self.attn(x, mask)
            return x + self.mlp(x, mask)
        m = None if mask is None else mask.unsqueeze(-1).to(x.dtype)  # [T, B, K, 1]
        a = self.attn(x, mask)
        x = x + (a if m is None else a * m)
        f = self.mlp(x, mask)
        return x + (f if m is None else f * m)
