"""ConvNeXt image encoder on the ``vision8`` suite (``convnext``).

The adapter is an :class:`backbones._image.ImageBackbone`, as CLIP's is, with a ConvNeXt encoder: the same one-encoder-plus-frozen-heads
layout, the same ModelOps and, on the generated profiles, the same three cached stages (label-free SimCLR-style
pretraining on the unlabeled union of the tasks' train images, frozen prototype heads, fine-tuning of the whole
encoder against the frozen head with the embedding-preservation term; see ``backbones/clip_vit.py`` for what each
stage does and why). Only the encoder, its input statistics, the configs and the recipe differ.

The encoder
-----------
:class:`ConvNeXtEncoder`: transformers' ``ConvNextModel`` (patchify stem, stages of depthwise 7x7 conv ->
LayerNorm -> pointwise MLP -> layer scale, global average pool, final LayerNorm = ``pooler_output``) followed by an
optional linear ``projection`` to the embedding. Parameter names are those of transformers'
``ConvNextForImageClassification`` (``convnext.embeddings.*``, ``convnext.encoder.stages.*``, ``convnext.layernorm.*``),
so the paper checkpoints load by name. The pointwise convolutions (``pwconv1`` / ``pwconv2``) are ``nn.Linear``
layers over channels-last activations, so ``linear_inputs`` (RegMean) covers them, with one input row per pixel
of the stage's feature map; the stem, depthwise and downsampling convolutions are mergeable but not linear maps
of a flat input, so data-dependent methods treat them like biases and norms.

*Mergeable*: every encoder parameter (layer-scale vectors included). Heads are per task and never merged.

paper
    :func:`backbones._convnext_paper.load_convnext_paper`: ``facebook/convnext-base-224`` and FusionBench's
    ``tanganke/convnext-base-224_<task>_sgd_batch-size-64_lr-0.01_steps-4000`` (``ConvNextForImageClassification``,
    every weight fine-tuned with a new classifier). The encoder is ``ConvNextModel`` without projection (embeddings
    = the 1024-d ``pooler_output``); each task's head is its fine-tuned ``classifier`` (weight and bias), used as
    is: ``logits = emb @ W.T + b``. Preprocessing is ConvNeXt's evaluation transform: shorter side resized to
    ``224 / crop_pct`` (256), centre crop 224, ImageNet mean/std.

tiny / micro (in-house, cached)
    A small ``ConvNextConfig`` (:data:`CONFIGS`): at 32 px a 4-pixel patchify stem gives an 8x8 map, then three
    stages (8x8 -> 4x4 -> 2x2) of widths 32/64/128 and depths 1/1/2 (0.38 M parameters), and a linear
    projection (no bias, like CLIP's ``visual_projection``) to a 128-d embedding consumed by the prototype heads:
    ``logits = normalize(emb) @ head.T`` (:class:`backbones._image.ImageOps`). ImageNet mean/std, as ConvNeXt's
    own preprocessing. Recipe (:data:`RECIPES`): CLIP's, with 400 instead of 600 pretraining steps (at twice the
    learning rate): about 7.5 CPU-minutes on one thread for pretraining, heads and the 8 fine-tunings.

    ``layer_scale_init_value=1.0`` instead of ConvNeXt's 1e-6. Measured on seed 0: with 1e-6 the pretraining
    leaves the layer scales at 0.03-0.08, every block's output is multiplied by them, and fine-tuning at CLIP's
    learning rate (1e-3) barely learns (Individual 43.1 vs Pretrained 26.8; Task Arithmetic 28.8); at 1e-2 the
    individual models are good (gratings 75.6, housenum 46.0) but 0.3 times a task vector does almost nothing
    even on its own task (gratings 13.6 -> 15.2, housenum 10.2 -> 10.6), so no merge can work. Starting the
    scales at 1 (and fine-tuning at 1e-3): Pretrained 29.5, Individual 57.7, Weight Averaging 31.3, Task
    Arithmetic (0.3) 33.5, and random perturbations with the task vectors' per-tensor norms leave Pretrained
    where it is (29.0 for 0.3 x the sum of eight, 29.7 for one).
"""
from __future__ import annotations

from typing import Any, Mapping

import torch.nn.functional as F
from torch import Tensor, nn

from backbones._image import ImageBackbone, ImageOps, Recipe
from benchmark.contract import StateDict
from benchmark.registry import BACKBONES

__all__ = ["ConvNeXt", "ConvNeXtEncoder", "ConvNeXtOps", "CONFIGS", "RECIPES", "IMAGENET_MEAN", "IMAGENET_STD",
           "build_convnext_encoder"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# transformers ConvNextConfig fields per generated profile, plus ``image_size`` (the suite's) and ``embed_dim``
# (the projection's width; 0 = no projection)
CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": dict(image_size=32, patch_size=4, hidden_sizes=[32, 64, 128], depths=[1, 1, 2], embed_dim=128,
                 layer_scale_init_value=1.0),
    "micro": dict(image_size=16, patch_size=4, hidden_sizes=[8, 16], depths=[1, 1], embed_dim=16,
                  layer_scale_init_value=1.0),
}

RECIPES: dict[str, Recipe] = {
    "tiny": Recipe(pretrain_steps=400, pretrain_batch=256, pretrain_lr=2e-3,
                   finetune_steps=200, finetune_batch=64, finetune_lr=1e-3, finetune_wd=0.0,
                   head_shots=16, logit_scale=30.0, distill_images=4000, distill_batch=64, distill_weight=10.0),
    "micro": Recipe(pretrain_steps=8, pretrain_batch=32, pretrain_lr=1e-3,
                    finetune_steps=4, finetune_batch=16, finetune_lr=1e-3, finetune_wd=0.0,
                    head_shots=2, logit_scale=30.0, distill_images=64, distill_batch=16, distill_weight=10.0),
}


class ConvNeXtEncoder(nn.Module):
    """``pixel_values [B, 3, H, W] -> [B, e]``: ``ConvNextModel``'s ``pooler_output`` (global average pool + final
    LayerNorm), then ``projection`` when there is one. Parameter names: ``convnext.*``, ``projection.*``."""

    def __init__(self, convnext: nn.Module, projection: nn.Module | None = None):
        super().__init__()
        self.convnext = convnext
        self.projection = projection if projection is not None else nn.Identity()

    def forward(self, pixel_values: Tensor) -> Tensor:
        out = self.convnext(pixel_values=pixel_values)
        pooled = out.pooler_output if hasattr(out, "pooler_output") else out[1]
        return self.projection(pooled)


def build_convnext_encoder(config: Mapping[str, Any]) -> ConvNeXtEncoder:
    """A randomly initialized :class:`ConvNeXtEncoder` from a :data:`CONFIGS` entry."""
    from transformers import ConvNextConfig, ConvNextModel

    cfg = {k: v for k, v in config.items() if k not in ("embed_dim",)}
    hidden = list(cfg.pop("hidden_sizes"))
    cfg = ConvNextConfig(num_channels=3, num_stages=len(hidden), hidden_sizes=hidden, drop_path_rate=0.0, **cfg)
    model = ConvNextModel(cfg)
    e = int(config.get("embed_dim") or 0)
    return ConvNeXtEncoder(model, nn.Linear(hidden[-1], e, bias=False) if e else None)


class ConvNeXtOps(ImageOps):
    """:class:`backbones._image.ImageOps` with ConvNeXt's evaluation preprocessing (resize to ``resize_size``,
    centre crop ``image_size``) for images that are not already at the encoder's size, and linear heads with a
    bias (the paper checkpoints' classifiers) where the adapter has them."""

    def _pixels(self, inputs: Any) -> Any:
        bb = self.bb
        if bb.resize_size in (None, bb.image_size):
            return inputs
        if isinstance(inputs, Tensor) and (inputs.dtype.is_floating_point or tuple(inputs.shape[-2:]) == (bb.image_size,) * 2):
            return inputs  # already-normalized pixels, or images at the encoder's size
        from tasks.vision_paper import to_pixel_values

        x = to_pixel_values(inputs, bb.resize_size, bb.mean, bb.std, device=bb.device)
        top = (x.shape[-2] - bb.image_size) // 2
        left = (x.shape[-1] - bb.image_size) // 2
        return x[..., top : top + bb.image_size, left : left + bb.image_size].contiguous()

    def _embed(self, weights: Mapping[str, Tensor] | None, inputs: Any) -> Tensor:
        return super()._embed(weights, self._pixels(inputs))

    def logits(self, task: str, weights: StateDict | None, inputs: Any) -> Tensor:
        bias = self.bb.head_bias.get(task)
        if bias is None:
            return super().logits(task, weights, inputs)
        emb = self._embed(weights, inputs)
        return F.linear(emb, self.bb.head(task).to(emb), bias.to(emb))


@BACKBONES.register(
    "convnext",
    summary="ConvNeXt image encoder (transformers ConvNextModel), per-task heads; paper: convnext-base-224 + "
            "FusionBench classifiers; tiny: in-house 32px ConvNeXt (3 stages, patch 4) with prototype heads",
    paper="Liu et al. 2022 (ConvNeXt); fine-tuned checkpoints of FusionBench (tanganke/convnext-base-224_*)",
    suites=("vision8",),
    task_kind="classification",
    default_suite="vision8",
)
class ConvNeXt(ImageBackbone):
    """See the module docstring."""

    model = "convnext"
    preload_modules = ("transformers.models.convnext.modeling_convnext",)
    ops_class = ConvNeXtOps
    pixel_mean = IMAGENET_MEAN
    pixel_std = IMAGENET_STD
    configs = CONFIGS
    recipes = RECIPES

    def __init__(self, profile: str, suite: Any, seed: int = 0, cache: Any = None, progress: bool = True):
        super().__init__(profile, suite, seed, cache, progress)
        self.head_bias: dict[str, Tensor] = {}  # paper: the classifiers' biases; tiny: none (prototype heads)
        self.resize_size: int | None = None  # paper: ConvNeXt resizes to image_size / crop_pct before the crop

    def new_encoder(self, init: bool = False) -> nn.Module:
        return build_convnext_encoder(self.config)  # transformers' own ConvNeXt init (trunc. normal, std 0.02)

    def model_parts(self) -> tuple:
        return (ConvNeXtEncoder, build_convnext_encoder)

    def _prepare_paper(self) -> None:
        from backbones._convnext_paper import load_convnext_paper

        num_classes = {t: len(self.suite.classnames(t)) for t in self.tasks}
        paper = load_convnext_paper(self.tasks, num_classes, cache=self._cache())
        self.encoder = paper.encoder
        self.image_size, self.resize_size = int(paper.image_size), int(paper.resize_size)
        self.mean, self.std = tuple(paper.mean), tuple(paper.std)
        self.mergeable_names = [n for n, _ in self.encoder.named_parameters()]
        self._pretrained = {k: paper.pretrained[k].float() for k in self.mergeable_names}
        self._finetuned = {t: self.streamed(paper.finetuned[t]) for t in self.tasks}
        self.heads = {t: paper.heads[t][0].detach().float().to(self.device) for t in self.tasks}
        self.head_bias = {t: paper.heads[t][1].detach().float().to(self.device) for t in self.tasks}
        self._checkpoints = dict(paper.checkpoints)
