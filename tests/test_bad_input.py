"""A corpus of bad input, each case through ``stas_sweep.cli.main(argv)`` in-process.

Every case asserts: exit code 2, no traceback in the output, the message names the key, value
or file (the words in ``expect``), the message stays short (an echoed value is capped), and no
file under the case's folder changed (hashed before and after; the run folder ``out/`` must not
appear unless the case says ``makes_out``).

To add a case, append a :class:`Case` to ``CASES``: ``files`` maps paths (relative to the case
folder) to text, bytes, a mapping (dumped as YAML) or a callable ``f(path)`` that writes it;
``argv`` may use ``{d}`` for the case folder and ``{ckpt}`` for a tiny valid checkpoint (kept
outside the folder); ``extra={"store": True}`` copies the :func:`sweep_store` database into the
folder as ``mlflow.db`` (so an unchanged file means nothing was registered) and fills ``{point}``
and ``{sweep_run}`` with its run ids; ``hold`` is a context manager factory ``f(folder)`` kept open around the
call (a lock, a busy port). ``STAS_SHOW_MESSAGES=1 pytest -s tests/test_bad_input.py`` prints each
case's message. The case of a locked store waits 1 s for it, not MLflow's 20 s (the
``short_sqlite_busy_timeout`` fixture).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import os
import socket
import sqlite3
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import yaml

from stas_sweep.cli import main

TINY = {  # as tests/conftest.py's TINY, one epoch, no MLflow
    "model": {"name": "spikingformer-2-32", "timesteps": 2, "stem": "isps"},
    "data": {"name": "digits", "img_size": 16},
    "optim": {"lr": 5e-3, "weight_decay": 0.01},
    "epochs": 1, "batch_size": 32, "seed": 0, "device": "cpu", "tracking": {"enabled": False},
}


def tiny(**over) -> dict:
    raw = copy.deepcopy(TINY)
    for k, v in over.items():
        raw[k] = v
    return raw


@dataclass
class Case:
    name: str
    files: dict[str, Any]
    argv: list[str]
    expect: list[str]
    hold: Callable | None = None       # f(folder) -> context manager held during the call
    makes_out: bool = False            # the failure comes after out/ (config.yaml) was written
    extra: dict = field(default_factory=dict)


# -- builders of bad files -----------------------------------------------------------------------
def stored_plan(path: Path) -> None:
    """The plan a sweep of ``orig.yaml`` (beside it) stored when it started."""
    from stas_sweep.sweep.space import load_spec
    from stas_sweep.sweep.storage import save_plan

    save_plan(path.parent, load_spec(path.parents[2] / "orig.yaml"))


def live_lock(path: Path) -> None:
    """The lock of a driver that runs: this process's parent, on this host."""
    import json

    path.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getppid(), "started": "earlier"}))


def alias_bomb(levels: int = 9, width: int = 9, top: str = "") -> str:
    """A "billion laughs" document: each anchor is a list of ``width`` aliases of the one before."""
    lines = [top, 'l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]")
    return "\n".join(lines) + "\n"


def train_bomb() -> str:
    """A training config whose data.recipe carries the bomb (the keys are valid until expanded)."""
    inner = ["a0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    for i in range(1, 8):
        inner.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]")
    return yaml.safe_dump(TINY) + "bomb:\n" + "".join(f"  {line}\n" for line in inner)


def space_file(base: str | dict = "base.yaml", **over) -> dict:
    raw = {"name": "bad", "base": base, "space": {"halting.beta": {"uniform": [-8.0, -4.0]}},
           "objectives": {"accuracy": "max", "energy_mj": "min"}, "reference": {"energy_mj": 1.0},
           "storage_path": "results"}
    raw.update(over)
    return raw


def png(path: Path) -> None:
    from PIL import Image

    Image.fromarray(np.full((8, 8, 3), 128, np.uint8)).save(path)


def truncated_png(path: Path) -> None:
    png(path)
    path.write_bytes(path.read_bytes()[:40])


def imagenet(bad: Callable | bytes) -> dict:
    files = {f"im/{split}/a/{i}.png": png for split in ("train", "val") for i in range(2)}
    files["im/train/a/1.png"] = bad
    return files


def dvs_events(corrupt: bytes) -> dict:
    classes = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
    rng = np.random.default_rng(0)

    def events(path: Path) -> None:
        n = 12
        np.savez(path, t=np.sort(rng.integers(0, 10_000, n)), x=rng.integers(0, 128, n), y=rng.integers(0, 128, n),
                 p=rng.integers(0, 2, n))

    files = {f"dvs/events_np/{c}/cifar10_{c}_{i}.npz": events for c in classes for i in range(2)}
    files["dvs/events_np/cat/cifar10_cat_1.npz"] = corrupt
    return files


@contextlib.contextmanager
def locked_db(folder: Path):
    """``folder/mlflow.db`` held by another connection in an exclusive transaction."""
    import mlflow

    mlflow.MlflowClient(f"sqlite:///{folder / 'mlflow.db'}").search_experiments()  # a real store first
    con = sqlite3.connect(folder / "mlflow.db", isolation_level=None)
    con.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        con.execute("ROLLBACK")
        con.close()


@contextlib.contextmanager
def busy_port(folder: Path):
    with socket.create_server(("127.0.0.1", 0)) as s:
        (folder / "port").write_text(str(s.getsockname()[1]))
        yield


def _flip(data: bytes) -> bytes:
    """One bit flipped in the middle of the largest tensor the checkpoint stores (torch's zip
    format: a byte of zip padding or metadata may change nothing that is read)."""
    import io
    import struct
    import zipfile

    with zipfile.ZipFile(io.BytesIO(data)) as z:
        big = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    name_len, extra_len = struct.unpack("<HH", data[big.header_offset + 26:big.header_offset + 30])
    start = big.header_offset + 30 + name_len + extra_len
    b = bytearray(data)
    b[start + big.file_size // 2] ^= 0x01
    return bytes(b)


TRAIN = ["train", "{d}/c.yaml", "--output-dir", "{d}/out", "--no-progress"]
CORRUPT_DB = b"SQLite format 3\x00" + b"\x13" * 4000
STORE = "sqlite:///{d}/mlflow.db"

CASES = [
    # -- YAML: alias amplification, recursion, unhashable keys, syntax --------------------------------
    Case("train_alias_bomb", {"c.yaml": train_bomb()}, TRAIN, ["c.yaml", "refused", "aliases"]),
    Case("validate_alias_bomb", {"s.yaml": alias_bomb(top="name: x")}, ["validate", "{d}/s.yaml"],
         ["s.yaml", "refused", "aliases"]),
    Case("base_alias_bomb", {"s.yaml": space_file(), "base.yaml": alias_bomb()}, ["validate", "{d}/s.yaml"],
         ["base.yaml", "refused"]),
    Case("train_recursive_alias", {"c.yaml": yaml.safe_dump(TINY) + "x: &r [1, *r]\n"}, TRAIN,
         ["c.yaml", "recursive"]),
    Case("validate_recursive_alias", {"s.yaml": "name: &n {a: *n}\n"}, ["validate", "{d}/s.yaml"],
         ["s.yaml", "recursive"]),
    Case("train_unhashable_key", {"c.yaml": yaml.safe_dump(TINY) + "? [a, b]\n: 1\n"}, TRAIN,
         ["c.yaml", "key must be a plain value", "line"]),
    Case("train_unhashable_mapping_key", {"c.yaml": yaml.safe_dump(TINY) + "? {a: 1}\n: 1\n"}, TRAIN,
         ["c.yaml", "not a mapping"]),
    Case("validate_unhashable_key", {"s.yaml": "? [1]\n: x\n"}, ["validate", "{d}/s.yaml"], ["s.yaml", "plain value"]),
    Case("train_unclosed_list", {"c.yaml": "epochs: [3\n"}, TRAIN, ["c.yaml", "not valid YAML", "line 2"]),
    Case("train_tab_indent", {"c.yaml": "model:\n\tname: x\n"}, TRAIN, ["c.yaml", "not valid YAML"]),
    Case("train_python_tag", {"c.yaml": "epochs: !!python/object/apply:os.system ['touch pwned']\n"}, TRAIN,
         ["c.yaml", "python/object/apply"]),
    Case("train_binary_config", {"c.yaml": b"\xff\xfe\x00\x01garbage"}, TRAIN, ["c.yaml", "UTF-8"]),
    Case("train_config_is_folder", {"c.yaml/x": "1"}, TRAIN, ["c.yaml"]),
    Case("train_config_missing", {}, TRAIN, ["c.yaml", "no such configuration file"]),
    Case("train_nested_too_deeply", {"c.yaml": "a: " + "[" * 30000 + "]" * 30000 + "\n"}, TRAIN,
         ["c.yaml", "nested too deeply"]),
    Case("train_huge_value_is_cut", {"c.yaml": tiny(model={"name": "x" * 200_000})}, TRAIN,
         ["c.yaml", "model.name", "message cut"]),
    Case("validate_base_yaml_error", {"s.yaml": space_file(), "base.yaml": "epochs: [1\n"},
         ["validate", "{d}/s.yaml"], ["base.yaml", "not valid YAML"]),
    Case("validate_base_duplicate_key", {"s.yaml": space_file(), "base.yaml": "epochs: 1\nepochs: 2\n"},
         ["validate", "{d}/s.yaml"], ["base.yaml", "'epochs' is given twice"]),
    # -- --set ----------------------------------------------------------------------------------------
    Case("set_malformed_yaml", {"c.yaml": TINY}, TRAIN + ["--set", "epochs=[3"], ["--set", "epochs=[3", "not valid YAML"]),
    Case("set_bad_flow_mapping", {"c.yaml": TINY}, TRAIN + ["--set", "data.recipe={a: b: c}"],
         ["--set", "data.recipe", "not valid YAML"]),
    Case("set_unhashable_key", {"c.yaml": TINY}, TRAIN + ["--set", "data.recipe={[1]: 2}"],
         ["--set", "plain value"]),
    Case("set_alias_bomb", {"c.yaml": TINY},
         TRAIN + ["--set", "data.recipe={a: &a [1,1,1,1,1,1,1,1,1,1], b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a], "
                           "c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b], d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c], "
                           "e: [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]}"], ["--set", "aliases"]),
    Case("set_without_value_sign", {"c.yaml": TINY}, TRAIN + ["--set", "epochs"], ["--set 'epochs'", "KEY=VALUE"]),
    Case("set_key_into_a_number", {"c.yaml": TINY}, TRAIN + ["--set", "epochs.x=1"], ["c.yaml", "epochs"]),
    # -- output folders -------------------------------------------------------------------------------
    Case("output_dir_is_a_file", {"c.yaml": TINY, "out": "a file"}, TRAIN, ["--output-dir", "is a file"],
         makes_out=True),
    Case("output_dir_under_a_file", {"c.yaml": TINY, "f": "a file"},
         ["train", "{d}/c.yaml", "--output-dir", "{d}/f/run", "--no-progress"], ["--output-dir", "f/run", "is a file"]),
    Case("resume_without_a_run", {"c.yaml": TINY}, TRAIN + ["--resume"], ["--resume", "no checkpoint"],
         makes_out=False),
    # -- data -------------------------------------------------------------------------------------------
    Case("data_unknown_name", {"c.yaml": tiny(data={"name": "mnist"})}, TRAIN, ["unknown data set 'mnist'"]),
    Case("data_unknown_recipe_key", {"c.yaml": tiny(data={"name": "digits", "img_size": 16, "recipe": {"flip": 1}})},
         TRAIN, ["unknown recipe key", "flip"]),
    Case("data_recipe_value_not_a_number", {"c.yaml": TINY}, TRAIN + ["--set", "data.recipe={translate: abc}"],
         ["data.recipe.translate", "'abc'", "finite number"]),
    Case("data_recipe_probability_above_1", {"c.yaml": TINY}, TRAIN + ["--set", "data.recipe={hflip: 2}"],
         ["data.recipe.hflip", "[0, 1]"]),
    Case("data_recipe_nan", {"c.yaml": TINY}, TRAIN + ["--set", "data.recipe={translate: .nan}"],
         ["data.recipe.translate", "nan"]),
    Case("output_dir_empty", {"c.yaml": TINY}, ["train", "{d}/c.yaml", "--output-dir", "", "--no-progress"],
         ["--output-dir ''"]),
    Case("data_batch_larger_than_set", {"c.yaml": tiny(batch_size=5000)}, TRAIN, ["batch_size=5000"]),
    Case("data_img_size_stem_cannot_tokenise", {"c.yaml": tiny(data={"name": "digits", "img_size": 30})}, TRAIN,
         ["c.yaml", "data.img_size=30", "multiple of 4"]),
    Case("image_corrupt", {"c.yaml": tiny(data={"name": "imagenet", "root": "{d}/im", "img_size": 16}, batch_size=2),
                           **imagenet(b"\x89PNG not really")}, TRAIN, ["1.png", "cannot be read"], makes_out=True),
    Case("image_truncated", {"c.yaml": tiny(data={"name": "imagenet", "root": "{d}/im", "img_size": 16}, batch_size=2),
                             **imagenet(truncated_png)}, TRAIN, ["1.png", "cannot be read"], makes_out=True),
    Case("dvs_corrupt_npz", {"c.yaml": tiny(data={"name": "cifar10-dvs", "root": "{d}/dvs", "img_size": 16},
                                            batch_size=4), **dvs_events(b"PK\x03\x04 truncated zip")},
         TRAIN, ["cifar10_cat_1.npz", "cannot be read", "removed"]),
    # -- checkpoints --------------------------------------------------------------------------------
    Case("eval_flipped_byte", {"x.pt": lambda p, ckpt: p.write_bytes(_flip(Path(ckpt).read_bytes()))},
         ["eval", "{d}/x.pt"], ["x.pt", "changed after it was written"]),
    Case("eval_truncated_checkpoint", {"x.pt": lambda p, ckpt: p.write_bytes(Path(ckpt).read_bytes()[:5000])},
         ["eval", "{d}/x.pt"], ["x.pt", "not a readable"]),
    Case("eval_checkpoint_is_folder", {"x.pt/a": "1"}, ["eval", "{d}/x.pt"], ["x.pt", "is a folder"]),
    Case("eval_checkpoint_missing", {}, ["eval", "{d}/x.pt"], ["x.pt", "no such checkpoint"]),
    Case("eval_text_as_checkpoint", {"x.pt": "epochs: 3\n"}, ["eval", "{d}/x.pt"], ["x.pt", "not a readable"]),
    Case("init_from_flipped_byte",
         {"x.pt": lambda p, ckpt: p.write_bytes(_flip(Path(ckpt).read_bytes())),
          "c.yaml": tiny(halting={}, init_from="{d}/x.pt")}, TRAIN, ["x.pt", "changed after it was written"]),
    Case("init_from_folder", {"x.pt/a": "1", "c.yaml": tiny(halting={}, init_from="{d}/x.pt")}, TRAIN,
         ["x.pt", "is a folder"]),
    # -- eval flags -------------------------------------------------------------------------------------
    Case("eval_device_bogus", {}, ["eval", "{ckpt}", "--device", "bogus"], ["--device 'bogus'", "auto, cpu"]),
    Case("eval_device_bad_index", {}, ["eval", "{ckpt}", "--device", "cuda:x"], ["--device 'cuda:x'"]),
    Case("eval_device_cuda_on_cpu", {}, ["eval", "{ckpt}", "--device", "cuda:7"], ["--device 'cuda:7'"],
         extra={"cpu_only": True}),
    Case("eval_halting_maps_is_a_file", {"maps": "a file"}, ["eval", "{ckpt}", "--halting-maps", "{d}/maps"],
         ["--halting-maps", "is a file"]),
    Case("eval_halting_maps_under_a_file", {"maps": "a file"}, ["eval", "{ckpt}", "--halting-maps", "{d}/maps/x"],
         ["--halting-maps", "is a file"]),
    Case("eval_bad_epsilons", {}, ["eval", "{ckpt}", "--epsilons", "0,abc"], ["--epsilons", "abc"]),
    # -- command-line flags ---------------------------------------------------------------------------
    Case("ui_port_too_high", {}, ["ui", "--port", "99999"], ["--port 99999", "1 to 65535"]),
    Case("ui_port_zero", {}, ["ui", "--port", "0"], ["--port 0"]),
    Case("ui_workers_zero", {}, ["ui", "--workers", "0"], ["--workers 0", "1 to 64"]),
    Case("ui_port_busy", {}, ["ui", "--port", "{port}"], ["--port", "cannot listen"], hold=busy_port),
    Case("models_img_size", {}, ["models", "--img-size", "30", "--pattern", "spikformer-1-16"], ["img_size=30"]),
    Case("energy_batch_zero", {}, ["energy", "spikformer-1-16", "--input", "random", "--batch", "0"],
         ["--batch", "must be at least 1"]),
    Case("energy_in_channels_zero", {}, ["energy", "spikformer-1-16", "--input", "random", "--in-channels", "0"],
         ["--in-channels"]),
    Case("energy_alpha_nan", {}, ["energy", "spikformer-1-16", "--input", "random", "--alpha", "nan"],
         ["--alpha", "not a finite number"]),
    Case("eval_batch_size_zero", {}, ["eval", "{ckpt}", "--batch-size", "0"], ["--batch-size"]),
    Case("train_device_cuda_on_cpu", {"c.yaml": tiny(device="cuda:0")}, TRAIN, ["c.yaml", "device", "cuda:0"],
         extra={"cpu_only": True}),
    Case("train_sml_block_outside_model", {"c.yaml": tiny(sml={"enabled": True, "blocks": [7]})}, TRAIN,
         ["c.yaml", "sml.blocks is [7]"]),
    Case("threads_zero", {"c.yaml": TINY}, TRAIN + ["--threads", "0"], ["--threads 0"]),
    # -- MLflow stores ----------------------------------------------------------------------------------
    Case("train_corrupt_mlflow_db", {"c.yaml": tiny(tracking={"experiment": "x"}), "mlflow.db": CORRUPT_DB},
         TRAIN + ["--tracking-uri", "sqlite:///{d}/mlflow.db"], ["mlflow.db", "cannot be used"]),
    Case("run_corrupt_mlflow_db", {"s.yaml": space_file(), "base.yaml": tiny(halting={}), "mlflow.db": CORRUPT_DB},
         ["run", "{d}/s.yaml", "--tracking-uri", "sqlite:///{d}/mlflow.db"], ["mlflow.db", "cannot be used"]),
    Case("pareto_corrupt_mlflow_db", {"mlflow.db": CORRUPT_DB}, ["pareto", "--tracking-uri", "sqlite:///{d}/mlflow.db"],
         ["mlflow.db", "cannot be used"]),
    Case("pareto_not_a_database", {"mlflow.db": b"not sqlite at all" * 100},
         ["pareto", "--tracking-uri", "sqlite:///{d}/mlflow.db"], ["mlflow.db", "cannot be used"]),
    Case("train_locked_mlflow_db", {"c.yaml": tiny(tracking={"experiment": "x"})},
         TRAIN + ["--tracking-uri", "sqlite:///{d}/mlflow.db"], ["mlflow.db", "locked"], hold=locked_db,
         extra={"short_busy_timeout": True}),
    # -- numbers a training config must refuse (issue 11 item 4), named by key and value -------------------
    Case("train_grad_clip_negative", {"c.yaml": tiny(optim={"lr": 5e-3, "grad_clip": -1.0})}, TRAIN,
         ["c.yaml", "optim.grad_clip must be > 0", "-1.0"]),
    Case("train_alpha_nan", {"c.yaml": "halting: {alpha: .nan}\n" + yaml.safe_dump(TINY)}, TRAIN,
         ["c.yaml", "halting.alpha must be a finite number", "nan"]),
    Case("train_beta_inf", {"c.yaml": "halting: {beta: -.inf}\n" + yaml.safe_dump(TINY)}, TRAIN,
         ["c.yaml", "halting.beta must be a finite number", "-inf"]),
    Case("train_lr_inf", {"c.yaml": tiny(optim={"lr": float("inf")})}, TRAIN, ["c.yaml", "optim.lr", "finite", "inf"]),
    Case("train_lr_zero", {"c.yaml": tiny(optim={"lr": 0.0})}, TRAIN, ["c.yaml", "optim.lr must be > 0"]),
    Case("train_weight_decay_nan", {"c.yaml": tiny(optim={"weight_decay": float("nan")})}, TRAIN,
         ["c.yaml", "optim.weight_decay must be a finite number"]),
    Case("train_delta_p_negative", {"c.yaml": tiny(halting={"delta_p": -0.1})}, TRAIN,
         ["c.yaml", "halting.delta_p must be >= 0", "-0.1"]),
    Case("train_epsilon_one", {"c.yaml": tiny(halting={"epsilon": 1.0})}, TRAIN, ["c.yaml", "halting.epsilon must be < 1"]),
    Case("train_sml_alpha_nan", {"c.yaml": tiny(sml={"enabled": True, "alpha": float("nan")})}, TRAIN,
         ["c.yaml", "sml.alpha must be a finite number"]),
    Case("train_energy_batches_zero", {"c.yaml": tiny(energy_batches=0)}, TRAIN, ["c.yaml", "energy_batches must be >= 1"]),
    Case("train_img_size_zero", {"c.yaml": tiny(data={"name": "digits", "img_size": 0})}, TRAIN,
         ["c.yaml", "data.img_size must be >= 1", "0"]),
    Case("train_img_size_huge", {"c.yaml": tiny(data={"name": "digits", "img_size": 100_000})}, TRAIN,
         ["c.yaml", "data.img_size must be <= 1024"]),
    Case("train_num_classes_zero", {"c.yaml": tiny(model={**TINY["model"], "num_classes": 0})}, TRAIN,
         ["c.yaml", "model.num_classes must be >= 1"]),
    Case("train_num_classes_below_data", {"c.yaml": tiny(model={**TINY["model"], "num_classes": 5})}, TRAIN,
         ["c.yaml", "model.num_classes is 5 but digits has 10 classes"]),
    Case("train_warmup_negative", {"c.yaml": tiny(optim={"lr": 5e-3, "warmup_epochs": -2})}, TRAIN,
         ["c.yaml", "optim.warmup_epochs must be >= 0", "-2"]),
    Case("train_eval_epsilons_empty", {"c.yaml": tiny(eval_epsilons=[])}, TRAIN, ["c.yaml", "eval_epsilons must not be empty"]),
    Case("train_eval_epsilon_out_of_range", {"c.yaml": tiny(eval_epsilons=[0.0, 2.0])}, TRAIN,
         ["c.yaml", "eval_epsilons[1] must be < 1", "2.0"]),
    Case("train_empty_config", {"c.yaml": ""}, TRAIN, ["c.yaml", "is empty"]),
    Case("train_comment_only_config", {"c.yaml": "# nothing here\n"}, TRAIN, ["c.yaml", "is empty"]),
    Case("train_duplicate_key", {"c.yaml": yaml.safe_dump(TINY) + "epochs: 4\n"}, TRAIN, ["c.yaml", "'epochs' is given twice"]),
    Case("train_timesteps_huge", {"c.yaml": tiny(model={**TINY["model"], "timesteps": 10_000})}, TRAIN,
         ["c.yaml", "model.timesteps must be <= 64"]),
    Case("train_batch_size_huge", {"c.yaml": tiny(batch_size=10**9)}, TRAIN, ["c.yaml", "batch_size must be <= 65536"]),
    Case("train_seed_64_bit", {"c.yaml": tiny(seed=2**40)}, TRAIN, ["c.yaml", "seed must be <= 4294967295"]),
    Case("train_tracking_uri_shell", {"c.yaml": tiny(tracking={"uri": "http://h:5000;rm -rf ~"})}, TRAIN,
         ["c.yaml", "tracking.uri", "may not contain"]),
    Case("train_experiment_quote", {"c.yaml": tiny(tracking={"experiment": "a' OR '1'='1"})}, TRAIN,
         ["c.yaml", "tracking.experiment"]),
    Case("set_nan", {"c.yaml": TINY}, TRAIN + ["--set", "halting.alpha=.nan"], ["halting.alpha must be a finite number"]),
    # -- search-space files: what Tune or Optuna would reject later (item 5; more in test_sweep_space.py) ----
    Case("validate_partial_point", {"s.yaml": space_file(space={"halting.beta": {"uniform": [-8.0, -4.0]},
                                                              "halting.alpha": {"uniform": [1.0, 6.0]}},
                                                       search={"points_to_evaluate": [{"halting.alpha": 5.0}]}),
                                    "base.yaml": TINY}, ["validate", "{d}/s.yaml"],
         ["s.yaml", "points_to_evaluate[0] misses halting.beta"]),
    Case("validate_point_outside_choice", {"s.yaml": space_file(space={"optim.lr": {"choice": [1e-3, 5e-3]}},
                                                              search={"points_to_evaluate": [{"optim.lr": 0.1}]}),
                                           "base.yaml": TINY}, ["validate", "{d}/s.yaml"],
         ["s.yaml", "points_to_evaluate[0].optim.lr: 0.1 is not a value of space.optim.lr"]),
    Case("validate_seed_64_bit", {"s.yaml": space_file(search={"seed": 2**32}), "base.yaml": TINY},
         ["validate", "{d}/s.yaml"], ["s.yaml", "search.seed must be <= 4294967295"]),
    Case("validate_searched_model_name", {"s.yaml": space_file(space={"model.name": {"fixed": "spikformer-2-32"}}),
                                          "base.yaml": TINY}, ["validate", "{d}/s.yaml"],
         ["s.yaml", "space.model.name cannot be searched"]),
    Case("validate_stage1_model_name", {"s.yaml": space_file(stage1={"model": {"name": "spikformer-2-32"}}),
                                        "base.yaml": TINY}, ["validate", "{d}/s.yaml"],
         ["s.yaml", "stage1.model.name cannot be overridden"]),
    Case("validate_searched_epochs", {"s.yaml": space_file(space={"epochs": {"int": [1, 4]}}), "base.yaml": TINY},
         ["validate", "{d}/s.yaml"], ["s.yaml", "space.epochs cannot be searched"]),
    Case("validate_name_with_quote", {"s.yaml": space_file(name="x'y"), "base.yaml": TINY}, ["validate", "{d}/s.yaml"],
         ["s.yaml", "name: must be"]),
    Case("validate_name_dotdot", {"s.yaml": space_file(name=".."), "base.yaml": TINY}, ["validate", "{d}/s.yaml"],
         ["s.yaml", "name: must be", "'..'"]),
    Case("validate_experiment_not_a_string", {"s.yaml": space_file(mlflow={"experiment": ["x"]}), "base.yaml": TINY},
         ["validate", "{d}/s.yaml"], ["s.yaml", "mlflow.experiment must be a string"]),
    Case("validate_tracking_uri_not_a_string", {"s.yaml": space_file(mlflow={"tracking_uri": 5}), "base.yaml": TINY},
         ["validate", "{d}/s.yaml"], ["s.yaml", "mlflow.tracking_uri must be a string"]),
    Case("run_tracking_uri_injection", {"s.yaml": space_file(mlflow={"tracking_uri": "http://h:5000; touch x #"}),
                                        "base.yaml": TINY}, ["run", "{d}/s.yaml"], ["s.yaml", "may not contain"]),
    Case("validate_overflowing_bounds", {"s.yaml": space_file(space={"halting.beta": {"uniform": [-1e308, 1e308]}}),
                                         "base.yaml": TINY}, ["validate", "{d}/s.yaml"], ["s.yaml", "overflows"]),
    Case("validate_empty_file", {"s.yaml": "# nothing\n"}, ["validate", "{d}/s.yaml"], ["s.yaml", "is empty"]),
    Case("submit_tracking_uri_flag_injection", {"s.yaml": space_file(), "base.yaml": TINY},
         ["submit", "{d}/s.yaml", "--address", "http://127.0.0.1:1", "--tracking-uri", "http://h:5000;touch x"],
         ["--tracking-uri", "may not contain"]),
    Case("train_tracking_uri_flag_scheme", {"c.yaml": TINY}, TRAIN + ["--tracking-uri", "gopher://h/x"],
         ["--tracking-uri", "unknown scheme 'gopher'"]),
    # a sweep's checks of the data and the machine run before Ray and before MLflow: no mlflow.db,
    # no parent run, no storage folder; the message is one line (layout and remedy included)
    Case("run_missing_data_set", {"s.yaml": space_file(), "base.yaml": tiny(data={"name": "cifar10", "root": "{d}/nodata"})},
         ["run", "{d}/s.yaml"], ["cifar10 data set not found", "{d}/nodata", "cifar-10-batches-py", "download: true"],
         extra={"one_line": True}),
    Case("run_missing_stage1_data_set", {"s.yaml": space_file(stage1={"config": "s1.yaml"}),
                                         "s1.yaml": tiny(data={"name": "cifar10", "root": "{d}/nodata", "img_size": 16},
                                                         halting=None),
                                         "base.yaml": tiny(data={"name": "cifar10", "root": "{d}/data", "img_size": 16,
                                                                 "download": True})},
         ["run", "{d}/s.yaml"], ["cifar10 data set not found", "{d}/nodata"], extra={"one_line": True}),
    Case("run_resources_beyond_this_machine", {"s.yaml": space_file(resources={"cpu": 4096, "gpu": 0}), "base.yaml": TINY},
         ["run", "{d}/s.yaml"], ["s.yaml", "resources", "a trial needs 4096", "this machine has"],
         extra={"one_line": True}),
    Case("run_gpu_on_a_machine_without", {"s.yaml": space_file(resources={"cpu": 1, "gpu": 1}), "base.yaml": TINY},
         ["run", "{d}/s.yaml"], ["s.yaml", "GPU: a trial needs 1, this machine has 0"],
         extra={"one_line": True, "cpu_only": True}),
    Case("run_storage_not_writable", {"s.yaml": space_file(storage_path="/sys/kernel/stas-results"), "base.yaml": TINY},
         ["run", "{d}/s.yaml"], ["storage_path /sys/kernel/stas-results cannot be written"], extra={"one_line": True}),
    Case("run_storage_under_a_file", {"s.yaml": space_file(storage_path="{d}/afile/results"), "afile": "x",
                                      "base.yaml": TINY},
         ["run", "{d}/s.yaml"], ["storage_path {d}/afile/results", "is not a folder"], extra={"one_line": True}),
    Case("run_resume_after_the_space_was_edited",
         {"orig.yaml": space_file(), "base.yaml": TINY, "results/bad/tuner.pkl": b"x", "results/bad/sweep_spec.json": stored_plan,
          "s.yaml": space_file(space={"halting.beta": {"uniform": [-9.0, -4.0]}}, eval={"epsilons": [0.0, 0.3]},
                               search={"num_samples": 9})},
         ["run", "{d}/s.yaml", "--resume"],
         ["differs from the plan", "eval.epsilons", "search.num_samples", "space.halting.beta", "another name"],
         extra={"one_line": True}),
    Case("run_while_another_driver_runs_the_sweep", {"s.yaml": space_file(), "base.yaml": TINY,
                                                      "results/bad/driver.lock": live_lock},
         ["run", "{d}/s.yaml"], ["is in use by the driver PID", "one driver per sweep"], extra={"one_line": True}),
    Case("validate_stage1_config_with_halting", {"s.yaml": space_file(stage1={"config": "s1.yaml"}),
                                                 "s1.yaml": tiny(halting={"alpha": 5.0}), "base.yaml": TINY},
         ["validate", "{d}/s.yaml"], ["s.yaml", "stage1.config", "halting on"]),
    Case("validate_stage1_config_other_model", {"s.yaml": space_file(stage1={"config": "s1.yaml"}),
                                                "s1.yaml": tiny(model={"name": "spikformer-2-32", "timesteps": 2,
                                                                       "stem": "isps"}), "base.yaml": TINY},
         ["validate", "{d}/s.yaml"], ["s.yaml", "stage1.config: model.name is 'spikformer-2-32'"]),
    Case("validate_stage1_config_missing", {"s.yaml": space_file(stage1={"config": "nope.yaml"}), "base.yaml": TINY},
         ["validate", "{d}/s.yaml"], ["s.yaml", "stage1.config: no such training config", "nope.yaml"]),
    # -- picking a front point's model (a store with a sweep: sweep_store) ---------------------------
    Case("pick_unknown_run_id", {}, ["pick", "0" * 32, "--tracking-uri", STORE],
         ["no run " + "0" * 32, "mlflow.db"], extra={"store": True}),
    Case("pick_a_run_that_is_not_a_point", {}, ["pick", "{sweep_run}", "--tracking-uri", STORE],
         ["run {sweep_run}", "is not a point"], extra={"store": True}),
    Case("pick_knee_of_a_sweep_without_front", {}, ["pick", "knee", "--experiment", "bare", "--tracking-uri", STORE],
         ["'bare'", "has front points yet"], extra={"store": True}),
    Case("pick_name_mlflow_refuses", {}, ["pick", "{point}", "--name", "a/b", "--tracking-uri", STORE],
         ["--name 'a/b'", "refuses"], extra={"store": True}),
    Case("pick_unknown_objective", {}, ["pick", "best:speed", "--tracking-uri", STORE],
         ["best:speed", "accepted objectives: accuracy"], extra={"store": True}),
    Case("pick_not_a_point", {}, ["pick", "middle"], ["POINT 'middle'", "best:<objective>", "knee"]),
    Case("eval_unknown_registered_model", {}, ["eval", "models:/nope/1", "--tracking-uri", STORE],
         ["models:/nope/1", "not found", "mlflow.db"], extra={"store": True}),
    Case("eval_run_without_a_model", {}, ["eval", "runs:/{sweep_run}", "--tracking-uri", STORE],
         ["runs:/{sweep_run}", "has no logged model"], extra={"store": True}),
    Case("energy_of_a_logged_model_at_another_knob", {},
         ["energy", "runs:/{point}", "--keep-ratio", "0.5", "--tracking-uri", STORE],
         ["--keep-ratio", "is a static model"], extra={"store": True}),
]


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir")
            for p in sorted(folder.rglob("*"))}


def _fill(text: str, d: Path, ckpt: str, port: str = "", ids: dict | None = None) -> str:
    for key, value in (ids or {}).items():
        text = text.replace("{" + key + "}", value)
    return text.replace("{d}", str(d)).replace("{ckpt}", ckpt).replace("{port}", port)


def _write(folder: Path, files: dict, ckpt: str) -> None:
    for rel, content in files.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if callable(content):
            content(path, ckpt) if content.__code__.co_argcount == 2 else content(path)
        elif isinstance(content, bytes):
            path.write_bytes(content)
        elif isinstance(content, str):
            path.write_text(_fill(content, folder, ckpt))
        else:
            path.write_text(_fill(yaml.safe_dump(content), folder, ckpt))


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> str:
    """A valid checkpoint of an untrained tiny model (no training: the trainer's state, saved)."""
    from stas_sweep.train import Trainer, config_from_dict, save_checkpoint

    folder = tmp_path_factory.mktemp("ckpt")
    trainer = Trainer(config_from_dict(tiny()), folder / "run", progress=False, log=None)
    return str(save_checkpoint(trainer.state(), folder / "last.pt"))


@pytest.fixture(scope="module")
def sweep_store(tmp_path_factory, _mlflow_template, tiny_checkpoint) -> tuple[Path, dict]:
    """A real MLflow sqlite store with sweep ``good`` (experiment ``picks``): one front point whose
    trial logged ``tiny_checkpoint`` as its model, and sweep ``bare`` (experiment ``bare``), started,
    without a front. Returns its folder and ``{"point": point run id, "sweep_run": good's run id}``."""
    import shutil

    from stas_sweep.sweep.front import front_of
    from stas_sweep.sweep.space import load_spec
    from stas_sweep.tracking import SweepTracker
    from stas_sweep.train.mlflow_model import log_checkpoint_model

    folder = tmp_path_factory.mktemp("store")
    shutil.copyfile(_mlflow_template, folder / "mlflow.db")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    trackers = {}
    with contextlib.chdir(folder):  # the experiments' artifacts: ./mlruns here
        for name, experiment in (("good", "picks"), ("bare", "bare")):
            (folder / f"{name}.yaml").write_text(yaml.safe_dump(space_file(base=tiny(halting={}), name=name,
                                                                           mlflow={"experiment": experiment})))
            spec = load_spec(folder / f"{name}.yaml")
            trackers[name] = SweepTracker(uri, experiment, name, str(folder / name), spec.objectives)
            trackers[name].start_parent(spec, "plan")
        good = trackers["good"]
        good.trial_model("t1", {}, log_checkpoint_model(uri, good.child("t1", {}), tiny_checkpoint))
        point = {"trial_id": "t1", "method": "stas", "epsilon": 0.1, "accuracy": 50.0, "energy_mj": 0.5,
                 "energy_strict_mj": 0.6, "token_ratio": 0.9, "energy_reduction": 1.0}
        good.write_front(front_of([point], spec.objectives, spec.reference), final=False)
    return folder, {"point": good.point_runs["t1@0.1"], "sweep_run": good.parent_id}


@pytest.mark.parametrize("case", [pytest.param(c, id=c.name) for c in CASES])
def test_bad_input_exits_2_naming_it(case: Case, tmp_path, tiny_checkpoint, capsys, monkeypatch, request):
    if case.extra.get("short_busy_timeout"):
        request.getfixturevalue("short_sqlite_busy_timeout")
    if case.extra.get("cpu_only"):
        import torch

        if torch.cuda.is_available():
            pytest.skip("a machine with CUDA has cuda devices")
    d = tmp_path / "case"
    d.mkdir()
    monkeypatch.chdir(d)  # nothing may land in the working directory either (./mlflow.db, ./runs)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    ids = {}
    if case.extra.get("store"):
        import shutil

        store, ids = request.getfixturevalue("sweep_store")
        shutil.copyfile(store / "mlflow.db", d / "mlflow.db")
    _write(d, case.files, tiny_checkpoint)
    ckpt_before = hashlib.sha256(Path(tiny_checkpoint).read_bytes()).hexdigest()
    with (case.hold(d) if case.hold else contextlib.nullcontext()):
        port = (d / "port").read_text() if (d / "port").exists() else ""
        before = _digest(d)
        argv = [_fill(a, d, tiny_checkpoint, port, ids) for a in case.argv]
        try:
            rc = main(argv)
        except SystemExit as e:  # argparse rejects a flag's value itself: usage line + one message, exit 2
            rc = e.code
        after = _digest(d)
    out, err = capsys.readouterr()
    if os.environ.get("STAS_SHOW_MESSAGES"):
        print(f"\n@@ {case.name}: rc={rc} {err.strip().splitlines()[-1][:400] if err.strip() else ''}", file=sys.__stderr__)
    assert rc == 2, (rc, err[-2000:])
    assert "Traceback" not in out + err
    message = [line for line in err.splitlines() if line.startswith("stas-sweep ")]
    assert message, err[-2000:]
    for word in case.expect:
        assert _fill(word, d, tiny_checkpoint, ids=ids) in message[0], (word, message[0][:1000])
    assert len(message[0]) < 4200  # a long value is cut, not echoed whole
    if case.extra.get("one_line"):
        assert [line for line in err.splitlines() if line.strip()] == message[:1], err[-2000:]
    created = sorted(set(after) - set(before))
    if case.makes_out:
        created = [p for p in created if not p.startswith("out")]
    assert created == [] and {k: v for k, v in after.items() if k in before} == before, created
    assert hashlib.sha256(Path(tiny_checkpoint).read_bytes()).hexdigest() == ckpt_before


def test_alias_bomb_is_refused_fast_and_small(tmp_path):
    """A 1 KB document that would expand to 387 million nodes: refused in well under a second,
    with a few hundred kilobytes allocated, before any object is built from it."""
    import time
    import tracemalloc

    from stas_sweep.train.config import ConfigError, load_yaml

    path = tmp_path / "bomb.yaml"
    path.write_text(alias_bomb(levels=9, width=9))
    assert path.stat().st_size < 1200
    tracemalloc.start()
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match="refused"):
        load_yaml(path)
    elapsed = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert elapsed < 2.0 and peak < 5 * 2**20, (elapsed, peak)
    # a few aliases of a repeated section stay accepted
    path.write_text("base: &b {lr: 0.1, epochs: 3}\nrun1: *b\nrun2: {<<: *b, lr: 0.2}\n")
    assert load_yaml(path)["run2"] == {"lr": 0.2, "epochs": 3}
