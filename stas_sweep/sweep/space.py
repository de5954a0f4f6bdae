"""Search-space files: parsed strictly, before Ray or anything else starts.

A file (YAML, read by :func:`stas_sweep.train.config.load_yaml`: safe loader, duplicate keys rejected) looks like::

    name: digits                      # sweep id (default: the file name)
    base: ../configs/digits_stage2.yaml   # training config: a path (relative to this file) or a mapping
    stage1: {epochs: 6}               # overrides for the shared stage-1 run (halting off)
    space:                            # dotted training-config keys -> distributions
      halting.alpha:   {uniform: [2.0, 8.0]}
      halting.beta:    {uniform: [-15.0, -3.0]}
      halting.delta_p: {loguniform: [1.0e-4, 1.0e-1]}
      halting.epsilon: {fixed: 0.01}
      optim.lr:        {choice: [5.0e-4, 1.0e-3]}
      model.timesteps: {int: [2, 4]}   # inclusive bounds
    eval: {epsilons: [0.0, 0.1, 0.2, 0.4]}   # baselines: also keep_ratios: [...], exit_thresholds: [...]
    objectives: {accuracy: max, energy_mj: min}   # from accuracy, energy_mj, energy_strict_mj, token_ratio
    reference: {accuracy: 0.0, energy_mj: 1.0}    # hypervolume reference point
    search: {sampler: tpe, seed: 0, num_samples: 8, points_to_evaluate: [{halting.alpha: 5.0}]}
    scheduler: {type: moasha, grace_period: 1, reduction_factor: 2, max_epochs: 4}
    # moasha (default): early stopping on every objective (Pareto rank, see sweep/moasha.py), no metric/mode;
    # asha: on one metric (scheduler.metric, default the first objective; scheduler.mode); fifo: none
    resources: {cpu: 1, gpu: 0}
    max_concurrent_trials: 2
    retries: 0
    storage_path: ./ray_results       # relative to the working directory
    mlflow: {tracking_uri: null, experiment: stas-digits}

Every error names the file, the key and what would be accepted (:class:`SpaceError`).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..train.config import ConfigError, TrainConfig, config_from_dict, load_yaml, merge, set_dotted
from .front import OBJECTIVE_METRICS

DISTRIBUTIONS = ("uniform", "loguniform", "int", "choice", "fixed")
SAMPLERS = ("tpe", "nsga2", "random")
SCHEDULERS = ("moasha", "asha", "fifo")
TOP_KEYS = ("name", "base", "stage1", "space", "eval", "objectives", "reference", "search", "scheduler",
            "resources", "max_concurrent_trials", "retries", "storage_path", "mlflow")


class SpaceError(ValueError):
    """A search-space file that cannot be used; the message names the file and the key."""


@dataclass
class Param:
    key: str            # dotted training-config key
    kind: str           # uniform | loguniform | int | choice | fixed
    args: Any           # [low, high] | list of choices | the fixed value

    def tune_domain(self):
        from ray import tune

        if self.kind == "uniform":
            return tune.uniform(*self.args)
        if self.kind == "loguniform":
            return tune.loguniform(*self.args)
        if self.kind == "int":
            return tune.randint(self.args[0], self.args[1] + 1)  # inclusive upper bound
        if self.kind == "choice":
            return tune.choice(list(self.args))
        return self.args

    def describe(self) -> str:
        if self.kind == "fixed":
            return f"= {self.args!r}"
        if self.kind == "choice":
            return f"choice {list(self.args)}"
        return f"{self.kind} [{self.args[0]}, {self.args[1]}]"


@dataclass
class SweepSpec:
    path: Path
    name: str
    base: dict                    # raw training config (validated)
    stage1_overrides: dict
    params: list[Param]
    epsilons: list[float]
    objectives: list[tuple[str, str]]     # (metric, max|min)
    reference: dict[str, float]
    sampler: str = "tpe"
    seed: int = 0
    num_samples: int = 8
    points_to_evaluate: list[dict] = field(default_factory=list)
    scheduler: str = "moasha"
    scheduler_metric: str = "accuracy"
    scheduler_mode: str = "max"
    grace_period: int = 1
    reduction_factor: int = 2
    max_epochs: int = 1
    resources: dict = field(default_factory=lambda: {"cpu": 1, "gpu": 0})
    max_concurrent_trials: int | None = None
    retries: int = 0
    storage_path: str = "ray_results"
    tracking_uri: str | None = None
    experiment: str = "stas-sweep"
    raw: dict = field(default_factory=dict)
    # knob grids of the baselines (eval.keep_ratios, eval.exit_thresholds); stas uses epsilons
    grids: dict[str, list[float]] = field(default_factory=dict)

    # -- derived ------------------------------------------------------------------------------
    def stage1_config(self) -> dict:
        """The shared stage-1 training config: the base with halting off, no init_from."""
        cfg = merge(copy.deepcopy(self.base), {"halting": None, "init_from": None})
        return merge(cfg, self.stage1_overrides)

    def stage1_key(self) -> str:
        """Stage 1 is keyed by its config: the same config reuses the same checkpoint."""
        cfg = self.stage1_config()
        cfg.pop("tracking", None)
        text = json.dumps(cfg, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def storage_dir(self) -> str:
        p = self.storage_path
        return p if "://" in p else str(Path(p).resolve())

    def param_space(self) -> dict:
        return {p.key: p.tune_domain() for p in self.params}


def _err(path: Path, msg: str) -> SpaceError:
    return SpaceError(f"{path}: {msg}")


def _mapping(path, raw, key) -> dict:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise _err(path, f"{key} must be a mapping, got {raw!r}")
    return raw


def _known(path, raw: dict, key: str, allowed) -> None:
    for k in raw:
        if k not in allowed:
            raise _err(path, f"unknown key {key + '.' if key else ''}{k}; accepted keys{' in ' + key if key else ''}: "
                             f"{', '.join(allowed)}")


def _number(path, value, key, *, integer=False, low=None, high=None, low_open=False) -> float:
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if not ok or isinstance(value, bool) or (not integer and not math.isfinite(value)):
        raise _err(path, f"{key} must be {'an integer' if integer else 'a number'}, got {value!r}")
    if low is not None and (value <= low if low_open else value < low):
        raise _err(path, f"{key} must be {'>' if low_open else '>='} {low}, got {value!r}")
    if high is not None and value > high:
        raise _err(path, f"{key} must be <= {high}, got {value!r}")
    return value


def _param(path: Path, key: str, raw: Any, base: dict) -> Param:
    where = f"space.{key}"
    if not isinstance(raw, dict) or len(raw) != 1:
        raise _err(path, f"{where} must be one of {{{', '.join(k + ': ...' for k in DISTRIBUTIONS)}}}, got {raw!r}")
    (kind, args), = raw.items()
    if kind not in DISTRIBUTIONS:
        raise _err(path, f"{where}: unknown distribution {kind!r}; accepted: {', '.join(DISTRIBUTIONS)}")
    if kind in ("uniform", "loguniform", "int"):
        if not isinstance(args, list) or len(args) != 2:
            raise _err(path, f"{where}.{kind} must be [low, high], got {args!r}")
        lo = _number(path, args[0], f"{where}.{kind}[0]", integer=kind == "int")
        hi = _number(path, args[1], f"{where}.{kind}[1]", integer=kind == "int")
        if not lo < hi:
            raise _err(path, f"{where}.{kind}: low must be < high, got [{lo}, {hi}]")
        if kind == "loguniform" and lo <= 0:
            raise _err(path, f"{where}.loguniform: bounds must be > 0, got [{lo}, {hi}]")
        samples = [lo, hi]
    elif kind == "choice":
        if not isinstance(args, list) or not args:
            raise _err(path, f"{where}.choice must be a non-empty list, got {args!r}")
        samples = list(args)
    else:
        samples = [args]
    # every value the distribution can produce must make a valid training config
    for v in samples:
        try:
            config_from_dict(set_dotted(base, key, v), "<trial>")
        except ConfigError as e:
            msg = str(e).removeprefix("<trial>: ")
            raise _err(path, f"{where}: value {v!r} does not make a valid training config ({msg})") from None
    return Param(key, kind, args)


EVAL_GRIDS = {"keep_ratios": "token_drop", "exit_thresholds": "timestep_exit"}  # eval key -> method


def _grid(path: Path, ev: dict, key: str, method: str) -> list[float]:
    """``eval.<key>``: a non-empty list of distinct valid knob values of ``method``."""
    from ..models.halting import check_knob

    values = ev[key]
    if not isinstance(values, list) or not values or len(set(map(str, values))) != len(values):
        raise _err(path, f"eval.{key} must be a non-empty list of distinct numbers, got {values!r}")
    for i, v in enumerate(values):
        _number(path, v, f"eval.{key}[{i}]")
        try:
            check_knob(method, v)
        except ValueError as e:
            raise _err(path, f"eval.{key}[{i}]: {e}") from None
    return [float(v) for v in values]


def load_spec(path: str | Path) -> SweepSpec:
    """Read and validate a search-space file. Raises :class:`SpaceError`."""
    path = Path(path)
    if not path.is_file():
        raise SpaceError(f"{path}: no such search-space file")
    try:
        raw = load_yaml(path)
    except ConfigError as e:
        raise SpaceError(str(e)) from None
    if not isinstance(raw, dict):
        raise _err(path, "the top level must be a mapping of keys")
    _known(path, raw, "", TOP_KEYS)
    for required in ("base", "space", "objectives"):
        if required not in raw:
            raise _err(path, f"missing key {required!r}")

    # base training config ----------------------------------------------------------------
    base_raw = raw["base"]
    if isinstance(base_raw, str):
        base_path = (path.parent / base_raw).resolve()
        if not base_path.is_file():
            raise _err(path, f"base: no such training config {base_path}")
        try:
            base = load_yaml(base_path) or {}
        except ConfigError as e:
            raise SpaceError(f"{path}: base: {e}") from None
        base_where = str(base_path)
    elif isinstance(base_raw, dict):
        base, base_where = copy.deepcopy(base_raw), f"{path} (base)"
    else:
        raise _err(path, f"base must be a path to a training config or a mapping, got {base_raw!r}")
    if not isinstance(base, dict):
        raise _err(path, f"base: {base_where} is not a mapping")
    if base.get("halting") is None:
        base["halting"] = {}  # the trials are stage 2: halting on (its defaults unless searched)
    try:
        base_cfg: TrainConfig = config_from_dict(base, base_where)
    except ConfigError as e:
        raise SpaceError(f"{path}: base: {e}") from None
    base["init_from"] = None  # trials start from the sweep's shared stage 1, not the base's init_from
    if base_where != f"{path} (base)" and base.get("data", {}).get("root"):
        root = Path(base["data"]["root"])
        if not root.is_absolute():  # trials run in their own folders: make data paths absolute
            base["data"]["root"] = str(root.resolve())

    stage1 = _mapping(path, raw.get("stage1"), "stage1")
    try:
        config_from_dict(merge(merge(copy.deepcopy(base), {"halting": None}), stage1), f"{path} (stage1)")
    except ConfigError as e:
        raise SpaceError(f"{path}: stage1: {str(e).split(': ', 1)[1]}") from None

    # space ---------------------------------------------------------------------------------
    space = _mapping(path, raw["space"], "space")
    if not space:
        raise _err(path, "space is empty: give at least one parameter, e.g. halting.delta_p: {loguniform: [1e-4, 1e-1]}")
    params = [_param(path, str(k), v, base) for k, v in space.items()]

    # evaluation, objectives, reference ------------------------------------------------------
    ev = _mapping(path, raw.get("eval"), "eval")
    _known(path, ev, "eval", ("epsilons", *EVAL_GRIDS))
    epsilons = ev.get("epsilons", [base_cfg.halting.epsilon])
    if not isinstance(epsilons, list) or not epsilons:
        raise _err(path, f"eval.epsilons must be a non-empty list of numbers in [0, 1), got {epsilons!r}")
    for i, e in enumerate(epsilons):
        _number(path, e, f"eval.epsilons[{i}]", low=0.0)
        if not e < 1.0:
            raise _err(path, f"eval.epsilons[{i}] must lie in [0, 1), got {e!r}")
    if len(set(epsilons)) != len(epsilons):
        raise _err(path, f"eval.epsilons has repeated values: {epsilons}")
    grids = {method: _grid(path, ev, key, method) for key, method in EVAL_GRIDS.items() if key in ev}

    objectives_raw = raw["objectives"]
    if not isinstance(objectives_raw, dict) or not objectives_raw:
        raise _err(path, "objectives must be a mapping like {accuracy: max, energy_mj: min}")
    objectives = []
    for metric, mode in objectives_raw.items():
        if metric not in OBJECTIVE_METRICS:
            raise _err(path, f"objectives: unknown metric {metric!r}; accepted: {', '.join(OBJECTIVE_METRICS)}")
        if mode not in ("max", "min"):
            raise _err(path, f"objectives.{metric} must be max or min, got {mode!r}")
        objectives.append((metric, mode))
    if len(objectives) < 2:
        raise _err(path, "objectives needs at least two metrics for a front, e.g. {accuracy: max, energy_mj: min}")

    reference = _mapping(path, raw.get("reference"), "reference")
    defaults = {"accuracy": 0.0, "token_ratio": 1.0}
    ref = {}
    for metric, _ in objectives:
        if metric in reference:
            ref[metric] = float(_number(path, reference[metric], f"reference.{metric}"))
        elif metric in defaults:
            ref[metric] = defaults[metric]
        else:
            raise _err(path, f"reference.{metric} is missing: the hypervolume needs a reference value for every "
                             f"objective (a value worse than any point, e.g. an energy above the static model's)")
    for k in reference:
        if k not in dict(objectives):
            raise _err(path, f"reference.{k}: not an objective; objectives are {', '.join(m for m, _ in objectives)}")

    # search ----------------------------------------------------------------------------------
    search = _mapping(path, raw.get("search"), "search")
    _known(path, search, "search", ("sampler", "seed", "num_samples", "points_to_evaluate"))
    sampler = search.get("sampler", "tpe")
    if sampler not in SAMPLERS:
        raise _err(path, f"search.sampler is {sampler!r}; accepted: {', '.join(SAMPLERS)}")
    seed = int(_number(path, search.get("seed", 0), "search.seed", integer=True, low=0))
    num_samples = int(_number(path, search.get("num_samples", 8), "search.num_samples", integer=True, low=1))
    points = search.get("points_to_evaluate") or []
    if not isinstance(points, list):
        raise _err(path, "search.points_to_evaluate must be a list of {key: value} mappings")
    keys = {p.key for p in params}
    for i, pt in enumerate(points):
        if not isinstance(pt, dict):
            raise _err(path, f"search.points_to_evaluate[{i}] must be a mapping, got {pt!r}")
        for k, v in pt.items():
            if k not in keys:
                raise _err(path, f"search.points_to_evaluate[{i}]: {k!r} is not in space; searched keys: "
                                 f"{', '.join(sorted(keys))}")
            try:
                config_from_dict(set_dotted(base, k, v), "<point>")
            except ConfigError as e:
                raise _err(path, f"search.points_to_evaluate[{i}].{k}: {str(e).removeprefix('<point>: ')}") from None

    # scheduler -------------------------------------------------------------------------------
    sched = _mapping(path, raw.get("scheduler"), "scheduler")
    _known(path, sched, "scheduler", ("type", "metric", "mode", "grace_period", "reduction_factor", "max_epochs"))
    stype = sched.get("type", "moasha")
    if stype not in SCHEDULERS:
        raise _err(path, f"scheduler.type is {stype!r}; accepted: {', '.join(SCHEDULERS)}")
    max_epochs = int(_number(path, sched.get("max_epochs", base_cfg.epochs), "scheduler.max_epochs", integer=True, low=1))
    if stype == "moasha":
        for key in ("metric", "mode"):
            if key in sched:
                raise _err(path, f"scheduler.{key} is not accepted for scheduler.type moasha: it ranks trials on "
                                 f"every objective ({', '.join(m for m, _ in objectives)}); drop the key, or use "
                                 f"type: asha to stop on one metric")
    smetric = sched.get("metric", objectives[0][0])
    if smetric not in OBJECTIVE_METRICS:
        raise _err(path, f"scheduler.metric is {smetric!r}; accepted: {', '.join(OBJECTIVE_METRICS)}")
    smode = sched.get("mode", dict(objectives).get(smetric, "max"))
    if smode not in ("max", "min"):
        raise _err(path, f"scheduler.mode must be max or min, got {smode!r}")
    grace = int(_number(path, sched.get("grace_period", 1), "scheduler.grace_period", integer=True, low=1))
    if grace > max_epochs:
        raise _err(path, f"scheduler.grace_period ({grace}) must be <= scheduler.max_epochs ({max_epochs})")
    rf = int(_number(path, sched.get("reduction_factor", 2), "scheduler.reduction_factor", integer=True, low=2))

    # resources, storage, tracking ----------------------------------------------------------------
    res = _mapping(path, raw.get("resources"), "resources")
    _known(path, res, "resources", ("cpu", "gpu"))
    cpu = _number(path, res.get("cpu", 1), "resources.cpu", low=0, low_open=True)
    gpu = _number(path, res.get("gpu", 0), "resources.gpu", low=0)
    if gpu > 1 and gpu != int(gpu):
        raise _err(path, f"resources.gpu: more than one GPU must be a whole number, got {gpu}")
    mct = raw.get("max_concurrent_trials")
    if mct is not None:
        mct = int(_number(path, mct, "max_concurrent_trials", integer=True, low=1))
    retries = int(_number(path, raw.get("retries", 0), "retries", integer=True, low=0))
    storage = raw.get("storage_path", "ray_results")
    if not isinstance(storage, str) or not storage:
        raise _err(path, f"storage_path must be a path or a URI (s3://, gs://), got {storage!r}")
    ml = _mapping(path, raw.get("mlflow"), "mlflow")
    _known(path, ml, "mlflow", ("tracking_uri", "experiment"))
    name = raw.get("name", path.stem)
    if not isinstance(name, str) or not name or "/" in name:
        raise _err(path, f"name must be a non-empty string without '/', got {name!r}")

    return SweepSpec(
        path=path.resolve(), name=name, base=base, stage1_overrides=stage1, params=params, epsilons=list(epsilons),
        objectives=objectives, reference=ref, sampler=sampler, seed=seed, num_samples=num_samples,
        points_to_evaluate=points, scheduler=stype, scheduler_metric=smetric, scheduler_mode=smode,
        grace_period=grace, reduction_factor=rf, max_epochs=max_epochs,
        resources={"cpu": cpu, "gpu": gpu}, max_concurrent_trials=mct, retries=retries, storage_path=storage,
        tracking_uri=ml.get("tracking_uri"), experiment=ml.get("experiment", f"stas-{name}"), raw=raw, grids=grids,
    )


def describe(spec: SweepSpec, tracking_uri: str) -> str:
    """The resolved plan, as ``--dry-run`` prints it."""
    lines = [
        f"sweep {spec.name!r} from {spec.path}",
        f"  model {spec.base['model']['name'] if 'model' in spec.base else '(default)'} on "
        f"{spec.base.get('data', {}).get('name', 'digits')}",
        f"  stage 1 (shared, once): {spec.stage1_config().get('epochs')} epochs, key {spec.stage1_key()}",
        f"  stage 2 per trial: {spec.max_epochs} epochs, evaluated at epsilons {spec.epsilons}"
        + "".join(f"; {m} at {g}" for m, g in spec.grids.items()),
        "  space:",
        *[f"    {p.key:<24} {p.describe()}" for p in spec.params],
        "  objectives: " + ", ".join(f"{m} ({d})" for m, d in spec.objectives)
        + f"; hypervolume reference {spec.reference}",
        f"  search: {spec.sampler} sampler, seed {spec.seed}, {spec.num_samples} trials"
        + (f", {len(spec.points_to_evaluate)} given points first" if spec.points_to_evaluate else ""),
        f"  scheduler: {spec.scheduler}"
        + (f" on {spec.scheduler_metric} ({spec.scheduler_mode}), grace {spec.grace_period}, "
           f"reduction {spec.reduction_factor}, max {spec.max_epochs} epochs" if spec.scheduler == "asha" else "")
        + (" on " + ", ".join(f"{m} ({d})" for m, d in spec.objectives) + " (Pareto rank, crowding distance), "
           f"grace {spec.grace_period}, reduction {spec.reduction_factor}, max {spec.max_epochs} epochs"
           if spec.scheduler == "moasha" else ""),
        f"  resources per trial: {spec.resources}; max concurrent trials: {spec.max_concurrent_trials or 'as resources allow'}; "
        f"retries: {spec.retries}",
        f"  results and checkpoints: {spec.storage_dir()}/{spec.name}",
        f"  MLflow: {tracking_uri}, experiment {spec.experiment!r}",
        f"  candidate front points: up to {spec.num_samples * len(spec.epsilons)} "
        f"({spec.num_samples} trials x {len(spec.epsilons)} epsilons)",
    ]
    return "\n".join(lines)
