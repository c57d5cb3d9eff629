"""The fused static merges are torch.equal to the straightforward (unfused) forms computed here."""
from collections.abc import Mapping

import pytest
import torch

from methods.ties import elect_signs, disjoint_merge, trim, trim_thresholds, ties_merge


def _reference_ties(pre, tvs, topk, merge_func, coef, scope):
    keys = list(pre)
    thr = trim_thresholds(tvs, keys, topk, scope)
    signs = elect_signs(tvs, keys, thr)
    tau = {k: disjoint_merge((trim(tv[k], th[k]) for tv, th in zip(tvs, thr)), signs[k], merge_func) for k in keys}
    return {k: pre[k] + coef * tau[k] for k in keys}


@pytest.mark.parametrize("merge_func", ["dis-sum", "dis-mean", "dis-max"])
@pytest.mark.parametrize("scope", ["global", "per_tensor"])
@pytest.mark.parametrize("quantised", [False, True])
def test_fused_ties_equals_unfused(merge_func, scope, quantised):
    g = torch.Generator().manual_seed(0)
    pre = {f"w{i}": torch.randn(17, 13, generator=g) for i in range(4)}
    tvs = []
    for _ in range(5):
        tv = {k: torch.randn(v.shape, generator=g) for k, v in pre.items()}
        if quantised:  # small integers: many exact cancellations, so the zero-sign resolution is exercised
            tv = {k: torch.randint(-2, 3, v.shape, generator=g).float() for k, v in tv.items()}
        tvs.append(tv)
    for topk in (20.0, 60.0, 100.0):
        ref = _reference_ties(pre, tvs, topk, merge_func, 0.3, scope)
        out = ties_merge(pre, tvs, topk, merge_func, 0.3, scope)
        for k in pre:
            assert torch.equal(out[k], ref[k]), (k, topk)


def test_fused_ties_negative_majority():
    pre = {"a": torch.zeros(6), "b": torch.zeros(4)}
    tvs = [{"a": torch.tensor([-1., -1, -1, 1, 0, 0]), "b": torch.tensor([1., -1, 0, 0])},
           {"a": torch.tensor([-1., -1, -1, -1, 0, 0]), "b": torch.tensor([-1., 1, 0, 0])}]
    ref = _reference_ties(pre, tvs, 100.0, "dis-sum", 1.0, "global")
    out = ties_merge(pre, tvs, 100.0, "dis-sum", 1.0, "global")
    for k in pre:
        assert torch.equal(out[k], ref[k])


def test_lazy_state_round_trip(tmp_path):
    from safetensors.torch import load_file, save_file

    from benchmark.lazy_state import LazyState, save_streaming
    sd = {"a": torch.randn(3, 4), "b": torch.arange(5), "c": torch.randn(2).half(), "e": torch.zeros(0)}
    save_file(sd, tmp_path / "x.safetensors")
    lazy = LazyState(tmp_path / "x.safetensors")
    assert list(lazy) == list(load_file(tmp_path / "x.safetensors"))
    assert all(torch.equal(lazy[k], sd[k]) for k in sd)
    save_streaming(lazy, tmp_path / "y.safetensors")
    back = load_file(tmp_path / "y.safetensors")
    assert all(torch.equal(back[k], sd[k]) for k in sd)


def test_pool_materialise_keeps_values(tmp_path):
    from safetensors.torch import save_file

    from benchmark.contract import Pool
    from benchmark.lazy_state import LazyState
    ft = {"w": torch.randn(4, 4)}
    save_file(ft, tmp_path / "t.safetensors")
    pool = Pool(tasks=["t"], pretrained={"w": torch.zeros(4, 4)}, finetuned={"t": LazyState(tmp_path / "t.safetensors")})
    pool.materialise()
    assert isinstance(pool.finetuned["t"], dict) and torch.equal(pool.finetuned["t"]["w"], ft["w"])


# ----------------------------------------------------------------------------------------------------------------
# Streaming methods read every fine-tuned tensor a bounded number of times, and never hold a whole model


class _CountingState(Mapping):
    """A LazyState that counts its reads per key."""

    def __init__(self, path):
        from benchmark.lazy_state import LazyState

        self.lazy = LazyState(path)
        self.reads: dict[str, int] = {}

    def __getitem__(self, key):
        self.reads[key] = self.reads.get(key, 0) + 1
        return self.lazy[key]

    def __iter__(self):
        return iter(self.lazy)

    def __len__(self):
        return len(self.lazy)

    def __contains__(self, key):
        return key in self.lazy


def _lazy_pool(tmp_path, n_tasks=3, seed=0):
    from safetensors.torch import save_file

    from benchmark.contract import Pool
    g = torch.Generator().manual_seed(seed)
    pre = {f"w{i}": torch.randn(9, 7, generator=g) for i in range(4)}
    ft, eager = {}, {}
    for t in range(n_tasks):
        sd = {k: v + torch.randn(v.shape, generator=g) for k, v in pre.items()}
        save_file(sd, tmp_path / f"t{t}.safetensors")
        ft[f"t{t}"] = _CountingState(tmp_path / f"t{t}.safetensors")
        eager[f"t{t}"] = sd
    return Pool(tasks=list(ft), pretrained=pre, finetuned=ft), eager


@pytest.mark.parametrize("method, reads", [("task_arithmetic", 1), ("emr", 1), ("ties", 2), ("dare", 1)])
def test_streaming_merges_read_each_tensor_a_bounded_number_of_times(tmp_path, method, reads):
    """TA, DARE and EMR read each fine-tuned tensor once, TIES twice (threshold pass, merge pass); the result equals
    the merge of the same pool held in RAM."""
    from benchmark.contract import Pool
    from benchmark.registry import METHODS
    from benchmark.storage import read_artifacts, write_artifacts
    plugin = METHODS.get(method)
    m = plugin.obj(**plugin.resolve({}))
    assert not m.whole_models
    pool, eager = _lazy_pool(tmp_path)
    arts = m.merge(pool)
    for t, st in pool.finetuned.items():
        assert st.reads == {k: reads for k in pool.pretrained}, t
    ref = m.merge(Pool(tasks=pool.tasks, pretrained=pool.pretrained, finetuned=eager))
    a = read_artifacts(write_artifacts(arts, tmp_path / "a.safetensors").path)
    b = read_artifacts(write_artifacts(ref, tmp_path / "b.safetensors").path)
    assert set(a) == set(b)
    for name in a:
        va, vb = a[name], b[name]
        if isinstance(va, torch.Tensor):
            assert torch.equal(va, vb), name
        else:
            assert set(va) == set(vb) and all(torch.equal(va[k], vb[k]) for k in va), name


def test_task_arithmetic_in_place_is_bit_for_bit_the_formula():
    from methods.task_arithmetic import task_arithmetic_merge
    g = torch.Generator().manual_seed(3)
    pre = {"a": torch.randn(50, generator=g), "b": torch.randn(4, 5, generator=g)}
    tvs = [{k: torch.randn(v.shape, generator=g) for k, v in pre.items()} for _ in range(4)]
    keep = [{k: v.clone() for k, v in tv.items()} for tv in tvs]
    out = task_arithmetic_merge(pre, tvs, 0.37)
    for k in pre:
        want = pre[k] + (tvs[0][k] + tvs[1][k] + tvs[2][k] + tvs[3][k]) * 0.37
        assert torch.equal(out[k], want)
    assert all(torch.equal(tv[k], kp[k]) for tv, kp in zip(tvs, keep) for k in pre)  # inputs untouched


def test_packed_masks_decode_lazily_and_equal_the_bool_masks(tmp_path):
    from benchmark.contract import Artifacts
    from benchmark.storage import PackedMask, PackedMasks, StorageError, read_artifacts, write_artifacts
    g = torch.Generator().manual_seed(1)
    masks = {"a": torch.rand(37, generator=g) > 0.5, "b": torch.rand(3, 4, 5, generator=g) > 0.3}
    arts = Artifacts()
    arts.add("bool", masks, codec="bitmask")
    arts.add("packed", PackedMasks({k: PackedMask.of(v) for k, v in masks.items()}), codec="bitmask")
    w = write_artifacts(arts, tmp_path / "m.safetensors")
    assert w.breakdown["bool"] == w.breakdown["packed"]  # the same file either way
    back = read_artifacts(w.path)
    for name in ("bool", "packed"):
        assert isinstance(back[name], PackedMasks) and set(back[name]) == set(masks)
        for k, v in masks.items():
            assert back[name][k].dtype == torch.bool and torch.equal(back[name][k], v)
    with pytest.raises(StorageError):  # a part too short for its shape is refused when it is made, not on use
        PackedMask(torch.zeros(4, dtype=torch.uint8), (37,))


def test_lazy_state_restricted_keeps_order_values_and_names_missing_keys(tmp_path):
    from safetensors.torch import save_file

    from benchmark.lazy_state import LazyState
    sd = {"a": torch.randn(3), "b": torch.randn(2, 2), "c": torch.arange(4)}
    save_file(sd, tmp_path / "x.safetensors")
    sub = LazyState(tmp_path / "x.safetensors").restricted(["c", "a"])
    assert list(sub) == ["c", "a"] and "b" not in sub
    assert torch.equal(sub["c"], sd["c"]) and torch.equal(sub["a"], sd["a"])
    with pytest.raises(KeyError, match="lacks z"):
        LazyState(tmp_path / "x.safetensors").restricted(["a", "z"])
