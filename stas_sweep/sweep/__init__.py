"""Sweeps: search-space files, the Ray trainable, Optuna/ASHA wiring, points and the Pareto front.

Submodules are imported explicitly so that this package stays cheap to import:

- :mod:`stas_sweep.sweep.front` -- candidate points of finished trials, their front and
  hypervolume, and the names (report keys, point keys, objectives, hover keys).
- :mod:`stas_sweep.sweep.pareto` -- pure numpy dominance and hypervolume.
- :mod:`stas_sweep.sweep.plots` -- matplotlib (Agg) PNGs and self-contained plotly HTML of a
  front and of hypervolume over time.
"""
