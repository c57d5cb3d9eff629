"""The vision8 suite: generated tiny/micro tasks (deterministic, right shapes and label ranges, disjoint splits,
cached once), the Accuracy metric, and the paper branch's routing to the real loader."""
from __future__ import annotations

import hashlib

import pytest
import torch

from benchmark.cache import Cache
from benchmark.errors import UserError
from benchmark.registry import SUITES
from tasks import vision8 as v8
from tasks.metrics import Accuracy


@pytest.fixture(scope="session")
def micro_suite(cache_root):
    suite = SUITES.get("vision8").obj(profile="micro", seed=0, cache=Cache(cache_root), progress=False)
    suite.prepare()
    return suite


def test_registered_with_paper_and_tiny_tasks():
    plugin = SUITES.get("vision8")
    assert plugin.summary
    assert plugin.obj(profile="paper").tasks == [
        "sun397", "stanford-cars", "resisc45", "eurosat", "svhn", "gtsrb", "mnist", "dtd"
    ]
    tiny = plugin.obj(profile="tiny").tasks
    assert tiny == v8.TINY_TASKS and len(set(tiny)) == 8
    assert plugin.obj(profile="micro").tasks == tiny


def test_shapes_labels_and_classes(micro_suite):
    sizes = v8.PROFILE_SIZES["micro"]
    n_classes = set()
    for task in micro_suite.tasks:
        for split in v8.SPLITS:
            d = micro_suite.load(task, split)
            s = sizes["image_size"]
            assert d.inputs.dtype == torch.uint8 and tuple(d.inputs.shape) == (sizes[split], 3, s, s)
            assert d.targets.dtype == torch.long and d.targets.shape == (sizes[split],)
            assert d.classes and len(set(d.classes)) == len(d.classes)
            assert int(d.targets.min()) >= 0 and int(d.targets.max()) < len(d.classes)
            assert d.inputs.float().std() > 5  # not blank
        train = micro_suite.load(task, "train")
        assert set(train.targets.tolist()) == set(range(len(train.classes)))  # every class is trained on
        n_classes.add(len(train.classes))
    assert len(n_classes) >= 4  # different label spaces


def _row_hashes(x: torch.Tensor) -> set[str]:
    return {hashlib.sha1(r.numpy().tobytes()).hexdigest() for r in x}


def test_splits_are_disjoint(micro_suite):
    for task in micro_suite.tasks:
        h = {s: _row_hashes(micro_suite.load(task, s).inputs) for s in v8.SPLITS}
        assert not h["train"] & h["test"] and not h["train"] & h["val"] and not h["val"] & h["test"], task


def test_source_digits_are_disjoint_across_splits():
    pools = {s: set(v8._digit_pool_indices(0, s).tolist()) for s in v8.SPLITS}
    assert not pools["train"] & pools["test"] and not pools["train"] & pools["val"] and not pools["val"] & pools["test"]
    assert sum(map(len, pools.values())) == len(v8._sk_digits()[1])
    for s in v8.SPLITS:  # every digit occurs in every pool
        assert set(v8._digit_pool(0, s)[1].tolist()) == set(range(10))


def test_generation_is_deterministic_and_seeded():
    for task in v8.TINY_TASKS:
        a = v8.generate_task(task, "train", 20, 16, seed=3)
        b = v8.generate_task(task, "train", 20, 16, seed=3)
        c = v8.generate_task(task, "train", 20, 16, seed=4)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        assert not torch.equal(a[0], c[0])


def test_load_matches_the_generator(micro_suite):
    sizes = v8.PROFILE_SIZES["micro"]
    x, y, cls = v8.generate_task("signs", "val", sizes["val"], sizes["image_size"], 0)
    d = micro_suite.load("signs", "val")
    assert torch.equal(d.inputs, x) and torch.equal(d.targets, y) and d.classes == cls


def test_cache_is_reused(micro_suite, monkeypatch):
    first = micro_suite.prepare()

    def boom(*a, **k):
        raise AssertionError("generated again")

    monkeypatch.setattr(v8, "generate_task", boom)
    again = SUITES.get("vision8").obj(profile="micro", seed=0, cache=micro_suite.cache, progress=False)
    assert again.prepare() == first
    assert (first / ".complete").exists()


def test_bad_task_and_split(micro_suite):
    with pytest.raises(UserError, match="valid"):
        micro_suite.load("mnist", "train")
    with pytest.raises(UserError, match="valid"):
        micro_suite.load("digits", "dev")
    with pytest.raises(UserError):
        SUITES.get("vision8").obj(profile="huge")


def test_metric_is_streaming_accuracy(micro_suite):
    m = micro_suite.metric("digits")
    assert isinstance(m, Accuracy) and m.name == "accuracy"
    assert m.compute() == 0.0
    m.update(torch.tensor([[0.9, 0.1], [0.2, 0.8]]), torch.tensor([0, 0]))
    m.update(torch.tensor([1, 1]), torch.tensor([1, 1]))
    assert m.compute() == pytest.approx(75.0)


def test_paper_profile_uses_the_real_loader(monkeypatch):
    from benchmark.contract import TaskData
    from tasks import vision_paper

    calls = []

    def fake(task, split, *, data_root=None):
        calls.append((task, split, data_root))
        return TaskData(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), torch.tensor([0, 1]), ["a", "b"])

    monkeypatch.setattr(vision_paper, "load_paper_task", fake)
    suite = SUITES.get("vision8").obj(profile="paper", data_root="/data")
    assert suite.load("dtd", "test").classes == ["a", "b"]
    assert suite.classnames("mnist") == ["a", "b"]
    assert suite.prepare() is None
    assert calls == [("dtd", "test", "/data"), ("mnist", "train", "/data")]
