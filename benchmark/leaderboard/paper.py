"""The papers' side of the leaderboard: how our methods, tasks and backbones are named in the papers' tables, and
the papers' figures (``benchmark/data/paper_results.csv``, a copy of ``shared/reference/paper_results.csv``).

Paper-profile tables put a paper's figure in a row ``↳ paper [n]`` right under our matching row
(:func:`match_paper_rows`); paper rows of methods we have not run are listed as ``… (paper only [n])``. The papers
report GLUE scores as fractions; :func:`load_paper_results` scales them to percent like ours.
"""
from __future__ import annotations

import csv
import math
import os
import re
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Sequence

from benchmark.registry import DEFAULT_ORDER

__all__ = ["PAPER_CSV", "PAPER_ONLY_METHODS", "PAPER_TASKS", "PAPER_BACKBONES", "PAPER_SUITES", "MethodInfo",
           "PaperRow", "method_infos", "paper_methods", "paper_task_name", "row_type", "method_key",
           "load_paper_results", "paper_key", "match_paper_rows", "paper_order", "paper_table"]

_warned_registry = False

PAPER_CSV = Path(__file__).resolve().parent.parent / "data" / "paper_results.csv"

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


def method_key(method: str, infos: Mapping[str, MethodInfo] | None = None) -> tuple[int, str]:
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


def paper_key(paper_method: str) -> str | None:
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



def paper_order(backbone: str, suite: str, paper: Sequence[PaperRow]) -> list[str]:
    out: list[str] = []
    for p in paper:
        if p.backbone == backbone and p.suite == suite:
            out += [t for t in p.values if t != "AVG" and t not in out]
    return out


def paper_table(backbone: str, suite: str, paper: Sequence[PaperRow]) -> list[PaperRow]:
    b = PAPER_BACKBONES.get(backbone, backbone)
    s = PAPER_SUITES.get(suite, suite)
    return sorted((p for p in paper if p.backbone == b and p.suite == s), key=lambda p: p.order)
