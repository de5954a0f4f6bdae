"""The figures of docs/energy.md: ``stas-sweep energy MODEL --firing-rate R [--token-ratio Q]``
(the analytic mode, no data and no weights) for the models of the paper's Tables 2-4.

    PYTHONPATH=. python benchmarks/energy_table.py > /tmp/energy_table.md

For each model and data set: the static energy and stem share at firing rate 0.25, the energy
and saving at Table 4's token ratio, and the firing rate at which the static energy equals the
paper's static figure (the energy is affine in the rate: two runs fix the line, a third at that
rate prints it), with the saving there and the token ratio our meter needs for the paper's
saving (affine in the ratio too). Every figure below is a field the command printed.
"""

from __future__ import annotations

import contextlib
import io
import json

from stas_sweep.cli import main

RATE = 0.25
# (model, data set, img, classes, paper static mJ, Table 4 ratio, paper saving %, its table row)
CASES = [
    ("spikformer-4-384", "CIFAR-10", 32, 10, 0.74, 0.42, 45.9, "Table 3, STAS^eps"),
    ("spikformer-4-384", "CIFAR-100", 32, 100, 0.89, 0.42, 43.8, "Table 3, STAS^eps"),
    ("spikingformer-4-384", "CIFAR-10", 32, 10, 0.42, 0.50, 11.9, "Table 3, STAS^eps"),
    ("spikingformer-4-384", "CIFAR-100", 32, 100, 0.50, 0.50, 8.0, "Table 3, STAS^eps"),
    ("spikingformer-8-384", "ImageNet", 224, 1000, 4.69, 0.50, 30.1, "Table 2, STAS^eps"),
    ("spikingformer-8-512", "ImageNet", 224, 1000, 7.46, 0.50, 23.19, "Table 2, STAS^eps"),
]


def energy(model: str, img: int, classes: int, rate: float, ratio: float | None = None) -> dict:
    """One run of the command, its JSON."""
    args = ["energy", model, "--img-size", str(img), "--num-classes", str(classes),
            "--firing-rate", repr(rate), "--json"]
    if ratio is not None:
        args += ["--token-ratio", repr(ratio)]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(args) == 0, args
    return json.loads(out.getvalue())


def command(model: str, img: int, classes: int, rate: float, ratio: float | None = None) -> str:
    q = "" if ratio is None else f" --token-ratio {ratio:.4g}"
    return f"stas-sweep energy {model} --img-size {img} --num-classes {classes} --firing-rate {rate:.4g}{q}"


def row(case: tuple) -> dict:
    model, data, img, classes, paper_static, ratio, paper_saving, _ = case
    static = energy(model, img, classes, RATE)
    stas = energy(model, img, classes, RATE, ratio)
    e0, e1 = (energy(model, img, classes, r)["energy_mj"] for r in (0.0, 1.0))
    r_eq = round((paper_static - e0) / (e1 - e0), 4)
    at_eq = energy(model, img, classes, r_eq, ratio)
    # the token ratio whose saving is the paper's, at that rate (the energy is affine in the ratio)
    lo, hi = (energy(model, img, classes, r_eq, q)["energy_mj"] for q in (0.01, 1.0))
    target = at_eq["static_energy_mj"] * (1 - paper_saving / 100)
    q_eq = round(0.01 + (target - lo) / (hi - lo) * 0.99, 4)
    at_q = energy(model, img, classes, r_eq, q_eq) if 0 < q_eq <= 1 else None
    return {"case": case, "static": static, "stas": stas, "r_eq": r_eq, "at_eq": at_eq, "q_eq": q_eq, "at_q": at_q}


def main_table() -> None:
    rows = [row(c) for c in CASES]
    print(f"### At firing rate {RATE}\n")
    print("| model | data | static mJ (paper conv.) | static strict mJ | stem share | ratio | mJ at ratio | "
          "our saving | paper's saving |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        model, data, _, _, _, ratio, paper_saving, table = r["case"]
        s, a = r["static"], r["stas"]
        print(f"| {model} | {data} | {s['energy_mj']:.4f} | {s['energy_strict_mj']:.4f} | {s['stem_share']:.3f} | "
              f"x{ratio:.2f} | {a['energy_mj']:.4f} | -{100 * a['saving']:.1f} % | -{paper_saving} % ({table}) |")
    print("\n### At the firing rate where our static energy is the paper's\n")
    print("| model | data | paper static mJ | rate | static mJ | stem share | mJ at Table 4's ratio | our saving | "
          "ratio for the paper's saving |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        model, data, _, _, paper_static, ratio, paper_saving, _ = r["case"]
        e, q = r["at_eq"], r["at_q"]
        need = "none in (0, 1]" if q is None else f"x{r['q_eq']:.3f} (-{100 * q['saving']:.1f} %)"
        print(f"| {model} | {data} | {paper_static} | {r['r_eq']:.4f} | {e['static_energy_mj']:.4f} | "
              f"{energy_share(r)} | x{ratio:.2f}: {e['energy_mj']:.4f} | -{100 * e['saving']:.1f} % | {need} |")
    print("\n### A-SSA's own work (every cell scored, ratio 1.0, rate 0.25)\n")
    for model, data, img, classes in (("spikingformer-4-384", "CIFAR-100", 32, 100),
                                      ("spikingformer-8-384", "ImageNet", 224, 1000),
                                      ("spikingformer-8-512", "ImageNet", 224, 1000)):
        e = energy(model, img, classes, RATE, 1.0)
        print(f"- {model} {data}: {e['halting_score_mj']:.6f} mJ ({e['halting_score_pj_per_cell']:.1f} pJ per "
              f"scored token-cell); `{command(model, img, classes, RATE, 1.0)} --json`")
    print("\n### The commands\n")
    for r in rows:
        model, _, img, classes, _, ratio, _, _ = r["case"]
        for rate, q in ((RATE, None), (RATE, ratio), (r["r_eq"], ratio), (r["r_eq"], r["q_eq"] if r["at_q"] else None)):
            print(f"    {command(model, img, classes, rate, q)} --json")


def energy_share(r: dict) -> str:
    at = r["at_eq"]
    static_stem = at["stem_energy_mj"] / at["static_energy_mj"]  # the stem does not change with the ratio
    return f"{static_stem:.3f}"


if __name__ == "__main__":
    main_table()
