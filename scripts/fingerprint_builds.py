"""Fingerprints of the generated suites and cached checkpoints on one profile (micro by default).

For each backbone it builds (into a fresh temporary ``MERGE_BENCH_CACHE`` unless one is given) its default suite's
data and its checkpoints, then prints: each suite's data key and version, sha256 of every prepared data array,
each backbone's checkpoint hashes, and sha256 of every file in the cache with the cache keys (entry names).
Two runs on two revisions print the same lines exactly when the builds are byte-identical.

Usage: python scripts/fingerprint_builds.py [--profile micro] [--backbone NAME ...] [--cache DIR]
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
from pathlib import Path


def _sha(t) -> str:
    import torch

    if isinstance(t, torch.Tensor):
        return hashlib.sha256(t.contiguous().cpu().numpy().tobytes()).hexdigest()[:16] + f" {t.dtype} {tuple(t.shape)}"
    return hashlib.sha256(repr(t).encode()).hexdigest()[:16]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", default="micro")
    ap.add_argument("--backbone", nargs="*", default=None)
    ap.add_argument("--cache", default=None)
    args = ap.parse_args()
    root = Path(args.cache or tempfile.mkdtemp(prefix="fp_cache_"))
    os.environ["MERGE_BENCH_CACHE"] = str(root)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from benchmark.cache import Cache
    from benchmark.registry import BACKBONES, SUITES

    cache = Cache(root)
    names = args.backbone or sorted(BACKBONES.names())
    for name in names:
        plugin = BACKBONES.get(name)
        sname = plugin.meta["default_suite"]
        suite = SUITES.get(sname).obj(profile=args.profile, seed=0, cache=cache, progress=False)
        print(f"suite {sname} version={suite.version} data_key={suite.data_key()}")
        for task in suite.tasks:
            for split in ("train", "val", "test"):
                d = suite.load(task, split)
                tg = d.targets if not isinstance(d.targets, list) else [
                    {k: (_sha(v) if hasattr(v, "shape") else v) for k, v in t.items()} for t in d.targets]
                print(f"  {task}/{split} inputs={_sha(d.inputs)} targets={_sha(tg)} classes={_sha(d.classes)}")
            print(f"  {task} classnames={_sha(suite.classnames(task))}")
        bb = plugin.obj(profile=args.profile, suite=suite, seed=0, cache=cache, progress=False)
        bb.prepare()
        for k, v in sorted(bb.checkpoints().items()):
            print(f"backbone {name} checkpoint {k} {v}")
        sys.stdout.flush()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            rel = p.relative_to(root).as_posix()
            print(f"file {rel} {hashlib.sha256(p.read_bytes()).hexdigest()}")


if __name__ == "__main__":
    main()
