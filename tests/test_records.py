"""Records: required keys, validation, and atomic writes that an interrupted writer cannot leave half-written."""
from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from benchmark.records import REQUIRED_KEYS, RecordError, load_records, validate, write_record


def make_record(run_id: str = "b-m-tiny-s0-abc", **over) -> dict:
    rec = {
        "run_id": run_id,
        "created": "2026-11-25T00:00:00+00:00",
        "profile": "tiny",
        "method": "m",
        "method_kind": "static",
        "params": {},
        "backbone": "b",
        "suite": "s",
        "seed": 0,
        "metrics": {"t1": 50.0, "t2": 70.0},
        "metric_names": {"t1": "accuracy", "t2": "accuracy"},
        "average": 60.0,
        "storage_bytes": 10,
        "storage_breakdown": {"merged": {"codec": "state_dict", "bytes": 10}},
        "timings": {"merge_s": 0.1, "eval_s": 0.2, "inference_ratio": 1.0},
        "peak_rss_bytes": 1,
        "versions": {},
        "git_commit": "x",
        "checkpoints": {},
        "extra": {},
        "config_hash": "abc",
    }
    rec.update(over)
    return rec


def test_required_keys_are_enforced(tmp_path):
    rec = make_record()
    assert set(REQUIRED_KEYS) <= set(rec)
    del rec["storage_bytes"]
    with pytest.raises(RecordError, match="storage_bytes"):
        write_record(rec, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_non_finite_metric_is_refused():
    with pytest.raises(RecordError, match="finite"):
        validate(make_record(metrics={"t": float("nan")}))


def test_write_and_load_round_trip(tmp_path):
    path = write_record(make_record(), tmp_path)
    assert path.name == "b-m-tiny-s0-abc.json"
    (loaded,) = load_records(tmp_path)
    assert loaded["metrics"] == {"t1": 50.0, "t2": 70.0}


_CHILD = textwrap.dedent(
    """
    import json, os, sys, time
    sys.path.insert(0, {repo!r})
    sys.path.insert(0, {tests!r})
    from test_records import make_record
    from benchmark import records
    stage = sys.argv[1]
    if stage == "dump":
        real_fdopen = os.fdopen
        class HalfWriter:  # killed halfway through writing the record's text
            def __init__(self, f): self.f = f
            def __enter__(self): return self
            def __exit__(self, *a): return self.f.__exit__(*a)
            def write(self, text):
                self.f.write(text[: len(text) // 2]); self.f.flush()
                print("ready", flush=True); time.sleep(60)
        records.os.fdopen = lambda fd, mode: HalfWriter(real_fdopen(fd, mode))
    else:
        real_replace = os.replace
        def stuck_replace(a, b):
            print("ready", flush=True); time.sleep(60)
        records.os.replace = stuck_replace
    records.write_record(make_record(extra={{"blob": "x" * 100000}}), sys.argv[2])
    """
)


@pytest.mark.parametrize("stage", ["dump", "replace"])
def test_killed_writer_leaves_no_record(tmp_path, stage):
    repo = str(Path(__file__).resolve().parent.parent)
    script = _CHILD.format(repo=repo, tests=str(Path(__file__).resolve().parent))
    proc = subprocess.Popen([sys.executable, "-c", script, stage, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "b-m-tiny-s0-abc.json").exists()
    assert any(p.name.endswith(".tmp") for p in tmp_path.iterdir())  # the half file exists, but only as a temp
    assert load_records(tmp_path) == []


def test_stray_or_corrupt_json_is_skipped_with_a_warning_naming_it(tmp_path):
    from benchmark.records import RecordWarning

    write_record(make_record(), tmp_path)
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "foreign.json").write_text('{"hello": 1}')
    (tmp_path / "latin1.json").write_bytes(b"\xff\xfe")
    (tmp_path / "typed.json").write_text(json.dumps(make_record("x", storage_bytes="10 MB")))
    with pytest.warns(RecordWarning) as caught:
        (rec,) = load_records(tmp_path)
    assert rec["run_id"] == "b-m-tiny-s0-abc"
    msgs = sorted(str(w.message) for w in caught)
    assert len(msgs) == 4 and all(m.count("\n") == 0 for m in msgs)
    assert "bad.json: not valid JSON" in msgs[0] and "not a merge-bench record" in msgs[1] and "latin1.json" in msgs[2]
    assert "storage_bytes must be int, got '10 MB'" in msgs[3]
    with pytest.raises(RecordError, match="bad.json"):
        load_records(tmp_path, strict=True)


@pytest.mark.parametrize("key, value, fragment", [
    ("seed", -1, "seed must be >= 0"), ("seed", True, "seed must be int"), ("average", "60", "average must be"),
    ("params", [], "params must be dict"), ("average", float("inf"), "average is not finite"),
    ("val_metrics", {"t": float("nan")}, "val_metrics 't' is not a finite number"),
])
def test_records_are_validated_by_type(key, value, fragment):
    with pytest.raises(RecordError, match=re.escape(fragment)):
        validate(make_record(**{key: value}))


def test_load_frame_matches_the_json_records(tmp_path):
    from benchmark.records import load, write_record

    write_record(make_record("b-m-tiny-s0-a1", params={"lam": 0.3, "mode": {"k": 2}, "flag": True},
                             val_metrics={"t1": 40.0, "t2": 45.0}, val_average=42.5), tmp_path)
    write_record(make_record("b-n-tiny-s1-b2", method="n", seed=1, params={"flag": "code"},
                             metrics={"t1": 10.0, "t2": 20.5}), tmp_path)
    (tmp_path / ".half.tmp.json").write_text("{")  # a temp file is not a record
    frame = load(tmp_path)
    assert len(frame) == 2 * 2 + 2  # run 1: test + val, run 2: test only
    for path in tmp_path.glob("b-*.json"):
        rec = json.loads(path.read_text())
        for split, key in (("test", "metrics"), ("val", "val_metrics")):
            got = frame[(frame.run_id == rec["run_id"]) & (frame.split == split)]
            assert dict(zip(got.task, got.score)) == rec.get(key, {})
            assert set(got.seed) <= {rec["seed"]} and set(got.method) <= {rec["method"]}
        runs = frame[frame.run_id == rec["run_id"]]
        for key in ("created", "average", "storage_bytes", "config_hash", "git_commit", "profile", "suite"):
            assert set(runs[key]) == {rec[key]}, key
        assert all(json.loads(p) == rec["params"] for p in runs.params)
        val = runs.val_average.iloc[0]
        assert val == rec["val_average"] if "val_average" in rec else val != val  # NaN where not scored
    row = frame[frame.run_id == "b-m-tiny-s0-a1"].iloc[0]
    assert row["param.lam"] == 0.3 and row["param.mode.k"] == 2
    # flag is a bool in one run and a string in the other: one JSON-text column, so parquet can store it
    assert set(frame["param.flag"]) == {"true", '"code"'}
    frame.to_parquet(tmp_path / "f.parquet")
    assert load(tmp_path / "nothing").empty


def test_export_cli_writes_the_frame(tmp_path):
    import pandas as pd

    from benchmark.__main__ import main
    from benchmark.records import load, write_record

    write_record(make_record(), tmp_path / "r")
    assert main(["export", "--results-dir", str(tmp_path / "r"), "--output", str(tmp_path / "o.parquet")]) == 0
    assert pd.read_parquet(tmp_path / "o.parquet").equals(load(tmp_path / "r"))
    assert main(["export", "--results-dir", str(tmp_path / "r"), "--output", str(tmp_path / "o.csv")]) == 0
    assert list(pd.read_csv(tmp_path / "o.csv").score) == [50.0, 70.0]
    assert main(["export", "--results-dir", str(tmp_path / "missing")]) == 2


def test_a_record_with_other_scores_never_replaces_the_one_there(tmp_path):
    first = write_record(make_record(), tmp_path)
    write_record(make_record(created="2026-12-01T00:00:00+00:00"), tmp_path)  # same scores: a rerun, replaced
    assert json.loads(first.read_text())["created"] == "2026-12-01T00:00:00+00:00"
    with pytest.raises(RecordError, match="exists with other scores"):
        write_record(make_record(metrics={"t1": 10.0, "t2": 70.0}, average=40.0), tmp_path)
    assert json.loads(first.read_text())["metrics"] == {"t1": 50.0, "t2": 70.0}
    rejected = tmp_path / (first.name + ".rejected")
    assert json.loads(rejected.read_text())["metrics"]["t1"] == 10.0
    assert [r["run_id"] for r in load_records(tmp_path)] == ["b-m-tiny-s0-abc"]  # the rejected one is not a record


def test_a_bad_results_dir_is_refused_before_the_run(tmp_path, capsys):
    from benchmark.__main__ import main

    (tmp_path / "file").write_text("")
    argv = ["run", "--method", "pretrained", "--backbone", "clip_vit_b32", "--profile", "micro", "--no-progress"]
    assert main(argv + ["--results-dir", str(tmp_path / "file" / "sub")]) == 2
    err = capsys.readouterr().err
    assert "is not a writable directory" in err and err.count("\n") == 1


def test_a_record_on_other_suite_data_replaces_the_old_one_and_says_so(tmp_path):
    """Same config, other data of the suite (its generators changed): the old record is of data that is no longer
    made, so the new one replaces it with a warning; on the same data, other scores are still refused."""
    from benchmark.records import RecordWarning

    write_record(make_record(suite_data="a" * 64), tmp_path)
    with pytest.raises(RecordError, match="exists with other scores"):
        write_record(make_record(suite_data="a" * 64, metrics={"t1": 1.0, "t2": 2.0}, average=1.5), tmp_path)
    with pytest.warns(RecordWarning, match=r"replaced b-m-tiny-s0-abc.json: .*other data of suite s "
                                           r"\(aaaaaaaaaaaa, now cccccccccccc\)"):
        write_record(make_record(suite_data="c" * 64, metrics={"t1": 1.0, "t2": 2.0}, average=1.5), tmp_path)
    (rec,) = load_records(tmp_path)
    assert rec["suite_data"] == "c" * 64 and rec["metrics"] == {"t1": 1.0, "t2": 2.0}
    with pytest.warns(RecordWarning, match=r"\(cccccccccccc, now -\)"):  # a run that cannot fingerprint its data
        write_record(make_record(suite_data=None), tmp_path)


@pytest.mark.parametrize("bad", ["abc", "A" * 64, "g" * 64, 7, ["a" * 64]])
def test_suite_data_is_a_sha256_or_null(bad):
    validate(make_record(suite_data=None))
    validate(make_record(suite_data="0123456789abcdef" * 4))
    with pytest.raises(RecordError, match="suite_data must be a sha256"):
        validate(make_record(suite_data=bad))
