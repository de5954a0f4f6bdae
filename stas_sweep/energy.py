"""Per-image energy of a spiking ViT, measured on real inputs (STAS appendix A, SPEC 2.6).

    E = E_MAC * MACs + E_AC * SOPs,     E_MAC = 4.6 pJ, E_AC = 0.9 pJ (45 nm, Horowitz 2014)

Every synaptic layer (convolution, linear layer, spiking attention product, head) is hooked
while the model runs. One pass of hooks counts each call in two conventions at once.

``energy_mj``, the paper's convention (eqs. 11-12, Chen et al. 2023), the default objective:

* the first stem convolution, which reads real pixels, is MAC at its dense FLOPs: T times
  with SPS (it runs on every timestep), once with I-SPS (it runs once);
* every other synaptic layer is AC with ``SOPs = passes x activity x FLOPs``
  (:func:`layer_ops`). The activity of an input is its mean absolute value: the firing rate of
  binary spikes, the mean of an I-SPS rate map, the mean count of Spikformer's integer residual
  stream {0, 1, 2, ...}, the mean magnitude of a real-valued stream that may be negative
  (Spikingformer's and SDT's membrane-like residual, the head's mean representation). The
  absolute value is the choice made here for signed inputs: a negative value still costs its
  accumulations, it does not cancel a positive one. A call whose batch holds every timestep it
  ran (every block call, SPS convolutions) counts ``activity x FLOPs of the call``: the factor
  T of eq. 11 is in its batch. The I-SPS stem's later convolutions run once on their rate map
  (the paper's footnote 1, "reduced to a single pass"): ``activity x FLOPs``, no factor T. The
  mean-over-T representation the Spikformer / Spikingformer head reads stands for T head runs:
  ``T x activity x FLOPs``;
* the attention products follow the Spikingformer counter: per head ``N d^2`` for ``k^T v``
  gated by ``min(fr_k, fr_v)`` plus ``N d^2`` for ``q (k^T v)`` gated by ``fr_q`` (SDSA:
  ``N d`` each), at AC.

``energy_strict_mj``, the strict convention (the public Spikingformer counter's): the same
counts, except that the I-SPS stem's later convolutions count the T binary spike maps behind
each rate map (``T x rate x FLOPs`` at AC, what a machine that accepts only spikes runs), and
a layer whose input is not binary spikes or an I-SPS rate map (pixels, Spikformer's integer
residual stream into q/k/v/fc1, the head's real input) is MAC at the
dense FLOPs of the tokens still running (halted tokens are skipped; a running but silent
token is still computed). The input is judged per layer over everything the meter saw: one
non-binary call makes the layer a MAC layer, so a timestep of the integer stream that happens
to hold only 0s and 1s (halting runs one timestep per call) does not flip it to AC.

In both conventions halted tokens are zero, so they count as silent, and A-SSA's own work
costs ``D + 2`` MACs per scored token and cell (:func:`~stas_sweep.models.halting.halting_macs`:
the score of eq. 3, the accumulation of eq. 4, the mean field of eq. 8; row ``halting_score``).
The baselines are counted for what they run: token dropping's blocks run their kept rows only (its per-token score costs one AC per input value
summed, row ``token_score``); temporal early exit counts each image's timesteps up to its exit
(the head read after every one of them) plus its exit test (``exit_test``: per image and
timestep run, C ACs for the running logits and 2C MACs for softmax and entropy), and not the
model's unmetered decision pass (``model.probing``). Each :class:`LayerEnergy` row gives the layer's
operation and count in both conventions; :meth:`EnergyReport.table` names the convention of
every figure.

:func:`analytic_energy` counts the same hooks with no data and no weights (a model on the meta
device, every input at one firing rate, every block at one share of its cells).

Dense FLOPs count multiply-accumulates of the weights (padding included), the convention of
the published counters; spikingjelly's ``SynOpCounter`` counts exact weight uses instead
(smaller at padded borders), and agrees with this meter on token layers (see the tests).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import torch
from torch import nn

from .models.blocks import Block, SpikeMatmul
from .models.halting import halting_macs
from .models.registry import create_model, get_arch
from .models.packing import Packing
from .models.vit import SpikingViT

E_MAC_PJ = 4.6
E_AC_PJ = 0.9
# The version of the counting rules above. Point runs carry it as the tag ``energy_convention``,
# so fronts metered under different rules are never mixed. 2: the I-SPS stem counted once,
# A-SSA's own work D + 2 MACs per scored cell (1: the stem x T, one MAC per cell).
METER_VERSION = 2
CONVENTIONS = ("paper", "strict")


@dataclass
class LayerEnergy:
    """One synaptic layer, per image, summed over every call (timesteps, cells).

    ``dense_flops`` is ``T x FLOPs`` of eq. 11 (the first convolution with I-SPS: its one
    run). ``activity`` is the mean absolute input value over those FLOPs (binary spikes:
    the firing rate), halted tokens counting as silent; for an attention product, its
    SOPs / dense FLOPs (the mean gate); ``None`` for a MAC-only row of the paper's
    convention (the first convolution, the halting score). ``op`` is ``MAC`` or ``AC``.
    """

    layer: str
    dense_flops: float
    activity: float | None
    op: str              # paper convention
    ops: float           # paper: MACs + SOPs counted
    energy_pj: float     # paper
    op_strict: str
    ops_strict: float
    energy_strict_pj: float


@dataclass
class EnergyReport:
    energy_mj: float           # per image, paper convention (eqs. 11-12)
    energy_strict_mj: float    # per image, strict convention (non-binary inputs at MAC)
    mac_ops: float             # per image, paper
    ac_ops: float              # per image, paper
    mac_ops_strict: float      # per image, strict
    ac_ops_strict: float       # per image, strict
    token_ratio: float
    images: int
    layers: list[LayerEnergy] = field(default_factory=list)

    def energy(self, convention: str = "paper") -> float:
        """``energy_mj`` (``paper``) or ``energy_strict_mj`` (``strict``)."""
        _check_convention(convention)
        return self.energy_mj if convention == "paper" else self.energy_strict_mj

    def table(self, convention: str | None = None) -> str:
        """Per-layer table. ``None`` shows both conventions side by side; ``paper`` or
        ``strict`` shows that one's columns. Every column and total names its convention."""
        shown = CONVENTIONS if convention is None else (_check_convention(convention),)
        head = f"{'layer':<32} {'dense FLOPs':>14} {'activity':>8}"
        for c in shown:
            head += f" | {c + ' op':<12} {c + ' ops':>16} {c + ' pJ':>14}"
        rows = [head, "-" * len(head)]
        for r in self.layers:
            act = "" if r.activity is None else f"{r.activity:.4f}"
            line = f"{r.layer:<32} {r.dense_flops:>14,.0f} {act:>8}"
            for c in shown:
                op, ops, pj = (r.op, r.ops, r.energy_pj) if c == "paper" else (r.op_strict, r.ops_strict, r.energy_strict_pj)
                line += f" | {op:<12} {ops:>16,.0f} {pj:>14,.0f}"
            rows.append(line)
        totals = {
            "paper": f"energy_mj        {self.energy_mj:.4f} mJ/image  paper convention (eqs. 11-12: first "
                     f"conv MAC, the rest AC at passes x activity x FLOPs, I-SPS's stem one pass; MAC {self.mac_ops:,.0f}, AC {self.ac_ops:,.0f})",
            "strict": f"energy_strict_mj {self.energy_strict_mj:.4f} mJ/image  strict convention (non-binary "
                      f"inputs at MAC, I-SPS's rate maps as T spike maps; MAC {self.mac_ops_strict:,.0f}, AC {self.ac_ops_strict:,.0f})",
        }
        order = CONVENTIONS if convention in (None, "paper") else ("strict", "paper")
        rows += [totals[c] for c in order]
        rows.append(f"token ratio {self.token_ratio:.3f}; {self.images} images")
        return "\n".join(rows)


def _check_convention(convention: str) -> str:
    if convention not in CONVENTIONS:
        raise ValueError(f"energy convention {convention!r} is not supported; accepted values: {', '.join(CONVENTIONS)}")
    return convention


def _is_binary(x: torch.Tensor) -> bool:
    return bool(((x == 0) | (x == 1)).all())


def _op(mac: float, ac: float) -> str:
    return "MAC+AC" if mac and ac else ("MAC" if mac else "AC")


def dense_flops(module: nn.Module, out: torch.Tensor) -> float:
    """FLOPs of one call of a convolution or linear layer: the weights' multiply-accumulates for
    every output value (padding included), over everything the call's batch holds."""
    if isinstance(module, nn.Conv2d):
        k = module.kernel_size[0] * module.kernel_size[1]
        return float(out.numel() * (module.in_channels // module.groups) * k)
    return float(out.numel() * module.in_features)


def layer_ops(flops: float, activity: float, passes: int = 1, *, pixels: bool = False) -> tuple[float, float]:
    """``(MACs, ACs)`` of one synaptic layer in the paper's convention (eqs. 11-12, SPEC 2.6), the
    one count the measured and the analytic meter share.

    ``flops``: dense FLOPs of the inputs the layer read (every timestep a block call holds);
    ``passes``: how many runs that input stands for (T for a head fed the mean over T, else 1:
    an I-SPS rate map is one pass); ``pixels``: the first convolution, MAC at its dense FLOPs.
    Otherwise ``SOPs = passes x activity x FLOPs`` at AC."""
    if pixels:
        return float(flops * passes), 0.0
    return 0.0, float(passes * activity * flops)


def real_input_layers(model: SpikingViT) -> set[nn.Module]:
    """The synaptic layers whose input is not binary spikes by construction: the pixels' first
    convolution, Spikformer's q/k/v and fc1 (they read the integer residual stream), and a head
    fed the real mean representation. The strict convention puts these at MAC."""
    layers = {next(m for m in model.stem.modules() if isinstance(m, nn.Conv2d))}
    for block in model.blocks:
        if block.attn.entry_lif is None:
            layers |= {block.attn.q.fc, block.attn.k.fc, block.attn.v.fc}
        if block.mlp.entry_lif is None:
            layers.add(block.mlp.fc1.fc)
    if getattr(model, "head_lif", None) is None:
        layers.add(model.head)
    return layers


class EnergyMeter:
    """Context manager that hooks a :class:`SpikingViT` and accumulates operation counts in
    both conventions.

    Use it around any number of forward passes (e.g. a whole validation set)::

        with EnergyMeter(model) as meter:
            for x, _ in loader:
                meter.observe(model(x))
        report = meter.report()

    Analytic mode (``rate`` given; see :func:`analytic_energy`): every synaptic input is read
    at activity ``rate`` instead of measured, and every block runs the share ``share`` of its
    token-timestep cells (halted cells silent), so a static model built on the meta device
    gives the counts with no data and no weights.
    """

    def __init__(self, model: SpikingViT, *, rate: float | None = None, share: float = 1.0) -> None:
        self.model = model
        self.T = model.timesteps
        convs = [m for m in model.stem.modules() if isinstance(m, nn.Conv2d)]
        self._first = convs[0]
        # a head fed the mean over T (no head LIF) stands for T runs; I-SPS rate maps for one
        self._head_summary = model.head if getattr(model, "head_lif", None) is None else None
        self._rate_inputs = set(convs[1:]) if model.stem.integrate else set()
        self._real_inputs = real_input_layers(model)
        self.rate, self.share = rate, share
        self._names = {m: n for n, m in model.named_modules()}
        self._acc: OrderedDict[str, dict] = OrderedDict()
        self._handles: list = []
        self.images = 0
        self.decisions: OrderedDict[str, list[float]] = OrderedDict()  # row -> [MACs, ACs], whole batches
        self._cells = 0.0
        self._running = 1.0  # fraction of tokens running in the block being called
        self._cover = 1.0    # cells a packed block's rows stand for, per row (halted = silent)
        self._in_block = False

    # -- hooks ---------------------------------------------------------------------------
    def _add(self, module: nn.Module, dense: float, paper: tuple[float, float], strict_ac: float,
             strict_mac: float = 0.0, binary: bool = True) -> None:
        """One call: ``paper`` (MACs, SOPs); strict: the SOPs if the layer's input is binary,
        the MACs of its running tokens if it is not, and whether this call's input was."""
        a = self._acc.setdefault(self._names[module], {"dense": 0.0, "mac": 0.0, "ac": 0.0, "strict_ac": 0.0,
                                                       "strict_mac": 0.0, "binary": True})
        a["dense"] += dense
        a["mac"] += paper[0]
        a["ac"] += paper[1]
        a["strict_ac"] += strict_ac
        a["strict_mac"] += strict_mac
        a["binary"] = a["binary"] and binary

    def _activity(self, x: torch.Tensor) -> float:
        """Mean absolute input value over every cell the call stands for (halted cells silent);
        analytic: the rate, times the share of cells a block runs."""
        if self.rate is None:
            return float(x.abs().mean())
        return self.rate * (self.share if self._in_block else 1.0)

    def _synapse_hook(self, module: nn.Module, inputs: tuple, out: torch.Tensor) -> None:
        if self.model.probing:
            return
        x = inputs[0].detach()
        flops = dense_flops(module, out)
        # the head read after every timestep (timestep exit) is fed per step, not the mean over T
        passes = self.T if module is self._head_summary and x.dim() == 2 else 1
        dense = flops * passes * self._cover  # ... had the halted cells of a packed block run (silent)
        act = self._activity(x)
        paper = layer_ops(flops, act, passes, pixels=module is self._first)
        if module in self._rate_inputs:
            # strict: an I-SPS rate map is the mean of T binary spike maps, run as T passes at AC
            self._add(module, dense, paper, self.T * dense * act)
            return
        binary = _is_binary(x) if self.rate is None else module not in self._real_inputs
        # binary -> AC on the spikes; otherwise MAC at the dense FLOPs of running tokens, one run
        self._add(module, dense, paper, flops * act, flops * self._running, binary)

    def _matmul_hook(self, module: SpikeMatmul, inputs: tuple, out: torch.Tensor) -> None:
        if self.model.probing:
            return
        q, k, v = (t.detach() for t in inputs)  # [T', B, heads, K, d]
        Tp, B, heads, K, d = q.shape
        per = Tp * B * heads * K * (d * d if module.kind == "ssa" else d)
        if self.rate is None:
            fr_q, fr_k, fr_v = float(q.mean()), float(k.mean()), float(v.mean())
        else:
            fr_q = fr_k = fr_v = self._activity(q)
        sops = per * (min(fr_k, fr_v) + fr_q)
        self._add(module, 2 * per, (0.0, sops), sops)

    def _block_pre_hook(self, _block: Block, args: tuple, kwargs: dict) -> None:
        if self.model.probing:
            return
        mask = args[1] if len(args) > 1 else kwargs.get("mask")  # [T', B, K] keep-mask, a Packing, or None
        self._in_block = True
        if self.rate is not None:  # analytic: the block runs the share of its cells
            self._running = self.share
            return
        # packed blocks see their running rows and cap - R zero padding rows: the running share of
        # the rows is counted, and the dense FLOPs (the activity's denominator) still cover the
        # halted cells, as silent ones
        if isinstance(mask, Packing):
            self._running, self._cover = mask.R / mask.cap, mask.T * mask.B * mask.K / mask.cap
        else:
            self._running = 1.0 if mask is None else float(mask.float().mean())

    def _block_hook(self, *_args) -> None:
        self._running = self._cover = 1.0
        self._in_block = False

    def __enter__(self) -> "EnergyMeter":
        for m in self.model.modules():
            if isinstance(m, Block):
                self._handles.append(m.register_forward_pre_hook(self._block_pre_hook, with_kwargs=True))
                self._handles.append(m.register_forward_hook(self._block_hook))
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                self._handles.append(m.register_forward_hook(self._synapse_hook))
            elif isinstance(m, SpikeMatmul):
                self._handles.append(m.register_forward_hook(self._matmul_hook))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def observe(self, output) -> None:
        """Record the batch size, the method's decision operations and token ratio of one
        forward output."""
        B = output.logits.shape[0]
        self.images += B
        macs, acs = output.decision_ops
        if macs or acs:
            # the row the method's config names (models/configs.py: decision_row)
            row = self.decisions.setdefault(self.model.halting.decision_row, [0.0, 0.0])
            row[0] += macs
            row[1] += acs
        self._cells += float(output.token_ratio) * B

    def observe_analytic(self, output, halting: bool) -> None:
        """Analytic mode: one image of a static model run on the meta device, its blocks standing
        for the share of their cells; with ``halting``, A-SSA's own MACs on those cells."""
        self.images += output.logits.shape[0]
        self._cells += self.share * output.logits.shape[0]
        if halting:
            m = self.model
            cells = self.share * m.timesteps * m.depth * m.num_tokens * output.logits.shape[0]
            self.decisions["halting_score"] = [halting_macs(cells, m.embed_dim), 0.0]

    # -- result ----------------------------------------------------------------------------
    def report(self) -> EnergyReport:
        if self.images == 0:
            raise RuntimeError("EnergyMeter.report(): no forward output was observed")
        n = self.images
        acc = {}
        for name, a in self._acc.items():
            # strict: a layer that received a non-binary input in any call is a MAC layer
            mac_s, ac_s = (a["strict_mac"], 0.0) if not a["binary"] else (0.0, a["strict_ac"])
            acc[name] = {"dense": a["dense"] / n, "mac": a["mac"] / n, "ac": a["ac"] / n,
                         "mac_s": mac_s / n, "ac_s": ac_s / n}
        for name, (macs, acs) in self.decisions.items():  # the same operations in both conventions
            acc[name] = {"dense": (macs + acs) / n, "mac": macs / n, "ac": acs / n, "mac_s": macs / n, "ac_s": acs / n}
        rows = []
        for name, a in acc.items():
            mac_only = (a["mac"] and not a["ac"]) or name in self.decisions
            rows.append(LayerEnergy(
                layer=name, dense_flops=a["dense"],
                activity=None if mac_only else (a["ac"] / a["dense"] if a["dense"] else 0.0),
                op=_op(a["mac"], a["ac"]), ops=a["mac"] + a["ac"],
                energy_pj=E_MAC_PJ * a["mac"] + E_AC_PJ * a["ac"],
                op_strict=_op(a["mac_s"], a["ac_s"]), ops_strict=a["mac_s"] + a["ac_s"],
                energy_strict_pj=E_MAC_PJ * a["mac_s"] + E_AC_PJ * a["ac_s"],
            ))
        total = {k: sum(a[k] for a in acc.values()) for k in ("mac", "ac", "mac_s", "ac_s")}
        return EnergyReport(
            energy_mj=(E_MAC_PJ * total["mac"] + E_AC_PJ * total["ac"]) * 1e-9,
            energy_strict_mj=(E_MAC_PJ * total["mac_s"] + E_AC_PJ * total["ac_s"]) * 1e-9,
            mac_ops=total["mac"], ac_ops=total["ac"], mac_ops_strict=total["mac_s"], ac_ops_strict=total["ac_s"],
            token_ratio=self._cells / n, images=n, layers=rows,
        )


@torch.no_grad()
def measure_energy(model: SpikingViT, x: torch.Tensor, epsilon: float | None = None, *,
                   knob: float | None = None) -> EnergyReport:
    """Energy per image of ``model`` on the batch ``x`` in both conventions (eval mode, no
    gradients); ``epsilon`` (A-SSA) or ``knob`` (any method) for this pass."""
    was_training = model.training
    model.eval()
    try:
        with EnergyMeter(model) as meter:
            meter.observe(model(x, epsilon=epsilon, knob=knob))
        return meter.report()
    finally:
        model.train(was_training)


def check_rate(rate: float, token_ratio: float | None) -> None:
    """The analytic mode's inputs: a firing rate in [0, 1], a token ratio in (0, 1]."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"firing rate must lie in [0, 1], got {rate}")
    if token_ratio is not None and not 0.0 < token_ratio <= 1.0:
        raise ValueError(f"token ratio must lie in (0, 1], got {token_ratio}")


@torch.no_grad()
def analytic_energy(name: str, rate: float, token_ratio: float | None = None, *, img_size: int = 32,
                    num_classes: int = 10, in_channels: int = 3, timesteps: int = 4,
                    stem: str = "isps") -> EnergyReport:
    """Energy per image of the registered model ``name`` with no data and no weights: the model
    is built on the meta device (shapes only) and run once under :class:`EnergyMeter` in its
    analytic mode, so every layer is counted by the same hooks and :func:`layer_ops` as a
    measured run. Every synaptic input reads activity ``rate``; ``token_ratio`` ``None`` is the
    static model, a value Q in (0, 1] is A-SSA running the share Q of every block's
    token-timestep cells (halted cells silent) plus its own MACs on those cells."""
    check_rate(rate, token_ratio)
    with torch.device("meta"):
        model = create_model(name, num_classes=num_classes, img_size=img_size, in_channels=in_channels,
                             timesteps=timesteps, stem=stem).eval()
        x = torch.empty(1, in_channels, img_size, img_size)
        share = 1.0 if token_ratio is None else token_ratio
        with EnergyMeter(model, rate=rate, share=share) as meter:
            meter.observe_analytic(model(x), halting=token_ratio is not None)
    return meter.report()


def analytic_summary(name: str, rate: float, token_ratio: float | None = None, **shape) -> dict:
    """:func:`analytic_energy` as the JSON of ``stas-sweep energy MODEL --firing-rate R
    [--token-ratio Q]``: both conventions, the stem's share of the paper-convention energy, the
    static energy and the saving against it, A-SSA's own energy per scored token-cell, and one
    ``{layer, flops, rate, cells, op, energy_pj, ...}`` row per layer: ``flops`` the dense FLOPs
    of every pass the layer stands for (T timesteps for a block layer, one pass for I-SPS's stem),
    ``cells`` the share of them that runs, so an AC row's ``energy_pj`` is
    ``E_AC x rate x cells x flops``; the rows' ``energy_pj`` sum to the total."""
    report = analytic_energy(name, rate, token_ratio, **shape)
    static = report if token_ratio is None else analytic_energy(name, rate, None, **shape)
    share = 1.0 if token_ratio is None else token_ratio
    total_pj = sum(r.energy_pj for r in report.layers)
    stem_pj = sum(r.energy_pj for r in report.layers if r.layer.startswith("stem."))
    D = get_arch(name).embed_dim
    return {
        "model": name, "firing_rate": rate, "token_ratio": share,
        "method": "static" if token_ratio is None else "stas", **shape,
        "energy_mj": report.energy_mj, "energy_strict_mj": report.energy_strict_mj,
        "static_energy_mj": static.energy_mj, "static_energy_strict_mj": static.energy_strict_mj,
        "saving": 1.0 - report.energy_mj / static.energy_mj if static.energy_mj else 0.0,
        "stem_share": stem_pj / total_pj if total_pj else 0.0,
        "stem_energy_mj": stem_pj * 1e-9,
        "halting_score_mj": sum(r.energy_pj for r in report.layers if r.layer == "halting_score") * 1e-9,
        "halting_score_pj_per_cell": E_MAC_PJ * halting_macs(1, D),
        "layers": [{"layer": r.layer, "flops": r.dense_flops,
                    "rate": None if r.activity is None else rate,  # None: a MAC row (pixels, halting)
                    "cells": share if r.layer.startswith("blocks.") else 1.0,
                    "op": r.op, "energy_pj": r.energy_pj, "op_strict": r.op_strict,
                    "energy_strict_pj": r.energy_strict_pj} for r in report.layers],
    }
