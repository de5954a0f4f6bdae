"""The sweep's storage folder (``<storage_path>/<name>``): what it holds besides Tune's own files.

* ``sweep_spec.json``: the sweep's plan as it started (the resolved search space and configs).
  ``--resume`` compares the file given with it and refuses any difference, naming the changed
  keys: a resumed sweep keeps the plan its first trials ran with, so one front never mixes two
  epsilon grids or two ranges.
* ``driver.lock``: the driver that runs the sweep (host, PID, start time). A second driver for
  the same sweep is refused; the lock of a driver that is gone (same host, PID not running) is
  taken over with a note.
* :func:`check_writable` and :func:`checkpoint_estimate`: before Ray starts, the folder can be
  written (probed by making and removing a temporary file) and has room for the checkpoints the
  plan keeps.

Local paths only: with an ``s3://`` or ``gs://`` storage Tune's own state is the only record.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError, mask_uri
from .space import SweepSpec

SPEC_FILE = "sweep_spec.json"
LOCK_FILE = "driver.lock"


class StorageError(UserError, RuntimeError):
    """The storage folder cannot take this sweep (in use, changed plan, not writable, full): one
    line for the CLI, exit 2."""


def local(path: str) -> bool:
    return "://" not in path


# -- the stored plan ----------------------------------------------------------------------------
def plan_record(spec: SweepSpec) -> dict:
    """What decides a sweep's trials and points, as plain JSON values: compared on ``--resume``."""
    return json.loads(json.dumps({
        "base": spec.base.to_dict(), "stage1": spec.stage1.to_dict(),
        "space": {p.key: {p.kind: p.args} for p in spec.params},
        "eval": {"epsilons": spec.epsilons, **spec.grids},
        "objectives": dict(spec.objectives), "reference": spec.reference,
        "search": {"sampler": spec.sampler, "seed": spec.seed, "num_samples": spec.num_samples,
                   "points_to_evaluate": spec.points_to_evaluate},
        "scheduler": {"type": spec.scheduler, "metric": spec.scheduler_metric, "mode": spec.scheduler_mode,
                      "grace_period": spec.grace_period, "reduction_factor": spec.reduction_factor,
                      "max_epochs": spec.max_epochs},
        "resources": spec.resources, "max_concurrent_trials": spec.max_concurrent_trials, "retries": spec.retries,
        "mlflow": {"experiment": spec.experiment,
                   "tracking_uri": mask_uri(spec.tracking_uri) if spec.tracking_uri else None},
    }, default=str))


def changed_keys(old, new, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two JSON-like values (added and removed keys too)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            where = f"{prefix}.{key}" if prefix else str(key)
            if key not in old or key not in new:
                out.append(where)
            else:
                out += changed_keys(old[key], new[key], where)
        return out
    return [] if old == new else [prefix or "(the whole plan)"]


def save_plan(folder: Path, spec: SweepSpec) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{SPEC_FILE}.tmp"
    tmp.write_text(json.dumps(plan_record(spec), indent=1, sort_keys=True))
    os.replace(tmp, folder / SPEC_FILE)


def check_plan_unchanged(folder: Path, spec: SweepSpec, log=print) -> None:
    """On ``--resume``: the file given must resolve to the plan the sweep started with."""
    stored = folder / SPEC_FILE
    if not stored.is_file():  # the driver stores it once it holds the sweep's lock
        log(f"note: {folder} holds no {SPEC_FILE} (a sweep started before plans were stored): resuming with "
            f"{spec.path} as given, and storing it as the sweep's plan")
        return
    try:
        old = json.loads(stored.read_text())
    except (OSError, ValueError) as e:
        raise StorageError(f"--resume: {stored} cannot be read ({e}); it records the plan the sweep started with")
    keys = changed_keys(old, plan_record(spec))
    if keys:
        shown = ", ".join(keys[:12]) + (f" and {len(keys) - 12} more" if len(keys) > 12 else "")
        raise StorageError(
            f"--resume: {spec.path} differs from the plan sweep {spec.name!r} started with ({stored}): {shown}. "
            f"A resumed sweep keeps its plan: put those values back to resume, or start a new sweep under "
            f"another name: (or storage_path:)")


# -- one driver per sweep -----------------------------------------------------------------------
@dataclass
class DriverLock:
    """``with DriverLock(folder, log):`` holds ``folder/driver.lock`` for this process."""

    folder: Path
    log: object = print
    _held: bool = False
    _made: Path | None = None   # the topmost folder this lock made: removed again on exit if still empty

    @property
    def path(self) -> Path:
        return self.folder / LOCK_FILE

    def __enter__(self) -> "DriverLock":
        top = self.folder.absolute()
        while not top.parent.exists():
            top = top.parent
        self._made = None if top.exists() else top
        self.folder.mkdir(parents=True, exist_ok=True)
        me = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner.get("pid") == me["pid"] and owner.get("host") == me["host"]:
                    return self  # this process holds it already (run_tracked, then run_sweep)
                if owner and not self._gone(owner, me["host"]):
                    raise StorageError(
                        f"sweep folder {self.folder} is in use by the driver PID {owner.get('pid')} on "
                        f"{owner.get('host')} (since {owner.get('started')}): one driver per sweep. Wait for it or "
                        f"stop it (Ctrl-C); if that process is gone for good, delete {self.path}")
                self.log(f"note: taking over {self.path} from PID {owner.get('pid')} on {owner.get('host')}, "
                         f"which is no longer running" if owner else f"note: replacing the unreadable {self.path}")
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self._held = True
            return self
        raise StorageError(f"{self.path}: another driver keeps taking the lock; one driver per sweep")

    def _owner(self) -> dict:
        try:
            owner = json.loads(self.path.read_text())
            return owner if isinstance(owner, dict) else {}
        except (OSError, ValueError):
            return {}

    @staticmethod
    def _gone(owner: dict, host: str) -> bool:
        """True when the owner is a process of this host that no longer runs (another host's
        process cannot be checked from here: it counts as running)."""
        if owner.get("host") != host or not isinstance(owner.get("pid"), int):
            return False
        try:
            os.kill(owner["pid"], 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # running, as another user
            return False
        return False

    def __exit__(self, *exc) -> None:
        if self._held and self._owner().get("pid") == os.getpid():
            self.path.unlink(missing_ok=True)
            folder = self.folder.absolute()
            while self._made is not None and not any(folder.iterdir()):  # a start that wrote nothing
                folder.rmdir()
                if folder == self._made:
                    break
                folder = folder.parent
        self._held = False


# -- room and permissions -------------------------------------------------------------------------
def _existing_parent(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable(path: Path, what: str) -> None:
    """``path`` (a folder, made later if missing) can be written: a temporary file is made and
    removed in its nearest existing folder. Raises :class:`StorageError` naming it."""
    where = _existing_parent(Path(path))
    if not where.is_dir():
        raise StorageError(f"{what} {path}: {where} is not a folder")
    try:
        with tempfile.NamedTemporaryFile(dir=where, prefix=".stas-sweep-probe-"):
            pass
    except OSError as e:
        raise StorageError(f"{what} {path} cannot be written ({e.strerror or e}); choose a writable folder")


def check_room(folder: Path, need: int) -> None:
    free = shutil.disk_usage(_existing_parent(folder)).free
    if free < need:
        raise StorageError(f"storage {folder} has {free / 2**20:,.0f} MiB free; the sweep's checkpoints need about "
                           f"{need / 2**20:,.0f} MiB. Free some space or choose another storage_path:")
