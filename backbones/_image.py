"""The tiny build and ModelOps of the image adapters (``clip_vit_b32``, ``clip_vit_l14``, ``convnext``): everything
that only needs an encoder mapping normalized pixels ``[B, 3, S, S]`` to embeddings ``[B, e]``, with one frozen
prototype head ``[C, e]`` per task and logits ``normalize(encoder(x)) @ head.T``.

The three cached stages (:class:`backbones._tiny.TinyBuild`), described with their measurements in
:mod:`backbones.clip_vit`'s docstring:

1. **pretraining**, label-free: SimCLR-style InfoNCE over two augmented views (:func:`augment`) of the unlabeled
   union of the tasks' train images;
2. **frozen prototype heads**: per class, the normalized mean embedding of ``head_shots`` labeled train images,
   times ``logit_scale`` (the analogue of CLIP's zero-shot heads);
3. **fine-tuning** of the whole encoder per task against its frozen head, plus the embedding-preservation term on
   generic images (:func:`generic_mixture`, never a task's).

An adapter subclasses :class:`ImageBackbone` and provides :attr:`~ImageBackbone.configs`, :meth:`recipe`,
:attr:`pixel_mean` / :attr:`pixel_std`, :meth:`new_encoder`, :meth:`model_parts` and ``_prepare_paper``.
"""
from __future__ import annotations

import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from backbones._base import BaseOps, PreparedBackbone
from backbones._tiny import EpochSampler, TinyBuild, cosine_lr, deterministic, fit, stable_hash
from benchmark.cache import code_version
from benchmark.contract import StateDict
from benchmark.errors import UserError
from tasks import drawing

__all__ = ["ImageBackbone", "ImageOps", "Recipe", "augment", "generic_mixture", "to_pixels"]


@dataclass(frozen=True)
class Recipe:
    """How the in-house checkpoints are made (part of every cache key)."""

    pretrain_steps: int
    pretrain_batch: int  # images per step (two augmented views each)
    pretrain_lr: float
    finetune_steps: int
    finetune_batch: int
    finetune_lr: float
    finetune_wd: float
    head_shots: int  # labeled train images per class for the frozen prototype heads
    logit_scale: float
    distill_images: int  # size of the generic mixture the fine-tuning keeps the pretrained embeddings on
    distill_batch: int
    distill_weight: float  # beta of the embedding-preservation term (0: plain fine-tuning)
    pretrain_temperature: float = 0.2  # InfoNCE temperature
    warmup: float = 0.1  # fraction of steps with a linear warm-up


# ----------------------------------------------------------------------------------------------------------------
# Pretraining views


def augment(x: Tensor, g: torch.Generator, min_area: float = 0.5) -> Tensor:
    """One random view of ``x`` (float images in [0, 1], ``[N, 3, S, S]``), as SimCLR's (Chen et al. 2020)
    pipeline at 32 px: a random resized crop (area ``min_area``-1, aspect 0.82-1.22, reflected at the border),
    brightness and contrast jitter of +-20%, grey scale with probability 0.1 and a little pixel noise. No flips
    and no hue changes: digits and signs are not mirror-symmetric, and land cover is told apart by colour."""
    n = len(x)
    area = torch.sqrt(torch.rand(n, generator=g) * (1 - min_area) + min_area)
    aspect = torch.exp((torch.rand(n, generator=g) - 0.5) * 0.4)
    sx, sy = area * aspect.sqrt(), area / aspect.sqrt()
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = sx, sy
    theta[:, 0, 2] = (torch.rand(n, generator=g) * 2 - 1) * (1 - sx)
    theta[:, 1, 2] = (torch.rand(n, generator=g) * 2 - 1) * (1 - sy)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    bright = 1 + (torch.rand(n, 1, 1, 1, generator=g) - 0.5) * 0.4
    contrast = 1 + (torch.rand(n, 1, 1, 1, generator=g) - 0.5) * 0.4
    mu = x.mean((1, 2, 3), keepdim=True)
    x = ((x - mu) * contrast + mu) * bright
    grey = torch.rand(n, generator=g) < 0.1
    x[grey] = x[grey].mean(1, keepdim=True).expand(-1, 3, -1, -1)
    return (x + torch.randn(x.shape, generator=g) * 0.02).clamp(0, 1)


# ----------------------------------------------------------------------------------------------------------------
# The generic image mixture the fine-tuning keeps the pretrained embeddings on (never any task's images)

MIXTURE_FIGURES = 128  # generic "characters" of a random alphabet, which no task uses


def _colour(g: torch.Generator, n: int) -> Tensor:
    """Random colours ``[N, 3]``: uniform hue and saturation, value in [0.15, 1]."""
    h, s, v = drawing.uniform(g, n), drawing.uniform(g, n, 0.0, 1.0), drawing.uniform(g, n, 0.15, 1.0)
    return drawing.hsv(h, s, v)


def _figure_bank(seed: int, n: int = MIXTURE_FIGURES, strokes: int = 3) -> Tensor:
    """``n`` random figures, each ``strokes`` line segments ``[n, strokes, 2 (ends), 2 (x, y)]`` in [-0.8, 0.8]:
    the classes of an alphabet no task uses. Consecutive strokes share an end half of the time (connected
    pen strokes)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + 9973)
    seg = torch.rand(n, strokes, 2, 2, generator=g) * 1.6 - 0.8
    join = torch.rand(n, strokes, generator=g) < 0.5
    for k in range(1, strokes):
        seg[join[:, k], k, 0] = seg[join[:, k], k - 1, 1]
    return seg


def _segment_distance(px: Tensor, py: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """Distance from pixel centres ``[1, S, S]`` to segments ``a -> b`` (``[N, 2]`` each): ``[N, S, S]``."""
    ax, ay, bx, by = (v.view(-1, 1, 1) for v in (a[:, 0], a[:, 1], b[:, 0], b[:, 1]))
    dx, dy = bx - ax, by - ay
    t = (((px - ax) * dx + (py - ay) * dy) / (dx * dx + dy * dy + 1e-6)).clamp(0, 1)
    return torch.sqrt((px - ax - t * dx) ** 2 + (py - ay - t * dy) ** 2)


def generic_mixture(g: torch.Generator, n: int, s: int, seed: int = 0) -> Tensor:
    """``n`` generic images ``uint8 [n, 3, s, s]``, the inputs of the fine-tuning's preservation term: one figure of
    a random stroke alphabet (:func:`_figure_bank`, 128 figures), randomly scaled, rotated, placed, jittered and
    coloured, over a flat / gradient / noise / wave background, with up to two small distractor shapes."""
    u = drawing.uniform
    col = drawing.column
    yy, xx = drawing.grid(s)
    # background
    bg_kind = torch.randint(4, (n,), generator=g)
    c1 = _colour(g, n)
    c2 = _colour(g, n)
    ang = col(u(g, n, 0, 2 * math.pi))
    ru, _ = drawing.rotate(xx, yy, ang)
    flat = drawing.flat(c1, s)
    grad = drawing.paint(flat, ((ru + 1) / 2).clamp(0, 1).expand(n, s, s), c2)
    noise = flat * (0.5 + drawing.smooth_noise(g, n, s, 4))
    waves = drawing.paint(flat, 0.3 * (0.5 + 0.5 * torch.sin(ru * col(u(g, n, 3, 10)))), c2)
    img = torch.stack([flat, grad, noise.clamp(0, 1), waves], 1)[torch.arange(n), bg_kind]
    # distractors: small discs or squares
    for _ in range(2):
        present = col((u(g, n) < 0.5).float())
        r = col(u(g, n, 0.05, 0.12))
        dx, dy = xx - col(u(g, n, -0.9, 0.9)), yy - col(u(g, n, -0.9, 0.9))
        sq = col((u(g, n) < 0.5).float())
        sdf = sq * torch.maximum(dx.abs(), dy.abs()) + (1 - sq) * torch.sqrt(dx * dx + dy * dy) - r
        img = drawing.paint(img, drawing.soft(sdf, s) * present, _colour(g, n))
    # the figure: its strokes, jittered, under a random similarity transform
    fig = torch.randint(MIXTURE_FIGURES, (n,), generator=g)
    seg = _figure_bank(seed)[fig] + (torch.rand(n, *_figure_bank(seed).shape[1:], generator=g) - 0.5) * 0.16
    scale, rot = u(g, n, 0.45, 0.75), u(g, n, -0.35, 0.35)
    cx, cy = u(g, n, -0.35, 0.35), u(g, n, -0.35, 0.35)
    c, si = torch.cos(rot), torch.sin(rot)
    px, py = seg[..., 0], seg[..., 1]
    seg = torch.stack([(c[:, None, None] * px - si[:, None, None] * py) * scale[:, None, None] + cx[:, None, None],
                       (si[:, None, None] * px + c[:, None, None] * py) * scale[:, None, None] + cy[:, None, None]], -1)
    dist = torch.stack([_segment_distance(xx, yy, seg[:, k, 0], seg[:, k, 1]) for k in range(seg.shape[1])]).amin(0)
    width = col(u(g, n, 0.05, 0.1))
    fg = _colour(g, n)
    lum_gap = (drawing.luma(fg) - drawing.luma(c1)).abs() < 0.25
    fg[lum_gap] = (1 - c1[lum_gap]).clamp(0, 1)
    img = drawing.paint(img, drawing.soft(dist - width, s), fg)
    return drawing.finish(img, g, 0.03)


# ----------------------------------------------------------------------------------------------------------------
# Preprocessing


def to_pixels(inputs: Any, image_size: int, mean: tuple, std: tuple, device: torch.device) -> Tensor:
    """Inputs -> normalized ``float32 [N, 3, S, S]`` pixel values on ``device``.

    ``uint8`` tensors ``[N, 3, S, S]`` (the generated suites) are scaled to [0, 1] and normalized with ``mean`` /
    ``std``; float tensors are taken as already-normalized pixel values; anything else (images of another size, a
    lazily decoded image list, PIL images) goes through CLIP's preprocessing, resize + centre crop
    (:func:`tasks.vision_paper.to_pixel_values`).
    """
    if isinstance(inputs, Tensor):
        if inputs.dtype.is_floating_point:
            return inputs.to(device)
        if inputs.dtype != torch.uint8 or inputs.ndim != 4:
            raise TypeError(f"expected uint8 images [N, 3, H, W], got {inputs.dtype} {tuple(inputs.shape)}")
        if inputs.shape[1] == 3 and inputs.shape[-1] == image_size and inputs.shape[-2] == image_size:
            x = inputs.to(device).float().div_(255.0)
            m = torch.tensor(mean, device=device).view(1, 3, 1, 1)
            sd = torch.tensor(std, device=device).view(1, 3, 1, 1)
            return (x - m) / sd
    from tasks.vision_paper import to_pixel_values

    return to_pixel_values(inputs, image_size, mean, std, device=device)


# ----------------------------------------------------------------------------------------------------------------
# ModelOps


class ImageOps(BaseOps):
    """Data-dependent access to an image adapter (:class:`benchmark.contract.ModelOps`): the encoder's embeddings,
    prototype-head logits and linear-layer inputs; data access is :class:`~backbones._base.BaseOps`'."""

    def _embed(self, weights: Mapping[str, Tensor] | None, inputs: Any) -> Tensor:
        bb = self.bb
        x = to_pixels(inputs, bb.image_size, bb.mean, bb.std, bb.device)
        w = self._weights(weights)
        if w is None:
            return bb.encoder(x)
        return torch.func.functional_call(bb.encoder, w, (x,), strict=False)

    def features(self, weights: StateDict | None, inputs: Any) -> Tensor:
        """f_ex: the encoder's image embeddings ``[B, e]`` (what the heads consume, before normalization)."""
        return self._embed(weights, inputs)

    def logits(self, task: str, weights: StateDict | None, inputs: Any) -> Tensor:
        """``normalize(encoder(x)) @ head[task].T`` under ``weights`` (None = pretrained)."""
        emb = self._embed(weights, inputs)
        head = self.bb.head(task).to(device=emb.device, dtype=emb.dtype)
        return F.normalize(emb, dim=-1) @ head.T

    def linear_inputs(self, weights: StateDict | None, inputs: Any) -> dict[str, Tensor]:
        """Inputs ``[N, d_in]`` of every ``nn.Linear`` whose weight is mergeable, keyed by the weight's name."""
        return self.capture_linear_inputs(self.bb.encoder, lambda: self._embed(weights, inputs))


# ----------------------------------------------------------------------------------------------------------------
# The adapter base


def _version(stage: str, model_parts: tuple) -> str:
    """Source of what shapes a cached stage (so editing, say, the fine-tuning loop keeps the pretrained model).
    ``model_parts``: the classes and functions that build and initialize the adapter's encoder."""
    common = (*model_parts, to_pixels, cosine_lr, deterministic, stable_hash, fit, TinyBuild)
    if stage == "pretrain":
        return code_version(*common, augment, ImageBackbone._build_pretrain)
    if stage == "heads":
        return code_version(*common, ImageBackbone._build_heads)
    if stage == "finetune":
        # the generic images are drawn with the drawing primitives: their whole module is part of the key
        return code_version(*common, drawing, _colour, _figure_bank, _segment_distance, generic_mixture, EpochSampler,
                            ImageBackbone._build_finetune, ImageBackbone._distill_set, ImageBackbone._pretrained_full)
    raise ValueError(f"no stage {stage!r}")


class ImageBackbone(TinyBuild, PreparedBackbone):
    """An image adapter's tiny build (see the module docstring)."""

    model: str = ""
    ops_class = ImageOps
    #: the encoder's input statistics: no default, an adapter that forgot them must fail, not normalize wrongly
    pixel_mean: tuple
    pixel_std: tuple

    def __init__(self, profile: str, suite: Any, seed: int = 0, cache: Any = None, progress: bool = True):
        super().__init__(profile, suite, seed, cache, progress)
        self._distill: tuple[Tensor, Tensor] | None = None
        self.encoder: nn.Module

    # -- what an image adapter supplies (and configs, recipes)
    def new_encoder(self, init: bool = False) -> nn.Module:
        """A fresh encoder at this profile's config; ``init=True`` for the one pretraining starts from."""
        raise NotImplementedError

    def model_parts(self) -> tuple:
        """The classes and functions :meth:`new_encoder` runs (their source is part of every cached stage's key)."""
        raise NotImplementedError

    def versions(self) -> dict[str, str]:
        # the adapter's module, this one and what builds the encoder
        return {self.model: code_version(sys.modules[type(self).__module__], sys.modules[__name__], *self.model_parts())}

    # -- tiny / micro profiles (the stages of backbones._tiny.TinyBuild)
    def check_suite(self) -> None:
        self.image_size = self.config.get("image_size", self.suite.image_size)
        self.mean, self.std = self.pixel_mean, self.pixel_std
        if self.suite.image_size not in (None, self.image_size):
            raise UserError(f"{self.model} ({self.profile}) expects {self.image_size}px images")

    def stage_config(self, stage: str) -> dict[str, Any]:
        r = self.recipe
        cfg = {"model": self.model, "profile": self.profile, "config": self.config, "data": self.suite.data_key(),
               "tasks": self.tasks}
        if stage == "heads":
            return {**cfg, "shots": r.head_shots, "logit_scale": r.logit_scale}
        prefixes = ("pretrain",) if stage == "pretrain" else ("finetune", "distill")
        return {**cfg, "recipe": {k: v for k, v in asdict(r).items() if k.startswith(prefixes) or k == "warmup"}}

    def stage_version(self, stage: str) -> str:
        return _version(stage, self.model_parts())

    def load_pretrained(self, state: dict[str, Tensor]) -> None:
        self.encoder = self.new_encoder()
        self.encoder.load_state_dict(state, strict=True)
        self.mergeable_names = [n for n, _ in self.encoder.named_parameters()]
        self._pretrained = {k: state[k].float() for k in self.mergeable_names}

    def load_heads(self, flat: dict[str, Tensor]) -> dict[str, Any]:
        return {t: flat[t].float() for t in self.tasks}

    def _build_pretrain(self, tmp: Path) -> None:
        from safetensors.torch import save_file

        r = self.recipe
        # the unlabeled union of the tasks' train images; their labels are never read
        images = torch.cat([self.suite.load(t, "train").inputs for t in self.tasks]).float().div_(255.0)
        mean = torch.tensor(self.pixel_mean).view(1, 3, 1, 1)
        std = torch.tensor(self.pixel_std).view(1, 3, 1, 1)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + 101)
        torch.manual_seed(self.seed)
        enc = self.new_encoder(init=True)
        n = r.pretrain_batch
        # view i's positive is view i + n (and back); a view is never its own negative
        positives = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])

        def step_loss() -> Tensor:
            x = images[torch.randint(len(images), (n,), generator=g)]
            views = (torch.cat([augment(x, g), augment(x, g)]) - mean) / std
            z = F.normalize(enc(views), dim=-1)
            sim = (z @ z.T / r.pretrain_temperature).fill_diagonal_(float("-inf"))
            return F.cross_entropy(sim, positives)

        enc.train()
        fit(enc.parameters(), step_loss, steps=r.pretrain_steps, lr=r.pretrain_lr, weight_decay=0.05, warmup=r.warmup,
            desc=f"pretrain {self.model} ({self.profile})", progress=self.progress)
        enc.eval()
        save_file({k: v.detach().contiguous() for k, v in enc.state_dict().items()}, str(tmp / "pretrained.safetensors"))

    def _build_heads(self, tmp: Path) -> None:
        from safetensors.torch import save_file

        r = self.recipe
        out = {}
        with torch.no_grad():
            for task in self.tasks:
                data = self.suite.load(task, "train")
                n_cls = len(data.classes or []) or int(data.targets.max()) + 1
                g = torch.Generator().manual_seed(self.seed * 1_000_003 + stable_hash(task) + 7)
                protos = []
                for c in range(n_cls):
                    cand = (data.targets == c).nonzero().flatten()
                    pick = cand[torch.randperm(len(cand), generator=g)[: r.head_shots]]
                    x = to_pixels(data.inputs[pick], self.image_size, self.mean, self.std, torch.device("cpu"))
                    z = F.normalize(self.encoder(x), dim=-1).mean(0)
                    protos.append(F.normalize(z, dim=0))
                out[task] = (torch.stack(protos) * r.logit_scale).contiguous()
        save_file(out, str(tmp / "heads.safetensors"))

    def _build_finetune(self, task: str, tmp: Path) -> None:
        from safetensors.torch import save_file

        r = self.recipe
        data = self.suite.load(task, "train")
        pix = to_pixels(data.inputs, self.image_size, self.mean, self.std, torch.device("cpu"))
        y = data.targets
        head = self.heads[task].detach()
        generic, anchor = self._distill_set()
        torch.manual_seed(self.seed * 1_000_003 + stable_hash(task))
        enc = self.new_encoder()
        enc.load_state_dict(self._pretrained_full(), strict=True)
        order = torch.Generator().manual_seed(self.seed * 1_000_003 + stable_hash(task) + 3)
        batches = EpochSampler(len(y), r.finetune_batch, order)

        def step_loss() -> Tensor:
            idx = batches.next()
            logits = F.normalize(enc(pix[idx]), dim=-1) @ head.T
            loss = F.cross_entropy(logits, y[idx])
            if r.distill_weight:
                j = torch.randint(len(generic), (r.distill_batch,), generator=order)
                drift = 1 - (F.normalize(enc(generic[j]), dim=-1) * anchor[j]).sum(-1)
                loss = loss + r.distill_weight * drift.mean()
            return loss

        enc.train()
        fit(enc.parameters(), step_loss, steps=r.finetune_steps, lr=r.finetune_lr, weight_decay=r.finetune_wd,
            warmup=r.warmup, desc=f"fine-tune {self.model} on {task}", progress=self.progress)
        enc.eval()
        save_file({k: v.detach().contiguous() for k, v in enc.state_dict().items()}, str(tmp / "finetuned.safetensors"))

    def _distill_set(self) -> tuple[Tensor, Tensor]:
        """The generic images and their pretrained embeddings, which the preservation term holds every task's
        fine-tuning to. The same for all tasks, so built once per adapter."""
        if self._distill is None:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + 211)
            with torch.no_grad():
                generic = generic_mixture(gen, self.recipe.distill_images, self.image_size, self.seed)
                generic = to_pixels(generic, self.image_size, self.mean, self.std, torch.device("cpu"))
                self._distill = (generic, F.normalize(self.encoder.cpu()(generic), dim=-1))
        return self._distill

    def _pretrained_full(self) -> dict[str, Tensor]:
        return {k: v.detach().clone() for k, v in self.encoder.state_dict().items()}
