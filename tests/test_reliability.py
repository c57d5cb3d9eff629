"""Reliability, tried as a hostile user would (issue 16), one section per class:

- cache: corrupted, truncated, swapped, legacy and unremovable entries are rebuilt once with a warning naming them,
  or refused in one line; never used. The artifact file is checked against the hash measured when it was written.
- inputs: every CLI invocation misused (the README's and ``--help``'s) is one line on stderr, exit 2, no traceback.
- decoders: fuzzed streams, metas and containers raise ``StorageError`` and nothing else, and no declared size makes
  a decoder allocate beyond the model-derived limit.
- orphans: a SIGKILLed ``sweep --jobs 2`` leaves no worker alive after 5 s; a run watches the sweep's own pid.

Everything here is micro-sized (toy builders, the instant ``_fake_plugins``) so the file runs in seconds.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import tracemalloc
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmark.__main__ import main
from benchmark.cache import Cache, CacheError, CacheWarning
from benchmark.contract import Artifacts
from benchmark.records import RecordError, write_record
from benchmark.storage import StorageError, decode_budget, get_codec, read_artifacts, write_artifacts
from methods.codecs._sparse import SparseCodes

REPO = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent


def env_with_tests(**extra: str) -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", **extra)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(TESTS), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


# ------------------------------------------------------------------------------------------------ cache


class Builder:
    """A deterministic 'checkpoint' builder that counts its builds (a rebuild must produce the same bits)."""

    def __init__(self, seed: int = 0):
        self.seed = seed
        self.calls = 0

    def __call__(self, tmp: Path) -> None:
        from safetensors.torch import save_file

        self.calls += 1
        g = torch.Generator().manual_seed(self.seed)
        save_file({"w": torch.randn(64, 64, generator=g), "b": torch.randn(64, generator=g)},
                  str(tmp / "finetuned.safetensors"))
        (tmp / "sub").mkdir()
        (tmp / "sub" / "classes.json").write_text(json.dumps(["a", "b"]))


def _load(entry: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {k: v.clone() for k, v in load_file(str(entry / "finetuned.safetensors")).items()}  # no mmap


def _garbage(p: Path) -> None:
    data = bytearray(p.read_bytes())
    data[200:712] = os.urandom(512)  # 512 bytes of garbage, size unchanged (the issue's corruption)
    p.write_bytes(bytes(data))


def _truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[:-100])


CORRUPTIONS = {
    "garbage": lambda e, other: _garbage(e / "finetuned.safetensors"),
    "truncated": lambda e, other: _truncate(e / "finetuned.safetensors"),
    "emptied": lambda e, other: (e / "finetuned.safetensors").write_bytes(b""),
    "deleted file": lambda e, other: (e / "finetuned.safetensors").unlink(),
    "extra file": lambda e, other: (e / "stray.bin").write_bytes(b"x"),
    "nested file changed": lambda e, other: (e / "sub" / "classes.json").write_text('["a", "c"]'),
    "swapped file": lambda e, other: (e / "finetuned.safetensors").write_bytes(
        (other / "finetuned.safetensors").read_bytes()),
    "swapped entry": lambda e, other: _swap_dirs(e, other),
    "manifest deleted": lambda e, other: (e / "entry.json").unlink(),
    "manifest garbage": lambda e, other: (e / "entry.json").write_bytes(b"\xff{"),
    "legacy manifest": lambda e, other: (e / "entry.json").write_text(json.dumps({"name": "ckpt"})),
    "marker only": lambda e, other: [p.unlink() for p in e.rglob("*") if p.is_file() and p.name != ".complete"],
    "entry is a file": lambda e, other: (_rmtree(e), e.write_text("x")),
    "entry is a symlink to another": lambda e, other: (_rmtree(e), e.symlink_to(other)),
}


def _rmtree(p: Path) -> None:
    import shutil

    shutil.rmtree(p)


def _swap_dirs(a: Path, b: Path) -> None:
    """Put entry b's whole directory (manifest included, self-consistent) where entry a was."""
    import shutil

    shutil.rmtree(a)
    shutil.copytree(b, a)


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_a_damaged_cache_entry_is_rebuilt_once_with_a_warning_never_used(tmp_path, kind):
    cache = Cache(tmp_path / "cache")
    good, other = Builder(0), Builder(1)
    entry = cache.get_or_build("ckpt", {"task": "a"}, 0, "v1", good)
    other_entry = cache.get_or_build("ckpt", {"task": "b"}, 0, "v1", other)
    want = _load(entry)
    want_sha = cache.sha256(entry / "finetuned.safetensors")
    CORRUPTIONS[kind](entry, other_entry)
    with pytest.warns(CacheWarning) as caught:
        again = cache.get_or_build("ckpt", {"task": "a"}, 0, "v1", good)
    assert again == entry and good.calls == 2  # rebuilt exactly once
    (w,) = [str(c.message) for c in caught]
    assert f"ckpt/{entry.name}" in w and "rebuilding" in w and "\n" not in w
    got = _load(again)
    assert all(torch.equal(got[k], want[k]) for k in want)  # the rebuilt bits, not the damaged ones
    assert cache.sha256(again / "finetuned.safetensors") == want_sha
    assert not other_entry.is_symlink() and cache.verify(other_entry, "ckpt")  # the other entry is untouched
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cache.get_or_build("ckpt", {"task": "a"}, 0, "v1", good) == entry and good.calls == 2  # valid now


def test_a_rebuild_that_still_does_not_verify_or_cannot_be_removed_is_refused_in_one_line(tmp_path, monkeypatch):
    cache = Cache(tmp_path / "cache")
    entry = cache.get_or_build("ckpt", {}, 0, "v1", Builder())
    _garbage(entry / "finetuned.safetensors")

    def bad_build(tmp: Path) -> None:  # a builder whose output changes once hashed (a broken disk, say)
        Builder()(tmp)

    real_build = Cache._build

    def build_then_damage(self, target, *a):
        real_build(self, target, *a)
        _garbage(target / "finetuned.safetensors")

    monkeypatch.setattr(Cache, "_build", build_then_damage)
    with pytest.warns(CacheWarning), pytest.raises(CacheError, match="rebuilt and still does not verify") as e:
        cache.get_or_build("ckpt", {}, 0, "v1", bad_build)
    assert "\n" not in str(e.value)
    monkeypatch.setattr(Cache, "_build", real_build)
    # sha256 of a damaged entry's file is refused, never computed from the damaged bytes
    with pytest.raises(CacheError, match="does not match its content hash"):
        cache.sha256(entry / "finetuned.safetensors")


def test_a_cache_root_that_is_a_file_is_one_line_before_any_build(tmp_path):
    (tmp_path / "afile").write_text("x")
    calls = []
    with pytest.raises(CacheError, match="not a writable directory") as e:
        Cache(tmp_path / "afile").get_or_build("ckpt", {}, 0, "v1", calls.append)
    assert not calls and "\n" not in str(e.value)


def test_temp_dirs_of_killed_builds_are_swept_on_the_next_start(tmp_path):
    cache = Cache(tmp_path / "cache")
    target = cache.dir_for("ckpt", {}, 0, "v1")
    target.parent.mkdir(parents=True)
    stale = target.parent / f".{target.name}.k1ll3d"  # what a SIGKILLed build leaves (mkdtemp's name)
    stale.mkdir()
    (stale / "finetuned.safetensors").write_bytes(b"half")
    cache.get_or_build("ckpt", {}, 0, "v1", Builder())
    assert not stale.exists() and [p.name for p in target.parent.iterdir() if p.is_dir()] == [target.name]


def test_a_damaged_artifact_file_is_refused_not_evaluated(tmp_path):
    arts = Artifacts()
    arts.add("tv", {"w": torch.randn(8, 8)}, codec="state_dict")
    w = write_artifacts(arts, tmp_path / "a.safetensors")
    other = write_artifacts(arts, tmp_path / "b.safetensors")
    assert read_artifacts(w.path, sha256=w.sha256)["tv"]["w"].shape == (8, 8)
    data = bytearray(w.path.read_bytes())
    data[-4] ^= 0xFF  # one bit of a weight: the file still parses, the hash does not match
    w.path.write_bytes(bytes(data))
    with pytest.raises(StorageError, match="measured when it was written"):
        read_artifacts(w.path, sha256=w.sha256)
    arts2 = Artifacts()
    arts2.add("tv", {"w": torch.zeros(8, 8)}, codec="state_dict")
    swapped = write_artifacts(arts2, tmp_path / "c.safetensors")
    os.replace(swapped.path, other.path)  # another run's file where this run's was
    with pytest.raises(StorageError, match="corrupted or replaced"):
        read_artifacts(other.path, sha256=other.sha256)


def test_the_runner_refuses_an_artifact_file_damaged_between_write_and_read(tmp_path, monkeypatch):
    import _toy_backbone  # noqa: F401  (registers toy_linear)
    import benchmark.runner as runner

    real = runner.write_artifacts

    def write_then_damage(artifacts, path):
        w = real(artifacts, path)
        data = bytearray(Path(w.path).read_bytes())
        data[-3] ^= 0x55
        Path(w.path).write_bytes(bytes(data))
        return w

    monkeypatch.setattr(runner, "write_artifacts", write_then_damage)
    spec = runner.RunSpec(method="task_arithmetic", backbone="toy_linear", results_dir=str(tmp_path / "res"),
                          cache_root=str(tmp_path / "cache"), progress=False)
    with pytest.raises(StorageError, match="corrupted or replaced"):
        runner.run(spec)
    assert not list((tmp_path / "res").glob("*.json"))  # no record of a model that was never what was stored


def test_a_record_is_never_replaced_by_one_with_other_scores(tmp_path):
    from test_records import make_record  # the same folder's helper for a valid record

    write_record(make_record(), tmp_path)
    bad = make_record()
    bad["metrics"] = {k: 10.0 for k in bad["metrics"]}
    with pytest.raises(RecordError, match="exists with other scores"):
        write_record(bad, tmp_path)
    kept = json.loads((tmp_path / "b-m-tiny-s0-abc.json").read_text())
    assert kept["metrics"] == make_record()["metrics"]
    assert (tmp_path / "b-m-tiny-s0-abc.json.rejected").is_file()


def test_garbage_in_a_real_cached_checkpoint_is_rebuilt_and_the_backbone_sees_the_good_bits(tmp_path, cache_root):
    """The issue's failure: 512 bytes of garbage in one cached fine-tuned checkpoint of the micro CLIP dropped every
    task to chance with exit 0. Now the adapter gets the rebuilt, bit-identical checkpoint and the verified hash."""
    import shutil

    from benchmark.registry import BACKBONES, SUITES

    def make(cache: Cache):
        suite = SUITES.get("vision8").obj(profile="micro", seed=0, cache=cache, progress=False)
        return BACKBONES.get("clip_vit_b32").obj(profile="micro", suite=suite, seed=0, cache=cache, progress=False)

    ref = make(Cache(cache_root))  # the shared test cache: built once per machine by whichever test comes first
    ref.prepare()
    mine = tmp_path / "cache"
    for d in ("vision8", "clip_vit_b32"):
        shutil.copytree(cache_root / d, mine / d, ignore=shutil.ignore_patterns(".*.lock"))
    task = ref.tasks[0]
    damaged = [p for p in (mine / "clip_vit_b32" / "finetune" / task).glob("*/finetuned.safetensors")
               if ref.checkpoints()[f"finetuned/{task}"] == Cache(mine).sha256(p)]
    assert len(damaged) == 1
    _garbage(damaged[0])
    b = make(Cache(mine))
    with pytest.warns(CacheWarning, match=f"clip_vit_b32/finetune/{task}/"):
        b.prepare()
    assert b.checkpoints() == ref.checkpoints()
    want, got = ref.finetuned_state(task), b.finetuned_state(task)
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_backbones_record_the_caches_verified_hashes(monkeypatch, cache_root):
    """The tiny build (backbones/_tiny.py, shared by every adapter) takes its checkpoints' hashes from Cache.sha256
    (verified), not a second reading: every checkpoint hash is one Cache.sha256 gave."""
    import benchmark.cache as bc
    from benchmark.registry import BACKBONES, SUITES

    suite = SUITES.get("vision8").obj(profile="micro", seed=0, cache=Cache(cache_root), progress=False)
    BACKBONES.get("clip_vit_b32").obj(profile="micro", suite=suite, seed=0, cache=Cache(cache_root),
                                      progress=False).prepare()  # cached from here on
    given = []
    real = bc.Cache.sha256
    monkeypatch.setattr(bc.Cache, "sha256", lambda self, p: given.append(real(self, p)) or given[-1])
    suite = SUITES.get("vision8").obj(profile="micro", seed=0, cache=Cache(cache_root), progress=False)
    b = BACKBONES.get("clip_vit_b32").obj(profile="micro", suite=suite, seed=0, cache=Cache(cache_root), progress=False)
    b.prepare()
    assert sorted(b.checkpoints().values()) == sorted(given)
    for f in ("_tiny.py", "_image.py", "clip_vit.py", "_text.py", "detr.py"):
        assert "sha256_file(" not in (REPO / "backbones" / f).read_text(), f


# ------------------------------------------------------------------------------------------------ inputs


@pytest.fixture(scope="module")
def bad_env(tmp_path_factory):
    t = tmp_path_factory.mktemp("bad")
    (t / "afile").write_text("x")
    (t / "empty").mkdir()
    (t / "stray").mkdir()
    (t / "stray" / "notes.json").write_text('{"hello": 1}')
    (t / "typed").mkdir()
    from test_records import make_record

    (t / "typed" / "r.json").write_text(json.dumps(make_record(storage_bytes="10 MB")))
    files = {
        "latin1.yaml": "profile: micro\nmethods: [pretrained]\n# caf\xe9\n".encode("latin-1"),
        "notyaml.yaml": b"methods: [pretrained\n",
        "list.yaml": b"- a\n- b\n",
        "unknown_key.yaml": b"methods: [pretrained]\nbogus: 1\n",
        "seed_neg.yaml": b"plugins: [_fake_plugins]\nbackbones: fake_sweep_backbone\nmethods: [fake_sweep_merge]\nseeds: [-1]\n",
        "seed_big.yaml": b"plugins: [_fake_plugins]\nbackbones: fake_sweep_backbone\nmethods: [fake_sweep_merge]\n"
                         b"seeds: [4294967296]\n",
        "nan.yaml": b"plugins: [_fake_plugins]\nbackbones: fake_sweep_backbone\nmethods: {fake_sweep_merge: {lam: .nan}}\n",
        "inf.yaml": b"plugins: [_fake_plugins]\nbackbones: fake_sweep_backbone\n"
                    b"methods: {fake_sweep_merge: {lam: [.inf, 0.3]}}\n",
        "ok.yaml": b"plugins: [_fake_plugins]\nbackbones: fake_sweep_backbone\nmethods: [fake_sweep_merge]\n",
    }
    for name, data in files.items():
        (t / name).write_bytes(data)
    return t


RUN = ["run", "--method", "task_arithmetic", "--backbone", "clip_vit_b32", "--profile", "micro"]
#: (argv, extra environment) with {t} for the fixture folder; every one must be one line, exit 2, no traceback
BAD = [
    ([], {}), (["frobnicate"], {}), (["list", "widgets"], {}), (["list", "--bogus"], {}), (["run"], {}),
    (["run", "--nope"], {}), (["run", "--method", "task_arithmetic"], {}),
    (["run", "--method", "nope", "--backbone", "clip_vit_b32"], {}),
    (["run", "--method", "task_arithmetic", "--backbone", "nope"], {}),
    (RUN + ["--suite", "glue7"], {}), (RUN + ["--suite", "nope"], {}), (RUN[:-1] + ["huge"], {}),
    (RUN + ["--seed", "-1"], {}), (RUN + ["--seed", "4294967296"], {}), (RUN + ["--seed", "abc"], {}),
    (RUN + ["--seed", "1e3"], {}), (RUN + ["--set", "scaling_coef=nan"], {}), (RUN + ["--set", "scaling_coef=inf"], {}),
    (RUN + ["--set", "scaling_coef=-inf"], {}), (RUN + ["--set", "scaling_coef=1e309"], {}),
    (RUN + ["--set", "scaling_coef=abc"], {}), (RUN + ["--set", "scaling_coef="], {}), (RUN + ["--set", "nokey"], {}),
    (RUN + ["--set", "=3"], {}), (RUN + ["--set", "unknown=1"], {}),
    (["run", "--method", "ties", "--backbone", "clip_vit_b32", "--set", "topk=120"], {}),
    (["run", "--method", "ties", "--backbone", "clip_vit_b32", "--set", "topk=NaN"], {}),
    (["run", "--method", "t_switch", "--backbone", "clip_vit_b32", "--set", "alpha=-0.1"], {}),
    (["run", "--method", "t_switch", "--backbone", "clip_vit_b32", "--set", "codec=zip"], {}),
    (["run", "--method", "adamerging", "--backbone", "clip_vit_b32", "--set", "clamp=maybe"], {}),
    (["run", "--method", "flexswitch", "--backbone", "clip_vit_b32", "--set", "loss=l1"], {}),
    (RUN + ["--results-dir", "{t}/afile"], {}), (RUN + ["--results-dir", "{t}/afile/sub"], {}),
    (RUN + ["--results-dir", "{t}/res"], {"MERGE_BENCH_CACHE": "{t}/afile"}),
    (["sweep"], {}), (["sweep", "{t}/missing.yaml"], {}), (["sweep", "{t}/latin1.yaml"], {}),
    (["sweep", "{t}/notyaml.yaml"], {}), (["sweep", "{t}/list.yaml"], {}), (["sweep", "{t}/unknown_key.yaml"], {}),
    (["sweep", "{t}"], {}), (["sweep", "{t}/seed_neg.yaml"], {}), (["sweep", "{t}/seed_big.yaml"], {}),
    (["sweep", "{t}/nan.yaml"], {}), (["sweep", "{t}/inf.yaml"], {}),
    (["sweep", "{t}/ok.yaml", "--jobs", "0"], {}), (["sweep", "{t}/ok.yaml", "--jobs", "-3"], {}),
    (["sweep", "{t}/ok.yaml", "--jobs", "x"], {}), (["sweep", "{t}/ok.yaml", "--max-retries", "-1"], {}),
    (["sweep", "{t}/ok.yaml", "--executor", "slurm"], {}),
    (["sweep", "{t}/ok.yaml", "--executor", "ray", "--cpus-per-run", "nan"], {}),
    (["sweep", "{t}/ok.yaml", "--executor", "ray", "--cpus-per-run", "0"], {}),
    (["sweep", "{t}/ok.yaml", "--executor", "ray", "--gpus-per-run", "inf"], {}),
    (["sweep", "{t}/ok.yaml", "--executor", "ray", "--gpus-per-run", "-1"], {}),
    (["sweep", "{t}/ok.yaml", "--results-dir", "{t}/afile"], {}),
    (["sweep", "{t}/ok.yaml", "--results-dir", "{t}/res"], {"MERGE_BENCH_CACHE": "{t}/afile"}),
    (["sweep", "{t}/ok.yaml", "--results-dir", "{t}/res", "--leaderboard", "{t}/afile/lb.md"], {}),
    (["sweep", "{t}/ok.yaml", "--results-dir", "{t}/res", "--leaderboard", "{t}/empty"], {}),
    (["sweep", "{t}/ok.yaml", "--plugin", "no.such.module"], {}), (["sweep", "{t}/ok.yaml", "--plugin", ""], {}),
    (["sweep", "{t}/ok.yaml", "--plugin", ".relative"], {}), (["sweep", "{t}/ok.yaml", "--profile", "nope"], {}),
    (["leaderboard", "--results-dir", "{t}/missing", "--output", "{t}/lb.md"], {}),
    (["leaderboard", "--results-dir", "{t}/empty", "--output", "{t}/lb.md"], {}),
    (["leaderboard", "--results-dir", "{t}/afile", "--output", "{t}/lb.md"], {}),
    (["leaderboard", "--results-dir", "{t}/typed", "--output", "{t}/lb.md"], {}),
    (["leaderboard", "--results-dir", "{t}/stray", "--output", "{t}/lb.md"], {}),
    (["leaderboard", "--output", "{t}/afile/lb.md"], {}), (["leaderboard", "--output", "{t}/empty"], {}),
    (["export", "--results-dir", "{t}/missing"], {}), (["export", "--format", "xml"], {}),
    (["export", "--results-dir", "{t}/empty"], {}), (["export", "--output", "{t}/empty"], {}),
    (["export", "--output", "{t}/afile/x.csv"], {}),
    (["suite-card", "--backbone", "nope"], {}), (["suite-card", "--backbone", "clip_vit_b32", "--seed", "-5"], {}),
    (["suite-card", "--backbone", "clip_vit_b32", "--profile", "nope"], {}),
    (["suite-card", "--backbone", "clip_vit_b32", "--profile", "micro", "--output-dir", "{t}/afile"], {}),
]


def _fill(x: str, t: Path) -> str:
    return x.replace("{t}", str(t))


@pytest.mark.parametrize("argv,env", BAD, ids=[" ".join(a)[:60] or "(none)" for a, _ in BAD])
def test_every_misuse_is_one_line_exit_2_and_no_traceback(argv, env, bad_env, capsys, monkeypatch):
    monkeypatch.chdir(REPO)  # the defaults (results/, leaderboard.md) are the repo's: they must stay untouched
    for k, v in env.items():
        monkeypatch.setenv(k, _fill(v, bad_env))
    monkeypatch.syspath_prepend(str(TESTS))  # sweep files name the test plugins
    before = (REPO / "leaderboard.md").stat().st_mtime_ns
    rc = main([_fill(a, bad_env) for a in argv])  # an exception escaping main is a traceback: the test fails
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    warn = [ln for ln in err if ln.startswith("warning: skipped")]  # a skipped stray/foreign record: one line each
    assert rc == 2 and len(err) - len(warn) == 1 and err[-1].startswith("error: "), err
    assert len(warn) <= 1 and "Traceback" not in "\n".join(err)
    assert (REPO / "leaderboard.md").stat().st_mtime_ns == before
    assert not (bad_env / "res").exists() or not list((bad_env / "res").glob("*.json"))  # nothing ran


def test_a_stray_json_in_results_is_one_warning_line_and_the_sweep_resumes(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))
    res = tmp_path / "results"
    res.mkdir()
    (res / "notes.json").write_text('{"todo": "rerun"}')
    (res / "half.json").write_text('{"run_id": "x", "metrics"')
    f = tmp_path / "s.yaml"
    f.write_text("plugins: [_fake_plugins]\nbackbones: fake_sweep_backbone\nmethods: [fake_sweep_merge]\n")
    assert main(["sweep", str(f), "--results-dir", str(res), "--dry-run"]) == 0
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 2 and sorted(err)[0].startswith(f"warning: skipped {res / 'half.json'}: not valid JSON")
    assert sorted(err)[1] == f"warning: skipped {res / 'notes.json'}: not a merge-bench record (no run_id; 21 of its " \
                             "21 keys missing)"


@pytest.mark.parametrize("over", [{"storage_bytes": "10 MB"}, {"seed": True}, {"average": float("nan")},
                                  {"metrics": {"a": "90"}}, {"val_metrics": [1]}, {"val_average": "x"},
                                  {"checkpoints": []}, {"params": None}])
def test_a_record_of_the_wrong_types_is_skipped_with_one_warning_naming_it(tmp_path, over):
    from benchmark.records import RecordWarning, load_records
    from test_records import make_record

    write_record(make_record(), tmp_path)
    (tmp_path / "typed.json").write_text(json.dumps(make_record("b-m-tiny-s1-def", **over)))
    with pytest.warns(RecordWarning) as caught:
        assert [r["run_id"] for r in load_records(tmp_path)] == ["b-m-tiny-s0-abc"]
    (w,) = [str(c.message) for c in caught]
    assert "typed.json" in w and "\n" not in w
    with pytest.raises(RecordError):
        write_record(make_record("b-m-tiny-s1-def", **over), tmp_path / "w")  # and never written


def test_a_local_ray_instance_binds_loopback_only():
    ray = pytest.importorskip("ray")
    psutil = pytest.importorskip("psutil")
    import ipaddress

    from benchmark.executors import RayExecutor

    if ray.is_initialized():
        pytest.skip("a Ray instance this test did not start is running")
    RayExecutor(num_cpus=1)._start(ray)
    try:
        # a task with a runtime_env, as the sweep sends, so a worker and the runtime-env agent are up and listening
        env = {"runtime_env": {"env_vars": {"MERGE_BENCH_PROBE": "1"}}}
        assert ray.get(ray.remote(lambda: os.getpid()).options(**env).remote()) > 0
        time.sleep(1)  # the agents' later ports
        listening = {}
        for p in [psutil.Process(), *psutil.Process().children(recursive=True)]:
            try:
                for c in p.net_connections(kind="inet"):
                    if c.status == psutil.CONN_LISTEN:
                        listening[f"{c.laddr.ip} {c.laddr.port}"] = p.name()
            except psutil.Error:  # a worker that exited meanwhile
                pass
        ips = {a: ipaddress.ip_address(a.split()[0]) for a in listening}
        ips = {a: getattr(ip, "ipv4_mapped", None) or ip for a, ip in ips.items()}  # ::ffff:127.0.0.1 is loopback too
        outside = {a: name for a, name in listening.items() if not ips[a].is_loopback}
        assert not outside, outside
        assert {"gcs_server", "raylet"} <= set(listening.values()), listening  # the check saw Ray's own servers
        assert ray.get_runtime_context().gcs_address.startswith("127.0.0.1:")
    finally:
        ray.shutdown()


#: the same through the real entry point, in fresh interpreters, run side by side
SUBPROCESS = [0, 1, 3, 16, 55, 62, 67]  # indexes into BAD: 2 of them import torch (run, sweep)


def test_the_entry_point_itself_prints_one_line_and_no_traceback(bad_env):
    procs = []
    for i in SUBPROCESS:
        argv, env = BAD[i]
        e = env_with_tests(**{k: _fill(v, bad_env) for k, v in env.items()})
        procs.append((argv, subprocess.Popen([sys.executable, "-m", "benchmark", *[_fill(a, bad_env) for a in argv]],
                                             cwd=REPO, env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                             text=True)))
    for argv, p in procs:
        out, err = p.communicate(timeout=120)
        lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("warning: skipped")]
        assert p.returncode == 2 and len(lines) == 1 and "Traceback" not in err, (argv, err)


# ------------------------------------------------------------------------------------------------ decoders

FUZZ = settings(derandomize=True, max_examples=150, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
BUDGET = 1 << 20  # decoded bytes; what a tiny model's limit would be, and far below any header's claims
PEAK = 32 << 20  # bytes traced during one decode: no header may make a decoder allocate more


def _sc(shape, density: float, bits: int, seed: int) -> SparseCodes:
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape))
    mask = rng.random(n) < density
    if len(shape) == 2:  # row-structured density, so the entropy codec's contexts are exercised
        mask &= np.repeat(rng.random(shape[0]) < 0.7, shape[1])
    codes = rng.integers(0, 1 << bits, int(mask.sum()), dtype=np.uint8)
    return SparseCodes(tuple(shape), torch.from_numpy(mask), torch.from_numpy(codes), bits)


def _samples() -> dict[str, tuple[dict, dict]]:
    """A valid encoding for every codec (and configuration): the fuzz mutates these."""
    switch = {"a": _sc((64, 80), 0.1, 1, 0), "b": _sc((33,), 0.5, 2, 1), "c": _sc((0,), 0.5, 4, 2)}
    values = {
        "tensor": ({}, torch.randn(5, 3)),
        "tensor-f16": ({"dtype": "float16"}, torch.randn(7)),
        "state_dict": ({}, {"w": torch.randn(4, 4), "i": torch.arange(6)}),
        "bitmask": ({}, torch.rand(9, 5) > 0.5),
        "bitmask-dict": ({}, {"m": torch.rand(17) > 0.5, "n": torch.rand(2, 3) > 0.5}),
        "json": ({}, {"coef": [0.1, 0.2], "k": {"x": [1, 2, {"y": None}]}}),
        "sass": ({}, switch), "packbits": ({}, switch), "packbits-zstd": ({"zstd": True}, switch),
        "entropy": ({}, {"a": _sc((128, 96), 0.3, 2, 3), "b": _sc((40,), 0.9, 1, 4)}),
        "entropy-flat": ({"contexts": False}, _sc((500,), 0.05, 8, 5)),
    }
    out = {}
    for key, (params, value) in values.items():
        name = key.split("-")[0]
        codec = get_codec(name, params)
        parts, meta = codec.encode(value)
        out[key] = (name, params, parts, meta)
    return out


SAMPLES = _samples()
JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=8),
                    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c, max_size=4),
                    max_leaves=12)


def _mutate_bytes(data: st.DataObject, raw: bytes, crc: bool) -> bytes:
    kind = data.draw(st.sampled_from(["flip", "truncate", "extend", "random", "splice"]))
    b = bytearray(raw[:-4] if crc else raw)
    if kind == "flip" and b:
        for _ in range(data.draw(st.integers(1, 4))):
            i = data.draw(st.integers(0, len(b) - 1))
            b[i] = data.draw(st.integers(0, 255))
    elif kind == "truncate":
        b = b[: data.draw(st.integers(0, max(len(b) - 1, 0)))]
    elif kind == "extend":
        b += data.draw(st.binary(min_size=1, max_size=16))
    elif kind == "random":
        b = bytearray(data.draw(st.binary(max_size=64)))
    elif b:
        i = data.draw(st.integers(0, len(b) - 1))
        b[i:i + 8] = data.draw(st.binary(max_size=12))
    if crc and data.draw(st.booleans()):  # a valid checksum, so the damage reaches the parser behind the CRC
        b += (zlib.crc32(bytes(b)) & 0xFFFFFFFF).to_bytes(4, "little")
    elif crc:
        b += raw[-4:]
    return bytes(b)


def _decode_bounded(name: str, params: dict, parts: dict, meta) -> None:
    codec = get_codec(name, params)
    tracemalloc.start()
    try:
        with decode_budget(BUDGET):
            codec.decode(parts, meta)
    except StorageError:
        pass  # the one allowed failure; anything else propagates and fails the test
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert peak <= PEAK, f"{name}: a decode allocated {peak} bytes"


@pytest.mark.parametrize("key", list(SAMPLES))
@FUZZ
@given(data=st.data())
def test_fuzzed_codec_input_raises_storage_error_only(key, data):
    name, params, parts, meta = SAMPLES[key]
    parts = dict(parts)
    target = data.draw(st.sampled_from(["bytes", "meta", "parts"]))
    if target == "bytes":
        pname = data.draw(st.sampled_from(sorted(parts)))
        t = parts[pname]
        raw = t.contiguous().view(torch.uint8).reshape(-1).numpy().tobytes() if t.numel() else b""
        new = _mutate_bytes(data, raw, crc=name in ("sass", "packbits", "entropy"))
        if t.dtype == torch.uint8 or len(new) % t.element_size():
            parts[pname] = torch.frombuffer(bytearray(new), dtype=torch.uint8) if new else torch.zeros(0, dtype=torch.uint8)
        else:
            parts[pname] = torch.frombuffer(bytearray(new), dtype=t.dtype) if new else torch.zeros(0, dtype=t.dtype)
    elif target == "meta":
        if isinstance(meta, dict) and meta and data.draw(st.booleans()):
            meta = dict(meta)
            meta[data.draw(st.sampled_from(sorted(meta)))] = data.draw(JSON)
        else:
            meta = data.draw(JSON)
    else:
        action = data.draw(st.sampled_from(["drop", "dtype", "2d", "rename"]))
        pname = data.draw(st.sampled_from(sorted(parts)))
        if action == "drop":
            del parts[pname]
        elif action == "dtype":
            parts[pname] = parts[pname].to(data.draw(st.sampled_from([torch.float32, torch.int64, torch.bool])))
        elif action == "2d":
            parts[pname] = parts[pname].reshape(1, -1)
        else:
            parts[pname + "x"] = parts.pop(pname)
    _decode_bounded(name, params, parts, meta)


def test_the_fuzz_covers_every_registered_codec():
    from benchmark.registry import CODECS

    builtin = {p.name for p in CODECS.plugins() if p.obj.__module__.startswith("methods.codecs.")}
    assert builtin == {name for name, *_ in SAMPLES.values()}


def test_a_tiny_stream_that_declares_a_huge_mask_is_refused_before_allocating():
    """The issue's 24-byte entropy stream: one module of 2**28 entries, all zero, Golomb-coded in 5 bytes."""
    head = bytearray(b"ENTC") + bytes([1, 0, 1, 1, 1]) + bytes([0x80, 0x80, 0x80, 0x80, 0x01]) + bytes([5])
    body = bytes(head) + bytes([0, 2, 0, 0, 0])
    stream = body + (zlib.crc32(body) & 0xFFFFFFFF).to_bytes(4, "little")
    assert len(stream) <= 24
    parts = {"stream": torch.frombuffer(bytearray(stream), dtype=torch.uint8)}
    tracemalloc.start()
    with decode_budget(BUDGET), pytest.raises(StorageError, match="decode limit"):
        get_codec("entropy").decode(parts, {"single": True})
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < PEAK


def _container(tmp_path: Path) -> tuple[dict, dict]:
    arts = Artifacts()
    arts.add("tv", {"w": torch.randn(6, 4)}, codec="state_dict")
    arts.add("mask", torch.rand(30) > 0.5, codec="bitmask")
    arts.add("coef", {"lam": [0.3]}, codec="json")
    arts.add("sw", {"a": _sc((16, 8), 0.2, 1, 9)}, codec="packbits", zstd=True)
    w = write_artifacts(arts, tmp_path / "base.safetensors")
    from safetensors import safe_open

    with safe_open(str(w.path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, json.loads(f.metadata()["merge_bench"])


def _set_path(obj, data: st.DataObject):
    """Replace one value somewhere inside a JSON object (a random walk down from the root)."""
    if not isinstance(obj, (dict, list)) or not obj or data.draw(st.integers(0, 3)) == 0:
        return data.draw(JSON)
    if isinstance(obj, dict):
        k = data.draw(st.sampled_from(sorted(obj)))
        return {**obj, k: _set_path(obj[k], data)}
    i = data.draw(st.integers(0, len(obj) - 1))
    return obj[:i] + [_set_path(obj[i], data)] + obj[i + 1:]


@FUZZ
@given(data=st.data())
def test_fuzzed_container_raises_storage_error_only(tmp_path_factory, data):
    from safetensors.torch import save_file

    tmp = tmp_path_factory.mktemp("fuzz", numbered=True)
    tensors, index = _CONTAINER
    path = tmp / "a.safetensors"
    if data.draw(st.booleans()):  # damage the index's structure and types
        save_file(tensors, str(path), metadata={"merge_bench": json.dumps(_set_path(index, data))})
    else:  # damage the file's bytes (the safetensors header, the index text, the data)
        save_file(tensors, str(path), metadata={"merge_bench": json.dumps(index)})
        raw = path.read_bytes()
        path.write_bytes(_mutate_bytes(data, raw, crc=False))
    tracemalloc.start()
    try:
        read_artifacts(path, max_bytes=BUDGET)
    except StorageError:
        pass
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak <= PEAK


_CONTAINER: tuple[dict, dict]


@pytest.fixture(scope="module", autouse=True)
def _container_sample(tmp_path_factory):
    global _CONTAINER
    _CONTAINER = _container(tmp_path_factory.mktemp("container"))


# ------------------------------------------------------------------------------------------------ orphans


def _descendants(pid: int) -> set[int]:
    kids: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                status = (d / "status").read_text()
            except OSError:
                continue
            kids[int(d.name)] = int(next(ln.split()[1] for ln in status.splitlines() if ln.startswith("PPid:")))
    out, frontier = set(), {pid}
    while frontier:
        frontier = {c for c, p in kids.items() if p in frontier} - out
        out |= frontier
    return out


def _alive(pids: set[int]) -> set[int]:
    out = set()
    for p in pids:
        try:
            if "State:\tZ" not in Path(f"/proc/{p}/status").read_text():
                out.add(p)
        except OSError:
            pass
    return out


def _wait_gone(pids: set[int], seconds: float) -> set[int]:
    deadline = time.monotonic() + seconds
    alive = _alive(pids)
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = _alive(pids)
    return alive


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
def test_a_sigkilled_sweep_jobs_2_leaves_no_worker_after_5_seconds(tmp_path):
    res = tmp_path / "results"
    f = tmp_path / "slow.yaml"
    f.write_text("plugins: [_fake_plugins]\nbackbones: fake_sweep_backbone\n"
                 "methods: {fake_sweep_merge: {lam: [0.1, 0.2, 0.3], sleep: 30.0}}\n")
    proc = subprocess.Popen([sys.executable, "-m", "benchmark", "sweep", str(f), "--results-dir", str(res),
                             "--no-leaderboard", "--no-progress", "--jobs", "2"], cwd=REPO, env=env_with_tests(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    workers: set[int] = set()
    while time.monotonic() < deadline and len(workers) < 3:  # the fork server and two runs
        workers = _descendants(proc.pid)
        time.sleep(0.1)
    assert len(workers) >= 3, workers
    time.sleep(0.5)  # the runs are inside their merge now
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    alive = _wait_gone(workers, 5.0)
    assert not alive, f"still running 5 s after the sweep was SIGKILLed: {sorted(alive)}"
    assert not list(res.glob("[!.]*.json"))


@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="Linux pidfd")
def test_a_run_dies_with_the_sweep_even_when_its_own_parent_outlives_it():
    """A run whose parent is not the sweep (the fork server's case) still dies within seconds of the sweep:
    :func:`benchmark.executors.die_with` watches the sweep's pid itself."""
    watcher = ("import sys, time; from benchmark.executors import die_with; die_with(int(sys.argv[1])); "
               "print('watching', flush=True); time.sleep(60)")
    sweep = ("import subprocess, sys, time, os; "
             f"p = subprocess.Popen([sys.executable, '-c', {watcher!r}, str(os.getpid())], start_new_session=True, "
             "stdout=subprocess.PIPE, text=True); print(p.pid, flush=True); p.stdout.readline(); "
             "print('ready', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", sweep], cwd=REPO, env=env_with_tests(), stdout=subprocess.PIPE,
                            text=True)
    run_pid = int(proc.stdout.readline())
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not _wait_gone({run_pid}, 5.0), "the run outlived its sweep"
