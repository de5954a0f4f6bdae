"""One training run as ``stas-sweep train`` makes it: the trainer, its MLflow run (created, or
reopened on ``resume``), the curves, and for stage 2 the final evaluation at every epsilon.

:func:`final_evaluation` is the one epsilon table after training, shared with the sweep's
trials (:func:`stas_sweep.sweep.trainable.train_trial`), which log through the driver instead.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .config import ConfigError, TrainConfig
from .evaluate import epsilon_table, format_table
from .trainer import Trainer


def final_evaluation(trainer: Trainer, epsilons: list[float], grids: dict[str, list[float]] | None = None) -> list[dict]:
    """The trained model on the validation set at each epsilon, or for a baseline at each value
    of its knob in ``grids`` (rows of :func:`epsilon_table`)."""
    return epsilon_table(trainer.model, trainer.val_loader, epsilons, trainer.device,
                         energy_batches=trainer.cfg.energy_batches, grids=grids)


@dataclass
class TrainingRun:
    history: list[dict]
    checkpoint: Path
    epsilon_rows: list[dict] = field(default_factory=list)  # stage 2 only


def train_run(cfg: TrainConfig, out: str | Path, *, resume: bool = False, progress: bool = True,
              tracking_uri: str | None = None, mlflow: bool = True, threads: int | None = None,
              log: Callable[[str], None] = print) -> TrainingRun:
    """Train ``cfg`` into ``out`` (refusing to overwrite a run unless ``resume``), tracked in
    MLflow unless ``mlflow`` is false or the config turns tracking off (``threads``: the CPU
    threads torch was given, for the first line)."""
    from ..tracking import Tracker
    from .plots import plot_training_curves

    out = Path(out)
    last = out / "checkpoints" / "last.pt"
    if last.exists() and not resume:
        raise ConfigError(f"{out} already holds a run ({last}); continue it with --resume, "
                          f"or choose another --output-dir")
    trainer = Trainer(cfg, out, resume=resume, progress=progress)
    enabled = cfg.tracking.enabled and mlflow
    run_id = trainer.extra.get("mlflow_run_id") if resume else None
    tracker = Tracker(tracking_uri or cfg.tracking.uri, cfg.tracking.experiment, out.name,
                      tags={"stage": cfg.stage, "output_dir": str(out.resolve())}, run_id=run_id, enabled=enabled)
    if enabled and run_id is None:
        tracker.log_params({**cfg.to_dict(), "model_args": trainer.model_args})
        trainer.extra["mlflow_run_id"] = tracker.run_id
    log(f"stage {cfg.stage}: {cfg.model.name} on {cfg.data.name}, {cfg.epochs} epochs, device {trainer.device}"
        + (f" ({threads} CPU threads)" if threads is not None else "") + f"; output {out.resolve()}" + (f"; MLflow {tracker.uri} run {tracker.run_id}" if tracker.enabled else ""))

    def log_epoch(epoch: int, metrics: dict, _trainer) -> None:
        tracker.log_metrics({k: v for k, v in metrics.items() if k != "epoch"}, step=epoch)

    rows: list[dict] = []
    try:
        history = trainer.fit(callbacks=[log_epoch])
        curves = plot_training_curves(history, out / "curves.png", title=f"{cfg.model.name} stage {cfg.stage}")
        tracker.log_artifact(curves)
        if cfg.stage == 2:
            rows = final_evaluation(trainer, cfg.eval_epsilons)
            (out / "epsilon_table.json").write_text(json.dumps(rows, indent=2))
            tracker.log_table(rows, "epsilon_table.json")
            log(format_table(rows))
        tracker.log_artifact(trainer.last_path, "checkpoints")
    except KeyboardInterrupt:
        tracker.end("KILLED")
        raise
    except BaseException:
        tracker.end("FAILED")
        raise
    tracker.end()
    return TrainingRun(history, trainer.last_path, rows)
