"""Training throughput: the digits configs and spikformer-4-384 at CIFAR size, stage 1 vs stage 2.

    python benchmarks/bench_train.py [--out docs/benchmarks.md]

* digits: one epoch of ``configs/digits_stage1.yaml`` and of ``configs/digits_stage2.yaml``
  (stage 2 from the stage-1 weights) through the real Trainer (data loading, augmentation,
  optimiser step), images per second;
* spikformer-4-384, 32x32, 100 classes, T=4, batch 16, random input: images per second of the
  training step (forward + backward + AdamW), static vs halting, side by side.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from bench_model import train_step_time
from stas_sweep import create_model
from stas_sweep.models.diagnostics import calibrate_batchnorm
from stas_sweep.train import Trainer, load_config


def digits_epoch(config: str, init=None) -> tuple[float, Trainer]:
    cfg = load_config(config, ["epochs=1", "tracking.enabled=false", "device=cpu"])
    with tempfile.TemporaryDirectory() as d:
        trainer = Trainer(cfg, Path(d), progress=False, log=None, init_weights=init)
        metrics = trainer.train_epoch(0)
    return metrics["images_per_s"], trainer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    torch.manual_seed(0)
    s1, trainer = digits_epoch("configs/digits_stage1.yaml")
    s2, _ = digits_epoch("configs/digits_stage2.yaml", init=trainer.model.state_dict())
    lines = [f"### Training throughput (CPU, {torch.get_num_threads()} threads)", "",
             "| run | images / s | stage 2 / stage 1 |", "| --- | --- | --- |",
             f"| digits stage 1 (spikformer-2-64, 16x16, T=4, batch 32; one epoch, real Trainer) | {s1:.0f} | |",
             f"| digits stage 2 (same, A-SSA tb halting) | {s2:.0f} | {s2 / s1:.2f} |"]
    print("\n".join(lines), flush=True)
    x = torch.rand(16, 3, 32, 32)
    y = torch.randint(0, 100, (16,))
    static = create_model("spikformer-4-384", num_classes=100)
    calibrate_batchnorm(static, x)
    halting = create_model("spikformer-4-384", num_classes=100, halting=dict(alpha=5.0, beta=-5.0))
    halting.load_state_dict(static.state_dict())
    a = 1.0 / train_step_time(static, x, y, args.repeats)
    b = 1.0 / train_step_time(halting, x, y, args.repeats)
    lines += [f"| spikformer-4-384 stage 1 (32x32, T=4, batch 16, random input; train step) | {a:.1f} | |",
              f"| spikformer-4-384 stage 2 (halting, alpha 5, beta -5) | {b:.1f} | {b / a:.2f} |"]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with args.out.open("a") as f:
            f.write("\n" + text)


if __name__ == "__main__":
    main()
