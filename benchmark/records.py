"""Results records: one JSON file per run under ``results/``, written atomically.

Stable top-level keys (tools and CI read these; add keys, never rename or remove them):

==================  ===============================================================================
``run_id``          ``<backbone>-<method>-<profile>-s<seed>-<hash>``; the file is ``<run_id>.json``
``created``         UTC time, ISO 8601
``profile``         ``tiny`` or ``paper``
``method``          registry name of the method
``method_kind``     ``static`` / ``task_conditioned`` / ``routed``; ``reference`` for Pretrained/Individual
``params``          the method's resolved parameters
``backbone``        registry name of the backbone
``suite``           registry name of the suite
``seed``            the run's seed
``metrics``         task -> score in percent (accuracy, mAP@50 or GLUE score)
``metric_names``    task -> the metric's name
``average``         mean of ``metrics``
``storage_bytes``   measured size of the artifact file (bytes)
``storage_breakdown`` artifact -> {codec, bytes}; ``container_overhead`` makes the sum exact
``timings``         {merge_s, eval_s, inference_ratio}
``peak_rss_bytes``  peak resident memory of the process
``versions``        python, torch, transformers, open_clip, timm, merge-bench, codecs
``git_commit``      commit of the code that ran (``unknown`` outside a checkout)
``checkpoints``     checkpoint name -> sha256
``extra``           method-specific figures (routing accuracy, learned coefficients, ...)
``config_hash``     hash of (method, params, backbone, suite, profile, seed): identifies a run for resumption
==================  ===============================================================================

Optional keys: ``val_metrics`` / ``val_average`` (the same scores on the val split, present when the run was asked
to score it; hyperparameter selection reads these, never the test scores).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping

REQUIRED_KEYS = (
    "run_id",
    "created",
    "profile",
    "method",
    "method_kind",
    "params",
    "backbone",
    "suite",
    "seed",
    "metrics",
    "metric_names",
    "average",
    "storage_bytes",
    "storage_breakdown",
    "timings",
    "peak_rss_bytes",
    "versions",
    "git_commit",
    "checkpoints",
    "extra",
    "config_hash",
)


class RecordError(ValueError):
    pass


def config_hash(method: str, params: dict, backbone: str, suite: str, profile: str, seed: int) -> str:
    blob = json.dumps(
        {"method": method, "params": params, "backbone": backbone, "suite": suite, "profile": profile, "seed": seed},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


class RecordWarning(UserWarning):
    """A file under ``results/`` that is not a valid record was skipped."""


#: the type every stable key must have (bool is refused where a number is expected)
_KEY_TYPES: dict[str, type | tuple[type, ...]] = {
    "run_id": str, "created": str, "profile": str, "method": str, "method_kind": str, "params": dict,
    "backbone": str, "suite": str, "seed": int, "metrics": dict, "metric_names": dict, "average": (int, float),
    "storage_bytes": int, "storage_breakdown": dict, "timings": dict, "peak_rss_bytes": int, "versions": dict,
    "git_commit": str, "checkpoints": dict, "extra": dict, "config_hash": str,
}


def validate(record: dict[str, Any]) -> None:
    """Every stable key present with its type; scores finite numbers; sizes and seed non-negative integers."""
    if not isinstance(record, dict):
        raise RecordError(f"a record is a JSON object, got {type(record).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in record]
    if missing and "run_id" not in record:  # a foreign JSON (a config, a notes file): say so, not 21 key names
        raise RecordError(f"not a merge-bench record (no run_id; {len(missing)} of its {len(REQUIRED_KEYS)} keys "
                          "missing)")
    if missing:
        raise RecordError(f"record {record.get('run_id', '?')} lacks keys {missing}")
    for key, kind in _KEY_TYPES.items():
        v = record[key]
        if isinstance(v, bool) or not isinstance(v, kind):
            names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            raise RecordError(f"record {record['run_id']!r}: {key} must be {names}, got {v!r:.60}")
    for key, kind in (("val_metrics", dict), ("val_average", (int, float))):  # optional, typed when present
        if key in record and (isinstance(record[key], bool) or not isinstance(record[key], kind)):
            raise RecordError(f"record {record['run_id']!r}: {key} must be "
                              f"{'an object' if kind is dict else 'a number'}, got {record[key]!r:.60}")
    sd = record.get("suite_data")  # optional (records from before it existed, paper runs: null)
    if sd is not None and not (isinstance(sd, str) and len(sd) == 64 and all(c in "0123456789abcdef" for c in sd)):
        raise RecordError(f"record {record['run_id']!r}: suite_data must be a sha256 (64 hex digits) or null, "
                          f"got {sd!r:.80}")
    if "val_average" in record and not math.isfinite(record["val_average"]):
        raise RecordError(f"record {record['run_id']}: val_average is not finite: {record['val_average']!r}")
    for key in ("seed", "storage_bytes", "peak_rss_bytes"):
        if record[key] < 0:
            raise RecordError(f"record {record['run_id']}: {key} must be >= 0, got {record[key]}")
    if not record["metrics"]:
        raise RecordError(f"record {record['run_id']}: metrics must be a non-empty task -> value map")
    for key in ("metrics", "val_metrics"):
        for task, v in (record.get(key) or {}).items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise RecordError(f"record {record['run_id']}: {key} {task!r} is not a finite number: {v!r}")
    if not math.isfinite(record["average"]):
        raise RecordError(f"record {record['run_id']}: average is not finite: {record['average']!r}")


def _clean(obj: Any) -> Any:
    """JSON-safe copy: floats rounded to 6 decimals so records diff cleanly."""
    if isinstance(obj, float):
        return round(obj, 6)
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically: a temp file beside it, fsync, rename. A reader sees the old file or
    the whole new one, never a part; a crash leaves at most a dot-named temp file, which readers skip."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_record(record: dict[str, Any], results_dir: str | os.PathLike) -> Path:
    """Validate and write ``<results_dir>/<run_id>.json`` atomically (:func:`atomic_write_text`).

    A record already there with the same run id (the same config) but other scores or storage is kept; the new one
    goes to ``<run_id>.json.rejected`` (not read as a record) and :class:`RecordError` says so. Unless the two ran
    on different data of the suite (``suite_data``): then the old record is of data the suite no longer makes, and
    the new one replaces it, with a :class:`RecordWarning` naming both data versions."""
    validate(record)
    path = Path(results_dir) / f"{record['run_id']}.json"
    text = json.dumps(_clean(record), indent=1, sort_keys=True) + "\n"
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        old = None  # nothing there, or nothing readable worth keeping: the new record replaces it
    if isinstance(old, dict) and (old.get("suite_data") or "") != (record.get("suite_data") or ""):
        warnings.warn(f"replaced {path.name}: its run was on other data of suite {record['suite']} "
                      f"({(old.get('suite_data') or 'unrecorded')[:12]}, now {(record.get('suite_data') or '-')[:12]})",
                      RecordWarning, stacklevel=2)
    elif isinstance(old, dict) and (old.get("metrics"), old.get("storage_bytes")) != (
            _clean(record["metrics"]), record["storage_bytes"]):
        # same run id (same config) but other scores: a changed cache or code. Never replace silently.
        kept = atomic_write_text(path.with_name(path.name + ".rejected"), text)
        raise RecordError(f"{path} exists with other scores or storage (checkpoints {old.get('checkpoints')} vs "
                          f"{record['checkpoints']}); kept it, and wrote the new record to {kept.name}")
    return atomic_write_text(path, text)


#: a dot-named temp file older than this was left by a killed writer (a write takes milliseconds)
STALE_TEMP_S = 3600.0


def remove_stale_temps(folder: str | os.PathLike, older_than_s: float = STALE_TEMP_S) -> int:
    """Remove the dot-named ``*.tmp`` files (:func:`atomic_write_text`, the artifact writer) and ``.write-test.*``
    files a killed process left in ``folder``; only those older than ``older_than_s``, so a live writer's temp file
    is never taken from under it. Returns how many were removed."""
    import time

    now = time.time()
    n = 0
    try:
        names = [p for p in Path(folder).iterdir() if p.name.startswith(".")
                 and (p.name.endswith(".tmp") or p.name.startswith(".write-test."))]
    except OSError:
        return 0
    for p in names:
        try:
            if p.is_file() and not p.is_symlink() and now - p.stat().st_mtime > older_than_s:
                p.unlink()
                n += 1
        except OSError:
            pass
    return n


def check_writable(results_dir: str | os.PathLike) -> None:
    """Create ``results_dir`` and write-test it, so that a run learns of a bad results dir before its work; and
    sweep the temp files killed writers left there (:func:`remove_stale_temps`)."""
    d = Path(results_dir)
    try:
        d.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=d, prefix=".write-test.")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise RecordError(f"results dir {str(d)!r} is not a writable directory ({e.strerror or e})") from None
    remove_stale_temps(d)


def load_records(results_dir: str | os.PathLike, strict: bool = False) -> list[dict[str, Any]]:
    """Every valid record under ``results_dir`` (recursively), sorted by run id. Temp files are ignored.

    A file that is not JSON or not a valid record (a stray file, a foreign JSON, a damaged record) is skipped with
    one :class:`RecordWarning` naming it and why; ``strict=True`` raises :class:`RecordError` instead.
    """
    out = []
    for p in sorted(Path(results_dir).rglob("*.json")):
        if p.name.startswith("."):
            continue
        try:
            try:
                rec = json.loads(p.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise RecordError(f"not valid JSON ({e})") from None
            validate(rec)
        except RecordError as e:
            if strict:
                raise RecordError(f"{p}: {e}") from None
            warnings.warn(f"skipped {p}: {e}", RecordWarning, stacklevel=2)
            continue
        out.append(rec)
    return sorted(out, key=lambda r: r["run_id"])


def find_by_config(results_dir: str | os.PathLike, h: str) -> Iterable[dict[str, Any]]:
    return [r for r in load_records(results_dir) if r.get("config_hash") == h]


#: the record's scalar keys that become columns of :func:`load`'s frame, in this order (``val_average`` is missing
#: where the run did not score the val split)
FRAME_KEYS = ("run_id", "method", "method_kind", "backbone", "suite", "suite_data", "profile", "seed",
              "config_hash", "storage_bytes", "peak_rss_bytes", "git_commit", "created", "average", "val_average",
              "build")


def build_id(checkpoints: dict[str, str] | None) -> str:
    """A short fingerprint of a run's checkpoint set (name -> sha256): runs that share it merged the same
    pretrained and fine-tuned weights and may be compared; "" when the record names no checkpoints."""
    if not checkpoints:
        return ""
    return hashlib.sha256(json.dumps(checkpoints, sort_keys=True).encode()).hexdigest()[:12]


def current_suite_data(runs: Iterable[Mapping[str, Any]]) -> str:
    """The ``suite_data`` of the newest of ``runs`` (by ``created``, then run id): the data one table's runs, or one
    grid's, are compared on. A suite's data changes when its generators do, and a run on the old data is not
    comparable with one on the new, so a table shows the runs on the newest data only (the others are listed to
    rerun). A record without ``suite_data`` (made before records had it) counts as data of its own, ""."""
    newest = max(runs, key=lambda r: (str(r.get("created") or ""), str(r.get("run_id") or "")))
    return newest.get("suite_data") or ""


def load(results_dir: str | os.PathLike):
    """The records under ``results_dir`` as a ``pandas.DataFrame``, one row per run x split x task
    (:func:`frame` of :func:`load_records`)."""
    return frame(load_records(results_dir))


def frame(records: Iterable[dict[str, Any]]):
    """Records as a ``pandas.DataFrame``, one row per run x split x task.

    Columns: :data:`FRAME_KEYS` (run-level: each run's rows repeat them; ``suite_data`` is "" where the record has
    none; ``build`` is :func:`build_id` of the run's checkpoints), then ``split`` (``test`` from ``metrics``;
    ``val`` from ``val_metrics`` where the run scored it), ``task``, ``metric`` (the metric's name), ``score``
    (percent), ``params`` (the resolved parameters as canonical JSON text: what identifies a setting exactly), then
    every parameter as ``param.<name>`` (nested values flattened with dots; a parameter a method lacks is missing;
    a column whose values differ in type across methods, or hold lists, holds their JSON text). Rows are ordered by
    run id, split and the record's task order. The leaderboard (:mod:`benchmark.leaderboard`) is built from it.
    """
    import pandas as pd

    rows = []
    for rec in sorted(records, key=lambda r: r["run_id"]):
        flat = pd.json_normalize(rec["params"], sep=".").to_dict("records")[0] if rec["params"] else {}
        base = {k: rec.get(k) for k in FRAME_KEYS}
        base["suite_data"] = rec.get("suite_data") or ""
        base["build"] = build_id(rec.get("checkpoints"))
        base["params"] = json.dumps(rec["params"], sort_keys=True)
        base.update({f"param.{k}": v for k, v in flat.items()})
        for split, key in (("test", "metrics"), ("val", "val_metrics")):
            for task, score in (rec.get(key) or {}).items():
                rows.append({**base, "split": split, "task": task, "metric": rec["metric_names"].get(task),
                             "score": score})
    cols = list(FRAME_KEYS) + ["split", "task", "metric", "score", "params"]
    out = pd.DataFrame(rows)
    if out.empty:
        return pd.DataFrame(columns=cols)
    out["val_average"] = out["val_average"].astype(float)  # None (not scored) -> NaN: one float column
    params = sorted(c for c in out.columns if c.startswith("param."))
    for c in params:  # a column must have one type (parquet): mixed or list values become their JSON text
        kinds = {type(v) for v in out[c].dropna()}
        if len(kinds) > 1 or kinds & {list, dict}:
            out[c] = out[c].map(lambda v: v if v is None or (isinstance(v, float) and math.isnan(v))
                                else json.dumps(v, sort_keys=True))
    return out[cols + params].reset_index(drop=True)
