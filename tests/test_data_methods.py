"""Data-dependent and dynamic baselines (RegMean, Fisher, AdaMerging, AdaMerging++, EMR, Twin), cross-checked
against fusion-bench's reference functions on small random state dicts, and against hand computations on a tiny
two-layer MLP behind a fake ModelOps.

fusion-bench is imported once for the module (it takes ~10 s)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from benchmark.contract import Pool
from benchmark.registry import METHODS
from benchmark.storage import read_artifacts, write_artifacts

TOL = 1e-6


@pytest.fixture(scope="module")
def fb():
    pytest.importorskip("fusion_bench")
    import fusion_bench.method.emr_merging.utils as emr_utils
    import fusion_bench.method.fisher_merging.fisher_merging as fisher_mod
    import fusion_bench.method.regmean.regmean as regmean_mod
    import fusion_bench.method.ties_merging.ties_merging_utils as ties_utils
    from fusion_bench.models.wrappers import layer_wise_fusion, task_wise_fusion

    class NS:
        pass

    ns = NS()
    ns.emr_merge = emr_utils.emr_merge
    ns.merging_with_regmean_weights = regmean_mod.merging_with_regmean_weights
    ns.merging_with_fisher_weights = fisher_mod.merging_with_fisher_weights
    ns.task_wise_fuse = task_wise_fusion.fuse_weights
    ns.layer_wise_fuse = layer_wise_fusion.fuse_weights
    ns.ties_utils = ties_utils
    return ns


def random_sds(n: int, seed: int = 0, dtype=torch.float32) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    shapes = {"a.weight": (6, 5), "a.bias": (6,), "b.weight": (4, 6), "b.bias": (4,), "conv.weight": (3, 2, 2, 2)}
    return [{k: torch.randn(s, generator=g, dtype=dtype) for k, s in shapes.items()} for _ in range(n)]


def assert_sd_close(a, b, tol=TOL):
    assert list(a) == list(b) or set(a) == set(b)
    for k in a:
        torch.testing.assert_close(a[k].double(), b[k].double(), atol=tol, rtol=tol, msg=k)


# ----------------------------------------------------------------------------------------------------------------
# A tiny MLP behind a fake ModelOps


class MLPOps:
    """x -> tanh(l1) -> tanh(l2) -> per-task head. Mergeable: l1.*, l2.*; heads fixed per task. (tanh: no dead units,
    so every Gram matrix is invertible, as the references' ``torch.inverse`` needs.)"""

    def __init__(self, data, test, heads):
        self.data, self.test, self.heads = data, test, heads
        self.pretrained = None

    @staticmethod
    def hidden(w, x):
        h1 = torch.tanh(x @ w["l1.weight"].T + w["l1.bias"])
        h2 = torch.tanh(h1 @ w["l2.weight"].T + w["l2.bias"])
        return h1, h2

    def _w(self, weights):
        return self.pretrained if weights is None else weights

    def exemplars(self, task, n, seed):
        g = torch.Generator().manual_seed(seed)
        x = self.data[task]
        return x[torch.randperm(x.shape[0], generator=g)[:n]]

    def test_inputs(self, task, n, seed):
        g = torch.Generator().manual_seed(seed)
        x = self.test[task]
        idx = torch.randperm(x.shape[0], generator=g)
        return x[idx if n is None else idx[:n]]

    def logits(self, task, weights, inputs):
        return self.hidden(self._w(weights), inputs)[1] @ self.heads[task].T

    def features(self, weights, inputs):
        return self.hidden(self._w(weights), inputs)[1]

    def linear_inputs(self, weights, inputs):
        h1, _ = self.hidden(self._w(weights), inputs)
        return {"l1.weight": inputs, "l2.weight": h1}

    def num_examples(self, inputs):
        return inputs.shape[0]

    def slice(self, inputs, index):
        return inputs[index]


def mlp_pool(n_tasks=3, dim=8, hid=12, classes=4, n=96, seed=0, steps=40, spread=4.0) -> Pool:
    g = torch.Generator().manual_seed(seed)
    pre = {
        "l1.weight": 0.3 * torch.randn(hid, dim, generator=g), "l1.bias": 0.1 * torch.randn(hid, generator=g),
        "l2.weight": 0.3 * torch.randn(hid, hid, generator=g), "l2.bias": 0.1 * torch.randn(hid, generator=g),
    }
    tasks = [f"t{i}" for i in range(n_tasks)]
    data, test, heads, finetuned = {}, {}, {}, {}
    for t in tasks:
        shift = spread * torch.randn(1, dim, generator=g)
        centre = 2 * torch.randn(classes, dim, generator=g)
        y = torch.arange(2 * n) % classes
        x = centre[y] + torch.randn(2 * n, dim, generator=g) + shift
        data[t], test[t] = x[:n], x[n:]
        heads[t] = 0.5 * torch.randn(classes, hid, generator=g)
        w = {k: v.clone().requires_grad_(True) for k, v in pre.items()}
        opt = torch.optim.SGD(list(w.values()), lr=0.05)
        for _ in range(steps):
            loss = F.cross_entropy(MLPOps.hidden(w, x[:n])[1] @ heads[t].T, y[:n])
            opt.zero_grad()
            loss.backward()
            opt.step()
        finetuned[t] = {k: v.detach() for k, v in w.items()}
    ops = MLPOps(data, test, heads)
    ops.pretrained = pre
    return Pool(tasks=tasks, pretrained=pre, finetuned=finetuned, ops=ops, seed=seed)


def roundtrip(method, pool, tmp_path):
    arts = method.merge(pool)
    written = write_artifacts(arts, tmp_path / f"{method.plugin_name}.safetensors")
    return method.load(read_artifacts(written.path), pool.pretrained, pool.tasks), written


def make(name, **overrides):
    plugin = METHODS.get(name)
    return plugin.obj(**plugin.resolve(overrides))


# ----------------------------------------------------------------------------------------------------------------
# EMR


def test_emr_matches_fusion_bench(fb):
    from methods.emr import emr_merge

    tvs = random_sds(4, seed=1)
    tvs[0]["a.bias"][0] = 0.0  # exact zeros and an all-zero sum: the sign rule's edge
    for t in tvs:
        t["b.bias"][1] = 0.0
    uni, masks, resc = emr_merge(tvs)
    ref_uni, ref_masks, ref_resc = fb.emr_merge(tvs)
    assert_sd_close(uni, ref_uni)
    for k in uni:
        for t in range(4):
            assert torch.equal(masks[t][k], ref_masks[k][t])
    torch.testing.assert_close(resc, ref_resc.float(), atol=TOL, rtol=TOL)


def test_emr_model_mean_rescaler_is_whole_model_ratio():
    from methods.emr import emr_merge

    tvs = random_sds(3, seed=2)
    uni, masks, resc = emr_merge(tvs, rescale="model_mean")
    for t in range(3):
        num = sum(tvs[t][k].abs().sum() for k in uni)
        den = sum((uni[k] * masks[t][k]).abs().sum() for k in uni)
        assert abs(float(resc[t]) - float(num / den)) < 1e-5


def test_emr_roundtrip_rebuilds_the_reference_task_models(fb, tmp_path):
    pool = mlp_pool()
    model, written = roundtrip(make("emr"), pool, tmp_path)
    tvs = [pool.task_vectors()[t] for t in pool.tasks]
    ref_uni, ref_masks, ref_resc = fb.emr_merge(tvs)
    for i, t in enumerate(pool.tasks):
        want = {k: pool.pretrained[k] + ref_uni[k] * ref_masks[k][i] * ref_resc[i] for k in pool.pretrained}
        assert_sd_close(model.weights(t), want)
    n = sum(v.numel() for v in pool.pretrained.values())
    mask_bytes = sum(b["bytes"] for a, b in written.breakdown.items() if a.startswith("masks/"))
    assert mask_bytes <= len(pool.tasks) * (n // 8 + len(pool.pretrained))  # 1 bit per entry


# ----------------------------------------------------------------------------------------------------------------
# RegMean


def test_regmean_grams_match_hand_computation():
    from methods.regmean import compute_grams

    pool = mlp_pool()
    t = pool.tasks[0]
    x = pool.ops.exemplars(t, 50, 0)
    grams = compute_grams(pool.ops, t, pool.finetuned[t], x, batch_size=7)
    w = pool.finetuned[t]
    h1 = torch.tanh(x @ w["l1.weight"].T + w["l1.bias"])
    torch.testing.assert_close(grams["l1.weight"], (x.T @ x).double() / 50, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grams["l2.weight"], (h1.T @ h1).double() / 50, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("alpha", [0.95, 1.0, 0.3])
def test_regmean_matches_fusion_bench(fb, alpha):
    from methods.regmean import regmean_merge

    sds = random_sds(3, seed=3, dtype=torch.float64)
    g = torch.Generator().manual_seed(4)
    grams = []
    for _ in sds:
        xa, xb = torch.randn(40, 5, generator=g, dtype=torch.float64), torch.randn(40, 6, generator=g, dtype=torch.float64)
        grams.append({"a.weight": xa.T @ xa / 40, "b.weight": xb.T @ xb / 40})
    ours = regmean_merge(sds, grams, alpha)
    ref = fb.merging_with_regmean_weights(
        {k: [sd[k] for sd in sds] for k in sds[0]},
        [{k.removesuffix(".weight"): v for k, v in gm.items()} for gm in grams],
        reduce_non_diagonal_ratio=alpha,
    )
    assert_sd_close(ours, ref)


def test_regmean_in_out_layout_matches_fusion_bench_without_transpose(fb):
    from methods.regmean import regmean_merge

    g = torch.Generator().manual_seed(5)
    sds = [{"proj": torch.randn(5, 3, generator=g, dtype=torch.float64)} for _ in range(3)]  # y = x W, W [d_in, d_out]
    grams = []
    for _ in sds:
        x = torch.randn(30, 5, generator=g, dtype=torch.float64)
        grams.append({"proj": x.T @ x / 30})
    ours = regmean_merge(sds, grams, 0.95)
    ref = fb.merging_with_regmean_weights(
        {"proj.weight": [sd["proj"] for sd in sds]}, [{"proj": gm["proj"]} for gm in grams],
        reduce_non_diagonal_ratio=0.95, weight_transpose=False,
    )
    torch.testing.assert_close(ours["proj"], ref["proj.weight"], atol=TOL, rtol=TOL)


def test_regmean_singular_gram_falls_back_to_the_average_on_dead_inputs():
    from methods.regmean import regmean_merge

    g = torch.Generator().manual_seed(13)
    sds = [{"w": torch.randn(3, 4, generator=g, dtype=torch.float64)} for _ in range(2)]
    grams = []
    for _ in sds:
        x = torch.randn(20, 4, generator=g, dtype=torch.float64)
        x[:, 2] = 0.0  # input 2 is never active
        grams.append({"w": x.T @ x / 20})
    out = regmean_merge(sds, grams, 1.0)["w"]
    torch.testing.assert_close(out[:, 2], (sds[0]["w"][:, 2] + sds[1]["w"][:, 2]) / 2)
    keep = [0, 1, 3]
    lhs = sum(gm["w"][keep][:, keep] for gm in grams)
    rhs = sum(gm["w"][keep][:, keep] @ sd["w"][:, keep].T for gm, sd in zip(grams, sds))
    torch.testing.assert_close(out[:, keep], torch.linalg.solve(lhs, rhs).T, atol=1e-6, rtol=1e-6)


def test_regmean_method_end_to_end(fb, tmp_path):
    from methods.regmean import compute_grams

    pool = mlp_pool()
    model, _ = roundtrip(make("regmean", n_exemplars=64), pool, tmp_path)
    grams = [compute_grams(pool.ops, t, pool.finetuned[t], pool.ops.exemplars(t, 64, pool.seed * 1009 + i))  # the Pool rule, salt 0
             for i, t in enumerate(pool.tasks)]
    ref = fb.merging_with_regmean_weights(
        {k: [pool.finetuned[t][k].double() for t in pool.tasks] for k in pool.pretrained},
        [{k.removesuffix(".weight"): v for k, v in gm.items()} for gm in grams],
        reduce_non_diagonal_ratio=0.95,
    )
    assert_sd_close(model.weights(), ref, tol=1e-5)  # ours is stored in float32


# ----------------------------------------------------------------------------------------------------------------
# Fisher


def hand_fisher_linear(x, w, b, estimator, batch_size=32):
    """Closed forms for logits = x W^T + b: d log p_y / d z = e_y - p."""
    z = x @ w.T + b
    p = z.softmax(-1)
    n, c = p.shape
    if estimator == "exact":
        fw = torch.zeros_like(w)
        fb_ = torch.zeros_like(b)
        for i in range(n):
            for y in range(c):
                dz = -p[i].clone()
                dz[y] += 1
                fw += p[i, y] * torch.outer(dz, x[i]) ** 2
                fb_ += p[i, y] * dz**2
        return fw / n, fb_ / n
    fw = torch.zeros_like(w)
    fb_ = torch.zeros_like(b)
    for s in range(0, n, batch_size):
        xs, ps = x[s:s + batch_size], p[s:s + batch_size]
        sq = ps.sqrt()
        dz = sq - ps * sq.sum(-1, keepdim=True)  # d/dz of sum_y sqrt(p_y) log p_y, sqrt(p) held fixed
        fw += (dz.T @ xs) ** 2
        fb_ += dz.sum(0) ** 2
    return fw / n, fb_ / n


class LinearOps(MLPOps):
    def logits(self, task, weights, inputs):
        return inputs @ weights["lin.weight"].T + weights["lin.bias"]


@pytest.mark.parametrize("estimator", ["exact", "batched"])
def test_fisher_on_a_linear_model_matches_hand_computation(estimator):
    from methods.fisher import compute_fisher

    g = torch.Generator().manual_seed(6)
    x = torch.randn(70, 5, generator=g, dtype=torch.float64)
    w = {"lin.weight": torch.randn(3, 5, generator=g, dtype=torch.float64),
         "lin.bias": torch.randn(3, generator=g, dtype=torch.float64)}
    ops = LinearOps({}, {}, {})
    got = compute_fisher(ops, "t", w, x, estimator, batch_size=32)
    fw, fbias = hand_fisher_linear(x, w["lin.weight"], w["lin.bias"], estimator)
    torch.testing.assert_close(got["lin.weight"], fw, atol=1e-10, rtol=1e-8)
    torch.testing.assert_close(got["lin.bias"], fbias, atol=1e-10, rtol=1e-8)


def test_fisher_exact_vmapped_equals_per_class_loop():
    from methods.fisher import _example_fisher, _leaf_weights

    pool = mlp_pool()
    t = pool.tasks[1]
    x = pool.ops.exemplars(t, 3, 0)
    leaves = _leaf_weights(pool.finetuned[t])
    for i in range(3):
        x1 = x[i:i + 1]
        a, ok = _example_fisher(pool.ops, t, leaves, x1, budget=2**20, vmappable=True)
        b, _ = _example_fisher(pool.ops, t, leaves, x1, budget=2**20, vmappable=False)
        c, _ = _example_fisher(pool.ops, t, leaves, x1, budget=1, vmappable=True)  # one class per chunk
        assert ok
        for u, v, w in zip(a, b, c):
            torch.testing.assert_close(u, v, atol=1e-6, rtol=1e-5)
            torch.testing.assert_close(u, w, atol=1e-6, rtol=1e-5)


def test_fisher_sampled_estimator_is_unbiased_for_the_exact_one():
    from methods.fisher import compute_fisher

    g = torch.Generator().manual_seed(15)
    x = torch.randn(4, 5, generator=g, dtype=torch.float64).repeat(500, 1)
    w = {"lin.weight": torch.randn(3, 5, generator=g, dtype=torch.float64),
         "lin.bias": torch.randn(3, generator=g, dtype=torch.float64)}
    ops = LinearOps({}, {}, {})
    exact = compute_fisher(ops, "t", w, x[:4], "exact")
    sampled = compute_fisher(ops, "t", w, x, "sampled", generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(sampled["lin.bias"], exact["lin.bias"], atol=0.05 * float(exact["lin.bias"].max()),
                               rtol=0.15)


@pytest.mark.parametrize("normalize", [True, False])
def test_fisher_merge_add_mode_matches_fusion_bench(fb, normalize):
    from methods.fisher import fisher_merge

    sds = random_sds(3, seed=7)
    fishers = [{k: v.abs() ** 2 * (i + 1) for k, v in sd.items()} for i, sd in enumerate(random_sds(3, seed=8))]
    fishers[0]["a.bias"][:] = 0.0  # no gradient anywhere for one tensor of one model
    ours = fisher_merge(sds, fishers, 1e-6, "add", normalize)
    ref = fb.merging_with_fisher_weights(
        {k: [sd[k] for sd in sds] for k in sds[0]}, fishers, torch.ones(3) / 3,
        normalize_fisher_weight=normalize, minimal_fisher_weight=1e-6,
    )
    assert_sd_close(ours, ref)


def test_fisher_merge_max_mode_is_the_official_floor():
    from methods.fisher import fisher_merge, fisher_norms

    sds = random_sds(3, seed=9)
    fishers = [{k: v.abs() ** 3 for k, v in sd.items()} for sd in random_sds(3, seed=10)]
    for f in fishers:
        f["b.bias"][:] = 0.0
    ours = fisher_merge(sds, fishers, 1e-6, "max", True)
    c = 1.0 / fisher_norms(fishers)  # the official 1/||F|| (no smoothing) up to normalization
    for k in sds[0]:
        num = sum(c[i] * fishers[i][k].clamp_min(1e-6) * sds[i][k] for i in range(3))
        den = sum(c[i] * fishers[i][k].clamp_min(1e-6) for i in range(3))
        torch.testing.assert_close(ours[k], num / den, atol=1e-5, rtol=1e-5)
    # a tensor with no Fisher anywhere is the (model-coefficient weighted) average
    torch.testing.assert_close(ours["b.bias"], sum(c[i] * sds[i]["b.bias"] for i in range(3)) / c.sum(),
                               atol=1e-6, rtol=1e-6)


def test_fisher_method_end_to_end(tmp_path):
    pool = mlp_pool()
    model, _ = roundtrip(make("fisher", n_exemplars=32), pool, tmp_path)
    w = model.weights()
    for k in pool.pretrained:  # a convex per-entry combination of the fine-tuned tensors
        stack = torch.stack([pool.finetuned[t][k] for t in pool.tasks])
        assert torch.all(w[k] >= stack.min(0).values - 1e-5) and torch.all(w[k] <= stack.max(0).values + 1e-5)


# ----------------------------------------------------------------------------------------------------------------
# AdaMerging / AdaMerging++


def test_adamerging_fusion_matches_fusion_bench(fb):
    from methods._adamerging_core import fuse

    pre, *tvs = random_sds(4, seed=11)
    lam = torch.tensor([0.3, 0.7, 0.1])
    ours = fuse(pre, tvs, lam)
    ref = fb.task_wise_fuse(torch.cat([torch.ones(1), lam]), [pre, *tvs])
    assert_sd_close(ours, ref)
    lam2 = torch.rand(3, len(pre), generator=torch.Generator().manual_seed(12))
    ours2 = fuse(pre, tvs, lam2)
    ref2 = fb.layer_wise_fuse(torch.cat([torch.ones(1, len(pre)), lam2]), [pre, *tvs])
    assert_sd_close(ours2, ref2)


@pytest.mark.parametrize("granularity", ["task", "layer"])
def test_adamerging_learns_clamped_coefficients_deterministically(granularity, tmp_path):
    pool = mlp_pool()
    kw = dict(granularity=granularity, steps=15, lr=0.05)
    m1, _ = roundtrip(make("adamerging", **kw), pool, tmp_path)
    m2, _ = roundtrip(make("adamerging", **kw), pool, tmp_path)
    info = m1.extra_metrics()["adamerging"]
    coeffs = info["coefficients"]
    vals = list(coeffs.values()) if granularity == "task" else [v for d in coeffs.values() for v in d.values()]
    assert len(vals) == (3 if granularity == "task" else 3 * len(pool.pretrained))
    assert all(0.0 <= v <= 1.0 for v in vals)
    assert max(abs(v - 0.3) for v in vals) > 1e-3
    assert info["loss_last"] < info["loss_first"]
    assert info["adapt_split"] == "test"
    assert m1.extra_metrics() == m2.extra_metrics()
    assert_sd_close(m1.weights(), m2.weights(), tol=0)
    # the stored merged weights are the fusion of the stored coefficients
    from methods._adamerging_core import fuse

    tv = pool.task_vectors()
    keys = list(pool.pretrained)
    lam = (torch.tensor([coeffs[t] for t in pool.tasks]) if granularity == "task"
           else torch.tensor([[coeffs[t][k] for k in keys] for t in pool.tasks]))
    assert_sd_close(m1.weights(), fuse(pool.pretrained, [tv[t] for t in pool.tasks], lam), tol=1e-6)


class WithoutTestInputs:
    """Delegates to an ops object but has no ``test_inputs`` (an adapter without test access)."""

    def __init__(self, inner):
        self._inner = inner

    def __getattr__(self, name):
        if name == "test_inputs":
            raise AttributeError(name)
        return getattr(self._inner, name)


def test_adamerging_needs_test_inputs_or_train_split():
    pool = mlp_pool()
    pool.ops = WithoutTestInputs(pool.ops)
    with pytest.raises(ValueError, match="test_inputs"):
        make("adamerging", steps=1).merge(pool)
    arts = make("adamerging", steps=2, adapt_split="train").merge(pool)
    assert arts["coefficients"].value["adapt_split"] == "train"


# ----------------------------------------------------------------------------------------------------------------
# Twin-Merging (its shared expert is the suite's task arithmetic, methods/task_arithmetic.py)


def test_twin_router_routes_mixed_task_batches_per_sample(tmp_path):
    pytest.importorskip("methods.task_arithmetic")
    pool = mlp_pool(spread=6.0)
    model, _ = roundtrip(make("twin", router_examples=96, router_epochs=200, router_lr=5e-3), pool, tmp_path)
    assert model.kind == "routed"
    xs = [pool.ops.test[t][:20] for t in pool.tasks]
    mixed = torch.cat(xs)
    truth = torch.cat([torch.full((20,), i) for i in range(len(pool.tasks))])
    perm = torch.randperm(mixed.shape[0], generator=torch.Generator().manual_seed(0))
    mix = model.route(pool.ops.features(model.routing_weights(), mixed[perm]))
    assert mix.shape == (60, 3)
    torch.testing.assert_close(mix.sum(1), torch.ones(60))
    assert (mix.argmax(1) == truth[perm]).float().mean() >= 0.9
    assert torch.unique(mix, dim=0).shape[0] == 60  # one weight build per sample
    assert model.extra_metrics()["twin"]["router_train_accuracy"] >= 90


def test_twin_full_rank_one_hot_rebuilds_the_finetuned_model_and_shared_is_task_arithmetic(tmp_path):
    pytest.importorskip("methods.task_arithmetic")
    pool = mlp_pool()
    model, written = roundtrip(make("twin", density=1.0, router_epochs=1), pool, tmp_path)
    tv = pool.task_vectors()
    shared = model.routing_weights()
    for k in pool.pretrained:
        want = pool.pretrained[k] + 0.29 * sum(tv[t][k] for t in pool.tasks)
        torch.testing.assert_close(shared[k], want, atol=1e-6, rtol=1e-6)
    for i, t in enumerate(pool.tasks):
        one_hot = torch.zeros(3)
        one_hot[i] = 1
        assert_sd_close(model.weights(one_hot), pool.finetuned[t], tol=1e-5)
    assert "shared_delta" in written.breakdown and "router" in written.breakdown


def test_twin_rank_and_storage_follow_density(tmp_path):
    pytest.importorskip("methods.task_arithmetic")
    from methods.twin import svd_rank

    assert svd_rank((768, 768), 0.1, None) == 76  # official: int(0.1 * len(S))
    assert svd_rank((3, 2, 2, 2), 0.1, None) == 1
    assert svd_rank((12, 8), 0.5, 3) == 3
    pool = mlp_pool()
    arts = make("twin", density=0.25, router_epochs=1).merge(pool)
    u = arts[f"exclusive/{pool.tasks[0]}/U"].value
    assert u["l1.weight"].shape == (12, 2) and u["l2.weight"].shape == (12, 3)
    assert set(arts[f"exclusive/{pool.tasks[0]}/dense"].value) == {"l1.bias", "l2.bias"}


def test_twin_is_deterministic_under_a_seed(tmp_path):
    pytest.importorskip("methods.task_arithmetic")
    pool = mlp_pool()
    a = make("twin", router_epochs=5).merge(pool)
    b = make("twin", router_epochs=5).merge(pool)
    for k in a["router"].value:
        assert torch.equal(a["router"].value[k], b["router"].value[k])


def test_adamerging_pp_vectors_are_the_official_ties_selection(fb):
    pytest.importorskip("methods.ties")
    from methods.adamerging_pp import ties_selected_vectors

    tvs = random_sds(4, seed=14)
    keys = list(tvs[0])
    flat = torch.stack([torch.cat([tv[k].reshape(-1) for k in keys]) for tv in tvs])
    selected, _ = fb.ties_utils.ties_merging_split(flat.clone(), reset_thresh=20, merge_func="dis-sum")
    ours = ties_selected_vectors(tvs, 20.0)
    for i in range(4):
        torch.testing.assert_close(torch.cat([ours[i][k].reshape(-1) for k in keys]), selected[i], atol=TOL, rtol=TOL)


def test_adamerging_pp_learns_over_selected_vectors(tmp_path):
    pytest.importorskip("methods.ties")
    pool = mlp_pool()
    model, _ = roundtrip(make("adamerging_pp", granularity="task", steps=10, lr=0.05), pool, tmp_path)
    coeffs = model.extra_metrics()["adamerging"]["coefficients"]
    assert all(0.0 <= v <= 1.0 for v in coeffs.values())
    from methods._adamerging_core import fuse
    from methods.adamerging_pp import ties_selected_vectors

    tv = pool.task_vectors()
    sel = ties_selected_vectors([tv[t] for t in pool.tasks], 20.0)
    lam = torch.tensor([coeffs[t] for t in pool.tasks])
    assert_sd_close(model.weights(), fuse(pool.pretrained, sel, lam), tol=1e-6)


# ----------------------------------------------------------------------------------------------------------------
# Through the runner (toy backbone): records, measured storage, extra metrics


@pytest.mark.parametrize("method,overrides,needs", [
    ("regmean", {"n_exemplars": 32}, None),
    ("fisher", {"n_exemplars": 16}, None),
    ("adamerging", {"steps": 5, "adapt_split": "train", "granularity": "task"}, None),
    ("adamerging_pp", {"steps": 5, "adapt_split": "train"}, "methods.ties"),
    ("emr", {}, None),
    ("twin", {"router_examples": 32, "router_epochs": 3}, "methods.task_arithmetic"),
])
def test_methods_run_through_the_runner(tmp_path, method, overrides, needs):
    if needs:
        pytest.importorskip(needs)
    import _toy_backbone  # noqa: F401  (registers toy_linear / toy_blobs)
    from benchmark.runner import RunSpec, run

    spec = RunSpec(method=method, backbone="toy_linear", results_dir=str(tmp_path / "results"),
                   cache_root=str(tmp_path / "cache"), progress=False, overrides=overrides)
    record, path = run(spec)
    assert path.exists() and record["storage_bytes"] > 0
    assert record["storage_bytes"] == sum(b["bytes"] for b in record["storage_breakdown"].values())
    assert record["average"] > 30  # 4 classes: clearly above chance on the toy blobs
    if method.startswith("adamerging"):
        assert "coefficients" in record["extra"]["adamerging"]
    if method == "twin":
        assert "routing_accuracy" in record["extra"] and record["extra"]["weight_builds"] > 3


def test_fisher_of_a_tensor_the_logits_do_not_use_is_zero():
    """A detector's box head never reaches its class logits: its Fisher is 0 (batched or per-class), not a crash."""
    from methods.fisher import compute_fisher

    g = torch.Generator().manual_seed(3)
    x = torch.randn(20, 5, generator=g, dtype=torch.float64)
    w = {"lin.weight": torch.randn(3, 5, generator=g, dtype=torch.float64),
         "lin.bias": torch.randn(3, generator=g, dtype=torch.float64),
         "box.weight": torch.randn(4, 5, generator=g, dtype=torch.float64)}
    got = compute_fisher(LinearOps({}, {}, {}), "t", w, x, "exact")
    fw, fbias = hand_fisher_linear(x, w["lin.weight"], w["lin.bias"], "exact")
    torch.testing.assert_close(got["lin.weight"], fw, atol=1e-10, rtol=1e-8)
    assert torch.equal(got["box.weight"], torch.zeros(4, 5, dtype=torch.float64))
