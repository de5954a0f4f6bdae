"""A trial's Tune checkpoints: each holds the report it was taken with, and survives a killed driver.

A trial attaches a checkpoint to an epoch's report only when its :class:`CheckpointClock` says so:
every epoch with ``checkpoint_period_s: 0``, else once that many seconds have passed since its
last checkpoint, and always on its last epoch (whose weights become the logged model). Tune saves
its whole experiment state (every trial's record, the searcher, the callbacks' state) after each
checkpoint (below), a cost that grows with the trials so far; with epochs of a few seconds or less,
a checkpoint at every epoch would make the sweep's driver cost grow with the square of its trials.
Epochs longer than the period checkpoint every time, as before; a killed driver costs a running
trial at most the period's epochs (after ``--resume`` it trains them again; the MLflow run keeps
the epochs it had logged, see ``tracking.SweepTracker``).

Ray Tune 2.60 keeps one checkpoint per trial here (``CheckpointConfig(num_to_keep=1)``). It deletes
the previous checkpoint as soon as it registers a new one, and saves the experiment state that
names the new one a moment later (ray-project/ray#27790). A driver killed in between leaves a saved
state naming a checkpoint that is gone, and on ``--resume`` Tune fails that trial ("Could not recover
from checkpoint as it does not exist on storage anymore").

So every checkpoint written by :func:`report` also holds its report (``report.json``). Before a
resume, :func:`restore_lost_checkpoints` puts a lost checkpoint back as a copy of the trial's next
one, marked ``replay.json``. The trial restored from it (:func:`resume_files`) reports that next
epoch again from the copy: the same numbers, now counted by Tune and ranked by the scheduler,
instead of an epoch trained twice or a trial lost. The report made again carries ``replayed``,
and the MLflow callback does not log it a second time.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

REPORT, REPLAY = "report.json", "replay.json"
REPLAYED = "replayed"  # the key a report made again carries

__all__ = ["CheckpointClock", "report", "resume_files", "restore_lost_checkpoints"]


class CheckpointClock:
    """Whether an epoch's report carries a checkpoint: every epoch when ``period_s`` is 0, else when
    ``period_s`` seconds have passed since the trial's last checkpoint (or its start), and always on
    its last epoch."""

    def __init__(self, period_s: float, clock=time.monotonic) -> None:
        self.period_s, self.clock = float(period_s), clock
        self.since = clock()

    def due(self, last_epoch: bool) -> bool:
        now = self.clock()
        if last_epoch or self.period_s <= 0 or now - self.since >= self.period_s:
            self.since = now
            return True
        return False


def report(metrics: dict, files: dict[str, str | Path], checkpoint: bool = True) -> None:
    """``tune.report(metrics)``, with ``checkpoint`` a checkpoint of ``files`` (name in the checkpoint ->
    path to copy) and of ``metrics`` itself."""
    from ray import tune

    if not checkpoint:
        tune.report(metrics)
        return
    with tempfile.TemporaryDirectory() as d:
        for name, src in files.items():
            shutil.copyfile(src, Path(d) / name)
        (Path(d) / REPORT).write_text(json.dumps(metrics))
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))


def resume_files(dest: str | Path) -> str | None:
    """Copy the files of the trial's Tune checkpoint into ``dest``; returns where that checkpoint is
    stored (a folder of the sweep's storage), None for a fresh trial.

    A checkpoint that :func:`restore_lost_checkpoints` put back is then reported again, with a
    checkpoint of the copied files, before the trial goes on."""
    from ray import tune

    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    with checkpoint.as_directory() as d:
        files = [p for p in Path(d).iterdir() if p.name not in (REPORT, REPLAY)]
        for p in files:
            shutil.copyfile(p, dest / p.name)
        replay = json.loads((Path(d) / REPORT).read_text()) if (Path(d) / REPLAY).is_file() else None
    # reported after the copy: Tune deletes this checkpoint once it registers the new one
    if replay is not None:
        report({**replay, REPLAYED: True}, {p.name: dest / p.name for p in files})
    return str(checkpoint.path)



def restore_lost_checkpoints(path: str, log=print) -> list[str]:
    """Before a resume: for each unfinished trial whose checkpoint in the newest experiment state is
    gone (see the module docstring), put it back as a copy of the trial's next checkpoint, marked
    to be reported again. Returns the checkpoints put back. Local storage only."""
    if "://" in path:
        return []
    states = sorted(Path(path).glob("experiment_state-*.json"))
    if not states:
        return []
    restored = []
    for trial_json, meta_json in json.loads(states[-1].read_text())["trial_data"]:
        trial = json.loads(trial_json)
        name = _named_checkpoint(meta_json)
        if trial.get("status") in ("TERMINATED", "ERROR") or not name or not trial.get("relative_logdir"):
            continue
        lost = Path(path) / trial["relative_logdir"] / name
        if lost.exists():
            continue
        later = sorted(p for p in lost.parent.glob("checkpoint_*")
                       if p.name.split("_")[-1].isdigit() and p.name > name and (p / REPORT).is_file())
        if not later:
            log(f"warning: trial {trial['trial_id']}: its checkpoint {lost} is gone and no later one was kept; "
                f"Tune will fail this trial on resume")
            continue
        part = lost.with_name(lost.name + ".part")
        shutil.rmtree(part, ignore_errors=True)
        shutil.copytree(later[0], part)
        (part / REPLAY).write_text(json.dumps({"copy_of": later[0].name}))
        os.replace(part, lost)
        restored.append(str(lost))
        log(f"trial {trial['trial_id']}: the driver was killed between Tune deleting {name} and saving the "
            f"sweep state; resuming from {later[0].name}, whose epoch is reported again, not trained again")
    return restored


def _named_checkpoint(meta_json: str) -> str | None:
    """The folder name of the newest checkpoint a trial's saved record names (its last result may
    carry none: not every epoch is checkpointed)."""
    from ray.tune.trainable.metadata import _TrainingRunMetadata

    latest = _TrainingRunMetadata.from_json_state(meta_json).checkpoint_manager.latest_checkpoint_result
    return Path(latest.checkpoint.path).name if latest is not None else None
