"""T-Switch and Auto-Switch over the sparsity alpha in {0.0, 0.1, ..., 0.9}, beside Individual.

The paper's curve: t-switch.txt Sec. 4.3 / Fig. 6 (merging results with discard ratios 0.0-0.9 on ViT-B/32: rising
with alpha, T-Switch 91.14 at alpha = 0.7 above Individual's 91.01, falling beyond) and supplementary Sec. 8.4
(per task, best at 0.6-0.7); auto-flexswitch.txt Sec. III-B1 / Fig. 1 (P-Spar: stable or rising up to alpha = 0.7,
a visible decline after) and Fig. 9 (Auto-Switch shrinking at large alpha).

Every point is one :func:`benchmark.runner.run` call, so its storage is the measured artifact file and the model
evaluated is the one reloaded from it. Records go to ``--results-dir``; a point whose record (same config hash) is
already there is reused, so an interrupted sweep resumes. The table gives per-task scores, AVG, AVG relative to
Individual, storage (MB = 10^6 bytes) and, for Auto-Switch, the routing accuracy; then, per method, whether the
paper's shape (a rise up to alpha ~ 0.6-0.7, a fall after) shows.

    .venv/bin/python benchmarks/alpha_sweep.py --results-dir /tmp/h6_results
    .venv/bin/python benchmarks/alpha_sweep.py --methods t_switch --alphas 0.0 0.5 0.7 0.9
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmark.records import config_hash, load_records  # noqa: E402
from benchmark.runner import RunSpec, resolve, run  # noqa: E402

ALPHAS = [round(0.1 * i, 1) for i in range(10)]


def record_for(spec: RunSpec) -> dict[str, Any]:
    """The record of ``spec``: an existing one in ``spec.results_dir`` with the same config hash, else a new run."""
    res = resolve(spec)
    h = config_hash(spec.method, res.params, spec.backbone, res.suite.name, spec.profile, spec.seed)
    if Path(spec.results_dir).exists():
        for rec in load_records(spec.results_dir):
            if rec.get("config_hash") == h:
                return rec
    print(f"running {spec.method} {spec.overrides} ...", file=sys.stderr, flush=True)
    rec, _ = run(spec)
    return rec


def common_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--backbone", default="clip_vit_b32")
    ap.add_argument("--profile", default="tiny")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--results-dir", default="/tmp/h6_results")
    ap.add_argument("--cache-root", default=None, help="the harness cache (default: $MERGE_BENCH_CACHE or ~/.cache)")
    ap.add_argument("--progress", action="store_true", help="show the runner's progress bars")


def spec_for(args: argparse.Namespace, method: str, **overrides: Any) -> RunSpec:
    return RunSpec(method=method, backbone=args.backbone, profile=args.profile, seed=args.seed,
                   overrides=overrides, results_dir=args.results_dir, cache_root=args.cache_root,
                   progress=args.progress)


def shape_verdict(curve: dict[float, float]) -> str:
    """Where the AVG peaks, how much it rose from the lowest alpha and fell to the highest, and whether the curve
    has the paper's two features: a rise then a fall (the peak at least 0.05 points above both ends; scores are
    printed to 0.01), and the peak at alpha 0.6-0.7 (t-switch.txt Fig. 6 and supplementary Table 6 on ViT-B/32)."""
    alphas = sorted(curve)
    peak = max(alphas, key=lambda a: (curve[a], -a))
    lo, hi = alphas[0], alphas[-1]
    rise, fall = curve[peak] - curve[lo], curve[peak] - curve[hi]
    shape = "rises then falls" if rise >= 0.05 and fall >= 0.05 else "no rise-then-fall"
    where = "as the paper's" if 0.6 <= peak <= 0.7 else "the paper's is 0.6-0.7"
    return (f"peak {curve[peak]:.2f} at alpha={peak} ({where}); +{rise:.2f} from alpha={lo}, -{fall:.2f} to"
            f" alpha={hi}: {shape}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common_args(ap)
    ap.add_argument("--methods", nargs="+", default=["t_switch", "auto_switch"], choices=["t_switch", "auto_switch"])
    ap.add_argument("--alphas", nargs="+", type=float, default=ALPHAS)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="another parameter for every switch run, e.g. codec=sass; repeatable")
    args = ap.parse_args(argv)
    extra = dict(s.split("=", 1) for s in args.set)

    ind = record_for(spec_for(args, "individual"))
    rows: list[tuple[str, dict[str, Any]]] = [("individual", ind)]
    curves: dict[str, dict[float, float]] = {}
    for m in args.methods:
        for a in args.alphas:
            rec = record_for(spec_for(args, m, **extra, alpha=a))
            rows.append((f"{m} a={a:.1f}", rec))
            curves.setdefault(m, {})[a] = rec["average"]

    tasks = list(ind["metrics"])
    head = (f"{'method':<18} " + " ".join(f"{t[:9]:>9}" for t in tasks)
            + f" {'AVG':>7} {'%Ind':>6} {'MB':>8} {'kept':>6} {'route%':>7}")
    print(f"{args.backbone} / {ind['suite']} ({args.profile}, seed {args.seed}); MB = 10^6 bytes of the artifact file")
    print(head)
    print("-" * len(head))
    for label, r in rows:
        ex = r.get("extra", {})
        kept = ex.get("switch", {}).get("kept_fraction")
        kept_s = f"{sum(kept.values()) / len(kept):6.3f}" if kept else "     -"
        route = ex.get("routing_accuracy", {}).get("AVG")
        route_s = f"{route:7.2f}" if route is not None else "      -"
        print(f"{label:<18} " + " ".join(f"{r['metrics'][t]:9.2f}" for t in tasks)
              + f" {r['average']:7.2f} {100 * r['average'] / ind['average']:6.1f} {r['storage_bytes'] / 1e6:8.4f}"
              + f" {kept_s} {route_s}")
    print()
    for m, curve in curves.items():
        if len(curve) >= 3:
            print(f"{m}: {shape_verdict(curve)}; Individual {ind['average']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
