"""The 7 GLUE tasks of the paper profile (CoLA, SST-2, MRPC, QQP, MNLI, QNLI, RTE), read with HF ``datasets``.

Splits, as DARE (Yu et al. 2024), EMR-Merging, FusionBench and the papers evaluate GLUE: GLUE's test labels are
hidden, so our ``test`` split is GLUE's ``validation`` split (``validation_matched`` for MNLI); our ``val`` split is
a seeded share of GLUE's ``train`` split (10 %, at most 1000 examples, DARE's rule; drawn by
:func:`tasks.vision_paper.val_split_indices`) and ``train`` is the rest.

Where: ``data_root`` (or ``$MERGE_BENCH_DATA``) names a local directory; the first of ``<root>/glue/<task>``,
``<root>/nyu-mll/glue/<task>`` and ``<root>/<task>`` that exists is read:

* a ``DatasetDict.save_to_disk`` directory, or one ``Dataset.save_to_disk`` directory per split;
* or data files per split as in the Hub repository ``nyu-mll/glue`` (``<task>/train-*.parquet``,
  ``validation-*.parquet``; ``.csv`` / ``.json`` / ``.jsonl`` work too), read with ``datasets.load_dataset``.

Without a root, ``datasets.load_dataset("nyu-mll/glue", task)`` (Hub or HF cache).

Inputs are lists of ``(text_a, text_b | None)`` pairs (the backbone's tokenizer encodes them), targets
``int64 [N]`` in GLUE's label order (:data:`GLUE_CLASSES`).
"""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from benchmark.contract import TaskData
from benchmark.errors import UserError

__all__ = ["load_glue_task", "GLUE_COLUMNS", "GLUE_CLASSES", "DATA_ENV_VAR", "HUB_ID", "val_indices"]

DATA_ENV_VAR = "MERGE_BENCH_DATA"
HUB_ID = "nyu-mll/glue"
VAL_FRACTION, VAL_MAX, VAL_SEED = 0.1, 1000, 42

GLUE_COLUMNS: dict[str, tuple[str, str | None]] = {
    "cola": ("sentence", None),
    "sst2": ("sentence", None),
    "mrpc": ("sentence1", "sentence2"),
    "qqp": ("question1", "question2"),
    "mnli": ("premise", "hypothesis"),
    "qnli": ("question", "sentence"),
    "rte": ("sentence1", "sentence2"),
}
GLUE_CLASSES: dict[str, list[str]] = {
    "cola": ["unacceptable", "acceptable"],
    "sst2": ["negative", "positive"],
    "mrpc": ["not_equivalent", "equivalent"],
    "qqp": ["not_duplicate", "duplicate"],
    "mnli": ["entailment", "neutral", "contradiction"],
    "qnli": ["entailment", "not_entailment"],
    "rte": ["entailment", "not_entailment"],
}
_EXTS = {".parquet": "parquet", ".csv": "csv", ".json": "json", ".jsonl": "json", ".arrow": "arrow"}


def val_indices(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) row indices of GLUE's train split: a seeded 10 % (at most 1000) held out."""
    from tasks.vision_paper import val_split_indices

    return val_split_indices(n, fraction=min(VAL_FRACTION, VAL_MAX / max(n, 1)), seed=VAL_SEED)


def _data_files(d: Path) -> dict[str, list[str]]:
    files: dict[str, list[str]] = {}
    for f in sorted(d.iterdir()):
        if f.is_file() and f.suffix in _EXTS:
            split = f.name.split("-")[0].split(".")[0]
            files.setdefault(split, []).append(str(f))
    return files


def _open_local(d: Path) -> Mapping[str, Any]:
    import datasets

    if (d / "dataset_dict.json").is_file():
        return datasets.load_from_disk(str(d))
    per_split = {p.name: p for p in sorted(d.iterdir()) if p.is_dir() and (p / "state.json").is_file()}
    if per_split:
        return {name: datasets.load_from_disk(str(p)) for name, p in per_split.items()}
    files = _data_files(d)
    if not files:
        raise UserError(f"{d} holds no saved dataset and no data files ({', '.join(_EXTS)})")
    kinds = {_EXTS[Path(f).suffix] for fs in files.values() for f in fs}
    if len(kinds) != 1:
        raise UserError(f"{d} mixes data file kinds {sorted(kinds)}")
    try:
        return datasets.load_dataset(kinds.pop(), data_files=files)
    except Exception as e:  # noqa: BLE001 -- any reader failure is the user's data layout
        raise UserError(f"could not read the GLUE files in {d}: {type(e).__name__}: {e}") from e


@lru_cache(maxsize=16)
def _open(task: str, root: str | None) -> tuple[Mapping[str, Any], str]:
    if root is not None:
        tried = [Path(root) / "glue" / task, Path(root) / HUB_ID / task, Path(root) / task]
        for p in tried:
            if p.is_dir():
                return _open_local(p), str(p)
        raise UserError(f"no local copy of GLUE {task} under {root}; tried " + ", ".join(map(str, tried))
                        + f". Save it there (save_to_disk, or the Hub repo's parquet files), or unset ${DATA_ENV_VAR}")
    import datasets

    try:
        return datasets.load_dataset(HUB_ID, task), f"hub:{HUB_ID}/{task}"
    except Exception as e:  # noqa: BLE001
        raise UserError(f"cannot load GLUE {task} ({HUB_ID}): {type(e).__name__}: {e}. Run once with network access "
                        f"or save it under a directory given as data_root / ${DATA_ENV_VAR}") from e


def load_glue_task(task: str, split: str, *, data_root: str | os.PathLike | None = None) -> TaskData:
    """One split (``train``, ``val``, ``test``) of a GLUE task; see the module docstring."""
    if task not in GLUE_COLUMNS:
        raise UserError(f"unknown GLUE task {task!r}; valid: {', '.join(GLUE_COLUMNS)}")
    if split not in ("train", "val", "test"):
        raise UserError(f"unknown split {split!r}; valid: train, val, test")
    root = data_root if data_root is not None else os.environ.get(DATA_ENV_VAR) or None
    dsd, where = _open(task, str(Path(root).expanduser().resolve()) if root is not None else None)
    if split == "test":
        source = "validation_matched" if task == "mnli" else "validation"
        if source not in dsd and "validation" in dsd:
            source = "validation"
    else:
        source = "train"
    if source not in dsd:
        raise UserError(f"{where} has no {source!r} split (has {', '.join(dsd.keys())})")
    ds = dsd[source]
    a_col, b_col = GLUE_COLUMNS[task]
    cols = [c for c in (a_col, b_col, "label") if c is not None]
    missing = [c for c in cols if c not in ds.column_names]
    if missing:
        raise UserError(f"{where}[{source}] lacks columns {missing} (has {ds.column_names})")
    table = ds.select_columns(cols).to_dict()
    labels = np.asarray(table["label"], dtype=np.int64)
    rows = np.arange(len(labels))
    if split != "test":
        tr, va = val_indices(len(labels))
        rows = tr if split == "train" else va
    if (labels[rows] < 0).any():
        raise UserError(f"{where}[{source}] has unlabeled rows (label -1): GLUE's test split cannot be scored")
    a = table[a_col]
    b = table[b_col] if b_col is not None else None
    inputs = [(a[i], b[i] if b is not None else None) for i in rows.tolist()]
    return TaskData(inputs=inputs, targets=torch.from_numpy(labels[rows].copy()), classes=list(GLUE_CLASSES[task]),
                    meta={"dataset": HUB_ID, "config": task, "source": where, "source_split": source,
                          "val_carved": split != "test", "val_fraction": VAL_FRACTION, "val_max": VAL_MAX,
                          "val_seed": VAL_SEED})
