"""Merge time of the static baselines on a random paper-size pool: 8 tasks over a ViT-B/32-shaped set of mergeable
tensors (about 88M parameters, float32), every method's full ``merge(pool)`` as the runner calls it.

Prints, per method, the best wall time and process CPU time over ``--repeats`` rounds (methods run round robin),
their ratios against task_arithmetic measured in the same process, and the peak RSS growth during the merge
(sampled from /proc/self/statm every 5 ms; blank where that file does not exist). The merged state dict itself
is one model's size (~350 MB at 88M float32), so that is the floor of the growth. CPU time is the steadier figure
on a shared machine.

    .venv/bin/python benchmarks/static_merge_time.py              # ~88M parameters x 8 tasks (needs ~5 GB RAM)
    .venv/bin/python benchmarks/static_merge_time.py --params 5e6 --repeats 3 --threads 1
    .venv/bin/python benchmarks/static_merge_time.py --compare-kth  # also time the global top-k threshold choices
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmark.contract import Pool  # noqa: E402
from benchmark.registry import METHODS  # noqa: E402

RUNS = [
    ("weight_average", {}),
    ("task_arithmetic", {}),
    ("ties", {}),
    ("ties", {"topk_scope": "per_tensor"}),
    ("ties", {"merge_func": "dis-sum"}),
    ("dare", {}),
    ("dare", {"base": "ties"}),
]


def vit_b32_shapes(width: int = 768, layers: int = 12, patch: int = 32, tokens: int = 50, out: int = 512):
    """The mergeable tensors of a CLIP ViT-B/32 image encoder (open_clip layout): about 87.8M parameters."""
    shapes = {"conv1.weight": (width, 3, patch, patch), "class_embedding": (width,),
              "positional_embedding": (tokens, width), "ln_pre.weight": (width,), "ln_pre.bias": (width,)}
    for i in range(layers):
        p = f"transformer.resblocks.{i}."
        shapes.update({
            p + "ln_1.weight": (width,), p + "ln_1.bias": (width,),
            p + "attn.in_proj_weight": (3 * width, width), p + "attn.in_proj_bias": (3 * width,),
            p + "attn.out_proj.weight": (width, width), p + "attn.out_proj.bias": (width,),
            p + "ln_2.weight": (width,), p + "ln_2.bias": (width,),
            p + "mlp.c_fc.weight": (4 * width, width), p + "mlp.c_fc.bias": (4 * width,),
            p + "mlp.c_proj.weight": (width, 4 * width), p + "mlp.c_proj.bias": (width,),
        })
    shapes.update({"ln_post.weight": (width,), "ln_post.bias": (width,), "proj": (width, out)})
    return shapes


def scaled_shapes(target: float):
    """ViT-B/32 shapes, or (for a smaller target) the same layout with fewer blocks and a narrower width."""
    full = vit_b32_shapes()
    total = sum(torch.Size(s).numel() for s in full.values())
    if target >= total:
        return full
    width = max(64, int(768 * (target / total) ** 0.5) // 64 * 64)
    return vit_b32_shapes(width=width, out=width * 2 // 3)


def random_pool(shapes, n_tasks: int, seed: int) -> Pool:
    g = torch.Generator().manual_seed(seed)
    pre = {k: 0.02 * torch.randn(s, generator=g) for k, s in shapes.items()}
    fts = {}
    for i in range(n_tasks):
        fts[f"task{i}"] = {k: v + 1e-3 * torch.randn(v.shape, generator=g) for k, v in pre.items()}
    return Pool(tasks=list(fts), pretrained=pre, finetuned=fts, seed=seed)


class RssSampler:
    """Peak resident set size during a block, sampled every few milliseconds from /proc/self/statm (Linux; None
    elsewhere). VmHWM cannot be used: the kernel updates it lazily."""

    def __init__(self, interval: float = 0.005):
        self.interval, self.peak, self.base = interval, None, None
        self._stop = threading.Event()

    @staticmethod
    def rss() -> int | None:
        try:
            return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return None

    def _run(self) -> None:
        while not self._stop.is_set():
            r = self.rss()
            if r is not None:
                self.peak = r if self.peak is None else max(self.peak, r)
            time.sleep(self.interval)

    def __enter__(self):
        self.base = self.rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    @property
    def growth_mb(self) -> float | None:
        return None if self.peak is None or self.base is None else (self.peak - self.base) / 1e6


def _malloc_trim() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def time_method(name: str, overrides: dict, pool: Pool) -> tuple[float, float, float | None]:
    """Wall time, process CPU time, and peak RSS growth (MB) of one ``merge(pool)``."""
    plugin = METHODS.get(name)
    method = plugin.obj(**plugin.resolve(overrides))
    gc.collect()
    _malloc_trim()  # hand freed heap back to the OS, so the baseline of the growth is the live data only
    with RssSampler() as rss:
        t0, c0 = time.perf_counter(), time.process_time()
        arts = method.merge(pool)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    del arts
    return wall, cpu, rss.growth_mb


def compare_kth(d: int) -> None:
    import numpy as np

    x = torch.randn(d).abs()
    kth = d - int(d * 0.2)
    for label, fn in [
        ("numpy.partition (used)", lambda: float(np.partition(x.numpy(), kth - 1)[kth - 1])),
        ("torch.kthvalue", lambda: float(torch.kthvalue(x, kth).values)),
        ("torch.topk", lambda: float(torch.topk(x, d - kth + 1, sorted=False).values.min())),
    ]:
        t0 = time.perf_counter()
        v = fn()
        print(f"  {label:<24} {time.perf_counter() - t0:7.3f} s  (threshold {v:.6f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=float, default=88e6, help="approximate mergeable parameters (max ~87.8M)")
    ap.add_argument("--tasks", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch intra-op threads (default: torch's); 1 gives steadier figures on a loaded machine")
    ap.add_argument("--compare-kth", action="store_true", help="time the global top-k threshold alternatives")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    load0 = f"{os.getloadavg()[0]:.2f}"
    shapes = scaled_shapes(args.params)
    n = sum(torch.Size(s).numel() for s in shapes.values())
    t0 = time.perf_counter()
    pool = random_pool(shapes, args.tasks, args.seed)
    print(f"pool: {n / 1e6:.1f}M mergeable parameters x {args.tasks} tasks, {len(shapes)} tensors, float32 "
          f"(built in {time.perf_counter() - t0:.1f} s); torch {torch.__version__}, {torch.get_num_threads()} threads")
    if args.compare_kth:
        print(f"global top-20% threshold of one task ({n / 1e6:.1f}M entries):")
        compare_kth(n)

    best: dict[int, list[float | None]] = {i: [float("inf"), float("inf"), None] for i in range(len(RUNS))}
    for r in range(args.repeats):  # round robin, so load from other processes hits every method alike
        for i, (name, overrides) in enumerate(RUNS):
            wall, cpu, grow = time_method(name, overrides, pool)
            b = best[i]
            b[0], b[1] = min(b[0], wall), min(b[1], cpu)
            b[2] = grow if b[2] is None or (grow is not None and grow > b[2]) else b[2]
            print(f"  round {r + 1}: {label_of(name, overrides)}: {wall:.2f} s wall, {cpu:.2f} s CPU", flush=True)
    ta_wall, ta_cpu = best[RUNS.index(("task_arithmetic", {}))][:2]
    print()
    print(f"{n / 1e6:.1f}M parameters x {args.tasks} tasks; best of {args.repeats}; ratios against task_arithmetic "
          f"in this process; load average before/after: {load0} / {os.getloadavg()[0]:.2f}")
    print()
    print("| method | wall (s) | x TA (wall) | CPU (s) | x TA (CPU) | peak RSS growth (MB) |")
    print("|---|---:|---:|---:|---:|---:|")
    for i, (name, overrides) in enumerate(RUNS):
        wall, cpu, grow = best[i]
        g = "" if grow is None else f"{grow:.0f}"
        print(f"| {label_of(name, overrides)} | {wall:.2f} | {wall / ta_wall:.2f} | {cpu:.2f} | {cpu / ta_cpu:.2f}"
              f" | {g} |")


def label_of(name: str, overrides: dict) -> str:
    return name + ("" if not overrides else " (" + ", ".join(f"{k}={v}" for k, v in overrides.items()) + ")")


if __name__ == "__main__":
    main()
