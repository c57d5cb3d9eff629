"""Forward-pass time of every backbone of the suite, at its tiny config and at paper size, on this machine's CPU:
random init, nothing downloaded, one inference-mode forward of the adapter's own module (the encoder the ops call:
CLIP vision tower + projection, ConvNextModel pooled, DETR without its class head, RoBERTa / Mamba body + pooling).
Meant to size later GPU runs and to show how far the tiny profile is from the paper's.

Per (backbone, size): build the module (tiny configs from the adapters' ``CONFIGS`` and build helpers, paper configs
written out below after the hub checkpoints they mirror), one warm-up call, then ``--reps`` rounds; each round
times one forward of the tiny ``clip_vit_b32`` baseline and then one of the model (``time.perf_counter``), so the
baseline runs side by side with every row in the same process and load from other processes hits both alike.
Printed: the median per forward and per sample, the parameter count of the timed module, and the ratio of the
row's median to the median of the baseline calls interleaved with it (the tiny clip_vit_b32 row is therefore ~1).

Inputs are random: images ``[B, C, S, S]`` (tiny DETR has 5 channels: RGB + CoordConv x/y), token ids without
padding. Paper sizes: 224 px for the vision encoders, an 800x800 image for DETR (its shorter side; batch 1), 128
tokens for RoBERTa (the paper profile's max length) and 32 for Mamba (``--mamba-paper-seq``; its CPU scan is
slow, see ``MAMBA_PAPER_SEQ``). Mamba runs transformers' pure-PyTorch path (a sequential selective scan), as on
CPU in the suite.

On a machine other jobs keep busy, more intra-op threads than idle cores make every parallel op wait for a
descheduled thread: small forwards slow down by tens of times, large ones much less, so the ratios shift too. The
script warns when load + threads exceed the cores; ``--threads 1`` is the steadier figure there.

    .venv/bin/python benchmarks/forward_time.py                                  # everything, ~3-7 min on 2 cores
    .venv/bin/python benchmarks/forward_time.py --only clip_vit_b32,roberta_base --sizes tiny
    .venv/bin/python benchmarks/forward_time.py --reps 5 --threads 4
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from torch import nn  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

BACKBONE_NAMES = ("clip_vit_b32", "clip_vit_l14", "convnext", "detr_r50", "roberta_base", "mamba_130m")
SIZES = ("tiny", "paper")
BASELINE = ("clip_vit_b32", "tiny")

# batch per size; DETR at paper size sees one 800x800 image
BATCH = {"tiny": 32, "paper": 8}
DETR_PAPER_BATCH = 1
DETR_PAPER_SIDE = 800
TEXT_PAPER_SEQ = 128  # backbones._text.PAPER_MAX_LENGTH
# Mamba's CPU path is a sequential selective scan: ~3 small ops per position and layer (24 x L), so its time is
# per-op latency, not FLOPs, and batch barely matters. Measured (batch 8, seq 128, a 2-core machine shared with a
# 1-core job): 70 s per forward at 2 threads, 8.6 s at 1; batch 2 still took 65 s at 2 threads. The default is
# therefore seq 32 (~4x less); --mamba-paper-seq 128 gives the paper profile's length.
MAMBA_PAPER_SEQ = 32


@dataclass
class Case:
    """A module and how to call it: ``make_inputs()`` -> positional args of ``module``."""

    module: nn.Module
    make_inputs: Callable[[], tuple]
    batch: int
    shape: str  # one sample's input, for the table
    context: Callable[[], Any] = contextlib.nullcontext


# ----------------------------------------------------------------------------------------------------------------
# Paper-size configs (random init): transformers config fields of the hub checkpoints named in the comments

# openai/clip-vit-base-patch32 (vision tower + visual projection)
CLIP_B32_PAPER = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                      patch_size=32, image_size=224, projection_dim=512)
# openai/clip-vit-large-patch14 (vision tower + visual projection)
CLIP_L14_PAPER = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                      patch_size=14, image_size=224, projection_dim=768)
# facebook/convnext-base-224 (ConvNextModel; no projection: the embedding is the 1024-d pooler output)
CONVNEXT_PAPER = dict(image_size=224, patch_size=4, hidden_sizes=[128, 256, 512, 1024], depths=[3, 3, 27, 3],
                      embed_dim=0, layer_scale_init_value=1e-6)
# roberta-base (RobertaModel without pooler)
ROBERTA_PAPER = dict(vocab_size=50265, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                     intermediate_size=3072, max_position_embeddings=514, type_vocab_size=1, pad_token_id=1,
                     layer_norm_eps=1e-5)
# state-spaces/mamba-130m-hf (MambaModel); vocab and pad id passed separately to build_mamba
MAMBA_PAPER = dict(hidden_size=768, num_hidden_layers=24, state_size=16, expand=2, conv_kernel=4)
MAMBA_PAPER_VOCAB, MAMBA_PAPER_PAD = 50280, 0


def _images(batch: int, channels: int, side: int) -> Callable[[], tuple]:
    return lambda: (torch.randn(batch, channels, side, side),)


def _tokens(batch: int, seq: int, vocab: int, low: int) -> Callable[[], tuple]:
    """Random ids in [low, vocab) (no special / pad tokens) with a full attention mask."""
    return lambda: (torch.randint(low, vocab, (batch, seq)), torch.ones(batch, seq, dtype=torch.long))


def build_case(name: str, size: str, mamba_seq: int = MAMBA_PAPER_SEQ) -> Case:
    b = BATCH[size]
    if name in ("clip_vit_b32", "clip_vit_l14"):
        from backbones.clip_vit import CONFIGS, build_encoder

        cfg = CONFIGS[name]["tiny"] if size == "tiny" else (CLIP_B32_PAPER if name == "clip_vit_b32" else CLIP_L14_PAPER)
        s = cfg["image_size"]
        return Case(build_encoder(cfg), _images(b, 3, s), b, f"3x{s}x{s}")
    if name == "convnext":
        from backbones.convnext import CONFIGS, build_convnext_encoder

        cfg = CONFIGS["tiny"] if size == "tiny" else CONVNEXT_PAPER
        s = cfg["image_size"]
        return Case(build_convnext_encoder(cfg), _images(b, 3, s), b, f"3x{s}x{s}")
    if name == "detr_r50":
        from backbones.detr import CONFIGS, build_detector

        if size == "tiny":
            cfg = CONFIGS["tiny"]
            det = build_detector(cfg)[0]
            c, s = 3 + 2 * bool(cfg.get("coord_channels")), cfg["image_size"]
            return Case(det, _images(b, c, s), b, f"{c}x{s}x{s}")
        b, s = DETR_PAPER_BATCH, DETR_PAPER_SIDE
        return Case(detr_paper(), _images(b, 3, s), b, f"3x{s}x{s}")
    if name == "roberta_base":
        if size == "tiny":
            from backbones.roberta import CONFIGS, build_roberta
            from tasks import glue7

            seq = glue7.PROFILE_SIZES["tiny"]["seq_len"]
            enc = build_roberta(CONFIGS["tiny"], len(glue7.VOCAB), glue7.PAD_ID, seq)
            return Case(enc, _tokens(b, seq, len(glue7.VOCAB), len(glue7.SPECIALS)), b, f"seq {seq}")
        from transformers import RobertaConfig, RobertaModel

        from backbones._text import TextEncoder

        cfg = RobertaConfig(**ROBERTA_PAPER)
        cfg._attn_implementation = "sdpa"
        enc = TextEncoder(RobertaModel(cfg, add_pooling_layer=False), "roberta", "first")
        return Case(enc, _tokens(b, TEXT_PAPER_SEQ, ROBERTA_PAPER["vocab_size"], 3), b, f"seq {TEXT_PAPER_SEQ}")
    if name == "mamba_130m":
        from backbones.mamba import CONFIGS, build_mamba, torch_path

        cpu = lambda: torch_path(torch.device("cpu"))  # noqa: E731  (pure-PyTorch path even with kernels installed)
        if size == "tiny":
            from tasks import glue7

            seq = glue7.PROFILE_SIZES["tiny"]["seq_len"]
            enc = build_mamba(CONFIGS["tiny"], len(glue7.VOCAB), glue7.PAD_ID)
            return Case(enc, _tokens(b, seq, len(glue7.VOCAB), len(glue7.SPECIALS)), b, f"seq {seq}", cpu)
        enc = build_mamba(MAMBA_PAPER, MAMBA_PAPER_VOCAB, MAMBA_PAPER_PAD)
        return Case(enc, _tokens(b, mamba_seq, MAMBA_PAPER_VOCAB, 1), b, f"seq {mamba_seq}", cpu)
    raise ValueError(name)


def detr_paper() -> nn.Module:
    """facebook/detr-resnet-50 (its transformers-ResNet variant, ``use_timm_backbone=False``): ResNet-50
    (bottleneck, depths 3-4-6-3, widths 256-512-1024-2048), d_model 256, 6 encoder + 6 decoder layers, FFN 2048,
    8 heads, 100 queries; the adapter's :class:`backbones.detr.Detector` (no class head)."""
    from transformers import DetrConfig, DetrForObjectDetection, ResNetConfig

    from backbones.detr import Detector

    backbone = ResNetConfig(num_channels=3, embedding_size=64, hidden_sizes=[256, 512, 1024, 2048],
                            depths=[3, 4, 6, 3], layer_type="bottleneck", out_features=["stage4"])
    cfg = DetrConfig(backbone_config=backbone, use_timm_backbone=False, use_pretrained_backbone=False,
                     d_model=256, encoder_layers=6, decoder_layers=6, encoder_ffn_dim=2048, decoder_ffn_dim=2048,
                     encoder_attention_heads=8, decoder_attention_heads=8, num_queries=100, num_labels=91)
    full = DetrForObjectDetection(cfg)
    return Detector(full.model, full.bbox_predictor)


# ----------------------------------------------------------------------------------------------------------------
# Timing


def timed_call(case: Case, inputs: tuple) -> float:
    with case.context():
        t0 = time.perf_counter()
        case.module(*inputs)
        return time.perf_counter() - t0


def measure(case: Case, base: Case, reps: int) -> tuple[list[float], list[float]]:
    """One warm-up call of ``case``, then ``reps`` rounds of (baseline call, case call): the two lists of seconds."""
    x, bx = case.make_inputs(), base.make_inputs()
    timed_call(case, x)
    ts, bs = [], []
    for _ in range(reps):
        bs.append(timed_call(base, bx))
        ts.append(timed_call(case, x))
    return ts, bs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=",".join(BACKBONE_NAMES),
                    help=f"comma-separated backbones (default: all of {', '.join(BACKBONE_NAMES)})")
    ap.add_argument("--sizes", default=",".join(SIZES), help="comma-separated sizes: tiny, paper")
    ap.add_argument("--reps", type=int, default=3, help="timed calls per row (median reported)")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    ap.add_argument("--mamba-paper-seq", type=int, default=MAMBA_PAPER_SEQ,
                    help=f"tokens per input of paper-size Mamba (default {MAMBA_PAPER_SEQ}; the paper profile: "
                         f"{TEXT_PAPER_SEQ}); see MAMBA_PAPER_SEQ")
    args = ap.parse_args()
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    bad = [n for n in names if n not in BACKBONE_NAMES] + [s for s in sizes if s not in SIZES]
    if bad:
        ap.error(f"unknown backbone/size {', '.join(bad)}; backbones: {', '.join(BACKBONE_NAMES)}; sizes: tiny, paper")
    if args.reps < 1:
        ap.error("--reps must be >= 1")

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load0 = f"{os.getloadavg()[0]:.2f}"
    t_start = time.perf_counter()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, inference_mode, float32, random init; "
          f"warm-up 1 + median of {args.reps}; baseline: tiny clip_vit_b32 forward, timed before each call",
          flush=True)
    busy = os.getloadavg()[0]
    if busy + args.threads > (os.cpu_count() or 1) + 0.5:
        print(f"warning: load average {busy:.2f} + {args.threads} threads > {os.cpu_count()} cores: intra-op threads "
              f"will wait on descheduled peers, which inflates small forwards far more than large ones (seen: the "
              f"baseline at ~10 ms on 1 thread took ~550 ms on 2); --threads 1 is steadier on a busy machine",
              flush=True)

    rows = []
    with torch.inference_mode():
        base = build_case(*BASELINE)
        base.module.eval()
        timed_call(base, base.make_inputs())  # warm-up
        for name in names:
            for size in sizes:
                t0 = time.perf_counter()
                case = base if (name, size) == BASELINE else build_case(name, size, args.mamba_paper_seq)
                case.module.eval()
                built = time.perf_counter() - t0
                params = sum(p.numel() for p in case.module.parameters())
                ts, bs = measure(case, base, args.reps)
                t, bt = statistics.median(ts), statistics.median(bs)
                rows.append((name, size, case.shape, case.batch, params, t, bt))
                print(f"  {name} {size}: built in {built:.1f} s; forward {', '.join(f'{v * 1e3:.1f}' for v in ts)} "
                      f"ms; baseline {', '.join(f'{v * 1e3:.2f}' for v in bs)} ms", flush=True)
                if case is not base:
                    del case
    wall = time.perf_counter() - t_start

    print()
    print(f"forward time on CPU ({torch.get_num_threads()} threads), median of {args.reps}; x baseline = median / "
          f"median of the tiny clip_vit_b32 (batch {base.batch}) forwards interleaved with that row; total "
          f"{wall:.0f} s; load average before/after: {load0} / {os.getloadavg()[0]:.2f}")
    print()
    print("| backbone | size | input | batch | params (M) | ms / forward | ms / sample | baseline ms | x baseline |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for name, size, shape, batch, params, t, bt in rows:
        print(f"| {name} | {size} | {shape} | {batch} | {params / 1e6:.2f} | {t * 1e3:.1f} | {t * 1e3 / batch:.2f} "
              f"| {bt * 1e3:.2f} | {t / bt:.1f} |")


if __name__ == "__main__":
    main()
