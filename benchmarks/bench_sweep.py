"""Sweep overhead: wall time against the trials' own training time, points per trial, stage-1 runs.

    python benchmarks/bench_sweep.py [--out docs/benchmarks.md]

Runs ``stas-sweep run search_spaces/digits.yaml`` in a temporary folder (local Ray, sqlite
MLflow), then runs a renamed copy of the same file: its stage 1 must be reused, not retrained.
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
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
