"""GPU checks: the CUDA neuron route's correctness, model-core speed, the Trainer with AMP, halting wall time.

    PYTHONPATH=. python3 benchmarks/bench_gpu.py --out gpu.md [--device cuda] [--budget 210]
                                                 [--compile-timeout 90] [--only correctness,speed,...]
    PYTHONPATH=. python3 benchmarks/bench_gpu.py --device cpu --quick --out /tmp/gpu.md   # dry run

Each section is appended to ``--out`` (markdown) when it finishes, and its raw numbers go to the
same name with ``.json`` (rewritten after every section), so a run cut short keeps what it
finished. A section that raises records its traceback there and the next one runs. Sections, in
the order they run:

1. Correctness of the CUDA neuron route. On CUDA tensors ``FusedLIF`` calls spikingjelly's
   ``functional.lif_multi_step`` (its fused kernel; the implementation spikingjelly selected is
   in the header). For each LIF setting of the backbones (and the two other resets FusedLIF
   supports), on ``[T=4, 64, 384]`` inputs: FusedLIF on the device, our own ``lif_multi_step``
   (the CPU path's loop) on the device and spikingjelly's ``LIFNode`` on the device, each against
   FusedLIF on the CPU: spike mismatches, final membrane and input gradient, max abs difference;
   in float32, on an expanded input (the I-SPS tokens are one timestep expanded over T), and with
   float16 / bfloat16 inputs under autocast. Then whole models (spikformer-4-384 static and with
   halting, spikingformer-4-384, spikedriven-4-384; 32x32, batch 8, train mode, TF32 off):
   forward + backward on the device against the same weights on the CPU, and every LIF call of
   the CPU pass replayed through the device route with its recorded input.
2. Model-core speed (issue 15): spikformer-4-384, 32x32, T=4, batch 64 and 256. A training step
   (forward, cross-entropy, backward, SGD step with lr 0) and an inference forward, with AMP as
   the Trainer does it (autocast + GradScaler) and without, for FusedLIF (spikingjelly's kernel),
   FusedLIF on our own loop, and spikingjelly's ``LIFNode`` in every place. Cases interleaved
   (``bench_halting.interleaved``, synchronised), medians; peak memory of one call of each case.
3. The real Trainer on the device with AMP on: digits stage 1, then stage 2 from its checkpoint;
   losses, accuracy, token ratio, time per epoch, and each checkpoint loaded back
   (``weights_only``) and evaluated again.
4. Halting wall time (issue 9): ``bench_halting.packed_section`` on the device (packed halting,
   dense masked halting and the static model at token ratios near 1.0, 0.75, 0.5, 0.3) for
   spikformer-4-384 and spikingformer-4-384 at batch 64 and 256, float32; then one row per model
   at ratio 0.5, batch 256, under autocast (forward + backward, no scaler).
4b. Halting without host round trips (issue 27): spikformer-4-384, static against packed halting
   at token ratios 0.5, 1.0, 0.3, 0.75, batch 256 and 64, bfloat16 autocast and float32, eager
   (exact sizes), ``SpikingViT.compile_parts`` (torch.compile of the stem and blocks, eighths of
   the full size as capacity buckets, one graph per bucket) and eager with those buckets; inference and training step (forward + backward); host synchronisations per call
   counted by the CUDA profiler. Most wanted first; ``--budget`` skips the rest and lists it.
   Issue 27 alone in one call (about 8 minutes at most)::

       PYTHONPATH=.:benchmarks python3 benchmarks/bench_gpu.py --only fast_halting --budget 360 \
           --out gpu27.md
5. ``torch.compile`` of the default model (batch 64, float32): compile time and ms per step
   against eager, in a child process stopped after ``--compile-timeout`` seconds. Last, since
   compiling may take long.

Sub-cases of sections 2 and 4 that would start after ``--budget`` seconds are skipped and listed;
with the defaults the whole run takes about 6 minutes at most (189 s on an H200, 2026-11-29).
A GPU machine without this project's dependencies needs spikingjelly 2.0.0, loguru, pydantic (and
pydantic-core, annotated-types, typing-inspection, typing-extensions) and scikit-learn's wheel (only
for its digits file) installed with ``pip install --no-deps --target``. ``--only`` runs some sections
(``correctness, speed, trainer, halting, fast_halting, compile``). ``--quick`` runs tiny models and sizes, one
repeat, so the whole script checks itself on a CPU in well under a minute (the compile section
aside: compiling on a CPU takes minutes; ``--compile-timeout`` stops it).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F
from bench_halting import sync  # benchmarks/ is on the path when a script there runs

ROOT = Path(__file__).resolve().parents[1]
# issue 27's cases, most wanted first (the budget skips from the end): bf16 and fp32 eager, then compiled
# eager: exact sizes, rows sliced per timestep; compiled: compile_parts, eighths, gathered rows;
# eager-b8: eager with the compiled path's buckets (what the padding costs without compiling)
FAST_PLAN = (("eager", "bf16"), ("eager", "fp32"), ("compiled", "bf16"), ("eager-b8", "bf16"), ("compiled", "fp32"))
FULL = {"model": "spikformer-4-384", "families": ("spikformer", "spikingformer", "spikedriven"), "L-D": "4-384",
        "halting_models": ("spikformer-4-384", "spikingformer-4-384"), "batches": (64, 256), "amp_batch": 256,
        "neuron_shape": (4, 64, 384), "check_batch": 8, "repeats": 5, "halting_repeats": 3,
        "ratios": (1.0, 0.75, 0.5, 0.3), "compile_batch": 64, "epochs": 2, "trainer_set": [],
        "fast_model": "spikformer-4-384", "fast_batches": (256, 64), "fast_ratios": (0.5, 1.0, 0.3, 0.75),
        "fast_plan": FAST_PLAN, "compile_backend": None}
QUICK = {"model": "spikformer-2-32", "families": ("spikformer", "spikingformer", "spikedriven"), "L-D": "2-32",
         "halting_models": ("spikformer-2-32", "spikingformer-2-32"), "batches": (2,), "amp_batch": 2,
         "neuron_shape": (4, 4, 16), "check_batch": 2, "repeats": 1, "halting_repeats": 1,
         "ratios": (1.0, 0.5), "compile_batch": 2, "epochs": 1, "trainer_set": ["model.name=spikformer-1-16"],
         "fast_model": "spikformer-2-32", "fast_batches": (4,), "fast_ratios": (0.5, 1.0),
         "fast_plan": FAST_PLAN, "compile_backend": "eager"}
LIF_SETTINGS = [  # v_threshold, v_reset, detach_reset, where it is used (tau 2, sigmoid surrogate alpha 4 in all)
    (1.0, 0.0, True, "every LIF of the backbones"),
    (0.5, 0.0, True, "attn_lif (all three families)"),
    (1.0, None, True, "soft reset (unused by the models)"),
    (1.0, 0.0, False, "reset not detached (unused by the models)"),
]


# -- shared pieces --------------------------------------------------------------------------------

def short_error(tb: str) -> str:
    """The last line of a traceback (the exception and its message), fit for a table cell."""
    return tb.strip().splitlines()[-1].replace("|", "/")[:200]


def measured(row: dict, measure, blanks: int) -> str:
    """The table cells ``measure(row)`` returns (it fills ``row``); when it raises, the traceback
    goes into ``row["error"]``, its last line into the first cell and ``blanks`` cells stay empty,
    so one failing case does not stop the table."""
    try:
        return measure(row)
    except Exception:
        row["error"] = traceback.format_exc()
        return f"**error**: {short_error(row['error'])}" + " |" * blanks


class Budget:
    """Seconds left before ``--budget`` runs out; sub-cases that find none left are skipped."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.perf_counter() + seconds
        self.skipped: list[str] = []

    def allows(self, what: str) -> bool:
        if time.perf_counter() < self.deadline:
            return True
        self.skipped.append(what)
        print(f"skipped (time budget): {what}", flush=True)
        return False


@contextlib.contextmanager
def reference_loop():
    """FusedLIF runs our own ``lif_multi_step`` (the CPU path's loop) on CUDA tensors as well:
    spikingjelly's ``functional.lif_multi_step``, which FusedLIF calls there, is swapped for it."""
    from spikingjelly.activation_based import functional

    from stas_sweep.models.neuron import lif_multi_step

    def ours(x_seq, v, tau, decay_input, v_threshold, v_reset, surrogate_function, detach_reset):
        spikes, v_t = lif_multi_step(x_seq, v, tau, v_threshold, v_reset, detach_reset, surrogate_function.alpha,
                                     decay_input)
        return spikes, v_t, None

    sj = functional.lif_multi_step
    functional.lif_multi_step = ours
    try:
        yield
    finally:
        functional.lif_multi_step = sj


def core_model(name: str, batch: int, device: torch.device, classes: int = 10):
    """A static ``name`` (I-SPS, 32x32, T=4) on ``device``, batch norm calibrated on a random batch."""
    from stas_sweep import create_model
    from stas_sweep.models.diagnostics import calibrate_batchnorm

    torch.manual_seed(0)
    x, y = torch.rand(batch, 3, 32, 32, device=device), torch.randint(0, classes, (batch,), device=device)
    model = create_model(name, num_classes=classes, img_size=32, stem="isps").to(device)
    calibrate_batchnorm(model, x)
    return model, x, y


def training_step(model, x, y, amp: bool, patch=contextlib.nullcontext):
    """Forward, cross-entropy, backward, SGD step (lr 0: the weights stay put), AMP as in the Trainer."""
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    scaler = torch.amp.GradScaler(x.device.type, enabled=amp)

    def step():
        with patch():
            model.train()
            with torch.autocast(x.device.type, enabled=amp):
                loss = F.cross_entropy(model(x).logits.float(), y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
    return step


def inference(model, x, amp: bool, patch=contextlib.nullcontext):
    def run():
        with patch(), torch.no_grad(), torch.autocast(x.device.type, enabled=amp):
            model.eval()
            model(x)
    return run


def peak_mib(fn, device: torch.device) -> float | None:
    """Peak allocated memory during one call (weights and batch included), MiB; None on the CPU."""
    if device.type != "cuda":
        return None
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    sync(device)
    return torch.cuda.max_memory_allocated(device) / 2**20


def fmt(v, spec: str = ".1f") -> str:
    return "n/a" if v is None else format(v, spec)


# -- 1. correctness of the CUDA neuron route -------------------------------------------------------

def _lif_routes(device: torch.device) -> dict:
    """Each route: ``(x_seq, setting) -> (spikes, final membrane)`` and its device; ``cpu`` is the reference."""
    from spikingjelly.activation_based import neuron, surrogate

    from stas_sweep.models.neuron import FusedLIF, lif_multi_step

    def fused(x, s):
        node = FusedLIF(2.0, s[0], s[1], s[2], 4.0)
        return node(x), node.v

    def loop(x, s):
        v0 = torch.full(x.shape[1:], 0.0 if s[1] is None else s[1], dtype=x.dtype, device=x.device)
        return lif_multi_step(x, v0, 2.0, s[0], s[1], s[2], 4.0)

    def lifnode(x, s):
        node = neuron.LIFNode(tau=2.0, v_threshold=s[0], v_reset=s[1], detach_reset=s[2],
                              surrogate_function=surrogate.Sigmoid(alpha=4.0), step_mode="m")
        return node(x), node.v

    kernel = " (spikingjelly kernel)" if device.type == "cuda" else ""
    return {f"FusedLIF, {device.type}{kernel}": (fused, device),
            f"lif_multi_step, {device.type} (our loop)": (loop, device),
            f"spikingjelly LIFNode, {device.type}": (lifnode, device),
            "cpu": (fused, torch.device("cpu"))}


def _run_lif(route, leaf: torch.Tensor, expand: int | None, grad: torch.Tensor, setting, dtype):
    """Spikes, final membrane and the leaf's gradient of ``sum(spikes * grad)``."""
    fn, device = route
    leaf = leaf.detach().to(device, dtype).requires_grad_()
    x = leaf.expand(expand, *leaf.shape[1:]) if expand else leaf
    with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        spikes, v = fn(x, setting)
    (spikes.float() * grad.to(device)).sum().backward()
    return spikes.detach(), v.detach(), leaf.grad


def neuron_rows(sz: dict, device: torch.device) -> tuple[list[str], list[dict]]:
    routes = _lif_routes(device)
    T, B, C = sz["neuron_shape"]
    cases = [(s, "contiguous", torch.float32) for s in LIF_SETTINGS]
    cases.append((LIF_SETTINGS[0], "one step expanded over T", torch.float32))
    cases += [(s, "contiguous", dt) for dt in (torch.float16, torch.bfloat16) for s in LIF_SETTINGS[:2]]
    lines = [f"LIF on `[{T}, {B}, {C}]` inputs `(randn * 1.5 + 0.3) * v_threshold`, gradient of "
             "`sum(spikes * g)`, each route against FusedLIF on the CPU fed the same values in float32. "
             "Half-precision rows: inputs in that dtype, run under `torch.autocast`.", "",
             "| v_th, v_reset, detach | used by | input | dtype | route | spikes dtype | spike rate | "
             "mismatches / elements | max abs d v_T | max abs d grad |", "|" + " --- |" * 10]
    raw = []
    for i, (setting, kind, dtype) in enumerate(cases):
        g = torch.Generator().manual_seed(i)
        expand = T if kind != "contiguous" else None
        leaf = (torch.randn((1 if expand else T, B, C), generator=g) * 1.5 + 0.3) * setting[0]
        leaf = leaf.to(dtype)  # the half rows' values, exactly representable in float32 for the reference
        grad = torch.randn((T, B, C), generator=g)
        ref = _run_lif(routes["cpu"], leaf, expand, grad, setting, torch.float32)
        for name, route in routes.items():
            if name == "cpu":
                continue
            row = {"setting": setting[:3], "input": kind, "dtype": str(dtype), "route": name}

            def measure(row, route=route):
                s, v, gr = _run_lif(route, leaf, expand, grad, setting, dtype)
                row.update(spikes_dtype=str(s.dtype), spike_rate=float(s.float().mean()),
                           mismatches=int((s.float().cpu() != ref[0]).sum()), elements=s.numel(),
                           max_dv=float((v.float().cpu() - ref[1]).abs().max()),
                           max_dgrad=float((gr.float().cpu() - ref[2]).abs().max()))
                return (f"{row['spikes_dtype']} | {row['spike_rate']:.3f} | {row['mismatches']} / {row['elements']} | "
                        f"{row['max_dv']:.2e} | {row['max_dgrad']:.2e}")
            cells = measured(row, measure, blanks=4)
            raw.append(row)
            lines.append(f"| {setting[0]}, {setting[1]}, {setting[2]} | {setting[3]} | {kind} | "
                         f"{str(dtype).removeprefix('torch.')} | {name} | {cells} |")
            print(lines[-1], flush=True)
    return lines, raw


def _model_pass(model, x, y, patch=contextlib.nullcontext, record: list | None = None):
    """Train-mode forward + backward: logits, token ratio and parameter gradients (copied to the CPU);
    with ``record``, every FusedLIF call's (module, input, steps, spikes) is appended to it: an
    input that is one timestep expanded over T is kept as that step and ``steps`` = T, else None."""
    from stas_sweep.models.neuron import FusedLIF

    def keep(mod, inp, out):
        x = inp[0].detach()
        expanded = x.shape[0] > 1 and x.stride(0) == 0
        record.append((mod, (x[:1] if expanded else x).clone(), x.shape[0] if expanded else None, out.detach()))

    lifs = [m for m in model.modules() if isinstance(m, FusedLIF)]
    hooks = [] if record is None else [m.register_forward_hook(keep) for m in lifs]
    try:
        model.train()
        model.zero_grad(set_to_none=True)
        with patch():
            out = model(x)
            (F.cross_entropy(out.logits, y) + 1e-3 * out.ponder_loss).backward()
    finally:
        for h in hooks:
            h.remove()
    grads = {n: p.grad.detach().cpu() for n, p in model.named_parameters() if p.grad is not None}
    return out.logits.detach().cpu(), float(out.token_ratio), grads


def _replay(record: list, device: torch.device) -> dict:
    """Every recorded CPU LIF call run again through FusedLIF on ``device`` with the same input
    (an expanded input again as an expanded view; ``clone`` and ``.to`` keep other strides)."""
    from stas_sweep.models.neuron import FusedLIF

    mism = elements = expanded = strided = 0
    with torch.no_grad():
        for mod, inp, steps, out in record:
            node = FusedLIF(mod.tau, mod.v_threshold, mod.v_reset, mod.detach_reset, mod.alpha, mod.decay_input)
            if steps:
                expanded += 1
                x = inp.to(device).expand(steps, *inp.shape[1:])
            else:
                strided += not inp.is_contiguous()
                x = inp.to(device)
            mism += int((node(x).cpu() != out).sum())
            elements += out.numel()
    return {"calls": len(record), "elements": elements, "mismatches": mism, "expanded_inputs": expanded,
            "non_contiguous_inputs": strided}


def model_rows(sz: dict, device: torch.device) -> tuple[list[str], list[dict]]:
    import bench_halting

    from stas_sweep import create_model
    from stas_sweep.models.diagnostics import calibrate_batchnorm

    lines = ["Whole models, 32x32, T=4, batch "
             f"{sz['check_batch']}, train mode (batch statistics), loss cross-entropy + 1e-3 ponder; TF32 off. "
             "A spike that flips on a rounding difference changes everything downstream, so logits and "
             "gradients are compared loosely; the replay column feeds each LIF layer the CPU pass's own input.", "",
             "| model | halting | device route | max abs d logits (max abs logit) | token ratio cpu / device | "
             "max over params of max abs d grad / max abs grad | LIF replay: mismatches / elements (calls; expanded, "
             "non-contiguous inputs) |", "| --- | --- | --- | --- | --- | --- | --- |"]
    raw = []
    models = [(f"{f}-{sz['L-D']}", False) for f in sz["families"]] + [(sz["model"], True)]
    for name, halting in models:
        torch.manual_seed(0)
        x, y = torch.rand(sz["check_batch"], 3, 32, 32), torch.randint(0, 10, (sz["check_batch"],))
        family = name.split("-")[0]
        cpu = create_model(name, num_classes=10, img_size=32, stem="isps",
                           halting=dict(alpha=bench_halting.FAMILY_HALT[family], beta=0.0, epsilon=0.01)
                           if halting else None)
        calibrate_batchnorm(cpu, x)
        if halting:  # a beta that halts about half the cells of this batch, so the packed path runs
            cpu.halting.beta = bench_halting.beta_for(cpu, x, 0.5)
        dev_model = copy.deepcopy(cpu).to(device)
        record = []
        ref = _model_pass(cpu, x, y, record=record)
        replay = _replay(record, device)
        del record
        for route, patch in (("spikingjelly kernel", contextlib.nullcontext), ("our loop", reference_loop)):
            row = {"model": name, "halting": halting, "route": route, "replay": replay}

            def measure(row, patch=patch):
                logits, ratio, grads = _model_pass(dev_model, x.to(device), y.to(device), patch)
                rel = {n: float((g - ref[2][n]).abs().max()) / max(float(ref[2][n].abs().max()), 1e-12)
                       for n, g in grads.items()}  # per parameter: max abs difference / max abs gradient
                worst = max(rel, key=rel.get)
                row.update(max_dlogits=float((logits - ref[0]).abs().max()), max_logit=float(ref[0].abs().max()),
                           ratio_cpu=ref[1], ratio_device=ratio, worst_param=worst, worst_rel_dgrad=rel[worst])
                return (f"{row['max_dlogits']:.2e} ({row['max_logit']:.2f}) | {ratio_str(ref[1], ratio)} | "
                        f"{row['worst_rel_dgrad']:.2e} ({worst})")
            cells = measured(row, measure, blanks=2)
            raw.append(row)
            shown = route == "spikingjelly kernel"  # the replay runs that route; one cell per model
            lines.append(f"| {name} | {'yes' if halting else 'no'} | {route} | {cells} | "
                         + (f"{replay['mismatches']} / {replay['elements']} ({replay['calls']}; "
                            f"{replay['expanded_inputs']}, {replay['non_contiguous_inputs']})" if shown else "") + " |")
            print(lines[-1], flush=True)
        del cpu, dev_model
    return lines, raw


def ratio_str(a: float, b: float) -> str:
    return f"{a:.4f} / {b:.4f}" + (" (equal)" if a == b else "")


def correctness_section(sz: dict, device: torch.device) -> tuple[list[str], dict]:
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        lines, neurons = neuron_rows(sz, device)
        more, models = model_rows(sz, device)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    return lines + [""] + more, {"neurons": neurons, "models": models}


# -- 2. model-core speed ---------------------------------------------------------------------------

def speed_section(sz: dict, device: torch.device, budget: Budget) -> tuple[list[str], dict]:
    from bench_cpu import sj_lifnodes
    from bench_halting import interleaved

    neurons = {"FusedLIF (spikingjelly kernel)": contextlib.nullcontext, "FusedLIF, our loop": reference_loop,
               "spikingjelly LIFNode": contextlib.nullcontext}
    lines = [f"{sz['model']}, 32x32, T=4, I-SPS, untrained (batch norm calibrated on the batch). Training step: "
             "forward, cross-entropy, backward, SGD step (lr 0); AMP: `torch.autocast` (float16 on CUDA) + "
             f"`GradScaler`, as the Trainer. Interleaved, median of {sz['repeats']} after two warm-up calls; "
             "peak memory of one call (weights and batch included); speed-up against our loop with the same AMP.", "",
             "| batch | neuron | AMP | train ms/step | train img/s | train peak MiB | train speed-up | "
             "inference ms | inference img/s | inference peak MiB | inference speed-up |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    raw, errors = [], []
    for batch in sz["batches"]:
        if not budget.allows(f"model-core speed, batch {batch}"):
            continue
        model, x, y = core_model(sz["model"], batch, device)
        sj = sj_lifnodes(copy.deepcopy(model))
        cases = {}
        for label, patch in neurons.items():
            m = sj if label == "spikingjelly LIFNode" else model
            for amp in (False, True):
                cases[(label, amp, "train")] = training_step(m, x, y, amp, patch)
                cases[(label, amp, "infer")] = inference(m, x, amp, patch)
        for key, fn in list(cases.items()):  # first warm-up; a case that fails is reported and dropped
            try:
                fn()
            except Exception:
                errors.append(f"batch {batch}, {key}: {traceback.format_exc()}")
                print(errors[-1], flush=True)
                del cases[key]
        times, peaks = {}, {}
        for op in ("train", "infer"):
            times.update(interleaved({k: f for k, f in cases.items() if k[2] == op}, sz["repeats"], device))
        for key, fn in cases.items():
            peaks[key] = peak_mib(fn, device)
        for label in neurons:
            for amp in (False, True):
                cells = []
                for op in ("train", "infer"):
                    t, base = times.get((label, amp, op)), times.get(("FusedLIF, our loop", amp, op))
                    cells += ["n/a"] * 4 if t is None else [
                        f"{t * 1e3:.1f}", f"{batch / t:.0f}", fmt(peaks[(label, amp, op)], ".0f"),
                        "n/a" if base is None else f"{base / t:.2f}x"]
                    raw.append({"batch": batch, "neuron": label, "amp": amp, "op": op, "seconds": t,
                                "peak_mib": peaks.get((label, amp, op))})
                lines.append(f"| {batch} | {label} | {'on' if amp else 'off'} | " + " | ".join(cells) + " |")
                print(lines[-1], flush=True)
        del model, sj, cases
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if errors:
        lines += ["", "Cases that failed (left out of the table):", "", "```", *errors, "```"]
    return lines, {"rows": raw, "errors": errors}


# -- 3. the Trainer with AMP -----------------------------------------------------------------------

def trainer_section(sz: dict, device: torch.device) -> tuple[list[str], dict]:
    from stas_sweep.train import Trainer, evaluate, load_checkpoint, load_config, model_from_checkpoint

    keys = ("train_loss", "task_loss", "ponder_loss", "accuracy", "token_ratio", "epoch_time_s", "images_per_s")
    lines = [f"`configs/digits_stage1.yaml` then `configs/digits_stage2.yaml` (init_from stage 1's last.pt), "
             f"{sz['epochs']} epoch(s) each, device {device}, `amp: on`, tracking off"
             + (f", {', '.join(sz['trainer_set'])}" if sz["trainer_set"] else "") + ". The first epoch includes "
             "warm-up (kernel compilation). Reloaded: the checkpoint read back with `weights_only=True`, the model "
             "rebuilt from it and evaluated on the validation set again.", "",
             "| stage | epoch | train loss | task loss | ponder loss | accuracy % | token ratio | epoch s | img/s | "
             "losses finite |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    raw, checks = {}, []
    with tempfile.TemporaryDirectory() as d:
        init = None
        for stage in (1, 2):
            over = ["tracking.enabled=false", f"device={device}", 'amp="on"', f"epochs={sz['epochs']}",
                    *sz["trainer_set"]] + ([f"init_from={init}"] if init else [])
            cfg = load_config(ROOT / "configs" / f"digits_stage{stage}.yaml", over)
            trainer = Trainer(cfg, Path(d) / f"stage{stage}", progress=False, log=lambda m: print(m, flush=True))
            if not trainer.amp:
                raise RuntimeError(f"stage {stage}: the Trainer has AMP off although the config says on")
            history = trainer.fit()
            for h in history:
                finite = all(math.isfinite(h[k]) for k in ("train_loss", "task_loss", "ponder_loss"))
                lines.append(f"| {stage} | {h['epoch']} | " + " | ".join(f"{h[k]:.4g}" for k in keys)
                             + f" | {'yes' if finite else '**no**'} |")
            init = trainer.last_path
            state = load_checkpoint(init, map_location="cpu")
            model, _ = model_from_checkpoint(init, device)
            again = evaluate(model, trainer.val_loader, device, energy=False)
            checks.append(f"- stage {stage}: `{init.name}` loads (weights_only, digest checked), epoch "
                          f"{state['epoch']}, GradScaler scale {state['scaler'].get('scale')}; reloaded model: "
                          f"accuracy {again['accuracy']:.2f} % (at the end of training "
                          f"{history[-1]['accuracy']:.2f} %), "
                          f"token ratio {again['token_ratio']:.4f} ({history[-1]['token_ratio']:.4f})")
            raw[f"stage{stage}"] = {"history": history, "reloaded": again, "scaler": state["scaler"]}
            print(checks[-1], flush=True)
    return lines + [""] + checks, raw


# -- 4. halting wall time --------------------------------------------------------------------------

def halting_section(sz: dict, device: torch.device, budget: Budget) -> tuple[list[str], dict]:
    import bench_halting

    head = ["| model | batch | beta | token ratio | static inference ms/img | packed / static inference | "
            "stem share -> floor | dense / static | static train ms/img | packed / static train | dense / static | "
            "saved MiB packed / dense |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    lines = [f"`bench_halting.packed_section` on {device}: interleaved, median of {sz['halting_repeats']}; batch "
             "norm calibrated on the batch; training step = forward + backward (no optimiser). Targets as in "
             "docs/benchmarks.md: inference <= ratio + 0.15 (<= 1.1 at ratio 1); training step <= ratio + 0.25 "
             "(<= 1.1 at ratio 1). float32:", "", *head]
    raw, errors, amp_rows = [], [], []
    plan = [(name, batch, sz["ratios"], False) for batch in sz["batches"] for name in sz["halting_models"]]
    plan += [(name, sz["amp_batch"], (0.5,), True) for name in sz["halting_models"]]
    for name, batch, ratios, amp in plan:
        if not budget.allows(f"halting, {name}, batch {batch}" + (", AMP" if amp else "")):
            continue
        try:
            with torch.autocast(device.type, enabled=amp):
                got = bench_halting.packed_section(name, batch, list(ratios), sz["halting_repeats"], device=device)
        except Exception:
            errors.append(f"{name}, batch {batch}{', AMP' if amp else ''}: {traceback.format_exc()}")
            print(errors[-1], flush=True)
            continue
        (amp_rows if amp else lines).extend(r["row"] for r in got)
        raw += [{k: v for k, v in r.items() if k != "row"} | {"amp": amp} for r in got]
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if amp_rows:
        lines += ["", f"Under `torch.autocast` ({'float16' if device.type == 'cuda' else 'bfloat16'}; model "
                  "build and beta search too), forward + backward without a scaler:", "", *head, *amp_rows]
    if errors:
        lines += ["", "Cases that failed:", "", "```", *errors, "```"]
    return lines, {"rows": raw, "errors": errors}


# -- 4b. halting without host round trips (issue 27) ------------------------------------------------

SYNC_EVENTS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize")


def host_syncs(fn, device: torch.device) -> int | None:
    """Host synchronisations during one call of ``fn``, as the CUDA profiler records them (runtime
    API calls that wait for the device: every ``.item()``, ``.tolist()``, ``nonzero`` or copy to
    the host makes one); None off CUDA (the profiler runs there too, so a dry run tries it)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sync(device)
    with profile(activities=activities) as prof:
        fn()
    sync(device)
    n = sum(1 for e in prof.events() if e.name in SYNC_EVENTS)
    return n if device.type == "cuda" else None


def _amp(device: torch.device, dtype):
    """``torch.autocast`` to ``dtype``, or nothing for float32 (None)."""
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def _autocast(fn, device: torch.device, dtype):
    def run():
        with _amp(device, dtype):
            fn()
    return run


def fast_halting_section(sz: dict, device: torch.device, budget: Budget) -> tuple[list[str], dict]:
    """Static against packed halting at each token ratio, batch, precision (float32; bfloat16
    autocast) and mode (``FAST_PLAN``): inference and training-step time (forward + backward), and
    host syncs per call counted by the profiler."""
    import bench_halting

    lines = [f"{sz['fast_model']}, 32x32, T=4, I-SPS; static and packed halting with the same weights, batch norm "
             f"calibrated on the batch; beta searched in float32 eager per batch and ratio, the ratio measured in "
             f"each case. Interleaved, median of {sz['halting_repeats']} after a warm-up (compiled: the warm-up "
             "compiles each capacity bucket met). Training step = forward + backward. Host syncs: CUDA runtime "
             "synchronisations in one call (profiler). Targets (issue 27, batch 256, bf16): packed / static "
             "inference <= ratio + 0.15, training <= ratio + 0.25 at ratios 0.3-0.75; <= 1.05 at ratio 1.", "",
             "| precision | mode | batch | beta | token ratio | static infer ms | packed / static infer | "
             "host syncs static / packed infer | static train ms | packed / static train | "
             "host syncs static / packed train |", "|" + " --- |" * 11]
    raw, errors = [], []
    dtypes = {"fp32": None, "bf16": torch.bfloat16}
    for batch in sz["fast_batches"]:
        if not budget.allows(f"fast halting, batch {batch}"):
            continue
        try:
            static, halting, x, y = bench_halting.build(sz["fast_model"], batch, device=device)
            betas = {r: bench_halting.beta_for(halting, x, r) for r in sz["fast_ratios"]}
            compiled = {}
            for mode, prec in sz["fast_plan"]:
                if not budget.allows(f"fast halting, batch {batch}, {prec}, {mode}"):
                    continue
                if mode == "compiled" and not compiled:
                    from spikingjelly.activation_based import functional

                    for m in (static, halting):
                        functional.reset_net(m)  # the membranes of the last call are not leaves: no deepcopy
                    compiled = {"static": copy.deepcopy(static), "halting": copy.deepcopy(halting)}
                    for m in compiled.values():
                        m.compile_parts(**({"backend": sz["compile_backend"]} if sz["compile_backend"] else {}))
                st, ha = (compiled["static"], compiled["halting"]) if mode == "compiled" else (static, halting)
                ha.pack_buckets = 8 if mode == "eager-b8" else None
                for ratio in sz["fast_ratios"]:
                    row = {"batch": batch, "precision": prec, "mode": mode, "target": ratio, "beta": betas[ratio]}
                    lines.append(f"| {prec} | {mode} | {batch} | " + measured(
                        row, lambda r: _fast_case(r, st, ha, x, y, dtypes[prec], sz, device), 7))
                    raw.append(row)
                    print(lines[-1], flush=True)
                ha.pack_buckets = None
            del compiled
        except Exception:
            errors.append(f"batch {batch}: {traceback.format_exc()}")
            print(errors[-1], flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if errors:
        lines += ["", "Cases that failed:", "", "```", *errors, "```"]
    return lines, {"rows": raw, "errors": errors}


def _fast_case(row: dict, static, halting, x, y, dtype, sz: dict, device: torch.device) -> str:
    import bench_halting

    halting.halting.beta = row["beta"]
    with torch.no_grad(), _amp(device, dtype):
        halting.eval()
        ratio = row["token_ratio"] = float(halting(x).token_ratio)
    cases = {"static_infer": bench_halting.infer(static, x), "packed_infer": bench_halting.infer(halting, x),
             "static_train": bench_halting.train_step(static, x, y), "packed_train": bench_halting.train_step(halting, x, y)}
    cases = {k: _autocast(fn, device, dtype) for k, fn in cases.items()}
    if row["mode"] == "compiled":  # compile every bucket these calls meet before timing
        for fn in cases.values():
            fn()
    t = row["seconds"] = bench_halting.interleaved(cases, sz["halting_repeats"], device)
    syncs = row["host_syncs"] = {k: host_syncs(fn, device) for k, fn in cases.items()}
    ri, rt = t["packed_infer"] / t["static_infer"], t["packed_train"] / t["static_train"]
    full = ratio >= 0.99
    ok_i = "yes" if (ri <= 1.05 if full else ri <= ratio + 0.15) else "no"
    ok_t = "yes" if (rt <= 1.05 if full else rt <= ratio + 0.25) else "no"
    return (f"{row['beta']:.2f} | {ratio:.3f} | {t['static_infer'] * 1e3:.2f} | {ri:.2f} ({ok_i}) | "
            f"{fmt(syncs['static_infer'], 'd')} / {fmt(syncs['packed_infer'], 'd')} | {t['static_train'] * 1e3:.2f} | "
            f"{rt:.2f} ({ok_t}) | {fmt(syncs['static_train'], 'd')} / {fmt(syncs['packed_train'], 'd')} |")


# -- 5. torch.compile, in a child process ------------------------------------------------------------

def compile_worker(args) -> None:
    """Child process: eager against ``torch.compile`` on one model, the training step first, then
    inference; one JSON line as each finishes, so a run stopped midway reports what it did."""
    from bench_halting import interleaved

    sz = QUICK if args.quick else FULL
    device = torch.device(args.device)
    model, x, y = core_model(sz["model"], sz["compile_batch"], device)
    compiled = torch.compile(model)
    for op, make in (("train", lambda m: training_step(m, x, y, False)), ("infer", lambda m: inference(m, x, False))):
        eager, fast = make(model), make(compiled)
        t0 = time.perf_counter()
        fast()  # the first call compiles
        sync(device)
        first = time.perf_counter() - t0
        t = interleaved({"eager": eager, "compiled": fast}, sz["repeats"], device)
        print(json.dumps({"op": op, "first_call_s": first, "eager_s": t["eager"], "compiled_s": t["compiled"]}),
              flush=True)


def compile_section(sz: dict, device: torch.device, args) -> tuple[list[str], dict]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--compile-worker", "--device", str(device)]
    cmd += ["--quick"] if args.quick else []
    if device.type == "cuda":
        torch.cuda.empty_cache()
    t0 = time.perf_counter()
    # its own process group, so that stopping it also stops inductor's compile workers
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=args.compile_timeout)
        status = f"exit code {proc.returncode}"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        status = f"stopped after {args.compile_timeout:.0f} s (--compile-timeout)"
    wall = time.perf_counter() - t0
    done = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    lines = [f"{sz['model']}, batch {sz['compile_batch']}, float32, `torch.compile(model)` (default mode), "
             f"training step and inference as in the model-core section, each against eager in the same child "
             f"process (interleaved, median of {sz['repeats']}); the child: {status}, {wall:.0f} s in all.", "",
             "| op | first compiled call s (compiles) | eager ms | compiled ms | speed-up |", "|" + " --- |" * 5]
    lines += [f"| {d['op']} | {d['first_call_s']:.1f} | {d['eager_s'] * 1e3:.1f} | {d['compiled_s'] * 1e3:.1f} | "
              f"{d['eager_s'] / d['compiled_s']:.2f}x |" for d in done]
    if len(done) < 2:
        tail = "\n".join(err.strip().splitlines()[-40:])
        lines += ["", "Not all timed; the child's last stderr lines:", "", "```", tail, "```"]
    return lines, {"status": status, "wall_s": wall, "done": done, "stderr_tail": err[-6000:]}


# -- driver ----------------------------------------------------------------------------------------

def header(device: torch.device, args) -> tuple[list[str], dict]:
    from importlib.metadata import version

    from spikingjelly.activation_based import functional

    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.version.cuda, "spikingjelly": version("spikingjelly"), "device": str(device),
            "quick": args.quick, "budget_s": args.budget, "compile_timeout_s": args.compile_timeout}
    if device.type == "cuda":
        meta["gpu"] = torch.cuda.get_device_name(device)
        for execution in ("eager", "compile"):
            try:
                meta[f"sj_lif_{execution}"] = functional.neuron_implementation("lif", device, execution=execution)
            except Exception:
                meta[f"sj_lif_{execution}"] = {"error": traceback.format_exc()}
        try:
            import triton
            meta["triton"] = triton.__version__
        except ImportError:
            meta["triton"] = None
    lines = [f"## GPU checks (`benchmarks/bench_gpu.py`{', --quick' if args.quick else ''}), {meta['date']}", "",
             f"{meta.get('gpu', platform.processor() or platform.machine())}; Python {meta['python']}, torch "
             f"{meta['torch']} (CUDA {meta['cuda']}), triton {meta.get('triton', 'n/a')}, spikingjelly "
             f"{meta['spikingjelly']}. spikingjelly's LIF implementation on this device: eager "
             f"{meta.get('sj_lif_eager', 'n/a')}, compile {meta.get('sj_lif_compile', 'n/a')}. TF32 (torch's "
             f"defaults, off in the correctness section): matmul {torch.backends.cuda.matmul.allow_tf32}, "
             f"cuDNN {torch.backends.cudnn.allow_tf32}.", ""]
    return lines, meta


class Report:
    """The markdown (appended to) and the JSON of raw numbers (rewritten), both after every section."""

    def __init__(self, out: Path) -> None:
        self.md, self.json = out, out.with_suffix(".json")
        self.data: dict = {}

    def add(self, key: str, lines: list[str], raw) -> None:
        with self.md.open("a") as f:
            f.write("\n".join(lines) + "\n\n")
        self.data[key] = raw
        self.json.write_text(json.dumps(self.data, indent=1, default=str))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, help="markdown file to append to (raw numbers: .json); required")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true", help="tiny models and sizes, one repeat: a dry run")
    ap.add_argument("--budget", type=float, default=210.0, help="seconds after which sections 2 and 4 start "
                    "nothing new")
    ap.add_argument("--compile-timeout", type=float, default=90.0, help="seconds for the torch.compile child")
    ap.add_argument("--only", help="comma-separated sections to run (default: all)")
    ap.add_argument("--compile-worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.compile_worker:
        return compile_worker(args)
    if args.out is None:
        ap.error("--out is required")
    device = torch.device(args.device)
    sz = QUICK if args.quick else FULL
    budget = Budget(args.budget)
    sections = [("correctness", "Correctness of the CUDA neuron route", lambda: correctness_section(sz, device)),
                ("speed", "Model-core speed (issue 15)", lambda: speed_section(sz, device, budget)),
                ("trainer", "The Trainer on the device with AMP", lambda: trainer_section(sz, device)),
                ("halting", "Halting wall time (issue 9)", lambda: halting_section(sz, device, budget)),
                ("fast_halting", "Halting without host round trips (issue 27)",
                 lambda: fast_halting_section(sz, device, budget)),
                ("compile", "torch.compile", lambda: compile_section(sz, device, args))]
    only = set(args.only.split(",")) if args.only else {key for key, _, _ in sections}
    unknown = only - {key for key, _, _ in sections}
    if unknown:
        ap.error(f"--only: unknown sections {sorted(unknown)}; accepted: {', '.join(k for k, _, _ in sections)}")
    report = Report(args.out)
    lines, meta = header(device, args)
    report.add("meta", lines, meta)
    print("\n".join(lines), flush=True)
    for key, title, run in sections:
        if key not in only:
            continue
        print(f"\n### {title}", flush=True)
        t0 = time.perf_counter()
        try:
            lines, raw = run()
        except Exception:
            tb = traceback.format_exc()
            print(tb, flush=True)
            lines, raw = ["**Failed:**", "", "```", tb.rstrip(), "```"], {"error": tb}
        took = time.perf_counter() - t0
        report.add(key, [f"### {title} ({took:.0f} s)", "", *lines], raw)
        print(f"({key}: {took:.0f} s)", flush=True)
    if budget.skipped:
        report.add("skipped", ["Skipped for the time budget: " + "; ".join(budget.skipped) + "."], budget.skipped)
    print(f"\nwritten: {report.md}, {report.json}", flush=True)


if __name__ == "__main__":
    main()
