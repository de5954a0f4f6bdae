"""Spike patch splitting stems: SPS (per timestep) and I-SPS (one pass, SPEC section 2.2).

All stems are five 3x3 convolutions without bias, each followed by batch norm
(C_in -> D/8 -> D/4 -> D/2 -> D -> D), with MaxPool(3, 2, 1) stages that turn an image of
side S into (S / 2**n_pool)**2 tokens. ``n_pool`` is 2 below 128 pixels (CIFAR layout:
32 -> 8x8 = 64 tokens) and 4 from 128 up (ImageNet layout: 224 -> 14x14 = 196 tokens; DVS
128 -> 8x8 = 64 tokens).

Modes. Activations are ``[T', B, C, H, W]``:

* ``sps``: ``T' = T``. The image is repeated T times (direct encoding) or, for event
  frames ``[B, T, C, H, W]``, taken frame by frame; every convolution runs on every timestep.
* ``isps``: ``T' = 1``. Each convolution runs once. Each LIF layer is driven by that one
  input for T steps, its spikes are (pooled, then) averaged over T into one rate map, and the
  next convolution runs once on that map. The output tokens are the same at every timestep.
  Event frames are averaged over T before the first convolution (the convolution is linear,
  so this equals averaging its T outputs).
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import SeqToANN, lif

STEMS = ("sps", "isps")


def pool_stages(img_size: int) -> int:
    return 2 if img_size < 128 else 4


def num_tokens(img_size: int) -> int:
    return (img_size // 2 ** pool_stages(img_size)) ** 2


def check_img_size(img_size: int, family: str) -> None:
    n = pool_stages(img_size)
    if not isinstance(img_size, int) or img_size < 2**n or img_size % 2**n:
        raise ValueError(
            f"img_size={img_size!r} cannot be tokenised by the {family} stem: it halves the image "
            f"{n} times, so img_size must be a positive multiple of {2**n}"
            + (" (sizes from 128 up use 4 halvings: multiples of 16)" if n == 2 else "")
        )


def _conv_bn(c_in: int, c_out: int) -> nn.Module:
    return SeqToANN(nn.Conv2d(c_in, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out))


def _pool() -> nn.Module:
    return SeqToANN(nn.MaxPool2d(3, 2, 1))


class Stem(nn.Module):
    """Shared machinery of the three stems; subclasses define the layer order."""

    def __init__(self, in_channels: int, dim: int, img_size: int, timesteps: int, mode: str) -> None:
        super().__init__()
        if mode not in STEMS:
            raise ValueError(f"stem {mode!r} is not supported; accepted values: {', '.join(STEMS)}")
        self.mode, self.T = mode, timesteps
        self.widths = [in_channels, dim // 8, dim // 4, dim // 2, dim]
        self.first_pool = 4 - pool_stages(img_size)  # stages >= this one are pooled

    @property
    def integrate(self) -> bool:
        return self.mode == "isps"

    def fire(self, node: nn.Module, x: torch.Tensor, pool: nn.Module | None = None) -> torch.Tensor:
        """LIF (then optional max-pool) on ``[T', B, C, H, W]``; I-SPS integrates over T."""
        if self.integrate:
            s = node(x.expand(self.T, *x.shape[1:]))  # one input driving T steps, [T, B, ...]
            s = pool(s) if pool is not None else s
            return s.mean(0, keepdim=True)  # rate map, [1, B, ...]
        s = node(x)
        return pool(s) if pool is not None else s

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Image ``[B, C, H, W]`` or frames ``[B, T, C, H, W]`` -> ``[T', B, C, H, W]``."""
        if x.dim() == 4:
            return x.unsqueeze(0) if self.integrate else x.unsqueeze(0).repeat(self.T, 1, 1, 1, 1)
        if x.dim() == 5:
            if x.shape[1] != self.T:
                raise ValueError(f"event frames have {x.shape[1]} timesteps, the model {self.T}")
            x = x.transpose(0, 1)  # [T, B, C, H, W]
            return x.mean(0, keepdim=True) if self.integrate else x
        raise ValueError(f"expected input [B, C, H, W] or [B, T, C, H, W], got {tuple(x.shape)}")

    @staticmethod
    def tokens(x: torch.Tensor) -> torch.Tensor:
        return x.flatten(3).transpose(-1, -2).contiguous()  # [T', B, C, H, W] -> [T', B, K, D]


class SPS(Stem):
    """Spikformer SPS: 4 x (conv-BN-LIF[-pool]), then RPE conv-BN-LIF added to its input."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        w = self.widths
        self.convs = nn.ModuleList(_conv_bn(w[i], w[i + 1]) for i in range(4))
        self.lifs = nn.ModuleList(lif() for _ in range(4))
        self.pools = nn.ModuleList(_pool() if i >= self.first_pool else nn.Identity() for i in range(4))
        self.rpe_conv, self.rpe_lif = _conv_bn(w[4], w[4]), lif()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.encode(x)
        for conv, node, pool in zip(self.convs, self.lifs, self.pools):
            x = self.fire(node, conv(x), pool)
        return self.tokens(self.fire(self.rpe_lif, self.rpe_conv(x)) + x)  # values in {0,1,2}


class SpikingTokenizer(Stem):
    """Spikingformer tokenizer: conv0-BN, then 4 x (LIF[-pool]-conv-BN); real-valued output."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        w = self.widths + [self.widths[-1]]
        self.convs = nn.ModuleList(_conv_bn(w[i], w[i + 1]) for i in range(5))
        self.lifs = nn.ModuleList(lif() for _ in range(4))
        self.pools = nn.ModuleList(_pool() if i >= self.first_pool else nn.Identity() for i in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.convs[0](self.encode(x))
        for conv, node, pool in zip(self.convs[1:], self.lifs, self.pools):
            x = conv(self.fire(node, x, pool))
        return self.tokens(x)


class MSSPS(Stem):
    """Spike-driven Transformer MS_SPS: 3 x (conv-BN-LIF[-pool]), conv3-BN[-pool] (membrane),
    then LIF -> RPE conv-BN added to it (a membrane-level residual)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        w = self.widths
        self.convs = nn.ModuleList(_conv_bn(w[i], w[i + 1]) for i in range(4))
        self.lifs = nn.ModuleList(lif() for _ in range(3))
        self.pools = nn.ModuleList(_pool() if i >= self.first_pool else nn.Identity() for i in range(4))
        self.rpe_lif, self.rpe_conv = lif(), _conv_bn(w[4], w[4])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.encode(x)
        for conv, node, pool in zip(self.convs[:3], self.lifs, self.pools):
            x = self.fire(node, conv(x), pool)
        feat = self.pools[3](self.convs[3](x))  # pooled before any LIF
        return self.tokens(self.rpe_conv(self.fire(self.rpe_lif, feat)) + feat)

