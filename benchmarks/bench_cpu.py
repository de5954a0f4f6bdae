"""CPU efficiency, measured interleaved: the fused LIF, the public Spikformer code, the thread policy.

    PYTHONPATH=. python benchmarks/bench_cpu.py [--public-code DIR] [--public-python PY] [--rounds 5]
                                                [--skip threads] [--out docs/benchmarks.md] [--raw FILE]

The public code, set up once (outside this repository; nothing of it is committed here)::

    git clone https://github.com/ZK-Zhou/spikformer /tmp/spikformer          # commit 6212689
    python -m venv --system-site-packages /tmp/sj14                          # sees the system torch
    /tmp/sj14/bin/pip install spikingjelly==0.0.0.0.14 timm==0.6.13
    PYTHONPATH=. python benchmarks/bench_cpu.py --public-code /tmp/spikformer --out docs/benchmarks.md

``--public-code`` is that checkout (or a folder holding its ``cifar10/model.py`` as ``model.py``);
``--public-python`` defaults to ``/tmp/sj14/bin/python``. The file is used as fetched: the script
checks its SHA-256 (``PUBLIC_SHA256``, the file at ``PUBLIC_COMMIT``) and stops with one line if it
differs, copies it to a temporary folder, and there makes the one change a CPU needs: its twelve
``MultiStepLIFNode(..., backend='cupy')`` become ``backend='torch'`` (CuPy is CUDA-only); it prints
that substitution and its count. A worker that fails is reported as one line naming its cause.

Every case runs once per round, cases alternating (A, B, C, A, B, C, ...), so a slow spell on a
shared machine hits every case rather than one. Before the rounds, every case warms up alike: steps
until two consecutive step times agree within ``--warmup-tol`` (10 %), at most ``--warmup-max``.
Each measurement records wall time and the process CPU time of the step (all its threads). The
tables give medians with the min-max over rounds, and speed-ups as the median (min-max) of the
per-round ratios of two cases measured back to back. The load label compares the 1-minute load
before each round with the benchmark's own thread count, and names other processes that used CPU
during the rounds (read from ``/proc``; the benchmark's own processes excluded) when there are any.

1. Model core (spikformer-4-384, 32x32, T=4, batch 16, 2 threads): a training step (forward,
   cross-entropy, backward, SGD step with lr 0) and an inference forward, for spikingjelly 2.0's
   ``LIFNode`` against :class:`stas_sweep.models.neuron.FusedLIF` (same weights), SPS and I-SPS
   stems; with ``--public-code`` also the public Spikformer CIFAR model, run by ``--public-python``.
   Each implementation lives in its own worker process; the driver tells one worker at a time to
   run one step.
2. Thread policy: training throughput of ``configs/digits_stage1.yaml`` through the real Trainer
   (a bounded number of batches after a warm-up), alone and beside a competing CPU-bound process
   (``python -c 'while True: pass'``, killed after the measurement), before (OMP_WAIT_POLICY
   unset, torch's default threads) and after (PASSIVE and :func:`stas_sweep.train.threads.set_threads`,
   as the CLI does). Each measurement is a fresh process, since libgomp reads the policy once.
   ``--skip threads`` leaves this part (and its block in ``--out``) as it is.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- bench_cpu:{}:begin -->", "<!-- bench_cpu:{}:end -->"
BATCH, THREADS = 16, 2

# The public code this benchmark runs: ZK-Zhou/spikformer's cifar10/model.py as of PUBLIC_COMMIT
# (the file last changed in 92ddb7f, 2023-03-20).
PUBLIC_REPO, PUBLIC_FILE = "ZK-Zhou/spikformer", "cifar10/model.py"
PUBLIC_COMMIT = "621268981827af47aa666c1b5f774de4281d90ad"
PUBLIC_SHA256 = "84f4169cb3e4f25bc11e41e257f8195540fe78a6b6b3ad8ab85b605611071081"
CUPY, TORCH = "backend='cupy'", "backend='torch'"
PUBLIC_SWITCHES = 12  # one per MultiStepLIFNode of the file
PUBLIC_VENV = ("python -m venv --system-site-packages /tmp/sj14 && "
               "/tmp/sj14/bin/pip install spikingjelly==0.0.0.0.14 timm==0.6.13")


class BenchError(Exception):
    """A failure the benchmark reports as one line: bad input (exit 2) or a failed worker (exit 1)."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


# -- the public code ----------------------------------------------------------------------------

def switch_backend(text: str) -> tuple[str, int]:
    """``text`` with every ``backend='cupy'`` made ``backend='torch'``, and how many it changed."""
    return text.replace(CUPY, TORCH), text.count(CUPY)


def prepare_public_code(source: Path, dest: Path, sha256: str = PUBLIC_SHA256) -> tuple[Path, int]:
    """Check the public ``model.py`` under ``source`` against ``sha256``, copy it into ``dest`` with
    the CPU backend switched, and return the source file and the number of substitutions."""
    candidates = [source / PUBLIC_FILE, source / "model.py"]
    src = next((p for p in candidates if p.is_file()), None)
    if src is None:
        raise BenchError(f"--public-code {source}: neither {PUBLIC_FILE} nor model.py is in it; give a checkout "
                         f"of {PUBLIC_REPO} (commit {PUBLIC_COMMIT[:7]})")
    data = src.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise BenchError(f"{src}: not the public {PUBLIC_FILE} this benchmark expects (SHA-256 {digest[:16]}..., "
                         f"expected {sha256[:16]}..., {PUBLIC_REPO} commit {PUBLIC_COMMIT[:7]})")
    text, n = switch_backend(data.decode("utf-8"))
    if n != PUBLIC_SWITCHES:  # only reachable with another sha256: the file's LIF count changed
        raise BenchError(f"{src}: {n} occurrences of {CUPY}, expected {PUBLIC_SWITCHES}")
    (dest / "model.py").write_text(text, encoding="utf-8")
    return src, n


# -- warm-up and load ---------------------------------------------------------------------------

def steady(times: list[float], tol: float) -> bool:
    """True when the last two step times agree within ``tol`` of the faster one."""
    return len(times) >= 2 and abs(times[-1] - times[-2]) <= tol * min(times[-2:])


def _proc_stat() -> dict[int, tuple[int, int, str, int]]:
    """``pid -> (parent pid, CPU clock ticks used, command name, start time)`` for every process /proc
    shows (the start time tells a reused pid apart; a kernel worker's name changes as it works)."""
    out = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            raw = Path(entry.path, "stat").read_text()
        except OSError:  # the process ended meanwhile
            continue
        comm, rest = raw[raw.index("(") + 1: raw.rindex(")")], raw[raw.rindex(")") + 2:].split()
        # after the command name: state ppid ... utime (11th) stime (12th) ... starttime (19th)
        out[int(entry.name)] = (int(rest[1]), int(rest[11]) + int(rest[12]), comm, int(rest[19]))
    return out


def _descendants(stat: dict[int, tuple[int, int, str, int]], root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, (ppid, *_) in stat.items():
        children.setdefault(ppid, []).append(pid)
    own, todo = set(), [root]
    while todo:
        pid = todo.pop()
        own.add(pid)
        todo += children.get(pid, [])
    return own


def _proc_name(pid: int, comm: str) -> str:
    """The command name; for a Python, the module or script it runs (never its other arguments)."""
    if not comm.startswith("python"):
        return comm
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[1:]
    except OSError:
        return comm
    for i, arg in enumerate(argv):
        if arg == "-m" and i + 1 < len(argv):
            return f"{comm} -m {argv[i + 1]}"
        if arg == "-c":
            return f"{comm} -c"
        if arg and not arg.startswith("-"):
            return f"{comm} {Path(arg).name}"
    return comm


class LoadWatch:
    """The 1-minute load before each round, and the CPU other processes used during the rounds.

    During a round a thread reads /proc every second, so processes that start and end inside a
    round are counted too; the benchmark's own processes (this one and its descendants) are not.
    """

    BUSY = 0.2  # a command using more than this share of a core over a round is named
    PERIOD = 1.0

    def __init__(self, own_threads: int) -> None:
        self.own_threads, self.loads, self.busy = own_threads, [], {}
        self._tick = os.sysconf("SC_CLK_TCK")

    def start(self) -> None:
        self.loads.append(os.getloadavg()[0])
        self._used: dict[str, float] = {}
        self._last, self._t0 = _proc_stat(), time.monotonic()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._done.wait(self.PERIOD):
            self._sample()

    def _sample(self) -> None:
        stat = _proc_stat()
        own = _descendants(stat, os.getpid())
        for pid, (ppid, ticks, comm, started) in stat.items():
            before = self._last.get(pid)
            ticks -= before[1] if before and before[3] == started else 0  # a new process: all its ticks
            if ticks > 0 and pid not in own:
                name = "kernel threads" if 2 in (pid, ppid) else _proc_name(pid, comm)  # kthreadd's family
                self._used[name] = self._used.get(name, 0.0) + ticks / self._tick
        self._last = stat

    def stop(self) -> None:
        self._done.set()
        self._thread.join()
        self._sample()
        dt = time.monotonic() - self._t0
        for name, seconds in self._used.items():
            if seconds / dt > self.BUSY:
                self.busy[name] = max(self.busy.get(name, 0.0), seconds / dt)

    def label(self) -> str:
        lo, hi = min(self.loads), max(self.loads)
        load = (f"the 1-minute load before a round was {lo:.1f}-{hi:.1f}, against the benchmark's own "
                f"{self.own_threads} threads")
        names = sorted(self.busy.items(), key=lambda kv: -kv[1])
        others = ", ".join(f"`{n}` {s:.1f}" for n, s in names[:6]) + (f" and {len(names) - 6} more"
                                                                       if len(names) > 6 else "")
        if hi <= self.own_threads + 0.5 and not names:
            return (f"Quiet: {load}, and no other process used more than {self.BUSY:.0%} of a core in a "
                    f"round.")
        return (f"**Taken under load**: {load}; "
                + (f"other processes ran during the rounds (cores each used over its busiest round): {others}. "
                   if names else "/proc showed no other busy process (the load came from outside its view). ")
                + "Absolute times are inflated and noisy; compare the paired ratios.")


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
    import model as public  # noqa: E402 - the public cifar10/model.py, copied to a temporary folder

    torch.manual_seed(0)
    m = public.Spikformer(img_size_h=32, img_size_w=32, patch_size=4, in_channels=3, num_classes=10,
                          embed_dims=384, num_heads=12, mlp_ratios=4, qkv_bias=False,
                          norm_layer=partial(nn.LayerNorm, eps=1e-6), depths=4, sr_ratios=1, T=4)
    return m, (lambda out: out), (lambda: functional.reset_net(m))


def _protocol_stream():
    """A private copy of stdout for the JSON replies; stdout itself goes to stderr from here on, so a
    library that prints cannot corrupt the replies."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    sys.stdout.flush()
    os.dup2(2, 1)
    return proto


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def worker(args) -> None:
    """Build the named cases, then run one step per command line read from stdin."""
    proto = _protocol_stream()
    try:
        _serve(args, proto)
    except Exception as exc:  # noqa: BLE001 - reported to the driver as one line, then the worker exits
        proto.write(json.dumps({"error": _one_line(exc)}) + "\n")
        raise SystemExit(1) from exc


def _serve(args, proto) -> None:
    import torch

    torch.set_num_threads(THREADS)
    cases = {}
    for name in args.cases.split(","):
        cases[name] = _public(str(args.public_code)) if name == "public" else _ours(*name.split("-"))
    x = torch.rand(BATCH, 3, 32, 32)
    y = torch.randint(0, 10, (BATCH,))
    opts = {n: torch.optim.SGD(c[0].parameters(), lr=0.0) for n, c in cases.items()}
    proto.write(json.dumps({"ready": True, "spikingjelly": _dist_version("spikingjelly"),
                            "timm": _dist_version("timm"), "torch": torch.__version__}) + "\n")
    for line in sys.stdin:
        cmd = json.loads(line)
        model, logits, reset = cases[cmd["case"]]
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
        proto.write(json.dumps({"wall": wall, "cpu": cpu}) + "\n")


def _dist_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def digits_worker(args) -> None:
    """One throughput measurement of digits stage 1 (fresh process: the wait policy is read once)."""
    proto = _protocol_stream()
    try:
        proto.write(json.dumps(_digits_measure(args, proto)) + "\n")
    except Exception as exc:  # noqa: BLE001 - reported to the driver as one line
        proto.write(json.dumps({"error": _one_line(exc)}) + "\n")
        raise SystemExit(1) from exc


def _digits_measure(args, proto) -> dict:
    if args.thread_policy:
        from stas_sweep.train.threads import set_threads

        set_threads(None)
    import torch

    from stas_sweep.train import Trainer, load_config

    cfg = load_config(str(ROOT / "configs" / "digits_stage1.yaml"), ["tracking.enabled=false", "device=cpu"])
    with tempfile.TemporaryDirectory() as d:
        trainer = Trainer(cfg, Path(d), progress=False, log=None)
        loader = trainer.train_loader
        trainer.train_loader = _Bounded(loader, 2, 1e9)
        trainer.train_epoch(0)  # warm-up
        if args.competitor:
            proto.write(json.dumps({"warm": True}) + "\n")
            sys.stdin.readline()  # the driver starts the competitor now
        trainer.train_loader = _Bounded(loader, args.batches, args.seconds)
        load = os.getloadavg()[0]
        c0 = time.process_time()
        m = trainer.train_epoch(1)
        cpu = time.process_time() - c0
    return {"images_per_s": m["images_per_s"], "wall": m["epoch_time_s"], "cpu": cpu, "load": load,
            "threads": torch.get_num_threads(), "policy": os.environ.get("OMP_WAIT_POLICY", "unset")}


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
    """A worker process spoken to by JSON lines; any failure of it becomes one BenchError line."""

    def __init__(self, name: str, cmd: list[str], env: dict) -> None:
        self.name, self.python = name, cmd[0]
        self.err = tempfile.TemporaryFile("w+")  # its stderr, for the cause of a failure
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err, text=True,
                                     env=env, cwd=ROOT)

    def reply(self) -> dict:
        line = self.proc.stdout.readline()
        try:
            out = json.loads(line)
        except ValueError:
            out = None
        if isinstance(out, dict) and "error" not in out:
            return out
        try:
            code = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        cause = (out["error"] if isinstance(out, dict) else self._last_stderr_line()
                 or (f"printed {line[:80]!r}" if line else "no reply"))
        how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
        raise BenchError(f"the {self.name} worker ({self.python}) failed ({how}): {cause}", code=1)

    def _last_stderr_line(self) -> str:
        self.err.seek(0)
        lines = [ln.strip() for ln in self.err.read().splitlines() if ln.strip()]
        return lines[-1][:300] if lines else ""

    def send(self, obj: dict) -> None:
        try:
            self.proc.stdin.write(json.dumps(obj) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            self.reply()  # reports why it went away

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.err.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.err.close()


class ModelWorker(Worker):
    def __init__(self, python: str, cases: list[str], public_code: str | None) -> None:
        cmd = [python, str(Path(__file__).resolve()), "--worker", "--cases", ",".join(cases)]
        if public_code:
            cmd += ["--public-code", public_code]
        env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_WAIT_POLICY="PASSIVE", PYTHONWARNINGS="ignore")
        super().__init__("public-code" if public_code else "our-model", cmd, env)
        self.info: dict = {}

    def ready(self) -> dict:
        self.info = self.reply()
        return self.info

    def run(self, case: str, op: str) -> dict:
        self.send({"case": case, "op": op})
        return self.reply()


OPS = ("train", "infer")
OURS = ["sps-sj", "sps-fused", "isps-sj", "isps-fused"]
LABELS = {"public": "public Spikformer code (spikingjelly 0.0.0.0.14, torch backend)",
          "sps-sj": "ours, SPS, spikingjelly 2.0 LIFNode", "sps-fused": "ours, SPS, FusedLIF",
          "isps-sj": "ours, I-SPS, spikingjelly 2.0 LIFNode", "isps-fused": "ours, I-SPS, FusedLIF"}


def _warm_up(owner: dict, cases: list[str], args) -> dict:
    """Steps of every case and op until two consecutive agree within the tolerance (at most the cap)."""
    warm = {}
    for op in OPS:
        for c in cases:
            times = []
            while not steady(times, args.warmup_tol) and len(times) < args.warmup_max:
                times.append(owner[c].run(c, op)["wall"])
            warm[(c, op)] = times
            print(f"warm-up {op:5} {c:10} " + " ".join(f"{t * 1e3 / BATCH:.1f}" for t in times)
                  + f" ms/img{'' if steady(times, args.warmup_tol) else ' (not steady)'}", flush=True)
    return warm


def _rounds(owner: dict, cases: list[str], args, watch: LoadWatch) -> dict:
    samples = {(c, op): [] for c in cases for op in OPS}
    for r in range(args.rounds):
        watch.start()
        for op in OPS:
            for c in cases:
                s = owner[c].run(c, op)
                samples[(c, op)].append(s)
                print(f"round {r + 1} {op:5} {c:10} wall {s['wall'] * 1e3 / BATCH:7.1f} ms/img  "
                      f"cpu {s['cpu'] * 1e3 / BATCH:7.1f} ms/img  load before the round {watch.loads[-1]:.2f}",
                      flush=True)
        watch.stop()
    return samples


def _spread(values: list[float], fmt: str = "{:.1f}") -> str:
    """Median (min-max)."""
    return f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def bench_model(args, watch: LoadWatch) -> tuple[list[str], dict]:
    owner = {"public": ModelWorker(args.public_python, ["public"], args.public_dir)} if args.public_dir else {}
    w = ModelWorker(sys.executable, OURS, None)  # both build their models at once; the public one reports first
    owner.update({c: w for c in OURS})
    cases = list(owner)
    try:
        versions = {"public" if c == "public" else "ours": owner[c].ready() for c in ("public", OURS[0])
                    if c in owner}
        warm = _warm_up(owner, cases, args)
        samples = _rounds(owner, cases, args, watch)
    except BaseException:  # a failed worker or ^C: the others are stopped at once, not waited for
        for wk in {id(v): v for v in owner.values()}.values():
            wk.kill()
        raise
    for wk in {id(v): v for v in owner.values()}.values():
        wk.close()

    def ms(c: str, op: str, key: str = "wall") -> list[float]:
        return [s[key] * 1e3 / BATCH for s in samples[(c, op)]]

    def ratios(a: str, b: str, op: str, key: str = "wall") -> list[float]:
        """Per round, time(a) / time(b), the two measured back to back: above 1, b is faster."""
        return [x[key] / y[key] for x, y in zip(samples[(a, op)], samples[(b, op)])]

    def speedup(a: str, b: str, op: str) -> str:
        if a == b:
            return "(reference)"
        return (f"{_spread(ratios(a, b, op), '{:.2f}x')}; "
                f"{statistics.median(ratios(a, b, op, 'cpu')):.2f}x")

    base = "public" if args.public_dir else "sps-sj"
    vs = LABELS[base].split(" (")[0]
    lines = _model_intro(args, versions, watch) + [
        f"| case | train ms / image | train CPU ms / image | train speed-up vs {vs} (wall; CPU) | inference ms / "
        f"image | inference CPU ms / image | inference speed-up vs {vs} (wall; CPU) | warm-up steps (train, "
        f"inference) |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for c in cases:
        steps = ", ".join(f"{len(warm[(c, op)])}{'' if steady(warm[(c, op)], args.warmup_tol) else '*'}"
                          for op in OPS)
        lines.append(f"| {LABELS[c]} | {_spread(ms(c, 'train'))} | {statistics.median(ms(c, 'train', 'cpu')):.1f} | "
                     f"{speedup(base, c, 'train')} | {_spread(ms(c, 'infer'))} | "
                     f"{statistics.median(ms(c, 'infer', 'cpu')):.1f} | {speedup(base, c, 'infer')} | {steps} |")
    pairs = [("sps-sj", "sps-fused", "FusedLIF against LIFNode, SPS"),
             ("isps-sj", "isps-fused", "FusedLIF against LIFNode, I-SPS"),
             ("sps-sj", "isps-sj", "I-SPS against SPS, LIFNode"),
             ("sps-fused", "isps-fused", "I-SPS against SPS, FusedLIF")]
    if args.public_dir:
        pairs = [("public", "sps-fused", "**Code for code**: ours with the public code's SPS stem and FusedLIF "
                  "against the public code"),
                 ("public", "isps-fused", "**Code plus method**: ours with I-SPS and FusedLIF against the public "
                  "code")] + pairs
    lines += ["", "Paired speed-ups of the first named over the second (above 1: the first is faster): "
              "median over rounds of the wall-time ratio, then in brackets the CPU-time median and each round's "
              "wall-time ratio in order:", ""]
    for a, b, what in pairs:
        lines.append(f"- {what}: training {statistics.median(ratios(a, b, 'train')):.2f}x "
                     f"({statistics.median(ratios(a, b, 'train', 'cpu')):.2f}x; rounds "
                     f"{', '.join(f'{v:.2f}' for v in ratios(a, b, 'train'))}), inference "
                     f"{statistics.median(ratios(a, b, 'infer')):.2f}x "
                     f"({statistics.median(ratios(a, b, 'infer', 'cpu')):.2f}x; rounds "
                     f"{', '.join(f'{v:.2f}' for v in ratios(a, b, 'infer'))})")
    if args.raw:
        args.raw.write_text(json.dumps({"loads_before_rounds": watch.loads, "busy": watch.busy,
                                        **{f"{c}/{op}/warm-up": v for (c, op), v in warm.items()},
                                        **{f"{c}/{op}": v for (c, op), v in samples.items()}}, indent=1))
    return lines, samples


def _model_intro(args, versions: dict, watch: LoadWatch) -> list[str]:
    pub = versions.get("public")
    rounds = f"{args.rounds} round{'s' if args.rounds != 1 else ''}"
    return [f"Interleaved, {rounds}; before them every case warmed up alike, stepping until two "
            f"consecutive steps agreed within {args.warmup_tol:.0%} (at most {args.warmup_max}; the last column, "
            f"a * where it never did). Times per image: median (min-max over rounds). Speed-ups: the median "
            f"(min-max) over rounds of the ratio of two cases measured back to back, wall time; then the CPU-time "
            f"median. Batch {BATCH}, {THREADS} threads, OMP_WAIT_POLICY=PASSIVE in every worker; ours under "
            f"spikingjelly {versions['ours']['spikingjelly']}, torch {versions['ours']['torch']}"
            + (f"; the public code ({PUBLIC_REPO} `{PUBLIC_FILE}`, SHA-256 {PUBLIC_SHA256[:12]}..., as of commit "
               f"{PUBLIC_COMMIT[:7]}, `{CUPY}` made `{TORCH}` {args.public_switches} times) under spikingjelly "
               f"{pub['spikingjelly']}, timm {pub['timm']}" if pub else "")
            + ". Untrained weights (ours: batch norm calibrated on the batch). 1-minute load before each round: "
            + ", ".join(f"{v:.1f}" for v in watch.loads) + ".", ""]


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
    w = Worker("digits", cmd, env)
    hog = None
    try:
        if competitor:
            w.reply()  # warmed up
            hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            time.sleep(0.5)
            w.send({"go": True})
        return w.reply()
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()
        w.close()


def bench_threads(args, watch: LoadWatch) -> tuple[list[str], dict]:
    cases = [(False, False), (False, True), (True, False), (True, True)]
    names = {False: "before: OMP_WAIT_POLICY unset, torch default threads",
             True: "after: OMP_WAIT_POLICY=PASSIVE, threads = usable cores"}
    samples = {c: [] for c in cases}
    for r in range(args.thread_rounds):
        watch.start()
        for c in cases:
            s = _digits_once(*c, args)
            samples[c].append(s)
            print(f"round {r} {'after ' if c[0] else 'before'} {'contended' if c[1] else 'alone    '} "
                  f"{s['images_per_s']:6.1f} img/s  cpu/wall {s['cpu'] / s['wall']:.2f}  threads {s['threads']}  "
                  f"load {s['load']:.2f}", flush=True)
        watch.stop()
    lines = [f"digits stage 1 (`configs/digits_stage1.yaml`: spikformer-2-64, 16x16, T=4, batch 32) through the "
             f"real Trainer, up to {args.batches} batches or {args.seconds:g} s after a 2-batch warm-up; each run a "
             f"fresh process; the competitor is one `python -c 'while True: pass'` (counted among the benchmark's "
             f"own threads in the load label); {args.thread_rounds} round{'s' if args.thread_rounds != 1 else ''} "
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


# -- main ---------------------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5, help="measured rounds of the model cases (default 5)")
    ap.add_argument("--warmup-max", type=int, default=6, help="most warm-up steps per case and op (default 6)")
    ap.add_argument("--warmup-tol", type=float, default=0.10,
                    help="warm-up ends when two consecutive steps agree within this fraction (default 0.10)")
    ap.add_argument("--thread-rounds", type=int, default=2, help="rounds of the thread-policy cases")
    ap.add_argument("--batches", type=int, default=12, help="digits batches per throughput measurement")
    ap.add_argument("--seconds", type=float, default=15.0, help="time cap per throughput measurement")
    ap.add_argument("--public-code", type=Path,
                    help=f"a checkout of {PUBLIC_REPO} (or a folder holding its {PUBLIC_FILE} as model.py)")
    ap.add_argument("--public-python", default="/tmp/sj14/bin/python",
                    help="a Python with spikingjelly 0.0.0.0.14 and timm 0.6.13 (and torch)")
    ap.add_argument("--skip", choices=["model", "threads"], action="append", default=[])
    ap.add_argument("--out", type=Path, help="replace the bench_cpu blocks of this markdown file")
    ap.add_argument("--raw", type=Path, help="write every model-core measurement to this JSON file")
    # worker modes
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--cases", help=argparse.SUPPRESS)
    ap.add_argument("--digits-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--thread-policy", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--competitor", action="store_true", help=argparse.SUPPRESS)
    return ap


def _check_args(args) -> None:
    """Every flag that can be wrong, before any model is built."""
    if args.rounds < 1 or args.thread_rounds < 1:
        raise BenchError(f"--rounds {args.rounds} / --thread-rounds {args.thread_rounds}: at least 1")
    if args.warmup_max < 2 or not 0 < args.warmup_tol < 1:
        raise BenchError(f"--warmup-max {args.warmup_max} (at least 2) / --warmup-tol {args.warmup_tol} "
                         f"(between 0 and 1)")
    if args.out and (not args.out.parent.is_dir() or args.out.exists() and not args.out.is_file()):
        raise BenchError(f"--out {args.out}: not a file in an existing folder")
    if args.public_code and "model" not in args.skip:
        if not args.public_code.is_dir():
            raise BenchError(f"--public-code {args.public_code}: no such folder; get it with "
                             f"git clone https://github.com/{PUBLIC_REPO}")
        if not Path(args.public_python).is_file():
            raise BenchError(f"--public-python {args.public_python}: no such file; make it with: {PUBLIC_VENV}")


def _section(part: str, title: str, bench, args) -> str:
    t0, load0 = time.perf_counter(), os.getloadavg()
    watch = LoadWatch(THREADS + (1 if part == "threads" else 0))
    lines, _ = bench(args, watch)
    load1 = os.getloadavg()
    return "\n".join(
        [BEGIN.format(part), f"#### {title}", "",
         f"`benchmarks/bench_cpu.py`, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
         f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}. Machine load (1/5/15 min) "
         f"{load0[0]:.1f}/{load0[1]:.1f}/{load0[2]:.1f} at the start and {load1[0]:.1f}/{load1[1]:.1f}/"
         f"{load1[2]:.1f} at the end; {time.perf_counter() - t0:.0f} s. {watch.label()}", ""]
        + lines + [END.format(part)]) + "\n"


def _write_out(path: Path, parts: dict[str, str]) -> None:
    doc = path.read_text() if path.exists() else ""
    for part, text in parts.items():
        begin, end = BEGIN.format(part), END.format(part)
        if begin in doc:
            doc = doc[: doc.index(begin)] + text + doc[doc.index(end) + len(end) + 1:]
        else:
            doc = doc.rstrip("\n") + "\n\n" + text
    path.write_text(doc)


def run(args) -> None:
    _check_args(args)
    with tempfile.TemporaryDirectory(prefix="bench-cpu-public-") as tmp:
        args.public_dir = None
        if args.public_code and "model" not in args.skip:
            src, args.public_switches = prepare_public_code(args.public_code, Path(tmp))
            args.public_dir = tmp
            print(f"public code: {src} (SHA-256 {PUBLIC_SHA256[:12]}..., as of {PUBLIC_REPO} commit "
                  f"{PUBLIC_COMMIT[:7]}) copied to {tmp}/model.py; substituted {CUPY} -> {TORCH}: "
                  f"{args.public_switches} occurrences", flush=True)
        for part, title, bench in [("model", "Model core: spikformer-4-384, 32x32, T=4, batch 16, CPU", bench_model),
                                   ("threads", "Thread policy: training throughput alone and beside a CPU-bound "
                                    "process", bench_threads)]:
            if part not in args.skip:
                text = _section(part, title, bench, args)
                print(text, flush=True)
                if args.out:  # at once, so a later part that fails leaves this one written
                    _write_out(args.out, {part: text})


def main() -> None:
    args = _parser().parse_args()
    if args.worker:
        return worker(args)
    if args.digits_worker:
        return digits_worker(args)
    try:
        run(args)
    except BenchError as exc:
        print(f"bench_cpu: {exc}", file=sys.stderr)
        raise SystemExit(exc.code) from None


if __name__ == "__main__":
    main()
