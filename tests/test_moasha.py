"""MO-ASHA: the ranking maths on hand-made points, the scheduler's rung rule, and small Ray Tune
runs on synthetic curves (no torch): ASHA on accuracy stops the low-energy trials, MOASHA keeps
the non-dominated ones; a Ctrl-C'd run resumes with its rung records; a sweep driver (the runner,
in a subprocess, on synthetic trials) interrupted by SIGINT and by SIGKILL resumes with its rung
records and runs no finished trial again."""

from __future__ import annotations

import contextlib
import json
import math
import os
import pickle
import signal
import tempfile
from pathlib import Path

import numpy as np
import pytest

from procs import kill_all

from stas_sweep.sweep.moasha import (MOASHA, TIE_BREAKS, MOASHAStateCallback, RankedRung, crowding_distance,
                                     epsilon_net_order, front_ranks, loss_matrix, promote, rank_order)
from stas_sweep.sweep.pareto import non_dominated
from stas_sweep.sweep.runner import set_aside_broken_saves

OBJ = [("accuracy", "max"), ("energy_mj", "min")]
NAN = float("nan")


# -- ranking maths ------------------------------------------------------------------------------
def test_loss_matrix_signs_and_invalid_values():
    F = loss_matrix([{"accuracy": 0.9, "energy_mj": 2.0}, {"accuracy": None, "energy_mj": 1.0},
                     {"accuracy": float("inf"), "energy_mj": 1.0}, {"energy_mj": 1.0}], OBJ)
    assert F[0].tolist() == [-0.9, 2.0]
    assert np.isnan(F[1:, 0]).all() and (F[1:, 1] == 1.0).all()


def test_front_ranks_by_peeling():
    # minimisation: (0,3) (1,1) (3,0) non-dominated; (2,2) behind (1,1); (3,3) behind (2,2); NaN last
    F = np.array([[2, 2], [0, 3], [3, 3], [1, 1], [3, 0], [NAN, 0]], float)
    assert front_ranks(F).tolist() == [1, 0, 2, 0, 0, 6]
    assert front_ranks(np.zeros((0, 2))).tolist() == []


def test_front_ranks_agree_with_non_dominated():
    rng = np.random.default_rng(0)
    pts = [{"accuracy": a, "energy_mj": e} for a, e in rng.random((40, 2))]
    ranks = front_ranks(loss_matrix(pts, OBJ))
    assert (ranks == 0).tolist() == non_dominated(pts, OBJ)
    # every point of front r+1 is dominated by some point of front r
    F = loss_matrix(pts, OBJ)
    for i in np.flatnonzero(ranks > 0):
        prev = F[ranks == ranks[i] - 1]
        assert ((prev <= F[i]).all(axis=1) & (prev < F[i]).any(axis=1)).any()


def test_crowding_distance_hand_computed():
    # front (0,4) (1,2) (2,1) (4,0): ranges 4 and 4
    F = np.array([[1, 2], [0, 4], [4, 0], [2, 1]], float)
    d = crowding_distance(F)
    assert math.isinf(d[1]) and math.isinf(d[2])
    assert d[0] == pytest.approx((2 - 0) / 4 + (4 - 1) / 4)
    assert d[3] == pytest.approx((4 - 1) / 4 + (2 - 0) / 4)
    assert np.isinf(crowding_distance(F[:2])).all()
    # a constant objective adds nothing
    assert crowding_distance(np.array([[0, 1], [1, 1], [2, 1]], float))[1] == pytest.approx(1.0)


def test_rank_order_fronts_then_crowding_then_input_order():
    F = np.array([[2, 2], [1, 2.5], [0, 3], [3, 0], [NAN, 0], [2.9, 0.1], [NAN, NAN]], float)
    # front 0: (1,2.5) (0,3) (3,0) (2.9,0.1) [and (2,2)], ends (0,3) and (3,0) first
    order = rank_order(F)
    assert order[:2] == [2, 3]
    assert order[-2:] == [4, 6]                    # NaN rows last, in input order
    assert set(order[2:5]) == {0, 1, 5}


def test_rank_order_exact_ties_are_stable():
    F = np.array([[1, 1], [0, 2], [1, 1], [2, 0], [1, 1]], float)
    order = rank_order(F)
    assert order[:2] == [1, 3] and order[2:] == [0, 2, 4]   # duplicates: same distance, input order
    assert rank_order(np.ones((4, 2))) == [0, 1, 2, 3]
    assert rank_order(np.full((3, 2), NAN)) == [0, 1, 2]


def test_promote_top_fraction_newcomer_wins_exact_ties():
    assert promote(np.array([[5.0, 5.0]]), 2)                        # first at a rung
    assert not promote(np.array([[1.0, 1.0], [0.0, 0.0]]), 2)        # dominated by the one before
    assert promote(np.array([[0.0, 0.0], [0.0, 0.0]]), 2)            # exact tie: like ASHA's >=
    assert promote(np.array([[0.0, 1.0], [1.0, 0.0]]), 2)            # both non-dominated: 1 of 2
    assert not promote(np.array([[NAN, 0.0], [1.0, 1.0]]), 2)        # NaN is worst
    assert promote(np.array([[NAN, 0.0]]), 2)
    # 3 of 6 kept: the whole first front, the mid-front newcomer included
    F = np.array([[1.0, 1.0], [0.0, 2.0], [2.0, 0.0], [5.0, 5.0], [6.0, 6.0], [7.0, 7.0]])
    assert promote(F, 2)


def test_epsilon_net_tie_break_spreads_the_front():
    # one front; rows 1 and 2 sit close together near row 0's end. Scaled by the ranges (4, 4) the
    # net takes row 0 (best first objective), row 4 (farthest), then row 2 (0.28 from row 0) before
    # row 3 (0.255 from row 4); crowding distance ranks row 3 (1.675) above row 2 (1.425)
    F = np.array([[0, 4], [0.1, 3.0], [0.2, 2.9], [3, 0.2], [4, 0]], float)
    assert epsilon_net_order(F).tolist() == [0, 4, 2, 3, 1]
    assert rank_order(F, "epsilon_net") == [0, 4, 2, 3, 1]
    assert rank_order(F) == rank_order(F, "crowding") == [0, 4, 3, 2, 1]
    # scaling: the same front in other units gives the same order
    assert rank_order(F * [100.0, 0.001], "epsilon_net") == [0, 4, 2, 3, 1]
    # fronts first, NaN last, exact ties in input order
    G = np.array([[NAN, 0], [2, 2], [1, 1], [1, 1], [0, 5], [5, 0]], float)
    assert rank_order(G, "epsilon_net") == [4, 5, 2, 3, 1, 0]
    assert epsilon_net_order(np.array([[1.0, 2.0], [1.0, 2.0], [1.0, 2.0]])).tolist() == [0, 1, 2]
    assert epsilon_net_order(np.zeros((0, 2))).tolist() == []
    # 2 of 4 promoted: the newcomer (row 0) is among the first two of the net only if it is the
    # front's best on the first objective (or the farthest from it)
    assert promote(np.array([[0.0, 4.0], [1.0, 1.0], [4.0, 0.0], [0.5, 3.0]]), 2, tie_break="epsilon_net")
    assert not promote(np.array([[0.5, 3.0], [0.0, 4.0], [4.0, 0.0], [1.0, 1.0]]), 2, tie_break="epsilon_net")
    # in the scheduler: of two non-dominated trials at a rung the net keeps the more accurate one
    # (crowding gives both inf, so the newcomer b would continue); c is kept behind a and b
    s = MOASHA(OBJ, max_t=4, grace_period=1, reduction_factor=2, tie_break="epsilon_net")
    assert [_feed(s, t, 1, a, e) for t, a, e in [("a", 0.9, 1.0), ("b", 0.5, 0.2), ("c", 0.8, 0.9)]] == \
        ["CONTINUE", "STOP", "STOP"]
    c = MOASHA(OBJ, max_t=4, grace_period=1, reduction_factor=2)
    assert [_feed(c, t, 1, a, e) for t, a, e in [("a", 0.9, 1.0), ("b", 0.5, 0.2)]] == ["CONTINUE", "CONTINUE"]
    with pytest.raises(ValueError, match="tie_break"):
        MOASHA(OBJ, max_t=4, tie_break="hypervolume")
    with pytest.raises(ValueError, match="tie_break"):
        rank_order(F, "random")


def _rows(seed, n, d, levels):
    """Random loss rows: integer grids (``levels`` values, so exact ties and duplicates) or
    continuous (``levels=None``), about 1 in 12 rows with a NaN."""
    rng = np.random.default_rng(seed)
    F = rng.integers(0, levels, (n, d)).astype(float) if levels else rng.random((n, d))
    F[rng.random(n) < 1 / 12, rng.integers(0, d)] = NAN
    return F


@pytest.mark.parametrize("d, levels", [(2, 4), (2, 12), (2, None), (3, 3), (3, 6), (3, None)])
def test_ranked_rung_decisions_and_ranks_equal_the_full_ranking(d, levels):
    # rows inserted one by one: the newcomer's position equals its index in rank_order of
    # [newcomer, *rows before], its decision promote(...)'s (eta 2, 3, 4.5 in turn), and the ranks kept
    # equal front_ranks of the whole matrix after every insert
    F = _rows(d * 100 + (levels or 0), 70, d, levels)
    rungs = {tb: RankedRung(d) for tb in TIE_BREAKS}
    for i in range(len(F)):
        G = np.concatenate([F[i : i + 1], F[:i]])                 # the newcomer first, as the scheduler lists it
        for tb, rung in rungs.items():
            position = rung.add(f"t{i}", F[i], tb)
            assert position == rank_order(G, tb).index(0), (tb, i)
            eta = (2, 3, 4.5)[i % 3]
            assert (position < max(1, math.ceil(len(G) / eta))) == promote(G, eta, 0, tb), (tb, i, eta)
            assert rung.front_ranks().tolist() == front_ranks(F[: i + 1]).tolist(), (tb, i)
    assert rungs["crowding"].ids == [f"t{i}" for i in range(len(F))]


def test_ranked_rung_built_from_a_rung_dict_continues_like_one_built_row_by_row():
    F = _rows(7, 40, 2, 5)
    recorded = {f"t{i}": tuple(F[i]) for i in range(30)}
    rebuilt, grown = RankedRung.of(recorded, 2), RankedRung(2)
    for i in range(30):
        grown.add(f"t{i}", F[i])
    assert rebuilt.ids == grown.ids and rebuilt.front_ranks().tolist() == grown.front_ranks().tolist()
    assert [rebuilt.add(i, F[i]) for i in range(30, 40)] == [grown.add(i, F[i]) for i in range(30, 40)]
    assert RankedRung.of({}, 3).n == 0


# -- the scheduler's rung rule without Ray running -------------------------------------------------
class _T:
    def __init__(self, trial_id):
        self.trial_id = trial_id


def _feed(s, tid, epoch, acc, energy):
    return s.on_trial_result(None, _T(tid), {"training_iteration": epoch, "accuracy": acc, "energy_mj": energy})


def test_scheduler_rungs_decisions_and_state_roundtrip():
    s = MOASHA(OBJ, max_t=8, grace_period=1, reduction_factor=2)
    assert s.milestones == [1, 2, 4] and s.metric == "accuracy"
    assert s.set_search_properties(None, None) and not s.set_search_properties("accuracy", "max")
    assert _feed(s, "a", 1, 0.9, 1.0) == "CONTINUE"
    assert _feed(s, "b", 1, 0.7, 0.4) == "CONTINUE"          # non-dominated, low energy: ASHA would stop it
    assert _feed(s, "c", 1, 0.6, 0.9) == "STOP"              # dominated by both
    assert _feed(s, "d", 1, 0.8, NAN) == "STOP"              # NaN energy: worst
    assert _feed(s, "a", 2, 0.92, 1.0) == "CONTINUE"
    assert _feed(s, "a", 3, 0.93, 1.0) == "CONTINUE"          # between rungs
    assert _feed(s, "b", 2, 0.75, 0.4) == "CONTINUE"
    assert _feed(s, "a", 8, 0.95, 1.0) == "STOP"              # budget spent
    assert s.stopped == ["c", "d"] and s.num_stopped == 2
    state = json.loads(json.dumps(s.get_state(), default=str).replace("NaN", "NaN"))  # plain data
    assert set(map(int, state["rungs"])) == {1, 2, 4}
    t = MOASHA(OBJ, max_t=8, grace_period=1, reduction_factor=2)
    MOASHAStateCallback(t).set_state(MOASHAStateCallback(s).get_state())
    assert t.rungs == s.rungs and t.stopped == s.stopped
    assert _feed(t, "e", 1, 0.5, 1.5) == "STOP"               # judged against the restored records
    with pytest.raises(ValueError):
        MOASHA([("accuracy", "max")], max_t=4).set_state(s.get_state())


@pytest.mark.parametrize("tie_break", TIE_BREAKS)
def test_scheduler_rank_cache_rebuilt_after_set_state_or_unpickling_decides_the_same(tie_break):
    rng = np.random.default_rng(3)
    pts = [(f"t{i}", float(a), float(e)) for i, (a, e) in enumerate(rng.integers(0, 6, (60, 2)) / 5)]
    kw = {"max_t": 8, "grace_period": 1, "reduction_factor": 3, "tie_break": tie_break}
    s = MOASHA(OBJ, **kw)
    first = [_feed(s, t, 1, a, e) for t, a, e in pts[:40]]
    restored = MOASHA(OBJ, **kw)
    restored.set_state(s.get_state())
    unpickled = pickle.loads(pickle.dumps(s))
    assert "_ranked" not in unpickled.__dict__                    # the cache is not pickled
    older = pickle.loads(pickle.dumps(s))                         # as from a tuner.pkl without it
    older.__dict__.pop("_ranked", None)
    out_of_step = pickle.loads(pickle.dumps(s))
    out_of_step._ranked = {1: RankedRung.of(dict(list(s.rungs[1].items())[:20]), 2)}  # fewer rows
    F = []                                                          # the reference: the full ranking
    for t, a, e in pts:
        row = loss_matrix([{"accuracy": a, "energy_mj": e}], OBJ)[0]
        expected = "CONTINUE" if promote(np.array([row, *F]), 3, 0, tie_break) else "STOP"
        F.append(row)
        if t in s.rungs[1]:
            continue
        got = [_feed(x, t, 1, a, e) for x in (s, restored, unpickled, older, out_of_step)]
        assert got == [expected] * 5, t
    assert first == [("CONTINUE" if promote(np.array([F[i], *F[:i]]), 3, 0, tie_break) else "STOP")
                     for i in range(40)]


def test_scheduler_ignores_results_without_time_attr():
    s = MOASHA(OBJ, max_t=4, grace_period=1, reduction_factor=2)
    assert s.on_trial_result(None, _T("x"), {"accuracy": 0.1}) == "CONTINUE"


# -- Ray Tune runs on synthetic curves -------------------------------------------------------------
# three trials on the trade-off curve (q = 1), two dominated ones (q < 1) and one reporting NaN
# energy; they run one at a time in this order. MOASHA promotes ceil(n / eta) of the n trials
# recorded at a rung, so the order is chosen such that the front fits that quota at every rung.
TRADE = [{"h": 0.0, "q": 1.0}, {"h": 0.0, "q": 0.4}, {"h": 0.5, "q": 1.0},
         {"h": 1.0, "q": 1.0}, {"h": 0.8, "q": 0.5}, {"h": 0.3, "q": 1.0, "nan_energy": True}]
EPOCHS = 4


def _trainable_of(configs):
    from stas_sweep.sweep.synthetic import trainable

    def run(config):
        trainable({**configs[config["i"]], **{k: v for k, v in config.items() if k != "i"}})
    return run


def _epochs_by_trial(grid):
    return {r.config["i"]: r.metrics["training_iteration"] for r in grid}


@pytest.mark.slow(15)
def test_asha_stops_low_energy_trials_moasha_keeps_the_front(ray_local):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    def fit(scheduler, name):
        tuner = tune.Tuner(
            _trainable_of(TRADE),
            param_space={"i": tune.grid_search(list(range(len(TRADE)))), "epochs": EPOCHS},
            tune_config=tune.TuneConfig(scheduler=scheduler, max_concurrent_trials=1, reuse_actors=True),
            run_config=tune.RunConfig(name=name, storage_path=str(ray_local), verbose=0),
        )
        return _epochs_by_trial(tuner.fit())

    fifo = fit(FIFOScheduler(), "fifo")
    asha = fit(ASHAScheduler(metric="accuracy", mode="max", max_t=EPOCHS, grace_period=1, reduction_factor=2),
               "asha")
    mo = fit(MOASHA(OBJ, max_t=EPOCHS, grace_period=1, reduction_factor=2), "moasha")
    assert all(e == EPOCHS for e in fifo.values())
    # the non-dominated trials at full budget (NaN energy is never on a front)
    from stas_sweep.sweep.synthetic import curve

    final = [dict(curve(c["h"], c["q"], EPOCHS), **({"energy_mj": NAN} if c.get("nan_energy") else {}))
             for c in TRADE]
    front = [i for i, f in enumerate(non_dominated(final, OBJ)) if f]
    assert front == [0, 2, 3]
    low_energy = [i for i in front if TRADE[i]["h"] > 0]
    assert all(asha[i] < EPOCHS for i in low_energy), asha      # ASHA: accuracy only
    assert all(mo[i] == EPOCHS for i in front), mo               # MOASHA keeps every non-dominated trial
    assert mo[1] == mo[4] == mo[5] == 1, mo                    # dominated and NaN trials: first rung
    assert sum(mo.values()) < sum(fifo.values())


# -- a real sweep driver killed and resumed (runner API, synthetic trials, a subprocess) -----------
DRIVER = '''
import json, sys
import ray
from stas_sweep.sweep.runner import SweepInterrupted, init_ray, run_sweep
from stas_sweep.sweep.space import load_spec
from stas_sweep.sweep.synthetic import sweep_trainable

LOG = sys.argv[2]

def trial(config, *, epochs, epsilons):
    sweep_trainable(config, epochs=epochs, epsilons=epsilons, sleep=SLEEP, epoch_log=LOG)

spec = load_spec(sys.argv[1])
for attempt in range(3):  # on busy shared cores Ray's node may miss its 30 s start; nothing ran yet
    try:
        init_ray(None, spec)
        break
    except Exception as e:
        if "timed out during startup" not in str(e) or attempt == 2:
            raise
        ray.shutdown()
try:
    result = run_sweep(spec, resume="--resume" in sys.argv, trainable=trial, verbose=0)
except SweepInterrupted:
    sys.exit(130)
print("RESULT " + json.dumps([{k: t[k] for k in ("trial_id", "epochs", "status")} for t in result.trials]))
'''
SWEEP_EPOCHS, SLEEP = 4, 0.3


def _epoch_log(folder: Path) -> dict:
    """trial id -> [(epoch, time, accuracy, energy)] of every epoch run, in order."""
    out = {}
    for f in folder.glob("*.jsonl"):
        rows = [json.loads(ln) for ln in f.read_text().splitlines() if ln.strip()]
        out[f.stem] = [(r["epoch"], r["time"], r["accuracy"], r["energy_mj"]) for r in rows]
    return out


def _snapshot(exp: Path) -> tuple[dict, dict]:
    """The sweep's last experiment checkpoint: ({trial id: (status, iteration of its newest registered
    checkpoint)}, MOASHA's state). The checkpoint, not the last result: Tune records a result, then
    saves its checkpoint in a task of its own, and the experiment state may be written in between;
    a resume starts from the checkpoint."""
    import pickle

    from ray.tune.trainable.metadata import _TrainingRunMetadata

    # the newest session's files (by the time in their names: a resume rewrites the older ones too)
    state = json.loads(max(exp.glob("experiment_state-*.json")).read_text())
    trials = {}
    for trial_json, meta in state["trial_data"]:
        t = json.loads(trial_json)
        latest = _TrainingRunMetadata.from_json_state(meta).checkpoint_manager.latest_checkpoint_result
        trials[t["trial_id"]] = (t["status"], latest.metrics["training_iteration"] if latest else 0)
    with open(max(exp.glob("callback-states-*.pkl")), "rb") as f:
        callbacks = pickle.load(f)
    moasha = next(s["moasha"] for s in callbacks.values() if s and "moasha" in s)
    return trials, moasha


@pytest.mark.drill
@pytest.mark.slow(80)
def test_sweep_driver_killed_then_resumed_keeps_rung_records_and_reruns_nothing(tmp_path, sweep_file, descendants):
    """`run_sweep` in a subprocess on synthetic trials: Ctrl-C (SIGINT to its process group), resume,
    SIGKILL, resume. Every rung record of the checkpoint taken before each kill is still there,
    unchanged, at the end; a trial finished before a kill runs no epoch after it; an unfinished one
    continues after its checkpointed epoch; the trials stopped at a rung still happen."""
    import subprocess
    import sys
    import time

    n = 8
    space = sweep_file(tmp_path, search={"sampler": "random", "seed": 0, "num_samples": n},
                       scheduler={"type": "moasha", "grace_period": 1, "reduction_factor": 2,
                                  "max_epochs": SWEEP_EPOCHS},
                       max_concurrent_trials=2, resources={"cpu": 1})
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER.replace("SLEEP", repr(SLEEP)))
    log = tmp_path / "epochs"
    log.mkdir()
    exp = tmp_path / "results" / "tiny"
    ray_dirs, proc = [], None

    def start(*extra):
        ray_dirs.append(tempfile.mkdtemp(prefix="r", dir="/tmp"))   # Ray's socket paths must stay short
        env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1",
                   STAS_SWEEP_RAY_TMPDIR=ray_dirs[-1], OMP_WAIT_POLICY="PASSIVE",
                   # busy shared cores: a late raylet heartbeat must not have the node declared dead
                   RAY_health_check_failure_threshold="60", RAY_health_check_timeout_ms="30000")
        return subprocess.Popen([sys.executable, str(driver), str(space), str(log), *extra], env=env, cwd=tmp_path,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)

    def wait_until(proc, ready, timeout=240):    # Ray alone may take a minute to start on busy shared cores
        t0 = time.monotonic()
        while not ready(_epoch_log(log)):
            assert proc.poll() is None, f"the driver ended early ({proc.returncode}):\n{proc.stdout.read()[-3000:]}"
            assert time.monotonic() - t0 < timeout, "the sweep made no progress"
            time.sleep(0.1)

    def check_resumed(before, kill_time, in_flight_only=True):
        """What ran after the kill continues the checkpoint taken before it: a trial finished there
        (terminated, or its last epoch checkpointed) runs nothing more, and an unfinished one goes
        on after its checkpointed epoch. Returns how many epochs that ran before the kill ran
        again after it; with ``in_flight_only`` (a Ctrl-C) at most those in flight at the kill."""
        trials, _ = before
        runs = _epoch_log(log)
        lost = 0
        for tid, rows in runs.items():
            after = [e for e, t, *_ in rows if t > kill_time]
            ran_before = [e for e, t, *_ in rows if t <= kill_time]
            status, done = trials.get(tid, ("PENDING", 0))
            if status == "TERMINATED" or done == SWEEP_EPOCHS:
                assert not after, f"finished trial {tid} ran again: epochs {after}"
            elif after:
                # it goes on after a checkpoint at least as new as the state read here (the driver may
                # have saved a newer one just before the kill) and skips no epoch it had not run
                last = max(ran_before, default=0)
                assert done + 1 <= after[0] <= last + 1, \
                    f"trial {tid} restarted at epoch {after[0]}; checkpoint at {done}, ran up to {last}"
                lost += len([e for e in ran_before if e >= after[0]])  # run again after the kill
        # per running trial (2 at a time): the epoch in flight, and one whose result Tune had taken
        # but whose checkpoint it had not yet registered
        if in_flight_only:
            assert lost <= 4, f"{lost} epochs ran but were not in the checkpoint (2 trials run at a time)"
        return lost

    try:
        # 1. Ctrl-C once two trials have passed the second rung
        proc = start()
        wait_until(proc, lambda r: sum(any(e >= 2 for e, *_ in rows) for rows in r.values()) >= 2)
        os.killpg(proc.pid, signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 130, out[-3000:]
        first = _snapshot(exp)
        kill1 = time.time()
        assert first[1]["rungs"][1], "no rung record before the interruption"
        # 2. resume, then SIGKILL the driver and its Ray once two more trials have started
        proc = start("--resume")
        started = len(_epoch_log(log))
        wait_until(proc, lambda r: len(r) >= started + 2)
        tree = descendants(proc.pid)  # its Ray: GCS, raylet and the trial workers below them
        os.killpg(proc.pid, signal.SIGKILL)
        for pid in tree:  # at once, so that no orphaned worker goes on running epochs
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=30)
        kill_all(ray_dirs[-1], grace_s=0)
        kill2 = time.time()
        lost = check_resumed(first, kill1)
        # what the resume reads: a state file the kill cut short is set aside first, and Tune then
        # takes the save before it (here the first session's), so that session's work is run again
        state_cut = any("experiment_state" in b for b in set_aside_broken_saves(str(exp), log=lambda *_: None))
        second = _snapshot(exp)
        # 3. resume to the end
        proc = start("--resume")
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out[-3000:]
        lost += check_resumed(second, kill2, in_flight_only=not state_cut)
    finally:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for d in ray_dirs:
            kill_all(d, grace_s=0)

    trials = {t["trial_id"]: t for t in json.loads(out.split("RESULT ", 1)[1].splitlines()[0])}
    assert len(trials) == n
    _, final = _snapshot(exp)
    runs = _epoch_log(log)
    for before in (first[1], second[1]):           # no rung record lost or changed by a resume
        for m, recorded in before["rungs"].items():
            for tid, vec in recorded.items():
                assert final["rungs"][m][tid] == vec
        assert set(before["stopped"]) <= set(final["stopped"])
    for m, recorded in final["rungs"].items():    # each record is the trial's result at that rung
        for tid, vec in recorded.items():
            e, _, acc, energy = next(r for r in runs[tid] if r[0] == m)
            assert vec == pytest.approx((-acc, energy))
    # every epoch Ray counts ran; beyond them at most the one in flight at a kill, whose result
    # never reached Tune (after the resume MOASHA may stop the trial at the rung before it)
    for tid, t in trials.items():
        epochs = [e for e, *_ in runs[tid]]
        assert set(range(1, t["epochs"] + 1)) <= set(epochs) and max(epochs) <= t["epochs"] + 1, (tid, epochs)
        stopped = t["status"] == "stopped_by_moasha"
        assert stopped == (tid in final["stopped"]) and stopped == (t["epochs"] < SWEEP_EPOCHS)
    assert final["num_stopped"] >= 2
    # beyond Ray's count, only the epochs that ran again after a kill (counted at each kill above)
    # and those in flight at a kill that never ran again (2 trials at a time, 2 kills); a trial
    # started just before a kill and in no saved state is replaced by a new one, not counted
    assert sum(len(runs[tid]) for tid in trials) - sum(t["epochs"] for t in trials.values()) <= lost + 4


def test_a_save_cut_short_by_a_kill_is_set_aside_before_resuming(tmp_path):
    """A driver SIGKILLed while Tune wrote its searcher state leaves the newest file empty; Tune
    would then restart the whole sweep from nothing. The runner renames the broken newest save so
    Tune takes the one before it, and leaves readable saves alone."""
    import pickle

    (tmp_path / "searcher-state-2026-01-01_10-00-00.pkl").write_bytes(pickle.dumps({"ok": 1}))
    (tmp_path / "searcher-state-2026-01-01_11-00-00.pkl").write_bytes(b"")             # cut short
    (tmp_path / "experiment_state-2026-01-01_11-00-00.json").write_text('{"trial_data": [')  # half-written
    (tmp_path / "experiment_state-2026-01-01_10-00-00.json").write_text('{"trial_data": []}')
    (tmp_path / "callback-states-2026-01-01_11-00-00.pkl").write_bytes(pickle.dumps({"moasha": {}}))
    lines = []
    moved = set_aside_broken_saves(str(tmp_path), log=lines.append)
    assert sorted(Path(m).name for m in moved) == ["experiment_state-2026-01-01_11-00-00.json",
                                                    "searcher-state-2026-01-01_11-00-00.pkl"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "callback-states-2026-01-01_11-00-00.pkl", "callback-states-2026-01-01_11-00-00.pkl.bak",
        "experiment_state-2026-01-01_10-00-00.json", "experiment_state-2026-01-01_10-00-00.json.bak",
        "experiment_state-2026-01-01_11-00-00.json.broken", "searcher-state-2026-01-01_10-00-00.pkl",
        "searcher-state-2026-01-01_10-00-00.pkl.bak", "searcher-state-2026-01-01_11-00-00.pkl.broken"]
    assert len(lines) == 2 and all("cut short" in ln for ln in lines)
    assert set_aside_broken_saves(str(tmp_path), log=lines.append) == []  # nothing more to set aside
    # a kill that cut every save of a kind (Tune's upload rewrites older sessions' files too, found
    # by the kill test): the copy the previous resume kept is put back
    (tmp_path / "callback-states-2026-01-01_11-00-00.pkl").write_bytes(b"\x80")
    assert set_aside_broken_saves(str(tmp_path), log=lines.append) == [
        str(tmp_path / "callback-states-2026-01-01_11-00-00.pkl")]
    assert pickle.loads((tmp_path / "callback-states-2026-01-01_11-00-00.pkl").read_bytes()) == {"moasha": {}}
    assert "every callback-states-*.pkl save was cut short" in lines[-1]

    # tuner.pkl, one file rewritten by each session: a resume keeps a copy of the whole one, and
    # puts it back when the next session's write was cut short (as a SIGKILL left it, found by
    # the kill test: Tune's restore then failed with EOFError)
    settings = pickle.dumps({"settings": list(range(100))})
    (tmp_path / "tuner.pkl").write_bytes(settings)
    assert set_aside_broken_saves(str(tmp_path), log=lines.append) == []
    assert (tmp_path / "tuner.pkl.bak").read_bytes() == settings
    (tmp_path / "tuner.pkl").write_bytes(settings[: len(settings) // 2])  # the next session, killed mid-write
    assert set_aside_broken_saves(str(tmp_path), log=lines.append) == [str(tmp_path / "tuner.pkl")]
    assert pickle.loads((tmp_path / "tuner.pkl").read_bytes()) == {"settings": list(range(100))}
    assert "tuner.pkl was cut short" in lines[-1]


@pytest.mark.slow(20)
def test_a_kill_between_checkpoint_deletion_and_state_save_loses_no_trial(ray_local, tmp_path, sweep_file):
    """Tune deletes a trial's previous checkpoint when it registers the next one and saves the
    sweep state naming the new one a moment later (ray-project/ray#27790). Here the driver "dies"
    exactly there: Tune's first forced state save after a trial's second checkpoint raises, and
    nothing is written after it. The saved state then names a checkpoint that is gone, which Tune
    fails to restore; the resume puts it back, and the trial reports that epoch again instead of
    training it again. Found by the kill test above, whose kills land there by chance."""
    from ray.tune.execution.experiment_state import _ExperimentCheckpointManager

    from stas_sweep.sweep.runner import experiment_path, run_sweep
    from stas_sweep.sweep.space import load_spec
    from stas_sweep.sweep.synthetic import sweep_trainable

    epochs = 3
    spec = load_spec(sweep_file(tmp_path, search={"sampler": "random", "seed": 0, "num_samples": 2},
                                scheduler={"type": "fifo", "max_epochs": epochs}, max_concurrent_trials=2))
    exp = Path(experiment_path(spec))
    log = tmp_path / "epochs"
    log.mkdir()

    def trial(config, *, epochs, epsilons):  # an epoch lasts long enough for the "kill" to land inside the next one
        sweep_trainable(config, epochs=epochs, epsilons=epsilons, sleep=0.5, epoch_log=str(log))

    save, dead = _ExperimentCheckpointManager.sync_up_experiment_state, []

    def sync_up(self, save_fn, force=False, wait=False):
        if dead:
            return  # a dead driver writes nothing more
        if self._should_force_sync_up and any(not (d / "checkpoint_000000").exists() for d in exp.glob("trial_*")
                                              if (d / "checkpoint_000001").exists()):
            dead.append(True)
            raise RuntimeError("the driver is killed")
        save(self, save_fn, force, wait=True)  # every earlier state reaches storage before the next

    mp = pytest.MonkeyPatch()
    with mp.context() as m:
        m.setattr(_ExperimentCheckpointManager, "sync_up_experiment_state", sync_up)
        with pytest.raises(Exception):
            run_sweep(spec, trainable=trial, verbose=0)
    assert dead
    state = json.loads(sorted(exp.glob("experiment_state-*.json"))[-1].read_text())
    named = {json.loads(t)["trial_id"]: json.loads(meta)["last_result"].get("checkpoint_dir_name")
             for t, meta in state["trial_data"]}
    lost = [tid for tid, name in named.items() if name == "checkpoint_000000"
            and not next(exp.glob(f"trial_{tid}_*/checkpoint_000000"), None)]
    assert lost, named  # without the repair, Tune fails these trials on resume

    lines = []
    result = run_sweep(spec, resume=True, trainable=trial, verbose=0, log=lines.append)
    assert all(t["status"] == "finished" and t["epochs"] == epochs for t in result.trials), result.trials
    assert any("reported again, not trained again" in ln for ln in lines), lines
    runs = _epoch_log(log)
    for tid in lost:
        ran = [e for e, *_ in runs[tid]]
        assert ran.count(1) == ran.count(2) == 1, ran  # epoch 2 was reported again, not run again
        assert set(ran) == {1, 2, 3}  # epoch 3 may have started before the kill and run again after it
        rows = [json.loads(ln) for ln in next(exp.glob(f"trial_{tid}_*/result.json")).read_text().splitlines()]
        assert [r["training_iteration"] for r in rows if not r.get("replayed")] == [1, 2, 3]
        assert all(r["epoch"] == r["training_iteration"] for r in rows)  # Tune's count follows the epochs


def test_a_lost_checkpoint_is_put_back_from_the_next_one_or_named(tmp_path):
    """The repair of the test above on a written state: an unfinished trial whose checkpoint is gone
    gets a copy of its next checkpoint, marked to be reported again; a trial with no later
    checkpoint is named in a warning; finished trials and kept checkpoints are left alone."""
    from stas_sweep.sweep.checkpoints import REPLAY, REPORT, restore_lost_checkpoints

    from ray.train import Checkpoint, CheckpointConfig
    from ray.train._internal.checkpoint_manager import _CheckpointManager
    from ray.train._internal.session import _TrainingResult
    from ray.tune.trainable.metadata import _TrainingRunMetadata

    def trial(tid, status, ckpt, later=None):
        folder = tmp_path / f"trial_{tid}"
        folder.mkdir()
        if later:
            (folder / later).mkdir()
            (folder / later / REPORT).write_text('{"epoch": 3}')
            (folder / later / "last.pt").write_bytes(b"weights")
        # Tune's record: the newest checkpoint it registered, and a last result that carries none
        # (an epoch between two checkpoints, see checkpoints.CheckpointClock)
        meta = _TrainingRunMetadata()
        meta.checkpoint_manager = _CheckpointManager(CheckpointConfig(num_to_keep=1))
        meta.checkpoint_manager.register_checkpoint(
            _TrainingResult(checkpoint=Checkpoint(str(folder / ckpt)), metrics={"epoch": 1}))
        meta.last_result = {"epoch": 2}
        return [json.dumps({"trial_id": tid, "status": status, "relative_logdir": folder.name}),
                meta.get_json_state()]

    state = {"trial_data": [trial("a", "RUNNING", "checkpoint_000001", later="checkpoint_000002"),
                            trial("b", "PAUSED", "checkpoint_000004"),
                            trial("c", "TERMINATED", "checkpoint_000002")]}
    (tmp_path / "experiment_state-2026-01-01_10-00-00.json").write_text(json.dumps(state))
    lines = []
    assert restore_lost_checkpoints(str(tmp_path), log=lines.append) == [str(tmp_path / "trial_a/checkpoint_000001")]
    put_back = tmp_path / "trial_a/checkpoint_000001"
    assert sorted(p.name for p in put_back.iterdir()) == sorted(["last.pt", REPORT, REPLAY])
    assert (put_back / "last.pt").read_bytes() == b"weights"
    assert any("trial b" in ln and "checkpoint_000004 is gone" in ln for ln in lines), lines
    assert not any("trial c" in ln for ln in lines)
    assert restore_lost_checkpoints(str(tmp_path), log=lines.append) == []  # nothing more to put back


def test_an_epoch_reported_again_after_a_kill_is_not_logged_twice(tmp_path, sweep_file, mlflow_db):
    """Real MLflow (sqlite): the driver callback logs each epoch of a trial once; the report a
    restored trial makes again (``replayed``, see sweep/checkpoints.py) was logged by the driver
    that was killed, so the resumed driver does not log it a second time."""
    from types import SimpleNamespace

    from stas_sweep.sweep.callbacks import TrackerCallback
    from stas_sweep.sweep.checkpoints import REPLAYED
    from stas_sweep.sweep.space import load_spec
    from stas_sweep.tracking import SweepTracker

    uri = mlflow_db(tmp_path)
    spec = load_spec(sweep_file(tmp_path))
    tracker = SweepTracker(uri, spec.experiment, spec.name, str(tmp_path / "results"), spec.objectives)
    tracker.start_parent(spec, "plan")
    callback = TrackerCallback(tracker, spec.objectives, spec.reference)
    trial = SimpleNamespace(trial_id="t1", config={"halting.beta": -6.0})
    for epoch, extra in ((1, {}), (2, {}), (2, {REPLAYED: True}), (3, {})):
        callback.on_trial_result(0, [], trial, {"epoch": epoch, "accuracy": 10.0 * epoch, "energy_mj": 1.0, **extra})
    callback.flush()  # the callback hands the results to its writer thread
    history = tracker.client.get_metric_history(tracker.runs["t1"], "accuracy")
    assert sorted(m.step for m in history) == [1, 2, 3]
