"""A-SSA two-dimensional token halting: the paper's eqs. 3-9 as written (SPEC 2.3-2.4).

Notation: B batch, T timesteps, L blocks, K tokens, D width. A *cell* is (block l, timestep t).
The model runs block by block; each block runs on all T timesteps in one multi-step call, and
after block l the state is told the block's output ``X[l]`` ``[T, B, K, D]``:

    h[k,l,t] = sigmoid(alpha * X[k,l,t][0] + beta),  0 where the token is masked    eq. 3
    C[k,l,t] = sum_{l' <= l} sum_{t' <= t} h[k,l',t']             (``tb``)          eq. 4
    C[k,l,t] = sum_{l' <= l} h[k,l',t]                            (``b``, Table 4)
    N[k,t]   = min { l : C[k,l,t] >= 1 - epsilon }, or L                            eq. 5
    r[k,t]   = 1 - C[k, N[k,t]-1, t]                                                eq. 6
    p[k,l,t] = h[k,l,t] for l < N;  r[k,t] for l = N;  0 for l > N                 eq. 7
    rep      = 1/(T K) sum_t sum_k sum_l p[k,l,t] X[k,l,t]                          eq. 8
    ponder   = 1/(T K) sum_t sum_k (N[k,t] + r[k,t])                                eq. 9

At every timestep a token starts again at block 1 (I-SPS feeds the same tokens at every step);
in ``tb`` the scores of earlier timesteps count, so N[k,t] never grows with t. The mask of
block l at every timestep depends only on blocks 1..l-1, which is why one call per block
suffices. A token masked at (l, t) gets zero input in block l at t, so it fires nothing and
accumulates no score there.

Decisions (SPEC): the p of a timestep are not renormalised in ``tb``; the counts N in the
ponder loss carry no gradient, the remainders r do (through h); the state is float32 even
under autocast.

The methods' configs (A-SSA's :class:`HaltingConfig` and the two baselines', docs/baselines.md)
live in :mod:`~stas_sweep.models.configs`; the temporal-exit baseline's entropy test
(:func:`exit_steps`) is here. Each method has one evaluation knob (``KNOBS``).
"""

from __future__ import annotations

import math

import torch

from .configs import CONFIGS, HaltingConfig

# the built-in methods and their evaluation knobs, as the configs name them
METHODS = tuple(CONFIGS)
KNOBS = {name: cfg.knob_name for name, cfg in CONFIGS.items()}


# The paper's score parameters per backbone (section 4.2). Spikformer's residual stream is
# non-negative, so its score reads a silent first channel as "done": sigmoid(-5 * 0 + 0) = 0.5.
PAPER_ALPHA_BETA = {"spikformer": (-5.0, 0.0), "spikingformer": (5.0, -25.0), "spikedriven": (5.0, -25.0)}


def halting_macs(cells: float, D: int) -> float:
    """MACs of A-SSA's own computation for ``cells`` scored token-cells (a token scored once in a
    block at a timestep) of width ``D`` (SPEC 2.6, App. A counts it at E_MAC):

        eq. 3  h = sigmoid(alpha * X[0] + beta)   1 MAC
        eq. 4  C += h                             1 add
        eq. 8  rep += p * X                       D MACs (the mean field's weighted sum)

    so ``D + 2`` per scored token-cell. The halting tests of eq. 5 and the choice of eq. 7 are
    comparisons and are not counted."""
    return float(cells) * (D + 2)


class HaltingState:
    """The halting state of one forward pass, updated block by block.

    Usage (dense, masked execution)::

        state = HaltingState(cfg, T, L, B, K, D, device)
        for l, block in enumerate(blocks):
            m = state.mask                       # [T, B, K] 1 = runs block l at timestep t
            x = block(x * m[..., None], m)       # [T, B, K, D]
            state.step(l, x)

    A caller that holds only the running tokens' rows uses :meth:`update` and
    :meth:`add_mean_field` instead of :meth:`step`. Afterwards: :meth:`representation`,
    :meth:`ponder`, and the records ``N``, ``h``, ``p``, ``active``.
    """

    def __init__(self, cfg: HaltingConfig, T: int, L: int, B: int, K: int, D: int,
                 device: torch.device | str, dtype: torch.dtype = torch.float32) -> None:
        self.cfg, self.T, self.L, self.K = cfg, T, L, K
        self.dtype = torch.promote_types(dtype, torch.float32)  # float32 at least, even under AMP
        f32 = dict(device=device, dtype=self.dtype)
        self.C = torch.zeros(T, B, K, **f32)       # C[k, l-1, t] for the block about to run
        self.mask = torch.ones(T, B, K, **f32)     # 1 = running in the block about to run
        self.N = torch.zeros(T, B, K, **f32)       # blocks run so far at each timestep
        self.rep = torch.zeros(T, B, D, **f32)     # sum_k sum_l p * X, per timestep
        self.ponder_sum = torch.zeros(T, B, K, **f32)  # sum of (N + r) terms
        self.h = torch.zeros(B, T, L, K, **f32)    # every cell's h (0 where masked)
        self.p = torch.zeros(B, T, L, K, **f32)    # halting probabilities
        self.active = torch.zeros(B, T, L, **f32)  # tokens run in each cell

    def score(self, x0: torch.Tensor) -> torch.Tensor:
        """eq. 3 on the first channel ``x0`` ``[T, B, K]`` of block l's output; masked -> 0."""
        return torch.sigmoid(self.cfg.alpha * x0.to(self.dtype) + self.cfg.beta) * self.mask

    def update(self, l: int, h: torch.Tensor) -> torch.Tensor:
        """Account for block l given its scores ``h`` ``[T, B, K]``; returns p ``[T, B, K]``."""
        m, C_prev = self.mask, self.C                                  # [T, B, K]
        if self.cfg.accumulation == "tb":
            C = C_prev + h.cumsum(0)                                   # eq. 4: all t' <= t
        else:
            C = C_prev + h                                             # b: this timestep only
        if l == self.L - 1:
            halt = m.bool()                                            # N = L at the latest
        else:
            halt = m.bool() & (C >= 1.0 - self.cfg.epsilon)            # eq. 5
        r = 1.0 - C_prev                                               # eq. 6 (used where halt)
        p = torch.where(halt, r, h) * m                                # eq. 7

        self.N = self.N + m                                            # block l ran where m = 1
        self.ponder_sum = self.ponder_sum + m + torch.where(halt, r, torch.zeros_like(r))
        self.h[:, :, l] = h.detach().transpose(0, 1)
        self.p[:, :, l] = p.detach().transpose(0, 1)
        self.active[:, :, l] = m.sum(-1).transpose(0, 1)
        self.C = C
        self.mask = m * (~halt).to(m.dtype)                            # masked from block l+1
        return p

    def add_mean_field(self, p: torch.Tensor, x: torch.Tensor) -> None:
        """eq. 8 numerator: ``rep[t, b] += sum_k p[t, b, k] * x[t, b, k]`` (``x`` ``[T, B, K, D]``)."""
        self.rep = self.rep + torch.einsum("tbk,tbkd->tbd", p, x.to(self.dtype))

    def add_mean_field_rows(self, p: torch.Tensor, x: torch.Tensor, groups: torch.Tensor) -> None:
        """The same on running rows: ``p`` ``[R]``, ``x`` ``[R, D]``, ``groups`` ``[R]`` = t*B + b."""
        T, B, D = self.rep.shape
        rows = p.unsqueeze(-1) * x.to(self.dtype)  # [R, D]
        rep = self.rep.reshape(T * B, D).index_put((groups,), rows, accumulate=True)  # keeps no copy of rows
        self.rep = rep.view(T, B, D)

    def step(self, l: int, x: torch.Tensor) -> torch.Tensor:
        """Dense path: scores, halting and mean field for block l's output ``x`` ``[T, B, K, D]``."""
        p = self.update(l, self.score(x[..., 0]))
        self.add_mean_field(p, x)
        return p

    def representation(self) -> torch.Tensor:
        """Mean field per timestep ``[T, B, D]`` (1/K sum_k sum_l p X); its mean over T is eq. 8."""
        return self.rep / self.K

    def ponder(self) -> torch.Tensor:
        """Ponder loss (eq. 9): 1/(T K) sum_t sum_k (N + r), averaged over the batch."""
        return self.ponder_sum.mean()

    def token_ratio(self) -> torch.Tensor:
        """Blocks run, summed over tokens and timesteps, over T*L*K; mean over images."""
        return self.N.mean((0, 2)).mean() / self.L


def normalised_entropy(logits: torch.Tensor) -> torch.Tensor:
    """``H(softmax(z)) / log(C)`` over the last axis, in [0, 1] (C = 1: 0)."""
    C = logits.shape[-1]
    logp = torch.log_softmax(logits.float(), -1)
    H = -(logp.exp() * logp).sum(-1)
    return H / math.log(C) if C > 1 else torch.zeros_like(H)


def exit_steps(step_logits: torch.Tensor, threshold: float) -> torch.Tensor:
    """``step_logits`` ``[T, B, C]`` (the logits read after each timestep alone) -> the timestep
    ``[B]`` (1..T) at which each image stops: the first t with
    ``normalised_entropy(mean_{t' <= t} z_t') < threshold``, else T."""
    T = step_logits.shape[0]
    running = step_logits.float().cumsum(0) / torch.arange(1, T + 1, device=step_logits.device).view(T, 1, 1)
    confident = normalised_entropy(running) < threshold                      # [T, B]
    confident[-1] = True                                                      # T at the latest
    return confident.float().argmax(0) + 1                                    # first True, 1-based
