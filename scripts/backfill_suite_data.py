"""Give the records made before records had ``suite_data`` the fingerprint of the data they ran on, where that can
be shown: a tiny-profile record is stamped only when the checkpoints it names are, hash for hash, the ones this
machine builds now from the suite's current data (the fine-tunes are trained on that data, so the same hashes mean
the same generators); any other record is left as it is and listed.

    python scripts/backfill_suite_data.py [--results-dir results] [--cache-root DIR] [--dry-run]

Builds the tiny checkpoints where the cache lacks them (minutes per backbone)."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main(argv: list[str] | None = None) -> int:
    from benchmark.cache import Cache
    from benchmark.records import atomic_write_text, load_records, validate
    from benchmark.runner import RunSpec, make_backbone, resolve

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results-dir", default="results")
    ap.add_argument("--cache-root", default=None)
    ap.add_argument("--dry-run", action="store_true")
    args = ap.parse_args(argv)
    todo = [r for r in load_records(args.results_dir) if "suite_data" not in r]
    groups: dict[tuple, list[dict]] = {}
    for r in todo:
        groups.setdefault((r["profile"], r["backbone"], r["suite"], r["seed"]), []).append(r)
    stamped, left = 0, []
    for (profile, backbone, suite, seed), recs in sorted(groups.items()):
        if profile == "paper":
            left += [f"{r['run_id']}: paper profile (its data is the user's; suite_data stays null)" for r in recs]
            continue
        spec = RunSpec(method="pretrained", backbone=backbone, suite=suite, profile=profile, seed=seed,
                       cache_root=args.cache_root, progress=True)
        bb = make_backbone(resolve(spec), Cache(args.cache_root))
        now = bb.checkpoints()
        data = bb.suite.fingerprint()
        for r in recs:
            if r["checkpoints"] != now:
                differ = sorted(k for k in set(now) | set(r["checkpoints"]) if now.get(k) != r["checkpoints"].get(k))
                left.append(f"{r['run_id']}: checkpoints differ from this build ({', '.join(differ)})")
                continue
            r["suite_data"] = data
            validate(r)
            if not args.dry_run:
                path = Path(args.results_dir) / f"{r['run_id']}.json"
                # the record's own text with one key added (write_record's format), nothing else touched
                old = json.loads(path.read_text(encoding="utf-8"))
                old["suite_data"] = data
                atomic_write_text(path, json.dumps(old, indent=1, sort_keys=True) + "\n")
            stamped += 1
        print(f"{backbone}/{suite} ({profile}, seed {seed}): data {data[:12]}, "
              f"{sum(1 for r in recs if r.get('suite_data'))} of {len(recs)} records stamped", flush=True)
    for line in left:
        print(f"left: {line}")
    print(f"{stamped} records stamped{' (dry run: none written)' if args.dry_run else ''}, {len(left)} left")
    return 0


if __name__ == "__main__":
    sys.exit(main())
