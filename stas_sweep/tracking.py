"""MLflow: where runs go and the few calls the trainer and the sweep make.

Default store: a local sqlite database at an absolute path in the working directory
(``sqlite:///<cwd>/mlflow.db``), unless ``MLFLOW_TRACKING_URI`` or an explicit URI is given
(an ``mlflow server`` URL for a cluster). ``stas-sweep ui`` opens the same default store.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def default_tracking_uri(uri: str | None = None) -> str:
    if uri:
        return uri
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{(Path.cwd() / 'mlflow.db').resolve()}"


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists and None become strings for MLflow params."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out


class Tracker:
    """One MLflow run (optionally nested under ``parent_run_id``); a no-op when disabled."""

    def __init__(self, uri: str | None, experiment: str, run_name: str, *, tags: dict | None = None,
                 parent_run_id: str | None = None, run_id: str | None = None, enabled: bool = True) -> None:
        self.enabled = enabled
        self.run_id = run_id
        if not enabled:
            return
        import mlflow

        self.uri = default_tracking_uri(uri)
        self.client = mlflow.MlflowClient(tracking_uri=self.uri)
        exp = self.client.get_experiment_by_name(experiment)
        self.experiment_id = exp.experiment_id if exp else self.client.create_experiment(experiment)
        if self.run_id is None:
            tags = dict(tags or {})
            if parent_run_id:
                tags["mlflow.parentRunId"] = parent_run_id
            tags.setdefault("mlflow.runName", run_name)
            self.run_id = self.client.create_run(self.experiment_id, tags=tags, run_name=run_name).info.run_id

    def log_params(self, params: dict) -> None:
        if self.enabled:
            from mlflow.entities import Param

            items = [Param(k, str(v)[:6000]) for k, v in flatten(params).items()]
            for i in range(0, len(items), 100):
                self.client.log_batch(self.run_id, params=items[i : i + 100])

    def log_metrics(self, metrics: dict, step: int) -> None:
        if self.enabled:
            import time

            from mlflow.entities import Metric

            ts = int(time.time() * 1000)
            items = [Metric(k, float(v), ts, step) for k, v in metrics.items()
                     if isinstance(v, (int, float)) and not isinstance(v, bool)]
            self.client.log_batch(self.run_id, metrics=items)

    def set_tags(self, tags: dict) -> None:
        if self.enabled:
            for k, v in tags.items():
                self.client.set_tag(self.run_id, k, str(v))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.enabled:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_table(self, rows: list[dict], name: str) -> None:
        if self.enabled and rows:
            self.client.log_table(self.run_id, data={k: [r.get(k) for r in rows] for k in rows[0]},
                                  artifact_file=name)

    def end(self, status: str = "FINISHED") -> None:
        if self.enabled:
            self.client.set_terminated(self.run_id, status=status)
