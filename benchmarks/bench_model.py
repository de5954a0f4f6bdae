"""Model-core benchmark: training step cost and inference cost against token ratio.

    python benchmarks/bench_model.py [--repeats 3] [--out docs/benchmarks.md]

1. forward+backward time per image, spikformer-4-384, 32x32, T=4, batch 16 (static and
   with halting), median of ``--repeats`` runs after one warm-up;
2. inference time per image of one halting model at several epsilons, side by side with
   the token ratio and energy at each epsilon (same batch, same run).
Absolute times on a shared CPU are noisy; compare the ratios within one run.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch

from stas_sweep import create_model
from stas_sweep.energy import measure_energy
from stas_sweep.models.diagnostics import calibrate_batchnorm


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def train_step_time(model, x, y, repeats):
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)

    def step():
        out = model(x)
        loss = torch.nn.functional.cross_entropy(out.logits, y) + 1e-3 * out.ponder_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()

    return timed(step, repeats) / len(x)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="spikformer-4-384")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--epsilons", default="0,0.05,0.1,0.2,0.4,0.6")
    ap.add_argument("--out", type=Path, help="append the markdown section to this file")
    args = ap.parse_args()
    torch.manual_seed(0)
    x = torch.rand(args.batch, 3, 32, 32)
    y = torch.randint(0, 100, (args.batch,))
    lines = [
        f"### Model core ({args.model}, 32x32, T=4, batch {args.batch}, CPU, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, {platform.processor() or platform.machine()})",
        "",
        "Training step (forward + backward), median of "
        f"{args.repeats} after a warm-up:",
        "",
        "| model | ms / image | relative |",
        "| --- | --- | --- |",
    ]
    static = create_model(args.model, num_classes=100, stem="isps")
    calibrate_batchnorm(static, x)
    halting = create_model(args.model, num_classes=100, stem="isps",
                           halting=dict(alpha=5.0, beta=-5.0, epsilon=0.01))
    halting.load_state_dict(static.state_dict())
    sps = create_model(args.model, num_classes=100, stem="sps")
    sps.load_state_dict(static.state_dict())
    base = None
    for label, m in [("static, SPS", sps), ("static, I-SPS", static), ("I-SPS + A-SSA (tb)", halting)]:
        t = train_step_time(m, x, y, args.repeats) * 1e3
        base = base or t
        lines.append(f"| {label} | {t:.1f} | {t / base:.2f} |")
        print(lines[-1], flush=True)

    lines += ["", "Inference at several epsilons (the same halting model, alpha=5, beta=-5, batch-norm "
              "calibrated on the batch; untrained weights):", "",
              "| epsilon | token ratio | energy mJ/image | ms / image | time relative to static |",
              "| --- | --- | --- | --- | --- |"]
    static.eval()
    halting.eval()
    with torch.no_grad():
        t_static = timed(lambda: static(x), args.repeats) / len(x) * 1e3
        e_static = measure_energy(static, x).energy_mj
        lines.append(f"| static | 1.000 | {e_static:.4f} | {t_static:.1f} | 1.00 |")
        print(lines[-1], flush=True)
        for eps in [float(e) for e in args.epsilons.split(",")]:
            t = timed(lambda: halting(x, epsilon=eps), args.repeats) / len(x) * 1e3
            r = measure_energy(halting, x, epsilon=eps)
            lines.append(f"| {eps:g} | {r.token_ratio:.3f} | {r.energy_mj:.4f} | {t:.1f} | {t / t_static:.2f} |")
            print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    if args.out:
        with args.out.open("a") as f:
            f.write("\n" + text)
    print(text)


if __name__ == "__main__":
    main()
