r"""Synthetic learning curves that trade accuracy against energy (no torch), for tests and benchmarks.

A trial is ``{"h": halting in [0, 1], "q": quality in [0, 1], "seed": int}``. At epoch
:math:`t = 1, 2, \dots`:

.. math::
    acc(t) = A(h, q)\,(1 - e^{-t/\tau(h)}) + \text{noise}, \quad
    A(h, q) = 0.95 - 0.25 h^2 - 0.35 (1 - q), \quad \tau(h) = 1.5 + 2 h,

    energy(t) = E(h)\,(1 + 0.3 e^{-t/2}) + \text{noise}, \quad E(h) = 1 - 0.75 h .

``h`` is the knob of the trade-off (more halting: less energy, lower and *slower* accuracy, so
early rungs punish it on accuracy alone), ``q`` makes a trial dominated. ``noise`` (std
``noise``) is per (trial seed, epoch), reproducible.

:func:`trainable` runs these curves as a Ray Tune function trainable; :func:`sweep_trainable`
has the signature the sweep runner takes instead of the STAS trainer (``run_sweep(spec,
trainable=...)``): ``h`` and ``q`` come from a hash of the trial's sampled keys, so any
search-space file drives it, and its last epoch reports an ``epsilon_table`` like a real trial.
"""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np

from . import checkpoints


def curve(h: float, q: float, epoch: int, *, seed: int = 0, noise: float = 0.0) -> dict:
    """``{"accuracy", "energy_mj"}`` of a trial after ``epoch`` epochs (1-based)."""
    a_max = 0.95 - 0.25 * h * h - 0.35 * (1.0 - q)
    tau = 1.5 + 2.0 * h
    acc = a_max * (1.0 - math.exp(-epoch / tau))
    energy = (1.0 - 0.75 * h) * (1.0 + 0.3 * math.exp(-epoch / 2.0))
    if noise:
        rng = np.random.default_rng([int(seed), int(epoch), int(1e6 * h) % 10**6, int(1e6 * q) % 10**6])
        acc += noise * rng.standard_normal()
        energy *= 1.0 + noise * rng.standard_normal()
    return {"accuracy": float(acc), "energy_mj": float(energy)}


def _checkpointed_epoch() -> int:
    """The last epoch in the trial's Tune checkpoint (0 for a fresh trial)."""
    with tempfile.TemporaryDirectory() as d:
        return int(Path(d, "epoch").read_text()) if checkpoints.resume_files(d) else 0


def _report(metrics: dict, epoch: int, checkpoint: bool = True) -> None:
    """``tune.report``, with ``checkpoint`` a checkpoint that holds only the epoch (the curves need no
    weights)."""
    if not checkpoint:
        checkpoints.report(metrics, {}, checkpoint=False)
        return
    with tempfile.TemporaryDirectory() as d:
        Path(d, "epoch").write_text(str(epoch))
        checkpoints.report(metrics, {"epoch": Path(d, "epoch")})


def trainable(config: dict) -> None:
    """Ray Tune function trainable over :func:`curve`; config keys ``h``, ``q`` and optional
    ``seed``, ``noise``, ``epochs`` (default 8), ``nan_energy`` (report NaN energy),
    ``sleep`` (seconds per epoch)."""
    epochs = int(config.get("epochs", 8))
    for epoch in range(_checkpointed_epoch() + 1, epochs + 1):
        m = curve(config["h"], config["q"], epoch, seed=config.get("seed", 0), noise=config.get("noise", 0.0))
        if config.get("nan_energy"):
            m["energy_mj"] = float("nan")
        if config.get("sleep"):
            time.sleep(config["sleep"])
        m["full_budget"] = epoch == epochs
        _report(m, epoch)


def knobs(config: dict) -> tuple[float, float]:
    """``(h, q)`` of a trial from its sampled keys: reproducible, spread over ``[0, 1]`` x ``[0.5, 1]``."""
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).digest()
    u, v = int.from_bytes(digest[:8], "big") / 2**64, int.from_bytes(digest[8:16], "big") / 2**64
    return u, 1.0 - 0.5 * v * v


def sweep_trainable(config: dict, *, epochs: int, epsilons: list[float], sleep: float = 0.0,
                    epoch_log: str | None = None, checkpoint_period_s: float = 0.0) -> None:
    """A sweep trial on the synthetic curves: reports ``epoch``, ``accuracy`` (in %) and ``energy_mj``
    every epoch, with a checkpoint as the real trial takes them (``checkpoint_period_s``, see
    :class:`.checkpoints.CheckpointClock`), continues from its checkpoint, and at ``epochs`` adds
    ``full_budget`` and an ``epsilon_table`` (a larger epsilon: energy down, accuracy slightly down).
    ``sleep`` seconds per epoch; ``epoch_log``: a folder where every epoch run appends a JSON line
    to ``<trial id>.jsonl`` (what a test counts to see no epoch ran twice)."""
    from ray import tune

    h, q = knobs(config)
    trial_id = tune.get_context().get_trial_id()
    clock = checkpoints.CheckpointClock(checkpoint_period_s)
    for epoch in range(_checkpointed_epoch() + 1, epochs + 1):
        if sleep:
            time.sleep(sleep)
        m = curve(h, q, epoch)
        report = {"epoch": epoch, "accuracy": 100.0 * m["accuracy"], "energy_mj": m["energy_mj"],
                  "full_budget": epoch == epochs}
        if epoch == epochs:
            report["epsilon_table"] = json.dumps([
                {"epsilon": e, "accuracy": 100.0 * (m["accuracy"] - 0.1 * e * e), "energy_mj": m["energy_mj"] * (1 - e / 2)}
                for e in epsilons])
        if epoch_log:
            with open(f"{epoch_log}/{trial_id}.jsonl", "a") as f:
                f.write(json.dumps({"epoch": epoch, "time": time.time(),
                                    **{k: report[k] for k in ("accuracy", "energy_mj")}}) + "\n")
        _report(report, epoch, clock.due(epoch == epochs))
