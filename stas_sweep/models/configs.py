"""What each halting method's model runs on: one small config dataclass per method (data, no torch).

A config names its ``method``, its one evaluation knob (``knob_name``: the field a sweep or the
``eval`` command varies with no retraining, as STAS^epsilon varies epsilon) and the energy meter's
row for the method's own decision operations (``decision_row``, :mod:`stas_sweep.energy`). The model
(:mod:`~stas_sweep.models.vit`) runs a config by its class: A-SSA's halting state for
:class:`HaltingConfig`, packed token dropping for :class:`TokenDropConfig`, the per-timestep exit
test for :class:`TimestepExitConfig`. Everything else about a method (its grid, label, colour,
command-line flag) is its record in :mod:`stas_sweep.methods`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

ACCUMULATIONS = ("tb", "b")


class MethodConfig:
    """A method's config with its one evaluation knob, the field ``knob_name``."""

    method: ClassVar[str]
    knob_name: ClassVar[str]
    decision_row: ClassVar[str]  # the energy report's row of the method's own decisions

    @property
    def knob(self) -> float:
        return getattr(self, self.knob_name)

    def with_knob(self, value: float):
        """The same config at another knob value (checked as the constructor checks it)."""
        return replace(self, **{self.knob_name: value})


@dataclass
class HaltingConfig(MethodConfig):
    """Hyper-parameters of A-SSA. Paper: alpha=5, beta=-25 (Spikingformer; Spikformer uses
    alpha=-5, beta=0), epsilon small (0.01 as A-ViT), ``tb`` accumulation."""

    alpha: float = 5.0
    beta: float = -25.0
    epsilon: float = 0.01
    accumulation: str = "tb"
    method: ClassVar[str] = "stas"
    knob_name: ClassVar[str] = "epsilon"
    decision_row: ClassVar[str] = "halting_score"

    def __post_init__(self) -> None:
        self.alpha = float(self.alpha)
        self.beta = float(self.beta)
        self.epsilon = check_epsilon(self.epsilon)
        if self.accumulation not in ACCUMULATIONS:
            raise ValueError(
                f"halting accumulation {self.accumulation!r} is not supported; "
                f"accepted values: {', '.join(ACCUMULATIONS)}"
            )

@dataclass
class TokenDropConfig(MethodConfig):
    """Static token dropping (STATA-style baseline): every block runs a fixed share
    ``keep_ratio`` of the K tokens, ``max(1, round(keep_ratio * K))`` of them, chosen per image
    by the block input's spike count (sum of ``|x|`` over timesteps and channels), the same
    tokens at every timestep. A dropped token skips the block (its residual stream passes
    through unchanged). No ponder loss."""

    keep_ratio: float = 0.7
    method: ClassVar[str] = "token_drop"
    knob_name: ClassVar[str] = "keep_ratio"
    decision_row: ClassVar[str] = "token_score"

    def __post_init__(self) -> None:
        self.keep_ratio = check_keep_ratio(self.keep_ratio)

    def kept(self, K: int) -> int:
        """Tokens each block runs: ``max(1, round(keep_ratio * K))``."""
        return max(1, min(K, int(round(self.keep_ratio * K))))


@dataclass
class TimestepExitConfig(MethodConfig):
    """Temporal early exit (DT-SNN-style baseline): a static model read after every timestep
    t on the running mean of its per-timestep logits; an image stops at the first t whose
    normalised softmax entropy ``H(softmax(mean_{t' <= t} z_t')) / log(classes)`` is below
    ``exit_threshold`` (``0``: never early, every image runs all T; ``1``: nearly always at
    t = 1), and at T otherwise. No ponder loss; in training the model runs all T."""

    exit_threshold: float = 0.2
    method: ClassVar[str] = "timestep_exit"
    knob_name: ClassVar[str] = "exit_threshold"
    decision_row: ClassVar[str] = "exit_test"

    def __post_init__(self) -> None:
        self.exit_threshold = check_exit_threshold(self.exit_threshold)


def check_epsilon(epsilon: float) -> float:
    epsilon = float(epsilon)
    if not 0.0 <= epsilon < 1.0:
        raise ValueError(f"epsilon must lie in [0, 1), got {epsilon}")
    return epsilon



def check_keep_ratio(keep_ratio: float) -> float:
    keep_ratio = float(keep_ratio)
    if not 0.0 < keep_ratio <= 1.0:
        raise ValueError(f"keep_ratio must lie in (0, 1], got {keep_ratio}")
    return keep_ratio


def check_exit_threshold(threshold: float) -> float:
    threshold = float(threshold)
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"exit_threshold (a normalised entropy) must lie in [0, 1], got {threshold}")
    return threshold



# the configs the model runs, by method name (a halting dict's ``method`` key)
CONFIGS: dict[str, type[MethodConfig]] = {c.method: c for c in (HaltingConfig, TokenDropConfig, TimestepExitConfig)}
