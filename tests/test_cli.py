"""The command line: models and energy."""

import contextlib
import json
import os
from pathlib import Path

import pytest

from stas_sweep.cli import main


def test_models_json_shows_paper_counts(capsys):
    assert main(["models", "--json", "--pattern", "*-4-384"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert abs(rows["spikformer-4-384"]["params"] / 1e6 - 9.32) < 0.0932
    assert abs(rows["spikingformer-4-384"]["params"] / 1e6 - 9.32) < 0.0932
    assert rows["spikformer-4-384"]["tokens"] == 64
    assert main(["models", "--json", "--num-classes", "1000", "--img-size", "224", "--pattern", "spikingformer-8-*"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert abs(rows["spikingformer-8-384"]["params"] / 1e6 - 16.81) < 0.1681
    assert abs(rows["spikingformer-8-512"]["params"] / 1e6 - 29.68) < 0.2968
    assert rows["spikingformer-8-512"]["tokens"] == 196


def test_energy_json_on_random_input(capsys):
    args = ["energy", "spikingformer-2-32", "--img-size", "16", "--input", "random", "--batch", "4", "--json"]
    assert main(args) == 0
    static = json.loads(capsys.readouterr().out)
    assert static["token_ratio"] == 1.0 and static["energy_mj"] > 0 and static["epsilon"] is None
    assert static["convention"] == "paper" and static["energy"] == static["energy_mj"]
    assert static["energy_strict_mj"] > 0 and {"op", "op_strict"} <= set(static["layers"][0])
    assert static["temporal_similarity"][0] > 0.999  # I-SPS by default
    assert {r["layer"] for r in static["layers"]} >= {"stem.convs.0.0", "head"}
    assert main(args + ["--epsilon", "0.3", "--beta", "-5"]) == 0
    halting = json.loads(capsys.readouterr().out)
    assert halting["epsilon"] == 0.3 and halting["token_ratio"] < 1.0
    assert halting["temporal_similarity"][0] > 0.999  # measured on the static architecture
    assert halting["energy_mj"] < static["energy_mj"]
    assert halting["energy_strict_mj"] < static["energy_strict_mj"]
    assert main(args + ["--convention", "strict"]) == 0
    strict = json.loads(capsys.readouterr().out)
    assert strict["convention"] == "strict" and strict["energy"] == strict["energy_strict_mj"]  # model init is unseeded
    assert main(args + ["--epsilon", "0", "--beta", "-5"]) == 0
    assert json.loads(capsys.readouterr().out)["epsilon"] == 0.0  # 0 is a value, not "unset"


def test_energy_analytic_mode_json_needs_no_data(capsys):
    """``--firing-rate``: the layers' energy sums to the total; the stem share and the static
    figure come with it; the text form prints the table and the summary line."""
    args = ["energy", "spikformer-2-32", "--img-size", "16", "--firing-rate", "0.2", "--token-ratio", "0.5"]
    assert main(args + ["--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"energy_mj", "energy_strict_mj", "stem_share", "layers", "static_energy_mj"} <= set(out)
    assert all({"layer", "flops", "rate", "energy_pj"} <= set(r) for r in out["layers"])
    assert sum(r["energy_pj"] for r in out["layers"]) * 1e-9 == pytest.approx(out["energy_mj"], rel=1e-12)
    assert 0 < out["stem_share"] < 1 and out["energy_mj"] < out["static_energy_mj"] < out["energy_strict_mj"] * 10
    assert out["token_ratio"] == 0.5 and out["firing_rate"] == 0.2 and out["energy"] == out["energy_mj"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "stem.convs.1.0" in text and "halting_score" in text and "stem share" in text


def test_energy_table_output(capsys):
    assert main(["energy", "spikformer-1-16", "--img-size", "16", "--input", "random", "--batch", "2"]) == 0
    out = capsys.readouterr().out
    assert "mJ/image" in out and "stem.convs.0.0" in out and "temporal similarity" in out
    assert "energy_mj" in out and "energy_strict_mj" in out and "paper op" in out and "strict op" not in out
    assert main(["energy", "spikformer-1-16", "--img-size", "16", "--input", "random", "--batch", "2",
                 "--convention", "strict"]) == 0
    out = capsys.readouterr().out
    assert "strict op" in out and "paper op" not in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["energy", "vit-9-9"], "unknown model 'vit-9-9'; valid names: spikedriven-1-16"),
        (["energy", "spikformer-1-16", "--epsilon", "1.2"], "epsilon must lie in [0, 1)"),
        (["energy", "spikformer-1-16", "--img-size", "30"], "img_size=30"),
        (["energy", "spikformer-1-16", "--firing-rate", "1.5", "--token-ratio", "0.5"],
         "firing rate must lie in [0, 1], got 1.5"),
        (["energy", "spikformer-1-16", "--firing-rate", "-0.1"], "firing rate must lie in [0, 1], got -0.1"),
        (["energy", "spikformer-1-16", "--firing-rate", "0.2", "--token-ratio", "0"],
         "token ratio must lie in (0, 1], got 0.0"),
        (["energy", "spikformer-1-16", "--firing-rate", "0.2", "--token-ratio", "1.01"],
         "token ratio must lie in (0, 1], got 1.01"),
        (["energy", "spikformer-1-16", "--token-ratio", "0.5"], "--token-ratio needs --firing-rate"),
        (["energy", "spikformer-1-16", "--firing-rate", "0.2", "--epsilon", "0.1"],
         "--epsilon cannot be combined with --firing-rate"),
    ],
)
def test_bad_input_exits_2_with_message(args, message, capsys):
    assert main(args + ["--input", "random"]) == 2
    assert message in capsys.readouterr().err


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "models" in out and "energy" in out


@pytest.mark.slow(30)
def test_ui_serves_the_default_store_on_loopback(tmp_path, free_port, mlflow_db, descendants):
    """``stas-sweep ui`` serves ./mlflow.db on 127.0.0.1 with the web server alone (one worker by
    default, MLflow's job runner off), and stopping the command stops the server."""
    import os
    import signal
    import subprocess
    import sys
    import time
    import urllib.request

    port = free_port()
    mlflow_db(tmp_path)  # ./mlflow.db, the default store, its tables made
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.Popen([sys.executable, "-m", "stas_sweep.cli", "ui", "--port", str(port)], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                assert urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).status == 200
                break
            except OSError:
                time.sleep(0.5)
        else:
            raise AssertionError("the UI did not answer")
        server = []
        for pid in descendants(proc.pid):
            with contextlib.suppress(OSError):  # a process that ended meanwhile
                server.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())
        assert any("uvicorn" in c and "--workers 1 " in c for c in server), server  # MLflow's default is 4
        assert not any("mlflow.server.jobs" in c for c in server), server
        # stopping the command (SIGTERM to stas-sweep alone, as a service manager does) stops the server
        proc.terminate()
        out = proc.communicate(timeout=60)[0]
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                time.sleep(0.5)
            except OSError:
                break
        else:
            raise AssertionError("the MLflow server outlived `stas-sweep ui`")
    finally:  # on a failed check too: the server (its own session) and then stas-sweep's group
        for pid in [*descendants(proc.pid), proc.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert f"sqlite:///{tmp_path.resolve()}/mlflow.db" in out and f"http://127.0.0.1:{port}" in out


def test_models_counts_without_building_weights(capsys):
    """Parameter counts come from the meta device: every model at once, the largest included, and
    a count equals that of the same model built with real weights. (Speed: docs/benchmarks.md.)"""
    from stas_sweep.models import create_model

    assert main(["models", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert abs(rows["spikformer-4-384"]["params"] / 1e6 - 9.32) < 0.0932
    assert len(rows) >= 30 and all(r["params"] > 0 for r in rows.values())
    for name in ("spikformer-1-16", "spikedriven-2-32"):
        real = create_model(name, num_classes=10, img_size=32, in_channels=3)
        assert rows[name]["params"] == sum(p.numel() for p in real.parameters())


def test_energy_prints_progress_on_stderr_only(capsys):
    args = ["energy", "spikformer-1-16", "--img-size", "16", "--input", "random", "--batch", "2", "--json"]
    assert main(args) == 0
    captured = capsys.readouterr()
    json.loads(captured.out)  # stdout stays one JSON object
    assert "energy: measuring energy" in captured.err and "energy: done" in captured.err
    assert main(args + ["--quiet"]) == 0
    assert capsys.readouterr().err == ""


def test_validate_warns_when_resources_exceed_this_machine(tmp_path, sweep_file, capsys):
    from stas_sweep.sweep.runner import local_resources

    have = local_resources()
    # per worker; a trial holds 2 workers' and 0.2 CPU for its own function
    space = sweep_file(tmp_path, resources={"workers": 2, "cpu": have["cpu"] + 64, "gpu": have["gpu"] + 1})
    assert main(["validate", str(space)]) == 0  # a warning, not an error: the file may be for a cluster
    err = capsys.readouterr().err
    cpu, gpu = 2 * (have["cpu"] + 64) + 0.2, 2 * (have["gpu"] + 1)
    assert f"resources.cpu = {cpu:g}" in err and f"resources.gpu = {gpu:g}" in err, err
    assert main(["validate", str(sweep_file(tmp_path, resources={"cpu": 1}))]) == 0
    assert "warning" not in capsys.readouterr().err


def _front(points, objectives, reference):
    from stas_sweep.sweep.front import front_of

    return front_of(points, objectives, reference)


@pytest.mark.slow(7)
def test_pareto_skips_a_failed_empty_sweep_and_point_runs_follow_the_front(tmp_path, sweep_file, capsys, mlflow_db):
    """Real MLflow (sqlite), no Ray: a sweep with points, then a newer one that failed before any
    trial finished. `pareto` shows the first and says it skipped the second; point runs are
    logged once (also by a tracker reopening the sweep, as on resume) and retagged as the
    front moves."""
    import mlflow

    from stas_sweep.sweep.space import load_spec
    from stas_sweep.tracking import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, SweepTracker

    uri = mlflow_db(tmp_path)
    spec = load_spec(sweep_file(tmp_path / "a", name="good"))
    obj, ref = spec.objectives, spec.reference
    row = {"energy_strict_mj": 1.0, "token_ratio": 0.5, "energy_reduction": 10.0}
    p1 = [{"trial_id": "t1", "epsilon": 0.0, "accuracy": 90.0, "energy_mj": 0.8, **row, "halting.beta": -6.0},
          {"trial_id": "t1", "epsilon": 0.2, "accuracy": 85.0, "energy_mj": 0.5, **row, "halting.beta": -6.0}]
    tracker = SweepTracker(uri, spec.experiment, spec.name, "/x/good", obj)
    tracker.start_parent(spec, "plan")
    tracker.write_front(_front(p1, obj, ref), final=False)

    # reopened (a resume): the point runs are found again; a new better point moves the front
    again = SweepTracker(uri, spec.experiment, spec.name, "/x/good", obj)
    again.start_parent(spec, "plan")
    p2 = p1 + [{"trial_id": "t2", "epsilon": 0.0, "accuracy": 95.0, "energy_mj": 0.4, **row, "halting.beta": -5.0}]
    front = _front(p2, obj, ref)
    from stas_sweep.sweep.writer import draw_front  # the sweep draws, the tracker logs the files

    again.write_front(front, final=True, files=draw_front(front.points, front.front, obj, tmp_path, sweep=spec.name,
                                                          history={}, html=True))
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name(spec.experiment)
    assert exp.tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    points = client.search_runs([exp.experiment_id], "tags.`stas.role` = 'point'")
    assert sorted(r.data.tags["stas.point"] for r in points) == ["t1@0", "t1@0.2", "t2@0"]
    on = client.search_runs([exp.experiment_id], "tags.pareto = 'true'")
    assert [r.data.tags["stas.point"] for r in on] == ["t2@0"]
    assert [(p["trial_id"], p["epsilon"]) for p in front.front] == [("t2", 0.0)]
    assert on[0].data.metrics["accuracy"] == 95.0 and on[0].data.params["epsilon"] == "0.0"
    assert on[0].data.params["halting.beta"] == "-5.0" and on[0].data.tags["method"] == "stas"
    assert on[0].data.tags["mlflow.parentRunId"] == again.parent_id
    assert client.get_run(again.parent_id).data.tags["mlflow.note.content"].count("tags.pareto = 'true'") >= 1
    html = client.download_artifacts(again.parent_id, "pareto_front.html")
    assert Path(html).stat().st_size < 500_000

    bad = load_spec(sweep_file(tmp_path / "b", name="broken", mlflow={"experiment": "other"}))
    failed = SweepTracker(uri, bad.experiment, bad.name, "/x/broken", bad.objectives)
    failed.start_parent(bad, "plan")
    failed.fail()

    assert main(["pareto", "--json", "--tracking-uri", uri]) == 0
    out = capsys.readouterr()
    assert [(p["trial_id"], p["epsilon"]) for p in json.loads(out.out)] == [("t2", 0.0)]
    assert "skipping sweep broken" in out.err and "FAILED" in out.err and "sweep good" in out.err
    assert main(["pareto", "--experiment", "other", "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err
    assert "has front points yet" in err and "'broken'" in err and "FAILED" in err


def test_front_table_shows_every_objective_and_the_token_ratio():
    from stas_sweep.cli import _front_table

    front = [{"trial_id": "a1", "epsilon": 0.1, "accuracy": 91.5, "energy_mj": 0.012, "token_ratio": 0.62,
              "halting.alpha": -5.0}]
    head, row = _front_table(front, [("accuracy", "max"), ("energy_mj", "min")], ["halting.alpha"]).splitlines()
    assert head.split() == ["trial_id", "epsilon", "accuracy", "energy_mj", "token_ratio", "halting.alpha"]
    assert row.split() == ["a1", "0.1", "91.5", "0.012", "0.62", "-5"]
    # token_ratio as an objective is shown once
    head = _front_table(front, [("accuracy", "max"), ("token_ratio", "min")], []).splitlines()[0]
    assert head.split() == ["trial_id", "epsilon", "accuracy", "token_ratio"]


def test_counts_take_their_noun_in_the_right_number():
    from stas_sweep.sweep.space import describe, load_spec
    from stas_sweep.tables import plural

    assert [plural(n, "point") for n in (0, 1, 2)] == ["0 points", "1 point", "2 points"]
    spec = load_spec(Path(__file__).resolve().parents[1] / "search_spaces" / "digits.yaml")
    spec.max_epochs, spec.num_samples, spec.epsilons = 1, 1, [0.0]
    plan = describe(spec, "sqlite:///mlflow.db")
    assert "per trial: 1 epoch," in plan and "(1 trial x 1 epsilon)" in plan and "1 epochs" not in plan


def test_credentials_in_a_tracking_uri_are_never_printed_or_kept(tmp_path, sweep_file, monkeypatch, capsys):
    """``validate`` and ``run --dry-run`` print the plan with the URI's credentials gone; the
    configs keep the URI without them (MLflow reads them from its environment variables); the
    sweep's tracker, which Tune pickles into its storage, holds no credential either."""
    import pickle

    from stas_sweep.cli import main
    from stas_sweep.errors import mask_text
    from stas_sweep.sweep.space import load_spec
    from stas_sweep.tracking import SweepTracker

    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.setenv(key, "")  # restored after the test: what the code sets does not leak
    secret = "pa55-w0rd"
    uri = f"http://alice:{secret}@127.0.0.1:9"
    space = sweep_file(tmp_path, mlflow={"experiment": "tiny-sweep", "tracking_uri": uri})
    assert main(["validate", str(space)]) == 0
    assert main(["run", str(space), "--dry-run", "--tracking-uri", uri]) == 0
    out, err = capsys.readouterr()
    assert secret not in out + err and "MLflow: http://127.0.0.1:9" in out
    spec = load_spec(space)
    assert spec.tracking_uri == "http://127.0.0.1:9"
    assert (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]) == ("alice", secret)
    tracker = SweepTracker(uri, "e", "s", str(tmp_path), [("accuracy", "max"), ("energy_mj", "min")])
    assert secret.encode() not in pickle.dumps(tracker) and tracker.uri == "http://127.0.0.1:9"
    assert mask_text(f"see {uri}/x and https://tok3n@h/") == "see http://alice:***@127.0.0.1:9/x and https://***@h/"


def test_a_resume_under_another_energy_convention_is_refused(tmp_path, sweep_file, mlflow_db, capsys):
    """Point, trial and parent runs carry the meter's version; reopening the sweep under another
    version (or one logged before the tag existed: version 1) is refused, naming both."""
    import mlflow

    from stas_sweep.energy import METER_VERSION
    from stas_sweep.sweep.space import load_spec
    from stas_sweep.tracking import ENERGY_TAG, SweepTracker, TrackingError

    uri = mlflow_db(tmp_path)
    spec = load_spec(sweep_file(tmp_path / "a", name="metered"))
    obj, ref = spec.objectives, spec.reference
    point = {"trial_id": "t1", "epsilon": 0.0, "accuracy": 90.0, "energy_mj": 0.8, "energy_strict_mj": 1.0,
             "token_ratio": 0.5, "energy_reduction": 10.0}
    tracker = SweepTracker(uri, spec.experiment, spec.name, "/x/a", obj, energy_convention=str(METER_VERSION))
    tracker.start_parent(spec, "plan")
    tracker.child("t1", {})
    from stas_sweep.sweep.writer import draw_front  # the sweep draws, the tracker logs the files

    front = _front([point], obj, ref)
    tracker.write_front(front, final=True, files=draw_front(front.points, front.front, obj, tmp_path, sweep=spec.name,
                                                            history={}, html=True, energy_version=str(METER_VERSION)))
    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(spec.experiment).experiment_id])
    assert {r.data.tags.get(ENERGY_TAG) for r in runs} == {str(METER_VERSION)} and len(runs) == 3  # parent, trial, point
    SweepTracker(uri, spec.experiment, spec.name, "/x/a", obj, energy_convention=str(METER_VERSION)).start_parent(spec, "plan")
    with pytest.raises(TrackingError, match=f"energy convention {METER_VERSION} .*meters with 99"):
        SweepTracker(uri, spec.experiment, spec.name, "/x/a", obj, energy_convention="99").start_parent(spec, "plan")
    # a sweep logged before the tag existed (no energy_convention given) counts as version 1
    SweepTracker(uri, spec.experiment, spec.name, "/x/old", obj).start_parent(spec, "plan")
    with pytest.raises(TrackingError, match="energy convention 1 "):
        SweepTracker(uri, spec.experiment, spec.name, "/x/old", obj, energy_convention="2").start_parent(spec, "plan")
    # pareto --paper names the front's convention and the paper's
    assert main(["pareto", "--paper", "--json", "--tracking-uri", uri]) == 0
    out = capsys.readouterr()
    conventions = json.loads(out.out)["energy_convention"]
    assert f"energy convention {METER_VERSION}" in conventions["front"] and "appendix A" in conventions["paper"]
    assert "energy convention 1" not in out.err
    html = Path(client.download_artifacts(tracker.parent_id, "pareto_front.html")).read_text()
    assert f"energy convention {METER_VERSION}" in html
