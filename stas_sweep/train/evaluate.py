"""Evaluation: accuracy, token ratio and energy on a validation loader, at one or many epsilons
(or, for the baselines, keep ratios and exit thresholds: each method's knob).

Plain functions on a model and a loader, so the trainer, the ``eval`` command and the sweep's
trainable share them. Metric names follow SPEC 2.6 and :mod:`stas_sweep.objectives`: ``accuracy``
(top-1, %), ``token_ratio``, ``energy_mj`` (per image, the paper's convention), ``energy_strict_mj``
(per image, non-binary inputs at MAC), ``latency_ms`` (median per-image forward time on this device,
:class:`LatencyTimer`), plus ``energy_reduction`` (% of ``energy_mj`` against the same weights with
halting off) in epsilon tables. Every table row names its ``method`` and carries every registered
method's knob (:mod:`stas_sweep.methods`: ``epsilon``, ``keep_ratio``, ``exit_threshold``), the
ones that do not apply being None.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

from .. import methods
from ..energy import EnergyMeter
from ..models.vit import SpikingViT
from .distributed import all_reduce_sums


Progress = Callable[[str], None]


class LatencyTimer:
    """Wall time of each batch's forward pass on ``device``, per image, in ms.

    The first batch is the warm-up (allocator, kernels, lazy initialisation) and is not kept;
    so is any batch of another size than the first (the last, short one): the figure is the
    time at the loader's batch size. On CUDA the device is synchronised before and after each
    forward, so the time is the work's, not the launch's. :meth:`median_ms` is the median over
    the kept batches."""

    def __init__(self, device: torch.device | str) -> None:
        self.cuda = torch.device(device).type == "cuda"
        self.size: int | None = None
        self.per_image_ms: list[float] = []

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    @contextlib.contextmanager
    def batch(self, n: int):
        self._sync()
        t0 = time.perf_counter()
        yield
        self._sync()
        elapsed = time.perf_counter() - t0
        if self.size is None:
            self.size = n  # the warm-up batch sets the batch size
        elif n == self.size:
            self.per_image_ms.append(1000.0 * elapsed / n)

    def median_ms(self) -> float | None:
        return statistics.median(self.per_image_ms) if self.per_image_ms else None


def _batches(loader, max_batches: int | None) -> str:
    try:
        n = len(loader)
    except TypeError:
        return "?"
    return str(n if max_batches is None else min(n, max_batches))


@torch.no_grad()
def evaluate(model: SpikingViT, loader, device: torch.device | str = "cpu", *, epsilon: float | None = None,
             knob: float | None = None, energy: bool = True, energy_batches: int | None = None,
             max_batches: int | None = None, progress: Progress | None = None, every_s: float = 10.0,
             amp_dtype: torch.dtype | None = None, distributed: bool = False) -> dict:
    """Top-1 accuracy (%), mean token ratio, energy (mJ/image, ``energy_mj`` in the paper's
    convention and ``energy_strict_mj``) and latency (``latency_ms``, :class:`LatencyTimer`) over ``loader``.

    The latency is timed in this same pass, so a metered batch's time includes the meter's
    hooks (docs/latency.md); when the loader has a single full batch, that batch runs once more
    (unmetered, uncounted) to give one timing after the warm-up.

    The energy meter sees the first ``energy_batches`` batches (all when None); accuracy and
    token ratio use every batch (or the first ``max_batches``). ``epsilon`` (A-SSA) or ``knob``
    (any method's knob) applies to this evaluation only. ``progress``, when given, is called
    with a line such as ``"batch 12/40"`` at most every ``every_s`` seconds. ``amp_dtype``: run
    the model under ``torch.autocast`` with that dtype (the halting state stays float32).

    ``distributed``: every data-parallel worker calls this on its share of the set (a loader from
    ``build_loaders(..., rank, world)``) and gets the numbers of the whole set: the counts, the
    token-ratio sum and the energy totals (per-image energy times images: the meter's operation
    counts, hence its firing rates, are sums over images) are added up over the workers.
    """
    model.eval()
    total = _batches(loader, max_batches) if progress else ""
    last = time.monotonic()
    correct = seen = 0
    ratio_sum = 0.0
    meter = EnergyMeter(model) if energy else None
    timer = LatencyTimer(device)
    first = None
    for i, (x, y) in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        metering = meter is not None and (energy_batches is None or i < energy_batches)
        amp = torch.autocast(torch.device(device).type, dtype=amp_dtype, enabled=amp_dtype is not None)
        with meter if metering else contextlib.nullcontext(), amp, timer.batch(len(x)):
            out = model(x, epsilon=epsilon, knob=knob)
        first = x if first is None else first
        if metering:
            meter.observe(out)
        correct += int((out.logits.argmax(-1) == y).sum())
        seen += len(y)
        ratio_sum += float(out.token_ratio) * len(y)
        if progress is not None and time.monotonic() - last >= every_s:
            last = time.monotonic()
            progress(f"batch {i + 1}/{total}")
    if first is not None and timer.median_ms() is None:  # one batch only: time it again, after its warm-up
        with amp, timer.batch(len(first)):
            model(first, epsilon=epsilon, knob=knob)
    if distributed:
        return _reduced(correct, seen, ratio_sum, meter, timer.median_ms(), device)
    if seen == 0:
        raise ValueError("evaluation loader produced no samples")
    result = {"accuracy": 100.0 * correct / seen, "token_ratio": ratio_sum / seen, "latency_ms": timer.median_ms(),
              "images": seen}
    if meter is not None:
        report = meter.report()
        result["energy_mj"] = report.energy_mj
        result["energy_strict_mj"] = report.energy_strict_mj
    return result


def _reduced(correct: int, seen: int, ratio_sum: float, meter: EnergyMeter | None, latency_ms: float | None,
             device) -> dict:
    """:func:`evaluate`'s result over every worker's share: the sums added up, then divided
    (``latency_ms``: the mean of the workers' medians, each timed on its own device)."""
    sums = {"correct": correct, "seen": seen, "ratio": ratio_sum, "metered": 0, "energy": 0.0, "strict": 0.0,
            "latency": latency_ms or 0.0, "timed": 1 if latency_ms is not None else 0}
    if meter is not None and meter.images:
        report = meter.report()
        sums.update(metered=report.images, energy=report.energy_mj * report.images,
                    strict=report.energy_strict_mj * report.images)
    sums = all_reduce_sums(sums, device)
    if sums["seen"] == 0:
        raise ValueError("evaluation loader produced no samples")
    result = {"accuracy": 100.0 * sums["correct"] / sums["seen"], "token_ratio": sums["ratio"] / sums["seen"],
              "latency_ms": sums["latency"] / sums["timed"] if sums["timed"] else None, "images": int(sums["seen"])}
    if meter is not None:
        if not sums["metered"]:
            raise RuntimeError("EnergyMeter.report(): no forward output was observed")
        result["energy_mj"] = sums["energy"] / sums["metered"]
        result["energy_strict_mj"] = sums["strict"] / sums["metered"]
    return result


def epsilon_table(model: SpikingViT, loader, epsilons: list[float], device: torch.device | str = "cpu", *,
                  energy_batches: int | None = None, max_batches: int | None = None,
                  grids: dict[str, list[float]] | None = None, progress: Progress | None = None,
                  distributed: bool = False) -> list[dict]:
    """One row per value of the model's knob: ``method, epsilon, keep_ratio, exit_threshold,
    accuracy, token_ratio, energy_mj, energy_strict_mj, latency_ms, energy_reduction`` (every
    registered method's knob is a column).

    An A-SSA model is evaluated at ``epsilons``; another method at ``grids[method]`` (default
    its record's ``grid``, :mod:`stas_sweep.methods`). ``energy_reduction`` is ``100 * (1 - E / E_static)`` on ``energy_mj``,
    where ``E_static`` is the same weights evaluated with halting switched off. A static model
    gives one row with ``method = static`` and every knob None. ``progress``, when given, hears
    of every pass and of its batches (e.g. ``"pass 2/5 (epsilon 0.1): batch 12/40"``).
    ``distributed``: as in :func:`evaluate` (every worker calls it on its share).
    """
    halting = model.halting
    method = halting.method if halting is not None else "static"
    record = methods.get(method)
    grid = [] if halting is None else (grids or {}).get(method) or (epsilons if record.grid is None else record.grid)
    passes = 1 + len(grid)

    def kw(n: int, what: str) -> dict:
        common = dict(energy_batches=energy_batches, max_batches=max_batches, distributed=distributed)
        if progress is None:
            return common
        progress(f"pass {n}/{passes} ({what}) ...")
        return dict(common, progress=lambda m: progress(f"pass {n}/{passes} ({what}): {m}"))

    model.set_halting(None)
    try:
        static = evaluate(model, loader, device, **kw(1, "halting off"))
    finally:
        model.set_halting(halting)
    knobs = dict.fromkeys(methods.knob_names())
    if halting is None:
        return [{"method": methods.STATIC, **knobs, **static, "energy_reduction": 0.0}]
    rows = []
    for n, value in enumerate(grid, start=2):
        r = evaluate(model, loader, device, knob=value, **kw(n, f"{record.knob} {value:g}"))
        r["energy_reduction"] = 100.0 * (1.0 - r["energy_mj"] / static["energy_mj"]) if static["energy_mj"] else 0.0
        rows.append({"method": method, **knobs, record.knob: float(value), **r})
    return rows


def _knob_text(r: dict) -> str:
    name = methods.knob_of(r.get("method", "stas"))
    return "static" if r.get(name) is None else f"{name} {r[name]:g}"


def format_table(rows: list[dict]) -> str:
    from ..tables import Column, text_table

    columns = [
        Column("method", lambda r: r.get("method", "stas"), width=13),
        Column("knob", _knob_text, width=20),
        Column("accuracy %", lambda r: f"{r['accuracy']:.2f}"),
        Column("token ratio", lambda r: f"{r['token_ratio']:.3f}"),
        Column("energy mJ", lambda r: f"{r['energy_mj']:.4f}", width=10),
        Column("strict mJ", lambda r: f"{r['energy_strict_mj']:.4f}", width=10),
        Column("reduction %", lambda r: f"{r['energy_reduction']:.1f}"),
        Column("ms / image", lambda r: "-" if r.get("latency_ms") is None else f"{r['latency_ms']:.3f}", width=10),
    ]
    lines = text_table(rows, columns, rule=True)
    lines.append("energy mJ: paper convention (eqs. 11-12); strict mJ: non-binary inputs at MAC; "
                 "reduction % of energy mJ; ms / image: median forward time on this device (docs/latency.md)")
    return "\n".join(lines)


@torch.no_grad()
def halting_maps(model: SpikingViT, loader, out_dir: str | Path, *, samples: int = 8,
                 epsilon: float | None = None, device: torch.device | str = "cpu",
                 mean: tuple = (0.0,), std: tuple = (1.0,), progress: Progress | None = None) -> list[Path]:
    """PNG heat maps of where the model spends its blocks.

    Per sample, ``halting_map_<i>.png``: the image, the blocks run per token summed over
    timesteps (0..T*L, paper Fig. 7) and, per timestep, the block at which each token halted
    (N[k,t], 1..L, paper Fig. 5b). ``halting_maps.png`` puts every sample's image and summed
    map side by side. Returns the paths (grid first). ``progress``, when given, hears of each
    file as it is written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.eval()
    images, cells, blocks = [], [], []
    for x, _ in loader:
        out = model(x.to(device), epsilon=epsilon)
        images.append(x.cpu())
        cells.append(out.cells_processed.cpu())  # [B, K]
        blocks.append(out.halting_blocks.cpu())  # [B, T, K]
        if sum(len(i) for i in images) >= samples:
            break
    images = torch.cat(images)[:samples]
    cells = torch.cat(cells)[:samples]
    blocks = torch.cat(blocks)[:samples]
    side = int(round(cells.shape[1] ** 0.5))
    T, L = model.timesteps, model.depth
    m = torch.tensor(mean).view(-1, 1, 1)
    s = torch.tensor(std).view(-1, 1, 1)
    eps = epsilon if epsilon is not None else (model.halting.knob if model.halting else "static")

    def show_image(ax, img):
        if img.dim() == 4:  # event frames [T, 2, H, W]: events summed over time and polarity
            ax.imshow(img.sum((0, 1)).numpy(), cmap="gray")
        else:
            img = (img * s + m).clamp(0, 1)
            ax.imshow(img[0].numpy() if img.shape[0] == 1 else img.permute(1, 2, 0).numpy(),
                      cmap="gray" if img.shape[0] == 1 else None)
        ax.set_axis_off()

    def show_map(ax, values, vmin, vmax):
        im = ax.imshow(values.view(side, side).numpy(), cmap="inferno", vmin=vmin, vmax=vmax)
        ax.set_axis_off()
        return im

    paths = []
    for i in range(len(images)):
        fig = Figure(figsize=(2.2 * (T + 2), 2.6))
        FigureCanvasAgg(fig)
        axes = fig.subplots(1, T + 2)
        show_image(axes[0], images[i])
        im = show_map(axes[1], cells[i], 0, T * L)
        axes[1].set_title(f"blocks run, all t\n(0..{T * L}), mean {float(cells[i].mean()):.1f}", fontsize=8)
        fig.colorbar(im, ax=axes[1], fraction=0.046)
        for t in range(T):
            im_t = show_map(axes[2 + t], blocks[i, t], 1, L)
            axes[2 + t].set_title(f"halting block N, t={t + 1}\nmean {float(blocks[i, t].mean()):.2f}", fontsize=8)
        fig.colorbar(im_t, ax=axes[-1], fraction=0.046)
        fig.suptitle(f"epsilon = {eps}", fontsize=9)
        path = out_dir / f"halting_map_{i}.png"
        fig.savefig(path, dpi=100, bbox_inches="tight")
        paths.append(path)
        if progress is not None:
            progress(f"halting map {i + 1}/{len(images)}: {path}")
    fig = Figure(figsize=(2 * len(images), 4.2))
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, len(images), squeeze=False)
    for i in range(len(images)):
        show_image(axes[0, i], images[i])
        im = show_map(axes[1, i], cells[i], 0, T * L)
    fig.suptitle(f"blocks run per token, summed over timesteps (of T*L = {T * L}); epsilon = {eps}")
    fig.colorbar(im, ax=axes[1, :].tolist(), fraction=0.02)
    grid = out_dir / "halting_maps.png"
    fig.savefig(grid, dpi=100, bbox_inches="tight")
    if progress is not None:
        progress(f"halting maps: {grid}")
    return [grid, *paths]
