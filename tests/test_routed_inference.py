"""Routed inference (issue 17): the fused switch build, the runner's routed step (groups, one-hot cache, reused
buffer), per-image summaries of per-query features, and routing on an early layer."""
from __future__ import annotations

import pytest
import torch

from benchmark.contract import Pool, RoutedModel
from benchmark.routing import RoutedInference, knn_route, one_hot_index, routing_features
from methods import _switch as sw
from methods.auto_switch import AutoSwitch, knn_weights
from benchmark.registry import METHODS

TASKS = ["a", "b", "c"]
SHAPES = {"enc.w": (40, 30), "enc.b": (30,), "conv.w": (4, 3, 5), "scale": ()}


def _bank(seed: int = 0) -> sw.SwitchBank:
    g = torch.Generator().manual_seed(seed)
    pre = {k: torch.randn(s, generator=g) for k, s in SHAPES.items()}
    arts = {}
    for t in TASKS:
        tau = {k: torch.randn(s, generator=g) * 0.01 for k, s in SHAPES.items()}
        arts[f"switch/{t}"], arts[f"knobs/{t}"] = sw.task_switch(tau, 0.6)
    return sw.SwitchBank(arts, pre, TASKS)


def _task_by_task(bank: sw.SwitchBank, coeffs) -> dict[str, torch.Tensor]:
    """The unfused build, written out here: theta + (c_k beta_k) A_k ⊙ P_k added one task at a time in float32."""
    out = {}
    for key, base in bank.pretrained.items():
        acc = base.clone()
        for t, c in zip(TASKS, coeffs):
            if c:
                beta = torch.tensor(c * bank.knobs[t][key], dtype=torch.float32)
                acc = acc + beta * bank.signs[t][key].to(torch.float32)
        out[key] = acc
    return out


ROWS = ([1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.7, 0.2, 0.1], [0.3, 0.0, 0.7], [0.0, 0.0, 0.0], [0.1, 0.8, 0.1])


@pytest.mark.parametrize("chunk", [sw.BUILD_CHUNK, 7])  # 7: modules end mid-chunk and span several
def test_fused_build_is_bit_identical_to_the_task_by_task_sum_and_reuses_its_buffer(chunk, monkeypatch):
    monkeypatch.setattr(sw, "BUILD_CHUNK", chunk)
    bank = _bank()
    buf = bank.weights([0.5, 0.5, 0.0])
    ptrs = {k: v.data_ptr() for k, v in buf.items()}
    for coeffs in ROWS:
        expect = _task_by_task(bank, coeffs)
        fresh = bank.weights(coeffs)
        again = bank.weights(coeffs, buf)
        assert again is buf and {k: v.data_ptr() for k, v in again.items()} == ptrs
        for k in expect:
            assert torch.equal(fresh[k], expect[k]) and torch.equal(again[k], expect[k]), (coeffs, k)
    # a fresh build never aliases theta: writing into it leaves the pretrained weights alone
    w = bank.weights([0.0, 0.0, 0.0])
    before = {k: v.clone() for k, v in bank.pretrained.items()}
    for v in w.values():
        v.add_(1.0)
    assert all(torch.equal(bank.pretrained[k], before[k]) for k in before)


def test_one_hot_index():
    assert one_hot_index(torch.tensor([0.0, 1.0, 0.0])) == 1
    assert one_hot_index(torch.tensor([1.0])) == 0
    for row in ([0.0, 0.5, 0.5], [0.0, 0.0, 0.0], [0.0, 2.0, 0.0], [1.0, 1.0, 0.0]):
        assert one_hot_index(torch.tensor(row)) is None


class _Logged(RoutedModel):
    """Features are the rows themselves; every build is logged with whether it got a buffer."""

    def __init__(self):
        self.log = []

    def route(self, features):
        return features

    def weights(self, mix):
        return {"w": mix.clone()}

    def build(self, mix, out=None):
        self.log.append((mix.tolist(), out is not None))
        if out is None:
            return {"w": mix.clone()}
        out["w"].copy_(mix)
        return out


class _IdentityOps:
    def features(self, weights, inputs):
        return inputs


def test_groups_one_hot_cache_and_mixed_buffer():
    model = _Logged()
    ri = RoutedInference(model, _IdentityOps(), cache_size=1)
    x = torch.tensor([[1.0, 0.0], [0.5, 0.5], [1.0, 0.0], [0.5, 0.5], [0.25, 0.75]])
    mix = ri.route(x)
    groups = ri.groups(mix)
    assert [r.tolist() for r, _ in groups] == [[0.25, 0.75], [0.5, 0.5], [1.0, 0.0]]  # torch.unique's order
    assert [i.tolist() for _, i in groups] == [[4], [1, 3], [0, 2]]
    seen = [ri.weights(r) for r, _ in groups]
    assert seen[0] is seen[1] and torch.equal(seen[1]["w"], torch.tensor([0.5, 0.5]))  # one buffer, overwritten
    assert model.log == [([0.25, 0.75], False), ([0.5, 0.5], True), ([1.0, 0.0], False)]
    assert ri.weights(torch.tensor([1.0, 0.0])) is seen[2] and (ri.builds, ri.cache_hits) == (3, 1)
    ri.weights(torch.tensor([0.0, 1.0]))  # evicts task 0 (cache_size 1) ...
    ri.weights(torch.tensor([1.0, 0.0]))  # ... which is then built again
    assert (ri.builds, ri.cache_hits) == (5, 1) and list(ri.cache) == [0]


# ----------------------------------------------------------------------------------------------------------------
# Auto-Switch: per-query summaries and routing depth


class _QueryOps:
    """Inputs are per-query features already (``[B, Q, e]``); f_ex is the identity of the pretrained model."""

    def __init__(self, rows):
        self.rows = rows

    def exemplars(self, task, n, seed):
        return self.rows[task][:n]

    def features(self, weights, inputs):
        assert weights is None
        return inputs.clone()

    def num_examples(self, inputs):
        return inputs.shape[0]

    def slice(self, inputs, index):
        return inputs[index]


def _query_pool():
    g = torch.Generator().manual_seed(3)
    pre = {k: torch.randn(s, generator=g) for k, s in SHAPES.items()}
    ft = {t: {k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in pre.items()} for t in TASKS}
    # task t's images: two queries at (10 i + j - 1, 0) and (10 i + j + 1, 0), j = 0..3: per-image mean 10 i + j
    rows = {t: torch.tensor([[[10.0 * i + j - 1, 0.0], [10.0 * i + j + 1, 0.0]] for j in range(4)])
            for i, t in enumerate(TASKS)}
    return Pool(tasks=TASKS, pretrained=pre, finetuned=ft, ops=_QueryOps(rows), seed=0)


def _auto(pool, **over):
    m = AutoSwitch(**METHODS.get("auto_switch").resolve({"n_exemplars": 4, **over}))
    arts = m.merge(pool)
    return arts, m.load({k: a.value for k, a in arts.items()}, pool.pretrained, pool.tasks)


def test_per_query_features_are_summarized_per_image_by_default():
    pool = _query_pool()
    arts, model = _auto(pool, neighbours=3)
    q = arts["queries"].value
    assert q.shape == (12, 2) and torch.equal(q[:, 0], torch.tensor([0.0, 1, 2, 3, 10, 11, 12, 13, 20, 21, 22, 23]))
    # an image whose queries average 7.4: nearest means 10 (2.6), 11 (3.6), 3 (4.4) -> 1 of a, 2 of b: it takes b;
    # one whose queries average 4.9: 3 (1.9), 2 (2.9), 1 (3.9) -> all of a
    img = torch.tensor([[[2.4, 0.0], [12.4, 0.0]], [[-0.1, 0.0], [9.9, 0.0]]])
    assert model.route(img).tolist() == [[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]
    with pytest.raises(ValueError, match="queries"):
        knn_route(img, q, arts["query_labels"].value.long(), 3, 3, queries="max")
    # the paper's protocol stores every query and takes the majority vote per image
    arts_all, model_all = _auto(pool, neighbours=3, query_summary="all")
    assert arts_all["queries"].value.shape == (24, 2)
    assert model_all.route(img).tolist() == knn_weights(img, arts_all["queries"].value,
                                                        arts_all["query_labels"].value.long(), 3, 3).tolist()
    assert arts["queries"].value.numel() * 2 == arts_all["queries"].value.numel()


class _EarlyOps(_QueryOps):
    """Flat features ``[B, e]``; ``early_features`` at depth d is the first d coordinates scaled by 100."""

    def early_features(self, weights, inputs, depth):
        assert weights is None
        return 100.0 * inputs[:, :depth]


def test_route_depth_routes_queries_and_tests_on_the_early_features():
    g = torch.Generator().manual_seed(4)
    pool = _query_pool()
    rows = {t: torch.randn(6, 5, generator=g) + 3 * i for i, t in enumerate(TASKS)}
    pool.ops = _EarlyOps(rows)
    arts, model = _auto(pool, route_depth=2, neighbours=3)
    q, labels = arts["queries"].value, arts["query_labels"].value.long()
    assert torch.equal(q, torch.cat([100.0 * rows[t][:4, :2] for t in TASKS]))
    assert model.routing_depth == 2
    x = torch.randn(7, 5, generator=g) + 3
    ri = RoutedInference(model, pool.ops)
    assert torch.equal(ri.route(x), knn_route(100.0 * x[:, :2], q, labels, 3, 3))
    assert _auto(pool, route_depth=0)[1].routing_depth is None


def test_route_depth_needs_early_features_and_fails_before_the_switches():
    pool = _query_pool()  # _QueryOps has no early_features
    calls = []
    orig = pool.task_vector
    pool.task_vector = lambda t: calls.append(t) or orig(t)
    with pytest.raises(ValueError, match="early_features"):
        _auto(pool, route_depth=1)
    assert calls == []
    with pytest.raises(ValueError, match="early_features"):
        routing_features(pool.ops, None, torch.zeros(1, 2, 2), 1)
