"""A-SSA two-dimensional token halting (STAS eqs. 3-10, SPEC section 2.3-2.4).

Everything the method computes about halting lives in :class:`Halting`; the backbones only
call :meth:`Halting.step` once per cell, in scan order, with the block's output tokens.

Notation (B batch, T timesteps, L blocks, K tokens, D width), one *cell* = (t, l):

    h[k,l,t] = sigmoid(alpha * X[k,l,t][0] + beta)                      eq. 3
    c        = running sum of h over the cells visited so far          eq. 4
               ``tb``: one sum over the grid, scanned (t=1,l=1..L), (t=2,l=1..L), ...
               ``b`` : the sum restarts at 0 at the start of every timestep
    N        = first cell with c >= 1 - epsilon; at the last cell      eq. 5
               (t=T,l=L in ``tb``; l=L of each timestep in ``b``) every running token halts
    r        = 1 - c_before, one minus the sum accumulated before N     eq. 6
    p        = h before N, r at N, 0 after N                            eq. 7
    rep      = 1/K sum_k sum_cells p * X   (``b``: also 1/T)            eq. 8
    ponder   = 1/(T K) sum_k sum_t (blocks run at t + r if it halted at t)   eq. 9

Decisions the paper leaves open (SPEC wins):
    * eq. 8's 1/T is dropped in ``tb``: the p of a token sum to 1 over the whole grid, so the
      mean-field representation is a proper weighted average in both modes.
    * the counts in the ponder loss carry no gradient; the remainders do (through h).
    * a halted token is masked from the *next* cell on: its block input, q/k/v and MLP spikes
      are zero and it accumulates no more score. In ``b`` it runs again at the next timestep.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

ACCUMULATIONS = ("tb", "b")


@dataclass
class HaltingConfig:
    """Hyper-parameters of A-SSA. Paper: alpha=5, beta=-25, epsilon small (0.01 as A-ViT)."""

    alpha: float = 5.0
    beta: float = -25.0
    epsilon: float = 0.01
    accumulation: str = "tb"

    def __post_init__(self) -> None:
        self.alpha = float(self.alpha)
        self.beta = float(self.beta)
        self.epsilon = check_epsilon(self.epsilon)
        if self.accumulation not in ACCUMULATIONS:
            raise ValueError(
                f"halting accumulation {self.accumulation!r} is not supported; "
                f"accepted values: {', '.join(ACCUMULATIONS)}"
            )


def check_epsilon(epsilon: float) -> float:
    epsilon = float(epsilon)
    if not 0.0 <= epsilon < 1.0:
        raise ValueError(f"epsilon must lie in [0, 1), got {epsilon}")
    return epsilon


class Halting:
    """State of one forward pass of A-SSA halting over a T x L grid of cells.

    Usage, in scan order ``for t in range(T): for l in range(L):``::

        mask = state.mask                    # [B, K] who runs cell (t, l)
        x = block_l(x * mask)                # [B, K, D] block output
        state.step(t, l, x)                  # scores, halts, accumulates

    and afterwards :meth:`representation`, :attr:`ponder`, :attr:`cells`.
    """

    def __init__(self, cfg: HaltingConfig, T: int, L: int, B: int, K: int, D: int,
                 device: torch.device, dtype: torch.dtype) -> None:
        self.cfg, self.T, self.L = cfg, T, L
        zeros = lambda *s: torch.zeros(*s, device=device, dtype=dtype)  # noqa: E731
        self.c = zeros(B, K)                       # cumulative halting score
        self.mask = torch.ones(B, K, device=device, dtype=dtype)  # 1 = running this cell
        self.rep = zeros(B, K, D)                  # sum over cells of p * X
        self.ponder_sum = zeros(B, K)              # sum over t of (N^t + r^t)
        self.cells = zeros(B, K)                   # cells each token ran, 0..T*L
        self.h = zeros(B, T, L, K)                 # every cell's h (0 where masked)
        self.p = zeros(B, T, L, K)                 # halting probabilities
        self.active = zeros(B, T, L)               # tokens run per cell

    def start_timestep(self, t: int) -> None:
        """``b`` restarts the accumulation every timestep; ``tb`` carries it on."""
        if self.cfg.accumulation == "b" and t > 0:
            self.c = torch.zeros_like(self.c)
            self.mask = torch.ones_like(self.mask)

    def step(self, t: int, l: int, x: torch.Tensor) -> None:
        """Account for cell (t, l) given the block output ``x`` ``[B, K, D]``."""
        cfg, m = self.cfg, self.mask                                 # m: [B, K]
        h = torch.sigmoid(cfg.alpha * x[..., 0] + cfg.beta) * m      # eq. 3, [B, K]
        c_new = self.c + h                                           # eq. 4
        last = l == self.L - 1 and (cfg.accumulation == "b" or t == self.T - 1)
        if last:
            halt = m.bool()                                          # forced halting
        else:
            halt = m.bool() & (c_new >= 1.0 - cfg.epsilon)           # eq. 5
        r = 1.0 - self.c                                             # eq. 6, [B, K]
        p = torch.where(halt, r, h) * m                              # eq. 7, [B, K]

        self.rep = self.rep + p.unsqueeze(-1) * x                    # eq. 8 numerator
        self.ponder_sum = self.ponder_sum + m + torch.where(halt, r, torch.zeros_like(r))
        self.cells = self.cells + m
        self.h[:, t, l] = h.detach()
        self.p[:, t, l] = p.detach()
        self.active[:, t, l] = m.sum(-1)

        self.c = c_new
        self.mask = m * (~halt).to(m.dtype)                           # masked from next cell

    def representation(self) -> torch.Tensor:
        """Mean-field representation ``[B, D]`` fed to the head (eq. 8)."""
        rep = self.rep.mean(1)                                       # 1/K sum_k, [B, D]
        if self.cfg.accumulation == "b":
            rep = rep / self.T                                       # p sum to 1 per timestep
        return rep

    def ponder(self) -> torch.Tensor:
        """Ponder loss (eq. 9): scalar, mean over T, K and the batch."""
        return (self.ponder_sum / self.T).mean()
