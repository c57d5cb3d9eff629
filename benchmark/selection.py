"""Hyperparameter selection on the validation split, never the test split.

The protocol (DESIGN.md, "Leaderboard"; issue 18 item 2): each method is shown at the setting of its grid with the
best mean *validation* average over seeds. The grids live in sweep files (``sweeps/tiny_grid.yaml``, ``select_by:
val``), whose runs also score the val split (records ``val_metrics`` / ``val_average``). Nothing here reads a test
score to choose: :func:`select_by_val` sees only ``val_average``; test scores are carried along for display.

* :func:`select_by_val` is what the leaderboard uses: among a method's settings in one table whose every run has a
  ``val_average``, only the best one is kept (ties: the first setting in record order).
* ``python -m benchmark select SWEEP.yaml [--results-dir results]`` (:func:`cmd_select`) prints, per (profile,
  backbone, suite, method) of the sweep's grids, the selected setting with its val and test averages. A grid whose
  runs are in the results dir without val scores, or not there at all, is a one-line error (exit 2): a selection
  from a part of the grid, or from test scores, is never printed as if it were the protocol's.
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

__all__ = ["select_by_val", "Selection", "select_grids", "format_selections", "cmd_select"]


def _mean(xs: Sequence[float]) -> float:
    return math.fsum(xs) / len(xs)


def _has_val(run: Mapping[str, Any]) -> bool:
    v = run.get("val_average")
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def select_by_val(
    groups: Mapping[tuple[str, str], list[Mapping[str, Any]]],
) -> tuple[dict[tuple[str, str], list[Mapping[str, Any]]], dict[tuple[str, str], int]]:
    """``groups`` maps (method, parameter key) to its runs (one table). Among a method's settings whose every run
    has a ``val_average`` (runs made with ``--eval-val`` / ``select_by: val``), only the one with the best mean
    ``val_average`` over its runs is kept, when there are at least two; ties go to the first setting in ``groups``'
    order. Settings without val scores are kept as they are. Returns the kept groups and, for each picked setting,
    how many settings it was picked from. Test scores are never read."""
    scored: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for key, runs in groups.items():
        if runs and all(_has_val(r) for r in runs):
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


@dataclass(frozen=True)
class Selection:
    """The val-selected setting of one method's grid on one (profile, backbone, suite)."""

    profile: str
    backbone: str
    suite: str
    method: str
    params: dict[str, Any]  # the selected setting's resolved parameters
    overrides: dict[str, Any]  # the grid point that gave them
    val_average: float  # mean over its seeds
    test_average: float  # mean over its seeds (shown, never used to choose)
    seeds: tuple[int, ...]
    n_settings: int  # settings of the grid compared


def select_grids(sweep: Any, records: Sequence[Mapping[str, Any]], source: str = "the sweep") -> list[Selection]:
    """For every (profile, backbone, suite, method) of ``sweep`` (:class:`benchmark.sweep.Sweep`) whose runs span
    two or more settings, the setting with the best mean val average over seeds, among the records whose config
    hash is one of the sweep's runs and whose suite data is the grid's newest run's
    (:func:`benchmark.records.current_suite_data`).

    Raises :class:`benchmark.errors.UserError` (one line) when a grid has no records at all, or records without val
    scores (the run did not score the val split: ``select_by: val`` / ``--eval-val``), or is only partly run."""
    from benchmark.errors import UserError
    from benchmark.records import current_suite_data

    by_hash: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for r in records:
        by_hash[str(r.get("config_hash"))].append(r)
    grids: dict[tuple[str, str, str, str], dict[str, list[Any]]] = {}
    for run in sweep.runs:
        s = run.spec
        key = (s.profile, s.backbone, str(s.suite), s.method)
        pkey = repr(sorted((k, repr(v)) for k, v in run.params.items()))
        grids.setdefault(key, {}).setdefault(pkey, []).append(run)
    out: list[Selection] = []
    for (profile, backbone, suite, method), settings in grids.items():
        if len(settings) < 2:
            continue  # nothing to select: the method runs at its one setting
        where = f"{method} on {backbone}/{suite} ({profile})"
        grid = {run.config_hash: by_hash.get(run.config_hash, []) for runs in settings.values() for run in runs}
        if any(grid.values()):  # the newest data only, as on the leaderboard: a grid never spans two data versions
            data = current_suite_data([rec for v in grid.values() for rec in v])
            grid = {h: [rec for rec in v if (rec.get("suite_data") or "") == data] for h, v in grid.items()}
        have = {p: [rec for run in runs for rec in grid[run.config_hash]] for p, runs in settings.items()}
        n_recs = sum(len(v) for v in have.values())
        if n_recs == 0:
            raise UserError(f"{source}: no records of {where}'s grid ({len(settings)} settings) in the results dir; "
                            f"run the sweep first")
        no_val = sum(1 for v in have.values() for rec in v if not _has_val(rec))
        if no_val:
            raise UserError(f"{source}: {no_val} of the {n_recs} records of {where}'s grid have no val scores "
                            f"(run with select_by: val or --eval-val); a selection needs the val split, never test")
        missing = [p for p, runs in settings.items()
                   if any(not grid[run.config_hash] for run in runs)]
        if missing:
            raise UserError(f"{source}: {where}: {len(missing)} of {len(settings)} settings of its grid (seeds "
                            f"included) have no record yet; finish the sweep before selecting")
        groups = {(method, p): have[p] for p in settings}
        kept, picked = select_by_val(groups)
        (best,) = [k for k in kept if k in picked]
        runs = have[best[1]]
        out.append(Selection(
            profile, backbone, suite, method, dict(runs[0]["params"]), dict(settings[best[1]][0].spec.overrides),
            _mean([float(r["val_average"]) for r in runs]), _mean([float(r["average"]) for r in runs]),
            tuple(sorted({int(r["seed"]) for r in runs})), picked[best]))
    return out


def format_selections(selections: Sequence[Selection]) -> str:
    if not selections:
        return "no method of the sweep has a grid of two or more settings: nothing to select"
    rows = [("profile", "backbone", "suite", "method", "selected (grid point)", "of", "seeds", "val AVG", "test AVG")]
    for s in selections:
        point = ", ".join(f"{k}={v}" for k, v in sorted(s.overrides.items())) or "(defaults)"
        rows.append((s.profile, s.backbone, s.suite, s.method, point, str(s.n_settings), str(len(s.seeds)),
                     f"{s.val_average:.2f}", f"{s.test_average:.2f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def cmd_select(args: Any) -> int:
    """``python -m benchmark select SWEEP.yaml... [--results-dir results]``."""
    from pathlib import Path

    from benchmark.errors import UserError
    from benchmark.records import load_records
    from benchmark.sweep import load_sweeps

    results_dir = Path(args.results_dir)
    if not results_dir.is_dir():
        raise UserError(f"--results-dir {str(results_dir)!r} is not a directory")
    sweep = load_sweeps(args.files, results_dir=results_dir.resolve(), skip_unknown=args.skip_unknown)
    source = ", ".join(map(str, args.files))
    print(format_selections(select_grids(sweep, load_records(results_dir), source)))
    return 0
