"""The leaderboard's tables, built from the records' pandas frame (:func:`benchmark.records.frame`: one row per
run x split x task).

One :class:`Table` per (profile, backbone, suite); in it one :class:`Row` per (method, parameters), its seeds
averaged (never picked): the mean of every score over the runs, and, with two or more seeds, the standard error over
seeds (:mod:`benchmark.leaderboard.stats`). Where a method's settings were run with val scores, only the setting
with the best mean val AVG is kept (:func:`benchmark.selection.select_by_val`). The merging rows not
distinguishable from the best AVG at the 95% level (paired over seeds x tasks) are flagged ``tied_best``.

Labels (:func:`method_label`) name every parameter that differs from the method's default *on that backbone*
(:meth:`benchmark.registry.Plugin.defaults` with the backbone's ``task_kind``), so a record run at a setting that
is no longer the default shows that setting, never as the default.

One data version per table (:func:`on_current_data`): a table shows the runs on the suite data of its newest run
(the records' ``suite_data``, the data's content hash), so runs on a suite's earlier generators never mix into it;
they are named in a note, to rerun.

One build per seed (:func:`one_build_per_seed`): runs are compared only when they merged the same checkpoints. The
tiny profile builds its checkpoints on the machine that runs it, and two machines can build different bits
(README, "Profiles"), so a table keeps, per seed, the build most of its runs share and names the runs it leaves out.
"""
from __future__ import annotations

import json
import math
import re
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from benchmark.leaderboard.paper import (PaperRow, load_paper_results, match_paper_rows, method_infos, method_key,
                                         paper_key, paper_order, paper_table, paper_task_name, row_type)
from benchmark.leaderboard.stats import MIN_SEEDS, not_distinguishable, standard_error
from benchmark.records import current_suite_data
from benchmark.selection import select_by_val

__all__ = ["TYPE_RANK", "PROFILE_RANK", "Row", "Table", "registry_defaults", "registry_task_order", "method_label",
           "build_tables", "mark_best", "on_current_data", "one_build_per_seed"]

TYPE_RANK = {"reference": 0, "static": 1, "dynamic": 2}
PROFILE_RANK = {"paper": 0, "tiny": 1}

_warned_registry = False


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
    se_scores: dict[str, float] = field(default_factory=dict)  # task -> standard error over seeds (2+ seeds)
    se_average: float | None = None  # standard error of AVG over seeds (2+ seeds)
    tied_best: bool = False  # not distinguishable from the best AVG at 95% (paired test over seeds x tasks)
    best_avg: bool = False  # the best AVG among our merging rows (the reference of that test)
    p_vs_best: float | None = None  # the test's p-value against the best row
    seed_scores: dict[tuple[int, str], float] = field(default_factory=dict)  # (seed, task) -> score, test split


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
    left_out: list[str] = field(default_factory=list)  # run ids on another checkpoint build (one_build_per_seed)
    other_data: list[str] = field(default_factory=list)  # run ids on other data of the suite (on_current_data)

    @property
    def slug(self) -> str:
        return "_".join(re.sub(r"[^A-Za-z0-9._-]+", "-", s) for s in (self.profile, self.backbone, self.suite))

    @property
    def title(self) -> str:
        return f"{self.profile} · {self.backbone} · {self.suite}"


def registry_defaults(method: str, backbone: str | None = None) -> dict[str, Any] | None:
    """The defaults of ``method`` in declaration order on ``backbone`` (its kind's defaults where the method
    declares them; the plain defaults for an unknown or absent backbone), or None when the method is not
    registered here."""
    global _warned_registry
    try:
        from benchmark.registry import BACKBONES, METHODS

        if method not in METHODS:
            return None
        kind = BACKBONES.get(backbone).meta.get("task_kind") if backbone and backbone in BACKBONES else None
        return METHODS.get(method).defaults(kind)
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
    None), in declaration order, then unknown keys alphabetically. Declared parameters the record lacks (it was run
    before the method had them, so its hash is not today's default's) follow as ``predates k1, k2``: such a record
    is never shown as the default."""
    missing: list[str] = []
    if defaults is None:
        keys = sorted(params)
        shown = keys
    else:
        keys = [k for k in defaults if k in params] + sorted(k for k in params if k not in defaults)
        shown = [k for k in keys if k not in defaults or not _same(params[k], defaults[k])]
        missing = [k for k in defaults if k not in params]
    parts = [", ".join(f"{k}={_fmt_value(params[k])}" for k in shown)] if shown else []
    if missing:
        parts.append(f"predates {', '.join(missing)}")
    if not parts:
        return method
    return f"{method} ({'; '.join(parts)})"


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



def _mean(xs: Sequence[float]) -> float:
    return math.fsum(xs) / len(xs)


def _frame(records: Any):
    """``records`` as the records' frame: a DataFrame passes through, records (dicts) are converted."""
    import pandas as pd

    from benchmark.records import frame

    return records if isinstance(records, pd.DataFrame) else frame(list(records))


def build_tables(
    records: Any,
    *,
    paper: Sequence[PaperRow] | None = None,
    defaults: Callable[[str, str], Mapping[str, Any] | None] = registry_defaults,
    task_order: Callable[[str, str], Sequence[str] | None] = registry_task_order,
) -> list[Table]:
    """One :class:`Table` per (profile, backbone, suite), ordered paper, tiny, others; then by backbone, suite.

    ``records``: the records' frame (:func:`benchmark.records.frame` / :func:`benchmark.records.load`), or the
    records themselves. ``defaults(method, backbone)`` gives the defaults labels are relative to."""
    if paper is None:
        paper = load_paper_results()
    fr = _frame(records)
    if fr.empty:
        return []
    fr = fr.astype({"profile": str, "backbone": str, "suite": str})
    keys = sorted({tuple(k) for k in fr[["profile", "backbone", "suite"]].itertuples(index=False)},
                  key=lambda k: (PROFILE_RANK.get(k[0], 9), k))
    tables = []
    for key in keys:
        sel = fr[(fr.profile == key[0]) & (fr.backbone == key[1]) & (fr.suite == key[2])]
        sel, other_data = on_current_data(sel)
        sel, left_out = one_build_per_seed(sel)
        table = _build_table(*key, sel, paper, defaults, task_order)
        table.left_out = left_out
        table.other_data = other_data
        if other_data:
            table.notes.append(f"Not shown: {len(other_data)} run{'s' if len(other_data) > 1 else ''} on other data "
                               f"of this suite (an earlier version of its generators; {', '.join(other_data)}); "
                               f"rerun on this data to compare.")
        if left_out:
            table.notes.append(f"Not compared: {len(left_out)} run{'s' if len(left_out) > 1 else ''} on another "
                               f"build of this seed's checkpoints ({', '.join(left_out)}); rerun on this build to "
                               f"compare.")
        tables.append(table)
    return tables


def on_current_data(fr) -> tuple[Any, list[str]]:
    """``fr`` (one table's frame) with only the runs on the suite data of its newest run
    (:func:`benchmark.records.current_suite_data`), and the run ids left out: scores on different data are never
    compared, whatever the checkpoints."""
    if "suite_data" not in fr.columns or fr.empty:
        return fr, []
    runs = fr.drop_duplicates("run_id")
    data = current_suite_data(runs[["run_id", "created", "suite_data"]].to_dict("records"))
    left_out = sorted(runs.loc[runs["suite_data"] != data, "run_id"])
    return fr[fr["suite_data"] == data], left_out


def one_build_per_seed(fr) -> tuple[Any, list[str]]:
    """``fr`` (one table's frame) with, per seed, only the runs on the checkpoint build most of that seed's runs
    share (a tie goes to the build with the newest run), and the run ids left out.

    Scores from different builds differ by the build's spread, not by the method, so one table never mixes them.
    Records without checkpoints (``build`` "") form their own build."""
    if "build" not in fr.columns or fr.empty:
        return fr, []
    runs = fr.drop_duplicates("run_id")
    keep: set[str] = set()
    for _, g in runs.groupby("seed", sort=False):
        stats = g.groupby("build").agg(n=("run_id", "size"), newest=("created", "max"))
        best = stats.sort_values(["n", "newest"], ascending=False, kind="stable").index[0]
        keep.update(g.loc[g["build"] == best, "run_id"])
    left_out = sorted(set(runs["run_id"]) - keep)
    return fr[fr["run_id"].isin(keep)], left_out


def _runs(fr) -> list[dict[str, Any]]:
    """One dict per run of a table's frame (run-id order): its run-level columns, ``params`` decoded, ``metrics``
    (task -> test score, the record's task order) and ``metric_names``."""
    out: dict[str, dict[str, Any]] = {}
    for row in fr.itertuples(index=False):
        r = out.get(row.run_id)
        if r is None:
            r = out[row.run_id] = {
                "run_id": row.run_id, "method": row.method, "method_kind": row.method_kind, "seed": int(row.seed),
                "storage_bytes": row.storage_bytes, "average": row.average, "val_average": row.val_average,
                "params": json.loads(row.params), "metrics": {}, "metric_names": {}}
        if row.split == "test":
            r["metrics"][row.task] = float(row.score)
            r["metric_names"][row.task] = row.metric
    return list(out.values())


def _build_table(profile, backbone, suite, fr, paper, defaults, task_order) -> Table:
    import pandas as pd

    runs_all = fr.drop_duplicates("run_id")
    recs = _runs(fr)
    test = fr[fr.split == "test"]
    ptable = paper_table(backbone, suite, paper) if profile == "paper" else []
    order = task_order(suite, profile)
    seen = [str(t) for t in pd.unique(test["task"])]
    if not order and ptable:  # the paper's column order, in our names
        pnames = paper_order(ptable[0].backbone, ptable[0].suite, ptable)
        ours = {paper_task_name(t): t for t in seen}
        order = [ours[p] for p in pnames if p in ours]
    head = [t for t in (order or []) if t in seen]
    tasks = head + [t for t in seen if t not in head]
    metric_names = {str(t): str(m) for t, m in test.dropna(subset=["metric"]).drop_duplicates("task")[
        ["task", "metric"]].itertuples(index=False)}

    # our rows: one per (method, params), seeds averaged
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for r in recs:
        groups.setdefault((r["method"], json.dumps(r["params"], sort_keys=True)), []).append(r)
    groups, picked_of = select_by_val(groups)
    ours: list[tuple[tuple, Row, list[PaperRow]]] = []
    for (method, pkey), runs in groups.items():
        label = method_label(method, runs[0]["params"], defaults(method, backbone))
        seeds = sorted({r["seed"] for r in runs}, key=repr)
        suffix = ""
        if len(seeds) > 1 or len(runs) > len(seeds):
            suffix = f" · {len(seeds)} seed{'s' if len(seeds) > 1 else ''}"
            if len(runs) > len(seeds):
                suffix += f", {len(runs)} runs"
        if (method, pkey) in picked_of:
            suffix += f" · best of {picked_of[(method, pkey)]} by val"
        scores, se_scores, seed_scores = {}, {}, {}
        for t in tasks:
            vals = [float(r["metrics"][t]) for r in runs if t in r["metrics"]]
            if vals:
                scores[t] = _mean(vals)
            per_seed = {s: _mean(v) for s in seeds
                        if (v := [float(r["metrics"][t]) for r in runs if r["seed"] == s and t in r["metrics"]])}
            seed_scores.update({(s, t): v for s, v in per_seed.items()})
            se = standard_error(list(per_seed.values()))
            if se is not None:
                se_scores[t] = se
        seed_avgs = [_mean([float(r["average"]) for r in runs if r["seed"] == s]) for s in seeds]
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
            se_scores=se_scores,
            se_average=standard_error(seed_avgs),
            seed_scores=seed_scores,
        )
        matched = match_paper_rows(method, runs[0]["params"], ptable)
        key = (TYPE_RANK.get(row.type, 9), row.type, *method_key(method), 0, label)
        ours.append((key, row, matched))
    _mark_tied(ours)

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
        method = paper_key(p.method) or ""
        info = method_infos().get(method)
        typ = info.type if info is not None else ("dynamic" if p.storage_mb is not None else "static")
        key = (TYPE_RANK.get(typ, 9), typ, *method_key(method or "~" + p.method), 1, f"{p.order:06d}")
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

    by_time = runs_all.sort_values(["created", "run_id"], kind="stable")
    commits = [str(c) for c in pd.unique(by_time["git_commit"].fillna("unknown").astype(str))]
    notes = []
    n_multi = sum(1 for r in rows if r.origin == "ours" and r.n_seeds >= MIN_SEEDS)
    if n_multi:
        notes.append(f"± is the standard error over seeds. † marks the merging methods not distinguishable from the "
                     f"best AVG at the 95% level (two-sided paired t-test over seeds x tasks, scipy.stats.ttest_rel; "
                     f"rows with {MIN_SEEDS}+ seeds in common with the best).")
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
        n_runs=len(runs_all),
        commits=commits,
        newest=str(by_time["created"].iloc[-1]),
        sources=sources,
        notes=notes,
    )


def _mark_tied(ours: Sequence[tuple[tuple, Row, Any]]) -> None:
    """Flag the best merging row by AVG and the merging rows not distinguishable from it (:mod:`.stats`)."""
    merging = {str(i): row for i, (_, row, _) in enumerate(ours) if row.type != "reference"}
    best, tied = not_distinguishable({k: (r.average, r.seed_scores) for k, r in merging.items()})
    if best is None or merging[best].n_seeds < MIN_SEEDS:
        return
    merging[best].best_avg = True
    for k, p in tied.items():
        merging[k].tied_best = True
        merging[k].p_vs_best = p


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

