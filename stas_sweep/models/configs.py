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
    knob_bounds: ClassVar[dict[str, float]]  # the knob's accepted range, as pydantic's Field takes it
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
    knob_bounds: ClassVar[dict[str, float]] = {"ge": 0.0, "lt": 1.0}
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
    knob_bounds: ClassVar[dict[str, float]] = {"gt": 0.0, "le": 1.0}
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
    knob_bounds: ClassVar[dict[str, float]] = {"ge": 0.0, "le": 1.0}
    decision_row: ClassVar[str] = "exit_test"

    def __post_init__(self) -> None:
        self.exit_threshold = check_exit_threshold(self.exit_threshold)


def check_range(name: str, value: float, bounds: dict[str, float], what: str = "") -> float:
    """``value`` as a float when it lies in ``bounds`` (``ge``/``gt`` below, ``le``/``lt`` above),
    else a ValueError naming the range, e.g. ``epsilon must lie in [0, 1), got 1.0``."""
    value = float(value)
    lo, lo_open = (bounds["gt"], True) if "gt" in bounds else (bounds.get("ge", float("-inf")), False)
    hi, hi_open = (bounds["lt"], True) if "lt" in bounds else (bounds.get("le", float("inf")), False)
    if not ((lo < value if lo_open else lo <= value) and (value < hi if hi_open else value <= hi)):
        raise ValueError(f"{name}{what} must lie in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}, "
                         f"got {value}")
    return value


def check_epsilon(epsilon: float) -> float:
    return check_range("epsilon", epsilon, HaltingConfig.knob_bounds)


def check_keep_ratio(keep_ratio: float) -> float:
    return check_range("keep_ratio", keep_ratio, TokenDropConfig.knob_bounds)


def check_exit_threshold(threshold: float) -> float:
    return check_range("exit_threshold", threshold, TimestepExitConfig.knob_bounds, " (a normalised entropy)")


# the configs the model runs, by method name (a halting dict's ``method`` key)
CONFIGS: dict[str, type[MethodConfig]] = {c.method: c for c in (HaltingConfig, TokenDropConfig, TimestepExitConfig)}
