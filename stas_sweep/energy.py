"""Per-image energy of a spiking ViT, measured on real inputs (STAS appendix A, SPEC 2.6).

    E = E_MAC * MACs + E_AC * SOPs,     E_MAC = 4.6 pJ, E_AC = 0.9 pJ (45 nm, Horowitz 2014)

Every synaptic layer (convolution, linear layer, spiking attention product, head) is hooked
while the model runs, and each call is classified by what it actually received:

* binary spikes -> AC, SOPs = firing rate x dense FLOPs of that call (the call's batch already
  holds every timestep it ran, so this is T x fr x FLOPs of eq. 11);
* an I-SPS rate map (the mean of T spike maps, fed to the stem's later convolutions once) ->
  AC, SOPs = T x rate x dense FLOPs (a convolution is linear, so this equals the T spike maps);
* anything else (pixels, Spikformer's integer residual stream into q/k/v/fc1, the head's
  mean) -> MAC at dense FLOPs of the tokens still running (halted tokens are skipped, so they
  cost nothing there either; a running but silent token is still computed).

The attention products follow the Spikingformer counter: per head ``N d^2`` for ``k^T v``
gated by ``min(fr_k, fr_v)`` plus ``N d^2`` for ``q (k^T v)`` gated by ``fr_q`` (SDSA: ``N d``
each). The halting score is one MAC per scored token and cell. Halted tokens are zero, so
they count as silent in every firing rate.

Dense FLOPs count multiply-accumulates of the weights (padding included), the convention of
the published counters; spikingjelly's ``SynOpCounter`` counts exact weight uses instead
(smaller at padded borders), and agrees with this meter on token layers (see the tests).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from .models.blocks import Block, SpikeMatmul
from .models.packing import Packing
from .models.vit import SpikingViT

E_MAC_PJ = 4.6
E_AC_PJ = 0.9


@dataclass
class LayerEnergy:
    """One synaptic layer, per image, summed over every call (timesteps, cells)."""

    layer: str
    op: str                    # "MAC" or "AC"
    dense_flops: float         # multiply-accumulates had every input been dense
    firing_rate: float | None  # mean input spike rate (AC rows), halted tokens silent
    sops: float                # operations counted: SOPs (AC) or MACs actually run (MAC)
    energy_pj: float


@dataclass
class EnergyReport:
    energy_mj: float           # per image
    mac_ops: float             # per image
    ac_ops: float              # per image
    token_ratio: float
    images: int
    layers: list[LayerEnergy] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def table(self) -> str:
        head = f"{'layer':<32} {'op':<3} {'dense FLOPs':>14} {'fire rate':>9} {'ops':>14} {'pJ':>14}"
        rows = [head, "-" * len(head)]
        for r in self.layers:
            fr = "" if r.firing_rate is None else f"{r.firing_rate:.4f}"
            rows.append(f"{r.layer:<32} {r.op:<3} {r.dense_flops:>14,.0f} {fr:>9} {r.sops:>14,.0f} {r.energy_pj:>14,.0f}")
        rows.append(
            f"energy {self.energy_mj:.4f} mJ/image  (MAC {self.mac_ops:,.0f}, AC {self.ac_ops:,.0f}; "
            f"token ratio {self.token_ratio:.3f}; {self.images} images)"
        )
        return "\n".join(rows)


def _is_binary(x: torch.Tensor) -> bool:
    return bool(((x == 0) | (x == 1)).all())


class EnergyMeter:
    """Context manager that hooks a :class:`SpikingViT` and accumulates operation counts.

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
        self._rate_inputs = set(convs[1:]) if model.stem.integrate else set()
        self._names = {m: n for n, m in model.named_modules()}
        self._acc: OrderedDict[str, dict] = OrderedDict()
        self._handles: list = []
        self.images = 0
        self.halting_macs = 0.0
        self._cells = 0.0
        self._running = 1.0  # fraction of tokens running in the block being called

    # -- hooks ---------------------------------------------------------------------------
    def _add(self, module: nn.Module, op: str, dense: float, sops: float) -> None:
        a = self._acc.setdefault(self._names[module], {"op": op, "dense": 0.0, "sops": 0.0})
        a["dense"] += dense
        a["sops"] += sops
        if op == "MAC":
            a["op"] = "MAC"  # a layer that ever sees real input is reported as MAC

    def _synapse_hook(self, module: nn.Module, inputs: tuple, out: torch.Tensor) -> None:
        x = inputs[0].detach()
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1]
            dense = out.numel() * (module.in_channels // module.groups) * k
        else:
            dense = out.numel() * module.in_features
        if module in self._rate_inputs:  # I-SPS rate map of T steps
            self._add(module, "AC", dense * self.T, dense * self.T * float(x.mean()))
        elif _is_binary(x):
            self._add(module, "AC", dense, dense * float(x.mean()))
        else:
            self._add(module, "MAC", dense, dense * self._running)

    def _matmul_hook(self, module: SpikeMatmul, inputs: tuple, out: torch.Tensor) -> None:
        q, k, v = (t.detach() for t in inputs)  # [T', B, h, N, d]
        Tp, B, h, N, d = q.shape
        per = Tp * B * h * N * (d * d if module.kind == "ssa" else d)
        fr_q, fr_k, fr_v = float(q.mean()), float(k.mean()), float(v.mean())
        self._add(module, "AC", 2 * per, per * (min(fr_k, fr_v) + fr_q))

    def _block_pre_hook(self, _block: Block, args: tuple) -> None:
        mask = args[1] if len(args) > 1 else None  # [T', B, K] keep-mask, a Packing, or None
        # packed blocks see only their running rows, so every row they compute is counted
        self._running = 1.0 if mask is None or isinstance(mask, Packing) else float(mask.float().mean())

    def _block_hook(self, *_args) -> None:
        self._running = 1.0

    def __enter__(self) -> "EnergyMeter":
        for m in self.model.modules():
            if isinstance(m, Block):
                self._handles.append(m.register_forward_pre_hook(self._block_pre_hook))
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
        """Record the batch size, halting MACs and token ratio of one forward output."""
        B = output.logits.shape[0]
        self.images += B
        if output.halting_scores is not None:
            self.halting_macs += float(output.active_tokens.sum())  # one MAC per scored token-cell
        self._cells += float(output.token_ratio) * B

    # -- result ----------------------------------------------------------------------------
    def report(self) -> EnergyReport:
        if self.images == 0:
            raise RuntimeError("EnergyMeter.report(): no forward output was observed")
        n = self.images
        rows = []
        for name, a in self._acc.items():
            e = (E_MAC_PJ if a["op"] == "MAC" else E_AC_PJ) * a["sops"] / n
            fr = a["sops"] / a["dense"] if a["op"] == "AC" and a["dense"] else None
            rows.append(LayerEnergy(name, a["op"], a["dense"] / n, fr, a["sops"] / n, e))
        if self.halting_macs:
            hm = self.halting_macs / n
            rows.append(LayerEnergy("halting_score", "MAC", hm, None, hm, E_MAC_PJ * hm))
        mac = sum(r.sops for r in rows if r.op == "MAC")
        ac = sum(r.sops for r in rows if r.op == "AC")
        return EnergyReport(
            energy_mj=sum(r.energy_pj for r in rows) * 1e-9,
            mac_ops=mac, ac_ops=ac, token_ratio=self._cells / n, images=n, layers=rows,
        )


@torch.no_grad()
def measure_energy(model: SpikingViT, x: torch.Tensor, epsilon: float | None = None) -> EnergyReport:
    """Energy per image of ``model`` on the batch ``x`` (eval mode, no gradients)."""
    was_training = model.training
    model.eval()
    try:
        with EnergyMeter(model) as meter:
            meter.observe(model(x, epsilon=epsilon))
        return meter.report()
    finally:
        model.train(was_training)
