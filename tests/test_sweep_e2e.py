"""Sweeps end to end with real Ray (local), real Optuna and a real MLflow store, in temp folders."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stas_sweep.cli import main
from stas_sweep.sweep.pareto import non_dominated

TRIALS = 5  # enough that Ctrl-C, sent when the first trial finishes, lands with trials still to run


@pytest.mark.slow(110)
def test_sweep_end_to_end_through_ctrl_c_and_resume(sweep_env, sweep_file, ray_local, mlflow_runs, monkeypatch,
                                                    capsys):
    """The README's main job on the tiny sweep (stage 1 trained through Ray, Optuna TPE, MOASHA,
    MLflow), stopped with Ctrl-C once a trial has finished and completed with ``--resume``: the
    interrupted run is KILLED with a hint, the finished sweep has every trial, point and front
    exactly once, and no epoch was logged twice. The first run is a fresh ``stas-sweep`` process
    with its own Ray; the resume runs in this process on the session's Ray (the command attaches
    to a Ray that is already up, as it does inside a Ray job)."""
    folder, env = sweep_env
    ok, diverges = 5e-3, 1.0e30  # the searched learning rates: 1e30 blows the loss up, a failing trial
    space = sweep_file(folder, fresh_stage1=True, search={
        "sampler": "tpe", "seed": 0, "num_samples": TRIALS,
        "points_to_evaluate": [{"optim.lr": ok, "halting.beta": -6.0, "halting.delta_p": 0.01},
                               {"optim.lr": diverges, "halting.beta": -6.0, "halting.delta_p": 0.01}]})
    log = folder / "first-run.log"  # a file, not a pipe: a full pipe would stall the driver
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "stas_sweep.cli", "run", str(space)], env=env, cwd=folder,
                                stdout=f, stderr=subprocess.STDOUT, text=True)
    results = folder / "results" / "tiny"
    deadline = time.time() + 600
    done = 0
    while time.time() < deadline and proc.poll() is None:
        done = sum('"full_budget": true' in p.read_text() for p in results.glob("*/result.json"))
        if done >= 1:
            break
        time.sleep(0.2)
    assert done >= 1, "no trial finished in time:\n" + log.read_text()[-3000:]
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=300)
    out = log.read_text()
    assert proc.returncode == 130, out[-3000:]
    assert "stage 1: training once for this sweep" in out  # the real path, through a Ray task
    assert "--resume" in out
    _, parents, runs = mlflow_runs(env["MLFLOW_TRACKING_URI"], "tiny-sweep")
    assert len(parents) == 1 and parents[0].info.status == "KILLED"
    assert [r.info.status for r in runs if r.info.status == "RUNNING"] == []  # the cut trials were closed too
    finished_before = {c.data.tags["trial_id"] for c in runs
                       if c.data.tags.get("stas.role") == "trial" and c.data.tags.get("full_budget") == "true"}
    assert 1 <= len(finished_before) < TRIALS

    monkeypatch.chdir(folder)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", env["MLFLOW_TRACKING_URI"])
    assert main(["run", str(space)]) == 2  # a plain second run refuses to overwrite the stopped sweep
    assert "--resume" in capsys.readouterr().err

    assert main(["run", str(space), "--resume"]) == 0
    out = capsys.readouterr().out
    assert "on the front" in out and "tags.pareto = 'true'" in out

    client, parents, runs = mlflow_runs(env["MLFLOW_TRACKING_URI"], "tiny-sweep")
    children = [c for c in runs if c.data.tags.get("stas.role") == "trial"]
    point_runs = [c for c in runs if c.data.tags.get("stas.role") == "point"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    assert len(children) == TRIALS and len(runs) == len(children) + len(point_runs)
    assert {c.info.status for c in children} <= {"FINISHED", "FAILED"}  # restored trials ran on in their runs
    assert len({c.data.tags["trial_id"] for c in children}) == TRIALS
    assert all(c.data.tags["mlflow.parentRunId"] == parent.info.run_id for c in children)

    failed = [c for c in children if c.info.status == "FAILED"]
    assert failed and all("loss is" in c.data.tags.get("error", "") for c in failed)

    # brute force over the logged epsilon tables of the full-budget children
    points = []
    for c in children:
        if c.data.tags.get("full_budget") == "true":
            rows = json.loads(Path(client.download_artifacts(c.info.run_id, "epsilon_table.json")).read_text())
            table = [dict(zip(rows["columns"], r)) for r in rows["data"]] if "columns" in rows else rows
            assert [r["epsilon"] for r in table] == [0.0, 0.2, 0.4]
            points += [{"trial_id": c.data.tags["trial_id"], **r} for r in table]
            assert len(client.get_metric_history(c.info.run_id, "energy_strict_mj")) == 2
            assert len(client.get_metric_history(c.info.run_id, "accuracy")) == 2
            assert all(r["energy_strict_mj"] > 0 for r in table)
        # every epoch a trial ran is logged once, across the interruption: steps 1..k, none twice
        steps = sorted(m.step for m in client.get_metric_history(c.info.run_id, "accuracy"))
        assert steps == list(range(1, len(steps) + 1)), (c.data.tags["trial_id"], steps)
    assert points
    objectives = [("accuracy", "max"), ("energy_mj", "min")]

    def dominates(a, b):
        return (a["accuracy"] >= b["accuracy"] and a["energy_mj"] <= b["energy_mj"]
                and (a["accuracy"] > b["accuracy"] or a["energy_mj"] < b["energy_mj"]))

    brute = [p for p in points if not any(dominates(q, p) for q in points)]
    assert [p["trial_id"] for p, f in zip(points, non_dominated(points, objectives)) if f] == [p["trial_id"] for p in brute]
    on_front = {p["trial_id"] for p in brute}
    for c in children:
        assert "pareto" not in c.data.tags  # filtering tags.pareto = 'true' lists point runs only
        assert int(c.data.tags.get("pareto_points", 0)) == sum(p["trial_id"] == c.data.tags["trial_id"] for p in brute)
        if c.data.tags.get("full_budget") == "false" and c.info.status != "FAILED":
            assert c.data.tags["stopped_by"] == "moasha" and c.data.tags["trial_id"] not in on_front
    # one finished, nested run per candidate point, with the trial's searched values and epsilon;
    # none logged twice across the resume
    keys = [c.data.tags["stas.point"] for c in point_runs]
    assert len(keys) == len(set(keys))
    assert sorted((c.data.tags["trial_id"], float(c.data.params["epsilon"])) for c in point_runs) == \
        sorted((p["trial_id"], p["epsilon"]) for p in points)
    assert all(c.info.status == "FINISHED" and c.data.tags["mlflow.parentRunId"] == parent.info.run_id
               and c.data.tags["method"] == "stas" and {"halting.beta", "optim.lr"} <= set(c.data.params)
               and {"accuracy", "energy_mj", "energy_strict_mj", "token_ratio"} <= set(c.data.metrics)
               for c in point_runs)
    exp = client.get_experiment_by_name("tiny-sweep")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"  # the model-training kind

    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"pareto_front.json", "pareto_front.png", "pareto_front.html", "hypervolume.png", "space.yaml",
            "candidates.json"} <= artifacts
    front = json.loads(Path(client.download_artifacts(parent.info.run_id, "pareto_front.json")).read_text())
    assert sorted((p["trial_id"], p["epsilon"]) for p in front) == sorted((p["trial_id"], p["epsilon"]) for p in brute)

    assert main(["pareto", "--json", "--experiment", "tiny-sweep"]) == 0
    out = capsys.readouterr()
    printed = json.loads(out.out)
    assert sorted((p["trial_id"], p["epsilon"]) for p in printed) == sorted((p["trial_id"], p["epsilon"]) for p in front)
    assert all({"accuracy", "energy_mj", "energy_strict_mj", "halting.beta", "optim.lr"} <= set(p) for p in printed)
    assert "sweep tiny" in out.err  # says which sweep it shows; stdout stays JSON

    # what the UI lists for the README's filter (its run search goes through the same API):
    # exactly the front `pareto --json` prints, with the same metric values
    shown = client.search_runs([exp.experiment_id], filter_string="tags.pareto = 'true'", max_results=1000)
    metrics = ("accuracy", "energy_mj", "energy_strict_mj", "token_ratio")
    assert sorted((r.data.tags["trial_id"], float(r.data.params["epsilon"]), *(r.data.metrics[m] for m in metrics))
                  for r in shown) == sorted((p["trial_id"], p["epsilon"], *(p[m] for m in metrics)) for p in printed)
    assert len(shown) == len(printed) >= 1
    html = Path(client.download_artifacts(parent.info.run_id, "pareto_front.html"))
    assert html.stat().st_size < 500_000 and "<script" not in html.read_text()

    # a second run of the same file refuses to overwrite it
    assert main(["run", str(folder / "space.yaml")]) == 2
    assert "--resume" in capsys.readouterr().err
    _front_points_become_registered_models(client, exp, parent, children, point_runs, printed, capsys)


def _front_points_become_registered_models(client, exp, parent, children, point_runs, front, capsys):
    """On the sqlite store, across the Ctrl-C and the resume: each full-budget trial logged its model
    once, stage 1 once; `pick` of a point run id and of best:<objective>, once unless --force;
    `eval` of a runs:/ and `energy` of a models:/ URI at the point's knob."""
    full = {c.data.tags["trial_id"]: c.data.tags["model_uri"] for c in children
            if c.data.tags.get("full_budget") == "true"}
    assert all(p.data.tags["model_uri"] == full[p.data.tags["trial_id"]]
               and p.data.tags["knob"] == f"epsilon={p.data.params['epsilon']}" for p in point_runs)
    logged = client.search_logged_models([exp.experiment_id], max_results=1000)
    assert sorted(m.name for m in logged) == sorted(["stage1"] + ["model"] * len(full))
    assert sorted(f"models:/{m.model_id}" for m in logged if m.name == "model") == sorted(full.values())
    assert parent.data.tags["stage1_model_uri"].startswith("models:/m-")

    best = max(front, key=lambda p: p["accuracy"])
    run = next(r for r in point_runs if r.data.tags["stas.point"] == f"{best['trial_id']}@{best['epsilon']:g}")
    assert main(["pick", run.info.run_id, "--name", "digits-stas"]) == 0
    assert capsys.readouterr().out.strip() == "models:/digits-stas/1"
    assert main(["pick", "best:accuracy", "--name", "digits-stas"]) == 0  # the same point: no new version
    assert capsys.readouterr().out.strip() == "models:/digits-stas/1"
    assert main(["pick", "best:accuracy", "--name", "digits-stas", "--force"]) == 0
    assert capsys.readouterr().out.strip() == "models:/digits-stas/2"
    assert main(["pick", "best:energy_mj"]) == 0
    assert capsys.readouterr().out.strip() == "models:/tiny/1"
    low = min(front, key=lambda p: p["energy_mj"])
    assert client.get_model_version("tiny", "1").tags["point"] == f"{low['trial_id']}@{low['epsilon']:g}"

    assert main(["eval", f"runs:/{run.info.run_id}", "--json", "--quiet"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["epsilon"], r["accuracy"]) for r in rows] == [(best["epsilon"], pytest.approx(best["accuracy"], abs=1e-9))]
    assert main(["energy", "models:/tiny/1", "--json", "--quiet"]) == 0
    energy = json.loads(capsys.readouterr().out)
    assert energy["epsilon"] == low["epsilon"] and energy["method"] == "stas" and energy["energy_mj"] > 0


def test_a_trial_model_that_cannot_be_logged_is_a_warning(tmp_path, sweep_file, sweep_stage1, mlflow_db, capsys):
    """Real MLflow (sqlite), a real Tune checkpoint: the driver callback logs a finished trial's
    ``last.pt`` as an MLflow model of its run, once; when the store fails meanwhile, it warns in
    one line and returns None instead of raising into Tune."""
    import shutil
    from types import SimpleNamespace

    from ray import tune

    from stas_sweep.sweep.callbacks import TrackerCallback
    from stas_sweep.sweep.space import load_spec
    from stas_sweep.tracking import SweepTracker

    uri = mlflow_db(tmp_path)
    spec = load_spec(sweep_file(tmp_path))
    tracker = SweepTracker(uri, spec.experiment, spec.name, str(tmp_path / "results"), spec.objectives)
    tracker.start_parent(spec, "plan")
    (tmp_path / "ckpt").mkdir()
    shutil.copyfile(sweep_stage1[0] / "checkpoints" / "last.pt", tmp_path / "ckpt" / "last.pt")
    callback = TrackerCallback(tracker, spec.objectives, spec.reference)
    trial = SimpleNamespace(trial_id="t1", config={}, last_result={"epoch": 2},
                            checkpoint=tune.Checkpoint.from_directory(str(tmp_path / "ckpt")))
    model = callback.log_model(trial)
    assert model.startswith("models:/m-") and callback.log_model(trial) == model  # once
    assert tracker.client.get_run(tracker.runs["t1"]).data.tags["model_uri"] == model
    assert tracker.client.get_logged_model(model.split("/")[-1]).source_run_id == tracker.runs["t1"]

    (tmp_path / "broken.db").write_bytes(b"SQLite format 3\x00" + b"\x13" * 4000)
    tracker.uri, tracker._client = f"sqlite:///{tmp_path / 'broken.db'}", None
    assert callback.log_model(SimpleNamespace(**{**vars(trial), "trial_id": "t2"})) is None
    err = capsys.readouterr().err
    assert "warning: trial t2: its model was not logged to MLflow" in err and "Traceback" not in err


@pytest.mark.slow(30)
def test_a_tiny_sweep_on_digits_canvas_has_a_front_of_several_points(ray_local, tmp_path, sweep_file, sweep_base,
                                                                     mlflow_db, monkeypatch, capsys):
    """The main job's data set, digits-canvas, in a tiny sweep (in this process, on the session's
    Ray): most tokens are silent background that STAS halts, so the trials' (trial, epsilon)
    points trade accuracy for energy and the front has more than one point, with halting on it.
    (On plain 16 px digits the same sweep's front is one point.)"""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_db(tmp_path))
    base = dict(sweep_base, model={"name": "spikformer-2-32", "timesteps": 2, "stem": "isps"},
                data={"name": "digits-canvas", "img_size": 16})  # 8 px digits on 16 px: 16 tokens
    space = sweep_file(
        tmp_path, name="canvas", base=base,
        space={"halting.alpha": {"fixed": -2.0}, "halting.beta": {"uniform": [-3.0, 0.0]}},
        eval={"epsilons": [0.0, 0.2, 0.5]},
        search={"sampler": "random", "seed": 0, "num_samples": 2,
                "points_to_evaluate": [{"halting.beta": 0.0}, {"halting.beta": -3.0}]},
        scheduler={"type": "fifo", "max_epochs": 1}, mlflow={"experiment": "canvas"})
    assert main(["run", str(space)]) == 0
    capsys.readouterr()
    assert main(["pareto", "--json", "--experiment", "canvas"]) == 0
    front = json.loads(capsys.readouterr().out)
    assert len(front) >= 2, front
    assert min(p["token_ratio"] for p in front) < 0.9 and all(p["method"] == "stas" for p in front), front
