"""Is the tiny vision8 suite a real test of merging? Builds (or reuses) the clip_vit tiny checkpoints and scores,
straight from the states through the adapter's ops (no methods/ import):

* Pretrained (frozen zero-shot heads), Individual (each task's fine-tuned encoder),
* Task Arithmetic theta + lam * sum_k tau_k for each ``--lam``, and Weight Averaging (mean of the fine-tuned),

per task and on average, with the stage timings (suite generation, pretraining, heads, fine-tuning, evaluation).
The quality targets of the issue are checked at the end.

    .venv/bin/python benchmarks/tiny_suite_check.py                       # default cache
    .venv/bin/python benchmarks/tiny_suite_check.py --cache-root /tmp/c   # a cold build in a fresh cache
    .venv/bin/python benchmarks/tiny_suite_check.py --set finetune_lr=5e-4 --config hidden_size=96
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmark.cache import Cache  # noqa: E402
from benchmark.registry import BACKBONES, SUITES  # noqa: E402


def _coerce(v: str):
    for t in (int, float):
        try:
            return t(v)
        except ValueError:
            pass
    return v


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backbone", default="clip_vit_b32")
    ap.add_argument("--profile", default="tiny")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache-root", default=None)
    ap.add_argument("--lam", type=float, nargs="*", default=[0.3])
    ap.add_argument("--set", action="append", default=[], help="recipe override key=value")
    ap.add_argument("--config", action="append", default=[], help="model config override key=value")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None, help="write the table as JSON here")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from backbones import clip_vit

    if args.set:
        kv = dict(s.split("=", 1) for s in args.set)
        clip_vit.RECIPES[args.profile] = dataclasses.replace(
            clip_vit.RECIPES[args.profile], **{k: _coerce(v) for k, v in kv.items()}
        )
    if args.config:
        for s in args.config:
            k, v = s.split("=", 1)
            clip_vit.CONFIGS[args.backbone][args.profile][k] = int(v)

    cache = Cache(args.cache_root)
    timings, cpu = {}, {}
    c0 = time.process_time()
    t0 = time.perf_counter()
    suite = SUITES.get("vision8").obj(profile=args.profile, seed=args.seed, cache=cache, progress=not args.no_progress)
    suite.prepare()
    timings["suite"] = time.perf_counter() - t0
    cpu["suite"] = time.process_time() - c0
    c0 = time.process_time()
    bb = BACKBONES.get(args.backbone).obj(profile=args.profile, suite=suite, seed=args.seed, cache=cache,
                                          progress=not args.no_progress)
    t0 = time.perf_counter()
    bb.prepare()
    timings["checkpoints"] = time.perf_counter() - t0
    cpu["checkpoints"] = time.process_time() - c0
    ops = bb.ops()
    tasks = bb.tasks
    pre = bb.pretrained_state()
    ft = {t: bb.finetuned_state(t) for t in tasks}
    tv = {t: {k: ft[t][k] - pre[k] for k in pre} for t in tasks}

    def score(weights_for) -> dict[str, float]:
        out = {}
        for t in tasks:
            w = weights_for(t)
            hit = n = 0
            with torch.no_grad():
                for x, y in bb.batches(t, "test", 512):
                    hit += int((ops.logits(t, w, x).argmax(1) == y).sum())
                    n += len(y)
            out[t] = 100.0 * hit / n
        return out

    rows = {}
    t0, c0 = time.perf_counter(), time.process_time()
    rows["pretrained"] = score(lambda t: None)
    timings["eval_one_method"] = time.perf_counter() - t0
    cpu["eval_one_method"] = time.process_time() - c0
    rows["individual"] = score(lambda t: ft[t])
    for lam in args.lam:
        ta = {k: pre[k] + lam * sum(tv[t][k] for t in tasks) for k in pre}
        rows[f"TA {lam:g}"] = score(lambda t, ta=ta: ta)
    wa = {k: sum(ft[t][k] for t in tasks) / len(tasks) for k in pre}
    rows["weight avg"] = score(lambda t: wa)
    # task-vector geometry: mean pairwise cosine and norms
    flat = torch.stack([torch.cat([v.flatten() for v in tv[t].values()]) for t in tasks])
    cos = torch.nn.functional.normalize(flat, dim=1) @ torch.nn.functional.normalize(flat, dim=1).T
    off = cos[~torch.eye(len(tasks), dtype=torch.bool)]
    pnorm = torch.cat([v.flatten() for v in pre.values()]).norm()

    w = max(len(r) for r in rows)
    print()
    print(" " * w + "  " + " ".join(f"{t[:9]:>9}" for t in tasks) + "       AVG")
    avgs = {}
    for name, r in rows.items():
        avgs[name] = sum(r.values()) / len(r)
        print(f"{name:<{w}}  " + " ".join(f"{r[t]:9.1f}" for t in tasks) + f"  {avgs[name]:8.2f}")
    print(f"\ntask vectors: |tau|/|theta| = {flat.norm(dim=1).mean() / pnorm:.3f}, pairwise cosine mean "
          f"{off.mean():.3f} (max {off.max():.3f})")
    print("wall (s): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
    print(f"cpu  (s, all threads, {torch.get_num_threads()} threads): " + ", ".join(f"{k} {v:.1f}" for k, v in cpu.items()))
    pre_a, ind_a, ta_a = avgs["pretrained"], avgs["individual"], avgs.get("TA 0.3")
    if ta_a is not None:
        checks = {
            "Individual >= Pretrained + 25": ind_a >= pre_a + 25,
            "TA(0.3) <= Individual - 8": ta_a <= ind_a - 8,
            "TA(0.3) >= Pretrained + 5": ta_a >= pre_a + 5,
            "WeightAvg < Individual - 8": avgs["weight avg"] <= ind_a - 8,
        }
        for k, ok in checks.items():
            print(f"  [{'ok' if ok else 'FAIL'}] {k}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "averages": avgs, "timings": timings, "cpu": cpu}, indent=1))


if __name__ == "__main__":
    main()
