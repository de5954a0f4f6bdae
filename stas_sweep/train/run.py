"""One training run as ``stas-sweep train`` makes it: the trainer, its MLflow run (created, or
reopened on ``resume``), the curves, and for stage 2 the final evaluation at every epsilon.

:func:`final_evaluation` is the one epsilon table after training, shared with the sweep's
trials (:func:`stas_sweep.sweep.trainable.train_trial`), which log through the driver instead.
"""

from __future__ import annotations

import errno
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from ..data.errors import DataError, DatasetNotFoundError
from ..energy import METER_VERSION
from ..tables import plural
from ..tracking import ENERGY_TAG, resolve_tracking_uri
from .config import ConfigError, TrainConfig, check_sml_blocks
from .evaluate import epsilon_table, format_table
from .trainer import Trainer


def final_evaluation(trainer: Trainer, epsilons: list[float], grids: dict[str, list[float]] | None = None) -> list[dict]:
    """The trained model on the validation set at each epsilon, or for a baseline at each value
    of its knob in ``grids`` (rows of :func:`epsilon_table`)."""
    return epsilon_table(trainer.model, trainer.val_loader, epsilons, trainer.device,
                         energy_batches=trainer.cfg.energy_batches, grids=grids, distributed=trainer.world > 1)


@dataclass
class TrainingRun:
    history: list[dict]
    checkpoint: Path
    epsilon_rows: list[dict] = field(default_factory=list)  # stage 2 only


# write errors that mean "no room or no right to write here", not a bug
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}


def check_output_dir(out: Path, flag: str = "--output-dir") -> None:
    """``out`` (or the nearest existing folder above it) is a writable folder; nothing is created.
    ``flag``: the option that named it, for the message."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{flag} {out}: is a file, not a folder; give a folder to write into")
    q = out.absolute()
    while not q.exists():
        q = q.parent
    if not q.is_dir():
        raise ConfigError(f"{flag} {out}: {q} is a file, so no folder can be made there")
    if not os.access(q, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {out}: {q} is not writable; choose another {flag}")


def check_model_args(cfg: TrainConfig, where: str = "config") -> None:
    """The checks of a config against this machine and the model, before any data is read, each
    a :class:`ConfigError`: the device exists, ``sml.blocks`` are blocks of the model, and the
    model builds on the ``meta`` device (no memory, no time) with the data's image size
    (create_model's ValueErrors are exactly its argument checks)."""
    import torch

    from ..data.factory import DEFAULT_IMG_SIZE, canonical_name
    from ..models import create_model

    from ..models import get_arch
    from .trainer import resolve_device

    try:
        resolve_device(cfg.device)
    except (ValueError, RuntimeError) as e:
        raise ConfigError(f"{where}: device is {cfg.device!r}: {e}") from None
    if cfg.sml.enabled:
        check_sml_blocks(cfg, get_arch(cfg.model.name).depth, where)
    name = canonical_name(cfg.data.name)
    kwargs = {"img_size": cfg.data.img_size or DEFAULT_IMG_SIZE[name], "timesteps": cfg.model.timesteps,
              "stem": cfg.model.stem, "halting": cfg.halting.model_kwargs(cfg.model.name) if cfg.halting else None,
              "in_channels": 2 if name in ("cifar10-dvs", "dvs128-gesture") else 3}
    if cfg.model.num_classes is not None:
        kwargs["num_classes"] = cfg.model.num_classes
    try:
        with torch.device("meta"):
            create_model(cfg.model.name, **kwargs)
    except ValueError as e:
        raise ConfigError(f"{where}: model.name {cfg.model.name} with data.img_size={kwargs['img_size']}, "
                          f"model.timesteps={cfg.model.timesteps}: {e}") from None


def _safe_epoch(last: Path) -> str:
    """What ``last.pt`` holds now, for the message of a failed write."""
    from .checkpoint import CheckpointError, load_checkpoint

    if not last.is_file():
        return "no epoch is saved yet"
    try:
        return f"{last} holds epoch {load_checkpoint(last)['epoch']} intact"
    except CheckpointError:
        return f"{last} cannot be read back"


def train_run(cfg: TrainConfig, out: str | Path, *, resume: bool = False, progress: bool = True,
              tracking_uri: str | None = None, mlflow: bool = True, threads: int | None = None,
              log: Callable[[str], None] = print, callbacks: Sequence[Callable] = (),
              source: str = "config") -> TrainingRun:
    """Train ``cfg`` into ``out`` (refusing to overwrite a run unless ``resume``), tracked in
    MLflow unless ``mlflow`` is false or the config turns tracking off (``threads``: the CPU
    threads torch was given, for the first line; ``callbacks``: more ``(epoch, metrics, trainer)``
    callbacks, run after each epoch's checkpoint and before its metrics are logged; ``source``: where
    ``cfg`` came from, for messages).

    A tracking store that fails during the run does not stop it (see :class:`~stas_sweep.tracking.Tracker`);
    on ``resume`` the epochs the MLflow run lacks are logged from the checkpoint's history
    (``metrics.jsonl``), into a new run if the store does not hold the original one. A disk that
    fills up (or any refused write) ends the run with a :class:`ConfigError` saying which epoch
    is safe in ``last.pt``.
    """
    from ..tracking import Tracker
    from .plots import plot_training_curves

    out = Path(out)
    check_output_dir(out)
    last = out / "checkpoints" / "last.pt"
    if last.exists() and not resume:
        raise ConfigError(f"{out} already holds a run ({last}); continue it with --resume, "
                          f"or choose another --output-dir")
    check_model_args(cfg, source)
    try:
        trainer = Trainer(cfg, out, resume=resume, progress=progress)
    except DataError as e:
        if isinstance(e, DatasetNotFoundError):
            raise
        raise DataError(f"{source}: {e}") from None  # the data set named in this config
    enabled = cfg.tracking.enabled and mlflow
    run_id = trainer.extra.get("mlflow_run_id") if resume else None
    tracker = Tracker(resolve_tracking_uri(tracking_uri, cfg.tracking.uri), cfg.tracking.experiment, out.name,
                      tags={"stage": cfg.stage, "output_dir": str(out.resolve()), ENERGY_TAG: str(METER_VERSION)},
                      run_id=run_id, enabled=enabled)
    if tracker.replaced_run_id:
        log(f"--resume: MLflow store {tracker.uri} has no run {tracker.replaced_run_id} (the run this training "
            f"started in); logging to a new run {tracker.run_id} with the {len(trainer.history)} epoch(s) so far")
    if enabled and (run_id is None or tracker.replaced_run_id):
        tracker.log_params({**cfg.to_dict(), "model_args": trainer.model_args})
        trainer.extra["mlflow_run_id"] = tracker.run_id
    if enabled and resume:
        tracker.replay(trainer.history)  # epochs logged nowhere yet (an outage, a new run)
    log(f"stage {cfg.stage}: {cfg.model.name} on {cfg.data.name}, {plural(cfg.epochs, 'epoch')}, device {trainer.device}"
        + (f" ({threads} CPU threads)" if threads is not None else "") + f"; output {out.resolve()}" + (f"; MLflow {tracker.uri} run {tracker.run_id}" if tracker.enabled else ""))

    def log_epoch(epoch: int, metrics: dict, _trainer) -> None:
        tracker.log_metrics({k: v for k, v in metrics.items() if k != "epoch"}, step=epoch)

    rows: list[dict] = []
    try:
        history = trainer.fit(callbacks=[*callbacks, log_epoch])
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
    except OSError as e:
        tracker.end("FAILED")
        if e.errno not in _WRITE_ERRNOS:
            raise
        where = f" {e.filename}" if e.filename else ""
        raise ConfigError(f"{out}: cannot write{where} after epoch {trainer.epoch} ({e.strerror or e}); "
                          f"{_safe_epoch(last)}: free space (or fix the folder) and continue with --resume") from None
    except BaseException:
        tracker.end("FAILED")
        raise
    tracker.end()
    return TrainingRun(history, trainer.last_path, rows)
