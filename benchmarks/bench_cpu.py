"""CPU efficiency, measured interleaved: the fused LIF, the public Spikformer code, the thread policy.

    PYTHONPATH=. python benchmarks/bench_cpu.py [--rounds 3] [--public-code DIR --public-python PY]
                                                [--out docs/benchmarks.md]

Every case runs once per round, cases alternating (A, B, C, A, B, C, ...), so a slow spell on a
shared machine hits every case rather than one. Each measurement records wall time, the process
CPU time of the run (all its threads) and ``os.getloadavg()`` before it; the tables give medians
and the load range, and say when the load was high.

1. Model core (spikformer-4-384, 32x32, T=4, batch 16, 2 threads): a training step (forward,
   cross-entropy, backward, SGD step) and an inference forward, for spikingjelly 2.0's
   ``LIFNode`` against :class:`stas_sweep.models.neuron.FusedLIF` (same weights), SPS and I-SPS
   stems; with ``--public-code`` also the public Spikformer CIFAR ``model.py``
   (``ZK-Zhou/spikformer``, ``cifar10/model.py`` with ``backend='torch'``), run by
   ``--public-python`` (a Python with spikingjelly 0.0.0.0.14). Each implementation lives in its
   own worker process; the driver tells one worker at a time to run one step.
2. Thread policy: training throughput of ``configs/digits_stage1.yaml`` through the real Trainer
   (a bounded number of batches after a warm-up), alone and beside a competing CPU-bound process
   (``python -c 'while True: pass'``, killed after the measurement), before (OMP_WAIT_POLICY
   unset, torch's default threads) and after (PASSIVE and :func:`stas_sweep.train.threads.set_threads`,
   as the CLI does). Each measurement is a fresh process, since libgomp reads the policy once.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- bench_cpu:{}:begin -->", "<!-- bench_cpu:{}:end -->"
BATCH, THREADS = 16, 2


# -- workers ------------------------------------------------------------------------------------

def sj_lifnodes(model):
    """Put spikingjelly 2.0's ``LIFNode`` with the same settings in place of every FusedLIF of ``model``."""
    from spikingjelly.activation_based import neuron as sj_neuron
    from spikingjelly.activation_based import surrogate

    from stas_sweep.models.neuron import FusedLIF

    for name, mod in list(model.named_modules()):
        if isinstance(mod, FusedLIF):
            parent, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, leaf, sj_neuron.LIFNode(
                tau=mod.tau, v_threshold=mod.v_threshold, v_reset=mod.v_reset, detach_reset=mod.detach_reset,
                surrogate_function=surrogate.Sigmoid(alpha=mod.alpha), step_mode="m"))  # no weights: any device
    return model


def _ours(stem: str, neuron: str):
    import torch

    from stas_sweep import create_model
    from stas_sweep.models.diagnostics import calibrate_batchnorm

    torch.manual_seed(0)
    model = create_model("spikformer-4-384", num_classes=10, stem=stem)
    calibrate_batchnorm(model, torch.rand(BATCH, 3, 32, 32))
    if neuron == "sj":  # the same model with spikingjelly 2.0's LIFNode in every place
        sj_lifnodes(model)
    return model, (lambda out: out.logits), (lambda: None)


def _public(code_dir: str):
    from functools import partial

    import torch
    from spikingjelly.clock_driven import functional
    from torch import nn

    sys.path.insert(0, code_dir)
    import model as public  # noqa: E402 - the public cifar10/model.py, kept outside the repository

    torch.manual_seed(0)
    m = public.Spikformer(img_size_h=32, img_size_w=32, patch_size=4, in_channels=3, num_classes=10,
                          embed_dims=384, num_heads=12, mlp_ratios=4, qkv_bias=False,
                          norm_layer=partial(nn.LayerNorm, eps=1e-6), depths=4, sr_ratios=1, T=4)
    return m, (lambda out: out), (lambda: functional.reset_net(m))


def worker(args) -> None:
    """Build the named cases, then run one step per command line read from stdin."""
    import torch

    torch.set_num_threads(THREADS)
    cases = {}
    for name in args.cases.split(","):
        cases[name] = _public(args.public_code) if name == "public" else _ours(*name.split("-"))
    x = torch.rand(BATCH, 3, 32, 32)
    y = torch.randint(0, 10, (BATCH,))
    opts = {n: torch.optim.SGD(c[0].parameters(), lr=0.0) for n, c in cases.items()}
    import spikingjelly

    print(json.dumps({"ready": True, "spikingjelly": getattr(spikingjelly, "__version__", None)
                      or _dist_version("spikingjelly"), "torch": torch.__version__}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        model, logits, reset = cases[cmd["case"]]
        load = os.getloadavg()[0]
        c0, t0 = time.process_time(), time.perf_counter()
        if cmd["op"] == "train":
            model.train()
            loss = torch.nn.functional.cross_entropy(logits(model(x)), y)
            opts[cmd["case"]].zero_grad(set_to_none=True)
            loss.backward()
            opts[cmd["case"]].step()
        else:
            model.eval()
            with torch.no_grad():
                model(x)
        reset()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        print(json.dumps({"wall": wall, "cpu": cpu, "load": load}), flush=True)


def _dist_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def digits_worker(args) -> None:
    """One throughput measurement of digits stage 1 (fresh process: the wait policy is read once)."""
    if args.thread_policy:
        from stas_sweep.train.threads import set_threads

        set_threads(None)
    import tempfile

    import torch

    from stas_sweep.train import Trainer, load_config

    cfg = load_config(str(ROOT / "configs" / "digits_stage1.yaml"), ["tracking.enabled=false", "device=cpu"])
    with tempfile.TemporaryDirectory() as d:
        trainer = Trainer(cfg, Path(d), progress=False, log=None)
        loader = trainer.train_loader
        trainer.train_loader = _Bounded(loader, 2, 1e9)
        trainer.train_epoch(0)  # warm-up
        if args.competitor:
            print("warm", flush=True)
            sys.stdin.readline()  # the driver starts the competitor now
        trainer.train_loader = _Bounded(loader, args.batches, args.seconds)
        load = os.getloadavg()[0]
        c0 = time.process_time()
        m = trainer.train_epoch(1)
        cpu = time.process_time() - c0
    print(json.dumps({"images_per_s": m["images_per_s"], "wall": m["epoch_time_s"], "cpu": cpu, "load": load,
                      "threads": torch.get_num_threads(), "policy": os.environ.get("OMP_WAIT_POLICY", "unset")}),
          flush=True)


class _Bounded:
    """The first ``batches`` batches of a loader, or fewer if ``seconds`` run out."""

    def __init__(self, loader, batches: int, seconds: float) -> None:
        self.loader, self.batches, self.seconds = loader, batches, seconds

    def set_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(epoch)

    def __iter__(self):
        t0 = time.perf_counter()
        for i, batch in enumerate(self.loader):
            if i >= self.batches or (i > 0 and time.perf_counter() - t0 > self.seconds):
                return
            yield batch


# -- driver -------------------------------------------------------------------------------------

class Worker:
    def __init__(self, python: str, cases: list[str], public_code: str | None) -> None:
        cmd = [python, str(Path(__file__).resolve()), "--worker", "--cases", ",".join(cases)]
        if public_code:
            cmd += ["--public-code", public_code]
        env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_WAIT_POLICY="PASSIVE", PYTHONWARNINGS="ignore")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
        self.info = json.loads(self.proc.stdout.readline())

    def run(self, case: str, op: str) -> dict:
        self.proc.stdin.write(json.dumps({"case": case, "op": op}) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def _summary(samples: list[dict]) -> dict:
    loads = [s["load"] for s in samples]
    return {"wall": statistics.median(s["wall"] for s in samples), "cpu": statistics.median(s["cpu"] for s in samples),
            "load": (min(loads), max(loads)), "n": len(samples)}


def bench_model(args) -> tuple[list[str], dict]:
    ours = ["sps-sj", "sps-fused", "isps-sj", "isps-fused"]
    labels = {"public": "public Spikformer code (spikingjelly 0.0.0.0.14, torch backend)",
              "sps-sj": "ours, SPS, spikingjelly 2.0 LIFNode", "sps-fused": "ours, SPS, FusedLIF",
              "isps-sj": "ours, I-SPS, spikingjelly 2.0 LIFNode", "isps-fused": "ours, I-SPS, FusedLIF"}
    w = Worker(sys.executable, ours, None)
    owner = {c: w for c in ours}
    versions = {"ours": w.info}
    if args.public_code:
        pw = Worker(args.public_python, ["public"], args.public_code)
        owner = {"public": pw, **owner}
        versions["public"] = pw.info
    cases = list(owner)
    samples = {(c, op): [] for c in cases for op in ("train", "infer")}
    for r in range(args.rounds + 1):  # round 0 warms up
        for op in ("train", "infer"):
            for c in cases:
                s = owner[c].run(c, op)
                if r:
                    samples[(c, op)].append(s)
                print(f"round {r} {op:5} {c:10} wall {s['wall'] * 1e3 / BATCH:7.1f} ms/img  "
                      f"cpu {s['cpu'] * 1e3 / BATCH:7.1f} ms/img  load {s['load']:.2f}", flush=True)
    for wk in {id(v): v for v in owner.values()}.values():
        wk.close()
    res = {k: _summary(v) for k, v in samples.items()}

    def paired(a: str, b: str, op: str, key: str = "wall") -> float:
        """Median over rounds of time(a) / time(b), each pair measured back to back."""
        return statistics.median(x[key] / y[key] for x, y in zip(samples[(a, op)], samples[(b, op)]))

    base = "public" if args.public_code else "sps-sj"
    lines = [f"Interleaved, {args.rounds} rounds after a warm-up round; medians per image; speed-ups are the "
             f"median over rounds of the ratio of two cases measured back to back. Batch {BATCH}, {THREADS} "
             f"threads, OMP_WAIT_POLICY=PASSIVE in every worker; our spikingjelly "
             f"{versions['ours']['spikingjelly']}, torch {versions['ours']['torch']}"
             + (f"; public code under spikingjelly {versions['public']['spikingjelly']}" if args.public_code else "")
             + ". Untrained weights (ours: batch norm calibrated on the batch).", "",
             "| case | train ms / image | train CPU ms / image | train speed-up vs " + labels[base].split(" (")[0]
             + " (wall, CPU) | inference ms / image | inference CPU ms / image | load (1 min) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for c in cases:
        t, i = res[(c, "train")], res[(c, "infer")]
        lo, hi = min(t["load"][0], i["load"][0]), max(t["load"][1], i["load"][1])
        lines.append(f"| {labels[c]} | {t['wall'] * 1e3 / BATCH:.1f} | {t['cpu'] * 1e3 / BATCH:.1f} | "
                     f"{paired(base, c, 'train'):.2f}x, {paired(base, c, 'train', 'cpu'):.2f}x | "
                     f"{i['wall'] * 1e3 / BATCH:.1f} | {i['cpu'] * 1e3 / BATCH:.1f} | {lo:.1f}-{hi:.1f} |")
    lines += ["", "Paired ratios (median over rounds; wall time, CPU time in brackets):", ""]
    for a, b, what in [("sps-sj", "sps-fused", "FusedLIF against LIFNode, SPS"),
                       ("isps-sj", "isps-fused", "FusedLIF against LIFNode, I-SPS"),
                       ("sps-sj", "isps-sj", "I-SPS against SPS, our model as landed (LIFNode)"),
                       ("sps-fused", "isps-fused", "I-SPS against SPS, FusedLIF")]:
        lines.append(f"- {what}: training step {paired(a, b, 'train'):.2f}x "
                     f"({paired(a, b, 'train', 'cpu'):.2f}x) faster, inference {paired(a, b, 'infer'):.2f}x "
                     f"({paired(a, b, 'infer', 'cpu'):.2f}x)")
    if args.raw:
        args.raw.write_text(json.dumps({f"{c}/{op}": v for (c, op), v in samples.items()}, indent=1))
    return lines, res


def _digits_once(policy_after: bool, competitor: bool, args) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONWARNINGS="ignore")
    env.pop("OMP_NUM_THREADS", None)
    if policy_after:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    else:
        env.pop("OMP_WAIT_POLICY", None)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--digits-worker", "--batches", str(args.batches),
           "--seconds", str(args.seconds)] + (["--thread-policy"] if policy_after else []) \
        + (["--competitor"] if competitor else [])
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    hog = None
    try:
        if competitor:
            assert proc.stdout.readline().strip() == "warm"
            hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            time.sleep(0.5)
            proc.stdin.write("go\n")
            proc.stdin.flush()
        out = json.loads(proc.stdout.readline())
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()
        proc.wait(timeout=120)
    return out


def bench_threads(args) -> tuple[list[str], dict]:
    cases = [(False, False), (False, True), (True, False), (True, True)]
    names = {False: "before: OMP_WAIT_POLICY unset, torch default threads",
             True: "after: OMP_WAIT_POLICY=PASSIVE, threads = usable cores"}
    samples = {c: [] for c in cases}
    for r in range(args.thread_rounds):
        for c in cases:
            s = _digits_once(*c, args)
            samples[c].append(s)
            print(f"round {r} {'after ' if c[0] else 'before'} {'contended' if c[1] else 'alone    '} "
                  f"{s['images_per_s']:6.1f} img/s  cpu/wall {s['cpu'] / s['wall']:.2f}  threads {s['threads']}  "
                  f"load {s['load']:.2f}", flush=True)
    lines = [f"digits stage 1 (`configs/digits_stage1.yaml`: spikformer-2-64, 16x16, T=4, batch 32) through the "
             f"real Trainer, up to {args.batches} batches or {args.seconds:g} s after a 2-batch warm-up; each run a "
             f"fresh process; the competitor is one `python -c 'while True: pass'`; {args.thread_rounds} rounds "
             f"interleaved, median.", "",
             "| policy | alone img/s | beside a competitor img/s | kept (paired median) | each round: alone / beside | "
             "CPU s / wall s alone, beside | threads | load (1 min) |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    res = {}
    for after in (False, True):
        a, b = samples[(after, False)], samples[(after, True)]
        ia = statistics.median(s["images_per_s"] for s in a)
        ib = statistics.median(s["images_per_s"] for s in b)
        ra = statistics.median(s["cpu"] / s["wall"] for s in a)
        rb = statistics.median(s["cpu"] / s["wall"] for s in b)
        loads = [s["load"] for s in a + b]
        res[after] = (ia, ib)
        kept = statistics.median(y["images_per_s"] / x["images_per_s"] for x, y in zip(a, b))  # paired by round
        rounds = "; ".join(f"{x['images_per_s']:.0f} / {y['images_per_s']:.0f}" for x, y in zip(a, b))
        lines.append(f"| {names[after]} | {ia:.0f} | {ib:.0f} | {kept:.0%} | {rounds} | {ra:.2f}, {rb:.2f} | "
                     f"{a[0]['threads']} | {min(loads):.1f}-{max(loads):.1f} |")
    return lines, res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3, help="measured rounds of the model cases")
    ap.add_argument("--thread-rounds", type=int, default=2, help="rounds of the thread-policy cases")
    ap.add_argument("--batches", type=int, default=12, help="digits batches per throughput measurement")
    ap.add_argument("--seconds", type=float, default=15.0, help="time cap per throughput measurement")
    ap.add_argument("--public-code", help="folder holding the public Spikformer cifar10 model.py")
    ap.add_argument("--public-python", default="/tmp/sj14/bin/python",
                    help="a Python with spikingjelly 0.0.0.0.14 (and torch, timm)")
    ap.add_argument("--skip", choices=["model", "threads"], action="append", default=[])
    ap.add_argument("--out", type=Path, help="replace the bench_cpu section of this markdown file")
    ap.add_argument("--raw", type=Path, help="write every model-core measurement to this JSON file")
    # worker modes
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--cases", help=argparse.SUPPRESS)
    ap.add_argument("--digits-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--thread-policy", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--competitor", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    if args.digits_worker:
        return digits_worker(args)
    parts = {}
    for part, title, bench in [("model", "Model core: spikformer-4-384, 32x32, T=4, batch 16, CPU", bench_model),
                               ("threads", "Thread policy: training throughput alone and beside a CPU-bound process",
                                bench_threads)]:
        if part in args.skip:
            continue
        t0, load0 = time.perf_counter(), os.getloadavg()
        lines, _ = bench(args)
        load1 = os.getloadavg()
        busy = max(load0[0], load1[0]) > (os.cpu_count() or 1) * 0.6
        parts[part] = "\n".join(
            [BEGIN.format(part), f"#### {title}", "",
             f"`benchmarks/bench_cpu.py`, {datetime.datetime.now():%Y-%m-%d %H:%M}, {os.cpu_count()} cores, "
             f"{platform.processor() or platform.machine()}. Machine load (1/5/15 min) "
             f"{load0[0]:.1f}/{load0[1]:.1f}/{load0[2]:.1f} at the start and {load1[0]:.1f}/{load1[1]:.1f}/"
             f"{load1[2]:.1f} at the end; {time.perf_counter() - t0:.0f} s. "
             + ("**Taken under load**: other jobs shared the cores, so absolute figures are inflated and noisy; "
                "compare the paired ratios." if busy else "The machine was quiet."), ""]
            + lines + [END.format(part)]) + "\n"
        print(parts[part], flush=True)
    if args.out:
        doc = args.out.read_text() if args.out.exists() else ""
        for part, text in parts.items():
            begin, end = BEGIN.format(part), END.format(part)
            if begin in doc:
                doc = doc[: doc.index(begin)] + text + doc[doc.index(end) + len(end) + 1:]
            else:
                doc = doc.rstrip("\n") + "\n\n" + text
        args.out.write_text(doc)


if __name__ == "__main__":
    main()
