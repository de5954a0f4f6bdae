"""Early stopping and the Pareto front: final hypervolume at equal budget for fifo, asha (accuracy) and moasha.

    python benchmarks/bench_moasha.py [--seeds 10] [--trials 32] [--workers 4]      # (a) synthetic
    python benchmarks/bench_moasha.py --digits [--seeds 3] [--work DIR]             # (b) digits sweeps

Part (a) of issue #12, on the synthetic learning curves of ``stas_sweep.sweep.synthetic``
(accuracy and energy traded by the halting knob ``h``, dominated trials by ``q``, noise 0.01).
Every seed draws the same ``--trials`` configurations for the three schedulers (equal budget:
the same trials, the same order, the same epoch durations) and runs them on ``--workers``
simulated workers: an event loop feeds each epoch's result to the real Ray Tune scheduler
object (``FIFOScheduler``, ``ASHAScheduler(metric="accuracy")``, ``MOASHA``) at the simulated
time the epoch ends, exactly as Tune's controller calls ``on_trial_result``; a STOP frees the
worker for the next trial. An epoch lasts 1 to 2 simulated seconds. As in the sweep, only
trials that reached ``max_t`` give front points (their final accuracy and energy).

``moasha-epsnet`` is MOASHA with the epsilon-net tie-break instead of crowding distance.
Reported per scheduler: final hypervolume (reference accuracy 0, energy 1.1 mJ), the epochs
trained (fraction of fifo's), the simulated wall time in seconds (makespan), median and spread
(min-max) over the seeds.

Part (b), ``--digits``: the offline main job, ``search_spaces/digits.yaml``, run for real through
``stas-sweep run`` (a fresh interpreter and local Ray each time, one sweep after another) once per
seed and scheduler. Each run gets a copy of the file with only ``name``, ``search.seed``,
``scheduler.type`` (asha: ``metric: accuracy``), ``storage_path`` and the MLflow experiment changed,
so the three schedulers get the same trial count (``search.num_samples``) and, per seed, the same
Optuna seed. The shared stage 1 is trained once beforehand into the common storage folder (the
runner's own ``train_stage1``), so every sweep reuses it and its wall time is Ray + the trials.
Read back: the final hypervolume (the sweep's parent run in MLflow), the epochs trained (lines of
every trial's Ray ``result.json``), full-budget trials, the trials' own time (the sum of their last
``time_total_s``) and the sweep's wall time (``stas-sweep run`` start to exit, Ray start included).
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from stas_sweep.sweep.moasha import MOASHA
from stas_sweep.sweep.pareto import hypervolume
from stas_sweep.sweep.synthetic import curve

OBJ = [("accuracy", "max"), ("energy_mj", "min")]
REF = {"accuracy": 0.0, "energy_mj": 1.1}


class _Trial:
    def __init__(self, trial_id: str) -> None:
        self.trial_id = trial_id


def make_scheduler(kind: str, max_t: int, grace: int, rf: int):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if kind == "fifo":
        return FIFOScheduler()
    if kind == "asha":
        return ASHAScheduler(metric="accuracy", mode="max", max_t=max_t, grace_period=grace, reduction_factor=rf)
    return MOASHA(OBJ, max_t=max_t, grace_period=grace, reduction_factor=rf,
                  tie_break="epsilon_net" if kind == "moasha-epsnet" else "crowding")


def simulate(kind: str, seed: int, trials: int, workers: int, max_t: int, grace: int, rf: int,
             noise: float = 0.01) -> dict:
    rng = np.random.default_rng(seed)
    hs = rng.random(trials)
    qs = 1.0 - 0.5 * rng.random(trials) ** 2          # many trials near the trade-off curve
    durations = 1.0 + rng.random((trials, max_t))      # seconds per epoch
    sched = make_scheduler(kind, max_t, grace, rf)
    objs = [_Trial(f"t{i:03d}") for i in range(trials)]
    for t in objs:
        sched.on_trial_add(None, t)
    events: list = []                                  # (time, trial index, epoch)
    nxt, epochs, points, clock = 0, 0, [], 0.0
    for _ in range(min(workers, trials)):
        heapq.heappush(events, (durations[nxt, 0], nxt, 1))
        nxt += 1
    while events:
        clock, i, ep = heapq.heappop(events)
        epochs += 1
        result = {"training_iteration": ep, **curve(hs[i], qs[i], ep, seed=seed * 1000 + i, noise=noise)}
        action = sched.on_trial_result(None, objs[i], result)
        done = ep >= max_t or action == "STOP"
        if ep >= max_t:
            points.append(result)
        if done:
            sched.on_trial_complete(None, objs[i], result)
            if nxt < trials:
                heapq.heappush(events, (clock + durations[nxt, 0], nxt, 1))
                nxt += 1
        else:
            heapq.heappush(events, (clock + durations[i, ep], i, ep + 1))
    return {"hv": hypervolume(points, OBJ, REF), "epochs": epochs, "seconds": clock, "full": len(points)}


def _cell(values, fmt="{:.4f}") -> str:
    return f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def _table(rows: dict, extra: list[tuple[str, str, str]]) -> list[str]:
    """The markdown table of both parts: one row per scheduler, medians (min-max) over seeds,
    hypervolume and epochs also as % of fifo's; ``extra``: (header, result key, format) columns."""
    fifo_hv = statistics.median(r["hv"] for r in rows["fifo"])
    fifo_ep = statistics.median(r["epochs"] for r in rows["fifo"])
    head = ["scheduler", "final hypervolume", "% of fifo's HV (median)", "epochs trained", "% of fifo's epochs",
            "full-budget trials", *[h for h, _, _ in extra]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for k, rs in rows.items():
        hv = [r["hv"] for r in rs]
        ep = [r["epochs"] for r in rs]
        cells = [k, _cell(hv), f"{100 * statistics.median(hv) / fifo_hv:.1f} %", _cell(ep, "{:.0f}"),
                 f"{100 * statistics.median(ep) / fifo_ep:.0f} %", _cell([r["full"] for r in rs], "{:.0f}"),
                 *[_cell([r[key] for r in rs], fmt) for _, key, fmt in extra]]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


ROOT = Path(__file__).resolve().parents[1]
SCHEDULERS = ("fifo", "asha", "moasha")


def digits_file(work: Path, kind: str, seed: int, source: Path) -> Path:
    """A copy of ``source`` with the scheduler and the Optuna seed changed, into ``work``."""
    from stas_sweep.train.config import load_yaml

    raw = load_yaml(source)
    if isinstance(raw["base"], str):
        raw["base"] = str((source.parent / raw["base"]).resolve())
    raw["name"] = f"digits-{kind}-s{seed}"
    raw["search"]["seed"] = seed
    sched = {k: v for k, v in raw["scheduler"].items() if k not in ("metric", "mode")}
    sched["type"] = kind
    if kind == "asha":
        sched.update(metric="accuracy", mode="max")
    raw["scheduler"] = sched
    raw["storage_path"] = str(work / "ray_results")
    raw["mlflow"] = {"experiment": f"bench-{raw['name']}"}
    import yaml

    out = work / f"{raw['name']}.yaml"
    out.write_text(yaml.safe_dump(raw, sort_keys=False))
    return out


def train_shared_stage1(path: Path) -> float:
    """Train the sweeps' common stage 1 once where the runner looks for it; returns seconds."""
    from stas_sweep.sweep.space import load_spec
    from stas_sweep.sweep.trainable import train_stage1
    from stas_sweep.train.config import config_from_dict

    spec = load_spec(path)
    t0 = time.perf_counter()
    train_stage1(config_from_dict(spec.stage1_config(), "stage1"), str(Path(spec.storage_dir()) / f"stage1-{spec.stage1_key()}"))
    return time.perf_counter() - t0


def read_sweep(path: Path, uri: str) -> dict:
    """Hypervolume (MLflow parent run), epochs and full-budget trials (Ray's result.json files)."""
    import mlflow

    from stas_sweep.sweep.space import load_spec

    spec = load_spec(path)
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name(spec.experiment)
    parent = client.search_runs([exp.experiment_id], filter_string="tags.`stas.role` = 'sweep'",
                                order_by=["attributes.start_time DESC"], max_results=1)[0]
    epochs, full, trials, trial_s = 0, 0, 0, 0.0
    for result in Path(spec.storage_dir(), spec.name).glob("*/result.json"):
        lines = [json.loads(ln) for ln in result.read_text().splitlines() if ln.strip()]
        trials += 1
        epochs += len(lines)
        full += bool(lines and lines[-1].get("full_budget"))
        trial_s += lines[-1].get("time_total_s", 0.0) if lines else 0.0
    return {"hv": parent.data.metrics.get("hypervolume", 0.0), "epochs": epochs, "full": full, "trials": trials,
            "trial_s": trial_s, "status": parent.info.status}


def run_one(path: Path, work: Path, env: dict, uri: str, tries: int = 2) -> dict:
    """``stas-sweep run path`` (timed), or the row saved by an earlier run of the benchmark in the
    same ``--work`` folder. A failed sweep (e.g. its Ray killed from outside) is started afresh once."""
    saved = work / f"{path.stem}.json"
    if saved.is_file():
        return json.loads(saved.read_text())
    for attempt in range(tries):
        shutil.rmtree(work / "ray_results" / path.stem, ignore_errors=True)
        ray_tmp = tempfile.mkdtemp(prefix="r", dir="/tmp")   # Ray's socket paths must stay short
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "stas_sweep.cli", "run", str(path)], cwd=work,
                              env=dict(env, STAS_SWEEP_RAY_TMPDIR=ray_tmp), capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        shutil.rmtree(ray_tmp, ignore_errors=True)
        (work / f"{path.stem}.log").write_text(proc.stdout + proc.stderr)
        if proc.returncode == 0:
            row = dict(read_sweep(path, uri), seconds=seconds)
            saved.write_text(json.dumps(row))
            return row
        print(f"{path} failed ({proc.returncode}, attempt {attempt + 1}); see {work / path.stem}.log", flush=True)
    raise SystemExit(f"{path} failed {tries} times")


def digits(args) -> None:
    source = ROOT / "search_spaces" / "digits.yaml"
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-moasha-"))
    work.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{work / 'mlflow.db'}"
    env = dict(os.environ, MLFLOW_TRACKING_URI=uri, RAY_AUTH_MODE=os.environ.get("RAY_AUTH_MODE", "disabled"),
               RAY_USAGE_STATS_ENABLED="0", OMP_WAIT_POLICY="PASSIVE",
               RAY_health_check_failure_threshold="60", RAY_health_check_timeout_ms="30000")  # busy shared cores
    files = {(k, s): digits_file(work, k, s, source) for s in range(args.seeds) for k in SCHEDULERS}
    print(f"work folder {work}; stage 1 ...", flush=True)
    print(f"stage 1 trained once (or reused) in {train_shared_stage1(files['fifo', 0]):.0f} s", flush=True)
    rows: dict = {k: [] for k in SCHEDULERS}
    for s in range(args.seeds):
        for k in SCHEDULERS:
            rows[k].append(run_one(files[k, s], work, env, uri))
            print(f"seed {s} {k}: {json.dumps(rows[k][-1])}", flush=True)
    lines = [f"{args.seeds} seeds (search.seed 0..{args.seeds - 1}), search_spaces/digits.yaml otherwise unchanged; "
             f"median (min-max) over seeds", "",
             *_table(rows, [("trial time (sum), s", "trial_s", "{:.0f}"), ("sweep wall time, s", "seconds", "{:.0f}")])]
    lines += ["", "per seed (hypervolume fifo / asha / moasha): " + "; ".join(
        f"{s}: " + " / ".join(f"{rows[k][s]['hv']:.4f}" for k in SCHEDULERS) for s in range(args.seeds))]
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--trials", type=int, default=32)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--max-t", type=int, default=9)
    ap.add_argument("--grace", type=int, default=1)
    ap.add_argument("--rf", type=int, default=3)
    ap.add_argument("--digits", action="store_true", help="part (b): real digits sweeps through the CLI")
    ap.add_argument("--work", help="--digits: folder for the search-space copies, Ray results and MLflow "
                                   "(default: a new temporary folder)")
    args = ap.parse_args()
    if args.digits:
        if "--seeds" not in sys.argv:
            args.seeds = 3
        return digits(args)
    t0 = time.perf_counter()
    rows = {k: [simulate(k, s, args.trials, args.workers, args.max_t, args.grace, args.rf)
                for s in range(args.seeds)] for k in ("fifo", "asha", "moasha", "moasha-epsnet")}
    lines = [f"{args.seeds} seeds, {args.trials} trials each, {args.workers} workers, max_t {args.max_t}, "
             f"grace {args.grace}, reduction factor {args.rf}; median (min-max) over seeds", "",
             *_table(rows, [("simulated wall time, s", "seconds", "{:.1f}")])]
    mo, asha, eps = rows["moasha"], rows["asha"], rows["moasha-epsnet"]
    wins = sum(m["hv"] >= a["hv"] for m, a in zip(mo, asha))
    eps_wins = sum(e["hv"] >= m["hv"] for e, m in zip(eps, mo))
    lines += ["", f"moasha >= asha in hypervolume on {wins} of {args.seeds} seeds; moasha-epsnet >= moasha on "
                  f"{eps_wins}; benchmark ran in {time.perf_counter() - t0:.1f} s"]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
