"""One record per objective: what a sweep can optimise, and how each one is read and drawn.

Every objective is a metric :func:`stas_sweep.train.evaluate.evaluate` measures on the validation
set, in every epoch's report and in every row of a trial's final evaluation table (one row per
knob value: one candidate point of the front). A search-space file names objectives by these
names with a direction (``objectives: {accuracy: max, latency_ms: min}``); the schema, the front
(and its ``best:<objective>``), MOASHA, the plots and the ``pareto`` table read these records.

``direction`` is the natural one (the one ``best:<name>`` takes when the sweep did not name the
objective); ``reference`` the hypervolume reference a search-space file may leave out (None: the
file must give one, e.g. an energy above the static model's); ``axis`` the plots' axis title,
to which the sweep's direction is added (``accuracy (%, max)``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class ObjectiveRecord:
    name: str
    direction: Literal["max", "min"]
    unit: str
    measured: str
    axis: str
    reference: float | None = None

    def axis_label(self, mode: str | None = None) -> str:
        """``axis`` with the sweep's direction: ``accuracy (%, max)``, ``energy_mj (min)``."""
        if mode is None:
            return self.axis
        return self.axis[:-1] + f", {mode})" if self.axis.endswith(")") else f"{self.axis} ({mode})"


OBJECTIVES: dict[str, ObjectiveRecord] = {o.name: o for o in (
    ObjectiveRecord("accuracy", "max", "%", "top-1 accuracy over the validation set", "accuracy (%)", reference=0.0),
    ObjectiveRecord("energy_mj", "min", "mJ / image",
                    "energy per image, the paper's convention (eqs. 11-12), counted by the meter "
                    "(stas_sweep.energy) over the first energy_batches validation batches", "energy_mj"),
    ObjectiveRecord("energy_strict_mj", "min", "mJ / image",
                    "energy per image, strict convention (non-binary inputs at MAC), same pass as energy_mj",
                    "energy_strict_mj"),
    ObjectiveRecord("token_ratio", "min", "",
                    "token-timestep-block cells run over T*L*K, averaged over the validation images",
                    "token_ratio", reference=1.0),
    ObjectiveRecord("latency_ms", "min", "ms / image",
                    "median over the metered validation batches after the first (warm-up) of the batch's "
                    "forward wall time over its images, on the trial's own device, at the eval batch size "
                    "(docs/latency.md)", "latency_ms (ms / image)"),
)}


def names() -> tuple[str, ...]:
    """Every objective's name, in record order."""
    return tuple(OBJECTIVES)


def get(name: str) -> ObjectiveRecord:
    """The record of ``name``; ValueError naming the accepted objectives otherwise."""
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise ValueError(f"unknown objective {name!r}; accepted objectives: {', '.join(OBJECTIVES)}") from None


def axis_label(name: str, mode: str | None = None) -> str:
    """The axis title of ``name`` (a metric without a record: its name, with ``mode``)."""
    record = OBJECTIVES.get(name)
    if record is None:
        return name if mode is None else f"{name} ({mode})"
    return record.axis_label(mode)
