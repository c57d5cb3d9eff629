"""FlexSwitch / Auto-FlexSwitch (auto-flexswitch.txt, Sec. III-C): every equation of Eq. 6-19 against values
computed here, independently of ``methods/flexswitch.py`` and ``methods/auto_flexswitch.py``.

The reference implementations below are written from the paper's text, one formula per line, with no shared code
with the method beyond the pool API (the exemplar draw). Each test also checks that the term it pins is material
in its case: a test whose case would give the same numbers with the term removed is not a test of that term.

Eq. 16-17 (SASS) are pinned in ``tests/test_codecs.py`` (``test_sass_size_equals_the_formula``,
``test_choose_group_size_is_eq17``, ``test_sass_matches_eq16_within_1pct_on_bernoulli_masks``); Eq. 5 in
``tests/test_flexswitch.py::test_knn_weights_are_eq5``.
"""
from __future__ import annotations

import math

import pytest
import torch

from benchmark.contract import Pool
from benchmark.registry import METHODS
from methods import auto_flexswitch as afs
from methods import flexswitch as fs

from _toy_pool import ToyOps
from test_flexswitch import read_back

W = (1, 2, 4, 8)


# ----------------------------------------------------------------------------------------------------------------
# A two-layer toy pool: two modules with positive and negative entries of several magnitudes (no degenerate range)


class TwoLayerOps(ToyOps):
    """The toy pool's data access with a two-layer model: logits = relu(x A^T) B^T."""

    def logits(self, task, weights, inputs):
        w = self.pretrained if weights is None else weights
        return torch.relu(inputs @ w["a.weight"].T) @ w["b.weight"].T


def two_layer_pool(n_tasks=2, n=48, seed=0) -> Pool:
    g = torch.Generator().manual_seed(seed)
    pre = {"a.weight": 0.3 * torch.randn(12, 10, generator=g), "b.weight": 0.3 * torch.randn(5, 12, generator=g)}
    data, finetuned = {}, {}
    tasks = [f"t{i}" for i in range(n_tasks)]
    for t in tasks:
        centre = 2 * torch.randn(5, 10, generator=g)
        y = torch.arange(n) % 5
        x = centre[y] + torch.randn(n, 10, generator=g)
        data[t] = x
        w = {k: v.clone().requires_grad_(True) for k, v in pre.items()}
        opt = torch.optim.SGD(list(w.values()), lr=0.1)
        for _ in range(25):
            loss = torch.nn.functional.cross_entropy(torch.relu(x @ w["a.weight"].T) @ w["b.weight"].T, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        finetuned[t] = {k: v.detach() for k, v in w.items()}
    ops = TwoLayerOps(data)
    ops.pretrained = pre
    return Pool(tasks=tasks, pretrained=pre, finetuned=finetuned, ops=ops, seed=seed)


# ----------------------------------------------------------------------------------------------------------------
# Reference formulas, from the paper's text


def ref_phi(x):
    return torch.atan(x) / math.pi + 0.5  # Eq. 6


def ref_ranges(tau):
    pos, neg = tau[tau > 0], -tau[tau < 0]
    return pos.min(), pos.max(), neg.min(), neg.max()


def ref_gate(tau, rng, s_pos, s_neg, rho):
    """Eq. 6-7: M = sig((tau - t+)/(rho r+)) + sig((-t- - tau)/(rho r-)), t = v_min + phi(s) r."""
    vp_min, vp_max, vn_min, vn_max = rng
    rp, rn = vp_max - vp_min, vn_max - vn_min
    t_pos = vp_min + ref_phi(s_pos) * rp
    t_neg = vn_min + ref_phi(s_neg) * rn
    return torch.sigmoid((tau - t_pos) / (rho * rp)) + torch.sigmoid((-t_neg - tau) / (rho * rn))


def ref_quantize(tau, rng, b):
    """Eq. 13 with the uniform bins (I in [0, 2^b - 1]; the project's default, see the method's docstring)."""
    _, vp_max, _, vn_max = rng
    delta = (vp_max + vn_max) / 2**b
    idx = torch.clamp(torch.floor((tau + vn_max) / delta), 0, 2**b - 1)
    return -vn_max + (idx + 0.5) * delta, idx.long()


def ref_kl(student, teacher, T=4.0):
    """Eq. 9: T^2/B sum_i sum_j q_ij log(q_ij/p_ij)."""
    q = torch.softmax(teacher / T, -1)
    p = torch.softmax(student / T, -1)
    total = 0.0
    for i in range(teacher.shape[0]):
        total = total + (q[i] * torch.log(q[i] / p[i])).sum()
    return T**2 * total / teacher.shape[0]


def ref_train(pool, task, steps, lam, lr_lgs=0.05, lr_bas=0.1, decay=0.9, every=10, n=48):
    """A second, straightforward implementation of FlexSwitch's training (Eq. 6-9, 12-14) and finalization (Eq. 15),
    full batch. Returns the per-step terms and the final parameters."""
    keys = list(pool.pretrained)
    taus = {k: (pool.finetuned[task][k] - pool.pretrained[k]).reshape(-1) for k in keys}
    rngs = {k: ref_ranges(taus[k]) for k in keys}
    n_total = sum(t.numel() for t in taus.values())
    x = pool.exemplars(task, n)
    with torch.no_grad():
        teacher = pool.ops.logits(task, pool.finetuned[task], x)
    params = {
        k: {
            "s_pos": torch.zeros((), requires_grad=True),
            "s_neg": torch.zeros((), requires_grad=True),
            "kappa": torch.tensor(math.log(math.e - 1), requires_grad=True),  # softplus(kappa) = 1
            "w": torch.zeros(4, requires_grad=True),
        }
        for k in keys
    }
    opt = torch.optim.Adam(
        [{"params": [params[k][p] for k in keys for p in ("s_pos", "s_neg", "kappa")], "lr": lr_lgs},
         {"params": [params[k]["w"] for k in keys], "lr": lr_bas}]
    )
    hist = {"loss": [], "sparsity_term": [], "bits_term": [], "per": [], "scaled_sparsity": []}
    for step in range(steps):
        rho = omega = decay ** (step // every)
        weights, m_sum, scaled_sum, wbar_sum = {}, 0.0, 0.0, 0.0
        for k in keys:
            p = params[k]
            m = ref_gate(taus[k], rngs[k], p["s_pos"], p["s_neg"], rho)
            probs = torch.softmax(p["w"] / omega, 0)
            qm = sum(probs[i] * ref_quantize(taus[k], rngs[k], b)[0] for i, b in enumerate(W))  # Eq. 12
            scale = torch.log1p(torch.exp(p["kappa"]))  # softplus
            weights[k] = pool.pretrained[k] + (scale * m * qm).reshape(pool.pretrained[k].shape)
            m_sum = m_sum + m.sum()
            scaled_sum = scaled_sum + (scale * m).sum()
            wbar_sum = wbar_sum + (probs * torch.tensor(W, dtype=torch.float32)).sum()
        sparsity = m_sum / n_total
        bits = wbar_sum / (len(keys) * max(W))
        per = ref_kl(pool.ops.logits(task, weights, x), teacher)
        loss = sparsity + bits + lam * per  # Eq. 14
        opt.zero_grad()
        loss.backward()
        opt.step()
        for name, v in (("loss", loss), ("sparsity_term", sparsity), ("bits_term", bits), ("per", per),
                        ("scaled_sparsity", scaled_sum / n_total)):
            hist[name].append(float(v.detach()))
    final_rho = decay ** ((steps - 1) // every) if steps else 1.0
    return hist, {k: {p: v.detach() for p, v in params[k].items()} for k in keys}, taus, rngs, final_rho


def flex_cfg(**over):
    return fs.FlexConfig(**{"loss": "kl", "steps": 12, "batch_size": 48, "n_exemplars": 48, **over})


# ----------------------------------------------------------------------------------------------------------------
# Eq. 6: phi and the thresholds


@pytest.mark.parametrize("x, expect", [(0.0, 0.5), (1.0, 0.75), (-1.0, 0.25), (math.sqrt(3), 5 / 6),
                                       (-1 / math.sqrt(3), 1 / 3), (1e9, 1.0), (-1e9, 0.0)])
def test_eq6_phi_at_hand_values(x, expect):
    assert fs.phi(torch.tensor(x, dtype=torch.float64)).item() == pytest.approx(expect, abs=1e-9)


def test_eq6_thresholds_by_hand():
    tau = torch.tensor([0.5, 1.0, 2.0, -0.25, -3.0, 0.0])
    r = fs.ranges(tau)
    assert [float(v) for v in (r.vp_min, r.vp_max, r.vn_min, r.vn_max)] == [0.5, 2.0, 0.25, 3.0]
    t_pos, t_neg = fs.thresholds(r, torch.tensor(1.0), torch.tensor(-math.sqrt(3)))
    assert float(t_pos) == pytest.approx(0.5 + 0.75 * 1.5)  # phi(1) = 3/4 of r+ = 1.5 above v+min
    assert float(t_neg) == pytest.approx(0.25 + 2.75 / 6)  # phi(-sqrt 3) = 1/6 of r- = 2.75 above v-min


# ----------------------------------------------------------------------------------------------------------------
# Eq. 7: the gate and its width


@pytest.mark.parametrize("rho", [1.0, 0.5, 0.05])
def test_eq7_gate_by_hand(rho):
    tau = torch.tensor([0.5, 1.0, 2.0, -0.25, -3.0, 1.625, 1.9], dtype=torch.float64)
    r = fs.ranges(tau)  # v+ in [0.5, 2.0], v- in [0.25, 3.0]
    s_pos, s_neg = torch.tensor(1.0, dtype=torch.float64), torch.tensor(-math.sqrt(3), dtype=torch.float64)
    t_pos, t_neg = 0.5 + 0.75 * 1.5, 0.25 + 2.75 / 6
    sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    expect = [sig((v - t_pos) / (rho * 1.5)) + sig((-t_neg - v) / (rho * 2.75)) for v in tau.tolist()]
    got = fs.gate(tau, r, s_pos, s_neg, rho)
    assert got.tolist() == pytest.approx(expect, abs=1e-12)
    # at t+ itself the positive side is exactly one half, whatever rho; 2.0 sits 0.375 = 0.25 r+ above t+
    neg = lambda v: sig((-t_neg - v) / (rho * 2.75))  # noqa: E731
    assert float(got[5]) - neg(1.625) == pytest.approx(0.5, abs=1e-12)
    assert float(got[2]) - neg(2.0) == pytest.approx(sig(0.25 / rho), abs=1e-12)


def test_eq7_the_two_sides_use_their_own_range():
    """Swapping r+ and r- in the widths changes the gate: the case is asymmetric enough to pin each side."""
    tau = torch.tensor([0.5, 1.0, 2.0, -0.25, -3.0, -1.0])
    r = fs.ranges(tau)
    g = fs.gate(tau, r, torch.tensor(0.2), torch.tensor(-0.4), 1.0)
    swapped = fs.Ranges(r.vp_min, r.vp_min + r.rn, r.vn_min, r.vn_min + r.rp)
    ref = ref_gate(tau, ref_ranges(tau), torch.tensor(0.2), torch.tensor(-0.4), 1.0)
    torch.testing.assert_close(g, ref)
    assert not torch.allclose(fs.gate(tau, swapped, torch.tensor(0.2), torch.tensor(-0.4), 1.0), ref, atol=1e-3)


# ----------------------------------------------------------------------------------------------------------------
# The rho / omega schedule across steps (Sec. III-C2: start 1.0, x0.9 every 10 steps)


def test_temperature_schedule_across_steps(monkeypatch):
    pool = two_layer_pool(n_tasks=1)
    rhos, omegas = [], []
    gate, mixed = fs.gate, fs.mixed_bits

    def rec_gate(tau, r, s_pos, s_neg, rho):
        rhos.append(rho)
        return gate(tau, r, s_pos, s_neg, rho)

    def rec_mixed(w, omega, widths=fs.BIT_WIDTHS):
        omegas.append(omega)
        return mixed(w, omega, widths)

    monkeypatch.setattr(fs, "gate", rec_gate)
    monkeypatch.setattr(fs, "mixed_bits", rec_mixed)
    steps, n_mod = 25, 2
    fs.learn_task_switch(pool, "t0", flex_cfg(steps=steps), torch.Generator().manual_seed(0))
    expect = [0.9 ** (s // 10) for s in range(steps)]
    per_step = rhos[: steps * n_mod : n_mod]
    assert per_step == pytest.approx(expect, rel=1e-12)
    assert omegas == pytest.approx(expect, rel=1e-12)  # omega follows the same schedule (one call per step)
    assert rhos[steps * n_mod:] == pytest.approx([0.81] * n_mod)  # the hard mask at the final temperature
    # the knobs are wired: decay 0.5 every 3 steps
    rhos.clear()
    omegas.clear()
    fs.learn_task_switch(pool, "t0", flex_cfg(steps=7, decay=0.5, decay_every=3), torch.Generator().manual_seed(0))
    assert rhos[: 7 * n_mod : n_mod] == pytest.approx([1, 1, 1, 0.5, 0.5, 0.5, 0.25])


# ----------------------------------------------------------------------------------------------------------------
# Eq. 12-14: the objective, term by term, and the training it drives; Eq. 15: the finalization


@pytest.fixture(scope="module")
def trained():
    pool = two_layer_pool()
    # a fast schedule (x0.5 every 3 steps) so that 12 steps reach a temperature where the hard mask is selective
    cfg = flex_cfg(lam=0.7, decay=0.5, decay_every=3)
    modules, hist = fs.learn_task_switch(pool, "t1", cfg, torch.Generator().manual_seed(0))
    ref_hist, ref_params, taus, rngs, rho = ref_train(pool, "t1", 12, lam=0.7, decay=0.5, every=3)
    return pool, modules, hist, ref_hist, ref_params, taus, rngs, rho


def test_eq14_every_term_matches_the_reference_at_every_step(trained):
    _, _, hist, ref, *_ = trained
    for name in ("sparsity_term", "bits_term", "per", "loss"):
        assert hist[name] == pytest.approx(ref[name], rel=1e-4, abs=1e-6), name
    # each term is material here: removing any one moves the loss by far more than the tolerance
    for name in ("sparsity_term", "bits_term"):
        assert min(ref[name]) > 0.05
    assert min(0.7 * p for p in ref["per"]) > 1e-3
    # normalisations: |M|_1 over sum_l n_l (not per module), wbar over L max(W); at step 0, uniform bit logits
    assert ref["bits_term"][0] == pytest.approx((1 + 2 + 4 + 8) / 4 / 8)


def test_eq14_sparsity_term_is_on_the_unscaled_gate(trained):
    """Eq. 8/14 penalize |M|_1, not |softplus(kappa) M|_1: once kappa has moved the two differ, and ours is |M|_1."""
    _, _, hist, ref, *_ = trained
    gaps = [abs(a - b) for a, b in zip(ref["scaled_sparsity"][1:], ref["sparsity_term"][1:])]
    assert max(gaps) > 1e-3  # kappa moved: the scaled gate's mean differs from the unscaled one's
    assert hist["sparsity_term"][1:] == pytest.approx(ref["sparsity_term"][1:], rel=1e-4)


def test_eq14_lambda_weighs_the_preservation_loss():
    pool = two_layer_pool(n_tasks=1)
    lo = fs.learn_task_switch(pool, "t0", flex_cfg(lam=0.3, steps=30), torch.Generator().manual_seed(0))
    hi = fs.learn_task_switch(pool, "t0", flex_cfg(lam=30.0, steps=30), torch.Generator().manual_seed(0))
    # step 0: same parameters, so the losses differ by exactly (30 - 0.3) * per
    h_lo, h_hi = lo[1], hi[1]
    assert h_lo["per"][0] == pytest.approx(h_hi["per"][0])
    assert h_hi["loss"][0] - h_lo["loss"][0] == pytest.approx(29.7 * h_lo["per"][0], rel=1e-5)
    # and it changes what is learned: a heavier preservation weight keeps more entries
    kept = lambda mods: sum(int(m.mask.sum()) for m in mods.values())  # noqa: E731
    assert kept(hi[0]) > kept(lo[0])


def test_eq15_finalization_matches_the_reference(trained):
    """Hard mask 1(M > 0.5) at the final rho, b = W[argmax w], levels I(tau; b), scale softplus(kappa)."""
    _, modules, _, _, params, taus, rngs, rho = trained
    assert rho == pytest.approx(0.125)
    for k, m in modules.items():
        p = params[k]
        mask = ref_gate(taus[k], rngs[k], p["s_pos"], p["s_neg"], rho) > 0.5
        assert torch.equal(m.mask, mask), k
        assert m.bits == W[int(p["w"].argmax())], k
        assert m.scale == pytest.approx(float(torch.log1p(torch.exp(p["kappa"]))), rel=1e-5)
        assert abs(m.scale - 1.0) > 1e-3  # the learned scale moved away from its initial 1
        assert torch.equal(m.levels, ref_quantize(taus[k][mask], rngs[k], m.bits)[1])
        assert 0 < int(mask.sum()) < mask.numel()


def test_eq15_finalize_by_hand():
    tau = torch.tensor([0.5, 1.0, 2.0, -0.25, -3.0, -1.0])
    r = fs.ranges(tau)
    cfg = fs.FlexConfig()
    for w, bits in (([0.1, 2.0, -1.0, 0.5], 2), ([0.0, 0.0, 0.0, 0.3], 8), ([3.0, 2.0, 1.0, 0.0], 1)):
        m = fs.finalize_module(tau, r, cfg, torch.tensor(0.0), torch.tensor(0.0), torch.tensor(0.4),
                               torch.tensor(w), 1e-4)
        assert m.bits == bits
        assert m.scale == pytest.approx(math.log(1 + math.exp(0.4)))
        # s = 0: thresholds mid-range, t+ = 1.25, t- = 1.625: kept 2.0, -3.0
        assert m.mask.tolist() == [False, False, True, False, True, False]
        delta = 5.0 / 2**bits
        assert m.levels.tolist() == [min(int((v + 3.0) // delta), 2**bits - 1) for v in (2.0, -3.0)]


def test_eq12_mixture_weights_the_quantizations_by_the_softmax():
    """Eq. 12 inside the training step: at omega -> 0 the mixture is the argmax bit-width's quantizer, at omega = 1
    the softmax-weighted sum; checked through the switched model's output (the per term)."""
    pool = two_layer_pool(n_tasks=1)
    hist, *_ = ref_train(pool, "t0", 1, lam=1.0)
    ours = fs.learn_task_switch(pool, "t0", flex_cfg(steps=1, lam=1.0), torch.Generator().manual_seed(0))[1]
    assert ours["per"][0] == pytest.approx(hist["per"][0], rel=1e-5)
    # a mixture that ignored the softmax (e.g. the 8-bit quantizer alone) would preserve the task better
    taus = {k: (pool.finetuned["t0"][k] - pool.pretrained[k]) for k in pool.pretrained}
    x = pool.exemplars("t0", 48)
    teacher = pool.ops.logits("t0", pool.finetuned["t0"], x)
    m = {k: ref_gate(t.reshape(-1), ref_ranges(t.reshape(-1)), torch.tensor(0.0), torch.tensor(0.0), 1.0)
         for k, t in taus.items()}
    only8 = {k: pool.pretrained[k] + (m[k] * ref_quantize(t.reshape(-1), ref_ranges(t.reshape(-1)), 8)[0])
             .reshape(t.shape) for k, t in taus.items()}
    assert abs(float(ref_kl(pool.ops.logits("t0", only8, x), teacher)) - ours["per"][0]) > 1e-4


def test_mixed_bits_by_hand():
    w = torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 2.0]])
    e = [math.exp(v / 0.5) for v in (1.0, 0.0, 0.0, 2.0)]
    expect = sum(p * b for p, b in zip(e, W)) / sum(e)
    assert fs.mixed_bits(w, 0.5).tolist() == pytest.approx([3.75, expect])


# ----------------------------------------------------------------------------------------------------------------
# Eq. 9-11 per sample, and the stored scale


def test_eq11_cka_against_the_centering_matrix():
    g = torch.Generator().manual_seed(3)
    F_, Fh = torch.randn(7, 4, generator=g, dtype=torch.float64), torch.randn(7, 4, generator=g, dtype=torch.float64)
    H = torch.eye(7, dtype=torch.float64) - torch.ones(7, 7, dtype=torch.float64) / 7
    fro = lambda a: torch.sqrt((a**2).sum())  # noqa: E731
    expect = 1 - fro(F_.T @ H @ Fh) ** 2 / (fro(F_.T @ H @ F_) * fro(Fh.T @ H @ Fh))
    assert float(fs.loss_cka(Fh, F_)) == pytest.approx(float(expect), rel=1e-10)


def test_eq9_eq10_eq11_are_per_sample_on_per_query_outputs():
    """A detector's [B, Q, C] outputs: the per-sample quantity sums the image's Q queries, the mean is over B."""
    g = torch.Generator().manual_seed(4)
    B, Q, C = 3, 5, 4
    t, s = torch.randn(B, Q, C, generator=g, dtype=torch.float64), torch.randn(B, Q, C, generator=g, dtype=torch.float64)
    mse = sum(float(((t[i] - s[i]) ** 2).sum()) for i in range(B)) / B
    assert float(fs.loss_mse(s, t)) == pytest.approx(mse, rel=1e-12)
    kl = sum(float(ref_kl(s[i], t[i])) * Q for i in range(B)) / B  # ref_kl averages over its rows (the Q queries)
    assert float(fs.loss_kl(s, t)) == pytest.approx(kl, rel=1e-10)
    # the per-query mean would be Q times smaller: the normalisation is material
    assert float(fs.loss_mse(s.reshape(B * Q, C), t.reshape(B * Q, C))) == pytest.approx(mse / Q, rel=1e-12)
    # CKA: one row per image, its Q C outputs flattened
    assert float(fs.loss_cka(s, t)) == pytest.approx(float(fs.loss_cka(s.reshape(B, -1), t.reshape(B, -1))))
    assert abs(float(fs.loss_cka(s, t)) - float(fs.loss_cka(s.reshape(-1, C), t.reshape(-1, C)))) > 1e-3


def test_the_learned_scale_is_in_the_stored_reloaded_vector(trained):
    """Through merge -> file -> load: the rebuilt task vector is softplus(kappa) M_hard Q(tau; b), kappa trained."""
    pool = trained[0]
    _, _, _, _, params, taus, rngs, rho = trained
    p = METHODS.get("flexswitch").resolve({"steps": 12, "n_exemplars": 48, "batch_size": 48, "lam": 0.7,
                                           "decay": 0.5, "decay_every": 3, "codec": "packbits"})
    method = METHODS.get("flexswitch").obj(**p)
    # learn_switches seeds its batch generator per task; the full batch makes the draw irrelevant
    back = read_back(method.merge(pool))
    model = method.load(back, pool.pretrained, pool.tasks)
    for k in pool.pretrained:
        q = params[k]
        scale = float(torch.log1p(torch.exp(q["kappa"])))
        mask = ref_gate(taus[k], rngs[k], q["s_pos"], q["s_neg"], rho) > 0.5
        b = W[int(q["w"].argmax())]
        expect = torch.where(mask, scale * ref_quantize(taus[k], rngs[k], b)[0], torch.zeros(()))
        got = (model.weights("t1")[k] - pool.pretrained[k]).reshape(-1)
        torch.testing.assert_close(got, expect, rtol=1e-5, atol=1e-6)
        assert abs(scale - 1) > 1e-3


# ----------------------------------------------------------------------------------------------------------------
# Eq. 18-19: the learned metric; K-means per task


def ref_eq19(L, feats, labels, centres, centre_labels, C):
    total = 0.0
    for x, k in zip(feats, labels.tolist()):
        d = [float(torch.sqrt(((L @ x - L @ z) ** 2).sum())) for z in centres]
        nn = sorted(range(len(d)), key=lambda j: d[j])[:C]
        num = sum(1 / d[j] for j in nn if int(centre_labels[j]) == k)
        den = sum(1 / d[j] for j in nn)
        total += -math.log(max(num, 1e-12) / den)
    return total / len(feats)


def eq19_case():
    g = torch.Generator().manual_seed(5)
    centres = torch.randn(8, 4, generator=g, dtype=torch.float64)
    centre_labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    feats = torch.cat([centres[:4] + 0.8 * torch.randn(4, 4, generator=g, dtype=torch.float64),
                       centres[4:] + 0.8 * torch.randn(4, 4, generator=g, dtype=torch.float64)])
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    L = torch.randn(3, 4, generator=g, dtype=torch.float64)
    return L, feats, labels, centres, centre_labels


@pytest.mark.parametrize("C", [1, 3, 5])
def test_eq19_objective_by_hand(C):
    L, feats, labels, centres, cl = eq19_case()
    assert float(afs.metric_loss(L, feats, labels, centres, cl, C)) == pytest.approx(ref_eq19(L, feats, labels, centres, cl, C), rel=1e-9)


def test_eq19_is_over_the_C_nearest_only_and_weighs_by_inverse_distance():
    L, feats, labels, centres, cl = eq19_case()
    vals = {C: ref_eq19(L, feats, labels, centres, cl, C) for C in (4, 8)}
    assert abs(vals[4] - vals[8]) > 1e-2  # the neighbourhood matters in this case
    assert float(afs.metric_loss(L, feats, labels, centres, cl, 4)) != pytest.approx(vals[8], rel=1e-3)
    # uniform votes instead of 1/d would give another value here
    uniform = 0.0
    for x, k in zip(feats, labels.tolist()):
        d = torch.sqrt(((x @ L.T - centres @ L.T) ** 2).sum(1))
        nn = d.argsort()[:4]
        uniform += -math.log(max(float((cl[nn] == k).double().mean()), 1e-12))
    assert abs(uniform / 8 - vals[4]) > 1e-2
    assert float(afs.metric_loss(L, feats, labels, centres, cl, 4)) == pytest.approx(vals[4], rel=1e-9)


def test_eq19_training_lowers_the_objective():
    L0, feats, labels, centres, cl = eq19_case()
    feats, centres = feats.float(), centres.float()
    L, hist = afs.train_metric(feats, labels, centres, cl, rank=3, lr=0.05, epochs=60, neighbours=3)
    start = float(afs.metric_loss(afs.pca_init(centres, 3), feats, labels, centres, cl, 3))
    end = float(afs.metric_loss(L, feats, labels, centres, cl, 3))
    assert hist[0] == pytest.approx(start, rel=1e-5)
    assert end < 0.8 * start
    assert hist[-1] < hist[0]


def test_eq18_routing_distance_is_under_L():
    """d_L(a, b) = |L a - L b|: the model routes by KNN over the projected centres with the projected query."""
    refs = torch.tensor([[0.0, 10.0], [1.0, -10.0]])  # task 0 near x1 = 0, task 1 near x1 = 1; x2 is nuisance
    labels = torch.tensor([0, 1])
    L = torch.tensor([[1.0, 0.0]])  # keeps x1 only
    m = afs.AutoFlexSwitchModel({"w": torch.zeros(1)}, {"a": {"w": torch.ones(1)}, "b": {"w": torch.ones(1)}},
                                ["a", "b"], refs, labels, L, 1, {})
    x = torch.tensor([[0.9, 9.0], [0.1, -9.0]])  # Euclidean: x0 -> task 0, x1 -> task 1; under L: the reverse
    assert torch.equal(m.route(x), torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
    plain = afs.AutoFlexSwitchModel({"w": torch.zeros(1)}, {"a": {"w": torch.ones(1)}, "b": {"w": torch.ones(1)}},
                                    ["a", "b"], refs, labels, None, 1, {})
    assert torch.equal(plain.route(x), torch.tensor([[1.0, 0.0], [0.0, 1.0]]))


def test_kmeans_centres_are_per_task():
    """A_k: E centres of task k's own exemplar features (sklearn KMeans, seeded per task), nothing pooled."""
    from sklearn.cluster import KMeans

    from benchmark.routing import exemplar_features

    pool = two_layer_pool(n_tasks=2)
    p = METHODS.get("auto_flexswitch").resolve({"steps": 1, "n_exemplars": 24, "batch_size": 24, "centres": 3,
                                                "rank": 4, "metric_epochs": 2, "codec": "packbits"})
    back = read_back(METHODS.get("auto_flexswitch").obj(**p).merge(pool))
    feats, labels = exemplar_features(pool, 24)
    for ti in range(2):
        km = KMeans(n_clusters=3, n_init=10, random_state=pool.seed * 31 + ti).fit(feats[labels == ti].double().numpy())
        mine = back["refs"][back["ref_labels"].long() == ti]
        torch.testing.assert_close(mine, torch.from_numpy(km.cluster_centers_).float())
    # pooled K-means over both tasks would give other centres
    km_all = KMeans(n_clusters=6, n_init=10, random_state=0).fit(feats.double().numpy())
    assert not torch.allclose(torch.sort(back["refs"][:, 0]).values,
                              torch.sort(torch.from_numpy(km_all.cluster_centers_).float()[:, 0]).values, atol=1e-3)


# ----------------------------------------------------------------------------------------------------------------
# The learned metric, shown: two tasks that overlap along high-variance nuisance directions


def overlapping_tasks(n, g, e=20, sep=1.0, nuisance=5.0):
    """Task k's features: +-sep on axis 0 (small spread), N(0, nuisance^2) on the other e - 1 axes for both tasks,
    so Euclidean distance is dominated by directions that carry no task information."""
    x = nuisance * torch.randn(2 * n, e, generator=g)
    y = torch.arange(2 * n) % 2
    x[:, 0] = (2 * y - 1) * sep + 0.3 * torch.randn(2 * n, generator=g)
    return {f"t{k}": x[y == k] for k in range(2)}


def test_learned_metric_separates_what_euclidean_knn_confuses():
    g = torch.Generator().manual_seed(0)
    train, test = overlapping_tasks(150, g), overlapping_tasks(200, g)
    pre = {"lin.weight": 0.1 * torch.randn(3, 20, generator=g), "lin.bias": torch.zeros(3)}
    ft = {t: {k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in pre.items()} for t in train}
    ops = ToyOps(train)
    ops.pretrained = pre
    pool = Pool(tasks=list(train), pretrained=pre, finetuned=ft, ops=ops, seed=0, progress=False)
    accs = {}
    for routing in ("learned_metric", "centres", "plain_knn"):  # the paper's defaults otherwise (E 20, r 32, C 10)
        p = METHODS.get("auto_flexswitch").resolve({"steps": 1, "batch_size": 100, "codec": "packbits",
                                                    "routing": routing})
        method = METHODS.get("auto_flexswitch").obj(**p)
        model = method.load(read_back(method.merge(pool)), pool.pretrained, pool.tasks)
        hits = [(model.route(test[t]).argmax(1) == ti).float().mean() for ti, t in enumerate(pool.tasks)]
        accs[routing] = 100 * float(sum(hits) / 2)
        if routing == "learned_metric":
            ab = model.routing_ablations()["centres_euclidean"]
            ab_hits = [(ab(test[t]).argmax(1) == ti).float().mean() for ti, t in enumerate(pool.tasks)]
            accs["ablation"] = 100 * float(sum(ab_hits) / 2)
    print("routing accuracy, overlapping tasks:", accs)
    assert accs["plain_knn"] < 65 and accs["centres"] < 65  # Euclidean KNN is near chance (50%)
    assert accs["learned_metric"] > 95  # L finds axis 0
    assert accs["ablation"] == pytest.approx(accs["centres"])  # the recorded ablation is the centres router
