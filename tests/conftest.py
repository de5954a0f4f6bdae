"""The shared test harness: the tiny training config, file writers, ports, MLflow and Ray
helpers, one trained stage 1 and calibrated tiny models. Test files take these as fixtures
and never import each other."""

from __future__ import annotations

import contextlib
import copy
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent / "drills"))  # procs.py, shared with the drills
from procs import kill_all  # noqa: E402

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # busy-waiting OpenMP threads crawl on shared cores

# the tiny training config every training and sweep test starts from (digits at their own 8x8
# pixels: 2x2 tokens; 2 timesteps)
TINY = {
    "model": {"name": "spikingformer-2-32", "timesteps": 2, "stem": "isps"},  # 2 blocks: block 1 always runs
    "data": {"name": "digits", "img_size": 8},
    "optim": {"lr": 5e-3, "weight_decay": 0.01},
    "epochs": 3,
    "batch_size": 32,
    "seed": 0,
    "device": "cpu",
    "tracking": {"enabled": False},
}
# a sweep's base: two epochs, the energy of two validation batches
SWEEP_BASE = {**TINY, "epochs": 2, "energy_batches": 2}


def _write_yaml(path: Path, raw) -> Path:
    """``raw`` (a mapping, dumped as YAML, or text) into ``path``; returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(raw if isinstance(raw, str) else yaml.safe_dump(raw))
    return path


def _sweep_raw(folder: Path, **over) -> dict:
    raw = {
        "name": "tiny",
        "base": copy.deepcopy(SWEEP_BASE),
        "stage1": {"epochs": 2},
        "space": {
            "halting.beta": {"uniform": [-8.0, -4.0]},
            "halting.delta_p": {"loguniform": [1e-3, 1e-1]},
            # 1e30 blows the loss up: a failing trial (each costs a fresh Ray worker, so one choice in four)
            "optim.lr": {"choice": [5e-3, 2e-3, 1e-2, 1.0e30]},
        },
        "eval": {"epsilons": [0.0, 0.2, 0.4]},
        "objectives": {"accuracy": "max", "energy_mj": "min"},
        "reference": {"energy_mj": 1.0},
        "search": {"sampler": "tpe", "seed": 0, "num_samples": 4,
                   "points_to_evaluate": [{"optim.lr": 5e-3, "halting.beta": -6.0, "halting.delta_p": 0.01},
                                          {"optim.lr": 1.0e30, "halting.beta": -6.0, "halting.delta_p": 0.01}]},
        "scheduler": {"type": "moasha", "grace_period": 1, "reduction_factor": 2, "max_epochs": 2},
        "resources": {"cpu": 1},
        "max_concurrent_trials": 2,
        "retries": 0,
        "storage_path": str(folder / "results"),
        "mlflow": {"experiment": "tiny-sweep"},
    }
    raw.update(over)
    return raw


def pytest_collection_modifyitems(config, items):
    """The longest tests run first: ``@pytest.mark.slow(seconds)`` says about how long a test
    takes on two busy cores. With ``--dist load`` (pyproject.toml) each xdist worker takes the
    next test when it is free, so the long ones spread over both workers and the many short
    ones fill the gaps at the end, instead of one long test starting last."""
    def seconds(item) -> float:
        mark = item.get_closest_marker("slow")
        return float(mark.args[0]) if mark and mark.args else 0.0
    items.sort(key=seconds, reverse=True)  # stable: the rest keep pytest's order


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path, monkeypatch):
    """Every test runs in its own temporary folder. MLflow puts the artifacts of an experiment
    in ./mlruns of the process that creates it, and nothing a test writes may land in the
    repository (tests name repository files by absolute paths)."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def tiny_config() -> dict:
    """A fresh copy of the tiny training config."""
    return copy.deepcopy(TINY)


@pytest.fixture
def sweep_base() -> dict:
    return copy.deepcopy(SWEEP_BASE)


@pytest.fixture
def write_yaml():
    """``write_yaml(path, mapping_or_text) -> path``."""
    return _write_yaml


@pytest.fixture(scope="session")
def sweep_stage1(tmp_path_factory):
    """The shared stage 1 of the tiny sweeps, trained once per session in-process: the folder
    ``stage1-<key>`` as a sweep keeps it, and its key. A sweep whose stage-1 config is the same
    reuses it ("stage 1: reusing ..."), exactly as a second sweep of a user's would."""
    from stas_sweep.sweep.space import load_spec
    from stas_sweep.sweep.trainable import train_stage1

    root = tmp_path_factory.mktemp("sweep-stage1")
    spec = load_spec(_write_yaml(root / "space.yaml", _sweep_raw(root)))
    out = root / "results" / f"stage1-{spec.stage1_key()}"
    train_stage1(spec.stage1, str(out))
    return out, spec.stage1_key()


@pytest.fixture
def sweep_file(sweep_stage1):
    """``sweep_file(folder, fresh_stage1=False, **top_level_overrides) -> folder/space.yaml``: a
    tiny 4-trial sweep (one trial fails) into ``folder/results``, MLflow experiment
    ``tiny-sweep``. Unless ``fresh_stage1``, the session's trained stage 1 is put where the
    sweep looks for it, so only the sweep's own end-to-end test trains one through Ray."""
    import shutil

    from stas_sweep.sweep.space import load_spec

    stage1_dir, key = sweep_stage1

    def write(folder, fresh_stage1=False, **over):
        path = _write_yaml(Path(folder) / "space.yaml", _sweep_raw(Path(folder), **over))
        if not fresh_stage1:
            spec = load_spec(path)
            if spec.stage1_key() == key and "://" not in spec.storage_path:
                shutil.copytree(stage1_dir, Path(spec.storage_dir()) / stage1_dir.name, dirs_exist_ok=True)
        return path
    return write


@pytest.fixture(scope="session")
def _mlflow_template(tmp_path_factory) -> Path:
    """An empty MLflow sqlite store with its tables made (creating them takes seconds)."""
    import mlflow

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    with contextlib.chdir(path.parent):  # the Default experiment's artifacts: ./mlruns when it is made
        mlflow.MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def mlflow_db(_mlflow_template):
    """``mlflow_db(folder, name="mlflow.db") -> URI``: a fresh, empty sqlite store in ``folder``."""
    import shutil

    def make(folder, name="mlflow.db") -> str:
        path = Path(folder) / name
        shutil.copyfile(_mlflow_template, path)
        return f"sqlite:///{path}"
    return make


def _stop_ray(ray_tmp: str, timeout: float = 1) -> None:
    """Stop the Ray processes whose command line names ``ray_tmp`` (the temp dir a test gave its
    Ray), and nothing else: ``ray stop --force`` would kill every Ray on the machine."""
    kill_all(ray_tmp, grace_s=timeout)


@pytest.fixture
def stop_ray():
    """``stop_ray(ray_tmp)``: stop the Ray a test started with that temp dir, only that one."""
    return _stop_ray


@pytest.fixture
def short_sqlite_busy_timeout():
    """MLflow's sqlite store waits 20 s for a locked database (``PRAGMA busy_timeout = 20000``,
    set on every session it opens, not configurable); in this process, for one test, it waits
    1 s instead, so a test of a locked store sees the same "database is locked" error sooner.
    Done with SQLAlchemy's documented ``before_cursor_execute`` hook, which may rewrite a statement."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    def shorten(_conn, _cursor, statement, parameters, _context, _executemany):
        if statement.replace(" ", "").lower().startswith("pragmabusy_timeout="):
            return "PRAGMA busy_timeout = 1000;", parameters
        return statement, parameters

    event.listen(Engine, "before_cursor_execute", shorten, retval=True)
    yield
    event.remove(Engine, "before_cursor_execute", shorten)


@pytest.fixture(scope="session")
def ray_local(tmp_path_factory):
    """A local Ray in this test process, started once per session by the product's own
    ``init_ray`` (loopback only, its own temp dir); yields a folder for Tune's results."""
    import ray

    from stas_sweep.sweep.runner import init_ray

    if ray.is_initialized():
        pytest.fail("a test left Ray running in this process")
    saved = dict(os.environ)
    os.environ.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0",
                      STAS_SWEEP_RAY_TMPDIR=tempfile.mkdtemp(prefix="r", dir="/tmp"))  # short socket paths
    for key in ("RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"):
        os.environ.pop(key, None)
    try:
        init_ray(None, None)
    finally:  # Ray's processes have what they need; later tests (a `ray start` of their own) must not
        os.environ.clear()
        os.environ.update(saved)
    yield tmp_path_factory.mktemp("tune")
    ray.shutdown()


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children, their children, ...), from /proc."""
    children: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):  # a process that ended meanwhile
            if proc.name.isdigit():
                ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(proc.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


@pytest.fixture
def descendants():
    """``descendants(pid) -> [pid, ...]``: every process below ``pid``, from /proc."""
    return _descendants


@pytest.fixture
def forbid_ray(monkeypatch):
    """The test fails if the command under test starts or attaches to Ray (``runner.init_ray``):
    for refusals that must come first. (Ray may already run in this process: ``ray_local``.)"""
    from stas_sweep.sweep import runner

    def no_ray(*_args, **_kwargs):
        raise AssertionError("Ray was started before the input was checked")

    monkeypatch.setattr(runner, "init_ray", no_ray)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def free_port():
    """``free_port() -> int``: a port on 127.0.0.1 nobody listens on right now."""
    return _free_port


@pytest.fixture
def cli():
    """``cli(args, env, cwd)``: ``stas-sweep ARGS`` in a fresh interpreter, output captured."""
    def run(args, env, cwd, timeout=900):
        return subprocess.run([sys.executable, "-m", "stas_sweep.cli", *args], env=env, cwd=cwd,
                              capture_output=True, text=True, timeout=timeout)
    return run


@pytest.fixture
def mlflow_runs():
    """``mlflow_runs(tracking_uri, experiment) -> (client, sweep parent runs, trial runs)``."""
    def runs_of(uri, experiment):
        import mlflow

        client = mlflow.MlflowClient(uri)
        exp = client.get_experiment_by_name(experiment)
        runs = client.search_runs([exp.experiment_id], max_results=1000)
        parents = [r for r in runs if r.data.tags.get("stas.role") == "sweep"]
        children = [r for r in runs if "trial_id" in r.data.tags]
        return client, parents, children
    return runs_of


@pytest.fixture
def sweep_env(tmp_path, mlflow_db):
    """A folder and the environment of a local sweep (own Ray temp dir, sqlite MLflow); Ray is
    stopped afterwards."""
    ray_tmp = tempfile.mkdtemp(prefix="r", dir="/tmp")  # Ray's socket paths must stay short
    env = dict(os.environ, RAY_AUTH_MODE="disabled", STAS_SWEEP_RAY_TMPDIR=ray_tmp,
               MLFLOW_TRACKING_URI=mlflow_db(tmp_path), HOME=str(tmp_path),
               RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1")
    yield tmp_path, env
    _stop_ray(ray_tmp)


@pytest.fixture(scope="session")
def trained_stage1(tmp_path_factory, _mlflow_template):
    """One tiny stage-1 run (3 epochs, through ``stas-sweep train``, logged to MLflow), shared by
    every test that needs a trained checkpoint: ``(root, tracking_uri)``; the run is in
    ``root/run``. Tests must not change its files."""
    from stas_sweep.cli import main

    root = tmp_path_factory.mktemp("stage1")
    cfg = _write_yaml(root / "s1.yaml", dict(TINY, tracking={"experiment": "t", "enabled": True}))
    shutil.copyfile(_mlflow_template, root / "mlflow.db")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with contextlib.chdir(root):  # MLflow puts a new experiment's artifacts in ./mlruns
        rc = main(["train", str(cfg), "--output-dir", str(root / "run"), "--no-progress", "--tracking-uri", uri])
    assert rc == 0
    return root, uri
