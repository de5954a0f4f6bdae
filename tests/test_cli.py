"""The command line: models and energy."""

import json

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


def test_ui_serves_the_default_store_on_loopback(tmp_path, free_port):
    import os
    import signal
    import subprocess
    import sys
    import time
    import urllib.request

    port = free_port()
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
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # stas-sweep's own group; the server has its own session
        except ProcessLookupError:
            pass
    assert f"sqlite:///{tmp_path.resolve()}/mlflow.db" in out and f"http://127.0.0.1:{port}" in out
