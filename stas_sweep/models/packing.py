"""Packed execution of a halting model: each block runs on its running tokens only.

A dense masked block computes every (timestep, image, token) and zeroes the halted ones; a
packed block gathers the running rows once and runs its token-wise layers (linear, batch
norm, LIF, MLP) on those rows alone, so halted tokens cost no time. Shapes:

    mask  [T, B, K]  1 = the token runs this block at timestep t   (from HaltingState.mask)
    rows  [R]        flat index t*B*K + b*K + k of every running cell, timestep-major
    x     [R, C]     the running rows of a token tensor [T, B, K, C]

Two parts are not token-wise:

* the attention products. SSA's ``q (k^T v)`` and SDSA's ``sum_K k * v`` sum over one
  image's tokens at one timestep. The packed q/k/v spikes are scattered into zero tensors
  ``[T, B, K, D]`` (halted tokens are silent, exactly as in the dense path) and the products
  run there: they are about 1 % of a block's multiply-accumulates, so this costs little, and
  the energy meter sees the same tensors as in the dense path.
* the LIF membranes, which carry state over timesteps. In ``tb`` a token's running timesteps
  in a block are a prefix 1..n_k (masks only shrink over time). Ordering the running tokens
  by n_k, longest first, makes the rows of timestep t the first ``counts[t]`` tokens of the
  rows of t-1, so the membrane state is carried for the running rows only by slicing. In
  ``b`` a token can halt at one timestep and run at the next; there the rows are scattered
  into ``[T, U, C]`` (U: tokens that run the block at any timestep) and the neuron runs as in
  the dense path, where a skipped timestep only leaks.

Batch norm in training takes its statistics over the running rows only (in the dense path the
halted tokens' zeros pull the statistics toward zero). In eval mode the packed path gives the
dense path's outputs up to floating-point summation order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .neuron import lif_prefix


@dataclass
class Packing:
    """Which cells of one block run, and how their rows are laid out."""

    T: int
    B: int
    K: int
    rows: torch.Tensor    # [R] flat cell index t*B*K + b*K + k, timestep-major
    slots: torch.Tensor   # [R] the row's token among the U tokens that run this block at all
    tokens: torch.Tensor  # [U] flat token index b*K + k of each slot, longest-running first
    counts: list[int]     # rows per timestep
    prefix: bool          # rows of timestep t are the first counts[t] slots (tb)

    @classmethod
    def from_mask(cls, mask: torch.Tensor) -> "Packing":
        """Pack the running cells of ``mask`` ``[T, B, K]``."""
        T, B, K = mask.shape
        run = mask.reshape(T, B * K) > 0                         # [T, BK]
        n = run.sum(0)                                           # [BK] timesteps run per token
        order = torch.argsort(n, descending=True, stable=True)
        tokens = order[: int((n > 0).sum())]                     # [U]
        run_u = run[:, tokens]                                   # [T, U]
        t, slots = run_u.nonzero(as_tuple=True)                  # timestep-major
        counts = run_u.sum(1).tolist()
        shrinking = all(a >= b for a, b in zip(counts, counts[1:]))
        prefix = shrinking and bool((slots == _ramp(counts, slots.device)).all())
        return cls(T, B, K, t * (B * K) + tokens[slots], slots, tokens, counts, prefix)

    @property
    def R(self) -> int:
        return int(self.rows.numel())

    @property
    def full(self) -> bool:
        """Every cell runs: the rows are then 0..T*B*K-1 in order and need no indexing."""
        return self.R == self.T * self.B * self.K

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """``[T, B, K, C]`` -> running rows ``[R, C]``."""
        x = x.reshape(self.T * self.B * self.K, -1)
        return x if self.full else x.index_select(0, self.rows)

    def unpack(self, x: torch.Tensor) -> torch.Tensor:
        """Running rows ``[R, C]`` -> ``[T, B, K, C]`` with zeros for the halted cells."""
        if self.full:
            return x.view(self.T, self.B, self.K, -1)
        out = x.new_zeros(self.T * self.B * self.K, x.shape[-1])
        # index_put, not index_copy: its backward keeps no copy of x
        return out.index_put((self.rows,), x).view(self.T, self.B, self.K, -1)

    def index_in(self, previous: "Packing") -> torch.Tensor:
        """Positions of this packing's rows among ``previous``'s rows (a subset of them)."""
        where = torch.full((self.T * self.B * self.K,), -1, dtype=torch.long, device=self.rows.device)
        where[previous.rows] = torch.arange(previous.R, device=self.rows.device)
        return where[self.rows]

    def groups(self) -> torch.Tensor:
        """``[R]`` index t*B + b of each row's (timestep, image)."""
        return self.rows // self.K

    def fire(self, node: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """A multi-step LIF layer on running rows ``[R, C]``; spikes ``[R, C]``."""
        if self.prefix:
            return lif_prefix(x, self.counts, node.v_threshold, node.tau, node.alpha)
        U = int(self.tokens.numel())                             # b: dense over the U tokens
        seq = x.new_zeros(self.T * U, x.shape[-1])
        flat = _ramp_offsets(self.counts, U, x.device) + self.slots  # t*U + slot per row
        seq = seq.index_put((flat,), x).view(self.T, U, -1)
        return node(seq).reshape(self.T * U, -1).index_select(0, flat)


def _ramp(counts: list[int], device) -> torch.Tensor:
    """0..counts[0]-1, 0..counts[1]-1, ... as one tensor."""
    return torch.cat([torch.arange(n, device=device) for n in counts]) if counts else torch.zeros(0, dtype=torch.long)


def _ramp_offsets(counts: list[int], U: int, device) -> torch.Tensor:
    """t*U for every row of timestep t."""
    return torch.repeat_interleave(torch.arange(len(counts), device=device) * U,
                                   torch.tensor(counts, device=device))
