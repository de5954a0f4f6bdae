"""Data-parallel training: K workers with batch b/K each take the optimiser steps one process
takes with batch b, and their evaluation is the whole validation set's (gloo on CPU, started with
torch.multiprocessing; no Ray)."""

from __future__ import annotations

import contextlib
import copy
import socket
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from conftest import TINY

TRAIN_N, VAL_N = 96, 41  # 3 steps of a global batch of 32; a validation set that does not split evenly


def _config(**over):
    from stas_sweep.train.config import TrainConfig

    raw = copy.deepcopy(TINY)
    raw["data"].update(augment=False)
    raw["optim"].update(opt="sgd", lr=0.05)  # Adam would magnify float rounding in near-zero gradients
    raw.update({"sync_bn": True, "epochs": 2, **over})
    return TrainConfig.model_validate(raw)


@contextlib.contextmanager
def _small_data():
    """While in it, the trainer builds a training set of TRAIN_N and a validation set of VAL_N digits."""
    import stas_sweep.train.trainer as trainer_module
    from torch.utils.data import Subset

    real = trainer_module.build_datasets

    def small(*args, **kwargs):
        train, val, info = real(*args, **kwargs)
        return Subset(train, range(TRAIN_N)), Subset(val, range(VAL_N)), info
    trainer_module.build_datasets = small
    try:
        yield
    finally:
        trainer_module.build_datasets = real


def _run(out: str, cfg_over: dict) -> dict:
    """One epoch (3 optimiser steps), its evaluation and checkpoint, in this process, in or out of a group."""
    from stas_sweep.train.trainer import Trainer

    with _small_data():
        trainer = Trainer(_config(**cfg_over), out, progress=False, log=None)
    metrics = trainer.run_epoch(0)
    return {"params": {k: v.detach().clone() for k, v in trainer.model.state_dict().items()},
            "train": metrics, "val": metrics}


def _worker(rank: int, world: int, port: int, out: str, cfg_over: dict) -> None:
    import datetime

    import torch.distributed as dist

    torch.set_num_threads(1)  # two workers on two cores
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    try:
        result = _run(out, cfg_over)
        if rank == 0:
            torch.save(result, Path(out) / "result.pt")
        dist.barrier()  # worker 0 hosts the group's store: nobody leaves while another still uses it
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _distributed(tmp_path: Path, world: int, cfg_over: dict, timeout: float = 120) -> dict:
    ctx = mp.start_processes(_worker, args=(world, _free_port(), str(tmp_path), cfg_over), nprocs=world,
                             join=False, start_method="spawn")
    deadline = time.time() + timeout
    while not ctx.join(timeout=1):
        if time.time() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"{world} gloo workers did not finish in {timeout:.0f} s")
    return torch.load(tmp_path / "result.pt", weights_only=True)


@pytest.mark.slow(20)
def test_two_workers_with_half_batches_take_the_steps_of_one_with_the_whole(tmp_path):
    one = _run(str(tmp_path / "one"), {})
    two = _distributed(tmp_path, 2, {})
    assert one["params"].keys() == two["params"].keys()
    moved = 0
    for k, v in one["params"].items():
        torch.testing.assert_close(two["params"][k], v, atol=1e-5, rtol=0, msg=lambda m, k=k: f"{k}: {m}")
        moved += v.dtype.is_floating_point and k.endswith("running_mean")
    assert moved  # batch-norm statistics are part of what must agree
    for key in ("train_loss", "task_loss", "ponder_loss", "train_token_ratio"):
        assert two["train"][key] == pytest.approx(one["train"][key], abs=1e-5), key
    # the validation numbers are the whole set's (41 images, split 21 + 20), not worker 0's share
    for key in ("accuracy", "token_ratio", "energy_mj", "energy_strict_mj"):
        assert two["val"][key] == pytest.approx(one["val"][key], rel=1e-5), key
    # worker 0 wrote the checkpoint (the model, not its DDP wrapper): one process resumes from it
    from stas_sweep.train.trainer import Trainer

    with _small_data():
        resumed = Trainer(_config(), tmp_path, resume=True, progress=False, log=None)
    assert resumed.epoch == 1
    for k, v in resumed.model.state_dict().items():
        torch.testing.assert_close(v, two["params"][k], atol=0, rtol=0)


def test_the_global_batch_must_split_over_the_workers():
    from stas_sweep.errors import UserError
    from stas_sweep.train.distributed import worker_batch

    assert worker_batch(32, 2) == 16
    with pytest.raises(UserError, match="batch_size 30 is the global batch and does not split over 4 workers"):
        worker_batch(30, 4)


def test_each_worker_sees_its_share_of_the_single_process_batches():
    """Worker r's j-th batch of b/K holds positions r, r+K, ... of the single process's j-th batch of b."""
    from stas_sweep.data.loaders import EpochDistributedSampler, EpochShuffleSampler

    data = list(range(103))
    order = EpochShuffleSampler(len(data), seed=3)
    order.set_epoch(5)
    whole = list(order)
    shares = []
    for rank in range(2):
        s = EpochDistributedSampler(data, seed=3, shuffle=True, rank=rank, world=2, drop_last=True)
        s.set_epoch(5)
        shares.append(list(s))
    assert shares[0] == whole[0:102:2] and shares[1] == whole[1:102:2]
    val = [list(EpochDistributedSampler(data, 0, False, r, 2, drop_last=False)) for r in range(2)]
    assert sorted(val[0] + val[1]) == data  # evaluation: every sample once, none padded


def test_rank_seeds():
    from stas_sweep.data.loaders import epoch_seed, rank_seed

    assert rank_seed(7, 0) == 7  # one worker draws what one process draws
    assert len({rank_seed(7, r) for r in range(4)}) == 4
    assert rank_seed(7, 1) != epoch_seed(7, 1)



@pytest.mark.drill
@pytest.mark.slow(60)
def test_a_sweep_whose_trials_train_on_two_workers(ray_local, tmp_path, sweep_file, mlflow_db, mlflow_runs,
                                                    monkeypatch, capsys):
    """Each trial drives a Ray Train worker group of 2 gloo workers (half a CPU each, beside the
    trial's own function): the sweep ends with a front and every trial run records world_size 2."""
    import json

    from stas_sweep.cli import main

    uri = mlflow_db(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    space = sweep_file(
        tmp_path, name="ddp", resources={"workers": 2, "cpu": 0.5},
        space={"halting.beta": {"uniform": [-8.0, -4.0]}},
        search={"sampler": "random", "seed": 0, "num_samples": 1, "points_to_evaluate": [{"halting.beta": -6.0}]},
        scheduler={"type": "fifo", "max_epochs": 1}, eval={"epsilons": [0.0, 0.4]}, mlflow={"experiment": "ddp"})
    assert main(["run", str(space)]) == 0
    capsys.readouterr()
    assert main(["pareto", "--json", "--experiment", "ddp"]) == 0
    assert json.loads(capsys.readouterr().out)  # a front
    _, _, runs = mlflow_runs(uri, "ddp")
    trials = [r for r in runs if r.data.tags.get("stas.role") == "trial"]
    assert len(trials) == 1 and all(r.data.params.get("world_size") == "2" for r in trials), \
        [r.data.params.get("world_size") for r in trials]
    assert all(r.info.status == "FINISHED" for r in trials)


def test_data_parallel_is_gone_from_the_package():
    import re

    import stas_sweep

    root = Path(stas_sweep.__file__).parent
    hits = [str(p) for p in root.rglob("*.py") if re.search(r"\b(nn\.)?DataParallel\b", p.read_text())]
    assert not hits, hits
