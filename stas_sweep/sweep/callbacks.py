"""A Ray Tune callback, on the driver: trial events -> a single writer -> a tracker.

The callback runs inside Tune's event loop, so it only hands each event to a
:class:`~stas_sweep.sweep.writer.SweepWriter` (a thread with a bounded queue) and returns; the
writer keeps the front incrementally and logs to the tracker, a
:class:`stas_sweep.tracking.SweepTracker`. A full-budget trial's final weights are logged as an
MLflow model of its run (:func:`stas_sweep.train.mlflow_model.log_checkpoint_model`), by the
writer, from the trial's last Tune checkpoint before its points are written, so each point run
names its model; a failure to log one is a warning and the sweep goes on. Module level, so Tune
can pickle it with the experiment state; a resumed sweep gets it back and starts a new writer,
seeded with what Tune restored.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from ray import tune

from ..errors import last_line
from .checkpoints import REPLAYED
from .front import TRIAL_METRICS
from .writer import SweepWriter


class TrackerCallback(tune.Callback):
    """Hands Tune's trial events to a :class:`~stas_sweep.sweep.writer.SweepWriter` (one thread
    that logs them in order) and returns at once: Tune's loop never waits for MLflow.
    :attr:`loop_seconds` is the CPU time spent in these hooks (what Tune's loop pays)."""

    def __init__(self, tracker, objectives, reference: dict, *, paper: list | None = None,
                 world_size: int = 1) -> None:
        self.tracker = tracker
        self.world_size = world_size  # each trial run's param world_size
        self.objectives, self.reference = list(objectives), dict(reference)
        self.paper = paper
        self._writer: SweepWriter | None = None
        self.loop_seconds = 0.0

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_writer"] = None  # a copy restored by Tune (resume) starts its own writer
        return state

    def writer(self, trials=()) -> SweepWriter:
        """The writer, started on the first event with what Tune restored (``trials``)."""
        if getattr(self, "_writer", None) is None:
            self._writer = SweepWriter(self.tracker, self.objectives, self.reference, seed=self.seed_of(trials),
                                       log_model=self._log_model, paper=getattr(self, "paper", None))
        return self._writer

    @staticmethod
    def seed_of(trials) -> dict:
        """What the writer needs of the trials Tune restored (none on a fresh sweep): the points of
        the finished ones, and each started one's id, config, status and folder (its ``result.json``
        holds the results a killed driver may not have logged), and every trial id Tune knows (a
        trial run of none of them was cut off before Tune saved it)."""
        points, started = [], []
        for t in trials:
            last = t.last_result or {}
            if not last:
                continue
            started.append((t.trial_id, dict(t.config), t.status, getattr(t, "path", None)))
            if t.status == "TERMINATED" and last.get("full_budget") and last.get("epsilon_table"):
                points.append((t.trial_id, dict(t.config), json.loads(last["epsilon_table"])))
        return {"points": points, "trials": started, "known": [t.trial_id for t in trials]}

    def _put(self, trials, event: tuple) -> None:
        t0 = time.thread_time()
        self.writer(trials).put(event)
        self.loop_seconds = getattr(self, "loop_seconds", 0.0) + time.thread_time() - t0

    def flush(self) -> None:
        """Wait until every event so far is logged."""
        if getattr(self, "_writer", None) is not None:
            self._writer.flush()

    def close(self) -> None:
        if getattr(self, "_writer", None) is not None:
            self._writer.close()

    def on_trial_start(self, iteration, trials, trial, **info):
        self._put(trials, ("start", trial.trial_id, {**trial.config, "world_size": getattr(self, "world_size", 1)}))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if result.get(REPLAYED):  # logged by the driver that was killed (see checkpoints.py)
            return
        step = int(result.get("epoch", result.get("training_iteration", 0)))
        metrics = {k: result[k] for k in TRIAL_METRICS if k in result}
        self._put(trials, ("result", trial.trial_id, trial.config, metrics, step))

    def on_trial_complete(self, iteration, trials, trial, **info):
        last = trial.last_result or {}
        full = bool(last.get("full_budget"))
        rows = json.loads(last["epsilon_table"]) if full and last.get("epsilon_table") else None
        self._put(trials, ("complete", trial.trial_id, trial.config, full, rows, trial.checkpoint,
                           int(last.get("epoch", 0))))

    def on_trial_error(self, iteration, trials, trial, **info):
        self._put(trials, ("error", trial.trial_id, trial.config, last_line(trial.get_error() or "")))

    def on_experiment_end(self, trials, **info):
        """The sweep's end, and Ctrl-C (Tune ends its loop): everything queued is logged first."""
        self.close()

    def log_model(self, trial) -> str | None:
        """Log the trial's final weights (``last.pt`` of its last Tune checkpoint) as an MLflow model of
        its run, once; returns the model's URI, None when there is nothing to log or logging failed."""
        return self._log_model(trial.trial_id, trial.config, trial.checkpoint,
                               int((trial.last_result or {}).get("epoch", 0)))

    def _log_model(self, trial_id: str, params: dict, checkpoint, step: int) -> str | None:
        from ..train.mlflow_model import log_checkpoint_model  # MLflow's pyfunc: seconds to import, when needed

        if not hasattr(self.tracker, "trial_model") or checkpoint is None:
            return None
        try:
            logged = self.tracker.model_of(trial_id)  # by the driver before a resume
            if logged:
                return logged
            with checkpoint.as_directory() as d:
                path = Path(d) / "last.pt"
                if not path.is_file():
                    return None
                run_id = self.tracker.child(trial_id, params)
                uri = log_checkpoint_model(self.tracker.uri, run_id, path, name="model", step=step)
            self.tracker.trial_model(trial_id, params, uri)
            return uri
        except Exception as e:  # noqa: BLE001 - a tracking failure must not stop the sweep
            print(f"warning: trial {trial_id}: its model was not logged to MLflow ({type(e).__name__}: "
                  f"{(str(e).splitlines() or [''])[0][:300]}); the sweep goes on", file=sys.stderr, flush=True)
            return None
