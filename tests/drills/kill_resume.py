"""Kill-and-resume drill (run by .ci/run after the test suite; about two minutes on 2 cores).

A tiny synthetic sweep (no torch: the curves of ``stas_sweep.sweep.synthetic``, 1 s an epoch)
with a real sqlite MLflow store runs in a driver process, which is killed with SIGKILL together
with its Ray; ``--resume`` then finishes the sweep. Two moments:

1. *Lost trials* (a checkpoint every epoch): the moment a third and fourth trial run appear in the
   store (Tune has started them and has not saved its state since: their first epoch is not
   reported yet). Optuna, restored to the saved state, suggests the lost trials' configurations
   again under new trial ids; the new trial must continue the lost one's run.
2. *Between two checkpoints* (``checkpoint_period_s: 2.5``, Tune saving its state every second):
   the moment a trial has logged its second epoch, before its first checkpoint. Tune restores it
   from nothing, so it trains those epochs again; its run must not log them twice.

Each passes when the store holds one trial run per configuration, every epoch of each logged once,
and no run RUNNING; the first also needs a run continued by a new trial, the second an epoch that
was trained twice (the epoch log of the trials). Every process it starts is stopped by its PID at
the end, also on failure.

    python tests/drills/kill_resume.py [--keep]     # --keep: leave the temp folder for a look
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from node_loss import run
from procs import kill_all

TRIALS, EPOCHS, DEADLINE_S = 6, 4, 240
MISSED = "the kill missed its moment"

DRIVER = '''
import sys
from stas_sweep.sweep.runner import SweepInterrupted, run_tracked
from stas_sweep.sweep.space import load_spec
from stas_sweep.sweep.synthetic import sweep_trainable

EPOCH_LOG = sys.argv[3]  # pickled with trial() for its workers

def trial(config, *, epochs, epsilons, checkpoint_period_s):
    sweep_trainable(config, epochs=epochs, epsilons=epsilons, sleep=1.0, checkpoint_period_s=checkpoint_period_s,
                    epoch_log=EPOCH_LOG)

spec = load_spec(sys.argv[1])
try:
    run_tracked(spec, sys.argv[2], "plan", resume="--resume" in sys.argv, trainable=trial)
except SweepInterrupted:
    sys.exit(130)
'''


def space(root: Path, period: float) -> Path:
    base = {"model": {"name": "spikformer-1-16", "timesteps": 2}, "data": {"name": "digits", "img_size": 8},
            "epochs": EPOCHS, "batch_size": 32, "device": "cpu", "tracking": {"enabled": False}}
    raw = {"name": "kill", "base": base, "space": {"halting.beta": {"uniform": [-8.0, -4.0]},
                                                     "halting.delta_p": {"loguniform": [1e-3, 1e-1]}},
           "eval": {"epsilons": [0.0, 0.2]}, "objectives": {"accuracy": "max", "energy_mj": "min"},
           "reference": {"energy_mj": 1.0}, "search": {"sampler": "tpe", "seed": 0, "num_samples": TRIALS},
           "scheduler": {"type": "fifo", "max_epochs": EPOCHS}, "resources": {"cpu": 1},
           "max_concurrent_trials": 2, "retries": 0, "storage_path": str(root / "results"),
           "checkpoint_period_s": period, "mlflow": {"experiment": "kill"}}
    path = root / "space.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def trial_runs(db: Path) -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as con:
            return con.execute("select count(*) from tags where key = 'stas.role' and value = 'trial'").fetchone()[0]
    except sqlite3.Error:
        return 0


def logged_epoch(db: Path, epoch: int) -> bool:
    """Whether some trial run has its accuracy of ``epoch`` in the store."""
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as con:
            return con.execute("select count(*) from metrics where key = 'accuracy' and step = ?",
                               (epoch,)).fetchone()[0] > 0
    except sqlite3.Error:
        return False


def retrained(epochs: Path) -> list[str]:
    """The trials (of the epoch log) that trained an epoch twice."""
    twice = []
    for f in epochs.glob("*.jsonl"):
        ran = [json.loads(line)["epoch"] for line in f.read_text().splitlines() if line.strip()]
        if len(ran) != len(set(ran)):
            twice.append(f.stem)
    return twice


def check_store(uri: str, adopted: bool) -> list[str]:
    """One trial run per configuration, each epoch logged once, nothing RUNNING; with ``adopted``
    a trial run continued by a new trial."""
    import mlflow

    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name("kill")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    problems = [f"run {r.info.run_name} is {r.info.status}" for r in runs if r.info.status == "RUNNING"]
    trials = [r for r in runs if r.data.tags.get("stas.role") == "trial"]
    configs = {json.dumps({k: v for k, v in r.data.params.items() if k.startswith("halting.")}, sort_keys=True)
               for r in trials}
    if len(trials) != TRIALS or len(configs) != TRIALS:
        problems.append(f"{len(trials)} trial runs of {len(configs)} configurations, expected {TRIALS} of {TRIALS}")
    for r in trials:
        steps = sorted(m.step for m in client.get_metric_history(r.info.run_id, "accuracy"))
        if steps != list(range(1, EPOCHS + 1)):
            problems.append(f"trial run {r.info.run_name}: accuracy logged at epochs {steps}")
    if adopted and not any(r.data.tags.get("adopted_from") for r in trials):
        problems.append(f"no trial continued the run of a lost one ({MISSED}?)")
    return problems


def drill(root: Path) -> list[str]:
    """Both moments, each in a folder of its own; a kill that missed its moment (Tune saved its
    state just before it, a matter of milliseconds) is tried once more."""
    moments = [("lost trials", 0.0, lambda db: trial_runs(db) >= 4, "4 trial runs in the store"),
               ("between checkpoints", 2.5, lambda db: logged_epoch(db, 2), "a trial's second epoch logged")]
    for i, (name, period, moment, said) in enumerate(moments):
        problems = scenario(root / f"{i}-1", period, moment, said)
        if problems and all(MISSED in p for p in problems):
            print(f"drill: {name}: {problems[0]}; once more", flush=True)
            problems = scenario(root / f"{i}-2", period, moment, said)
        if problems:
            return [f"{name}: {p}" for p in problems]
    return []


def scenario(root: Path, period: float, moment, said: str) -> list[str]:
    """A driver killed when ``moment(db)`` holds, then resumed; the problems found in the store."""
    root.mkdir(parents=True)
    path, db, epochs = space(root, period), root / "mlflow.db", root / "epochs"
    epochs.mkdir()
    (root / "driver.py").write_text(DRIVER)
    uri = f"sqlite:///{db}"
    ray_tmp: list[str] = []
    driver = None

    def start(*extra) -> subprocess.Popen:
        ray_tmp.append(tempfile.mkdtemp(prefix="rk", dir="/tmp"))  # Ray's socket paths must stay short
        env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1",
                   OMP_WAIT_POLICY="PASSIVE", STAS_SWEEP_RAY_TMPDIR=ray_tmp[-1])
        if period:  # Tune saves its state every second: it knows the running trial before the kill
            env["TUNE_GLOBAL_CHECKPOINT_S"] = "1"
        env.pop("RAY_ADDRESS", None)
        log = open(root.parent / f"{root.name}-driver-{len(ray_tmp)}.log", "w")
        return subprocess.Popen([sys.executable, str(root / "driver.py"), str(path), uri, str(epochs), *extra],
                                env=env, cwd=root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    try:
        driver, t0 = start(), time.time()
        while not moment(db):
            if driver.poll() is not None:
                return [f"the first driver ended early ({driver.returncode})"]
            if time.time() - t0 > DEADLINE_S / 2:
                return [f"the sweep never reached its moment ({said})"]
            time.sleep(0.05)
        os.killpg(driver.pid, signal.SIGKILL)
        kill_all(ray_tmp[-1], grace_s=0)
        driver.wait(30)
        print(f"drill: killed the driver and its Ray at {time.time() - t0:.0f} s, {said}", flush=True)
        driver = start("--resume")
        driver.wait(DEADLINE_S)
        if driver.returncode != 0:
            return [f"the resumed sweep exited {driver.returncode}"]
        problems = check_store(uri, adopted=period == 0)
        if period and not retrained(epochs):
            problems.append(f"no trial trained an epoch again after the resume ({MISSED}?)")
        return problems
    except subprocess.TimeoutExpired:
        return [f"the resumed sweep did not finish in {DEADLINE_S} s"]
    finally:
        if driver is not None and driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait(10)
        for d in ray_tmp:
            kill_all(d)
            shutil.rmtree(d, ignore_errors=True)


def main() -> int:
    return run("kill-and-resume", drill, "one trial run per configuration after each kill -9, a lost trial's run "
               "continued by its configuration's new trial, epochs trained again after a kill between two "
               "checkpoints logged once, every epoch once, none RUNNING", "stas-kill-resume-")


if __name__ == "__main__":
    sys.exit(main())
