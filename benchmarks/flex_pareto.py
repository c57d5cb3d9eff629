"""FlexSwitch against T-Switch (storage vs accuracy, the paper's Fig. 8 Pareto) and Auto-FlexSwitch against
Auto-Switch (routing accuracy and inference-time ratio, the paper's Tab. XIII), on one backbone's suite.

* T-Switch at alpha in {0.5, ..., 0.9}; FlexSwitch (LGS + BAS, learned sparsity and bit width) at each lambda of
  ``--lams`` (lambda weighs performance preservation against compression, Eq. 14), and FlexSwitch's BAS-only
  variant at the same alphas as T-Switch (the same P-Spar masks, learned bit widths), so each T-Switch point has a
  FlexSwitch point at equal sparsity.
* Auto-Switch and Auto-FlexSwitch with their defaults. The runner times the routed model's forward against one plain
  forward of the pretrained model over the same test batches, side by side in the same process
  (``timings.inference_ratio``), and records the routing accuracy (how often the top weight is the true task).

Every point is one :func:`benchmark.runner.run` call (storage = bytes of the artifact file, evaluated after reloading
from it); records go to ``--results-dir`` and a point whose record is already there is reused, so the benchmark
resumes. Then it prints the Pareto table with the front marked, the paper's target (FlexSwitch within 0.5 points
of T-Switch's best average at <= 1/2 its storage; Auto-FlexSwitch >= Auto-Switch) and whether it holds.

    .venv/bin/python benchmarks/flex_pareto.py --results-dir results
    .venv/bin/python benchmarks/flex_pareto.py --alphas 0.7 0.9 --lams 0.3 --skip-routed
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from alpha_sweep import common_args, record_for, spec_for  # noqa: E402

ALPHAS = [0.5, 0.6, 0.7, 0.8, 0.9]


def pareto_front(points: list[tuple[float, float]]) -> list[bool]:
    """For (storage, score) points: True where no other point has storage <= and score >= with one strict."""
    front = []
    for i, (s, a) in enumerate(points):
        dominated = any((s2 <= s and a2 >= a) and (s2 < s or a2 > a) for j, (s2, a2) in enumerate(points) if j != i)
        front.append(not dominated)
    return front


def target_verdict(tswitch: list[tuple[float, float]], flex: list[tuple[float, float]]) -> str:
    """The paper's claim on (storage MB, AVG) points: some FlexSwitch point within 0.5 points of T-Switch's best
    average at no more than half that T-Switch point's storage."""
    best_s, best_a = max(tswitch, key=lambda p: (p[1], -p[0]))
    hits = [(s, a) for s, a in flex if a >= best_a - 0.5 and s <= best_s / 2]
    if hits:
        s, a = min(hits)
        return (f"holds: FlexSwitch {a:.2f} at {s:.4f} MB vs T-Switch's best {best_a:.2f} at {best_s:.4f} MB "
                f"({s / best_s:.2f}x the storage)")
    near = [(s, a) for s, a in flex if a >= best_a - 0.5]
    why = (f"the closest in accuracy needs {min(near)[0] / best_s:.2f}x the storage" if near
           else f"no FlexSwitch point comes within 0.5 (best {max(a for _, a in flex):.2f})")
    return f"does not hold: T-Switch's best is {best_a:.2f} at {best_s:.4f} MB; {why}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common_args(ap)
    ap.add_argument("--alphas", nargs="+", type=float, default=ALPHAS)
    ap.add_argument("--lams", nargs="+", type=float, default=[0.1, 0.3, 1.0])
    ap.add_argument("--no-bas", action="store_true", help="skip FlexSwitch's BAS-only variant at the alphas")
    ap.add_argument("--skip-routed", action="store_true", help="skip Auto-Switch vs Auto-FlexSwitch")
    args = ap.parse_args(argv)

    ind = record_for(spec_for(args, "individual"))
    rows: list[tuple[str, str, dict[str, Any]]] = [("reference", "individual", ind)]
    for a in args.alphas:
        rows.append(("t_switch", f"t_switch a={a:.1f}", record_for(spec_for(args, "t_switch", alpha=a))))
    for lam in args.lams:
        rows.append(("flexswitch", f"flexswitch lam={lam:g}", record_for(spec_for(args, "flexswitch", lam=lam))))
    if not args.no_bas:
        for a in args.alphas:
            rows.append(("flexswitch", f"flexswitch bas a={a:.1f}",
                         record_for(spec_for(args, "flexswitch", variant="bas", alpha=a))))

    merging = [(r["storage_bytes"] / 1e6, r["average"]) for kind, _, r in rows if kind != "reference"]
    front = iter(pareto_front(merging))
    print(f"{args.backbone} / {ind['suite']} ({args.profile}, seed {args.seed}); MB = 10^6 bytes of the artifact file")
    head = f"{'method':<24} {'MB':>9} {'AVG':>7} {'%Ind':>6} {'front':>5}"
    print(head)
    print("-" * len(head))
    for kind, label, r in rows:
        mark = "" if kind == "reference" else ("*" if next(front) else "")
        print(f"{label:<24} {r['storage_bytes'] / 1e6:9.4f} {r['average']:7.2f} "
              f"{100 * r['average'] / ind['average']:6.1f} {mark:>5}")
    ts = [(r["storage_bytes"] / 1e6, r["average"]) for k, _, r in rows if k == "t_switch"]
    fx = [(r["storage_bytes"] / 1e6, r["average"]) for k, _, r in rows if k == "flexswitch"]
    print(f"\npaper target (FlexSwitch within 0.5 of T-Switch's best at <= 1/2 storage): {target_verdict(ts, fx)}")

    if not args.skip_routed:
        routed = [(m, record_for(spec_for(args, m))) for m in ("auto_switch", "auto_flexswitch")]
        print(f"\n{'method':<18} {'MB':>9} {'AVG':>7} {'routing %':>9} {'inference x':>11}")
        for m, r in routed:
            route = r.get("extra", {}).get("routing_accuracy", {}).get("AVG")
            print(f"{m:<18} {r['storage_bytes'] / 1e6:9.4f} {r['average']:7.2f} "
                  f"{route if route is not None else float('nan'):9.2f} {r['timings']['inference_ratio']:11.2f}")
        (_, a), (_, f) = routed
        verdict = "holds" if f["average"] >= a["average"] else "does not hold"
        print(f"paper target (Auto-FlexSwitch >= Auto-Switch): {verdict} ({f['average']:.2f} vs {a['average']:.2f});"
              " the paper's inference ratios (Tab. XIII) are 1.88x and 2.27x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
