"""What each sweep executor costs on top of the runs themselves: the same small sweep, run by the sequential
executor (the baseline), the process pool (``--jobs``) and Ray (a local instance), one after another in this
process, each into a fresh results folder.

The sweep is ``--runs`` settings of task_arithmetic's ``scaling_coef`` on one backbone, real runs (load the cached
checkpoints, merge, write and reload the artifact, evaluate). The checkpoints are built (or found in the cache)
before any timing, by a run in this process, so the sequential executor also starts with the suite and models
already in memory, as every run after a sequential sweep's first does; the pool's and Ray's workers load them from
the disk cache in each run (part of their "inside" time). Printed per executor: wall time, wall time per run, the ratio of its wall time to the
sequential executor's, and the mean of the runs' own times (what each run reports from inside its worker), so
wall minus that, spread over the workers, is the dispatch overhead: process start, imports, Ray's start-up.

    .venv/bin/python benchmarks/sweep_overhead.py                                   # micro profile, seconds
    .venv/bin/python benchmarks/sweep_overhead.py --profile tiny --backbone clip_vit_b32 --runs 8
    .venv/bin/python benchmarks/sweep_overhead.py --executors local pool            # without Ray
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmark.executors import make_executor  # noqa: E402
from benchmark.runner import RunSpec, run  # noqa: E402
from benchmark.sweep import execute, expand  # noqa: E402

EXECUTORS = ("local", "pool", "ray")


def sweep_doc(args: argparse.Namespace) -> dict:
    coefs = [round(0.05 + 0.05 * i, 2) for i in range(args.runs)]
    return {"profile": args.profile, "seeds": [0], "backbones": [args.backbone],
            "methods": {"task_arithmetic": {"scaling_coef": coefs}}}


def warm(args: argparse.Namespace, results: Path) -> float:
    """One run outside the timing, so every executor finds the suite and the checkpoints cached."""
    t0 = time.perf_counter()
    run(RunSpec(method="task_arithmetic", backbone=args.backbone, profile=args.profile, seed=0,
                results_dir=str(results), progress=False))
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="micro", help="micro (default) or tiny")
    ap.add_argument("--backbone", default="clip_vit_b32")
    ap.add_argument("--runs", type=int, default=8)
    ap.add_argument("--jobs", type=int, default=2, help="processes of the pool, CPUs of the Ray instance")
    ap.add_argument("--executors", nargs="+", choices=EXECUTORS, default=list(EXECUTORS))
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    with tempfile.TemporaryDirectory(prefix="sweep_overhead_") as tmp:
        tmp = Path(tmp)
        print(f"warm-up run (builds or finds the {args.profile} {args.backbone} checkpoints): "
              f"{warm(args, tmp / 'warm'):.1f} s")
        rows = []
        for name in args.executors:
            results = tmp / name
            sweep = expand(sweep_doc(args), source="sweep_overhead", results_dir=results)
            if name == "local":
                ex = make_executor("local", jobs=1)
            elif name == "pool":
                ex = make_executor("local", jobs=args.jobs, max_retries=0)
            else:
                ex = make_executor("ray", jobs=args.jobs, max_retries=0)
            s = execute(sweep, ex, results, progress=False)
            if s.failed:
                print(f"{name}: {len(s.failed)} runs failed, e.g. {s.failed[0].error}", file=sys.stderr)
                return 1
            inner = sum(o.seconds for o in s.outcomes) / max(len(s.outcomes), 1)
            rows.append((f"{name}" + ("" if name == "local" else f" ({args.jobs})"), s.wall_s, len(s.outcomes),
                         inner))

    base = rows[0][1] if rows and rows[0][0] == "local" else None
    print(f"\n{args.runs} runs of task_arithmetic on {args.backbone} ({args.profile}), {os.cpu_count()} CPUs")
    print(f"{'executor':<12} {'wall s':>8} {'s / run':>8} {'x local':>8} {'run s (inside)':>15}")
    for label, wall, n, inner in rows:
        ratio = f"{wall / base:8.2f}" if base else f"{'':>8}"
        print(f"{label:<12} {wall:8.1f} {wall / n:8.2f} {ratio} {inner:15.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
