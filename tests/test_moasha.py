"""MO-ASHA: the ranking maths on hand-made points, the scheduler's rung rule, and small Ray Tune
runs on synthetic curves (no torch): ASHA on accuracy stops the low-energy trials, MOASHA keeps
the non-dominated ones; a Ctrl-C'd run resumes with its rung records."""

from __future__ import annotations

import json
import math
import os
import signal
import tempfile
from pathlib import Path

import numpy as np
import pytest

from stas_sweep.sweep.moasha import (MOASHA, MOASHAStateCallback, crowding_distance, front_ranks, loss_matrix,
                                     promote, rank_order)
from stas_sweep.sweep.pareto import non_dominated

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


@pytest.fixture(scope="module")
def ray_local(tmp_path_factory):
    saved = dict(os.environ)
    os.environ.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    import ray

    tmp = tempfile.mkdtemp(prefix="r", dir="/tmp")   # Ray's socket paths must stay short
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=tmp, log_to_driver=False,
             runtime_env={"env_vars": {"RAY_CHDIR_TO_TRIAL_DIR": "0", "OMP_WAIT_POLICY": "PASSIVE"}})
    yield tmp_path_factory.mktemp("tune")
    ray.shutdown()
    os.environ.clear()
    os.environ.update(saved)


def _trainable_of(configs):
    from stas_sweep.sweep.synthetic import trainable

    def run(config):
        trainable({**configs[config["i"]], **{k: v for k, v in config.items() if k != "i"}})
    return run


def _epochs_by_trial(grid):
    return {r.config["i"]: r.metrics["training_iteration"] for r in grid}


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


def _interrupting(configs, marker):
    """Trial 1 sends the driver SIGINT once, before reporting (a Ctrl-C mid-sweep)."""
    from stas_sweep.sweep.synthetic import trainable

    def run(config):
        if config["i"] == 1 and not os.path.exists(marker):
            open(marker, "w").write("x")
            os.kill(config["driver_pid"], signal.SIGINT)
            import time
            time.sleep(5)
        trainable({**configs[config["i"]], "epochs": config["epochs"]})
    return run


def test_moasha_resumes_with_its_rung_records_after_ctrl_c(ray_local):
    from ray import tune

    # trial 1 is dominated by trial 0: stopped at the first rung only if trial 0's record is restored
    configs = [{"h": 0.0, "q": 1.0}, {"h": 0.0, "q": 0.5}, {"h": 1.0, "q": 1.0}]
    marker = str(ray_local / "interrupted")
    sched = MOASHA(OBJ, max_t=EPOCHS, grace_period=1, reduction_factor=2)
    tuner = tune.Tuner(
        _interrupting(configs, marker),
        param_space={"i": tune.grid_search([0, 1, 2]), "epochs": EPOCHS, "driver_pid": os.getpid()},
        tune_config=tune.TuneConfig(scheduler=sched, max_concurrent_trials=1),
        run_config=tune.RunConfig(name="resume", storage_path=str(ray_local), verbose=0,
                                  callbacks=[MOASHAStateCallback(sched)]),
    )
    first = tuner.fit()
    assert os.path.exists(marker)
    assert first.num_terminated < 3, "the sweep was not interrupted"
    path = str(ray_local / "resume")
    restored = tune.Tuner.restore(path, _interrupting(configs, marker), resume_unfinished=True)
    grid = restored.fit()
    epochs = _epochs_by_trial(grid)
    assert epochs == {0: EPOCHS, 1: 1, 2: EPOCHS}, epochs
    # no trial ran twice: trial 0's results hold each epoch once
    t0 = next(r for r in grid if r.config["i"] == 0)
    lines = [json.loads(ln) for ln in Path(t0.path, "result.json").read_text().splitlines() if ln.strip()]
    assert [ln["training_iteration"] for ln in lines] == list(range(1, EPOCHS + 1))
