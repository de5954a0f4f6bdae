"""Per-image energy of a spiking ViT, measured on real inputs (STAS appendix A, SPEC 2.6).

    E = E_MAC * MACs + E_AC * SOPs,     E_MAC = 4.6 pJ, E_AC = 0.9 pJ (45 nm, Horowitz 2014)

Every synaptic layer (convolution, linear layer, spiking attention product, head) is hooked
while the model runs. One pass of hooks counts each call in two conventions at once.

``energy_mj``, the paper's convention (eqs. 11-12, Chen et al. 2023), the default objective:

* the first stem convolution, which reads real pixels, is MAC at its dense FLOPs: T times
  with SPS (it runs on every timestep), once with I-SPS (it runs once);
* every other synaptic layer is AC with ``SOPs = T x activity x FLOPs``. The activity of an
  input is its mean absolute value: the firing rate of binary spikes, the mean of an I-SPS
  rate map, the mean count of Spikformer's integer residual stream {0, 1, 2, ...}, the mean
  magnitude of a real-valued stream that may be negative (Spikingformer's and SDT's
  membrane-like residual, the head's mean representation). The absolute value is the choice
  made here for signed inputs: a negative value still costs its accumulations, it does not
  cancel a positive one. A call whose batch holds every timestep it ran (every block call,
  SPS convolutions) counts ``activity x FLOPs of the call``; a call fed once with a
  T-step summary (the I-SPS rate maps of the stem's later convolutions; the mean-over-T
  representation the Spikformer / Spikingformer head reads) counts ``T x activity x FLOPs``;
* the attention products follow the Spikingformer counter: per head ``N d^2`` for ``k^T v``
  gated by ``min(fr_k, fr_v)`` plus ``N d^2`` for ``q (k^T v)`` gated by ``fr_q`` (SDSA:
  ``N d`` each), at AC.

``energy_strict_mj``, the strict convention (the public Spikingformer counter's): the same
counts, except that a layer whose input is not binary spikes or an I-SPS rate map (pixels,
Spikformer's integer residual stream into q/k/v/fc1, the head's real input) is MAC at the
dense FLOPs of the tokens still running (halted tokens are skipped; a running but silent
token is still computed). The input is judged per layer over everything the meter saw: one
non-binary call makes the layer a MAC layer, so a timestep of the integer stream that happens
to hold only 0s and 1s (halting runs one timestep per call) does not flip it to AC.

In both conventions halted tokens are zero, so they count as silent, and the halting score
costs one MAC per scored token and cell. The baselines are counted for what they run: token
dropping's blocks run their kept rows only (its per-token score costs one AC per input value
summed, row ``token_score``); temporal early exit counts each image's timesteps up to its exit
(the head read after every one of them) plus its exit test (``exit_test``: per image and
timestep run, C ACs for the running logits and 2C MACs for softmax and entropy), and not the
model's unmetered decision pass (``model.probing``). Each :class:`LayerEnergy` row gives the layer's
operation and count in both conventions; :meth:`EnergyReport.table` names the convention of
every figure.

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
from .models.packing import Packing
from .models.vit import SpikingViT

E_MAC_PJ = 4.6
E_AC_PJ = 0.9
CONVENTIONS = ("paper", "strict")
# the report row of each method's own decision operations (STASOutput.decision_ops)
DECISION_ROWS = {"stas": "halting_score", "token_drop": "token_score", "timestep_exit": "exit_test"}


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
                     f"conv MAC, the rest AC at T x activity x FLOPs; MAC {self.mac_ops:,.0f}, AC {self.ac_ops:,.0f})",
            "strict": f"energy_strict_mj {self.energy_strict_mj:.4f} mJ/image  strict convention (non-binary "
                      f"inputs at MAC; MAC {self.mac_ops_strict:,.0f}, AC {self.ac_ops_strict:,.0f})",
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


class EnergyMeter:
    """Context manager that hooks a :class:`SpikingViT` and accumulates operation counts in
    both conventions.

    Use it around any number of forward passes (e.g. a whole validation set)::

        with EnergyMeter(model) as meter:
            for x, _ in loader:
                meter.observe(model(x))
        report = meter.report()
    """

    def __init__(self, model: SpikingViT) -> None:
        self.model = model
        self.T = model.timesteps
        convs = [m for m in model.stem.modules() if isinstance(m, nn.Conv2d)]
        self._first = convs[0]
        # inputs that stand for all T timesteps at once: I-SPS rate maps and, where the head
        # reads the mean over T (no head LIF), the head's representation
        self._summaries = set(convs[1:]) if model.stem.integrate else set()
        if getattr(model, "head_lif", None) is None:
            self._summaries.add(model.head)
        self._rate_inputs = set(convs[1:]) if model.stem.integrate else set()
        self._names = {m: n for n, m in model.named_modules()}
        self._acc: OrderedDict[str, dict] = OrderedDict()
        self._handles: list = []
        self.images = 0
        self.decisions: OrderedDict[str, list[float]] = OrderedDict()  # row -> [MACs, ACs], whole batches
        self._cells = 0.0
        self._running = 1.0  # fraction of tokens running in the block being called
        self._cover = 1.0    # cells a packed block's rows stand for, per row (halted = silent)

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

    def _synapse_hook(self, module: nn.Module, inputs: tuple, out: torch.Tensor) -> None:
        if self.model.probing:
            return
        x = inputs[0].detach()
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1]
            flops = out.numel() * (module.in_channels // module.groups) * k
        else:
            flops = out.numel() * module.in_features
        # the head read after every timestep (timestep exit) is fed per step, not a T-step summary
        steps = self.T if module in self._summaries and not (module is self.model.head and x.dim() > 2) else 1
        ran = flops * steps  # T x FLOPs (eq. 11) of what this call stands for
        dense = ran * self._cover  # ... had the halted cells of a packed block run (silent)
        if module is self._first:
            paper = (ran, 0.0)  # real pixels: MAC, x T with SPS (T runs), once with I-SPS
        else:
            paper = (0.0, ran * float(x.abs().mean()))
        if module in self._rate_inputs:  # I-SPS rate map of T steps: AC
            self._add(module, dense, paper, dense * float(x.mean()))
        else:  # binary -> AC on the spikes; otherwise MAC at the dense FLOPs of running tokens
            self._add(module, dense, paper, flops * float(x.mean()), flops * self._running, _is_binary(x))

    def _matmul_hook(self, module: SpikeMatmul, inputs: tuple, out: torch.Tensor) -> None:
        if self.model.probing:
            return
        q, k, v = (t.detach() for t in inputs)  # [T', B, heads, K, d]
        Tp, B, heads, K, d = q.shape
        per = Tp * B * heads * K * (d * d if module.kind == "ssa" else d)
        fr_q, fr_k, fr_v = float(q.mean()), float(k.mean()), float(v.mean())
        sops = per * (min(fr_k, fr_v) + fr_q)
        self._add(module, 2 * per, (0.0, sops), sops)

    def _block_pre_hook(self, _block: Block, args: tuple, kwargs: dict) -> None:
        if self.model.probing:
            return
        mask = args[1] if len(args) > 1 else kwargs.get("mask")  # [T', B, K] keep-mask, a Packing, or None
        # packed blocks see their running rows and cap - R zero padding rows: the running share of
        # the rows is counted, and the dense FLOPs (the activity's denominator) still cover the
        # halted cells, as silent ones
        if isinstance(mask, Packing):
            self._running, self._cover = mask.R / mask.cap, mask.T * mask.B * mask.K / mask.cap
        else:
            self._running = 1.0 if mask is None else float(mask.float().mean())

    def _block_hook(self, *_args) -> None:
        self._running = self._cover = 1.0

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
            row = self.decisions.setdefault(DECISION_ROWS[output.method], [0.0, 0.0])
            row[0] += macs
            row[1] += acs
        self._cells += float(output.token_ratio) * B

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
