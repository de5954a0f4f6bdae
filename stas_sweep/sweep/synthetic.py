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
"""

from __future__ import annotations

import math
import time

import numpy as np


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


def trainable(config: dict) -> None:
    """Ray Tune function trainable over :func:`curve`; config keys ``h``, ``q`` and optional
    ``seed``, ``noise``, ``epochs`` (default 8), ``nan_energy`` (report NaN energy),
    ``sleep`` (seconds per epoch)."""
    from ray import tune

    epochs = int(config.get("epochs", 8))
    start = 0
    ck = tune.get_checkpoint()
    if ck is not None:
        with ck.as_directory() as d:
            start = int(open(f"{d}/epoch").read())
    for epoch in range(start + 1, epochs + 1):
        m = curve(config["h"], config["q"], epoch, seed=config.get("seed", 0), noise=config.get("noise", 0.0))
        if config.get("nan_energy"):
            m["energy_mj"] = float("nan")
        if config.get("sleep"):
            time.sleep(config["sleep"])
        m["full_budget"] = epoch == epochs
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            open(f"{d}/epoch", "w").write(str(epoch))
            tune.report(m, checkpoint=tune.Checkpoint.from_directory(d))
