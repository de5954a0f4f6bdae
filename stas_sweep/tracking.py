"""MLflow: where runs go and the few calls the trainer and the sweep make.

Default store: a local sqlite database at an absolute path in the working directory
(``sqlite:///<cwd>/mlflow.db``), unless ``MLFLOW_TRACKING_URI`` or an explicit URI is given
(an ``mlflow server`` URL for a cluster). ``stas-sweep ui`` opens the same default store.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from .errors import UserError, credentials_to_env, mask_text

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no download bars in our output


def resolve_tracking_uri(*given: str | None, fallback: bool = True) -> str | None:
    """The one place that decides which MLflow store a command uses: the first of ``given`` that is
    set (callers pass the command line's ``--tracking-uri`` first, then the config's or search-space
    file's own), else ``$MLFLOW_TRACKING_URI``, else ``./mlflow.db`` (sqlite, made absolute).
    ``fallback=False`` stops after ``given`` and returns None when none is set (a submitted job
    decides on the head node). Credentials in the URI are moved to MLflow's environment variables."""
    uri = next((u for u in given if u), None)
    if not fallback:
        return credentials_to_env(uri) if uri else None
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return credentials_to_env(uri)
    return f"sqlite:///{(Path.cwd() / 'mlflow.db').resolve()}"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` tracking URI, None for any other store."""
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def open_client(uri: str, *, create: bool = True):
    """An ``MlflowClient`` of ``uri`` whose store is ready. A new sqlite store is created and
    migrated under a file lock beside it (``.<name>.lock``), so two first runs at the same moment
    both work (the second waits) and never leave alembic's half-made tables behind.
    ``create=False`` (read-only commands) refuses a sqlite store that does not exist instead of
    making one."""
    import fcntl

    import mlflow

    db = sqlite_path(uri)
    if db is None or (db.is_file() and db.stat().st_size > 0):
        return mlflow.MlflowClient(tracking_uri=uri)
    if not create:
        raise TrackingError(f"no MLflow store at {db}: run a sweep first (stas-sweep run search_spaces/digits.yaml), "
                            f"or name the store with --tracking-uri")
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(f".{db.name}.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            client = mlflow.MlflowClient(tracking_uri=uri)
            with _quiet_store():
                client.search_experiments(max_results=1)  # creates and migrates the tables
            return client
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def create_experiment(client, uri: str, name: str, tags: dict | None = None) -> str:
    """A new experiment; with a sqlite store its artifacts go to ``mlruns/<name>`` beside the
    database (MLflow's default is ``./mlruns`` of whichever folder the creating process ran in)."""
    db = sqlite_path(uri)
    location = str(db.absolute().parent / "mlruns" / name) if db is not None else None
    return client.create_experiment(name, artifact_location=location, tags=tags)


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


def params_key(flat: Mapping[str, Any]) -> str:
    """Flattened params as MLflow stores them (strings, cut at 6000 characters), as one comparable
    digest: a run's logged params and a trial's config give the same key."""
    text = json.dumps({k: str(v)[:6000] for k, v in flat.items()}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


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


quiet_store = _quiet_store  # for the sweep's writer, which reports a store's errors in one line too


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

        self.uri = resolve_tracking_uri(uri)
        try:
            with _quiet_store():
                self.client = open_client(self.uri)
                exp = self.client.get_experiment_by_name(experiment)
                self.experiment_id = exp.experiment_id if exp else create_experiment(self.client, self.uri, experiment)
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


# -- sweeps: one parent run per sweep, nested runs per trial and per candidate point -------------

SWEEP_TAG, ROLE_TAG, PATH_TAG, OBJECTIVES_TAG = "stas.sweep", "stas.role", "stas.path", "stas.objectives"
CONFIG_TAG = "stas.config"  # digest of a trial run's params (params_key)
POINT_TAG = "stas.point"  # "<trial_id>@<epsilon>": finds a point's run again after a resume
# the energy meter's counting rules (stas_sweep.energy.METER_VERSION, handed in by the sweep) on the
# parent, trial and point runs: fronts metered under different rules are never mixed
ENERGY_TAG = "stas.energy_convention"
# MLflow 3 sorts experiments into GenAI and model-training ones by this experiment tag (its UI's
# "set experiment kind" writes it); the 3.17 UI itself opens the view of its global workflow
# switch, which the URL parameter ``workflowType=machine_learning`` sets (see ``browse_url``)
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
# a trial run's and its point runs' logged model (``models:/<id>``); the sweep run's stage-1 model
MODEL_URI_TAG, STAGE1_MODEL_TAG = "model_uri", "stage1_model_uri"
POINT_METRIC_NAMES = ("accuracy", "energy_mj", "energy_strict_mj", "token_ratio", "latency_ms", "energy_reduction")
PARETO_FILTER = "tags.pareto = 'true'"  # the filter that lists a sweep's front (README, CLI, UI links)


def browse_url(base: str, experiment_id: str, filter_string: str = PARETO_FILTER) -> str:
    """The MLflow UI's run list of an experiment in the model-training view, filtered.

    ``base``: the UI's address (``http://127.0.0.1:5000``). The 3.17 UI reads ``workflowType``
    (``machine_learning`` or ``genai``, else the last choice of its sidebar switch, GenAI at
    first) and ``searchFilter`` from the query part of the page's ``#/`` route.
    """
    from urllib.parse import quote

    return (f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
            f"&searchFilter={quote(filter_string, safe='')}")


def browse_steps(experiment: str) -> str:
    """The UI steps that show a sweep's front (the parent run's description; the README's)."""
    return (f"To see the front in the MLflow UI: 1. run stas-sweep ui and open the link it prints (experiment "
            f"{experiment!r} in the Model training view, runs filtered by {PARETO_FILTER}; by hand: the 'Model training' "
            f"switch at the top left, the experiment, then {PARETO_FILTER} in the search box and Enter). "
            f"2. Click the [+] before this sweep's run name: its rows are the front's points, one run per "
            f"(trial, epsilon). For numbers: Columns, type accuracy and tick it, then energy_mj. "
            f"3. Click the chart icon (the second of the three view buttons left of the search box), 'Add chart', "
            f"'Scatter chart', X axis energy_mj, Y axis accuracy, 'Add chart'. The chart 'energy_mj vs. accuracy' "
            f"comes last under Model metrics; its expand icon enlarges it. These are the points stas-sweep pareto "
            f"prints. Clearing the filter shows every candidate point (tags.`stas.role` = 'point') and the "
            f"trial runs with their per-epoch curves.")


def code_version() -> str:
    """The git commit of the working tree (with '+dirty'), else the package version."""
    import subprocess

    from ._version import __version__

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
    * child run per trial (tag ``stas.role=trial``), nested by ``mlflow.parentRunId`` and found
      again by tag ``trial_id`` (so a resumed sweep never logs a trial twice): sampled params,
      per-epoch metrics (the curves), its ``epsilon_table.json``, tags ``method`` (its halting
      method), ``full_budget``, ``stopped_by``, ``pareto_points`` (how many of its points are on
      the front) and, for a failed trial, ``error``;
    * child run per candidate point, one (trial, knob) evaluation of a full-budget trial
      (tag ``stas.role=point``, found again by ``stas.point`` = ``<trial>@<knob>``, so a
      resumed sweep never logs a point twice): params = the trial's searched values and
      the knob; metrics ``accuracy``, ``energy_mj``, ``energy_strict_mj``, ``token_ratio``,
      ``energy_reduction``; tags ``pareto`` (``true`` exactly on the front, retagged as the
      front changes), ``trial_id``, ``method``, ``stas.energy_convention`` (the meter's version,
      also on the parent and trial runs; a resume under another version is refused). Filtering ``tags.pareto = 'true'`` lists the
      front and a scatter of two of these metrics draws it.

    The points, the front, its changes and its plots come from the sweep (:mod:`stas_sweep.sweep.front`,
    :mod:`stas_sweep.sweep.writer`; a front is anything with ``points``, ``front`` and ``hypervolume``). Picklable (Ray Tune stores its callbacks with the
    experiment); the client is rebuilt lazily.
    """

    def __init__(self, uri: str | None, experiment: str, sweep: str, path: str, objectives: list,
                 scheduler: str = "asha", energy_convention: str | None = None,
                 knob_of: Callable[[Mapping], tuple[str, Any]] | None = None) -> None:
        # a point -> (its knob's name, value): the sweep's (front.knob_of, from the method records);
        # module level, so it pickles with the tracker. None: every point is an A-SSA point (epsilon).
        self.knob_of = knob_of
        self.uri = resolve_tracking_uri(uri)
        self.energy_convention = energy_convention  # the meter's version: a tag on every run
        self.scheduler = scheduler  # what stopped a trial early: the `stopped_by` tag
        self.experiment, self.sweep, self.path = experiment, sweep, path
        self.objectives = [tuple(o) for o in objectives]
        self.parent_id: str | None = None
        self.runs: dict[str, str] = {}       # trial id -> child run id
        self.point_runs: dict[str, str] = {}  # point key (trial@epsilon) -> point run id
        self.point_pareto: dict[str, str] = {}  # point key -> its pareto tag as logged
        self.ended: dict[str, tuple] = {}    # trial id -> the end tags this driver wrote (full_budget, error)
        self.models: dict[str, str] = {}     # trial id -> the URI of its logged model
        self.finished = 0
        self._client = None
        self._synced = False  # runs read back from MLflow since this object was built
        self.base_method = "stas"      # the trials' halting method unless halting.method is searched

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

            self._client = open_client(self.uri)
        return self._client

    def _experiment_id(self) -> str:
        exp = self.client.get_experiment_by_name(self.experiment)
        if exp is None:
            return create_experiment(self.client, self.uri, self.experiment, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
        if EXPERIMENT_KIND_TAG not in exp.tags:
            self.client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        return exp.experiment_id

    # -- parent -------------------------------------------------------------------------------
    def start_parent(self, spec, plan: str) -> str:
        """Create the sweep's parent run, or reopen it when the sweep is resumed."""
        self.base_method = spec.base.halting.method if spec.base.halting is not None else "stas"
        exp_id = self._experiment_id()
        found = self.client.search_runs(
            [exp_id], filter_string=f"tags.`{ROLE_TAG}` = 'sweep' AND tags.`{SWEEP_TAG}` = '{self.sweep}' "
                                    f"AND tags.`{PATH_TAG}` = '{self.path}'", max_results=1)
        if found:
            self._check_energy_convention(found[0].data.tags)
            self.parent_id = found[0].info.run_id
            self.client.update_run(self.parent_id, status="RUNNING")
            self._sync()
            return self.parent_id
        run = self.client.create_run(exp_id, run_name=f"sweep-{self.sweep}", tags={
            ROLE_TAG: "sweep", SWEEP_TAG: self.sweep, PATH_TAG: self.path, "code_version": code_version(),
            OBJECTIVES_TAG: json.dumps(self.objectives), **self._energy_tag(),
            "mlflow.note.content": f"STAS sweep {self.sweep}: one nested run per trial (per-epoch curves) and "
                                   f"one per candidate point (trial, epsilon).\n\n" + browse_steps(self.experiment)
                                   + "\n\nenergy_mj is the paper's convention; energy_strict_mj is logged beside it."
                                   " Artifacts: pareto_front.png / .html / .json, hypervolume.png, candidates.json.",
        })
        self.parent_id = run.info.run_id
        self._synced = True
        log_params(self.client, self.parent_id, {
            "sampler": spec.sampler, "seed": spec.seed, "num_samples": spec.num_samples,
            "scheduler": spec.scheduler, "max_epochs": spec.max_epochs, "epsilons": spec.epsilons,
            "objectives": spec.objectives, "reference": spec.reference, "stage1_key": spec.stage1_key(),
            "base": spec.base.to_dict(),
        })
        self._log_text(self.parent_id, mask_text(Path(spec.path).read_text()), Path(spec.path).name)
        self._log_text(self.parent_id, plan, "plan.txt")
        self._log_json(self.parent_id, {"base": spec.base.to_dict(), "stage1": spec.stage1.to_dict(),
                                        "space": {p.key: p.describe() for p in spec.params}}, "resolved_config.json")
        return self.parent_id

    def _energy_tag(self) -> dict:
        version = getattr(self, "energy_convention", None)  # a tracker pickled before the tag: none
        return {} if version is None else {ENERGY_TAG: str(version)}

    def _check_energy_convention(self, tags: dict) -> None:
        """A sweep resumed under other counting rules would put points of two meters on one
        front: refuse it, naming both (a sweep without the tag was metered by version 1)."""
        if getattr(self, "energy_convention", None) is None:
            return
        logged = tags.get(ENERGY_TAG, "1")
        if logged != str(self.energy_convention):
            raise TrackingError(
                f"sweep {self.sweep!r} in experiment {self.experiment!r} was metered with energy convention "
                f"{logged} ({ENERGY_TAG}); this code meters with {self.energy_convention}, so a resume would "
                f"mix two energy axes on one front: start it afresh under another sweep name or experiment")

    def _load_state(self) -> None:
        """After a resume: the trial runs by trial id, the point runs by point key."""
        for run in self.client.search_runs([self._experiment_id()], max_results=50000,
                                           filter_string=f"tags.`mlflow.parentRunId` = '{self.parent_id}'"):
            tags = run.data.tags
            if tags.get(ROLE_TAG) == "point":
                self.point_runs[tags[POINT_TAG]] = run.info.run_id
                self.point_pareto[tags[POINT_TAG]] = tags.get("pareto", "")
            elif tags.get("trial_id"):
                self.runs[tags["trial_id"]] = run.info.run_id
                if tags.get(MODEL_URI_TAG):
                    self.models[tags["trial_id"]] = tags[MODEL_URI_TAG]
                if run.info.status in ("RUNNING", "KILLED"):  # cut off by a driver that stopped
                    # the tag: a driver killed between creating the run and logging its params
                    key = tags.get(CONFIG_TAG) or params_key(run.data.params)
                    self.__dict__.setdefault("open_trials", {})[tags["trial_id"]] = key

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
    def child(self, trial_id: str, params: dict, *, started: bool = False) -> str:
        """The trial's run: found by its ``trial_id`` tag, created on first sight. ``started``:
        Tune (re)starts the trial, so a run an interrupted driver closed as KILLED runs again."""
        self._sync()
        if trial_id not in self.runs and not (self._synced and self.parent_id):
            # a synced tracker holds every trial run of its sweep: a trial it lacks has none, and
            # searching the whole experiment for it would cost more with every trial logged
            found = [r for r in self.client.search_runs(
                [self._experiment_id()],
                filter_string=f"tags.`mlflow.parentRunId` = '{self.parent_id}' AND tags.trial_id = '{trial_id}'")
                if r.data.tags.get(ROLE_TAG) != "point"]
            if found:
                self.runs[trial_id] = found[0].info.run_id
        if trial_id in self.__dict__.get("_params_unlogged", ()):
            self._log_trial_params(trial_id, params)
        if trial_id in self.runs:
            if started:
                self._reopen(trial_id)
            return self.runs[trial_id]
        if started and self._adopt(trial_id, params):
            return self.runs[trial_id]
        run = self.client.create_run(self._experiment_id(), run_name=f"trial-{trial_id}", tags={
            "mlflow.parentRunId": self.parent_id, "trial_id": trial_id, SWEEP_TAG: self.sweep, ROLE_TAG: "trial",
            "full_budget": "false", "method": params.get("halting.method", getattr(self, "base_method", "stas")),
            CONFIG_TAG: params_key(flatten(params)),  # with the run, in one call: what _adopt matches
            **self._energy_tag(),
        })
        self.runs[trial_id] = run.info.run_id
        unlogged = self.__dict__.setdefault("_params_unlogged", set())  # a retry after a failure logs them
        unlogged.add(trial_id)
        return self._log_trial_params(trial_id, params)

    def _reopen(self, trial_id: str) -> None:
        """Tune (re)starts a trial that has a run: a run an interrupted driver closed as KILLED runs
        again, and one a stopped driver left open keeps the epochs it logged (restored from an
        older checkpoint, the trial trains them again; they are not logged twice)."""
        run_id = self.runs[trial_id]
        if self.client.get_run(run_id).info.status == "KILLED":
            self.client.update_run(run_id, status="RUNNING")
        if self.__dict__.get("open_trials", {}).pop(trial_id, None) is not None:
            self._read_logged_epochs(trial_id, run_id)

    def _read_logged_epochs(self, trial_id: str, run_id: str) -> None:
        """Note the last epoch run ``run_id`` holds, so that :meth:`trial_results` does not log it again."""
        steps = [m.step for m in self.client.get_metric_history(run_id, "accuracy")]
        upto = self.__dict__.setdefault("logged_upto", {})
        upto[trial_id] = max(upto.get(trial_id, 0), *steps, 0)

    def lost_trials(self, known) -> list[str]:
        """After a resume, ``known``: the trial ids Tune restored. The trial runs a killed driver left
        open (RUNNING, or KILLED by a Ctrl-C) whose trial Tune does not know: Tune's saved state
        predates them. Each may be adopted (:meth:`_adopt`) by a new trial of the same configuration."""
        self._sync()
        open_trials = self.__dict__.setdefault("open_trials", {})
        self.lost = {t: key for t, key in open_trials.items() if t not in set(known)}
        return sorted(self.lost)

    def _adopt(self, trial_id: str, params: dict) -> bool:
        """A new trial whose configuration is that of a lost trial (:meth:`lost_trials`; Optuna,
        restored to the saved state, suggests it again) continues the lost trial's run: retagged
        with the new id (``adopted_from``: the old one) and reopened, so no configuration has two
        trial runs. The epochs the lost trial logged stand; the same epochs of the new trial are not
        logged again (:meth:`trial_results`)."""
        lost = getattr(self, "lost", None)
        if not lost:
            return False
        key = params_key(flatten(params))
        old = next((t for t, k in lost.items() if k == key), None)
        if old is None:
            return False
        del lost[old]
        run_id = self.runs.pop(old)
        self.client.set_tag(run_id, "trial_id", trial_id)
        self.client.set_tag(run_id, "adopted_from", old)
        if "stopped_by" in self.client.get_run(run_id).data.tags:  # a driver's end closed it as not restored
            self.client.delete_tag(run_id, "stopped_by")
        self.client.update_run(run_id, status="RUNNING", name=f"trial-{trial_id}")
        self._read_logged_epochs(trial_id, run_id)
        self.runs[trial_id] = run_id
        print(f"trial {trial_id} has the configuration of trial {old}, which a killed driver had started after "
              f"Tune last saved the sweep: it continues that trial's MLflow run", file=sys.stderr, flush=True)
        return True

    def _log_trial_params(self, trial_id: str, params: dict) -> str:
        log_params(self.client, self.runs[trial_id], params)
        self.__dict__.setdefault("_params_unlogged", set()).discard(trial_id)
        return self.runs[trial_id]

    def trial_results(self, trial_id: str, params: dict, results: list[tuple[dict, int]]) -> None:
        """Epochs' metrics of one trial, ``(metrics, step)`` each, in one ``log_batch`` (numbers only).
        An epoch logged already (by this driver before a retry from an older checkpoint, by a driver
        before a resume, or by the lost trial this one adopted) is not logged again."""
        from mlflow.entities import Metric

        run_id = self.child(trial_id, params)
        ts = int(time.time() * 1000)
        logged = self.__dict__.setdefault("logged_upto", {})
        upto = logged.get(trial_id, 0)
        items = [Metric(k, float(v), ts, step) for metrics, step in results if step > upto for k, v in metrics.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool)]
        for i in range(0, len(items), 1000):  # MLflow takes 1000 metrics a call
            self.client.log_batch(run_id, metrics=items[i : i + 1000])
        logged[trial_id] = max([upto, *(step for _, step in results)])

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

    # -- the points and the front -------------------------------------------------------------
    @staticmethod
    def point_key(point: Mapping, knob: str = "epsilon") -> str:
        """``<trial>@<epsilon>`` for A-SSA, ``<trial>@<knob>=<value>`` for another method's knob."""
        value = point.get(knob)
        text = "-" if value is None else f"{float(value):g}"
        return f"{point['trial_id']}@{text}" if knob == "epsilon" else f"{point['trial_id']}@{knob}={text}"

    def _knob(self, point: Mapping) -> str:
        knob_of = getattr(self, "knob_of", None)
        return knob_of(point)[0] if knob_of is not None else "epsilon"

    def _key(self, point: Mapping) -> str:
        return self.point_key(point, self._knob(point))

    def _point_run(self, point: dict, on_front: bool) -> str:
        """The run of one candidate point, created (finished, with its metrics) on first sight."""
        from mlflow.entities import Metric, Param, RunTag

        key = self._key(point)
        pareto = "true" if on_front else "false"
        unlogged = self.__dict__.setdefault("_points_unlogged", set())  # created, metrics not yet logged
        if key in self.point_runs and key not in unlogged:
            return self.point_runs[key]
        if key not in self.point_runs:
            # named like its key (<trial>@<epsilon>): short enough for the UI's run-name column
            run = self.client.create_run(self._experiment_id(), run_name=key, tags={
                "mlflow.parentRunId": self.parent_id, ROLE_TAG: "point", POINT_TAG: key, SWEEP_TAG: self.sweep,
                "trial_id": str(point["trial_id"]), "method": str(point.get("method") or getattr(self, "base_method", "stas")),
                "pareto": pareto, **self._energy_tag(), **self._model_tags(point)})
            self.point_runs[key], self.point_pareto[key] = run.info.run_id, pareto
            unlogged.add(key)
        run_id = self.point_runs[key]
        ts = int(time.time() * 1000)
        knob = self._knob(point)
        # the searched values and the knob (other methods' knobs, None on this point, are left out)
        searched = sorted(k for k in set(point) - {"trial_id", "method", knob, *POINT_METRIC_NAMES}
                          if point[k] is not None)
        params = [Param(k, str(point[k])[:6000]) for k in searched] + [Param(knob, str(point.get(knob)))]
        knobs = [knob]
        metrics = [Metric(k, float(point[k]), ts, 0) for k in POINT_METRIC_NAMES
                   if isinstance(point.get(k), (int, float)) and not isinstance(point.get(k), bool)]
        self.client.log_batch(run_id, metrics=metrics, params=params,
                              tags=[RunTag(k, str(point.get(k))) for k in knobs])
        self.client.set_terminated(run_id, "FINISHED")
        unlogged.discard(key)
        return run_id

    def _model_tags(self, point: dict) -> dict[str, str]:
        """A point run's tags ``model_uri`` (its trial's model, when logged) and ``knob``
        (``epsilon=0.2``: the value the model was evaluated at)."""
        knob = self._knob(point)
        tags = {"knob": f"{knob}={point.get(knob)}"}
        model = getattr(self, "models", {}).get(str(point["trial_id"]))  # absent in a tracker pickled before models
        if model:
            tags[MODEL_URI_TAG] = model
        return tags

    # -- logged models ------------------------------------------------------------------------
    def model_of(self, trial_id: str) -> str | None:
        """The URI of the trial's logged model (also one a driver before a resume logged)."""
        self._sync()
        return getattr(self, "models", {}).get(trial_id)

    def trial_model(self, trial_id: str, params: dict, model_uri: str) -> None:
        """The trial's final weights were logged as ``model_uri``: its run's tag, and its points' from now on."""
        if not hasattr(self, "models"):
            self.models = {}
        self.models[trial_id] = model_uri
        self.client.set_tag(self.child(trial_id, params), MODEL_URI_TAG, model_uri)

    def stage1_model(self) -> str | None:
        """The URI of the sweep's stage-1 model, once logged (the parent run's tag)."""
        return self.client.get_run(self.parent_id).data.tags.get(STAGE1_MODEL_TAG) if self.parent_id else None

    def set_stage1_model(self, model_uri: str) -> None:
        self.client.set_tag(self.parent_id, STAGE1_MODEL_TAG, model_uri)

    def write_points(self, points: list[dict], front: list[dict]) -> None:
        """One run per candidate point (created once), ``pareto`` retagged where the front changed;
        each trial run's ``pareto_points``: how many of its points are on the front."""
        self._sync()
        on = {self._key(p) for p in front}
        per_trial: dict[str, int] = {}
        for p in points:
            key = self._key(p)
            run_id = self._point_run(p, key in on)
            want = "true" if key in on else "false"
            if self.point_pareto.get(key) != want:
                self.client.set_tag(run_id, "pareto", want)
                self.point_pareto[key] = want
            per_trial[str(p["trial_id"])] = per_trial.get(str(p["trial_id"]), 0) + (key in on)
        for tid, n in per_trial.items():
            if tid in self.runs:
                self.client.set_tag(self.runs[tid], "pareto_points", str(n))

    def write_front_change(self, new: list[tuple[dict, bool]], left: list[dict], pareto_points: dict[str, int],
                           hypervolume: float, front_size: int, step: int) -> None:
        """What one finished trial changed on the front (computed by the sweep): its ``new`` points
        (each with whether it is on the front), the points that ``left`` the front (retagged), the
        ``pareto_points`` count of each trial whose count changed, and the front's size and
        hypervolume at ``step`` (finished trials). Nothing else is read or written."""
        from mlflow.entities import Metric

        self._sync()
        for p, on in new:
            run_id, want = self._point_run(p, on), "true" if on else "false"
            key = self._key(p)
            if self.point_pareto.get(key) != want:
                self.client.set_tag(run_id, "pareto", want)
                self.point_pareto[key] = want
        for p in left:
            key = self._key(p)
            if key in self.point_runs and self.point_pareto.get(key) != "false":
                self.client.set_tag(self.point_runs[key], "pareto", "false")
                self.point_pareto[key] = "false"
        for tid, n in pareto_points.items():
            if tid in self.runs:
                self.client.set_tag(self.runs[tid], "pareto_points", str(n))
        ts = int(time.time() * 1000)
        self.client.log_batch(self.parent_id, metrics=[Metric("hypervolume", float(hypervolume), ts, step),
                                                       Metric("front_size", float(front_size), ts, step)])

    def write_front_files(self, points: list[dict], front: list[dict], files=()) -> None:
        """The front's tables (``candidates.json``, ``pareto_front.json``) and the given files
        (its plots, drawn by the sweep) on the parent run."""
        self._log_json(self.parent_id, points, "candidates.json")
        self._log_json(self.parent_id, front, "pareto_front.json")
        for f in files:
            self.client.log_artifact(self.parent_id, str(f))

    def hypervolume_history(self) -> list[tuple[int, float]]:
        """``(finished trials, hypervolume)`` as logged so far, the latest value of each step."""
        if not self.parent_id:
            return []
        last: dict[int, float] = {}
        for m in sorted(self.client.get_metric_history(self.parent_id, "hypervolume"), key=lambda m: (m.step, m.timestamp)):
            last[m.step] = m.value
        return sorted(last.items())

    def write_front(self, front, final: bool = False, files=()) -> None:
        """Log a computed front (``front.points``, ``.front``, ``.hypervolume``) in full: the point
        runs and their ``pareto`` tags, the hypervolume, the tables and the given ``files`` (its
        plots, drawn by the sweep). ``final``: the sweep's end (the HTML plot is among the files)."""
        points, on, hv = front.points, front.front, front.hypervolume
        self.write_points(points, on)
        self.client.log_metric(self.parent_id, "hypervolume", hv, step=self.finished)
        self.client.log_metric(self.parent_id, "front_size", len(on), step=self.finished)
        self.write_front_files(points, on, files)

    def finish(self, result, files=()) -> None:
        """The sweep's results (``trials``, ``points``, ``front``, ``hypervolume``): the end tags
        where they differ from those written as trials ended (trials of earlier drivers; an
        error whose text Tune had not stored yet when the trial failed), the final front and its
        ``files`` (plots drawn by the sweep)."""
        # after a resume, the trials and points of this driver were logged by the tracker Tune
        # restored with its callback, not by this one: read them back first (a trial run this
        # object does not hold would otherwise be created a second time)
        self._load_state()
        for t in result.trials:
            error = (t["error"] or "") if t["status"] == "failed" else None
            if self.ended.get(t["trial_id"]) != (t["full_budget"] if error is None else None, error):
                self._tag_end(t["trial_id"], t["params"], full_budget=t["full_budget"], error=error)
        self.finished = len(result.trials)
        self._close_open_trials("KILLED", keep={t["trial_id"] for t in result.trials}, reason="not_restored")
        self.write_front(result, final=True, files=files)
        self.client.set_tag(self.parent_id, "front_size", str(len(result.front)))
        self.client.set_terminated(self.parent_id, "FINISHED")

    def fail(self, status: str = "FAILED", reason: str | None = None) -> None:
        """The sweep stopped (``KILLED``: Ctrl-C; ``FAILED``: a fault): the parent and every trial
        run still running end with that status, so no run is left RUNNING (a resume reopens the
        trials Tune restores)."""
        if self.parent_id:
            if reason:
                self.client.set_tag(self.parent_id, "error", reason[:5000])
            self._close_open_trials(status)
            self.client.set_terminated(self.parent_id, status)

    def _close_open_trials(self, status: str, keep: set = frozenset(), reason: str | None = None) -> None:
        """End the trial runs of this sweep that are still RUNNING (or, with ``reason``, also the
        KILLED ones a resume did not bring back: Tune had not saved them before the driver died)."""
        if not self.parent_id:
            return
        runs = self.client.search_runs([self._experiment_id()], max_results=50000,
                                       filter_string=f"tags.`mlflow.parentRunId` = '{self.parent_id}' "
                                                     f"AND tags.`{ROLE_TAG}` = 'trial'")
        for run in runs:
            open_ = run.info.status == "RUNNING" or (reason and run.info.status == "KILLED")
            if open_ and run.data.tags.get("trial_id") not in keep:
                if reason:
                    self.client.set_tag(run.info.run_id, "stopped_by", reason)
                self.client.set_terminated(run.info.run_id, status)


# -- reading a sweep back ---------------------------------------------------------------------

class TrackingError(UserError, ValueError):
    """Nothing to read where the user pointed (message names the store and what exists)."""


def latest_sweep(uri: str | None = None, experiment: str | None = None) -> dict:
    """The latest sweep in the store (or in ``experiment``) that has front points.

    Returns ``{"run_id", "name", "experiment", "status", "objectives", "front", "dataset",
    "skipped", "energy_convention"}``: ``front`` is its ``pareto_front.json``; ``dataset`` the
    base config's data set; ``energy_convention`` its ``stas.energy_convention`` tag ("1" if absent); ``skipped`` the newer sweeps passed over because they have no points yet (failed
    before a trial finished, or still running), each ``{"run_id", "name", "experiment",
    "status"}``. Raises :class:`TrackingError` when no sweep has points (naming the latest one
    and its status).
    """

    uri = resolve_tracking_uri(uri)
    client = open_client(uri, create=False)  # reads only: a missing sqlite store is not made
    if experiment:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            names = [e.name for e in client.search_experiments()]
            raise TrackingError(f"no experiment {experiment!r} in {uri}; experiments: {', '.join(names) or 'none'}")
        exps = [exp]
    else:
        exps = client.search_experiments()
    names = {e.experiment_id: e.name for e in exps}
    runs = client.search_runs(list(names), filter_string=f"tags.`{ROLE_TAG}` = 'sweep'",
                              order_by=["attributes.start_time DESC"], max_results=1000) if names else []
    where = f"{uri}" + (f" experiment {experiment!r}" if experiment else "")
    if not runs:
        raise TrackingError(f"no sweep found in {where}; run one with: stas-sweep run search_spaces/digits.yaml")

    def describe(run) -> dict:
        return {"run_id": run.info.run_id, "name": run.data.tags.get(SWEEP_TAG),
                "experiment_id": run.info.experiment_id, "experiment": names.get(run.info.experiment_id),
                "status": run.info.status}

    skipped = []
    for run in runs:
        if run.data.metrics.get("front_size", 0) > 0:  # logged with every front the sweep wrote
            try:
                front = json.loads(Path(client.download_artifacts(run.info.run_id, "pareto_front.json")).read_text())
            except Exception:  # noqa: BLE001 - a front_size without its table: treat as empty
                front = []
            if front:
                default = '[["accuracy", "max"], ["energy_mj", "min"]]'
                objectives = json.loads(run.data.tags.get(OBJECTIVES_TAG, default))
                return {**describe(run), "objectives": [tuple(o) for o in objectives], "front": front,
                        "dataset": run.data.params.get("base.data.name"), "skipped": skipped,
                        "energy_convention": run.data.tags.get(ENERGY_TAG, "1")}
        skipped.append(describe(run))
    latest = skipped[0]
    raise TrackingError(f"no sweep in {where} has front points yet; the latest, {latest['name']!r} "
                        f"(experiment {latest['experiment']!r}, run {latest['run_id']}), is {latest['status']}"
                        + (f" and {len(skipped) - 1} older ones have none either" if len(skipped) > 1 else ""))


# -- picking a point: its trial's model into the Model Registry ---------------------------------

# what a registered version carries of its point (besides the knob, ``sweep`` and the run ids)
VERSION_METRICS = ("accuracy", "energy_mj", "energy_strict_mj", "token_ratio")


def point_run(uri: str | None, run_id: str) -> dict:
    """The point run ``run_id``: ``{"run_id", "tags", "metrics"}``. :class:`TrackingError` for a
    run the store does not hold, a run that is not a sweep's point, or a point without a model."""
    import mlflow
    from mlflow.exceptions import MlflowException

    uri = resolve_tracking_uri(uri)
    try:
        run = mlflow.MlflowClient(tracking_uri=uri).get_run(run_id)
    except MlflowException as e:
        if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            raise TrackingError(f"no run {run_id} in {uri}; list a sweep's front points with stas-sweep pareto "
                                f"(their runs: {PARETO_FILTER} in the MLflow UI)") from None
        raise
    tags = run.data.tags
    if tags.get(ROLE_TAG) != "point":
        raise TrackingError(f"run {run_id} ({tags.get('mlflow.runName')!r}, {tags.get(ROLE_TAG) or 'not a sweep run'}) "
                            f"is not a point of a sweep's front; give a point run (tags.`{ROLE_TAG}` = 'point'), "
                            f"knee or best:<objective>")
    if not tags.get(MODEL_URI_TAG):
        raise TrackingError(f"point run {run_id} ({tags.get(POINT_TAG)}) has no logged model (tag {MODEL_URI_TAG}): "
                            f"its sweep ran before stas-sweep logged trained models; run the sweep again")
    return {"run_id": run_id, "tags": dict(tags), "metrics": dict(run.data.metrics)}


def front_point_run(uri: str | None, sweep_run_id: str, key: str) -> dict:
    """The point run of the sweep ``sweep_run_id`` whose point key (``stas.point``) is ``key``."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=resolve_tracking_uri(uri))
    exp = client.get_run(sweep_run_id).info.experiment_id
    runs = client.search_runs([exp], max_results=10, filter_string=f"tags.`mlflow.parentRunId` = '{sweep_run_id}' "
                                                                    f"AND tags.`{POINT_TAG}` = '{key}'")
    if not runs:
        raise TrackingError(f"sweep run {sweep_run_id} has no point run {key!r} (tag {POINT_TAG})")
    return point_run(uri, runs[0].info.run_id)


class global_tracking_uri:
    """MLflow 3.17 looks a ``models:/<model id>`` URI up through the *global* tracking URI, not the
    client's: the sqlite registry when it creates a version from one (``MlflowClient()`` in
    ``SqlAlchemyStore.create_model_version``, marked TODO there), and ``download_artifacts`` of one
    (its ``tracking_uri`` argument notwithstanding). Within this context that URI is ``uri``;
    afterwards it is what it was, the ``MLFLOW_TRACKING_URI`` variable included."""

    def __init__(self, uri: str) -> None:
        self.uri = uri

    def __enter__(self):
        import mlflow

        self.saved_env = os.environ.get("MLFLOW_TRACKING_URI")
        self.saved = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
        mlflow.set_tracking_uri(self.uri)
        return self

    def __exit__(self, *exc) -> bool:
        import mlflow

        mlflow.set_tracking_uri(self.saved)
        if self.saved_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = self.saved_env
        return False


def version_tags(point: dict) -> dict[str, str]:
    """A registered version's tags: its point's knob, method, metrics, sweep and runs."""
    t = point["tags"]
    knob, _, value = t.get("knob", "epsilon=").partition("=")
    tags = {"knob": t.get("knob", ""), knob: value, "method": t.get("method", "stas"), "sweep": t.get(SWEEP_TAG, ""),
            "trial_id": t.get("trial_id", ""), "point": t.get(POINT_TAG, ""), "point_run_id": point["run_id"],
            "sweep_run_id": t.get("mlflow.parentRunId", "")}
    tags.update({m: repr(point["metrics"][m]) for m in VERSION_METRICS if m in point["metrics"]})
    return tags


def register_point(uri: str | None, point: dict, name: str | None = None, force: bool = False) -> tuple[str, bool]:
    """Register the model of ``point`` (:func:`point_run`) as a version of ``name`` (default: its
    sweep's name), tagged :func:`version_tags`. Returns ``(models:/NAME/VERSION, created)``: the
    version this point already has, unless ``force``. A name MLflow refuses: :class:`TrackingError`,
    nothing registered."""
    import mlflow
    from mlflow.exceptions import MlflowException

    uri = resolve_tracking_uri(uri)
    client = mlflow.MlflowClient(tracking_uri=uri)
    name = name if name is not None else point["tags"].get(SWEEP_TAG) or "stas-sweep"
    try:
        if not force:
            # the point's versions, by the point run they name (a run id: hex, safe in a filter)
            for v in sorted(client.search_model_versions(f"run_id = '{point['run_id']}'"), key=lambda v: int(v.version)):
                if v.name == name and v.tags.get("point_run_id") == point["run_id"]:
                    return f"models:/{name}/{v.version}", False
        try:
            client.create_registered_model(name, description="stas-sweep: models picked on a sweep's front; each "
                                                             "version's tags hold its point's knob and metrics")
        except MlflowException as e:
            if e.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        model = point["tags"][MODEL_URI_TAG]
        with global_tracking_uri(uri):
            version = client.create_model_version(name, source=model, run_id=point["run_id"],
                                                  tags=version_tags(point), model_id=model.rsplit("/", 1)[-1],
                                                  await_creation_for=0)  # ready at once outside Databricks
    except MlflowException as e:
        if e.error_code == "INVALID_PARAMETER_VALUE":
            raise TrackingError(f"--name {name!r}: MLflow refuses it ({_first_line(e)})") from None
        raise
    return f"models:/{name}/{version.version}", True
