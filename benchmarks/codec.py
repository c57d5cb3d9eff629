"""The switch codecs (``sass``, ``entropy``, ``packbits``) on switch-sized masks: size and speed.

For every codec: bits per parameter of the encoded stream (the whole ``stream`` part, frame and module table
included), beside SASS's Eq. 16 (auto-flexswitch.txt, Sec. III-C4) and the i.i.d. entropy bound
sum over modules of n (H(alpha) + (1 - alpha) b), alpha the module's realized sparsity; the ratios to both; and
encode / decode throughput in M params/s (one core; best of --repeats runs; round trip checked bit-exactly).

    (a) Bernoulli masks with the per-module shapes of CLIP ViT-B/32's vision encoder and projection (87.85 M
        params, built from transformers.CLIPVisionConfig() on the meta device), alpha in {0.5, 0.7, 0.9, 0.97},
        b = 1.
    (b) Magnitude masks (T-Switch's P-Spar: the top 1 - alpha of the positive and of the negative entries of each
        module, b = 1 sign) of heavy-tailed synthetic task vectors tau = s_row * t_col * eps, eps ~ Student-t(3),
        log s, log t ~ N(0, sigma^2) (--sigma, default 0.5), same shapes.
    (c) With --task-vectors FILE.safetensors: the same P-Spar masks of the task vectors in that file (every
        floating tensor is one module).
    (d) SASS against Eq. 16 over the grid of the paper's Fig. 7: n in 2**10..2**16 (and 2**20, 2**24), b in 1..8,
        ten alpha evenly in [0.1, 0.98], c by Eq. 17. Every trial's measured length must equal the exact formula;
        the mean over trials is compared with Eq. 16, with enough trials that the standard error is 0.15 % of it (at most 20000)
        (and the paper's 10 trials, for reference).

    .venv/bin/python benchmarks/codec.py                    # (a), (b), (d): a few minutes on 2 cores
    .venv/bin/python benchmarks/codec.py --quick            # fewer layers and a smaller grid
    .venv/bin/python benchmarks/codec.py --task-vectors results/tv.safetensors --only c
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # one core: the throughput is per core
    os.environ.setdefault(_var, "1")

import numpy as np
import torch

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmark.storage import get_codec  # noqa: E402
from methods.codecs._sparse import SparseCodes  # noqa: E402
from methods.codecs.sass import choose_group_size, encode_module, sass_bits, sass_expected_bits  # noqa: E402

CODECS = [
    ("sass", {}),
    ("sass", {"group": "exact"}),
    ("entropy", {}),
    ("entropy", {"contexts": False}),
    ("packbits", {}),
    ("packbits", {"zstd": True}),
]
ALPHAS = (0.5, 0.7, 0.9, 0.97)


def label(name: str, params: dict) -> str:
    return name + ("[" + ",".join(f"{k}={v}" for k, v in params.items()) + "]" if params else "")


def H(p: float) -> float:
    return 0.0 if p <= 0 or p >= 1 else -(p * math.log2(p) + (1 - p) * math.log2(1 - p))


def vit_b32_shapes(layers: int | None = None) -> dict[str, tuple[int, ...]]:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    cfg = CLIPVisionConfig()
    if layers is not None:
        cfg.num_hidden_layers = layers
    with torch.device("meta"):
        model = CLIPVisionModelWithProjection(cfg)
    return {k: tuple(p.shape) for k, p in model.named_parameters()}


# ----------------------------------------------------------------------------------------------------------------
# Switches


def bernoulli_switch(shapes, alpha: float, b: int, rng: np.random.Generator) -> dict[str, SparseCodes]:
    out = {}
    for k, s in shapes.items():
        n = math.prod(s)
        mask = rng.random(n, dtype=np.float32) >= alpha
        codes = rng.integers(0, 1 << b, int(mask.sum()), dtype=np.uint8)
        out[k] = SparseCodes(s, torch.from_numpy(mask), torch.from_numpy(codes), b)
    return out


def synthetic_task_vector(shapes, sigma: float, rng: np.random.Generator) -> dict[str, np.ndarray]:
    out = {}
    for k, s in shapes.items():
        eps = rng.standard_t(3, math.prod(s)).astype(np.float32)
        if len(s) >= 2:
            rows, cols = s[0], math.prod(s[1:])
            scale = np.exp(sigma * rng.standard_normal(rows))[:, None] * np.exp(sigma * rng.standard_normal(cols))[None, :]
            eps = (eps.reshape(rows, cols) * scale.astype(np.float32)).reshape(-1)
        out[k] = eps.reshape(s)
    return out


def pspar_switch(tv: dict[str, np.ndarray], alpha: float) -> dict[str, SparseCodes]:
    """T-Switch's P-Spar: keep the top 1 - alpha of the positive and of the negative entries; code = sign bit."""
    out = {}
    for k, t in tv.items():
        flat = np.asarray(t, dtype=np.float32).reshape(-1)
        mask = np.zeros(flat.size, dtype=bool)
        for sign in (1.0, -1.0):
            v = flat * sign
            sel = np.flatnonzero(v > 0)
            keep = int(round((1 - alpha) * sel.size))
            if keep:
                vals = v[sel]
                thr = np.partition(vals, vals.size - keep)[vals.size - keep]
                mask[sel[vals >= thr]] = True
        codes = (flat[mask] > 0).astype(np.uint8)
        out[k] = SparseCodes(tuple(t.shape), torch.from_numpy(mask), torch.from_numpy(codes), 1)
    return out


# ----------------------------------------------------------------------------------------------------------------
# Measuring


REPEATS = 1


def measure(switch: dict[str, SparseCodes], nominal_alpha: float | None) -> list[dict]:
    n = sum(v.n for v in switch.values())
    bound = sum(v.n * H(v.nnz / v.n) + v.nnz * v.bits for v in switch.values() if v.n)
    eq16 = sum(
        sass_expected_bits(v.n, nominal_alpha if nominal_alpha is not None else 1 - v.nnz / v.n, v.bits)
        for v in switch.values() if v.n
    )
    rows = []
    for name, params in CODECS:
        codec = get_codec(name, params)
        t_enc = t_dec = math.inf
        for _ in range(REPEATS):  # best of REPEATS: the machine may be shared
            t0 = time.perf_counter()
            parts, meta = codec.encode(switch)
            t_enc = min(t_enc, time.perf_counter() - t0)
            t0 = time.perf_counter()
            back = codec.decode(parts, meta)
            t_dec = min(t_dec, time.perf_counter() - t0)
        ok = list(back) == list(switch) and all(back[k].equal(v) for k, v in switch.items())
        bits = 8 * sum(t.numel() * t.element_size() for t in parts.values())
        rows.append({
            "codec": label(name, params), "bits_per_param": bits / n, "eq16_bits_per_param": eq16 / n,
            "bound_bits_per_param": bound / n, "ratio_to_bound": bits / bound, "ratio_to_eq16": bits / eq16,
            "encode_mps": n / t_enc / 1e6, "decode_mps": n / t_dec / 1e6, "lossless": ok, "params": n,
        })
        del back, parts
    return rows


def print_table(title: str, results: dict[str, list[dict]]) -> None:
    print(f"\n### {title}\n")
    print("| alpha | codec | bits/param | Eq. 16 | bound | x bound | x Eq. 16 | enc M/s | dec M/s | exact |")
    print("| ---: | :--- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | :---: |")
    for key, rows in results.items():
        for r in rows:
            print(
                f"| {key} | {r['codec']} | {r['bits_per_param']:.4f} | {r['eq16_bits_per_param']:.4f} | "
                f"{r['bound_bits_per_param']:.4f} | {r['ratio_to_bound']:.4f} | {r['ratio_to_eq16']:.4f} | "
                f"{r['encode_mps']:.0f} | {r['decode_mps']:.0f} | {'yes' if r['lossless'] else 'NO'} |"
            )
    sys.stdout.flush()


# ----------------------------------------------------------------------------------------------------------------
# (d) SASS vs Eq. 16


def sass_grid(
    ns: list[int], bs: list[int], rng: np.random.Generator, min_trials: int = 10, rel_se: float = 0.0015,
    max_trials: int = 20000,
) -> dict:
    alphas = np.linspace(0.1, 0.98, 10)
    worst = {"adaptive": (0.0, None), "paper10": (0.0, None), "z": (0.0, None)}
    per_n = {}
    exact_all = True
    min_vs_indep = {}
    for n in ns:
        dev_n = 0.0
        for alpha in alphas:
            alpha = float(alpha)
            c = choose_group_size(n, alpha)
            for b in bs:
                w = math.ceil(math.log2(c)) + b + 1
                expected = sass_expected_bits(n, alpha, b, c)
                sd = math.sqrt(n * alpha * (1 - alpha)) * w
                trials = int(min(max(min_trials, math.ceil((sd / (rel_se * expected)) ** 2)), max_trials))
                sizes = np.empty(trials)
                done = 0
                chunk = max(1, min(trials, 2**24 // n))
                while done < trials:
                    k = min(chunk, trials - done)
                    masks = rng.random((k, n), dtype=np.float32) >= alpha
                    for mask in masks:
                        nnz = int(np.count_nonzero(mask))
                        codes = rng.integers(0, 1 << b, nnz, dtype=np.uint8)
                        payload, nbits = encode_module(mask, codes, b, c)
                        groups = int(np.count_nonzero(mask.reshape(-1, c).any(axis=1)))
                        exact_all &= nbits == sass_bits(n, c, groups, nnz, b) and payload.size == (nbits + 7) // 8
                        sizes[done] = nbits
                        done += 1
                dev = sizes.mean() / expected - 1
                dev10 = sizes[:10].mean() / expected - 1 if trials >= 10 else 0.0
                z = (sizes.mean() - expected) / (sd / math.sqrt(trials)) if sd else 0.0
                cfg = {"n": n, "alpha": round(alpha, 4), "b": b, "c": c, "trials": trials}
                for key, val in (("adaptive", dev), ("paper10", dev10), ("z", z)):
                    if abs(val) > abs(worst[key][0]):
                        worst[key] = (float(val), cfg)
                dev_n = max(dev_n, abs(dev))
                if abs(alpha - 0.98) < 1e-9:
                    min_vs_indep[(n, b)] = sizes.mean() / ((b + 1) * n)
        per_n[n] = dev_n
    return {"worst": worst, "per_n": per_n, "exact": exact_all, "sass_over_indep_at_0.98": min_vs_indep}


def print_grid(res: dict) -> None:
    print("\n### (d) SASS measured vs Eq. 16, Bernoulli masks (Fig. 7 grid: b in 1..8, 10 alpha in [0.1, 0.98])\n")
    print(f"every trial's measured length == sass_bits(n, c, groups, nnz, b): {'yes' if res['exact'] else 'NO'}\n")
    print("| n | max |mean / Eq. 16 - 1| over alpha, b |")
    print("| ---: | ---: |")
    for n, d in res["per_n"].items():
        print(f"| 2^{int(math.log2(n))} | {100 * d:.3f} % |")
    w = res["worst"]
    print(f"\nworst mean deviation: {100 * w['adaptive'][0]:+.3f} % at {w['adaptive'][1]}")
    print(f"worst z-score of the mean (Binomial standard error): {w['z'][0]:+.2f} at {w['z'][1]}")
    print(f"worst deviation of a 10-trial mean (the paper's protocol): {100 * w['paper10'][0]:+.3f} % at {w['paper10'][1]}")
    r = res["sass_over_indep_at_0.98"]
    print(f"SASS / Indep ((b + 1) n bits) at alpha = 0.98: {min(r.values()):.4f} .. {max(r.values()):.4f}")
    sys.stdout.flush()


# ----------------------------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="2 transformer layers, n <= 2**16 in the grid")
    ap.add_argument("--only", default="abcd", help="sections to run, e.g. 'ab' (c needs --task-vectors)")
    ap.add_argument("--sigma", type=float, default=0.5, help="row/column log-scale spread of the synthetic tau")
    ap.add_argument("--task-vectors", type=Path, help="safetensors file of task vectors (every float tensor)")
    ap.add_argument("--alphas", default=",".join(map(str, ALPHAS)))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="also write all numbers to this JSON file")
    ap.add_argument("--repeats", type=int, default=1, help="time encode/decode this many times, keep the best")
    args = ap.parse_args()
    global REPEATS
    REPEATS = max(1, args.repeats)
    alphas = [float(a) for a in args.alphas.split(",")]
    rng = np.random.default_rng(args.seed)
    out: dict = {}
    shapes = vit_b32_shapes(2 if args.quick else None) if set(args.only) & set("ab") else {}
    total = sum(math.prod(s) for s in shapes.values())
    if "a" in args.only:
        res = {}
        for a in alphas:
            res[a] = measure(bernoulli_switch(shapes, a, 1, rng), a)
        print_table(f"(a) Bernoulli masks, CLIP ViT-B/32 vision shapes ({total / 1e6:.2f} M params, {len(shapes)} modules), b = 1", res)
        out["a"] = {str(k): v for k, v in res.items()}
    if "b" in args.only:
        tv = synthetic_task_vector(shapes, args.sigma, rng)
        res = {a: measure(pspar_switch(tv, a), None) for a in alphas}
        del tv
        print_table(
            f"(b) P-Spar magnitude masks of synthetic task vectors (Student-t(3) x row/column log-normal scales, "
            f"sigma = {args.sigma}), ViT-B/32 shapes, b = 1 (sign); Eq. 16 at each module's realized alpha", res)
        out["b"] = {str(k): v for k, v in res.items()}
    if "c" in args.only and args.task_vectors is not None:
        from safetensors.numpy import load_file

        tv = {k: v for k, v in load_file(str(args.task_vectors)).items() if np.issubdtype(v.dtype, np.floating)}
        n = sum(v.size for v in tv.values())
        res = {a: measure(pspar_switch(tv, a), None) for a in alphas}
        print_table(f"(c) P-Spar masks of {args.task_vectors} ({n / 1e6:.2f} M params, {len(tv)} tensors), b = 1", res)
        out["c"] = {str(k): v for k, v in res.items()}
    if "d" in args.only:
        t0 = time.perf_counter()
        res = sass_grid([2**e for e in range(10, 17)], list(range(1, 9)), rng)
        print_grid(res)
        if not args.quick:
            big = sass_grid([2**20, 2**24], [1, 4, 8], rng, min_trials=1)
            print("\nlarger n (2^20, 2^24; b in 1, 4, 8; one trial each, c by Eq. 17):")
            print(f"every length == the exact formula: {'yes' if big['exact'] else 'NO'}; worst deviation from "
                  f"Eq. 16: {100 * big['worst']['adaptive'][0]:+.4f} % at {big['worst']['adaptive'][1]}")
            res["large"] = {"per_n": big["per_n"], "worst": big["worst"], "exact": big["exact"]}
        print(f"({time.perf_counter() - t0:.0f} s)")
        res["sass_over_indep_at_0.98"] = {f"{n},{b}": v for (n, b), v in res["sass_over_indep_at_0.98"].items()}
        out["d"] = res
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()
