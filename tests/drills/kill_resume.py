"""Kill-and-resume drill (run by .ci/run after the test suite; about a minute on 2 cores).

A tiny synthetic sweep (no torch: the curves of ``stas_sweep.sweep.synthetic``) with a real
sqlite MLflow store runs in a driver process; the moment a third and fourth trial run appear in
the store (Tune has started them, and has not saved its state since: their first epoch is not
reported yet), the driver and its Ray are killed with SIGKILL. ``--resume`` then finishes the
sweep. Optuna, restored to the saved state, suggests the lost trials' configurations again under
new trial ids; the drill passes when the store holds one trial run per configuration (the new
trial continued the lost one's run), every epoch of each logged once, and no run RUNNING. Every
process it starts is stopped by its PID at the end, also on failure.

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

from node_loss import kill_all, run

TRIALS, EPOCHS, DEADLINE_S = 6, 4, 240

DRIVER = '''
import sys
from stas_sweep.sweep.runner import SweepInterrupted, run_tracked
from stas_sweep.sweep.space import load_spec
from stas_sweep.sweep.synthetic import sweep_trainable

def trial(config, *, epochs, epsilons):
    sweep_trainable(config, epochs=epochs, epsilons=epsilons, sleep=1.0)

spec = load_spec(sys.argv[1])
try:
    run_tracked(spec, sys.argv[2], "plan", resume="--resume" in sys.argv, trainable=trial)
except SweepInterrupted:
    sys.exit(130)
'''


def space(root: Path) -> Path:
    base = {"model": {"name": "spikformer-1-16", "timesteps": 2}, "data": {"name": "digits", "img_size": 8},
            "epochs": EPOCHS, "batch_size": 32, "device": "cpu", "tracking": {"enabled": False}}
    raw = {"name": "kill", "base": base, "space": {"halting.beta": {"uniform": [-8.0, -4.0]},
                                                     "halting.delta_p": {"loguniform": [1e-3, 1e-1]}},
           "eval": {"epsilons": [0.0, 0.2]}, "objectives": {"accuracy": "max", "energy_mj": "min"},
           "reference": {"energy_mj": 1.0}, "search": {"sampler": "tpe", "seed": 0, "num_samples": TRIALS},
           "scheduler": {"type": "fifo", "max_epochs": EPOCHS}, "resources": {"cpu": 1},
           "max_concurrent_trials": 2, "retries": 0, "storage_path": str(root / "results"),
           "mlflow": {"experiment": "kill"}}
    path = root / "space.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def trial_runs(db: Path) -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as con:
            return con.execute("select count(*) from tags where key = 'stas.role' and value = 'trial'").fetchone()[0]
    except sqlite3.Error:
        return 0


def check_store(uri: str) -> list[str]:
    """One trial run per configuration, each epoch logged once, nothing RUNNING, one adoption."""
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
    if not any(r.data.tags.get("adopted_from") for r in trials):
        problems.append("no trial continued the run of a lost one (the kill missed its moment?)")
    return problems


def drill(root: Path) -> list[str]:
    path, db = space(root), root / "mlflow.db"
    (root / "driver.py").write_text(DRIVER)
    uri = f"sqlite:///{db}"
    ray_tmp: list[str] = []
    driver = None

    def start(*extra) -> subprocess.Popen:
        ray_tmp.append(tempfile.mkdtemp(prefix="rk", dir="/tmp"))  # Ray's socket paths must stay short
        env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1",
                   OMP_WAIT_POLICY="PASSIVE", STAS_SWEEP_RAY_TMPDIR=ray_tmp[-1])
        env.pop("RAY_ADDRESS", None)
        log = open(root / f"driver-{len(ray_tmp)}.log", "w")
        return subprocess.Popen([sys.executable, str(root / "driver.py"), str(path), uri, *extra], env=env,
                                cwd=root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    try:
        driver, t0 = start(), time.time()
        while trial_runs(db) < 4:
            if driver.poll() is not None:
                return [f"the first driver ended early ({driver.returncode})"]
            if time.time() - t0 > DEADLINE_S / 2:
                return ["the sweep never started its third trial"]
            time.sleep(0.05)
        os.killpg(driver.pid, signal.SIGKILL)
        kill_all(ray_tmp[-1], grace_s=0)
        driver.wait(30)
        print(f"drill: killed the driver and its Ray at {time.time() - t0:.0f} s, 4 trial runs in the store",
              flush=True)
        driver = start("--resume")
        driver.wait(DEADLINE_S)
        if driver.returncode != 0:
            return [f"the resumed sweep exited {driver.returncode}"]
        return check_store(uri)
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
    return run("kill-and-resume", drill, "one trial run per configuration after a kill -9, the lost trial's run "
               "continued by its configuration's new trial, every epoch once, none RUNNING", "stas-kill-resume-")


if __name__ == "__main__":
    sys.exit(main())
