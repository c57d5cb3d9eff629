"""The method contract, checked on every registered method: registering a method is enough to have it tested.

For each method: its declared defaults are valid and listed by ``python -m benchmark list``; it runs through the
runner on the micro profile (clip_vit_b32) and its record has every stable key; the model ``load`` returns is of
the declared kind; every artifact written by a lossless codec reads back bit-exactly; and a second, independent
merge under the same seed gives the same storage bytes and the same scores as the record. A deliberately broken
toy method (declared static, loads a task-conditioned model) fails with a message naming it.

Micro runs cut the long training loops of a few methods (``MICRO``); the defaults are still checked to be valid.
"""
from __future__ import annotations

import dataclasses
import io
import re
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any, Mapping

import pytest
import torch

from benchmark.contract import Artifacts, Method, Pool, StaticModel, TaskConditionedModel
from benchmark.records import REQUIRED_KEYS
from benchmark.registry import METHODS
from benchmark.runner import RunSpec, check_kind, evaluate, make_backbone, resolve, run
from benchmark.storage import get_codec, read_artifacts, write_artifacts

BACKBONE = "clip_vit_b32"
#: micro-run settings that shorten training loops (steps, epochs, exemplar counts); nothing else changes
MICRO: dict[str, dict[str, Any]] = {
    "adamerging": {"steps": 2, "adapt_examples": 16},
    "adamerging_pp": {"steps": 2, "adapt_examples": 16},
    "fisher": {"n_exemplars": 4},
    "regmean": {"n_exemplars": 16},
    "flexswitch": {"steps": 2, "n_exemplars": 8},
    "auto_flexswitch": {"steps": 2, "n_exemplars": 8, "metric_epochs": 2, "centres": 4},
    "twin": {"router_examples": 16, "router_epochs": 2},
    "auto_switch": {"n_exemplars": 8},
}


def _registered() -> list[str]:
    """Every registered method (in-repo and entry points), not the test plugins other test modules register."""
    return [p.name for p in METHODS.plugins() if not p.obj.__module__.startswith(("_", "test_"))]


NAMES = _registered()


def same(a: Any, b: Any, ordered: bool = True) -> bool:
    """Bit-exact equality of reloaded artifact values (tensors: dtype, shape and every bit)."""
    if isinstance(a, torch.Tensor):
        def bits(t: torch.Tensor) -> torch.Tensor:  # floats as their bytes: -0.0 != 0.0, NaN == same NaN
            return t.reshape(-1).contiguous().view(torch.uint8) if t.dtype.is_floating_point else t
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and bool(
            torch.equal(bits(a), bits(b)))
    if dataclasses.is_dataclass(a) and not isinstance(a, type):
        return type(a) is type(b) and all(same(getattr(a, f.name), getattr(b, f.name), ordered)
                                          for f in dataclasses.fields(a))
    if isinstance(a, Mapping):  # keys in the same order too (state dicts, switches), except JSON's sorted objects
        return (isinstance(b, Mapping) and (list(a) == list(b) or (ordered is False and set(a) == set(b)))
                and all(same(a[k], b[k], ordered) for k in a))
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(same(x, y, ordered) for x, y in zip(a, b))
    return a == b


@pytest.fixture(scope="session")
def micro(cache_root):
    """The micro backbone and its pool, built once (as the runner builds them)."""
    res = resolve(RunSpec(method="pretrained", backbone=BACKBONE, profile="micro", cache_root=str(cache_root),
                          progress=False))
    from benchmark.cache import Cache

    bb = make_backbone(res, Cache(str(cache_root)))
    bb.prepare()
    pool = Pool(tasks=bb.tasks, pretrained=bb.pretrained_state(),
                finetuned={t: bb.finetuned_state(t) for t in bb.tasks}, ops=bb.ops(), seed=0, progress=False)
    return bb, pool


@pytest.fixture(scope="session")
def listing() -> str:
    from benchmark.__main__ import main

    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["list", "methods"]) == 0
    return out.getvalue()


def test_every_shipped_method_is_covered():
    assert len(NAMES) >= 16 and {"regmean", "auto_switch", "twin", "flexswitch", "pretrained"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_defaults_are_valid_and_listed(name, listing):
    plugin = METHODS.get(name)
    params = plugin.resolve({})
    assert params == {p.name: p.default for p in plugin.params}
    # the method's block of `list methods`: its line, then its paper and one `--set` line per parameter
    block = re.split(r"\n  (?=\S)|\n\n", listing.split(f"\n  {name} [", 1)[1], maxsplit=1)[0]
    for p in plugin.params:
        assert f"--set {p.describe()}" in block, (name, p.name)
        assert p.help, f"{name}: parameter {p.name} has no help text"
    assert issubclass(plugin.obj, Method) and plugin.obj.kind in ("static", "task_conditioned", "routed")


@pytest.mark.parametrize("name", NAMES)
def test_method_honours_the_contract(name, micro, cache_root, tmp_path):
    bb, pool = micro
    over = MICRO.get(name, {})
    rec, path = run(RunSpec(method=name, backbone=BACKBONE, profile="micro", overrides=over,
                            results_dir=str(tmp_path / "results"), cache_root=str(cache_root), progress=False))
    assert path.exists() and set(REQUIRED_KEYS) <= set(rec), sorted(set(REQUIRED_KEYS) - set(rec))
    assert set(rec["metrics"]) == set(bb.tasks) and rec["method"] == name
    plugin = METHODS.get(name)
    method = plugin.obj(**plugin.resolve(over))
    assert rec["method_kind"] == ("reference" if method.reference else method.kind)

    # an independent merge under the same seed, as the runner seeds it
    torch.manual_seed(0)
    arts = method.merge(pool)
    assert isinstance(arts, Artifacts)
    if arts:
        written = write_artifacts(arts, tmp_path / "again.safetensors")
        reloaded = read_artifacts(written.path)
        assert written.total_bytes == rec["storage_bytes"] == written.path.stat().st_size
        for key, art in arts.items():  # lossless codecs give back every bit
            if get_codec(art.codec, art.codec_params).lossless:
                assert same(art.value, reloaded[key], ordered=art.codec != "json"), f"{name}: artifact {key!r} ({art.codec}) did not round-trip"
    else:
        reloaded = {}
        assert rec["storage_bytes"] == 0
    merged = method.load(reloaded, pool.pretrained, pool.tasks)
    check_kind(name, method, merged)  # the declared kind is the kind of model load returns
    assert evaluate(bb, merged, 256, False)["metrics"] == rec["metrics"], f"{name}: same seed, other scores"


class _WrongKind(Method):
    kind = "static"  # but load returns a task-conditioned model

    def merge(self, pool):
        arts = Artifacts()
        arts.add("ft", pool.finetuned[pool.tasks[0]], codec="state_dict")
        return arts

    def load(self, artifacts, pretrained, tasks):
        ft = artifacts["ft"]

        class PerTask(TaskConditionedModel):
            def weights(self, task):
                return ft

        return PerTask()


def test_a_method_of_the_wrong_kind_fails_with_a_clear_message(tmp_path, cache_root):
    METHODS.register("test_wrong_kind", summary="test: declares static, loads task-conditioned")(_WrongKind)
    try:
        with pytest.raises(TypeError, match=r"method 'test_wrong_kind' declares kind 'static' but its load returned "
                                            r"PerTask \(kind 'task_conditioned'\)"):
            run(RunSpec(method="test_wrong_kind", backbone=BACKBONE, profile="micro", results_dir=str(tmp_path),
                        cache_root=str(cache_root), progress=False))
        assert not list(Path(tmp_path).glob("*.json"))  # no record for a broken method
    finally:
        METHODS.unregister("test_wrong_kind")
    assert "test_wrong_kind" not in METHODS


def test_the_registry_refuses_a_plugin_that_is_not_a_method():
    from benchmark.registry import RegistryError

    class NotAMethod:
        kind = "static"

    with pytest.raises(RegistryError, match=r"^method 'test_not_a_method': NotAMethod does not subclass "
                                            r"benchmark\.contract\.Method$"):
        METHODS.register("test_not_a_method", summary="test")(NotAMethod)

    class BadKind(Method):
        kind = "dynamic"

        def merge(self, pool):
            return Artifacts()

        def load(self, artifacts, pretrained, tasks):
            return StaticModel(pretrained)

    with pytest.raises(RegistryError, match=r"kind 'dynamic' is not one of static, task_conditioned, routed"):
        METHODS.register("test_bad_kind", summary="test")(BadKind)
    assert "test_not_a_method" not in METHODS and "test_bad_kind" not in METHODS


def test_pool_exemplar_seed_is_one_rule_for_every_method(micro):
    """The rule reproduces the committed draws: seed * 1009 + task position + 7919 * salt."""
    _, pool = micro
    p3 = dataclasses.replace(pool, seed=3)
    for ti, t in enumerate(pool.tasks):
        assert p3.exemplar_seed(t) == 3 * 1009 + ti
        assert p3.exemplar_seed(t, salt=5) == 3 * 1009 + ti + 7919 * 5
    t = pool.tasks[1]
    x = p3.exemplars(t, 6, salt=3)
    assert torch.equal(x, pool.ops.exemplars(t, 6, 3 * 1009 + 1 + 7919 * 3))
    assert torch.equal(p3.exemplars(t, None, split="test", salt=3), pool.ops.test_inputs(t, None, 3 * 1009 + 1 + 3 * 7919))
    with pytest.raises(ValueError, match="unknown split 'val'; valid: train, test"):
        p3.exemplars(t, 4, split="val")
    assert [pool.ops.num_examples(b) for b in pool.batches(x, 4)] == [4, 2]
