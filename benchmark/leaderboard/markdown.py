"""The leaderboard's markdown: one table per (profile, backbone, suite) laid out like the papers' tables, the file's
header and its table of contents. Pure functions of :class:`benchmark.leaderboard.tables.Table`."""
from __future__ import annotations

import re
from typing import Mapping, Sequence

from benchmark.leaderboard.tables import Table, mark_best

__all__ = ["DASH", "format_storage", "render_table", "render_markdown", "short_commit"]

DASH = "–"


def format_storage(mb: float | None) -> str:
    """Storage in MB (10^6 bytes): 2 decimals, 3 significant digits below 0.1 MB, a dash when unknown."""
    if mb is None:
        return DASH
    if mb == 0 or abs(mb) >= 0.1:
        return f"{mb:.2f}"
    return format(mb, ".3g")


def _cell(v: float | None, mark: str | None, italic: bool, se: float | None = None, tied: bool = False) -> str:
    """A score: 2 decimals, bold / underlined for best / second, ``± se`` with two or more seeds, ``†`` when not
    distinguishable from the best AVG, italic for paper figures."""
    if v is None:
        return DASH
    s = f"{v:.2f}"
    if mark == "best":
        s = f"**{s}**"
    elif mark == "second":
        s = f"<u>{s}</u>"
    if se is not None:
        s = f"{s} ± {se:.2f}"
    if tied:
        s = f"{s} †"
    if italic:
        s = f"*{s}*"
    return s


def _esc(s: str) -> str:
    return s.replace("|", "\\|")


def _metric_line(table: Table) -> str:
    by_metric: dict[str, list[str]] = {}
    for t in table.tasks:
        by_metric.setdefault(table.metric_names.get(t, "score"), []).append(t)
    if len(by_metric) == 1:
        (name,) = by_metric
        return f"Scores: {name} (%), per task and their mean (AVG)."
    parts = "; ".join(f"{m} for {', '.join(ts)}" for m, ts in by_metric.items())
    return f"Scores (%): {parts}; AVG is their mean."


def render_table(table: Table, plot_link: str | None = None) -> str:
    cols = list(table.tasks)
    marks = mark_best(table.rows, cols + ["AVG"])
    lines = [f"## {table.title}", ""]
    lines.append(
        _metric_line(table) + " Storage: MB = 10^6 bytes of the file the method keeps besides the pretrained model."
    )
    lines.append("")
    lines.append("| Type | Method | Storage (MB) | " + " | ".join(_esc(t) for t in cols) + " | AVG |")
    lines.append("| --- | --- | ---: | " + " | ".join("---:" for _ in cols) + " | ---: |")
    prev_type = None
    for i, r in enumerate(table.rows):
        typ = r.type if r.type != prev_type else ""
        prev_type = r.type
        italic = r.origin != "ours"
        cells = [_cell(r.scores.get(t), marks.get((i, t)), italic, r.se_scores.get(t)) for t in cols]
        cells.append(_cell(r.average, marks.get((i, "AVG")), italic, r.se_average, r.tied_best))
        storage = format_storage(r.storage_mb)
        if italic and storage != DASH:
            storage = f"*{storage}*"
        lines.append(f"| {typ} | {_esc(r.label)} | {storage} | " + " | ".join(cells) + " |")
    lines.append("")
    n_commits = len(table.commits)
    if n_commits == 1:
        commits = f"commit `{short_commit(table.commits[0])}`"
    else:
        commits = (f"{n_commits} commits, from `{short_commit(table.commits[0])}` (oldest run) to "
                   f"`{short_commit(table.commits[-1])}` (newest run)")
    lines.append(f"Runs: {table.n_runs}, at {commits}; newest record {table.newest[:10]}.")
    if table.sources:
        lines.append("")
        refs = "; ".join(f"[{i + 1}] {s}" for i, s in enumerate(table.sources))
        lines.append(
            f"Paper figures (in italics; GLUE fractions shown x100; a dash where the paper gives no storage): {refs}."
        )
    for note in table.notes:
        lines.append("")
        lines.append(note)
    if plot_link:
        lines.append("")
        lines.append(f"![accuracy vs storage, {table.title}]({plot_link})")
    lines.append("")
    return "\n".join(lines)


def render_markdown(
    tables: Sequence[Table], plot_links: Mapping[str, str] | None = None, results_dir: str = "results",
    cards_section: str = "",
) -> str:
    """The whole leaderboard file. ``plot_links``: table slug -> relative link of its plot; ``cards_section``: the
    suite cards' markdown (:func:`benchmark.leaderboard.cards.render_cards`), appended after the tables."""
    plot_links = plot_links or {}
    out = ["# merge-bench leaderboard", ""]
    n_runs = sum(t.n_runs for t in tables)
    if not tables:
        out += [
            f"Generated from the run records in `{results_dir}/` by `python -m benchmark leaderboard`; do not edit"
            " by hand.",
            "",
            "No runs yet. Run `python -m benchmark run --method <method> --backbone <backbone>` (or a sweep), then"
            " regenerate this file.",
            "",
        ]
        return "\n".join(out)
    newest = max(t.newest for t in tables)
    n_left = sum(len(t.left_out) for t in tables)
    left = (f" {n_left} more are on another build of their seed's checkpoints and are named under their table, not"
            " compared." if n_left else "")
    out += [
        f"Generated from the {n_runs} run records in `{results_dir}/` by `python -m benchmark leaderboard`; do not"
        f" edit by hand. Newest record: {newest[:10]}.{left}",
        "",
        "- One table per (profile, backbone, suite). Type: *reference* rows (Pretrained, Traditional MTL,"
        " Individual), *static* merging (one set of weights) and *dynamic* merging (task-conditioned or routed).",
        "- Method: the registry name and every parameter that differs from its default on that backbone (a method"
        " may have per-backbone-kind defaults from the papers, see `python -m benchmark list`), so a run at a"
        " setting that is not the default shows it (\"predates k\": run before the method had parameter k). Several seeds of one configuration are one row with their"
        " mean (\"· N seeds\"), ± the standard error over seeds; no seed is picked. \"· best of N by val\": the"
        " setting selected on the val split from a grid of N (never on test).",
        "- Storage: measured bytes of the artifact file the method keeps besides the pretrained model,"
        " MB = 10^6 bytes.",
        "- **Bold**: best, <u>underlined</u>: second best per score column among our merging methods (reference"
        " rows and paper figures are not ranked; storage is not marked, see the plots). With several seeds, †"
        " marks the merging methods not distinguishable from the best AVG at the 95% level (paired t-test over"
        " seeds × tasks).",
        "- Paper profile: the papers' figures in italics, `↳ paper` under our matching row, `(paper only)` for"
        " methods not run here. Tiny profile: stand-in tasks, no paper figures.",
        "",
        "Tables:",
        "",
    ]
    for t in tables:
        anchor = re.sub(r"[^a-z0-9 _-]", "", t.title.lower()).replace(" ", "-")
        out.append(f"- [{t.title}](#{anchor}) ({t.n_runs} run{'s' if t.n_runs != 1 else ''})")
    out.append("")
    for t in tables:
        out.append(render_table(t, plot_links.get(t.slug)))
    if cards_section:
        out.append(cards_section)
    return "\n".join(out)


def short_commit(c: str) -> str:
    head, _, tail = str(c).partition("-")
    if re.fullmatch(r"[0-9a-f]{12,40}", head):
        head = head[:7]
    return head + ("-" + tail if tail else "")
