"""The data-dependent and dynamic baselines on one backbone's tiny suite, one row per method.

Every method runs in its own subprocess (``python -m benchmark run``), so the peak RSS in each record is that
method's alone. The table shows the per-task scores, AVG, AVG relative to Individual, the measured storage (MB =
10^6 bytes of the artifact file), the merge wall time and the peak RSS; then the ordering of AVG against the
paper's Table III (auto-flexswitch.txt, ``reference/paper_results.csv``), with Kendall's tau.

    .venv/bin/python benchmarks/baselines.py --backbone clip_vit_b32 --results-dir /tmp/h7_results
    .venv/bin/python benchmarks/baselines.py --reuse          # only tabulate records already in --results-dir
"""
from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
METHODS = ["pretrained", "individual", "regmean", "fisher", "adamerging", "adamerging_pp", "emr", "twin"]
PAPER_NAMES = {  # our registry name -> the method's name in Table III
    "pretrained": "Pre-trained",
    "individual": "Individual",
    "regmean": "RegMean",
    "fisher": "Fisher Merging",
    "adamerging": "AdaMerging",
    "adamerging_pp": "AdaMerging++",
    "emr": "EMR-Merging",
    "twin": "Twin-Merging",
}
PAPER_SUITE = {"clip_vit_b32": ("clip_vit_b32", "vision8"), "clip_vit_l14": ("clip_vit_l14", "vision8")}


def run_one(method: str, args: argparse.Namespace, sets: list[str]) -> Path:
    cmd = [sys.executable, "-m", "benchmark", "run", "--method", method, "--backbone", args.backbone,
           "--profile", args.profile, "--seed", str(args.seed), "--results-dir", args.results_dir, "--no-progress"]
    for s in sets:
        cmd += ["--set", s]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{method} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    for line in proc.stdout.splitlines():
        if line.startswith("record: "):
            return Path(line.removeprefix("record: ").strip())
    raise SystemExit(f"{method}: no record path in the output:\n{proc.stdout[-2000:]}")


def latest_record(results_dir: Path, method: str, backbone: str, profile: str, seed: int) -> Path | None:
    best = None
    for p in results_dir.glob(f"{backbone}-{method}-{profile}-s{seed}-*.json"):
        rec = json.loads(p.read_text())
        if rec["method"] == method and (best is None or rec["created"] > best[0]):
            best = (rec["created"], p)
    return best[1] if best else None


def paper_avgs(backbone: str) -> dict[str, float]:
    if backbone not in PAPER_SUITE:
        return {}
    csv_path = REPO.parent / "shared" / "reference" / "paper_results.csv"
    if not csv_path.exists():
        return {}
    bb, suite = PAPER_SUITE[backbone]
    out = {}
    with csv_path.open() as f:
        for row in csv.DictReader(f):
            if (row["backbone"], row["suite"], row["task"]) == (bb, suite, "AVG") and "Table III" in row["source"]:
                out[row["method"]] = float(row["value"])
    return out


def kendall_tau(a: list[float], b: list[float]) -> float:
    n = len(a)
    s = 0
    for i in range(n):
        for j in range(i + 1, n):
            s += ((a[i] > a[j]) - (a[i] < a[j])) * ((b[i] > b[j]) - (b[i] < b[j]))
    pairs = n * (n - 1) / 2
    return s / pairs if pairs else float("nan")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="clip_vit_b32")
    ap.add_argument("--profile", default="tiny")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--results-dir", default="/tmp/h7_results")
    ap.add_argument("--methods", nargs="+", default=METHODS)
    ap.add_argument("--set", action="append", default=[], metavar="METHOD:KEY=VALUE",
                    help="a parameter for one method, e.g. adamerging:steps=100; repeatable")
    ap.add_argument("--reuse", action="store_true", help="tabulate the latest existing records; run the missing")
    ap.add_argument("--paper-backbone", default=None, help="compare with the paper's table of this backbone "
                    "(default: --backbone)")
    args = ap.parse_args(argv)
    results = Path(args.results_dir)
    results.mkdir(parents=True, exist_ok=True)

    records = {}
    for m in args.methods:
        path = latest_record(results, m, args.backbone, args.profile, args.seed) if args.reuse else None
        if path is None:
            sets = [s.split(":", 1)[1] for s in args.set if s.split(":", 1)[0] == m]
            print(f"running {m} ...", file=sys.stderr, flush=True)
            path = run_one(m, args, sets)
        records[m] = json.loads(Path(path).read_text())

    tasks = list(next(iter(records.values()))["metrics"])
    ind = records.get("individual", {}).get("average")
    short = [t[:8] for t in tasks]
    head = (f"{'method':<14} {'kind':<16} " + " ".join(f"{t:>8}" for t in short)
            + f" {'AVG':>7} {'%Ind':>6} {'MB':>9} {'merge s':>8} {'RSS MB':>7}")
    print(f"{args.backbone} / {records[next(iter(records))]['suite']} ({args.profile}, seed {args.seed})")
    print(head)
    print("-" * len(head))
    for m, r in records.items():
        rel = f"{100 * r['average'] / ind:6.1f}" if ind else "     -"
        print(f"{m:<14} {r['method_kind']:<16} " + " ".join(f"{r['metrics'][t]:8.2f}" for t in tasks)
              + f" {r['average']:7.2f} {rel} {r['storage_bytes'] / 1e6:9.3f} {r['timings']['merge_s']:8.1f}"
              + f" {r['peak_rss_bytes'] / 1e6:7.0f}")
    extras = {m: r["extra"] for m, r in records.items() if r.get("extra")}
    for m, e in extras.items():
        if "routing_accuracy" in e:
            print(f"{m}: routing accuracy {e['routing_accuracy'].get('AVG', float('nan')):.2f}%")

    paper = paper_avgs(args.paper_backbone or args.backbone)
    common = [m for m in records if PAPER_NAMES.get(m) in paper]
    if len(common) >= 2:
        ours = [records[m]["average"] for m in common]
        theirs = [paper[PAPER_NAMES[m]] for m in common]
        print("\nAVG ordering, ours vs the paper's Table III (high to low):")
        print("  ours : " + " > ".join(m for _, m in sorted(zip(ours, common), reverse=True)))
        print("  paper: " + " > ".join(m for _, m in sorted(zip(theirs, common), reverse=True)))
        for m, o, t in zip(common, ours, theirs):
            print(f"  {m:<14} ours {o:6.2f}   paper {t:6.2f}")
        print(f"  Kendall tau = {kendall_tau(ours, theirs):+.3f} over {len(common)} rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
