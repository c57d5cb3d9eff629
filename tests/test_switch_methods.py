"""T-Switch and Auto-Switch: P-Spar (Eq. 2), polarity (Eq. 4), knob (Eq. 3), KNN weights (Eq. 5), ties, storage
round trips with every switch codec, per-sample routing, determinism and parameter validation."""
from __future__ import annotations

import math

import pytest
import torch

import _toy_backbone  # noqa: F401  (registers toy_linear / toy_blobs)
from benchmark.contract import Pool
from benchmark.registry import METHODS, RegistryError
from benchmark.runner import RunSpec, run
from benchmark.storage import read_artifacts, write_artifacts
from methods import _switch as sw
from methods.auto_switch import knn_weights

CODECS = ("entropy", "sass", "packbits")


def _method(name, **over):
    plugin = METHODS.get(name)
    return plugin.obj(**plugin.resolve(over))


def _tau(shape, seed, zeros=0.1, ties=False):
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(shape, generator=g) * 0.01
    t[torch.rand(shape, generator=g) < zeros] = 0.0
    if ties:  # quantize to a few levels: many magnitudes tie at any threshold
        t = torch.round(t * 300) / 300
    return t


def _ref_mask(tau, alpha):
    """Independent P-Spar: per sign, a stable descending sort of magnitudes, keep the first round_half_up((1-a) n)."""
    flat = tau.reshape(-1)
    mask = torch.zeros(flat.numel(), dtype=torch.bool)
    for side in (flat > 0, flat < 0):
        idx = side.nonzero().flatten()
        k = int(math.floor((1 - alpha) * idx.numel() + 0.5))
        order = torch.sort(flat[idx].abs(), descending=True, stable=True).indices
        mask[idx[order[:k]]] = True
    return mask


class FakeOps:
    """Inputs are feature vectors already: f_ex is the identity (of the pretrained model only); exemplars are a
    seeded draw from hand-built per-task rows."""

    def __init__(self, rows):
        self.rows = rows

    def exemplars(self, task, n, seed):
        g = torch.Generator().manual_seed(seed)
        x = self.rows[task]
        return x[torch.randperm(x.shape[0], generator=g)[:n]]

    def features(self, weights, inputs):
        assert weights is None, "Auto-Switch's queries and routing use the pretrained model"
        return inputs.clone()

    def num_examples(self, inputs):
        return inputs.shape[0]

    def slice(self, inputs, index):
        return inputs[index]


SHAPES = {"enc.w": (12, 20), "enc.b": (12,), "conv.w": (7, 5, 3), "scale": ()}
LINE = {"a": [0, 1, 2, 3, 4], "b": [10, 11, 12, 13, 14], "c": [20, 21, 22, 23, 24]}


def _pool(seed=0, rows=None, ties=False):
    """Small random state dicts (with exact zeros in tau) and, for Auto-Switch, hand-built 2-D features on a line."""
    g = torch.Generator().manual_seed(100 + seed)
    tasks = list(LINE)
    pre = {k: torch.randn(s, generator=g) for k, s in SHAPES.items()}
    ft = {t: {k: pre[k] + _tau(s, 10 * i + j, ties=ties) for j, (k, s) in enumerate(SHAPES.items())}
          for i, t in enumerate(tasks)}
    rows = rows or {t: torch.tensor([[float(p), 0.0] for p in ps]) for t, ps in LINE.items()}
    return Pool(tasks=tasks, pretrained=pre, finetuned=ft, ops=FakeOps(rows), seed=seed)


def _beta(kept):
    """Eq. 3 computed here: ||kept||_2 / sqrt(|kept|) as float32 (0 for an empty mask)."""
    n = kept.numel()
    return torch.tensor(float(kept.double().norm() / math.sqrt(n)) if n else 0.0, dtype=torch.float32)


def _feat(*positions):
    return torch.tensor([[float(p), 0.0] for p in positions])


# ----------------------------------------------------------------------------------------------------------------
# Eq. 2-4


@pytest.mark.parametrize("alpha", [i / 10 for i in range(10)])
def test_p_spar_keeps_the_top_share_of_positive_and_of_negative_entries(alpha):
    tau = _tau((300, 7), 1)
    mask = sw.p_spar_mask(tau, alpha)
    flat = tau.reshape(-1)
    for side in (flat > 0, flat < 0):
        n, kept = int(side.sum()), mask[side]
        assert abs(int(kept.sum()) - (1 - alpha) * n) <= 0.5  # 1 - alpha of each side, up to rounding
        mag = flat[side].abs()
        if 0 < kept.sum() < n:  # every kept magnitude >= every dropped one
            assert mag[kept].min() >= mag[~kept].max()
    assert not mask[flat == 0].any()
    assert torch.equal(mask, _ref_mask(tau, alpha))


def test_ties_at_the_threshold_go_to_the_lowest_index_and_the_count_is_exact():
    tau = torch.tensor([1.0, 1.0, 2.0, 1.0, -1.0, 0.0, 1.0, -1.0, -1.0, 1.0])
    # positives: 2.0 at 2 and five 1.0s; keep round(0.5 * 6) = 3 -> index 2 and the first two 1.0s (0, 1)
    # negatives: three -1.0s at 4, 7, 8; keep round_half_up(1.5) = 2 -> 4 and 7
    mask = sw.p_spar_mask(tau, 0.5)
    assert mask.nonzero().flatten().tolist() == [0, 1, 2, 4, 7]
    tied = _tau((40, 50), 3, ties=True)
    for alpha in (0.3, 0.7):
        m = sw.p_spar_mask(tied, alpha)
        assert torch.equal(m, sw.p_spar_mask(tied.clone(), alpha)) and torch.equal(m, _ref_mask(tied, alpha))


def test_alpha_zero_gives_beta_times_sign_of_tau_exactly():
    """Eq. 2 with gamma+ > 0 > gamma-: zero entries are never active, so at alpha = 0 A = (tau != 0) and
    beta A ⊙ P = beta sign(tau) (sign(0) = 0); Eq. 4's P = -1 for tau <= 0 only ever applies to active entries."""
    pool = _pool()
    m = _method("t_switch", alpha=0.0)
    model = m.load({k: a.value for k, a in m.merge(pool).items()}, pool.pretrained, pool.tasks)
    for t in pool.tasks:
        w = model.weights(t)
        for k, pre in pool.pretrained.items():
            tau = pool.finetuned[t][k] - pre
            beta = _beta(tau[tau != 0])
            assert torch.equal(model.bank.vector(t, k), beta * torch.sign(tau))
            assert torch.equal(w[k], pre + beta * torch.sign(tau))


@pytest.mark.parametrize("alpha", [0.0, 0.5, 0.7, 0.9])
def test_knob_matches_the_l2_norm_of_the_kept_entries(alpha):
    tau = _tau((64, 33), 5)
    sc, beta = sw.module_switch(tau, alpha)
    kept = tau.reshape(-1)[sc.mask]
    assert torch.equal(sc.codes, (kept > 0).to(torch.uint8))  # Eq. 4: 1 = positive
    approx = beta * sw.signs(sc).double()
    assert math.isclose(approx.norm().item(), kept.double().norm().item(), rel_tol=1e-12)


def test_empty_module_has_no_active_entries_and_a_zero_knob():
    sc, beta = sw.module_switch(torch.zeros(5, 4), 0.3)
    assert sc.nnz == 0 and beta == 0.0 and torch.equal(sw.signs(sc), torch.zeros(5, 4, dtype=torch.int8))


def test_modules_larger_than_torch_quantile_limit():
    n = 2**24 + 3  # torch.quantile refused more than 2**24 elements in older releases; kthvalue has no limit
    tau = torch.randn(n, generator=torch.Generator().manual_seed(0))
    mask = sw.p_spar_mask(tau, 0.7)
    for side in (tau > 0, tau < 0):
        assert int(mask[side].sum()) == sw.keep_count(int(side.sum()), 0.7)


# ----------------------------------------------------------------------------------------------------------------
# Storage


@pytest.mark.parametrize("codec", CODECS)
def test_t_switch_storage_round_trip_is_bit_exact(codec, tmp_path):
    pool = _pool(ties=True)
    m = _method("t_switch", alpha=0.6, codec=codec)
    arts = m.merge(pool)
    written = write_artifacts(arts, tmp_path / "a.safetensors")
    back = read_artifacts(written.path)
    assert set(written.breakdown) == {f"{p}/{t}" for t in pool.tasks for p in ("switch", "knobs")} | {"container_overhead"}
    for t in pool.tasks:
        assert written.breakdown[f"switch/{t}"]["codec"] == codec
        assert list(back[f"switch/{t}"]) == list(pool.pretrained)  # module order kept: the knobs' order
        assert all(back[f"switch/{t}"][k].equal(c) for k, c in arts[f"switch/{t}"].value.items())
        assert back[f"knobs/{t}"].dtype == torch.float32 and torch.equal(back[f"knobs/{t}"], arts[f"knobs/{t}"].value)
    reloaded = m.load(back, pool.pretrained, pool.tasks)
    for t in pool.tasks:
        w = reloaded.weights(t)
        for k, pre in pool.pretrained.items():
            tau = pool.finetuned[t][k] - pre
            mask = _ref_mask(tau, 0.6).reshape(tau.shape)
            beta = _beta(tau[mask])
            assert torch.equal(w[k], pre + beta * torch.where(mask, torch.sign(tau), torch.zeros(())))


@pytest.mark.parametrize("codec", CODECS)
def test_auto_switch_storage_round_trip(codec, tmp_path):
    pool = _pool()
    out = {}
    for qd in ("float32", "float16"):
        m = _method("auto_switch", codec=codec, query_dtype=qd, n_exemplars=4)
        arts = m.merge(pool)
        written = write_artifacts(arts, tmp_path / f"{qd}.safetensors")
        back = read_artifacts(written.path)
        feats = arts["queries"].value
        assert feats.shape == (12, 2) and torch.equal(back["query_labels"], torch.tensor([0] * 4 + [1] * 4 + [2] * 4, dtype=torch.uint8))
        assert torch.equal(back["queries"], feats if qd == "float32" else feats.half().float())
        assert all(back[f"switch/{t}"][k].equal(c) for t in pool.tasks for k, c in arts[f"switch/{t}"].value.items())
        out[qd] = written.breakdown["queries"]["bytes"]
    assert out == {"float32": 12 * 2 * 4, "float16": 12 * 2 * 2}


# ----------------------------------------------------------------------------------------------------------------
# Eq. 5


def _auto(pool, **over):
    m = _method("auto_switch", **over)
    return m.load({k: a.value for k, a in m.merge(pool).items()}, pool.pretrained, pool.tasks)


def test_knn_weights_equal_eq5_on_hand_built_features():
    pool = _pool()
    # x = 6.2, C = 4: neighbours 4 (2.2), 3 (3.2), 10 (3.8), 2 (4.2) -> 3 of task a, 1 of b
    assert _auto(pool, neighbours=4).route(_feat(6.2)).tolist() == [[0.75, 0.25, 0.0]]
    # x = 17.1, C = 3: 20 (2.9), 14 (3.1), 21 (3.9)
    w = _auto(pool, neighbours=3).route(_feat(17.1))
    assert torch.allclose(w, torch.tensor([[0.0, 1 / 3, 2 / 3]]))
    # x = 12.4, C = 10: all of b (<= 2.4), then 20 (7.6), 4 (8.4), 21 (8.6), 3 (9.4), 22 (9.6)
    assert torch.allclose(_auto(pool, neighbours=10).route(_feat(12.4)), torch.tensor([[0.2, 0.5, 0.3]]))
    # C larger than the query set: every member votes
    assert torch.allclose(_auto(pool, neighbours=50).route(_feat(0.0)), torch.full((1, 3), 1 / 3))


def test_knn_weights_match_a_brute_force_count_on_random_features():
    g = torch.Generator().manual_seed(7)
    queries, labels = torch.randn(90, 6, generator=g), torch.arange(90) % 4
    x = torch.randn(33, 6, generator=g)
    w = knn_weights(x, queries, labels, 4, 7)
    d = ((x[:, None, :] - queries[None]) ** 2).sum(-1)
    near = d.argsort(dim=1)[:, :7]
    expect = torch.stack([torch.bincount(labels[r], minlength=4) for r in near]).float() / 7
    assert torch.equal(w, expect)
    # the same sample gets the same weights in any batch
    assert torch.equal(knn_weights(x[5:6], queries, labels, 4, 7), w[5:6])


def test_per_query_features_take_the_majority_task():
    queries, labels = _feat(0, 1, 10, 11), torch.tensor([0, 0, 1, 1])
    feats = torch.stack([_feat(0.5, 10.5, 1.2), _feat(10.2, 11.3, 0.1)])  # [B=2, Q=3, e]
    assert knn_weights(feats, queries, labels, 2, 1).tolist() == [[1.0, 0.0], [0.0, 1.0]]


def test_routing_is_per_sample_unless_batch_average():
    pool = _pool()
    batch = _feat(2.0, 12.4, 18.6)
    per = _auto(pool, neighbours=4).route(batch)
    assert len({tuple(r) for r in per.tolist()}) == 3
    assert [int(i) for i in per.argmax(1)] == [0, 1, 2]
    avg = _auto(pool, neighbours=4, batch_average=True).route(batch)
    assert torch.equal(avg, per.mean(0, keepdim=True).repeat(3, 1))


def test_routed_weights_are_the_weighted_sum_of_switches():
    pool = _pool()
    auto = _auto(pool, neighbours=4)
    tsw = _method("t_switch")
    tmodel = tsw.load({k: a.value for k, a in tsw.merge(pool).items()}, pool.pretrained, pool.tasks)
    for i, t in enumerate(pool.tasks):  # a one-hot row is T-Switch with the task id
        onehot = torch.nn.functional.one_hot(torch.tensor(i), 3).float()
        w, ref = auto.weights(onehot), tmodel.weights(t)
        assert all(torch.equal(w[k], ref[k]) for k in ref)
    mix = torch.tensor([0.75, 0.25, 0.0])
    w = auto.weights(mix)
    for k, pre in pool.pretrained.items():
        expect = pre + 0.75 * auto.bank.vector("a", k) + 0.25 * auto.bank.vector("b", k)
        assert torch.allclose(w[k], expect, atol=1e-7)


def test_deterministic_under_the_seed():
    rows = {t: torch.randn(30, 2, generator=torch.Generator().manual_seed(i)) for i, t in enumerate(LINE)}

    def queries(seed):
        arts = _method("auto_switch", n_exemplars=10).merge(_pool(seed=seed, rows=rows))
        return arts["queries"].value, arts["switch/a"].value

    (q1, s1), (q2, s2) = queries(0), queries(0)
    assert torch.equal(q1, q2) and all(s1[k].equal(s2[k]) for k in s1)
    assert not torch.equal(queries(1)[0], q1)  # another seed draws other exemplars


# ----------------------------------------------------------------------------------------------------------------
# Registry and runner


def test_parameters_are_declared_and_validated():
    assert METHODS.get("t_switch").resolve({}) == {"alpha": 0.7, "codec": "entropy"}
    assert METHODS.get("auto_switch").resolve({}) == {
        "alpha": 0.7, "codec": "entropy", "n_exemplars": 100, "neighbours": 10,
        "batch_average": False, "query_dtype": "float32", "query_summary": "mean", "route_depth": 0,
    }
    assert METHODS.get("auto_switch").resolve({"alpha": "0.3", "batch_average": "true"})["batch_average"] is True
    for name, bad in [
        ("t_switch", {"alpha": 1.5}), ("t_switch", {"alpha": -0.1}), ("t_switch", {"codec": "zip"}),
        ("t_switch", {"neighbours": 3}), ("auto_switch", {"neighbours": 0}), ("auto_switch", {"n_exemplars": 0}),
        ("auto_switch", {"query_dtype": "int8"}), ("auto_switch", {"batch_average": "maybe"}),
        ("auto_switch", {"query_summary": "max"}), ("auto_switch", {"route_depth": -1}),
    ]:
        with pytest.raises(RegistryError):
            METHODS.get(name).resolve(bad)
    assert METHODS.get("t_switch").obj.kind == "task_conditioned" and METHODS.get("auto_switch").obj.kind == "routed"


@pytest.mark.parametrize("method", ["t_switch", "auto_switch"])
def test_runner_records_switch_storage(method, tmp_path):
    spec = RunSpec(method=method, backbone="toy_linear", results_dir=str(tmp_path / "r"),
                   cache_root=str(tmp_path / "c"), progress=False)
    rec, _ = run(spec)
    parts = set(rec["storage_breakdown"])
    assert {f"switch/t{i}" for i in range(3)} | {f"knobs/t{i}" for i in range(3)} <= parts
    assert sum(v["bytes"] for v in rec["storage_breakdown"].values()) == rec["storage_bytes"]
    kept = rec["extra"]["switch"]["kept_fraction"]
    assert all(abs(v - 0.3) < 0.05 for v in kept.values())
    if method == "auto_switch":
        assert {"queries", "query_labels"} <= parts
        assert rec["extra"]["routing_accuracy"]["AVG"] == 100.0  # the toy blobs are far apart
