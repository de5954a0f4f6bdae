"""The files we ship say what they do: every number a comment in ``configs/`` or ``search_spaces/``
states (epochs, T, image size, tokens, alpha/beta/delta_p, the model) equals the value beside it,
and a sweep's printed plan reads its stage 1 from the stage-1 config it names."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from stas_sweep.models.stems import num_tokens
from stas_sweep.sweep.space import describe, load_spec
from stas_sweep.train.config import load_config, load_yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
SPACES = sorted((ROOT / "search_spaces").glob("*.yaml"))
NUM = r"(-?\d+(?:\.\d+)?(?:e-?\d+)?)"


def comments(path: Path) -> list[tuple[int, str]]:
    """(line number, comment text) of every ``#`` comment in the file."""
    out = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if "#" in line:
            out.append((i, line.split("#", 1)[1]))
    return out


def claims(path: Path, pattern: str) -> list[tuple[int, tuple[str, ...]]]:
    return [(i, m.groups()) for i, text in comments(path) for m in re.finditer(pattern, text)]


def check(path: Path, pattern: str, actual, convert=float) -> None:
    for line, groups in claims(path, pattern):
        said = tuple(convert(g) if g is not None else None for g in groups)
        want = actual if isinstance(actual, tuple) else (actual,)
        for s, w in zip(said, want):
            if s is not None:
                assert s == w, f"{path.name}:{line}: the comment says {s}, the file has {w}"


def halting_values(halting) -> tuple:
    return (float(halting.alpha), float(halting.beta), float(halting.delta_p))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_comments_agree_with_the_values(path):
    cfg = load_config(path)
    check(path, rf"\b{NUM} (?:further )?epochs\b", float(cfg.epochs))
    check(path, r"\bT=(\d+)", float(cfg.model.timesteps))
    img = cfg.data.img_size or {"digits": 32, "imagenet": 224, "cifar10-dvs": 128, "dvs128-gesture": 128}.get(
        cfg.data.name, 32)
    # the input's side: "32x32 -> 64 tokens", "(32x32, 64 tokens", "a 24x24 canvas" (not a digit's own size)
    check(path, r"\b(\d+)x(\d+)(?=\s*->|,\s*\d+ tokens| canvas)", (float(img), float(img)))
    check(path, r"\b(\d+) tokens\b", float(num_tokens(img)))
    if cfg.halting is not None:
        check(path, rf"\balpha {NUM}, beta {NUM}(?:, delta_p {NUM})?", halting_values(cfg.halting))
    for line, (name,) in claims(path, r"\b((?:spikformer|spikingformer|spikedriven)-\d+-\d+)\b"):
        assert name.lower() == cfg.model.name, f"{path.name}:{line}: the comment names {name}, the file {cfg.model.name}"


@pytest.mark.parametrize("path", SPACES, ids=lambda p: p.name)
def test_space_comments_agree_with_the_values(path):
    spec = load_spec(path)
    check(path, rf"Stage 1 \({NUM} epochs", float(spec.stage1.epochs))
    check(path, rf"fine-tunes {NUM} epochs", float(spec.max_epochs))
    check(path, rf"\b{NUM} points per trial", float(len(spec.epsilons)))
    check(path, r"\bT=(\d+)", float(spec.base.model.timesteps))
    given = spec.points_to_evaluate[0] if spec.points_to_evaluate else {}
    paper = tuple(float(given.get(f"halting.{k}", getattr(spec.base.halting, k))) for k in ("alpha", "beta", "delta_p"))
    check(path, rf"\balpha {NUM}, beta {NUM}(?:, delta_p {NUM})?", paper)
    for line, (name,) in claims(path, r"\b((?:Spikformer|Spikingformer|Spikedriven)-\d+-\d+)\b"):
        assert name.lower() == spec.base.model.name, f"{path.name}:{line}: {name} vs {spec.base.model.name}"


@pytest.mark.parametrize("path", SPACES, ids=lambda p: p.name)
def test_plan_prints_the_stage1_that_will_run(path):
    """Where a space names its recipe's stage-1 config, the shared stage 1 is that config (its
    epochs, optimiser and data), and the plan prints those epochs."""
    raw = load_yaml(path)
    spec = load_spec(path)
    plan = describe(spec, "sqlite:///mlflow.db")
    assert f"stage 1 (shared, once): {spec.stage1.epochs} epoch" in plan
    assert spec.stage1.halting is None
    named = (raw.get("stage1") or {}).get("config")
    if named:
        own = load_config((path.parent / named).resolve())
        overrides = {k for k in raw["stage1"] if k != "config"}
        if "epochs" not in overrides:
            assert spec.stage1.epochs == own.epochs
        assert spec.stage1.optim == own.optim
        assert spec.stage1.model == own.model
    if path.name.startswith(("cifar", "imagenet", "dvs")):
        assert named, f"{path.name}: a paper-scale space trains stage 1 with its recipe's stage-1 config"


def test_tracking_imports_neither_train_nor_sweep():
    """tracking.py only logs and reads MLflow (HOUSE.md): the sweep computes and draws the front
    and hands it files and numbers; no import of train or sweep, at module level or in a function."""
    import ast

    tree = ast.parse((Path(__file__).parent.parent / "stas_sweep" / "tracking.py").read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            names = [f"{'.' * node.level}{node.module or ''}"] + [f"{'.' * node.level}{a.name}" for a in node.names
                                                                   if not node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found += [(n, node.lineno) for n in names
                  if n.lstrip(".").split(".")[0] in ("sweep", "train") or n.startswith("stas_sweep.sweep")
                  or n.startswith("stas_sweep.train")]
    assert not found, f"tracking.py imports {found}"
