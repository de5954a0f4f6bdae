"""Training configuration: YAML in, validated sections out.

Every section is a pydantic model whose fields declare the type, the default and (``Literal``)
the allowed values, in one place; unknown keys and wrong types are errors naming the file and
the dotted key, and saying what would be accepted. ``--set key=value`` overrides use the same
dotted keys (``--set halting.delta_p=0.01``), parsed as YAML scalars.

A configuration with ``halting: null`` is stage 1 (static backbone, usually I-SPS); one with a
``halting`` section is stage 2 and normally sets ``init_from`` to a stage-1 checkpoint.
"""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import UserError, short


class ConfigError(UserError, ValueError):
    """A configuration that cannot be used; the message names the file and the key."""


# Aliases may add at most this many nodes to a document: anchors for a few repeated sections
# stay well below it, a "billion laughs" document (each alias doubling or tenfolding the one
# before) is refused before anything is built from it.
MAX_ALIAS_EXPANSION = 10_000


class _AliasBombError(yaml.YAMLError):
    pass


def _expanded_size(root: yaml.Node) -> tuple[int, int]:
    """(nodes in the document, nodes once every alias is expanded), counted on the composed
    graph without building it (an alias is the same node object reached twice)."""
    size: dict[int, int] = {}
    entered: set[int] = set()  # on the current path: reaching one again is a cycle
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        children = []
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        if done:
            size[id(node)] = 1 + sum(size[id(c)] for c in children)
            entered.discard(id(node))
            continue
        if id(node) in size:
            continue
        entered.add(id(node))
        stack.append((node, True))
        for c in children:
            if id(c) in entered:
                raise _AliasBombError(f"the alias on line {c.start_mark.line + 1} refers to a node that contains "
                                      f"it; recursive documents are not accepted")
            if id(c) not in size:
                stack.append((c, False))
    return len(size), size[id(root)]


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that rejects a key written twice in one mapping, an unhashable key, and a
    document whose aliases expand it by more than :data:`MAX_ALIAS_EXPANSION` nodes."""

    def get_single_data(self):
        node = self.get_single_node()
        if node is None:
            return None
        distinct, expanded = _expanded_size(node)
        if expanded - distinct > MAX_ALIAS_EXPANSION:
            raise _AliasBombError(
                f"its aliases (*name) expand {distinct} nodes into {expanded:.3g}, more than the "
                f"{MAX_ALIAS_EXPANSION} extra nodes accepted; write the repeated values out or use fewer aliases")
        return self.construct_document(node)


def _construct_mapping(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue  # `<<: *base`: merged keys may be overridden, SafeLoader resolves them below
        key = loader.construct_object(key_node, deep=deep)
        try:
            twice = key in seen
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None, None, "a key must be a plain value (a string or number), not a "
                + ("list" if isinstance(key_node, yaml.SequenceNode) else "mapping"),
                key_node.start_mark) from None
        if twice:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {short(key, 60)} is given twice", key_node.start_mark)
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def yaml_problem(e: yaml.YAMLError) -> str:
    """A YAML error on one line: what is wrong and where (line, column), without the snippet."""
    if isinstance(e, yaml.MarkedYAMLError) and e.problem:
        mark = e.problem_mark or e.context_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        context = f"{e.context}: " if e.context else ""
        return f"{context}{e.problem}{where}"
    return " ".join(str(e).split())


def _override_value(item: str, text: str) -> Any:
    """The value of ``--set KEY=TEXT``, read by the same loader as the files (a YAML error is a
    :class:`ConfigError` naming the override)."""
    if not text.strip():
        return None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {short(item, 80)}: the value is not valid YAML: {yaml_problem(e)}") from None


def load_yaml(path: str | Path) -> Any:
    """The one reader of our YAML files (training configs, search spaces): safe; a key given
    twice in one mapping, an unhashable key, a recursive alias or an alias expansion beyond
    :data:`MAX_ALIAS_EXPANSION` nodes is an error (:class:`ConfigError` naming the file and the line)."""
    path = Path(path)
    try:
        text = path.read_text()
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, not a YAML file") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not a UTF-8 text file ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot be read ({e.strerror or e})") from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass
    except _AliasBombError as e:
        raise ConfigError(f"{path}: refused: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {yaml_problem(e)}") from None
    except RecursionError:
        raise ConfigError(f"{path}: refused: the document is nested too deeply") from None


class _Section(BaseModel):
    """A config section: declared types, strict (no "3" for 3), unknown keys rejected."""

    model_config = ConfigDict(extra="forbid", strict=True, validate_default=False)


class ModelConfig(_Section):
    name: str = "spikformer-2-32"
    timesteps: int = 4
    stem: Literal["sps", "isps"] = "isps"
    num_classes: int | None = None  # default: the data set's classes (image size: data.img_size)


class HaltingSection(_Section):
    alpha: float | None = None  # None: the paper's value for the model's family (PAPER_ALPHA_BETA)
    beta: float | None = None
    epsilon: float = 0.01
    delta_p: float = 1e-3
    accumulation: Literal["tb", "b"] = "tb"

    def model_kwargs(self, model_name: str) -> dict:
        """The model's halting arguments; an unset alpha or beta takes the paper's for the family
        (Spikformer -5 / 0, the others 5 / -25)."""
        from ..models.halting import PAPER_ALPHA_BETA
        from ..models.registry import get_arch

        alpha, beta = PAPER_ALPHA_BETA[get_arch(model_name).family]
        return {"alpha": alpha if self.alpha is None else self.alpha, "beta": beta if self.beta is None else self.beta,
                "epsilon": self.epsilon, "accumulation": self.accumulation}


class DataConfig(_Section):
    name: str = "digits"
    root: str | None = None
    download: bool = False
    img_size: int | None = None  # the one image-size knob: resize to this side (digits: 8x8 native); the model follows
    workers: int = 0
    augment: bool = True
    mixup: float = 0.0
    cutmix: float = 0.0
    mixup_off_epoch: int | None = None  # the recipes switch mixup off after this epoch
    label_smoothing: float = 0.1
    recipe: dict | None = None  # overrides of the data set's augmentation recipe, e.g. {aa: null, reprob: 0}


class OptimConfig(_Section):
    opt: Literal["adamw", "sgd", "lamb", "adam"] = "adamw"
    lr: float = 5e-4
    min_lr: float = 1e-5
    weight_decay: float = 0.06  # not applied to biases and norm weights
    warmup_epochs: int = 0
    warmup_lr: float = 1e-5
    grad_clip: float | None = None


class SMLConfig(_Section):
    enabled: bool = False
    weight: float = 1.0   # weight of the auxiliary branch's loss
    block: int | None = None  # block whose output feeds the branch; default: the middle one


class TrackingConfig(_Section):
    uri: str | None = None  # default: MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db
    experiment: str = "stas-train"
    enabled: bool = True


class TrainConfig(_Section):
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    halting: HaltingSection | None = None
    optim: OptimConfig = Field(default_factory=OptimConfig)
    sml: SMLConfig = Field(default_factory=SMLConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    epochs: int = 10
    batch_size: int = 64
    amp: Literal["auto", "on", "off"] = "auto"  # auto: on for CUDA
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    init_from: str | None = None  # checkpoint whose model weights start this run (stage 1 -> 2)
    eval_epsilons: list[float] = Field(default_factory=lambda: [0.0, 0.05, 0.1, 0.2])
    energy_batches: int | None = None  # validation batches the energy meter sees (None: all)

    @property
    def stage(self) -> int:
        return 1 if self.halting is None else 2

    def to_dict(self) -> dict:
        return self.model_dump()


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    return {type(None): "null", int: "an integer", float: "a number", str: "a string", bool: "true/false",
            dict: "a mapping"}.get(tp, getattr(tp, "__name__", str(tp)))


def _message(error: dict, where: str) -> str:
    """One pydantic error as our messages say it: the file, the dotted key, what is accepted."""
    cls, annotation, parts = TrainConfig, None, []
    for item in error["loc"]:
        if isinstance(item, int):
            parts[-1] += f"[{item}]"
            annotation = typing.get_args(annotation)[0] if typing.get_origin(annotation) is list else annotation
            continue
        parts.append(str(item))
        fields = getattr(cls, "model_fields", {}) if cls is not None else {}
        if item not in fields:
            break
        annotation = fields[item].annotation
        inner = [a for a in typing.get_args(annotation) if a is not type(None)] or [annotation]
        cls = inner[0] if isinstance(inner[0], type) and issubclass(inner[0], BaseModel) else None
    key, value, kind = ".".join(parts), error.get("input"), error["type"]
    if kind == "extra_forbidden":
        owner = TrainConfig
        for name in parts[:-1]:
            ann = owner.model_fields[name].annotation
            owner = next(a for a in (typing.get_args(ann) or (ann,)) if a is not type(None))
        return f"{where}: unknown key {key!r}; accepted keys here: {', '.join(owner.model_fields)}"
    if kind == "literal_error":
        accepted = ", ".join(typing.get_args(annotation))
        return f"{where}: {key} is {value!r}; accepted values: {accepted}"
    if kind in ("model_type", "model_attributes_type"):
        return f"{where}: {key} must be a mapping of keys, got {value!r}"
    return f"{where}: {key} must be {_type_name(annotation)}, got {value!r}"


def _check(cfg: TrainConfig, where: str) -> None:
    from ..models import get_arch
    from ..models.halting import check_epsilon

    try:
        get_arch(cfg.model.name)
    except ValueError as e:
        raise ConfigError(f"{where}: model.name: {e}") from None
    positive = {"epochs": cfg.epochs, "batch_size": cfg.batch_size, "model.timesteps": cfg.model.timesteps}
    for key, v in positive.items():
        if v < 1:
            raise ConfigError(f"{where}: {key} must be >= 1, got {v}")
    if cfg.optim.lr <= 0:
        raise ConfigError(f"{where}: optim.lr must be > 0, got {cfg.optim.lr}")
    if not 0 <= cfg.data.label_smoothing < 1:
        raise ConfigError(f"{where}: data.label_smoothing must lie in [0, 1), got {cfg.data.label_smoothing}")
    if cfg.halting is not None:
        try:
            check_epsilon(cfg.halting.epsilon)
        except ValueError as e:
            raise ConfigError(f"{where}: halting.epsilon: {e}") from None
        if cfg.halting.delta_p < 0:
            raise ConfigError(f"{where}: halting.delta_p must be >= 0, got {cfg.halting.delta_p}")
    for i, e in enumerate(cfg.eval_epsilons):
        try:
            check_epsilon(e)
        except ValueError as err:
            raise ConfigError(f"{where}: eval_epsilons[{i}]: {err}") from None
    if cfg.device not in ("auto", "cpu", "cuda") and not cfg.device.startswith("cuda:"):
        raise ConfigError(f"{where}: device is {cfg.device!r}; accepted values: auto, cpu, cuda, cuda:N")


def config_from_dict(raw: dict, where: str = "<config>") -> TrainConfig:
    """Validate a raw config (types and allowed values as declared above, then :func:`_check`)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: the top level must be a mapping of keys, got {raw!r}")
    try:
        cfg = TrainConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_message(e.errors()[0], where)) from None
    _check(cfg, where)
    return cfg


def parse_overrides(items: list[str] | None) -> dict:
    """``['halting.delta_p=0.01', 'epochs=3']`` -> nested dict, values parsed as YAML scalars."""
    out: dict = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set halting.delta_p=0.01")
        key, text = item.split("=", 1)
        value = _override_value(item, text)
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {p} is not a section")
        node[parts[-1]] = value
    return out


def set_dotted(cfg: dict, key: str, value: Any) -> dict:
    """A copy of ``cfg`` with the dotted ``key`` (``halting.alpha``) set to ``value``."""
    import copy

    out = copy.deepcopy(cfg)
    node = out
    parts = key.split(".")
    for p in parts[:-1]:
        if node.get(p) is None:
            node[p] = {}
        node = node[p]
    node[parts[-1]] = value
    return out


def merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def load_config(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """Read ``path`` (:func:`load_yaml`: duplicate keys rejected), apply ``--set`` overrides, validate."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such configuration file")
    raw = load_yaml(path) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys")
    # a halting section written as `halting: {}` means "halting with the defaults"
    raw = merge(raw, parse_overrides(overrides))
    return config_from_dict(raw, str(path))
