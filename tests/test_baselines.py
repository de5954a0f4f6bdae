"""The paper's baselines (halting.method token_drop and timestep_exit): forward on every family,
energy counted for what runs, config and search-space keys, the paper's figures, and one
baselines sweep end to end."""

import json
import math
import os
from pathlib import Path

import pytest
import torch
from spikingjelly.activation_based import functional

from stas_sweep import create_model
from stas_sweep.energy import E_AC_PJ, E_MAC_PJ, measure_energy
from stas_sweep.models.blocks import Block
from stas_sweep.models.diagnostics import calibrate_batchnorm
from stas_sweep.models.halting import KNOBS, normalised_entropy
from stas_sweep.models.packing import Packing

FAMILIES = ["spikformer", "spikingformer", "spikedriven"]


def _static(family, stem, seed=0, timesteps=4):
    torch.manual_seed(seed)
    x = torch.rand(6, 3, 16, 16)
    m = create_model(f"{family}-2-32", img_size=16, stem=stem, timesteps=timesteps)
    calibrate_batchnorm(m, x)
    return m.eval(), x


def _with(static, halting, timesteps=None):
    m = create_model(f"{static.family}-2-32", img_size=16, stem=static.stem_mode,
                     timesteps=timesteps or static.timesteps, halting=halting)
    m.load_state_dict(static.state_dict())
    return m.eval()


def _block_rows(m, x, **kw):
    """Rows each block call ran (a Packing's R, or every cell of a dense call)."""
    rows = []

    def hook(_mod, args):
        mask = args[1] if len(args) > 1 else None
        rows.append(mask.R if isinstance(mask, Packing) else args[0].shape[0] * args[0].shape[1] * args[0].shape[2])

    hooks = [b.register_forward_pre_hook(hook) for b in m.modules() if isinstance(b, Block)]
    try:
        with torch.no_grad():
            out = m(x, **kw)
    finally:
        for h in hooks:
            h.remove()
    return rows, out


# -- token dropping ------------------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("stem", ["sps", "isps"])
@pytest.mark.parametrize("keep", [0.5, 0.3, 1.0])
def test_token_drop_runs_exactly_the_ratio_asked(family, stem, keep):
    static, x = _static(family, stem)
    m = _with(static, {"method": "token_drop", "keep_ratio": keep})
    T, B, K, L = m.timesteps, x.shape[0], m.num_tokens, m.depth
    n = max(1, round(keep * K))
    rows, out = _block_rows(m, x)
    assert rows == [T * B * n] * L  # every block ran n tokens per image at every timestep
    assert float(out.token_ratio) == n / K and out.method == "token_drop"
    assert (out.active_tokens == n).all() and float(out.ponder_loss) == 0.0
    assert (out.cells_processed.sum(1) == T * L * n).all()
    # the same tokens at every timestep
    assert (out.halting_blocks == out.halting_blocks[:, :1]).all()
    # packed and dense (masked) execution agree
    m.packed_halting = False
    with torch.no_grad():
        dense = m(x)
    torch.testing.assert_close(out.logits, dense.logits, rtol=1e-4, atol=1e-5)
    if keep == 1.0:
        torch.testing.assert_close(out.logits, static(x).logits, rtol=1e-4, atol=1e-5)


def test_token_drop_keeps_the_tokens_with_most_input_spikes():
    static, x = _static("spikformer", "sps")
    m = _with(static, {"method": "token_drop", "keep_ratio": 0.25})
    seen = {}
    first = m.blocks[0]
    handle = first.register_forward_pre_hook(lambda _m, args: seen.update(pk=args[1]))
    with torch.no_grad():
        tokens = m.stem(x)  # [T, B, K, D] (SPS)
        m(x)
    handle.remove()
    pk = seen["pk"]
    n = max(1, round(0.25 * m.num_tokens))
    score = tokens.abs().sum((0, 3))  # spike count of block 1's input per token, [B, K]
    kept = pk.unpack(torch.ones(pk.cap, 1))[0, ..., 0].bool()  # [B, K] the tokens that run at t = 0
    for b in range(x.shape[0]):
        assert int(kept[b].sum()) == n
        assert score[b][kept[b]].min() >= score[b][~kept[b]].max()


# -- timestep exit ---------------------------------------------------------------------------

def _by_hand_exits(static, x, threshold):
    """Exit steps by hand from the static model: the last block's output, the head read after
    every timestep, running means, softmax entropy over log(C)."""
    out_blocks = {}
    h = static.blocks[-1].register_forward_hook(lambda _m, _i, o: out_blocks.setdefault("x", o))
    with torch.no_grad():
        static(x)
    h.remove()
    rep = out_blocks["x"].mean(2)  # [T, B, D]
    if static.head_lif is not None:
        functional.reset_net(static.head_lif)  # a fresh head LIF, as in a forward
    with torch.no_grad():
        z = static.head(rep if static.head_lif is None else static.head_lif(rep.contiguous()))  # [T, B, C]
    T, B, C = z.shape
    running = torch.stack([z[: t + 1].mean(0) for t in range(T)])
    p = torch.softmax(running, -1)
    H = -(p * p.log()).sum(-1) / math.log(C)  # [T, B]
    exits = []
    for b in range(B):
        e = next((t + 1 for t in range(T) if H[t, b] < threshold), T)
        exits.append(e)
    return exits, running, H


def _split_threshold(H):
    """A threshold midway between two entropies (no image sits on it) at which the images stop
    at different timesteps."""
    values = sorted(set(H.flatten().tolist()))
    mids = [(a + b) / 2 for a, b in zip(values, values[1:]) if b - a > 1e-5]
    for thr in sorted(mids, key=lambda v: abs(v - sum(values) / len(values))):
        T = H.shape[0]
        exits = {next((t for t in range(T) if H[t, b] < thr), T) for b in range(H.shape[1])}
        if len(exits) > 1:
            return thr
    raise AssertionError("no threshold splits these images")


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("stem", ["sps", "isps"])
def test_timestep_exit_stops_exactly_when_the_entropy_test_says(family, stem):
    static, x = _static(family, stem)
    m = _with(static, {"method": "timestep_exit", "exit_threshold": 0.5})
    _, _, H = _by_hand_exits(static, x, 1.0)
    thr = _split_threshold(H)
    exits, running, _ = _by_hand_exits(static, x, thr)
    with torch.no_grad():
        out = m(x, knob=thr)
    assert out.exit_steps.tolist() == exits and len(set(exits)) > 1
    B = x.shape[0]
    torch.testing.assert_close(out.logits, running[torch.tensor(exits) - 1, torch.arange(B)], rtol=1e-4, atol=1e-5)
    assert float(out.token_ratio) == pytest.approx(sum(exits) / (B * m.timesteps))
    # threshold 0: never early; the logits are the static model's
    with torch.no_grad():
        full = m(x, knob=0.0)
    assert (full.exit_steps == m.timesteps).all()
    torch.testing.assert_close(full.logits, static(x).logits, rtol=1e-4, atol=1e-5)
    # training runs the static model on all T
    m.train()
    assert m(x).exit_steps is None


def test_normalised_entropy_bounds():
    assert float(normalised_entropy(torch.zeros(10))) == pytest.approx(1.0)
    assert float(normalised_entropy(torch.tensor([100.0, 0.0, 0.0]))) == pytest.approx(0.0, abs=1e-6)


# -- energy: what ran, against closed formulas ------------------------------------------------

def test_token_drop_energy_closed_formula():
    """Spikformer, paper and strict conventions: each block layer's dense FLOPs are the static
    model's; strict q/k/v/fc1 (integer stream, MAC) cost T * n * fan-in * fan-out for the n kept
    tokens; paper: block 1's q costs (sum of |input| over the kept tokens) * fan-out ACs; the
    score is one AC per block-input value."""
    static, x = _static("spikformer", "isps")
    m = _with(static, {"method": "token_drop", "keep_ratio": 0.5})
    T, K, D, L, B = m.timesteps, m.num_tokens, m.embed_dim, m.depth, x.shape[0]
    n = round(0.5 * K)
    seen = {}
    handle = m.blocks[0].register_forward_pre_hook(lambda _m, args: seen.update(rows=args[0], pk=args[1]))
    rep = measure_energy(m, x)
    handle.remove()
    assert seen["pk"].R == T * B * n
    q0 = next(r for r in rep.layers if r.layer == "blocks.0.attn.q.fc")
    assert q0.ops == pytest.approx(float(seen["rows"].abs().sum()) * D / B, rel=1e-5)
    base = {r.layer: r for r in measure_energy(static, x).layers}
    rows = {r.layer: r for r in rep.layers}
    for l in range(L):
        for layer, fan in (("attn.q", D * D), ("attn.k", D * D), ("attn.v", D * D), ("mlp.fc1", 4 * D * D)):
            r = rows[f"blocks.{l}.{layer}.fc"]
            assert r.dense_flops == pytest.approx(base[r.layer].dense_flops)
            assert r.op_strict == "MAC" and r.ops_strict == pytest.approx(T * n * fan)
            assert r.ops == pytest.approx(r.activity * r.dense_flops)
    score = rows["token_score"]
    assert score.op == score.op_strict == "AC" and score.ops == pytest.approx(L * T * K * D)
    total = sum(r.energy_pj for r in rep.layers) * 1e-9
    assert rep.energy_mj == pytest.approx(total)
    assert rep.energy_mj < measure_energy(static, x).energy_mj


@pytest.mark.parametrize("family", ["spikformer", "spikedriven"])
def test_timestep_exit_energy_counts_the_timesteps_run(family):
    """SPS: an image that exits at e costs what the static model built with T = e costs on it
    (LIF neurons are causal), layer by layer, plus its exit test (per timestep run: C ACs and
    2C MACs); the decision pass is not counted."""
    static, x = _static(family, "sps")
    m = _with(static, {"method": "timestep_exit", "exit_threshold": 0.5})
    _, _, H = _by_hand_exits(static, x, 1.0)
    thr = _split_threshold(H)
    rep = measure_energy(m, x, knob=thr)
    with torch.no_grad():
        e = m(x, knob=thr).exit_steps
    B, C = x.shape[0], m.num_classes
    expected_pj = {}
    for steps in sorted(set(e.tolist())):
        idx = (e == steps).nonzero()[:, 0]
        short = _with(static, None, timesteps=steps)
        for r in measure_energy(short, x[idx]).layers:
            expected_pj[r.layer] = expected_pj.get(r.layer, 0.0) + r.energy_pj * len(idx) / B
    rows = {r.layer: r for r in rep.layers}
    for name, pj in expected_pj.items():
        assert rows[name].energy_pj == pytest.approx(pj, rel=1e-4), name
    run = float(e.sum()) / B
    assert rows["exit_test"].energy_pj == pytest.approx((2 * C * E_MAC_PJ + C * E_AC_PJ) * run)
    assert rep.energy_mj == pytest.approx((sum(expected_pj.values()) + rows["exit_test"].energy_pj) * 1e-9, rel=1e-4)
    assert rep.token_ratio == pytest.approx(run / m.timesteps)


def test_timestep_exit_with_isps_counts_the_stem_once_and_blocks_per_timestep_run():
    static, x = _static("spikingformer", "isps")
    m = _with(static, {"method": "timestep_exit", "exit_threshold": 1.0})  # every image stops at t = 1
    rep = {r.layer: r for r in measure_energy(m, x).layers}
    full = {r.layer: r for r in measure_energy(static, x).layers}
    for name, r in full.items():
        if name.startswith("stem."):
            assert rep[name].ops == pytest.approx(r.ops)  # the one-pass stem ran in full
        elif name.startswith("blocks."):
            assert rep[name].dense_flops == pytest.approx(r.dense_flops / m.timesteps)


# -- config, search space, evaluation ---------------------------------------------------------

def test_config_method_and_knob_keys(tiny_config):
    from stas_sweep.train.config import ConfigError, config_from_dict

    cfg = config_from_dict({**tiny_config, "halting": {"method": "token_drop", "keep_ratio": 0.6}})
    assert cfg.halting.model_kwargs(cfg.model.name) == {"method": "token_drop", "keep_ratio": 0.6}
    cfg = config_from_dict({**tiny_config, "halting": {"method": "timestep_exit", "exit_threshold": 0.3}})
    assert cfg.halting.model_kwargs(cfg.model.name) == {"method": "timestep_exit", "exit_threshold": 0.3}
    assert config_from_dict({**tiny_config, "halting": {}}).halting.model_kwargs("spikingformer-2-32")["epsilon"] == 0.01
    with pytest.raises(ConfigError, match="halting.method is 'drop'; accepted values: stas, token_drop, timestep_exit"):
        config_from_dict({**tiny_config, "halting": {"method": "drop"}}, "f.yaml")
    with pytest.raises(ConfigError, match=r"f.yaml: halting.keep_ratio must be > 0.0, got 0.0"):
        config_from_dict({**tiny_config, "halting": {"method": "token_drop", "keep_ratio": 0.0}}, "f.yaml")
    with pytest.raises(ValueError, match="unknown halting keys \\['alpha'\\] for method token_drop"):
        create_model("spikformer-1-16", halting={"method": "token_drop", "alpha": 1.0})
    with pytest.raises(ValueError, match="epsilon applies to A-SSA"):
        create_model("spikformer-1-16", halting={"method": "token_drop"})(torch.rand(1, 3, 32, 32), epsilon=0.1)


def test_space_eval_grids(tmp_path, sweep_file):
    from stas_sweep.sweep.space import SpaceError, load_spec

    spec = load_spec(sweep_file(tmp_path, eval={"epsilons": [0.0], "keep_ratios": [1.0, 0.5],
                                                "exit_thresholds": [0.0, 0.4]}))
    assert spec.grids == {"token_drop": [1.0, 0.5], "timestep_exit": [0.0, 0.4]}
    with pytest.raises(SpaceError, match=r"eval.keep_ratios\[1\] must be <= 1.0, got 1.5"):
        load_spec(sweep_file(tmp_path, eval={"keep_ratios": [0.5, 1.5]}))
    with pytest.raises(SpaceError, match="unknown key 'eval.thresholds'; accepted keys here: epsilons, keep_ratios, "
                                         "exit_thresholds"):
        load_spec(sweep_file(tmp_path, eval={"thresholds": [0.1]}))


def test_epsilon_table_evaluates_each_method_over_its_knob():
    from stas_sweep.train.evaluate import epsilon_table

    static, x = _static("spikingformer", "isps")
    loader = [(x, torch.zeros(len(x), dtype=torch.long))]
    for method, grid in (("token_drop", [1.0, 0.5]), ("timestep_exit", [0.0, 1.0])):
        m = _with(static, {"method": method})
        rows = epsilon_table(m, loader, [0.0], grids={method: grid})
        assert [r[KNOBS[method]] for r in rows] == grid and {r["method"] for r in rows} == {method}
        assert all(r["epsilon"] is None for r in rows)
        # knob 1.0 / 0.0 runs everything: the static cost plus the method's decisions (< 1 %)
        assert -1.0 < rows[0]["energy_reduction"] <= 0.0
        assert rows[1]["token_ratio"] < 1.0 and rows[1]["energy_mj"] < rows[0]["energy_mj"]


# -- the paper's figures ----------------------------------------------------------------------

def test_paper_rows_are_the_tables_and_marked_not_measured():
    from stas_sweep.sweep.paper_results import paper_rows

    imagenet = paper_rows("imagenet", transformers_only=True)
    stas = [r for r in imagenet if r["method"] == "STAS^eps" and r["model"] == "Spikingformer-8-384"]
    assert stas == [pytest.approx(stas[0])] and stas[0]["energy_mj"] == 3.28 and stas[0]["accuracy"] == 72.61
    c100 = {(r["method"], r["model"]): r for r in paper_rows("cifar100")}
    assert c100[("Spikformer", "Spikformer-4-384")]["energy_mj"] == 0.89
    assert c100[("STAS^eps", "Spikformer-4-384")]["token_ratio"] == 0.42
    assert paper_rows("cifar10")[0]["measured"] is False and "Table 3" in paper_rows("cifar10")[0]["source"]
    assert paper_rows("digits") == []


def test_front_plots_colour_methods_and_draw_paper_markers(tmp_path):
    from stas_sweep import methods
    from stas_sweep.sweep.paper_results import paper_rows
    from stas_sweep.sweep.plots import PAPER_LEGEND, plot_front_html, plot_front_png

    assert {m.name: m.knob for m in methods.halting_methods()} == KNOBS
    pts = [{"trial_id": f"t{i}", "method": m, KNOBS[m]: 0.1 * j, "accuracy": 70.0 + i + j,
            "energy_mj": 0.4 + 0.05 * i - 0.02 * j} for i, m in enumerate(KNOBS) for j in range(2)]
    paper = paper_rows("cifar100", transformers_only=True)
    png = plot_front_png(pts, [("accuracy", "max"), ("energy_mj", "min")], tmp_path / "f.png", paper=paper)
    assert png.stat().st_size > 0
    html = plot_front_html(pts, [("accuracy", "max"), ("energy_mj", "min")], tmp_path / "f.html", paper=paper,
                           energy_version="2").read_text()
    for name in ("token_drop", "timestep_exit", "stas", PAPER_LEGEND.split("(")[1],
                 "paper: STAS^eps Spikformer-4-384", "keep_ratio"):
        assert name in html, name
    # one convention, and every hover says which: our points' energy and the paper's own figures
    import html as html_lib

    from stas_sweep.sweep.paper_results import PAPER_ENERGY_CONVENTION
    from stas_sweep.sweep.plots import energy_convention

    ours = html_lib.escape(energy_convention("energy_mj", "2"))
    assert "energy convention 2" in energy_convention("energy_mj", "2")
    titles = [t.split("</title>")[0] for t in html.split("<title>")[2:]]  # the tooltips, not the page title
    circles, stars = [t for t in titles if "trial_id" in t], [t for t in titles if "Table 3" in t]
    assert len(circles) == len(pts) and stars
    assert all(f"energy_mj convention: {ours}" in t for t in circles)
    assert all(html_lib.escape(PAPER_ENERGY_CONVENTION) in t for t in stars)


# -- the baselines sweep end to end -----------------------------------------------------------

@pytest.mark.slow(40)
def test_baselines_sweep_end_to_end(ray_local, tmp_path, sweep_file, mlflow_db, mlflow_runs, monkeypatch, capsys):
    """``stas-sweep run`` in this process, on the session's Ray (the command attaches to a Ray
    that is already up, as it does inside a Ray job)."""
    from stas_sweep.cli import main

    folder = tmp_path
    monkeypatch.chdir(folder)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_db(folder))
    methods = ["stas", "token_drop", "timestep_exit"]
    space = sweep_file(
        folder, name="baselines",
        space={"halting.method": {"choice": methods}, "halting.beta": {"uniform": [-8.0, -4.0]}},
        eval={"epsilons": [0.0, 0.4], "keep_ratios": [1.0, 0.5], "exit_thresholds": [0.0, 0.9]},
        search={"sampler": "random", "seed": 0, "num_samples": 3,
                "points_to_evaluate": [{"halting.method": m, "halting.beta": -6.0} for m in methods]},
        scheduler={"type": "fifo", "max_epochs": 1}, max_concurrent_trials=2,
        mlflow={"experiment": "baselines"})
    assert main(["run", str(space)]) == 0
    assert "on the front" in capsys.readouterr().out

    client, parents, runs = mlflow_runs(os.environ["MLFLOW_TRACKING_URI"], "baselines")
    children = [r for r in runs if r.data.tags.get("stas.role") == "trial"]
    point_runs = [r for r in runs if r.data.tags.get("stas.role") == "point"]
    assert len(parents) == 1 and len(children) == 3
    assert sorted(c.data.tags["method"] for c in children) == sorted(methods)
    # one run per (trial, knob) point, tagged with its method and named by its knob
    assert len(point_runs) == 6 and {r.data.tags["method"] for r in point_runs} == set(methods)
    assert any(r.data.tags["stas.point"].endswith("@keep_ratio=0.5") for r in point_runs)
    assert any(r.data.params.get("exit_threshold") == "0.9" for r in point_runs)
    # each names its trial's logged model and its own knob; a runs:/ URI of one loads that model at that knob
    models = {c.data.tags["trial_id"]: c.data.tags["model_uri"] for c in children}
    assert all(r.data.tags["model_uri"] == models[r.data.tags["trial_id"]] and r.data.tags["knob"] ==
               f"{KNOBS[r.data.tags['method']]}={r.data.params[KNOBS[r.data.tags['method']]]}" for r in point_runs)
    drop = next(r for r in point_runs if r.data.tags["knob"] == "keep_ratio=0.5")
    assert main(["energy", f"runs:/{drop.info.run_id}", "--json", "--quiet"]) == 0
    energy = json.loads(capsys.readouterr().out)
    assert (energy["method"], energy["keep_ratio"]) == ("token_drop", 0.5) and energy["token_ratio"] == pytest.approx(0.5)
    parent = parents[0].info.run_id
    candidates = json.loads(Path(client.download_artifacts(parent, "candidates.json")).read_text())
    knobs = {(p["method"], p[KNOBS[p["method"]]]) for p in candidates}
    assert knobs == {("stas", 0.0), ("stas", 0.4), ("token_drop", 1.0), ("token_drop", 0.5),
                     ("timestep_exit", 0.0), ("timestep_exit", 0.9)}
    by = {k: next(p for p in candidates if (p["method"], p[KNOBS[p["method"]]]) == k) for k in knobs}
    assert by[("token_drop", 0.5)]["token_ratio"] == pytest.approx(0.5)
    assert by[("token_drop", 0.5)]["energy_mj"] < by[("token_drop", 1.0)]["energy_mj"]
    html = Path(client.download_artifacts(parent, "pareto_front.html")).read_text()
    assert all(f"{m} (" in html for m in methods)  # the SVG page's legend, one colour per method

    assert main(["pareto", "--paper", "--experiment", "baselines"]) == 0
    out = capsys.readouterr().out
    assert "method" in out and "the paper reports no figures for data set 'digits'" in out


def test_cifar_sweep_front_carries_the_papers_markers(tmp_path, capsys, mlflow_db):
    """A CIFAR-100 sweep draws the paper's Table 3 rows on the front PNG/HTML its tracker logs, and
    ``pareto --paper`` lists them as not measured (a real sqlite MLflow store, no Ray)."""
    from stas_sweep.cli import main
    from stas_sweep.sweep.front import front_of, knob_of
    from stas_sweep.sweep.paper_results import paper_rows
    from stas_sweep.sweep.writer import draw_front
    from stas_sweep.sweep.space import load_spec
    from stas_sweep.tracking import SweepTracker

    spec = load_spec(Path(__file__).parent.parent / "search_spaces" / "cifar100_baselines.yaml")
    uri = mlflow_db(tmp_path)
    tracker = SweepTracker(uri, "c100", spec.name, str(tmp_path), spec.objectives, scheduler="moasha", knob_of=knob_of)
    tracker.start_parent(spec, "plan")
    paper = paper_rows(spec.base.data.name, transformers_only=True)  # the sweep draws them on its plots
    assert paper and all(not r["measured"] for r in paper)
    tracker.child("t1", {"halting.method": "token_drop"})
    assert tracker.client.get_run(tracker.runs["t1"]).data.tags["method"] == "token_drop"
    points = [{"trial_id": "t1", "method": "token_drop", "epsilon": None, "keep_ratio": k, "exit_threshold": None,
               "accuracy": 70.0 + 5 * k, "energy_mj": 0.3 + 0.2 * k} for k in (1.0, 0.5)]
    points.append({"trial_id": "t2", "method": "stas", "epsilon": 0.1, "keep_ratio": None, "exit_threshold": None,
                   "accuracy": 74.0, "energy_mj": 0.45})
    front = front_of(points, spec.objectives, spec.reference)
    tracker.write_front(front, final=True, files=draw_front(front.points, front.front, spec.objectives, tmp_path,
                                                            sweep=spec.name, history={}, paper=paper, html=True))
    html = Path(tracker.client.download_artifacts(tracker.parent_id, "pareto_front.html")).read_text()
    assert "paper: STAS^eps Spikingformer-4-384" in html and "Tables 2-3; not measured" in html
    assert main(["pareto", "--paper", "--tracking-uri", uri, "--experiment", "c100"]) == 0
    out = capsys.readouterr().out
    assert "the paper's figures, NOT measured here" in out and "Spikingformer-4-384" in out
    assert "keep_ratio 0.5" in out  # the front lists each point's method and knob


def test_energy_command_runs_the_baselines(capsys):
    from stas_sweep.cli import main

    base = ["energy", "spikformer-2-32", "--img-size", "16", "--input", "random", "--batch", "4", "--json"]
    assert main([*base, "--keep-ratio", "0.5"]) == 0
    drop = json.loads(capsys.readouterr().out)
    assert drop["method"] == "token_drop" and drop["token_ratio"] == 0.5
    assert any(r["layer"] == "token_score" for r in drop["layers"])
    assert main([*base, "--exit-threshold", "1.0"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["method"] == "timestep_exit" and out["token_ratio"] == 0.25  # every image stops at t = 1 of 4
    assert main([*base, "--keep-ratio", "0.5", "--epsilon", "0.1"]) == 2
    assert "give one of" in capsys.readouterr().err
