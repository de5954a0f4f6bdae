r"""MO-ASHA: asynchronous successive halving that ranks trials by Pareto dominance.

ASHA (Li et al. 2020) stops a trial at a rung when its single metric falls below the
``1 - 1/eta`` quantile of the values recorded at that rung. With two objectives (accuracy up,
energy down) that pushes the front toward the high-accuracy end: a trial that halts
aggressively (low energy, slightly lower accuracy) is stopped at the first rung. MO-ASHA
(Schmucker et al. 2021, Syne Tune's ``MOASHA``) keeps the rung bookkeeping of ASHA and replaces
the quantile by a multi-objective ranking.

Ranking (:func:`rank_order`). Every objective is turned into a loss to minimise,
:math:`f_k = s_k \cdot v_k` with :math:`s_k = -1` for ``max`` and :math:`+1` for ``min``.

1. *Non-dominated sorting* (NSGA-II, Deb et al. 2002): front :math:`F_1` is the set of points
   no other point dominates (:math:`a \prec b` iff :math:`f_k(a) \le f_k(b)\ \forall k` and
   :math:`f(a) \ne f(b)`); :math:`F_{r+1}` is the non-dominated set of what is left after
   removing :math:`F_1 \cup \dots \cup F_r`. A point's *front rank* is :math:`r`.
2. *Crowding distance* inside a front (tie-break): with the front sorted by objective :math:`k`,
   each point gets :math:`\sum_k (f_k^{next} - f_k^{prev}) / (f_k^{max} - f_k^{min})` (terms with
   :math:`f_k^{max} = f_k^{min}` are 0); the two extreme points of every objective get
   :math:`+\infty`. Larger is better: the front's ends and isolated points first, so promoting
   part of a front keeps its spread.
   *Epsilon-net* instead (``tie_break="epsilon_net"``, what Syne Tune's MOASHA uses, after
   Clarkson 2005): with every objective scaled to :math:`[0, 1]` over the front (a constant one
   to 0), the first point is the front's best on the first objective and each next point is the
   one farthest from those already taken, :math:`\arg\max_j \min_{c\ \text{taken}}
   \lVert \hat f_j - \hat f_c \rVert_2`; points come in that order. Syne Tune measures raw
   distances; scaling keeps accuracy in % from drowning energy in mJ.
3. *Stable order*: equal (front rank, tie-break) keep their input order.

A point with a missing, NaN or infinite objective value is worst: it comes after every valid
point, in input order.

Promotion (:meth:`MOASHA.on_trial_result`), asynchronous as in ASHA: when a trial reaches rung
:math:`t` (``grace_period * reduction_factor**k``, at most ``max_t``) for the first time, its
objective vector is recorded with the :math:`n - 1` recorded there before; the trial continues
iff its position in :func:`rank_order` of all :math:`n` is among the first
:math:`\lceil n / \eta \rceil` (the newcomer is listed first, so it wins exact ties, as ASHA's
``value >= cutoff`` does). The first trial at a rung always continues. A trial reaching
``max_t`` is stopped (its budget is spent).

That position is computed incrementally (:class:`RankedRung`, one per rung): the rung keeps the
front rank of every recorded row; a newcomer's rank is one more than the largest rank of the rows
dominating it, only the rows it dominates can move to a later front (raised in one pass over them
in rank order), and the tie-break key is computed on the newcomer's front only, on the same rows
in the same order as :func:`rank_order`. The position, hence the decision, is exactly that of
:func:`promote` on all :math:`n` rows (:func:`rank_order` stays the reference; the tests compare
the two on random rows with ties and NaN); its cost per trial is about O(n d) plus the rows the
newcomer dominates and its front, instead of a full non-dominated sort, O(n^2 d) per front. The
ranks are not part of the state: they are ranked again in full from the rung records after
``set_state`` or unpickling.

Resume: Ray Tune 2.60 checkpoints the searcher and the callbacks with the experiment state,
but not the scheduler (``TuneController.save_to_dir``). :class:`MOASHAStateCallback` carries the
scheduler's rung records in the callbacks' state, so a sweep resumed after Ctrl-C or SIGKILL
continues with the rung records of its last experiment checkpoint. The runner keeps one Tune
checkpoint per trial, which makes Tune save the experiment state after every trial checkpoint: the
trial states and the rung records of that save are the same instant. With a checkpoint every epoch
(``checkpoint_period_s: 0``) a trial the driver saw finish is never run again (only an epoch in
flight at the kill is); with a period, a running trial also trains again the epochs since its last
checkpoint (:mod:`.checkpoints`). Tested with a real driver killed twice (``tests/test_moasha.py``). Tune deletes a trial's previous checkpoint a moment before
that save; a kill in between is repaired at resume by :mod:`.checkpoints`, and the trial's epoch
is reported again to the scheduler, not trained again.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from .pareto import _CHUNK_ELEMENTS, _nondominated_min, _number, as_objectives

__all__ = ["loss_matrix", "front_ranks", "crowding_distance", "epsilon_net_order", "rank_order", "promote",
           "TIE_BREAKS", "RankedRung", "MOASHA", "MOASHAStateCallback"]

TIE_BREAKS = ("crowding", "epsilon_net")


def loss_matrix(points: Sequence[Mapping], objectives) -> np.ndarray:
    """``F[i, k] = s_k * points[i][name_k]`` (to minimise); NaN where missing / not finite."""
    objs = as_objectives(objectives)
    F = np.full((len(points), len(objs)), np.nan)
    for i, p in enumerate(points):
        for k, o in enumerate(objs):
            F[i, k] = o.sign * _number(p.get(o.name))
    return F


def front_ranks(F: np.ndarray) -> np.ndarray:
    """Front rank of every row of the loss matrix ``F`` (0 = non-dominated), by repeated peeling.

    Rows holding a NaN get rank ``len(F)`` (after every possible front). O(n^2 d) per front.
    """
    F = np.asarray(F, dtype=float)
    n = F.shape[0]
    ranks = np.full(n, n, dtype=int)
    left = np.flatnonzero(~np.isnan(F).any(axis=1)) if n else np.zeros(0, dtype=int)
    r = 0
    while left.size:
        mask = _nondominated_min(F[left])
        ranks[left[mask]] = r
        left = left[~mask]
        r += 1
    return ranks


def crowding_distance(F: np.ndarray) -> np.ndarray:
    """NSGA-II crowding distance of the rows of ``F`` (one front, all finite); ends get ``inf``.

    Computed over the distinct rows: identical rows (exact ties) get the same distance.
    """
    F = np.asarray(F, dtype=float)
    if F.shape[0] > 1:
        U, inverse = np.unique(F, axis=0, return_inverse=True)
        if U.shape[0] < F.shape[0]:
            return _crowding_distinct(U)[inverse.reshape(-1)]
    return _crowding_distinct(F)


def _crowding_distinct(F: np.ndarray) -> np.ndarray:
    n, d = F.shape
    dist = np.zeros(n)
    if n <= 2:
        dist[:] = np.inf
        return dist
    for k in range(d):
        order = np.argsort(F[:, k], kind="stable")
        lo, hi = F[order[0], k], F[order[-1], k]
        dist[order[0]] = dist[order[-1]] = np.inf
        if hi > lo:
            gaps = (F[order[2:], k] - F[order[:-2], k]) / (hi - lo)
            dist[order[1:-1]] += gaps
    return dist


def epsilon_net_order(F: np.ndarray) -> np.ndarray:
    """Position of every row of ``F`` (one front, all finite) in its greedy epsilon-net order
    (0 = taken first; see the module docstring). Ties go to the lower row index."""
    F = np.asarray(F, dtype=float)
    n = F.shape[0]
    if n == 0:
        return np.zeros(0, dtype=int)
    lo, span = F.min(axis=0), np.ptp(F, axis=0)
    X = np.divide(F - lo, span, out=np.zeros_like(F), where=span > 0)
    first = int(np.argmin(X[:, 0]))                        # argmin: the lowest index among equals
    order = [first]
    dist = np.linalg.norm(X - X[first], axis=1)            # distance to the nearest taken row
    dist[first] = -np.inf
    for _ in range(n - 1):
        nxt = int(np.argmax(dist))                         # argmax: the lowest index among equals
        order.append(nxt)
        dist = np.minimum(dist, np.linalg.norm(X - X[nxt], axis=1))
        dist[order] = -np.inf
    position = np.empty(n, dtype=int)
    position[order] = np.arange(n)
    return position


def rank_order(F: np.ndarray, tie_break: str = "crowding") -> list[int]:
    """Indices of the rows of the loss matrix ``F``, best first (see the module docstring);
    ``tie_break`` inside a front: ``"crowding"`` (distance, larger first) or ``"epsilon_net"``."""
    if tie_break not in TIE_BREAKS:
        raise ValueError(f"tie_break is {tie_break!r}; accepted: {', '.join(TIE_BREAKS)}")
    F = np.asarray(F, dtype=float)
    n = F.shape[0]
    if n == 0:
        return []
    ranks = front_ranks(F)
    key = np.zeros(n)                                      # smaller first, inside a front
    for r in np.unique(ranks[ranks < n]):
        idx = np.flatnonzero(ranks == r)
        key[idx] = -crowding_distance(F[idx]) if tie_break == "crowding" else epsilon_net_order(F[idx])
    return sorted(range(n), key=lambda i: (ranks[i], key[i], i))


def promote(F: np.ndarray, eta: float, index: int = 0, tie_break: str = "crowding") -> bool:
    r"""Whether row ``index`` is among the first :math:`\lceil n/\eta \rceil` of :func:`rank_order`."""
    n = np.asarray(F).shape[0]
    keep = max(1, math.ceil(n / eta))
    return index in rank_order(F, tie_break)[:keep]


def _dominators_max(A: np.ndarray, B: np.ndarray, value: np.ndarray) -> np.ndarray:
    """For every row ``a`` of ``A``: the largest ``value[j]`` over the rows ``B[j]`` dominating it
    (``B[j] <= a`` componentwise and ``B[j] != a``), -1 where none does. Chunked over ``A``."""
    out = np.full(A.shape[0], -1, dtype=int)
    chunk = max(1, _CHUNK_ELEMENTS // max(1, B.shape[0] * B.shape[1]))
    for start in range(0, A.shape[0], chunk):
        block = A[start : start + chunk]                                    # (c, d)
        dom = ((B[None, :, :] <= block[:, None, :]).all(axis=2)
               & (B[None, :, :] < block[:, None, :]).any(axis=2))          # (c, |B|): B[j] dominates a
        out[start : start + chunk] = np.where(dom, value[None, :], -1).max(axis=1, initial=-1)
    return out


class RankedRung:
    r"""The loss rows recorded at one rung (insertion order) with the front rank of every row, kept
    up to date one newcomer at a time; :meth:`add` gives the newcomer's position in
    :func:`rank_order` of ``[newcomer, *rows recorded before]`` without sorting everything again.

    Front rank = height in the dominance order: a row's rank is 1 + the largest rank of the rows
    dominating it (0 if none), which is the rank :func:`front_ranks` peels. A newcomer :math:`p`
    gets :math:`r_p = 1 + \max\{r_d : d \prec p\}`. Only the rows :math:`S = \{q : p \prec q\}`
    can change rank (a longer chain ending at :math:`q` must pass through :math:`p`); by
    transitivity every row on such a chain after :math:`p` is in :math:`S`, so
    :math:`r'_q = \max(r_q,\ r_p + 1 + h_S(q))` with :math:`h_S(q)` the height of :math:`q` inside
    :math:`S`. Every row of :math:`S` has :math:`r_q \ge r_p` and ranks grow by at least 1 along a
    chain, so :math:`r_p + h_S(q) \le r_q`: a rank rises by at most one, and :math:`q` rises iff
    :math:`r_q = r_p` or a row of :math:`S` of rank :math:`r_q - 1` that rose dominates it. Rows
    of :math:`S` are visited by old rank (a topological order), one rank at a time, until one
    rank has no row that rose. The newcomer's position: the valid rows of a smaller rank, plus
    the rows of its front whose tie-break key (the same functions, on the same rows in the same
    order as the full ranking) is strictly better; exact ties in key go to the newcomer, listed
    first. Rows with a NaN are after every front (rank -1 here, ``len(F)`` in :func:`front_ranks`).
    """

    def __init__(self, n_objectives: int) -> None:
        self.ids: list = []
        self._F = np.zeros((8, n_objectives))              # (capacity, d) loss rows, first n used
        self._rank = np.zeros(8, dtype=int)                # front rank; -1 for a row with a NaN
        self.n = 0

    @classmethod
    def of(cls, recorded: Mapping, n_objectives: int) -> RankedRung:
        """The record of a rung dict ``{trial_id: loss tuple}``, ranked in full by :func:`front_ranks`."""
        rung = cls(n_objectives)
        F = np.array(list(recorded.values()), dtype=float).reshape(-1, n_objectives)
        rung._grow(len(F))
        rung._F[: len(F)] = F
        ranks = front_ranks(F)
        rung._rank[: len(F)] = np.where(ranks < len(F), ranks, -1)
        rung.ids, rung.n = list(recorded), len(F)
        return rung

    @property
    def F(self) -> np.ndarray:
        return self._F[: self.n]

    def front_ranks(self) -> np.ndarray:
        """The ranks as :func:`front_ranks` of the whole matrix gives them (NaN rows: ``n``)."""
        r = self._rank[: self.n]
        return np.where(r >= 0, r, self.n)

    def _grow(self, n: int) -> None:
        if n > self._F.shape[0]:
            cap = max(n, 2 * self._F.shape[0])
            self._F = np.concatenate([self._F, np.zeros((cap - self._F.shape[0], self._F.shape[1]))])
            self._rank = np.concatenate([self._rank, np.zeros(cap - self._rank.shape[0], dtype=int)])

    def add(self, trial_id, row, tie_break: str = "crowding") -> int:
        """Record ``row`` and return its position in :func:`rank_order` of ``[row, *rows before]``."""
        p = np.asarray(row, dtype=float).reshape(-1)
        F, rank = self.F, self._rank[: self.n]
        valid = rank >= 0
        if np.isnan(p).any():
            position, r_p = int(valid.sum()), -1
        else:
            r_p = int(_dominators_max(p[None, :], F[valid], rank[valid])[0]) + 1
            self._raise_dominated(p, r_p)
            position = int((valid & (rank < r_p)).sum()) + self._ahead_in_front(p, r_p, tie_break)
        self._grow(self.n + 1)
        self._F[self.n], self._rank[self.n] = p, r_p
        self.ids.append(trial_id)
        self.n += 1
        return position

    def _raise_dominated(self, p: np.ndarray, r_p: int) -> None:
        """Raise by one the ranks of the rows ``p`` dominates that now sit behind a longer chain
        (the set S and the rule of the class docstring)."""
        F, rank = self.F, self._rank[: self.n]
        S = np.flatnonzero((p <= F).all(axis=1) & (p < F).any(axis=1))     # NaN rows compare False
        S = S[np.argsort(rank[S], kind="stable")]                           # old rank >= r_p
        levels, starts = np.unique(rank[S], return_index=True)
        risen, risen_from = S[:0], -1                      # the rows of S that rose, and their old rank
        for r, lo, hi in zip(levels, starts, [*starts[1:], S.size]):
            level = S[lo:hi]
            if r == r_p:
                up = level                                 # right behind p
            elif risen.size and risen_from == r - 1:      # those below a row that rose
                up = level[_dominators_max(F[level], F[risen], np.zeros(risen.size, dtype=int)) >= 0]
            else:
                return                                     # no row of rank r - 1 rose: none from r on rises
            rank[up] += 1
            risen, risen_from = up, r

    def _ahead_in_front(self, p: np.ndarray, r_p: int, tie_break: str) -> int:
        """Rows of the newcomer's front whose tie-break key is strictly better than its own, the keys
        computed on ``[p, *front rows in insertion order]`` as :func:`rank_order` computes them."""
        front = self.F[self._rank[: self.n] == r_p]
        if not front.size:
            return 0
        G = np.concatenate([p[None, :], front])
        if tie_break == "crowding":
            key = -crowding_distance(G)
        elif tie_break == "epsilon_net":
            key = epsilon_net_order(G)
        else:
            raise ValueError(f"tie_break is {tie_break!r}; accepted: {', '.join(TIE_BREAKS)}")
        return int((key[1:] < key[0]).sum())


def _loss_vector(result: Mapping, objectives) -> tuple[float, ...]:
    return tuple(float(x) for x in loss_matrix([result], objectives)[0])


try:  # Ray is optional for the ranking functions above
    from ray.tune import Callback as _Callback
    from ray.tune.schedulers.trial_scheduler import FIFOScheduler as _FIFOScheduler
    from ray.tune.schedulers.trial_scheduler import TrialScheduler as _TrialScheduler
except ImportError:  # pragma: no cover
    _Callback = _FIFOScheduler = _TrialScheduler = object


class MOASHA(_FIFOScheduler):
    """Asynchronous successive halving on several objectives (one bracket, like the sweep's ASHA).

    Args:
        objectives: ``(name, "max"|"min")`` pairs; every result must carry these metrics.
        time_attr: monotonic progress attribute (epochs = ``training_iteration``).
        max_t: budget of a trial; it is stopped on reaching it.
        grace_period: the first rung.
        reduction_factor: eta; rungs at ``grace_period * eta**k`` and 1/eta promoted per rung.
        tie_break: order inside a front, ``"crowding"`` (default) or ``"epsilon_net"``.

    ``metric`` (what Tune checks every result carries) is the first objective; ``mode`` is left
    unset and ``set_search_properties`` refuses a metric/mode from ``TuneConfig``: the searcher
    (OptunaSearch) owns its own metric list.
    """

    def __init__(self, objectives, *, time_attr: str = "training_iteration", max_t: int = 100,
                 grace_period: int = 1, reduction_factor: float = 4, tie_break: str = "crowding") -> None:
        objs = as_objectives(objectives)
        if len(objs) < 1:
            raise ValueError("MOASHA needs at least one objective")
        if not (max_t >= grace_period > 0):
            raise ValueError(f"MOASHA: need max_t >= grace_period > 0, got {max_t}, {grace_period}")
        if not reduction_factor > 1:
            raise ValueError(f"MOASHA: reduction_factor must be > 1, got {reduction_factor}")
        if tie_break not in TIE_BREAKS:
            raise ValueError(f"MOASHA: tie_break is {tie_break!r}; accepted: {', '.join(TIE_BREAKS)}")
        super().__init__()
        self.objectives = [(o.name, o.mode) for o in objs]
        self._metric = objs[0].name
        self._time_attr = time_attr
        self._max_t = max_t
        self._rf = reduction_factor
        self.tie_break = tie_break
        n_rungs = int(math.log(max_t / grace_period) / math.log(reduction_factor) + 1 + 1e-9)
        self.milestones = [grace_period * reduction_factor ** k for k in range(n_rungs)]
        self.milestones = [m for m in self.milestones if m < max_t]  # reaching max_t ends the trial
        self.rungs: dict = {m: {} for m in self.milestones}   # milestone -> {trial_id: loss vector}
        self.num_stopped = 0
        self.stopped: list[str] = []                           # trial ids stopped at a rung
        self._ranked: dict = {}                                # milestone -> RankedRung (not state)

    # -- Tune's scheduler interface -----------------------------------------------------------
    def set_search_properties(self, metric, mode, **spec) -> bool:
        return not (metric or mode)  # objectives come from the search-space file only

    def on_trial_add(self, tune_controller, trial) -> None:
        pass

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if self._time_attr not in result:
            return _TrialScheduler.CONTINUE
        t = result[self._time_attr]
        if t >= self._max_t:
            return _TrialScheduler.STOP
        action = self._rung_decision(trial.trial_id, t, result)
        if action == _TrialScheduler.STOP:
            self.num_stopped += 1
            self.stopped.append(trial.trial_id)
        return action

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        if result and self._time_attr in result and result[self._time_attr] < self._max_t:
            self._rung_decision(trial.trial_id, result[self._time_attr], result)  # record only

    def on_trial_remove(self, tune_controller, trial) -> None:
        pass

    def debug_string(self) -> str:
        rungs = " | ".join(f"epoch {m}: {len(r)} recorded" for m, r in sorted(self.rungs.items(), reverse=True))
        return f"Using MOASHA on {self.objectives}: num_stopped={self.num_stopped}\n  {rungs}"

    # -- the rung rule ------------------------------------------------------------------------
    def _rung_decision(self, trial_id: str, t, result: Mapping) -> str:
        """Record the trial at the highest rung it has reached and not yet been recorded at."""
        for m in sorted(self.rungs, reverse=True):
            recorded = self.rungs[m]
            if t < m or trial_id in recorded:
                if trial_id in recorded:
                    return _TrialScheduler.CONTINUE  # decided at this rung already
                continue
            vec = _loss_vector(result, self.objectives)
            ranked = self._ranked_rung(m)
            # the newcomer's position in rank_order([vec, *recorded]), the same as promote(...)
            position = ranked.add(trial_id, vec, getattr(self, "tie_break", "crowding"))  # (older pickles)
            recorded[trial_id] = vec
            keep = position < max(1, math.ceil(ranked.n / self._rf))
            return _TrialScheduler.CONTINUE if keep else _TrialScheduler.STOP
        return _TrialScheduler.CONTINUE

    def _ranked_rung(self, m) -> RankedRung:
        """The rank record of rung ``m``, ranked again in full when missing or not the rung dict's
        (after ``set_state``, or a scheduler unpickled without its records)."""
        cache = self.__dict__.setdefault("_ranked", {})
        recorded = self.rungs[m]
        ranked = cache.get(m)
        if ranked is None or ranked.n != len(recorded) or ranked.ids != list(recorded):
            ranked = cache[m] = RankedRung.of(recorded, len(self.objectives))
        return ranked

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("_ranked", None)                         # rebuilt from the rung dicts on first use
        return state

    # -- state (experiment checkpoints, see MOASHAStateCallback) --------------------------------
    def get_state(self) -> dict:
        return {"rungs": {m: dict(r) for m, r in self.rungs.items()}, "num_stopped": self.num_stopped,
                "stopped": list(self.stopped), "objectives": list(self.objectives)}

    def set_state(self, state: Mapping) -> None:
        if [tuple(o) for o in state.get("objectives", self.objectives)] != [tuple(o) for o in self.objectives]:
            raise ValueError("MOASHA state of other objectives; cannot resume with it")
        self.rungs = {m: dict(r) for m, r in state["rungs"].items()}
        self._ranked = {}                                  # ranked again from these records on first use
        self.num_stopped = state["num_stopped"]
        self.stopped = list(state["stopped"])

    def save(self, checkpoint_path: str) -> None:
        import pickle

        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.get_state(), f)

    def restore(self, checkpoint_path: str) -> None:
        import pickle

        with open(checkpoint_path, "rb") as f:
            self.set_state(pickle.load(f))


class MOASHAStateCallback(_Callback):
    """Saves a :class:`MOASHA`'s rung records with Tune's experiment state and restores them.

    Put it in ``RunConfig.callbacks`` next to the scheduler it holds: both are pickled together
    in ``tuner.pkl``, so after ``Tuner.restore`` this callback and the scheduler are the same
    objects Tune uses, and Tune's ``set_state`` on the callback puts the rung records back.
    """

    def __init__(self, scheduler: MOASHA) -> None:
        self.scheduler = scheduler

    def get_state(self):
        return {"moasha": self.scheduler.get_state()}

    def set_state(self, state) -> None:
        if state and "moasha" in state:
            self.scheduler.set_state(state["moasha"])
