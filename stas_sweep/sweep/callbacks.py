"""A Ray Tune callback that forwards trial events, on the driver, to a tracker.

The tracker is any object with ``child(trial_id, params)``, ``trial_result(trial_id, params,
result)``, ``trial_complete(trial_id, params, last_result)`` and ``trial_failed(trial_id,
params, reason)`` (e.g. :class:`stas_sweep.tracking.SweepTracker`). Module level, so Tune can
pickle it with the experiment state and a resumed sweep gets it back.
"""

from __future__ import annotations

from ray import tune


class TrackerCallback(tune.Callback):
    def __init__(self, tracker) -> None:
        self.tracker = tracker

    def on_trial_start(self, iteration, trials, trial, **info):
        self.tracker.child(trial.trial_id, trial.config)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.tracker.trial_result(trial.trial_id, trial.config, result)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.tracker.trial_complete(trial.trial_id, trial.config, trial.last_result)

    def on_trial_error(self, iteration, trials, trial, **info):
        from .runner import error_reason

        self.tracker.trial_failed(trial.trial_id, trial.config, error_reason(trial.get_error() or ""))
