"""A fused multi-step LIF neuron with a hand-written backward, and its two packed forms.

spikingjelly 2.0 runs its LIF on CPU as the Python reference loop registered at AutogradCPU: every
timestep records about eleven autograd nodes (charge, surrogate spike, reset). Here the whole
``[T, ...]`` sequence is one autograd node. The forward runs the same arithmetic in the same order
under no-grad (so the spikes are bitwise those of :class:`spikingjelly.activation_based.neuron.LIFNode`),
saves the charged potential ``H``, and the backward applies the surrogate gradient in one
vectorised pass and only the membrane carry step by step.

Dynamics (``decay_input=True``; spikingjelly's ``LIFNode`` and the reference models):

.. math::
    H[t] = V[t-1] + \\frac{1}{\\tau}\\left(X[t] - (V[t-1] - V_{reset})\\right)

    S[t] = \\Theta(H[t] - V_{th})

    V[t] = H[t]\\,(1 - S'[t]) + V_{reset}\\,S'[t],\\quad S' = \\mathrm{sg}(S)\\ \\text{(detach\\_reset)}

with the sigmoid surrogate :math:`\\partial S/\\partial H = \\alpha\\,\\sigma(\\alpha x)(1-\\sigma(\\alpha x))`,
:math:`x = H - V_{th}`. ``v_reset=None`` selects the soft reset :math:`V[t] = H[t] - V_{th} S'[t]`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from spikingjelly.activation_based import base

__all__ = ["FusedLIF", "lif_grid", "lif_multi_step", "lif_prefix"]


def _charge(x: torch.Tensor, v: torch.Tensor, tau: float, decay_input: bool, v_reset: float | None,
            out: torch.Tensor | None = None) -> torch.Tensor:
    """H = V + (X - (V - V_reset)) / tau, in spikingjelly's order of operations, written into ``out``.

    For tau = 2 (every model here) ``/ tau`` and ``* (1 / tau)`` round identically, so
    ``add(v, d, alpha=1/tau)`` is the same number in one pass instead of two."""
    vr = 0.0 if v_reset is None else v_reset
    if decay_input:
        h = torch.sub(x, v - vr if vr != 0.0 else v, out=out)
        if math.frexp(tau)[0] == 0.5:  # tau a power of two: 1/tau exact
            return torch.add(v, h, alpha=1.0 / tau, out=h)
        return h.div_(tau).add_(v)  # v + a == a + v exactly
    d = (v - vr).div_(tau) if vr != 0.0 else v / tau
    return torch.sub(v, d, out=out).add_(x)


class _MultiStepLIF(torch.autograd.Function):
    """``(x_seq [T, ...], v0 [...]) -> (spikes [T, ...], v_T [...])`` as one autograd node."""

    @staticmethod
    def forward(ctx, x_seq, v0, tau, v_threshold, v_reset, detach_reset, alpha, decay_input):
        keep = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        ctx.dtypes = (x_seq.dtype, v0.dtype)
        x_seq, v0 = x_seq.float(), v0.float()  # membranes in float32, as spikingjelly (AMP inputs are half)
        h_seq = torch.empty_like(x_seq, memory_format=torch.contiguous_format) if keep else None
        fired = torch.empty(x_seq.shape, dtype=torch.bool, device=x_seq.device)
        v = v0
        for t in range(x_seq.shape[0]):
            h = _charge(x_seq[t], v, tau, decay_input, v_reset, out=h_seq[t] if keep else None)
            torch.ge(h, v_threshold, out=fired[t])  # (h - v_th >= 0) == (h >= v_th) in IEEE arithmetic
            if v_reset is None:  # soft reset: H - S v_th
                v = torch.where(fired[t], h - v_threshold, h)
            else:  # hard reset: S v_reset + (1 - S) H, the same number
                v = h.masked_fill(fired[t], v_reset) if keep else h.masked_fill_(fired[t], v_reset)
        ctx.params = (tau, v_threshold, v_reset, detach_reset, alpha, decay_input)
        spikes = fired.to(ctx.dtypes[0])
        if keep:
            ctx.save_for_backward(h_seq, spikes)
            ctx.set_materialize_grads(False)
        return spikes, v

    @staticmethod
    def backward(ctx, grad_spikes, grad_v):
        tau, v_threshold, v_reset, detach_reset, alpha, decay_input = ctx.params
        h_seq, spikes = ctx.saved_tensors
        s = (h_seq - v_threshold).mul_(alpha).sigmoid_()
        if grad_spikes is None:
            grad_spikes = torch.zeros_like(h_seq)
        # dL/dS dS/dH for every step at once; sigmoid_backward(g, s) = g (1 - s) s, the sigmoid surrogate
        gh = torch.ops.aten.sigmoid_backward(grad_spikes.float(), s).mul_(alpha)
        # dV[t]/dH[t] (None = 1)
        if v_reset is None:
            reset_grad = None if detach_reset else torch.sub(1.0, s).mul_(s).mul_(-alpha * v_threshold).add_(1.0)
        elif detach_reset:
            reset_grad = torch.sub(1.0, spikes.float())  # hard reset, detached: 1 - S
        else:
            sg = torch.sub(1.0, s).mul_(s).mul_(alpha)
            reset_grad = torch.sub(v_reset, h_seq).mul_(sg).sub_(spikes.float()).add_(1.0)
        keep_v = 1.0 - 1.0 / tau  # dH[t+1]/dV[t]; gh*keep_v == gh - gh/tau exactly for tau = 2
        T = h_seq.shape[0]
        if grad_v is not None:  # dL/dV[T-1] from the final membrane
            gh[T - 1].add_(grad_v.float() * (1.0 if reset_grad is None else reset_grad[T - 1]))
        for t in range(T - 2, -1, -1):  # gh[t] += dL/dV[t] dV[t]/dH[t], dL/dV[t] = keep_v gh[t+1]
            if reset_grad is None:
                gh[t].add_(gh[t + 1], alpha=keep_v)
            else:
                gh[t].addcmul_(gh[t + 1], reset_grad[t], value=keep_v)
        grad_v0 = gh[0].mul(keep_v)
        grad_x = gh.div_(tau) if decay_input else gh
        return grad_x.to(ctx.dtypes[0]), grad_v0.to(ctx.dtypes[1]), None, None, None, None, None, None


def lif_multi_step(x_seq: torch.Tensor, v0: torch.Tensor, tau: float = 2.0, v_threshold: float = 1.0,
                   v_reset: float | None = 0.0, detach_reset: bool = True, alpha: float = 4.0,
                   decay_input: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Functional multi-step LIF: ``x_seq [T, ...]``, initial membrane ``v0 [...]`` ->
    ``(spikes [T, ...], v_T [...])``. Differentiable in both inputs."""
    return _MultiStepLIF.apply(x_seq, v0, float(tau), float(v_threshold),
                               None if v_reset is None else float(v_reset), bool(detach_reset), float(alpha),
                               bool(decay_input))


class FusedLIF(base.MemoryModule):
    """Multi-step LIF neuron (``[T, B, ...]`` in, spikes of the same shape out), one autograd node.

    The drop-in for ``neuron.LIFNode(tau, v_threshold=..., v_reset=..., detach_reset=...,
    surrogate_function=surrogate.Sigmoid(alpha), step_mode="m")``: same dynamics (see the module
    docstring), bitwise-equal spikes, surrogate gradients equal to rounding. The membrane state
    ``v`` is a spikingjelly memory, so :func:`spikingjelly.activation_based.functional.reset_net`
    resets it to ``v_reset`` (0 for the soft reset).

    On CUDA tensors it calls spikingjelly's own ``functional.lif_multi_step``, whose fused GPU
    kernel runs all T steps in one launch; this CPU path would launch about 5 T kernels.
    """

    def __init__(self, tau: float = 2.0, v_threshold: float = 1.0, v_reset: float | None = 0.0,
                 detach_reset: bool = True, alpha: float = 4.0, decay_input: bool = True) -> None:
        super().__init__()
        if not tau > 1.0:
            raise ValueError(f"tau must be greater than 1, got {tau}")
        self.tau = float(tau)
        self.v_threshold = float(v_threshold)
        self.v_reset = None if v_reset is None else float(v_reset)
        self.detach_reset = bool(detach_reset)
        self.alpha = float(alpha)
        self.decay_input = bool(decay_input)
        self.register_memory("v", 0.0 if v_reset is None else float(v_reset))
        self.step_mode = "m"

    def supported_step_mode(self) -> tuple[str]:
        return ("m",)

    def extra_repr(self) -> str:
        return (f"tau={self.tau}, v_threshold={self.v_threshold}, v_reset={self.v_reset}, "
                f"detach_reset={self.detach_reset}, alpha={self.alpha}, decay_input={self.decay_input}, "
                + super().extra_repr())

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        v = self.v
        if not isinstance(v, torch.Tensor) or v.shape != x_seq.shape[1:]:
            if isinstance(v, torch.Tensor) and v.numel() != 1:
                raise ValueError(f"{type(self).__name__}: input step shape {tuple(x_seq.shape[1:])} does not match "
                                 f"the membrane state {tuple(v.shape)}; call functional.reset_net between batches")
            v = torch.full(x_seq.shape[1:], float(v), dtype=x_seq.dtype, device=x_seq.device)
        if x_seq.is_cuda:  # spikingjelly's fused kernel, one launch for all T (H200: docs/benchmarks.md)
            from spikingjelly.activation_based import functional, surrogate

            spikes, self.v, _ = functional.lif_multi_step(
                x_seq, v.float(), self.tau, self.decay_input, self.v_threshold, self.v_reset,
                surrogate.Sigmoid(alpha=self.alpha), self.detach_reset)
            return spikes
        spikes, self.v = lif_multi_step(x_seq, v, self.tau, self.v_threshold, self.v_reset, self.detach_reset,
                                        self.alpha, self.decay_input)
        return spikes


class _PrefixLIF(torch.autograd.Function):
    """LIF over timestep-major packed rows whose running set shrinks to a prefix (see :func:`lif_prefix`)."""

    @staticmethod
    def forward(ctx, x, counts, v_threshold, tau, alpha):
        keep = ctx.needs_input_grad[0]
        ctx.dtype = x.dtype
        x = x.float()
        R = sum(counts)  # rows past R are padding: no spike, no gradient
        h_all = torch.empty_like(x, memory_format=torch.contiguous_format) if keep else None
        fired = torch.empty(x.shape, dtype=torch.bool, device=x.device)
        fired[R:] = False
        if keep:
            h_all[R:] = 0.0
        v = x.new_zeros((counts[0], *x.shape[1:]))  # V[-1] = v_reset = 0 for every token
        start = 0
        for n in counts:
            rows = slice(start, start + n)
            h = _charge(x[rows], v[:n], tau, True, 0.0, out=h_all[rows] if keep else None)
            torch.ge(h, v_threshold, out=fired[rows])
            v = h.masked_fill(fired[rows], 0.0) if keep else h.masked_fill_(fired[rows], 0.0)
            start += n
        ctx.params = (tuple(counts), R, v_threshold, tau, alpha)
        spikes = fired.to(ctx.dtype)
        if keep:
            ctx.save_for_backward(h_all, spikes)
        return spikes

    @staticmethod
    def backward(ctx, grad_spikes):
        counts, R, v_threshold, tau, alpha = ctx.params
        h_all, spikes = ctx.saved_tensors
        s = (h_all - v_threshold).mul_(alpha).sigmoid_()
        gh = torch.ops.aten.sigmoid_backward(grad_spikes.float(), s).mul_(alpha)  # spike path of every row
        gh[R:] = 0.0
        running = torch.sub(1.0, spikes.float())  # dV/dH with the reset detached: 1 - S
        keep_v = 1.0 - 1.0 / tau
        starts = [sum(counts[:t]) for t in range(len(counts))]
        for t in range(len(counts) - 2, -1, -1):
            # the m tokens that ran on at t+1 are the first m rows of step t: gh[t] += keep_v gh[t+1] (1 - S[t])
            m, a, b = counts[t + 1], starts[t], starts[t + 1]
            gh[a: a + m].addcmul_(gh[b: b + m], running[a: a + m], value=keep_v)
        return gh.div_(tau).to(ctx.dtype), None, None, None, None


def lif_prefix(x: torch.Tensor, counts: Sequence[int], v_threshold: float, tau: float = 2.0,
               alpha: float = 4.0) -> torch.Tensor:
    """LIF on packed running tokens: ``x [cap, C]`` -> spikes ``[cap, C]``, ``R = sum(counts) <= cap``
    running rows, then padding rows (spikes 0, no gradient).

    Rows are timestep-major: rows ``[0, counts[0])`` are timestep 0, the next ``counts[1]`` rows
    timestep 1, and so on. ``counts`` is non-increasing and the rows of timestep t are the *first*
    ``counts[t]`` tokens of timestep t-1 (a token that stops running never comes back). Every
    membrane starts at 0 and is carried per token; the result equals :class:`FusedLIF` (hard reset
    to 0, detached reset, sigmoid surrogate) on the dense ``[T, counts[0], C]`` sequence with the
    halted rows dropped. One autograd node, hand-written backward. ``counts`` are host integers
    (the rows are sliced by them): the eager packed path; a compiled one uses :func:`lif_grid`.
    """
    counts = [int(n) for n in counts]
    if sum(counts) > x.shape[0]:
        raise ValueError(f"lif_prefix: counts sum to {sum(counts)} but x has {x.shape[0]} rows")
    if any(b > a for a, b in zip(counts, counts[1:])) or (counts and counts[-1] < 0):
        raise ValueError(f"lif_prefix: counts must be non-increasing and non-negative, got {counts}")
    if not counts or counts[0] == 0:
        return torch.zeros_like(x)
    return _PrefixLIF.apply(x, counts, float(v_threshold), float(tau), float(alpha))


class _GridLIF(torch.autograd.Function):
    """LIF over packed rows whose running timesteps are a prefix per token (see :func:`lif_grid`)."""

    @staticmethod
    def forward(ctx, x, grid, cells, pad, T, v_threshold, tau, alpha):
        ctx.dtype, C = x.dtype, x.shape[-1]
        seq = x.float().index_select(0, grid).view(T, -1, C)     # [T, Ucap, C] the rows on the grid
        h_grid = torch.empty_like(seq)
        v = seq.new_zeros(seq.shape[1:])                          # V[-1] = v_reset = 0 for every token
        for t in range(T):
            h = _charge(seq[t], v, tau, True, 0.0, out=h_grid[t])
            v = h.masked_fill(h >= v_threshold, 0.0)              # (h - v_th >= 0) == (h >= v_th)
        h_rows = h_grid.view(-1, C).index_select(0, cells)        # [cap, C] each row's charged potential
        fired = h_rows >= v_threshold
        if pad is not None:
            fired.masked_fill_(pad, False)
        spikes = fired.to(ctx.dtype)
        if ctx.needs_input_grad[0]:  # the rows only: halted cells keep nothing for the backward
            ctx.save_for_backward(h_rows, spikes, cells, pad)
            ctx.params = (seq.shape[0] * seq.shape[1], T, v_threshold, tau, alpha)
        return spikes

    @staticmethod
    def backward(ctx, grad_spikes):
        n_grid, T, v_threshold, tau, alpha = ctx.params
        h_rows, spikes, cells, pad = ctx.saved_tensors
        C = h_rows.shape[-1]
        s = (h_rows - v_threshold).mul_(alpha).sigmoid_()
        gh_rows = torch.ops.aten.sigmoid_backward(grad_spikes.float(), s).mul_(alpha)  # spike path of every row
        running = torch.sub(1.0, spikes.float())                  # dV/dH with the reset detached: 1 - S
        if pad is not None:  # padding rows: no gradient, and they add nothing where they land
            gh_rows.masked_fill_(pad, 0.0)
            running.masked_fill_(pad, 0.0)
        # back on the grid; a cell that does not run holds 0 and passes nothing on (it follows the
        # token's prefix, so no running cell comes after it)
        gh = h_rows.new_zeros(n_grid, C).index_put_((cells,), gh_rows, accumulate=True).view(T, -1, C)
        keep = h_rows.new_zeros(n_grid, C).index_put_((cells,), running, accumulate=True).view(T, -1, C)
        keep_v = 1.0 - 1.0 / tau
        for t in range(T - 2, -1, -1):  # gh[t] += dL/dV[t] dV[t]/dH[t], dL/dV[t] = keep_v gh[t+1]
            gh[t].addcmul_(gh[t + 1], keep[t], value=keep_v)
        grad_x = gh.view(n_grid, C).index_select(0, cells).div_(tau)
        if pad is not None:
            grad_x.masked_fill_(pad, 0.0)
        return grad_x.to(ctx.dtype), None, None, None, None, None, None, None


def lif_grid(x: torch.Tensor, grid: torch.Tensor, cells: torch.Tensor, pad: torch.Tensor | None, T: int,
             v_threshold: float, tau: float = 2.0, alpha: float = 4.0) -> torch.Tensor:
    """LIF on packed running rows whose running timesteps are a prefix per token (``tb`` halting).

    ``x`` ``[cap, C]``: the rows; ``grid`` ``[T*Ucap]``: the row of every (timestep, token slot)
    cell (any row where the cell does not run); ``cells`` ``[cap]``: each row's grid cell;
    ``pad`` ``[cap, 1]``: True on padding rows (or None). Every membrane starts at 0 and is carried
    per token over the grid; spikes ``[cap, C]`` (0 on padding) equal :class:`FusedLIF` (hard reset
    to 0, detached reset, sigmoid surrogate) on the dense sequence with the halted cells dropped,
    because what a cell after a token's prefix holds never reaches one of its running cells. One
    autograd node; it saves the rows' potentials only, and no index leaves the device.
    """
    return _GridLIF.apply(x, grid, cells, pad, int(T), float(v_threshold), float(tau), float(alpha))
