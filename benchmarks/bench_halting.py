"""Halting cost in wall time: stage-2 training and halting inference against the static model.

    PYTHONPATH=benchmarks python benchmarks/bench_halting.py [--baseline /tmp/stas-before] \
        [--models spikformer-4-384,spikingformer-4-384] [--batches 16,64] [--out docs/benchmarks.md]

1. Packed halting (the default), dense masked halting and the static model, side by side: for
   token ratios near 1.0, 0.75, 0.5 and 0.3 (beta is searched on the batch to get them; the
   measured ratio is reported), inference time and training-step time (forward + backward)
   relative to the static model with the same weights, cases interleaved (A, B, C, A, B, C...).
   The stem's share of the static inference time is a floor no halting can go under:
   ``stem + (1 - stem) * ratio``.
2. Activation memory of one training step: bytes of the tensors autograd saves for backward
   (the part of peak memory that depends on the path), packed against dense.
3. With ``--baseline`` (a checkout of an earlier version of the project, e.g. made with
   ``git worktree add /tmp/stas-before <commit>``): the same stage-2/stage-1 training-step
   ratio and halting/static inference ratio measured in that tree and in this one, worker
   processes alternating between the two trees; and the time of evaluating a trained digits
   model on its epsilon grid in each tree (the same weights).

Untrained weights, batch norm calibrated on the batch; a shared CPU is noisy, so read the
ratios within one run. The load average before and after each section is printed with it.
The functions take a ``device`` (default ``cpu``); ``benchmarks/bench_gpu.py`` runs section 1
on CUDA with them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

FAMILY_HALT = {"spikformer": -5.0, "spikingformer": 5.0, "spikedriven": 5.0}  # alpha (paper sign)


def load() -> str:
    return "load %.1f/%.1f/%.1f" % os.getloadavg()


def sync(device) -> None:
    """Wait for the device's queued kernels (CUDA runs asynchronously; the CPU needs nothing)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(cases: dict, repeats: int, device="cpu") -> dict:
    """Median seconds of each callable, run A, B, C, A, B, C ... after one warm-up round."""
    for fn in cases.values():
        fn()
    times = {k: [] for k in cases}
    for _ in range(repeats):
        for k, fn in cases.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def train_step(model, x, y):
    def step():
        model.train()
        out = model(x)
        loss = torch.nn.functional.cross_entropy(out.logits, y) + 1e-3 * out.ponder_loss
        loss.backward()
        model.zero_grad(set_to_none=True)
    return step


def stem_only(model, x):
    """The static model's stem alone: no halting can shorten it."""
    def run():
        model.eval()
        with torch.no_grad():
            model.stem(x)
    return run


def infer(model, x):
    def run():
        model.eval()
        with torch.no_grad():
            model(x)
    return run


def build(name, batch, alpha=None, beta=0.0, seed=0, device="cpu"):
    """The static model and its halting twin (same weights) on ``device``, and a batch there;
    weights and batch are drawn on the CPU, so every device starts from the same numbers."""
    from stas_sweep import create_model
    from stas_sweep.models.diagnostics import calibrate_batchnorm

    torch.manual_seed(seed)
    x = torch.rand(batch, 3, 32, 32)
    y = torch.randint(0, 100, (batch,))
    x, y = x.to(device), y.to(device)
    static = create_model(name, num_classes=100, img_size=32, stem="isps").to(device)
    calibrate_batchnorm(static, x)
    alpha = FAMILY_HALT[name.split("-")[0]] if alpha is None else alpha
    halting = create_model(name, num_classes=100, img_size=32, stem="isps",
                           halting=dict(alpha=alpha, beta=beta, epsilon=0.01)).to(device)
    halting.load_state_dict(static.state_dict())
    return static.eval(), halting.eval(), x, y


@torch.no_grad()
def ratio_at(model, x, beta) -> float:
    model.halting.beta = beta
    return float(model(x).token_ratio)


def beta_for(model, x, target: float) -> float:
    """Bisection on beta for a token ratio near ``target`` (the ratio falls as beta rises)."""
    if target >= 0.999:
        return -60.0
    lo, hi = -30.0, 30.0
    for _ in range(14):
        mid = (lo + hi) / 2
        if ratio_at(model, x, mid) > target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def saved_bytes(model, x, y) -> int:
    """Bytes autograd keeps for the backward of one training step (distinct storages)."""
    seen = {}

    def pack(t):
        seen[(t.untyped_storage().data_ptr(), t.dtype)] = t.untyped_storage().nbytes()
        return t

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x)
        loss = torch.nn.functional.cross_entropy(out.logits, y) + 1e-3 * out.ponder_loss
    loss.backward()
    model.zero_grad(set_to_none=True)
    return sum(seen.values())


def packed_section(name, batch, ratios, repeats, device="cpu", buckets: int | None = None) -> list[dict]:
    """One measurement per target ratio: the numbers, and ``row``, their line of the table.
    ``buckets``: the halting model's ``pack_buckets`` (None: its default)."""
    static, halting, x, y = build(name, batch, device=device)
    if buckets is not None:
        halting.pack_buckets = buckets
    rows = []
    for target in ratios:
        beta = beta_for(halting, x, target)
        halting.halting.beta = beta
        ratio = ratio_at(halting, x, beta)

        def use(packed):
            def f(fn):
                def g():
                    halting.packed_halting = packed
                    fn()
                return g
            return f
        inf = interleaved({"static": infer(static, x), "packed": use(True)(infer(halting, x)),
                           "dense": use(False)(infer(halting, x)), "stem": stem_only(static, x)}, repeats, device)
        trn = interleaved({"static": train_step(static, x, y), "packed": use(True)(train_step(halting, x, y)),
                           "dense": use(False)(train_step(halting, x, y))}, repeats, device)
        halting.packed_halting = True
        mem_p = saved_bytes(halting, x, y)
        halting.packed_halting = False
        mem_d = saved_bytes(halting, x, y)
        halting.packed_halting = True
        ri, rt = inf["packed"] / inf["static"], trn["packed"] / trn["static"]
        ok_i = "yes" if ri <= ratio + 0.15 + (0.0 if ratio < 0.99 else -0.05) else "no"
        ok_t = "yes" if rt <= ratio + 0.25 and (ratio < 0.99 or rt <= 1.1) else "no"
        stem = inf["stem"] / inf["static"]  # the stem runs before any halting: a floor under the time
        row = (f"| {name} | {batch} | {beta:.2f} | {ratio:.3f} | {inf['static'] / batch * 1e3:.1f} | "
               f"{ri:.2f} ({ok_i}) | {stem:.2f} -> {stem + (1 - stem) * ratio:.2f} | "
               f"{inf['dense'] / inf['static']:.2f} | {trn['static'] / batch * 1e3:.1f} | "
               f"{rt:.2f} ({ok_t}) | {trn['dense'] / trn['static']:.2f} | {mem_p / 2**20:.0f} / {mem_d / 2**20:.0f} |")
        rows.append({"model": name, "batch": batch, "target": target, "beta": beta, "token_ratio": ratio,
                     "infer_s": inf, "train_s": trn, "saved_bytes_packed": mem_p, "saved_bytes_dense": mem_d,
                     "row": row})
        print(row, load(), flush=True)
    return rows


# -- before / after, in worker processes that import one tree or the other -------------------
def worker(case: str, repeats: int) -> dict:
    if case == "ratios":
        static, halting, x, y = build("spikformer-4-384", 16, alpha=5.0, beta=-5.0)
        trn = interleaved({"stage1": train_step(static, x, y), "stage2": train_step(halting, x, y)}, repeats)
        inf = interleaved({"static": infer(static, x), "halting": infer(halting, x)}, repeats)
        with torch.no_grad():
            ratio = float(halting(x).token_ratio)
        return {"stage2_over_stage1_throughput": trn["stage1"] / trn["stage2"],
                "halting_over_static_inference": inf["halting"] / inf["static"], "token_ratio": ratio}
    if case == "digits_eval":
        from stas_sweep.data import build_datasets, build_loaders
        from stas_sweep.train import epsilon_table, model_from_checkpoint
        model, _ = model_from_checkpoint(os.environ["BENCH_DIGITS_CKPT"], "cpu")
        _, val, _ = build_datasets("digits", None, img_size=model.img_size, timesteps=model.timesteps, augment=False)
        _, loader = build_loaders(val, val, 64, 0, drop_last=False)
        t0 = time.perf_counter()
        rows = epsilon_table(model, loader, [0.0, 0.1, 0.2, 0.4])
        return {"seconds": time.perf_counter() - t0, "rows": rows}
    raise ValueError(case)


def run_worker(tree: Path, case: str, repeats: int, env=None) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree), **(env or {}))
    out = subprocess.run([sys.executable, __file__, "--worker", case, "--repeats", str(repeats)],
                         env=env, capture_output=True, text=True, check=True, cwd=tree)
    return json.loads(out.stdout.strip().splitlines()[-1])


def before_after(baseline: Path, repeats: int, rounds: int) -> list[str]:
    here = Path(__file__).resolve().parents[1]
    got = {"before": [], "after": []}
    for _ in range(rounds):  # alternate the trees
        for label, tree in (("before", baseline), ("after", here)):
            got[label].append(run_worker(tree, "ratios", repeats))
            print(label, got[label][-1], load(), flush=True)
    rows = ["| version | stage-2 / stage-1 training throughput | halting / static inference time | token ratio |",
            "| --- | --- | --- | --- |"]
    for label in ("before", "after"):
        med = {k: statistics.median(r[k] for r in got[label]) for k in got[label][0]}
        rows.append(f"| {label} | {med['stage2_over_stage1_throughput']:.2f} | "
                    f"{med['halting_over_static_inference']:.2f} | {med['token_ratio']:.3f} |")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker")
    ap.add_argument("--models", default="spikformer-4-384,spikingformer-4-384")
    ap.add_argument("--batches", default="16,64")
    ap.add_argument("--ratios", default="1.0,0.75,0.5,0.3")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--baseline", type=Path, help="source tree of the earlier version, for before/after")
    ap.add_argument("--rounds", type=int, default=2, help="alternations of the before/after workers")
    ap.add_argument("--digits-ckpt", help="a trained digits stage-2 checkpoint for the epsilon-grid timing")
    ap.add_argument("--buckets", type=int, help="pack_buckets of the halting model (default: the model's: "
                    "exact sizes in eager mode)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.repeats)))
        return
    lines = [f"### Halting wall time ({platform.processor() or platform.machine()}, "
             f"{torch.get_num_threads()} threads, torch {torch.__version__}, OMP_WAIT_POLICY="
             f"{os.environ.get('OMP_WAIT_POLICY', 'unset')}; {time.strftime('%Y-%m-%d')})", ""]
    if args.baseline:
        lines += [f"Before (the T x L per-cell halting) and after (layer-major, packed), spikformer-4-384, "
                  f"32x32, T=4, batch 16, alpha 5, beta -5; workers alternating between the trees, "
                  f"median of {args.rounds} each; {load()}:", ""]
        lines += before_after(args.baseline, args.repeats, args.rounds) + [""]
        if args.digits_ckpt:
            t = {"before": [], "after": []}
            here = Path(__file__).resolve().parents[1]
            for _ in range(args.rounds):
                for label, tree in (("before", args.baseline), ("after", here)):
                    r = run_worker(tree, "digits_eval", 1, {"BENCH_DIGITS_CKPT": str(Path(args.digits_ckpt).resolve())})
                    t[label].append(r["seconds"])
            lines += ["Evaluating a trained digits trial on its epsilon grid (0, 0.1, 0.2, 0.4; 360 "
                      "validation images; the same weights in both trees):", "",
                      "| version | seconds |", "| --- | --- |"]
            lines += [f"| {k} | {statistics.median(v):.1f} |" for k, v in t.items()] + [""]
    lines += [f"Packed halting against the static model and the dense masked path (interleaved, median of "
              f"{args.repeats}; pack_buckets {args.buckets if args.buckets is not None else 'default (exact sizes)'}; "
              f"{load()}). Targets: inference <= ratio + 0.15 (<= 1.1 at ratio 1); "
              "training step <= ratio + 0.25 (<= 1.1 at ratio 1). Memory: bytes autograd saves for one "
              "training step, packed / dense.", "",
              "| model | batch | beta | token ratio | static inference ms/img | packed / static inference | "
              "stem share -> floor | dense / static | static train ms/img | packed / static train | dense / static | "
              "saved MiB packed / dense |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name in args.models.split(","):
        for batch in (int(b) for b in args.batches.split(",")):
            lines += [r["row"] for r in packed_section(name, batch, [float(r) for r in args.ratios.split(",")],
                                                       args.repeats, buckets=args.buckets)]
    lines.append(f"\n({load()} at the end.)")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with args.out.open("a") as f:
            f.write("\n" + text)


if __name__ == "__main__":
    main()
