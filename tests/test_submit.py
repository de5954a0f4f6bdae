"""Submitting a sweep as a Ray job to a Ray head on this machine, logging to an MLflow server.

Real components: ``ray start --head`` (dashboard on 127.0.0.1, its own temp dir, auth mode set
explicitly) and ``mlflow server`` on 127.0.0.1; the test stops only what it started.
"""

import os
import subprocess
import sys
import tempfile
import time
import urllib.request

import pytest


def wait_http(url: str, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(url)


@pytest.fixture
def head_and_mlflow(tmp_path, free_port, mlflow_db, stop_ray):
    ray_tmp = tempfile.mkdtemp(prefix="r", dir="/tmp")
    env = dict(os.environ, RAY_AUTH_MODE="disabled", HOME=str(tmp_path), RAY_USAGE_STATS_ENABLED="0")
    for key in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "STAS_SWEEP_RAY_TMPDIR"):
        env.pop(key, None)  # a cluster head as a user starts one, whatever ran before in this process
    # the agent port too: a local sweep's Ray (another test) may hold the default 52365, and a
    # head whose agent cannot listen takes no job ("No available agent to submit job")
    dash, gcs, ml, agent = free_port(), free_port(), free_port(), free_port()
    # the MLflow server starts in the background while `ray start` runs
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
                               mlflow_db(tmp_path, "server.db"), "--artifacts-destination",
                               str(tmp_path / "artifacts"), "--host", "127.0.0.1", "--port", str(ml), "--workers", "1"],
                              env=dict(env, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"),  # as cluster/README says
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        subprocess.run(["ray", "start", "--head", f"--port={gcs}", "--dashboard-host=127.0.0.1",
                        f"--dashboard-port={dash}", f"--dashboard-agent-listen-port={agent}", "--num-cpus=2", "--num-gpus=0", f"--temp-dir={ray_tmp}",
                        "--disable-usage-stats"], env=env, check=True, capture_output=True, timeout=180)
        wait_http(f"http://127.0.0.1:{ml}/health")
        wait_http(f"http://127.0.0.1:{dash}/api/version")
        yield tmp_path, env, f"http://127.0.0.1:{dash}", f"http://127.0.0.1:{ml}"
    finally:
        os.killpg(server.pid, 9)  # the server and its uvicorn worker; nothing of the test needs them now
        server.wait(timeout=30)
        stop_ray(ray_tmp)


@pytest.mark.slow(120)
def test_submit_runs_the_sweep_on_the_head_and_logs_to_the_server(head_and_mlflow, sweep_file, mlflow_runs, capsys):
    folder, env, address, mlflow_url = head_and_mlflow
    space = sweep_file(folder, name="submitted", search={"sampler": "tpe", "seed": 0, "num_samples": 2},
                       space={"halting.beta": {"uniform": [-8.0, -4.0]}}, scheduler={"type": "fifo", "max_epochs": 1},
                       mlflow={"experiment": "tiny-sweep"})
    # a tracking URI with credentials (the server ignores them): they reach MLflow, and nothing the
    # sweep prints, logs or stores holds the password
    secret = "S3cr3t-pw"
    with_user = mlflow_url.replace("http://", f"http://stasuser:{secret}@")
    proc = subprocess.run([sys.executable, "-m", "stas_sweep.cli", "submit", str(space), "--address", address,
                           "--tracking-uri", with_user, "--agent-wait", "240"], env=env, cwd=folder, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "SUCCEEDED" in proc.stdout and "on the front" in proc.stdout  # the job's own output was streamed
    assert secret not in proc.stdout + proc.stderr
    stored = [p for p in folder.rglob("*") if p.is_file()]  # the server's store and artifacts, the sweep's storage
    assert any(p.name == "tuner.pkl" for p in stored) and any(p.name == "plan.txt" for p in stored)
    holding = [str(p) for p in stored if secret.encode() in p.read_bytes()]
    assert holding == [], holding
    _, parents, runs = mlflow_runs(mlflow_url, "tiny-sweep")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    trials = [c for c in runs if c.data.tags.get("stas.role") == "trial"]
    points = [c for c in runs if c.data.tags.get("stas.role") == "point"]  # one per (trial, epsilon)
    assert len(trials) == 2 and len(points) == 2 * 3
    assert {c.data.tags["pareto"] for c in points} <= {"true", "false"}
    assert any(c.data.tags["pareto"] == "true" for c in points)
    _pick_the_knee_and_evaluate_it(mlflow_url, parents[0], trials, points, capsys)


def _pick_the_knee_and_evaluate_it(url, parent, trials, points, capsys):
    """The README's "Picking a model" on the server: every trial logged its model and each point
    run names it with its knob; `pick knee` registers the knee of `pareto --json` with that
    point's knob and metrics as tags, once; `eval` of it gives the point's accuracy at its knob."""
    import json

    import mlflow

    from stas_sweep.cli import main
    from stas_sweep.sweep.front import knee_point

    models = {t.data.tags["trial_id"]: t.data.tags["model_uri"] for t in trials}
    assert len(set(models.values())) == 2 and all(m.startswith("models:/m-") for m in models.values())
    assert all(p.data.tags["model_uri"] == models[p.data.tags["trial_id"]]
               and p.data.tags["knob"] == f"epsilon={p.data.params['epsilon']}" for p in points)
    assert parent.data.tags["stage1_model_uri"].startswith("models:/m-")  # the shared stage 1, once

    assert main(["pareto", "--json", "--tracking-uri", url]) == 0
    front = json.loads(capsys.readouterr().out)
    assert main(["pick", "knee", "--tracking-uri", url]) == 0
    uri = capsys.readouterr().out.strip()
    assert uri == "models:/submitted/1"  # named after the sweep
    knee = knee_point(front, [("accuracy", "max"), ("energy_mj", "min")])
    tags = mlflow.MlflowClient(url).get_model_version("submitted", "1").tags
    assert (tags["trial_id"], tags["knob"], tags["method"], tags["sweep"]) == \
        (knee["trial_id"], f"epsilon={knee['epsilon']}", "stas", "submitted")
    assert {k: float(tags[k]) for k in ("epsilon", "accuracy", "energy_mj", "token_ratio")} == \
        {k: knee[k] for k in ("epsilon", "accuracy", "energy_mj", "token_ratio")}

    assert main(["eval", uri, "--json", "--quiet", "--tracking-uri", url]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["epsilon"], r["accuracy"]) for r in rows] == [(knee["epsilon"], pytest.approx(knee["accuracy"], abs=1e-9))]
    assert main(["pick", "knee", "--tracking-uri", url]) == 0 and capsys.readouterr().out.strip() == uri  # once
    assert main(["pick", "0" * 32, "--tracking-uri", url]) == 2
    assert "no run " + "0" * 32 in capsys.readouterr().err


def test_submit_to_an_unreachable_address_fails_clearly(tmp_path, sweep_file, free_port, monkeypatch, capsys):
    from stas_sweep.cli import main

    space = sweep_file(tmp_path)
    port = free_port()  # nothing listens there
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert main(["submit", str(space), "--address", f"http://127.0.0.1:{port}"]) == 2
    assert f"cannot reach the Ray dashboard at http://127.0.0.1:{port}" in capsys.readouterr().err


def test_local_run_refuses_gpus_it_does_not_have(tmp_path, sweep_file, mlflow_db, monkeypatch, capsys, forbid_ray):
    """More GPUs per trial than this machine has (32 workers of one GPU each): refused in this
    process before a Ray starts."""
    from stas_sweep.cli import main

    space = sweep_file(tmp_path, resources={"workers": 32, "cpu": 1, "gpu": 1})
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_db(tmp_path, "m.db"))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(space)]) == 2
    assert "GPU: a trial needs 32, this machine has" in capsys.readouterr().err


def test_submit_quotes_every_value_of_the_entrypoint(tmp_path, sweep_file, monkeypatch):
    """Ray runs the entrypoint through a shell: a hostile tracking URI must stay one argument."""
    import shlex

    import ray.job_submission

    from stas_sweep.sweep.space import load_spec
    from stas_sweep.sweep.submit import submit

    submitted = {}

    class RecordingClient:
        def __init__(self, address):
            pass

        def submit_job(self, entrypoint, **kwargs):
            submitted["entrypoint"] = entrypoint
            return "job-1"

    monkeypatch.setattr(ray.job_submission, "JobSubmissionClient", RecordingClient)
    spec = load_spec(sweep_file(tmp_path))
    hostile = "http://127.0.0.1:5000; touch /tmp/x #"
    submit(spec, "http://127.0.0.1:8265", tracking_uri=hostile, wait=False, log=lambda *_: None)
    argv = shlex.split(submitted["entrypoint"])
    assert argv[argv.index("--tracking-uri") + 1] == hostile
    assert argv[:5] == ["python", "-m", "stas_sweep.cli", "run", "space.yaml"] and len(argv) == 7


def test_submission_waits_for_the_job_agent_of_a_head_just_started():
    """A head that has just started refuses jobs ("No available agent", HTTP 500) until its agent
    registers: the submission is retried, said once; any other error is raised at once."""
    from stas_sweep.sweep.submit import submit_when_ready

    class Head:
        def __init__(self, refusals, error="Request failed with status code 500: No available agent to submit job"):
            self.refusals, self.error, self.calls = refusals, error, 0

        def submit_job(self, **job):
            self.calls += 1
            if self.calls <= self.refusals:
                raise RuntimeError(self.error)
            return job["submission_id"]

    lines: list[str] = []
    head = Head(refusals=2)
    assert submit_when_ready(head, lines.append, wait_s=30, submission_id="s-1") == "s-1"
    assert head.calls == 3 and len(lines) == 1 and "not up yet" in lines[0]
    other = Head(refusals=1, error="Request failed with status code 400: bad runtime_env")
    with pytest.raises(RuntimeError, match="bad runtime_env"):
        submit_when_ready(other, lines.append, wait_s=30, submission_id="s-2")
    assert other.calls == 1
    lines.clear()
    never = Head(refusals=99)  # a head that never gets an agent: progress, then one line
    with pytest.raises(ConnectionError, match="did not come up within 2.5 s"):
        submit_when_ready(never, lines.append, wait_s=2.5, every_s=1.0, submission_id="s-3")
    assert never.calls >= 3 and len(lines) >= 2 and all("waited" in ln for ln in lines), lines
