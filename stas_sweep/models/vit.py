"""The spiking ViT: stem -> L blocks over T timesteps -> mean-field head, with optional A-SSA.

Data flow (B batch, T timesteps, L blocks, K tokens, D width)::

    image [B, C, H, W] (or frames [B, T, C, H, W])
      -> stem (SPS or I-SPS)                       tokens X0 [T, B, K, D]
      -> each block once, on all T timesteps      X_l [T, B, K, D]
         (halting: with the keep-mask [T, B, K] of that block; HaltingState scores its output)
      -> representation [T, B, D] (mean over K, or the mean field of eq. 8 per timestep)
      -> head -> logits [B, classes]

Neuron state is reset at the start of every forward: one call is one whole T-step simulation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from spikingjelly.activation_based import functional
from torch import nn

from .blocks import Block
from .halting import HaltingState, HaltingConfig, check_epsilon
from .layers import lif
from .packing import Packing
from .stems import STEM_CLASSES, check_img_size, num_tokens

FAMILIES = tuple(STEM_CLASSES)


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


class SpikingViT(nn.Module):
    """Spikformer / Spikingformer / Spike-driven Transformer with I-SPS and A-SSA.

    Args:
        family: ``spikformer``, ``spikingformer`` or ``spikedriven``.
        depth, embed_dim, num_heads, mlp_ratio: L, D, heads, MLP expansion.
        num_classes, img_size, in_channels, timesteps: task and input shape.
        stem: ``sps`` or ``isps``.
        halting: ``None`` (static) or a dict / :class:`HaltingConfig` with alpha, beta,
            epsilon, accumulation (``tb`` or ``b``).
        qkv_bias: bias on q/k/v (spikformer's CIFAR code has it, the others do not).

    Attribute ``packed_halting`` (default True): a halting model runs each block on its
    running tokens only (:mod:`~stas_sweep.models.packing`); False runs every token and zeroes
    the halted ones, the reference the packed path is tested against.
    """

    def __init__(self, family: str = "spikformer", depth: int = 4, embed_dim: int = 384,
                 num_heads: int = 12, mlp_ratio: int = 4, num_classes: int = 10, img_size: int = 32,
                 in_channels: int = 3, timesteps: int = 4, stem: str = "isps",
                 halting: HaltingConfig | dict | None = None, qkv_bias: bool = False) -> None:
        super().__init__()
        if family not in FAMILIES:
            raise ValueError(f"family {family!r} is not supported; accepted values: {', '.join(FAMILIES)}")
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

        self.stem = STEM_CLASSES[family](in_channels, embed_dim, img_size, timesteps, stem)
        self.blocks = nn.ModuleList(
            Block(family, embed_dim, num_heads, mlp_ratio, qkv_bias) for _ in range(depth)
        )
        # SDT fires the pooled features before a per-step classifier; the others read reals
        self.head_lif = lif() if family == "spikedriven" else None
        self.head = nn.Linear(embed_dim, num_classes)
        self.apply(_init_weights)

    @staticmethod
    def _halting_config(halting: HaltingConfig | dict | None) -> HaltingConfig | None:
        if halting is None or isinstance(halting, HaltingConfig):
            return halting
        if not isinstance(halting, dict):
            raise ValueError(f"halting must be None or a dict of alpha, beta, epsilon, accumulation; got {halting!r}")
        unknown = set(halting) - {"alpha", "beta", "epsilon", "accumulation"}
        if unknown:
            raise ValueError(
                f"unknown halting keys {sorted(unknown)}; accepted keys: alpha, beta, epsilon, accumulation"
            )
        return HaltingConfig(**halting)

    def set_halting(self, halting: HaltingConfig | dict | None) -> None:
        """Switch halting on (stage 2) or off; no parameters change."""
        self.halting = self._halting_config(halting)

    def set_epsilon(self, epsilon: float) -> None:
        """STAS^epsilon: change the halting threshold 1 - epsilon with no retraining."""
        if self.halting is None:
            raise ValueError("set_epsilon needs a model with halting; this one is static")
        self.halting.epsilon = check_epsilon(epsilon)

    def forward(self, x: torch.Tensor, epsilon: float | None = None) -> STASOutput:
        functional.reset_net(self)
        x0 = self.stem(x)  # [T', B, K, D], T' = T (SPS) or 1 (I-SPS)
        x0 = x0.expand(self.timesteps, *x0.shape[1:])  # I-SPS: the same tokens at every step
        if self.halting is None:
            return self._forward_static(x0)
        cfg = self.halting
        if epsilon is not None:
            cfg = HaltingConfig(cfg.alpha, cfg.beta, epsilon, cfg.accumulation)
        return self._forward_halting(x0, cfg)

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
        """The same, each block on its running rows ``[R, D]`` only (halted tokens cost nothing)."""
        pk = Packing.from_mask(state.mask)  # every cell runs block 1
        x = pk.pack(x)  # [R, D]
        for l, block in enumerate(self.blocks):
            if l > 0:
                nxt = Packing.from_mask(state.mask)  # a subset of the cells that ran block l-1
                if nxt.R == 0:
                    break  # every token has halted: the later blocks have nothing to run
                x, pk = (x if nxt.full else x.index_select(0, nxt.index_in(pk))), nxt
            x = block(x, pk)  # [R, D]
            p = state.update(l, state.score(pk.unpack(x[:, :1])[..., 0]))  # [T, B, K]
            if pk.full:
                state.add_mean_field(p, pk.unpack(x))
            else:
                state.add_mean_field_rows(p.reshape(-1).index_select(0, pk.rows), x, pk.groups())
        return self._halting_output(state)

    def _halting_output(self, state: HaltingState) -> STASOutput:
        N = state.N.transpose(0, 1)  # [B, T, K]
        return STASOutput(
            logits=self._head(state.representation()),  # mean field per timestep [T, B, D]
            ponder_loss=state.ponder(),
            token_ratio=state.token_ratio(),
            cells_processed=N.sum(1),
            halting_blocks=N,
            active_tokens=state.active,
            halting_scores=state.h,
            halting_probs=state.p,
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


def _init_weights(m: nn.Module) -> None:
    """Reference-code initialisation: trunc-normal(0.02) linear weights, zero biases."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
