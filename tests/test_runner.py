"""The runner end to end on a toy backbone: records, measured storage, evaluation of what was reloaded."""
from __future__ import annotations

import json
import sys

import pytest
import torch

import _toy_backbone  # noqa: F401  (registers toy_linear / toy_blobs)
from benchmark.contract import Artifacts, Method, RoutedModel, StaticModel
from benchmark.records import REQUIRED_KEYS
from benchmark.registry import METHODS, Param
from benchmark.runner import RunSpec, run

if "test_lossy_average" not in METHODS:

    @METHODS.register("test_lossy_average", summary="test: average stored at a chosen dtype",
                      params=[Param("dtype", str, "natural", choices=("natural", "float16", "bfloat16"))])
    class LossyAverage(Method):
        def merge(self, pool):
            avg = {k: sum(pool.finetuned[t][k] for t in pool.tasks) / len(pool.tasks) for k in pool.pretrained}
            arts = Artifacts()
            arts.add("merged", avg, codec="state_dict", dtype=self.params["dtype"])
            self.kept = avg
            return arts

        def load(self, artifacts, pretrained, tasks):
            return StaticModel(artifacts["merged"])

    class _Oracle(RoutedModel):
        def __init__(self, ft, tasks):
            self.ft, self.tasks = ft, list(tasks)

        def route(self, features):  # the toy blobs are far apart: the nearest task mean is the true task
            d = torch.stack([(features - m).norm(dim=1) for m in self.means], 1)
            return torch.nn.functional.one_hot(d.argmin(1), len(self.tasks)).float()

        def weights(self, mix):
            return self.ft[self.tasks[int(mix.argmax())]]

    @METHODS.register("test_oracle_router", summary="test: routes by nearest task mean")
    class OracleRouter(Method):
        kind = "routed"

        def merge(self, pool):
            arts = Artifacts()
            for t in pool.tasks:
                arts.add(f"ft/{t}", pool.finetuned[t], codec="state_dict")
            arts.add("means", torch.stack([pool.ops.data[t].mean(0) for t in pool.tasks]), codec="tensor")
            return arts

        def load(self, artifacts, pretrained, tasks):
            m = _Oracle({t: artifacts[f"ft/{t}"] for t in tasks}, tasks)
            m.means = list(artifacts["means"])
            return m


def _run(tmp_path, method, **over):
    spec = RunSpec(method=method, backbone="toy_linear", results_dir=str(tmp_path / "results"),
                   cache_root=str(tmp_path / "cache"), progress=False, **over)
    return run(spec)


def test_record_has_every_key_and_measured_storage(tmp_path):
    rec, path = _run(tmp_path, "individual")
    assert set(REQUIRED_KEYS) <= set(rec)
    assert json.loads(path.read_text())["run_id"] == rec["run_id"]
    art = tmp_path / "cache" / "artifacts" / f"{rec['run_id']}.safetensors"
    assert rec["storage_bytes"] == art.stat().st_size
    assert sum(v["bytes"] for v in rec["storage_breakdown"].values()) == rec["storage_bytes"]
    assert rec["method_kind"] == "reference" and rec["average"] > 90


def test_pretrained_stores_nothing(tmp_path):
    rec, _ = _run(tmp_path, "pretrained")
    assert rec["storage_bytes"] == 0 and rec["storage_breakdown"] == {}


def test_the_reloaded_model_is_what_gets_evaluated(tmp_path):
    exact, _ = _run(tmp_path, "test_lossy_average")
    lossy, _ = _run(tmp_path, "test_lossy_average", overrides={"dtype": "bfloat16"})
    assert lossy["storage_bytes"] < exact["storage_bytes"]
    assert lossy["run_id"] != exact["run_id"] and lossy["params"] == {"dtype": "bfloat16"}


def test_routed_models_route_per_sample_and_record_routing_accuracy(tmp_path):
    rec, _ = _run(tmp_path, "test_oracle_router")
    assert rec["extra"]["routing_accuracy"]["AVG"] == 100.0
    assert rec["average"] > 90
    # one weight build per (batch, distinct routing row): 3 tasks x 1 batch each with batch_size 256
    assert rec["extra"]["weight_builds"] == 3
    assert rec["timings"]["inference_ratio"] > 0


def test_same_seed_same_metrics_and_val_split(tmp_path):
    a, _ = _run(tmp_path, "individual", eval_val=True)
    b, _ = _run(tmp_path, "individual", eval_val=True)
    assert a["metrics"] == b["metrics"] and a["run_id"] == b["run_id"]
    assert set(a["val_metrics"]) == set(a["metrics"])


# ----------------------------------------------------------------------------------------------------------------
# The reload guarantee: the evaluated model comes from the file the codec wrote, loaded by a fresh method instance

if "test_stash_on_self" not in METHODS:

    @METHODS.register("test_stash_on_self", summary="test: load reads what merge kept on the instance")
    class StashOnSelf(Method):
        def merge(self, pool):
            self.stash = {k: sum(pool.finetuned[t][k] for t in pool.tasks) / 3 for k in pool.pretrained}
            arts = Artifacts()
            arts.add("merged", self.stash, codec="state_dict")
            return arts

        def load(self, artifacts, pretrained, tasks):
            return StaticModel(self.stash)  # ignores the file: only works in the process that merged

    @METHODS.register("test_needs_in_memory_artifacts", summary="test: load reads the in-memory Artifact objects")
    class NeedsInMemory(Method):
        def merge(self, pool):
            arts = Artifacts()
            arts.add("merged", dict(pool.pretrained), codec="state_dict")
            return arts

        def load(self, artifacts, pretrained, tasks):
            return StaticModel(artifacts["merged"].value)  # an Artifacts entry, not what the codec decoded


def test_a_load_that_needs_the_merging_instance_fails_the_run(tmp_path):
    import pytest

    with pytest.raises(AttributeError, match="stash"):
        _run(tmp_path, "test_stash_on_self")
    assert not list((tmp_path / "results").glob("*.json"))  # and no record was written


def test_a_load_that_needs_the_in_memory_artifacts_fails_the_run(tmp_path):
    import pytest

    with pytest.raises(AttributeError, match="value"):
        _run(tmp_path, "test_needs_in_memory_artifacts")
    assert not list((tmp_path / "results").glob("*.json"))


def test_the_scores_are_those_of_what_was_read_back(tmp_path, monkeypatch):
    """Corrupting what the reader returns (not what merge made) changes the scores: no in-memory path remains."""
    import benchmark.runner as runner

    good, _ = _run(tmp_path / "a", "test_lossy_average")
    read = runner.read_artifacts

    def zeroed(path, **kw):
        back = read(path, **kw)
        back["merged"] = {k: torch.zeros_like(v) for k, v in back["merged"].items()}
        return back

    monkeypatch.setattr(runner, "read_artifacts", zeroed)
    bad, _ = _run(tmp_path / "b", "test_lossy_average")
    assert good["average"] > 40 and bad["average"] == 25.0  # zero weights: every logit ties, class 0, 1 in 4


def test_routed_records_carry_the_plain_knn_baseline(tmp_path):
    rec, _ = _run(tmp_path, "test_oracle_router")
    ab = rec["extra"]["routing_ablations"]
    assert set(ab) == {"plain_knn"} and set(ab["plain_knn"]) == {"t0", "t1", "t2", "AVG"}
    assert ab["plain_knn"]["AVG"] == 100.0  # the toy blobs are far apart: the plain KNN finds every task


def test_limit_heap_retention_sets_glibc_mmap_threshold():
    """The paper profile fixes glibc's mmap threshold (so freed model-sized temporaries leave the process); run in a
    child, since the setting is process-wide and would change this test process's allocator."""
    import subprocess
    import sys
    code = ("import ctypes, benchmark.runner as r; "
            "print(r.limit_heap_retention())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    glibc = sys.platform == "linux"
    assert out == (["True"] if glibc else ["False"])


_MMAP_PROBE = """
import ctypes, sys
import benchmark.runner as r
libc = ctypes.CDLL("libc.so.6")
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                "fsmblks", "uordblks", "fordblks", "keepcost")]
libc.mallinfo2.restype = Info
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
if sys.argv[1] == "limit":
    r.limit_heap_retention()
libc.free(libc.malloc(16 << 20))  # freeing a mapped chunk raises glibc's dynamic threshold to 16 MiB
before = libc.mallinfo2().hblkhd
block = libc.malloc(8 << 20)
print(libc.mallinfo2().hblkhd - before >= 8 << 20)  # was the 8 MiB block given its own mapping?
libc.free(block)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's allocator")
def test_limit_heap_retention_keeps_large_blocks_out_of_the_heap():
    """What the setting is for: after a model-sized chunk is freed, glibc alone serves the next large blocks from
    its heap (which keeps them when freed); with ``limit_heap_retention`` an 8 MiB block still gets a mapping of its
    own (``mallinfo2().hblkhd``, the bytes in mapped chunks), so freeing it returns it. Both in fresh children."""
    import subprocess

    def mapped(arg: str) -> str:
        return subprocess.run([sys.executable, "-c", _MMAP_PROBE, arg], capture_output=True, text=True,
                              check=True).stdout.strip()

    assert mapped("limit") == "True"
    assert mapped("glibc") == "False"  # the contrast: without the setting the block comes from the heap
