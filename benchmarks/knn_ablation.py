"""Auto-Switch over the exemplars per task N and the neighbours C: average score and routing accuracy.

The paper's ablation: t-switch.txt Sec. 4.3 / supplementary Sec. 8.2 (ViT-B/32: more exemplars help, more
neighbours hurt as they approach the query-set size) and auto-flexswitch.txt Sec. IV-B / Fig. 10 (N in
{100, 300, 500}, C in {5, 10, 20}: stable at C = 10). Every cell is one :func:`benchmark.runner.run` call (records
in ``--results-dir``, reused when present, see ``alpha_sweep.py``). Routing accuracy is the share of test samples
whose largest weight w_k(x) is their own task's (the runner's figure).

    .venv/bin/python benchmarks/knn_ablation.py --results-dir /tmp/h6_results
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from alpha_sweep import common_args, record_for, spec_for  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common_args(ap)
    ap.add_argument("--exemplars", nargs="+", type=int, default=[10, 50, 100, 300], help="N per task")
    ap.add_argument("--neighbours", nargs="+", type=int, default=[1, 5, 10, 20], help="C")
    ap.add_argument("--alpha", type=float, default=0.7)
    args = ap.parse_args(argv)

    ind = record_for(spec_for(args, "individual"))
    grid = {
        (n, c): record_for(spec_for(args, "auto_switch", alpha=args.alpha, n_exemplars=n, neighbours=c))
        for n in args.exemplars
        for c in args.neighbours
    }
    cols = " ".join(f"{'C=' + str(c):>8}" for c in args.neighbours)
    print(f"auto_switch, alpha={args.alpha}, on {args.backbone} / {ind['suite']} ({args.profile}, seed {args.seed});"
          f" Individual AVG {ind['average']:.2f}")
    for title, get in (
        ("AVG score", lambda r: r["average"]),
        ("routing accuracy (%)", lambda r: r["extra"]["routing_accuracy"]["AVG"]),
    ):
        print(f"\n{title}")
        print(f"{'N':>6} {cols} {'MB':>8}")
        for n in args.exemplars:
            row = " ".join(f"{get(grid[n, c]):8.2f}" for c in args.neighbours)
            print(f"{n:>6} {row} {grid[n, args.neighbours[0]]['storage_bytes'] / 1e6:8.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
