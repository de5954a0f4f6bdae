"""The trainer: one run of stage 1 (static backbone) or stage 2 (A-SSA halting), on any device.

    trainer = Trainer(cfg, "runs/digits_stage1")
    history = trainer.fit(callbacks=[lambda epoch, metrics, trainer: ...])

Plain classes and functions, so the ``train`` command and the sweep's Ray trainable drive the
same code, in one process or as one of several data-parallel workers (``torch.distributed``
initialised, e.g. by Ray Train's ``TorchTrainer``; see :mod:`.distributed`). Per epoch it reports ``epoch, train_loss, task_loss, ponder_loss, accuracy,
token_ratio, energy_mj, energy_strict_mj, latency_ms, lr, images_per_s, epoch_time_s`` and writes ``checkpoints/last.pt``
(and ``best.pt``) atomically. ``resume=True`` continues from ``last.pt`` and reproduces an
uninterrupted run: model, optimiser, schedule, scaler, RNG state and the loaders' epoch
streams are all restored.

With K workers: ``batch_size`` is the global batch (each worker runs ``batch_size / K`` of it),
the gradients are averaged by ``DistributedDataParallel``, the reported numbers are sums over every
worker (the whole validation set, every training batch), every worker draws from its own seed
(:func:`~stas_sweep.data.loaders.rank_seed` of the run's seed, re-seeded each epoch so a resume at
any K is reproducible), and only worker 0 logs and writes files. A checkpoint holds the model
alone, not the wrapper, so a run resumes at any K.

Loss (eq. 10): ``task + delta_p * ponder`` (with SML on, SML's loss in place of ``task``), with the
task loss a label-smoothed cross-entropy (soft-target cross-entropy under mixup).
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..errors import UserError
from ..data import build_datasets, build_loaders, build_mixup, epoch_seed
from ..data.loaders import rank_seed
from ..models import create_model
from .checkpoint import CheckpointError, load_checkpoint, load_model_weights, rng_state, save_checkpoint, set_rng_state
from .config import TrainConfig
from .distributed import all_reduce_sums, average_gradients, check_sync_bn, sync_batch_norm, worker_batch, world
from .evaluate import evaluate
from .sml import SML

Callback = Callable[[int, dict, "Trainer"], None]


class NonFiniteLossError(UserError, RuntimeError):
    """The loss became NaN or infinite; the run stops (a sweep marks the trial failed). Usually
    the config's doing (a learning rate too high), so the CLI says it in one line."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was asked for but CUDA is not available; use device: cpu or auto")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Trainer:
    """Builds data, model, optimiser and schedule from a :class:`TrainConfig` and trains.

    Args:
        cfg: validated configuration.
        output_dir: checkpoints, ``metrics.jsonl``, ``config.yaml`` and pictures go here.
        resume: continue from ``output_dir/checkpoints/last.pt``.
        progress: show a progress bar per epoch.
        log: where one-line epoch summaries go (``print`` by default, None for silence).
        init_weights: a model state dict to start from instead of ``cfg.init_from`` (the
            sweep hands every trial the shared stage-1 weights this way).
    """

    def __init__(self, cfg: TrainConfig, output_dir: str | Path, *, resume: bool = False, progress: bool = True,
                 log: Callable[[str], None] | None = print, init_weights: dict | None = None) -> None:
        self.cfg = cfg
        self.out = Path(output_dir)
        self.rank, self.world = world()
        self.main = self.rank == 0  # the worker that logs and writes files
        self.progress = progress and self.main
        self.log = (log if self.main else None) or (lambda _msg: None)
        self.device = resolve_device(cfg.device)
        self.amp = cfg.amp in ("on", "bf16") or (cfg.amp == "auto" and self.device.type == "cuda")
        self.amp_dtype = torch.bfloat16 if cfg.amp == "bf16" else None  # None: autocast's default for the device
        seed_everything(cfg.seed)

        d = cfg.data
        self.train_ds, self.val_ds, self.data_info = build_datasets(
            d.name, d.root, img_size=d.img_size, timesteps=cfg.model.timesteps,
            download=d.download, augment=d.augment, recipe=d.recipe,
        )
        info = self.data_info
        self.model_args = {
            "name": cfg.model.name,
            "num_classes": cfg.model.num_classes or info.num_classes,
            "img_size": info.img_size,
            "in_channels": info.in_channels,
            "timesteps": cfg.model.timesteps,
            "stem": cfg.model.stem,
            "halting": cfg.halting.model_kwargs(cfg.model.name) if cfg.halting else None,
        }
        self.model = build_model(self.model_args).to(self.device)
        if cfg.compile:
            self.model.compile_parts()
        self.train_loader, self.val_loader = build_loaders(
            self.train_ds, self.val_ds, worker_batch(cfg.batch_size, self.world), d.workers, cfg.seed,
            pin_memory=self.device.type == "cuda", rank=self.rank, world=self.world,
        )
        self.mixup = build_mixup(d.mixup, d.cutmix, d.label_smoothing, self.model_args["num_classes"])
        self.criterion = self._criterion(mixup=self.mixup is not None)
        self.train_model = self._data_parallel()
        sml = cfg.sml
        self.sml = SML(self.model, sml.blocks, alpha=sml.alpha, lamb=sml.lamb, temperature=sml.temperature,
                       channels=sml.channels, kernels=tuple(sml.kernels)) if sml.enabled else None
        if self.sml is not None:
            self.sml.module.to(self.device)

        import timm.optim
        import timm.scheduler

        trainable = nn.ModuleDict({"model": self.model, **({"sml": self.sml.module} if self.sml else {})})
        o = cfg.optim
        self.optimizer = timm.optim.create_optimizer_v2(trainable, opt=o.opt, lr=o.lr, weight_decay=o.weight_decay)
        self.scheduler = timm.scheduler.CosineLRScheduler(
            self.optimizer, t_initial=cfg.epochs, lr_min=o.min_lr, warmup_t=o.warmup_epochs,
            warmup_lr_init=o.warmup_lr, t_in_epochs=True,
        )
        # bfloat16 has float32's range: its gradients need no scaling
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp and self.amp_dtype is None)
        self.epoch = 0  # epochs completed
        self.history: list[dict] = []
        self.best_accuracy = -math.inf
        self.extra: dict = {}  # saved with checkpoints (e.g. the MLflow run id)

        if resume:
            self._resume()
        elif init_weights is not None:
            load_model_weights(self.model, init_weights, "init_weights")
        elif cfg.init_from:
            self._init_from(cfg.init_from)

    # -- set-up -----------------------------------------------------------------------------
    def _data_parallel(self) -> nn.Module:
        """The model to call in training: wrapped in ``DistributedDataParallel`` with several workers.
        A halting model leaves some parameters without gradient in a step (blocks every token
        skipped), hence ``find_unused_parameters``."""
        if self.world == 1:
            return self.model
        check_sync_bn(self.cfg, self.world)
        if self.cfg.sync_bn:
            sync_batch_norm(self.model)
        self.log(f"data-parallel training over {self.world} workers ({torch.distributed.get_backend()}), "
                 f"{self.cfg.batch_size // self.world} images each per step"
                 + (", batch-norm statistics over the global batch" if self.cfg.sync_bn else ""))
        ids = [self.device.index if self.device.index is not None else torch.cuda.current_device()] \
            if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(self.model, device_ids=ids,
                                                   find_unused_parameters=self.cfg.halting is not None)

    def _criterion(self, mixup: bool):
        if mixup:
            from timm.loss import SoftTargetCrossEntropy

            return SoftTargetCrossEntropy()
        return nn.CrossEntropyLoss(label_smoothing=self.cfg.data.label_smoothing)

    @property
    def last_path(self) -> Path:
        return self.out / "checkpoints" / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.out / "checkpoints" / "best.pt"

    def _init_from(self, path: str) -> None:
        """Stage 2 starts from stage 1's weights (the same architecture; halting adds none)."""
        state = load_checkpoint(path, map_location=self.device)
        args = state.get("model_args", {})
        for key in ("name", "num_classes", "img_size", "in_channels", "timesteps"):
            if key in args and args[key] != self.model_args[key]:
                raise CheckpointError(
                    f"init_from {path}: trained with {key}={args[key]!r}, this run has {key}={self.model_args[key]!r}"
                )
        load_model_weights(self.model, state["model"], f"init_from {path}")
        self.log(f"initialised from {path} (stage {1 if args.get('halting') is None else 2}, "
                 f"epoch {state.get('epoch', '?')})")

    def _resume(self) -> None:
        if not self.last_path.is_file():
            raise CheckpointError(f"--resume: no checkpoint at {self.last_path}; start without --resume")
        state = load_checkpoint(self.last_path, map_location=self.device)
        if state.get("model_args") != self.model_args:
            raise CheckpointError(
                f"--resume: {self.last_path} was written for another model ({state.get('model_args')}); "
                f"this configuration builds {self.model_args}"
            )
        load_model_weights(self.model, state["model"], str(self.last_path))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if self.sml is not None and state.get("sml"):
            self.sml.module.load_state_dict(state["sml"])
        self.epoch = int(state["epoch"])
        self.history = list(state.get("history", []))
        self.best_accuracy = max((h["accuracy"] for h in self.history), default=-math.inf)
        self.extra = dict(state.get("extra", {}))
        set_rng_state(state["rng"])
        self.log(f"resumed from {self.last_path} after epoch {self.epoch}")

    # -- one epoch ----------------------------------------------------------------------------
    def train_epoch(self, epoch: int) -> dict:
        cfg, model = self.cfg, self.model
        model.train()
        self.train_loader.set_epoch(epoch)
        if self.world > 1:  # each worker's own stream (dropout, ...), the same whatever K the run resumed at
            seed_everything(epoch_seed(rank_seed(cfg.seed, self.rank), epoch))
        np.random.seed(epoch_seed(rank_seed(cfg.seed, self.rank), epoch) % 2**32)  # timm's Mixup draws from numpy
        mixup = self.mixup if (self.mixup and (cfg.data.mixup_off_epoch is None or epoch < cfg.data.mixup_off_epoch)) else None
        criterion = self.criterion if (mixup or self.mixup is None) else self._criterion(mixup=False)
        delta_p = cfg.halting.delta_p if cfg.halting else 0.0
        lr = self.optimizer.param_groups[0]["lr"]
        sums = {"loss": 0.0, "task": 0.0, "ponder": 0.0, "ratio": 0.0}
        n = 0
        t0 = time.perf_counter()
        batches = self.train_loader
        if self.progress:
            from tqdm.auto import tqdm

            batches = tqdm(batches, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, dynamic_ncols=True)
        for i, (x, y) in enumerate(batches):
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            target = y
            if mixup is not None:
                x, target = mixup(x, y)
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
                out = self.train_model(x)  # DDP with several workers
                task = criterion(out.logits.float(), target)
                # eq. 10; with SML its loss (the model's and the surrogate modules') is the task term
                fit = task if self.sml is None else self.sml.loss(criterion, out.logits.float(), target)
                loss = fit + delta_p * out.ponder_loss
            if not torch.isfinite(loss):
                raise NonFiniteLossError(f"loss is {loss.item()} at epoch {epoch + 1}, batch {i + 1} "
                                         f"(task {task.item()}, ponder {out.ponder_loss.item()}); lower optim.lr "
                                         f"(now {self.cfg.optim.lr:g}) or set optim.grad_clip; the last checkpoint "
                                         f"is the previous epoch's")
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if self.sml is not None:  # SML's surrogate modules sit outside the DDP wrapper
                average_gradients(self.sml.module.parameters())
            if cfg.optim.grad_clip:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            b = len(y)
            n += b
            sums["loss"] += loss.item() * b
            sums["task"] += task.item() * b
            sums["ponder"] += out.ponder_loss.item() * b
            sums["ratio"] += out.token_ratio.item() * b
            if self.progress:
                batches.set_postfix(loss=f"{sums['loss'] / n:.3f}", tokens=f"{sums['ratio'] / n:.2f}")
        elapsed = time.perf_counter() - t0
        sums = all_reduce_sums({**sums, "n": n}, self.device)  # every worker's batches
        n = sums["n"]
        self.scheduler.step(epoch + 1)
        return {
            "train_loss": sums["loss"] / n, "task_loss": sums["task"] / n, "ponder_loss": sums["ponder"] / n,
            "train_token_ratio": sums["ratio"] / n, "lr": lr, "images_per_s": n / elapsed,
            "epoch_time_s": elapsed,
        }

    def evaluate(self, epsilon: float | None = None) -> dict:
        r = evaluate(self.model, self.val_loader, self.device, epsilon=epsilon,
                     energy_batches=self.cfg.energy_batches, amp_dtype=self.amp_dtype,
                     distributed=self.world > 1)
        return {"accuracy": r["accuracy"], "token_ratio": r["token_ratio"], "energy_mj": r["energy_mj"],
                "energy_strict_mj": r["energy_strict_mj"], "latency_ms": r["latency_ms"]}

    # -- the loop -----------------------------------------------------------------------------
    def fit(self, callbacks: list[Callback] = ()) -> list[dict]:
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
            self.write_config()
        for epoch in range(self.epoch, self.cfg.epochs):
            metrics = self.run_epoch(epoch)
            for cb in callbacks:
                cb(epoch + 1, metrics, self)
        return self.history

    def run_epoch(self, epoch: int) -> dict:
        """Train one epoch, evaluate, checkpoint; returns the epoch's metrics."""
        metrics = {"epoch": epoch + 1, **self.train_epoch(epoch)}
        metrics.update(self.evaluate())
        self.epoch = epoch + 1
        self.history.append(metrics)
        if self.main:
            self.save()
        self.log(
            f"epoch {epoch + 1}/{self.cfg.epochs}  loss {metrics['train_loss']:.4f} "
            f"(task {metrics['task_loss']:.4f}, ponder {metrics['ponder_loss']:.3f})  "
            f"acc {metrics['accuracy']:.2f}%  tokens {metrics['token_ratio']:.3f}  "
            f"energy {metrics['energy_mj']:.4f} mJ (strict {metrics['energy_strict_mj']:.4f})  "
            f"lr {metrics['lr']:.2e}  {metrics['images_per_s']:.0f} img/s"
        )
        return metrics

    def state(self) -> dict:
        return {
            "model_args": self.model_args,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "sml": self.sml.module.state_dict() if self.sml else None,
            "epoch": self.epoch,
            "rng": rng_state(),
            "config": self.cfg.to_dict(),
            "history": self.history,
            "data": {"name": self.data_info.name, "mean": list(self.data_info.mean), "std": list(self.data_info.std)},
            "extra": self.extra,
        }

    def save(self) -> Path:
        path = save_checkpoint(self.state(), self.last_path)
        acc = self.history[-1]["accuracy"] if self.history else -math.inf
        if acc > self.best_accuracy:
            self.best_accuracy = acc
            tmp = self.best_path.with_suffix(".tmp")
            shutil.copyfile(path, tmp)
            tmp.replace(self.best_path)
        with (self.out / "metrics.jsonl").open("w") as f:
            for h in self.history:
                f.write(json.dumps(h) + "\n")
        return path

    def write_config(self) -> None:
        import yaml

        (self.out / "config.yaml").write_text(yaml.safe_dump(self.cfg.to_dict(), sort_keys=False))


def build_model(model_args: dict):
    args = dict(model_args)
    return create_model(args.pop("name"), **args)


def model_from_checkpoint(path: str | Path, device: str | torch.device = "cpu"):
    """Rebuild the model a checkpoint was trained as, with its weights. Returns (model, state)."""
    state = load_checkpoint(path, map_location=device)
    if "model_args" not in state:
        raise CheckpointError(f"{path}: no model_args entry; cannot tell which model it holds")
    model = build_model(state["model_args"])
    load_model_weights(model, state["model"], str(path))
    return model.to(device), state
