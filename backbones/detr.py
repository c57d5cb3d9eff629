"""DETR-ResNet50 (``detr_r50``) on the ``rf100_7`` detection suite: the main job of the papers' detection table
(auto-flexswitch.txt Sec. IV-A2, Table VII).

One code path for every profile
-------------------------------
The adapter holds one :class:`Detector` module: transformers' ``DetrForObjectDetection`` without its class head --
the ResNet backbone, input projection, transformer encoder and decoder (``model.*``, the names of the HF checkpoint)
and the class-agnostic box MLP (``bbox_predictor.*``). ``Detector(pixel_values, pixel_mask)`` returns the decoder's
query outputs ``[B, Q, d]`` and the boxes ``sigmoid(bbox_predictor(.))`` ``[B, Q, 4]`` (normalized cx, cy, w, h),
exactly as ``DetrForObjectDetection.forward`` computes them. Every forward runs
``torch.func.functional_call(detector, weights, ...)``, so it is differentiable with respect to ``weights``.

What is merged, and what is per domain
    * **Class heads** (``class_labels_classifier``, ``Linear(d, C_k + 1)``: the domain's classes plus DETR's
      "no object") are per domain and never merged: the domains' label spaces differ (the RF100 domains have
      different class sets and counts), as the CLIP heads of the classification suite do.
    * **The box head is merged.** DETR's ``bbox_predictor`` is class-agnostic and has the same shape in every
      fine-tuned model; the paper (Sec. IV-A2 b) fine-tunes the whole detector per domain and merges "the model"
      (its Table VII storage figures cover the transformer and the heads' shared part; only the classification
      branch's size depends on the domain), and its Auto-FlexSwitch uses an MSE preservation loss "to ensure
      alignment of both the classification and regression branches", i.e. the regression branch is part of what
      the switches change. So the mergeable tensors are every parameter of :class:`Detector` -- backbone,
      projection, encoder, decoder, query embeddings, box MLP -- and the class heads stay with the adapter.
      (The ResNet's frozen batch-norm statistics are buffers, not parameters, and are kept from the pretrained
      model.)

ModelOps (:class:`DetrOps`)
    * ``logits(task, w, x)``: the domain head on the query outputs, ``[B, Q, C_k + 1]`` (last class = no object);
      what AdaMerging's entropy, Fisher merging and FlexSwitch's KL/MSE read, over the last dimension.
    * ``features(w, x)``: f_ex = the decoder's query outputs ``[B, Q, d]``; Auto-Switch / Auto-FlexSwitch route
      every query and take the majority vote per image themselves (the paper's "majority voting"), Twin-Merging
      averages over queries.
    * ``predict(task, w, x)``: DETR's post-processing per image: softmax over ``C_k + 1``, each query's best real
      class and its probability as the score, boxes in xyxy pixels of the original image; all Q queries are kept
      (COCOeval ranks them; Q <= 100). This is what the suite's mAP@50 consumes.
    * ``linear_inputs``: every ``nn.Linear`` of the detector (attention projections, MLPs, box MLP) -- RegMean.

paper
    :func:`backbones._detr_paper.load_detr_paper`: ``facebook/detr-resnet-50`` and one fine-tuned DETR per RF100
    domain from local ``save_pretrained`` directories (no public per-domain checkpoints exist; ``python -m
    benchmark finetune`` or any DETR fine-tuning script produces them). See that module.

tiny / micro (in-house, cached)
    The same classes (``DetrConfig`` with a transformers ``ResNetConfig`` backbone, ``use_timm_backbone=False``)
    at small configs (:data:`CONFIGS`): two basic-block ResNet stages (stride 4 stem, stride 1 then 2), so the last
    stage -- the one DETR reads -- has stride 8 and a 64 px image gives an 8x8 token grid; two encoder and two
    decoder layers, d = 64, 16 queries (the densest domain has 10 objects). Four departures from the paper model,
    all for training from scratch in CPU-minutes:

    * *CoordConv input*: the pixel values get two extra channels, the pixel-centre x and y in [-1, 1] (Liu et al.
      2018), so the encoder's values carry absolute position (DETR's sine embeddings enter queries and keys only);
    * *DETR's own initialization* (xavier for the transformer, N(0, 1) query embeddings, Kaiming for the ResNet):
      transformers' N(0, 0.02) init, meant for loading checkpoints, leaves all queries identical at the start;
    * *anchor-prior matching* (:class:`AnchorMatcher`): the Hungarian cost gets a term pulling query j towards the
      objects near cell j of a 4x4 grid, which removes DETR's unstable early matching;
    * *content queries* (config ``query_content``; in the forward pass): the learned query embeddings also *start*
      the decoder's residual stream (``decoder_inputs_embeds``), where DETR starts it from zeros and adds them to
      the attention queries and keys only. In DETR a query's identity reaches its output only through its
      attention pattern; at random init the cross-attention is nearly uniform, so every query's output is the same
      (measured: std over queries 0.019) and the box head learns one box for all. DETR needs hundreds of epochs to
      break that symmetry; with content queries (as Conditional / DAB-DETR give theirs) the tiny model learns
      query-wise boxes within ~150 steps. The paper profile runs DETR's own forward.

    1. **pretraining** (the analogue of DETR's COCO pretraining) with DETR's own Hungarian loss
       (``ForObjectDetectionLoss``: CE + L1 + GIoU) on a *generic detection mixture* (:func:`generic_scenes`):
       seven generic shapes in random colours, sizes and densities on flat / gradient / noise backgrounds --
       no domain's objects or backgrounds. The ResNet's convolutions start from Kaiming init (DETR's own init
       assumes an ImageNet backbone) and are trained too.
    2. **class heads** fitted on the *frozen* pretrained detector: for each domain a linear head on the query
       outputs, trained with the same Hungarian loss on the domain's train split (only the head moves). The
       pretrained detector with these heads is the "Pretrained" row, so it measures how far generic detection
       features go, as the paper's pretrained DETR row does.
    3. **fine-tuning** of the whole detector per domain with that head frozen (AdamW, cosine schedule, gradient
       clipping 0.1 as DETR), plus an *output-preservation* term (the lesson of ``backbones.clip_vit``): on generic
       scenes, ``distill_weight`` times the mean cosine distance between the detector's query outputs and the
       pretrained detector's, plus the L1 distance of their boxes. Without it, tiny models fine-tuned per task give
       task vectors whose sum destroys every task (see clip_vit's docstring); the term asks each fine-tuning to
       leave inputs outside its domain alone, as large pretrained models' task vectors do.

    **Status (measured, seed 0, tiny, ``benchmarks/tiny_suite_check.py --backbone detr_r50``):** mAP@50 AVG over
    the 7 domains: Pretrained 2.85, Individual 21.46, Task Arithmetic (0.3) 3.72, Weight Averaging 3.59. The suite
    tests merging (Individual +18.6 over Pretrained, naive averaging 17.9 below Individual) but the static merges
    sit close to Pretrained: the pretrained detector localizes generic objects (box L1 0.15, GIoU loss 0.44 after
    1500 steps) but its query features barely classify (the pretraining CE stays near the no-object prior), so a
    domain's head fit on them scores little and most of Individual's gain is the fine-tuning's own. What got it
    there from the earlier recipe (Individual 4.00 at lr 2e-4 x 150 fine-tuning steps): content queries, and
    fine-tuning at lr 1e-3 for 400 steps (forms 11.9 -> 36.6, rooftops 1.2 -> 11.7). Tried and not kept: a 5x
    class-loss weight, no gradient clipping, anchor-initialized query embeddings with identity q/k projections in
    the cross-attention -- none moved the pretraining CE off the prior within 1000 steps.

    Every stage is cached content-addressed under :class:`benchmark.cache.Cache` (config, recipe, seed, the
    source of the code that shapes the stage, the suite's data key); :meth:`Detr.checkpoints` maps file names to
    sha256. Training is seeded and deterministic on a given machine and torch build.

Box conventions: targets and predictions are xyxy pixels (:mod:`tasks.rf100`); DETR's loss and outputs use
normalized cxcywh, converted here.
"""
from __future__ import annotations

import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from backbones._base import BaseOps, PreparedBackbone
from backbones._tiny import EpochSampler, TinyBuild, cosine_lr, deterministic, fit, stable_hash
from benchmark.cache import code_version
from benchmark.contract import StateDict
from benchmark.errors import UserError
from benchmark.registry import BACKBONES
from tasks import scenes
from tasks import drawing

__all__ = ["Detr", "DetrOps", "Detector", "CONFIGS", "RECIPES", "build_detector", "generic_scenes",
           "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
GENERIC_CLASSES = ("circle", "square", "diamond", "triangle", "ring", "cross", "octagon")

CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": dict(image_size=64, embedding_size=16, hidden_sizes=(32, 64), depths=(1, 1), d_model=64,
                 encoder_layers=2, decoder_layers=2, ffn_dim=128, heads=4, num_queries=16, coord_channels=True,
                 query_content=True),
    "micro": dict(image_size=32, embedding_size=8, hidden_sizes=(8, 16), depths=(1, 1), d_model=16,
                  encoder_layers=1, decoder_layers=1, ffn_dim=32, heads=2, num_queries=12, coord_channels=True,
                  query_content=True),
}


@dataclass(frozen=True)
class Recipe:
    pretrain_steps: int
    pretrain_batch: int
    pretrain_lr: float
    pretrain_images: int  # generic scenes generated for pretraining
    head_steps: int
    head_batch: int
    head_lr: float
    finetune_steps: int
    finetune_batch: int
    finetune_lr: float
    distill_images: int  # generic scenes the fine-tuning keeps the pretrained outputs on
    distill_batch: int
    distill_weight: float  # 0: plain fine-tuning
    weight_decay: float = 1e-4
    grad_clip: float = 0.1
    warmup: float = 0.05
    anchor_cost: float = 10.0  # the matching's anchor prior (AnchorMatcher); 0 = DETR's plain matching


RECIPES: dict[str, Recipe] = {
    "tiny": Recipe(pretrain_steps=1500, pretrain_batch=32, pretrain_lr=1e-3, pretrain_images=6000,
                   head_steps=200, head_batch=128, head_lr=1e-2,
                   finetune_steps=400, finetune_batch=32, finetune_lr=1e-3,
                   distill_images=1000, distill_batch=32, distill_weight=1.0),
    "micro": Recipe(pretrain_steps=6, pretrain_batch=8, pretrain_lr=5e-4, pretrain_images=32,
                    head_steps=4, head_batch=8, head_lr=1e-2,
                    finetune_steps=3, finetune_batch=8, finetune_lr=2e-4,
                    distill_images=16, distill_batch=8, distill_weight=1.0),
}


# ----------------------------------------------------------------------------------------------------------------
# The detector


class Detector(nn.Module):
    """``DetrForObjectDetection`` minus its class head: ``(pixel_values, pixel_mask) -> (query outputs [B, Q, d],
    boxes [B, Q, 4] normalized cxcywh)``. Parameter names are the HF checkpoint's (``model.*``,
    ``bbox_predictor.*``)."""

    def __init__(self, model: nn.Module, bbox_predictor: nn.Module, query_content: bool = False):
        super().__init__()
        self.model = model
        self.bbox_predictor = bbox_predictor
        self.query_content = query_content

    def forward(self, pixel_values: Tensor, pixel_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        queries = None
        if self.query_content:  # tiny profile: the query embeddings also start the decoder's residual stream
            q = self.model.query_position_embeddings.weight
            queries = q[None].expand(pixel_values.shape[0], -1, -1)
        hidden = self.model(pixel_values=pixel_values, pixel_mask=pixel_mask,
                            decoder_inputs_embeds=queries).last_hidden_state
        return hidden, self.bbox_predictor(hidden).sigmoid()


def detr_config(cfg: Mapping[str, Any], num_labels: int) -> Any:
    from transformers import DetrConfig, ResNetConfig

    depths = list(cfg["depths"])
    backbone = ResNetConfig(num_channels=3 + 2 * bool(cfg.get("coord_channels")), embedding_size=cfg["embedding_size"], hidden_sizes=list(cfg["hidden_sizes"]),
                            depths=depths, layer_type="basic", downsample_in_first_stage=False,
                            out_features=[f"stage{len(depths)}"])
    return DetrConfig(backbone_config=backbone, use_timm_backbone=False, use_pretrained_backbone=False,
                      d_model=cfg["d_model"], encoder_layers=cfg["encoder_layers"],
                      decoder_layers=cfg["decoder_layers"], encoder_ffn_dim=cfg["ffn_dim"],
                      decoder_ffn_dim=cfg["ffn_dim"], encoder_attention_heads=cfg["heads"],
                      decoder_attention_heads=cfg["heads"], num_queries=cfg["num_queries"], num_labels=num_labels,
                      dropout=0.0, auxiliary_loss=False)


def build_detector(cfg: Mapping[str, Any], num_labels: int = len(GENERIC_CLASSES), init: bool = False
                   ) -> tuple[Detector, nn.Linear, Any]:
    """A tiny/micro DETR: the detector, the (pretraining) class head and the ``DetrConfig``. ``init=True``
    re-initializes the ResNet's convolutions with Kaiming init (the backbone is trained from scratch)."""
    from transformers import DetrForObjectDetection

    config = detr_config(cfg, num_labels)
    full = DetrForObjectDetection(config)
    det = Detector(full.model, full.bbox_predictor, bool(cfg.get("query_content")))
    if init:  # from scratch: the original DETR's initialization (transformers' N(0, 0.02) suits loading only)
        for m in det.model.backbone.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        for part in (det.model.encoder, det.model.decoder):  # DETR's Transformer._reset_parameters
            for p in part.parameters():
                if p.dim() > 1:
                    nn.init.xavier_uniform_(p)
        nn.init.normal_(det.model.query_position_embeddings.weight)  # DETR's nn.Embedding: N(0, 1)
        det.model.input_projection.reset_parameters()  # PyTorch's default Conv2d init, as DETR's input_proj
    for p in det.parameters():  # DETR freezes ResNet stem/stage 1 by name; here every parameter trains
        p.requires_grad_(True)
    return det, full.class_labels_classifier, config


def loss_config(config: Any, num_labels: int, anchor_cost: float = 0.0) -> SimpleNamespace:
    """What the DETR loss reads of a ``DetrConfig``, for a head with ``num_labels`` classes; ``anchor_cost`` > 0
    adds the anchor prior to the matching (:class:`AnchorMatcher`)."""
    keys = ("class_cost", "bbox_cost", "giou_cost", "eos_coefficient", "bbox_loss_coefficient",
            "giou_loss_coefficient", "decoder_layers")
    return SimpleNamespace(num_labels=num_labels, auxiliary_loss=False, anchor_cost=anchor_cost,
                           **{k: getattr(config, k) for k in keys})


def query_anchors(num_queries: int) -> Tensor:
    """Query j's anchor: the centre (cx, cy, normalized) of cell j of a ``ceil(sqrt(Q))``-wide grid, row-major."""
    side = int(math.ceil(math.sqrt(num_queries)))
    j = torch.arange(num_queries)
    return torch.stack([((j % side).float() + 0.5) / side, ((j // side).float() + 0.5) / side], 1)


class AnchorMatcher(nn.Module):
    """DETR's Hungarian matching (cost = class_cost * -p(class) + bbox_cost * L1 + giou_cost * -GIoU, Carion et
    al. 2020, Sec. 3.1) plus ``anchor_cost`` times the L1 distance between a ground-truth box's centre and the
    query's anchor (:func:`query_anchors`). The prior makes query j responsible for the objects around cell j, so the
    assignment is stable from the first step and a tiny DETR trained from scratch learns to localize in minutes
    instead of hundreds of epochs (the slow start of DETR is the unstable bipartite matching; anchor-based queries
    -- Anchor DETR, DAB-DETR -- remove it the same way). Only the training loss uses it; inference is plain DETR."""

    def __init__(self, lcfg: SimpleNamespace):
        super().__init__()
        self.lcfg = lcfg

    @torch.no_grad()
    def forward(self, outputs: dict[str, Tensor], targets: list[dict[str, Tensor]]) -> list[tuple[Tensor, Tensor]]:
        from scipy.optimize import linear_sum_assignment
        from transformers.loss.loss_for_object_detection import center_to_corners_format, generalized_box_iou

        c = self.lcfg
        logits, boxes = outputs["logits"], outputs["pred_boxes"]
        anchors = query_anchors(logits.shape[1]).to(boxes)
        out = []
        for i, t in enumerate(targets):
            tb, tl = t["boxes"].to(boxes), t["class_labels"]
            if len(tl) == 0:
                out.append((torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)))
                continue
            cost = (c.class_cost * -logits[i].softmax(-1)[:, tl] + c.bbox_cost * torch.cdist(boxes[i], tb, p=1)
                    - c.giou_cost * generalized_box_iou(center_to_corners_format(boxes[i]), center_to_corners_format(tb))
                    + c.anchor_cost * torch.cdist(anchors, tb[:, :2], p=1))
            cost = torch.nan_to_num(cost, nan=1e9, posinf=1e9, neginf=-1e9)
            r, k = linear_sum_assignment(cost.cpu().numpy())
            out.append((torch.as_tensor(r, dtype=torch.long), torch.as_tensor(k, dtype=torch.long)))
        return out


def detr_labels(targets: list[dict[str, Any]], size: tuple[int, int] | list[tuple[int, int]]) -> list[dict[str, Tensor]]:
    """Targets (xyxy pixels) -> DETR labels (``class_labels``, normalized cxcywh ``boxes``). ``size``: (h, w) of
    every image, or one per image."""
    out = []
    for i, t in enumerate(targets):
        h, w = size[i] if isinstance(size, list) else size
        b = torch.as_tensor(t["boxes"], dtype=torch.float32).reshape(-1, 4)
        cxcywh = torch.stack([(b[:, 0] + b[:, 2]) / 2 / w, (b[:, 1] + b[:, 3]) / 2 / h,
                              (b[:, 2] - b[:, 0]) / w, (b[:, 3] - b[:, 1]) / h], 1)
        out.append({"class_labels": torch.as_tensor(t["labels"]).long().reshape(-1), "boxes": cxcywh})
    return out


def detection_loss(logits: Tensor, boxes: Tensor, labels: list[dict[str, Tensor]], lcfg: SimpleNamespace) -> Tensor:
    """DETR's set loss (CE with the no-object weight + L1 + GIoU, transformers' ``ImageLoss``) under
    :class:`AnchorMatcher` (``lcfg.anchor_cost`` = 0: DETR's own matching)."""
    from transformers.loss.loss_for_object_detection import ImageLoss

    crit = ImageLoss(AnchorMatcher(lcfg), lcfg.num_labels, lcfg.eos_coefficient, ["labels", "boxes", "cardinality"])
    parts = crit({"logits": logits, "pred_boxes": boxes}, labels)
    return parts["loss_ce"] + lcfg.bbox_loss_coefficient * parts["loss_bbox"] + lcfg.giou_loss_coefficient * parts["loss_giou"]


# ----------------------------------------------------------------------------------------------------------------
# The generic detection mixture (pretraining and the preservation term; never any domain's objects)


def _bg_generic(g: torch.Generator, n: int, s: int) -> Tensor:
    yy, xx = drawing.grid(s)
    c1, c2 = drawing.rand_colour(g, n), drawing.rand_colour(g, n)
    kind = torch.randint(3, (n,), generator=g)
    ang = drawing.column(drawing.uniform(g, n, 0, 6.3))
    u, _ = drawing.rotate(xx, yy, ang)
    flat = drawing.flat(c1, s)
    grad = drawing.paint(flat, ((u + 1) / 2).clamp(0, 1).expand(n, s, s), c2)
    noise = (flat * (0.5 + drawing.smooth_noise(g, n, s, 4))).clamp(0, 1)
    return torch.stack([flat, grad, noise], 1)[torch.arange(n), kind]


def _draw_generic(g, cls, cx, cy, r, xx, yy, s):
    dx, dy = xx - cx, yy - cy
    ang = drawing.column(drawing.uniform(g, len(cls), 0, 6.3))
    colour = drawing.rand_colour(g, len(cls), s=(0.3, 1.0), v=(0.3, 1.0))

    def fn(c: int, sel: Tensor) -> tuple[Tensor, Tensor]:
        return drawing.soft(drawing.shape_sdf(GENERIC_CLASSES[c], dx[sel], dy[sel], r[sel], ang[sel]), s), colour[sel]

    return [scenes.by_class(cls, len(GENERIC_CLASSES), s, fn)]


GENERIC_DOMAINS = [
    scenes.Domain(GENERIC_CLASSES, grid, count, (0.5, 0.95), _bg_generic, _draw_generic, noise=0.03)
    for grid, count in ((1, (1, 1)), (2, (1, 4)), (3, (1, 6)), (4, (2, 10)))
]


def generic_scenes(g: torch.Generator, n: int, s: int) -> tuple[Tensor, list[dict[str, Any]]]:
    """``n`` generic scenes ``uint8 [n, 3, s, s]`` with targets (xyxy pixels): one to ten of seven generic shapes
    (:data:`GENERIC_CLASSES`), a quarter of the scenes at each density (1x1 to 4x4 placement grids)."""
    xs, targets = [], []
    for k, dom in enumerate(GENERIC_DOMAINS):
        m = n // len(GENERIC_DOMAINS) + (1 if k < n % len(GENERIC_DOMAINS) else 0)
        x, boxes, labels = scenes.render_scenes(g, m, s, dom)
        xs.append(x)
        targets += [{"boxes": b, "labels": lab} for b, lab in zip(boxes, labels)]
    x = torch.cat(xs)
    perm = torch.randperm(len(x), generator=g)
    return x[perm], [dict(targets[i], image_id=j) for j, i in enumerate(perm.tolist())]


# ----------------------------------------------------------------------------------------------------------------
# Preprocessing


def to_batch(inputs: Any, image_size: int | None, mean: tuple, std: tuple, device: torch.device,
             coords: bool = False) -> tuple[Tensor, Tensor | None, list[tuple[int, int]]]:
    """Inputs -> (normalized ``pixel_values [B, 3, H, W]``, ``pixel_mask [B, H, W]`` or None, original (h, w) per
    image).

    ``uint8 [N, 3, S, S]`` tensors (the generated suites) are scaled and normalized as they are. A list of
    ``uint8 [3, h, w]`` images of any sizes (the paper data) goes through DETR's preprocessing: resize so the
    shorter side is ``image_size`` (800 for DETR) and the longer at most 1333, normalize, pad to the batch's largest
    size with a pixel mask."""
    m = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    sd = torch.tensor(std, device=device).view(1, 3, 1, 1)
    if isinstance(inputs, Tensor) and inputs.ndim == 4:
        x = inputs.to(device).float() / 255.0 if inputs.dtype == torch.uint8 else inputs.to(device).float()
        x = (x - m) / sd
        if coords:  # CoordConv: pixel-centre x and y in [-1, 1] as two extra channels
            yy, xx = drawing.grid(x.shape[-1])
            x = torch.cat([x, xx.expand(len(x), 1, -1, -1).to(x), yy.expand(len(x), 1, -1, -1).to(x)], 1)
        return x, None, [tuple(x.shape[-2:])] * len(x)
    images = [inputs[i] for i in range(len(inputs))]
    target = image_size or 800
    sizes, resized = [], []
    for im in images:
        im = torch.as_tensor(im)
        if im.ndim == 2:
            im = im[None].expand(3, -1, -1)
        h, w = int(im.shape[-2]), int(im.shape[-1])
        sizes.append((h, w))
        scale = min(target / min(h, w), 1333 / max(h, w))
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        x = F.interpolate(im[None, :3].float().to(device) / 255.0, size=(nh, nw), mode="bilinear", align_corners=False)
        resized.append(((x - m) / sd)[0])
    hmax, wmax = max(r.shape[1] for r in resized), max(r.shape[2] for r in resized)
    pix = torch.zeros(len(resized), 3, hmax, wmax, device=device)
    mask = torch.zeros(len(resized), hmax, wmax, dtype=torch.long, device=device)
    for i, r in enumerate(resized):
        pix[i, :, : r.shape[1], : r.shape[2]] = r
        mask[i, : r.shape[1], : r.shape[2]] = 1
    return pix, mask, sizes


# ----------------------------------------------------------------------------------------------------------------
# ModelOps


class DetrOps(BaseOps):
    """Data-dependent access to the DETR adapter (:class:`benchmark.contract.ModelOps`). Data access
    (``exemplars``, ``test_inputs``, ``num_examples``, ``slice``) is :class:`backbones._base.BaseOps`'."""

    bb: "Detr"

    def _run(self, weights: Mapping[str, Tensor] | None, inputs: Any) -> tuple[Tensor, Tensor, list[tuple[int, int]]]:
        bb = self.bb
        pix, mask, sizes = to_batch(inputs, bb.image_size, bb.mean, bb.std, bb.device, bb.coords)
        w = self._weights(weights)
        if w is None:
            hidden, boxes = bb.detector(pix, mask)
        else:
            hidden, boxes = torch.func.functional_call(bb.detector, w, (pix, mask), strict=False)
        return hidden, boxes, sizes

    def _head(self, task: str, hidden: Tensor) -> Tensor:
        w, b = self.bb.head(task)
        return hidden @ w.to(hidden).T + b.to(hidden)

    def features(self, weights: StateDict | None, inputs: Any) -> Tensor:
        """f_ex: the decoder's query outputs ``[B, Q, d]``."""
        return self._run(weights, inputs)[0]

    def logits(self, task: str, weights: StateDict | None, inputs: Any) -> Tensor:
        """Per-query class logits ``[B, Q, C + 1]`` of ``task``'s head (the last column is "no object")."""
        return self._head(task, self._run(weights, inputs)[0])

    def outputs(self, task: str, weights: StateDict | None, inputs: Any) -> Tensor:
        """Class logits and boxes of every query, ``[B, Q, C + 1 + 4]``: both branches the detector predicts."""
        hidden, boxes, _ = self._run(weights, inputs)
        return torch.cat([self._head(task, hidden), boxes], -1)

    def boxes(self, weights: StateDict | None, inputs: Any) -> Tensor:
        """Per-query boxes ``[B, Q, 4]``, normalized cxcywh (DETR's ``pred_boxes``)."""
        return self._run(weights, inputs)[1]

    def predict(self, task: str, weights: StateDict | None, inputs: Any) -> list[dict[str, Tensor]]:
        """DETR's post-processing: per image ``{"boxes": [Q, 4] xyxy pixels, "scores": [Q], "labels": [Q]}``."""
        hidden, boxes, sizes = self._run(weights, inputs)
        prob = self._head(task, hidden).softmax(-1)[..., :-1]
        scores, labels = prob.max(-1)
        cx, cy, w, h = boxes.unbind(-1)
        xyxy = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)
        out = []
        for i, (ih, iw) in enumerate(sizes):
            scale = torch.tensor([iw, ih, iw, ih], dtype=xyxy.dtype, device=xyxy.device)
            out.append({"boxes": (xyxy[i] * scale).detach().cpu(), "scores": scores[i].detach().cpu(),
                        "labels": labels[i].detach().cpu()})
        return out

    def linear_inputs(self, weights: StateDict | None, inputs: Any) -> dict[str, Tensor]:
        """Inputs ``[N, d_in]`` of every ``nn.Linear`` whose weight is mergeable, keyed by the weight's name."""
        return self.capture_linear_inputs(self.bb.detector, lambda: self._run(weights, inputs))


# ----------------------------------------------------------------------------------------------------------------
# The adapter


def _version(stage: str = "all") -> str:
    """Source of what shapes a cached stage."""
    common = (Detector, detr_config, build_detector, loss_config, query_anchors, AnchorMatcher, detr_labels,
              detection_loss, to_batch, cosine_lr,
              deterministic, stable_hash, fit, TinyBuild, Detr.check_suite, Detr.load_pretrained,
              # the generic scenes are drawn with the scene and drawing primitives: their whole modules count
              scenes, drawing, _bg_generic, _draw_generic, generic_scenes,
              "GENERIC:" + repr(GENERIC_CLASSES) + repr([(d.grid, d.count, d.size) for d in GENERIC_DOMAINS]))
    if stage == "pretrain":
        return code_version(*common, Detr._build_pretrain)
    if stage == "heads":
        return code_version(*common, Detr._build_heads)
    if stage == "finetune":
        return code_version(*common, EpochSampler, Detr._build_finetune, Detr._distill_set)
    return code_version(sys.modules[__name__])


@BACKBONES.register(
    "detr_r50",
    summary="DETR-ResNet50 detector (transformers), per-domain class heads, merged box head; tiny: in-house 64px "
    "DETR with a 2-stage ResNet, 2+2 layers, 16 queries",
    paper="Carion et al. 2020 (DETR); auto-flexswitch.txt Sec. IV-A2 / Table VII (RF100, 7 domains)",
    suites=("rf100_7",),
    task_kind="detection",
    default_suite="rf100_7",
)
class Detr(TinyBuild, PreparedBackbone):
    """See the module docstring."""

    model = "detr_r50"
    preload_modules = ("transformers.models.detr.modeling_detr", "transformers.models.resnet.modeling_resnet",
                       "transformers.loss.loss_for_object_detection")
    module_attr = "detector"
    ops_class = DetrOps
    configs = CONFIGS
    recipes = RECIPES

    def __init__(self, profile: str, suite: Any, seed: int = 0, cache: Any = None, progress: bool = True):
        super().__init__(profile, suite, seed, cache, progress)
        self._distill: tuple[Tensor, Tensor, Tensor] | None = None
        self.detector: Detector
        self.detr_config: Any = None
        self.heads: dict[str, tuple[Tensor, Tensor]] = {}
        self.image_size: int | None = None
        self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD
        self.coords = profile != "paper" and bool(CONFIGS[profile].get("coord_channels"))

    def _after_prepare(self) -> None:
        self.heads = {t: (w.to(self.device), b.to(self.device)) for t, (w, b) in self.heads.items()}

    def head(self, task: str) -> tuple[Tensor, Tensor]:
        """``task``'s class head: weight ``[C + 1, d]`` and bias ``[C + 1]`` (never merged)."""
        return super().head(task)

    def versions(self) -> dict[str, str]:
        return {self.model: _version("all")}

    # -- paper profile
    def _prepare_paper(self) -> None:
        from backbones._detr_paper import load_detr_paper

        paper = load_detr_paper(self.tasks, {t: self.suite.classnames(t) for t in self.tasks}, cache=self._cache())
        self.detector = paper.detector
        self.image_size, self.mean, self.std = paper.image_size, tuple(paper.mean), tuple(paper.std)
        self.mergeable_names = [n for n, _ in self.detector.named_parameters()]
        self._pretrained = {k: paper.pretrained[k].float() for k in self.mergeable_names}
        self._finetuned = {t: self.streamed(paper.finetuned[t]) for t in self.tasks}
        self.heads = {t: (w.detach().float(), b.detach().float()) for t, (w, b) in paper.heads.items()}
        self._checkpoints = dict(paper.checkpoints)

    # -- tiny / micro profiles (the stages of backbones._tiny.TinyBuild)
    def check_suite(self) -> None:
        self.image_size = self.config["image_size"]
        if self.suite.image_size not in (None, self.image_size):
            raise UserError(f"detr_r50 ({self.profile}) expects {self.image_size}px images")

    def stage_config(self, stage: str) -> dict[str, Any]:
        prefix = {"pretrain": "pretrain", "heads": "head", "finetune": ("finetune", "distill")}[stage]
        recipe = {k: v for k, v in asdict(self.recipe).items()
                  if k.startswith(prefix) or k in ("warmup", "weight_decay", "grad_clip", "anchor_cost")}
        cfg = {"model": self.model, "profile": self.profile, "config": self.config, "recipe": recipe,
               "tasks": self.tasks}
        if stage != "pretrain":  # pretraining reads generic scenes only, never the suite
            cfg["data"] = self.suite.data_key()
        return cfg

    def stage_version(self, stage: str) -> str:
        return _version(stage)

    def load_pretrained(self, state: dict[str, Tensor]) -> None:
        self.detector, _, self.detr_config = build_detector(self.config)
        self.detector.load_state_dict({k[len("detector."):]: v for k, v in state.items() if k.startswith("detector.")})
        self.mergeable_names = [n for n, _ in self.detector.named_parameters()]
        self._pretrained = {k: v.detach().clone().float() for k, v in self.detector.named_parameters()}

    def load_heads(self, flat: dict[str, Tensor]) -> dict[str, Any]:
        return {t: (flat[f"{t}/weight"].float(), flat[f"{t}/bias"].float()) for t in self.tasks}

    def _pixels(self, x: Tensor) -> Tensor:
        return to_batch(x, self.image_size, self.mean, self.std, torch.device("cpu"), self.coords)[0]

    def _build_pretrain(self, tmp: Path) -> None:
        from safetensors.torch import save_file

        r = self.recipe
        s = self.config["image_size"]
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + 301)
        with torch.no_grad():
            images, targets = generic_scenes(g, r.pretrain_images, s)
        pix = self._pixels(images)
        labels = detr_labels(targets, (s, s))
        torch.manual_seed(self.seed)
        det, head, config = build_detector(self.config, len(GENERIC_CLASSES), init=True)
        lcfg = loss_config(config, len(GENERIC_CLASSES), r.anchor_cost)
        params = list(det.parameters()) + list(head.parameters())

        def step_loss() -> Tensor:
            idx = torch.randint(len(pix), (r.pretrain_batch,), generator=g)
            hidden, boxes = det(pix[idx])
            return detection_loss(head(hidden), boxes, [labels[i] for i in idx.tolist()], lcfg)

        det.train()
        fit(params, step_loss, steps=r.pretrain_steps, lr=r.pretrain_lr, weight_decay=r.weight_decay, warmup=r.warmup,
            desc=f"pretrain detr_r50 ({self.profile})", progress=self.progress, grad_clip=r.grad_clip)
        det.eval()
        sd = {f"detector.{k}": v.detach().contiguous() for k, v in det.state_dict().items()}
        sd.update({f"generic_head.{k}": v.detach().contiguous() for k, v in head.state_dict().items()})
        save_file(sd, str(tmp / "pretrained.safetensors"))

    def _build_heads(self, tmp: Path) -> None:
        """Per domain, a linear head on the frozen pretrained detector's query outputs (Hungarian loss)."""
        from safetensors.torch import save_file

        r = self.recipe
        s = self.config["image_size"]
        d = self.config["d_model"]
        out = {}
        for task in self.tasks:
            data = self.suite.load(task, "train")
            n_cls = len(data.classes or [])
            with torch.no_grad():
                hidden, boxes = [], []
                for i in range(0, len(data), 256):
                    h, b = self.detector(self._pixels(data.inputs[i : i + 256]))
                    hidden.append(h)
                    boxes.append(b)
                hidden, boxes = torch.cat(hidden), torch.cat(boxes)
            labels = detr_labels(data.targets, (s, s))
            torch.manual_seed(self.seed * 1_000_003 + stable_hash(task) + 7)
            head = nn.Linear(d, n_cls + 1)
            lcfg = loss_config(self.detr_config, n_cls, r.anchor_cost)
            opt = torch.optim.Adam(head.parameters(), lr=r.head_lr)
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + stable_hash(task) + 11)
            for _step in range(r.head_steps):
                idx = torch.randint(len(hidden), (min(r.head_batch, len(hidden)),), generator=g)
                loss = detection_loss(head(hidden[idx]), boxes[idx], [labels[i] for i in idx.tolist()], lcfg)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            out[f"{task}/weight"] = head.weight.detach().contiguous()
            out[f"{task}/bias"] = head.bias.detach().contiguous()
        save_file(out, str(tmp / "heads.safetensors"))

    def _build_finetune(self, task: str, tmp: Path) -> None:
        from safetensors.torch import save_file

        r = self.recipe
        s = self.config["image_size"]
        data = self.suite.load(task, "train")
        pix = self._pixels(data.inputs)
        labels = detr_labels(data.targets, (s, s))
        w_head, b_head = (t.detach().cpu() for t in self.heads[task])
        lcfg = loss_config(self.detr_config, w_head.shape[0] - 1, r.anchor_cost)
        generic, anchor_h, anchor_b = self._distill_set()
        torch.manual_seed(self.seed * 1_000_003 + stable_hash(task))
        det, _, _ = build_detector(self.config)
        det.load_state_dict(self.detector.state_dict())
        params = [p for p in det.parameters()]
        order = torch.Generator().manual_seed(self.seed * 1_000_003 + stable_hash(task) + 3)
        batches = EpochSampler(len(labels), r.finetune_batch, order)

        def step_loss() -> Tensor:
            idx = batches.next()
            hidden, boxes = det(pix[idx])
            loss = detection_loss(hidden @ w_head.T + b_head, boxes, [labels[i] for i in idx.tolist()], lcfg)
            if r.distill_weight:
                j = torch.randint(len(generic), (r.distill_batch,), generator=order)
                gh, gb = det(generic[j])
                drift = (1 - F.cosine_similarity(gh, anchor_h[j], dim=-1)).mean() + (gb - anchor_b[j]).abs().mean()
                loss = loss + r.distill_weight * drift
            return loss

        det.train()
        fit(params, step_loss, steps=r.finetune_steps, lr=r.finetune_lr, weight_decay=r.weight_decay, warmup=r.warmup,
            desc=f"fine-tune detr_r50 on {task}", progress=self.progress, grad_clip=r.grad_clip)
        det.eval()
        save_file({k: v.detach().contiguous() for k, v in det.named_parameters()}, str(tmp / "finetuned.safetensors"))

    def _distill_set(self) -> tuple[Tensor, Tensor, Tensor]:
        """Generic scenes (a stream apart from pretraining's) and the pretrained detector's query outputs and boxes
        on them; the same for every domain, so built once per adapter."""
        if self._distill is None:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + 211)
            with torch.no_grad():
                images, _ = generic_scenes(g, self.recipe.distill_images, self.config["image_size"])
                pix = self._pixels(images)
                h, b = self.detector.cpu()(pix)
            self._distill = (pix, h, b)
        return self._distill
