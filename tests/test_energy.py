"""The energy meter against appendix A's closed formula and spikingjelly's op counter."""

import pytest
import torch
from spikingjelly.activation_based.op_counter import DispatchCounterMode, SynOpCounter

from stas_sweep import create_model
from stas_sweep.energy import E_AC_PJ, E_MAC_PJ, EnergyMeter, analytic_energy, analytic_summary, layer_ops, measure_energy
from stas_sweep.models.diagnostics import calibrate_batchnorm
from stas_sweep.models.stems import pool_stages

FAMILIES = ["spikformer", "spikingformer", "spikedriven"]


def _model(family, stem, halting=None, seed=0):
    torch.manual_seed(seed)
    x = torch.rand(4, 3, 16, 16)
    m = create_model(f"{family}-2-32", img_size=16, stem=stem, halting=halting)
    calibrate_batchnorm(m, x)
    return m.eval(), x


def closed_formula_mj(m, activity, attn_calls, convention="paper", active=None):
    """Appendix A's closed formula, per image, from the model's layer shapes.

    ``activity(layer)``: mean absolute input of a synaptic layer (binary spikes: firing rate;
    halted tokens silent). ``attn_calls[l]``: one ``(fr_q, fr_k, fr_v)`` per call of block l's
    attention product (one call per forward: each block runs once on all T). ``active``: the
    model's ``active_tokens`` ``[B, T, L]`` with halting, else None.

    paper:  E = E_MAC * FLOPs_first_conv (x T with SPS) + E_AC * sum_l T_l * act_l * FLOPs_l
            with T_l = T for the blocks, the head and SPS's stem, 1 for I-SPS's later stem
            convolutions (one pass); + E_MAC * (D + 2) per scored token-cell of A-SSA
    strict: the same, except I-SPS's later stem convolutions at T passes, Spikformer's
            q/k/v/fc1 (integer stream) at E_MAC * T * FLOPs of the running tokens, and the
            real-valued head at E_MAC * FLOPs once.
    """
    T, D, L, K, C = m.timesteps, m.embed_dim, m.depth, m.num_tokens, m.num_classes
    h = m.blocks[0].attn.num_heads
    d = D // h
    S, n_pool = m.img_size, pool_stages(m.img_size)
    first_pool = 4 - n_pool
    widths = [m.in_channels, D // 8, D // 4, D // 2, D, D]
    stem_convs = [n for n, mod in m.stem.named_modules() if isinstance(mod, torch.nn.Conv2d)]
    strict = convention == "strict"
    # fraction of tokens running in block l, over images and timesteps
    running = [1.0] * L if active is None else [float(active[:, :, l].mean()) / K for l in range(L)]

    pj = 0.0
    for i, name in enumerate(stem_convs):
        res = S // 2 ** (n_pool if i == 4 else max(0, i - first_pool))
        flops = 9 * widths[i] * widths[i + 1] * res * res  # per timestep
        if i == 0:
            pj += E_MAC_PJ * flops * (T if m.stem_mode == "sps" else 1)
        else:  # I-SPS runs once; strict counts its rate map as the T spike maps behind it
            passes = T if (m.stem_mode == "sps" or strict) else 1
            pj += E_AC_PJ * passes * activity(f"stem.{name}") * flops
    for l in range(L):
        layers = {"attn.q": D * D, "attn.k": D * D, "attn.v": D * D, "attn.proj": D * D,
                  "mlp.fc1": 4 * D * D, "mlp.fc2": 4 * D * D}
        for layer, per_token in layers.items():
            flops = K * per_token
            if strict and m.family == "spikformer" and layer in ("attn.q", "attn.k", "attn.v", "mlp.fc1"):
                pj += E_MAC_PJ * T * flops * running[l]  # the integer residual stream is not binary
            else:
                pj += E_AC_PJ * T * activity(f"blocks.{l}.{layer}.fc") * flops
        per = h * K * (d * d if m.family != "spikedriven" else d)
        gate = sum(min(k, v) + q for q, k, v in attn_calls[l]) / len(attn_calls[l])
        pj += E_AC_PJ * T * per * gate
    if strict and m.family != "spikedriven":
        pj += E_MAC_PJ * D * C  # the head reads a real mean, once
    else:
        pj += E_AC_PJ * T * activity("head") * D * C
    if active is not None:  # eqs. 3, 4 and 8: D + 2 MACs per scored token-cell
        pj += E_MAC_PJ * (D + 2) * float(active.sum()) / active.shape[0]
    return pj * 1e-9


def _attention_calls(m, x):
    """(fr_q, fr_k, fr_v) of every call of each block's attention product, and the output."""
    calls = {l: [] for l in range(m.depth)}
    hooks = [
        b.attn.matmul.register_forward_hook(
            lambda _mod, inp, _out, l=l: calls[l].append(tuple(float(t.mean()) for t in inp)))
        for l, b in enumerate(m.blocks)
    ]
    with torch.no_grad():
        out = m(x)
    for hk in hooks:
        hk.remove()
    return calls, out


def _activity(report):
    act = {r.layer: r.activity for r in report.layers}
    return lambda layer: act[layer]


def _halting_model(family, stem):
    static, x = _model(family, stem)
    m, _ = _model(family, stem, halting=dict(alpha=5.0, beta=-5.0, epsilon=0.05))
    m.load_state_dict(static.state_dict())
    return m.eval(), x


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("stem", ["sps", "isps"])
@pytest.mark.parametrize("halting", [False, True], ids=["static", "halting"])
def test_meter_agrees_with_closed_formula_in_both_conventions(family, stem, halting):
    m, x = _halting_model(family, stem) if halting else _model(family, stem)
    report = measure_energy(m, x)
    calls, out = _attention_calls(m, x)
    active = out.active_tokens if halting else None
    assert report.ac_ops > 0 and report.ac_ops_strict > 0
    assert all(len(c) == 1 for c in calls.values())  # one block call per forward
    assert (report.token_ratio < 1.0) if halting else (report.token_ratio == 1.0)
    for convention, measured in (("paper", report.energy_mj), ("strict", report.energy_strict_mj)):
        expected = closed_formula_mj(m, _activity(report), calls, convention, active)
        assert measured == pytest.approx(expected, rel=1e-3), convention
    assert report.energy_mj == pytest.approx(sum(r.energy_pj for r in report.layers) * 1e-9)
    assert report.energy_strict_mj == pytest.approx(sum(r.energy_strict_pj for r in report.layers) * 1e-9)
    assert report.energy("strict") == report.energy_strict_mj and report.energy("paper") == report.energy_mj
    # only spikformer's blocks read a non-binary stream: elsewhere the conventions agree there
    if m.family != "spikformer":
        blocks = [r for r in report.layers if r.layer.startswith("blocks.")]
        assert all(r.op == r.op_strict == "AC" and r.ops == r.ops_strict for r in blocks)


def test_closed_formula_at_rate_025_is_the_analytic_mode():
    """Spikformer-4-384, CIFAR-100, T=4, I-SPS, static, every input activity 0.25: the closed
    formula and the analytic mode (meta device, the meter's hooks) agree in both conventions;
    the strict one stays near 5.5 mJ, since q/k/v/fc1 read the integer residual stream at MAC."""
    m = create_model("spikformer-4-384", num_classes=100, img_size=32, timesteps=4, stem="isps")
    calls = {l: [(0.25, 0.25, 0.25)] for l in range(m.depth)}
    report = analytic_energy("spikformer-4-384", 0.25, num_classes=100)
    assert report.energy_mj == pytest.approx(closed_formula_mj(m, lambda _layer: 0.25, calls, "paper"), rel=1e-9)
    assert report.energy_strict_mj == pytest.approx(closed_formula_mj(m, lambda _layer: 0.25, calls, "strict"), rel=1e-9)
    assert report.energy_strict_mj > 5.0


def test_uniform_activity_closed_formula_matches_the_meter():
    """The activity-0.25 formula is the meter's: a tiny model whose every synaptic input but
    the pixels is forced to 0.25 reads the closed formula's paper-convention figure."""
    m, x = _model("spikformer", "isps")
    first = next(mod for mod in m.stem.modules() if isinstance(mod, torch.nn.Conv2d))
    hooks = [mod.register_forward_pre_hook(lambda _mod, inputs: (torch.full_like(inputs[0], 0.25),))
             for mod in m.modules() if isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear)) and mod is not first]
    try:
        report = measure_energy(m, x)
        calls, _ = _attention_calls(m, x)
    finally:
        for hk in hooks:
            hk.remove()
    assert all(r.activity == pytest.approx(0.25) for r in report.layers
               if r.activity is not None and not r.layer.endswith("matmul"))
    assert report.energy_mj == pytest.approx(closed_formula_mj(m, lambda _l: 0.25, calls, "paper"), rel=1e-3)


def test_first_conv_counts_t_times_with_sps_once_with_isps():
    sps = measure_energy(*_model("spikingformer", "sps"))
    isps = measure_energy(*_model("spikingformer", "isps"))
    first = lambda r: next(x for x in r.layers if x.layer == "stem.convs.0.0")  # noqa: E731
    for r in (sps, isps):
        assert first(r).op == first(r).op_strict == "MAC"
    assert first(sps).ops == pytest.approx(4 * first(isps).ops)
    assert first(sps).ops_strict == pytest.approx(4 * first(isps).ops_strict)


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
            assert row.ops * report.images == pytest.approx(exact), row.layer
            assert row.ops_strict == pytest.approx(row.ops), row.layer  # spikingformer: binary inputs
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
    for key in ("energy_mj", "energy_strict_mj"):
        # the blocks always cost less; A-SSA's own D + 2 MACs per cell can outweigh a small
        # saving in this tiny untrained model, not at epsilon 0.6
        blocks = lambda r, k=key: sum(getattr(x, "energy_pj" if k == "energy_mj" else "energy_strict_pj")  # noqa: E731
                                      for x in r.layers if x.layer.startswith("blocks."))
        assert blocks(e_halt) < blocks(e_static)
        assert getattr(e_more, key) < getattr(e_static, key)
        assert getattr(e_more, key) <= getattr(e_halt, key) + 1e-12
    overhead = next(r for r in e_halt.layers if r.layer == "halting_score")
    # D + 2 MACs per scored token and cell (eqs. 3, 4, 8): the active cells of the grid, D = 32
    assert overhead.op == overhead.op_strict == "MAC"
    assert overhead.ops == overhead.ops_strict == pytest.approx(e_halt.token_ratio * 4 * 2 * 16 * 34)


# -- the paper's convention: I-SPS's stem once, the blocks per timestep (SPEC 2.6) ----------------

def _stem_blocks_mj(report):
    stem = sum(r.energy_pj for r in report.layers if r.layer.startswith("stem.")) * 1e-9
    blocks = sum(r.energy_pj for r in report.layers if r.layer.startswith("blocks.")) * 1e-9
    return stem, blocks


def test_isps_stem_energy_does_not_change_with_t_and_blocks_are_linear_in_t_and_ratio():
    """Analytic mode, tiny model: the I-SPS stem is one pass whatever T; the blocks' energy is
    T x and Q x that of one timestep at full ratio."""
    shape = dict(img_size=16, timesteps=1)
    stem1, blocks1 = _stem_blocks_mj(analytic_energy("spikformer-2-32", 0.3, **shape))
    for T in (2, 4, 7):
        stem, blocks = _stem_blocks_mj(analytic_energy("spikformer-2-32", 0.3, img_size=16, timesteps=T))
        assert stem == pytest.approx(stem1, rel=1e-12), T
        assert blocks == pytest.approx(T * blocks1, rel=1e-12), T
        for Q in (0.2, 0.5):
            _, blocks_q = _stem_blocks_mj(analytic_energy("spikformer-2-32", 0.3, Q, img_size=16, timesteps=T))
            assert blocks_q == pytest.approx(Q * T * blocks1, rel=1e-12), (T, Q)
    # SPS runs its stem on every timestep: T x (the first convolution too)
    sps1, _ = _stem_blocks_mj(analytic_energy("spikformer-2-32", 0.3, stem="sps", **shape))
    sps4, _ = _stem_blocks_mj(analytic_energy("spikformer-2-32", 0.3, stem="sps", img_size=16, timesteps=4))
    assert sps4 == pytest.approx(4 * sps1, rel=1e-12)


def test_measured_isps_stem_energy_does_not_change_with_t():
    """Measured mode: the same weights and image at T = 2 and T = 4 give the same stem rows
    (I-SPS spikes depend on T, so the later convolutions' input is forced to 0.25)."""
    rows = {}
    for T in (2, 4):
        torch.manual_seed(0)
        m = create_model("spikingformer-1-16", img_size=16, timesteps=T).eval()
        first = next(mod for mod in m.stem.modules() if isinstance(mod, torch.nn.Conv2d))
        hooks = [mod.register_forward_pre_hook(lambda _mod, inputs: (torch.full_like(inputs[0], 0.25),))
                 for mod in m.stem.modules() if isinstance(mod, torch.nn.Conv2d) and mod is not first]
        report = measure_energy(m, torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)))
        for hk in hooks:
            hk.remove()
        rows[T] = {r.layer: r.energy_pj for r in report.layers if r.layer.startswith("stem.")}
    assert rows[2] == pytest.approx(rows[4], rel=1e-12) and len(rows[2]) == 5


def test_halting_score_energy_is_linear_in_the_cells_run():
    """A-SSA's own MACs: D + 2 per scored token-cell, so Q x T x L x K x (D + 2) x E_MAC."""
    for Q in (0.1, 0.4, 1.0):
        report = analytic_energy("spikingformer-2-32", 0.2, Q, img_size=16)
        row = next(r for r in report.layers if r.layer == "halting_score")
        assert row.op == "MAC"
        assert row.energy_pj == pytest.approx(E_MAC_PJ * Q * 4 * 2 * 16 * (32 + 2), rel=1e-12), Q
    static = analytic_energy("spikingformer-2-32", 0.2, img_size=16)
    assert not any(r.layer == "halting_score" for r in static.layers)


def test_analytic_and_measured_modes_share_the_count_of_a_layer_counted_by_hand():
    """stem.convs.1 of spikformer-4-384 on 32x32: a 3x3 convolution 48 -> 96 channels at 32x32,
    9 * 48 * 96 * 32 * 32 = 42,467,328 FLOPs; I-SPS reads its rate map once, so at rate 0.25:
    0.25 x 42,467,328 SOPs x 0.9 pJ = 9,555,148.8 pJ. Both modes give that row."""
    hand_pj = 0.25 * 9 * 48 * 96 * 32 * 32 * 0.9
    assert layer_ops(9 * 48 * 96 * 32 * 32, 0.25)[1] * E_AC_PJ == pytest.approx(hand_pj)
    analytic = analytic_energy("spikformer-4-384", 0.25)
    row = next(r for r in analytic.layers if r.layer == "stem.convs.1.0")
    assert row.energy_pj == pytest.approx(hand_pj, rel=1e-12) and row.dense_flops == 9 * 48 * 96 * 32 * 32
    m = create_model("spikformer-4-384", img_size=32).eval()
    target = m.stem.convs[1][0]
    hk = target.register_forward_pre_hook(lambda _mod, inputs: (torch.full_like(inputs[0], 0.25),))
    try:
        measured = measure_energy(m, torch.rand(1, 3, 32, 32))
    finally:
        hk.remove()
    row = next(r for r in measured.layers if r.layer == "stem.convs.1.0")
    assert row.energy_pj == pytest.approx(hand_pj, rel=1e-6)


def test_spikformer_4_384_figures_of_the_issue():
    """Issue 22's Done-when, derived from the count (nothing tuned): spikformer-4-384, 32x32,
    10 classes, T = 4, I-SPS. At rate 0.25, E(ratio 0.42) / E(ratio 1.0) lies in [0.50, 0.60];
    the static energy is at most Table 3's 0.74 mJ at rate 0.25 and at least that at 0.40; the
    stem is about 0.21 of the static energy."""
    at = analytic_summary("spikformer-4-384", 0.25, 0.42)
    full = analytic_summary("spikformer-4-384", 0.25, 1.0)
    assert 0.50 <= at["energy_mj"] / full["energy_mj"] <= 0.60, (at["energy_mj"], full["energy_mj"])
    assert at["static_energy_mj"] <= 0.74 <= analytic_energy("spikformer-4-384", 0.40).energy_mj
    static = analytic_summary("spikformer-4-384", 0.25)
    assert static["stem_share"] == pytest.approx(0.21, abs=0.01)
    assert sum(r["energy_pj"] for r in at["layers"]) * 1e-9 == pytest.approx(at["energy_mj"], rel=1e-12)


@pytest.mark.parametrize("rate, ratio", [(-0.1, 0.5), (1.01, 0.5), (0.2, 0.0), (0.2, 1.5)])
def test_analytic_mode_rejects_rates_and_ratios_outside_their_range(rate, ratio):
    with pytest.raises(ValueError, match="must lie in"):
        analytic_energy("spikformer-1-16", rate, ratio, img_size=16)
