"""A Ray Tune callback, on the driver: trial events -> points and front -> a tracker.

The callback keeps the sweep's candidate points, computes the front once per finished trial
(:mod:`stas_sweep.sweep.front`) and hands it to the tracker, any object with
``child(trial_id, params)``, ``trial_result(trial_id, params, metrics, step)``,
``trial_complete(trial_id, params, full_budget, epsilon_rows)``, ``trial_failed(trial_id,
params, reason)``, ``saved_points()`` and ``write_front(front, final)`` (e.g.
:class:`stas_sweep.tracking.SweepTracker`). A tracker with ``uri``, ``model_of(trial_id)`` and
``trial_model(trial_id, params, model_uri)`` also gets every full-budget trial's final weights
as an MLflow model (:func:`stas_sweep.train.mlflow_model.log_checkpoint_model`), logged here on
the driver from the trial's last Tune checkpoint before its points are written, so each point
run names its model; a failure to log one is a warning and the sweep goes on. Module level, so Tune can pickle it with the
experiment state and a resumed sweep gets it back (its points are then read back from the
tracker).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ray import tune

from ..errors import last_line

from .checkpoints import REPLAYED
from .front import TRIAL_METRICS, front_of, trial_points


class TrackerCallback(tune.Callback):
    def __init__(self, tracker, objectives, reference: dict, world_size: int = 1) -> None:
        self.tracker = tracker
        self.world_size = world_size  # each trial run's param world_size
        self.objectives, self.reference = list(objectives), dict(reference)
        self._points: list[dict] | None = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_points"] = None  # a copy restored by Tune (resume) reads the logged points back
        return state

    @property
    def points(self) -> list[dict]:
        if self._points is None:
            self._points = list(self.tracker.saved_points())
        return self._points

    def on_trial_start(self, iteration, trials, trial, **info):
        self.tracker.child(trial.trial_id, {**trial.config, "world_size": getattr(self, "world_size", 1)},
                           started=True)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if result.get(REPLAYED):  # logged by the driver that was killed (see checkpoints.py)
            return
        step = int(result.get("epoch", result.get("training_iteration", 0)))
        metrics = {k: result[k] for k in TRIAL_METRICS if k in result}
        self.tracker.trial_result(trial.trial_id, trial.config, metrics, step)

    def on_trial_complete(self, iteration, trials, trial, **info):
        last = trial.last_result or {}
        full = bool(last.get("full_budget"))
        rows = json.loads(last["epsilon_table"]) if full and last.get("epsilon_table") else None
        if rows and any(p["trial_id"] == trial.trial_id for p in self.points):
            rows = None  # logged by the driver before a resume
        if full:
            self.log_model(trial)
        self.tracker.trial_complete(trial.trial_id, trial.config, full, rows)
        if rows:
            self.points.extend(trial_points(trial.trial_id, trial.config, rows))
        self.tracker.write_front(front_of(self.points, self.objectives, self.reference), final=False)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.tracker.trial_failed(trial.trial_id, trial.config, last_line(trial.get_error() or ""))

    def log_model(self, trial) -> str | None:
        """Log the trial's final weights (``last.pt`` of its last Tune checkpoint) as an MLflow model of
        its run, once; returns the model's URI, None when there is nothing to log or logging failed."""
        from ..train.mlflow_model import log_checkpoint_model

        if not hasattr(self.tracker, "trial_model") or trial.checkpoint is None:
            return None
        try:
            logged = self.tracker.model_of(trial.trial_id)  # by the driver before a resume
            if logged:
                return logged
            with trial.checkpoint.as_directory() as d:
                path = Path(d) / "last.pt"
                if not path.is_file():
                    return None
                run_id = self.tracker.child(trial.trial_id, trial.config)
                step = int((trial.last_result or {}).get("epoch", 0))
                uri = log_checkpoint_model(self.tracker.uri, run_id, path, name="model", step=step)
            self.tracker.trial_model(trial.trial_id, trial.config, uri)
            return uri
        except Exception as e:  # noqa: BLE001 - a tracking failure must not stop the sweep
            print(f"warning: trial {trial.trial_id}: its model was not logged to MLflow ({type(e).__name__}: "
                  f"{(str(e).splitlines() or [''])[0][:300]}); the sweep goes on", file=sys.stderr, flush=True)
            return None
