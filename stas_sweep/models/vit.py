"""The spiking ViT: stem -> L blocks over T timesteps -> mean-field head, with optional A-SSA.

Data flow (B batch, T timesteps, L blocks, K tokens, D width)::

    image [B, C, H, W] (or frames [B, T, C, H, W])
      -> stem (SPS or I-SPS)                       tokens X0 [T, B, K, D]
      -> each block once, on all T timesteps      X_l [T, B, K, D]
         (halting: with the keep-mask [T, B, K] of that block; HaltingState scores its output)
      -> representation [T, B, D] (mean over K, or the mean field of eq. 8 per timestep)
      -> head -> logits [B, classes]

Neuron state is reset at the start of every forward: one call is one whole T-step simulation.

``halting`` selects the method (SPEC 2.3, docs/baselines.md): A-SSA (:class:`HaltingConfig`),
static token dropping (:class:`TokenDropConfig`: every block runs the same share of each
image's tokens, packed like A-SSA's running tokens) or temporal early exit
(:class:`TimestepExitConfig`: each image stops after the timestep whose running-mean logits are
confident enough; only the timesteps it ran are computed and metered).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from spikingjelly.activation_based import functional
from torch import nn

from .blocks import Block
from .configs import CONFIGS, HaltingConfig, MethodConfig, TimestepExitConfig, TokenDropConfig, check_epsilon
from .families import get_family
from .halting import HaltingState, exit_steps, halting_macs
from .layers import lif
from .packing import Packing
from .stems import check_img_size, num_tokens


@dataclass
class STASOutput:
    """What one forward pass returns (SPEC section 2.4/2.6)."""

    logits: torch.Tensor           # [B, classes]
    ponder_loss: torch.Tensor      # scalar; 0 for a static model
    token_ratio: torch.Tensor      # scalar: mean over images of cells run / (T*L*K); 1 if static
    cells_processed: torch.Tensor  # [B, K]: cells each token ran, 0..T*L
    halting_blocks: torch.Tensor   # [B, T, K]: N[k,t], the blocks each token ran at timestep t
    active_tokens: torch.Tensor    # [B, T, L]: tokens run in each cell
    halting_scores: torch.Tensor | None  # [B, T, L, K]: h of every cell (0 once halted); None if static
    halting_probs: torch.Tensor | None   # [B, T, L, K]: p of every cell; None if static
    method: str = "static"               # static | stas | token_drop | timestep_exit
    decision_ops: tuple[float, float] = (0.0, 0.0)  # (MACs, ACs) of the method's own decisions, whole batch
    exit_steps: torch.Tensor | None = None  # [B]: timesteps each image ran (timestep_exit), else None


class SpikingViT(nn.Module):
    """Spikformer / Spikingformer / Spike-driven Transformer with I-SPS and A-SSA.

    Args:
        family: ``spikformer``, ``spikingformer`` or ``spikedriven``.
        depth, embed_dim, num_heads, mlp_ratio: L, D, heads, MLP expansion.
        num_classes, img_size, in_channels, timesteps: task and input shape.
        stem: ``sps`` or ``isps``.
        halting: ``None`` (static), a dict / :class:`HaltingConfig` with alpha, beta,
            epsilon, accumulation (``tb`` or ``b``) for A-SSA, or a baseline:
            ``{method: token_drop, keep_ratio}`` / :class:`TokenDropConfig`,
            ``{method: timestep_exit, exit_threshold}`` / :class:`TimestepExitConfig`.
        qkv_bias: bias on q/k/v (spikformer's CIFAR code has it, the others do not).

    Attribute ``packed_halting`` (default True): a halting model runs each block on its
    running tokens only (:mod:`~stas_sweep.models.packing`); False runs every token and zeroes
    the halted ones, the reference the packed path is tested against. ``pack_buckets``: packed
    buffers take one of that many sizes (equal steps of the full size), so their shapes repeat
    across batches and torch.compile compiles each once; 0 sizes them exactly. Default (None):
    eighths once :meth:`compile_parts` has run, exact sizes in eager mode (no padding to pay for).
    """

    def __init__(self, family: str = "spikformer", depth: int = 4, embed_dim: int = 384,
                 num_heads: int = 12, mlp_ratio: int = 4, num_classes: int = 10, img_size: int = 32,
                 in_channels: int = 3, timesteps: int = 4, stem: str = "isps",
                 halting: MethodConfig | dict | None = None, qkv_bias: bool = False) -> None:
        super().__init__()
        fam = get_family(family)
        check_img_size(img_size, family)
        if embed_dim % 8 or embed_dim % num_heads:
            raise ValueError(f"embed_dim={embed_dim} must be a multiple of 8 and of num_heads={num_heads}")
        if timesteps < 1:
            raise ValueError(f"timesteps must be >= 1, got {timesteps}")
        self.family, self.depth, self.embed_dim = family, depth, embed_dim
        self.num_classes, self.img_size, self.in_channels = num_classes, img_size, in_channels
        self.timesteps, self.num_tokens = timesteps, num_tokens(img_size)
        self.stem_mode = stem
        self.halting = self._halting_config(halting)
        self.packed_halting = True
        self.pack_buckets: int | None = None
        self.compiled = False  # set by compile_parts
        self.probing = False  # True while timestep_exit runs its unmetered decision pass

        self.stem = fam.stem(in_channels, embed_dim, img_size, timesteps, stem)
        self.blocks = nn.ModuleList(
            Block(fam, embed_dim, num_heads, mlp_ratio, qkv_bias) for _ in range(depth)
        )
        # SDT fires the pooled features before a per-step classifier; the others read reals
        self.head_lif = lif() if fam.head_fires else None
        self.head = nn.Linear(embed_dim, num_classes)
        self.apply(_init_weights)

    @staticmethod
    def _halting_config(halting: MethodConfig | dict | None) -> MethodConfig | None:
        if halting is None or isinstance(halting, MethodConfig):  # a registered method's config runs as its class
            return halting
        if not isinstance(halting, dict):
            raise ValueError(f"halting must be None or a dict of alpha, beta, epsilon, accumulation; got {halting!r}")
        halting = dict(halting)
        method = halting.pop("method", "stas")
        if method not in CONFIGS:
            raise ValueError(f"halting method {method!r} is not supported; accepted values: {', '.join(CONFIGS)}")
        cls = CONFIGS[method]
        accepted = list(cls.__dataclass_fields__)
        unknown = set(halting) - set(accepted)
        if unknown:
            raise ValueError(
                f"unknown halting keys {sorted(unknown)} for method {method}; accepted keys: method, {', '.join(accepted)}"
            )
        return cls(**halting)

    @property
    def method(self) -> str:
        """``static`` or the halting method: ``stas``, ``token_drop``, ``timestep_exit``."""
        return "static" if self.halting is None else self.halting.method

    def set_halting(self, halting: MethodConfig | dict | None) -> None:
        """Switch halting on (stage 2) or off; no parameters change."""
        self.halting = self._halting_config(halting)

    def set_epsilon(self, epsilon: float) -> None:
        """STAS^epsilon: change the halting threshold 1 - epsilon with no retraining."""
        if not isinstance(self.halting, HaltingConfig):
            raise ValueError(f"set_epsilon needs a model with A-SSA halting; this one is {self.method}")
        self.halting.epsilon = check_epsilon(epsilon)

    def set_knob(self, value: float) -> None:
        """Change the method's evaluation knob (epsilon, keep_ratio or exit_threshold); no retraining."""
        if self.halting is None:
            raise ValueError("set_knob needs a model with a halting method; this one is static")
        self.halting = self.halting.with_knob(value)

    def compile_parts(self, **kwargs) -> None:
        """``torch.compile`` the stem and every block in place (``kwargs`` go to it; the state dict
        keeps its keys). The block loop stays eager: it reads each block's two counts back and
        picks the capacity bucket, so a block is compiled once per bucket it meets (and per
        train/eval mode), not once per batch. Dynamo's recompile limit is raised to that bound."""
        import torch._dynamo.config as dynamo_config

        self.compiled = True
        steps = (8 if self.pack_buckets is None else max(self.pack_buckets, 1)) + 1  # capacities, and full
        dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, 2 * steps * steps + 4)
        self.stem.compile(**kwargs)
        for block in self.blocks:
            block.compile(**kwargs)

    def forward(self, x: torch.Tensor, epsilon: float | None = None, *, knob: float | None = None) -> STASOutput:
        """``x`` images ``[B, C, H, W]`` or frames ``[B, T, C, H, W]``. ``epsilon`` (A-SSA) or
        ``knob`` (any method: epsilon, keep_ratio or exit_threshold) for this call only."""
        cfg = self.halting
        if epsilon is not None:
            if not isinstance(cfg, HaltingConfig):
                raise ValueError(f"epsilon applies to A-SSA halting; this model is {self.method} (use knob=)")
            knob = epsilon
        if knob is not None:
            if cfg is None:
                raise ValueError("knob needs a model with a halting method; this one is static")
            cfg = cfg.with_knob(knob)
        if isinstance(cfg, TimestepExitConfig) and not self.training:
            return self._forward_exit(x, cfg)
        functional.reset_net(self)
        x0 = self._tokens(x, self.timesteps)
        if cfg is None:
            return self._forward_static(x0)
        if isinstance(cfg, TimestepExitConfig):  # training: the static model on all T
            out = self._forward_static(x0)
            out.method = cfg.method
            return out
        if isinstance(cfg, TokenDropConfig):
            return self._forward_token_drop(x0, cfg)
        return self._forward_halting(x0, cfg)

    def _tokens(self, x: torch.Tensor, steps: int) -> torch.Tensor:
        """Stem tokens for the first ``steps`` timesteps ``[steps, B, K, D]``. SPS runs its
        convolutions on those timesteps only; I-SPS runs once (on the whole input) and its
        tokens are the same at every step."""
        if self.stem_mode == "sps" and steps != self.timesteps:
            T = self.stem.T
            self.stem.T = steps
            try:
                x0 = self.stem(x[:, :steps] if x.dim() == 5 else x)
            finally:
                self.stem.T = T
        else:
            x0 = self.stem(x)  # [T', B, K, D], T' = T (SPS) or 1 (I-SPS)
        return x0.expand(steps, *x0.shape[1:])  # I-SPS: the same tokens at every step

    def _forward_static(self, x: torch.Tensor) -> STASOutput:
        for block in self.blocks:
            x = block(x)  # [T, B, K, D]
        T, B, K, _ = x.shape
        logits = self._head(x.mean(2))  # tokens averaged, [T, B, D]
        return STASOutput(
            logits=logits,
            ponder_loss=x.new_zeros(()),
            token_ratio=x.new_ones(()),
            cells_processed=x.new_full((B, K), float(T * self.depth)),
            halting_blocks=x.new_full((B, T, K), float(self.depth)),
            active_tokens=x.new_full((B, T, self.depth), float(K)),
            halting_scores=None,
            halting_probs=None,
        )

    def _forward_halting(self, x: torch.Tensor, cfg: HaltingConfig) -> STASOutput:
        """Layer-major A-SSA: block l runs once on all T timesteps with its mask ``[T, B, K]``."""
        T, B, K, D = x.shape
        state = HaltingState(cfg, T, self.depth, B, K, D, x.device, x.dtype)
        if self.packed_halting:
            return self._forward_packed(x, state)
        for l, block in enumerate(self.blocks):
            m = state.mask  # [T, B, K], depends on blocks < l only
            x = block(x * m.unsqueeze(-1).to(x.dtype), m)  # halted tokens enter as zeros
            state.step(l, x)
        return self._halting_output(state)

    def _forward_packed(self, x: torch.Tensor, state: HaltingState) -> STASOutput:
        """The same, each block on its running rows ``[cap, D]`` only (halted tokens cost nothing).
        Building each later block's packing reads two counts back (its one host read); nothing
        else in the loop waits for the device."""
        T, B, K, _ = x.shape
        prefix = state.cfg.accumulation == "tb"  # masks only shrink over time
        # eager: exact sizes and the rows per timestep (read with the two counts); compiled:
        # capacity buckets and nothing the compiled code would specialise on
        buckets = self.pack_buckets if self.pack_buckets is not None else (8 if self.compiled else 0)
        pk = Packing.everything(T, B, K, x.device)  # every cell runs block 1
        x = pk.pack(x)  # [cap, D]
        scored = 0  # cells scored, summed over blocks (the count of state.active, known on the host)
        for l, block in enumerate(self.blocks):
            if l > 0:
                nxt = Packing.from_mask(state.mask, buckets, prefix, counts=not self.compiled)  # within block l-1's
                if nxt.R == 0:
                    break  # every token has halted: the later blocks have nothing to run
                x, pk = nxt.take(pk, x), nxt
            x = block(x, pk)  # [cap, D]
            scored += pk.R
            p = state.update(l, state.score(pk.unpack(x[:, :1])[..., 0]))  # [T, B, K]
            if pk.full:
                state.add_mean_field(p, pk.unpack(x))
            else:
                state.add_mean_field_rows(pk.gather(p), x, pk.groups())
        return self._halting_output(state, scored)

    def _forward_token_drop(self, x: torch.Tensor, cfg: TokenDropConfig) -> STASOutput:
        """Static token dropping: block l runs the ``n = cfg.kept(K)`` tokens of each image with
        the largest spike count of its input (sum over T and channels, ties to the lower index),
        the same tokens at every timestep; the others skip the block unchanged."""
        T, B, K, D = x.shape
        n, L = cfg.kept(K), self.depth
        runs = x.new_zeros(B, K)  # blocks each token ran
        for block in self.blocks:
            score = x.detach().abs().sum((0, 3))  # [B, K] spike count of the block input
            keep = torch.argsort(score, dim=1, descending=True, stable=True)[:, :n]
            m = x.new_zeros(B, K).scatter_(1, keep, 1.0)  # [B, K]
            runs = runs + m
            mask = m.unsqueeze(0).expand(T, B, K)  # the same tokens at every timestep
            if not self.packed_halting:
                x = block(x, mask)  # dropped tokens: no input current, residual unchanged
                continue
            pk = Packing.from_mask(mask, prefix=True, counts=not self.compiled,
                                   sizes=(T * B * n, B * n, (B * n,) * T))  # known: no host read
            y = block(pk.pack(x), pk)  # [R, D]: the kept tokens only
            x = y.view(T, B, K, D) if pk.full else x.reshape(T * B * K, D).index_put((pk.rows,), y).view(T, B, K, D)
        return STASOutput(
            logits=self._head(x.mean(2)),
            ponder_loss=x.new_zeros(()),
            token_ratio=x.new_tensor(n / K),
            cells_processed=runs * T,
            halting_blocks=runs.unsqueeze(1).expand(B, T, K).contiguous(),
            active_tokens=x.new_full((B, T, L), float(n)),
            halting_scores=None,
            halting_probs=None,
            method=cfg.method,
            decision_ops=(0.0, float(L * T * K * D * B)),  # the scores: one add per input value
        )

    @contextlib.contextmanager
    def _probe(self):
        """An unmetered pass: :class:`~stas_sweep.energy.EnergyMeter` ignores what runs inside."""
        self.probing = True
        try:
            yield
        finally:
            self.probing = False

    def _forward_exit(self, x: torch.Tensor, cfg: TimestepExitConfig) -> STASOutput:
        """Temporal early exit, evaluation only.

        1. Decision pass (unmetered): the static model on all T, its logits read after every
           timestep ``z_t`` ``[T, B, C]``; :func:`exit_steps` gives each image's stop e (1..T).
        2. What runs: the images of each e again on their first e timesteps only. LIF neurons
           are causal, so their logits equal the decision pass's running mean at e; this pass is
           the one the energy meter counts (what a timestep-by-timestep machine would run).
        """
        with self._probe():
            functional.reset_net(self)
            x0 = self._tokens(x, self.timesteps)
            for block in self.blocks:
                x0 = block(x0)
            e = exit_steps(self._step_logits(x0.mean(2)), cfg.exit_threshold)  # [B]
        B, T, L, K = x.shape[0], self.timesteps, self.depth, self.num_tokens
        logits = None
        for steps in sorted(set(e.tolist())):
            idx = (e == steps).nonzero()[:, 0]
            functional.reset_net(self)
            xs = self._tokens(x.index_select(0, idx), steps)
            for block in self.blocks:
                xs = block(xs)  # [steps, b, K, D]
            z = self._step_logits(xs.mean(2)).mean(0)  # [b, C]
            logits = z.new_zeros(B, z.shape[-1]) if logits is None else logits
            logits = logits.index_put((idx,), z)
        ran = (torch.arange(T, device=e.device).view(1, T) < e.view(B, 1)).to(logits.dtype)  # [B, T]
        C = logits.shape[-1]
        return STASOutput(
            logits=logits,
            ponder_loss=logits.new_zeros(()),
            token_ratio=e.float().mean() / T,
            cells_processed=(e.to(logits.dtype) * L).view(B, 1).expand(B, K).contiguous(),
            halting_blocks=(ran * L).unsqueeze(-1).expand(B, T, K).contiguous(),
            active_tokens=(ran * K).unsqueeze(-1).expand(B, T, L).contiguous(),
            halting_scores=None,
            halting_probs=None,
            method=cfg.method,
            # per image and timestep run: a running sum of C logits (AC), softmax and p log p (2C MAC)
            decision_ops=(float(2 * C * e.sum()), float(C * e.sum())),
            exit_steps=e,
        )

    def _halting_output(self, state: HaltingState, scored: int | None = None) -> STASOutput:
        """``scored``: the cells scored, where the caller knows it without reading the device."""
        N = state.N.transpose(0, 1)  # [B, T, K]
        scored = float(state.active.sum()) if scored is None else float(scored)
        return STASOutput(
            logits=self._head(state.representation()),  # mean field per timestep [T, B, D]
            ponder_loss=state.ponder(),
            token_ratio=state.token_ratio(),
            cells_processed=N.sum(1),
            halting_blocks=N,
            active_tokens=state.active,
            halting_scores=state.h,
            halting_probs=state.p,
            method=state.cfg.method,
            decision_ops=(halting_macs(scored, self.embed_dim), 0.0),  # eqs. 3, 4, 8 per scored cell
        )

    def _head(self, rep: torch.Tensor) -> torch.Tensor:
        """``rep`` ``[T'', B, D]`` -> logits ``[B, classes]``.

        spikformer / spikingformer: Linear on the mean over T (their ``head(x.mean(0))``).
        spikedriven: LIF over the T steps, Linear at every step, mean over T. With halting the
        mean field of each timestep drives the head LIF at that step.
        """
        if self.head_lif is None:
            return self.head(rep.mean(0))
        return self.head(self.head_lif(rep.contiguous())).mean(0)

    def _step_logits(self, rep: torch.Tensor) -> torch.Tensor:
        """The head read after every timestep alone: ``rep`` ``[T'', B, D]`` -> ``[T'', B, classes]``;
        their mean over T'' is :meth:`_head`'s logits (the head is linear; SDT's head LIF is causal)."""
        if self.head_lif is None:
            return self.head(rep)
        return self.head(self.head_lif(rep.contiguous()))


def _init_weights(m: nn.Module) -> None:
    """Reference-code initialisation: trunc-normal(0.02) linear weights, zero biases."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
