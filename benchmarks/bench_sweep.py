"""Sweep overhead: wall time against the trials' own training time, points per trial, stage-1 runs.

    python benchmarks/bench_sweep.py [--out docs/benchmarks.md]
    python benchmarks/bench_sweep.py --synthetic 64 256 1024 [--checkpoint-period S] [--out docs/benchmarks.md]

Runs ``stas-sweep run search_spaces/digits.yaml`` in a temporary folder (local Ray, sqlite
MLflow), then runs a renamed copy of the same file: its stage 1 must be reused, not retrained.

``--synthetic N ...``: the driver's own cost per trial as a sweep grows. Each N runs in a fresh
process: ``run_tracked`` (the sweep as ``stas-sweep run`` makes it: MLflow parent run, the
tracker callback and its writer) on the synthetic trainable of ``stas_sweep.sweep.synthetic``
(no torch, no training: only the driver's work shows), MOASHA, TPE, 2 trials at a time, a
sqlite store, 4 knob points per trial, the trials checkpointing as the file's
``checkpoint_period_s`` says (``--checkpoint-period``). The time is split by wrapping the methods that do each
part: our callback on Tune's loop, our writer thread (front, retags, MLflow writes), Optuna
(``OptunaSearch``), MOASHA, Tune's experiment-state saves, and the rest of Tune's loop.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent


def run(space: Path, cwd: Path, env: dict) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "stas_sweep.cli", "run", str(space)], cwd=cwd, env=env,
                          capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(proc.stdout[-3000:] + proc.stderr[-3000:])
    return time.perf_counter() - t0, proc.stdout + proc.stderr


class Timed:
    """Seconds spent in wrapped methods, by part."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def wrap(self, cls, name: str, part: str) -> None:
        fn = getattr(cls, name)

        def timed(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.seconds[part] = self.seconds.get(part, 0.0) + time.perf_counter() - t0
        setattr(cls, name, timed)


def synthetic_one(n: int, work: Path, checkpoint_period: float | None = None) -> dict:
    """One synthetic sweep of ``n`` trials in this process; the seconds of each part."""
    from ray.tune.execution.tune_controller import TuneController
    from ray.tune.search.optuna import OptunaSearch

    from stas_sweep.sweep import callbacks
    from stas_sweep.sweep.moasha import MOASHA
    from stas_sweep.sweep.runner import init_ray, run_tracked
    from stas_sweep.sweep.space import load_spec
    from stas_sweep.sweep.synthetic import sweep_trainable

    raw = {"name": f"synthetic-{n}", "base": str(REPO / "configs/digits_stage2.yaml"),
           "space": {"halting.beta": {"uniform": [-8.0, -4.0]}, "halting.delta_p": {"loguniform": [1e-3, 1e-1]},
                     "optim.lr": {"loguniform": [1e-4, 1e-2]}},
           "eval": {"epsilons": [0.0, 0.1, 0.2, 0.4]},
           "objectives": {"accuracy": "max", "energy_mj": "min"}, "reference": {"accuracy": 0.0, "energy_mj": 2.0},
           "search": {"sampler": "tpe", "seed": 0, "num_samples": n},
           "scheduler": {"type": "moasha", "grace_period": 1, "reduction_factor": 2, "max_epochs": 4},
           "resources": {"cpu": 1}, "max_concurrent_trials": 2, "retries": 0,
           "storage_path": str(work / "results"), "mlflow": {"experiment": "bench"}}
    if checkpoint_period is not None:
        raw["checkpoint_period_s"] = checkpoint_period
    space = work / "space.yaml"
    space.write_text(yaml.safe_dump(raw))
    spec = load_spec(space)
    timed, made = Timed(), []
    for name in ("suggest", "on_trial_complete", "on_trial_result"):
        timed.wrap(OptunaSearch, name, "optuna")
    for name in ("on_trial_result", "on_trial_complete", "choose_trial_to_run"):
        timed.wrap(MOASHA, name, "moasha")
    timed.wrap(TuneController, "save_to_dir", "tune_state")
    if os.environ.get("BENCH_PERIODIC_STATE"):  # the experiment state saved by period, not per checkpoint
        import ray.tune

        config = ray.tune.CheckpointConfig

        def every_checkpoint_kept(**k):
            return config(**{**k, "num_to_keep": None})
        ray.tune.CheckpointConfig = every_checkpoint_kept
    init = callbacks.TrackerCallback.__init__

    def keep(self, *a, **k):
        init(self, *a, **k)
        made.append(self)
    callbacks.TrackerCallback.__init__ = keep
    init_ray(None, spec)
    t0 = time.perf_counter()
    result = run_tracked(spec, f"sqlite:///{work / 'mlflow.db'}", "plan", log=lambda *_: None,
                         trainable=sweep_trainable)
    wall = time.perf_counter() - t0
    cb = made[0]
    return {"trials": n, "finished": len(result.trials), "points": len(result.points), "wall": wall,
            "loop": cb.loop_seconds, "writer": cb._writer.seconds if cb._writer else 0.0,
            "artifacts": cb._writer.artifact_seconds if cb._writer else 0.0, **timed.seconds}


def synthetic(sizes: list[int], out: Path | None, checkpoint_period: float | None = None) -> None:
    rows = []
    for n in sizes:
        work = Path(tempfile.mkdtemp(prefix=f"bench-synthetic-{n}-"))
        env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0",
                   STAS_SWEEP_RAY_TMPDIR=tempfile.mkdtemp(prefix="r", dir="/tmp"), PYTHONPATH=str(REPO))
        load = os.getloadavg()[0]
        period = [] if checkpoint_period is None else ["--checkpoint-period", str(checkpoint_period)]
        proc = subprocess.run([sys.executable, __file__, "--synthetic-one", str(n), str(work), *period], cwd=work,
                              env=env, capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(proc.stdout[-3000:] + proc.stderr[-3000:])
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        row["load"] = (load + os.getloadavg()[0]) / 2
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    lines = ["| trials | wall per trial | our callback on Tune's loop | our writer (front, retags, MLflow) "
             "| of which plots | Optuna | MOASHA | Tune state saves | rest of Tune | load avg |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        n = r["trials"]
        rest = r["wall"] - r["loop"] - r.get("optuna", 0) - r.get("moasha", 0) - r.get("tune_state", 0)
        ms = lambda v: f"{1000 * v / n:.1f} ms"  # noqa: E731
        lines.append(f"| {n:,} | {ms(r['wall'])} | {ms(r['loop'])} | {ms(r['writer'])} | {ms(r['artifacts'])} "
                     f"| {ms(r.get('optuna', 0))} | {ms(r.get('moasha', 0))} | {ms(r.get('tune_state', 0))} "
                     f"| {ms(rest)} | {r['load']:.1f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if out:
        with out.open("a") as f:
            f.write("\n" + text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--synthetic", type=int, nargs="+", metavar="N", help="synthetic sweeps of N trials each")
    ap.add_argument("--synthetic-one", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--periodic-state", type=float, metavar="S",
                    help="with --synthetic: keep every trial checkpoint so that Tune saves its experiment state "
                         "every S seconds (TUNE_GLOBAL_CHECKPOINT_S) instead of after every checkpoint")
    ap.add_argument("--checkpoint-period", type=float, metavar="S",
                    help="with --synthetic: the search space's checkpoint_period_s (default: the file's default; "
                         "0 checkpoints every epoch)")
    args = ap.parse_args()
    if args.periodic_state:
        os.environ.update(BENCH_PERIODIC_STATE="1", TUNE_GLOBAL_CHECKPOINT_S=str(args.periodic_state))
    if args.synthetic_one:
        print(json.dumps(synthetic_one(int(args.synthetic_one[0]), Path(args.synthetic_one[1]), args.checkpoint_period)))
        return
    if args.synthetic:
        synthetic(args.synthetic, args.out, args.checkpoint_period)
        return
    work = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    raw = yaml.safe_load((REPO / "search_spaces/digits.yaml").read_text())
    raw["base"] = str(REPO / "configs/digits_stage2.yaml")
    raw["storage_path"] = str(work / "results")
    space = work / "digits.yaml"
    space.write_text(yaml.safe_dump(raw))
    env = dict(os.environ, RAY_AUTH_MODE="disabled", STAS_SWEEP_RAY_TMPDIR=tempfile.mkdtemp(prefix="r", dir="/tmp"),
               MLFLOW_TRACKING_URI=f"sqlite:///{work / 'mlflow.db'}", RAY_USAGE_STATS_ENABLED="0")
    wall, out = run(space, work, env)
    trials = []
    for result in (work / "results" / raw["name"]).glob("*/result.json"):
        rows = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        trials.append(rows[-1])
    train_s = sum(r["time_total_s"] for r in trials)
    full = [r for r in trials if r.get("full_budget")]
    front = json.loads(subprocess.run([sys.executable, "-m", "stas_sweep.cli", "pareto", "--json"], cwd=work,
                                      env=env, capture_output=True, text=True).stdout)
    stage1_trained = out.count("stage 1: training once")
    raw["name"] = "digits-again"
    space2 = work / "digits-again.yaml"
    space2.write_text(yaml.safe_dump(raw))
    wall2, out2 = run(space2, work, env)
    reused = "stage 1: reusing" in out2
    candidates = sum(len(json.loads(r["epsilon_table"])) for r in full)
    lines = [
        "### Sweep overhead (`search_spaces/digits.yaml`, local Ray on 2 CPU cores)", "",
        "| figure | value |", "| --- | --- |",
        f"| sweep wall time (driver start to front printed, incl. Ray start and stage 1) | {wall:.0f} s |",
        f"| sum of the trials' own time (Tune `time_total_s`, {len(trials)} trials) | {train_s:.0f} s |",
        f"| trials run at once (max_concurrent_trials) | {raw['max_concurrent_trials']} |",
        f"| trials trained to the full budget / stopped by ASHA | {len(full)} / {len(trials) - len(full)} |",
        f"| candidate points per full-budget trial (epsilon grid) | {candidates / max(1, len(full)):.1f} |",
        f"| points on the front / full-budget trials | {len(front)} / {len(full)} = {len(front) / max(1, len(full)):.2f} |",
        f"| stage-1 trainings in the sweep | {stage1_trained} |",
        f"| stage-1 reused by a second sweep with the same stage-1 config | {'yes' if reused else 'no'} "
        f"(its wall time {wall2:.0f} s) |",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with args.out.open("a") as f:
            f.write("\n" + text)


if __name__ == "__main__":
    main()
