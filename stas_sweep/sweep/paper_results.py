"""The STAS paper's own figures (Tables 2-3), as data: reference markers for a front, not measurements.

Source: "STAS: Spatio-Temporal Adaptive computation time for Spiking transformers", Table 2
(ImageNet) and Table 3 (CIFAR-10/CIFAR-100), transcribed from
/work/shared/reference/stas-paper.txt. ``energy_mj`` is the paper's convention (its appendix A,
eqs. 11-12), the one this project's ``energy_mj`` follows; ``accuracy`` is top-1 in %; None
where the table gives a dash. Table 3 gives one figure per data set as ``CIFAR-10/CIFAR-100``;
they are split into one row each. ``token_ratio`` (the average tokens per block over T*L) is
given only where the paper reports it: Table 4's ablation (CIFAR-100, STAS rows). ``note``
says where a figure is the paper's own re-run (its asterisk) or otherwise qualified.

``transformer`` marks the spiking-transformer rows (Spikformer, Spikingformer, OST, STATA,
STAS), the ones drawn on a front by default: the CNN and ANN rows sit far off a small model's
axes.
"""

from __future__ import annotations

# what the paper's energy figures are: its own count in its appendix A convention (docs/energy.md
# sets this meter's count beside them)
PAPER_ENERGY_CONVENTION = "the paper's own figure, its appendix A count (eqs. 11-12)"
SOURCE = "STAS paper (stas-paper.txt), Table 2 (ImageNet) and Table 3 (CIFAR-10/100); token ratios from Table 4"

# dataset, table, method, model, params (M), T, energy mJ, accuracy %, transformer, token ratio, note
_ROWS = [
    # -- Table 2: ImageNet ----------------------------------------------------------------
    ("imagenet", "2", "Hybrid training", "ResNet-34", 21.79, 250, None, 61.48, False, None, ""),
    ("imagenet", "2", "STBP-tdBN", "ResNet-34", 21.79, 6, 6.39, 63.72, False, None, ""),
    ("imagenet", "2", "TET", "Spiking-ResNet-34", 21.79, 6, None, 64.79, False, None, ""),
    ("imagenet", "2", "TET", "SEW ResNet-34", 21.79, 4, None, 68.00, False, None, ""),
    ("imagenet", "2", "Spiking ResNet", "ResNet-34", 21.79, 350, 59.30, 71.61, False, None, ""),
    ("imagenet", "2", "Spiking ResNet", "ResNet-50", 25.56, 350, 70.93, 72.75, False, None, ""),
    ("imagenet", "2", "SEW ResNet", "SEW ResNet-34", 21.79, 4, 4.04, 67.04, False, None, ""),
    ("imagenet", "2", "SEW ResNet", "SEW ResNet-50", 25.56, 4, 4.89, 67.78, False, None, ""),
    ("imagenet", "2", "SEW ResNet", "SEW ResNet-101", 44.55, 4, 8.91, 68.76, False, None, ""),
    ("imagenet", "2", "SEW ResNet", "SEW ResNet-152", 60.19, 4, 12.89, 69.26, False, None, ""),
    ("imagenet", "2", "MS-ResNet", "ResNet-104", 44.55, 5, None, 74.21, False, None, "params 44.55+"),
    ("imagenet", "2", "Att MS ResNet", "Att-MS-ResNet-18", 11.87, 1, 0.48, 63.97, False, None, ""),
    ("imagenet", "2", "Att MS ResNet", "Att-MS-ResNet-34", 22.12, 1, 0.57, 69.15, False, None, ""),
    ("imagenet", "2", "ANN", "Transformer-8-512", 29.68, None, 38.34, 80.80, False, None, ""),
    ("imagenet", "2", "Spikformer", "Spikformer-8-768", 66.34, 4, 21.48, 74.81, True, None, ""),
    ("imagenet", "2", "OST", "OST-8-384", 19.36, 1, 4.63, 72.42, True, None, ""),
    ("imagenet", "2", "OST", "OST-8-512", 33.87, 1, 6.92, 74.97, True, None, ""),
    ("imagenet", "2", "Spikingformer", "Spikingformer-8-384", 16.81, 4, 4.69, 72.45, True, None, ""),
    ("imagenet", "2", "Spikingformer", "Spikingformer-8-512", 29.68, 4, 7.46, 74.79, True, None, ""),
    ("imagenet", "2", "STATA", "Spikingformer-8-384", 16.82, 4, 4.33, 67.65, True, None,
     "the paper's re-implementation (*)"),
    ("imagenet", "2", "STATA", "Spikformer-8-768", None, 4, 11.16, 74.03, True, None, ""),
    ("imagenet", "2", "STAS", "Spikingformer-8-384", 16.81, 4, 3.81, 73.45, True, None, ""),
    ("imagenet", "2", "STAS", "Spikingformer-8-512", 29.68, 4, 7.16, 75.96, True, None, ""),
    ("imagenet", "2", "STAS^eps", "Spikingformer-8-384", 16.83, 4, 3.28, 72.61, True, None, ""),
    ("imagenet", "2", "STAS^eps", "Spikingformer-8-512", 29.68, 4, 5.73, 75.13, True, None, ""),
]

# Table 3: (table row, model, params, T, energy C10/C100, accuracy C10/C100, transformer, token ratio C100, note)
_CIFAR = [
    ("STBP-tdBN", "ResNet-19", 12.63, 4, (None, None), (92.9, 70.9), False, None, ""),
    ("AutoSNN", "AutoSNN (C=128)", 21, 8, (None, None), (93.2, 69.2), False, None, ""),
    ("SpikeDHS", "SpikeDHS-CLA (n3s1)", 14, 6, (None, None), (95.4, 76.3), False, None, ""),
    ("Hybrid training", "VGG-11", 9.27, 125, (None, None), (92.2, 67.9), False, None, ""),
    ("Diet-SNN", "ResNet-20", 0.27, None, (None, None), (92.5, 64.1), False, None, "T = 10/5"),
    ("TET", "ResNet-19", 12.63, 4, (None, None), (94.4, 74.5), False, None, ""),
    ("ANN-to-SNN", "ResNet-20", 10.91, 32, (None, None), (93.3, 68.4), False, None, ""),
    ("ANN", "Transformer-4-384", 9.32, None, (4.25, 4.25), (96.7, 81.0), False, None,
     "one energy for both data sets"),
    ("Spikformer", "Spikformer-4-384", 9.32, 4, (0.74, 0.89), (94.8, 77.3), True, None,
     "the paper's re-run (*)"),
    ("STATA", "Spikformer-4-384", None, 4, (None, None), (95.2, 77.9), True, None, ""),
    ("STAS^eps", "Spikformer-4-384", 9.32, 4, (0.40, 0.50), (95.2, 77.9), True, 0.42,
     "token ratio: Table 4 (CIFAR-100)"),
    ("OST", "OST-4-384", 11.37, 1, (0.46, 0.46), (95.6, 78.8), True, None, "one energy for both data sets"),
    ("Spikingformer", "Spikingformer-4-384", 9.32, 4, (0.42, 0.50), (95.7, 79.4), True, None,
     "the paper's re-run (*)"),
    ("STATA", "Spikingformer-4-384", None, 4, (None, None), (95.8, 79.9), True, None, ""),
    ("STAS^eps", "Spikingformer-4-384", 9.32, 4, (0.37, 0.46), (95.8, 79.4), True, 0.50,
     "token ratio: Table 4 (CIFAR-100; 78.5 % there)"),
]
for _m, _arch, _p, _t, _e, _a, _tf, _tok, _note in _CIFAR:
    _ROWS.append(("cifar10", "3", _m, _arch, _p, _t, _e[0], _a[0], _tf, None, _note.split("token ratio")[0].strip()))
    _ROWS.append(("cifar100", "3", _m, _arch, _p, _t, _e[1], _a[1], _tf, _tok, _note))

_KEYS = ("dataset", "table", "method", "model", "params_m", "timesteps", "energy_mj", "accuracy", "transformer",
         "token_ratio", "note")
PAPER_RESULTS: tuple[dict, ...] = tuple(dict(zip(_KEYS, r)) for r in _ROWS)
DATASETS = ("cifar10", "cifar100", "imagenet")


def paper_rows(dataset: str | None, *, transformers_only: bool = False) -> list[dict]:
    """The paper's rows for ``dataset`` (``cifar10``, ``cifar100``, ``imagenet``; any other
    name, e.g. ``digits``, has none), each with ``source``, ``measured: False`` and
    ``energy_convention`` (:data:`PAPER_ENERGY_CONVENTION`)."""
    dataset = str(dataset).strip().lower().replace("_", "-") if dataset else None
    return [{**r, "source": f"{SOURCE}, Table {r['table']}", "measured": False,
             "energy_convention": PAPER_ENERGY_CONVENTION} for r in PAPER_RESULTS
            if r["dataset"] == dataset and (r["transformer"] or not transformers_only)]


def marker_label(row: dict) -> str:
    """The short label of a paper marker on a plot: ``paper: STAS^eps Spikingformer-8-384``."""
    return f"paper: {row['method']} {row['model']}"
