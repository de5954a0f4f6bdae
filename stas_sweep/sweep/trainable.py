"""The Ray Tune function trainable around the trainer, and the shared stage-1 task.

One trial = stage 2 of STAS from the shared stage-1 weights: it fine-tunes with halting,
reports every metric every epoch with a Tune checkpoint, and after its last epoch evaluates
the model at every value of its method's knob (``epsilon_table``: the sweep's epsilons for
STAS, its ``eval.keep_ratios`` / ``eval.exit_thresholds`` for the baselines), so one training
yields several candidate points for the front.
"""

from __future__ import annotations

import json
import tempfile
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


def train_trial(config: dict, *, base: TrainConfig, epochs: int, epsilons: list[float], stage1_weights: dict,
                grids: dict[str, list[float]] | None = None) -> None:
    """Function trainable: ``config`` holds the sampled dotted keys of one trial; ``grids`` the
    knob grids of the baselines (method -> values)."""
    from ray import tune

    use_trial_threads()
    cfg = trial_config(base, config, epochs)
    out = Path(tune.get_context().get_trial_dir()) / "train"
    stored = checkpoints.resume_files(out / "checkpoints")  # a retried or resumed trial continues from its last epoch
    with stored_names(out / "checkpoints", stored):
        trainer = Trainer(cfg, out, resume=stored is not None, progress=False, log=None,
                          init_weights=None if stored else stage1_weights)
    for epoch in range(trainer.epoch, cfg.epochs):
        metrics = trainer.run_epoch(epoch)
        report = {k: metrics[k] for k in REPORT_KEYS}
        report["full_budget"] = epoch + 1 == epochs
        if epoch + 1 == epochs:
            report["epsilon_table"] = json.dumps(final_evaluation(trainer, epsilons, grids))
        checkpoints.report(report, {"last.pt": trainer.last_path})


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
