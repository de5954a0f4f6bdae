"""The energy meter against appendix A's closed formula and spikingjelly's op counter."""

import pytest
import torch
from spikingjelly.activation_based.op_counter import DispatchCounterMode, SynOpCounter

from stas_sweep import create_model
from stas_sweep.energy import E_AC_PJ, E_MAC_PJ, EnergyMeter, measure_energy
from stas_sweep.models.diagnostics import calibrate_batchnorm
from stas_sweep.models.stems import pool_stages

FAMILIES = ["spikformer", "spikingformer", "spikedriven"]


def _model(family, stem, halting=None, seed=0):
    torch.manual_seed(seed)
    x = torch.rand(4, 3, 16, 16)
    m = create_model(f"{family}-2-32", img_size=16, stem=stem, halting=halting)
    calibrate_batchnorm(m, x)
    return m.eval(), x


def closed_formula_mj(m, report, attn_rates):
    """E = E_MAC * FLOPs_first_conv (x T with SPS) + E_AC * sum_l T * fr_l * FLOPs_l
    (+ E_MAC * T * FLOPs for layers fed by a non-binary stream, + the head once)."""
    T, D, L, K, C = m.timesteps, m.embed_dim, m.depth, m.num_tokens, m.num_classes
    h = m.blocks[0].attn.num_heads
    d = D // h
    S, n_pool = m.img_size, pool_stages(m.img_size)
    first_pool = 4 - n_pool
    widths = [m.in_channels, D // 8, D // 4, D // 2, D, D]
    fr = {r.layer: r.firing_rate for r in report.layers}
    stem_convs = [n for n, mod in m.stem.named_modules() if isinstance(mod, torch.nn.Conv2d)]

    pj = 0.0
    for i, name in enumerate(stem_convs):
        res = S // 2 ** (n_pool if i == 4 else max(0, i - first_pool))
        flops = 9 * widths[i] * widths[i + 1] * res * res  # per timestep
        if i == 0:
            pj += E_MAC_PJ * flops * (T if m.stem_mode == "sps" else 1)
        else:
            pj += E_AC_PJ * T * fr[f"stem.{name}"] * flops
    for l in range(L):
        layers = {"attn.q": D * D, "attn.k": D * D, "attn.v": D * D, "attn.proj": D * D,
                  "mlp.fc1": 4 * D * D, "mlp.fc2": 4 * D * D}
        for layer, per_token in layers.items():
            flops = K * per_token
            rate = fr[f"blocks.{l}.{layer}.fc"]
            if m.family == "spikformer" and layer in ("attn.q", "attn.k", "attn.v", "mlp.fc1"):
                pj += E_MAC_PJ * T * flops  # the integer residual stream is not binary
            else:
                pj += E_AC_PJ * T * rate * flops
        q, k, v = attn_rates[l]
        per = h * K * (d * d if m.family != "spikedriven" else d)
        pj += E_AC_PJ * T * per * (min(k, v) + q)
    if m.family == "spikedriven":
        pj += E_AC_PJ * T * fr["head"] * D * C
    else:
        pj += E_MAC_PJ * D * C
    return pj * 1e-9


def _attention_rates(m, x):
    rates = {l: {} for l in range(m.depth)}
    hooks = []
    for l, b in enumerate(m.blocks):
        for name in ("q_lif", "k_lif", "v_lif"):
            def fn(_mod, _i, out, l=l, name=name):
                rates[l].setdefault(name, []).append(out.detach())
            hooks.append(getattr(b.attn, name).register_forward_hook(fn))
    with torch.no_grad():
        m(x)
    for hk in hooks:
        hk.remove()
    return {l: [float(torch.cat(r[n]).mean()) for n in ("q_lif", "k_lif", "v_lif")] for l, r in rates.items()}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("stem", ["sps", "isps"])
def test_meter_agrees_with_closed_formula_on_static_model(family, stem):
    m, x = _model(family, stem)
    report = measure_energy(m, x)
    assert report.ac_ops > 0 and report.token_ratio == 1.0
    expected = closed_formula_mj(m, report, _attention_rates(m, x))
    assert report.energy_mj == pytest.approx(expected, rel=0.01)
    assert report.energy_mj == pytest.approx(sum(r.energy_pj for r in report.layers) * 1e-9)


def test_first_conv_counts_t_times_with_sps_once_with_isps():
    sps = measure_energy(*_model("spikingformer", "sps"))
    isps = measure_energy(*_model("spikingformer", "isps"))
    first = lambda r: next(x for x in r.layers if x.layer == "stem.convs.0.0")  # noqa: E731
    assert first(sps).op == first(isps).op == "MAC"
    assert first(sps).sops == pytest.approx(4 * first(isps).sops)


def test_token_layers_agree_with_spikingjelly_synop_counter():
    m, x = _model("spikingformer", "isps")
    counter = SynOpCounter()
    with torch.no_grad(), DispatchCounterMode([counter]), EnergyMeter(m) as meter:
        meter.observe(m(x))
    counts = counter.get_counts()
    report = meter.report()
    checked = 0
    for row in report.layers:
        if row.layer.startswith("blocks.") and row.layer.endswith(".fc"):
            exact = sum(counts.get(f"SpikingViT.{row.layer}", {}).values())
            assert row.sops * report.images == pytest.approx(exact), row.layer
            checked += 1
    assert checked == 12


@pytest.mark.parametrize("family", FAMILIES)
def test_halting_lowers_energy(family):
    static, x = _model(family, "isps")
    halting, _ = _model(family, "isps", halting=dict(alpha=5.0, beta=-5.0, epsilon=0.05))
    halting.load_state_dict(static.state_dict())
    e_static = measure_energy(static, x)
    e_halt = measure_energy(halting, x)
    e_more = measure_energy(halting, x, epsilon=0.6)
    assert e_halt.token_ratio < 1.0
    assert e_more.token_ratio <= e_halt.token_ratio
    assert e_halt.energy_mj < e_static.energy_mj
    assert e_more.energy_mj <= e_halt.energy_mj + 1e-12
    overhead = next(r for r in e_halt.layers if r.layer == "halting_score")
    # one MAC per scored token and cell: the active cells of the grid
    assert overhead.sops == pytest.approx(e_halt.token_ratio * 4 * 2 * 16)
