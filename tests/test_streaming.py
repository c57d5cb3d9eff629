"""The fused static merges are torch.equal to the straightforward (unfused) forms computed here."""
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
