"""Early stopping and the Pareto front: final hypervolume at equal budget for fifo, asha (accuracy) and moasha.

    python benchmarks/bench_moasha.py [--seeds 10] [--trials 32] [--workers 4] [--out docs/benchmarks.md]

Part (a) of issue #12, on the synthetic learning curves of ``stas_sweep.sweep.synthetic``
(accuracy and energy traded by the halting knob ``h``, dominated trials by ``q``, noise 0.01).
Every seed draws the same ``--trials`` configurations for the three schedulers (equal budget:
the same trials, the same order, the same epoch durations) and runs them on ``--workers``
simulated workers: an event loop feeds each epoch's result to the real Ray Tune scheduler
object (``FIFOScheduler``, ``ASHAScheduler(metric="accuracy")``, ``MOASHA``) at the simulated
time the epoch ends, exactly as Tune's controller calls ``on_trial_result``; a STOP frees the
worker for the next trial. An epoch lasts 1 to 2 simulated seconds. As in the sweep, only
trials that reached ``max_t`` give front points (their final accuracy and energy).

Reported per scheduler: final hypervolume (reference accuracy 0, energy 1.1 mJ), the epochs
trained (fraction of fifo's), the simulated wall time in seconds (makespan), median and spread
(min-max) over the seeds.
"""

from __future__ import annotations

import argparse
import heapq
import statistics
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
    return MOASHA(OBJ, max_t=max_t, grace_period=grace, reduction_factor=rf)


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--trials", type=int, default=32)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--max-t", type=int, default=9)
    ap.add_argument("--grace", type=int, default=1)
    ap.add_argument("--rf", type=int, default=3)
    ap.add_argument("--out", type=Path, help="print the markdown table; the caller pastes it")
    args = ap.parse_args()
    t0 = time.perf_counter()
    rows = {k: [simulate(k, s, args.trials, args.workers, args.max_t, args.grace, args.rf)
                for s in range(args.seeds)] for k in ("fifo", "asha", "moasha")}
    fifo_hv = statistics.median(r["hv"] for r in rows["fifo"])
    fifo_ep = statistics.median(r["epochs"] for r in rows["fifo"])
    lines = [f"{args.seeds} seeds, {args.trials} trials each, {args.workers} workers, max_t {args.max_t}, "
             f"grace {args.grace}, reduction factor {args.rf}; median (min-max) over seeds", "",
             "| scheduler | final hypervolume | % of fifo's HV (median) | epochs trained | % of fifo's epochs | "
             "full-budget trials | simulated wall time, s |", "|---|---|---|---|---|---|---|"]
    for k, rs in rows.items():
        hv = [r["hv"] for r in rs]
        ep = [r["epochs"] for r in rs]
        lines.append(f"| {k} | {_cell(hv)} | {100 * statistics.median(hv) / fifo_hv:.1f} % | "
                     f"{_cell(ep, '{:.0f}')} | {100 * statistics.median(ep) / fifo_ep:.0f} % | "
                     f"{_cell([r['full'] for r in rs], '{:.0f}')} | {_cell([r['seconds'] for r in rs], '{:.1f}')} |")
    mo, asha = rows["moasha"], rows["asha"]
    wins = sum(m["hv"] >= a["hv"] for m, a in zip(mo, asha))
    lines += ["", f"moasha >= asha in hypervolume on {wins} of {args.seeds} seeds; "
                  f"benchmark ran in {time.perf_counter() - t0:.1f} s"]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
