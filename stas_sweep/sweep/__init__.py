"""Sweep utilities: Pareto fronts, hypervolume and their plots.

Submodules are imported explicitly so that this package stays cheap to import:

- :mod:`stas_sweep.sweep.pareto` -- pure numpy functions: :class:`Objective`,
  ``non_dominated``, ``pareto_front``, ``pareto_ranks``, ``hypervolume``,
  ``hypervolume_history``.
- :mod:`stas_sweep.sweep.plots` -- matplotlib (Agg) PNGs and self-contained plotly HTML of a
  front and of hypervolume over time.
"""
