"""Surrogate module learning (SML; Deng et al., ICML 2023), as the STAS paper trains with it.

SML attaches a *non-spiking* surrogate module to an intermediate block during training only.
The module reads that block's output (real valued, averaged over tokens and timesteps),
predicts the label, and its cross-entropy is added to the loss. Its gradient reaches the
earlier blocks through a short path with no spiking nonlinearity, which reduces the
accumulated surrogate-gradient error. At evaluation the module is not run, so the model's
accuracy, energy and parameter count are those of the spiking network alone.

This is a simplified form of SML: one surrogate module (Linear-BN-ReLU-Linear) on one block
(the middle one by default), loss weight ``sml.weight``; the paper's exact module layout is
not published with STAS.
"""

from __future__ import annotations

import torch
from torch import nn

from ..models.packing import Packing
from ..models.vit import SpikingViT


class SurrogateModule(nn.Module):
    """Non-spiking auxiliary classifier on a block's output ``[T', B, K, D]`` -> logits ``[B, C]``."""

    def __init__(self, dim: int, num_classes: int, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or dim
        self.net = nn.Sequential(
            nn.Linear(dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_classes)
        )

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x = torch.cat(feats, 0).mean((0, 2))  # timesteps and tokens averaged, [B, D]
        return self.net(x)


class SML:
    """Hooks the surrogate module onto ``model.blocks[block]`` while training.

    Usage per batch::

        out = model(x)                      # the hook collects the block's outputs
        loss = task + sml.weight * sml.loss(criterion, target)
    """

    def __init__(self, model: SpikingViT, weight: float = 1.0, block: int | None = None) -> None:
        self.block = model.depth // 2 if block is None else block
        if not 0 <= self.block < model.depth:
            raise ValueError(f"sml.block must lie in [0, {model.depth - 1}], got {block}")
        self.weight = weight
        self.module = SurrogateModule(model.embed_dim, model.num_classes)
        self._feats: list[torch.Tensor] = []
        self._handle = model.blocks[self.block].register_forward_hook(self._collect)

    def _collect(self, module: nn.Module, inputs, out: torch.Tensor) -> None:
        if module.training:
            packing = inputs[1] if len(inputs) > 1 and isinstance(inputs[1], Packing) else None
            self._feats.append(out if packing is None else packing.unpack(out))  # [T', B, K, D]

    def loss(self, criterion, target: torch.Tensor) -> torch.Tensor:
        feats, self._feats = self._feats, []
        if not feats:
            raise RuntimeError("SML: the model ran no training forward since the last loss")
        return criterion(self.module(feats), target)
