"""Sweeps: expansion and validation of sweep files, resume, failures, the local executors, a killed sweep, the Ray
executor on a local instance (a killed worker retried, a resumed sweep), the GPU-runner script and its workflow.

Every run here uses the instant plugins of ``_fake_plugins`` (registered on import; sweep files load them with
``plugins: [_fake_plugins]``, and ``PYTHONPATH`` carries this folder to subprocesses and Ray workers)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import _fake_plugins  # noqa: F401  (registers fake_sweep_backbone(2), fake_sweep_suite(_b), fake_sweep_merge)
from benchmark.__main__ import main
from benchmark.errors import UserError
from benchmark.executors import ProcessPoolExecutor, SequentialExecutor
from benchmark.records import config_hash, load_records
from benchmark.registry import BACKBONES, METHODS
from benchmark.sweep import execute, expand, finished, load_sweeps

REPO = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
B1, B2, M = "fake_sweep_backbone", "fake_sweep_backbone2", "fake_sweep_merge"


def write(path: Path, doc: dict) -> Path:
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def sweep_doc(**over) -> dict:
    doc = {"plugins": ["_fake_plugins"], "seeds": [0], "backbones": [B1], "methods": {M: {"lam": [0.2, 1.0]}}}
    doc.update(over)
    return doc


def env_with_tests() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(TESTS), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def records(d: Path) -> list[dict]:
    return load_records(d) if d.exists() else []


def summary_counts(text: str) -> tuple[int, int, int]:
    line = next(ln for ln in text.splitlines() if ln.startswith("sweep ("))
    part = line.split(": ", 2)[2]
    nums = [int(w) for w in part.replace(",", " ").split() if w.isdigit()]
    return nums[0], nums[1], nums[2]  # done, skipped, failed


# ------------------------------------------------------------------------------------------------ expansion


def test_expansion_is_the_cartesian_product_and_hashes_match_the_records(tmp_path):
    doc = sweep_doc(backbones=[B1, B2], seeds=[0, 1],
                    methods={M: {"lam": [0.2, 1.0], "mode": ["sum", "mean"]}, "pretrained": None})
    sw = expand(doc, source="s.yaml", results_dir=tmp_path)
    assert len(sw.runs) == 2 * (4 + 1) * 2
    r = sw.runs[0]
    assert (r.spec.backbone, r.spec.method, r.spec.overrides, r.spec.seed) == (B1, M, {"lam": 0.2, "mode": "sum"}, 0)
    assert r.params == {"lam": 0.2, "mode": "sum", "sleep": 0.0, "fail": False, "crash_marker": ""}
    assert r.config_hash == config_hash(M, r.params, B1, "fake_sweep_suite", "tiny", 0)
    # the record the runner writes carries the same hash (the resume key)
    summary = execute(expand(sweep_doc(), source="s.yaml", results_dir=tmp_path), SequentialExecutor(), tmp_path,
                      progress=False)
    assert {o.run.config_hash for o in summary.done} == {rec["config_hash"] for rec in records(tmp_path)}


def test_grid_lists_are_unions_suites_all_and_groups_override(tmp_path):
    doc = {
        "plugins": ["_fake_plugins"],
        "seeds": 0,
        "backbones": B1,
        "suites": "all",
        "groups": [
            {"methods": {M: [{"mode": "sum", "lam": [0.1, 0.2]}, {"mode": "mean", "lam": 0.5}]}},
            {"backbones": [B2], "suites": None, "seeds": [3, 4], "methods": [M, {"pretrained": {}}]},
        ],
    }
    sw = expand(doc, source="s.yaml", results_dir=tmp_path)
    first = [r for r in sw.runs if r.spec.backbone == B1]
    assert len(first) == 3 * 2  # 3 grid points x both suites of B1
    assert {r.spec.suite for r in first} == {"fake_sweep_suite", "fake_sweep_suite_b"}
    second = [r for r in sw.runs if r.spec.backbone == B2]
    assert sorted((r.spec.method, r.spec.seed) for r in second) == [(M, 3), (M, 4), ("pretrained", 3),
                                                                      ("pretrained", 4)]


def test_all_expands_to_every_registered_name_and_duplicates_run_once(tmp_path):
    sw = expand({"backbones": "all", "methods": "all"}, source="s.yaml", results_dir=tmp_path)
    pairs = {(r.spec.method, r.spec.backbone) for r in sw.runs}
    assert pairs == {(m, b) for m in METHODS.names() for b in BACKBONES.names()}
    # the default value written out and left out are one run
    dup = expand(sweep_doc(methods=[{M: {"lam": 0.5}}, M]), source="s.yaml", results_dir=tmp_path)
    assert len(dup.runs) == 1


@pytest.mark.parametrize(
    "over, fragment",
    [
        ({"backbone": [B1]}, "s.yaml: unknown key 'backbone'; valid: description, plugins, groups, profile"),
        ({"profile": "huge"}, "s.yaml: profile: unknown profile 'huge'; valid: tiny, paper, micro"),
        ({"seeds": ["a"]}, "s.yaml: seeds: expects an integer or a non-empty list of integers; got ['a']"),
        ({"methods": {M: {"lamda": 0.1}}}, "s.yaml: methods.fake_sweep_merge: method 'fake_sweep_merge' has no "
                                           "parameter 'lamda'; valid: crash_marker, fail, lam, mode, sleep"),
        ({"methods": {M: {"lam": [0.5, 7.0]}}}, "parameter 'lam' must lie in [0.0, 2.0]; got 7.0"),
        ({"methods": {M: {"mode": "max"}}}, "parameter 'mode' must be one of sum, mean; got 'max'"),
        ({"methods": {M: {"lam": []}}}, "s.yaml: methods.fake_sweep_merge.lam: an empty list of values"),
        ({"methods": {M: {"lam": {"a": 1}}}}, "values are numbers, strings, booleans or null"),
        ({"select_by": "test"}, "select_by: must be val (or absent); got 'test'; selecting by the test split"),
        ({"suites": ["fake_sweep_suite_b"], "backbones": [B2]},
         "backbone 'fake_sweep_backbone2' has no suite 'fake_sweep_suite_b'; valid: fake_sweep_suite"),
        ({"groups": [{"seeds": [1]}], "methods": None}, "s.yaml: groups[0]: no methods"),
        ({"groups": [{"method": M}]}, "s.yaml: groups[0]: unknown key 'method'; valid: profile, seeds"),
        ({"methods": {"all": {"lam": 1}}}, "\"all\" takes no grid"),
        ({"plugins": ["no_such_plugin_module"]}, "cannot import plugin module 'no_such_plugin_module'"),
        ({"methods": {"nope_method": None}, "backbones": [B1, "nope_backbone"]},
         "s.yaml: not registered: methods nope_method (registered: "),
    ],
)
def test_invalid_sweep_files_fail_before_any_run_with_one_line(tmp_path, over, fragment):
    doc = {k: v for k, v in sweep_doc(**over).items() if v is not None}
    with pytest.raises(UserError) as e:
        expand(doc, source="s.yaml", results_dir=tmp_path / "results")
    msg = str(e.value)
    assert fragment in msg and "\n" not in msg
    assert not (tmp_path / "results").exists()


def test_unknown_names_are_skipped_on_request_and_named(tmp_path):
    doc = sweep_doc(methods={M: None, "not_yet_a_method": {"alpha": 0.5}}, backbones=[B1, "not_yet_a_backbone"])
    with pytest.raises(UserError, match=r"^s\.yaml: not registered: methods not_yet_a_method \(registered: .*\); "
                                        r"backbones not_yet_a_backbone \(registered: .*\); pass --skip-unknown"):
        expand(doc, source="s.yaml", results_dir=tmp_path)
    sw = expand(doc, source="s.yaml", results_dir=tmp_path, skip_unknown=True)
    assert [(r.spec.method, r.spec.backbone) for r in sw.runs] == [(M, B1)]
    assert sw.unknown == ["backbone 'not_yet_a_backbone' (s.yaml)", "method 'not_yet_a_method' (s.yaml)"]
    # a bad parameter of a registered method is still an error, even with no backbone to run it on
    bad = sweep_doc(methods={M: {"lamda": 1}}, backbones=["not_yet_a_backbone"])
    with pytest.raises(UserError, match="has no parameter 'lamda'"):
        expand(bad, source="s.yaml", results_dir=tmp_path, skip_unknown=True)


def test_cli_invalid_sweep_is_one_line_exit_2_and_runs_nothing(tmp_path, capsys):
    f = write(tmp_path / "bad.yaml", sweep_doc(methods={M: {"lam": 9}}))
    assert main(["sweep", str(f), "--results-dir", str(tmp_path / "r"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {f}: methods.fake_sweep_merge: ") and err.count("\n") == 1
    assert not (tmp_path / "r").exists()
    (tmp_path / "broken.yaml").write_text("methods: [a\n")
    assert main(["sweep", str(tmp_path / "broken.yaml")]) == 2
    assert "not valid YAML (line 2" in capsys.readouterr().err
    assert main(["sweep", str(tmp_path / "absent.yaml")]) == 2
    assert "sweep file not found" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ resume, failures


def test_resume_skips_finished_runs_and_reruns_without_val_when_val_is_asked(tmp_path):
    res = tmp_path / "results"
    first = execute(expand(sweep_doc(seeds=[0, 1]), source="s", results_dir=res), SequentialExecutor(), res,
                    progress=False)
    assert (len(first.done), first.skipped, len(first.failed)) == (4, 0, 0)
    # one more grid value: only its runs are new
    more = expand(sweep_doc(seeds=[0, 1], methods={M: {"lam": [0.2, 1.0, 1.5]}}), source="s", results_dir=res)
    assert len(finished(more.runs, res)) == 4
    second = execute(more, SequentialExecutor(), res, progress=False)
    assert (len(second.done), second.skipped) == (2, 4)
    assert {o.run.spec.overrides["lam"] for o in second.done} == {1.5}
    assert len(records(res)) == 6
    # a selection sweep needs val scores: the same runs without val_metrics are run again, in place
    val = expand(sweep_doc(seeds=[0], select_by="val"), source="s", results_dir=res)
    third = execute(val, SequentialExecutor(), res, progress=False)
    assert (len(third.done), third.skipped) == (2, 0)
    recs = records(res)
    assert len(recs) == 6 and sum("val_metrics" in r for r in recs) == 2
    assert execute(val, SequentialExecutor(), res, progress=False).skipped == 2


def test_a_failing_run_is_reported_and_the_sweep_goes_on(tmp_path):
    res = tmp_path / "results"
    doc = sweep_doc(methods=[{M: {"lam": 0.2}}, {M: {"fail": True}}, {M: {"lam": 1.0}}])
    summary = execute(expand(doc, source="s", results_dir=res), SequentialExecutor(), res, progress=False)
    assert [o.status for o in summary.outcomes] == ["done", "failed", "done"]
    assert summary.failed[0].error == "RuntimeError: fake_sweep_merge was asked to fail"
    text = summary.format()
    assert "1 failed" in text and "FAILED fake_sweep_merge[fail=True]" in text
    assert len(records(res)) == 2
    # fail-fast stops at it; a rerun retries the failed run (it has no record) and skips the others
    res2 = tmp_path / "r2"
    stopped = execute(expand(doc, source="s", results_dir=res2), SequentialExecutor(), res2, progress=False,
                      fail_fast=True)
    assert [o.status for o in stopped.outcomes] == ["done", "failed"] and stopped.not_run == 1
    again = execute(expand(doc, source="s", results_dir=res), SequentialExecutor(), res, progress=False)
    assert (len(again.done), again.skipped, len(again.failed)) == (0, 2, 1)


def test_process_pool_isolates_runs_retries_a_dead_worker_and_reports_errors(tmp_path):
    res = tmp_path / "results"
    marker = tmp_path / "crashed-once"
    doc = sweep_doc(methods=[{M: {"lam": 0.2}}, {M: {"fail": True}}, {M: {"crash_marker": str(marker)}}])
    sw = expand(doc, source="s", results_dir=res)
    summary = execute(sw, ProcessPoolExecutor(2, sw.plugins, max_retries=1), res, progress=False)
    def kind(o):
        over = o.run.spec.overrides
        return "fail" if over.get("fail") else "crash" if "crash_marker" in over else "ok"

    by = {kind(o): o for o in summary.outcomes}
    assert by["ok"].status == "done" and by["ok"].attempts == 1
    assert by["fail"].status == "failed" and by["fail"].error == "RuntimeError: fake_sweep_merge was asked to fail"
    assert by["fail"].attempts == 1  # exceptions are not retried
    assert by["crash"].status == "done" and by["crash"].attempts == 2 and marker.exists()
    assert len(records(res)) == 2
    # without retries a killed worker is a failed run, named as such
    marker2 = tmp_path / "crash-again"
    sw2 = expand(sweep_doc(methods={M: {"crash_marker": str(marker2)}}), source="s", results_dir=res)
    out = execute(sw2, ProcessPoolExecutor(2, sw2.plugins, max_retries=0), res, progress=False)
    assert out.failed[0].error == "worker process died (killed by SIGKILL) after 1 attempt(s)"


def test_the_pool_preloads_every_backbones_lazy_model_modules():
    """benchmark._preload swallows import errors (the run reports them), so a misspelt name would only cost speed;
    this is where it is caught. Every built-in backbone names at least the transformers module of its model."""
    import importlib
    import inspect

    from benchmark.executors import ProcessPoolExecutor as Pool

    assert '"benchmark._preload"' in inspect.getsource(Pool.run)
    builtin = [p for p in BACKBONES.plugins() if p.obj.__module__.startswith("backbones.")]
    assert {p.name for p in builtin} >= {"clip_vit_b32", "clip_vit_l14", "convnext", "detr_r50", "mamba_130m",
                                         "roberta_base"}
    for p in builtin:
        assert p.obj.preload_modules, p.name
        for name in p.obj.preload_modules:
            assert importlib.import_module(name), (p.name, name)
    importlib.import_module("benchmark._preload")


def test_pool_children_share_the_cpus_out_unless_omp_num_threads_is_set(monkeypatch):
    from benchmark.executors import threads_per_run

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert [threads_per_run(j) for j in (1, 2, 3, 8, 20)] == [8, 4, 2, 1, 1]
    assert ProcessPoolExecutor(4).threads == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads_per_run(2) is None and ProcessPoolExecutor(2).threads is None


def test_the_sequential_executor_shows_each_runs_own_progress_bars_only_when_asked(tmp_path, monkeypatch):
    import benchmark.executors as ex

    seen = []
    real = ex.run_one
    monkeypatch.setattr(ex, "run_one", lambda spec, plugins=(): seen.append(spec.progress) or real(spec, plugins))
    sw = expand(sweep_doc(), source="s", results_dir=tmp_path)
    assert all(r.spec.progress is False for r in sw.runs)  # what the sweep expands to, whatever the executor
    execute(sw, ex.make_executor("local", progress=True), tmp_path, progress=False)
    execute(expand(sweep_doc(seeds=[1]), source="s", results_dir=tmp_path), ex.make_executor("local"), tmp_path,
            progress=False)
    assert seen == [True, True, False, False]


def test_a_killed_sweep_resumes_with_exactly_the_unfinished_runs(tmp_path):
    res = tmp_path / "results"
    f = write(tmp_path / "slow.yaml", sweep_doc(methods={M: {"lam": [0.1, 0.2, 0.3, 0.4], "sleep": 1.0}}))
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmark", "sweep", str(f), "--results-dir", str(res), "--no-leaderboard",
         "--no-progress"], cwd=REPO, env=env_with_tests(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None and not list(res.glob("[!.]*.json")):
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = len(records(res))
    assert 1 <= before < 4
    out = tmp_path / "board.md"
    rc = subprocess.run(
        [sys.executable, "-m", "benchmark", "sweep", str(f), "--results-dir", str(res), "--leaderboard", str(out),
         "--no-progress"], cwd=REPO, env=env_with_tests(), capture_output=True, text=True)
    assert rc.returncode == 0, rc.stderr
    assert summary_counts(rc.stdout) == (4 - before, before, 0)
    assert len(records(res)) == 4
    assert f"leaderboard: {out}" in rc.stdout and out.is_file()


# ------------------------------------------------------------------------------------------------ Ray


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, object_store_memory=96 * 1024 * 1024, log_to_driver=False,
                 logging_level="WARNING")
    yield ray
    ray.shutdown()


def test_ray_retries_a_run_whose_worker_was_killed(tmp_path, ray_local):
    from benchmark.executors import RayExecutor

    res = tmp_path / "results"
    marker = tmp_path / "killed-once"
    sw = expand(sweep_doc(methods={M: {"crash_marker": str(marker)}}), source="s", results_dir=res)
    summary = execute(sw, RayExecutor(sw.plugins, max_retries=2), res, progress=False)
    assert marker.exists()  # the first attempt ran and killed its worker
    assert [o.status for o in summary.outcomes] == ["done"], summary.format()
    assert [r["config_hash"] for r in records(res)] == [sw.runs[0].config_hash]
    # with no retries the same death is a failed run
    marker2 = tmp_path / "killed-again"
    sw2 = expand(sweep_doc(methods={M: {"crash_marker": str(marker2)}}), source="s", results_dir=res)
    out = execute(sw2, RayExecutor(sw2.plugins, max_retries=0), res, progress=False)
    assert [o.status for o in out.outcomes] == ["failed"] and "Worker" in out.failed[0].error


def test_ray_sweep_from_the_cli_resumes_and_reports_failures(tmp_path, ray_local, capsys):
    res = tmp_path / "results"
    board = tmp_path / "board.md"
    f = write(tmp_path / "s.yaml", sweep_doc(methods=[{M: {"lam": [0.2, 1.0]}}, {M: {"fail": True}}]))
    argv = ["sweep", str(f), "--executor", "ray", "--results-dir", str(res), "--leaderboard", str(board),
            "--no-progress"]
    assert main(argv) == 1  # a failed run: exit 1, after the others finished and the leaderboard was written
    out = capsys.readouterr().out
    assert summary_counts(out) == (2, 0, 1)
    assert "FAILED fake_sweep_merge[fail=True]" in out and "RuntimeError: fake_sweep_merge was asked to fail" in out
    assert board.is_file() and len(records(res)) == 2
    write(f, sweep_doc(methods={M: {"lam": [0.2, 1.0, 1.5]}}))
    assert main(argv) == 0
    assert summary_counts(capsys.readouterr().out) == (1, 2, 0)
    assert len(records(res)) == 3


def test_ray_refuses_gpu_runs_on_a_cluster_without_gpus(tmp_path, ray_local):
    from benchmark.executors import RayExecutor

    sw = expand(sweep_doc(profile="paper"), source="s", results_dir=tmp_path)
    with pytest.raises(UserError, match=r"runs ask for 1 GPU\(s\) each \(the paper profile's default\) but the "
                                        r"Ray cluster has 0; pass --gpus-per-run 0"):
        execute(sw, RayExecutor(sw.plugins), tmp_path, progress=False)


# ------------------------------------------------------------------------------------------------ files in the repo


def test_the_repo_sweep_files_are_valid():
    from benchmark import leaderboard

    csv_rows = (REPO / "benchmark/data/paper_results.csv").read_text().splitlines()[1:]
    paper_backbones = {row.split(",")[0] for row in csv_rows}
    for f in sorted((REPO / "sweeps").glob("*.yaml")):
        doc = yaml.safe_load(f.read_text())
        sw = load_sweeps([f], skip_unknown=True)  # raises on any bad key or parameter of a registered method
        assert all(r.spec.profile == doc["profile"] for r in sw.runs)
        if f.name.startswith("paper_"):
            groups = doc.get("groups", [doc])
            methods = {m for g in groups for m in (g.get("methods") or doc["methods"])}
            backbones = {b for g in groups for b in g.get("backbones", doc.get("backbones", []))}
            known = set(leaderboard.paper_methods())
            assert methods <= known, f"{f.name}: {methods - known}"
            assert backbones <= paper_backbones, f"{f.name}: {backbones - paper_backbones}"
    tiny = load_sweeps([REPO / "sweeps/tiny.yaml"])
    assert {(r.spec.method, r.spec.backbone) for r in tiny.runs} == {(m, b) for m in METHODS.names()
                                                                     for b in BACKBONES.names()}
    grid = load_sweeps([REPO / "sweeps/paper_grid.yaml"], skip_unknown=True)
    assert grid.runs == [] or all(r.needs_val for r in grid.runs)


def test_the_workflow_runs_the_script_on_a_self_hosted_gpu_runner():
    wf = yaml.safe_load((REPO / ".github/workflows/leaderboard.yml").read_text())
    on = wf.get("on", wf.get(True))  # YAML 1.1 reads a bare `on` as true
    assert {"workflow_dispatch", "schedule"} <= set(on)
    job = wf["jobs"]["paper-sweep"]
    assert job["runs-on"] == ["self-hosted", "gpu"]
    assert any("scripts/gpu_leaderboard.sh" in step.get("run", "") for step in job["steps"])
    assert wf["permissions"] == {"contents": "write", "pull-requests": "write"}
    for f in on["workflow_dispatch"]["inputs"]["sweeps"]["default"].split():
        assert (REPO / f).is_file(), f
    # expressions (branch names, inputs) reach the shell through env only: `${{ }}` inside `run:` is shell injection
    for step in job["steps"]:
        assert "${{" not in step.get("run", ""), step.get("name")
    step = next(s for s in job["steps"] if "gpu_leaderboard.sh" in s.get("run", ""))
    assert step["env"]["BASE_REF"] == "${{ github.ref_name }}" and '--base "$BASE_REF"' in step["run"]


def _script(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(cwd / "scripts/gpu_leaderboard.sh"), "--python", sys.executable,
                           "--no-install", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_gpu_script_runs_the_sweep_and_regenerates_the_leaderboard(tmp_path):
    f = write(tmp_path / "micro.yaml", sweep_doc(methods={M: None, "pretrained": None, "not_yet_a_method": None}))
    res, board = tmp_path / "results", tmp_path / "lb" / "leaderboard.md"
    p = _script(["--no-pr", "--profile", "micro", "--results-dir", str(res), "--output", str(board), str(f)], REPO,
                env_with_tests())
    assert p.returncode == 0, p.stdout + p.stderr
    assert "skipped: method 'not_yet_a_method'" in p.stderr
    assert {(r["method"], r["profile"]) for r in records(res)} == {(M, "micro"), ("pretrained", "micro")}
    assert "fake_sweep_backbone" in board.read_text()
    assert "--no-pr" in p.stdout
    bad = _script(["--no-pr", "--bogus", str(f)], REPO, env_with_tests())
    assert bad.returncode == 2 and "unknown option --bogus" in bad.stderr


def test_gpu_script_opens_a_pull_request_with_the_records(tmp_path):
    """In a scratch clone with a bare remote and a stand-in `gh` that logs its arguments."""
    remote, work, bin_dir = tmp_path / "remote.git", tmp_path / "work", tmp_path / "bin"
    env = env_with_tests()
    env.update(GIT_AUTHOR_NAME="t", GIT_COMMITTER_NAME="t", GIT_AUTHOR_EMAIL="t@example.com",
               GIT_COMMITTER_EMAIL="t@example.com", GH_TOKEN="dummy")
    env.pop("GITHUB_TOKEN", None)
    git = ["git", "-c", "init.defaultBranch=main"]
    subprocess.run([*git, "init", "-q", "--bare", str(remote)], check=True)
    (work / "scripts").mkdir(parents=True)
    shutil.copy(REPO / "scripts/gpu_leaderboard.sh", work / "scripts")
    write(work / "micro.yaml", sweep_doc())
    for cmd in ([*git, "init", "-q"], ["git", "add", "."], ["git", "commit", "-qm", "init"],
                ["git", "remote", "add", "origin", str(remote)], ["git", "push", "-q", "origin", "HEAD:main"]):
        subprocess.run(cmd, cwd=work, env=env, check=True)
    bin_dir.mkdir()
    log = tmp_path / "gh.log"
    (bin_dir / "gh").write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {log}\necho https://example.invalid/pr/1\n')
    (bin_dir / "gh").chmod(0o755)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    p = _script(["micro.yaml"], work, env)
    assert p.returncode == 0, p.stdout + p.stderr
    args = log.read_text().splitlines()
    assert args[:2] == ["pr", "create"] and "--head" in args
    branch = args[args.index("--head") + 1]
    assert branch.startswith("leaderboard/micro-")  # named after the (first) sweep file
    files = subprocess.run(["git", "ls-tree", "-r", "--name-only", branch], cwd=remote, capture_output=True,
                           text=True, check=True).stdout.split()
    assert "leaderboard.md" in files and sum(f.startswith("results/") and f.endswith(".json") for f in files) == 2
    body = Path(args[args.index("--body-file") + 1])
    assert not body.exists()  # removed after use; the text went to gh
    # nothing new: no second pull request
    log.unlink()
    again = _script(["micro.yaml"], work, env)
    assert again.returncode == 0 and "no new records" in again.stdout and not log.exists()


def _descendants(pid: int) -> set[int]:
    """Every live process whose ancestry (by /proc's PPid) leads to ``pid`` or that carries the sweep's marker."""
    kids: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                status = (d / "status").read_text()
            except OSError:
                continue
            ppid = int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))
            kids[int(d.name)] = ppid
    out, frontier = set(), {pid}
    while frontier:
        frontier = {c for c, p in kids.items() if p in frontier} - out
        out |= frontier
    return out


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
def test_a_sigkilled_parallel_sweep_leaves_no_worker_running(tmp_path):
    res = tmp_path / "results"
    f = write(tmp_path / "slow.yaml", sweep_doc(methods={M: {"lam": [0.1, 0.2, 0.3, 0.4], "sleep": 30.0}}))
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmark", "sweep", str(f), "--results-dir", str(res), "--no-leaderboard",
         "--no-progress", "--jobs", "2"], cwd=REPO, env=env_with_tests(), stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    workers: set[int] = set()
    while time.monotonic() < deadline and len(workers) < 3:  # the fork server and two runs
        workers = _descendants(proc.pid)
        time.sleep(0.1)
    assert len(workers) >= 3, workers
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 5
    alive = workers
    while alive and time.monotonic() < deadline:
        alive = {p for p in workers if Path(f"/proc/{p}").exists()
                 and "State:\tZ" not in Path(f"/proc/{p}/status").read_text()}
        time.sleep(0.1)
    assert not alive, f"workers still running 5 s after the sweep was SIGKILLed: {sorted(alive)}"
    assert not list(res.glob("[!.]*.json"))  # and none of them wrote a record afterwards


# ------------------------------------------------------------------------------------------------ val selection


def test_grid_size_asks_every_grid_for_the_same_number_of_settings(tmp_path):
    ok = expand(sweep_doc(grid_size=2, methods={M: {"lam": [0.2, 1.0]}, "pretrained": None}), source="s.yaml",
                results_dir=tmp_path)
    assert len(ok.runs) == 3
    with pytest.raises(UserError) as e:
        expand(sweep_doc(grid_size=3), source="s.yaml", results_dir=tmp_path)
    assert str(e.value) == ("s.yaml: methods.fake_sweep_merge: a grid of 2 settings; grid_size asks every method's "
                            "grid for 3")
    with pytest.raises(UserError, match="grid_size: expects an integer >= 2"):
        expand(sweep_doc(grid_size=1), source="s.yaml", results_dir=tmp_path)


def test_select_by_on_a_split_the_suite_lacks_is_one_line(tmp_path, monkeypatch, capsys):
    from benchmark.registry import SUITES

    monkeypatch.setattr(SUITES.get("fake_sweep_suite").obj, "splits", ("train", "test"))
    f = write(tmp_path / "s.yaml", sweep_doc(select_by="val"))
    assert main(["sweep", str(f), "--results-dir", str(tmp_path / "r"), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: {f}: select_by: select_by 'val': suite 'fake_sweep_suite' (backbone "
                   f"'fake_sweep_backbone') has no val split; it has train, test\n")


def test_select_refuses_a_grid_without_val_scores_or_records(tmp_path, capsys):
    res = tmp_path / "r"
    f = write(tmp_path / "s.yaml", sweep_doc(seeds=[0, 1], select_by="val"))
    assert main(["select", str(f), "--results-dir", str(tmp_path)]) == 2  # a dir with no records of the grid
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no records of fake_sweep_merge on fake_sweep_backbone/fake_sweep_suite" in err
    assert main(["select", str(f), "--results-dir", str(tmp_path / "absent")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    # the grid run without val scores (no select_by): refused, one line
    execute(expand(sweep_doc(seeds=[0, 1]), source="s", results_dir=res), SequentialExecutor(), res, progress=False)
    assert main(["select", str(f), "--results-dir", str(res)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "4 of the 4 records of fake_sweep_merge" in err and "no val scores" in err
    # half of it rerun with val: still refused (a selection never mixes), then all of it: a selection
    execute(expand(sweep_doc(seeds=[0], select_by="val"), source="s", results_dir=res), SequentialExecutor(), res,
            progress=False)
    assert main(["select", str(f), "--results-dir", str(res)]) == 2
    assert "2 of the 4 records" in capsys.readouterr().err
    execute(expand(load_sweeps_doc(f), source="s", results_dir=res), SequentialExecutor(), res, progress=False)
    assert main(["select", str(f), "--results-dir", str(res)]) == 0
    out = capsys.readouterr().out
    assert "fake_sweep_merge" in out and "of" in out.splitlines()[0]


def load_sweeps_doc(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def test_changing_only_test_labels_never_changes_a_selection(tmp_path, monkeypatch):
    """The grid run twice, the second time with every test label scrambled: test scores move, the selection (by
    val) does not, in ``select`` and in the leaderboard alike."""
    from benchmark.leaderboard import build_tables
    from benchmark.selection import select_grids

    doc = sweep_doc(seeds=[0, 1], select_by="val", methods={M: {"lam": [0.0, 0.1, 0.5, 1.0, 2.0]}})

    def run(res: Path) -> tuple[list, list]:
        sw = expand(doc, source="s", results_dir=res)
        execute(sw, SequentialExecutor(), res, progress=False)
        recs = load_records(res)
        (table,) = build_tables(recs, paper=[])
        (row,) = [r for r in table.rows if r.method == M]
        return select_grids(sw, recs), [row.label, row.average, recs]

    first, (label1, avg1, recs1) = run(tmp_path / "a")
    prepare = _fake_plugins._FakeBackbone.prepare

    def scrambled(self):
        prepare(self)
        g = torch.Generator().manual_seed(99)
        for t in _fake_plugins.TASKS:
            x, y = self.data[t, "test"]
            self.data[t, "test"] = (x, torch.randint(0, _fake_plugins.CLASSES, y.shape, generator=g))

    import torch

    monkeypatch.setattr(_fake_plugins._FakeBackbone, "prepare", scrambled)
    second, (label2, avg2, recs2) = run(tmp_path / "b")
    assert [(s.method, s.overrides, s.val_average) for s in first] == [(s.method, s.overrides, s.val_average)
                                                                        for s in second]
    assert label1 == label2 and "best of 5 by val" in label1
    assert [r["metrics"] for r in recs1] != [r["metrics"] for r in recs2]  # the test scores did change
    assert [r["val_metrics"] for r in recs1] == [r["val_metrics"] for r in recs2]


def test_the_record_stores_the_values_resolved_by_the_backbones_kind(tmp_path):
    """A method's per-kind defaults reach the record (and its config hash) on a backbone of that kind only."""
    from benchmark.registry import KindDefaults
    from benchmark.runner import RunSpec, run

    BACKBONES.register("fake_kind_detector", summary="sweep tests: a 'detection' backbone",
                       suites=("fake_sweep_suite",), default_suite="fake_sweep_suite", task_kind="detection")(
        type("FakeKindDetector", (_fake_plugins._FakeBackbone,), {}))
    METHODS.register("fake_kind_merge", summary="sweep tests: lam 0.5, 1.5 on detection",
                     params=METHODS.get(M).params,
                     kind_defaults={"detection": KindDefaults({"lam": 1.5}, "a table")})(
        type("FakeKindMerge", (_fake_plugins.FakeSweepMerge,), {}))
    try:
        det, _ = run(RunSpec(method="fake_kind_merge", backbone="fake_kind_detector", results_dir=str(tmp_path),
                             progress=False))
        plain, _ = run(RunSpec(method="fake_kind_merge", backbone=B1, results_dir=str(tmp_path), progress=False))
        assert det["params"]["lam"] == 1.5 and plain["params"]["lam"] == 0.5
        assert det["config_hash"] == config_hash("fake_kind_merge", det["params"], "fake_kind_detector",
                                                 "fake_sweep_suite", "tiny", 0)
        sw = expand(sweep_doc(backbones=["fake_kind_detector", B1], methods=["fake_kind_merge"]), source="s",
                    results_dir=tmp_path)
        assert finished(sw.runs, tmp_path) == {r.config_hash for r in sw.runs}  # the sweep resolves the same way
    finally:
        METHODS.unregister("fake_kind_merge")
        BACKBONES.unregister("fake_kind_detector")


def test_leaderboard_with_a_grid_refuses_a_results_dir_without_its_val_scores(tmp_path, capsys):
    res = tmp_path / "r"
    f = write(tmp_path / "s.yaml", sweep_doc(select_by="val"))
    execute(expand(sweep_doc(), source="s", results_dir=res), SequentialExecutor(), res, progress=False)
    out = tmp_path / "lb.md"
    assert main(["leaderboard", "--results-dir", str(res), "--output", str(out), "--grid", str(f)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "have no val scores" in err and not out.exists()
    execute(expand(sweep_doc(select_by="val"), source="s", results_dir=res), SequentialExecutor(), res,
            progress=False)
    assert main(["leaderboard", "--results-dir", str(res), "--output", str(out), "--grid", str(f)]) == 0
    assert "· best of 2 by val" in out.read_text()


def test_a_run_on_data_the_suite_no_longer_makes_is_run_again_and_replaced(tmp_path, monkeypatch):
    """A record of the same config on other suite data (the suite's generators changed) is not a finished run: the
    sweep runs it again, and the new record replaces the old one, saying so; the data is part of the record."""
    import _fake_plugins as fp
    from benchmark.records import RecordWarning

    res = tmp_path / "results"
    monkeypatch.setattr(fp._FakeSuite, "fingerprint", lambda self: "a" * 64)
    sweep = expand(sweep_doc(), source="s", results_dir=res)
    assert len(execute(sweep, SequentialExecutor(), res, progress=False).done) == 2
    assert {r["suite_data"] for r in records(res)} == {"a" * 64}
    assert execute(sweep, SequentialExecutor(), res, progress=False).skipped == 2  # same data: finished
    monkeypatch.setattr(fp._FakeSuite, "fingerprint", lambda self: "b" * 64)
    assert finished(sweep.runs, res) == set()
    assert finished(sweep.runs, res, check_data=False) == {r.config_hash for r in sweep.runs}
    with pytest.warns(RecordWarning, match=r"replaced .*other data of suite fake_sweep_suite \(aaaaaaaaaaaa, now "
                                           r"bbbbbbbbbbbb\)"):
        again = execute(sweep, SequentialExecutor(), res, progress=False)
    assert (len(again.done), again.skipped) == (2, 0)
    recs = records(res)
    assert len(recs) == 2 and {r["suite_data"] for r in recs} == {"b" * 64}


def test_a_selection_reads_the_grids_newest_suite_data_only(tmp_path):
    """A grid's records on an earlier version of the suite's data never take part in its selection: with the grid
    rerun on new data, the selection is the new data's alone; with it half rerun, the grid is unfinished."""
    import copy

    from benchmark.selection import select_grids

    res = tmp_path / "r"
    doc = sweep_doc(seeds=[0], select_by="val", methods={M: {"lam": [0.0, 1.0, 2.0]}})
    sw = expand(doc, source="s", results_dir=res)
    execute(sw, SequentialExecutor(), res, progress=False)
    old = load_records(res)
    (sel_old,) = select_grids(sw, old)
    new = copy.deepcopy(old)
    for r in new:  # on the new data the val scores order the settings the other way round
        r.update(suite_data="b" * 64, created="2099-01-01T00:00:00+00:00",
                 val_average=-float(r["val_average"]) if r["params"] != sel_old.params else -1e9)
    (sel_new,) = select_grids(sw, new)
    assert sel_new.params != sel_old.params
    (sel_both,) = select_grids(sw, old + new)
    assert (sel_both.params, sel_both.val_average) == (sel_new.params, sel_new.val_average)
    with pytest.raises(UserError, match="have no record yet"):
        select_grids(sw, old + new[:1])
