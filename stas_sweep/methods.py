"""One record per halting method: everything the package needs to know about a method, in one place.

A :class:`Method` names the config class the model runs (:mod:`stas_sweep.models.configs`: its
knob ``knob_name`` and the energy meter's row ``decision_row`` live there, because the model and
the meter sit below this module), the knob's default evaluation grid and the search-space key
that overrides it, the label and colour of its points in the front plots, and the ``energy``
command's flag and help. The evaluation tables, the front's knob lookup, the plots' colours, the
training config's and search-space file's checks and the command line all read these records::

    register(Method("token_drop", TokenDropConfig, grid=(1.0, 0.75, 0.5, 0.25), grid_key="keep_ratios",
                    label="token dropping (STATA-style)", colour="#2ca02c",
                    flag_help="the token-dropping baseline at this keep ratio in (0, 1]"))

``static`` (halting off) is a record too, with no config and no knob: the row every evaluation
table starts from and the colour of a static model's points. A new method registers itself with
:func:`register` (and a test removes it again with :func:`unregister`); the model runs it by its
config class, so a method whose config subclasses one of the built-in ones runs on that path.

This module imports only the configs (plain dataclasses, no torch), so the front, the plots and
the command-line parser can read the records without loading torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from .models.configs import HaltingConfig, MethodConfig, TimestepExitConfig, TokenDropConfig

STATIC = "static"


@dataclass(frozen=True)
class Method:
    """A halting method. ``config``: the config class the model runs (None: ``static``);
    ``grid``: the knob values an evaluation visits when the search-space file gives none (None:
    the training config's ``eval_epsilons``, A-SSA's STAS^epsilon grid); ``grid_key``: the
    search-space file's ``eval`` key that overrides ``grid``; ``label``/``colour``: its points in
    the front plots; ``flag_help``: the ``energy`` command's help for its knob's flag."""

    name: str
    config: type[MethodConfig] | None
    grid: tuple[float, ...] | None = None
    grid_key: str | None = None
    label: str = ""
    colour: str = "#7f7f7f"
    flag_help: str = ""

    @property
    def knob(self) -> str | None:
        """The evaluation knob's field (``epsilon``, ``keep_ratio``, ``exit_threshold``); None for static."""
        return None if self.config is None else self.config.knob_name

    @property
    def bounds(self) -> Mapping[str, float]:
        """The knob's accepted range as pydantic's ``Field`` takes it (the config's; the training
        config and the search-space schema check knob values with it)."""
        return {} if self.config is None else dict(self.config.knob_bounds)

    @property
    def decision_row(self) -> str | None:
        """The energy report's row of the method's own decision operations (its meter rule)."""
        return None if self.config is None else self.config.decision_row

    @property
    def flag(self) -> str | None:
        """The ``energy`` command's option for the knob: ``--keep-ratio`` for ``keep_ratio``."""
        return None if self.knob is None else "--" + self.knob.replace("_", "-")

    def halting(self, value: float | None = None) -> dict:
        """The model's ``halting`` argument for this method, at knob ``value`` (its default when None)."""
        if self.config is None:
            raise ValueError("the static method has no halting config")
        return {"method": self.name, **({} if value is None else {self.knob: value})}


_REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add ``method`` (a new name, the one its config class names); returns it."""
    if method.name in _REGISTRY:
        raise ValueError(f"halting method {method.name!r} is registered already")
    if method.config is not None and method.config.method != method.name:
        raise ValueError(f"method {method.name!r}: its config {method.config.__name__} names method "
                         f"{method.config.method!r}")
    _REGISTRY[method.name] = method
    return method


def unregister(name: str) -> None:
    """Remove a registered method (a test's own, after the test)."""
    _REGISTRY.pop(name, None)


def get(name: str) -> Method:
    """The record of ``name``; ValueError naming the registered methods otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"halting method {name!r} is not supported; accepted values: "
                         f"{', '.join(halting_names())}") from None


def all_methods() -> list[Method]:
    """Every record, ``static`` last."""
    return sorted(_REGISTRY.values(), key=lambda m: m.name == STATIC)


def halting_methods() -> list[Method]:
    """The records with a knob (every method but ``static``), in registration order."""
    return [m for m in _REGISTRY.values() if m.config is not None]


def halting_names() -> list[str]:
    return [m.name for m in halting_methods()]


def knob_names() -> list[str]:
    """Every method's knob, each once, in registration order (a point carries all of them)."""
    return list(dict.fromkeys(m.knob for m in halting_methods()))


def knob_of(method: str | None) -> str:
    """The knob of ``method`` (``epsilon`` for an unknown or missing one: a point of a sweep
    older than the method column)."""
    m = _REGISTRY.get(method or "stas")
    return m.knob if m is not None and m.knob is not None else "epsilon"


def colour_of(method: str | None, default: str) -> str:
    m = _REGISTRY.get(method or "")
    return default if m is None else m.colour


register(Method("stas", HaltingConfig, grid=None, grid_key="epsilons", label="STAS (A-SSA)", colour="#1f77b4",
                flag_help="halting threshold knob in [0, 1) (implies --halting)"))
register(Method("token_drop", TokenDropConfig, grid=(1.0, 0.75, 0.5, 0.25), grid_key="keep_ratios",
                label="static token dropping (STATA-style)", colour="#2ca02c",
                flag_help="the token-dropping baseline at this keep ratio in (0, 1]"))
register(Method("timestep_exit", TimestepExitConfig, grid=(0.0, 0.1, 0.3, 0.6), grid_key="exit_thresholds",
                label="temporal early exit (DT-SNN-style, ours)", colour="#9467bd",
                flag_help="the timestep-exit baseline at this normalised-entropy threshold in [0, 1]"))
register(Method(STATIC, None, label="static (halting off)", colour="#8c564b"))
