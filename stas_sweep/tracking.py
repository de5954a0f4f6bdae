"""MLflow: where runs go and the few calls the trainer and the sweep make.

Default store: a local sqlite database at an absolute path in the working directory
(``sqlite:///<cwd>/mlflow.db``), unless ``MLFLOW_TRACKING_URI`` or an explicit URI is given
(an ``mlflow server`` URL for a cluster). ``stas-sweep ui`` opens the same default store.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from .errors import UserError

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no download bars in our output


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


def log_params(client, run_id: str, params: dict) -> None:
    """Nested params, flattened to dotted keys, in batches (MLflow takes 100 a call)."""
    from mlflow.entities import Param

    items = [Param(k, str(v)[:6000]) for k, v in flatten(params).items()]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i : i + 100])


class _quiet_store:
    """MLflow's sqlite store logs a full traceback of every database error before raising it;
    the :class:`Tracker` reports the error itself, in one line, so that log is muted meanwhile."""

    names = ("mlflow.store.db.utils", "mlflow.utils.rest_utils", "mlflow.tracking._tracking_service.client")

    def __enter__(self):
        import logging

        self.loggers = [logging.getLogger(n) for n in self.names]
        self.levels = [lg.level for lg in self.loggers]
        for lg in self.loggers:
            lg.setLevel(logging.CRITICAL + 1)
        return self

    def __exit__(self, *exc) -> bool:
        for lg, level in zip(self.loggers, self.levels):
            lg.setLevel(level)
        return False


def _first_line(e: BaseException, limit: int = 300) -> str:
    text = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {text[:limit]}"


class Tracker:
    """One MLflow run of a training (optionally nested under ``parent_run_id``); a no-op when
    disabled. A tracking failure never stops training:

    * the store must answer when the run starts (else :class:`TrackingError`: nothing trained);
    * afterwards every call that fails is kept, in order, and sent again later: on the next
      call once a backoff has passed (``retry_after`` seconds, doubling up to ``max_retry_after``),
      and at :meth:`end`, which tries a few more times. The first failure prints one warning;
      the return of the store prints one line with the number of delayed calls;
    * the epochs' metrics are also in ``metrics.jsonl`` / the checkpoint's history, and
      :meth:`replay` (called on ``--resume``) logs the epochs the run does not hold yet, so
      even metrics lost with a killed process reach MLflow;
    * ``run_id`` (a resumed run) that the store does not hold: a new run is started, and
      :attr:`replaced_run_id` says which one was missing.
    """

    def __init__(self, uri: str | None, experiment: str, run_name: str, *, tags: dict | None = None,
                 parent_run_id: str | None = None, run_id: str | None = None, enabled: bool = True,
                 log=None, retry_after: float = 1.0, max_retry_after: float = 60.0) -> None:
        import sys

        self.enabled = enabled
        self.run_id = run_id
        self.replaced_run_id: str | None = None
        self.pending: list[tuple[str, tuple, dict]] = []  # calls not sent yet, oldest first
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.retry_after, self.max_retry_after = retry_after, max_retry_after
        self._delay, self._next_try, self._failing = retry_after, 0.0, False
        self.failures = 0  # calls that failed (each retry counts)
        if not enabled:
            return
        import mlflow

        self.uri = default_tracking_uri(uri)
        try:
            with _quiet_store():
                self.client = mlflow.MlflowClient(tracking_uri=self.uri)
                exp = self.client.get_experiment_by_name(experiment)
                self.experiment_id = exp.experiment_id if exp else self.client.create_experiment(experiment)
                if self.run_id is not None and not self._has_run(self.run_id):
                    self.replaced_run_id, self.run_id = self.run_id, None
                if self.run_id is None:
                    tags = dict(tags or {})
                    if parent_run_id:
                        tags["mlflow.parentRunId"] = parent_run_id
                    tags.setdefault("mlflow.runName", run_name)
                    self.run_id = self.client.create_run(self.experiment_id, tags=tags, run_name=run_name).info.run_id
                else:
                    self.client.update_run(self.run_id, status="RUNNING")  # resumed: running again
        except Exception as e:  # noqa: BLE001 - whatever the store raises at the start, it is the user's store
            raise TrackingError(f"MLflow store {self.uri} cannot be used ({_first_line(e)}); fix or unlock it, "
                                f"give another --tracking-uri, or train with --no-mlflow") from None

    def _has_run(self, run_id: str) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_run(run_id)
            return True
        except MlflowException as e:
            if e.error_code == "RESOURCE_DOES_NOT_EXIST":
                return False
            raise

    # -- sending, with retries ----------------------------------------------------------------
    def _call(self, op: str, *args, **kwargs) -> bool:
        """Queue one call behind any pending ones and try to send them; False if any is still pending."""
        if not self.enabled:
            return True
        self.pending.append((op, args, kwargs))
        return self.flush()

    def flush(self, force: bool = False) -> bool:
        """Send the pending calls in order (before the backoff has passed only if ``force``)."""
        if not self.enabled or not self.pending:
            return True
        if not force and time.monotonic() < self._next_try:
            return False
        delayed = len(self.pending)
        while self.pending:
            op, args, kwargs = self.pending[0]
            target = self if op.startswith("_") else self.client
            try:
                with _quiet_store():
                    getattr(target, op)(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - a tracking failure must not stop training
                self._failed(e)
                return False
            self.pending.pop(0)
        if self._failing:
            self.log(f"MLflow store {self.uri} answers again: {delayed} delayed call(s) sent to run {self.run_id}")
        self._failing, self._delay, self._next_try = False, self.retry_after, 0.0
        return True

    def _failed(self, e: Exception) -> None:
        self.failures += 1
        if self.failures == 1:
            self.log(f"warning: MLflow store {self.uri} failed ({_first_line(e)}); training goes on, the metrics "
                     f"are kept (and in metrics.jsonl) and sent when the store answers again")
        self._failing = True
        self._next_try = time.monotonic() + self._delay
        self._delay = min(self._delay * 2, self.max_retry_after)

    # -- the run's calls ------------------------------------------------------------------------
    def log_params(self, params: dict) -> None:
        if self.enabled:
            from mlflow.entities import Param

            items = [Param(k, str(v)[:6000]) for k, v in flatten(params).items()]
            for i in range(0, len(items), 100):
                self._call("log_batch", self.run_id, params=items[i : i + 100])

    def log_metrics(self, metrics: dict, step: int) -> None:
        if self.enabled:
            from mlflow.entities import Metric

            ts = int(time.time() * 1000)
            items = [Metric(k, float(v), ts, step) for k, v in metrics.items()
                     if isinstance(v, (int, float)) and not isinstance(v, bool)]
            self._call("log_batch", self.run_id, metrics=items)

    def replay(self, history: list[dict]) -> None:
        """Log the epochs of ``history`` (``metrics.jsonl``: one dict per epoch with ``epoch``)
        whose metrics the run does not hold (after an outage the process did not outlive, or
        into a new run that replaces a missing one)."""
        if self.enabled and history:
            self._call("_replay", [dict(h) for h in history])

    def _replay(self, history: list[dict]) -> None:
        from mlflow.entities import Metric

        logged = {m.step for m in self.client.get_metric_history(self.run_id, "accuracy")}
        ts = int(time.time() * 1000)
        missing = [h for h in history if h.get("epoch") not in logged]
        for h in missing:
            items = [Metric(k, float(v), ts, int(h["epoch"])) for k, v in h.items()
                     if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool)]
            self.client.log_batch(self.run_id, metrics=items)
        if missing:
            self.log(f"MLflow run {self.run_id}: logged the metrics of epoch(s) "
                     f"{', '.join(str(h['epoch']) for h in missing)} from metrics.jsonl")

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.enabled:
            self._call("log_artifact", self.run_id, str(path), artifact_path)

    def log_table(self, rows: list[dict], name: str) -> None:
        if self.enabled and rows:
            self._call("log_table", self.run_id, data={k: [r.get(k) for r in rows] for k in rows[0]},
                       artifact_file=name)

    def end(self, status: str = "FINISHED", attempts: int = 3) -> bool:
        """Send everything pending and close the run as ``status``, trying ``attempts`` times
        (waiting the backoff between); False (and a warning) if the store still fails."""
        if not self.enabled:
            return True
        self.pending.append(("set_terminated", (self.run_id,), {"status": status}))
        for i in range(attempts):
            if self.flush(force=True):
                return True
            if i + 1 < attempts:
                time.sleep(max(0.0, self._next_try - time.monotonic()))
        self.log(f"warning: MLflow store {self.uri} still fails; {len(self.pending)} call(s) not sent and run "
                 f"{self.run_id} not closed. The metrics are in metrics.jsonl: `stas-sweep train ... --resume` "
                 f"with this store sends them and closes the run")
        return False


# -- sweeps: one parent run per sweep, one nested child run per trial ---------------------------

SWEEP_TAG, ROLE_TAG, PATH_TAG, OBJECTIVES_TAG = "stas.sweep", "stas.role", "stas.path", "stas.objectives"


def code_version() -> str:
    """The git commit of the working tree (with '+dirty'), else the package version."""
    import subprocess

    from . import __version__

    try:
        root = Path(__file__).resolve().parent.parent
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return f"stas-sweep {__version__}"


class SweepTracker:
    """The MLflow layout of a sweep; it writes what it is given and computes nothing.

    * parent run (tags ``stas.role=sweep``, ``stas.sweep``, ``stas.path``): the search-space
      file, the resolved plan, code version and seeds; the front as a table
      (``pareto_front.json``), a PNG and an interactive HTML scatter; ``hypervolume`` per
      finished trial and ``hypervolume.png``; ``candidates.json`` (every (trial, knob) point); for a
      CIFAR or ImageNet sweep the paper's Tables 2-3 rows drawn as markers on the front plots;
    * child run per trial, nested by ``mlflow.parentRunId`` and found again by tag ``trial_id``
      (so a resumed sweep never logs a trial twice): sampled params, per-epoch metrics, its
      ``epsilon_table.json``, tags ``method`` (its halting method), ``full_budget``, ``stopped_by``, ``pareto`` and, for a failed
      trial, ``error``.

    The points and the front come from :mod:`stas_sweep.sweep.front` (anything with ``points``,
    ``front`` and ``hypervolume``). Picklable (Ray Tune stores its callbacks with the
    experiment); the client is rebuilt lazily.
    """

    def __init__(self, uri: str | None, experiment: str, sweep: str, path: str, objectives: list,
                 scheduler: str = "asha") -> None:
        self.uri = default_tracking_uri(uri)
        self.scheduler = scheduler  # what stopped a trial early: the `stopped_by` tag
        self.experiment, self.sweep, self.path = experiment, sweep, path
        self.objectives = [tuple(o) for o in objectives]
        self.parent_id: str | None = None
        self.runs: dict[str, str] = {}       # trial id -> child run id
        self.ended: dict[str, tuple] = {}    # trial id -> the end tags this driver wrote (full_budget, error)
        self.finished = 0
        self._client = None
        self._synced = False  # runs read back from MLflow since this object was built
        self.base_method = "stas"      # the trials' halting method unless halting.method is searched
        self.paper: list[dict] = []    # the paper's rows for the sweep's data set (plot markers)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_client"] = None
        state["_synced"] = False  # a copy restored by Tune (resume) re-reads MLflow first
        return state

    def _sync(self) -> None:
        if not self._synced and self.parent_id:
            self._load_state()
            self._synced = True

    @property
    def client(self):
        if self._client is None:
            import mlflow

            self._client = mlflow.MlflowClient(tracking_uri=self.uri)
        return self._client

    def _experiment_id(self) -> str:
        exp = self.client.get_experiment_by_name(self.experiment)
        return exp.experiment_id if exp else self.client.create_experiment(self.experiment)

    # -- parent -------------------------------------------------------------------------------
    def start_parent(self, spec, plan: str) -> str:
        """Create the sweep's parent run, or reopen it when the sweep is resumed."""
        from .sweep.paper_results import paper_rows

        self.base_method = spec.base.halting.method if spec.base.halting is not None else "stas"
        self.paper = paper_rows(spec.base.data.name, transformers_only=True)
        exp_id = self._experiment_id()
        found = self.client.search_runs(
            [exp_id], filter_string=f"tags.`{ROLE_TAG}` = 'sweep' AND tags.`{SWEEP_TAG}` = '{self.sweep}' "
                                    f"AND tags.`{PATH_TAG}` = '{self.path}'", max_results=1)
        if found:
            self.parent_id = found[0].info.run_id
            self.client.update_run(self.parent_id, status="RUNNING")
            self._sync()
            return self.parent_id
        run = self.client.create_run(exp_id, run_name=f"sweep-{self.sweep}", tags={
            ROLE_TAG: "sweep", SWEEP_TAG: self.sweep, PATH_TAG: self.path, "code_version": code_version(),
            OBJECTIVES_TAG: json.dumps(self.objectives),
            "mlflow.note.content": f"STAS sweep {self.sweep}. Filter children with tags.pareto = 'true' and chart "
                                   f"energy_mj (the paper's convention; energy_strict_mj beside it) against "
                                   f"accuracy.",
        })
        self.parent_id = run.info.run_id
        self._synced = True
        log_params(self.client, self.parent_id, {
            "sampler": spec.sampler, "seed": spec.seed, "num_samples": spec.num_samples,
            "scheduler": spec.scheduler, "max_epochs": spec.max_epochs, "epsilons": spec.epsilons,
            "objectives": spec.objectives, "reference": spec.reference, "stage1_key": spec.stage1_key(),
            "base": spec.base.to_dict(),
        })
        self.client.log_artifact(self.parent_id, str(spec.path))
        self._log_text(self.parent_id, plan, "plan.txt")
        self._log_json(self.parent_id, {"base": spec.base.to_dict(), "stage1": spec.stage1.to_dict(),
                                        "space": {p.key: p.describe() for p in spec.params}}, "resolved_config.json")
        return self.parent_id

    def _load_state(self) -> None:
        """After a resume: the child runs by trial id."""
        for run in self.client.search_runs([self._experiment_id()],
                                           filter_string=f"tags.`mlflow.parentRunId` = '{self.parent_id}'"):
            tid = run.data.tags.get("trial_id")
            if tid:
                self.runs[tid] = run.info.run_id

    def saved_points(self) -> list[dict]:
        """The candidate points logged so far (``candidates.json``): where a resumed sweep goes on."""
        self._sync()
        if not self.parent_id:
            return []
        try:
            path = self.client.download_artifacts(self.parent_id, "candidates.json")
            return json.loads(Path(path).read_text())
        except Exception:  # noqa: BLE001 - no candidates logged yet
            return []

    def _log_json(self, run_id: str, obj, name: str) -> None:
        self._log_text(run_id, json.dumps(obj, indent=2, default=str), name)

    def _log_text(self, run_id: str, text: str, name: str) -> None:
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / name
            p.write_text(text)
            self.client.log_artifact(run_id, str(p))

    # -- children -----------------------------------------------------------------------------
    def child(self, trial_id: str, params: dict) -> str:
        """The trial's run: found by its ``trial_id`` tag, created on first sight."""
        self._sync()
        if trial_id in self.runs:
            return self.runs[trial_id]
        found = self.client.search_runs(
            [self._experiment_id()],
            filter_string=f"tags.`mlflow.parentRunId` = '{self.parent_id}' AND tags.trial_id = '{trial_id}'")
        if found:
            self.runs[trial_id] = found[0].info.run_id
            return self.runs[trial_id]
        run = self.client.create_run(self._experiment_id(), run_name=f"trial-{trial_id}", tags={
            "mlflow.parentRunId": self.parent_id, "trial_id": trial_id, SWEEP_TAG: self.sweep,
            "pareto": "false", "full_budget": "false", "method": params.get("halting.method", getattr(self, "base_method", "stas")),
        })
        self.runs[trial_id] = run.info.run_id
        log_params(self.client, run.info.run_id, params)
        return run.info.run_id

    def trial_result(self, trial_id: str, params: dict, metrics: dict, step: int) -> None:
        """One epoch's metrics of a trial (numbers only)."""
        from mlflow.entities import Metric

        run_id = self.child(trial_id, params)
        ts = int(time.time() * 1000)
        items = [Metric(k, float(v), ts, step) for k, v in metrics.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool)]
        self.client.log_batch(run_id, metrics=items)

    def _tag_end(self, trial_id: str, params: dict, *, full_budget: bool = False, error: str | None = None) -> str:
        """The end tags of a trial (``full_budget``, ``stopped_by``, ``error``), written once per driver."""
        run_id = self.child(trial_id, params)
        if error is not None:
            self.client.set_tag(run_id, "error", error[:5000])
            self.client.set_tag(run_id, "stopped_by", "error")
        else:
            self.client.set_tag(run_id, "full_budget", str(full_budget).lower())
            self.client.set_tag(run_id, "stopped_by", "none" if full_budget else getattr(self, "scheduler", "asha"))
        self.ended[trial_id] = (full_budget if error is None else None, error)
        return run_id

    def trial_complete(self, trial_id: str, params: dict, full_budget: bool,
                       epsilon_rows: list[dict] | None = None) -> None:
        """A trial ended normally; ``epsilon_rows``: its epsilon table, when not logged before."""
        run_id = self._tag_end(trial_id, params, full_budget=full_budget)
        if epsilon_rows:
            self.client.log_table(run_id, data={k: [r[k] for r in epsilon_rows] for k in epsilon_rows[0]},
                                  artifact_file="epsilon_table.json")
        self.client.set_terminated(run_id, "FINISHED")
        self.finished += 1

    def trial_failed(self, trial_id: str, params: dict, reason: str) -> None:
        run_id = self._tag_end(trial_id, params, error=reason)
        self.client.set_terminated(run_id, "FAILED")

    # -- the front ----------------------------------------------------------------------------
    def write_front(self, front, final: bool) -> None:
        """Log a computed front (``front.points``, ``.front``, ``.hypervolume``): retag the
        children, log the hypervolume, the tables and the plots (the HTML only when ``final``)."""
        from .sweep.plots import plot_front_html, plot_front_png, plot_hypervolume_png

        points, on, hv = front.points, front.front, front.hypervolume
        on_front = {p["trial_id"] for p in on}
        for tid, run_id in self.runs.items():
            self.client.set_tag(run_id, "pareto", "true" if tid in on_front else "false")
        self.client.log_metric(self.parent_id, "hypervolume", hv, step=self.finished)
        self.client.log_metric(self.parent_id, "front_size", len(on), step=self.finished)
        self._log_json(self.parent_id, points, "candidates.json")
        self._log_json(self.parent_id, on, "pareto_front.json")
        import tempfile

        x, y = "energy_mj", "accuracy"
        names = [m for m, _ in self.objectives]
        if x not in names or y not in names:
            x, y = names[1], names[0]
        paper = getattr(self, "paper", None)  # the paper's rows (absent in a tracker pickled before them)
        with tempfile.TemporaryDirectory() as d:
            if points:
                self.client.log_artifact(self.parent_id, str(plot_front_png(
                    points, self.objectives, Path(d) / "pareto_front.png", x=x, y=y, paper=paper,
                    title=f"{self.sweep}: {len(on)} of {len(points)} points on the front")))
                if final:
                    self.client.log_artifact(self.parent_id, str(plot_front_html(
                        points, self.objectives, Path(d) / "pareto_front.html", x=x, y=y, paper=paper)))
            history = self.client.get_metric_history(self.parent_id, "hypervolume")
            if history:
                values = [m.value for m in sorted(history, key=lambda m: (m.step, m.timestamp))]
                self.client.log_artifact(self.parent_id, str(plot_hypervolume_png(values, Path(d) / "hypervolume.png")))

    def finish(self, result) -> None:
        """The sweep's results (``trials``, ``points``, ``front``, ``hypervolume``): the end tags
        where they differ from those written as trials ended (trials of earlier drivers; an
        error whose text Tune had not stored yet when the trial failed), the final front."""
        for t in result.trials:
            error = (t["error"] or "") if t["status"] == "failed" else None
            if self.ended.get(t["trial_id"]) != (t["full_budget"] if error is None else None, error):
                self._tag_end(t["trial_id"], t["params"], full_budget=t["full_budget"], error=error)
        self.finished = len(result.trials)
        self.write_front(result, final=True)
        self.client.set_tag(self.parent_id, "front_size", str(len(result.front)))
        self.client.set_terminated(self.parent_id, "FINISHED")

    def fail(self, status: str = "FAILED") -> None:
        if self.parent_id:
            self.client.set_terminated(self.parent_id, status)


# -- reading a sweep back ---------------------------------------------------------------------

class TrackingError(UserError, ValueError):
    """Nothing to read where the user pointed (message names the store and what exists)."""


def latest_sweep(uri: str | None = None, experiment: str | None = None) -> dict:
    """The latest sweep's parent run in the store: ``{"run_id", "name", "status", "objectives",
    "front", "dataset"}`` (``front``: ``pareto_front.json``, empty before a trial finished)."""
    import mlflow

    uri = default_tracking_uri(uri)
    client = mlflow.MlflowClient(tracking_uri=uri)
    if experiment:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            names = [e.name for e in client.search_experiments()]
            raise TrackingError(f"no experiment {experiment!r} in {uri}; experiments: {', '.join(names) or 'none'}")
        ids = [exp.experiment_id]
    else:
        ids = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(ids, filter_string=f"tags.`{ROLE_TAG}` = 'sweep'", order_by=["attributes.start_time DESC"],
                              max_results=1) if ids else []
    if not runs:
        raise TrackingError(f"no sweep found in {uri}" + (f" experiment {experiment!r}" if experiment else "")
                            + "; run one with: stas-sweep run search_spaces/digits.yaml")
    parent = runs[0]
    try:
        front = json.loads(Path(client.download_artifacts(parent.info.run_id, "pareto_front.json")).read_text())
    except Exception:  # noqa: BLE001 - the sweep has not finished a trial yet
        front = []
    objectives = json.loads(parent.data.tags.get(OBJECTIVES_TAG, '[["accuracy", "max"], ["energy_mj", "min"]]'))
    return {"run_id": parent.info.run_id, "name": parent.data.tags.get(SWEEP_TAG), "status": parent.info.status,
            "objectives": [tuple(o) for o in objectives], "front": front,
            "dataset": parent.data.params.get("base.data.name")}
