"""Plots of a sweep's Pareto front and of its hypervolume over time.

PNGs are drawn with matplotlib's Agg canvas directly (no pyplot, no display, no global backend
switch); the HTML is a self-contained plotly page with plotly.js inlined, so it opens offline
(e.g. as an MLflow artifact). matplotlib and plotly are imported inside the functions, so
importing this module is cheap.

Which points are on the front is decided over *all* ``objectives`` (see
:func:`stas_sweep.sweep.pareto.non_dominated`); ``x`` and ``y`` only choose the two metrics
drawn. The step line joins the front points that are also non-dominated in the drawn (x, y)
plane, which is the whole front when the objectives are exactly x and y; it is drawn only when
both x and y are objectives (their directions fix the staircase).

Two optional layers, each drawn by its own small function: when the points carry more than one
``method`` (a baselines sweep) they are coloured by method (front points ringed in black and
larger) instead of grey/red (:func:`_methods_png`, :func:`_methods_html`); ``paper`` rows
(:mod:`stas_sweep.sweep.paper_results`) are drawn as labelled star markers, named as the
paper's figures, not measured ones (:func:`_paper_png`, :func:`_paper_html`).
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Mapping, Sequence

from .front import hover_keys as default_hover_keys
from .pareto import Objective, ObjectiveLike, _number, as_objectives, non_dominated

__all__ = ["plot_front_png", "plot_front_html", "plot_hypervolume_png"]

_GREY = "#9e9e9e"
_FRONT = "#d62728"
METHOD_COLOURS = {"stas": "#1f77b4", "token_drop": "#2ca02c", "timestep_exit": "#9467bd", "static": "#8c564b"}
_PAPER = "#ff7f0e"
PAPER_LEGEND = "paper's figures (Tables 2-3; not measured)"


def _methods(points) -> list[str]:
    """The methods of the points, in first-seen order, when there are several; else []."""
    seen = list(dict.fromkeys(p.get("method") for p in points if p.get("method")))
    return seen if len(seen) > 1 else []


def _methods_png(ax, points, front, xy, drawable, methods) -> None:
    """One colour per method; front points larger and ringed in black."""
    for m in methods:
        colour = METHOD_COLOURS.get(m, _GREY)
        for on_front in (False, True):
            idx = [i for i in drawable if points[i].get("method") == m and bool(front[i]) == on_front]
            if idx:
                ax.scatter([xy[i][0] for i in idx], [xy[i][1] for i in idx], s=40 if on_front else 18, c=colour,
                           edgecolors="black" if on_front else "none", linewidths=0.8, zorder=4 if on_front else 2,
                           alpha=1.0 if on_front else 0.6,
                           label=f"{m} ({len(idx)}{', on the front' if on_front else ''})")


def _drawable_paper(paper, x, y) -> list[tuple[float, float, dict]]:
    return [(float(r[x]), float(r[y]), r) for r in paper or ()
            if isinstance(r.get(x), (int, float)) and isinstance(r.get(y), (int, float))]


def _paper_png(ax, paper, x, y) -> None:
    """The paper's rows as labelled stars."""
    from .paper_results import marker_label

    rows = _drawable_paper(paper, x, y)
    if not rows:
        return
    ax.scatter([a for a, _, _ in rows], [b for _, b, _ in rows], marker="*", s=110, c=_PAPER,
               edgecolors="black", linewidths=0.5, zorder=5, label=PAPER_LEGEND)
    for a, b, r in rows:
        ax.annotate(marker_label(r), (a, b), textcoords="offset points", xytext=(4, 4), fontsize=6, color="#7f3f00")


def _label(name: str, objs: Sequence[Objective]) -> str:
    for o in objs:
        if o.name == name:
            return o.label
    return name


def _prepare(points, objectives, x, y):
    """Front mask, plottable indices, and the staircase (xs, ys, where) or None."""
    objs = as_objectives(objectives)
    front = non_dominated(points, objs)
    xy = [(_number(p.get(x)), _number(p.get(y))) for p in points]
    drawable = [i for i, (a, b) in enumerate(xy) if not (math.isnan(a) or math.isnan(b))]
    modes = {o.name: o.mode for o in objs}
    stair = None
    if x in modes and y in modes and x != y:
        f_idx = [i for i in drawable if front[i]]
        sub = [{x: xy[i][0], y: xy[i][1]} for i in f_idx]
        keep = non_dominated(sub, [Objective(x, modes[x]), Objective(y, modes[y])])
        pts = sorted({xy[i] for i, k in zip(f_idx, keep) if k})
        if pts:
            # For min-x the best y reachable at x is the one of the last front point left of x
            # ("post" step); for max-x it is the one of the first point right of x ("pre").
            where = "post" if modes[x] == "min" else "pre"
            stair = ([a for a, _ in pts], [b for _, b in pts], where)
    return objs, front, xy, drawable, stair


def _ensure_parent(path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    return p


def _step_xy(xs, ys, where):
    """Vertices of a step line, as plotly's ``line_shape='hv'/'vh'`` would draw them."""
    out_x, out_y = [xs[0]], [ys[0]]
    for i in range(1, len(xs)):
        if where == "post":  # horizontal first, then vertical
            out_x += [xs[i], xs[i]]
            out_y += [ys[i - 1], ys[i]]
        else:  # vertical first, then horizontal
            out_x += [xs[i - 1], xs[i]]
            out_y += [ys[i], ys[i]]
    return out_x, out_y


def plot_front_png(
    points: Sequence[Mapping[str, float]],
    objectives: Sequence[ObjectiveLike],
    path,
    x: str = "energy_mj",
    y: str = "accuracy",
    title: str | None = None,
    paper: Sequence[Mapping] | None = None,
) -> Path:
    """Scatter of ``points`` in the (x, y) plane with the Pareto front highlighted.

    All drawable points (finite x and y) are grey; front points are red and joined by a step
    line (the attainment boundary); points of several methods are coloured by method instead.
    ``paper``: the paper's rows, drawn as labelled stars. Axis labels carry the direction of
    objectives, e.g. ``"energy_mj (min)"``. Parent folders are created.

    Returns:
        ``Path(path)``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    objs, front, xy, drawable, stair = _prepare(points, objectives, x, y)
    out = _ensure_parent(path)

    fig = Figure(figsize=(6.4, 4.8), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    others = [i for i in drawable if not front[i]]
    on = [i for i in drawable if front[i]]
    methods = _methods(points)
    if methods:
        _methods_png(ax, points, front, xy, drawable, methods)
    elif others:
        ax.scatter([xy[i][0] for i in others], [xy[i][1] for i in others], s=18, c=_GREY,
                   alpha=0.7, label=f"other points ({len(others)})", zorder=2)
    if stair is not None:
        ax.step(stair[0], stair[1], where=stair[2], color=_FRONT, linewidth=1.5, zorder=3)
    if on and not methods:
        ax.scatter([xy[i][0] for i in on], [xy[i][1] for i in on], s=36, c=_FRONT,
                   edgecolors="black", linewidths=0.5, label=f"Pareto front ({len(on)})", zorder=4)
    _paper_png(ax, paper, x, y)
    ax.set_xlabel(_label(x, objs))
    ax.set_ylabel(_label(y, objs))
    ax.set_title(title if title is not None else f"Pareto front: {y} vs {x}")
    ax.grid(True, alpha=0.3)
    if others or on or _drawable_paper(paper, x, y):
        ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    fig.savefig(out, format="png")
    return out


def _hover_text(p: Mapping, keys: Sequence[str], extra: Sequence[str]) -> str:
    lines = []
    seen = set()
    for k in list(keys) + list(extra):
        if k in seen or k not in p:
            continue
        seen.add(k)
        v = p[k]
        if isinstance(v, float):
            v = f"{v:.6g}"
        lines.append(f"{html.escape(str(k))}: {html.escape(str(v))}")
    return "<br>".join(lines)


def plot_front_html(
    points: Sequence[Mapping[str, float]],
    objectives: Sequence[ObjectiveLike],
    path,
    x: str = "energy_mj",
    y: str = "accuracy",
    hover_keys: Sequence[str] | None = None,
    title: str | None = None,
    paper: Sequence[Mapping] | None = None,
) -> Path:
    """Interactive, self-contained plotly HTML of ``points`` with the front highlighted
    (coloured by method when they carry several; ``paper``: the paper's rows as stars).

    Hovering a point shows the ``hover_keys`` it has (default, ``None``: its trial id, epsilon
    and every searched parameter it carries, e.g. ``halting.alpha``; see
    :func:`stas_sweep.sweep.front.hover_keys`) followed by the objective values. plotly.js
    is embedded in the file (several MB), so it opens without network access. Parent folders
    are created.

    Returns:
        ``Path(path)``.
    """
    import plotly.graph_objects as go

    objs, front, xy, drawable, stair = _prepare(points, objectives, x, y)
    out = _ensure_parent(path)
    obj_names = [o.name for o in objs]

    def keys_for(p):
        return default_hover_keys(p) if hover_keys is None else list(hover_keys)

    fig = go.Figure()
    methods = _methods(points)
    groups = ([(m, on_front) for m in methods for on_front in (False, True)] if methods
              else [(None, False), (None, True)])
    for method, on_front in groups:
        idx = [i for i in drawable if bool(front[i]) == on_front and (method is None or points[i].get("method") == method)]
        if not idx:
            continue
        if method is None:
            name, color, size = ("Pareto front", _FRONT, 10) if on_front else ("other points", _GREY, 7)
        else:
            name = f"{method}{', on the front' if on_front else ''}"
            color, size = METHOD_COLOURS.get(method, _GREY), 10 if on_front else 7
        fig.add_trace(
            go.Scatter(
                x=[xy[i][0] for i in idx],
                y=[xy[i][1] for i in idx],
                mode="markers",
                name=f"{name} ({len(idx)})",
                marker=dict(color=color, size=size, line=dict(width=0.5, color="black") if on_front else None),
                hovertext=[_hover_text(points[i], keys_for(points[i]), obj_names + [x, y]) for i in idx],
                hoverinfo="text",
            )
        )
    _paper_html(fig, paper, x, y)
    if stair is not None:
        sx, sy = _step_xy(*stair)
        fig.add_trace(
            go.Scatter(x=sx, y=sy, mode="lines", name="front (step)", hoverinfo="skip",
                       line=dict(color=_FRONT, width=1.5), showlegend=False)
        )
    fig.update_layout(
        title=dict(text=title if title is not None else f"Pareto front: {y} vs {x}"),
        xaxis=dict(title=dict(text=_label(x, objs))),
        yaxis=dict(title=dict(text=_label(y, objs))),
        template="plotly_white",
        hovermode="closest",
    )
    fig.write_html(str(out), include_plotlyjs=True, full_html=True)
    return out


def _paper_html(fig, paper, x, y) -> None:
    """The paper's rows as one trace of labelled stars, its hover naming the source."""
    import plotly.graph_objects as go

    from .paper_results import marker_label

    rows = _drawable_paper(paper, x, y)
    if not rows:
        return
    fig.add_trace(go.Scatter(
        x=[a for a, _, _ in rows], y=[b for _, b, _ in rows], mode="markers+text", name=PAPER_LEGEND,
        text=[marker_label(r) for _, _, r in rows], textposition="top right", textfont=dict(size=9),
        marker=dict(symbol="star", size=13, color=_PAPER, line=dict(width=0.5, color="black")),
        hovertext=[_hover_text(r, ["method", "model", "table", "note", "source", "measured"], [x, y]) for _, _, r in rows],
        hoverinfo="text",
    ))


def plot_hypervolume_png(history: Sequence[float], path, title: str | None = None) -> Path:
    """Hypervolume after each finished point (``history[t]`` at x = t + 1), as a step line.

    Returns:
        ``Path(path)``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out = _ensure_parent(path)
    fig = Figure(figsize=(6.4, 4.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    hv = [float(v) for v in history]
    if hv:
        ax.step(range(1, len(hv) + 1), hv, where="post", color="#1f77b4", linewidth=1.5)
        ax.plot(range(1, len(hv) + 1), hv, "o", color="#1f77b4", markersize=3)
    ax.set_xlabel("finished points")
    ax.set_ylabel("hypervolume")
    ax.set_title(title if title is not None else "Hypervolume over time")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, format="png")
    return out
