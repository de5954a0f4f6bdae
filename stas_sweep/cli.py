"""``stas-sweep``: the one command-line door.

    stas-sweep models [--json]              named configurations and parameter counts
    stas-sweep energy MODEL [--epsilon E | --keep-ratio R | --exit-threshold H] [--convention paper|strict]
                                            energy, firing rates and token ratio on a batch
    stas-sweep energy MODEL --firing-rate R [--token-ratio Q]
                                            the same count with no data and no weights (analytic)
    stas-sweep train CONFIG [--set k=v]     one training run (stage 1 or stage 2)
    stas-sweep eval CHECKPOINT              accuracy / tokens / energy at several epsilons
    stas-sweep validate FILE                check a search-space file
    stas-sweep run FILE [--dry-run]         a sweep: Ray Tune + Optuna + ASHA, front in MLflow
    stas-sweep submit FILE --address URL    the same sweep as a Ray job on a cluster
    stas-sweep pareto [--json] [--paper]    the front of the latest sweep, from MLflow (--paper: the paper's figures)
    stas-sweep pick POINT [--name NAME]     register a front point's model (run id, best:<objective>, knee)
    stas-sweep ui                           the MLflow UI on 127.0.0.1 for the default store

Bad input (a file, key or value that cannot be used) prints one line naming it and exits 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

# Before torch (and its libgomp) loads: idle OpenMP threads sleep instead of spinning, so a run
# beside any other busy process does not collapse (see stas_sweep/train/threads.py). Ray workers
# started from this process inherit it. A policy the user set is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


from . import methods  # noqa: E402 - after the OpenMP policy (the method records import no torch)
from .errors import UsageError, UserError  # noqa: E402 - after the OpenMP policy (errors imports nothing heavy)
from .tracking import PARETO_FILTER, resolve_tracking_uri  # noqa: E402 - (tracking imports mlflow only when it logs)


class _flag_errors:
    """Around a library call made with the command's flags only (create_model(name, img_size,
    ...)): its argument checks (ValueError) are the user's flags being wrong, so a UsageError."""

    def __enter__(self):
        return self

    def __exit__(self, kind, err, tb) -> bool:
        if isinstance(err, ValueError) and not isinstance(err, UserError):
            raise UsageError(str(err)) from None
        return False


class _store_errors:
    """Around calls that read or write an MLflow store the user named: a store that cannot be
    opened (a corrupt or locked ``mlflow.db``, a server that does not answer) is a
    :class:`~stas_sweep.tracking.TrackingError` naming it, not a traceback from sqlalchemy."""

    def __init__(self, uri: str | None) -> None:
        self.uri = uri

    def __enter__(self):
        return self

    def __exit__(self, kind, err, tb) -> bool:
        if err is None or isinstance(err, UserError) or not isinstance(err, Exception):
            return False
        from mlflow.exceptions import MlflowException

        try:
            from sqlalchemy.exc import SQLAlchemyError
        except ImportError:  # pragma: no cover - MLflow installs it
            SQLAlchemyError = MlflowException  # noqa: N806
        if isinstance(err, (MlflowException, SQLAlchemyError, ConnectionError)):
            from .tracking import TrackingError

            detail = (str(err).strip().splitlines() or [""])[0][:300]
            raise TrackingError(f"MLflow store {resolve_tracking_uri(self.uri)} cannot be used "
                                f"({type(err).__name__}: {detail}); fix or unlock it, or give another "
                                f"--tracking-uri") from None
        return False


def _tracking_uri(text: str) -> str:
    """argparse type: an MLflow URI with a known scheme and no shell or quote characters."""
    from .train.config import check_uri

    try:
        return check_uri(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _positive_int(text: str) -> int:
    """argparse type: a whole number >= 1 (argparse then names the flag and exits 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def _finite_float(text: str) -> float:
    """argparse type: a finite number (no nan, no inf)."""
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text} is not a finite number")
    return value


def _add_shape_args(p: argparse.ArgumentParser, img_size: int = 32) -> None:
    p.add_argument("--num-classes", type=_positive_int, default=10, help="classifier outputs (default 10)")
    p.add_argument("--img-size", type=_positive_int, default=img_size, help=f"input side in pixels (default {img_size})")
    p.add_argument("--in-channels", type=_positive_int, default=3, help="input channels (default 3; DVS frames: 2)")


def cmd_models(args: argparse.Namespace) -> int:
    import torch

    from .models import create_model, get_arch, list_models
    from .models.stems import num_tokens

    rows = []
    for name in list_models(args.pattern):
        arch = get_arch(name)
        # on the meta device: shapes only, no weights allocated or initialised (39 models in ~1.5 s)
        with _flag_errors(), torch.device("meta"):
            model = create_model(name, num_classes=args.num_classes, img_size=args.img_size,
                                 in_channels=args.in_channels)
        rows.append({
            "name": name, "family": arch.family, "depth": arch.depth, "embed_dim": arch.embed_dim,
            "num_heads": arch.num_heads, "params": sum(p.numel() for p in model.parameters()),
            "tokens": num_tokens(args.img_size),
        })
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    from .tables import Column, text_table

    head, *lines = text_table(rows, [
        Column("model", lambda r: r["name"], "<", 22), Column("L", lambda r: str(r["depth"]), width=2),
        Column("D", lambda r: str(r["embed_dim"]), width=4), Column("heads", lambda r: str(r["num_heads"])),
        Column("params", lambda r: f"{r['params']:,}", width=12), Column("", lambda r: f"{r['params'] / 1e6:.2f}M", width=7),
    ])
    print(f"{head}  (classes={args.num_classes}, img_size={args.img_size}, tokens={num_tokens(args.img_size)})")
    print("\n".join(lines))
    return 0


def _input_batch(args: argparse.Namespace):
    import torch

    torch.manual_seed(args.seed)
    if args.input == "random":
        return torch.rand(args.batch, args.in_channels, args.img_size, args.img_size), "random uniform"
    from .data import build_datasets

    _, val, _ = build_datasets("digits", img_size=args.img_size, augment=False)
    x = torch.stack([val[i][0] for i in range(min(args.batch, len(val)))])  # [B, 1, S, S]
    return x.expand(-1, args.in_channels, -1, -1).contiguous(), f"{len(x)} digits validation images"


def _progress(command: str, quiet: bool = False):
    """A progress line printer for long commands: ``"<command>: <message> (12.3 s)"`` on stderr,
    so --json output on stdout stays clean; silent with ``quiet``."""
    import time

    start = time.monotonic()

    def say(message: str) -> None:
        if not quiet:
            print(f"{command}: {message} ({time.monotonic() - start:.1f} s)", file=sys.stderr, flush=True)
    return say


def _cmd_energy_analytic(args: argparse.Namespace) -> int:
    """``--firing-rate R [--token-ratio Q]``: every synaptic input at R, every block at the share
    Q of its cells, counted on the meta device (no data, no weights)."""
    from .energy import analytic_energy, analytic_summary, check_rate

    measured_only = {"--halting": args.halting, **{m.flag: getattr(args, m.knob) for m in methods.halting_methods()}}
    given = [flag for flag, value in measured_only.items() if value not in (None, False)]
    if given:
        raise UsageError(f"{', '.join(given)} cannot be combined with --firing-rate (the analytic mode "
                         f"models A-SSA by --token-ratio)")
    with _flag_errors():
        check_rate(args.firing_rate, args.token_ratio)
        shape = dict(img_size=args.img_size, num_classes=args.num_classes, in_channels=args.in_channels,
                     timesteps=args.timesteps, stem=args.stem)
        summary = analytic_summary(args.model, args.firing_rate, args.token_ratio, **shape)
    summary["convention"] = args.convention
    summary["energy"] = summary["energy_mj" if args.convention == "paper" else "energy_strict_mj"]
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"{args.model} ({args.stem}, T={args.timesteps}, {args.img_size}x{args.img_size}, {args.num_classes} "
          f"classes), analytic: every input at firing rate {args.firing_rate}, blocks at token ratio "
          f"{summary['token_ratio']}")
    print(analytic_energy(args.model, args.firing_rate, args.token_ratio, **shape).table(args.convention))
    print(f"stem share {summary['stem_share']:.3f}; static {summary['static_energy_mj']:.4f} mJ "
          f"(strict {summary['static_energy_strict_mj']:.4f}); saving {100 * summary['saving']:.1f} %; "
          f"A-SSA's own work {summary['halting_score_mj']:.6f} mJ "
          f"({summary['halting_score_pj_per_cell']:.1f} pJ per scored token-cell)")
    return 0


def cmd_energy(args: argparse.Namespace) -> int:
    import torch

    from .energy import measure_energy
    from .models import create_model
    from .models.diagnostics import calibrate_batchnorm, temporal_similarity

    if args.firing_rate is not None:
        return _cmd_energy_analytic(args)
    if args.token_ratio is not None:
        raise UsageError("--token-ratio needs --firing-rate (the analytic mode); a measured run takes "
                         "--epsilon, --keep-ratio or --exit-threshold")

    from .train.mlflow_model import is_model_uri

    if is_model_uri(args.model):
        return _energy_of_logged_model(args)
    halting = None
    baselines = [m for m in methods.halting_methods() if m.name != "stas" and getattr(args, m.knob) is not None]
    if len(baselines) + bool(args.epsilon is not None or args.halting) > 1:
        raise UsageError("give one of --halting/--epsilon (A-SSA), --keep-ratio (token dropping) or "
                         "--exit-threshold (timestep exit)")
    if baselines:
        halting = baselines[0].halting(getattr(args, baselines[0].knob))
    elif args.epsilon is not None or args.halting:
        from .models.halting import PAPER_ALPHA_BETA
        from .models.registry import get_arch

        with _flag_errors():
            alpha, beta = PAPER_ALPHA_BETA[get_arch(args.model).family]
        halting = {"alpha": alpha if args.alpha is None else args.alpha, "beta": beta if args.beta is None else args.beta,
                   "epsilon": 0.01 if args.epsilon is None else args.epsilon, "accumulation": args.accumulation}
    say = _progress("energy", args.quiet)
    say(f"building {args.model}")
    torch.manual_seed(args.seed)  # the untrained weights too: the same flags give the same figures
    with _flag_errors():
        model = create_model(args.model, num_classes=args.num_classes, img_size=args.img_size,
                             in_channels=args.in_channels, timesteps=args.timesteps, stem=args.stem,
                             halting=halting)
    x, source = _input_batch(args)
    say(f"calibrating batch norm on {source}")
    # untrained weights: set batch-norm statistics from the batch so the LIF layers fire
    calibrate_batchnorm(model, x)
    say("measuring energy (both conventions, one pass)")
    report = measure_energy(model, x)  # both conventions in one pass
    if args.timesteps > 1:
        say("temporal similarity of block inputs")
    similarity = temporal_similarity(model, x) if args.timesteps > 1 else []
    say("token ratio")
    with torch.no_grad():
        out = model.eval()(x)
    say("done")
    result = {
        "model": args.model, "stem": args.stem, "timesteps": args.timesteps, "input": source,
        "method": model.method, "epsilon": None if halting is None else halting.get("epsilon"),
        **{m.knob: getattr(args, m.knob) for m in methods.halting_methods() if m.name != "stas"},
        "convention": args.convention, "energy": report.energy(args.convention),
        "energy_mj": report.energy_mj, "energy_strict_mj": report.energy_strict_mj,
        "mac_ops": report.mac_ops, "ac_ops": report.ac_ops,
        "mac_ops_strict": report.mac_ops_strict, "ac_ops_strict": report.ac_ops_strict,
        "token_ratio": report.token_ratio, "temporal_similarity": similarity,
        "active_tokens": out.active_tokens.mean(0).tolist(),
        "layers": [vars(r) for r in report.layers],
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{args.model} ({args.stem}, T={args.timesteps}) on {source}; untrained weights, "
          f"batch-norm calibrated on the batch")
    print(report.table(args.convention))
    if similarity:
        print("temporal similarity of block inputs (halting off): " + ", ".join(f"{s:.3f}" for s in similarity))
    return 0


def _energy_of_logged_model(args: argparse.Namespace) -> int:
    """``energy`` of a logged model (``models:/`` or ``runs:/``): its trained weights, read with safe
    weights and built from its own config (no batch-norm calibration), at its picked point's knob
    unless --epsilon, --keep-ratio or --exit-threshold gives another."""
    import torch

    from .data.events import EVENT_DATASETS
    from .energy import measure_energy
    from .train.mlflow_model import load_logged_model

    given = {k: getattr(args, k) for k in methods.knob_names() if getattr(args, k) is not None}
    if len(given) > 1 or args.halting or args.alpha is not None or args.beta is not None:
        raise UsageError(f"{args.model}: a logged model keeps its own halting; give at most one of --epsilon, "
                         f"--keep-ratio or --exit-threshold, the value of its knob")
    say = _progress("energy", args.quiet)
    say(f"loading {args.model}")
    with _store_errors(args.tracking_uri):
        model, state, info = load_logged_model(args.model, args.tracking_uri)
    knob = info["knob"]
    if given:
        knob = next(iter(given.items()))
        record = methods.get(model.method) if model.method in methods.halting_names() else None
        if record is None or record.knob != knob[0]:
            raise UsageError(f"--{knob[0].replace('_', '-')}: {args.model} is a {model.method} model"
                             + (f"; its knob is {record.flag}" if record is not None else ""))
    a = state["model_args"]
    args.img_size, args.in_channels = a["img_size"], a["in_channels"]
    if (state.get("data") or {}).get("name") in EVENT_DATASETS:  # frames [B, T, 2, S, S]
        torch.manual_seed(args.seed)
        x, source = torch.rand(args.batch, a["timesteps"], a["in_channels"], a["img_size"], a["img_size"]), "random frames"
    else:
        x, source = _input_batch(args)
    value = None if knob is None else knob[1]
    say(f"measuring energy on {source}" + ("" if knob is None else f" at {knob[0]} {value:g}"))
    with _flag_errors():
        report = measure_energy(model, x, knob=value)
        with torch.no_grad():
            out = model.eval()(x, knob=value)
    result = {"model": args.model, "backbone": a["name"], "stem": a.get("stem"), "timesteps": a.get("timesteps"),
              "input": source, "method": model.method, **dict.fromkeys(methods.knob_names()),
              **({} if knob is None else {knob[0]: value}), "convention": args.convention,
              "energy": report.energy(args.convention), "energy_mj": report.energy_mj,
              "energy_strict_mj": report.energy_strict_mj, "mac_ops": report.mac_ops, "ac_ops": report.ac_ops,
              "mac_ops_strict": report.mac_ops_strict, "ac_ops_strict": report.ac_ops_strict,
              "token_ratio": report.token_ratio, "active_tokens": out.active_tokens.mean(0).tolist(),
              "layers": [vars(r) for r in report.layers]}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{args.model}: {a['name']} ({a.get('stem')}, T={a.get('timesteps')}, {model.method}"
          + ("" if knob is None else f", {knob[0]} {value:g}") + f") on {source}; trained weights")
    print(report.table(args.convention))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .train import load_config
    from .train.run import train_run
    from .train.threads import set_threads

    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads {args.threads}: give a whole number of at least 1")
    if args.output_dir is not None and not args.output_dir.strip():
        raise UsageError("--output-dir '': give a folder for the run (default: ./runs/<config name>)")
    if args.workers < 1:
        raise UsageError(f"--workers {args.workers}: give a whole number of at least 1")
    threads = set_threads(args.threads)
    cfg = load_config(args.config, args.set)
    out = Path(args.output_dir) if args.output_dir else Path("runs") / Path(args.config).stem
    if args.workers > 1:
        from .sweep.train_workers import train_on_workers

        run = train_on_workers(cfg, out, args.workers, resume=args.resume, tracking_uri=args.tracking_uri,
                               mlflow=not args.no_mlflow, source=args.config)
    else:
        run = train_run(cfg, out, resume=args.resume, progress=not args.no_progress,
                        tracking_uri=args.tracking_uri, mlflow=not args.no_mlflow, threads=threads, source=args.config)
    final = run.history[-1] if run.history else {}
    print(f"done: accuracy {final.get('accuracy', float('nan')):.2f}%, token ratio "
          f"{final.get('token_ratio', float('nan')):.3f}, energy {final.get('energy_mj', float('nan')):.4f} mJ; "
          f"checkpoint {run.checkpoint}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .data import build_datasets, build_loaders
    from .models.diagnostics import temporal_similarity
    from .train import config_from_dict, epsilon_table, format_table, halting_maps, model_from_checkpoint
    from .train.trainer import resolve_device

    say = _progress("eval", args.quiet)
    device = _eval_device(args.device, resolve_device)
    if args.halting_maps:
        from .train.run import check_output_dir

        check_output_dir(Path(args.halting_maps), "--halting-maps")
    say(f"loading {args.checkpoint} on {device}")
    model, state, knob = _load_eval_model(args, device, model_from_checkpoint)
    cfg = config_from_dict(state.get("config") or {}, f"{args.checkpoint} (its config)")
    _, val, info = build_datasets(
        cfg.data.name, args.data_root or cfg.data.root, img_size=model.img_size,
        timesteps=model.timesteps, augment=False, recipe=cfg.data.recipe,
    )
    _, loader = build_loaders(val, val, args.batch_size, cfg.data.workers, drop_last=False)
    epsilons = _parse_epsilons(args.epsilons) if args.epsilons else cfg.eval_epsilons
    grids = None
    if knob is not None and not args.epsilons:  # a picked point: at its knob
        epsilons, grids = [knob[1]], {model.method: [knob[1]]}
    say(f"{len(val)} validation images of {info.name}")
    rows = epsilon_table(model, loader, epsilons, device, max_batches=args.max_batches, progress=say, grids=grids)
    result: dict = {"rows": rows}
    if args.similarity:
        say("temporal similarity of block inputs")
        x = next(iter(loader))[0].to(device)
        result["temporal_similarity"] = temporal_similarity(model, x)
    if args.halting_maps:
        eps = epsilons[0] if model.method == "stas" else None  # the baselines at their trained knob
        say(f"writing halting maps to {args.halting_maps}")
        paths = halting_maps(model, loader, args.halting_maps, epsilon=eps, device=device,
                             mean=info.mean, std=info.std, progress=say)
        result["halting_maps"] = [str(p) for p in paths]
    say("done")
    if args.json:
        print(json.dumps(rows if not (args.similarity or args.halting_maps) else result, indent=2))
        return 0
    print(f"{args.checkpoint}: {state['model_args']['name']}, epoch {state.get('epoch')}, "
          f"{rows[0]['images']} validation images of {info.name}")
    print(format_table(rows))
    if args.similarity:
        print("temporal similarity of block inputs (halting off): " + ", ".join(f"{s:.3f}" for s in result["temporal_similarity"]))
    if args.halting_maps:
        print(f"halting maps: {result['halting_maps'][0]} (+{len(result['halting_maps']) - 1} per-sample files)")
    return 0


def _load_eval_model(args: argparse.Namespace, device, from_file):
    """``(model, state, knob)`` of ``eval``'s CHECKPOINT: a file (knob None), or a ``models:/`` /
    ``runs:/`` URI of a logged model, read with safe weights, built from its own config; ``knob``
    is ``(name, value)`` of a picked point (a registered version's or a point run's)."""
    from .train.mlflow_model import is_model_uri, load_logged_model

    if not is_model_uri(args.checkpoint):
        model, state = from_file(args.checkpoint, device)
        return model, state, None
    with _store_errors(args.tracking_uri):
        model, state, info = load_logged_model(args.checkpoint, args.tracking_uri, device)
    return model, state, info["knob"]


def _eval_device(name: str, resolve):
    import torch

    import re

    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", name):
        raise UsageError(f"--device {name!r}: accepted values: auto, cpu, cuda, cuda:N")
    try:
        device = resolve(name)
    except (ValueError, RuntimeError) as e:
        raise UsageError(f"--device {name!r}: {e}") from None
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UsageError(f"--device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def _parse_epsilons(text: str) -> list[float]:
    from .models.configs import check_epsilon

    try:
        return [check_epsilon(float(e)) for e in text.split(",") if e.strip()]
    except ValueError as e:
        raise UsageError(f"--epsilons {text!r}: {e}; give comma-separated values in [0, 1), e.g. 0,0.05,0.1") from None


def cmd_validate(args: argparse.Namespace) -> int:
    from .sweep.space import describe, load_spec

    spec = load_spec(args.file)
    from .data.errors import DatasetNotFoundError
    from .sweep.runner import check_data, local_resource_warnings

    print(f"{args.file}: ok")
    print(describe(spec, resolve_tracking_uri(args.tracking_uri, spec.tracking_uri)))
    for warning in local_resource_warnings(spec):
        print(warning, file=sys.stderr)
    try:  # a warning here (the data may sit on a cluster's nodes); `run` on this machine refuses
        check_data(spec)
    except DatasetNotFoundError as e:
        print(f"warning: {e}", file=sys.stderr)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .sweep.runner import SweepError, SweepFault, run_tracked
    from .sweep.space import describe, load_spec

    spec = load_spec(args.file)  # every check of the file happens before Ray starts
    uri = resolve_tracking_uri(args.tracking_uri, spec.tracking_uri)
    plan = describe(spec, uri)
    print(plan, flush=True)
    if args.dry_run:
        print("dry run: nothing was trained")
        return 0
    try:
        with _store_errors(uri):  # a corrupt or locked mlflow.db: one line (before Ray starts, at start_parent)
            result = run_tracked(spec, uri, plan, address=args.address, resume=args.resume)
    except SweepError as e:
        raise UsageError(str(e)) from None
    except SweepFault as e:  # the machine's fault, not the input's: exit 1, one line
        print(f"stas-sweep run: error: {e}; the sweep stopped and what it saved is kept: fix that, then "
              f"stas-sweep run {args.file} --resume", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"interrupted; the sweep's state is saved. Finish it with: stas-sweep run {args.file} --resume",
              file=sys.stderr)
        return 130
    _print_sweep_summary(result, spec, uri)
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from .sweep.space import load_spec
    from .sweep.submit import submit

    spec = load_spec(args.file)  # a bad file is rejected here, before anything reaches the cluster
    uri = resolve_tracking_uri(args.tracking_uri, spec.tracking_uri, fallback=False)
    if uri is None or uri.startswith("sqlite:"):
        print("note: no --tracking-uri: the job logs to a sqlite file on the head node; give the URL of a shared "
              "`mlflow server` to browse the front from here", file=sys.stderr)
    try:
        job_id, status = submit(spec, args.address, tracking_uri=uri, resume=args.resume, wait=not args.no_wait,
                                agent_wait_s=args.agent_wait)
    except ConnectionError as e:  # the dashboard did not answer: the --address is wrong or the cluster down
        raise UsageError(str(e)) from None
    if args.no_wait:
        return 0
    print(f"job {job_id}: {status}")
    return 0 if status == "SUCCEEDED" else 1


def _print_sweep_summary(result, spec, uri: str) -> None:
    counts: dict = {}
    for t in result.trials:
        counts[t["status"]] = counts.get(t["status"], 0) + 1
    from .tables import plural

    print(f"\nsweep {spec.name}: {plural(len(result.trials), 'trial')} (" + ", ".join(f"{v} {k}" for k, v in counts.items())
          + f"); {plural(len(result.points), 'candidate point')}, {len(result.front)} on the front; "
            f"hypervolume {result.hypervolume:.4g}")
    print(_front_table(result.front, spec.objectives, [p.key for p in spec.params]))
    print(f"\nbrowse it: stas-sweep ui{'' if uri.startswith('sqlite:///' + str(Path.cwd())) else ' --tracking-uri ' + uri}"
          f"  -> experiment {spec.experiment!r}, filter  {PARETO_FILTER} , Chart view, scatter of "
          f"energy_mj against accuracy (one run per front point); the sweep's parent run holds "
          f"pareto_front.png / .html")


def _front_table(front: list[dict], objectives, params: list[str]) -> str:
    from .tables import Column, number, text_table

    from .sweep.front import knob_of

    if any("method" in p for p in front):  # knob: epsilon, keep_ratio or exit_threshold, by method
        head = [Column("trial_id", lambda p: number(p.get("trial_id")), "<"),
                Column("method", lambda p: str(p.get("method")), "<"),
                Column("knob", lambda p: "{} {}".format(knob_of(p)[0], number(knob_of(p)[1])), "<")]
        params = [k for k in params if k != "halting.method"]
    else:
        head = [Column(c, lambda p, c=c: number(p.get(c)), "<") for c in ("trial_id", "epsilon")]
    metrics = [m for m, _ in objectives]
    # then token_ratio and the latency (a sweep older than latency_ms: no column), if not objectives
    shown = [k for k in ("token_ratio", "latency_ms") if k not in metrics and (k == "token_ratio" or
                                                                             any(p.get(k) is not None for p in front))]
    cols = [*metrics, *shown, *params]
    return "\n".join(text_table(front, head + [Column(c, lambda p, c=c: number(p.get(c)), "<") for c in cols],
                                sep="  "))


def _paper_table(rows: list[dict]) -> str:
    from .tables import Column, number, text_table

    cols = [Column("table", lambda r: r["table"], "<"), Column("method", lambda r: r["method"], "<"),
            Column("model", lambda r: r["model"], "<"), Column("T", lambda r: number(r["timesteps"]), "<"),
            Column("energy_mj (paper)", lambda r: number(r["energy_mj"]), "<"),
            Column("accuracy", lambda r: number(r["accuracy"]), "<"),
            Column("token_ratio", lambda r: number(r["token_ratio"]), "<"), Column("note", lambda r: r["note"], "<")]
    return "\n".join(text_table(rows, cols, sep="  "))


def cmd_pareto(args: argparse.Namespace) -> int:
    from .sweep.front import param_keys
    from .tables import plural
    from .tracking import latest_sweep

    from .energy import METER_VERSION
    from .sweep.paper_results import DATASETS, PAPER_ENERGY_CONVENTION, SOURCE, paper_rows
    from .sweep.plots import energy_convention

    with _store_errors(args.tracking_uri):
        sweep = latest_sweep(args.tracking_uri, args.experiment)
    front = sweep["front"]
    paper = paper_rows(sweep.get("dataset")) if args.paper else []
    # which sweep this is goes to stderr with --json, so stdout stays one JSON list
    say = (lambda m: print(m, file=sys.stderr)) if args.json else print
    for s in sweep["skipped"]:
        say(f"skipping sweep {s['name']} (experiment {s['experiment']!r}, run {s['run_id']}, {s['status']}): "
            f"no front points")
    say(f"sweep {sweep['name']} (experiment {sweep['experiment']!r}, run {sweep['run_id']}, {sweep['status']}): "
        f"{plural(len(front), 'point')} on the front")
    version = sweep.get("energy_convention", "1")
    if version != str(METER_VERSION):  # a front counted by an older meter: not this code's nor the paper's reading
        say(f"this front's energy was counted with energy convention {version}; this code counts with "
            f"{METER_VERSION} (docs/energy.md), so its energy is not comparable with the paper's figures or "
            f"with newer fronts")
    if args.json:
        conventions = {"front": energy_convention("energy_mj", version), "paper": PAPER_ENERGY_CONVENTION}
        print(json.dumps({"front": front, "paper": paper, "energy_convention": conventions} if args.paper
                         else front, indent=2))
        return 0
    print(_front_table(front, sweep["objectives"], param_keys(front)))
    if args.paper:
        if not paper:
            print(f"\nthe paper reports no figures for data set {sweep.get('dataset')!r} "
                  f"(it has {', '.join(DATASETS)})")
        else:
            print(f"\nthe front's energy_mj: {energy_convention('energy_mj', version)}")
            print(f"the paper's figures, NOT measured here ({SOURCE}); energy_mj: {PAPER_ENERGY_CONVENTION}:")
            print(_paper_table(paper))
    return 0


def cmd_pick(args: argparse.Namespace) -> int:
    """Register the model of one point (a point run id, ``best:<objective>`` or ``knee`` of the
    latest sweep's front) in the Model Registry; prints ``models:/NAME/VERSION``."""
    import re

    from .sweep.front import best_point, knee_point, knob_of
    from .tracking import front_point_run, latest_sweep, point_run, register_point

    point = args.point.strip()
    if point != "knee" and not point.startswith("best:") and not re.fullmatch(r"[0-9a-f]{32}", point):
        raise UsageError(f"POINT {args.point!r}: give a point run id (32 hex digits, from the MLflow UI's "
                         f"{PARETO_FILTER} runs), best:<objective> (e.g. best:accuracy) or knee")
    uri = resolve_tracking_uri(args.tracking_uri)
    with _store_errors(args.tracking_uri):
        if point == "knee" or point.startswith("best:"):
            from .tracking import SweepTracker

            sweep = latest_sweep(uri, args.experiment)
            try:
                chosen = (knee_point(sweep["front"], sweep["objectives"]) if point == "knee"
                          else best_point(sweep["front"], point[5:], sweep["objectives"]))
            except ValueError as e:
                raise UsageError(f"POINT {args.point!r}: {e}") from None
            picked = front_point_run(uri, sweep["run_id"], SweepTracker.point_key(chosen, knob_of(chosen)[0]))
        else:
            picked = point_run(uri, point)
        registered, created = register_point(uri, picked, args.name, args.force)
    t = picked["tags"]
    print(f"{'registered' if created else 'already registered (--force registers it again)'}: point "
          f"{t.get('stas.point')} of sweep {t.get('stas.sweep')} ({t.get('knob')}, accuracy "
          f"{picked['metrics'].get('accuracy', float('nan')):.2f}, energy_mj "
          f"{picked['metrics'].get('energy_mj', float('nan')):.4g}), run {picked['run_id']}", file=sys.stderr)
    print(registered)
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    """The MLflow UI as a child process in its own process group; when this command stops
    (Ctrl-C, SIGTERM, SIGHUP) the whole group (``mlflow ui`` and its uvicorn workers) is stopped too."""
    import signal
    import socket
    import subprocess

    if not 1 <= args.port <= 65535:
        raise UsageError(f"--port {args.port}: give a port number from 1 to 65535 (default 5000)")
    if not 1 <= args.workers <= 64:
        raise UsageError(f"--workers {args.workers}: give 1 to 64 server processes (default 1)")
    uri = resolve_tracking_uri(args.tracking_uri)
    if not uri.startswith(("sqlite:", "postgresql", "mysql", "file:")) and "://" in uri:
        print(f"{uri} is a tracking server: open it in a browser instead")
        return 0
    try:  # is the port free? (bound and released at once; mlflow binds it next)
        socket.create_server((args.host, args.port)).close()
    except OSError as e:
        raise UsageError(f"--host {args.host} --port {args.port}: cannot listen there ({e.strerror or e}); "
                         f"choose another --port") from None
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", args.host,
           "--port", str(args.port), "--workers", str(args.workers)]
    base = f"http://{args.host}:{args.port}"
    print(f"MLflow UI for {uri} on {base}  (Ctrl-C stops)", flush=True)
    try:
        from .tracking import browse_url, latest_sweep

        sweep = latest_sweep(uri)
        print(f"the front of sweep {sweep['name']} (experiment {sweep['experiment']!r}), in the Model training "
              f"view, filtered to {PARETO_FILTER}:\n  {browse_url(base, sweep['experiment_id'])}", flush=True)
    except ValueError:  # no sweep with points in this store yet (TrackingError), or a store that cannot be read
        pass
    # the web server alone: MLflow 3's job runner (GenAI evaluation jobs, five more Python processes
    # importing MLflow) serves nothing a sweep logs; MLFLOW_SERVER_ENABLE_JOB_EXECUTION=true keeps it
    env = dict(os.environ)
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    proc = subprocess.Popen(cmd, start_new_session=True, env=env)

    def stop() -> None:
        if proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):  # its uvicorn workers may linger on TERM
            try:
                os.killpg(proc.pid, sig)
                proc.wait(wait)
                return
            except ProcessLookupError:
                return
            except subprocess.TimeoutExpired:
                continue

    def on_signal(signum, _frame):
        stop()
        raise SystemExit(128 + signum)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        return proc.wait()
    except KeyboardInterrupt:
        return 130
    finally:
        stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stas-sweep",
        description="STAS spiking vision transformers: models, energy, training and sweeps.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_models_command(sub)
    _add_energy_command(sub)
    _add_train_command(sub)
    _add_eval_command(sub)
    _add_validate_command(sub)
    _add_run_command(sub)
    _add_submit_command(sub)
    _add_pareto_command(sub)
    _add_pick_command(sub)
    _add_ui_command(sub)
    return parser


def _add_models_command(sub) -> None:
    p = sub.add_parser("models", help="list the named model configurations with parameter counts")
    p.add_argument("--pattern", default="*", help="shell-style filter, e.g. 'spikingformer-*'")
    _add_shape_args(p)
    p.add_argument("--json", action="store_true", help="print a JSON list")
    p.set_defaults(func=cmd_models)


def _add_energy_command(sub) -> None:
    p = sub.add_parser("energy", help="energy per image, firing rates and token ratio of a model")
    p.add_argument("model", help="a name from `stas-sweep models` (untrained), or a logged model: models:/NAME/VERSION "
                                 "(from stas-sweep pick; at its point's knob) or runs:/RUN_ID")
    _add_shape_args(p)
    p.add_argument("--timesteps", type=_positive_int, default=4)
    p.add_argument("--stem", choices=["sps", "isps"], default="isps")
    p.add_argument("--halting", action="store_true", help="turn A-SSA halting on")
    p.add_argument(methods.get("stas").flag, type=_finite_float, help=methods.get("stas").flag_help)
    p.add_argument("--alpha", type=_finite_float, help="halting score slope (default: the paper's for the family, "
                   "-5 for spikformer, 5 otherwise)")
    p.add_argument("--beta", type=_finite_float, help="halting score bias (default: the paper's, 0 for spikformer, -25 otherwise)")
    p.add_argument("--accumulation", choices=["tb", "b"], default="tb")
    for m in methods.halting_methods():  # every other method's knob (--keep-ratio, --exit-threshold)
        if m.name != "stas":
            p.add_argument(m.flag, type=_finite_float, help=m.flag_help)
    p.add_argument("--input", choices=["digits", "random"], default="digits",
                   help="offline digits validation images (default) or random input")
    p.add_argument("--batch", type=_positive_int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--firing-rate", type=_finite_float, metavar="R",
                   help="analytic mode, no data and no weights: every synaptic input at firing rate R in [0, 1]")
    p.add_argument("--token-ratio", type=_finite_float, metavar="Q",
                   help="with --firing-rate: A-SSA running the share Q in (0, 1] of every block's "
                        "token-timestep cells, its own work included (default: the static model)")
    p.add_argument("--convention", choices=["paper", "strict"], default="paper",
                   help="energy convention of the table's per-layer columns and of the JSON 'energy' field: "
                        "paper (STAS eqs. 11-12, energy_mj; default: the I-SPS stem one pass, every other "
                        "input at AC) or strict (energy_strict_mj: differs in that non-binary inputs - "
                        "Spikformer's integer stream into q/k/v/fc1, the real head input - are MAC, and "
                        "I-SPS's rate maps count as T spike maps); both totals are always printed")
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.add_argument("--tracking-uri", type=_tracking_uri, help="MLflow store of a models:/ or runs:/ MODEL "
                   "(default: MLFLOW_TRACKING_URI or ./mlflow.db)")
    p.set_defaults(func=cmd_energy)


def _add_train_command(sub) -> None:
    p = sub.add_parser("train", help="train one model from a YAML config (stage 1 or 2)")
    p.add_argument("config", help="training config, e.g. configs/digits_stage1.yaml")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/checkpoints/last.pt")
    p.add_argument("--output-dir", help="default: ./runs/<config name>")
    p.add_argument("--tracking-uri", type=_tracking_uri, help="MLflow tracking URI (default: MLFLOW_TRACKING_URI or ./mlflow.db)")
    p.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: OMP_NUM_THREADS if set, else the "
                                               "cores this process may use)")
    p.add_argument("--workers", type=int, default=1, help="data-parallel workers (Ray Train DDP; batch_size is the "
                                                          "global batch, split over them; default 1: this process)")
    p.set_defaults(func=cmd_train)


def _add_eval_command(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint at several epsilons")
    p.add_argument("checkpoint", help="a checkpoint file, or a logged model: models:/NAME/VERSION (from stas-sweep "
                   "pick; evaluated at its point's knob unless --epsilons) or runs:/RUN_ID")
    p.add_argument("--epsilons", help="comma-separated, e.g. 0,0.05,0.1,0.2 (default: the config's)")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p.add_argument("--halting-maps", metavar="DIR", help="write PNG halting maps of a few validation images")
    p.add_argument("--similarity", action="store_true", help="print per-block temporal similarity")
    p.add_argument("--data-root", help="override the data set root stored in the checkpoint")
    p.add_argument("--batch-size", type=_positive_int, default=64)
    p.add_argument("--max-batches", type=_positive_int, help="evaluate on the first N batches only")
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.add_argument("--tracking-uri", type=_tracking_uri, help="MLflow store of a models:/ or runs:/ CHECKPOINT "
                   "(default: MLFLOW_TRACKING_URI or ./mlflow.db)")
    p.set_defaults(func=cmd_eval)


def _add_validate_command(sub) -> None:
    p = sub.add_parser("validate", help="check a search-space file and print its resolved plan")
    p.add_argument("file")
    p.add_argument("--tracking-uri", type=_tracking_uri)
    p.set_defaults(func=cmd_validate)


def _add_run_command(sub) -> None:
    p = sub.add_parser("run", help="run a sweep from a search-space file (the main command)")
    p.add_argument("file", help="search-space file, e.g. search_spaces/digits.yaml")
    p.add_argument("--dry-run", action="store_true", help="print the resolved plan and stop")
    p.add_argument("--resume", action="store_true", help="finish an interrupted sweep")
    p.add_argument("--address", help="attach to a Ray cluster (auto, ray://host:10001); default: a local Ray")
    p.add_argument("--tracking-uri", type=_tracking_uri, help="MLflow tracking URI (default: MLFLOW_TRACKING_URI or ./mlflow.db)")
    p.set_defaults(func=cmd_run)


def _add_submit_command(sub) -> None:
    p = sub.add_parser("submit", help="submit a sweep to a Ray cluster as a job (streams its logs)")
    p.add_argument("file", help="search-space file")
    p.add_argument("--address", required=True, help="the cluster's dashboard, e.g. http://127.0.0.1:8265")
    p.add_argument("--tracking-uri", type=_tracking_uri, help="MLflow server every node can reach, e.g. http://HEAD:5000")
    p.add_argument("--resume", action="store_true", help="finish an interrupted sweep of the same file")
    p.add_argument("--no-wait", action="store_true", help="return once submitted")
    p.add_argument("--agent-wait", type=_positive_int, default=60, metavar="SECONDS",
                   help="how long to retry while a head that has just started has no job agent (default 60)")
    p.set_defaults(func=cmd_submit)


def _add_pareto_command(sub) -> None:
    p = sub.add_parser("pareto", help="print the Pareto front of the latest sweep from MLflow")
    p.add_argument("--experiment", help="MLflow experiment (default: the latest sweep of any)")
    p.add_argument("--tracking-uri", type=_tracking_uri)
    p.add_argument("--json", action="store_true", help="a JSON list of points ({front, paper} with --paper)")
    p.add_argument("--paper", action="store_true",
                   help="also list the paper's own figures (Tables 2-3) for the sweep's data set, marked as not measured")
    p.set_defaults(func=cmd_pareto)


def _add_pick_command(sub) -> None:
    p = sub.add_parser("pick", help="register a front point's model in the MLflow Model Registry")
    p.add_argument("point", metavar="POINT", help="a point run id, best:<objective> (best:accuracy, best:energy_mj, "
                   "...) or knee (nearest the ideal point, each objective scaled to [0, 1] over the front) of the "
                   "latest sweep")
    p.add_argument("--name", help="registered model name (default: the sweep's name)")
    p.add_argument("--force", action="store_true", help="register a new version even if this point has one")
    p.add_argument("--experiment", help="MLflow experiment of the sweep (default: the latest sweep of any)")
    p.add_argument("--tracking-uri", type=_tracking_uri)
    p.set_defaults(func=cmd_pick)


def _add_ui_command(sub) -> None:
    p = sub.add_parser("ui", help="start the MLflow UI for the default store (127.0.0.1)")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=5000, help="1-65535 (default 5000)")
    p.add_argument("--workers", type=int, default=1,
                   help="server processes (default 1: enough for one person browsing a local store; "
                        "MLflow's own default of 4 takes four times the memory and start-up time)")
    p.add_argument("--tracking-uri", type=_tracking_uri)
    p.set_defaults(func=cmd_ui)


# the longest error message printed; anything past it (a huge echoed value) is cut
MAX_MESSAGE = 4000


def _user_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that mean bad input: :class:`UserError` and its subclasses (ConfigError and
    SpaceError, CheckpointError, DataError, DatasetNotFoundError, TrackingError, UsageError ...)."""
    return (UserError,)


def main(argv: list[str] | None = None) -> int:
    """Run one command. Bad input (a :class:`UserError`) prints one message and returns 2;
    any other exception is a bug and keeps its traceback."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"stas-sweep {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if not isinstance(e, _user_errors()):
            raise
        text = str(e)
        if len(text) > MAX_MESSAGE:
            text = f"{text[:MAX_MESSAGE]}... (message cut at {MAX_MESSAGE} of {len(text)} characters)"
        print(f"stas-sweep {args.command}: error: {text}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
