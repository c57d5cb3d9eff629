"""The static baselines (weight_average, task_arithmetic, ties, dare): hand-computed small cases, oracle checks
against fusion-bench's functions and algorithm classes on identical inputs (tolerance 1e-6), parameter validation,
DARE determinism, and the storage round trip.

fusion-bench is imported once for the module (~9 s). DARE is compared with identical masks: our mask of tensor
``key`` of task ``i`` is ``torch.rand(shape, generator=Generator().manual_seed(s)) > p`` with a per-tensor seed
``s``; fusion-bench draws ``torch.rand_like(param) > p`` from torch's global generator, so seeding the global
generator with the same ``s`` right before each of its draws gives it the same uniforms (the tests do that by
wrapping ``torch.rand_like`` while its algorithm classes run)."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from benchmark.contract import Pool
from benchmark.registry import METHODS, RegistryError
from benchmark.storage import read_artifacts, write_artifacts

TOL = 1e-6
SHAPES = {"a.weight": (6, 5), "a.bias": (6,), "b.weight": (4, 6), "b.bias": (4,), "conv.weight": (3, 2, 2, 2)}


@pytest.fixture(scope="module")
def fb():
    import fusion_bench.method.dare.utils as dare_utils
    import fusion_bench.method.ties_merging.ties_merging_utils as ties_utils
    from fusion_bench.method import SimpleAverageAlgorithm, TaskArithmeticAlgorithm, TiesMergingAlgorithm
    from fusion_bench.method.dare import DareTaskArithmetic, DareTiesMerging
    from fusion_bench.method.simple_average import simple_average
    from fusion_bench.modelpool import BaseModelPool

    class NS:
        pass

    ns = NS()
    ns.ties_utils, ns.dare_utils = ties_utils, dare_utils
    ns.simple_average = simple_average
    ns.SimpleAverageAlgorithm, ns.TaskArithmeticAlgorithm = SimpleAverageAlgorithm, TaskArithmeticAlgorithm
    ns.TiesMergingAlgorithm, ns.DareTaskArithmetic, ns.DareTiesMerging = (
        TiesMergingAlgorithm, DareTaskArithmetic, DareTiesMerging)
    ns.BaseModelPool = BaseModelPool
    return ns


# ----------------------------------------------------------------------------------------------------------------
# Helpers


class Toy(nn.Module):
    """A module whose state dict has exactly the keys and shapes of SHAPES (fusion-bench's classes take modules)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(5, 6)
        self.b = nn.Linear(6, 4)
        self.conv = nn.Conv2d(2, 3, 2, bias=False)


def module_of(sd) -> Toy:
    m = Toy()
    m.load_state_dict(sd)
    return m


def random_pool(n_tasks=4, seed=0, quantized=False, pool_seed=0) -> Pool:
    """Fine-tuned = pretrained + a task vector. ``quantized``: task vectors of small integers (many exact zeros,
    ties at the trim threshold and entries whose sum cancels)."""
    g = torch.Generator().manual_seed(seed)
    pre = {k: torch.randn(s, generator=g) for k, s in SHAPES.items()}
    tasks = [f"t{i}" for i in range(n_tasks)]
    ft = {}
    for t in tasks:
        if quantized:
            tv = {k: torch.randint(-3, 4, s, generator=g).float() * 0.25 for k, s in SHAPES.items()}
        else:
            tv = {k: 0.1 * torch.randn(s, generator=g) for k, s in SHAPES.items()}
        ft[t] = {k: pre[k] + tv[k] for k in pre}
    return Pool(tasks=tasks, pretrained=pre, finetuned=ft, seed=pool_seed)


def fb_pool(fb, pool: Pool):
    """A fresh fusion-bench model pool (its algorithms modify the modules in place)."""
    models = {"_pretrained_": module_of(pool.pretrained)}
    models.update({t: module_of(pool.finetuned[t]) for t in pool.tasks})
    return fb.BaseModelPool(models)


def make(name, **overrides):
    plugin = METHODS.get(name)
    return plugin.obj(**plugin.resolve(overrides))


def assert_sd_close(a, b, tol=TOL):
    assert set(a) == set(b)
    for k in a:
        torch.testing.assert_close(a[k].double(), b[k].double(), atol=tol, rtol=tol, msg=k)


def merged_of(method, pool):
    return method.merge(pool)["merged"].value


def flat(sd, keys):
    return torch.cat([sd[k].reshape(-1) for k in keys])


def t(*xs):
    return torch.tensor(xs, dtype=torch.float32)


# ----------------------------------------------------------------------------------------------------------------
# Hand-computed cases


def test_weight_average_by_hand():
    from methods.weight_average import weight_average_merge

    out = weight_average_merge([{"w": t(1, 2)}, {"w": t(3, 4)}, {"w": t(5, 9)}])
    assert torch.equal(out["w"], t(3, 5))
    assert torch.equal(weight_average_merge({"x": {"w": t(1, -1)}, "y": {"w": t(3, 1)}})["w"], t(2, 0))


def test_task_arithmetic_by_hand():
    from benchmark.contract import TaskVectorView
    from methods.task_arithmetic import task_arithmetic_merge

    pre = {"w": t(1, 1), "b": t(0)}
    tvs = [{"w": t(1, -2), "b": t(2)}, {"w": t(3, 4), "b": t(-1)}]
    out = task_arithmetic_merge(pre, tvs, 0.5)
    assert torch.equal(out["w"], t(3, 2)) and torch.equal(out["b"], t(0.5))
    assert torch.equal(task_arithmetic_merge(pre, [], 0.5)["w"], pre["w"])
    # lazy task vectors give the same result and never change their inputs
    fts = [{k: pre[k] + tv[k] for k in pre} for tv in tvs]
    lazy = [TaskVectorView(ft, pre) for ft in fts]
    assert_sd_close(task_arithmetic_merge(pre, lazy, 0.5), out)
    assert torch.equal(tvs[0]["w"], t(1, -2)) and torch.equal(pre["w"], t(1, 1))
    assert lazy[0].numel("w") == 2 and list(lazy[0]) == ["w", "b"]


# Three task vectors over two tensors (d = 6). With topk = 50 the global rule keeps |tau| >= the 3rd-smallest
# |tau| of each task: task 1's threshold is 1, task 2's is 1 (three tied 1s, all kept), task 3's is 1.
HAND_TVS = [
    {"a": t(4, -1, 0, 2), "b": t(-3, 0.5)},
    {"a": t(-2, 1, 0, -0.5), "b": t(1, 1)},
    {"a": t(-1, 3, 0, 1), "b": t(2, -0.25)},
]
# trimmed sums: a = [1, 3, 0, 3], b = [0, 1] -> signs [+, +, 0, +], [0, +]; majority + resolves both zeros to +.
HAND_GLOBAL = {
    "dis-mean": {"a": t(4, 2, 0, 1.5), "b": t(1.5, 1)},
    "dis-sum": {"a": t(4, 4, 0, 3), "b": t(3, 1)},
    "dis-max": {"a": t(4, 3, 0, 2), "b": t(2, 1)},
}


@pytest.mark.parametrize("merge_func", ["dis-mean", "dis-sum", "dis-max"])
def test_ties_global_by_hand(merge_func):
    from methods.ties import ties_merge, ties_merged_vector

    tau = ties_merged_vector(HAND_TVS, topk=50, merge_func=merge_func, scope="global")
    for k, want in HAND_GLOBAL[merge_func].items():
        assert torch.equal(tau[k], want), (k, tau[k], want)
    pre = {"a": torch.ones(4), "b": torch.ones(2)}
    out = ties_merge(pre, HAND_TVS, topk=50, merge_func=merge_func, scaling_coef=0.5)
    for k in pre:
        assert torch.equal(out[k], 1 + 0.5 * HAND_GLOBAL[merge_func][k])


def test_ties_per_tensor_by_hand():
    from methods.ties import ties_merged_vector, trim_thresholds

    # per tensor, topk = 50: "a" (d=4) keeps >= its 2nd-smallest |tau|, "b" (d=2) keeps >= its smallest |tau|.
    thr = trim_thresholds(HAND_TVS, ["a", "b"], 50, "per_tensor")
    assert [float(x["a"]) for x in thr] == [1.0, 0.5, 1.0] and [float(x["b"]) for x in thr] == [0.5, 1.0, 0.25]
    # sums: a = [1, 3, 0, 2.5], b = [0, 1.25]; b[1] now sees 0.5 and 1 agreeing and -0.25 disagreeing.
    tau = ties_merged_vector(HAND_TVS, topk=50, merge_func="dis-mean", scope="per_tensor")
    assert torch.equal(tau["a"], t(4, 2, 0, 1.5)) and torch.equal(tau["b"], t(1.5, 0.75))


def test_ties_threshold_rule_matches_the_reference_off_by_one_and_ties(fb):
    from methods.ties import kth_threshold, trim

    v = torch.arange(1.0, 11.0)  # d = 10, topk = 20: kth = 10 - 2 = 8 -> keep >= 8: three entries, as the reference
    thr = kth_threshold(v.clone(), 20)
    assert float(thr) == 8.0
    ref, *_ = fb.ties_utils.topk_values_mask(v.clone()[None], K=20)  # (its 1-D path fails on .mean(dim=1))
    assert torch.equal(trim(v, thr), ref[0]) and int((ref != 0).sum()) == 3
    tied = t(0, 1, 1, 1, 1, 2)  # threshold 1 (4th smallest): every tied 1 is kept
    assert torch.equal(trim(tied, kth_threshold(tied.abs(), 50)), t(0, 1, 1, 1, 1, 2))
    assert kth_threshold(v.clone(), 100) is None  # keep all
    assert float(kth_threshold(v.clone(), 0)) == 10.0  # topk 0 keeps only the maximum (reference rule)


def test_ties_zero_signs_take_the_majority_sign():
    from methods.ties import ties_merged_vector

    # sums [0, -4, -6]: the elected signs' total is -2, so x[0]'s zero sign becomes -, and only -1 is kept there.
    tvs = [{"x": t(1, -2, -3)}, {"x": t(-1, -2, -3)}]
    assert torch.equal(ties_merged_vector(tvs, topk=100, merge_func="dis-mean")["x"], t(-1, -2, -3))
    assert torch.equal(ties_merged_vector(tvs, topk=100, merge_func="dis-sum")["x"], t(-1, -4, -6))


def test_ties_no_majority_leaves_the_entry_zero_unlike_the_reference(fb):
    """Documented difference: when the elected signs cancel over the whole vector, a zero-sum entry has no sign;
    the paper's disjoint set is empty (-> 0), the reference keeps the negative entries there."""
    from methods.ties import ties_merged_vector

    tvs = [{"x": t(1, 1, -1)}, {"x": t(-1, 1, -1)}]  # sums [0, 2, -2]: signs [0, +, -], total 0
    ours = ties_merged_vector(tvs, topk=100, merge_func="dis-mean")["x"]
    assert torch.equal(ours, t(0, 1, -1))
    flat_tvs = torch.stack([tv["x"] for tv in tvs])
    ref = fb.ties_utils.disjoint_merge(flat_tvs, "dis-mean", fb.ties_utils.resolve_sign(flat_tvs))
    assert torch.equal(ref, t(-1, 1, -1))


def test_ties_select_by_hand():
    from methods.ties import ties_select

    sel = ties_select(HAND_TVS, topk=50)
    # resolved signs: all + ; per task the trimmed entries that are > 0
    assert torch.equal(sel[0]["a"], t(4, 0, 0, 2)) and torch.equal(sel[0]["b"], t(0, 0))
    assert torch.equal(sel[1]["a"], t(0, 1, 0, 0)) and torch.equal(sel[1]["b"], t(1, 1))
    assert torch.equal(sel[2]["a"], t(0, 3, 0, 1)) and torch.equal(sel[2]["b"], t(2, 0))


def test_dare_drop_by_hand():
    from methods.dare import dare_drop

    tau = torch.arange(1.0, 9.0)
    g = lambda: torch.Generator().manual_seed(7)  # noqa: E731
    u = torch.rand(8, generator=g())
    keep = u > 0.5
    assert torch.equal(dare_drop(tau, 0.5, g()), tau * keep / 0.5)
    assert torch.equal(dare_drop(tau, 0.5, g(), rescale=False), tau * keep)
    assert torch.equal(dare_drop(tau, 0.0, g()), tau)  # p = 0: nothing dropped, nothing rescaled
    big = torch.ones(200_000)
    out = dare_drop(big, 0.3, torch.Generator().manual_seed(1))
    values = torch.unique(out)
    assert values.numel() == 2 and values[0] == 0 and values[1] == pytest.approx(1 / 0.7)
    assert abs(float((out == 0).float().mean()) - 0.3) < 0.005
    assert abs(float(out.mean()) - 1.0) < 0.01  # the rescale keeps the expectation


def test_dare_with_no_drop_is_task_arithmetic_and_dare_ties_is_ties():
    from methods.dare import dare_merge, pool_seeds
    from methods.task_arithmetic import task_arithmetic_merge
    from methods.ties import ties_merge

    pool = random_pool()
    tvs, seeds = pool.lazy_task_vectors(), pool_seeds(pool)
    assert_sd_close(dare_merge(pool.pretrained, tvs, seeds, drop_rate=0.0),
                    task_arithmetic_merge(pool.pretrained, tvs, 0.3), tol=0)
    assert_sd_close(dare_merge(pool.pretrained, tvs, seeds, drop_rate=0.0, base="ties", merge_func="dis-sum"),
                    ties_merge(pool.pretrained, tvs, 20, "dis-sum", 0.3), tol=0)


# ----------------------------------------------------------------------------------------------------------------
# Oracles: fusion-bench on identical inputs


@pytest.mark.parametrize("quantized", [False, True])
@pytest.mark.parametrize("topk", [20, 50, 7.5])
@pytest.mark.parametrize("merge_func", ["dis-mean", "dis-sum", "dis-max"])
def test_ties_matches_fusion_bench_utils(fb, quantized, topk, merge_func):
    from methods.ties import ties_merge, ties_merged_vector

    pool = random_pool(n_tasks=5, seed=3, quantized=quantized)
    tvs = [dict(tv) for tv in pool.lazy_task_vectors()]
    u = fb.ties_utils
    flat_tvs = torch.vstack([u.state_dict_to_vector(tv) for tv in tvs])  # sorted keys, as the reference
    ref_tau = u.ties_merging(flat_tvs.clone(), reset_thresh=topk, merge_func=merge_func)
    if quantized:  # the inputs have ties at the thresholds and cancelling sums; the majority must exist
        trimmed, *_ = u.topk_values_mask(flat_tvs.clone(), K=topk)
        assert torch.sign(torch.sign(trimmed.sum(0)).sum()) != 0
        assert (trimmed.sum(0) == 0).any() and (trimmed != 0).any(1).all()
    ours = ties_merged_vector(tvs, topk=topk, merge_func=merge_func)
    torch.testing.assert_close(flat(ours, sorted(ours)), ref_tau, atol=TOL, rtol=TOL)
    ref = u.vector_to_state_dict(u.state_dict_to_vector(pool.pretrained) + 0.3 * ref_tau, pool.pretrained)
    assert_sd_close(ties_merge(pool.pretrained, pool.lazy_task_vectors(), topk, merge_func, 0.3), ref)


def test_ties_per_tensor_matches_reference_pieces(fb):
    """per_tensor = the reference's trim applied tensor by tensor, then its sign election and disjoint merge over
    the whole vector."""
    from methods.ties import ties_merged_vector

    pool = random_pool(n_tasks=4, seed=5, quantized=True)
    tvs = [{k: pool.finetuned[t][k] - pool.pretrained[k] for k in pool.pretrained} for t in pool.tasks]
    keys = sorted(pool.pretrained)
    u = fb.ties_utils
    trimmed = torch.cat([u.topk_values_mask(torch.stack([tv[k].reshape(-1) for tv in tvs]), K=20)[0]
                         for k in keys], dim=1)
    ref = u.disjoint_merge(trimmed, "dis-mean", u.resolve_sign(trimmed))
    ours = ties_merged_vector(tvs, topk=20, merge_func="dis-mean", scope="per_tensor")
    torch.testing.assert_close(flat(ours, keys), ref, atol=TOL, rtol=TOL)


@pytest.mark.parametrize("merge_func", ["dis-mean", "dis-sum", "dis-max"])
def test_ties_method_matches_fusion_bench_algorithm(fb, merge_func):
    pool = random_pool(n_tasks=4, seed=9)
    algo = fb.TiesMergingAlgorithm(scaling_factor=0.3, threshold=20, remove_keys=[], merge_func=merge_func)
    ref = algo.run(fb_pool(fb, pool)).state_dict()
    assert_sd_close(merged_of(make("ties", merge_func=merge_func), pool), ref)


def test_ties_select_matches_fusion_bench_split(fb):
    from methods.ties import ties_select

    pool = random_pool(n_tasks=4, seed=11, quantized=True)
    tvs = [{k: pool.finetuned[t][k] - pool.pretrained[k] for k in pool.pretrained} for t in pool.tasks]
    keys = sorted(pool.pretrained)
    flat_tvs = torch.stack([flat(tv, keys) for tv in tvs])
    ref_sel, _ = fb.ties_utils.ties_merging_split(flat_tvs.clone(), reset_thresh=20, merge_func="dis-sum")
    ours = ties_select(tvs, topk=20)
    for i in range(len(tvs)):
        torch.testing.assert_close(flat(ours[i], keys), ref_sel[i], atol=TOL, rtol=TOL)


def test_task_arithmetic_matches_fusion_bench(fb):
    # fusion-bench 0.2.33's module-level ``task_arithmetic_merge`` raises TypeError on any nn.Module (it adds
    # Parameters from ``state_dict(keep_vars=True)`` to plain Tensors and its type check refuses), so the oracle is
    # its TaskArithmeticAlgorithm, which computes the same sum.
    pool = random_pool(n_tasks=5, seed=2)
    for lam in (0.3, 0.7):
        ours = merged_of(make("task_arithmetic", scaling_coef=lam), pool)
        algo = fb.TaskArithmeticAlgorithm(scaling_factor=lam, inplace=False).run(fb_pool(fb, pool))
        assert_sd_close(ours, algo.state_dict())


def test_weight_average_matches_fusion_bench(fb):
    pool = random_pool(n_tasks=5, seed=4)
    ours = merged_of(make("weight_average"), pool)
    assert_sd_close(ours, fb.simple_average([copy.deepcopy(pool.finetuned[t]) for t in pool.tasks]))
    algo = fb.SimpleAverageAlgorithm(inplace=False).run(
        fb.BaseModelPool({t: module_of(pool.finetuned[t]) for t in pool.tasks}))
    assert_sd_close(ours, algo.state_dict())


def test_dare_drop_matches_fusion_bench_param_random_drop(fb):
    from methods.dare import dare_drop

    tau = torch.randn(3, 7, 5)
    for p, rescale in [(0.5, True), (0.1, True), (0.9, False)]:
        torch.manual_seed(1234)
        ref = tau.clone()
        fb.dare_utils.param_random_drop_(ref, p, rescale)
        assert torch.equal(dare_drop(tau, p, torch.Generator().manual_seed(1234), rescale), ref)


def _seeded_rand_like(monkeypatch, pool: Pool):
    """Make fusion-bench's ``torch.rand_like`` draws use our per-tensor seeds: before its n-th call, seed torch's
    global generator with the seed of the n-th (task, tensor) it visits (tasks in pool order, tensors in module
    order), checking the shape matches."""
    from methods.dare import pool_seeds

    seeds = pool_seeds(pool)
    order = [(i, k) for i in range(len(pool.tasks)) for k in Toy().state_dict()]
    calls = iter(order)
    real = torch.rand_like

    def rand_like(x, *args, **kwargs):
        i, k = next(calls)
        assert tuple(x.shape) == tuple(pool.pretrained[k].shape)
        torch.manual_seed(seeds[i][k])
        return real(x, *args, **kwargs)

    monkeypatch.setattr(torch, "rand_like", rand_like)
    return calls


@pytest.mark.parametrize("p", [0.5, 0.2])
def test_dare_task_arithmetic_matches_fusion_bench_with_identical_masks(fb, monkeypatch, p):
    pool = random_pool(n_tasks=4, seed=6, pool_seed=3)
    ours = merged_of(make("dare", drop_rate=p, scaling_coef=0.3), pool)
    calls = _seeded_rand_like(monkeypatch, pool)
    algo = fb.DareTaskArithmetic(scaling_factor=0.3, sparsity_ratio=p, only_on_linear_weights=False, rescale=True)
    ref = algo.run(fb_pool(fb, pool)).state_dict()
    assert next(calls, None) is None  # every (task, tensor) drawn once
    assert_sd_close(ours, ref)


@pytest.mark.parametrize("merge_func", ["dis-mean", "dis-sum"])
def test_dare_ties_matches_fusion_bench_with_identical_masks(fb, monkeypatch, merge_func):
    pool = random_pool(n_tasks=4, seed=8, pool_seed=5)
    ours = merged_of(make("dare", base="ties", drop_rate=0.3, scaling_coef=0.5, topk=20, merge_func=merge_func), pool)
    _seeded_rand_like(monkeypatch, pool)
    algo = fb.DareTiesMerging(sparsity_ratio=0.3, only_on_linear_weights=False, rescale=True, scaling_factor=0.5,
                              threshold=20, remove_keys=[], merge_func=merge_func)
    ref = algo.run(fb_pool(fb, pool)).state_dict()
    assert_sd_close(ours, ref)


# ----------------------------------------------------------------------------------------------------------------
# Registry parameters


def test_defaults_are_declared():
    assert METHODS.get("weight_average").resolve({}) == {}
    assert METHODS.get("task_arithmetic").resolve({}) == {"scaling_coef": 0.3}
    assert METHODS.get("ties").resolve({}) == {"scaling_coef": 0.3, "topk": 20.0, "topk_scope": "global",
                                               "merge_func": "dis-sum"}  # AdaMerging / fusion-bench
    assert METHODS.get("dare").resolve({}) == {
        "drop_rate": 0.5, "rescale": True, "base": "task_arithmetic", "scaling_coef": 0.3, "topk": 20.0,
        "topk_scope": "global", "merge_func": "dis-mean"}
    for name in ("weight_average", "task_arithmetic", "ties", "dare"):
        plugin = METHODS.get(name)
        assert plugin.obj.kind == "static" and plugin.paper and plugin.summary
    assert METHODS.get("ties").resolve({"topk": "10", "topk_scope": "per_tensor"})["topk"] == 10.0


@pytest.mark.parametrize("name,overrides,needle", [
    ("ties", {"merge_func": "mean"}, "dis-mean, dis-sum, dis-max"),
    ("ties", {"topk_scope": "layer"}, "global, per_tensor"),
    ("ties", {"topk": 150}, "[0.0, 100.0]"),
    ("ties", {"topk": -1}, "[0.0, 100.0]"),
    ("ties", {"scaling_coef": -0.1}, "scaling_coef"),
    ("ties", {"topk": "lots"}, "expects float"),
    ("task_arithmetic", {"scaling_coef": -1}, "scaling_coef"),
    ("task_arithmetic", {"lam": 0.3}, "valid: scaling_coef"),
    ("dare", {"base": "fisher"}, "task_arithmetic, ties"),
    ("dare", {"drop_rate": 1.0}, "[0.0, 0.99]"),
    ("dare", {"drop_rate": -0.5}, "[0.0, 0.99]"),
    ("dare", {"rescale": "maybe"}, "expects bool"),
    ("dare", {"merge_func": "dis-median"}, "dis-mean, dis-sum, dis-max"),
    ("weight_average", {"scaling_coef": 1}, "valid: (none)"),
])
def test_bad_parameters_are_registry_errors(name, overrides, needle):
    with pytest.raises(RegistryError) as e:
        METHODS.get(name).resolve(overrides)
    assert needle in str(e.value)


def test_pure_functions_reject_bad_options():
    from methods.dare import dare_merge
    from methods.ties import ties_merged_vector

    tvs = [{"x": t(1, 2)}]
    with pytest.raises(ValueError, match="dis-mean"):
        ties_merged_vector(tvs, merge_func="median")
    with pytest.raises(ValueError, match="global"):
        ties_merged_vector(tvs, scope="layer")
    with pytest.raises(ValueError, match="percentage"):
        ties_merged_vector(tvs, topk=101)
    with pytest.raises(ValueError, match="task_arithmetic"):
        dare_merge({"x": t(0, 0)}, tvs, [{"x": 1}], base="fisher")


# ----------------------------------------------------------------------------------------------------------------
# DARE determinism


def test_dare_is_deterministic_under_a_seed_and_differs_across_seeds():
    from methods.dare import dare_task_vectors, pool_seeds

    pool = random_pool(pool_seed=0)
    a = merged_of(make("dare"), pool)
    b = merged_of(make("dare"), pool)
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = merged_of(make("dare"), random_pool(pool_seed=1))
    assert any(not torch.equal(a[k], c[k]) for k in a)

    def masks(p):
        return [{k: tv[k] != 0 for k in reversed(list(tv))}  # visiting order does not matter
                for tv in dare_task_vectors(p.lazy_task_vectors(), 0.5, pool_seeds(p))]

    m0, m0_again, m1 = masks(random_pool(pool_seed=0)), masks(random_pool(pool_seed=0)), masks(random_pool(pool_seed=1))
    key = "a.weight"
    assert all(torch.equal(x[k], y[k]) for x, y in zip(m0, m0_again) for k in x)
    assert not torch.equal(m0[0][key], m1[0][key])  # another seed, other masks
    assert not torch.equal(m0[0][key], m0[1][key])  # tasks get different masks
    # the same mask on every access (TIES reads each dropped vector three times)
    tv = dare_task_vectors(random_pool().lazy_task_vectors(), 0.5, pool_seeds(random_pool()))[0]
    assert torch.equal(tv[key], tv[key])


# ----------------------------------------------------------------------------------------------------------------
# Storage round trip


@pytest.mark.parametrize("name,overrides", [
    ("weight_average", {}), ("task_arithmetic", {}), ("ties", {}), ("ties", {"topk_scope": "per_tensor"}),
    ("dare", {}), ("dare", {"base": "ties"}),
])
def test_storage_round_trip_is_bit_exact(tmp_path, name, overrides):
    pool = random_pool(seed=12)
    method = make(name, **overrides)
    arts = method.merge(pool)
    assert list(arts) == ["merged"] and arts["merged"].codec == "state_dict"
    written = write_artifacts(arts, tmp_path / f"{name}.safetensors")
    model = method.load(read_artifacts(written.path), pool.pretrained, pool.tasks)
    assert model.kind == "static"
    weights, want = model.weights(), arts["merged"].value
    assert list(weights) == list(pool.pretrained)
    for k in want:
        assert weights[k].dtype == want[k].dtype and torch.equal(weights[k], want[k]), k
    n_bytes = sum(v.numel() * 4 for v in pool.pretrained.values())
    assert written.breakdown["merged"]["bytes"] == n_bytes  # float32, natural dtype
    assert written.total_bytes == (tmp_path / f"{name}.safetensors").stat().st_size


def test_methods_run_through_the_runner(tmp_path):
    import _toy_backbone  # noqa: F401  (registers toy_linear / toy_blobs)
    from benchmark.runner import RunSpec, run

    for name in ("weight_average", "task_arithmetic", "ties", "dare"):
        spec = RunSpec(method=name, backbone="toy_linear", results_dir=str(tmp_path / "results"),
                       cache_root=str(tmp_path / "cache"), progress=False)
        record, path = run(spec)
        assert path.exists() and record["method"] == name and record["storage_bytes"] > 0
        assert record["params"] == METHODS.get(name).resolve({})
