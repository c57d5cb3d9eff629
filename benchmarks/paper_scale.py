"""Paper-scale checks (issue 17, item 5): memory of ``run --profile paper`` on paper-size CLIP stand-ins, TIES merge
time against a memory-bandwidth bound and against FusionBench's TIES, and the routed-inference ratios.

What is measured, and how
-------------------------
1. **Peak RSS in model copies** (``peak_copies``). Random-init stand-ins of the paper checkpoints are written in
   the hub layout the paper loaders read (:mod:`backbones._clip_paper`, :mod:`tasks.vision_paper`): under
   ``<workdir>/<size>/models`` a ``CLIPModel`` with tokenizer and preprocessor at ``openai/clip-vit-...`` and one
   fine-tuned ``CLIPVisionModel`` per task at ``tanganke/clip-vit-..._<task>`` (the pretrained vision weights plus
   seeded N(0, 1e-3) noise), and under ``<workdir>/<size>/data`` a ``DatasetDict`` (train/test, a few random images,
   a few classes) for each of the 8 tasks. Sizes: ``full`` = the hub configs (ViT-B/32: vision
   768 x 12, patch 32; ViT-L/14: vision 1024 x 24, patch 14; 224 px; their text towers; the random tokenizer of
   ``tests/test_clip_paper.py``), ``quick`` = narrow, shallow versions (8 tasks still). They are cached: a rerun
   with the same settings reuses them. Then, per method (``pretrained`` as the baseline, ``ties``,
   ``task_arithmetic``, ``dare``, ``emr``), the real CLI runs in a subprocess:
   ``python -m benchmark run --profile paper --backbone <model> --method <m> --results-dir <tmp> --no-progress``
   with ``MERGE_BENCH_MODELS`` / ``MERGE_BENCH_DATA`` pointing at the stand-ins, ``HF_HUB_OFFLINE=1`` and a
   throw-away ``MERGE_BENCH_CACHE`` shared by the methods of one call (the first run converts the fine-tuned
   checkpoints into it, the later ones find them there); the record's ``peak_rss_bytes`` (the process's VmHWM, reset at the start of
   the run) is divided by **one model copy = the bytes of the encoder's mergeable float32 parameters** (every
   ``vision_model.*`` parameter; ``visual_projection`` is frozen). This is the absolute peak, the interpreter and
   its libraries included; the table also shows the RSS of a process that has only imported what the CLI imports
   (``import baseline``), which dominates at ``quick`` size (a copy is a few MB there), so quick-mode copies say
   whether the pipeline runs, not whether the goals are met.
2. **TIES against a bandwidth bound** (``ties_vs_bandwidth_bound``). In this process: the machine's memory
   bandwidth is the best of a few ``torch.add(a, b, out=c)`` over 256 MiB float32 tensors (3 x 256 MiB moved per
   call; the default torch threads); a random pool with ``benchmarks/static_merge_time.py``'s ViT-B/32 shapes
   (``vit_b32_shapes``, 87.8M parameters, open_clip layout) and 8 tasks is merged by ``METHODS["ties"]`` with its
   defaults on a :class:`benchmark.contract.Pool`, exactly as ``static_merge_time.py`` times it (``time_method``:
   the full ``merge(pool)``). The bound counts the bytes any TIES must move at least once: **read** the 8
   fine-tuned and the pretrained tensors, **write** the merged one: ``(8 + 2) x 4 bytes x parameters``; bound =
   bytes / bandwidth, ratio = our best wall time / bound. (Our TIES reads every task vector twice, once for the
   global top-k threshold and once for the fused sign-and-merge pass, so 2x is the floor of its own design.)
3. **TIES against FusionBench** (``ties_vs_fusion_bench`` = their time / ours). The first 4 tasks of the same
   pool (FusionBench's flat ``[tasks, parameters]`` form needs ~3 GB extra per task at this size, so 4, not 8).
   Theirs: the "merging models" step of fusion-bench 0.2.33's ``TiesMergingAlgorithm.run``, called through its
   ``ties_merging_utils`` functions on the same state dicts (``state_dict_to_vector`` per model, ``vstack``,
   subtract, ``ties_merging(reset_thresh=20, merge_func="sum")``, ``ptm + 0.3 * tv``, ``vector_to_state_dict``),
   i.e. its ``ties_merging.yaml`` setting, which is our default (``topk=20``, ``dis-sum``, ``scaling_coef=0.3``,
   global top-k). Ours: ``METHODS["ties"]`` ``merge(pool)`` on the 4-task pool. Best of ``--repeats`` each, wall and
   CPU time, and the outputs are compared (``torch.equal`` per tensor; otherwise the max abs difference is
   reported).
4. **Routed inference** (``routed_ratio``): :func:`benchmarks.routed_inference.measure` (ViT-B/32 size, batch 32;
   ``--quick`` passes ``quick=True``): Auto-Switch's routed step per batch, per sample and routed on an early layer,
   each over a plain forward, in one process.

Goals (issue 17): peak copies <= 3 for ties and <= 4 for task_arithmetic, dare and emr on ViT-L/14; TIES within 3x of
the bandwidth bound and >= 2x faster than FusionBench's, outputs identical; routed batch <= 2.0, sample <= 2.5,
early layer <= 1.5.

Measured (issue 17, a 2-core VM shared with a running sweep, ``nice -n 15 ... --threads 1``)
------------------------------------------------------------------------------------------
Full size, in-memory parts only (``--skip rss``, one run, 9 min): bandwidth 31.1 GB/s (``copy_`` 28.0); TIES 88M x 8
11.04 s wall against a 3.51 GB / 31.1 GB/s = 0.113 s bound: **97.7x** (goal <= 3: not met; the merge is compute
bound at one thread: top-k selection and several elementwise passes per task); 4 tasks: ours 6.47 s, FusionBench
30.89 s: **4.8x** (CPU 4.9x), outputs ``torch.equal``, FusionBench's RSS growth 8.8 GB against our 0.35 GB; routed
batch **2.11**, sample **2.06**, early layer **1.30** (goal 2.0 / 2.5 / 1.5: batch not met).
``--quick`` (4.5 min): ViT-L/14 stand-in (2.8M parameters, one copy 11 MB) peaks at 1.11 GB = 99.5 copies for
pretrained/ties/task_arithmetic/dare and 107 for emr, of which 0.88 GB is the import baseline: 20.9 copies above it
(28.7 for emr), i.e. the paper CLIP loader's own share, set by loading, not by the method. With the streaming paper
loader (fine-tuned checkpoints converted once into the cache, read one tensor at a time), full size,
``--rss-model clip_vit_l14 --methods ties,emr --threads 1`` (one copy = 1.213 GB): TIES 5.13 GB = 4.23 copies,
EMR 11.54 GB = 9.51 copies (goals 3 and 4: not met); TIES under ``MALLOC_MMAP_THRESHOLD_=4194304`` 4.22 GB = 3.48.
After the memory fixes (the runner's 4 MiB glibc mmap threshold, the CLIP loader's own-memory vision tower, TIES's
smaller zero-sign patch, EMR's per-tensor paging of the reloaded artifacts), full size, ``--skip merge --skip
routed --threads 1`` (load average 3-6 from other work): pretrained 3.36 GB = 2.77 copies, TIES 3.58 GB = **2.95**,
task_arithmetic 3.30 GB = **2.72**, DARE 3.41 GB = **2.81**; EMR 4.87 GB = 4.01 before its paging of ``tau_uni``,
4.18 GB = **3.45** after (goals 3 / 4 / 4 / 4: met, TIES with 0.05 copies to spare). Each peak is now set by the method's
working set: TIES at the end of its fused pass (pretrained + merged output + one tensor of every task),
EMR in its merge (pretrained + ``tau_uni`` + packed masks + one tensor's stack); merge times: TIES 92 s, TA 18 s,
DARE 54 s, EMR 80 s (38 s before the mmap threshold: the fresh pages of every large temporary cost that).

Run
---
::

    .venv/bin/python benchmarks/paper_scale.py --quick --json      # a few minutes, small stand-ins
    .venv/bin/python benchmarks/paper_scale.py                      # paper size: ViT-L/14 stand-ins (~12 GB on
                                                                    # disk), 88M x 8 and FusionBench at 4 tasks in
                                                                    # memory (~13 GB); each CLI run up to
                                                                    # ~4.9 GB (EMR, above)
    .venv/bin/python benchmarks/paper_scale.py --rss-model clip_vit_b32 --rss-model clip_vit_l14
    .venv/bin/python benchmarks/paper_scale.py --skip rss           # only the in-memory parts (2-4)

With ``--json`` the last line is one JSON object: ``peak_copies`` ({method: copies} of the ViT-L/14 run, or of the
last ``--rss-model`` when ViT-L/14 is not among them; ``peak_copies_model`` names it), ``peak_copies_above_import_
baseline`` (the same less the import baseline), ``ties_vs_bandwidth_bound``, ``ties_vs_fusion_bench``,
``ties_fusion_bench_identical``, ``routed_ratio`` ({``batch``, ``sample``, ``early_layer``}) and ``detail``
(everything else: seconds, bytes, bandwidth, per-model tables). A part left out with ``--skip`` leaves its keys
out.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from backbones._clip_paper import PAPER_MODELS  # noqa: E402
from benchmark.contract import Pool  # noqa: E402
from benchmark.registry import METHODS  # noqa: E402
from benchmarks import routed_inference  # noqa: E402
from benchmarks.forward_time import CLIP_B32_PAPER, CLIP_L14_PAPER  # noqa: E402
from benchmarks.static_merge_time import RssSampler, random_pool, scaled_shapes, time_method  # noqa: E402

MODELS = ("clip_vit_b32", "clip_vit_l14")
RSS_METHODS = ("pretrained", "ties", "task_arithmetic", "dare", "emr")
GOALS = {"copies": {"ties": 3.0, "task_arithmetic": 4.0, "dare": 4.0, "emr": 4.0}, "bound": 3.0, "fusion_bench": 2.0,
         "routed": {"batch": 2.0, "sample": 2.5, "early_layer": 1.5}}
NOISE = 1e-3  # fine-tuned = pretrained + NOISE * N(0, 1)
STANDIN_VERSION = 2  # bump when the stand-ins' content changes (the cache marker compares it)

_TEXT_B32 = dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8)
_TEXT_L14 = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12)
_TEXT_QUICK = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4)

#: per size: stand-in configs (vision tower with projection_dim, text tower), data, and the in-memory TIES pool
SIZES: dict[str, dict[str, Any]] = {
    "full": {
        "models": {"clip_vit_b32": (CLIP_B32_PAPER, _TEXT_B32), "clip_vit_l14": (CLIP_L14_PAPER, _TEXT_L14)},
        "images": {"train": 10, "test": 2}, "classes": 10,
        "ties_params": 88e6, "ties_tasks": 8, "fb_tasks": 4, "bandwidth_mib": 256, "repeats": 2, "quick": False,
    },
    "quick": {
        "models": {
            "clip_vit_b32": (dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                                  patch_size=16, image_size=64, projection_dim=64), _TEXT_QUICK),
            "clip_vit_l14": (dict(hidden_size=192, intermediate_size=768, num_hidden_layers=6, num_attention_heads=4,
                                  patch_size=14, image_size=56, projection_dim=96), _TEXT_QUICK),
        },
        "images": {"train": 10, "test": 2}, "classes": 3,
        "ties_params": 5e6, "ties_tasks": 8, "fb_tasks": 4, "bandwidth_mib": 256, "repeats": 1, "quick": True,
    },
}


def _log(msg: str) -> None:
    print(msg, flush=True)


# ----------------------------------------------------------------------------------------------------------------
# Stand-ins


def _vision_config(vision: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in vision.items() if k != "projection_dim"}


def _marker_ok(d: Path, want: dict[str, Any]) -> bool:
    try:
        return json.loads((d / "standin.json").read_text()) == want
    except (OSError, ValueError):
        return False


def write_models(root: Path, model: str, vision: dict[str, Any], text: dict[str, Any], seed: int = 0) -> Path:
    """``root/<pretrained hub id>`` (``CLIPModel`` + tokenizer + preprocessor) and ``root/<fine-tuned hub id>`` for
    the 8 tasks (``CLIPVisionModel.save_pretrained``), as :func:`backbones._clip_paper.load_clip_paper` reads them;
    skipped when ``root/<model>.standin.json`` says the same settings were written before."""
    import shutil

    import transformers

    from tasks.vision_paper import TASKS
    from tests.test_clip_paper import tiny_tokenizer

    want = {"version": STANDIN_VERSION, "model": model, "vision": vision, "text": text, "seed": seed, "noise": NOISE,
            "tasks": list(TASKS)}
    marker_dir = root / f".{model}"
    if _marker_ok(marker_dir, want):
        return root
    spec = PAPER_MODELS[model]
    pre_id = spec.pretrained
    ft_dirs = {t: root / spec.finetuned.format(task=t) for t in TASKS}
    for d in [root / pre_id, *ft_dirs.values(), marker_dir]:
        shutil.rmtree(d, ignore_errors=True)
    tok = tiny_tokenizer()
    torch.manual_seed(seed)
    text_cfg = dict(text, vocab_size=len(tok), max_position_embeddings=77, bos_token_id=tok.bos_token_id,
                    eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    cfg = transformers.CLIPConfig(text_config=text_cfg, vision_config=_vision_config(vision),
                                  projection_dim=vision["projection_dim"])
    clip = transformers.CLIPModel(cfg).eval()
    pre = root / pre_id
    clip.save_pretrained(pre)
    tok.save_pretrained(pre)
    s = vision["image_size"]
    transformers.CLIPImageProcessor(size={"shortest_edge": s}, crop_size={"height": s, "width": s}).save_pretrained(pre)
    vcfg = transformers.CLIPVisionConfig(**_vision_config(vision))
    base = clip.vision_model.state_dict()
    del clip
    for i, task in enumerate(TASKS):
        g = torch.Generator().manual_seed(seed * 1000 + 100 + i)
        vm = transformers.CLIPVisionModel(vcfg)
        vm.load_state_dict({k: v + NOISE * torch.randn(v.shape, generator=g) for k, v in base.items()})
        vm.save_pretrained(ft_dirs[task])
        del vm
        gc.collect()
    marker_dir.mkdir(parents=True, exist_ok=True)
    (marker_dir / "standin.json").write_text(json.dumps(want))
    return root


def write_data(root: Path, images: dict[str, int], classes: int, seed: int = 0) -> Path:
    """``root/<dataset id>``: a ``DatasetDict`` (train, test) of random RGB images per paper task, ``classes``
    classes named ``"<task> class <i>"``; skipped when ``root/standin.json`` matches. (Not FusionBench's class
    names: ``tasks.vision_paper.fusion_bench_classnames`` fails once ``fusion_bench`` has been imported, whose
    lazy module has no ``__spec__``.)"""
    import shutil

    import datasets

    from tasks.vision_paper import DATASETS
    from tests.test_clip_paper import _dataset

    want = {"version": STANDIN_VERSION, "images": images, "classes": classes, "seed": seed}
    if _marker_ok(root, want):
        return root
    for i, (task, spec) in enumerate(DATASETS.items()):
        names = [f"{task} class {c}" for c in range(classes)]
        splits = {split: _dataset(n, names, seed * 1000 + 10 * i + j)[0] for j, (split, n) in enumerate(images.items())}
        d = root / spec.hub_id
        shutil.rmtree(d, ignore_errors=True)
        datasets.DatasetDict(splits).save_to_disk(str(d))
    (root / "standin.json").write_text(json.dumps(want))
    return root


def copy_bytes(vision: dict[str, Any]) -> int:
    """One model copy: float32 bytes of a CLIP vision tower's parameters (the mergeable ``vision_model.*``)."""
    import transformers

    with torch.device("meta"):
        vm = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**_vision_config(vision)))
    return 4 * sum(p.numel() for p in vm.parameters())


# ----------------------------------------------------------------------------------------------------------------
# Peak RSS of the CLI


def import_baseline_rss() -> int | None:
    """Peak RSS of a process that has imported what ``benchmark run`` on a paper CLIP imports, and nothing else."""
    code = ("import benchmark.__main__, benchmark.runner, backbones.clip_vit, backbones._clip_paper, tasks.vision8, "
            "datasets, transformers.models.clip.modeling_clip, safetensors.torch\n"
            "print([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1])")
    try:
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                             env=dict(os.environ, HF_HUB_OFFLINE="1"))
        return int(out.stdout.strip().splitlines()[-1]) * 1024
    except (subprocess.CalledProcessError, ValueError, IndexError, OSError):
        return None


def run_cli(model: str, method: str, models_root: Path, data_root: Path, threads: int | None = None,
            cache: Path | None = None) -> dict[str, Any]:
    """``python -m benchmark run --profile paper`` in a subprocess (``OMP_NUM_THREADS=threads`` if given); its
    record (the JSON it wrote). ``cache``: its ``MERGE_BENCH_CACHE`` (default: a throw-away one)."""
    with tempfile.TemporaryDirectory(prefix="paper_scale-") as tmp:
        res = Path(tmp) / "results"
        env = dict(os.environ, HF_HUB_OFFLINE="1", MERGE_BENCH_MODELS=str(models_root),
                   MERGE_BENCH_DATA=str(data_root), MERGE_BENCH_CACHE=str(cache or Path(tmp) / "cache"))
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
        cmd = [sys.executable, "-m", "benchmark", "run", "--profile", "paper", "--backbone", model, "--method", method,
               "--results-dir", str(res), "--no-progress"]
        t0 = time.perf_counter()
        p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if p.returncode != 0:
            tail = "\n".join((p.stdout + p.stderr).strip().splitlines()[-15:])
            raise RuntimeError(f"{' '.join(cmd[1:])} failed (exit {p.returncode}):\n{tail}")
        records = sorted(res.glob("*.json"))
        if len(records) != 1:
            raise RuntimeError(f"{' '.join(cmd[1:])} wrote {len(records)} records, expected 1")
        rec = json.loads(records[0].read_text())
        rec["_wall_s"] = wall
        return rec


def measure_rss(model: str, size: str, workdir: Path, methods: Sequence[str], seed: int = 0,
                threads: int | None = None) -> dict[str, Any]:
    cfg = SIZES[size]
    vision, text = cfg["models"][model]
    base = workdir / size
    t0 = time.perf_counter()
    models_root = write_models(base / "models", model, vision, text, seed)
    data_root = write_data(base / "data", cfg["images"], cfg["classes"], seed)
    prep_s = time.perf_counter() - t0
    copy = copy_bytes(vision)
    _log(f"{model} stand-ins ({size}): {copy / 4e6:.1f}M mergeable parameters, one copy = {copy / 1e9:.3f} GB; "
         f"ready in {prep_s:.0f} s under {base}")
    rows = {}
    # one cache for the methods of this call: the first run converts the fine-tuned checkpoints into it (its peak
    # includes that), the others find them converted, as a user's second run does
    with tempfile.TemporaryDirectory(prefix="paper_scale-cache-") as cache:
        for m in methods:
            rows[m] = _rss_row(model, m, models_root, data_root, threads, Path(cache), copy)
    return {"model": model, "size": size, "copy_bytes": copy, "vision": vision, "methods": rows}


def _rss_row(model: str, m: str, models_root: Path, data_root: Path, threads: int | None, cache: Path,
             copy: int) -> dict[str, Any]:
    rec = run_cli(model, m, models_root, data_root, threads, cache)
    peak = int(rec["peak_rss_bytes"])
    _log(f"  {m}: peak RSS {peak / 1e9:.2f} GB = {peak / copy:.2f} copies ({rec['_wall_s']:.0f} s)")
    return {"peak_rss_bytes": peak, "copies": peak / copy, "merge_s": rec["timings"]["merge_s"],
            "eval_s": rec["timings"]["eval_s"], "wall_s": rec["_wall_s"], "average": rec["average"]}


# ----------------------------------------------------------------------------------------------------------------
# Merge time: bandwidth bound, FusionBench


def measure_bandwidth(mib: int = 256, repeats: int = 5) -> dict[str, float]:
    """Bytes moved per second by ``torch.add(a, b, out=c)`` over ``mib`` MiB float32 tensors (best of ``repeats``;
    2 reads + 1 write per element), and by ``c.copy_(a)`` (1 read + 1 write), for comparison."""
    n = mib * 2 ** 20 // 4
    a, b, c = torch.rand(n), torch.rand(n), torch.empty(n)
    torch.add(a, b, out=c)  # fault the pages in
    best_add = best_copy = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.add(a, b, out=c)
        best_add = min(best_add, time.perf_counter() - t0)
        t0 = time.perf_counter()
        c.copy_(a)
        best_copy = min(best_copy, time.perf_counter() - t0)
    return {"add_bytes_per_s": 3 * 4 * n / best_add, "copy_bytes_per_s": 2 * 4 * n / best_copy, "mib": mib}


def fusion_bench_ties(pretrained: dict[str, torch.Tensor], finetuned: Sequence[dict[str, torch.Tensor]],
                      threshold: float = 20, merge_func: str = "sum", scaling_factor: float = 0.3
                      ) -> dict[str, torch.Tensor]:
    """fusion-bench 0.2.33's TIES "merging models" step (``TiesMergingAlgorithm.run``) on state dicts."""
    from fusion_bench.method.ties_merging.ties_merging_utils import (
        state_dict_to_vector, ties_merging, vector_to_state_dict)

    with contextlib.redirect_stdout(io.StringIO()):  # it prints its progress
        flat_ft = torch.vstack([state_dict_to_vector(sd, []) for sd in finetuned])
        flat_ptm = state_dict_to_vector(pretrained, [])
        tv = flat_ft - flat_ptm
        del flat_ft
        merged_tv = ties_merging(tv, reset_thresh=threshold, merge_func=merge_func)
        del tv
        merged = flat_ptm + scaling_factor * merged_tv
        return dict(vector_to_state_dict(merged, pretrained, remove_keys=[]))


def _timed(fn) -> tuple[Any, float, float, float | None]:
    gc.collect()
    with RssSampler() as rss:
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return out, wall, cpu, rss.growth_mb


def _compare(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> dict[str, Any]:
    if set(ours) != set(theirs):
        return {"identical": False, "max_abs_diff": float("inf"), "keys_differ": sorted(set(ours) ^ set(theirs))}
    same = all(torch.equal(ours[k], theirs[k]) for k in ours)
    diff = max(float((ours[k] - theirs[k]).abs().max()) for k in ours) if not same else 0.0
    unequal = sum(int((ours[k] != theirs[k]).sum()) for k in ours) if not same else 0
    return {"identical": same, "max_abs_diff": diff, "unequal_entries": unequal}


def measure_merge(size: str, seed: int = 0, repeats: int | None = None) -> dict[str, Any]:
    cfg = SIZES[size]
    reps = repeats or cfg["repeats"]
    bw = measure_bandwidth(cfg["bandwidth_mib"])
    shapes = scaled_shapes(cfg["ties_params"])
    n = sum(torch.Size(s).numel() for s in shapes.values())
    n_tasks, fb_tasks = cfg["ties_tasks"], cfg["fb_tasks"]
    pool = random_pool(shapes, n_tasks, seed)
    _log(f"memory bandwidth (torch.add, {bw['mib']} MiB): {bw['add_bytes_per_s'] / 1e9:.1f} GB/s "
         f"(copy_: {bw['copy_bytes_per_s'] / 1e9:.1f} GB/s); pool {n / 1e6:.1f}M parameters x {n_tasks} tasks, "
         f"{torch.get_num_threads()} threads")
    walls, cpus, grows = [], [], []
    for _ in range(reps):
        w, c, g = time_method("ties", {}, pool)
        walls.append(w), cpus.append(c), grows.append(g)
    bound_bytes = (n_tasks + 2) * 4 * n
    bound_s = bound_bytes / bw["add_bytes_per_s"]
    ties = {"wall_s": min(walls), "cpu_s": min(cpus), "rss_growth_mb": max((g for g in grows if g is not None),
                                                                              default=None),
            "bound_bytes": bound_bytes, "bound_s": bound_s, "ratio": min(walls) / bound_s,
            "parameters": n, "tasks": n_tasks}
    _log(f"TIES {n_tasks} tasks: {ties['wall_s']:.2f} s wall ({ties['cpu_s']:.2f} s CPU); bound "
         f"{bound_bytes / 1e9:.2f} GB / bandwidth = {bound_s:.3f} s; ratio {ties['ratio']:.1f}x")

    # FusionBench on the first fb_tasks tasks of the same pool (imported here: its import is not part of its time)
    import fusion_bench.method.ties_merging.ties_merging_utils  # noqa: F401

    keep = pool.tasks[:fb_tasks]
    pool = Pool(tasks=keep, pretrained=pool.pretrained, finetuned={t: pool.finetuned[t] for t in keep}, seed=seed)
    gc.collect()
    plugin = METHODS.get("ties")
    method = plugin.obj(**plugin.resolve({}))
    p = method.params
    if (p["topk"], p["merge_func"], p["scaling_coef"], p["topk_scope"]) != (20.0, "dis-sum", 0.3, "global"):
        raise RuntimeError(f"our TIES defaults changed ({p}); update the FusionBench settings here")
    ours_t, theirs_t = [], []
    ours = theirs = None
    fb_grow = our_grow = None
    for _ in range(reps):
        ours = None
        arts, w, c, our_grow = _timed(lambda: method.merge(pool))
        ours = dict(arts["merged"].value)
        ours_t.append((w, c))
        theirs = None
        theirs, w, c, fb_grow = _timed(lambda: fusion_bench_ties(pool.pretrained, [pool.finetuned[t] for t in keep]))
        theirs_t.append((w, c))
    cmp = _compare(ours, theirs)
    our_w, our_c = min(x[0] for x in ours_t), min(x[1] for x in ours_t)
    fb_w, fb_c = min(x[0] for x in theirs_t), min(x[1] for x in theirs_t)
    fb = {"tasks": fb_tasks, "ours_wall_s": our_w, "ours_cpu_s": our_c, "theirs_wall_s": fb_w, "theirs_cpu_s": fb_c,
          "ratio": fb_w / our_w, "ratio_cpu": fb_c / our_c, "ours_rss_growth_mb": our_grow,
          "theirs_rss_growth_mb": fb_grow, **cmp}
    _log(f"TIES {fb_tasks} tasks: ours {our_w:.2f} s, FusionBench {fb_w:.2f} s wall -> {fb['ratio']:.1f}x "
         f"(CPU {fb['ratio_cpu']:.1f}x); outputs " +
         ("identical" if cmp["identical"] else f"differ: max |diff| {cmp['max_abs_diff']:.3g}"))
    return {"bandwidth": bw, "ties": ties, "fusion_bench": fb, "repeats": reps, "threads": torch.get_num_threads()}


# ----------------------------------------------------------------------------------------------------------------
# Report


def _fmt(v: float | None, f: str = ".2f") -> str:
    return "" if v is None else format(v, f)


def print_tables(out: dict[str, Any]) -> None:
    d = out["detail"]
    print()
    print(f"paper_scale ({d['size']}): torch {torch.__version__}, {d['threads']} threads, load average "
          f"{d['load_before']:.2f} -> {d['load_after']:.2f}")
    for r in d.get("rss", []):
        base = d.get("import_baseline_rss_bytes")
        print()
        print(f"peak RSS, run --profile paper, {r['model']} ({r['size']}), one copy = {r['copy_bytes'] / 1e9:.3f} GB"
              + ("" if base is None else f"; import baseline {base / 1e9:.2f} GB = {base / r['copy_bytes']:.1f} "
                 "copies"))
        print("| method | peak RSS (GB) | copies | goal | above import baseline (copies) | merge (s) | run (s) |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for m, row in r["methods"].items():
            above = "" if base is None else f"{(row['peak_rss_bytes'] - base) / r['copy_bytes']:.1f}"
            goal = GOALS["copies"].get(m)
            print(f"| {m} | {row['peak_rss_bytes'] / 1e9:.2f} | {row['copies']:.1f} | {_fmt(goal, '.0f')} | {above} "
                  f"| {row['merge_s']:.2f} | {row['wall_s']:.0f} |")
    if "merge" in d:
        mg = d["merge"]
        t, fb, bw = mg["ties"], mg["fusion_bench"], mg["bandwidth"]
        print()
        print(f"TIES merge time, {t['parameters'] / 1e6:.1f}M parameters (best of {mg['repeats']})")
        print("| what | value | goal |")
        print("|---|---:|---:|")
        print(f"| bandwidth, torch.add (GB/s) | {bw['add_bytes_per_s'] / 1e9:.1f} | |")
        print(f"| bandwidth, copy_ (GB/s) | {bw['copy_bytes_per_s'] / 1e9:.1f} | |")
        print(f"| TIES {t['tasks']} tasks, wall (s) | {t['wall_s']:.2f} | |")
        print(f"| TIES {t['tasks']} tasks, CPU (s) | {t['cpu_s']:.2f} | |")
        print(f"| bound: {(t['bound_bytes'] / 1e9):.2f} GB / bandwidth (s) | {t['bound_s']:.3f} | |")
        print(f"| TIES / bound | {t['ratio']:.1f} | <= {GOALS['bound']:.0f} |")
        print(f"| TIES {fb['tasks']} tasks, ours, wall / CPU (s) | {fb['ours_wall_s']:.2f} / "
              f"{fb['ours_cpu_s']:.2f} | |")
        print(f"| TIES {fb['tasks']} tasks, FusionBench, wall / CPU (s) | {fb['theirs_wall_s']:.2f} / "
              f"{fb['theirs_cpu_s']:.2f} | |")
        print(f"| FusionBench / ours, wall (CPU) | {fb['ratio']:.1f} ({fb['ratio_cpu']:.1f}) | >= "
              f"{GOALS['fusion_bench']:.0f} |")
        print(f"| RSS growth ours / FusionBench (MB) | {_fmt(fb['ours_rss_growth_mb'], '.0f')} / "
              f"{_fmt(fb['theirs_rss_growth_mb'], '.0f')} | |")
        print(f"| outputs identical | {fb['identical']} (max abs diff {fb['max_abs_diff']:.3g}) | True |")
    if out.get("routed_ratio"):
        print()
        print("routed inference, ViT-B/32 size, batch 32 (benchmarks/routed_inference.py)")
        print("| row | x plain forward | goal |")
        print("|---|---:|---:|")
        for k, v in out["routed_ratio"].items():
            print(f"| {k} | {v:.2f} | <= {GOALS['routed'][k]:.1f} |")


def run(size: str = "full", workdir: Path | None = None, rss_models: Sequence[str] = ("clip_vit_l14",),
        methods: Sequence[str] = RSS_METHODS, skip: Sequence[str] = (), seed: int = 0,
        repeats: int | None = None, threads: int | None = None) -> dict[str, Any]:
    """Everything the module docstring lists; the JSON object ``--json`` prints. ``threads``: torch threads here
    and ``OMP_NUM_THREADS`` of the CLI runs (default: torch's choice)."""
    prev = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _run(size, workdir, rss_models, methods, skip, seed, repeats, threads)
    finally:
        torch.set_num_threads(prev)


def _run(size: str, workdir: Path | None, rss_models: Sequence[str], methods: Sequence[str], skip: Sequence[str],
         seed: int, repeats: int | None, threads: int | None) -> dict[str, Any]:
    workdir = Path(workdir or Path.home() / ".cache" / "merge-bench" / "paper_scale").expanduser()
    detail: dict[str, Any] = {"size": size, "threads": torch.get_num_threads(), "load_before": os.getloadavg()[0]}
    out: dict[str, Any] = {}
    if "rss" not in skip:
        detail["import_baseline_rss_bytes"] = import_baseline_rss()
        detail["rss"] = [measure_rss(m, size, workdir, methods, seed, threads) for m in rss_models]
        pick = next((r for r in detail["rss"] if r["model"] == "clip_vit_l14"), detail["rss"][-1])
        out["peak_copies"] = {m: row["copies"] for m, row in pick["methods"].items()}
        out["peak_copies_model"] = pick["model"]
        base = detail["import_baseline_rss_bytes"]
        if base is not None:  # what the run itself adds to a process that has only imported the libraries
            out["peak_copies_above_import_baseline"] = {
                m: (row["peak_rss_bytes"] - base) / pick["copy_bytes"] for m, row in pick["methods"].items()}
    if "merge" not in skip:
        detail["merge"] = measure_merge(size, seed, repeats)
        out["ties_vs_bandwidth_bound"] = detail["merge"]["ties"]["ratio"]
        out["ties_vs_fusion_bench"] = detail["merge"]["fusion_bench"]["ratio"]
        out["ties_fusion_bench_identical"] = detail["merge"]["fusion_bench"]["identical"]
    if "routed" not in skip:
        _log("routed inference (benchmarks/routed_inference.py) ...")
        out["routed_ratio"] = {k: float(v) for k, v in routed_inference.measure(SIZES[size]["quick"]).items()}
    detail["load_after"] = os.getloadavg()[0]
    out["detail"] = detail
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small stand-ins and pool, quick routed timing (minutes)")
    ap.add_argument("--json", action="store_true", help="last line: the results as one JSON object")
    ap.add_argument("--workdir", type=Path, default=None,
                    help="where the stand-ins are cached (default ~/.cache/merge-bench/paper_scale)")
    ap.add_argument("--rss-model", action="append", choices=MODELS, default=None,
                    help="CLIP size(s) for the peak-RSS runs; repeatable (default clip_vit_l14)")
    ap.add_argument("--methods", default=",".join(RSS_METHODS),
                    help=f"comma-separated methods for the peak-RSS runs (default {','.join(RSS_METHODS)})")
    ap.add_argument("--skip", action="append", choices=("rss", "merge", "routed"), default=[],
                    help="leave a part out (repeatable)")
    ap.add_argument("--repeats", type=int, default=None, help="timed merges per side (default 2, --quick 1)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads, here and in the CLI runs (default: torch's); 1 on a loaded machine, where "
                         "waiting for descheduled OpenMP threads can make a merge 50x slower")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    for m in methods:
        if m not in METHODS:
            ap.error(f"unknown method {m!r}")
    if a.repeats is not None and a.repeats < 1:
        ap.error("--repeats must be >= 1")
    if a.threads is not None and a.threads < 1:
        ap.error("--threads must be >= 1")
    out = run("quick" if a.quick else "full", a.workdir, a.rss_model or ["clip_vit_l14"], methods, a.skip, a.seed,
              a.repeats, a.threads)
    print_tables(out)
    if a.json:
        print(json.dumps(out, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
