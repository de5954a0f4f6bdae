"""Packed execution of a halting model: each block runs on its running tokens only.

A dense masked block computes every (timestep, image, token) and zeroes the halted ones; a
packed block gathers the running rows once and runs its token-wise layers (linear, batch
norm, LIF, MLP) on those rows alone, so halted tokens cost no time. Shapes:

    mask  [T, B, K]  1 = the token runs this block at timestep t   (from HaltingState.mask)
    rows  [cap]      flat index t*B*K + b*K + k of every running cell, timestep-major, then padding
    x     [cap, C]   the running rows of a token tensor [T, B, K, C], then zero padding rows

No data-dependent host read happens inside a block: every index stays on the device. Building
the packing of a block reads a few numbers back, once (R running cells, U running tokens and,
in eager ``tb``, the rows per timestep). Eager mode sizes the buffers exactly (cap = R). Once the
model is compiled (:meth:`~stas_sweep.models.vit.SpikingViT.compile_parts`) they are sized by
capacity buckets (``buckets`` equal steps of the full size, R <= cap), so the tensor shapes take
few values and each is compiled once; the cap - R padding rows are excluded by masks: they are
zero where a layer reads them, batch norm takes no statistics from them, and no result is read
from them.

Two parts are not token-wise:

* the attention products. SSA's ``q (k^T v)`` and SDSA's ``sum_K k * v`` sum over one
  image's tokens at one timestep. The packed q/k/v spikes are scattered into zero tensors
  ``[T, B, K, D]`` (halted tokens are silent, exactly as in the dense path) and the products
  run there: they are about 1 % of a block's multiply-accumulates, so this costs little, and
  the energy meter sees the same tensors as in the dense path.
* the LIF membranes, which carry state over timesteps. In ``tb`` a token's running timesteps
  are a prefix 1..n_k (masks only shrink over time); ordering the running tokens by n_k,
  longest first, makes the rows of timestep t the first ``counts[t]`` tokens of the rows of
  t-1. Eager blocks carry the membranes by slicing the rows with those host counts
  (:func:`~stas_sweep.models.neuron.lif_prefix`); compiled blocks, which must not depend on
  them, gather the rows into a grid ``[T, Ucap, C]`` (slot s: one of the U tokens that run the
  block at any timestep) on the device (:func:`~stas_sweep.models.neuron.lif_grid`); both keep
  only the running rows' potentials for the backward. In ``b`` a token can halt at one timestep
  and run at the next; there the grid cells that do not run get zero input and the neuron runs
  as in the dense path, where a skipped timestep only leaks.

Batch norm in training takes its statistics over the running rows only (in the dense path the
halted tokens' zeros pull the statistics toward zero). In eval mode the packed path gives the
dense path's outputs up to floating-point summation order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .neuron import lif_grid, lif_prefix


def capacity(n: int, full: int, buckets: int) -> int:
    """``n`` rounded up to the next of ``buckets`` equal steps of ``full`` (``buckets`` 0: ``n``)."""
    if buckets <= 0 or n >= full:
        return n
    step = -(-full // buckets)
    return min(full, -(-n // step) * step)


@dataclass
class Packing:
    """Which cells of one block run, and how their rows are laid out (all indices on the device)."""

    T: int
    B: int
    K: int
    R: int                # running cells (rows that hold a cell)
    cap: int              # rows of a packed tensor: R, then cap - R padding rows
    full: bool            # every cell runs: rows are 0..T*B*K-1 in order and need no indexing
    few: bool             # fewer than 2 running rows: too few for batch statistics
    rows: torch.Tensor    # [cap] flat cell index t*B*K + b*K + k of each row; padding -> T*B*K
    src: torch.Tensor     # [cap] the same with padding -> 0 (a row to read and then mask)
    cells: torch.Tensor   # [cap] grid cell t*Ucap + slot of each row; padding -> 0
    grid: torch.Tensor    # [T*Ucap] row of each grid cell (a running one's own row, else any row)
    pad: torch.Tensor | None       # [cap, 1] True on padding rows; None when sized exactly (no buckets)
    grid_off: torch.Tensor | None  # [T*Ucap, 1] True on grid cells that do not run; None in tb
    counts: tuple[int, ...] | None = None  # rows per timestep (tb, eager): the LIF slices rows by them

    @classmethod
    def everything(cls, T: int, B: int, K: int, device) -> "Packing":
        """Every cell runs (block 1): known without reading anything back."""
        n = T * B * K
        rows = torch.arange(n, device=device)
        return cls(T, B, K, n, n, True, n < 2, rows, rows, rows, rows, None, None)

    @classmethod
    def from_mask(cls, mask: torch.Tensor, buckets: int = 0, prefix: bool = False, counts: bool = False,
                  sizes: tuple[int, int, tuple[int, ...] | None] | None = None) -> "Packing":
        """Pack the running cells of ``mask`` ``[T, B, K]``.

        ``buckets``: capacities in that many equal steps of the full size (0: exact sizes).
        ``prefix``: every token runs a prefix of the timesteps (``tb`` halting, token dropping).
        ``counts``: also keep the rows per timestep on the host (``prefix`` only), for the LIF's
        row slices; a compiled block is given none, so its code never depends on them.
        ``sizes``: (running cells, running tokens, rows per timestep or None) where the caller
        knows them; otherwise they are read back from the device, the one host read of this call.
        """
        T, B, K = mask.shape
        BK, dev = B * K, mask.device
        run = mask.reshape(T, BK) > 0                                     # [T, BK]
        n = run.sum(0)                                                    # [BK] timesteps each token runs
        counts = counts and prefix
        if sizes is None:
            read = torch.cat((torch.stack((n.sum(), (n > 0).sum())), run.sum(1) if counts else n[:0])).tolist()
            sizes = (read[0], read[1], tuple(read[2:]) if counts else None)
        R, U, steps = sizes
        if R == T * BK:
            return cls.everything(T, B, K, dev)
        cap, ucap = capacity(R, T * BK, buckets), capacity(U, BK, buckets)
        tokens = torch.argsort(n, descending=True, stable=True)[:ucap]   # [Ucap] running tokens first
        runs = run.index_select(1, tokens).reshape(-1)                    # [T*Ucap] grid cell (t, slot) runs
        row = runs.cumsum(0) - 1                                          # [T*Ucap] its row, timestep-major
        dest = torch.where(runs, row, cap)                                # cap: not a row (dropped below)
        cells = torch.zeros(cap + 1, dtype=torch.long, device=dev).scatter_(
            0, dest, torch.arange(T * ucap, device=dev))[:cap]           # [cap] grid cell of each row
        flat = (torch.arange(T, device=dev).unsqueeze(1) * BK + tokens).reshape(-1)  # [T*Ucap] cell index
        real = torch.arange(cap, device=dev) < R                          # [cap]
        src = torch.where(real, flat.index_select(0, cells), 0)
        rows = torch.where(real, src, T * BK)
        pad = None if buckets <= 0 else ~real.unsqueeze(1)  # bucketed: always a mask, one graph per bucket
        grid_off = None if prefix else ~runs.unsqueeze(1)
        return cls(T, B, K, R, cap, False, R < 2, rows, src, cells, row.clamp(min=0), pad, grid_off,
                   steps if counts else None)

    @property
    def ucap(self) -> int:
        return self.grid.shape[0] // self.T

    def _clear(self, x: torch.Tensor) -> torch.Tensor:
        """Zero the padding rows of ``x`` ``[cap, C]``."""
        return x if self.pad is None else x.masked_fill(self.pad, 0)

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """``[T, B, K, C]`` -> running rows ``[cap, C]`` (padding rows zero)."""
        x = x.reshape(self.T * self.B * self.K, -1)
        return x if self.full else self._clear(x.index_select(0, self.src))

    def take(self, previous: "Packing", x: torch.Tensor) -> torch.Tensor:
        """Rows ``x`` ``[previous.cap, C]`` packed as ``previous`` -> this packing's rows ``[cap, C]``
        (this packing's cells are a subset of ``previous``'s)."""
        if self.full:
            return x
        where = torch.zeros(self.T * self.B * self.K + 1, dtype=torch.long, device=x.device)
        where = where.index_put_((previous.rows,), torch.arange(previous.cap, device=x.device))
        return self._clear(x.index_select(0, where.index_select(0, self.src)))

    def unpack(self, x: torch.Tensor) -> torch.Tensor:
        """Running rows ``[cap, C]`` -> ``[T, B, K, C]`` with zeros for the halted cells."""
        n = self.T * self.B * self.K
        if self.full:
            return x.view(self.T, self.B, self.K, -1)
        out = x.new_zeros(n + 1, x.shape[-1])  # row n takes the padding rows' writes
        # index_put, not index_copy: its backward keeps no copy of x
        return out.index_put((self.rows,), x)[:n].view(self.T, self.B, self.K, -1)

    def gather(self, v: torch.Tensor) -> torch.Tensor:
        """Per-cell values ``[T, B, K]`` -> ``[cap]`` (0 on padding rows)."""
        v = v.reshape(-1)
        if self.full:
            return v
        v = v.index_select(0, self.src)
        return v if self.pad is None else v.masked_fill(self.pad[:, 0], 0)

    def groups(self) -> torch.Tensor:
        """``[cap]`` index t*B + b of each row's (timestep, image) (padding: image 0 of step 0)."""
        return self.src // self.K

    def fire(self, node: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """A multi-step LIF layer on running rows ``[cap, C]``; spikes ``[cap, C]``, 0 on padding."""
        T, C = self.T, x.shape[-1]
        if self.full:
            return node(x.reshape(T, -1, C)).reshape(-1, C)
        if self.grid_off is None:  # tb: prefixes, the rows' potentials alone kept for backward
            if self.counts is not None:  # eager: slices of the rows, no gathers
                return lif_prefix(x, self.counts, node.v_threshold, node.tau, node.alpha)
            return lif_grid(x, self.grid, self.cells, self.pad, T, node.v_threshold, node.tau, node.alpha)
        seq = x.index_select(0, self.grid).masked_fill(self.grid_off, 0)  # [T*Ucap, C]; b: a skipped step leaks
        spikes = node(seq.view(T, -1, C)).reshape(-1, C)         # [T*Ucap, C]
        return self._clear(spikes.index_select(0, self.cells))
