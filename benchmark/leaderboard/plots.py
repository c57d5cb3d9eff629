"""The accuracy-vs-storage plot under each table (PNG, deterministic): x = storage (log scale, zero storage at a
marked floor), y = AVG with the standard error over seeds as error bars where a row has two or more seeds; points
labelled; the Pareto front of our merging methods drawn."""
from __future__ import annotations

import io
import math
from typing import Sequence

from benchmark.leaderboard.tables import Row, Table

__all__ = ["pareto_front", "render_plot"]


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point dominates (storage <= and AVG >=, one strictly), by storage."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


_STYLE = {
    "font.family": "DejaVu Sans",  # ships with matplotlib
    "font.size": 9,
    "svg.hashsalt": "merge-bench",
    "path.simplify": True,
    "figure.dpi": 100,
    "savefig.dpi": 100,
}


def _place_labels(anchors: Sequence[tuple[float, float, float]]) -> list[float]:
    """Vertical label offsets (points) so labels drawn right of their points do not overlap: greedy, in a fixed
    order. ``anchors``: (x, y, width) in points."""
    h = 8.0
    candidates = [3.0]
    for k in range(1, 12):
        candidates += [3.0 - k * 9.0, 3.0 + k * 9.0]
    placed: list[tuple[float, float, float]] = []
    out = [0.0] * len(anchors)
    for i in sorted(range(len(anchors)), key=lambda i: (-anchors[i][1], anchors[i][0], i)):
        x, y, w = anchors[i]
        for dy in candidates:
            y0 = y + dy
            if not any(x + 4 < px + pw and px < x + 4 + w and y0 < py + h and py < y0 + h for px, py, pw in placed):
                break
        else:
            dy = 3.0
        out[i] = dy
        placed.append((x + 4, y + dy, w))
    return out


def render_plot(table: Table) -> bytes:
    """The table's accuracy-vs-storage plot as PNG bytes (deterministic).

    x: storage (log scale; zero storage at a dotted floor a decade below the smallest positive storage); y: AVG.
    Our rows are labelled points by type; a paper figure of the same method (``↳ paper`` rows with a storage) is a
    grey cross joined to our point; the Pareto front of our merging methods is a dashed red staircase. Rows with two
    or more seeds carry a vertical error bar of +- one standard error of their AVG over seeds."""
    import matplotlib
    import matplotlib.style
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ours: list[Row] = []
    pairs: list[tuple[Row, Row]] = []  # (ours, paper)
    last: Row | None = None
    for r in table.rows:
        if r.origin == "ours":
            last = r if r.average is not None else None
            if last is not None:
                ours.append(r)
        elif r.origin == "paper" and last is not None and r.average is not None and r.storage_mb is not None:
            pairs.append((last, r))
    papers = [p for _, p in pairs]
    pos = [r.storage_mb for r in ours + papers if r.storage_mb and r.storage_mb > 0]
    floor = 10 ** (math.floor(math.log10(min(pos))) - 1) if pos else 1e-3
    top = max(pos) if pos else floor * 100
    ys_all = [r.average for r in ours + papers]
    y_lo, y_hi = min(ys_all), max(ys_all)
    pad = max(2.0, 0.08 * (y_hi - y_lo))

    def x(r: Row) -> float:
        return r.storage_mb if r.storage_mb and r.storage_mb > 0 else floor

    with matplotlib.style.context("default"), matplotlib.rc_context(_STYLE):
        fig = Figure(figsize=(7.5, 4.8))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        ax.set_xscale("log")
        ax.set_xlim(floor / 2, top * 6)
        ax.set_ylim(y_lo - pad, y_hi + pad)
        styles = {
            "reference": dict(marker="D", color="0.45", label="reference (ours)"),
            "static": dict(marker="o", color="tab:blue", label="static (ours)"),
            "dynamic": dict(marker="s", color="tab:orange", label="dynamic (ours)"),
        }
        types = [t for t in styles if any(r.type == t for r in ours)] + sorted({r.type for r in ours} - set(styles))
        for typ in types:
            pts = [r for r in ours if r.type == typ]
            st = styles.get(typ, dict(marker="^", color="tab:green", label=f"{typ} (ours)"))
            ax.scatter([x(r) for r in pts], [r.average for r in pts], s=28, zorder=3, **st)
            bars = [r for r in pts if r.se_average is not None]
            if bars:  # the standard error over seeds
                ax.errorbar([x(r) for r in bars], [r.average for r in bars], yerr=[r.se_average for r in bars],
                            fmt="none", ecolor=st["color"], elinewidth=0.9, capsize=2.5, zorder=2)
        if pairs:
            for o, p in pairs:
                ax.plot([x(o), x(p)], [o.average, p.average], color="0.75", lw=0.7, zorder=1)
            ax.scatter([x(p) for p in papers], [p.average for p in papers], s=28, marker="x", color="0.5",
                       zorder=2, label="paper's figure (joined to ours)")
        merging = [r for r in ours if r.type != "reference"]
        front = [merging[i] for i in pareto_front([(x(r), r.average) for r in merging])]
        if len(front) > 1:
            xs = [x(r) for r in front] + [top * 6]
            ys = [r.average for r in front] + [front[-1].average]
            ax.step(xs, ys, where="post", color="tab:red", lw=1.2, ls="--", zorder=1, label="Pareto front (ours)")
        elif front:
            ax.scatter([x(front[0])], [front[0].average], s=90, facecolors="none", edgecolors="tab:red", zorder=4,
                       label="Pareto front (ours)")
        to_pt = 72.0 / fig.dpi
        anchors = []
        for r in ours:
            px, py = ax.transData.transform((x(r), r.average))
            anchors.append((px * to_pt, py * to_pt, len(r.short_label) * 3.7))
        for r, dy in zip(ours, _place_labels(anchors)):
            ax.annotate(r.short_label, (x(r), r.average), xytext=(4, dy), textcoords="offset points", fontsize=6.5,
                        color="0.1", arrowprops=None)
        xlabel = "Storage (MB = 10^6 bytes, log scale)"
        if any(not r.storage_mb or r.storage_mb <= 0 for r in ours + papers):
            ax.axvline(floor, color="0.7", lw=0.8, ls=":")
            ax.annotate("0 MB", (floor, 0), xycoords=("data", "axes fraction"), xytext=(3, 4),
                        textcoords="offset points", fontsize=7, color="0.4")
            xlabel = "Storage (MB = 10^6 bytes, log scale; 0 MB drawn at the dotted line)"
        ax.set_xlabel(xlabel)
        ax.set_ylabel("AVG (%)")
        ax.set_title(table.title)
        ax.grid(True, which="major", color="0.9", lw=0.6)
        ax.legend(loc="best", fontsize=7, frameon=True, framealpha=0.8)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    return buf.getvalue()
