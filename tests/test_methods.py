"""The method and objective records: a method registered in a test alone runs through the
evaluation, the meter, the front and the plots; latency_ms is measured, and a sweep can
optimise it."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch

from stas_sweep import create_model, methods, objectives
from stas_sweep.energy import measure_energy
from stas_sweep.models.configs import TokenDropConfig
from stas_sweep.models.diagnostics import calibrate_batchnorm


@dataclass
class ShareDropConfig(TokenDropConfig):
    """A method of the test's own: token dropping under another name, knob ``share`` and meter row."""

    share: float = 0.5
    method: ClassVar[str] = "share_drop"
    knob_name: ClassVar[str] = "share"
    decision_row: ClassVar[str] = "share_score"

    def __post_init__(self) -> None:
        self.keep_ratio = self.share
        super().__post_init__()


@pytest.fixture
def share_drop():
    record = methods.register(methods.Method("share_drop", ShareDropConfig, grid=(1.0, 0.5), grid_key="shares",
                                             label="share drop (test)", colour="#123456"))
    yield record
    methods.unregister("share_drop")


def test_a_method_registered_in_a_test_runs_through_eval_meter_front_and_plots(share_drop, tmp_path):
    from stas_sweep.sweep.front import front_of, hover_keys, knob_of, param_keys, trial_points
    from stas_sweep.sweep.plots import plot_front_html, plot_front_png
    from stas_sweep.train.evaluate import epsilon_table

    torch.manual_seed(0)
    x = torch.rand(6, 3, 16, 16)
    model = create_model("spikformer-2-32", img_size=16, timesteps=2, halting=ShareDropConfig(share=0.5))
    calibrate_batchnorm(model, x)
    assert model.method == "share_drop"
    # evaluation: the record's default grid, its knob column, every other knob None
    rows = epsilon_table(model.eval(), [(x, torch.zeros(6, dtype=torch.long))], [0.0])
    assert [r["share"] for r in rows] == [1.0, 0.5] and {r["method"] for r in rows} == {"share_drop"}
    assert all(r["epsilon"] is None and r["keep_ratio"] is None for r in rows)
    assert rows[1]["token_ratio"] == pytest.approx(0.5) and rows[1]["energy_mj"] < rows[0]["energy_mj"]
    assert all(r["latency_ms"] > 0 for r in rows)
    # the meter: the method's decisions in its config's row
    assert "share_score" in {r.layer for r in measure_energy(model, x).layers}
    # the front: the point's knob is the record's, and it is not taken for a searched parameter
    pts = trial_points("t1", {"halting.beta": -6.0}, rows)
    stas = {"trial_id": "t0", "method": "stas", "epsilon": 0.1, "accuracy": 1.0, "energy_mj": 1.0}
    assert knob_of(pts[1]) == ("share", 0.5) and param_keys(pts) == ["halting.beta"]
    assert hover_keys(pts[1]) == ["trial_id", "method", "share", "halting.beta"]
    front = front_of([*pts, stas], [("accuracy", "max"), ("energy_mj", "min")], {"accuracy": 0.0, "energy_mj": 2.0})
    assert front.front
    # the plots: coloured by the record
    page = plot_front_html(front.points, [("accuracy", "max"), ("energy_mj", "min")], tmp_path / "f.html").read_text()
    assert "#123456" in page and "share_drop" in page and "share: 0.5" in page
    assert plot_front_png(front.points, [("accuracy", "max"), ("energy_mj", "min")], tmp_path / "f.png").stat().st_size
    methods.unregister("share_drop")
    assert "share" not in methods.knob_names() and methods.knob_of("share_drop") == "epsilon"


def test_a_method_must_be_new_and_named_by_its_config(share_drop):
    with pytest.raises(ValueError, match="registered already"):
        methods.register(share_drop)
    with pytest.raises(ValueError, match="names method 'token_drop'"):
        methods.register(methods.Method("other", TokenDropConfig))
    with pytest.raises(ValueError, match="accepted values: stas, token_drop, timestep_exit, share_drop"):
        methods.get("nope")


def test_objective_records_drive_directions_axes_and_the_schema(tmp_path, sweep_file):
    from stas_sweep.sweep.front import OBJECTIVE_METRICS, best_point
    from stas_sweep.sweep.plots import _axis_label
    from stas_sweep.sweep.pareto import as_objectives
    from stas_sweep.sweep.space import SpaceError, load_spec

    assert OBJECTIVE_METRICS == ("accuracy", "energy_mj", "energy_strict_mj", "token_ratio", "latency_ms")
    assert objectives.get("latency_ms").direction == "min" and objectives.get("latency_ms").unit == "ms / image"
    front = [{"latency_ms": 2.0, "accuracy": 1.0}, {"latency_ms": 1.0, "accuracy": 0.5}]
    assert best_point(front, "latency_ms", [("accuracy", "max"), ("energy_mj", "min")])["latency_ms"] == 1.0
    objs = as_objectives([("accuracy", "max"), ("latency_ms", "min")])
    assert _axis_label("latency_ms", objs) == "latency_ms (ms / image, min)"
    assert _axis_label("accuracy", objs) == "accuracy (%, max)" and _axis_label("energy_mj", objs) == "energy_mj"
    spec = load_spec(sweep_file(tmp_path, objectives={"accuracy": "max", "latency_ms": "min"},
                                reference={"latency_ms": 100.0}))
    assert spec.objectives == [("accuracy", "max"), ("latency_ms", "min")] and spec.reference["accuracy"] == 0.0
    with pytest.raises(SpaceError, match="reference.latency_ms is missing"):
        load_spec(sweep_file(tmp_path, objectives={"accuracy": "max", "latency_ms": "min"}, reference={}))


def test_latency_is_the_median_per_image_time_after_the_warm_up_at_the_batch_size(monkeypatch):
    import importlib
    import types

    ev = importlib.import_module("stas_sweep.train.evaluate")
    clock = iter([0.0, 9.0,            # batch 1, the warm-up: 9 s, not kept
                  10.0, 10.4,          # batch 2: 0.4 s / 4 images = 100 ms
                  20.0, 20.8,          # batch 3: 200 ms per image
                  30.0, 31.2,          # batch 4: 300 ms per image
                  40.0, 40.1])         # batch 5, 2 images (the short last one): not kept
    monkeypatch.setattr(ev, "time", types.SimpleNamespace(perf_counter=lambda: next(clock)))
    timer = ev.LatencyTimer("cpu")
    for n in (4, 4, 4, 4, 2):
        with timer.batch(n):
            pass
    assert timer.per_image_ms == pytest.approx([100.0, 200.0, 300.0]) and timer.median_ms() == pytest.approx(200.0)


# -- a digits sweep on accuracy and latency ---------------------------------------------------

@pytest.mark.slow(30)
def test_a_sweep_on_accuracy_and_latency_has_latency_on_every_front_point(ray_local, tmp_path, sweep_file, mlflow_db,
                                                                          mlflow_runs, monkeypatch, capsys):
    from stas_sweep.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_db(tmp_path))
    space = sweep_file(
        tmp_path, name="latency", space={"halting.beta": {"uniform": [-8.0, -4.0]}},
        eval={"epsilons": [0.0, 0.4]}, objectives={"accuracy": "max", "latency_ms": "min"},
        reference={"latency_ms": 1000.0},
        search={"sampler": "random", "seed": 0, "num_samples": 2, "points_to_evaluate": [{"halting.beta": -6.0}]},
        scheduler={"type": "moasha", "grace_period": 1, "max_epochs": 1}, mlflow={"experiment": "latency"})
    assert main(["run", str(space)]) == 0
    out = capsys.readouterr().out
    assert "on the front" in out and "latency_ms" in out  # the summary's front table
    assert main(["pareto", "--json"]) == 0
    front = json.loads(capsys.readouterr().out)
    assert front and all(isinstance(p["latency_ms"], float) and p["latency_ms"] > 0 for p in front)
    assert main(["pareto"]) == 0
    table = capsys.readouterr().out.splitlines()
    header = next(line for line in table if line.startswith("trial_id"))
    assert header.split()[3:6] == ["accuracy", "latency_ms", "token_ratio"]
    client, parents, runs = mlflow_runs(os.environ["MLFLOW_TRACKING_URI"], "latency")
    points = [r for r in runs if r.data.tags.get("stas.role") == "point" and r.data.tags.get("pareto") == "true"]
    assert len(points) == len(front) and all(r.data.metrics["latency_ms"] > 0 for r in points)
    client.download_artifacts(parents[0].info.run_id, "pareto_front.html", str(tmp_path))
    page = (tmp_path / "pareto_front.html").read_text()
    assert "latency_ms (ms / image, min)" in page and page.count("latency_ms: ") >= len(front)  # axis and hover
