"""Surrogate module learning (SML; Deng et al., ICML 2023), as its public code has it
(github.com/brain-intelligence-lab/surrogate_module_learning: ``models/surrogate_block.py``,
``functions/loss_functions.py``, ``Train_distribute_pallel.py``) and as the STAS paper trains with it.

SML attaches *non-spiking* surrogate modules to intermediate blocks during training only. Each
reads its block's output averaged over the timesteps, predicts the label, and enters the loss;
its gradient reaches the earlier blocks through a short path with no spiking nonlinearity,
which reduces the accumulated surrogate-gradient error. At evaluation no module runs, so the
model's accuracy, energy and parameter count are those of the spiking network alone.

The surrogate module (the public ``SurrogateBlock``), on a block output ``[T', B, K, D]``::

    mean over T'  ->  the K tokens as a sqrt(K) x sqrt(K) map of D channels
    [Conv1x1(D -> c) if D > c]  then per kernel k in ``kernels`` (default 7, 5, 3):
        Conv k x k (stride 2 for 7 and 5, else 1; padding k // 2) - BN - LeakyReLU(0.01)
    AdaptiveAvgPool(2, 2) - Flatten - Linear(4c -> 512) - BN - LeakyReLU(0.01) - Linear(512 -> classes)

The loss (the public ``SBDistillationLoss``), with f the model's logits and q_1..q_N the
modules'; KL_tau(a, b) = KL(softmax(b / tau) || softmax(a / tau)) with b detached, batch mean::

    hard  = (CE(f) + alpha * sum_i CE(q_i)) / (1 + N alpha)
    soft  = sum_i (KL_tau(q_i, f) + KL_tau(f, q_i)) / (2 N)
    L_SML = lamb * soft + (1 - lamb) * hard

It replaces the task term of eq. 10: ``loss = L_SML + delta_p * ponder``. Defaults are the
public training script's: c = 256, kernels (7, 5, 3), tau = 3, alpha = 0.5, lamb = 0.9. The
placement scales its ResNet-18 one (after blocks 3 and 6 of 8) to L blocks: after blocks
ceil(3L / 8) and ceil(6L / 8), 1-based, the last block excluded (its output is the model's).
The STAS paper does not state its placement or loss parameters; all are config keys.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..models.packing import Packing
from ..models.vit import SpikingViT

STRIDED = {7: 2, 5: 2, 3: 1}  # the public module's kernels: 7 and 5 downsample, 3 keeps the size


def default_blocks(depth: int) -> list[int]:
    """0-based blocks after which the public code's ResNet-18 placement puts a module, scaled to
    ``depth`` blocks; empty when the model is too shallow (one block)."""
    return sorted({math.ceil(f * depth) - 1 for f in (3 / 8, 6 / 8)} - {depth - 1})


def _conv(c_in: int, c_out: int, k: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, STRIDED.get(k, 1), k // 2, bias=False),
                         nn.BatchNorm2d(c_out), nn.LeakyReLU(0.01, inplace=True))


class SurrogateModule(nn.Module):
    """The public ``SurrogateBlock`` on a block's tokens ``[T', B, K, D]`` -> logits ``[B, C]``."""

    def __init__(self, dim: int, num_classes: int, channels: int = 256, kernels: tuple[int, ...] = (7, 5, 3)) -> None:
        super().__init__()
        convs = []
        if dim > channels:
            convs.append(_conv(dim, channels, 1))
            convs += [_conv(channels, channels, k) for k in kernels]
        else:
            convs.append(_conv(dim, channels, kernels[0]))
            convs += [_conv(channels, channels, k) for k in kernels[1:]]
        self.convs = nn.Sequential(*convs)
        self.prediction = nn.Sequential(
            nn.AdaptiveAvgPool2d((2, 2)), nn.Flatten(), nn.Linear(channels * 4, 512), nn.BatchNorm1d(512),
            nn.LeakyReLU(0.01, inplace=True), nn.Linear(512, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.mean(0)  # timesteps averaged (the public module's static input), [B, K, D]
        B, K, D = x.shape
        side = math.isqrt(K)
        x = x.transpose(1, 2).reshape(B, D, side, side)  # tokens back on their grid, [B, D, H, W]
        return self.prediction(self.convs(x))


def soft_kl(inputs: torch.Tensor, target: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(softmax(target / tau) || softmax(inputs / tau)), batch mean, the target detached."""
    log_q = F.log_softmax(inputs / temperature, dim=1)
    p = F.softmax(target.detach() / temperature, dim=1)
    return F.kl_div(log_q, p, reduction="batchmean")


def sml_loss(criterion, logits: torch.Tensor, surrogate: list[torch.Tensor], target: torch.Tensor, *,
             alpha: float, lamb: float, temperature: float) -> torch.Tensor:
    """The public ``SBDistillationLoss``: see the module docstring."""
    N = len(surrogate)
    hard = (criterion(logits, target) + alpha * sum(criterion(q, target) for q in surrogate)) / (1 + N * alpha)
    soft = sum(soft_kl(q, logits, temperature) + soft_kl(logits, q, temperature) for q in surrogate) / (2 * N)
    return lamb * soft + (1 - lamb) * hard


class SML:
    """Hooks one surrogate module onto each of ``model.blocks[b]`` for b in ``blocks`` while training.

    Usage per batch::

        out = model(x)                                  # the hooks collect the blocks' outputs
        loss = sml.loss(criterion, out.logits, target)  # replaces the task loss
    """

    def __init__(self, model: SpikingViT, blocks: list[int] | None = None, *, alpha: float = 0.5,
                 lamb: float = 0.9, temperature: float = 3.0, channels: int = 256,
                 kernels: tuple[int, ...] = (7, 5, 3)) -> None:
        self.blocks = default_blocks(model.depth) if blocks is None else sorted(set(blocks))
        if not self.blocks or not all(0 <= b < model.depth for b in self.blocks):
            raise ValueError(f"sml.blocks must name blocks in [0, {model.depth - 1}], got {blocks} "
                             f"({model.depth} block(s): give them explicitly, or switch SML off)")
        if math.isqrt(model.num_tokens) ** 2 != model.num_tokens:
            raise ValueError(f"SML needs a square token grid; this model has {model.num_tokens} tokens")
        self.alpha, self.lamb, self.temperature = alpha, lamb, temperature
        self.module = nn.ModuleList(SurrogateModule(model.embed_dim, model.num_classes, channels, tuple(kernels))
                                    for _ in self.blocks)
        self._feats: dict[int, torch.Tensor] = {}  # module -> [T', B, K, D] of the last training forward
        self._ran = False  # a training forward ran since the last loss
        self._handles = [model.blocks[b].register_forward_hook(self._collector(i)) for i, b in enumerate(self.blocks)]
        self._handles.append(model.register_forward_hook(self._mark))

    def _mark(self, module: nn.Module, _inputs, _out) -> None:
        self._ran = self._ran or module.training

    def _collector(self, i: int):
        def collect(module: nn.Module, inputs, out: torch.Tensor) -> None:
            if module.training:
                packing = inputs[1] if len(inputs) > 1 and isinstance(inputs[1], Packing) else None
                self._feats[i] = out if packing is None else packing.unpack(out)
        return collect

    def loss(self, criterion, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """L_SML of the last training forward (the task term of eq. 10 with SML on). A block that
        did not run (every token halted before it) has no module term; with none, the plain task loss."""
        feats, self._feats = self._feats, {}
        if not self._ran:
            raise RuntimeError("SML: the model ran no training forward since the last loss")
        self._ran = False
        surrogate = [m(feats[i]).float()
                     for i, m in enumerate(self.module) if i in feats]
        if not surrogate:
            return criterion(logits, target)
        return sml_loss(criterion, logits, surrogate, target, alpha=self.alpha, lamb=self.lamb,
                        temperature=self.temperature)
