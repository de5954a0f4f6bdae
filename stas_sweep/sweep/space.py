"""Search-space files: one typed schema, checked in full before Ray or anything else starts.

A file (YAML, read by :func:`stas_sweep.train.config.load_yaml`: safe loader, duplicate keys rejected) looks like::

    name: digits                      # sweep id (default: the file name); letters, digits, . _ -
    base: ../configs/digits_stage2.yaml   # training config: a path (relative to this file) or a mapping
    stage1: {epochs: 6}               # the shared stage-1 run (halting off): the base with these overrides,
                                      # or {config: ../configs/x_stage1.yaml, ...overrides} to start from its own config
    space:                            # dotted training-config keys -> distributions
      halting.alpha:   {uniform: [2.0, 8.0]}
      halting.beta:    {uniform: [-15.0, -3.0]}
      halting.delta_p: {loguniform: [1.0e-4, 1.0e-1]}
      halting.epsilon: {fixed: 0.01}
      optim.lr:        {choice: [5.0e-4, 1.0e-3]}
      model.timesteps: {int: [2, 4]}   # inclusive bounds
    eval: {epsilons: [0.0, 0.1, 0.2, 0.4]}   # baselines: also keep_ratios: [...], exit_thresholds: [...]
    objectives: {accuracy: max, energy_mj: min}   # from accuracy, energy_mj, energy_strict_mj, token_ratio, latency_ms
    reference: {accuracy: 0.0, energy_mj: 1.0}    # hypervolume reference point
    search:                           # a given point names every searched key that is not fixed
      sampler: tpe
      seed: 0
      num_samples: 8
      points_to_evaluate:
        - {halting.alpha: 5.0, halting.beta: -5.0, halting.delta_p: 0.001, optim.lr: 1.0e-3, model.timesteps: 4}
    scheduler: {type: moasha, grace_period: 1, reduction_factor: 2, max_epochs: 4}
    # moasha (default): early stopping on every objective (Pareto rank, see sweep/moasha.py), no metric/mode;
    # asha: on one metric (scheduler.metric, default the first objective; scheduler.mode); fifo: none
    resources: {cpu: 1, gpu: 0}       # per worker; workers: K trains each trial on K DDP workers (Ray Train)
    max_concurrent_trials: 2
    retries: 0
    checkpoint_period_s: 10           # a trial's epoch carries a Tune checkpoint when 10 s passed since
                                      # its last one, and its last epoch always; 0: every epoch
    storage_path: ./ray_results       # relative to the working directory, or s3:// gs://
    mlflow: {tracking_uri: null, experiment: stas-digits}

:class:`SpaceFile` declares every key, its type, its default and its allowed values; what
involves more than one key (the base config, the searched keys applied to it, the given
points, the reference point) is checked by :func:`load_spec` right after. Every error names
the file, the key and what would be accepted (:class:`SpaceError`).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, ValidationError, create_model, model_validator

from .. import methods, objectives as objective_records
from ..errors import short
from ..tables import plural
from ..train.config import (
    MAX_EPOCHS, MAX_SEED, ConfigError, ExperimentName, Positive, TrackingURI, TrainConfig, _Section,
    check_name, check_uri, config_from_dict, load_yaml, merge, pydantic_message, set_dotted,
)
from .front import OBJECTIVE_METRICS

DISTRIBUTIONS = ("uniform", "loguniform", "int", "choice", "fixed")
# Tune's own shortest period between saves of its experiment state (its "auto" period)
CHECKPOINT_PERIOD_S = 10.0
SAMPLERS = ("tpe", "nsga2", "random")
SCHEDULERS = ("moasha", "asha", "fifo")
MAX_TRIALS = 100_000
MAX_INT = 2**31 - 1  # Tune's randint and Optuna's IntDistribution work in 32 bits here
# keys a trial may not search: they would make the shared stage-1 weights unusable (the model's
# shape), are set by the sweep itself, or belong to the driver
NOT_SEARCHABLE = {
    "model.name": "it fixes the architecture, so the shared stage-1 weights would not fit",
    "model.num_classes": "it fixes the head's shape, so the shared stage-1 weights would not fit",
    "data.name": "the shared stage 1 is trained on one data set",
    "data.img_size": "it fixes the positional shape, so the shared stage-1 weights would not fit",
    "epochs": "every trial runs scheduler.max_epochs epochs; set that instead",
    "init_from": "every trial starts from the sweep's shared stage 1",
    "tracking": "the sweep's driver logs the trials (mlflow: section)",
    "halting": "search its keys (halting.alpha, ...), not the section",
}
SHAPE_KEYS = ("model.name", "model.num_classes", "data.name", "data.img_size")


class SpaceError(ConfigError):
    """A search-space file that cannot be used; the message names the file and the key."""


# -- the schema ------------------------------------------------------------------------------------
Bounds = Annotated[list[float], Field(min_length=2, max_length=2)]
Scalar = str | int | float | bool | None  # what Optuna's categorical distribution accepts


class Distribution(_Section):
    """Exactly one of: ``uniform``/``loguniform``: [low, high]; ``int``: [low, high] inclusive;
    ``choice``: a list of values; ``fixed``: one value."""

    uniform: Bounds | None = None
    loguniform: Bounds | None = None
    int_: Annotated[list[Annotated[int, Field(ge=-MAX_INT, le=MAX_INT)]], Field(min_length=2, max_length=2)] | None = \
        Field(None, alias="int")
    choice: Annotated[list[Scalar], Field(min_length=1, max_length=1000)] | None = None
    fixed: Any = None

    @model_validator(mode="after")
    def _one_kind(self):
        given = [k for k in self.model_fields_set]
        if len(given) != 1:
            raise ValueError(f"give exactly one of {', '.join(DISTRIBUTIONS)}, e.g. {{uniform: [2.0, 8.0]}}; "
                             f"got {len(given)}")
        if self.kind != "fixed" and self.args is None:
            raise ValueError(f"{self.kind}: give its values, e.g. {{uniform: [2.0, 8.0]}} or {{choice: [1, 2]}}")
        if self.kind in ("uniform", "loguniform", "int"):
            lo, hi = self.args
            if not lo < hi:
                raise ValueError(f"{self.kind}: low must be < high, got [{lo}, {hi}]")
            if not math.isfinite(hi - lo):
                raise ValueError(f"{self.kind}: the range [{lo}, {hi}] overflows; use bounds whose span is finite")
            if self.kind == "loguniform" and lo <= 0:
                raise ValueError(f"loguniform: bounds must be > 0, got [{lo}, {hi}]")
        return self

    @property
    def kind(self) -> str:
        (name,) = self.model_fields_set
        return "int" if name == "int_" else name

    @property
    def args(self) -> Any:
        return getattr(self, "int_" if self.kind == "int" else self.kind)

    def contains(self, value: Any) -> bool:
        """Whether ``value`` is one this distribution can produce (a given point must be)."""
        if self.kind == "fixed":
            return value == self.args
        if self.kind == "choice":
            return any(value == c and type(value) is type(c) for c in self.args)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.kind == "int" and not isinstance(value, int):
            return False
        return math.isfinite(value) and self.args[0] <= value <= self.args[1]


def _eval_section() -> type[_Section]:
    """``eval:``, one optional grid per method record (:mod:`stas_sweep.methods`): ``epsilons``
    (stas; default: halting.epsilon), ``keep_ratios`` (token_drop), ``exit_thresholds``
    (timestep_exit), each value in the knob's ``bounds``."""
    fields = {m.grid_key: (Annotated[list[Annotated[float, Field(**m.bounds)]], Field(min_length=1, max_length=100)]
                           | None, None) for m in methods.halting_methods() if m.grid_key}
    return create_model("EvalSection", __base__=_Section, **fields)


EvalSection = _eval_section()


class SearchSection(_Section):
    sampler: Literal["tpe", "nsga2", "random"] = "tpe"
    seed: Annotated[int, Field(ge=0, le=MAX_SEED)] = 0
    num_samples: Annotated[int, Field(ge=1, le=MAX_TRIALS)] = 8
    points_to_evaluate: Annotated[list[dict[str, Any]], Field(max_length=MAX_TRIALS)] = Field(default_factory=list)


class SchedulerSection(_Section):
    type: Literal["moasha", "asha", "fifo"] = "moasha"
    metric: str | None = None  # asha only; default: the first objective
    mode: Literal["max", "min"] | None = None  # asha only; default: that objective's direction
    grace_period: Positive = 1
    reduction_factor: Annotated[int, Field(ge=2, le=1000)] = 2
    max_epochs: Annotated[int, Field(ge=1, le=MAX_EPOCHS)] | None = None  # default: the base config's epochs


# what the function of a trial that drives a worker group (workers > 1) reserves for itself
DRIVER_CPU = 0.2


class ResourcesSection(_Section):
    workers: Annotated[int, Field(ge=1, le=1024)] = 1  # data-parallel workers per trial (and stage 1)
    cpu: Annotated[float, Field(gt=0, le=4096)] = 1
    gpu: Annotated[float, Field(ge=0, le=1024)] = 0

    @model_validator(mode="after")
    def _whole_gpus(self):
        if self.gpu > 1 and self.gpu != int(self.gpu):
            raise ValueError(f"gpu: more than one GPU must be a whole number, got {self.gpu}")
        if self.gpu > 1 and self.workers == 1:
            raise ValueError(f"gpu: {self.gpu:g} GPUs for one worker, which trains on one; for data-parallel "
                             f"training give workers: {int(self.gpu)}, gpu: 1 (resources are per worker)")
        return self


class MlflowSection(_Section):
    tracking_uri: TrackingURI = None
    experiment: ExperimentName = None  # default: stas-<name>


def _storage(value: str) -> str:
    return check_uri(value, schemes=("file", "s3", "gs"))


def _name(value: str | None) -> str | None:
    return None if value is None else check_name(value)


class SpaceFile(_Section):
    """The file as written, typed; :func:`load_spec` resolves it into a :class:`SweepSpec`."""

    name: Annotated[str | None, AfterValidator(_name)] = None  # default: the file's stem
    base: str | dict
    stage1: dict = Field(default_factory=dict)
    space: Annotated[dict[str, Distribution], Field(min_length=1, max_length=200)]
    eval: EvalSection = Field(default_factory=EvalSection)
    objectives: Annotated[dict[str, Literal["max", "min"]], Field(min_length=2, max_length=len(OBJECTIVE_METRICS))]
    reference: dict[str, float] = Field(default_factory=dict)
    search: SearchSection = Field(default_factory=SearchSection)
    scheduler: SchedulerSection = Field(default_factory=SchedulerSection)
    resources: ResourcesSection = Field(default_factory=ResourcesSection)
    max_concurrent_trials: Annotated[int, Field(ge=1, le=MAX_TRIALS)] | None = None
    retries: Annotated[int, Field(ge=0, le=100)] = 0
    checkpoint_period_s: Annotated[float, Field(ge=0, le=86400)] = CHECKPOINT_PERIOD_S
    storage_path: Annotated[str, AfterValidator(_storage)] = "ray_results"
    mlflow: MlflowSection = Field(default_factory=MlflowSection)


# -- the resolved sweep ---------------------------------------------------------------------------
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
    base: TrainConfig             # the trials' training config before the searched keys (stage 2)
    stage1: TrainConfig           # the shared stage-1 run (halting off)
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
    resources: dict = field(default_factory=lambda: {"workers": 1, "cpu": 1, "gpu": 0})  # cpu, gpu: per worker
    max_concurrent_trials: int | None = None
    retries: int = 0
    checkpoint_period_s: float = CHECKPOINT_PERIOD_S   # see checkpoints.CheckpointClock
    storage_path: str = "ray_results"
    tracking_uri: str | None = None
    experiment: str = "stas-sweep"
    raw: dict = field(default_factory=dict)   # the file as read (``submit`` stages it for the cluster)
    # knob grids of the baselines (eval.keep_ratios, eval.exit_thresholds); stas uses epsilons
    grids: dict[str, list[float]] = field(default_factory=dict)

    # -- derived ------------------------------------------------------------------------------
    def stage1_key(self) -> str:
        """Stage 1 is keyed by its resolved config: the same config reuses the same checkpoint."""
        cfg = self.stage1.to_dict()
        cfg.pop("tracking", None)
        text = json.dumps(cfg, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def trial_resources(self) -> dict:
        """``{"cpu", "gpu"}`` one trial holds in all: its workers', and with several workers the
        fraction of a CPU its own function (the worker group's driver) reserves."""
        k = self.resources.get("workers", 1)
        return {"cpu": k * self.resources["cpu"] + (DRIVER_CPU if k > 1 else 0.0), "gpu": k * self.resources["gpu"]}

    def storage_dir(self) -> str:
        p = self.storage_path
        return p if "://" in p else str(Path(p).resolve())

    def param_space(self) -> dict:
        return {p.key: p.tune_domain() for p in self.params}

    def searched(self) -> list[Param]:
        """The keys with something to search (not ``fixed``)."""
        return [p for p in self.params if p.kind != "fixed"]

    def checkpoint_bytes(self) -> int:
        """About how much the sweep's checkpoints take at the end: Tune keeps each trial's last
        checkpoint (weights and optimiser state, about 12 bytes a parameter, plus a MiB of the
        rest) and the shared stage 1 keeps its last one. Counted on torch's meta device."""
        return (12 * self.base.parameter_count() + (1 << 20)) * (self.num_samples + 1)


def trial_config(base: TrainConfig, sampled: dict, epochs: int, where: str = "<trial>") -> TrainConfig:
    """The training config of one trial: ``base`` with the sampled dotted keys set
    (``halting.alpha`` ...), ``epochs`` epochs, no tracking of its own, no ``init_from``."""
    cfg = base.to_dict()
    for key, value in sampled.items():
        cfg = set_dotted(cfg, key, value)
    cfg = merge(cfg, {"epochs": epochs, "init_from": None, "tracking": {"enabled": False}})
    return config_from_dict(cfg, where)


def _err(path: Path, msg: str) -> SpaceError:
    return SpaceError(f"{path}: {msg}")


def _read_base(path: Path, base: str | dict, key: str = "base") -> tuple[dict, str]:
    """The training config named by ``key`` (a path relative to the file, or a mapping) as a
    mapping, and where it came from (for messages)."""
    if isinstance(base, dict):
        return base, "the mapping"
    base_path = (path.parent / base).resolve()
    if not base_path.is_file():
        raise _err(path, f"{key}: no such training config {base_path}")
    try:
        raw = load_yaml(base_path)
    except ConfigError as e:
        raise _err(path, f"{key}: {e}") from None
    if not isinstance(raw, dict):
        raise _err(path, f"{key}: {base_path} is {'empty' if raw is None else 'not a mapping of keys'}")
    return raw, str(base_path)


def _absolute_root(cfg: TrainConfig) -> TrainConfig:
    """Trials run in their own folders: a data root relative to the working directory is made absolute."""
    if cfg.data.root and not Path(cfg.data.root).is_absolute():
        return cfg.model_copy(update={"data": cfg.data.model_copy(update={"root": str(Path(cfg.data.root).resolve())})})
    return cfg


def _resolve_stage1(path: Path, over: dict, base: TrainConfig) -> TrainConfig:
    """The shared stage-1 run: its own training config (``stage1.config``, the recipe's stage-1
    file) or the base with halting off, then the file's other ``stage1`` keys as overrides.
    Halting stays off, and the keys that shape the weights are the base's (the trials load them)."""
    over = dict(over)
    name = over.pop("config", None)
    if name is not None:
        if not isinstance(name, str):
            raise _err(path, f"stage1.config must be a path to a training config, got {short(name)}")
        start, _ = _read_base(path, name, "stage1.config")
        start = dict(start)
        if start.get("halting") is not None:
            raise _err(path, f"stage1.config: {name} has halting on; stage 1 is the static backbone (halting: null)")
    else:
        start = base.to_dict()
    for key in ("halting", *([] if name is not None else SHAPE_KEYS)):
        top, _, sub = key.partition(".")
        if top in over and (not sub or isinstance(over[top], dict) and sub in over[top]):
            raise _err(path, f"stage1.{key} cannot be overridden: "
                             + ("stage 1 is the static backbone (halting off)" if key == "halting" else
                                f"the trials load stage 1's weights, so {key} must be the base config's"))
    try:
        stage1 = config_from_dict(merge(merge(start, {"halting": None, "init_from": None}), over), f"{path} (stage1)")
    except ConfigError as e:
        raise _err(path, f"stage1: {str(e).split(': ', 1)[1]}") from None
    for key in (*SHAPE_KEYS, "model.timesteps", "model.stem"):
        mine, theirs = _dotted(stage1, key), _dotted(base, key)
        if mine != theirs:
            raise _err(path, f"stage1.config: {key} is {short(mine)} there but {short(theirs)} in base: the trials "
                             f"load stage 1's weights, so it must be the same")
    return _absolute_root(stage1) if name is not None else stage1


def _dotted(cfg: TrainConfig, key: str):
    value = cfg
    for part in key.split("."):
        value = getattr(value, part)
    return value


def _check_key(path: Path, key: str) -> None:
    section = key.split(".", 1)[0]
    why = NOT_SEARCHABLE.get(key) or (NOT_SEARCHABLE["tracking"] if section == "tracking" else None)
    if why:
        raise _err(path, f"space.{key} cannot be searched: {why}")


def load_spec(path: str | Path) -> SweepSpec:
    """Read and validate a search-space file. Raises :class:`SpaceError`."""
    path = Path(path)
    raw, doc = _read_file(path)
    base, stage1 = _read_configs(path, doc)
    params = _read_space(path, doc, base)
    epsilons, grids = _read_eval(path, doc, base)
    objectives, ref = _read_objectives(path, doc)
    free = _check_points(path, doc, params)
    max_epochs, smetric, smode = _read_scheduler(path, doc, base, objectives)
    _check_workers(path, doc, base, stage1)
    num_samples = doc.search.num_samples
    if not free:  # every key fixed: one configuration, run once (Optuna has nothing to sample)
        num_samples = 1
    name = doc.name or path.stem
    try:
        check_name(name, "name")
    except ValueError as e:
        raise _err(path, f"{e}: the file's name is the sweep's name when name: is not given") from None
    sched = doc.scheduler
    return SweepSpec(
        path=path.resolve(), name=name, base=base, stage1=stage1, params=params, epsilons=epsilons,
        objectives=objectives, reference=ref, sampler=doc.search.sampler, seed=doc.search.seed,
        num_samples=num_samples, points_to_evaluate=doc.search.points_to_evaluate if free else [],
        scheduler=sched.type, scheduler_metric=smetric, scheduler_mode=smode, grace_period=sched.grace_period,
        reduction_factor=sched.reduction_factor, max_epochs=max_epochs,
        resources={"workers": doc.resources.workers, "cpu": doc.resources.cpu, "gpu": doc.resources.gpu},
        max_concurrent_trials=doc.max_concurrent_trials, retries=doc.retries,
        checkpoint_period_s=doc.checkpoint_period_s, storage_path=doc.storage_path,
        tracking_uri=doc.mlflow.tracking_uri, experiment=doc.mlflow.experiment or f"stas-{name}", raw=raw,
        grids=grids,
    )


def _read_file(path: Path) -> tuple[dict, SpaceFile]:
    """The file's YAML (safe loader) and its keys checked against the schema."""
    if not path.is_file():
        raise SpaceError(f"{path}: no such search-space file")
    try:
        raw = load_yaml(path)
    except ConfigError as e:
        raise SpaceError(str(e)) from None
    if raw is None:
        raise _err(path, "the file is empty (or only comments); see search_spaces/digits.yaml for one that works")
    if not isinstance(raw, dict):
        raise _err(path, f"the top level must be a mapping of keys, got {short(raw)}")
    try:
        return raw, SpaceFile.model_validate(raw)
    except ValidationError as e:
        raise SpaceError(pydantic_message(e.errors()[0], str(path), SpaceFile)) from None


def _read_configs(path: Path, doc: SpaceFile) -> tuple[TrainConfig, TrainConfig]:
    """(base, stage 1): the trials' stage-2 config, halting on, and the shared stage 1's."""
    base_raw, base_where = _read_base(path, doc.base)
    base_raw = dict(base_raw)
    if base_raw.get("halting") is None:
        base_raw["halting"] = {}  # the trials are stage 2: halting on (its defaults unless searched)
    base_raw["init_from"] = None  # trials start from the sweep's shared stage 1, not the base's init_from
    try:
        base = config_from_dict(base_raw, base_where)
    except ConfigError as e:
        raise _err(path, f"base: {str(e).removeprefix('the mapping: ')}") from None
    if not isinstance(doc.base, dict):
        base = _absolute_root(base)
    return base, _resolve_stage1(path, doc.stage1, base)


def _read_space(path: Path, doc: SpaceFile, base: TrainConfig) -> list[Param]:
    """The searched keys: every value a distribution can produce makes a valid trial config."""
    params = []
    for key, dist in doc.space.items():
        _check_key(path, key)
        samples = dist.args if dist.kind == "choice" else [dist.args] if dist.kind == "fixed" else list(dist.args)
        for v in samples:
            try:
                trial_config(base, {key: v}, base.epochs)
            except ConfigError as e:
                raise _err(path, f"space.{key}: value {short(v)} does not make a valid training config "
                                 f"({str(e).removeprefix('<trial>: ')})") from None
        params.append(Param(key, dist.kind, dist.args))
    return params


def _read_eval(path: Path, doc: SpaceFile, base: TrainConfig) -> tuple[list[float], dict[str, list[float]]]:
    """(STAS's epsilons, the other methods' knob grids), each without repeated values."""
    epsilons = list(doc.eval.epsilons or [base.halting.epsilon])
    if len(set(epsilons)) != len(epsilons):
        raise _err(path, f"eval.epsilons has repeated values: {epsilons}")
    grids = {}
    for m in methods.halting_methods():  # the other methods' grids (stas's is epsilons, above)
        values = getattr(doc.eval, m.grid_key, None) if m.grid is not None and m.grid_key else None
        if values and len(set(values)) != len(values):
            raise _err(path, f"eval.{m.grid_key} has repeated values: {values}")
        if values:
            grids[m.name] = list(values)
    return epsilons, grids


def _read_objectives(path: Path, doc: SpaceFile) -> tuple[list[tuple[str, str]], dict[str, float]]:
    """(objective, direction) pairs and the hypervolume's reference value of each."""
    objectives = list(doc.objectives.items())
    for metric, _ in objectives:
        if metric not in OBJECTIVE_METRICS:
            raise _err(path, f"objectives: unknown metric {short(metric)}; accepted: {', '.join(OBJECTIVE_METRICS)}")
    defaults = {o.name: o.reference for o in objective_records.OBJECTIVES.values() if o.reference is not None}
    for k in doc.reference:
        if k not in doc.objectives:
            raise _err(path, f"reference.{k}: not an objective; objectives are {', '.join(doc.objectives)}")
    ref = {}
    for metric, _ in objectives:
        if metric in doc.reference:
            ref[metric] = float(doc.reference[metric])
        elif metric in defaults:
            ref[metric] = defaults[metric]
        else:
            raise _err(path, f"reference.{metric} is missing: the hypervolume needs a reference value for every "
                             f"objective (a value worse than any point, e.g. an energy above the static model's)")
    return objectives, ref


def _check_points(path: Path, doc: SpaceFile, params: list[Param]) -> list[str]:
    """The given points name every searched (not fixed) key, each with a value its distribution
    can produce. Returns the searched keys."""
    searched = {p.key: doc.space[p.key] for p in params}
    free = [k for k, d in searched.items() if d.kind != "fixed"]
    for i, point in enumerate(doc.search.points_to_evaluate):
        where = f"search.points_to_evaluate[{i}]"
        for k, v in point.items():
            if k not in searched:
                raise _err(path, f"{where}: {short(k)} is not in space; searched keys: {', '.join(sorted(searched))}")
            if not searched[k].contains(v):
                raise _err(path, f"{where}.{k}: {short(v)} is not a value of space.{k} ({Param(k, searched[k].kind, searched[k].args).describe()})")
        missing = [k for k in free if k not in point]
        if missing:
            raise _err(path, f"{where} misses {', '.join(missing)}: a given point names every searched key "
                             f"(Optuna cannot start a trial from part of one)")
    return free


def _read_scheduler(path: Path, doc: SpaceFile, base: TrainConfig, objectives) -> tuple[int, str, str]:
    """(max epochs, the metric ASHA stops on, its direction)."""
    sched = doc.scheduler
    max_epochs = sched.max_epochs or base.epochs
    if sched.type == "moasha":
        for key in ("metric", "mode"):
            if getattr(sched, key) is not None:
                raise _err(path, f"scheduler.{key} is not accepted for scheduler.type moasha: it ranks trials on "
                                 f"every objective ({', '.join(doc.objectives)}); drop the key, or use "
                                 f"type: asha to stop on one metric")
    smetric = sched.metric or objectives[0][0]
    if smetric not in OBJECTIVE_METRICS:
        raise _err(path, f"scheduler.metric is {short(smetric)}; accepted: {', '.join(OBJECTIVE_METRICS)}")
    smode = sched.mode or doc.objectives.get(smetric, "max")
    if sched.grace_period > max_epochs:
        raise _err(path, f"scheduler.grace_period ({sched.grace_period}) must be <= scheduler.max_epochs ({max_epochs})")
    return max_epochs, smetric, smode


def _check_workers(path: Path, doc: SpaceFile, base: TrainConfig, stage1: TrainConfig) -> None:
    """The global batch of stage 1 and of the trials splits over ``resources.workers``."""
    workers = doc.resources.workers
    for key, cfg in (("base", base), ("stage1", stage1)):
        if cfg.batch_size % workers:
            raise _err(path, f"resources.workers is {workers} and {key}'s batch_size {cfg.batch_size} (the global "
                             f"batch) does not split over them; give a batch_size that is a multiple of {workers}")
    if workers > 1 and base.sync_bn:
        from ..train.distributed import check_sync_bn  # (loads torch)

        check_sync_bn(base, workers, f"{path}: base")


def describe(spec: SweepSpec, tracking_uri: str) -> str:
    """The resolved plan, as ``--dry-run`` prints it."""
    objectives = ", ".join(f"{m} ({d})" for m, d in spec.objectives)
    schedule = {
        "fifo": "fifo (no early stopping)",
        "asha": f"asha on {spec.scheduler_metric} ({spec.scheduler_mode})",
        "moasha": f"moasha on {objectives} (Pareto rank, crowding distance)",
    }[spec.scheduler]
    if spec.scheduler != "fifo":
        schedule += f", grace {spec.grace_period}, reduction {spec.reduction_factor}, max {plural(spec.max_epochs, 'epoch')}"
    lines = [
        f"sweep {spec.name!r} from {spec.path}",
        f"  model {spec.base.model.name} on {spec.base.data.name}",
        f"  stage 1 (shared, once): {plural(spec.stage1.epochs, 'epoch')}, key {spec.stage1_key()}",
        f"  stage 2 per trial: {plural(spec.max_epochs, 'epoch')}, evaluated at epsilons {spec.epsilons}"
        + "".join(f"; {m} at {g}" for m, g in spec.grids.items()),
        "  space:",
        *[f"    {p.key:<24} {p.describe()}" for p in spec.params],
        f"  objectives: {objectives}; hypervolume reference {spec.reference}",
        (f"  search: {spec.sampler} sampler, seed {spec.seed}, {plural(spec.num_samples, 'trial')}"
         + (f", {len(spec.points_to_evaluate)} given points first" if spec.points_to_evaluate else ""))
        if spec.searched() else "  search: nothing to search (every key is fixed): one trial of that configuration",
        f"  scheduler: {schedule}",
        f"  resources per trial: {spec.resources}; max concurrent trials: {spec.max_concurrent_trials or 'as resources allow'}; "
        f"retries: {spec.retries}; a trial checkpoints "
        + (f"every {spec.checkpoint_period_s:g} s and its last epoch" if spec.checkpoint_period_s else "every epoch"),
        f"  results and checkpoints: {spec.storage_dir()}/{spec.name} (checkpoints kept: about "
        f"{spec.checkpoint_bytes() / 2**20:,.0f} MiB)",
        f"  MLflow: {tracking_uri}, experiment {spec.experiment!r}",
        f"  candidate front points: up to {spec.num_samples * len(spec.epsilons)} "
        f"({plural(spec.num_samples, 'trial')} x {plural(len(spec.epsilons), 'epsilon')})",
    ]
    return "\n".join(lines)
