"""The thread policy: passive OpenMP waiting from the CLI, --threads, one thread per trial CPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from stas_sweep.cli import main
from stas_sweep.sweep.trainable import use_trial_threads
from stas_sweep.train.threads import available_cores, default_threads, threads_for_cpus

ROOT = Path(__file__).resolve().parents[1]
PROBE = ("import sys, os; import stas_sweep.cli; loaded = 'torch' in sys.modules; import torch; "
         "print(os.environ.get('OMP_WAIT_POLICY'), loaded)")


@pytest.fixture(autouse=True)
def _keep_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _probe(**env_overrides) -> str:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env.update(env_overrides)
    return subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True,
                          check=True, timeout=120).stdout.strip()


def test_cli_sets_passive_wait_before_torch_loads():
    assert _probe() == "PASSIVE False"  # set by importing the CLI, and torch was not loaded yet


def test_cli_keeps_a_wait_policy_the_user_set():
    assert _probe(OMP_WAIT_POLICY="ACTIVE") == "ACTIVE False"


class _Stop(Exception):
    pass


def test_train_threads_option_is_applied(monkeypatch, tmp_path):
    seen = {}

    class FakeTrainer:
        def __init__(self, *args, **kwargs):
            seen["threads"] = torch.get_num_threads()
            raise _Stop

    monkeypatch.setattr("stas_sweep.train.run.Trainer", FakeTrainer)  # the trainer train_run builds
    config = str(ROOT / "configs" / "digits_stage1.yaml")
    torch.set_num_threads(2)
    with pytest.raises(_Stop):
        main(["train", config, "--threads", "1", "--output-dir", str(tmp_path / "a"), "--no-mlflow"])
    assert seen["threads"] == 1
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    with pytest.raises(_Stop):
        main(["train", config, "--output-dir", str(tmp_path / "b"), "--no-mlflow"])
    assert seen["threads"] == available_cores()  # default: the cores this process may use
    assert main(["train", config, "--threads", "0", "--output-dir", str(tmp_path / "c")]) == 2


def test_default_threads_follow_omp_num_threads(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert default_threads() == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert default_threads() == available_cores()


def test_trial_uses_exactly_its_cpus():
    assert [threads_for_cpus(c) for c in (0.5, 1, 2, 3.5)] == [1, 1, 2, 3]
    assert use_trial_threads(2) == 2 and torch.get_num_threads() == 2
    assert use_trial_threads(1) == 1 and torch.get_num_threads() == 1
    assert use_trial_threads() is None  # outside Ray: left alone
