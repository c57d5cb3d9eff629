"""The runner: resolve and validate a run, load the pool, merge, write the artifacts with their codecs, reload
them, evaluate the reloaded model, and write the record atomically."""
from __future__ import annotations

import datetime as _dt
import gc
import platform
import resource
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from tqdm.auto import tqdm

from benchmark import __version__
from benchmark.cache import Cache
from benchmark.contract import Backbone, Merged, Method, Pool, RoutedModel, StaticModel, Suite, TaskConditionedModel
from benchmark.errors import UserError
from benchmark.profiles import PROFILES
from benchmark.records import RecordError, check_writable, config_hash, write_record
from benchmark.registry import BACKBONES, CODECS, METHODS, SUITES, Plugin
from benchmark.routing import RoutedInference, plain_knn_router
from benchmark.storage import StorageError, decode_limit_for, read_artifacts, write_artifacts

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class RunSpec:
    method: str
    backbone: str
    suite: str | None = None
    profile: str = "tiny"
    seed: int = 0
    overrides: dict[str, Any] = field(default_factory=dict)
    results_dir: str = "results"
    cache_root: str | None = None
    batch_size: int = 256
    progress: bool = True
    eval_val: bool = False  # also score the val split (records val_metrics), for hyperparameter selection


@dataclass
class Resolved:
    spec: RunSpec
    method: Plugin
    params: dict[str, Any]
    backbone: Plugin
    suite: Plugin


def resolve(spec: RunSpec) -> Resolved:
    """Validate every input before any work starts; raises a one-line :class:`UserError` naming valid choices."""
    if not (isinstance(spec.seed, int) and 0 <= spec.seed < 2**32):  # torch and numpy seeds are 32-bit
        raise UserError(f"--seed must be an integer in [0, 2^32); got {spec.seed!r}")
    if spec.profile not in PROFILES:
        raise UserError(f"unknown profile {spec.profile!r}; valid: {', '.join(PROFILES)}")
    method = METHODS.get(spec.method)
    method.resolve(spec.overrides)  # a bad parameter is named before a bad backbone
    backbone = BACKBONES.get(spec.backbone)
    # the method's defaults for this kind of backbone (the papers' per-backbone settings), then the overrides
    params = method.resolve(spec.overrides, backbone_kind=backbone.meta.get("task_kind"))
    suites = tuple(backbone.meta.get("suites", ()))
    suite_name = spec.suite or backbone.meta.get("default_suite")
    if suite_name not in suites:
        raise UserError(f"backbone {spec.backbone!r} has no suite {suite_name!r}; valid: {', '.join(suites)}")
    suite = SUITES.get(suite_name)
    return Resolved(spec, method, params, backbone, suite)


def git_commit() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "diff", "--quiet", "HEAD", "--", "benchmark", "methods", "backbones", "tasks"], cwd=REPO_ROOT
        ).returncode
        return head + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def library_versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version(), "merge-bench": __version__}
    for dist in ("torch", "transformers", "open_clip_torch", "timm", "numpy", "safetensors"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = "absent"
    # a tiny build's bits depend on the CPU's kernels too (two machines built different checkpoints from the same
    # code and libraries), so a record says where it ran
    out["cpu"] = f"{cpu_model()} / {torch.backends.cpu.get_cpu_capability()}"
    return out


def cpu_model() -> str:
    """The CPU's model name (Linux ``/proc/cpuinfo``; ``platform.processor()`` elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def reset_peak_rss() -> None:
    """Reset the kernel's high-water mark so a run in a long-lived process (a sequential sweep) reports its own
    peak, not the process's. Linux only; elsewhere the peak since process start is reported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def release_freed_memory() -> None:
    """Hand the heap's freed pages back to the kernel (glibc ``malloc_trim``; a no-op elsewhere).

    Why: a model's tensors below glibc's mmap threshold (32 MB at most) come from the heap, and when they are freed
    glibc keeps the pages, so the merged weights dropped before the artifact file is read back would stay resident
    through the evaluation. On 8 ViT-L/14 stand-ins (``benchmarks/paper_scale.py``) TIES's anonymous RSS during
    the evaluation fell from 2.6 GB to 0.6 GB with it; its peak (5.13 GB, in the merge) did not move."""
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


#: glibc's ``mallopt`` parameter number of ``M_MMAP_THRESHOLD`` (malloc.h)
_M_MMAP_THRESHOLD = -3
#: allocations at least this large get their own mapping, returned to the kernel when freed
PAPER_MMAP_THRESHOLD = 4 << 20


def limit_heap_retention(threshold: int = PAPER_MMAP_THRESHOLD) -> bool:
    """Serve every allocation of ``threshold`` bytes or more from its own ``mmap`` (glibc ``mallopt``; a no-op
    returning False elsewhere), so a freed model-sized temporary leaves the process at once.

    Why: glibc raises its mmap threshold each time a mapped chunk is freed (up to 32 MB), after which a model's
    per-tensor temporaries come from the heap, and the heap keeps what is freed: on these runs it grew with every
    tensor instead of reusing its free chunks (``malloc_trim`` after the merge returned almost all of it). Measured on 8 ViT-L/14 stand-ins
    (``benchmarks/paper_scale.py``, one copy = 1.213 GB, peaks from the record): EMR's anonymous RSS reached
    ~10 GB in its merge, all but ~1.5 GB of it freed heap, for a peak of 11.9 GB = 9.8 copies; with this (and the
    CLIP loader's own-memory fix) its merge peaks at ~4.1 GB. TIES went from 5.13 GB = 4.23 copies to 4.22 GB = 3.48
    with ``MALLOC_MMAP_THRESHOLD_=4194304`` alone. The cost is a fresh mapping, zero-filled page by page, per large
    temporary: EMR's merge took 38 s without it and 79 s with it there (one thread; a 6-layer, 8-task in-memory
    EMR merge: 21 s / 2.35 GB RSS growth without, 38 s / 0.39 GB with; a 32 MB threshold: 22 s / 3.03 GB)."""
    try:
        import ctypes

        return bool(ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, int(threshold)))
    except (OSError, AttributeError):
        return False


def peak_rss_bytes() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _take(obj: Any, idx: torch.Tensor) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj[idx]
    if isinstance(obj, dict):
        return {k: _take(v, idx) for k, v in obj.items()}
    return [obj[i] for i in idx.tolist()]


def evaluate(
    backbone: Backbone,
    merged: Merged,
    batch_size: int,
    progress: bool,
    split: str = "test",
    routers: Mapping[str, Callable[[torch.Tensor], torch.Tensor]] | None = None,
) -> dict[str, Any]:
    """Evaluate ``merged`` on every task's ``split``. Also times a plain forward of the pretrained model on the
    same batches, side by side, for the inference-time ratio. A routed model's ``routers`` (name -> router over
    its routing features) are scored on the same features for the record only (``routing_ablations``); their time
    is not the method's."""
    ops = backbone.ops()
    # what the suite's metric consumes: the logits, unless the adapter predicts something richer (boxes)
    predict = getattr(ops, "predict", None) or ops.logits
    tasks = backbone.tasks
    metrics: dict[str, float] = {}
    metric_names: dict[str, str] = {}
    t_method = t_plain = 0.0
    route_hits: dict[str, list[int]] = {}
    ablation_hits: dict[str, dict[str, list[int]]] = {name: {} for name in (routers or {})}
    n_builds = 0
    routed = RoutedInference(merged, ops) if isinstance(merged, RoutedModel) else None
    for ti, task in enumerate(tqdm(tasks, desc=f"evaluate {split}", unit="task", disable=not progress, leave=False)):
        metric = backbone.suite.metric(task)
        metric_names[task] = metric.name
        cond_weights = None
        for x, y in backbone.batches(task, split, batch_size):
            with torch.no_grad():
                t0 = time.perf_counter()
                predict(task, None, x)
                t_plain += time.perf_counter() - t0
                t0 = time.perf_counter()
                if isinstance(merged, StaticModel):
                    metric.update(predict(task, merged.weights(), x), y)
                elif isinstance(merged, TaskConditionedModel):
                    if cond_weights is None:
                        cond_weights = merged.weights(task)
                        n_builds += 1
                    metric.update(predict(task, cond_weights, x), y)
                elif routed is not None:
                    # samples that share routing weights share one weight set; one-hot rows reuse a cached one
                    mix, outs = routed.run(x, lambda w, xs: predict(task, w, xs))
                    hits = route_hits.setdefault(task, [0, 0])
                    hits[0] += int((mix.argmax(dim=1) == ti).sum())
                    hits[1] += mix.shape[0]
                    for idx, out in outs:
                        metric.update(out, _take(y, idx))
                else:
                    raise TypeError(f"unknown merged model kind {type(merged).__name__}")
                t_method += time.perf_counter() - t0
                for name, router in (routers or {}).items():
                    w = router(routed.last_features)
                    h = ablation_hits[name].setdefault(task, [0, 0])
                    h[0] += int((w.argmax(dim=1) == ti).sum())
                    h[1] += w.shape[0]
        metrics[task] = float(metric.compute())
    if routed is not None:
        n_builds = routed.builds
    out: dict[str, Any] = {
        "metrics": metrics,
        "metric_names": metric_names,
        "inference_ratio": t_method / t_plain if t_plain > 0 else float("nan"),
        "weight_builds": n_builds,
    }
    if routed is not None:
        out["weight_cache_hits"] = routed.cache_hits
    if route_hits:
        out["routing_accuracy"] = routing_table(route_hits)
    if any(ablation_hits.values()):
        out["routing_ablations"] = {name: routing_table(h) for name, h in ablation_hits.items()}
    return out


def routing_table(hits: Mapping[str, list[int]]) -> dict[str, float]:
    """Per-task routing accuracy in % from ``task -> [hits, samples]``, and the sample-weighted ``AVG``."""
    table = {t: 100.0 * h / max(n, 1) for t, (h, n) in hits.items()}
    table["AVG"] = 100.0 * sum(h for h, _ in hits.values()) / max(sum(n for _, n in hits.values()), 1)
    return table


def check_kind(name: str, method: Method, merged: Merged) -> None:
    """The method contract: ``load`` returns a model of the kind the method declares."""
    if not isinstance(merged, Merged) or merged.kind != method.kind:
        got = getattr(merged, "kind", None)
        raise TypeError(f"method {name!r} declares kind {method.kind!r} but its load returned "
                        f"{type(merged).__name__} (kind {got!r})")


def suite_fingerprint(spec: RunSpec, progress: bool = False) -> str:
    """The content hash of the data ``spec``'s suite serves now (:meth:`benchmark.contract.Suite.fingerprint`;
    generating it into the cache where it is not there yet), "" where the suite cannot say (the paper profile): what
    a record of this run would name as its ``suite_data``."""
    return make_suite(resolve(spec), Cache(spec.cache_root), progress).fingerprint() or ""


def make_suite(res: Resolved, cache: Cache, progress: bool) -> Suite:
    spec = res.spec
    return res.suite.obj(profile=spec.profile, seed=spec.seed, cache=cache, progress=progress)


def make_backbone(res: Resolved, cache: Cache) -> Backbone:
    spec = res.spec
    suite = make_suite(res, cache, spec.progress)
    backbone: Backbone = res.backbone.obj(
        profile=spec.profile, suite=suite, seed=spec.seed, cache=cache, progress=spec.progress
    )
    return backbone


def run(spec: RunSpec) -> tuple[dict[str, Any], Path]:
    res = resolve(spec)
    try:
        check_writable(spec.results_dir)  # before minutes or hours of work, not after
    except RecordError as e:
        raise UserError(str(e)) from None
    cache = Cache(spec.cache_root)
    cache.check_writable()  # likewise: a cache path that is a file, or read-only, fails here in one line
    if spec.profile == "paper":  # the tiny profile's tensors are far below it: nothing would change there
        limit_heap_retention()
    reset_peak_rss()
    torch.manual_seed(spec.seed)
    backbone = make_backbone(res, cache)
    backbone.prepare()
    release_freed_memory()  # what loading freed (raw checkpoints, a text tower) must not stay resident
    tasks = backbone.tasks
    pool = Pool(
        tasks=tasks,
        pretrained=backbone.pretrained_state(),
        finetuned={t: backbone.finetuned_state(t) for t in tasks},
        ops=backbone.ops(),
        seed=spec.seed,
        progress=spec.progress,
    )
    method: Method = res.method.obj(**res.params)
    if method.whole_models:  # it runs fine-tuned models: only then do they all come into RAM
        pool.materialise()
    h = config_hash(spec.method, res.params, spec.backbone, res.suite.name, spec.profile, spec.seed)
    run_id = f"{spec.backbone}-{spec.method}-{spec.profile}-s{spec.seed}-{h[:8]}"

    t0 = time.perf_counter()
    torch.manual_seed(spec.seed)
    artifacts = method.merge(pool)
    merge_s = time.perf_counter() - t0

    codecs_used = sorted({a.codec for a in artifacts.values()})
    written = write_artifacts(artifacts, cache.root / "artifacts" / f"{run_id}.safetensors") if artifacts else None
    # only what comes back from the file may reach the evaluated model, and at paper scale the in-memory artifacts
    # and their reloaded copy must not be resident together (one model copy each)
    del artifacts, method
    release_freed_memory()
    if written is not None:
        storage_bytes, breakdown = written.total_bytes, written.breakdown
        # the file is checked against the hash measured when it was written, and decoded under a limit derived
        # from this model (a damaged or replaced file is refused, never evaluated)
        limit = decode_limit_for(sum(t.numel() * t.element_size() for t in pool.pretrained.values()), len(tasks))
        try:
            reloaded = read_artifacts(written.path, sha256=written.sha256, max_bytes=limit)
        except StorageError as e:
            raise StorageError(f"artifacts of {run_id}: {e}") from None
    else:
        storage_bytes, breakdown, reloaded = 0, {}, {}
    # ... and a fresh instance loads it, so nothing merge kept on the method object can stand in for the file
    method = res.method.obj(**res.params)
    merged = method.load(reloaded, pool.pretrained, tasks)
    check_kind(spec.method, method, merged)

    routers = None
    if isinstance(merged, RoutedModel):  # the method's router seen against the plain one, on the same inputs
        routers = {"plain_knn": plain_knn_router(pool, merged), **merged.routing_ablations()}
    t0 = time.perf_counter()
    ev = evaluate(backbone, merged, spec.batch_size, spec.progress, routers=routers)
    eval_s = time.perf_counter() - t0
    val = evaluate(backbone, merged, spec.batch_size, spec.progress, split="val") if spec.eval_val else None

    extra = dict(merged.extra_metrics())
    if "routing_accuracy" in ev:
        extra["routing_accuracy"] = ev["routing_accuracy"]
    if "routing_ablations" in ev:
        extra["routing_ablations"] = ev["routing_ablations"]
    extra["weight_builds"] = ev["weight_builds"]
    if "weight_cache_hits" in ev:
        extra["weight_cache_hits"] = ev["weight_cache_hits"]
    figures = merged.write_figures(Path(spec.results_dir) / "figures", run_id)
    if figures:
        extra["figures"] = [Path(f).relative_to(spec.results_dir).as_posix() for f in figures]
    versions = library_versions()
    versions["codecs"] = {c: CODECS.get(c).obj.version for c in codecs_used}
    metrics = ev["metrics"]
    record = {
        "run_id": run_id,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "profile": spec.profile,
        "method": spec.method,
        "method_kind": "reference" if method.reference else method.kind,
        "params": res.params,
        "backbone": spec.backbone,
        "suite": res.suite.name,
        # the data itself, by content: a table never compares runs on different data (benchmark.leaderboard)
        "suite_data": backbone.suite.fingerprint(),
        "seed": spec.seed,
        "metrics": metrics,
        "metric_names": ev["metric_names"],
        "average": sum(metrics.values()) / len(metrics),
        "storage_bytes": storage_bytes,
        "storage_breakdown": breakdown,
        "timings": {"merge_s": merge_s, "eval_s": eval_s, "inference_ratio": ev["inference_ratio"]},
        "peak_rss_bytes": peak_rss_bytes(),
        "versions": versions,
        "git_commit": git_commit(),
        "checkpoints": backbone.checkpoints(),
        "extra": extra,
        "config_hash": h,
    }
    if val is not None:
        record["val_metrics"] = val["metrics"]
        record["val_average"] = sum(val["metrics"].values()) / len(val["metrics"])
    path = write_record(record, spec.results_dir)
    return record, path


def format_table(record: Mapping[str, Any]) -> str:
    rows = [(t, f"{v:6.2f}") for t, v in record["metrics"].items()]
    rows.append(("AVG", f"{record['average']:6.2f}"))
    w = max(len(t) for t, _ in rows)
    names = set(record["metric_names"].values())
    head = f"{record['method']} on {record['backbone']} / {record['suite']} ({record['profile']}, seed {record['seed']})"
    lines = [head, f"{'task'.ljust(w)}  {'/'.join(sorted(names))}"]
    lines += [f"{t.ljust(w)}  {v}" for t, v in rows]
    lines.append(f"storage: {record['storage_bytes'] / 1e6:.3f} MB ({record['storage_bytes']} bytes)")
    t = record["timings"]
    lines.append(f"merge {t['merge_s']:.1f} s, eval {t['eval_s']:.1f} s, inference ratio {t['inference_ratio']:.2f}x")
    if "routing_accuracy" in record.get("extra", {}):
        others = record["extra"].get("routing_ablations", {})
        also = "".join(f", {name} {table['AVG']:.2f}%" for name, table in others.items())
        lines.append(f"routing accuracy: {record['extra']['routing_accuracy']['AVG']:.2f}%{also}")
    return "\n".join(lines)
