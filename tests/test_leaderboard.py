"""The leaderboard: deterministic markdown and plots, marks, storage in MB, seed means, labels, paper figures."""
from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest

from benchmark import leaderboard as lb
from benchmark.__main__ import main
from benchmark.records import frame, validate, write_record

REPO = Path(__file__).resolve().parent.parent
VISION8 = ["sun397", "stanford-cars", "resisc45", "eurosat", "svhn", "gtsrb", "mnist", "dtd"]


def make_record(method="task_arithmetic", *, kind="static", seed=0, params=None, metrics=None, storage=1_000_000,
                profile="paper", backbone="clip_vit_b32", suite="vision8", commit="a" * 40,
                created="2026-11-20T10:00:00+00:00") -> dict:
    params = dict(params or {})
    metrics = dict(metrics or {t: 50.0 + i for i, t in enumerate(VISION8)})
    tag = re.sub(r"[^a-z0-9]", "", repr(sorted(params.items())).lower())[:16] or "d"
    run_id = f"{backbone}-{method}-{profile}-{suite}-s{seed}-{tag}"
    rec = {
        "run_id": run_id,
        "created": created,
        "profile": profile,
        "method": method,
        "method_kind": kind,
        "params": params,
        "backbone": backbone,
        "suite": suite,
        "seed": seed,
        "metrics": metrics,
        "metric_names": {t: "accuracy" for t in metrics},
        "average": sum(metrics.values()) / len(metrics),
        "storage_bytes": storage,
        "storage_breakdown": {"merged": {"codec": "state_dict", "bytes": storage}},
        "timings": {"merge_s": 1.0, "eval_s": 2.0, "inference_ratio": 1.0},
        "peak_rss_bytes": 1,
        "versions": {},
        "git_commit": commit,
        "checkpoints": {},
        "extra": {},
        "config_hash": run_id,
    }
    validate(rec)
    return rec


def no_defaults(method, backbone=None):
    return None


def no_order(suite, profile):
    return None


def row(table, label):
    hits = [r for r in table.rows if r.label == label]
    assert len(hits) == 1, [r.label for r in table.rows]
    return hits[0]


def md_row(md: str, label: str) -> list[str]:
    for line in md.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) > 2 and cells[1] == label:
            return cells
    raise AssertionError(f"no row {label!r} in\n{md}")


def sample_records() -> list[dict]:
    return [
        make_record("pretrained", kind="reference", storage=0, metrics={t: 40.0 for t in VISION8}),
        make_record("individual", kind="reference", storage=8_000_000, metrics={t: 95.0 for t in VISION8}),
        make_record("task_arithmetic", seed=0, storage=2_000_000),
        make_record("task_arithmetic", seed=1, storage=2_000_000, commit="b" * 40,
                    created="2026-11-21T10:00:00+00:00"),
        make_record("emr", kind="task_conditioned", storage=5_000_000, params={"rescale": "model_mean"},
                    metrics={t: 80.0 for t in VISION8}),
        make_record("auto_flexswitch", kind="routed", storage=300_000, params={"loss": "kl", "lam": 0.3},
                    metrics={t: 85.0 for t in VISION8}),
        make_record("pretrained", kind="reference", storage=0, profile="tiny", suite="vision8",
                    metrics={"a": 10.0, "b": 20.0}),
        make_record("weight_average", storage=123_456, profile="tiny", suite="vision8", metrics={"a": 30.0, "b": 40.0}),
    ]


# ----------------------------------------------------------------------------------------------------------------
# Determinism and files


def test_same_records_give_byte_identical_markdown_and_pngs(tmp_path):
    res = tmp_path / "results"
    for r in sample_records():
        write_record(r, res)
    out = tmp_path / "site" / "leaderboard.md"
    assert lb.write_leaderboard(res, out) == out
    first = {p.relative_to(out.parent): p.read_bytes() for p in sorted(out.parent.rglob("*")) if p.is_file()}
    pngs = sorted(p for p in first if p.suffix == ".png")
    assert [p.as_posix() for p in pngs] == ["leaderboard/paper_clip_vit_b32_vision8.png",
                                            "leaderboard/tiny_clip_vit_b32_vision8.png"]
    assert all(first[p].startswith(b"\x89PNG") for p in pngs)
    assert b"Software" not in b"".join(first[p] for p in pngs)  # no tool/version or time metadata

    lb.write_leaderboard(res, out)  # regenerate in place
    again = {p.relative_to(out.parent): p.read_bytes() for p in sorted(out.parent.rglob("*")) if p.is_file()}
    assert again == first

    other = tmp_path / "site2" / "leaderboard.md"  # and elsewhere, from a fresh start
    lb.write_leaderboard(res, other)
    assert other.read_bytes() == out.read_bytes()
    for p in pngs:
        assert (other.parent / p).read_bytes() == first[p]

    md = out.read_text()
    assert md.startswith("# merge-bench leaderboard\n")
    assert "`python -m benchmark leaderboard`" in md
    assert "Newest record: 2026-11-21." in md  # the newest record's date, not the clock
    assert "](leaderboard/paper_clip_vit_b32_vision8.png)" in md
    assert "MB = 10^6 bytes" in md


def test_stale_plots_are_removed(tmp_path):
    res = tmp_path / "results"
    write_record(make_record(), res)
    out = tmp_path / "leaderboard.md"
    (tmp_path / "leaderboard").mkdir()
    (tmp_path / "leaderboard" / "paper_gone_gone.png").write_bytes(b"old")
    lb.write_leaderboard(res, out)
    assert sorted(p.name for p in (tmp_path / "leaderboard").iterdir()) == ["paper_clip_vit_b32_vision8.png"]


def test_an_empty_or_missing_results_dir_is_refused_and_nothing_is_touched(tmp_path):
    from benchmark.__main__ import main

    res, out = tmp_path / "results", tmp_path / "leaderboard.md"
    for r in sample_records():
        write_record(r, res)
    lb.write_leaderboard(res, out)
    before = out.read_bytes(), sorted((tmp_path / "leaderboard").iterdir())
    (tmp_path / "empty").mkdir()
    for bad in ("empty", "missing"):  # e.g. a mistyped --results-dir
        assert main(["leaderboard", "--results-dir", str(tmp_path / bad), "--output", str(out)]) == 2
    assert (out.read_bytes(), sorted((tmp_path / "leaderboard").iterdir())) == before


def test_cli_leaderboard(tmp_path, capsys):
    res = tmp_path / "res"
    for r in sample_records():
        write_record(r, res)
    out = tmp_path / "board.md"
    assert main(["leaderboard", "--results-dir", str(res), "--output", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"leaderboard: {out}"
    assert "## paper · clip_vit_b32 · vision8" in out.read_text()
    assert (tmp_path / "board" / "paper_clip_vit_b32_vision8.png").is_file()


def test_unknown_backbone_suite_and_kind_do_not_crash(tmp_path):
    recs = [
        make_record("future_merge", kind="hyper", backbone="future_net", suite="future_suite",
                    params={"beta": [1, 2], "gamma": None}, metrics={"zeta": 1.5, "alpha": 2.5}),
        make_record("future_merge", kind="hyper", backbone="future_net", suite="future_suite", profile="tiny",
                    params={"beta": [1, 2], "gamma": None}, metrics={"zeta": 1.5, "alpha": 2.5}, storage=0),
    ]
    for r in recs:
        write_record(r, tmp_path / "res")
    md = lb.write_leaderboard(tmp_path / "res", tmp_path / "lb.md").read_text()
    assert "future_merge (beta=1,2, gamma=none)" in md  # unregistered: every parameter shown
    assert "The papers report no figures for this backbone and suite." in md
    (t_paper, t_tiny) = lb.build_tables(recs, defaults=no_defaults, task_order=no_order)
    assert t_paper.tasks == ["zeta", "alpha"] and t_paper.rows[0].type == "hyper"


# ----------------------------------------------------------------------------------------------------------------
# Table contents


def _rows(*specs):
    """Hand-made rows: (label, type, origin, [scores...], avg)."""
    out = []
    for label, typ, origin, scores, avg in specs:
        out.append(lb.Row(type=typ, label=label, origin=origin, storage_mb=1.0,
                          scores=dict(zip(["t1", "t2"], scores)), average=avg))
    return out


def test_bold_and_underline_placement_on_a_hand_made_table():
    rows = _rows(
        ("pretrained", "reference", "ours", [99.0, 99.0], 99.0),  # reference rows are never ranked
        ("a", "static", "ours", [70.0, 60.004], 65.0),
        ("b", "static", "ours", [80.0, 59.996], 70.0),  # ties at 2 decimals share the mark
        ("paper", "static", "paper", [100.0, 100.0], 100.0),  # nor are paper figures
        ("c", "dynamic", "ours", [75.0, 50.0], 62.5),
        ("d", "dynamic", "ours", [10.0, 55.0], None),
    )
    marks = lb.mark_best(rows, ["t1", "t2", "AVG"])
    assert {k: v for k, v in marks.items() if k[1] == "t1"} == {(2, "t1"): "best", (4, "t1"): "second"}
    assert {k: v for k, v in marks.items() if k[1] == "t2"} == {(1, "t2"): "best", (2, "t2"): "best",
                                                               (5, "t2"): "second"}
    assert {k: v for k, v in marks.items() if k[1] == "AVG"} == {(2, "AVG"): "best", (1, "AVG"): "second"}

    table = lb.Table("tiny", "bb", "s", ["t1", "t2"], {"t1": "accuracy", "t2": "accuracy"}, rows, 5, ["x"],
                     "2026-01-01T00:00:00+00:00")
    md = lb.render_table(table)
    assert md_row(md, "b")[3:] == ["**80.00**", "**60.00**", "**70.00**"]
    assert md_row(md, "c")[3:] == ["<u>75.00</u>", "50.00", "62.50"]
    assert md_row(md, "a")[3:] == ["70.00", "**60.00**", "<u>65.00</u>"]
    assert md_row(md, "pretrained")[3:] == ["99.00", "99.00", "99.00"]
    assert md_row(md, "paper")[3:] == ["*100.00*", "*100.00*", "*100.00*"]
    assert md_row(md, "d")[5] == "–"


def test_storage_is_bytes_over_1e6():
    recs = [make_record("x", storage=123_456_789), make_record("y", storage=0), make_record("z", storage=4_321)]
    (t,) = lb.build_tables(recs, paper=[], defaults=no_defaults, task_order=no_order)
    assert row(t, "x").storage_mb == pytest.approx(123.456789)
    assert lb.format_storage(row(t, "x").storage_mb) == "123.46"
    assert lb.format_storage(row(t, "y").storage_mb) == "0.00"
    assert lb.format_storage(row(t, "z").storage_mb) == "0.00432"
    assert lb.format_storage(None) == "–"
    md = lb.render_table(t)
    assert "| Storage (MB) |" in md and "MB = 10^6 bytes" in md
    assert md_row(md, "x")[2] == "123.46"


def test_seeds_are_averaged_never_the_best_picked():
    recs = [make_record("m", seed=s, params={"lam": 0.3}, metrics={"t": v}, storage=b)
            for s, v, b in [(0, 60.0, 1_000_000), (1, 70.0, 1_000_000), (2, 95.0, 1_000_000)]]
    recs.append(make_record("m", seed=0, params={"lam": 0.5}, metrics={"t": 10.0}))  # another configuration
    (t,) = lb.build_tables(recs, paper=[], defaults=lambda m, b: {"lam": 0.3}, task_order=no_order)
    r = row(t, "m · 3 seeds")
    assert r.scores["t"] == pytest.approx(75.0) and r.average == pytest.approx(75.0)
    assert r.n_seeds == 3 and r.n_runs == 3
    assert row(t, "m (lam=0.5)").scores["t"] == 10.0
    assert md_row(lb.render_table(t), "m · 3 seeds")[3] == "**75.00** ± 10.41"  # s.e. over the 3 seeds


def test_grid_rows_are_picked_by_val_never_by_test():
    def rec(lam, val, test, seed=0):
        r = make_record("m", seed=seed, params={"lam": lam}, metrics={"t": test})
        r["val_metrics"], r["val_average"] = {"t": val}, val
        return r

    # lam=0.5 has the best test score but the worst val score: it must not be shown
    recs = [rec(0.1, 60.0, 50.0), rec(0.2, 70.0, 55.0), rec(0.2, 72.0, 57.0, seed=1), rec(0.5, 40.0, 90.0)]
    recs.append(make_record("m", params={"lam": 0.9}, metrics={"t": 20.0}))  # no val scores: always shown
    recs.append(rec(0.3, 10.0, 10.0) | {"method": "other", "run_id": "o"})  # a single setting: no selection
    (t,) = lb.build_tables(recs, paper=[], defaults=lambda m, b: {"lam": 0.3}, task_order=no_order)
    labels = [r.label for r in t.rows]
    assert "m (lam=0.2) · 2 seeds · best of 3 by val" in labels
    assert not any("lam=0.1" in x or "lam=0.5" in x for x in labels)
    assert row(t, "m (lam=0.2) · 2 seeds · best of 3 by val").scores["t"] == pytest.approx(56.0)
    assert "m (lam=0.9)" in labels and "other" in labels


def test_labels_show_non_default_params():
    defaults = {"lam": 0.3, "topk": 20.0, "loss": "kl", "flag": True, "n": None}
    assert lb.method_label("ties", {"lam": 0.3, "topk": 20.0, "loss": "kl", "flag": True, "n": None},
                           defaults) == "ties"
    assert lb.method_label("ties", {"topk": 10.0, "lam": 0.3000001, "flag": False, "n": 5, "loss": "kl"},
                           defaults) == "ties (topk=10, flag=false, n=5)"  # declaration order; rounding is no difference
    assert lb.method_label("m", {"b": 1, "a": "x"}, None) == "m (a=x, b=1)"  # unregistered: all, sorted
    # a record from before the method declared a parameter is not at today's default: it says so
    assert lb.method_label("ties", {"lam": 0.3, "topk": 20.0, "loss": "kl"}, defaults) == "ties (predates flag, n)"
    assert lb.method_label("m", {"extra": 2}, {"lam": 0.3}) == "m (extra=2; predates lam)"


def test_labels_use_the_registry_defaults():
    from benchmark.registry import METHODS

    defaults = {p.name: p.default for p in METHODS.get("emr").params}
    assert lb.registry_defaults("emr") == defaults
    assert lb.registry_defaults("no_such_method") is None
    recs = [make_record("emr", kind="task_conditioned", params={**defaults, "rescale": "model_mean"}),
            make_record("emr", kind="task_conditioned", params=defaults)]
    (t,) = lb.build_tables(recs, paper=[], task_order=no_order)
    assert sorted(r.label for r in t.rows) == ["emr", "emr (rescale=model_mean)"]


# ----------------------------------------------------------------------------------------------------------------
# Paper figures


def test_paper_figure_is_placed_under_our_row():
    recs = sample_records()
    tables = lb.build_tables(recs, defaults=no_defaults, task_order=no_order)
    paper_t, tiny_t = tables
    assert (paper_t.profile, tiny_t.profile) == ("paper", "tiny")
    labels = [r.label for r in paper_t.rows]
    i = labels.index("task_arithmetic · 2 seeds")
    assert labels[i + 1] == "↳ paper [1]: Task-Arithmetic"
    pr = paper_t.rows[i + 1]
    assert pr.average == pytest.approx(70.23)  # auto-flexswitch Table III, Task-Arithmetic AVG
    assert pr.scores["stanford-cars"] == pytest.approx(62.06) and pr.scores["sun397"] == pytest.approx(63.49)
    assert paper_t.sources[0] == "auto-flexswitch Table III"

    md = lb.render_markdown(tables)
    cells = md_row(md, "↳ paper [1]: Task-Arithmetic")
    assert cells[-1] == "*70.23*" and cells[2] == "–"
    # every paper row of the table appears: methods we did not run are listed as paper-only
    for name in ("DF-Merge", "RegMean", "MoW-Merging", "Traditional MTL", "Auto-FlexSwitch+CKA (λ = 3)"):
        assert any(r.label.startswith(f"{name} (paper only [") for r in paper_t.rows), name
    assert "T-Switch (paper only [2])" in labels and paper_t.sources[1] == "t-switch Table 2 (alpha=0.5)"
    # Auto-FlexSwitch with loss=kl, λ=0.3 meets its own row
    j = labels.index("auto_flexswitch (lam=0.3, loss=kl)")
    assert labels[j + 1] == "↳ paper [1]: Auto-FlexSwitch+KL (λ = 0.3)"
    assert paper_t.rows[j + 1].storage_mb == pytest.approx(41.51)
    # groups in the papers' order: reference, static, dynamic
    types = [r.type for r in paper_t.rows]
    assert types == sorted(types, key=lambda t: lb.TYPE_RANK[t])
    assert labels[:3] == ["pretrained", "↳ paper [1]: Pre-trained", "Traditional MTL (paper only [1])"]
    # columns in the suite's (paper's) order, not the records' alphabetical one
    assert paper_t.tasks == VISION8
    # the tiny table shows no paper figures
    assert all(r.origin == "ours" for r in tiny_t.rows) and not tiny_t.sources
    assert "papers' figures do not apply" in md


def test_paper_rows_for_both_auto_switch_papers_and_glue_scaled():
    glue = ["cola", "sst2", "mrpc", "qqp", "mnli", "qnli", "rte"]
    recs = [make_record("auto_switch", kind="routed", backbone="roberta_base", suite="glue7",
                        metrics={t: 50.0 for t in glue}),
            make_record("auto_switch", kind="routed", backbone="clip_vit_b32", suite="vision8")]
    clip, roberta = lb.build_tables(recs, defaults=no_defaults, task_order=no_order)
    assert [r.label for r in clip.rows if r.origin == "paper"] == [
        "↳ paper [1]: Auto-Switch", "↳ paper [2]: Auto-Switch (CVPR)"]
    p = [r for r in roberta.rows if r.origin == "paper"]
    assert [r.label for r in p] == ["↳ paper [1]: Auto-Switch"]
    assert p[0].scores["cola"] == pytest.approx(53.39) and p[0].average == pytest.approx(83.03)  # 0.5339 -> %
    assert roberta.tasks == glue  # the paper's order: CoLA, SST-2, MRPC, QQP, MNLI, QNLI, RTE


def test_flexswitch_lambda_preference():
    paper = lb.load_paper_results()
    table = [p for p in paper if p.backbone == "clip_vit_b32" and p.suite == "vision8"]
    names = lambda params: [p.method for p in lb.match_paper_rows("auto_flexswitch", params, table)]  # noqa: E731
    assert names({"loss": "cka", "lam": 3.0}) == ["Auto-FlexSwitch+CKA (λ = 3)"]
    assert names({"loss": "mse", "lam": 1.0}) == ["Auto-FlexSwitch+MSE (λ = 0.05)"]  # same loss, paper's λ
    assert names({}) == []
    assert lb.match_paper_rows("flexswitch", {"loss": "kl", "lam": 0.3}, table) == []  # no FlexSwitch rows


def test_name_mappings_are_explicit_and_cover_the_csv():
    paper = lb.load_paper_results()
    # task names: ours -> the CSV's
    assert [lb.paper_task_name(t) for t in VISION8] == ["SUN397", "Cars", "RESISC45", "EuroSAT", "SVHN", "GTSRB",
                                                          "MNIST", "DTD"]
    assert [lb.paper_task_name(t) for t in ["cola", "sst2", "SST-2", "stsb", "real_world", "real-world"]] == [
        "CoLA", "SST-2", "SST-2", "STS-B", "Real World", "Real World"]
    csv_tasks = {t for p in paper for t in p.values} - {"AVG"}
    assert csv_tasks <= set(lb.PAPER_TASKS.values())
    # method names: every fixed name exists in the CSV, and every CSV method maps back to one of ours
    csv_methods = {p.method.lower() for p in paper}
    for ours, names in lb.paper_methods().items():
        for n in names:
            if "{loss}" not in n and ours != "traditional_mtl":
                assert n.lower() in csv_methods, (ours, n)
    assert {p.method: lb.paper_key(p.method) for p in paper if lb.paper_key(p.method) is None} == {}
    assert lb.paper_key("EMR-merging") == "emr" and lb.paper_key("Twin-merging") == "twin"
    assert lb.paper_key("Auto-FlexSwitch+MSE (λ = 0.9)") == "auto_flexswitch"
    assert lb.paper_key("Auto-Switch (CVPR)") == "auto_switch"
    # every registered method declares its paper rows at registration, and the leaderboard reads them from there
    from benchmark.registry import METHODS

    infos = lb.method_infos()
    for p in METHODS.plugins():
        if not p.obj.__module__.startswith("methods."):  # test plugins registered by other test modules
            continue
        assert p.paper_rows and infos[p.name].paper_rows == p.paper_rows and infos[p.name].order == p.order, p.name
        assert infos[p.name].type == ("reference" if p.obj.reference else lb.row_type(p.obj.kind))
    # display order: the papers' (reference block, static methods, dynamic methods)
    assert list(infos)[:4] == ["pretrained", "mtl", "traditional_mtl", "individual"]
    assert list(infos).index("fisher") < list(infos).index("df_merge") < list(infos).index("regmean")
    assert list(infos).index("twin") < list(infos).index("mow") < list(infos).index("t_switch")


def test_shipped_csv_is_the_reference():
    shipped = REPO / "benchmark" / "data" / "paper_results.csv"
    with open(shipped, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 975 and set(rows[0]) == {"backbone", "suite", "method", "storage_mb", "task", "value",
                                                  "metric", "source"}
    ref = REPO.parent / "shared" / "reference" / "paper_results.csv"
    if ref.exists():
        assert ref.read_bytes() == shipped.read_bytes()


# ------------------------------------------------------------------------------------------------ seeds, s.e., marks


def seeded_records() -> list[dict]:
    """Three seeds x four tasks: "best" on top; "close" within the seed noise of it (differences of both signs);
    "far" 8 points below on every pair; "one" with one seed only (no s.e., no test)."""
    tasks = ["t1", "t2", "t3", "t4"]
    base = {(s, t): 60.0 + 3 * s + 2 * i for s in range(3) for i, t in enumerate(tasks)}
    jitter = [0.9, -1.1, 0.4, -0.3, 1.2, -0.8, -0.6, 0.7, 0.2, -1.0, 0.5, -0.4]
    rows = {"best": lambda s, t, k: base[s, t] + 0.5,
            "close": lambda s, t, k: base[s, t] + 0.5 + jitter[k],
            "far": lambda s, t, k: base[s, t] - 8.0 + 0.05 * (k % 3)}
    recs = []
    for m, f in rows.items():
        for s in range(3):
            metrics = {t: f(s, t, 4 * s + i) for i, t in enumerate(tasks)}
            recs.append(make_record(m, seed=s, metrics=metrics, profile="tiny"))
    recs.append(make_record("one", seed=0, metrics={t: 99.0 for t in tasks}, profile="tiny"))
    recs.append(make_record("pretrained", kind="reference", seed=0, metrics={t: 10.0 for t in tasks}, profile="tiny"))
    return recs


def test_several_seeds_show_mean_and_standard_error_over_seeds():
    import statistics

    recs = seeded_records()
    (t,) = lb.build_tables(recs, paper=[], defaults=no_defaults, task_order=no_order)
    far = row(t, "far · 3 seeds")
    per_seed = [[r["metrics"]["t2"] for r in recs if r["method"] == "far" and r["seed"] == s][0] for s in range(3)]
    assert far.se_scores["t2"] == pytest.approx(statistics.stdev(per_seed) / 3 ** 0.5)
    avgs = [r["average"] for r in recs if r["method"] == "far"]
    assert far.average == pytest.approx(statistics.mean(avgs))
    assert far.se_average == pytest.approx(statistics.stdev(avgs) / 3 ** 0.5)
    one = row(t, "one")
    assert one.se_average is None and one.se_scores == {}  # one seed: no standard error
    md = lb.render_table(t)
    cells = md_row(md, "far · 3 seeds")
    assert cells[4] == f"{far.scores['t2']:.2f} ± {far.se_scores['t2']:.2f}"
    assert md_row(md, "one")[-1] == "**99.00**"  # a single seed shows no ±
    assert "± is the standard error over seeds" in md


def test_methods_not_distinguishable_from_the_best_are_marked_by_a_paired_test():
    from scipy.stats import ttest_rel

    recs = [r for r in seeded_records() if r["method"] != "one"]
    (t,) = lb.build_tables(recs, paper=[], defaults=no_defaults, task_order=no_order)
    best, close, far = (row(t, f"{m} · 3 seeds") for m in ("best", "close", "far"))
    assert best.best_avg and not best.tied_best
    assert close.tied_best and not far.tied_best
    pairs = sorted(best.seed_scores)
    assert len(pairs) == 12  # 3 seeds x 4 tasks
    want = ttest_rel([close.seed_scores[k] for k in pairs], [best.seed_scores[k] for k in pairs]).pvalue
    assert close.p_vs_best == pytest.approx(want) and want >= 0.05
    assert ttest_rel([far.seed_scores[k] for k in pairs], [best.seed_scores[k] for k in pairs]).pvalue < 0.05
    md = lb.render_table(t)
    assert md_row(md, "close · 3 seeds")[-1].endswith(" †")
    assert "†" not in md_row(md, "far · 3 seeds")[-1] and "†" not in md_row(md, "best · 3 seeds")[-1]
    assert not row(t, "pretrained").tied_best  # reference rows are not ranked


def test_single_seed_tables_get_no_marks_and_keep_their_markdown():
    recs = [r for r in seeded_records() if r["seed"] == 0]
    (t,) = lb.build_tables(recs, paper=[], defaults=no_defaults, task_order=no_order)
    assert not any(r.tied_best or r.best_avg or r.se_average is not None for r in t.rows)
    md = lb.render_table(t)
    assert "±" not in md and "†" not in md


def test_pareto_plots_get_error_bars_with_several_seeds():
    recs = seeded_records()
    (t,) = lb.build_tables(recs, paper=[], defaults=no_defaults, task_order=no_order)
    with_bars = lb.render_plot(t)
    assert with_bars == lb.render_plot(t)  # deterministic
    for r in t.rows:
        r.se_average = None
    assert lb.render_plot(t) != with_bars


def test_the_tables_are_built_from_the_records_frame(tmp_path):
    from benchmark.records import load, load_records

    for r in seeded_records():
        write_record(r, tmp_path)
    recs = load_records(tmp_path)  # as written (floats rounded to 6 decimals)
    frame = load(tmp_path)
    from_frame = lb.build_tables(frame, paper=[], defaults=no_defaults, task_order=no_order)
    from_records = lb.build_tables(recs, paper=[], defaults=no_defaults, task_order=no_order)
    assert lb.render_markdown(from_frame) == lb.render_markdown(from_records)


def test_labels_are_relative_to_the_backbones_kind_defaults():
    # DETR is a detection backbone: FlexSwitch's default there is MSE with lambda 0.5 (auto-flexswitch Table VII)
    from benchmark.registry import METHODS

    plain = METHODS.get("flexswitch").defaults()
    assert lb.registry_defaults("flexswitch", "detr_r50") == {**plain, "loss": "mse", "lam": 0.5}
    assert lb.registry_defaults("flexswitch", "clip_vit_b32") == plain
    recs = [make_record("flexswitch", kind="task_conditioned", profile="tiny", backbone=b, suite=s,
                        params={**plain, "loss": loss, "lam": lam}, metrics={"x": 1.0})
            for b, s in (("detr_r50", "rf100_7"), ("clip_vit_b32", "vision8"))
            for loss, lam in (("mse", 0.5), ("kl", 0.3), ("mse", 0.3))]
    for i, r in enumerate(recs):
        r["run_id"] += f"-{i}"
    clip, detr = lb.build_tables(recs, paper=[], task_order=no_order)
    assert [r.label for r in detr.rows] == ["flexswitch", "flexswitch (lam=0.3)", "flexswitch (loss=kl, lam=0.3)"]
    assert [r.label for r in clip.rows] == ["flexswitch", "flexswitch (loss=mse)",
                                            "flexswitch (loss=mse, lam=0.5)"]


def test_the_committed_leaderboard_is_what_the_committed_records_give(tmp_path):
    """leaderboard.md is generated: regenerating it from results/ (through the records' frame) changes nothing, and
    no committed record passes as a default it did not run at."""
    import json
    import os
    import shutil

    from benchmark.records import load

    out = tmp_path / "leaderboard.md"
    lb.write_leaderboard(REPO / "results", out)
    rel = Path(os.path.relpath(REPO / "results", tmp_path)).as_posix()  # how the file names the results dir
    got = out.read_text().replace(f"`{rel}/`", "`results/`")
    assert got == (REPO / "leaderboard.md").read_text()
    for png in (REPO / "leaderboard").glob("*.png"):
        assert (tmp_path / "leaderboard" / png.name).read_bytes() == png.read_bytes()
    shutil.rmtree(tmp_path / "leaderboard")
    # the frame is the JSON records, row for row
    frame = load(REPO / "results")
    recs = [json.loads(p.read_text()) for p in sorted((REPO / "results").glob("*.json"))]
    assert len(frame) == sum(len(r["metrics"]) + len(r.get("val_metrics", {})) for r in recs)
    test = frame[frame.split == "test"]
    assert {(r["run_id"], t): v for r in recs for t, v in r["metrics"].items()} == \
        dict(zip(zip(test.run_id, test.task), test.score))


def test_runs_on_another_build_of_the_checkpoints_are_never_compared():
    """Per seed, a table keeps the checkpoint build most runs share and names the others; seeds build their own."""
    a, b = {"pretrained": "1" * 64}, {"pretrained": "2" * 64}
    recs = []
    for method, ckpt, seed, v in [("m1", a, 0, 60.0), ("m2", a, 0, 61.0), ("m3", b, 0, 99.0),
                                  ("m1", b, 1, 62.0), ("m2", b, 1, 65.0)]:
        r = make_record(method, seed=seed, metrics={"t": v}, created=f"2026-11-2{seed}T10:00:00+00:00")
        r["checkpoints"] = ckpt
        recs.append(r)
    (t,) = lb.build_tables(recs, paper=[], defaults=no_defaults, task_order=no_order)
    labels = {r.label for r in t.rows if r.origin == "ours"}
    assert not any(lab.startswith("m3") for lab in labels)  # the 99 from another build never enters the table
    assert row(t, "m1 · 2 seeds").scores["t"] == pytest.approx(61.0)  # seed 1's own build counts
    assert any("Not compared: 1 run" in n and recs[2]["run_id"] in n for n in t.notes)
    # a tie goes to the build with the newest run
    tie = [make_record("m1", metrics={"t": 1.0}, created="2026-11-20T10:00:00+00:00"),
           make_record("m2", metrics={"t": 2.0}, created="2026-11-21T10:00:00+00:00")]
    tie[0]["checkpoints"], tie[1]["checkpoints"] = a, b
    _, left_out = lb.one_build_per_seed(frame(tie))
    assert left_out == [tie[0]["run_id"]]


def test_the_suite_cards_section_shows_every_target_and_marks_the_missed(tmp_path):
    """Each card gets its targets (benchmark.suite_card.check) beside the measured values; a missed one is marked."""
    import json
    import shutil

    from benchmark.errors import UserError
    from benchmark.suite_card import check

    card = json.loads((REPO / "tasks" / "cards" / "vision8-clip_vit_b32-tiny-s0.json").read_text())
    cards = tmp_path / "cards"
    cards.mkdir()
    (cards / "a.json").write_text(json.dumps(card))
    res = tmp_path / "res"
    shutil.copytree(REPO / "results", res, ignore=lambda d, names: [n for n in names if not n.startswith("clip_vit_b32-")])
    md = lb.write_leaderboard(res, tmp_path / "lb.md", cards).read_text()
    section = md[md.index("## Suite cards"):]
    for name, value, bound, met in check(card):
        assert f"| {name} | {value:.2f}{'' if met else ' ✗'} | ≥ {bound:g} |" in section
    assert "| per task | " + " | ".join(f"{v:.1f}" for v in card["identifiability"]["per_task"].values()) in section
    # the B/32 card misses the pooled entropy premise >= 0.6 and meets Individual - Pretrained >= 25: both forms
    assert "Spearman(entropy, loss), pooled | 0.55 ✗ | ≥ 0.6 |" in section
    assert "Individual - Pretrained | 31.88 | ≥ 25 |" in section
    (cards / "b.json").write_text("{}")
    with pytest.raises(UserError, match="b.json' is not a card"):
        lb.write_leaderboard(res, tmp_path / "lb2.md", cards)
    assert not (tmp_path / "lb2.md").exists()
    # a card that lost one value a target reads is refused as well, before anything is written
    damaged = json.loads(json.dumps(card))
    del damaged["merge_signal"]["individual_minus_ta"]
    (cards / "b.json").write_text(json.dumps(damaged))
    with pytest.raises(UserError, match="b.json' is not a card .*individual_minus_ta"):
        lb.write_leaderboard(res, tmp_path / "lb2.md", cards)
    assert not (tmp_path / "lb2.md").exists()


def test_a_table_shows_the_runs_on_the_newest_suite_data_only():
    """Runs on data the suite's generators made before (another ``suite_data``) never mix into its table, whatever
    their checkpoints; they are named in a note. Records from before ``suite_data`` existed count as data "" ."""
    old, new = "1" * 64, "2" * 64
    recs = []
    for method, data, v, day in [("m1", old, 60.0, 20), ("m2", old, 61.0, 21), ("m3", old, 99.0, 21),
                                 ("m1", new, 40.0, 22), ("m2", new, 45.0, 23)]:
        r = make_record(method, metrics={"t": v}, created=f"2026-11-{day}T10:00:00+00:00")
        r["suite_data"] = data
        r["run_id"] += data[0]
        recs.append(r)
    (t,) = lb.build_tables(recs, paper=[], defaults=no_defaults, task_order=no_order)
    assert {r.label: r.scores["t"] for r in t.rows if r.origin == "ours"} == {"m1": 40.0, "m2": 45.0}
    (note,) = [n for n in t.notes if n.startswith("Not shown")]
    assert note.startswith("Not shown: 3 runs on other data") and all(r["run_id"] in note for r in recs[:3])
    assert t.other_data == sorted(r["run_id"] for r in recs[:3])
    # the newest run decides, whatever most runs are on; a record without suite_data is data of its own
    legacy = make_record("m4", metrics={"t": 70.0}, created="2026-11-24T10:00:00+00:00")
    kept, left = lb.on_current_data(frame(recs + [legacy]))
    assert set(kept.run_id) == {legacy["run_id"]} and len(left) == 5
