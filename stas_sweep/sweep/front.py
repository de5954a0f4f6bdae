"""A sweep's candidate points and their Pareto front: computed here, drawn and logged elsewhere.

A *point* is one (trial, knob value) evaluation of a full-budget trial::

    {"trial_id": "a1b2", "method": "stas", "epsilon": 0.2, "keep_ratio": None,
     "exit_threshold": None, "accuracy": 91.0, "energy_mj": 0.41, ...,
     "halting.alpha": 5.3, "halting.beta": -7.1}        # the trial's searched keys, dotted

``method`` is the trial's halting method (a record of :mod:`stas_sweep.methods`: stas,
token_drop, timestep_exit, ...); its knob (``epsilon``, ``keep_ratio``, ``exit_threshold``)
holds the value evaluated, every other method's knob None.

This module names the metrics every trial reports each epoch, the metrics a point carries and
the keys a front's hover shows; the objectives and their directions are the records of
:mod:`stas_sweep.objectives`, the methods' knobs those of :mod:`stas_sweep.methods`.
:func:`front_of` computes the front once; :class:`IncrementalFront` keeps it as points arrive
(what a sweep does after every trial); the tracker, the plots and the CLI only receive it.
"""

from __future__ import annotations

from typing import Mapping, NamedTuple, Sequence

from .. import methods, objectives as objective_records
from .pareto import as_objectives, hypervolume, loss_vector, pareto_front

# what a search-space file may name as an objective (or as the scheduler's metric)
OBJECTIVE_METRICS = objective_records.names()
# metrics of one epoch, in every Tune report (Tune checks the scheduler's metric is in every result).
# Order matters: Ray's trial table shows the first four report keys it does not know, so the
# objectives lead
TRIAL_METRICS = (*OBJECTIVE_METRICS, "train_loss", "task_loss", "ponder_loss", "lr", "images_per_s")
REPORT_KEYS = (*TRIAL_METRICS, "epoch")
# the metrics a point carries, taken from a row of the trial's epsilon table
POINT_METRICS = (*OBJECTIVE_METRICS, "energy_reduction")


def point_keys() -> tuple[str, ...]:
    """The keys of a point that are not searched parameters: every registered method's knob."""
    return ("trial_id", "method", *methods.knob_names(), *POINT_METRICS)


class Front(NamedTuple):
    """All candidate points, the non-dominated ones among them, and their hypervolume."""

    points: list[dict]
    front: list[dict]
    hypervolume: float


def trial_points(trial_id: str, params: Mapping, epsilon_rows: Sequence[Mapping]) -> list[dict]:
    """One candidate point per evaluated knob value (row) of a full-budget trial."""
    points = []
    for row in epsilon_rows:
        p = {"trial_id": trial_id, "method": row.get("method", "stas"),
             **{k: row.get(k) for k in methods.knob_names()}, **{k: row.get(k) for k in POINT_METRICS}}
        p.update(params)
        points.append(p)
    return points


def front_of(points: Sequence[Mapping], objectives, reference: Mapping[str, float]) -> Front:
    """The non-dominated points and the hypervolume of all points against ``reference``."""
    points = [dict(p) for p in points]
    if not points:
        return Front([], [], 0.0)
    return Front(points, pareto_front(points, objectives), hypervolume(points, objectives, reference))


class FrontChange(NamedTuple):
    """What one :meth:`IncrementalFront.add` changed: the new points' indices, the earlier points
    that left the front (the only runs whose ``pareto`` tag changes: a point off the front never
    comes back as points are added), and whether the front (so the hypervolume) changed."""

    added: list[int]
    left: list[int]
    changed: bool


class IncrementalFront:
    """The front of a growing set of points, kept as they arrive.

    Each new point is compared with the current front only: if a front point dominates it, it is
    off the front (a point off the front is dominated by one on it, so no other comparison can
    put it on); otherwise it joins and the front points it dominates leave. Identical points do
    not dominate each other, so duplicates of a front point are all on it, as in
    :func:`~stas_sweep.sweep.pareto.non_dominated`. The hypervolume is that of the front (points
    off it add nothing), recomputed only when the front changed, and appended to
    :attr:`history` once per :meth:`record` (one value per finished trial). Cost per point:
    O(front size), whatever the number of points.
    """

    def __init__(self, objectives, reference: Mapping[str, float], points: Sequence[Mapping] = ()) -> None:
        self.objectives, self.reference = as_objectives(objectives), dict(reference)
        self.points: list[dict] = []
        self._loss: list[tuple | None] = []   # each point's values to minimise (None: invalid)
        self.on: set[int] = set()             # indices of the front's points
        self.hypervolume = 0.0
        self.history: list[float] = []        # the hypervolume after each recorded trial
        if points:
            self.add(points)

    def add(self, points: Sequence[Mapping]) -> FrontChange:
        before = set(self.on)
        added = []
        for p in points:
            i = len(self.points)
            self.points.append(dict(p))
            f = loss_vector(p, self.objectives)
            self._loss.append(f)
            added.append(i)
            if f is None or any(_dominates(self._loss[j], f) for j in self.on):
                continue
            self.on = {j for j in self.on if not _dominates(f, self._loss[j])}
            self.on.add(i)
        changed = self.on != before
        if changed:
            self.hypervolume = hypervolume([self.points[j] for j in self.on], self.objectives, self.reference)
        return FrontChange(added, sorted(before - self.on), changed)

    def record(self) -> float:
        """Append the current hypervolume to the history (a trial finished); returns it."""
        self.history.append(self.hypervolume)
        return self.hypervolume

    @property
    def front(self) -> list[dict]:
        """The front's points in :func:`~stas_sweep.sweep.pareto.pareto_front`'s order: by the
        raw values of the objectives, then by arrival."""
        names = [o.name for o in self.objectives]
        order = sorted(self.on, key=lambda i: (*(float(self.points[i][n]) for n in names), i))
        return [self.points[i] for i in order]

    def snapshot(self) -> Front:
        return Front(self.points, self.front, self.hypervolume)


def _dominates(a: tuple, b: tuple) -> bool:
    """``a`` dominates ``b`` (both to minimise): no worse anywhere, better somewhere."""
    return all(x <= y for x, y in zip(a, b)) and a != b


def param_keys(points: Sequence[Mapping]) -> list[str]:
    """The searched keys the points carry (every key that is not a point key), sorted."""
    return sorted({k for p in points for k in p} - set(point_keys()))


def knob_of(point: Mapping) -> tuple[str, float | None]:
    """``(name, value)`` of the knob a point was evaluated at (``epsilon`` for stas)."""
    name = methods.knob_of(point.get("method"))
    return name, point.get(name)


def hover_keys(point: Mapping) -> list[str]:
    """What hovering a point shows first: its trial, its method and knob (epsilon for a point
    without a method) and its searched parameters."""
    if "method" not in point:
        return ["trial_id", "epsilon", *param_keys([point])]
    return ["trial_id", "method", knob_of(point)[0], *param_keys([point])]


def best_point(front: Sequence[Mapping], objective: str, objectives) -> dict:
    """The front point with the best ``objective`` (its direction from ``objectives``, else the
    natural one, :mod:`stas_sweep.objectives`); the first of equals, in the front's order."""
    natural = objective_records.OBJECTIVES.get(objective)
    direction = {o.name: o.mode for o in as_objectives(objectives)}.get(objective, natural and natural.direction)
    if direction is None or not front:
        raise ValueError(f"unknown objective {objective!r}; accepted objectives: {', '.join(OBJECTIVE_METRICS)}")
    sign = 1.0 if direction == "max" else -1.0
    return dict(max(front, key=lambda p: sign * float(p[objective])))


def knee_point(front: Sequence[Mapping], objectives) -> dict:
    """The front point nearest the ideal point once each objective is scaled to [0, 1] over the front.

    For objective m with values v_m over the front, the scaled value of point p is

        s_m(p) = (v_m(p) - min v_m) / (max v_m - min v_m)    for a maximised objective,
        s_m(p) = (max v_m - v_m(p)) / (max v_m - min v_m)    for a minimised one,

    so 1 is the best value on the front and the ideal point is (1, ..., 1); an objective all
    points share scales to 1. The knee is argmin_p sqrt(sum_m (1 - s_m(p))^2), the first of equals.
    """
    if not front:
        raise ValueError("the front is empty: no knee")
    dist = [0.0] * len(front)
    for o in as_objectives(objectives):
        name, direction = o.name, o.mode
        values = [float(p[name]) for p in front]
        lo, hi = min(values), max(values)
        for i, v in enumerate(values):
            s = 1.0 if hi == lo else ((v - lo) if direction == "max" else (hi - v)) / (hi - lo)
            dist[i] += (1.0 - s) ** 2
    return dict(front[min(range(len(front)), key=dist.__getitem__)])
