"""Routed inference at ViT-B/32 size, batch 32: Auto-Switch's routed step against a plain forward, side by side in
one process (issue 17, item 3).

The model is the transformers CLIP ViT-B/32 image tower at its hub config (``benchmarks/forward_time.py``'s
``CLIP_B32_PAPER``, 87.8M parameters), random init, driven through the suite's own :class:`ClipOps` and the
runner's routed step (:class:`benchmark.routing.RoutedInference`, what ``evaluate`` calls). The switches are random
binary task switches for 8 tasks in the T-Switch layout (a 30% mask, one polarity bit per active entry, one knob
per module: alpha = 0.7's density), reloaded through :class:`methods._switch.SwitchBank` as the runner does.

Data: task k's images are a fixed smooth random pattern ``P_k`` (8x8 upsampled) plus i.i.d. pixel noise of the
same scale, so a random-init tower's features carry the task, imperfectly; the query set is the pretrained
model's features of ``exemplars`` such images per task, the timed batch 32 fresh images of task 0. The routing
rows are then whatever the KNN makes of those features: the table prints how many are one-hot and how many
distinct mixed rows a batch has, because the per-sample cost is set by them (every distinct mixed row is one
weight build, ~0.2-0.4 plain forwards at this size). A second table forces 0, 1, 2, 4 and 8 distinct mixed rows
into the batch (the rest one-hot for task 0), with the routing forward still computed, to show that dependence.

Rows timed (median over ``reps`` rounds after a warm-up round; each round runs the plain forward and every row
once, interleaved; the warm-up builds task 0's one-hot weight set, as a run's first batch of a task does):

* ``batch``: the official code's batch-averaged routing (``batch_average=True``): one routing forward, one build,
  one forward.
* ``sample``: Eq. 5 per sample (the default): one routing forward, one build per distinct mixed row, one-hot rows
  from the cache, one sub-batch forward per distinct row.
* ``early_layer``: as ``sample``, routed on the pretrained model's features after its first ``depth`` of 12 blocks
  (``route_depth``, beyond the paper), with a query set computed at that depth.

``measure(quick)`` returns the ``{"batch", "sample", "early_layer"}`` ratios (method time / plain forward time),
what ``benchmarks/paper_scale.py`` reads; ``measure_detail`` adds ``"detail"`` (seconds, routing statistics, the
forced-rows table). Measured on a 2-core CPU (issue 17): 2.10x, 2.20x and 1.37x; main's routed path before it on
the same inputs 2.11x and 2.33x (forced 8 mixed rows: 3.19x before, 2.78x after).

    .venv/bin/python benchmarks/routed_inference.py            # ~3-4 min on 2 cores, ~3 GB RAM
    .venv/bin/python benchmarks/routed_inference.py --quick    # ~1-2 min: fewer exemplars, one timed round
    .venv/bin/python benchmarks/routed_inference.py --json     # last line: measure_detail() as JSON
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backbones.clip_vit import ClipOps, build_encoder  # noqa: E402
from benchmark.routing import RoutedInference, exemplar_features, one_hot_index  # noqa: E402
from benchmark.contract import Pool  # noqa: E402
from benchmarks.forward_time import CLIP_B32_PAPER  # noqa: E402
from methods._switch import SwitchBank  # noqa: E402
from methods.auto_switch import AutoSwitchModel  # noqa: E402
from methods.codecs._sparse import SparseCodes  # noqa: E402

TASKS = [f"task{i}" for i in range(8)]
BATCH = 32
DENSITY = 0.3  # T-Switch's kept share at alpha = 0.7
NEIGHBOURS = 10  # Auto-Switch's C
FORCED_MIXED = (0, 1, 2, 4, 8)


class _Data:
    """Task k's images: ``P_k`` (a smooth random pattern) + N(0, 1) pixel noise, already normalized floats."""

    def __init__(self, seed: int, size: int):
        g = torch.Generator().manual_seed(seed)
        self.size = size
        self.patterns = [F.interpolate(torch.randn(1, 3, 8, 8, generator=g), size=(size, size), mode="bilinear",
                                       align_corners=False)[0] for _ in TASKS]

    def images(self, task: str, n: int, seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return self.patterns[TASKS.index(task)] + torch.randn(n, 3, self.size, self.size, generator=g)


class _Ops(ClipOps):
    """The suite's ClipOps on a stand-in backbone, with exemplars drawn from :class:`_Data`."""

    def __init__(self, encoder, data: _Data, head: torch.Tensor):
        super().__init__(SimpleNamespace(encoder=encoder, image_size=data.size, mean=(0.0,) * 3, std=(1.0,) * 3,
                                         device=torch.device("cpu"), head=lambda task: head))
        self.data = data

    def exemplars(self, task: str, n: int, seed: int) -> Any:
        return self.data.images(task, n, seed)


def random_bank(pretrained: dict[str, torch.Tensor], seed: int) -> SwitchBank:
    """Random binary task switches for every task (DENSITY mask, random polarity, knobs ~ U(0, 1e-3))."""
    g = torch.Generator().manual_seed(seed)
    arts = {}
    for t in TASKS:
        codes = {}
        for k, v in pretrained.items():
            mask = torch.rand(v.numel(), generator=g) < DENSITY
            codes[k] = SparseCodes(tuple(v.shape), mask, torch.randint(0, 2, (int(mask.sum()),), generator=g,
                                                                        dtype=torch.uint8), 1)
        arts[f"switch/{t}"] = codes
        arts[f"knobs/{t}"] = torch.rand(len(pretrained), generator=g) * 1e-3
    return SwitchBank(arts, pretrained, TASKS)


class _Forced(AutoSwitchModel):
    """Auto-Switch whose KNN still runs (its cost stays), but whose rows are replaced by a prepared batch."""

    rows: torch.Tensor

    def route(self, features: torch.Tensor) -> torch.Tensor:
        super().route(features)
        return self.rows


def forced_rows(n_mixed: int, batch: int = BATCH) -> torch.Tensor:
    """``n_mixed`` distinct mixed rows (shares in multiples of 1/C over tasks 0 and j), the rest one-hot task 0."""
    rows = torch.zeros(batch, len(TASKS))
    rows[:, 0] = 1.0
    for i in range(n_mixed):
        a = (NEIGHBOURS - 1 - i % (NEIGHBOURS - 1)) / NEIGHBOURS
        rows[i] = 0.0
        rows[i, 0], rows[i, 1 + i // (NEIGHBOURS - 1)] = a, 1.0 - a
    return rows


def _routing_stats(mix: torch.Tensor) -> dict[str, Any]:
    uniq = torch.unique(mix, dim=0)
    mixed = [r for r in uniq if one_hot_index(r) is None]
    return {"one_hot_share": float(sum(one_hot_index(r) is not None for r in mix)) / mix.shape[0],
            "distinct_mixed_rows": len(mixed), "routing_accuracy": float((mix.argmax(1) == 0).float().mean())}


def measure(quick: bool = False) -> dict[str, float]:
    """``{"batch", "sample", "early_layer"}``: Auto-Switch's routed step / a plain forward at ViT-B/32 size, batch
    32 (module docstring); :func:`measure_detail` has the routing statistics and the forced-rows table too."""
    out = measure_detail(quick)
    return {k: out[k] for k in ("batch", "sample", "early_layer")}


def measure_detail(quick: bool = False, seed: int = 0, depth: int = 3, reps: int | None = None) -> dict[str, Any]:
    """:func:`measure`'s ratios and ``"detail"``: seconds, routing statistics per row, the forced-rows table."""
    torch.manual_seed(seed)
    n_ex, reps = (20, reps or 1) if quick else (100, reps or 3)
    encoder = build_encoder(CLIP_B32_PAPER).eval()
    for p in encoder.parameters():
        p.requires_grad_(False)
    data = _Data(seed, CLIP_B32_PAPER["image_size"])
    head = F.normalize(torch.randn(10, CLIP_B32_PAPER["projection_dim"]), dim=-1) * 100.0
    ops = _Ops(encoder, data, head)
    pretrained = {k: p.detach() for k, p in encoder.named_parameters()}
    bank = random_bank(pretrained, seed)
    pool = Pool(tasks=TASKS, pretrained=pretrained, finetuned={}, ops=ops, seed=seed, progress=False)
    with torch.inference_mode():
        q_full, labels = exemplar_features(pool, n_ex, batch_size=BATCH)
        q_early, _ = exemplar_features(pool, n_ex, batch_size=BATCH, depth=depth)
    models = {
        "batch": AutoSwitchModel(bank, q_full, labels, NEIGHBOURS, batch_average=True),
        "sample": AutoSwitchModel(bank, q_full, labels, NEIGHBOURS, batch_average=False),
        "early_layer": AutoSwitchModel(bank, q_early, labels, NEIGHBOURS, batch_average=False, depth=depth),
    }
    x = data.images(TASKS[0], BATCH, seed + 10_000)  # not an exemplar draw (those use Pool.exemplar_seed)

    def plain() -> None:
        ops.logits(TASKS[0], None, x)

    def step(ri: RoutedInference):
        return lambda: ri.run(x, lambda w, xs: ops.logits(TASKS[0], w, xs))

    with torch.inference_mode():
        plain()  # the first forward of a process pays one-off costs
        routed = {name: RoutedInference(m, ops) for name, m in models.items()}
        stats = {name: _routing_stats(ri.route(x)) for name, ri in routed.items()}
        med = _timed({name: step(ri) for name, ri in routed.items()}, plain, reps)
        builds = {name: ri.builds for name, ri in routed.items()}
        del routed  # their weight sets: one phase's memory at a time
        forced = {}
        for n in FORCED_MIXED:
            m = _Forced(bank, q_full, labels, NEIGHBOURS, batch_average=False)
            m.rows = forced_rows(n)
            fm = _timed({"forced": step(RoutedInference(m, ops))}, plain, reps)
            forced[n] = fm["forced"] / fm["plain"]
    ratio = {name: med[name] / med["plain"] for name in models}
    return {
        "batch": ratio["batch"], "sample": ratio["sample"], "early_layer": ratio["early_layer"],
        "detail": {
            "plain_forward_s": med["plain"], "seconds": med, "routing": stats, "depth": depth,
            "blocks": CLIP_B32_PAPER["num_hidden_layers"], "exemplars_per_task": n_ex, "reps": reps,
            "forced_mixed_rows": forced, "builds": builds, "threads": torch.get_num_threads(),
        },
    }


def _timed(calls: dict[str, Any], plain: Any, reps: int) -> dict[str, float]:
    """Median seconds of ``plain`` and every call over ``reps`` rounds, each round running ``plain`` and then every
    call once; one untimed warm-up round first (it builds task 0's one-hot set, as a run's first batch does)."""
    times: dict[str, list[float]] = {"plain": [], **{name: [] for name in calls}}
    for r in range(reps + 1):
        for name, fn in (("plain", plain), *calls.items()):
            t0 = time.perf_counter()
            fn()
            if r:
                times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="20 exemplars per task, one timed round")
    ap.add_argument("--depth", type=int, default=3, help="blocks of 12 that early-layer routing runs (default 3)")
    ap.add_argument("--reps", type=int, default=None, help="timed rounds (default 3, --quick 1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="last line: measure_detail's result as one JSON object")
    a = ap.parse_args()
    if not 1 <= a.depth <= CLIP_B32_PAPER["num_hidden_layers"]:
        print(f"error: --depth must be in 1..{CLIP_B32_PAPER['num_hidden_layers']}", file=sys.stderr)
        sys.exit(2)
    if a.reps is not None and a.reps < 1:
        print("error: --reps must be >= 1", file=sys.stderr)
        sys.exit(2)
    out = measure_detail(a.quick, a.seed, a.depth, a.reps)
    d = out["detail"]
    print(f"routed inference, CLIP ViT-B/32 size (random init), batch {BATCH}, {len(TASKS)} tasks, "
          f"{d['threads']} threads; plain forward {d['plain_forward_s']:.2f} s")
    print(f"{'row':12s} {'ratio':>6s}  {'goal':>5s}  {'one-hot':>7s}  {'mixed rows':>10s}  {'routing acc':>11s}")
    goals = {"batch": 2.0, "sample": 2.5, "early_layer": 1.5}
    for name in ("batch", "sample", "early_layer"):
        s = d["routing"][name]
        print(f"{name:12s} {out[name]:6.2f}  {goals[name]:5.1f}  {s['one_hot_share']:7.0%}  "
              f"{s['distinct_mixed_rows']:10d}  {s['routing_accuracy']:11.0%}")
    print(f"early_layer routes after {d['depth']} of {d['blocks']} blocks")
    print("forced distinct mixed rows (rest one-hot):  " +
          "  ".join(f"{n}: {r:.2f}x" for n, r in d["forced_mixed_rows"].items()))
    if a.json:
        print(json.dumps(out))


if __name__ == "__main__":
    main()
