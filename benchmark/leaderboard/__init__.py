"""The leaderboard: ``leaderboard.md`` and one accuracy-vs-storage plot per table, generated from ``results/``.

``python -m benchmark leaderboard [--results-dir results] [--output leaderboard.md]`` calls
:func:`write_leaderboard`. The tables are built from the records' pandas frame (:func:`benchmark.records.load`, one
row per run x split x task); the pure functions (:func:`build_tables`, :func:`render_markdown`, :func:`render_plot`)
take that frame or a list of records, so tests need no files.

One module per part:

* :mod:`~benchmark.leaderboard.tables`: the frame -> :class:`Table` / :class:`Row` (grouping, seed means, val
  selection, labels relative to the backbone's defaults);
* :mod:`~benchmark.leaderboard.stats`: standard errors over seeds and the paired test against the best;
* :mod:`~benchmark.leaderboard.paper`: the papers' names and figures (``paper_results.csv``);
* :mod:`~benchmark.leaderboard.markdown` and :mod:`~benchmark.leaderboard.plots`: rendering;
* :mod:`~benchmark.leaderboard.files`: writing ``leaderboard.md`` and the PNGs.

Layout (DESIGN.md, "Leaderboard"), one table per (profile, backbone, suite), like the papers' tables:

* columns Type, Method, Storage (MB), one per task, AVG. Rows are grouped by type: ``reference`` (Pretrained,
  Traditional MTL, Individual: the papers' top block), ``static``, ``dynamic`` (task-conditioned and routed). The
  type is written on the first row of its group only, as in the papers.
* Method = the registry name plus every parameter that differs from the method's default on that backbone (its
  kind's defaults where the method declares them; all parameters when the method is not registered here). A record
  run at a setting that is no longer the default therefore shows its setting, never passes as the default. Runs of
  the same (method, parameters) with several seeds are one row with the mean of every column and "· N seeds", and
  with two or more seeds every score shows ``± s.e.`` (the standard error over seeds); no seed is ever picked.
* Uncertainty: with several seeds, ``†`` after AVG marks the merging rows not distinguishable from the best AVG at
  the 95% level (two-sided paired t-test over seeds x tasks, :mod:`~benchmark.leaderboard.stats`).
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
  y = AVG with +- one standard error over seeds as error bars; points labelled; our merging methods' Pareto front
  drawn).

Deterministic: the same records give byte-identical markdown and PNGs (no clock is read, the date shown is the
newest record's; the plots use matplotlib's default style with a fixed font, size and dpi, and PNG metadata without
the software/time entries; PNG bytes are stable for a given matplotlib/freetype build). Files whose bytes did not
change are not rewritten, and stale plots in the plot folder are removed, so regenerating leaves git clean.
"""
from __future__ import annotations

from benchmark.leaderboard.files import check_output, write_leaderboard
from benchmark.leaderboard.markdown import DASH, format_storage, render_markdown, render_table, short_commit
from benchmark.leaderboard.paper import (PAPER_BACKBONES, PAPER_CSV, PAPER_ONLY_METHODS, PAPER_SUITES, PAPER_TASKS,
                                         MethodInfo, PaperRow, load_paper_results, match_paper_rows, method_infos,
                                         method_key, paper_key, paper_methods, paper_order, paper_table,
                                         paper_task_name, row_type)
from benchmark.leaderboard.plots import pareto_front, render_plot
from benchmark.leaderboard.stats import not_distinguishable, paired_p_value, standard_error
from benchmark.leaderboard.tables import (PROFILE_RANK, TYPE_RANK, Row, Table, build_tables, mark_best,
                                          method_label, on_current_data, one_build_per_seed, registry_defaults,
                                          registry_task_order)
from benchmark.selection import select_by_val

__all__ = [
    "PAPER_ONLY_METHODS", "PAPER_TASKS", "PAPER_BACKBONES", "PAPER_SUITES", "PAPER_CSV", "DASH", "TYPE_RANK",
    "PROFILE_RANK", "MethodInfo", "PaperRow", "method_infos", "method_key", "paper_methods", "paper_key",
    "paper_order", "paper_table", "Row", "Table", "build_tables", "format_storage", "load_paper_results",
    "mark_best", "match_paper_rows", "select_by_val", "method_label", "paper_task_name", "registry_defaults",
    "registry_task_order", "render_markdown", "render_table", "render_plot", "pareto_front", "row_type",
    "short_commit", "standard_error", "paired_p_value", "not_distinguishable", "write_leaderboard", "check_output",
    "on_current_data",
    "one_build_per_seed",
]
