"""Faults around a sweep's storage and store: one driver per sweep, a resumed sweep keeps its plan,
a new sqlite store survives two first runs, read-only commands create nothing, a space with
nothing to search runs its one configuration. (The bad-input corpus holds the one-line refusals:
a changed plan on --resume, a second driver, storage that cannot be written.)"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from stas_sweep.sweep.storage import DriverLock, StorageError, changed_keys


def test_changed_keys_names_every_difference():
    old = {"eval": {"epsilons": [0.0, 0.1]}, "search": {"num_samples": 4, "seed": 0}, "space": {"a": {"uniform": [1, 2]}}}
    new = {"eval": {"epsilons": [0.0, 0.2]}, "search": {"num_samples": 8, "seed": 0}, "space": {"b": {"fixed": 1}}}
    assert changed_keys(old, new) == ["eval.epsilons", "search.num_samples", "space.a", "space.b"]
    assert changed_keys(old, json.loads(json.dumps(old))) == []


def test_driver_lock_refuses_a_running_driver_and_takes_over_a_dead_ones(tmp_path):
    folder = tmp_path / "results" / "sweep"
    lines: list[str] = []
    with DriverLock(folder, lines.append) as lock:
        held = json.loads(lock.path.read_text())
        assert held["pid"] == os.getpid() and held["host"] == socket.gethostname()
        with DriverLock(folder, lines.append):  # the same driver again (run_tracked, then run_sweep): fine
            pass
        assert lock.path.exists()
    assert not (tmp_path / "results").exists()  # a start that wrote nothing leaves nothing
    # a driver that runs (another process on this host): refused, naming it
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        folder.mkdir(parents=True)
        (folder / "driver.lock").write_text(json.dumps({"host": socket.gethostname(), "pid": other.pid,
                                                        "started": "then"}))
        with pytest.raises(StorageError, match=f"in use by the driver PID {other.pid}"):
            DriverLock(folder, lines.append).__enter__()
    finally:
        other.kill()
        other.wait(timeout=30)
    # the same process gone (SIGKILLed driver): its lock is taken over, with a note
    with DriverLock(folder, lines.append) as lock:
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    assert any("taking over" in ln and str(other.pid) in ln for ln in lines), lines
    assert not (folder / "driver.lock").exists() and folder.exists()  # the folder was there before


@pytest.mark.slow(20)
def test_two_first_runs_on_a_new_sqlite_store_both_work(tmp_path):
    """Two processes open a store that does not exist yet at the same moment (the first run of
    two sweeps): both create their experiment, and the store opens cleanly afterwards. (With
    plain ``MlflowClient`` calls one of the two failed in alembic in 3 of 3 tries here.)"""
    import mlflow

    code = ("import sys; from stas_sweep.tracking import open_client, create_experiment; uri = sys.argv[1]; "
            "c = open_client(uri); create_experiment(c, uri, sys.argv[2])")
    uri = f"sqlite:///{tmp_path / 'new.db'}"
    procs = [subprocess.Popen([sys.executable, "-c", code, uri, f"exp{i}"], stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    try:
        errors = [p.communicate(timeout=120)[1] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0], errors
    assert {"exp0", "exp1"} <= {e.name for e in mlflow.MlflowClient(uri).search_experiments()}


def test_read_only_commands_create_no_store_and_artifacts_sit_beside_the_store(tmp_path, monkeypatch, capsys):
    from stas_sweep.cli import main
    from stas_sweep.tracking import Tracker

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.chdir(empty)
    assert main(["pareto"]) == 2
    assert "no MLflow store at" in capsys.readouterr().err and list(empty.iterdir()) == []
    # a store made from another folder keeps its artifacts beside it, not in ./mlruns of that folder
    store = tmp_path / "store"
    store.mkdir()
    tracker = Tracker(f"sqlite:///{store / 'mlflow.db'}", "beside", "run")
    (empty / "a.txt").write_text("x")
    tracker.log_artifact(empty / "a.txt")
    tracker.end()
    assert [p.name for p in empty.iterdir()] == ["a.txt"]
    assert list((store / "mlruns" / "beside").rglob("a.txt"))


@pytest.mark.slow(15)
def test_a_space_with_nothing_to_search_runs_its_one_configuration(ray_local, tmp_path, sweep_file):
    from stas_sweep.sweep.runner import run_sweep
    from stas_sweep.sweep.space import describe, load_spec
    from stas_sweep.sweep.synthetic import sweep_trainable

    spec = load_spec(sweep_file(tmp_path, space={"halting.beta": {"fixed": -6.0}, "optim.lr": {"fixed": 5e-3}},
                                search={"sampler": "tpe", "seed": 0, "num_samples": 5},
                                scheduler={"type": "fifo", "max_epochs": 1}))
    assert spec.num_samples == 1 and "nothing to search" in describe(spec, "sqlite:///x.db")
    result = run_sweep(spec, trainable=sweep_trainable, verbose=0, log=lambda *_: None)
    assert [t["status"] for t in result.trials] == ["finished"]
    assert result.trials[0]["params"] == {"halting.beta": -6.0, "optim.lr": 5e-3}
    assert result.front


def test_no_trial_run_is_left_running_after_an_interruption_or_a_resume(tmp_path, sweep_file, mlflow_db):
    """Ctrl-C closes the running trials' runs as KILLED with the sweep; a resume reopens the ones
    Tune brings back. A trial Tune had not saved before a kill -9 never comes back: a new trial of
    the same configuration (Optuna, restored to the saved state, suggests it again) continues its
    run, so no configuration has two trial runs and no epoch is logged twice; one whose
    configuration does not come again is closed as KILLED, ``stopped_by = not_restored``."""
    from types import SimpleNamespace

    from stas_sweep.sweep.space import load_spec
    from stas_sweep.tracking import SweepTracker

    spec = load_spec(sweep_file(tmp_path))
    uri = mlflow_db(tmp_path)
    objectives = [("accuracy", "max"), ("energy_mj", "min")]
    beta = {t: {"halting.beta": b, "world_size": 1} for t, b in zip("abce", (-6.0, -6.5, -7.0, -7.5))}
    tracker = SweepTracker(uri, "faults", "tiny", str(tmp_path / "results"), objectives)
    tracker.start_parent(spec, "plan")
    runs = {t: tracker.child(t, beta[t], started=True) for t in "abce"}
    tracker.trial_complete("a", beta["a"], full_budget=False)
    tracker.trial_results("c", beta["c"], [({"accuracy": 50.0}, 1)])
    tracker.trial_results("b", beta["b"], [({"accuracy": 40.0}, 1), ({"accuracy": 45.0}, 2)])
    tracker.fail("KILLED")  # Ctrl-C (a kill -9 leaves them RUNNING: the same from here on)
    status = lambda t: tracker.client.get_run(runs[t]).info.status  # noqa: E731
    assert [status(t) for t in "abce"] == ["FINISHED", "KILLED", "KILLED", "KILLED"]
    # the resume: a new tracker (Tune's restored copy); Tune restores a and b, never heard of c or e
    again = SweepTracker(uri, "faults", "tiny", str(tmp_path / "results"), objectives)
    again.start_parent(spec, "plan")
    assert again.lost_trials(known={"a", "b"}) == ["c", "e"]
    assert again.child("b", beta["b"], started=True) == runs["b"] and status("b") == "RUNNING"
    # b comes back from a checkpoint older than its last logged epoch: it trains epoch 2 again
    again.trial_results("b", beta["b"], [({"accuracy": 44.0}, 2), ({"accuracy": 47.0}, 3)])
    again.trial_complete("b", beta["b"], full_budget=False)
    # Optuna suggests c's configuration again, as trial d: it continues c's run
    assert again.child("d", dict(beta["c"]), started=True) == runs["c"] and status("c") == "RUNNING"
    again.trial_results("d", beta["c"], [({"accuracy": 50.0}, 1), ({"accuracy": 60.0}, 2)])
    again.trial_complete("d", beta["c"], full_budget=False)
    trials = [{"trial_id": t, "params": beta["c" if t == "d" else t], "status": "stopped_by_moasha",
               "full_budget": False, "error": None} for t in "abd"]
    again.finish(SimpleNamespace(trials=trials, points=[], front=[], hypervolume=0.0))
    assert [status(t) for t in "abce"] == ["FINISHED", "FINISHED", "FINISHED", "KILLED"]
    tags = {t: tracker.client.get_run(runs[t]).data.tags for t in "ce"}
    assert tags["c"]["trial_id"] == "d" and tags["c"]["adopted_from"] == "c"
    assert tags["c"]["stopped_by"] == "asha"  # d's own end, not the closing of a lost trial
    assert tags["e"]["stopped_by"] == "not_restored"
    history = tracker.client.get_metric_history(runs["c"], "accuracy")
    assert [(m.step, m.value) for m in history] == [(1, 50.0), (2, 60.0)]  # epoch 1 once
    history = tracker.client.get_metric_history(runs["b"], "accuracy")
    assert sorted((m.step, m.value) for m in history) == [(1, 40.0), (2, 45.0), (3, 47.0)]  # epoch 2 once
    trial_runs = tracker.client.search_runs([again._experiment_id()], filter_string="tags.`stas.role` = 'trial'")
    assert len(trial_runs) == 4  # a, b, c (continued by d), e: one run per configuration


def test_a_lost_trial_whose_params_the_killed_driver_never_logged_is_still_continued(tmp_path, sweep_file,
                                                                                      mlflow_db, monkeypatch):
    """A driver killed between creating a trial's run and logging its params (two MLflow calls):
    the run's ``stas.config`` tag, written with the run, still lets the new trial of that
    configuration continue it (the kill-and-resume drill once found 7 trial runs of 7 configurations)."""
    from stas_sweep import tracking
    from stas_sweep.sweep.space import load_spec

    spec = load_spec(sweep_file(tmp_path))
    uri = mlflow_db(tmp_path)
    objectives = [("accuracy", "max"), ("energy_mj", "min")]
    params = {"halting.beta": -7.0, "world_size": 1}
    tracker = tracking.SweepTracker(uri, "faults", "tiny", str(tmp_path / "results"), objectives)
    tracker.start_parent(spec, "plan")
    with monkeypatch.context() as m:
        m.setattr(tracking, "log_params", lambda *a, **k: None)  # the kill, right after create_run
        run = tracker.child("c", params, started=True)
    assert tracker.client.get_run(run).data.params == {}
    again = tracking.SweepTracker(uri, "faults", "tiny", str(tmp_path / "results"), objectives)
    again.start_parent(spec, "plan")
    assert again.lost_trials(known=set()) == ["c"]
    assert again.child("d", dict(params), started=True) == run
    assert again.client.get_run(run).data.tags["adopted_from"] == "c"


@pytest.fixture
def small_disk(tmp_path):
    """A 6 MiB tmpfs at ``tmp_path/disk`` (root only: skipped where mounting is not allowed)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(disk)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({made.stderr.strip()[:200]})")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def _filling_trial(filler: str):
    """A synthetic trial that, at its second epoch, finds the disk filled by something else."""
    def trial(config, *, epochs, epsilons):
        import stas_sweep.sweep.synthetic as synthetic

        report = synthetic._report

        def fill_then_report(metrics, epoch, *checkpoint):
            if epoch == 2:
                try:
                    with open(filler, "ab") as f:
                        while True:
                            f.write(b"\0" * 65536)
                except OSError:
                    pass
            report(metrics, epoch, *checkpoint)

        synthetic._report = fill_then_report
        synthetic.sweep_trainable(config, epochs=epochs, epsilons=epsilons)
    return trial


@pytest.mark.slow(25)
def test_a_disk_filling_up_mid_sweep_ends_in_one_line_with_the_runs_closed(ray_local, small_disk, tmp_path,
                                                                           sweep_file, mlflow_db, capsys, monkeypatch):
    """Storage on a small disk that fills during the trials: the sweep stops with SweepFault naming
    the cause and the path (before: ``EOFError: Ran out of input`` under a Ray traceback, "No space
    left" screens up), the parent and trial runs end FAILED with the reason; the CLI says it in one
    line and exits 1."""
    import mlflow

    from stas_sweep.cli import main
    from stas_sweep.sweep import runner
    from stas_sweep.sweep.space import load_spec

    spec = load_spec(sweep_file(tmp_path, storage_path=str(small_disk / "results"),
                                search={"sampler": "random", "seed": 0, "num_samples": 2},
                                scheduler={"type": "fifo", "max_epochs": 3}, max_concurrent_trials=2))
    uri = mlflow_db(tmp_path)  # the store is on another disk
    with pytest.raises(runner.SweepFault) as err:
        runner.run_tracked(spec, uri, "plan", trainable=_filling_trial(str(small_disk / "filler")),
                           log=lambda *_: None)
    assert "the disk is full (No space left on device)" in str(err.value) and str(small_disk) in str(err.value)
    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("tiny-sweep").experiment_id])
    parent = [r for r in runs if r.data.tags.get("stas.role") == "sweep"]
    assert [r.info.status for r in parent] == ["FAILED"] and "disk is full" in parent[0].data.tags["error"]
    assert {r.info.status for r in runs} == {"FAILED"}

    def faulty(*_args, **_kwargs):
        raise err.value
    monkeypatch.setattr(runner, "run_tracked", faulty)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    capsys.readouterr()  # the sweep's own output so far
    assert main(["run", str(spec.path)]) == 1
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "disk is full" in lines[0] and "--resume" in lines[0], lines


def test_a_corrupt_checkpoint_on_resume_is_named_by_its_stored_file(ray_local, tmp_path, sweep_file):
    """A trial restored from a checkpoint whose ``last.pt`` is damaged fails naming that stored file
    (in the sweep's storage, where the user can look at it or remove it), not the copy Ray made in
    the trial's working folder. Real Tune: the trial's first attempt reports a checkpoint with a
    damaged ``last.pt`` and dies; Tune retries it from that checkpoint through ``train_trial``."""
    from ray import tune

    from stas_sweep.sweep import checkpoints
    from stas_sweep.sweep.space import load_spec
    from stas_sweep.sweep.trainable import train_trial

    spec = load_spec(sweep_file(tmp_path))
    damaged = tmp_path / "last.pt"
    damaged.write_bytes(b"PK\x03\x04 not a whole checkpoint")

    def trial(config):
        if tune.get_checkpoint() is None:
            checkpoints.report({"epoch": 1}, {"last.pt": damaged})
            raise RuntimeError("the node was lost")
        train_trial(config, base=spec.base, epochs=2, epsilons=[0.0], stage1_weights={})

    tuner = tune.Tuner(trial, param_space={"halting.beta": -6.0},
                       run_config=tune.RunConfig(name="corrupt", storage_path=str(ray_local), verbose=0,
                                                 failure_config=tune.FailureConfig(max_failures=1)))
    error = str(tuner.fit()[0].error)
    stored = next((ray_local / "corrupt").glob("trial_*/checkpoint_000000"))
    assert f"{stored}/last.pt: not a readable stas-sweep checkpoint" in error, error
    assert "/train/checkpoints/last.pt" not in error  # the working copy is not what the user is sent to


@pytest.mark.slow(10)
def test_a_tracking_outage_never_stalls_the_sweep_and_loses_no_result(tmp_path, sweep_file, mlflow_db, capfd,
                                                                      short_sqlite_busy_timeout):
    """Real MLflow (sqlite) locked by another connection while trials report: the callback (Tune's
    loop) returns at once for every event; the outage warning comes within 10 s of the first
    failed call; after the store returns every result is logged once, in order, with the front."""
    import sqlite3
    import time
    from types import SimpleNamespace

    from stas_sweep.sweep.callbacks import TrackerCallback
    from stas_sweep.sweep.space import load_spec
    from stas_sweep.tracking import SweepTracker

    uri = mlflow_db(tmp_path)
    spec = load_spec(sweep_file(tmp_path))
    (tmp_path / "results").mkdir(exist_ok=True)
    tracker = SweepTracker(uri, spec.experiment, spec.name, str(tmp_path / "results"), spec.objectives)
    tracker.start_parent(spec, "plan")
    callback = TrackerCallback(tracker, spec.objectives, spec.reference)
    trials = [SimpleNamespace(trial_id=t, config={"halting.beta": -6.0}, checkpoint=None, last_result={})
              for t in ("t1", "t2")]
    for t in trials:
        callback.on_trial_start(0, [], t)
    callback.flush()
    lock = sqlite3.connect(tmp_path / "mlflow.db", isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")
    t0, slowest = time.monotonic(), 0.0
    for epoch in (1, 2, 3):
        for t in trials:
            s = time.perf_counter()
            callback.on_trial_result(0, [], t, {"epoch": epoch, "accuracy": 10.0 * epoch, "energy_mj": 1.0 / epoch})
            slowest = max(slowest, time.perf_counter() - s)
    rows = json.dumps([{"epsilon": 0.0, "accuracy": 30.0, "energy_mj": 0.5}])
    trials[0].last_result = {"epoch": 3, "full_budget": True, "epsilon_table": rows}
    callback.on_trial_complete(0, [], trials[0])
    assert slowest < 0.5, f"a callback waited {slowest:.1f} s for the locked store"
    while "warning: MLflow store" not in (err := capfd.readouterr().err):
        assert time.monotonic() - t0 < 10, "no outage warning within 10 s"
        time.sleep(0.2)
    lock.execute("COMMIT")
    lock.close()
    callback.on_experiment_end([])
    err += capfd.readouterr().err
    assert "answers again" in err and "Traceback" not in err
    for t in trials:
        history = tracker.client.get_metric_history(tracker.runs[t.trial_id], "accuracy")
        assert [(m.step, m.value) for m in history] == [(1, 10.0), (2, 20.0), (3, 30.0)]
    assert tracker.client.get_run(tracker.runs["t1"]).info.status == "FINISHED"
    assert tracker.point_pareto == {"t1@0": "true"}


def test_a_resumed_driver_replays_from_tunes_results_what_the_killed_one_had_not_logged(tmp_path, sweep_file,
                                                                                        mlflow_db):
    """Real MLflow (sqlite), no Ray: the killed driver's writer had acknowledged epoch 1 of trial a
    (``mlflow_acked.log``) but not epochs 2-3, nor the end of trial b, though Tune holds them all
    (each trial's ``result.json``). The resumed driver's writer logs exactly the rest, in order,
    ends trial b with its points on the front, and logs nothing twice."""
    from types import SimpleNamespace

    from stas_sweep.sweep.callbacks import TrackerCallback
    from stas_sweep.sweep.space import load_spec
    from stas_sweep.sweep.writer import ACKED
    from stas_sweep.tracking import SweepTracker

    uri = mlflow_db(tmp_path)
    spec = load_spec(sweep_file(tmp_path))
    folder = tmp_path / "results" / "tiny"
    folder.mkdir(parents=True, exist_ok=True)
    tracker = SweepTracker(uri, spec.experiment, spec.name, str(folder), spec.objectives)
    tracker.start_parent(spec, "plan")
    params = {"halting.beta": -6.0}
    rows = json.dumps([{"epsilon": 0.0, "accuracy": 50.0, "energy_mj": 0.5}])
    results = {"a": [{"epoch": e, "accuracy": 10.0 * e, "energy_mj": 1.0} for e in (1, 2, 3)],
               "b": [{"epoch": 1, "accuracy": 50.0, "energy_mj": 0.5, "full_budget": True, "epsilon_table": rows}]}
    trials = []
    for tid, rs in results.items():
        (tmp_path / tid).mkdir()
        (tmp_path / tid / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rs))
        trials.append(SimpleNamespace(trial_id=tid, config=params, last_result=rs[-1], path=str(tmp_path / tid),
                                      status="RUNNING" if tid == "a" else "TERMINATED", checkpoint=None))
    tracker.trial_results("a", params, [({"accuracy": 10.0, "energy_mj": 1.0}, 1)])  # what the store acknowledged
    (folder / ACKED).write_text("a\t1\nb\t1\n")
    resumed = SweepTracker(uri, spec.experiment, spec.name, str(folder), spec.objectives)
    resumed.start_parent(spec, "plan")
    callback = TrackerCallback(resumed, spec.objectives, spec.reference)
    callback.on_trial_start(0, trials, trials[0])  # Tune restarts trial a
    callback.on_experiment_end(trials)
    history = resumed.client.get_metric_history(resumed.runs["a"], "accuracy")
    assert sorted((m.step, m.value) for m in history) == [(1, 10.0), (2, 20.0), (3, 30.0)]
    assert resumed.client.get_run(resumed.runs["b"]).info.status == "FINISHED"
    assert resumed.point_pareto == {"b@0": "true"}
    assert (folder / ACKED).read_text().splitlines()[2:] == ["a\t2", "a\t3", "b\tend"]


def test_checkpoint_clock_every_period_and_always_the_last_epoch():
    from stas_sweep.sweep.checkpoints import CheckpointClock

    now = [100.0]
    clock = CheckpointClock(10, clock=lambda: now[0])
    due = []
    for t, last in [(103, False), (109.9, False), (110, False), (115, False), (116, True), (117, False), (126, False)]:
        now[0] = t
        due.append(clock.due(last))
    assert due == [False, False, True, False, True, False, True]
    every = CheckpointClock(0, clock=lambda: 0.0)
    assert all(every.due(False) for _ in range(3))


def test_a_trial_checkpoints_by_its_clock_and_tune_saves_its_state_after_each(ray_local, tmp_path, sweep_file,
                                                                             monkeypatch):
    """``checkpoint_period_s: 0``: a checkpoint every epoch, and Tune saves its whole experiment state
    after each (``num_to_keep=1``); a period longer than the trials: only their last epoch, so the
    state saves, whose cost grows with the trials so far, no longer follow the epochs."""
    from collections import Counter

    from ray.tune import Callback
    from ray.tune.execution.tune_controller import TuneController

    from stas_sweep.sweep.runner import run_sweep
    from stas_sweep.sweep.space import load_spec
    from stas_sweep.sweep.synthetic import sweep_trainable

    saves = []
    save = TuneController.save_to_dir
    monkeypatch.setattr(TuneController, "save_to_dir", lambda self: (saves.append(len(self._trials)), save(self))[1])

    class Count(Callback):
        def __init__(self):
            self.checkpoints, self.results = Counter(), Counter()

        def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
            self.checkpoints[trial.trial_id] += 1

        def on_trial_result(self, iteration, trials, trial, result, **info):
            self.results[trial.trial_id] += 1

    counts = {}
    for period in (0, 1000):
        spec = load_spec(sweep_file(tmp_path / str(period), search={"sampler": "random", "seed": 0, "num_samples": 4},
                                    scheduler={"type": "fifo", "max_epochs": 3}, checkpoint_period_s=period))
        count, saves[:] = Count(), []
        result = run_sweep(spec, trainable=sweep_trainable, callbacks=[count], verbose=0, log=lambda *_: None)
        assert [t["status"] for t in result.trials] == ["finished"] * 4 and len(result.front) >= 1
        assert all(n == 3 for n in count.results.values()), count.results
        counts[period] = (dict(count.checkpoints), len(saves))
    every, every_saves = counts[0]
    last, last_saves = counts[1000]
    assert sorted(every.values()) == [3] * 4 and sorted(last.values()) == [1] * 4, counts
    # one save per checkpoint (two trials' checkpoints between two steps of Tune's loop share one)
    assert every_saves >= 6 and last_saves <= 4 + 2 and last_saves < every_saves, counts
