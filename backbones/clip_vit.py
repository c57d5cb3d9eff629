"""CLIP ViT-B/32 and ViT-L/14 image encoders on the ``vision8`` suite (``clip_vit_b32``, ``clip_vit_l14``).

One code path for every profile
-------------------------------
The adapter holds one ``encoder`` module mapping normalized ``pixel_values [B, 3, H, W]`` to image embeddings
``[B, e]`` (transformers' CLIP vision tower followed by ``visual_projection``, i.e. ``CLIPModel.get_image_features``)
and one frozen head per task, ``[C, e]``. Logits are ``normalize(encoder(x)) @ head.T``; a head's rows are
L2-normalized class embeddings times a logit scale, exactly as CLIP's zero-shot heads are. The *mergeable* tensors
are the encoder's parameters (names from ``encoder.named_parameters()``, e.g.
``vision_model.encoder.layers.0.self_attn.q_proj.weight``); heads are per task and never merged. Every forward runs
``torch.func.functional_call(encoder, weights, x)``, so it is differentiable with respect to ``weights``.

paper
    :func:`backbones._clip_paper.load_clip_paper` loads ``openai/clip-vit-{base-patch32,large-patch14}`` and the 8
    ``tanganke/clip-vit-*_<task>`` fine-tuned vision towers, with zero-shot heads built from the text tower. Encoder
    parameters it reports as ``frozen`` (the visual projection, which those checkpoints never fine-tune) are kept in
    the module but are not mergeable.

tiny / micro (in-house, cached)
    The same transformers classes (``CLIPVisionConfig`` / ``CLIPVisionModelWithProjection``) at small configs
    (:data:`CONFIGS`): ViT-"B/32" sees a 32x32 image as a 4x4 grid of 8-pixel patches (ViT-B/32 sees 7x7 at 224
    px), ViT-"L/14" is 1.5x deeper and 1.25x wider (6 layers of width 160 against 4 of width 128; the paper models
    have 24 x 1024 against 12 x 768) on the same 8-pixel patches. A 4-pixel patch (8x8 grid, closer to L/14's
    16x16) cost 3.7x B/32's training step, 6 x 160 at patch 8 costs 1.9x, which keeps the whole tiny L/14 sweep
    near an hour on 2 cores. Three cached stages:

    1. **pretraining**, label-free: SimCLR-style contrastive learning (InfoNCE over two augmented views,
       :func:`augment`, temperature ``pretrain_temperature``) directly on the normalized embedding, over the
       *unlabeled* union of the tasks' train images. Like CLIP's web-scale pretraining, the model has seen images of
       every domain (digits, signs, textures, ...) but never the tasks' labels, so its features are generic and
       its zero-shot heads are weak (Pretrained 27.0% on seed 0).
    2. **frozen heads** -- the analogue of CLIP's text-tower zero-shot heads: for each task, each class's prototype
       is the normalized mean of the pretrained model's normalized embeddings of ``head_shots`` labeled train
       images of that class (seeded); the head is the stack of prototypes times ``logit_scale``. The pretrained
       model with these heads is the "Pretrained" (zero-shot) row.
    3. **fine-tuning** of the whole encoder on each task's train split with that task's head frozen (AdamW, cosine
       schedule, cross-entropy), as FusionBench / task_vectors fine-tune CLIP against frozen zero-shot heads, plus
       an *embedding-preservation* term: ``distill_weight`` times the mean cosine distance between the encoder's
       and the pretrained encoder's embeddings of generic images (:func:`generic_mixture`, never a task's).

       Why the term: at this scale plain fine-tuning does not give task vectors that add up. We measured
       (seed 0, ``benchmarks/tiny_suite_check.py``): without it, Task Arithmetic (lambda=0.3) fell *below*
       Pretrained (17.6 vs 27.5) although the task vectors were nearly orthogonal (pairwise cosine <= 0.17) and
       random perturbations of the same per-tensor norms left Pretrained untouched; each fine-tuning moved every
       input's embedding (a model fine-tuned on one task collapsed the others' embeddings to mean cosine 0.7-0.97),
       and the sum of eight such moves collapsed all of them. Large pretrained models do not do this: their task
       vectors are *weight-disentangled* (Ortiz-Jimenez et al. 2023, "Task arithmetic in the tangent space",
       Eq. 4: adding tau_t changes the function on task t's inputs only). The term asks exactly that of each
       fine-tuning on inputs outside every task, so the tiny suite reproduces the regime the papers merge in,
       instead of a scale artefact. ``distill_weight=0`` restores plain fine-tuning.

    Each stage is cached content-addressed (config, recipe, seed, the source of this module and of the generators
    it uses, and the suite's data key) under :class:`benchmark.cache.Cache` as safetensors files;
    :meth:`ClipViT.checkpoints` maps each file's name to its sha256. Training is deterministic under the seed
    (seeded init and data order, ``torch.use_deterministic_algorithms``) on a given machine and torch build.

ModelOps: inputs are ``uint8 [N, 3, H, W]`` tensors (tiny) or lazily decoded image lists (paper); the ops preprocess
them to the encoder's normalized input. ``features`` (f_ex) is the encoder output, which the heads consume;
``linear_inputs`` hooks every ``nn.Linear`` whose weight is mergeable (q/k/v/out projections, MLP fc1/fc2 and the
visual projection).
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor, nn

from backbones._base import DEVICE_ENV_VAR  # noqa: F401  (re-exported)
from backbones._image import ImageBackbone, ImageOps, Recipe, generic_mixture, to_pixels  # noqa: F401  (re-exported)
from benchmark.contract import StateDict
from benchmark.errors import UserError
from benchmark.registry import BACKBONES

__all__ = ["ClipViT", "ClipOps", "CONFIGS", "RECIPES", "ImageEncoder", "generic_mixture", "OPENAI_MEAN", "OPENAI_STD"]

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

# transformers CLIPVisionConfig fields, per backbone and generated profile
CONFIGS: dict[str, dict[str, dict[str, int]]] = {
    "clip_vit_b32": {
        "tiny": dict(image_size=32, patch_size=8, hidden_size=128, intermediate_size=512, num_hidden_layers=4,
                     num_attention_heads=4, projection_dim=128),
        "micro": dict(image_size=16, patch_size=8, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, projection_dim=16),
    },
    "clip_vit_l14": {
        "tiny": dict(image_size=32, patch_size=8, hidden_size=160, intermediate_size=640, num_hidden_layers=6,
                     num_attention_heads=5, projection_dim=160),
        "micro": dict(image_size=16, patch_size=4, hidden_size=24, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=2, projection_dim=16),
    },
}


RECIPES: dict[str, Recipe] = {
    "tiny": Recipe(pretrain_steps=600, pretrain_batch=256, pretrain_lr=1e-3,
                   finetune_steps=200, finetune_batch=64, finetune_lr=1e-3, finetune_wd=0.0,
                   head_shots=16, logit_scale=30.0, distill_images=4000, distill_batch=64, distill_weight=10.0),
    "micro": Recipe(pretrain_steps=8, pretrain_batch=32, pretrain_lr=1e-3,
                    finetune_steps=4, finetune_batch=16, finetune_lr=1e-3, finetune_wd=0.0,
                    head_shots=2, logit_scale=30.0, distill_images=64, distill_batch=16, distill_weight=10.0),
}

PAPER_MODEL = {"clip_vit_b32": "openai/clip-vit-base-patch32", "clip_vit_l14": "openai/clip-vit-large-patch14"}


# ----------------------------------------------------------------------------------------------------------------
# The encoder


class ImageEncoder(nn.Module):
    """transformers CLIP vision tower + visual projection: ``pixel_values [B, 3, H, W] -> [B, e]`` (the same as
    ``CLIPModel.get_image_features``). Parameter names: ``vision_model.*``, ``visual_projection.*``."""

    def __init__(self, vision_model: nn.Module, visual_projection: nn.Module):
        super().__init__()
        self.vision_model = vision_model
        self.visual_projection = visual_projection

    def forward(self, pixel_values: Tensor) -> Tensor:
        out = self.vision_model(pixel_values=pixel_values)
        pooled = out.pooler_output if hasattr(out, "pooler_output") else out[1]
        return self.visual_projection(pooled)


class EarlyTower(nn.Module):
    """The first ``depth`` blocks of a transformers CLIP vision tower, pooled as the tower pools its last block
    (class token, ``post_layernorm``). It holds the tower's own submodules under their names, so the tower's
    parameter names (without ``vision_model.``) address it in ``functional_call``."""

    def __init__(self, vision_model: nn.Module, depth: int):
        super().__init__()
        self.embeddings = vision_model.embeddings
        self.pre_layrnorm = vision_model.pre_layrnorm
        self.encoder = nn.Module()
        self.encoder.layers = nn.ModuleList(list(vision_model.encoder.layers)[:depth])
        self.post_layernorm = vision_model.post_layernorm

    def forward(self, pixel_values: Tensor) -> Tensor:
        h = self.pre_layrnorm(self.embeddings(pixel_values))
        for layer in self.encoder.layers:
            h = layer(h, None)
        return self.post_layernorm(h[:, 0])


def build_encoder(config: Mapping[str, int]) -> ImageEncoder:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    cfg = CLIPVisionConfig(**config)
    cfg._attn_implementation = "sdpa"
    model = CLIPVisionModelWithProjection(cfg)
    return ImageEncoder(model.vision_model, model.visual_projection)


def sincos_position_init(encoder: ImageEncoder) -> None:
    """Initialize the (learnable) patch position embeddings with 2-D sine-cosine embeddings (as MAE does) and the
    class token's with zeros: a ViT trained from scratch on little data then sees positions from the first step."""
    emb = encoder.vision_model.embeddings
    d = emb.position_embedding.weight.shape[1]
    side = int(round((emb.position_embedding.weight.shape[0] - 1) ** 0.5))
    yy, xx = torch.meshgrid(torch.arange(side).float(), torch.arange(side).float(), indexing="ij")
    omega = 1.0 / (100 ** (torch.arange(d // 4).float() / max(1, d // 4)))
    pe = torch.cat([torch.sin(xx.flatten()[:, None] * omega), torch.cos(xx.flatten()[:, None] * omega),
                    torch.sin(yy.flatten()[:, None] * omega), torch.cos(yy.flatten()[:, None] * omega)], 1)
    with torch.no_grad():
        emb.position_embedding.weight.zero_()
        emb.position_embedding.weight[1:, : pe.shape[1]] = pe


# ----------------------------------------------------------------------------------------------------------------
# ModelOps


class ClipOps(ImageOps):
    """:class:`~backbones._image.ImageOps` plus routing on an early layer of the CLIP vision tower."""

    def early_features(self, weights: StateDict | None, inputs: Any, depth: int) -> Tensor:
        """The features after the first ``depth`` transformer blocks ``[B, hidden]``: the class token through the
        tower's final LayerNorm (``post_layernorm``), as the full tower pools it, without the projection. For
        routing on an early layer (beyond the paper): on the tiny ViT-B/32 suite's KNN routing this pooling kept
        more routing accuracy at every depth than the raw class token or the mean token."""
        enc = getattr(self.bb, "encoder", None)
        vm = getattr(enc, "vision_model", None)
        layers = getattr(getattr(vm, "encoder", None), "layers", None)
        if layers is None:
            raise UserError(f"route_depth: early_features needs a transformers CLIP vision tower, which "
                            f"{type(self.bb).__name__} does not have")
        if not 1 <= depth <= len(layers):
            raise UserError(f"route_depth {depth}: early_features takes a depth in 1..{len(layers)} "
                            "(the tower's blocks)")
        x = to_pixels(inputs, self.bb.image_size, self.bb.mean, self.bb.std, self.bb.device)
        early = EarlyTower(vm, depth)
        w = self._weights(weights)
        if w is None:
            return early(x)
        sub = {k[len("vision_model."):]: v for k, v in w.items() if k.startswith("vision_model.")}
        return torch.func.functional_call(early, sub, (x,), strict=False)


# ----------------------------------------------------------------------------------------------------------------
# The adapter


class ClipViT(ImageBackbone):
    """See the module docstring. ``model`` is set by the registered subclasses; the tiny build is
    :class:`~backbones._image.ImageBackbone`'s."""

    model: str = ""
    ops_class = ClipOps
    pixel_mean: tuple = OPENAI_MEAN
    pixel_std: tuple = OPENAI_STD
    recipes = RECIPES

    @property
    def configs(self) -> dict[str, dict[str, Any]]:
        """Model config per generated profile."""
        return CONFIGS[self.model]

    def new_encoder(self, init: bool = False) -> nn.Module:
        """A fresh encoder at this profile's config; ``init=True`` for the one pretraining starts from."""
        enc = build_encoder(self.config)
        if init:
            sincos_position_init(enc)
        return enc

    def model_parts(self) -> tuple:
        """The functions :meth:`new_encoder` runs (their source is part of every cached stage's key)."""
        return (ImageEncoder, build_encoder, sincos_position_init)

    # -- paper profile
    def _prepare_paper(self) -> None:
        from backbones._clip_paper import load_clip_paper

        classnames = {t: self.suite.classnames(t) for t in self.tasks}
        paper = load_clip_paper(self.model, self.tasks, classnames, cache=self._cache())
        self.encoder = paper.encoder
        self.image_size, self.mean, self.std = int(paper.image_size), tuple(paper.mean), tuple(paper.std)
        frozen = set(getattr(paper, "frozen", ()) or ())
        self.mergeable_names = [n for n, _ in self.encoder.named_parameters() if n not in frozen]
        self._pretrained = {k: paper.pretrained[k].float() for k in self.mergeable_names}
        self._finetuned = {t: self.streamed(paper.finetuned[t]) for t in self.tasks}
        self.heads = {t: paper.heads[t].detach().float().to(self.device) for t in self.tasks}
        self._checkpoints = dict(paper.checkpoints)


@BACKBONES.register(
    "clip_vit_b32",
    summary="CLIP ViT-B/32 image encoder (transformers), frozen zero-shot heads; tiny: in-house 32px ViT, patch 8",
    paper="Radford et al. 2021 (CLIP); fine-tuned checkpoints of Ilharco et al. 2023 / FusionBench (tanganke/*)",
    suites=("vision8",),
    task_kind="classification",
    default_suite="vision8",
)
class ClipViTB32(ClipViT):
    model = "clip_vit_b32"
    preload_modules = ("transformers.models.clip.modeling_clip",)


@BACKBONES.register(
    "clip_vit_l14",
    summary="CLIP ViT-L/14 image encoder (transformers), frozen zero-shot heads; tiny: in-house 32px ViT, 6 x 160, patch 8",
    paper="Radford et al. 2021 (CLIP); fine-tuned checkpoints of Ilharco et al. 2023 / FusionBench (tanganke/*)",
    suites=("vision8",),
    task_kind="classification",
    default_suite="vision8",
)
class ClipViTL14(ClipViT):
    model = "clip_vit_l14"
    preload_modules = ("transformers.models.clip.modeling_clip",)
