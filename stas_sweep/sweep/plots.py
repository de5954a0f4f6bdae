"""Plots of a sweep's Pareto front and of its hypervolume over time.

PNGs are drawn with matplotlib's Agg canvas directly (no pyplot, no display, no global backend
switch). The HTML is a small self-written page: an inline SVG scatter with one hover tooltip
per point (the SVG ``<title>``) and a table of the front, no script and nothing to download,
so it stays a few kB per hundred points and shows at once in MLflow's artifact viewer
(plotly with plotly.js inlined weighed 4.6 MB and showed blank there for about 25 s).
matplotlib is imported inside the functions, so importing this module is cheap.

Which points are on the front is decided over *all* ``objectives`` (see
:func:`stas_sweep.sweep.pareto.non_dominated`); ``x`` and ``y`` only choose the two metrics
drawn. The step line joins the front points that are also non-dominated in the drawn (x, y)
plane, which is the whole front when the objectives are exactly x and y; it is drawn only when
both x and y are objectives (their directions fix the staircase). Accuracy is in percent
(SPEC 2.6) and its axis says so.

Two optional layers, each drawn by its own small function: when the points carry more than one
``method`` (a baselines sweep) they are coloured by method (front points ringed in black and
larger) instead of grey/red (:func:`_methods_png`, :func:`_methods_svg`); ``paper`` rows
(:mod:`stas_sweep.sweep.paper_results`) are drawn as labelled star markers, named as the
paper's figures, not measured ones (:func:`_paper_png`, :func:`_paper_svg`).
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Mapping, Sequence

from .. import methods as method_records, objectives as objective_records
from .front import hover_keys as default_hover_keys
from .paper_results import PAPER_ENERGY_CONVENTION
from .pareto import Objective, ObjectiveLike, _number, as_objectives, non_dominated

__all__ = ["plot_front_png", "plot_front_html", "plot_hypervolume_png"]

_GREY = "#9e9e9e"
_FRONT = "#d62728"
_PAPER = "#ff7f0e"
PAPER_LEGEND = "paper's figures (Tables 2-3; not measured)"


def energy_convention(key: str, version: str | int | None = None) -> str | None:
    """What an energy axis of our points means (their hover and the page say it), or None for
    another metric. ``version``: the meter's convention the points were counted in
    (``stas.energy_convention``, :data:`stas_sweep.energy.METER_VERSION`), when known."""
    counted = "" if version is None else f", energy convention {version}"
    if key == "energy_mj":
        return (f"the paper's convention (appendix A, eqs. 11-12) as this meter counts it{counted} "
                f"(docs/energy.md)")
    if key == "energy_strict_mj":
        return f"the strict convention (non-binary inputs at MAC){counted}"
    return None


def _methods(points) -> list[str]:
    """The methods of the points, in first-seen order, when there are several; else []."""
    seen = list(dict.fromkeys(p.get("method") for p in points if p.get("method")))
    return seen if len(seen) > 1 else []


def _methods_png(ax, points, front, xy, drawable, methods) -> None:
    """One colour per method; front points larger and ringed in black."""
    for m in methods:
        colour = method_records.colour_of(m, _GREY)
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


def _axis_label(name: str, objs: Sequence[Objective]) -> str:
    """``"accuracy (%, max)"``, ``"energy_mj (min)"``: the objective's axis title
    (:mod:`stas_sweep.objectives`) with the sweep's direction."""
    mode = next((o.mode for o in objs if o.name == name), None)
    return objective_records.axis_label(name, mode)


def _overlaps(xy, idx) -> dict[int, int]:
    """How many of the points ``idx`` share each point's exact (x, y): {index: count} for counts > 1."""
    seen: dict[tuple, list[int]] = {}
    for i in idx:
        seen.setdefault(xy[i], []).append(i)
    return {i: len(group) for group in seen.values() if len(group) > 1 for i in group}


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

    Other points are hollow grey rings and front points half-transparent red discs, so points
    at the same place stay visible (e.g. two epsilons that halt nothing); a place holding
    several points is labelled ``xN``; points of several methods are coloured by method
    instead. Front points are joined by a step line (the attainment boundary). ``paper``: the
    paper's rows, drawn as labelled stars. Axis labels carry the direction of objectives and
    the unit of accuracy, e.g. ``"accuracy (%, max)"``. Parent folders are created.

    Returns:
        ``Path(path)``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator, PercentFormatter

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
        ax.scatter([xy[i][0] for i in others], [xy[i][1] for i in others], s=42, facecolors="none",
                   edgecolors=_GREY, linewidths=1.2, label=f"other points ({len(others)})", zorder=2)
    if stair is not None:
        ax.step(stair[0], stair[1], where=stair[2], color=_FRONT, linewidth=1.5, alpha=0.8, zorder=3)
    if on and not methods:
        ax.scatter([xy[i][0] for i in on], [xy[i][1] for i in on], s=30, c=_FRONT, alpha=0.55,
                   edgecolors="black", linewidths=0.6, label=f"Pareto front ({len(on)})", zorder=4)
    labelled = set()
    for i, n in _overlaps(xy, drawable).items():
        if xy[i] not in labelled:
            labelled.add(xy[i])
            ax.annotate(f"x{n}", xy[i], xytext=(5, 4), textcoords="offset points", fontsize=7, zorder=5)
    _paper_png(ax, paper, x, y)
    for axis, name in ((ax.xaxis, x), (ax.yaxis, y)):
        axis.set_major_locator(MaxNLocator(nbins=6))  # long labels such as 0.003725 mJ must not collide
        if name == "accuracy":
            axis.set_major_formatter(PercentFormatter(xmax=100, decimals=None))
    ax.set_xlabel(_axis_label(x, objs))
    ax.set_ylabel(_axis_label(y, objs))
    ax.set_title(title if title is not None else f"Pareto front: {y} vs {x}")
    ax.grid(True, alpha=0.3)
    ax.margins(0.08)
    if others or on or _drawable_paper(paper, x, y):
        ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    fig.savefig(out, format="png")
    return out


def _hover_text(p: Mapping, keys: Sequence[str], extra: Sequence[str]) -> str:
    """``key: value`` lines (``keys`` first, then ``extra``), HTML-escaped, one per line."""
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
    return "\n".join(lines)


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values covering [lo, hi]."""
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def plot_front_html(
    points: Sequence[Mapping[str, float]],
    objectives: Sequence[ObjectiveLike],
    path,
    x: str = "energy_mj",
    y: str = "accuracy",
    hover_keys: Sequence[str] | None = None,
    title: str | None = None,
    paper: Sequence[Mapping] | None = None,
    energy_version: str | None = None,
) -> Path:
    """A small self-contained HTML page: an SVG scatter of ``points`` with the front highlighted
    (coloured by method when they carry several; ``paper``: the paper's rows as labelled stars),
    and a table of the front points.

    Hovering a point shows (as its SVG tooltip) the ``hover_keys`` it has (default, ``None``:
    its trial id, epsilon and every searched parameter it carries, e.g. ``halting.alpha``;
    see :func:`stas_sweep.sweep.front.hover_keys`) followed by the objective values (the sweep's, then
    any other objective metric it carries, e.g. ``latency_ms``) and, for an
    energy axis, the convention it was counted in (:func:`energy_convention`, with
    ``energy_version``); a paper star's tooltip says its figure is the paper's own count. No script,
    no external file: about 0.26 kB per point (255 kB for 1000), so it opens at once in MLflow's artifact
    viewer. Parent folders are created.

    Returns:
        ``Path(path)``.
    """
    objs, front, xy, drawable, stair = _prepare(points, objectives, x, y)
    out = _ensure_parent(path)
    obj_names = [o.name for o in objs]
    title = title if title is not None else f"Pareto front: {y} vs {x}"
    paper_rows = _drawable_paper(paper, x, y)
    conventions = [(f"{k} convention", c) for k in dict.fromkeys((x, y))
                   if (c := energy_convention(k, energy_version)) is not None]
    methods = _methods(points)
    canvas = _Canvas.around([xy[i] for i in drawable] + [(a, b) for a, b, _ in paper_rows])
    svg = canvas.frame(x, y, objs)
    if stair is not None:
        vx, vy = _step_xy(*stair)
        pts_attr = " ".join(f"{canvas.sx(a):.1f},{canvas.sy(b):.1f}" for a, b in zip(vx, vy))
        svg.append(f'<polyline points="{pts_attr}" fill="none" stroke="{_FRONT}" stroke-width="1.5"/>')
    for on_front in (False, True):  # front points drawn last, on top
        for i in drawable:
            if bool(front[i]) != on_front:
                continue
            keys = default_hover_keys(points[i]) if hover_keys is None else list(hover_keys)
            # the sweep's objectives first, then every other objective metric the point carries (latency_ms ...)
            tip = _hover_text(points[i], keys, obj_names + [x, y, *objective_records.names()])
            tip += "".join(f"\n{html.escape(k)}: {html.escape(c)}" for k, c in conventions)
            svg.append(_point_svg(canvas, xy[i], points[i].get("method"), on_front, bool(methods), tip))
    svg += _paper_svg(paper_rows, canvas.sx, canvas.sy)
    svg.append("</svg>")

    on = [points[i] for i in range(len(points)) if front[i]]
    legend = _legend_html(points, drawable, front, methods, len(on), bool(paper_rows), conventions)
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:16px}} table{{border-collapse:collapse;font-size:12px}}
td,th{{border:1px solid #ccc;padding:2px 6px;text-align:right}} circle:hover{{stroke:#000;stroke-width:2}}</style>
</head><body>
<h3>{html.escape(title)}</h3>
<p>{legend} Hover a point for its trial, epsilon and searched parameters.</p>
{"".join(svg)}
<h4>Front points</h4>
{_front_table_html(on, obj_names, x, y, bool(methods))}
</body></html>
"""
    out.write_text(page, encoding="utf-8")
    return out


class _Canvas:
    """The SVG page of :func:`plot_front_html`: its size and margins (px) and the data range
    drawn, with the maps from data to pixels."""

    W, H, L, R, T, B = 720, 480, 80, 20, 20, 56

    def __init__(self, x0: float, x1: float, y0: float, y1: float) -> None:
        self.x0, self.x1, self.y0, self.y1 = x0, x1, y0, y1

    @classmethod
    def around(cls, xy: Sequence[tuple[float, float]]) -> "_Canvas":
        """A range holding every (x, y), with 6 % to spare on each side."""
        xs, ys = [a for a, _ in xy], [b for _, b in xy]
        x0, x1 = (min(xs), max(xs)) if xs else (0.0, 1.0)
        y0, y1 = (min(ys), max(ys)) if ys else (0.0, 1.0)
        padx = (x1 - x0) * 0.06 or abs(x0) * 0.06 or 0.5
        pady = (y1 - y0) * 0.06 or abs(y0) * 0.06 or 0.5
        return cls(x0 - padx, x1 + padx, y0 - pady, y1 + pady)

    def sx(self, v: float) -> float:
        return self.L + (v - self.x0) / (self.x1 - self.x0) * (self.W - self.L - self.R)

    def sy(self, v: float) -> float:
        return self.H - self.B - (v - self.y0) / (self.y1 - self.y0) * (self.H - self.T - self.B)

    def frame(self, x: str, y: str, objs) -> list[str]:
        """The opening of the SVG: plot area, grid lines with tick labels, axis titles."""
        W, H, L, R, T, B = self.W, self.H, self.L, self.R, self.T, self.B

        def fmt(v, name):
            unit = objective_records.OBJECTIVES[name].unit if name in objective_records.OBJECTIVES else ""
            return f"{v:.4g}%" if unit == "%" else f"{v:.4g}"

        svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="100%" style="max-width:{W}px" viewBox="0 0 {W} {H}" '
               f'font-family="sans-serif" font-size="12">',
               f'<rect x="{L}" y="{T}" width="{W - L - R}" height="{H - T - B}" fill="white" stroke="#444"/>']
        for v in _ticks(self.x0, self.x1):
            svg.append(f'<line x1="{self.sx(v):.1f}" y1="{T}" x2="{self.sx(v):.1f}" y2="{H - B}" stroke="#e4e4e4"/>'
                       f'<text x="{self.sx(v):.1f}" y="{H - B + 16}" text-anchor="middle">{fmt(v, x)}</text>')
        for v in _ticks(self.y0, self.y1):
            svg.append(f'<line x1="{L}" y1="{self.sy(v):.1f}" x2="{W - R}" y2="{self.sy(v):.1f}" stroke="#e4e4e4"/>'
                       f'<text x="{L - 6}" y="{self.sy(v) + 4:.1f}" text-anchor="end">{fmt(v, y)}</text>')
        svg.append(f'<text x="{(L + W - R) / 2}" y="{H - 12}" text-anchor="middle">'
                   f'{html.escape(_axis_label(x, objs))}</text>')
        svg.append(f'<text transform="translate(16 {(T + H - B) / 2}) rotate(-90)" text-anchor="middle">'
                   f'{html.escape(_axis_label(y, objs))}</text>')
        return svg


def _point_svg(canvas: _Canvas, xy, method: str | None, on_front: bool, by_method: bool, tip: str) -> str:
    """One point: coloured by its method when the page shows several (front points larger and
    ringed in black), else blue on the front and a grey ring off it; ``tip`` is its tooltip."""
    if by_method:
        colour = method_records.colour_of(method, _GREY)
        style = (f'r="7" fill="{colour}" stroke="black" stroke-width="1.2"' if on_front
                 else f'r="5" fill="{colour}" fill-opacity="0.6" stroke="none"')
    else:
        style = (f'r="6" fill="{_FRONT}" fill-opacity="0.55" stroke="black" stroke-width="0.7"' if on_front
                 else f'r="6" fill="none" stroke="{_GREY}" stroke-width="1.5"')
    return f'<circle cx="{canvas.sx(xy[0]):.1f}" cy="{canvas.sy(xy[1]):.1f}" {style}><title>{tip}</title></circle>'


def _legend_html(points, drawable, front, methods, n_front: int, paper: bool, conventions) -> str:
    """The line above the plot: colours and counts, the paper's stars, the energy conventions."""
    if methods:
        legend = " &nbsp; ".join(
            f'<span style="color:{method_records.colour_of(m, _GREY)}">&#9679;</span> {html.escape(m)} '
            f'({sum(1 for i in drawable if points[i].get("method") == m)})' for m in methods)
        legend += f" &nbsp; (ringed: the Pareto front, {n_front})."
    else:
        n_other = sum(1 for i in drawable if not front[i])
        legend = (f'<span style="color:{_FRONT}">&#9679;</span> Pareto front ({n_front}) &nbsp; '
                  f'<span style="color:{_GREY}">&#9675;</span> other points ({n_other}).')
    if paper:
        legend += f' &nbsp; <span style="color:{_PAPER}">&#9733;</span> {html.escape(PAPER_LEGEND)}.'
    for k, c in conventions:
        legend += f" Points, {html.escape(k)}: {html.escape(c)}."
        if paper:
            legend += f" The stars: {html.escape(PAPER_ENERGY_CONVENTION)}."
    return legend


def _front_table_html(on: Sequence[Mapping], obj_names: list[str], x: str, y: str, by_method: bool) -> str:
    """The front points as an HTML table: trial, knob, objectives, then their searched parameters."""
    cols = ["trial_id", "epsilon", *obj_names, *[k for k in (x, y) if k not in obj_names]]
    cols += [k for k in sorted({k for p in on for k in default_hover_keys(p)}) if k not in cols]
    if by_method and "method" not in cols:
        cols.insert(1, "method")

    def cell(v):
        return html.escape(f"{v:.6g}" if isinstance(v, float) else str(v))

    rows = "".join("<tr>" + "".join(f"<td>{cell(p.get(c, ''))}</td>" for c in cols) + "</tr>" for p in on)
    return f'<table><tr>{"".join(f"<th>{html.escape(c)}</th>" for c in cols)}</tr>{rows}</table>'


def _paper_svg(rows, sx, sy) -> list[str]:
    """The paper's rows (from :func:`_drawable_paper`) as labelled stars; the tooltip names the source."""
    from .paper_results import marker_label

    out = []
    for a, b, r in rows:
        tip = _hover_text(r, ["method", "model", "table", "note", "source", "measured", "energy_convention"], [])
        out.append(f'<text x="{sx(a):.1f}" y="{sy(b) + 6:.1f}" text-anchor="middle" font-size="18" fill="{_PAPER}" '
                   f'stroke="black" stroke-width="0.4">&#9733;<title>{tip}</title></text>'
                   f'<text x="{sx(a) + 8:.1f}" y="{sy(b) - 6:.1f}" font-size="9" fill="#7f3f00">'
                   f'{html.escape(marker_label(r))}</text>')
    return out


def plot_hypervolume_png(history: Sequence[float], path, title: str | None = None,
                         steps: Sequence[int] | None = None) -> Path:
    """Hypervolume against the number of finished trials, as a step line with integer ticks.

    ``steps[t]`` is the number of finished trials when ``history[t]`` was logged (default:
    ``t + 1``).

    Returns:
        ``Path(path)``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    out = _ensure_parent(path)
    fig = Figure(figsize=(6.4, 4.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    hv = [float(v) for v in history]
    xs = [int(s) for s in steps] if steps is not None else list(range(1, len(hv) + 1))
    if hv:
        ax.step(xs, hv, where="post", color="#1f77b4", linewidth=1.5)
        ax.plot(xs, hv, "o", color="#1f77b4", markersize=4)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("finished trials")
    ax.set_ylabel("hypervolume")
    ax.set_title(title if title is not None else "Hypervolume over finished trials")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, format="png")
    return out
