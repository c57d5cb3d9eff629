"""Mutation check of tests/test_flexswitch_equations.py: alters one term of Eq. 6-19 at a time in the method's
source, runs the equation tests, restores the file, and prints CAUGHT or MISSED per alteration. Every line must say
CAUGHT: a test that still passes with a term removed is not a test of that term.

    HF_HUB_OFFLINE=1 python scripts/flexswitch_mutations.py
"""
import subprocess, sys, shutil
muts = [
 ("methods/flexswitch.py", "sparse_term = sparse_term + m.sum()", "sparse_term = sparse_term + (F.softplus(kappa[i]) * m).sum()"),
 ("methods/flexswitch.py", "mixed_bits(w, omega).sum() / (L * max(BIT_WIDTHS))", "mixed_bits(w, omega).sum() / L"),
 ("methods/flexswitch.py", "loss = sparse_term + bits_term + cfg.lam * per", "loss = sparse_term + bits_term + per"),
 ("methods/flexswitch.py", "loss = sparse_term + bits_term + cfg.lam * per", "loss = bits_term + cfg.lam * per"),
 ("methods/flexswitch.py", "m = m + _soft_step(tau - t_pos, rho * r.rp)", "m = m + _soft_step(tau - t_pos, r.rp)"),
 ("methods/flexswitch.py", "bits = BIT_WIDTHS[int(w.argmax())] if", "bits = BIT_WIDTHS[-1] if"),
 ("methods/flexswitch.py", "levels, float(F.softplus(kappa)),", "levels, 1.0,"),
 ("methods/flexswitch.py", "return torch.atan(x) / math.pi + 0.5", "return torch.sigmoid(x)"),
 ("methods/flexswitch.py", "            rho *= cfg.decay\n", "            rho *= cfg.decay ** 2\n"),
 ("methods/flexswitch.py", "return per_sample_mean((teacher - student) ** 2)", "return ((teacher - student) ** 2).sum(-1).mean()"),
 ("methods/flexswitch.py", "vals = (torch.softmax(w[i] / omega, -1)", "vals = (torch.softmax(w[i], -1)"),
 ("methods/auto_flexswitch.py", "inv = 1.0 / nd", "inv = torch.ones_like(nd)"),
 ("methods/auto_flexswitch.py", "c = min(neighbours, centres.shape[0])", "c = centres.shape[0]"),
 ("methods/auto_flexswitch.py", "opt.step()\n        hist.append", "hist.append"),
 ("methods/auto_flexswitch.py", "cents = [kmeans_centres(f, p[\"centres\"], pool.seed * 31 + ti) for ti, f in enumerate(feats)]", "cents = [kmeans_centres(feats_t, p[\"centres\"], pool.seed * 31 + ti) for ti, f in enumerate(feats)]"),
]
missed = 0
for path, a, b in muts:
    src = open(path).read()
    assert a in src, a
    open(path, "w").write(src.replace(a, b, 1))
    try:
        r = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "tests/test_flexswitch_equations.py"], capture_output=True, text=True)
        missed += r.returncode == 0
        print("CAUGHT" if r.returncode else "MISSED", "|", b.strip()[:70], flush=True)
    finally:
        open(path, "w").write(src)
sys.exit(1 if missed else 0)
