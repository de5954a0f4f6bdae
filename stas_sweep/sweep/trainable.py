"""The Ray Tune function trainable around the trainer, and the shared stage-1 task.

One trial = stage 2 of STAS from the shared stage-1 weights: it fine-tunes with halting,
reports every metric every epoch, with a Tune checkpoint when its clock says so (every
``checkpoint_period_s`` seconds and its last epoch, see :mod:`.checkpoints`), and after its
last epoch evaluates the model at every value of its method's knob (``epsilon_table``: the sweep's epsilons for
STAS, its ``eval.keep_ratios`` / ``eval.exit_thresholds`` for the baselines), so one training
yields several candidate points for the front.

With ``resources.workers`` K > 1 the trial's function drives a worker group (:mod:`.workers`:
a Ray Train ``TorchTrainer`` over K DDP workers) and reports what the group reports; with one
worker it trains in its own process, as a worker group's start-up (seconds of Ray actors and a
process group) would cost a one-worker trial more than its epochs on a small model.
"""

from __future__ import annotations

import functools
import json
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path

from ..train.checkpoint import CheckpointError
from ..train.config import TrainConfig
from ..train.run import final_evaluation
from ..train.threads import set_threads, threads_for_cpus
from ..train.trainer import Trainer
from . import checkpoints
from .front import REPORT_KEYS
from .space import trial_config
from .workers import WorkerGroup, fit_workers


def use_trial_threads(cpus: float | None = None) -> int | None:
    """Run torch on exactly the CPUs Ray gave this trial or task (``resources.cpu``, at least one
    thread), so trials sharing a node do not oversubscribe it. ``cpus`` defaults to the CPUs Ray
    assigned to the calling worker; outside Ray nothing changes and None is returned."""
    if cpus is None:
        import ray

        if not ray.is_initialized():
            return None
        try:
            cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
        except AssertionError:  # Ray's answer in a driver process: it was assigned nothing
            return None
        if not cpus:
            return None
    return set_threads(threads_for_cpus(cpus))


@contextmanager
def stored_names(working: str | Path, stored: str | None):
    """A :class:`CheckpointError` raised inside about a file that :func:`checkpoints.resume_files`
    copied from ``stored`` into ``working`` names the stored file: the one the user can inspect or
    delete, not the trial's working copy."""
    try:
        yield
    except CheckpointError as e:
        if stored is None or str(working) not in str(e):
            raise
        raise type(e)(str(e).replace(str(working), str(stored))) from None


def trial_report(trainer: Trainer, metrics: dict, *, epochs: int, epsilons: list[float],
                 grids: dict[str, list[float]] | None) -> dict:
    """A trial's report of one epoch; after its last, with the epsilon table (run by every worker)."""
    epoch = metrics["epoch"]
    report = {k: metrics[k] for k in REPORT_KEYS}
    report["full_budget"] = epoch == epochs
    if epoch == epochs:
        report["epsilon_table"] = json.dumps(final_evaluation(trainer, epsilons, grids))
    return report


def train_trial(config: dict, *, base: TrainConfig, epochs: int, epsilons: list[float], stage1_weights: dict,
                grids: dict[str, list[float]] | None = None, group: WorkerGroup | None = None,
                storage_path: str | None = None, checkpoint_period_s: float = 0.0) -> None:
    """Function trainable: ``config`` holds the sampled dotted keys of one trial; ``grids`` the
    knob grids of the baselines (method -> values); ``group``: train on a worker group, keeping
    its runs under ``storage_path``; ``checkpoint_period_s``: see :class:`.checkpoints.CheckpointClock`."""
    from ray import tune

    cfg = trial_config(base, config, epochs)
    make_report = functools.partial(trial_report, epochs=epochs, epsilons=epsilons, grids=grids)
    out = Path(tune.get_context().get_trial_dir()) / "train"
    stored = checkpoints.resume_files(out / "checkpoints")  # a retried or resumed trial continues from its last epoch
    clock = checkpoints.CheckpointClock(checkpoint_period_s)
    if group is not None and group.workers > 1:
        return _train_trial_on_workers(cfg, group, storage_path, make_report, stage1_weights, stored is not None,
                                       clock)
    use_trial_threads()
    with stored_names(out / "checkpoints", stored):
        trainer = Trainer(cfg, out, resume=stored is not None, progress=False, log=None,
                          init_weights=None if stored else stage1_weights)
    for epoch in range(trainer.epoch, cfg.epochs):
        metrics = trainer.run_epoch(epoch)
        checkpoints.report(make_report(trainer, metrics), {"last.pt": trainer.last_path},
                           clock.due(epoch + 1 == cfg.epochs))


def _train_trial_on_workers(cfg: TrainConfig, group: WorkerGroup, storage_path: str, make_report,
                            stage1_weights: dict, resume: bool, clock: checkpoints.CheckpointClock) -> None:
    """The trial on a worker group: a fresh Ray Train run, from the trial's Tune checkpoint when it
    has one (a retried or resumed trial), whose every epoch is reported to Tune, with a Tune
    checkpoint of its ``last.pt`` when ``clock`` says so."""
    from ray import tune

    ctx = tune.get_context()
    resume_from = tune.get_checkpoint() if resume else None

    def forward(report: dict, checkpoint) -> None:
        if not clock.due(bool(report.get("full_budget"))):
            checkpoints.report(report, {}, checkpoint=False)
            return
        with checkpoint.as_directory() as d:
            checkpoints.report(report, {"last.pt": Path(d) / "last.pt"})

    fit_workers(cfg, group, storage_path=f"{storage_path.rstrip('/')}/{ctx.get_experiment_name()}/worker-runs",
                name=f"{ctx.get_trial_id()}-{uuid.uuid4().hex[:8]}",
                make_report=make_report, on_report=forward, init_weights=stage1_weights, resume_from=resume_from)


def stage1_report(trainer: Trainer, metrics: dict) -> dict:
    return dict(metrics)


def train_stage1_on_workers(cfg: TrainConfig, out_dir: str | None, group: WorkerGroup,
                            storage_path: str) -> tuple[dict, list[dict]]:
    """:func:`train_stage1` on a worker group, driven from the calling process (the sweep's driver):
    worker 0 trains into ``out_dir`` (a path every node sees), resuming from its ``last.pt``."""
    import ray.train
    import torch

    from ..train.checkpoint import load_checkpoint

    last = Path(out_dir) / "checkpoints" / "last.pt" if out_dir else None
    resume_from = ray.train.Checkpoint.from_directory(str(last.parent)) if last and last.is_file() else None
    final: dict = {}

    def keep(_report: dict, checkpoint) -> None:
        with checkpoint.as_directory() as d:
            final["state"] = load_checkpoint(Path(d) / "last.pt")

    fit_workers(cfg, group, storage_path=storage_path, make_report=stage1_report, on_report=keep,
                resume_from=resume_from, out=out_dir, log_prefix="[stage 1] ")
    state = final.get("state") or load_checkpoint(last)  # none reported: the run was complete already
    return {k: torch.as_tensor(v) for k, v in state["model"].items()}, list(state.get("history", []))



def train_stage1(cfg: TrainConfig, out_dir: str | None) -> tuple[dict, list[dict]]:
    """Train (or finish, or reuse) the shared stage-1 model; returns (weights, history).

    ``out_dir`` is a local or shared path where the run is kept and reused by later sweeps
    with the same stage-1 config; None trains in a temporary folder.
    """
    use_trial_threads()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(out_dir) if out_dir else Path(tmp)
        last = out / "checkpoints" / "last.pt"
        trainer = Trainer(cfg, out, resume=last.is_file(), progress=False,
                          log=lambda msg: print(f"[stage 1] {msg}", flush=True))
        history = trainer.fit()
        return {k: v.detach().cpu() for k, v in trainer.model.state_dict().items()}, history
