"""FlexSwitch and Auto-FlexSwitch: the maths of Eq. 6-19 and the end-to-end storage round trip."""
from __future__ import annotations

import math

import pytest
import torch

from benchmark.contract import Pool
from benchmark.registry import METHODS
from benchmark.storage import read_artifacts, write_artifacts
from methods import flexswitch as fs
from methods.auto_flexswitch import AutoFlexSwitchModel, knn_task_weights, metric_loss

from _toy_pool import toy_pool


def _tau(n=1000, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.distributions.StudentT(3.0).sample((n,)) * 0.01 if seed else torch.randn(n, generator=g)


def test_phi_keeps_thresholds_inside_their_ranges():
    tau = _tau()
    r = fs.ranges(tau)
    for s in [-1e8, -10.0, -1.0, 0.0, 0.5, 3.0, 1e8]:
        t_pos, t_neg = fs.thresholds(r, torch.tensor(s), torch.tensor(-s))
        assert r.vp_min <= t_pos <= r.vp_max
        assert r.vn_min <= t_neg <= r.vn_max
    assert fs.phi(torch.tensor(0.0)) == 0.5


def test_gate_tends_to_a_hard_mask_as_rho_shrinks():
    tau = _tau()
    r = fs.ranges(tau)
    s_pos, s_neg = torch.tensor(0.3), torch.tensor(-0.2)
    t_pos, t_neg = fs.thresholds(r, s_pos, s_neg)
    hard = ((tau > t_pos) | (tau < -t_neg)).float()
    far = (tau - t_pos).abs().minimum((tau + t_neg).abs()) > 1e-3  # away from the thresholds themselves
    gaps = [(fs.gate(tau, r, s_pos, s_neg, rho) - hard)[far].abs().max().item() for rho in (1.0, 0.1, 1e-3, 1e-5)]
    assert gaps == sorted(gaps, reverse=True) and gaps[-1] < 1e-6 and gaps[0] > 0.1


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_quantizer_has_2_pow_b_levels_and_eq13_bins(bits):
    tau = torch.linspace(-1.5, 2.5, 20001)
    r = fs.ranges(tau)
    delta = (r.vp_max + r.vn_max) / 2**bits
    assert torch.isclose(fs.quant_step(r, bits), delta)
    idx = fs.quant_index(tau, r, bits)
    assert idx.min() == 0 and idx.max() == 2**bits - 1
    assert len(torch.unique(fs.quantize(tau, r, bits))) == 2**bits
    expect = torch.clamp(torch.floor((tau + r.vn_max) / delta), 0, 2**bits - 1)
    assert torch.equal(idx, expect.long())
    # reconstruction at bin mid-points: error at most half a step
    assert (fs.quantize(tau, r, bits) - tau).abs().max() <= delta / 2 + 1e-6
    # the formula as printed in the paper: Clamp(floor(.), 1, 2^b) - 1
    lit = fs.quant_index(tau, r, bits, "paper")
    assert torch.equal(lit, torch.clamp(torch.floor((tau + r.vn_max) / delta), 1, 2**bits).long() - 1)
    assert lit.max() == 2**bits - 1 and (lit == 2**bits - 1).sum() == 1  # top level only at tau = v+max


def test_performance_losses():
    a = torch.randn(8, 5)
    assert fs.loss_kl(a, a).abs() < 1e-6 and fs.loss_mse(a, a) == 0 and fs.loss_cka(a, a).abs() < 1e-6
    b = torch.randn(8, 5)
    q = torch.softmax(b / 4, -1)
    p = torch.softmax(a / 4, -1)
    assert torch.isclose(fs.loss_kl(a, b), 16 * (q * (q / p).log()).sum(-1).mean(), atol=1e-6)
    assert torch.isclose(fs.loss_mse(a, b), ((a - b) ** 2).sum() / 8)
    assert fs.loss_cka(2 * a + 1, a).abs() < 1e-5  # CKA is invariant to scale and shift
    q = torch.randn(4, 6, 5, generator=torch.Generator().manual_seed(1))  # per-query outputs [B, Q, C]
    s = q + 0.1 * q.flip(0)
    torch.testing.assert_close(fs.loss_cka(s, q), fs.loss_cka(s.reshape(4, -1), q.reshape(4, -1)))  # a row an image


def _small(**over):
    p = METHODS.get("flexswitch").resolve({"steps": 40, "n_exemplars": 32, "batch_size": 16, "codec": "packbits", **over})
    return p


def test_flexswitch_learns_and_round_trips_bit_exactly(tmp_path):
    pool = toy_pool()
    method = METHODS.get("flexswitch").obj(**_small())
    arts = method.merge(pool)
    written = write_artifacts(arts, tmp_path / "f.safetensors")
    back = read_artifacts(written.path)
    for t in pool.tasks:
        for k, c in arts[f"switch/{t}"].value.items():
            assert c.equal(back[f"switch/{t}"][k])
        assert torch.equal(arts[f"side/{t}"].value, back[f"side/{t}"])
    model = method.load(back, pool.pretrained, pool.tasks)
    summ = model.extra_metrics()["flexswitch"]
    for t in pool.tasks:
        assert 0.0 < summ[t]["sparsity"] < 1.0
        assert all(m["bits"] in fs.BIT_WIDTHS for m in summ[t]["modules"].values())
        # the rebuilt vector is scale * M_hard * Q(tau; b) with the learned mask and bit-width
        tau = pool.finetuned[t]["lin.weight"] - pool.pretrained["lin.weight"]
        c = back[f"switch/{t}"]["lin.weight"]
        scale, offset, step = back[f"side/{t}"][0].tolist()
        rebuilt = model.weights(t)["lin.weight"] - pool.pretrained["lin.weight"]
        q = fs.quantize(tau.reshape(-1), fs.ranges(tau.reshape(-1)), c.bits)
        assert torch.allclose(rebuilt.reshape(-1)[c.mask], scale * q[c.mask], atol=1e-6)
        assert (rebuilt.reshape(-1)[~c.mask] == 0).all()


def test_flexswitch_preserves_the_task_better_than_nothing():
    pool = toy_pool()
    method = METHODS.get("flexswitch").obj(**_small(steps=60, lam=3.0))
    model = method.load(read_back(method.merge(pool)), pool.pretrained, pool.tasks)
    for t in pool.tasks:
        x = pool.ops.data[t]
        teacher = pool.ops.logits(t, pool.finetuned[t], x).argmax(1)
        ours = (pool.ops.logits(t, model.weights(t), x).argmax(1) == teacher).float().mean()
        pre = (pool.ops.logits(t, None, x).argmax(1) == teacher).float().mean()
        assert ours > pre


def read_back(arts, tmp=None):
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        return read_artifacts(write_artifacts(arts, Path(d) / "a.safetensors").path)


@pytest.mark.parametrize("variant", ["lgs", "bas"])
def test_ablation_variants(variant):
    pool = toy_pool(n_tasks=2)
    method = METHODS.get("flexswitch").obj(**_small(variant=variant, steps=10))
    back = read_back(method.merge(pool))
    for t in pool.tasks:
        c = back[f"switch/{t}"]["lin.weight"]
        if variant == "lgs":
            assert c.bits == 1
            tau = (pool.finetuned[t]["lin.weight"] - pool.pretrained["lin.weight"]).reshape(-1)
            assert torch.equal(c.codes.bool(), tau[c.mask] > 0)  # polarity switch on the learned mask
        else:  # P-Spar mask at alpha = 0.7
            assert abs(c.nnz / c.n - 0.3) < 0.05


def test_seeded_runs_are_deterministic():
    a = read_back(METHODS.get("flexswitch").obj(**_small(steps=15)).merge(toy_pool()))
    b = read_back(METHODS.get("flexswitch").obj(**_small(steps=15)).merge(toy_pool()))
    for k in a:
        if k.startswith("switch/"):
            assert all(a[k][m].equal(b[k][m]) for m in a[k])
        else:
            assert torch.equal(a[k], b[k])


def test_eq19_gradients_flow_to_L():
    g = torch.Generator().manual_seed(0)
    feats, labels = torch.randn(40, 6, generator=g), torch.arange(40) % 2
    centres, clabels = torch.randn(6, 6, generator=g), torch.tensor([0, 0, 0, 1, 1, 1])
    L = torch.randn(3, 6, generator=g, requires_grad=True)
    metric_loss(L, feats, labels, centres, clabels, 4).backward()
    assert L.grad is not None and L.grad.abs().sum() > 0 and torch.isfinite(L.grad).all()


def test_knn_weights_are_eq5():
    # references on a line: task 0 at 0..2, task 1 at 10..12; x = 1.6 has neighbours {2, 1, 0(dist 1.6)}, then 10
    refs = torch.tensor([[0.0], [1.0], [2.0], [10.0], [11.0], [12.0]])
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    x = torch.tensor([[1.6], [9.0], [6.0]])
    w = knn_task_weights(torch.cdist(x, refs), labels, 2, 4)
    assert torch.equal(w, torch.tensor([[0.75, 0.25], [0.25, 0.75], [0.5, 0.5]]))


def test_per_query_features_take_the_majority_task():
    refs = torch.tensor([[0.0], [10.0]])
    m = AutoFlexSwitchModel({"w": torch.zeros(1)}, {"a": {"w": torch.ones(1)}, "b": {"w": 2 * torch.ones(1)}},
                            ["a", "b"], refs, torch.tensor([0, 1]), None, 1, {})
    feats = torch.tensor([[[0.1], [9.0], [0.2]], [[9.5], [9.9], [0.3]]])  # image 0: 2 votes a; image 1: 2 votes b
    assert torch.equal(m.route(feats), torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    assert torch.equal(m.weights(torch.tensor([0.5, 0.5]))["w"], torch.tensor([1.5]))


@pytest.mark.parametrize("routing", ["learned_metric", "centres", "plain_knn"])
def test_auto_flexswitch_routes_toy_tasks(routing):
    pool = toy_pool()
    p = METHODS.get("auto_flexswitch").resolve(
        {"steps": 5, "n_exemplars": 32, "batch_size": 16, "codec": "packbits", "centres": 4, "rank": 4,
         "metric_epochs": 20, "routing": routing, "neighbours": 3}
    )
    method = METHODS.get("auto_flexswitch").obj(**p)
    model = method.load(read_back(method.merge(pool)), pool.pretrained, pool.tasks)
    for ti, t in enumerate(pool.tasks):
        w = model.route(pool.ops.features(None, pool.ops.data[t]))
        assert torch.allclose(w.sum(1), torch.ones(w.shape[0]))
        assert (w.argmax(1) == ti).float().mean() > 0.9  # well-separated blobs route to their own task


def test_heatmap_is_written_and_byte_stable(tmp_path):
    summary = {t: {"sparsity": 0.5, "mean_bits": 2, "modules": {m: {"sparsity": 0.1 * i, "bits": 2**i}
               for i, m in enumerate(["a.w", "b.w", "c.w"])}} for t in ["t0", "t1"]}
    a = fs.heatmap(summary, tmp_path / "x", "run")
    first = a.read_bytes()
    b = fs.heatmap(summary, tmp_path / "x", "run")
    assert a == b and b.read_bytes() == first and first[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_progress_silences_the_training_bars(capsys):
    """`run --no-progress` reaches the method through Pool.progress: no per-task bars on stderr."""
    pool = toy_pool()
    pool.progress = False
    METHODS.get("flexswitch").obj(**_small(steps=3)).merge(pool)
    assert "flexswitch" not in capsys.readouterr().err


@pytest.mark.parametrize("loss, expect", [("kl", "logits"), ("mse", "outputs"), ("cka", "outputs")])
def test_output_losses_read_every_output_the_adapter_gives(loss, expect):
    """MSE / CKA preserve ModelOps.outputs (a detector's logits and boxes) when the adapter has it; KL the logits."""
    pool = toy_pool(n_tasks=1)
    calls: list[str] = []
    logits = pool.ops.logits

    def counted_logits(task, weights, inputs):
        calls.append("logits")
        return logits(task, weights, inputs)

    def outputs(task, weights, inputs):  # a second "branch": the logits' row sums, as boxes would be
        calls.append("outputs")
        out = logits(task, weights, inputs)
        return torch.cat([out, out.sum(-1, keepdim=True)], -1)

    pool.ops.logits, pool.ops.outputs = counted_logits, outputs
    METHODS.get("flexswitch").obj(**_small(steps=3, loss=loss)).merge(pool)
    assert calls and set(calls) == {expect}
