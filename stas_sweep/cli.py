"""``stas-sweep``: the one command-line door.

    stas-sweep models [--json]              named configurations and parameter counts
    stas-sweep energy MODEL [--epsilon E]   energy, firing rates and token ratio on a batch
"""

from __future__ import annotations

import argparse
import json
import sys


class UsageError(ValueError):
    """Bad input from the user: printed as one line, exit code 2."""


def _add_shape_args(p: argparse.ArgumentParser, img_size: int = 32) -> None:
    p.add_argument("--num-classes", type=int, default=10, help="classifier outputs (default 10)")
    p.add_argument("--img-size", type=int, default=img_size, help=f"input side in pixels (default {img_size})")
    p.add_argument("--in-channels", type=int, default=3, help="input channels (default 3; DVS frames: 2)")


def cmd_models(args: argparse.Namespace) -> int:
    from .models import create_model, get_arch, list_models
    from .models.stems import num_tokens

    rows = []
    for name in list_models(args.pattern):
        arch = get_arch(name)
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
    print(f"{'model':<22} {'L':>2} {'D':>4} {'heads':>5} {'params':>12} {'':>7}  "
          f"(classes={args.num_classes}, img_size={args.img_size}, tokens={num_tokens(args.img_size)})")
    for r in rows:
        print(f"{r['name']:<22} {r['depth']:>2} {r['embed_dim']:>4} {r['num_heads']:>5} {r['params']:>12,} {r['params'] / 1e6:>6.2f}M")
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


def cmd_energy(args: argparse.Namespace) -> int:
    import torch

    from .energy import measure_energy
    from .models import create_model
    from .models.diagnostics import calibrate_batchnorm, temporal_similarity

    halting = None
    if args.epsilon is not None or args.halting:
        halting = {"alpha": args.alpha, "beta": args.beta, "epsilon": args.epsilon or 0.01,
                   "accumulation": args.accumulation}
    model = create_model(args.model, num_classes=args.num_classes, img_size=args.img_size,
                         in_channels=args.in_channels, timesteps=args.timesteps, stem=args.stem,
                         halting=halting)
    x, source = _input_batch(args)
    # untrained weights: set batch-norm statistics from the batch so the LIF layers fire
    calibrate_batchnorm(model, x)
    report = measure_energy(model, x)
    similarity = temporal_similarity(model, x) if args.timesteps > 1 else []
    with torch.no_grad():
        out = model.eval()(x)
    result = {
        "model": args.model, "stem": args.stem, "timesteps": args.timesteps, "input": source,
        "epsilon": None if halting is None else halting["epsilon"],
        "energy_mj": report.energy_mj, "mac_ops": report.mac_ops, "ac_ops": report.ac_ops,
        "token_ratio": report.token_ratio, "temporal_similarity": similarity,
        "active_tokens": out.active_tokens.mean(0).tolist(),
        "layers": [vars(r) for r in report.layers],
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{args.model} ({args.stem}, T={args.timesteps}) on {source}; untrained weights, "
          f"batch-norm calibrated on the batch")
    print(report.table())
    if similarity:
        print("temporal similarity of block inputs: " + ", ".join(f"{s:.3f}" for s in similarity))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stas-sweep",
        description="STAS spiking vision transformers: models, energy, training and sweeps.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("models", help="list the named model configurations with parameter counts")
    p.add_argument("--pattern", default="*", help="shell-style filter, e.g. 'spikingformer-*'")
    _add_shape_args(p)
    p.add_argument("--json", action="store_true", help="print a JSON list")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("energy", help="energy per image, firing rates and token ratio of a model")
    p.add_argument("model", help="a name from `stas-sweep models`")
    _add_shape_args(p)
    p.add_argument("--timesteps", type=int, default=4)
    p.add_argument("--stem", choices=["sps", "isps"], default="isps")
    p.add_argument("--halting", action="store_true", help="turn A-SSA halting on")
    p.add_argument("--epsilon", type=float, help="halting threshold knob in [0, 1) (implies --halting)")
    p.add_argument("--alpha", type=float, default=5.0)
    p.add_argument("--beta", type=float, default=-25.0)
    p.add_argument("--accumulation", choices=["tb", "b"], default="tb")
    p.add_argument("--input", choices=["digits", "random"], default="digits",
                   help="offline digits validation images (default) or random input")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p.set_defaults(func=cmd_energy)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (UsageError, ValueError, FileNotFoundError) as e:
        print(f"stas-sweep {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
