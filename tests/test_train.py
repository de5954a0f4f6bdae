"""Training end to end on digits: stage 1 -> stage 2, resume, evaluation and bad input."""

import json

import pytest
import torch
import yaml

from stas_sweep.cli import main
from stas_sweep.train import CheckpointError, ConfigError, Trainer, config_from_dict, load_config


@pytest.mark.slow(20)
def test_stage1_then_stage2_end_to_end(trained_stage1, tmp_path, capsys, tiny_config, write_yaml):
    root, uri = trained_stage1
    history = [json.loads(line) for line in (root / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(history) == 3
    assert history[-1]["accuracy"] > 50.0  # 10 classes: chance is 10 %
    assert all(h["token_ratio"] == 1.0 and h["ponder_loss"] == 0.0 for h in history)
    for key in ("train_loss", "task_loss", "energy_mj", "energy_strict_mj", "lr", "images_per_s"):
        assert key in history[-1]
    # spikingformer: every token layer reads spikes, the conventions differ in the head only
    assert 0 < history[-1]["energy_mj"] <= history[-1]["energy_strict_mj"] * 1.5
    assert (root / "run" / "curves.png").read_bytes()[:4] == b"\x89PNG"

    s2 = dict(tiny_config, halting={"alpha": 5.0, "beta": -8.0, "epsilon": 0.01, "delta_p": 0.01},
              init_from=str(root / "run" / "checkpoints" / "last.pt"), epochs=2,
              eval_epsilons=[0.0, 0.2, 0.5])
    cfg = write_yaml(tmp_path / "s2.yaml", s2)
    assert main(["train", str(cfg), "--output-dir", str(tmp_path / "s2"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "initialised from" in out
    h2 = [json.loads(line) for line in (tmp_path / "s2" / "metrics.jsonl").read_text().splitlines()]
    assert h2[-1]["accuracy"] > 50.0
    assert h2[-1]["token_ratio"] < 1.0 and h2[-1]["ponder_loss"] > 0
    rows = json.loads((tmp_path / "s2" / "epsilon_table.json").read_text())
    assert [r["epsilon"] for r in rows] == [0.0, 0.2, 0.5]
    assert rows[-1]["token_ratio"] <= rows[0]["token_ratio"]
    # halting saves more as epsilon grows; at epsilon 0 this tiny model (D = 32) halts ~6 % of its
    # cells, about what A-SSA's own D + 2 MACs per scored cell cost, so only the later rows must save
    assert [r["energy_reduction"] for r in rows] == sorted(r["energy_reduction"] for r in rows)
    assert rows[-1]["energy_reduction"] > 0
    assert all(r["energy_strict_mj"] > 0 for r in rows)

    # eval: the table, JSON keyed by the SPEC names, halting maps and similarity
    ckpt = str(tmp_path / "s2" / "checkpoints" / "last.pt")
    assert main(["eval", ckpt, "--epsilons", "0,0.3", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["epsilon"] for r in rows] == [0.0, 0.3]
    assert {"epsilon", "accuracy", "token_ratio", "energy_mj", "energy_strict_mj", "energy_reduction"} <= set(rows[0])
    maps = tmp_path / "maps"
    assert main(["eval", ckpt, "--epsilons", "0.1", "--halting-maps", str(maps), "--similarity"]) == 0
    out = capsys.readouterr().out
    assert "temporal similarity" in out and "reduction" in out and "strict mJ" in out
    assert (maps / "halting_maps.png").read_bytes()[:4] == b"\x89PNG"
    assert len(list(maps.glob("halting_map_*.png"))) == 8

    # the stage-1 run is in MLflow with its params and per-epoch metrics
    import mlflow

    client = mlflow.MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("t").experiment_id])
    assert run.data.params["model.name"] == "spikingformer-2-32"
    from stas_sweep.energy import METER_VERSION
    from stas_sweep.tracking import ENERGY_TAG

    assert run.data.tags[ENERGY_TAG] == str(METER_VERSION)  # the meter's convention travels with the run
    assert len(client.get_metric_history(run.info.run_id, "accuracy")) == 3
    assert len(client.get_metric_history(run.info.run_id, "energy_strict_mj")) == 3
    assert run.info.status == "FINISHED"
    assert any(a.path == "checkpoints" for a in client.list_artifacts(run.info.run_id))


@pytest.mark.slow(13)
def test_resume_reproduces_uninterrupted_run(tmp_path, tiny_config):
    cfg = config_from_dict(dict(tiny_config, epochs=2))
    full = Trainer(cfg, tmp_path / "full", progress=False, log=None).fit()

    def interrupt(epoch, _metrics, _trainer):  # Ctrl-C after the first epoch's checkpoint
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Trainer(cfg, tmp_path / "cut", progress=False, log=None).fit(callbacks=[interrupt])
    resumed = Trainer(cfg, tmp_path / "cut", resume=True, progress=False, log=None).fit()
    assert len(resumed) == 2
    for a, b in zip(full, resumed):
        for key in ("train_loss", "accuracy", "token_ratio", "energy_mj", "energy_strict_mj", "lr"):
            assert a[key] == b[key], key
    wa = torch.load(tmp_path / "full/checkpoints/last.pt", weights_only=True)["model"]
    wb = torch.load(tmp_path / "cut/checkpoints/last.pt", weights_only=True)["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_bad_config_errors_name_the_key(tmp_path, capsys, tiny_config, write_yaml):
    cases = [
        ({**tiny_config, "epochz": 3}, "unknown key 'epochz'"),
        ({**tiny_config, "model": {"name": "spikingformer-1-32", "stem": "xps"}}, "model.stem is 'xps'; accepted values: sps, isps"),
        ({**tiny_config, "batch_size": "big"}, "batch_size must be an integer"),
        ({**tiny_config, "halting": {"epsilon": 1.5}}, "halting.epsilon"),
        ({**tiny_config, "halting": {"gamma": 1}}, "unknown key 'halting.gamma'"),
        ({**tiny_config, "model": {"name": "spikingformer-2-32", "img_size": 16}}, "unknown key 'model.img_size'"),
        ({**tiny_config, "model": {"name": "vit-1-32"}}, "model.name: unknown model 'vit-1-32'"),
    ]
    for i, (raw, message) in enumerate(cases):
        path = write_yaml(tmp_path / f"bad{i}.yaml", raw)
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
            load_config(path)
        assert main(["train", str(path), "--output-dir", str(tmp_path / "out"), "--no-mlflow"]) == 2
        err = capsys.readouterr().err
        assert str(path) in err and "error" in err
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConfigError, match="--set 'epochs': expected KEY=VALUE"):
        load_config(write_yaml(tmp_path / "ok.yaml", tiny_config), ["epochs"])


def test_missing_dataset_and_bad_checkpoints_exit_2_and_keep_files(trained_stage1, tmp_path, capsys, tiny_config, write_yaml):
    root, _ = trained_stage1
    last = root / "run" / "checkpoints" / "last.pt"
    before = last.read_bytes()
    # a missing data set
    cfg = write_yaml(tmp_path / "cifar.yaml", dict(tiny_config, data={"name": "cifar10", "root": str(tmp_path / "nowhere")}))
    assert main(["train", str(cfg), "--no-mlflow", "--output-dir", str(tmp_path / "o1")]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "nowhere") in err and "cifar-10-batches-py" in err
    # rerunning into a folder that holds a run, without --resume
    cfg = write_yaml(tmp_path / "s1.yaml", tiny_config)
    assert main(["train", str(cfg), "--no-mlflow", "--output-dir", str(root / "run")]) == 2
    assert "--resume" in capsys.readouterr().err
    # a corrupt init_from checkpoint
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(b"not a checkpoint")
    cfg = write_yaml(tmp_path / "s2.yaml", dict(tiny_config, halting={}, init_from=str(bad)))
    assert main(["train", str(cfg), "--no-mlflow", "--output-dir", str(tmp_path / "o2")]) == 2
    assert "not a readable stas-sweep checkpoint" in capsys.readouterr().err
    # a mismatched one: stage 1 weights into a wider model
    cfg = write_yaml(tmp_path / "s3.yaml", dict(tiny_config, model={"name": "spikingformer-1-16", "timesteps": 2}, halting={},
                                            init_from=str(last)))
    assert main(["train", str(cfg), "--no-mlflow", "--output-dir", str(tmp_path / "o3")]) == 2
    assert "trained with name='spikingformer-2-32', this run has name='spikingformer-1-16'" in capsys.readouterr().err
    # weights of another shape under the same name
    from stas_sweep import create_model
    from stas_sweep.train.checkpoint import load_model_weights

    state = torch.load(last, weights_only=True)["model"]
    with pytest.raises(CheckpointError, match="do not fit this model.*of another shape"):
        load_model_weights(create_model("spikingformer-1-32", img_size=16, num_classes=7, in_channels=1), state, "x")
    with pytest.raises(CheckpointError):
        Trainer(config_from_dict(tiny_config), tmp_path / "o4", resume=True, progress=False, log=None)
    assert last.read_bytes() == before
    assert main(["eval", str(bad)]) == 2


def test_sml_branch_trains_only_in_training(tmp_path, tiny_config):
    cfg = config_from_dict(dict(tiny_config, epochs=1, sml={"enabled": True}))
    trainer = Trainer(cfg, tmp_path / "sml", progress=False, log=None)
    plain = Trainer(config_from_dict(dict(tiny_config, epochs=1)), tmp_path / "plain", progress=False, log=None)
    (metrics,) = trainer.fit()
    assert trainer.sml.blocks == [0]  # the public placement scaled to 2 blocks: after the first
    assert metrics["train_loss"] != metrics["task_loss"]  # SML's loss is the task term
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(trainer.model) == count(plain.model)  # the branch is not part of the model
    in_optimizer = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert all(id(p) in in_optimizer for p in trainer.sml.module.parameters())
    assert "sml" in torch.load(trainer.last_path, weights_only=True)


def test_sml_loss_is_the_public_codes_on_a_two_block_toy_model():
    """SML as its public code computes it, against a hand computation: spikformer-2-32 on 16 px
    (4 x 4 tokens), one surrogate module after block 0 (the default placement for 2 blocks).
    The module reads block 0's output averaged over T on the 4 x 4 token grid; the loss is
    lamb * (KL(f || q) + KL(q || f)) / 2 + (1 - lamb) * (CE(f) + alpha CE(q)) / (1 + alpha) at
    temperature 3, alpha 0.5, lamb 0.9; at evaluation the module does not run."""
    import math

    from stas_sweep import create_model
    from stas_sweep.train.sml import SML

    torch.manual_seed(0)
    model = create_model("spikformer-2-32", img_size=16, timesteps=2).train()
    sml = SML(model)
    assert sml.blocks == [0] and len(sml.module) == 1
    block0 = []
    hook = model.blocks[0].register_forward_hook(lambda _m, _i, out: block0.append(out.detach()))
    x, y = torch.rand(3, 3, 16, 16), torch.tensor([1, 0, 7])
    out = model(x)
    hook.remove()
    loss = sml.loss(torch.nn.functional.cross_entropy, out.logits, y)

    # the module by hand: mean over T, tokens on their 4 x 4 grid, D = 32 channels < 256: a 7x7
    # stride-2 conv to 256, 5x5 stride 2, 3x3, pool to 2 x 2, the two-layer classifier
    feat = block0[0].mean(0).transpose(1, 2).reshape(3, 32, 4, 4)
    m = sml.module[0]
    for conv in m.convs:
        c, bn = conv[0], conv[1]
        feat = torch.nn.functional.leaky_relu(bn(torch.nn.functional.conv2d(feat, c.weight, None, c.stride, c.padding)), 0.01)
    assert [conv[0].kernel_size[0] for conv in m.convs] == [7, 5, 3] and feat.shape == (3, 256, 1, 1)
    lin1, bn1, lin2 = m.prediction[2], m.prediction[3], m.prediction[5]
    q = lin2(torch.nn.functional.leaky_relu(bn1(lin1(torch.nn.functional.adaptive_avg_pool2d(feat, 2).flatten(1))), 0.01))
    f = out.logits.detach()

    def ce(z):
        return sum(-math.log(math.exp(z[i][label]) / sum(math.exp(v) for v in z[i])) for i, label in enumerate(y.tolist())) / 3

    def kl(a, b):  # KL(softmax(b / 3) || softmax(a / 3)), batch mean
        total = 0.0
        for i in range(3):
            pa = [math.exp(v / 3) for v in a[i]]
            pb = [math.exp(v / 3) for v in b[i]]
            sa, sb = sum(pa), sum(pb)
            total += sum(p / sb * math.log((p / sb) / (r / sa)) for p, r in zip(pb, pa))
        return total / 3

    fl, ql = f.tolist(), q.detach().tolist()
    hard = (ce(fl) + 0.5 * ce(ql)) / 1.5
    soft = (kl(ql, fl) + kl(fl, ql)) / 2
    assert loss.item() == pytest.approx(0.9 * soft + 0.1 * hard, rel=1e-5)
    model.eval()
    with torch.no_grad():
        model(x)
    with pytest.raises(RuntimeError, match="no training forward"):
        sml.loss(torch.nn.functional.cross_entropy, out.logits, y)


def test_training_config_rejects_a_key_given_twice(tmp_path, capsys, tiny_config):
    path = tmp_path / "twice.yaml"
    path.write_text(yaml.safe_dump(tiny_config) + "epochs: 3\n")
    with pytest.raises(ConfigError, match="key 'epochs' is given twice"):
        load_config(path)
    assert main(["train", str(path), "--no-mlflow", "--output-dir", str(tmp_path / "out")]) == 2
    assert str(path) in capsys.readouterr().err


@pytest.mark.slow(10)
def test_tracking_outage_mid_run_loses_no_metrics(tmp_path, tiny_config, capfd, short_sqlite_busy_timeout, mlflow_db):
    """The sqlite store is locked by another connection (an exclusive transaction) at the end
    of epoch 1, so that epoch's metrics cannot be logged (MLflow waits, then fails); it is
    unlocked at the end of epoch 2: training finishes, one warning and no traceback is printed,
    and after the outage every epoch's metrics are in MLflow and the run is FINISHED."""
    import sqlite3

    import mlflow

    from stas_sweep.train.run import train_run

    db = tmp_path / "mlflow.db"
    uri = mlflow_db(tmp_path)
    cfg = config_from_dict(dict(tiny_config, epochs=2, tracking={"experiment": "outage"}))
    lock: dict = {}

    def outage(epoch, _metrics, _trainer):  # runs before the epoch's metrics are logged
        if epoch == 1:
            lock["con"] = sqlite3.connect(db, isolation_level=None)
            lock["con"].execute("BEGIN EXCLUSIVE")
        elif epoch == 2:
            lock["con"].execute("COMMIT")
            lock["con"].close()

    lines: list[str] = []
    run = train_run(cfg, tmp_path / "run", progress=False, tracking_uri=uri, callbacks=[outage], log=lines.append)
    assert len(run.history) == 2
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err
    assert err.count("warning: MLflow store") == 1 and "database is locked" in err
    assert "answers again" in err  # however many retries the outage took
    client = mlflow.MlflowClient(uri)
    (r,) = client.search_runs([client.get_experiment_by_name("outage").experiment_id])
    assert r.info.status == "FINISHED"
    # the outcome: every metric of every epoch reached the store exactly once, with its value
    per_epoch = [k for k in run.history[0] if k != "epoch" and isinstance(run.history[0][k], (int, float))]
    assert {"accuracy", "energy_mj", "train_loss"} <= set(per_epoch) <= set(r.data.metrics)
    for key in r.data.metrics:
        steps = [m.step for m in client.get_metric_history(r.info.run_id, key)]
        assert len(steps) == len(set(steps)), f"{key} logged twice at a step: {sorted(steps)}"
    for key in per_epoch:
        logged = sorted((m.step, m.value) for m in client.get_metric_history(r.info.run_id, key))
        assert logged == [(h["epoch"], pytest.approx(float(h[key]))) for h in run.history], key
    assert any(a.path == "curves.png" for a in client.list_artifacts(r.info.run_id))


@pytest.mark.slow(15)
def test_resume_into_a_store_without_the_run_starts_a_new_one(tmp_path, tiny_config, capsys, mlflow_db):
    """A run interrupted after epoch 1 (store A) resumed with another tracking URI (store B):
    it says so, and B's new run holds every epoch (the first from metrics.jsonl)."""
    import mlflow

    from stas_sweep.train.run import train_run

    cfg = config_from_dict(dict(tiny_config, epochs=2, tracking={"experiment": "moved"}))
    a, b = mlflow_db(tmp_path, "a.db"), mlflow_db(tmp_path, "b.db")

    def interrupt(epoch, _metrics, _trainer):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_run(cfg, tmp_path / "run", progress=False, tracking_uri=a, callbacks=[interrupt])
    lines: list[str] = []
    train_run(cfg, tmp_path / "run", resume=True, progress=False, tracking_uri=b, log=lines.append)
    assert any("has no run" in line and "new run" in line for line in lines), lines
    client = mlflow.MlflowClient(b)
    (r,) = client.search_runs([client.get_experiment_by_name("moved").experiment_id])
    assert r.info.status == "FINISHED" and r.data.params["model.name"] == "spikingformer-2-32"
    assert sorted(m.step for m in client.get_metric_history(r.info.run_id, "accuracy")) == [1, 2]
    (old,) = mlflow.MlflowClient(a).search_runs([mlflow.MlflowClient(a).get_experiment_by_name("moved").experiment_id])
    assert old.info.status == "KILLED"  # not left RUNNING
    assert len(mlflow.MlflowClient(a).get_metric_history(old.info.run_id, "accuracy")) == 0  # logged after the callback


@pytest.mark.slow(15)
def test_disk_full_at_checkpoint_says_which_epoch_is_safe(tmp_path, tiny_config, write_yaml, capsys, monkeypatch):
    """The checkpoint write of epoch 2 fails with ENOSPC: exit 2, one line naming the safe
    epoch, last.pt still epoch 1 and loadable, and --resume then finishes the run."""
    import errno

    import stas_sweep.train.checkpoint as checkpoint

    real_save, calls = checkpoint.torch.save, []

    def full_disk(obj, f, *args, **kwargs):
        calls.append(obj.get("epoch"))
        if obj.get("epoch") == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(checkpoint.torch, "save", full_disk)
    cfg = write_yaml(tmp_path / "c.yaml", dict(tiny_config, epochs=2))
    out = tmp_path / "run"
    assert main(["train", str(cfg), "--output-dir", str(out), "--no-progress", "--no-mlflow"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "No space left on device" in err
    assert f"{out / 'checkpoints' / 'last.pt'} holds epoch 1 intact" in err and "--resume" in err
    assert [p.name for p in (out / "checkpoints").iterdir() if p.name.endswith(".tmp")] == []  # no partial file
    monkeypatch.setattr(checkpoint.torch, "save", real_save)
    assert main(["train", str(cfg), "--output-dir", str(out), "--no-progress", "--no-mlflow", "--resume"]) == 0
    assert checkpoint.load_checkpoint(out / "checkpoints" / "last.pt")["epoch"] == 2


def test_checkpoint_integrity_and_permissions(trained_stage1, tmp_path):
    """Each checkpoint records a SHA-256 of its contents: one flipped bit in a weight is refused.
    best.pt and last.pt have the same (umask) permissions."""
    import os

    from stas_sweep.train.checkpoint import load_checkpoint, save_checkpoint, state_digest

    root, _ = trained_stage1
    ckpts = root / "run" / "checkpoints"
    assert os.stat(ckpts / "last.pt").st_mode == os.stat(ckpts / "best.pt").st_mode
    state = load_checkpoint(ckpts / "last.pt")
    assert state["sha256"] == state_digest(state)
    # flip the lowest bit of one weight, in the file's bytes (the zip stores tensors uncompressed)
    w = next(iter(state["model"].values())).reshape(-1)[0].clone()
    raw = bytearray((ckpts / "last.pt").read_bytes())
    needle = w.numpy().tobytes()
    at = raw.find(needle)
    assert at > 0
    raw[at] ^= 0x01
    (tmp_path / "flipped.pt").write_bytes(bytes(raw))
    assert torch.load(tmp_path / "flipped.pt", weights_only=True)["format"] == state["format"]  # torch reads it
    with pytest.raises(CheckpointError, match="changed after it was written"):
        load_checkpoint(tmp_path / "flipped.pt")
    # a checkpoint written before the digest existed (format stas-sweep/1) still loads
    old = {k: v for k, v in state.items() if k != "sha256"}
    torch.save({**old, "format": "stas-sweep/1"}, tmp_path / "old.pt")
    assert load_checkpoint(tmp_path / "old.pt")["epoch"] == state["epoch"]
    path = save_checkpoint({k: v for k, v in old.items() if k != "format"}, tmp_path / "again.pt")
    assert load_checkpoint(path)["sha256"] == state["sha256"]


@pytest.mark.slow(12)
def test_bf16_autocast_in_training_and_evaluation(tmp_path, tiny_config):
    """``amp: bf16``: the blocks run in bfloat16 in training and in evaluation (no GradScaler),
    the halting state in float32, and the losses stay finite."""
    cfg = config_from_dict(dict(tiny_config, epochs=1, amp="bf16",
                                halting={"alpha": 5.0, "beta": -8.0, "epsilon": 0.01, "delta_p": 0.01}))
    trainer = Trainer(cfg, tmp_path / "bf16", progress=False, log=None)
    assert trainer.amp and not trainer.scaler.is_enabled()
    seen = []
    trainer.model.blocks[-1].register_forward_hook(lambda m, _a, out: seen.append((m.training, out.dtype)))
    probs = []
    trainer.model.register_forward_hook(lambda _m, _a, out: probs.append(out.halting_probs.dtype))
    (metrics,) = trainer.fit()
    assert set(seen) == {(True, torch.bfloat16), (False, torch.bfloat16)}
    assert set(probs) == {torch.float32}
    assert all(torch.isfinite(torch.tensor(metrics[k])) for k in ("train_loss", "ponder_loss", "energy_mj"))


def test_compile_option_compiles_the_stem_and_blocks_in_place(tmp_path, tiny_config):
    """``compile: true`` compiles the parts whose shapes repeat (the stem, every block); the state
    dict keeps its keys, so checkpoints load into an uncompiled model. (Running inductor on the
    CPU compiles for minutes; the recompile bound is tested in test_packing.py.)"""
    trainer = Trainer(config_from_dict(dict(tiny_config, epochs=1, compile=True)), tmp_path / "c",
                      progress=False, log=None)
    model = trainer.model
    assert all(part._compiled_call_impl is not None for part in (model.stem, *model.blocks))
    plain = Trainer(config_from_dict(dict(tiny_config, epochs=1)), tmp_path / "p", progress=False, log=None)
    assert plain.model.blocks[0]._compiled_call_impl is None
    assert list(model.state_dict()) == list(plain.model.state_dict())
