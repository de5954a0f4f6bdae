"""Node-loss drill (run by .ci/run after the test suite; about 2-3 minutes on 2 cores).

On this machine: a Ray head and a second Ray node (each its own temp dir), a tiny 2-trial digits
sweep whose trials train on 2 DDP workers each (Ray Train), the two trials together needing more
than the head has, so workers run on both nodes. Once both trials have a checkpoint, the second
node is killed (SIGKILL of every one of its processes). The drill passes when the sweep finishes,
a worker group resumed from a checkpoint, and the MLflow store shows every epoch of every trial
once and no run left RUNNING. Every process it started is stopped by its PID at the end, also
on failure.

    python tests/drills/node_loss.py [--keep]     # --keep: leave the temp folder for a look
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from procs import kill_all, pids_naming

EPOCHS = 2
DEADLINE_S = 175


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def space(root: Path) -> Path:
    base = {"model": {"name": "spikingformer-2-32", "timesteps": 2, "stem": "isps"},
            "data": {"name": "digits", "img_size": 8, "augment": False}, "optim": {"lr": 5e-3},
            "epochs": EPOCHS, "batch_size": 32, "seed": 0, "device": "cpu", "energy_batches": 2,
            "tracking": {"enabled": False}}
    raw = {"name": "drill", "base": base, "stage1": {"epochs": 1},
           "space": {"halting.beta": {"choice": [-6.0, -5.0]}},
           "eval": {"epsilons": [0.0, 0.2]}, "objectives": {"accuracy": "max", "energy_mj": "min"},
           "reference": {"energy_mj": 1.0},
           "search": {"sampler": "random", "seed": 0, "num_samples": 2,
                      "points_to_evaluate": [{"halting.beta": -6.0}, {"halting.beta": -5.0}]},
           "scheduler": {"type": "fifo", "max_epochs": EPOCHS},
           # 2 workers x 0.8 CPU + 0.2 for the trial's function: two trials need both 2-CPU nodes, and
           # on the head alone one trial's group runs beside the other's function
           "resources": {"workers": 2, "cpu": 0.8}, "max_concurrent_trials": 2, "retries": 2,
           "checkpoint_period_s": 0,  # a Tune checkpoint every epoch: the drill cuts a trial after its first
           "storage_path": str(root / "results"), "mlflow": {"experiment": "drill"}}
    path = root / "space.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def stage1_in_place(path: Path) -> None:
    """Train the sweep's shared stage 1 here, in this process, where the sweep looks for it (the sweep
    then reuses it): the drill is about the trials, and a worker group's start-up costs ~25 s."""
    from stas_sweep.sweep.space import load_spec
    from stas_sweep.sweep.trainable import train_stage1

    spec = load_spec(path)
    train_stage1(spec.stage1, str(Path(spec.storage_dir()) / f"stage1-{spec.stage1_key()}"))


def ray_start(args: list[str], env: dict) -> None:
    subprocess.run([sys.executable, "-m", "ray.scripts.scripts", "start", *args], env=env, check=True,
                   stdout=subprocess.DEVNULL, timeout=120)


def trial_checkpoints(results: Path) -> dict[str, int]:
    """Tune checkpoints so far of each trial (one per epoch reported to Tune)."""
    return {d.name.split("_")[2]: len(list(d.glob("checkpoint_*")))
            for d in (results / "drill").glob("train_trial_*") if d.is_dir()}


def check_store(uri: str) -> list[str]:
    """Every trial run: each epoch logged once, 1..EPOCHS, and none RUNNING."""
    import mlflow

    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name("drill")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    problems = [f"run {r.info.run_name} is {r.info.status}" for r in runs if r.info.status == "RUNNING"]
    trials = [r for r in runs if r.data.tags.get("stas.role") == "trial"]
    if len(trials) != 2:
        problems.append(f"{len(trials)} trial runs, expected 2")
    for r in trials:
        steps = sorted(m.step for m in client.get_metric_history(r.info.run_id, "accuracy"))
        if steps != list(range(1, EPOCHS + 1)):
            problems.append(f"trial run {r.info.run_name}: accuracy logged at epochs {steps}, "
                            f"expected each of 1..{EPOCHS} once")
        if r.data.params.get("world_size") != "2":
            problems.append(f"trial run {r.info.run_name}: world_size {r.data.params.get('world_size')}")
    return problems


def drill(root: Path) -> list[str]:
    head_tmp, node_tmp = tempfile.mkdtemp(prefix="rh", dir="/tmp"), tempfile.mkdtemp(prefix="rn", dir="/tmp")
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", OMP_WAIT_POLICY="PASSIVE",
               MLFLOW_TRACKING_URI=f"sqlite:///{root / 'mlflow.db'}", HOME=str(root), PYTHONUNBUFFERED="1")
    env.pop("RAY_ADDRESS", None)
    # the head's GCS declares a silent node dead after ~5 s instead of Ray's default ~30 s, so the cut
    # trial's new worker group is not held back waiting on the dead node's resources
    env.update(RAY_health_check_initial_delay_ms="2000", RAY_health_check_period_ms="1000",
               RAY_health_check_timeout_ms="1000", RAY_health_check_failure_threshold="5")
    port = free_port()
    # Ray Train's placement-group cleaner frees the CPUs of a worker group whose controller died with
    # the node; it asks the State API, served by the head's dashboard, and finds this cluster by
    # RAY_ADDRESS (else it gives up on a machine where other Ray clusters run too)
    nodes_env = dict(env, RAY_ADDRESS=f"127.0.0.1:{port}")
    driver = None
    try:
        ray_start(["--head", f"--port={port}", "--num-cpus=2", "--node-ip-address=127.0.0.1",
                   "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={free_port()}",
                   f"--temp-dir={head_tmp}"], nodes_env)
        ray_start([f"--address=127.0.0.1:{port}", "--num-cpus=2", "--node-ip-address=127.0.0.1",
                   f"--temp-dir={node_tmp}"], nodes_env)
        path = space(root)
        stage1_in_place(path)
        log = open(root / "driver.log", "w")
        driver = subprocess.Popen([sys.executable, "-m", "stas_sweep.cli", "run", str(path),
                                   "--address", f"127.0.0.1:{port}"], env=env, cwd=root, stdout=log,
                                  stderr=subprocess.STDOUT)
        start, killed = time.time(), False
        while driver.poll() is None:
            if time.time() - start > DEADLINE_S:
                return [f"the sweep did not finish in {DEADLINE_S} s (see {root / 'driver.log'})"]
            done = trial_checkpoints(root / "results")
            if not killed and len(done) == 2 and all(done.values()):
                victims = pids_naming(node_tmp)
                for pid in victims:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except OSError:
                        pass
                killed = True
                print(f"drill: killed the second node ({len(victims)} processes) at {time.time() - start:.0f} s "
                      f"with checkpoints {done}", flush=True)
            time.sleep(0.5)
        out = (root / "driver.log").read_text()
        problems = [] if driver.returncode == 0 else [f"the sweep exited {driver.returncode}"]
        if not killed:
            problems.append("the two trials never ran at once: the second node was not killed mid-trial")
        if "resuming from the checkpoint of epoch" not in out:
            problems.append("no worker group resumed from a checkpoint")
        return problems + check_store(env["MLFLOW_TRACKING_URI"])
    finally:
        if driver is not None and driver.poll() is None:
            driver.kill()
            driver.wait(10)
        kill_all(node_tmp)
        kill_all(head_tmp)
        shutil.rmtree(head_tmp, ignore_errors=True)
        shutil.rmtree(node_tmp, ignore_errors=True)


def run(name: str, drill, passed: str, prefix: str) -> int:
    """Run ``drill(root)`` (a list of problems, empty when it passed) in a fresh temp folder and print
    the verdict: the problems and the newest ``*.log`` of the folder's tail on failure (exit 1),
    ``passed`` on success (the folder removed unless ``--keep``)."""
    # a SIGTERM (CI's timeout) unwinds through the drill's finally, which stops every process by PID
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(f"{name} drill: terminated"))
    root = Path(tempfile.mkdtemp(prefix=prefix))
    t0 = time.time()
    problems = drill(root)
    took = time.time() - t0
    if problems:
        print(f"{name} drill FAILED after {took:.0f} s:\n  " + "\n  ".join(problems), file=sys.stderr)
        logs = sorted(root.glob("*.log"), key=lambda f: f.stat().st_mtime)
        if logs:
            print(f"{logs[-1].name} (last 40 lines):\n" + "\n".join(logs[-1].read_text().splitlines()[-40:]),
                  file=sys.stderr)
        return 1
    print(f"{name} drill passed in {took:.0f} s: {passed}")
    if "--keep" not in sys.argv:
        shutil.rmtree(root, ignore_errors=True)
    return 0


def main() -> int:
    return run("node-loss", drill, "the sweep finished after the second node was killed, a worker group resumed "
               "from its checkpoint, every epoch logged once, no run left RUNNING", "stas-node-loss-")


if __name__ == "__main__":
    sys.exit(main())
