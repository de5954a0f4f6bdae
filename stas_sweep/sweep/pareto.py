"""Pareto dominance and hypervolume over sweep points (numpy only).

A *point* is any mapping from metric names to numbers, e.g. one (trial, epsilon) evaluation::

    {"trial_id": "a1b2", "epsilon": 0.01, "accuracy": 0.78, "energy_mj": 0.41, ...}

An :class:`Objective` names one of those metrics and whether it is maximised or minimised.
Internally every objective is turned into one to be *minimised* by multiplying it by
``s_k = -1`` (``mode="max"``) or ``s_k = +1`` (``mode="min"``); every definition below is
stated in that minimisation form.

A point whose value for some objective is missing, ``None``, not a number, NaN or infinite is
*invalid*: it is never on the front, never dominates anything and adds no hypervolume.

Nothing here depends on Ray, Optuna or MLflow, so the functions can be called on the driver,
in a test, or on a table read back from MLflow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Mapping, Sequence, Union

import numpy as np

__all__ = [
    "Objective",
    "as_objectives",
    "non_dominated",
    "pareto_front",
    "hypervolume",
    "loss_vector",
]

MODES = ("max", "min")

# Rows of the (chunk, n, d) comparison tensors built by the dominance check are bounded so
# that memory stays ~ a few tens of MB whatever the number of points.
_CHUNK_ELEMENTS = 4_000_000


@dataclass(frozen=True)
class Objective:
    """One objective of the sweep: a metric name and its direction.

    Args:
        name: key of the metric in every point (e.g. ``"accuracy"``, ``"energy_mj"``).
        mode: ``"max"`` (larger is better) or ``"min"`` (smaller is better), the same words
            Ray Tune uses.
    """

    name: str
    mode: Literal["max", "min"]

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"Objective name must be a non-empty string, got {self.name!r}")
        if self.mode not in MODES:
            raise ValueError(
                f"Objective {self.name!r}: mode must be one of {MODES!r}, got {self.mode!r}"
            )

    @property
    def sign(self) -> float:
        """``+1.0`` for ``min`` and ``-1.0`` for ``max``: ``sign * value`` is to be minimised."""
        return 1.0 if self.mode == "min" else -1.0

    @property
    def label(self) -> str:
        """Axis label such as ``"energy_mj (min)"``."""
        return f"{self.name} ({self.mode})"


ObjectiveLike = Union[Objective, Sequence[str]]


def as_objectives(objectives: Sequence[ObjectiveLike]) -> list[Objective]:
    """Normalise ``objectives`` to a list of :class:`Objective`.

    Each entry may be an :class:`Objective` or a ``(name, mode)`` pair. At least one objective is
    required and names must be unique.

    Raises:
        ValueError: empty list, a bad entry, a bad mode, or a repeated name.
    """
    if isinstance(objectives, (Objective, str)):
        raise ValueError(
            f"objectives must be a sequence of Objective or (name, mode) pairs, got {objectives!r}"
        )
    out: list[Objective] = []
    for o in objectives:
        if isinstance(o, Objective):
            out.append(o)
        elif isinstance(o, (tuple, list)) and len(o) == 2:
            out.append(Objective(o[0], o[1]))
        else:
            raise ValueError(f"expected an Objective or a (name, mode) pair, got {o!r}")
    if not out:
        raise ValueError("at least one objective is required")
    names = [o.name for o in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"objective names must be unique, repeated: {dup!r}")
    return out


def _number(value: object) -> float:
    """``float(value)``, or NaN for None / non-numbers / non-finite values."""
    if value is None or isinstance(value, (str, bytes)):
        return math.nan
    try:
        x = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan
    return x if math.isfinite(x) else math.nan


def loss_vector(point: Mapping[str, float], objectives: Sequence[Objective]) -> tuple[float, ...] | None:
    """``(s_1 * point[name_1], ...)``, the point's values to minimise; None for an invalid point."""
    f = tuple(o.sign * _number(point.get(o.name)) for o in objectives)
    return None if any(math.isnan(x) for x in f) else f


def _loss_matrix(
    points: Sequence[Mapping[str, float]], objectives: Sequence[Objective]
) -> tuple[np.ndarray, np.ndarray]:
    """``(F, valid)``: ``F[i, k] = s_k * points[i][name_k]`` (to minimise) and the validity mask."""
    n, d = len(points), len(objectives)
    F = np.full((n, d), np.nan, dtype=float)
    for i, p in enumerate(points):
        if not isinstance(p, Mapping):
            raise TypeError(f"point {i} is not a mapping: {p!r}")
        for k, o in enumerate(objectives):
            F[i, k] = o.sign * _number(p.get(o.name))
    valid = ~np.isnan(F).any(axis=1) if n else np.zeros(0, dtype=bool)
    return F, valid


def _reference_vector(reference: Mapping[str, float], objectives: Sequence[Objective]) -> np.ndarray:
    if not isinstance(reference, Mapping):
        raise ValueError(f"reference must be a mapping from objective name to value, got {reference!r}")
    r = np.empty(len(objectives), dtype=float)
    for k, o in enumerate(objectives):
        if o.name not in reference:
            raise ValueError(
                f"reference has no value for objective {o.name!r}; it has {sorted(reference)!r}"
            )
        v = _number(reference[o.name])
        if math.isnan(v):
            raise ValueError(
                f"reference value for {o.name!r} must be a finite number, got {reference[o.name]!r}"
            )
        r[k] = o.sign * v
    return r


def _nondominated_min(F: np.ndarray) -> np.ndarray:
    """Mask of rows of ``F`` (all finite, minimisation) not dominated by another row.

    Row ``j`` dominates row ``i`` iff ``F[j] <= F[i]`` componentwise and ``F[j] != F[i]``
    (for a componentwise-``<=`` pair, "strictly better somewhere" is the same as "not equal").
    Cost O(n^2 d) time, memory bounded by chunking.
    """
    n, d = F.shape
    mask = np.ones(n, dtype=bool)
    if n <= 1:
        return mask
    chunk = max(1, _CHUNK_ELEMENTS // max(1, n * d))
    for start in range(0, n, chunk):
        block = F[start : start + chunk]  # (c, d) candidates i
        le = (F[None, :, :] <= block[:, None, :]).all(axis=2)  # (c, n): F[j] <= F[i]
        lt = (F[None, :, :] < block[:, None, :]).any(axis=2)  # (c, n): F[j] <  F[i] somewhere
        mask[start : start + chunk] = ~(le & lt).any(axis=1)
    return mask


def non_dominated(
    points: Sequence[Mapping[str, float]], objectives: Sequence[ObjectiveLike]
) -> list[bool]:
    r"""Which points are Pareto-optimal (non-dominated) among ``points``.

    With :math:`f_k(p) = s_k \cdot p[\text{name}_k]` to be minimised, point :math:`a`
    *dominates* :math:`b` (:math:`a \prec b`) iff

    .. math::
        f_k(a) \le f_k(b)\ \forall k \quad\text{and}\quad f_k(a) < f_k(b)\ \text{for some } k .

    The result is ``True`` at index ``i`` iff ``points[i]`` is valid and no valid point
    dominates it. Identical points do not dominate each other, so duplicates of a front point
    are all on the front. Invalid points (missing / NaN / infinite objective values) are
    ``False`` and are ignored as dominators.

    Args:
        points: mappings holding at least the objective names.
        objectives: :class:`Objective` instances or ``(name, mode)`` pairs.

    Returns:
        One bool per point, in input order.
    """
    objs = as_objectives(objectives)
    F, valid = _loss_matrix(points, objs)
    out = np.zeros(len(points), dtype=bool)
    idx = np.flatnonzero(valid)
    if idx.size:
        out[idx] = _nondominated_min(F[idx])
    return out.tolist()


def pareto_front(
    points: Sequence[Mapping[str, float]], objectives: Sequence[ObjectiveLike]
) -> list[dict]:
    """The non-dominated points (see :func:`non_dominated`) as new dicts.

    Sorted by the raw value of the first objective, ascending; ties are broken by the
    following objectives (raw values, ascending) and then by input order.
    """
    objs = as_objectives(objectives)
    mask = non_dominated(points, objs)
    chosen = [i for i, m in enumerate(mask) if m]

    def key(i: int) -> tuple:
        return tuple(_number(points[i].get(o.name)) for o in objs) + (i,)

    return [dict(points[i]) for i in sorted(chosen, key=key)]


# --------------------------------------------------------------------------------------------
# Hypervolume
# --------------------------------------------------------------------------------------------


def _hv2d(P: np.ndarray, r: np.ndarray) -> float:
    """Exact 2-D hypervolume of rows of ``P`` (all strictly below ``r``), O(n log n).

    Sort by the first coordinate, ``x_(1) <= ... <= x_(n)``, with ``x_(n+1) = r_1``; on
    ``[x_(i), x_(i+1))`` the dominated region reaches down to ``m_i = min_{j<=i} y_(j)``, so

    ``HV = sum_i (x_(i+1) - x_(i)) * (r_2 - m_i)``.

    Dominated rows are harmless: they add zero width or leave ``m_i`` unchanged.
    """
    order = np.lexsort((P[:, 1], P[:, 0]))
    x = P[order, 0]
    y_min = np.minimum.accumulate(P[order, 1])
    widths = np.diff(np.append(x, r[0]))
    return float(np.dot(widths, r[1] - y_min))


def _hv(P: np.ndarray, r: np.ndarray) -> float:
    """Exact hypervolume of rows of ``P`` (minimisation, all strictly below ``r``).

    d = 1: ``r - min``; d = 2: :func:`_hv2d`; d >= 3: slicing along the last coordinate
    (HSO). After keeping only non-dominated rows and sorting them by the last coordinate
    ``z_(1) <= ... <= z_(n)`` (``z_(n+1) = r_d``), the slab ``[z_(i), z_(i+1))`` is dominated
    exactly by the first ``i`` rows, whose cross-section is a (d-1)-dimensional hypervolume:

    ``HV_d(P) = sum_i (z_(i+1) - z_(i)) * HV_{d-1}({p_(1..i)} projected, r projected)``.

    Time O(n^2 log n) for d = 3; O(n^(d-1) log n) in general (fine for a few hundred points).
    """
    n, d = P.shape
    if n == 0:
        return 0.0
    if d == 1:
        return float(r[0] - P[:, 0].min())
    if n == 1:
        return float(np.prod(r - P[0]))
    if d == 2:
        return _hv2d(P, r)
    P = P[_nondominated_min(P)]
    P = P[np.argsort(P[:, -1], kind="stable")]
    z = P[:, -1]
    heights = np.diff(np.append(z, r[-1]))
    total = 0.0
    for i in range(P.shape[0]):
        if heights[i] > 0.0:
            total += float(heights[i]) * _hv(P[: i + 1, :-1], r[:-1])
    return total


def _inside(F: np.ndarray, valid: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Valid rows strictly better than the reference in every objective."""
    with np.errstate(invalid="ignore"):
        return valid & (F < r).all(axis=1)


def hypervolume(
    points: Sequence[Mapping[str, float]],
    objectives: Sequence[ObjectiveLike],
    reference: Mapping[str, float],
) -> float:
    r"""Exact hypervolume dominated by ``points`` with respect to ``reference``.

    With every objective converted to minimisation (:math:`f_k = s_k \cdot \text{value}`,
    :math:`r_k = s_k \cdot \text{reference}[\text{name}_k]`), the hypervolume of a set
    :math:`P` is the Lebesgue measure

    .. math::
        HV(P, r) = \lambda\Big(\bigcup_{p \in P} [f_1(p), r_1] \times \dots \times [f_d(p), r_d]\Big).

    Only points with :math:`f_k(p) < r_k` for every :math:`k` contribute (for a ``max``
    objective: value strictly above the reference; for ``min``: strictly below); invalid
    points contribute nothing. Adding dominated points never changes the value; a larger
    (better) set never has a smaller one.

    Computation: exact, an O(n log n) sweep for two objectives and hypervolume-by-slicing
    (recursion on the last objective) for three or more; see :func:`_hv`.

    Args:
        points: mappings holding the objective names.
        objectives: :class:`Objective` instances or ``(name, mode)`` pairs.
        reference: one finite value per objective name, in the objectives' own units
            (e.g. ``{"accuracy": 0.0, "energy_mj": 2.0}``).

    Returns:
        The hypervolume, ``0.0`` when no point beats the reference.
    """
    objs = as_objectives(objectives)
    r = _reference_vector(reference, objs)
    F, valid = _loss_matrix(points, objs)
    return _hv(F[_inside(F, valid, r)], r)
