"""Checkpoints: written atomically, with a SHA-256 of their contents, read with ``weights_only=True``.

A checkpoint is a plain dict of tensors and Python primitives::

    {"format": "stas-sweep/2", "sha256": hex digest, "model_args": {...create_model kwargs...},
     "model": state_dict, "optimizer": ..., "scheduler": ..., "scaler": ..., "sml": ...,
     "epoch": int (completed), "rng": {...}, "config": {...}, "history": [...per-epoch metrics...]}

so that ``stas-sweep eval`` can rebuild the model from the file alone. ``sha256`` is
:func:`state_digest` of everything else in the dict (every tensor's dtype, shape and bytes,
every other value's ``repr``), so a file whose bytes changed after it was written (one flipped
bit in a weight) is refused on loading. Files of format ``stas-sweep/1`` (written before the
digest existed) load without the check.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import random
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError

FORMAT = "stas-sweep/2"
FORMATS = ("stas-sweep/1", FORMAT)  # readable; /1 has no digest


class CheckpointError(UserError, ValueError):
    """A checkpoint that is missing, unreadable, changed since it was written or does not fit the model."""


def state_digest(state: dict) -> str:
    """SHA-256 over ``state`` without its ``sha256`` entry: keys in sorted order, tensors by
    dtype, shape and bytes (on the CPU, so a checkpoint loaded onto a GPU gives the same digest),
    any other value by its ``repr``."""
    h = hashlib.sha256()

    def feed(x) -> None:
        if isinstance(x, torch.Tensor):
            t = x.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            if t.numel():
                h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(x, dict):
            h.update(b"{")
            for k in sorted(x, key=repr):
                if x is state and k == "sha256":
                    continue
                h.update(repr(k).encode() + b":")
                feed(x[k])
            h.update(b"}")
        elif isinstance(x, (list, tuple)):
            h.update(b"[" if isinstance(x, list) else b"(")
            for v in x:
                feed(v)
            h.update(b"]")
        else:
            h.update(repr(x).encode() + b",")

    feed(state)
    return h.hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_checkpoint(state: dict, path: str | Path) -> Path:
    """Write ``state`` (with its digest) to ``path`` atomically: a temporary file in the same
    folder, then rename. The file gets the permissions of any new file (0666 less the umask),
    as ``best.pt`` copied from it does."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    full = {**state, "format": FORMAT}
    full["sha256"] = state_digest(full)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600
        with os.fdopen(fd, "wb") as f:
            torch.save(full, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder, not a checkpoint file (e.g. {path / 'checkpoints' / 'last.pt'})")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, KeyError, AttributeError,
            TypeError, IndexError, UnicodeDecodeError) as e:
        # a torch/zip/pickle error on a damaged file; the message can be long: the first line only
        detail = (str(e).splitlines() or [""])[0][:200]
        raise CheckpointError(f"{path}: not a readable stas-sweep checkpoint ({type(e).__name__}: {detail})") from None
    if not isinstance(state, dict) or state.get("format") not in FORMATS or "model" not in state:
        raise CheckpointError(f"{path}: not a stas-sweep checkpoint (expected format {FORMAT!r} with a 'model' entry)")
    if "sha256" in state or state["format"] != "stas-sweep/1":
        if state.get("sha256") != state_digest(state):
            raise CheckpointError(f"{path}: its contents changed after it was written (SHA-256 of its tensors does "
                                  f"not match the one recorded); refusing it. Use another copy or retrain.")
    return state


def load_model_weights(model: torch.nn.Module, state_dict: dict, source: str) -> None:
    """Load weights strictly, turning mismatches into one readable error."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shapes = [k for k in own if k in state_dict and tuple(own[k].shape) != tuple(state_dict[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if shapes:
            k = shapes[0]
            parts.append(f"{len(shapes)} of another shape (e.g. {k}: checkpoint "
                         f"{tuple(state_dict[k].shape)}, model {tuple(own[k].shape)})")
        raise CheckpointError(f"{source}: the weights do not fit this model: " + "; ".join(parts))
    model.load_state_dict(state_dict)


def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(_tuples(state["python"]))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(x):
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x
