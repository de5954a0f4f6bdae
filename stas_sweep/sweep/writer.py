"""The sweep's single MLflow writer: a background thread that logs trial events in order.

Ray Tune calls its callbacks inside its event loop: while one works, no trial is started,
stopped or promoted. :class:`~stas_sweep.sweep.callbacks.TrackerCallback` therefore only puts
each event on this writer's bounded queue and returns; the writer, one thread on the driver,
takes the events in order and

* batches each run of consecutive epoch results into one ``log_batch`` per trial run;
* keeps the front with :class:`~stas_sweep.sweep.front.IncrementalFront`: a finished trial's
  points are compared with the front only, only the point runs whose ``pareto`` tag changes are
  retagged, the hypervolume history is appended to, not read back and recomputed;
* redraws the front's plots and tables (whose cost grows with the points) only while that
  work stays under a tenth of the writer's time, and always at the end of the sweep;
* survives a store that is away: a call that fails is tried again, in order, with a backoff,
  while Tune goes on; the first failure, or a call that has not answered for
  :data:`STALL_WARNING_S` seconds, prints one warning, and the store's return one line;
* appends each acknowledged event to ``mlflow_acked.log`` in the sweep's storage folder, so
  that a resumed driver replays, from Tune's own results (each trial's ``result.json``), the
  events a killed driver had queued but not yet written.

Closing the writer (the end of the sweep, Ctrl-C: Tune ends its loop and calls
``on_experiment_end``) waits until everything queued is written.
"""

from __future__ import annotations

import json
import os
import queue
import sys
import tempfile
import threading
import time
from pathlib import Path

from ..errors import last_line
from ..tables import plural
from ..tracking import quiet_store
from .checkpoints import REPLAYED
from .front import TRIAL_METRICS, IncrementalFront, trial_points
from .plots import plot_front_html, plot_front_png, plot_hypervolume_png

STALL_WARNING_S = 5.0     # a call unanswered this long: the store is away (the warning comes then)
MAX_BACKOFF_S = 8.0       # the longest wait between two tries of a failed call
ARTIFACT_SHARE = 0.1      # the share of the writer's time the front's plots and tables may take
ACKED = "mlflow_acked.log"
# MLflow errors that no retry can fix: the event is dropped with a warning
PERMANENT = {"INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "RESOURCE_ALREADY_EXISTS", "BAD_REQUEST",
             "PERMISSION_DENIED", "UNAUTHENTICATED"}
_STOP = ("stop",)


def transient(e: BaseException) -> bool:
    """A store that is away or busy (try again), as opposed to a call it refuses (drop it)."""
    from mlflow.exceptions import MlflowException

    if isinstance(e, MlflowException):
        return e.error_code not in PERMANENT
    return isinstance(e, (OSError, ConnectionError, TimeoutError)) or type(e).__name__ == "OperationalError"


class SweepWriter:
    """One thread that writes a sweep's events to ``tracker`` (a
    :class:`~stas_sweep.tracking.SweepTracker`), in the order :meth:`put` received them.

    Events (tuples): ``("start", trial_id, params)``, ``("result", trial_id, params, metrics,
    step)``, ``("complete", trial_id, params, full_budget, rows, checkpoint, step)``,
    ``("error", trial_id, params, reason)``. ``seed``: what Tune restored before this driver
    (see :meth:`TrackerCallback.seed_of`): the finished trials' points and the events to replay.
    """

    def __init__(self, tracker, objectives, reference: dict, *, seed: dict | None = None, log_model=None,
                 paper: list | None = None, maxsize: int = 100_000, log=None) -> None:
        self.tracker, self.objectives, self.reference = tracker, list(objectives), dict(reference)
        self.log_model = log_model            # fn(trial_id, params, checkpoint, step): the trial's model
        self.paper = paper
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.queue: queue.Queue = queue.Queue(maxsize=maxsize)
        self.seed = seed or {}
        self.history: dict[int, float] = {}   # finished trials -> hypervolume then
        self.pareto_points: dict[str, int] = {}  # trial id -> its points on the front
        self.points_of: set[str] = set()      # trials whose points the front holds
        self.busy_since: float | None = None  # when the call in progress started
        self.failing_since: float | None = None
        self.warned = False
        self.seconds = 0.0                    # CPU time of this thread, the plots included
        self.artifact_seconds, self._artifacts_due = 0.0, 0.0  # CPU time of the plots and tables
        self._acked = None
        self._replayed: list[tuple] = []   # the events a killed driver did not log, written first
        self.front = IncrementalFront(self.objectives, self.reference)
        self._stopped = threading.Event()
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")  # our own retries keep the order
        self.thread = threading.Thread(target=self._run, name="mlflow-writer", daemon=True)
        self.watchdog = threading.Thread(target=self._watch, name="mlflow-watchdog", daemon=True)
        self.thread.start()
        self.watchdog.start()

    # -- the callback's side ---------------------------------------------------------------------
    def put(self, event: tuple) -> None:
        self.queue.put(event)

    def flush(self) -> None:
        """Wait until every event put so far is written (or dropped)."""
        self.queue.join()

    def close(self, timeout: float | None = 120.0) -> bool:
        """Write what is queued, then stop; False (and a warning) when the store did not take it all
        within ``timeout`` seconds."""
        if not self.thread.is_alive():
            return True
        self.queue.put(_STOP)
        self.thread.join(timeout)
        self._stopped.set()
        if self.thread.is_alive():
            self.log(f"warning: MLflow store {self.tracker.uri} still does not answer: {self.queue.qsize()} "
                     f"trial event(s) not logged (Tune's results hold them: result.json of each trial; --resume of an "
                     f"interrupted sweep replays them)")
            return False
        return True

    # -- the writer thread -----------------------------------------------------------------------
    def _run(self) -> None:
        self._start()
        if self._replayed:
            self._write(self._replayed)
            self._replayed = []
        while True:
            events = [self.queue.get()]
            while len(events) < 1000:
                try:
                    events.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            stop = _STOP in events
            t0 = time.thread_time()
            self._write([e for e in events if e != _STOP])
            if stop:
                self._send(lambda: self._artifacts(force=True), "the front's plots")
            self.seconds += time.thread_time() - t0
            for _ in events:
                self.queue.task_done()
            if stop:
                if self._acked is not None:
                    self._acked.close()
                return

    def _start(self) -> None:
        """Before the first event: the front and hypervolume history so far, the events to replay."""
        t0 = time.thread_time()
        self._send(self._load, "reading the sweep back")
        self.seconds += time.thread_time() - t0

    def _load(self) -> None:
        self.front = IncrementalFront(self.objectives, self.reference)  # afresh if a failure cut a try
        self.pareto_points, self.points_of = {}, set()
        folder = Path(self.tracker.path)
        local = "://" not in self.tracker.path and folder.is_dir()
        acked = folder / ACKED
        done = set(acked.read_text().splitlines()) if local and acked.is_file() else None
        # the finished trials' points, but those of a trial whose end the store never took: its
        # end is replayed below, with its points
        for trial_id, params, rows in self.seed.get("points", []):
            if done is None or f"{trial_id}\tend" in done:
                self._add_points(trial_id, params, rows, log=False)
        self.history = dict(self.tracker.hypervolume_history()) if self.seed.get("points") else {}
        lost = self.tracker.lost_trials(self.seed.get("known", []))
        if lost:
            self.log(f"MLflow: {plural(len(lost), 'trial run')} of a killed driver ({', '.join(lost)}) that Tune "
                     f"did not save: a new trial of the same configuration continues each; the others are "
                     f"closed as KILLED at the end")
        if local:
            self._replayed = self._replay(done) if self.seed.get("trials") and done is not None else []
            self._acked = acked.open("a")

    def _replay(self, done: set[str]) -> list[tuple]:
        """The events of Tune's restored trials that no earlier driver had written (``done``: the
        acknowledged ones): the epochs of their ``result.json`` and the end of a trial that ended."""
        events = []
        for trial_id, params, status, path in self.seed["trials"]:
            result = Path(path) / "result.json" if path and "://" not in path else None
            rows = [json.loads(line) for line in result.read_text().splitlines() if line.strip()] \
                if result is not None and result.is_file() else []
            for r in rows:
                step = int(r.get("epoch", r.get("training_iteration", 0)))
                if not r.get(REPLAYED) and f"{trial_id}\t{step}" not in done:
                    events.append(("result", trial_id, params, {k: r[k] for k in TRIAL_METRICS if k in r}, step))
            if status == "TERMINATED" and rows and f"{trial_id}\tend" not in done:
                last = rows[-1]
                full = bool(last.get("full_budget"))
                table = json.loads(last["epsilon_table"]) if full and last.get("epsilon_table") else None
                events.append(("complete", trial_id, params, full, table, None, int(last.get("epoch", 0))))
        if events:
            self.log(f"MLflow: {plural(len(events), 'trial event')} Tune holds but the driver before did not "
                     f"log; logging them now")
        return events

    def _write(self, events: list[tuple]) -> None:
        """Consecutive epoch results become one ``log_batch`` per trial run; the rest one by one."""
        i = 0
        while i < len(events):
            if events[i][0] == "result":
                j = i
                while j < len(events) and events[j][0] == "result":
                    j += 1
                by_trial: dict[str, list[tuple]] = {}
                for e in events[i:j]:
                    by_trial.setdefault(e[1], []).append(e)
                for trial_id, batch in by_trial.items():
                    if self._send(lambda: self.tracker.trial_results(trial_id, batch[0][2], [e[3:] for e in batch]),
                                  f"trial {trial_id}'s results"):
                        self._ack(f"{trial_id}\t{e[4]}" for e in batch)
                i = j
                continue
            event = events[i]
            if self._send(lambda: self._handle(event), f"trial {event[1]}"):
                self._ack([f"{event[1]}\tend"] if event[0] in ("complete", "error") else [])
            i += 1
        self._artifacts()

    def _handle(self, event: tuple) -> None:
        kind, trial_id, params, *rest = event
        if kind == "start":
            self.tracker.child(trial_id, params, started=True)
        elif kind == "error":
            self.tracker.trial_failed(trial_id, params, rest[0])
        elif kind == "complete":
            full, rows, checkpoint, step = rest
            if rows and trial_id in self.points_of:
                rows = None  # logged by the driver before a resume
            if full and checkpoint is not None and self.log_model is not None:
                self.log_model(trial_id, params, checkpoint, step)
            self.tracker.trial_complete(trial_id, params, full, rows)
            self._add_points(trial_id, params, rows or [])

    def _add_points(self, trial_id: str, params: dict, rows: list, log: bool = True) -> None:
        """A finished trial's points join the front; the tracker logs only what changed."""
        change = self.front.add(trial_points(trial_id, params, rows))
        if rows:
            self.points_of.add(trial_id)
        counts: dict[str, int] = {}
        for i in change.added + change.left:
            t = str(self.front.points[i]["trial_id"])
            counts[t] = sum(str(self.front.points[j]["trial_id"]) == t for j in self.front.on)
        changed = {t: n for t, n in counts.items() if self.pareto_points.get(t) != n}
        self.pareto_points.update(changed)
        if not log:
            return
        step = self.tracker.finished
        self.history[step] = self.front.record()
        self.tracker.write_front_change(
            new=[(self.front.points[i], i in self.front.on) for i in change.added],
            left=[self.front.points[i] for i in change.left], pareto_points=changed,
            hypervolume=self.front.hypervolume, front_size=len(self.front.on), step=step)

    def _artifacts(self, force: bool = False) -> None:
        """The front's plots and tables, when due: their cost grows with the points, so they are
        redrawn only while they take at most :data:`ARTIFACT_SHARE` of the writer's time."""
        if not self.front.points or (not force and time.monotonic() < self._artifacts_due):
            return
        t0, wall = time.thread_time(), time.perf_counter()
        with tempfile.TemporaryDirectory() as d:
            files = draw_front(self.front.points, self.front.front, self.objectives, Path(d), sweep=self.tracker.sweep,
                               history=self.history, paper=self.paper)
            self.tracker.write_front_files(self.front.points, self.front.front, files)
        self.artifact_seconds += time.thread_time() - t0
        self._artifacts_due = time.monotonic() + (time.perf_counter() - wall) / ARTIFACT_SHARE

    def _ack(self, lines) -> None:
        if self._acked is not None:
            text = "".join(f"{ln}\n" for ln in lines)
            if text:
                self._acked.write(text)
                self._acked.flush()

    def _send(self, fn, what: str) -> bool:
        """Run ``fn`` (one or more MLflow calls) until the store takes it; True when it did, False
        when the store refused it for good (a warning says what was dropped)."""
        delay = 0.5
        while True:
            self.busy_since = time.monotonic()
            try:
                with quiet_store():
                    fn()
            except Exception as e:  # noqa: BLE001 - a tracking failure must not stop the sweep
                self.busy_since = None
                if not transient(e):
                    self.log(f"warning: MLflow refused {what} ({last_line(e)}); the sweep goes on without it")
                    return False
                self._outage(f"{type(e).__name__}: {last_line(e)[:300]}")
                time.sleep(delay)
                delay = min(2 * delay, MAX_BACKOFF_S)
                continue
            self.busy_since = None
            if self.failing_since is not None:
                self.log(f"MLflow store {self.tracker.uri} answers again after "
                         f"{time.monotonic() - self.failing_since:.0f} s: the delayed trial results are logged, "
                         f"in order")
                self.failing_since, self.warned = None, False
            return True

    def _outage(self, why: str) -> None:
        if self.failing_since is None:
            self.failing_since = time.monotonic()
        if not self.warned:
            self.warned = True
            self.log(f"warning: MLflow store {self.tracker.uri} does not answer ({why}); the sweep goes on and "
                     f"its trial results are kept, in order, and logged when the store answers again")

    def _watch(self) -> None:
        """A call that hangs (a server that takes connections but does not answer) is an outage too."""
        while not self._stopped.wait(0.5):
            since = self.busy_since
            if since is not None and time.monotonic() - since > STALL_WARNING_S and not self.warned:
                if self.failing_since is None:
                    self.failing_since = since
                self._outage(f"no answer for {STALL_WARNING_S:.0f} s")
            if not self.thread.is_alive():
                return


def draw_front(points: list[dict], front: list[dict], objectives, folder: Path, *, sweep: str,
               history: dict[int, float], paper: list | None = None, html: bool = False,
               energy_version: str | None = None) -> list[Path]:
    """The front's plots in ``folder``: ``pareto_front.png`` (and ``.html`` when ``html``) of the
    points, on accuracy and energy when both are objectives, else the first two objectives;
    ``hypervolume.png`` of ``history`` (finished trials -> hypervolume)."""
    if not points:
        return []
    x, y = "energy_mj", "accuracy"
    names = [m for m, _ in objectives]
    if x not in names or y not in names:
        x, y = names[1], names[0]
    title = f"{sweep}: {len(front)} of {plural(len(points), 'point')} on the front"
    files = [plot_front_png(points, objectives, folder / "pareto_front.png", x=x, y=y, paper=paper, title=title)]
    if html:
        files.append(plot_front_html(points, objectives, folder / "pareto_front.html", x=x, y=y, paper=paper,
                                     energy_version=energy_version, title=title))
    if history:
        steps = sorted(history)
        files.append(plot_hypervolume_png([history[s] for s in steps], folder / "hypervolume.png", steps=steps))
    return [Path(f) for f in files]
