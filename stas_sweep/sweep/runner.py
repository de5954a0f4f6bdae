"""Running a sweep: Ray (local or a cluster), the shared stage 1, Optuna + MOASHA/ASHA, the results.

    spec = load_spec("search_spaces/digits.yaml")
    result = run_sweep(spec, callbacks=[...Tune callbacks, e.g. the MLflow one...])
    result.front          # non-dominated (trial, epsilon) points

Wiring (Ray 2.60, Optuna 5):
* metric/mode lists go on ``OptunaSearch`` only (setting them on ``TuneConfig`` would make the
  study single-objective); ASHA gets its own single metric, MOASHA ranks on the objectives
  itself and refuses a TuneConfig metric/mode;
* ASHA-stopped trials reach Optuna with partial-budget values (Ray's design); they are kept
  off the front here: only trials that ran every epoch give points;
* stage 1 runs once, as a Ray task with a trial's resources, before any trial; its run is kept
  under ``<storage_path>/stage1-<key>`` and reused by any later sweep with the same stage-1 config.
"""

from __future__ import annotations

import errno
import inspect
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ..energy import METER_VERSION
from ..errors import last_line
from ..tracking import SweepTracker, sqlite_path
from ..tables import plural
from . import storage
from .callbacks import TrackerCallback
from .checkpoints import restore_lost_checkpoints
from .front import OBJECTIVE_METRICS, front_of, knob_of, trial_points
from .paper_results import paper_rows
from .space import DRIVER_CPU, SweepSpec
from .trainable import train_stage1, train_stage1_on_workers, train_trial
from .workers import WorkerGroup
from .writer import draw_front

# restarts of a worker group (a lost worker or node) from its last checkpoint, before the trial
# fails and Tune's own retries (``retries``) take over
WORKER_GROUP_RETRIES = 2


class SweepError(RuntimeError):
    """The sweep cannot start or resume (message says why and what to do)."""


class SweepFault(RuntimeError):
    """The sweep stopped on a fault of its machine (disk full, permission, I/O): one line naming
    the cause and the path; what was saved before it is kept for ``--resume``."""


# OS faults a sweep cannot go on through, by errno: what to tell the user
FAULTS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up",
          errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
          errno.EPERM: "permission denied", errno.EIO: "an I/O error"}


def fault_of(exc: BaseException | str, where: str | None = None) -> str | None:
    """One line naming an OS fault (disk full, permission ...) behind ``exc``: found in its chain
    of causes (Ray's task errors keep theirs in ``cause``) or, for an error that only carries the
    text of one (a trial's error as Tune stores it), in its message; ``where`` names the path when
    the error does not. None when the error is of another kind."""
    import re

    seen, todo, texts = set(), [exc], []
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in FAULTS:
            return f"{FAULTS[e.errno]} ({e.strerror}): {e.filename or where or 'path not given'}"
        texts.append(str(e))
        if isinstance(e, BaseException):
            todo += [e.__cause__, e.__context__, getattr(e, "cause", None)]
    for line in (ln for text in texts for ln in text.splitlines()):
        for code, what in FAULTS.items():
            if os.strerror(code) in line:
                path = re.search(r"'(/[^']+)'", line)
                return f"{what} ({os.strerror(code)}): {path.group(1) if path else where or line.strip()[:300]}"
    return None


def full_storage(spec: SweepSpec) -> str | None:
    """'the disk is full ...' when the sweep's local storage has (almost) no room left: Tune then
    fails on files it could not write (an empty error pickle reads as ``EOFError``)."""
    folder = Path(experiment_path(spec))
    if not storage.local(str(folder)):
        return None
    try:
        free = shutil.disk_usage(folder if folder.exists() else spec.storage_dir()).free
    except OSError:
        return None
    return f"the disk is full ({os.strerror(errno.ENOSPC)}): {folder}" if free < (1 << 20) else None


class SweepInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGUSR1) stopped the sweep; Tune saved its state, ``--resume`` finishes it."""


@dataclass
class SweepResult:
    name: str
    path: str                                   # Ray Tune experiment folder
    trials: list[dict] = field(default_factory=list)
    points: list[dict] = field(default_factory=list)   # candidate (trial, epsilon) points
    front: list[dict] = field(default_factory=list)
    hypervolume: float = 0.0


def experiment_path(spec: SweepSpec) -> str:
    return f"{spec.storage_dir().rstrip('/')}/{spec.name}"


def init_ray(address: str | None, spec: SweepSpec) -> None:
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")  # set inside a Ray job: attach to its cluster
    kwargs: dict = {"log_to_driver": True}
    if os.environ.get("RAY_CHDIR_TO_TRIAL_DIR") != "0":  # a submitted job's runtime env sets both already
        # trials keep the driver's cwd; workers on every node wait passively for OpenMP work
        # (nodes started by `ray start` do not inherit the CLI's setting)
        kwargs["runtime_env"] = {"env_vars": {"RAY_CHDIR_TO_TRIAL_DIR": "0",
                                              "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}}
    if address:
        try:
            ray.init(address=address, **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise SweepError(f"cannot reach a Ray cluster at {address!r}: {e}") from None
        return
    temp = os.environ.get("STAS_SWEEP_RAY_TMPDIR")
    loopback = _loopback_only()
    ray.init(include_dashboard=False, _temp_dir=temp, **({"_node_ip_address": "127.0.0.1"} if loopback else {}),
             **kwargs)


def _loopback_only() -> bool:
    """Make the local Ray this process starts listen on 127.0.0.1 only (GCS, raylet, workers,
    agents); True unless the user set ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1`` to reach it from
    other machines.

    Ray 2.60 on Linux rewrites ``_node_ip_address="127.0.0.1"`` to the host's routable address
    (``services.resolve_ip_for_localhost``) and its gRPC servers then listen on every interface;
    measured with ``ss -ltnp``: GCS, raylet, driver and worker on ``*:port``, an agent on
    ``0.0.0.0``. Its single-machine mode (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, the default on
    Windows and macOS) keeps 127.0.0.1, and every listener is then ``127.0.0.1``. The variable is
    read when ``ray`` is imported (``ray_constants.ENABLE_RAY_CLUSTER``), so it is set both for
    the processes Ray starts and on the already imported constant."""
    from ray._private import ray_constants

    os.environ.setdefault(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR, "0")
    cluster = os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR].strip().lower() in ("1", "true")
    ray_constants.ENABLE_RAY_CLUSTER = cluster
    return not cluster


def check_resources(spec: SweepSpec, strict: bool = True, log=print) -> None:
    """Refuse trials that could never be placed (e.g. GPUs asked of a machine without any).

    On a cluster (``strict=False``) an autoscaler may still add GPU nodes, so it only warns.
    """
    import ray

    total = ray.cluster_resources()
    trial = spec.trial_resources()
    need = {"CPU": trial["cpu"], "GPU": trial["gpu"]}
    missing = [f"{k}: a trial needs {v:g}, the cluster has {total.get(k, 0):g}" for k, v in need.items()
               if v and total.get(k, 0) < v]
    if missing and strict:
        raise SweepError("no trial could ever be placed (" + "; ".join(missing) + "). Lower resources in the "
                         "search-space file or attach to a cluster with more (--address).")
    if missing:
        log("warning: the cluster cannot place a trial right now (" + "; ".join(missing) + "); trials stay "
            "pending until an autoscaler adds such nodes")


def local_resources() -> dict:
    """What this machine offers a trial: ``{"cpu": cores this process may use, "gpu": CUDA devices}``."""
    cpu = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        import torch

        gpu = torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - no usable torch/CUDA: no GPUs here
        gpu = 0
    return {"cpu": cpu, "gpu": gpu}


def beyond_this_machine(spec: SweepSpec, have: dict | None = None) -> list[tuple[str, float, int]]:
    """``(key, per trial, this machine)`` for each of ``cpu``/``gpu`` a trial asks more of than this
    machine has (a trial: all its workers, and with several the CPU share of its own function)."""
    have = local_resources() if have is None else have
    need = spec.trial_resources()
    return [(k, need[k], have[k]) for k in ("cpu", "gpu") if need[k] and need[k] > have[k]]


def local_resource_warnings(spec: SweepSpec, have: dict | None = None) -> list[str]:
    """Warnings (not errors: the file may be meant for a cluster) for per-trial ``resources``
    this machine cannot give one trial."""
    units = {"cpu": "CPU cores", "gpu": "GPUs"}
    return [f"warning: {spec.path}: resources.{k} = {want:g} per trial, but this machine has {has} {units[k]}: "
            f"a local run cannot place a trial (fine for a cluster: stas-sweep run --address / submit)"
            for k, want, has in beyond_this_machine(spec, have)]


def check_storage(spec: SweepSpec, log=print) -> None:
    """Several nodes need shared storage: Ray stopped syncing trial folders to the head in 2.7."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) > 1 and "://" not in spec.storage_path:
        log(f"warning: storage_path {spec.storage_dir()} is a local path and this cluster has {len(nodes)} nodes: "
            f"it must be a shared file system mounted at that path on every node (NFS), or use an s3:// / gs:// "
            f"URI, or trials on other nodes cannot save or restore checkpoints")


def stage1_weights(spec: SweepSpec, log=print) -> dict:
    """The shared stage-1 weights: reused from storage when complete, else trained once."""
    import ray
    import torch

    from ..train.checkpoint import load_checkpoint

    cfg = spec.stage1
    local = "://" not in spec.storage_path
    out = Path(spec.storage_dir()) / f"stage1-{spec.stage1_key()}" if local else None
    if out is not None:
        last = out / "checkpoints" / "last.pt"
        if last.is_file():
            state = load_checkpoint(last)
            if state.get("epoch") == cfg.epochs:
                log(f"stage 1: reusing {last} (trained {plural(state['epoch'], 'epoch')})")
                return {k: v for k, v in state["model"].items()}
        log(f"stage 1: training once for this sweep in {out}")
    else:
        log("stage 1: training once for this sweep (storage is remote: kept in memory for the trials)")
    try:
        if worker_group(spec).workers > 1:  # driven from here, like a trial's worker group
            weights, history = train_stage1_on_workers(cfg, str(out) if out else None, worker_group(spec),
                                                       f"{experiment_path(spec)}/worker-runs")
        else:
            task = ray.remote(train_stage1).options(num_cpus=spec.resources["cpu"], num_gpus=spec.resources["gpu"])
            weights, history = ray.get(task.remote(cfg, str(out) if out else None))
    except ray.exceptions.RayTaskError as e:
        from ..errors import UserError

        if isinstance(e.cause, UserError):  # bad input found on the node (its data, its files): one line
            raise SweepError(f"stage 1: {e.cause}") from None
        raise
    if history:
        h = history[-1]
        log(f"stage 1: accuracy {h['accuracy']:.2f}%, energy {h['energy_mj']:.4f} mJ "
            f"(strict {h.get('energy_strict_mj', float('nan')):.4f}) after {plural(h['epoch'], 'epoch')}")
    return {k: torch.as_tensor(v) for k, v in weights.items()}


def worker_group(spec: SweepSpec) -> WorkerGroup:
    r = spec.resources
    return WorkerGroup(workers=r.get("workers", 1), cpu=r["cpu"], gpu=r["gpu"], retries=WORKER_GROUP_RETRIES)


def trial_function_resources(spec: SweepSpec) -> dict:
    """What Tune reserves for a trial's function: a one-worker trial trains in it; one of several
    workers drives the worker group, whose workers Ray Train reserves themselves."""
    if spec.resources.get("workers", 1) > 1:
        return {"cpu": DRIVER_CPU, "gpu": 0}
    return {"cpu": spec.resources["cpu"], "gpu": spec.resources["gpu"]}


def build_searcher(spec: SweepSpec):
    """Optuna's sampler behind Tune's ``OptunaSearch``; None (Tune's own generator, one trial of
    the fixed values) when every key is fixed."""
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    if not spec.searched():
        return None

    if spec.sampler == "tpe":
        sampler = optuna.samplers.TPESampler(seed=spec.seed, multivariate=True,
                                             n_startup_trials=min(10, max(2, spec.num_samples // 3)))
    elif spec.sampler == "nsga2":
        sampler = optuna.samplers.NSGAIISampler(seed=spec.seed, population_size=max(4, min(50, spec.num_samples // 2)))
    else:
        sampler = optuna.samplers.RandomSampler(seed=spec.seed)
    metrics = [m for m, _ in spec.objectives]
    modes = [d for _, d in spec.objectives]
    return OptunaSearch(metric=metrics, mode=modes, sampler=sampler, study_name=spec.name,
                        points_to_evaluate=spec.points_to_evaluate or None)


def build_scheduler(spec: SweepSpec):
    """The spec's early stopping. MOASHA ranks on the file's objectives and takes no metric/mode
    from TuneConfig (OptunaSearch owns its metric list); ASHA gets its own single metric."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if spec.scheduler == "fifo":
        return FIFOScheduler()
    if spec.scheduler == "moasha":
        from .moasha import MOASHA

        return MOASHA(spec.objectives, time_attr="training_iteration", max_t=spec.max_epochs,
                      grace_period=spec.grace_period, reduction_factor=spec.reduction_factor)
    return ASHAScheduler(time_attr="training_iteration", metric=spec.scheduler_metric, mode=spec.scheduler_mode,
                         max_t=spec.max_epochs, grace_period=spec.grace_period,
                         reduction_factor=spec.reduction_factor)


def check_can_start(spec: SweepSpec, resume: bool) -> None:
    """Before anything starts: a new sweep must not overwrite one, a resume needs one."""
    path = experiment_path(spec)
    if "://" in path:
        return
    exists = (Path(path) / "tuner.pkl").exists()
    if exists and not resume:
        raise SweepError(f"{path} already holds sweep {spec.name!r}; finish it with --resume, or set another "
                         f"name: in the search-space file")
    if resume and not exists:
        raise SweepError(f"--resume: no sweep {spec.name!r} to resume at {path}")


def check_local_resources(spec: SweepSpec) -> None:
    """A local Ray gets this machine's cores and GPUs, no more: refuse a trial that asks for more."""
    missing = [f"{k.upper()}: a trial needs {want:g}, this machine has {has}"
               for k, want, has in beyond_this_machine(spec)]
    if missing:
        raise SweepError(f"{spec.path}: resources: no trial could ever be placed (" + "; ".join(missing) + "). "
                         "Lower resources in the search-space file or attach to a cluster with more (--address).")


def check_data(spec: SweepSpec) -> None:
    """The data sets of stage 1 and of the trials are where their configs say (or will be
    downloaded): a missing one is a :class:`~stas_sweep.data.DatasetNotFoundError`, one line."""
    seen = set()
    for cfg in (spec.stage1, spec.base):
        key = (cfg.data.name, cfg.data.root, cfg.data.download, cfg.model.timesteps)
        if key not in seen:
            seen.add(key)
            cfg.check_data()


def preflight(spec: SweepSpec, *, address: str | None = None, resume: bool = False, data: bool = True,
              tracking_uri: str | None = None, log=print) -> None:
    """Every check that can fail on the user's input, before Ray starts and before anything is
    written to the tracking store or the storage folder: the data sets and resources (on this
    machine; on a cluster, ``address`` or a Ray job's ``RAY_ADDRESS``, they live on its nodes),
    a local storage folder and sqlite store that can be written, room for the checkpoints, and
    on ``resume`` the plan the sweep started with."""
    check_can_start(spec, resume)
    if not (address or os.environ.get("RAY_ADDRESS")):
        check_local_resources(spec)
        if data:
            check_data(spec)
    folder = Path(experiment_path(spec))
    if storage.local(str(folder)):  # each raises StorageError, a user error
        storage.check_writable(Path(spec.storage_dir()), "storage_path")
        db = sqlite_path(tracking_uri or "")
        if db is not None:
            storage.check_writable(db.parent, "the MLflow store in")
        storage.check_room(folder, spec.checkpoint_bytes())
        if resume:
            storage.check_plan_unchanged(folder, spec, log=log)


@contextmanager
def sweep_folder(spec: SweepSpec, resume: bool, log=print):
    """Hold the sweep's driver lock (one driver per sweep) and record its plan while it runs."""
    folder = Path(experiment_path(spec))
    if not storage.local(str(folder)):
        yield
        return
    with storage.DriverLock(folder, log):
        saved = not resume or not (folder / storage.SPEC_FILE).exists()
        try:
            if saved:
                storage.save_plan(folder, spec)
            yield
        finally:
            if saved and not (folder / "tuner.pkl").exists():  # a start that never reached Tune leaves nothing
                (folder / storage.SPEC_FILE).unlink(missing_ok=True)


def run_sweep(spec: SweepSpec, *, address: str | None = None, resume: bool = False, callbacks: list = (),
              log=print, verbose: int = 1, trainable=None) -> SweepResult:
    """Run (or resume) the sweep described by ``spec``; returns every trial, point and the front.

    ``trainable``: a function ``fn(config, *, epochs, epsilons)`` run instead of the STAS trainer,
    with no stage 1 (the synthetic curves of :mod:`.synthetic`, for tests and benchmarks)."""
    preflight(spec, address=address, resume=resume, data=trainable is None, log=log)
    with sweep_folder(spec, resume, log):
        return _run_sweep(spec, address, resume, callbacks, log, verbose, trainable)


def _run_sweep(spec: SweepSpec, address, resume: bool, callbacks, log, verbose: int, trainable) -> SweepResult:
    from ray import tune

    path = experiment_path(spec)
    init_ray(address, spec)
    check_resources(spec, strict=not (address or os.environ.get("RAY_ADDRESS")), log=log)
    check_storage(spec, log=log)
    if resume and not tune.Tuner.can_restore(path):
        raise SweepError(f"--resume: no sweep to resume at {path}")

    if trainable is None:
        fn = tune.with_parameters(train_trial, base=spec.base, epochs=spec.max_epochs, epsilons=spec.epsilons,
                                  grids=spec.grids, stage1_weights=stage1_weights(spec, log=log),
                                  group=worker_group(spec), storage_path=spec.storage_dir(),
                                  checkpoint_period_s=spec.checkpoint_period_s)
    else:  # another trainable (tests, benchmarks): the checkpoint period when it takes one
        period = {"checkpoint_period_s": spec.checkpoint_period_s} if takes(trainable, "checkpoint_period_s") else {}
        fn = tune.with_parameters(trainable, epochs=spec.max_epochs, epsilons=spec.epsilons, **period)
    trainable = tune.with_resources(fn, trial_function_resources(spec))
    if resume:
        set_aside_broken_saves(path, log=log)
        restore_lost_checkpoints(path, log=log)
        # the scheduler and its MOASHAStateCallback come back from tuner.pkl; Tune then puts the
        # callbacks' state (MOASHA's rung records) of the last experiment checkpoint back
        tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=False)
    else:
        scheduler = build_scheduler(spec)
        callbacks = list(callbacks)
        if spec.scheduler == "moasha":
            from .moasha import MOASHAStateCallback

            callbacks.append(MOASHAStateCallback(scheduler))
        tuner = tune.Tuner(
            trainable,
            param_space=spec.param_space(),
            tune_config=tune.TuneConfig(search_alg=build_searcher(spec), scheduler=scheduler,
                                        num_samples=spec.num_samples,
                                        max_concurrent_trials=spec.max_concurrent_trials,
                                        # every trial asks the same resources: a finished trial's
                                        # worker (torch imported, CUDA up) runs the next one
                                        reuse_actors=True),
            run_config=tune.RunConfig(
                name=spec.name, storage_path=spec.storage_dir(), callbacks=callbacks, verbose=verbose,
                # num_to_keep=1: Tune then saves the experiment state after every trial checkpoint,
                # so a SIGKILLed driver resumes with no checkpointed epoch to run again; a trial
                # checkpoints every checkpoint_period_s (checkpoints.CheckpointClock)
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                failure_config=tune.FailureConfig(max_failures=spec.retries),
            ),
        )
    # Ray's trial table shows the first four metrics of a report besides its own columns: the
    # objectives come first in every report (front.REPORT_KEYS), so the table shows them
    grid = tuner.fit()
    if len(grid) < spec.num_samples or grid.num_terminated + grid.num_errors < len(grid):
        # Tune catches SIGINT itself, saves the experiment and returns early
        raise SweepInterrupted(f"{grid.num_terminated + grid.num_errors} of {plural(spec.num_samples, 'trial')} ended")
    result = summarise(grid, spec, path)
    faults = [f for t in result.trials if t["error"] and (f := fault_of(t["error"], path))]
    if faults:  # trials that died of the machine's fault, not of their configuration
        raise SweepFault(f"{faults[0]} ({plural(len(faults), 'trial')} stopped by it)")
    return result


def takes(fn, name: str) -> bool:
    """Whether ``fn`` has a parameter ``name`` (or takes any keyword)."""
    params = inspect.signature(fn).parameters.values()
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def set_aside_broken_saves(path: str, log=print) -> list[str]:
    """Before a resume: Tune restores the newest of each of its state files (experiment state,
    searcher, callbacks, each saved once per session) and gives up on the whole sweep when that
    one is cut short, as a driver killed (SIGKILL, power loss) while writing it leaves it. Such a
    file is renamed ``*.broken`` so that Tune takes the previous save; returns the renamed files."""
    import glob

    import ray.cloudpickle as cloudpickle

    if "://" in path:
        return []
    moved = []
    # (search_gen_state-*.json holds a pickle, whatever its name says)
    # Each resume also keeps a copy (.bak) of the newest whole save of each kind: Tune's upload to
    # the storage rewrites older sessions' files too, so one kill can cut every save of a kind, and
    # the copy is then put back.
    def readable(name: str, load) -> bool:
        try:
            with open(name, "rb") as f:
                load(f)
            return True
        except Exception:  # noqa: BLE001 - truncated or half-written: any reader error
            return False

    for pattern, load in (("experiment_state-*.json", json.load), ("search_gen_state-*.json", cloudpickle.load),
                          ("searcher-state-*.pkl", cloudpickle.load), ("callback-states-*.pkl", cloudpickle.load)):
        saves = sorted(glob.glob(os.path.join(path, pattern)), reverse=True)
        for newest in saves:
            if readable(newest, load):
                shutil.copyfile(newest, newest + ".bak")
                break  # the newest readable save: Tune takes this one
            os.replace(newest, newest + ".broken")
            moved.append(newest)
            log(f"warning: {newest} was cut short (the driver was killed while saving it); resuming from "
                f"the save before it")
        else:
            copies = [c for c in sorted(glob.glob(os.path.join(path, pattern + ".bak")), reverse=True)
                      if readable(c, load)]
            if saves and copies:
                shutil.copyfile(copies[0], copies[0].removesuffix(".bak"))
                log(f"warning: every {pattern} save was cut short; resuming from the copy kept by the previous "
                    f"resume ({os.path.basename(copies[0])})")
    # tuner.pkl (the Tuner's own settings) is one file, rewritten by every session: keep the last
    # whole one beside it and put it back when a kill cut the file short. A whole pickle ends with
    # its STOP opcode; checking that runs none of the pickle's code.
    tuner, backup = os.path.join(path, "tuner.pkl"), os.path.join(path, "tuner.pkl.bak")
    if os.path.exists(tuner):
        with open(tuner, "rb") as f:
            whole = os.path.getsize(tuner) > 0 and f.seek(-1, os.SEEK_END) >= 0 and f.read(1) == b"."
        if whole:
            shutil.copyfile(tuner, backup)
        elif os.path.exists(backup):
            os.replace(tuner, tuner + ".broken")
            shutil.copyfile(backup, tuner)
            moved.append(tuner)
            log(f"warning: {tuner} was cut short (the driver was killed while saving it); resuming with the "
                f"copy kept by the previous resume")
    return moved


def run_tracked(spec: SweepSpec, tracking_uri: str, plan: str, *, address: str | None = None,
                resume: bool = False, log=print, trainable=None) -> SweepResult:
    """The sweep as ``stas-sweep run`` makes it: its MLflow parent run (created, or reopened on
    ``resume``), the Tune callback that logs trials and the front, and the run's end state
    (FINISHED, KILLED on Ctrl-C, FAILED otherwise). Raises :class:`SweepError` for a sweep that
    cannot start, :class:`SweepInterrupted` when stopped, :class:`SweepFault` on a disk or
    permission fault. ``trainable`` as :func:`run_sweep`'s."""
    preflight(spec, address=address, resume=resume, tracking_uri=tracking_uri, log=log)  # nothing is created when this fails
    with sweep_folder(spec, resume, log):  # a second driver of this sweep is refused here, before MLflow
        tracker = SweepTracker(tracking_uri, spec.experiment, spec.name, experiment_path(spec), spec.objectives,
                               scheduler=spec.scheduler, energy_convention=str(METER_VERSION), knob_of=knob_of)
        tracker.start_parent(spec, plan)
        paper = paper_rows(spec.base.data.name, transformers_only=True)  # markers on the front's plots
        try:
            result = run_sweep(spec, address=address, resume=resume, log=log, trainable=trainable,
                               callbacks=[TrackerCallback(tracker, spec.objectives, spec.reference, paper=paper,
                                                          world_size=spec.resources.get("workers", 1))])
        except KeyboardInterrupt:
            _close(tracker, "KILLED", None, log)
            raise
        except BaseException as e:
            fault = str(e) if isinstance(e, SweepFault) else fault_of(e, experiment_path(spec)) or full_storage(spec)
            _close(tracker, "FAILED", fault or last_line(e), log)
            if fault:
                raise SweepFault(fault) from e
            raise
        log_stage1_model(tracker, spec, log=log)
        history = dict(tracker.hypervolume_history())
        history[len(result.trials)] = result.hypervolume
        with tempfile.TemporaryDirectory() as d:
            tracker.finish(result, files=draw_front(
                result.points, result.front, spec.objectives, Path(d), sweep=spec.name, history=history, paper=paper,
                html=True, energy_version=tracker.energy_convention))
        return result


def _close(tracker, status: str, reason: str | None, log) -> None:
    """End the sweep's runs; a store that fails too (on the same full disk) is said, not raised
    over the fault that stopped the sweep."""
    try:
        tracker.fail(status, reason)
    except Exception as e:  # noqa: BLE001 - the original error matters more
        log(f"warning: the MLflow runs could not be closed as {status} ({last_line(e)})")


def log_stage1_model(tracker, spec: SweepSpec, log=print) -> str | None:
    """The shared stage-1 model as an MLflow model of the sweep's parent run, once per sweep
    (tag ``stage1_model_uri``), from its checkpoint in storage. Stage 1 kept in memory only
    (remote storage) is not logged. A tracking failure is a warning; returns the URI or None."""
    from ..train.mlflow_model import log_checkpoint_model

    if "://" in spec.storage_path:
        return None
    path = Path(spec.storage_dir()) / f"stage1-{spec.stage1_key()}" / "checkpoints" / "last.pt"
    try:
        uri = tracker.stage1_model()
        if uri or not path.is_file():
            return uri
        uri = log_checkpoint_model(tracker.uri, tracker.parent_id, path, name="stage1")
        tracker.set_stage1_model(uri)
        return uri
    except Exception as e:  # noqa: BLE001 - a tracking failure must not fail a finished sweep
        log(f"warning: the stage-1 model was not logged to MLflow ({type(e).__name__}: "
            f"{(str(e).splitlines() or [''])[0][:300]})")
        return None


def summarise(grid, spec: SweepSpec, path: str) -> SweepResult:
    result = SweepResult(spec.name, path)
    for r in grid:
        m = r.metrics or {}
        trial_id = m.get("trial_id") or Path(r.path).name
        info = {
            "trial_id": trial_id, "params": dict(r.config or {}), "epochs": m.get("training_iteration", 0),
            "full_budget": bool(m.get("full_budget")), "error": last_line(r.error) if r.error else None,
            **{k: m.get(k) for k in OBJECTIVE_METRICS},
        }
        info["status"] = "failed" if r.error else ("finished" if info["full_budget"] else f"stopped_by_{spec.scheduler}")
        result.trials.append(info)
        if info["full_budget"] and m.get("epsilon_table"):
            result.points += trial_points(trial_id, info["params"], json.loads(m["epsilon_table"]))
    _, result.front, result.hypervolume = front_of(result.points, spec.objectives, spec.reference)
    return result
