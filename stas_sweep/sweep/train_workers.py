"""``stas-sweep train CONFIG --workers K``: one training run on K data-parallel workers of a local
Ray (:mod:`.workers`), tracked in MLflow from the calling process as ``train_run`` tracks its own."""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Callable

from ..energy import METER_VERSION
from ..tracking import ENERGY_TAG, Tracker
from ..train.checkpoint import load_checkpoint
from ..train.config import ConfigError, TrainConfig
from ..train.distributed import check_sync_bn, worker_batch
from ..train.evaluate import format_table
from ..train.run import (
    TrainingRun,
    check_model_args,
    check_output_dir,
    final_evaluation,
)
from .runner import init_ray, local_resources
from .workers import WorkerGroup, fit_workers


def _run_report(trainer, metrics: dict, *, epsilons: list[float]) -> dict:
    """``stas-sweep train --workers K``: the epoch's metrics; after a stage-2 run's last epoch, its
    epsilon table (every worker evaluates its share)."""
    report = dict(metrics)
    if trainer.cfg.stage == 2 and metrics["epoch"] == trainer.cfg.epochs:
        report["epsilon_rows"] = final_evaluation(trainer, epsilons)
    return report


def train_on_workers(cfg: TrainConfig, out: str | Path, workers: int, *, resume: bool = False,
                     tracking_uri: str | None = None, mlflow: bool = True, source: str = "config",
                     log: Callable[[str], None] = print):
    """``stas-sweep train CONFIG --workers K``: the run :func:`~stas_sweep.train.run.train_run`
    makes, on K data-parallel workers of a local Ray (each with an equal share of this machine's
    cores), tracked in MLflow from this process with the param ``world_size``."""
    out = Path(out).resolve()
    worker_batch(cfg.batch_size, workers, f"{source}: batch_size")
    check_sync_bn(cfg, workers, source)
    check_output_dir(out)
    last = out / "checkpoints" / "last.pt"
    if last.exists() and not resume:
        raise ConfigError(f"{out} already holds a run ({last}); continue it with --resume, or choose another --output-dir")
    if resume and not last.is_file():
        raise ConfigError(f"--resume: no checkpoint at {last}; start without --resume")
    check_model_args(cfg, source)
    cores = local_resources()["cpu"]
    if workers > cores and not os.environ.get("RAY_ADDRESS"):
        raise ConfigError(f"--workers {workers}: this machine has {cores} CPU cores; give at most {cores}")
    init_ray(None, None)
    extra = dict(load_checkpoint(last).get("extra", {})) if resume else {}
    enabled = cfg.tracking.enabled and mlflow
    tracker = Tracker(tracking_uri or cfg.tracking.uri, cfg.tracking.experiment, out.name,
                      tags={"stage": cfg.stage, "output_dir": str(out), ENERGY_TAG: str(METER_VERSION)},
                      run_id=extra.get("mlflow_run_id"), enabled=enabled)
    if enabled and (not extra.get("mlflow_run_id") or tracker.replaced_run_id):
        tracker.log_params({**cfg.to_dict(), "world_size": workers})
        extra["mlflow_run_id"] = tracker.run_id
    log(f"stage {cfg.stage}: {cfg.model.name} on {cfg.data.name} over {workers} workers (Ray Train, DDP); "
        f"output {out}" + (f"; MLflow {tracker.uri} run {tracker.run_id}" if tracker.enabled else ""))
    rows: list[dict] = []

    def on_report(report: dict, _checkpoint) -> None:
        rows.extend(report.pop("epsilon_rows", []))
        tracker.log_metrics({k: v for k, v in report.items() if k != "epoch"}, step=report["epoch"])

    group = WorkerGroup(workers, cpu=max(1.0, cores // workers) if cores >= workers else 1.0)
    try:
        fit_workers(cfg, group, storage_path=str(out / "worker-runs"), out=str(out), extra=extra, log_prefix="",
                    make_report=functools.partial(_run_report, epsilons=cfg.eval_epsilons), on_report=on_report,
                    resume_from=_checkpoint_of(last) if resume else None)
        if rows:
            (out / "epsilon_table.json").write_text(json.dumps(rows, indent=2))
            tracker.log_table(rows, "epsilon_table.json")
            log(format_table(rows))
        tracker.log_artifact(last, "checkpoints")
    except BaseException:
        tracker.end("FAILED")
        raise
    tracker.end()
    return TrainingRun(list(load_checkpoint(last).get("history", [])), last, rows)


def _checkpoint_of(last: Path):
    import ray.train

    return ray.train.Checkpoint.from_directory(str(last.parent))
