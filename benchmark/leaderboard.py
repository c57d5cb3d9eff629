"""The leaderboard: ``leaderboard.md`` and one accuracy-vs-storage plot per table, generated from ``results/``.

``python -m benchmark leaderboard [--results-dir results] [--output leaderboard.md]`` calls
:func:`write_leaderboard`. The pure functions (:func:`build_tables`, :func:`render_markdown`, :func:`render_plot`)
take a list of records, so tests need no files.

Layout (DESIGN.md, "Leaderboard"), one table per (profile, backbone, suite), like the papers' tables:

* columns Type, Method, Storage (MB), one per task, AVG. Rows are grouped by type: ``reference`` (Pretrained,
  Traditional MTL, Individual: the papers' top block), ``static``, ``dynamic`` (task-conditioned and routed). The
  type is written on the first row of its group only, as in the papers.
* Method = the registry name plus every parameter that differs from the registered default (all parameters when
  the method is not registered here). Runs of the same (method, parameters) with several seeds are one row with
  the mean of every column and "· N seeds"; no seed is ever picked.
* Hyperparameter grids: when a method has two or more settings run with ``--eval-val`` (every run records
  ``val_average``), only the setting with the best mean *validation* average is shown, labelled "· best of N by
  val" (:func:`select_by_val`); test scores never choose a row. Settings without val scores are all shown.
* Scores are the records' (percent, 2 decimals). Storage is the measured size of the artifact file the method keeps
  besides the pretrained model, MB = 10^6 bytes (2 decimals; 3 significant digits below 0.1 MB).
* Per score column (tasks and AVG), the best value is **bold** and the second best <u>underlined</u>, among *our*
  merging methods only: reference rows and paper figures are never marked. Values are compared as displayed
  (rounded to 2 decimals), so ties share the mark and the next distinct value is second. The Storage column is not
  marked; the accuracy-vs-storage plot under each table shows that trade-off (its Pareto front is drawn over our
  merging methods).
* Paper-profile tables put the papers' figures (``benchmark/data/paper_results.csv``, a copy of
  ``shared/reference/paper_results.csv``) in a row ``↳ paper [n]`` right under our matching row, in italics; paper
  rows of methods we have not run are listed as ``… (paper only [n])`` in their group, so every paper row of the
  matching table appears. ``[n]`` names the paper table under ours. The papers report GLUE scores as fractions; they
  are shown x100 like ours. Tiny-profile tables use stand-in tasks and show no paper figures.
* Under each table: the number of runs, the git commits they ran at, and a link to the plot
  ``<output stem>/<profile>_<backbone>_<suite>.png`` (x = storage, log scale, zero storage drawn at a marked floor;
  y = AVG; points labelled; our merging methods' Pareto front drawn).

Deterministic: the same records give byte-identical markdown and PNGs (no clock is read, the date shown is the
newest record's; the plots use matplotlib's default style with a fixed font, size and dpi, and PNG metadata without
the software/time entries; PNG bytes are stable for a given matplotlib/freetype build). Files whose bytes did not
change are not rewritten, and stale plots in the plot folder are removed, so regenerating leaves git clean.
"""
from __future__ import annotations

import csv
import io
import math
import os
import re
import tempfile
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from benchmark.records import load_records
from benchmark.registry import DEFAULT_ORDER

__all__ = [
    "PAPER_ONLY_METHODS",
    "PAPER_TASKS",
    "MethodInfo",
    "method_infos",
    "paper_methods",
    "Row",
    "Table",
    "build_tables",
    "format_storage",
    "load_paper_results",
    "mark_best",
    "select_by_val",
    "method_label",
    "paper_task_name",
    "render_markdown",
    "render_plot",
    "write_leaderboard",
]

PAPER_CSV = Path(__file__).resolve().parent / "data" / "paper_results.csv"

# ----------------------------------------------------------------------------------------------------------------
# Name mappings between our registry and the papers' tables (paper_results.csv)

#: Paper rows of methods we have no plugin for, so that their paper-only rows land in the right group and place:
#: ``name -> (paper row names, type, order)``. Every registered method declares its own paper rows and order at
#: registration (``METHODS.register(..., paper_rows=..., order=...)``, see :mod:`benchmark.registry`).
PAPER_ONLY_METHODS: dict[str, tuple[tuple[str, ...], str, int]] = {
    "mtl": (("Traditional MTL",), "reference", 10),
    "traditional_mtl": (("Traditional MTL",), "reference", 20),
    "df_merge": (("DF-Merge",), "static", 90),
    "mow": (("MoW-Merging",), "dynamic", 150),
}


@dataclass(frozen=True)
class MethodInfo:
    """How the leaderboard shows one method: its rows in the papers' tables (compared case-insensitively: the CSV
    spells both "EMR-Merging" and "EMR-merging"; ``{loss}`` is filled from the run's ``loss`` parameter,
    upper-case, and such a pattern also matches the paper's "<pattern> (λ = x)" rows, a row with our λ preferred),
    its type (reference / static / dynamic) and its order within the type."""

    paper_rows: tuple[str, ...]
    type: str
    order: int


def method_infos() -> dict[str, MethodInfo]:
    """Every method the leaderboard knows, in display order: the registered methods (from their registration)
    and :data:`PAPER_ONLY_METHODS`. Empty for the registered part when the registry cannot be loaded."""
    out: dict[str, MethodInfo] = {n: MethodInfo(rows, typ, order) for n, (rows, typ, order) in PAPER_ONLY_METHODS.items()}
    for p in _registered_methods():
        typ = "reference" if getattr(p.obj, "reference", False) else row_type(p.obj.kind)
        out[p.name] = MethodInfo(p.paper_rows, typ, p.order)
    return dict(sorted(out.items(), key=lambda kv: (kv[1].order, kv[0])))


def _registered_methods() -> list[Any]:
    global _warned_registry
    try:
        from benchmark.registry import METHODS

        return METHODS.plugins()
    except Exception as e:  # noqa: BLE001 -- labels and order degrade, the leaderboard still renders
        if not _warned_registry:
            warnings.warn(f"leaderboard: method registry unavailable ({e!r}); labels show every parameter")
            _warned_registry = True
        return []


def paper_methods() -> dict[str, tuple[str, ...]]:
    """Our method name -> the method names the papers' tables use, in display order."""
    return {n: i.paper_rows for n, i in method_infos().items() if i.paper_rows}


#: our task name (normalized: lower case, letters and digits only) -> the papers' task name.
PAPER_TASKS: dict[str, str] = {
    # vision8 (CLIP ViT-B/32, ViT-L/14, ConvNeXt)
    "sun397": "SUN397", "stanfordcars": "Cars", "cars": "Cars", "resisc45": "RESISC45", "eurosat": "EuroSAT",
    "svhn": "SVHN", "gtsrb": "GTSRB", "mnist": "MNIST", "dtd": "DTD",
    # rf100_7 (DETR-R50)
    "aerial": "Aerial", "videogames": "Videogames", "microscopic": "Microscopic", "underwater": "Underwater",
    "documents": "Documents", "electromagnetic": "Electromagnetic", "realworld": "Real World",
    # glue7 / glue8 (RoBERTa-base, Mamba-130M)
    "cola": "CoLA", "sst2": "SST-2", "mrpc": "MRPC", "qqp": "QQP", "mnli": "MNLI", "qnli": "QNLI", "rte": "RTE",
    "stsb": "STS-B",
}

#: our backbone / suite name -> the CSV's, where they differ. The CSV uses our registry names (convnext,
#: roberta_base, mamba_130m, detr_r50), so both maps are empty; an adapter registered under another name adds it here.
PAPER_BACKBONES: dict[str, str] = {}
PAPER_SUITES: dict[str, str] = {}

TYPE_RANK = {"reference": 0, "static": 1, "dynamic": 2}
PROFILE_RANK = {"paper": 0, "tiny": 1}
DASH = "–"


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def paper_task_name(task: str) -> str:
    """The papers' name of one of our tasks (``stanford-cars`` -> ``Cars``); unknown names pass through."""
    return PAPER_TASKS.get(_norm(task), task)


def row_type(method_kind: str) -> str:
    """A record's ``method_kind`` as a table type: static / dynamic / reference (unknown kinds pass through)."""
    if method_kind in ("task_conditioned", "routed", "dynamic"):
        return "dynamic"
    return method_kind or "static"


def _method_key(method: str, infos: Mapping[str, MethodInfo] | None = None) -> tuple[int, str]:
    info = (method_infos() if infos is None else infos).get(method)
    return (info.order if info is not None else DEFAULT_ORDER, method)


# ----------------------------------------------------------------------------------------------------------------
# Paper figures


@dataclass(frozen=True)
class PaperRow:
    """One method's row of one paper table."""

    backbone: str
    suite: str
    source: str
    method: str
    storage_mb: float | None
    values: dict[str, float]  # paper task name (and "AVG") -> score in percent
    order: int  # position in the CSV


def load_paper_results(path: str | os.PathLike | None = None) -> list[PaperRow]:
    """The papers' rows from the CSV, GLUE fractions scaled to percent (metrics not ending in ``_pct``: x100)."""
    return list(_load_paper_results(str(path or PAPER_CSV)))


@lru_cache(maxsize=4)
def _load_paper_results(path: str) -> tuple[PaperRow, ...]:
    groups: dict[tuple[str, str, str, str], dict[str, Any]] = {}
    with open(path, newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            key = (r["backbone"], r["suite"], r["source"], r["method"])
            g = groups.setdefault(key, {"storage": None, "values": {}, "order": len(groups)})
            if r["storage_mb"].strip():
                g["storage"] = float(r["storage_mb"])
            scale = 1.0 if r["metric"].strip().endswith("_pct") else 100.0
            if r["value"].strip():
                g["values"][r["task"]] = float(r["value"]) * scale
    return tuple(
        PaperRow(b, s, src, m, g["storage"], g["values"], g["order"]) for (b, s, src, m), g in groups.items()
    )


def _paper_key(paper_method: str) -> str | None:
    """Our method name for a paper method name (for placement of paper-only rows)."""
    low = paper_method.lower()
    for ours, names in paper_methods().items():
        for pat in names:
            if "{loss}" in pat:
                if low.startswith(pat.split("{loss}")[0].lower()):
                    return ours
            elif low == pat.lower():
                return ours
    return None


def _lambda_of(paper_method: str) -> float | None:
    m = re.search(r"\(λ\s*=\s*([0-9.eE+-]+)\)", paper_method)
    return float(m.group(1)) if m else None


def match_paper_rows(method: str, params: Mapping[str, Any], candidates: Sequence[PaperRow]) -> list[PaperRow]:
    """The paper rows (of one table) that report ``method`` run with ``params``."""
    out: list[PaperRow] = []
    for pat in paper_methods().get(method, ()):
        if "{loss}" in pat:
            loss = params.get("loss")
            if not isinstance(loss, str):
                continue
            name = pat.format(loss=loss.upper()).lower()
            hits = [p for p in candidates if p.method.lower() == name or p.method.lower().startswith(name + " (")]
            lam = params.get("lam")
            same = [p for p in hits if lam is not None and _lambda_of(p.method) is not None
                    and math.isclose(_lambda_of(p.method), float(lam), rel_tol=1e-9, abs_tol=1e-12)]
            out += same or hits
        else:
            out += [p for p in candidates if p.method.lower() == pat.lower()]
    seen: set[int] = set()
    return [p for p in out if not (p.order in seen or seen.add(p.order))]


# ----------------------------------------------------------------------------------------------------------------
# Tables


@dataclass
class Row:
    type: str  # reference / static / dynamic (or an unknown kind, shown as is)
    label: str
    origin: str  # "ours", "paper" (under our row) or "paper-only"
    storage_mb: float | None
    scores: dict[str, float]  # our task name -> score (percent)
    average: float | None
    method: str = ""  # our registry name ("" for paper-only rows of unknown methods)
    n_seeds: int = 0
    n_runs: int = 0
    ref: int | None = None  # paper footnote number
    source: str = ""  # paper table of a paper row
    short_label: str = ""  # for the plot


@dataclass
class Table:
    profile: str
    backbone: str
    suite: str
    tasks: list[str]
    metric_names: dict[str, str]
    rows: list[Row]
    n_runs: int
    commits: list[str]  # distinct git commits, oldest run first
    newest: str  # newest record's ``created``
    sources: list[str] = field(default_factory=list)  # paper tables, footnote n = index + 1
    notes: list[str] = field(default_factory=list)

    @property
    def slug(self) -> str:
        return "_".join(re.sub(r"[^A-Za-z0-9._-]+", "-", s) for s in (self.profile, self.backbone, self.suite))

    @property
    def title(self) -> str:
        return f"{self.profile} · {self.backbone} · {self.suite}"


_warned_registry = False


def registry_defaults(method: str) -> dict[str, Any] | None:
    """The registered defaults of ``method`` in declaration order, or None when it is not registered here."""
    global _warned_registry
    try:
        from benchmark.registry import METHODS

        if method not in METHODS:
            return None
        return {p.name: p.default for p in METHODS.get(method).params}
    except Exception as e:  # a broken plugin must not stop the leaderboard: show all parameters instead
        if not _warned_registry:
            warnings.warn(f"leaderboard: method registry unavailable ({e!r}); labels show every parameter")
            _warned_registry = True
        return None


def _same(a: Any, b: Any) -> bool:
    num = (int, float)
    if isinstance(a, num) and isinstance(b, num) and not isinstance(a, bool) and not isinstance(b, bool):
        # records round floats to 6 decimals
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=5e-7)
    return a == b


def _fmt_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "none"
    if isinstance(v, float):
        return format(v, ".6g")
    if isinstance(v, (list, tuple)):
        return ",".join(_fmt_value(x) for x in v)
    return str(v)


def method_label(method: str, params: Mapping[str, Any], defaults: Mapping[str, Any] | None) -> str:
    """``name (k=v, ...)`` with the parameters that differ from ``defaults`` (all of them when ``defaults`` is
    None), in declaration order, then unknown keys alphabetically."""
    if defaults is None:
        keys = sorted(params)
        shown = keys
    else:
        keys = [k for k in defaults if k in params] + sorted(k for k in params if k not in defaults)
        shown = [k for k in keys if k not in defaults or not _same(params[k], defaults[k])]
    if not shown:
        return method
    return f"{method} ({', '.join(f'{k}={_fmt_value(params[k])}' for k in shown)})"


def _mean(xs: Sequence[float]) -> float:
    return math.fsum(xs) / len(xs)


def _task_order(records: Sequence[Mapping[str, Any]], suite_tasks: Sequence[str] | None) -> list[str]:
    seen: list[str] = []
    for r in records:
        for t in r["metrics"]:
            if t not in seen:
                seen.append(t)
    if not suite_tasks:
        return seen
    head = [t for t in suite_tasks if t in seen]
    return head + [t for t in seen if t not in head]


def registry_task_order(suite: str, profile: str) -> list[str] | None:
    """The suite's task order from the suite registry (records store metrics sorted by name), or None."""
    try:
        from benchmark.registry import SUITES

        if suite not in SUITES:
            return None
        plugin = SUITES.get(suite)
        tasks = plugin.meta.get("tasks")
        if tasks is None:
            tasks = plugin.obj(profile=profile).tasks
        return [str(t) for t in tasks]
    except Exception:
        return None


def _paper_order(backbone: str, suite: str, paper: Sequence[PaperRow]) -> list[str]:
    out: list[str] = []
    for p in paper:
        if p.backbone == backbone and p.suite == suite:
            out += [t for t in p.values if t != "AVG" and t not in out]
    return out


def _paper_table(backbone: str, suite: str, paper: Sequence[PaperRow]) -> list[PaperRow]:
    b = PAPER_BACKBONES.get(backbone, backbone)
    s = PAPER_SUITES.get(suite, suite)
    return sorted((p for p in paper if p.backbone == b and p.suite == s), key=lambda p: p.order)


def _short_commit(c: str) -> str:
    head, _, tail = str(c).partition("-")
    if re.fullmatch(r"[0-9a-f]{12,40}", head):
        head = head[:7]
    return head + ("-" + tail if tail else "")


def build_tables(
    records: Iterable[Mapping[str, Any]],
    *,
    paper: Sequence[PaperRow] | None = None,
    defaults: Callable[[str], Mapping[str, Any] | None] = registry_defaults,
    task_order: Callable[[str, str], Sequence[str] | None] = registry_task_order,
) -> list[Table]:
    """One :class:`Table` per (profile, backbone, suite), ordered paper, tiny, others; then by backbone, suite."""
    if paper is None:
        paper = load_paper_results()
    by_table: dict[tuple[str, str, str], list[Mapping[str, Any]]] = defaultdict(list)
    for r in sorted(records, key=lambda r: r["run_id"]):
        by_table[(str(r["profile"]), str(r["backbone"]), str(r["suite"]))].append(r)

    tables = []
    for (profile, backbone, suite) in sorted(by_table, key=lambda k: (PROFILE_RANK.get(k[0], 9), k)):
        recs = by_table[(profile, backbone, suite)]
        tables.append(_build_table(profile, backbone, suite, recs, paper, defaults, task_order))
    return tables


def select_by_val(
    groups: Mapping[tuple[str, str], list[Mapping[str, Any]]],
) -> tuple[dict[tuple[str, str], list[Mapping[str, Any]]], dict[tuple[str, str], int]]:
    """Hyperparameter selection on the *validation* split, never the test split.

    ``groups`` maps (method, parameter key) to its runs. Among a method's settings whose every run has a
    ``val_average`` (runs made with ``--eval-val``), only the one with the best mean ``val_average`` is kept, when
    there are at least two; ties go to the first setting in record order. Settings without val scores are kept
    as they are. Returns the kept groups and, for each picked setting, how many settings it was picked from."""
    scored: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for key, runs in groups.items():
        if runs and all(isinstance(r.get("val_average"), (int, float)) for r in runs):
            scored[key[0]].append(key)
    drop: set[tuple[str, str]] = set()
    picked: dict[tuple[str, str], int] = {}
    for keys in scored.values():
        if len(keys) < 2:
            continue
        best = max(keys, key=lambda k: (_mean([float(r["val_average"]) for r in groups[k]]), -keys.index(k)))
        picked[best] = len(keys)
        drop.update(k for k in keys if k != best)
    return {k: v for k, v in groups.items() if k not in drop}, picked


def _build_table(profile, backbone, suite, recs, paper, defaults, task_order) -> Table:
    ptable = _paper_table(backbone, suite, paper) if profile == "paper" else []
    order = task_order(suite, profile)
    if not order and ptable:  # the paper's column order, in our names
        pnames = _paper_order(ptable[0].backbone, ptable[0].suite, ptable)
        ours = {paper_task_name(t): t for r in recs for t in r["metrics"]}
        order = [ours[p] for p in pnames if p in ours]
    tasks = _task_order(recs, order)
    metric_names: dict[str, str] = {}
    for r in recs:
        for t, m in r.get("metric_names", {}).items():
            metric_names.setdefault(t, str(m))

    # our rows: one per (method, params), seeds averaged
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for r in recs:
        key = (r["method"], repr(sorted((k, repr(v)) for k, v in r["params"].items())))
        groups.setdefault(key, []).append(r)
    groups, picked_of = select_by_val(groups)
    ours: list[tuple[tuple, Row, list[PaperRow]]] = []
    for (method, pkey), runs in groups.items():
        label = method_label(method, runs[0]["params"], defaults(method))
        seeds = sorted({r["seed"] for r in runs}, key=repr)
        suffix = ""
        if len(seeds) > 1 or len(runs) > len(seeds):
            suffix = f" · {len(seeds)} seed{'s' if len(seeds) > 1 else ''}"
            if len(runs) > len(seeds):
                suffix += f", {len(runs)} runs"
        if (method, pkey) in picked_of:
            suffix += f" · best of {picked_of[(method, pkey)]} by val"
        scores = {}
        for t in tasks:
            vals = [float(r["metrics"][t]) for r in runs if t in r["metrics"]]
            if vals:
                scores[t] = _mean(vals)
        kinds = sorted({row_type(str(r["method_kind"])) for r in runs})
        row = Row(
            type=kinds[0],
            label=label + suffix,
            short_label=label,
            origin="ours",
            storage_mb=_mean([float(r["storage_bytes"]) for r in runs]) / 1e6,
            scores=scores,
            average=_mean([float(r["average"]) for r in runs]),
            method=method,
            n_seeds=len(seeds),
            n_runs=len(runs),
        )
        matched = match_paper_rows(method, runs[0]["params"], ptable)
        key = (TYPE_RANK.get(row.type, 9), row.type, *_method_key(method), 0, label)
        ours.append((key, row, matched))

    def paper_row(p: PaperRow, origin: str, typ: str, method: str) -> Row:
        back = {paper_task_name(t): t for t in tasks}
        return Row(
            type=typ,
            label=p.method,
            short_label=p.method,
            origin=origin,
            storage_mb=p.storage_mb,
            scores={back[t]: v for t, v in p.values.items() if t in back},
            average=p.values.get("AVG"),
            method=method,
            source=p.source,
        )

    used = {p.order for _, _, m in ours for p in m}
    entries: list[tuple[tuple, list[Row]]] = []
    for key, row, matched in sorted(ours, key=lambda e: e[0]):
        entries.append((key, [row] + [paper_row(p, "paper", row.type, row.method) for p in matched]))
    for p in ptable:
        if p.order in used:
            continue
        method = _paper_key(p.method) or ""
        info = method_infos().get(method)
        typ = info.type if info is not None else ("dynamic" if p.storage_mb is not None else "static")
        key = (TYPE_RANK.get(typ, 9), typ, *_method_key(method or "~" + p.method), 1, f"{p.order:06d}")
        entries.append((key, [paper_row(p, "paper-only", typ, method)]))
    entries.sort(key=lambda e: e[0])
    rows = [r for _, rs in entries for r in rs]
    sources: list[str] = []  # footnotes numbered in order of appearance
    for r in rows:
        if r.origin == "ours":
            continue
        if r.source not in sources:
            sources.append(r.source)
        r.ref = sources.index(r.source) + 1
        r.label = f"↳ paper [{r.ref}]: {r.label}" if r.origin == "paper" else f"{r.label} (paper only [{r.ref}])"

    by_time = sorted(recs, key=lambda r: (str(r["created"]), r["run_id"]))
    commits: list[str] = []
    for r in by_time:
        c = str(r.get("git_commit", "unknown"))
        if c not in commits:
            commits.append(c)
    notes = []
    if profile == "paper" and not ptable:
        notes.append("The papers report no figures for this backbone and suite.")
    elif profile != "paper":
        notes.append(f"The {profile} profile runs stand-in tasks, so the papers' figures do not apply here.")
    return Table(
        profile=profile,
        backbone=backbone,
        suite=suite,
        tasks=tasks,
        metric_names=metric_names,
        rows=rows,
        n_runs=len(recs),
        commits=commits,
        newest=str(by_time[-1]["created"]),
        sources=sources,
        notes=notes,
    )


# ----------------------------------------------------------------------------------------------------------------
# Markdown


def mark_best(rows: Sequence[Row], columns: Sequence[str]) -> dict[tuple[int, str], str]:
    """``(row index, column) -> "best" | "second"`` per score column, among our non-reference rows, comparing the
    displayed (2-decimal) values; ``"AVG"`` is the average column."""
    marks: dict[tuple[int, str], str] = {}
    for col in columns:
        vals: dict[int, float] = {}
        for i, r in enumerate(rows):
            if r.origin != "ours" or r.type == "reference":
                continue
            v = r.average if col == "AVG" else r.scores.get(col)
            if v is not None:
                vals[i] = round(v, 2)
        distinct = sorted(set(vals.values()), reverse=True)
        for i, v in vals.items():
            if v == distinct[0]:
                marks[(i, col)] = "best"
            elif len(distinct) > 1 and v == distinct[1]:
                marks[(i, col)] = "second"
    return marks


def format_storage(mb: float | None) -> str:
    """Storage in MB (10^6 bytes): 2 decimals, 3 significant digits below 0.1 MB, a dash when unknown."""
    if mb is None:
        return DASH
    if mb == 0 or abs(mb) >= 0.1:
        return f"{mb:.2f}"
    return format(mb, ".3g")


def _cell(v: float | None, mark: str | None, italic: bool) -> str:
    if v is None:
        return DASH
    s = f"{v:.2f}"
    if mark == "best":
        s = f"**{s}**"
    elif mark == "second":
        s = f"<u>{s}</u>"
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
        cells = [_cell(r.scores.get(t), marks.get((i, t)), italic) for t in cols]
        cells.append(_cell(r.average, marks.get((i, "AVG")), italic))
        storage = format_storage(r.storage_mb)
        if italic and storage != DASH:
            storage = f"*{storage}*"
        lines.append(f"| {typ} | {_esc(r.label)} | {storage} | " + " | ".join(cells) + " |")
    lines.append("")
    n_commits = len(table.commits)
    if n_commits == 1:
        commits = f"commit `{_short_commit(table.commits[0])}`"
    else:
        commits = (f"{n_commits} commits, from `{_short_commit(table.commits[0])}` (oldest run) to "
                   f"`{_short_commit(table.commits[-1])}` (newest run)")
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
    tables: Sequence[Table], plot_links: Mapping[str, str] | None = None, results_dir: str = "results"
) -> str:
    """The whole leaderboard file. ``plot_links``: table slug -> relative link of its plot."""
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
    out += [
        f"Generated from the {n_runs} run records in `{results_dir}/` by `python -m benchmark leaderboard`; do not"
        f" edit by hand. Newest record: {newest[:10]}.",
        "",
        "- One table per (profile, backbone, suite). Type: *reference* rows (Pretrained, Traditional MTL,"
        " Individual), *static* merging (one set of weights) and *dynamic* merging (task-conditioned or routed).",
        "- Method: the registry name and every parameter that differs from its default. Several seeds of one"
        " configuration are one row with their mean (\"· N seeds\"); no seed is picked.",
        "- Storage: measured bytes of the artifact file the method keeps besides the pretrained model,"
        " MB = 10^6 bytes.",
        "- **Bold**: best, <u>underlined</u>: second best per score column among our merging methods (reference"
        " rows and paper figures are not ranked; storage is not marked, see the plots).",
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
    return "\n".join(out)


# ----------------------------------------------------------------------------------------------------------------
# Plots


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
    grey cross joined to our point; the Pareto front of our merging methods is a dashed red staircase."""
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


# ----------------------------------------------------------------------------------------------------------------
# Files


def _write_if_changed(path: Path, data: bytes) -> None:
    if path.exists() and path.read_bytes() == data:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def check_output(output: str | os.PathLike) -> None:
    """Refuse, in one line and before anything is written, a leaderboard path that cannot be written: a directory,
    a path under a file, a read-only folder, or a plot folder (``<dir>/<stem>/``) that is a file."""
    from benchmark.errors import UserError

    output = Path(output)
    plots = output.parent / output.stem
    if output.is_dir():
        raise UserError(f"--output {str(output)!r} is a directory; give the leaderboard's file name (e.g. leaderboard.md)")
    if plots.exists() and not plots.is_dir():
        raise UserError(f"the plot folder {str(plots)!r} of --output {str(output)!r} is a file")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=output.parent, prefix=".write-test.")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise UserError(f"--output {str(output)!r}: its folder is not a writable directory ({e.strerror or e})") from None


def write_leaderboard(results_dir: str | os.PathLike = "results", output: str | os.PathLike = "leaderboard.md") -> Path:
    """Write ``output`` and its plots (``<output dir>/<output stem>/<profile>_<backbone>_<suite>.png``) from the
    records under ``results_dir``; returns the path of ``output``.

    A missing results dir, or one without records, is refused (:class:`UserError`) before anything is written: a
    mistyped ``--results-dir`` must not cut ``leaderboard.md`` to nothing and delete every plot."""
    from benchmark.errors import UserError

    output = Path(output)
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise UserError(f"--results-dir {str(results_dir)!r} is not a directory; the leaderboard was left as it is")
    check_output(output)
    records = load_records(results_dir)
    if not records:
        raise UserError(f"--results-dir {str(results_dir)!r} holds no records; the leaderboard was left as it is")
    tables = build_tables(records)
    plot_dir = output.parent / output.stem
    links: dict[str, str] = {}
    written: set[Path] = set()
    for t in tables:
        path = plot_dir / f"{t.slug}.png"
        _write_if_changed(path, render_plot(t))
        written.add(path)
        links[t.slug] = f"{plot_dir.name}/{path.name}"
    if plot_dir.is_dir():  # plots of tables that no longer exist
        for old in sorted(plot_dir.glob("*.png")):
            if old not in written:
                old.unlink()
    rel = Path(os.path.relpath(results_dir.resolve(), output.resolve().parent)).as_posix()
    _write_if_changed(output, render_markdown(tables, links, rel).encode("utf-8"))
    return output
