"""Training configuration: YAML in, validated sections out.

Every section is a pydantic model whose fields declare the type, the default and (``Literal``)
the allowed values, in one place; unknown keys and wrong types are errors naming the file and
the dotted key, and saying what would be accepted. ``--set key=value`` overrides use the same
dotted keys (``--set halting.delta_p=0.01``), parsed as YAML scalars.

A configuration with ``halting: null`` is stage 1 (static backbone, usually I-SPS); one with a
``halting`` section is stage 2 and normally sets ``init_from`` to a stage-1 checkpoint.
"""

from __future__ import annotations

import re
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from .. import methods
from ..errors import UserError, credentials_to_env, short


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


def safe_load(text: str) -> Any:
    """One YAML document through :class:`_UniqueKeyLoader`, a ``yaml.SafeLoader`` (plain data
    only, no Python tags) that also refuses repeated keys and alias bombs."""
    assert issubclass(_UniqueKeyLoader, yaml.SafeLoader)
    loader = _UniqueKeyLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


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
        return safe_load(text)
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
        return safe_load(text)
    except _AliasBombError as e:
        raise ConfigError(f"{path}: refused: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {yaml_problem(e)}") from None
    except RecursionError:
        raise ConfigError(f"{path}: refused: the document is nested too deeply") from None


# Bounds on what a file can make the program allocate or loop over (generous for real runs).
MAX_EPOCHS = 100_000
MAX_BATCH = 65_536
MAX_TIMESTEPS = 64
MAX_IMG_SIZE = 1024
MAX_CLASSES = 100_000
MAX_SEED = 2**32 - 1  # numpy's and Optuna's seeds are 32-bit

Positive = Annotated[int, Field(ge=1)]
NonNegative = Annotated[float, Field(ge=0)]
Epsilon = Annotated[float, Field(**methods.get("stas").bounds)]  # [0, 1)


class _Section(BaseModel):
    """A config section: declared types, strict (no "3" for 3), no NaN or infinity, unknown keys rejected."""

    model_config = ConfigDict(extra="forbid", strict=True, validate_default=False, allow_inf_nan=False)


class ModelConfig(_Section):
    name: str = "spikformer-2-32"
    timesteps: Annotated[int, Field(ge=1, le=MAX_TIMESTEPS)] = 4
    stem: Literal["sps", "isps"] = "isps"
    num_classes: Annotated[int, Field(ge=1, le=MAX_CLASSES)] | None = None  # default: the data set's classes


class HaltingSection(_Section):
    # stas: A-SSA; token_drop: STATA-style; timestep_exit: DT-SNN-style, ours (docs/baselines.md; stas_sweep.methods)
    method: Literal[tuple(methods.halting_names())] = "stas"
    alpha: float | None = None  # None: the paper's value for the model's family (PAPER_ALPHA_BETA)
    beta: float | None = None
    epsilon: Epsilon = 0.01
    delta_p: NonNegative = 1e-3
    accumulation: Literal["tb", "b"] = "tb"
    # token_drop: share of each image's tokens every block runs, in (0, 1]
    keep_ratio: Annotated[float, Field(**methods.get("token_drop").bounds)] = 0.7
    # timestep_exit: normalised entropy below which an image stops, in [0, 1]
    exit_threshold: Annotated[float, Field(**methods.get("timestep_exit").bounds)] = 0.2

    def model_kwargs(self, model_name: str) -> dict:
        """The model's halting arguments for the method; an unset alpha or beta takes the paper's
        for the family (Spikformer -5 / 0, the others 5 / -25)."""
        from ..models.halting import PAPER_ALPHA_BETA
        from ..models.registry import get_arch

        if self.method != "stas":  # a baseline: its method and its knob's value in this section
            record = methods.get(self.method)
            return record.halting(getattr(self, record.knob))
        alpha, beta = PAPER_ALPHA_BETA[get_arch(model_name).family]
        return {"alpha": alpha if self.alpha is None else self.alpha, "beta": beta if self.beta is None else self.beta,
                "epsilon": self.epsilon, "accumulation": self.accumulation}


class DataConfig(_Section):
    name: str = "digits"  # one of stas_sweep.data.DATASET_NAMES
    root: str | None = None
    download: bool = False
    img_size: Annotated[int, Field(ge=1, le=MAX_IMG_SIZE)] | None = None  # the one image-size knob (digits: 8x8 native)
    workers: Annotated[int, Field(ge=0, le=256)] = 0
    augment: bool = True
    mixup: NonNegative = 0.0
    cutmix: NonNegative = 0.0
    mixup_off_epoch: Annotated[int, Field(ge=0)] | None = None  # the recipes switch mixup off after this epoch
    label_smoothing: Annotated[float, Field(ge=0, lt=1)] = 0.1
    recipe: dict | None = None  # overrides of the data set's augmentation recipe, e.g. {aa: null, reprob: 0}


class OptimConfig(_Section):
    opt: Literal["adamw", "sgd", "lamb", "adam"] = "adamw"
    lr: Annotated[float, Field(gt=0)] = 5e-4
    min_lr: NonNegative = 1e-5
    weight_decay: NonNegative = 0.06  # not applied to biases and norm weights
    warmup_epochs: Annotated[int, Field(ge=0)] = 0
    warmup_lr: NonNegative = 1e-5
    grad_clip: Annotated[float, Field(gt=0)] | None = None  # max gradient norm; null: no clipping


class SMLConfig(_Section):
    """Surrogate module learning as its public code has it (stas_sweep/train/sml.py); the
    defaults are that code's training script's."""

    enabled: bool = False
    # 0-based blocks whose output feeds a surrogate module; default: ResNet-18's placement scaled to L
    blocks: list[Annotated[int, Field(ge=0)]] | None = None
    alpha: NonNegative = 0.5          # weight of each module's cross-entropy in the hard loss
    lamb: Annotated[float, Field(ge=0, le=1)] = 0.9  # weight of the soft (KL) loss against the hard one
    temperature: Annotated[float, Field(gt=0)] = 3.0  # of the KL terms
    channels: Positive = 256          # width of the modules' convolutions
    kernels: list[Literal[3, 5, 7]] = Field(default_factory=lambda: [7, 5, 3], min_length=1)


def check_sml_blocks(cfg, depth: int, where: str) -> None:
    """``sml.blocks`` (or its default for the model's depth) names blocks of the model."""
    from .sml import default_blocks

    blocks = default_blocks(depth) if cfg.sml.blocks is None else cfg.sml.blocks
    if not blocks or any(b >= depth for b in blocks):
        given = "its default is empty" if cfg.sml.blocks is None else f"sml.blocks is {cfg.sml.blocks}"
        raise ConfigError(f"{where}: {given}; {cfg.model.name} has blocks 0..{depth - 1} (SML needs at least "
                          f"one block before the last: give sml.blocks, or set sml.enabled: false)")


URI_SCHEMES = ("sqlite", "file", "http", "https", "postgresql", "mysql", "mssql", "databricks", "s3", "gs")
_UNSAFE = set(" \t\r\n\x00\"'`;|&$<>\\")


def check_uri(uri: str, *, schemes: tuple[str, ...] = URI_SCHEMES) -> str:
    """A tracking or storage URI: a known scheme (or a plain path) and no characters a shell or a
    filter string would read (quotes, ``;``, whitespace, ...). Raises ValueError saying what is accepted."""
    if not isinstance(uri, str) or not uri or len(uri) > 2048:
        raise ValueError(f"must be a non-empty string of at most 2048 characters, got {short(uri)}")
    bad = sorted({c for c in uri if c in _UNSAFE or not c.isprintable()})
    if bad:
        raise ValueError(f"{short(uri)} holds {', '.join(map(repr, bad))}; a URI may not contain whitespace, "
                         f"quotes or shell characters (percent-encode them)")
    if "://" in uri:
        scheme = uri.split("://", 1)[0].split("+", 1)[0].lower()
        if scheme not in schemes:
            raise ValueError(f"{short(uri)}: unknown scheme {scheme!r}; accepted: {', '.join(schemes)}, or a path")
    return uri


def check_name(name: str, what: str = "") -> str:
    """A name that becomes a folder and an MLflow filter value: letters, digits, ``._-`` (and
    spaces inside), starting with a letter or digit, at most 100 characters (so never ``..``)."""
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._ -]{0,99}", name) or name.endswith(" "):
        raise ValueError(f"{what + ' ' if what else ''}must be 1-100 letters, digits, '.', '_', '-' or inner spaces, "
                         f"starting with a letter or digit, got {short(name)}")
    return name


def _uri(value: str | None) -> str | None:
    """A tracking URI, checked; credentials in it go to MLflow's environment variables and the
    config keeps the URI without them (see :func:`stas_sweep.errors.credentials_to_env`)."""
    return None if value is None else credentials_to_env(check_uri(value))


def _experiment(value: str | None) -> str | None:
    return None if value is None else check_name(value)


TrackingURI = Annotated[str | None, AfterValidator(_uri)]
ExperimentName = Annotated[str | None, AfterValidator(_experiment)]


class TrackingConfig(_Section):
    uri: TrackingURI = None  # default: MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db
    experiment: Annotated[str, AfterValidator(_experiment)] = "stas-train"
    enabled: bool = True


class TrainConfig(_Section):
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    halting: HaltingSection | None = None
    optim: OptimConfig = Field(default_factory=OptimConfig)
    sml: SMLConfig = Field(default_factory=SMLConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    epochs: Annotated[int, Field(ge=1, le=MAX_EPOCHS)] = 10
    batch_size: Annotated[int, Field(ge=1, le=MAX_BATCH)] = 64
    # auto: on for CUDA. on: autocast's default half type (float16 on CUDA, with a GradScaler).
    # bf16: bfloat16 autocast on any device, in training and evaluation, no GradScaler needed.
    amp: Literal["auto", "on", "off", "bf16"] = "auto"
    compile: bool = False  # torch.compile the stem and every block (SpikingViT.compile_parts)
    # with several workers: batch-norm statistics over the global batch, not each worker's share
    sync_bn: bool = False
    seed: Annotated[int, Field(ge=0, le=MAX_SEED)] = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    init_from: str | None = None  # checkpoint whose model weights start this run (stage 1 -> 2)
    eval_epsilons: Annotated[list[Epsilon], Field(min_length=1, max_length=1000)] = \
        Field(default_factory=lambda: [0.0, 0.05, 0.1, 0.2])
    energy_batches: Positive | None = None  # validation batches the energy meter sees (None: all)

    @property
    def stage(self) -> int:
        return 1 if self.halting is None else 2

    def to_dict(self) -> dict:
        return self.model_dump()

    def check_data(self) -> None:
        """The data set is where ``data`` says (or will be downloaded): a missing one is a
        :class:`~stas_sweep.data.DatasetNotFoundError`, one line. Reads no sample."""
        from ..data import check_dataset

        check_dataset(self.data.name, self.data.root, timesteps=self.model.timesteps, download=self.data.download)

    def parameter_count(self) -> int:
        """The model's parameters, counted on torch's meta device (nothing allocated)."""
        import torch

        from ..data.factory import DATASET_CLASSES, DEFAULT_IMG_SIZE
        from ..models.registry import create_model

        data, model = self.data, self.model
        with torch.device("meta"):
            net = create_model(model.name, num_classes=model.num_classes or DATASET_CLASSES.get(data.name, 1000),
                               img_size=data.img_size or DEFAULT_IMG_SIZE.get(data.name, 32), timesteps=model.timesteps)
        return sum(p.numel() for p in net.parameters())


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _type_name(typing.get_args(tp)[0])
    if origin in (typing.Union, types.UnionType):
        return " or ".join(dict.fromkeys(_type_name(a) for a in typing.get_args(tp)))
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return "a mapping"
    return {type(None): "null", int: "an integer", float: "a number", str: "a string", bool: "true/false",
            dict: "a mapping"}.get(tp, getattr(tp, "__name__", str(tp)))


_BOUNDS = {"greater_than": ("gt", ">"), "greater_than_equal": ("ge", ">="), "less_than": ("lt", "<"),
           "less_than_equal": ("le", "<=")}


def _strip(annotation: Any) -> Any:
    """``Annotated[X, ...]`` -> ``X``."""
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    return annotation


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The section class inside ``annotation`` (``Section | None`` -> ``Section``), if any."""
    ann = _strip(annotation)
    members = typing.get_args(ann) if typing.get_origin(ann) in (typing.Union, types.UnionType) else (ann,)
    for a in map(_strip, members):
        if isinstance(a, type) and issubclass(a, BaseModel):
            return a
    return None


def _field_names(cls: type[BaseModel]) -> dict[str, Any]:
    """A section's keys as a file writes them (aliases, e.g. ``int``) -> their field info."""
    return {(f.alias or name): f for name, f in cls.model_fields.items()}


def pydantic_message(error: dict, where: str, root: type[BaseModel]) -> str:
    """One pydantic error as our messages say it: the file, the dotted key, what is accepted.
    ``root`` is the model the document was validated against (a training config, a search space)."""
    cls, annotation, owner, parts = root, None, root, []
    for item in error["loc"]:
        if isinstance(item, int):  # a list's item
            if parts:
                parts[-1] += f"[{item}]"
            ann = _strip(annotation)
            members = typing.get_args(ann) if typing.get_origin(ann) in (typing.Union, types.UnionType) else (ann,)
            lists = [_strip(a) for a in members if typing.get_origin(_strip(a)) is list]
            annotation = typing.get_args(lists[0])[0] if lists else annotation
            cls = _model_in(annotation)
            continue
        if cls is not None:  # a section's key
            owner, fields = cls, _field_names(cls)
            parts.append(str(item))
            if item not in fields:
                break
            annotation = fields[item].annotation
            cls = _model_in(annotation)
        elif typing.get_origin(_strip(annotation)) is dict:  # a mapping's key, e.g. space.<dotted key>
            parts.append(str(item))
            annotation = typing.get_args(_strip(annotation))[1]
            cls = _model_in(annotation)
        # anything else is pydantic's name for a member of a union ('str', 'constrained-float'): skipped
    key, value, kind, ctx = ".".join(parts), error.get("input"), error["type"], error.get("ctx") or {}
    if kind == "extra_forbidden":
        return f"{where}: unknown key {key!r}; accepted keys here: {', '.join(_field_names(owner))}"
    if kind == "missing":
        return f"{where}: missing key {key!r}"
    if kind == "literal_error":
        accepted = ", ".join(str(a) for a in typing.get_args(_strip(annotation)) if a is not None) \
            if typing.get_origin(_strip(annotation)) is Literal else ctx.get("expected", "")
        return f"{where}: {key} is {short(value)}; accepted values: {accepted}"
    if kind in _BOUNDS:
        name, sign = _BOUNDS[kind]
        return f"{where}: {key} must be {sign} {ctx[name]}, got {short(value)}"
    if kind == "finite_number":
        return f"{where}: {key} must be a finite number, got {short(value)}"
    if kind == "too_short":
        least = ctx.get("min_length", 1)
        return (f"{where}: {key} must not be empty, got {short(value)}" if least <= 1 else
                f"{where}: {key} needs at least {least} entries, got {short(value)}")
    if kind == "too_long":
        return f"{where}: {key} has {ctx.get('actual_length')} items; at most {ctx.get('max_length')} are accepted"
    if kind == "value_error":
        return f"{where}: {key + ': ' if key else ''}{ctx.get('error', error.get('msg'))}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"{where}: {key} must be a mapping of keys, got {short(value)}"
    return f"{where}: {key} must be {_type_name(annotation)}, got {short(value)}"


def _check(cfg: TrainConfig, where: str) -> None:
    """The checks that involve more than one field or another module."""
    from ..data.factory import DATASET_CLASSES, canonical_name
    from ..models import get_arch

    try:
        arch = get_arch(cfg.model.name)
    except ValueError as e:
        raise ConfigError(f"{where}: model.name: {e}") from None
    try:
        data = canonical_name(cfg.data.name)
    except ValueError as e:
        raise ConfigError(f"{where}: data.name: {e}") from None
    classes = DATASET_CLASSES.get(data)
    if cfg.model.num_classes is not None and classes is not None and cfg.model.num_classes < classes:
        raise ConfigError(f"{where}: model.num_classes is {cfg.model.num_classes} but {data} has {classes} "
                          f"classes; give at least {classes}, or leave it out to use the data set's")
    if cfg.sml.enabled:
        check_sml_blocks(cfg, arch.depth, where)
    if cfg.device not in ("auto", "cpu", "cuda") and not re.fullmatch(r"cuda:\d{1,3}", cfg.device):
        raise ConfigError(f"{where}: device is {short(cfg.device)}; accepted values: auto, cpu, cuda, cuda:N")


def config_from_dict(raw: dict, where: str = "<config>") -> TrainConfig:
    """Validate a raw config (types and allowed values as declared above, then :func:`_check`)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: the top level must be a mapping of keys, got {raw!r}")
    try:
        cfg = TrainConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(pydantic_message(e.errors()[0], where, TrainConfig)) from None
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
    raw = load_yaml(path)
    if raw is None:
        raise ConfigError(f"{path}: the file is empty (or only comments); a training config needs at least "
                          f"model: and data: sections, see configs/digits_stage1.yaml")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {short(raw)}")
    # a halting section written as `halting: {}` means "halting with the defaults"
    raw = merge(raw, parse_overrides(overrides))
    return config_from_dict(raw, str(path))
