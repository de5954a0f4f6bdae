"""A training run over K data-parallel workers: a Ray Train ``TorchTrainer`` (DDP; gloo on CPUs, NCCL
on GPUs) driven from the calling process: a Tune trial's function, the sweep's driver for stage 1,
or ``stas-sweep train --workers K`` (:mod:`.train_workers`).

Every worker runs :class:`~stas_sweep.train.trainer.Trainer` in the group Ray Train set up (the
trainer splits the global batch and reduces every number over the workers, see
:mod:`stas_sweep.train.distributed`). After each epoch every worker calls ``ray.train.report`` with
the epoch's report; worker 0 attaches a checkpoint of ``last.pt``. Ray Train keeps those
checkpoints in the run's storage, and its ``FailureConfig`` restarts a worker group that lost a
worker (a node gone) from the last one.

The reports come back to the caller through :class:`ForwardReports` (a Ray Train callback in the
run's controller that puts each report and its checkpoint on a queue), and ``on_report`` gets
them in the caller's own thread: a Tune trial reports them with a Tune checkpoint of its own, so
Tune's iteration count, its retries and the sweep's resume work as for a one-worker trial. (Ray's
``TuneReportCallback`` forwards the metrics alone, without a checkpoint.) A report is forwarded
once, after its checkpoint is stored; a worker group restarted from that checkpoint trains the
epochs after it, so no epoch is reported twice.
"""

from __future__ import annotations

import functools
import shutil
import tempfile
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..train.config import TrainConfig

REPORTS_TIMEOUT_S = 1.0


@dataclass(frozen=True)
class WorkerGroup:
    """K workers, each with ``cpu`` CPUs and ``gpu`` GPUs; ``retries``: worker-group restarts."""

    workers: int
    cpu: float = 1.0
    gpu: float = 0.0
    retries: int = 0
    spread: bool = False  # place the workers on as many nodes as possible (SPREAD), else PACK


def _worker_loop(config: dict) -> None:
    """One worker of the group (runs in a Ray Train worker, inside its process group); trains in
    ``config["out"]`` (worker 0, when given) or in a temporary folder removed at the end."""
    import ray.train

    rank = ray.train.get_context().get_world_rank()
    if config.get("out") and rank == 0:
        return _train_worker(config, rank, Path(config["out"]))
    with tempfile.TemporaryDirectory(prefix="stas-worker-") as tmp:
        return _train_worker(config, rank, Path(tmp))


def _train_worker(config: dict, rank: int, out: Path) -> None:
    import ray.train

    from ..train.threads import set_threads, threads_for_cpus
    from ..train.trainer import Trainer

    set_threads(threads_for_cpus(config["cpu"]))  # torch on this worker's CPUs
    resume = False
    # the run's last one (a group restarted after a failure), else the caller's (a resumed run)
    checkpoint = ray.train.get_checkpoint() or config.get("resume_from")
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            (out / "checkpoints").mkdir(parents=True, exist_ok=True)
            if (Path(d) / "last.pt").resolve() != (out / "checkpoints" / "last.pt").resolve():
                shutil.copyfile(Path(d) / "last.pt", out / "checkpoints" / "last.pt")
        resume = True
    prefix = config.get("log_prefix")
    log = functools.partial(_log, prefix) if prefix is not None and rank == 0 else None
    trainer = Trainer(config["cfg"], out, resume=resume, progress=False, log=log,
                      init_weights=None if resume else config.get("init_weights"))
    trainer.extra.update(config.get("extra") or {})
    if resume and rank == 0:  # in the driver's output (Ray forwards worker prints): the node-loss drill reads it
        print(f"worker group of {trainer.world}: resuming from the checkpoint of epoch {trainer.epoch}", flush=True)
    make_report = config["make_report"]
    if trainer.main:
        out.mkdir(parents=True, exist_ok=True)
        trainer.write_config()
    for epoch in range(trainer.epoch, trainer.cfg.epochs):
        metrics = trainer.run_epoch(epoch)
        report = make_report(trainer, metrics)  # every worker: a final evaluation is a collective
        with tempfile.TemporaryDirectory() as d:
            ckpt = None
            if trainer.main:
                shutil.copyfile(trainer.last_path, Path(d) / "last.pt")
                ckpt = ray.train.Checkpoint.from_directory(d)
            ray.train.report(report, checkpoint=ckpt)


def _log(prefix: str, msg: str) -> None:
    print(f"{prefix}{msg}", flush=True)


def _forward_reports_class():
    from ray.train.v2.api.callback import UserCallback

    class ForwardReports(UserCallback):
        """In the run's controller: each report (worker 0's metrics) and its stored checkpoint onto ``queue``."""

        def __init__(self, queue) -> None:
            self.queue = queue

        def after_report(self, run_context, metrics, checkpoint) -> None:
            self.queue.put((dict(metrics[0]), checkpoint))

    return ForwardReports


def fit_workers(cfg: TrainConfig, group: WorkerGroup, *, storage_path: str, name: str | None = None,
                make_report: Callable[[object, dict], dict], on_report: Callable[[dict, object], None],
                init_weights: dict | None = None, resume_from=None, out: str | None = None,
                log_prefix: str | None = None, extra: dict | None = None):
    """Train ``cfg`` on ``group``; calls ``on_report(report, checkpoint)`` in this thread for every
    epoch (``checkpoint``: a ``ray.train.Checkpoint`` holding ``last.pt``). ``make_report(trainer,
    metrics)`` runs on every worker after each epoch. ``resume_from``: a checkpoint (holding
    ``last.pt``) to continue from. ``out``: worker 0 trains into this folder (a path every node
    sees) instead of a temporary one. ``log_prefix``: worker 0 prints its epoch lines with it (None:
    silent). Returns Ray Train's ``Result``; a group that failed more
    than ``group.retries`` times raises Ray Train's error."""
    import queue as stdqueue

    import ray.train
    from ray.train.torch import TorchTrainer
    from ray.util.queue import Empty, Queue

    reports = Queue(actor_options={"num_cpus": 0})
    per_worker = {"CPU": group.cpu, **({"GPU": group.gpu} if group.gpu else {})}
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={"cfg": cfg, "cpu": group.cpu, "init_weights": init_weights, "out": out, "log_prefix": log_prefix,
                           "make_report": make_report, "extra": extra, "resume_from": resume_from},
        scaling_config=ray.train.ScalingConfig(num_workers=group.workers, use_gpu=bool(group.gpu),
                                               resources_per_worker=per_worker,
                                               placement_strategy="SPREAD" if group.spread else "PACK"),
        run_config=ray.train.RunConfig(
            # a fresh run each call: a caller that resumes passes its own checkpoint (resume_from)
            name=name or f"train-{uuid.uuid4().hex[:8]}", storage_path=storage_path,
            failure_config=ray.train.FailureConfig(max_failures=group.retries),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            callbacks=[_forward_reports_class()(reports)],
        ),
    )
    box: dict = {}

    def fit() -> None:
        try:
            box["result"] = trainer.fit()
        except BaseException as e:  # noqa: BLE001 - raised again in the caller's thread
            box["error"] = e

    thread = threading.Thread(target=fit, name="stas-ray-train", daemon=True)
    thread.start()
    try:
        while True:
            try:
                item = reports.get(timeout=REPORTS_TIMEOUT_S)
            except (Empty, stdqueue.Empty):
                if thread.is_alive():
                    continue
                if reports.empty():  # every report of a finished run is on the queue before fit returns
                    break
                continue
            on_report(*item)
        thread.join()
    finally:
        ray_kill(reports)
    if "error" in box:
        raise box["error"]
    return box["result"]


def ray_kill(queue) -> None:
    import ray

    try:
        ray.kill(queue.actor)
    except Exception:  # noqa: BLE001 - already gone with its node
        pass

