"""``vision8``: the 8-task image classification suite of the CLIP papers (Task Arithmetic, TIES, AdaMerging, the
switch family), in two forms.

paper
    The real data sets, read by :func:`tasks._vision_paper.load_paper_task`: SUN397, Stanford Cars, RESISC45,
    EuroSAT, SVHN, GTSRB, MNIST, DTD.

tiny (default) and micro
    Eight offline, seeded, *generated* image classification tasks, each with its own label space and visual domain,
    chosen to mirror the paper's mix (a digit task, a cluttered-digit task, signs, textures, land cover, a
    fine-grained task with many classes, and two tasks read from structure rather than colour):

    ==========  =======  ================================================================================
    task        classes  what decides the class (everything else is a seeded nuisance)
    ==========  =======  ================================================================================
    digits      10       a real handwritten digit (scikit-learn's ``load_digits``), light on dark (MNIST)
    housenum    10       the centre digit among cropped distractor digits on a cluttered colour background
                         (SVHN)
    signs       12       sign shape (6) x rim colour (red/blue), white face with a random pictogram (GTSRB)
    textures    8        texture family: stripes, checks, dots, grid, zigzag, blotches, rings, crosshatch
                         at random scale, angle and colours (DTD)
    landcover   8        aerial land-cover layout: forest, water, crop rows, residential, highway, river,
                         industrial, pasture (EuroSAT / RESISC45)
    glyphs      16       one of 16 fixed random 5x5 glyphs (drawn once from the seed), randomly coloured,
                         scaled, rotated (fine-grained, many classes: Stanford Cars)
    gratings    8        orientation of a sinusoidal grating in 22.5 degree steps, random frequency,
                         phase, colours and contrast
    count       6        how many (1-6) objects of random shape and colour lie on the background (CLEVR count)
    ==========  =======  ================================================================================

    The digit tasks draw their source digits from disjoint pools of the 1797 scikit-learn digits per split
    (train / val / test), so no test digit is ever seen in training. Every split is generated from its own seeded
    stream. ``tiny`` renders 32x32 images (2400 train, 200 val, 500 test per task); ``micro`` renders the same
    generators at 16x16 with a few dozen images per split, for tests. Generated data is cached
    (:class:`benchmark.cache.Cache`, keyed by profile, sizes, seed and the source of this module) as one
    safetensors file per task holding ``uint8 [N, 3, S, S]`` images and ``int64`` labels.

``metric(task)`` is top-1 :class:`~tasks.metrics.Accuracy` for every task, as in the papers.
"""
from __future__ import annotations

import json
import math
import sys
import threading
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from benchmark.cache import Cache, code_version
from benchmark.contract import Metric, Suite, TaskData
from benchmark.errors import UserError
from benchmark.registry import SUITES
from tasks.metrics import Accuracy

__all__ = ["Vision8", "TINY_TASKS", "PAPER_TASKS", "PROFILE_SIZES", "generate_task", "SPLITS"]

PAPER_TASKS = ["sun397", "stanford-cars", "resisc45", "eurosat", "svhn", "gtsrb", "mnist", "dtd"]
TINY_TASKS = ["digits", "housenum", "signs", "textures", "landcover", "glyphs", "gratings", "count"]
SPLITS = ("train", "val", "test")

# images per split and image side, per generated profile
PROFILE_SIZES: dict[str, dict[str, int]] = {
    "tiny": {"image_size": 32, "train": 2400, "val": 200, "test": 500},
    "micro": {"image_size": 16, "train": 40, "val": 12, "test": 24},
}

# ----------------------------------------------------------------------------------------------------------------
# Drawing helpers (batched, torch, CPU; every random draw comes from the generator passed in)


def _u(g: torch.Generator, n: int, lo: float = 0.0, hi: float = 1.0) -> Tensor:
    return torch.rand(n, generator=g) * (hi - lo) + lo


def _col(x: Tensor) -> Tensor:
    """[N] -> [N, 1, 1] for broadcasting against [N, S, S] grids."""
    return x.view(-1, 1, 1)


def _grid(s: int) -> tuple[Tensor, Tensor]:
    """Pixel-centre coordinates in [-1, 1]: ``yy, xx`` of shape ``[1, S, S]``."""
    c = (torch.arange(s, dtype=torch.float32) + 0.5) / s * 2 - 1
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    return yy[None], xx[None]


def _hsv(h: Tensor, s: Tensor, v: Tensor) -> Tensor:
    """HSV in [0, 1] -> RGB ``[N, 3]``."""
    h = (h % 1.0) * 6
    i = h.floor()
    f = h - i
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    i = i.long() % 6
    r = torch.stack([v, q, p, p, t, v], 1).gather(1, i[:, None])[:, 0]
    gg = torch.stack([t, v, v, q, p, p], 1).gather(1, i[:, None])[:, 0]
    b = torch.stack([p, p, t, v, v, q], 1).gather(1, i[:, None])[:, 0]
    return torch.stack([r, gg, b], 1)


def _rand_colour(g: torch.Generator, n: int, s: tuple[float, float] = (0.3, 1.0), v: tuple[float, float] = (0.2, 1.0)) -> Tensor:
    return _hsv(_u(g, n), _u(g, n, *s), _u(g, n, *v))


def _jitter_colour(g: torch.Generator, base: Tensor, amount: float) -> Tensor:
    return (base + (torch.rand(base.shape, generator=g) * 2 - 1) * amount).clamp(0, 1)


def _paint(img: Tensor, mask: Tensor, colour: Tensor) -> Tensor:
    """Alpha-blend ``colour [N, 3]`` (or an image ``[N, 3, S, S]``) into ``img [N, 3, S, S]`` through ``mask [N, S, S]``."""
    m = mask[:, None]
    c = colour[:, :, None, None] if colour.ndim == 2 else colour
    return img * (1 - m) + c * m


def _flat(colour: Tensor, s: int) -> Tensor:
    return colour[:, :, None, None].expand(-1, -1, s, s).clone()


def _soft(sdf: Tensor, s: int) -> Tensor:
    """Anti-aliased inside-mask of a signed distance (in [-1, 1] image units; negative inside)."""
    return (0.5 - sdf * s / 2).clamp(0, 1)


def _rot(dx: Tensor, dy: Tensor, ang: Tensor) -> tuple[Tensor, Tensor]:
    c, s = torch.cos(ang), torch.sin(ang)
    return c * dx + s * dy, -s * dx + c * dy


def _shape_sdf(kind: str, dx: Tensor, dy: Tensor, r: Tensor, ang: Tensor) -> Tensor:
    u, v = _rot(dx, dy, ang)
    if kind == "circle":
        return torch.sqrt(u * u + v * v) - r
    if kind == "square":
        return torch.maximum(u.abs(), v.abs()) - r * 0.85
    if kind == "diamond":
        return (u.abs() + v.abs()) / math.sqrt(2) - r * 0.75
    if kind == "octagon":
        return torch.maximum(torch.maximum(u.abs(), v.abs()), (u.abs() + v.abs()) / math.sqrt(2)) - r * 0.9
    if kind in ("triangle", "triangle_down"):
        if kind == "triangle_down":
            v = -v
        # equilateral triangle pointing up (y grows downwards in image rows, so "up" is -v)
        return torch.maximum(u.abs() * 0.866 - v * 0.5, v) - r * 0.5
    if kind == "ring":
        return (torch.sqrt(u * u + v * v) - r * 0.8).abs() - r * 0.25
    if kind == "cross":
        a = torch.maximum(u.abs() - r, v.abs() - r * 0.3)
        b = torch.maximum(u.abs() - r * 0.3, v.abs() - r)
        return torch.minimum(a, b)
    raise ValueError(kind)


def _smooth_noise(g: torch.Generator, n: int, s: int, cells: int, channels: int = 3) -> Tensor:
    """Low-frequency noise in [0, 1]: ``cells x cells`` uniform values upsampled (bicubic) to ``S x S``."""
    z = torch.rand(n, channels, cells, cells, generator=g)
    return F.interpolate(z, size=(s, s), mode="bicubic", align_corners=False).clamp(0, 1)


def _warp(src: Tensor, s: int, scale: Tensor, ang: Tensor, tx: Tensor, ty: Tensor) -> Tensor:
    """Place ``src [N, 1, h, w]`` (values in [0, 1]) into an ``S x S`` canvas, scaled to ``scale`` of the canvas,
    rotated by ``ang`` and centred at ``(tx, ty)`` (in [-1, 1] units). Returns ``[N, S, S]``."""
    c, si = torch.cos(ang), torch.sin(ang)
    a = torch.stack([torch.stack([c, si], 1), torch.stack([-si, c], 1)], 1) / scale.view(-1, 1, 1)
    t = torch.stack([tx, ty], 1)[:, :, None]
    theta = torch.cat([a, -(a @ t)], 2)
    grid = F.affine_grid(theta, [src.shape[0], 1, s, s], align_corners=False)
    return F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[:, 0]


def _finish(img: Tensor, g: torch.Generator, noise: float) -> Tensor:
    """Add pixel noise, clip, quantize to ``uint8``."""
    if noise > 0:
        img = img + torch.randn(img.shape, generator=g) * noise
    return (img.clamp(0, 1) * 255).round().to(torch.uint8)


def _balanced_labels(g: torch.Generator, n: int, c: int) -> Tensor:
    y = torch.arange(n) % c
    return y[torch.randperm(n, generator=g)]


def _luma(c: Tensor) -> Tensor:
    return c @ torch.tensor([0.299, 0.587, 0.114])


def _contrasting(g: torch.Generator, n: int, min_luma: float = 0.3) -> tuple[Tensor, Tensor]:
    """Two random colours ``[N, 3]`` whose luminances differ by at least ``min_luma``."""
    a, b = _rand_colour(g, n), _rand_colour(g, n)
    la = _luma(a)
    target = torch.where(la > 0.5, la - min_luma - _u(g, n, 0, 0.3), la + min_luma + _u(g, n, 0, 0.3)).clamp(0.02, 0.98)
    lb = _luma(b).clamp_min(1e-3)
    b = (b * (target / lb)[:, None]).clamp(0, 1)
    # clamping can undo the contrast for saturated colours: fall back to grey at the target luminance
    bad = (_luma(b) - la).abs() < min_luma * 0.8
    b[bad] = target[bad, None].expand(-1, 3)
    return a, b


# ----------------------------------------------------------------------------------------------------------------
# Source digits (scikit-learn's bundled copy of the UCI handwritten digits: 1797 images, 8x8, values 0..16)

_DIGITS: tuple[Tensor, Tensor] | None = None
_DIGITS_LOCK = threading.Lock()


def _sk_digits() -> tuple[Tensor, Tensor]:
    global _DIGITS
    with _DIGITS_LOCK:
        if _DIGITS is None:
            from sklearn.datasets import load_digits

            d = load_digits()
            _DIGITS = (torch.tensor(d.images, dtype=torch.float32) / 16.0, torch.tensor(d.target, dtype=torch.long))
        return _DIGITS


def _digit_pool_indices(seed: int, split: str) -> Tensor:
    """Disjoint pools of source digits per split: 60 % train, 10 % val, 30 % test (seeded permutation)."""
    n = len(_sk_digits()[1])
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7919 + 11))
    cut = {"train": (0, int(0.6 * n)), "val": (int(0.6 * n), int(0.7 * n)), "test": (int(0.7 * n), n)}[split]
    return perm[cut[0] : cut[1]]


def _digit_pool(seed: int, split: str) -> tuple[Tensor, Tensor]:
    x, y = _sk_digits()
    idx = _digit_pool_indices(seed, split)
    return x[idx], y[idx]


def _draw_digits(g: torch.Generator, pool: tuple[Tensor, Tensor], labels: Tensor) -> Tensor:
    """For each label, a random source digit of that label from the pool: ``[N, 1, 10, 10]`` (zero-padded)."""
    px, py = pool
    out = torch.empty(len(labels), 1, 8, 8)
    for c in range(10):
        where = (labels == c).nonzero().flatten()
        cand = (py == c).nonzero().flatten()
        pick = cand[torch.randint(len(cand), (len(where),), generator=g)]
        out[where, 0] = px[pick]
    return F.pad(out, (1, 1, 1, 1))


# ----------------------------------------------------------------------------------------------------------------
# The eight generators: (generator, n, image side, split, seed) -> (uint8 images [N, 3, S, S], labels [N])

Gen = Callable[[torch.Generator, int, int, str, int], tuple[Tensor, Tensor]]


def gen_digits(g: torch.Generator, n: int, s: int, split: str, seed: int) -> tuple[Tensor, Tensor]:
    y = _balanced_labels(g, n, 10)
    src = _draw_digits(g, _digit_pool(seed, split), y)
    m = _warp(src, s, _u(g, n, 0.75, 1.0), _u(g, n, -0.3, 0.3), _u(g, n, -0.15, 0.15), _u(g, n, -0.15, 0.15))
    bg = _flat(_hsv(_u(g, n), _u(g, n, 0, 0.4), _u(g, n, 0.0, 0.25)), s)
    fg = _hsv(_u(g, n), _u(g, n, 0, 0.3), _u(g, n, 0.75, 1.0))
    return _finish(_paint(bg, m.clamp(0, 1), fg), g, 0.04), y


def gen_housenum(g: torch.Generator, n: int, s: int, split: str, seed: int) -> tuple[Tensor, Tensor]:
    y = _balanced_labels(g, n, 10)
    pool = _digit_pool(seed, split)
    # digit colour: hue anywhere, but luminance clearly away from the background's
    bg_c, fg = _contrasting(g, n, 0.3)
    bg = (_flat(bg_c, s) * (0.75 + 0.5 * _smooth_noise(g, n, s, 4))).clamp(0, 1)
    scale = _u(g, n, 0.7, 0.9)
    img = bg
    for side in (-1.0, 1.0):  # cropped distractor digits left and right, same colour (as house numbers are)
        d_lab = torch.randint(10, (n,), generator=g)
        d_src = _draw_digits(g, pool, d_lab)
        keep = _u(g, n) < 0.6
        dm = _warp(d_src, s, scale, _u(g, n, -0.15, 0.15), side * _u(g, n, 0.75, 0.9), _u(g, n, -0.1, 0.1))
        img = _paint(img, dm * _col(keep.float()), fg)
    m = _warp(src := _draw_digits(g, pool, y), s, scale, _u(g, n, -0.15, 0.15), _u(g, n, -0.06, 0.06), _u(g, n, -0.08, 0.08))
    del src
    img = _paint(img, m, fg)
    return _finish(img, g, 0.05), y


_SIGN_SHAPES = ["circle", "triangle", "triangle_down", "diamond", "octagon", "square"]
_SIGN_RIMS = {"red": (0.85, 0.1, 0.1), "blue": (0.1, 0.25, 0.85)}


def gen_signs(g: torch.Generator, n: int, s: int, split: str, seed: int) -> tuple[Tensor, Tensor]:
    n_cls = len(_SIGN_SHAPES) * len(_SIGN_RIMS)
    y = _balanced_labels(g, n, n_cls)
    yy, xx = _grid(s)
    # cluttered background: low-frequency colour noise plus a few random blobs
    img = _smooth_noise(g, n, s, 3) * 0.7 + 0.15
    for _ in range(3):
        bx, by, br = _col(_u(g, n, -1, 1)), _col(_u(g, n, -1, 1)), _col(_u(g, n, 0.1, 0.35))
        img = _paint(img, _soft(torch.sqrt((xx - bx) ** 2 + (yy - by) ** 2) - br, s) * 0.7, _rand_colour(g, n))
    cx, cy = _col(_u(g, n, -0.15, 0.15)), _col(_u(g, n, -0.15, 0.15))
    r = _col(_u(g, n, 0.55, 0.8))
    ang = _col(_u(g, n, -0.12, 0.12))
    light = _col(_u(g, n, 0.55, 1.0))  # illumination
    shape_id = y // len(_SIGN_RIMS)
    rim_id = y % len(_SIGN_RIMS)
    rims = torch.tensor(list(_SIGN_RIMS.values()))[rim_id]
    rims = _jitter_colour(g, rims, 0.12)
    face = _jitter_colour(g, torch.full((n, 3), 0.92), 0.06)
    outer = torch.zeros(n, s, s)
    inner = torch.zeros(n, s, s)
    for k, kind in enumerate(_SIGN_SHAPES):
        sel = shape_id == k
        if not sel.any():
            continue
        dx, dy = xx - cx[sel], yy - cy[sel]
        outer[sel] = _soft(_shape_sdf(kind, dx, dy, r[sel], ang[sel]), s)
        inner[sel] = _soft(_shape_sdf(kind, dx, dy, r[sel] * 0.62, ang[sel]), s)
    img = _paint(img, outer, rims)
    img = _paint(img, inner, face)
    # pictogram (nuisance): a bar, a dot, a cross or nothing, dark
    pict = torch.randint(4, (n,), generator=g)
    dx, dy = xx - cx, yy - cy
    pm = torch.zeros(n, s, s)
    pr = r * 0.28
    bar = _soft(torch.maximum(dx.abs() - pr, dy.abs() - pr * 0.35), s)
    dot = _soft(torch.sqrt(dx * dx + dy * dy) - pr * 0.6, s)
    crs = _soft(_shape_sdf("cross", dx, dy, pr, torch.zeros_like(pr)), s)
    for k, m in enumerate((bar, dot, crs)):
        sel = pict == k
        pm[sel] = m[sel]
    img = _paint(img, pm * inner, torch.full((n, 3), 0.1))
    img = img * light[:, None]
    return _finish(img, g, 0.04), y


_TEXTURES = ["striped", "checkered", "dotted", "grid", "zigzagged", "blotchy", "concentric", "crosshatched"]


def gen_textures(g: torch.Generator, n: int, s: int, split: str, seed: int) -> tuple[Tensor, Tensor]:
    y = _balanced_labels(g, n, len(_TEXTURES))
    yy, xx = _grid(s)
    ang = _col(_u(g, n, 0, math.pi))
    period = _col(_u(g, n, 0.3, 0.6))  # in [-1, 1] units: 3..7 periods across a 32 px image
    phase = _col(_u(g, n, 0, 1))
    u, v = _rot(xx, yy, ang)
    fu, fv = u / period + phase, v / period + phase
    sharp = _col(_u(g, n, 3, 8))

    def sq(t: Tensor) -> Tensor:  # soft square wave in [0, 1]
        return torch.sigmoid(torch.sin(2 * math.pi * t) * sharp)

    def tri(t: Tensor) -> Tensor:
        return (t - t.floor() - 0.5).abs() * 2

    cx, cy = _col(_u(g, n, -0.6, 0.6)), _col(_u(g, n, -0.6, 0.6))

    def line(t: Tensor, w: float = 0.15) -> Tensor:  # thin soft lines at the integers of t
        return torch.sigmoid((w - (t - t.round()).abs()) * sharp * 6)

    u2, _ = _rot(xx, yy, ang + math.pi / 3)
    pats = {
        "striped": lambda: sq(fu),
        "checkered": lambda: sq(fu) * (1 - sq(fv)) + (1 - sq(fu)) * sq(fv),
        "dotted": lambda: torch.sigmoid((0.28 - torch.sqrt((fu - fu.round()) ** 2 + (fv - fv.round()) ** 2)) * sharp * 6),
        "grid": lambda: torch.maximum(line(fu), line(fv)),
        "zigzagged": lambda: sq(fu + tri(fv) * 0.8),
        "concentric": lambda: sq(torch.sqrt((xx - cx) ** 2 + (yy - cy) ** 2) / period + phase),
        "crosshatched": lambda: torch.maximum(line(fu, 0.12), line(u2 / period + phase, 0.12)),
    }
    m = torch.zeros(n, s, s)
    for k, name in enumerate(_TEXTURES):
        sel = (y == k).nonzero().flatten()
        if len(sel) == 0:
            continue
        if name == "blotchy":
            z = _smooth_noise(g, len(sel), s, max(3, s // 5), channels=1)[:, 0]
            m[sel] = torch.sigmoid((z - 0.5) * 12)
        else:
            m[sel] = pats[name]()[sel]
    c1, c2 = _contrasting(g, n, 0.25)
    img = _paint(_flat(c1, s), m, c2)
    img = img * (0.8 + 0.2 * _smooth_noise(g, n, s, 3, channels=1))
    return _finish(img, g, 0.04), y


_LAND = ["forest", "sea or lake", "annual crop", "residential", "highway", "river", "industrial", "pasture"]


def gen_landcover(g: torch.Generator, n: int, s: int, split: str, seed: int) -> tuple[Tensor, Tensor]:
    y = _balanced_labels(g, n, len(_LAND))
    yy, xx = _grid(s)
    img = torch.zeros(n, 3, s, s)

    def palette(base: tuple[float, float, float], k: int, amount: float = 0.1) -> Tensor:
        return _jitter_colour(g, torch.tensor(base).expand(k, 3), amount)

    greens = (0.3, 0.5, 0.2)
    for k, name in enumerate(_LAND):
        sel = (y == k).nonzero().flatten()
        m = len(sel)
        if m == 0:
            continue
        yk, xk = yy.expand(m, s, s), xx.expand(m, s, s)
        if name == "forest":
            base = palette((0.12, 0.32, 0.12), m)
            tex = _smooth_noise(g, m, s, max(4, s // 3))
            out = _flat(base, s) * (0.6 + 0.8 * tex[:, :1])
        elif name == "sea or lake":
            base = palette((0.12, 0.25, 0.5), m)
            out = _flat(base, s) * (0.85 + 0.3 * _smooth_noise(g, m, s, 2)[:, :1])
            shore = _soft(-(xk * _col(_u(g, m, -1, 1)) + yk * _col(_u(g, m, -1, 1)) - _col(_u(g, m, 0.8, 1.4))), s)
            out = _paint(out, shore, palette(greens, m))
        elif name == "annual crop":
            ang = _col(_u(g, m, 0, math.pi))
            u, _ = _rot(xk, yk, ang)
            rows = torch.sigmoid(torch.sin(2 * math.pi * u / _col(_u(g, m, 0.2, 0.35))) * 4)
            out = _paint(_flat(palette((0.55, 0.45, 0.25), m), s), rows, palette((0.4, 0.55, 0.2), m))
        elif name == "residential":
            out = _flat(palette((0.6, 0.58, 0.52), m), s)
            cell = 2.0 / max(3, s // 6)
            gx, gy = (xk + 1) / cell, (yk + 1) / cell
            fx, fy = gx - gx.floor() - 0.5, gy - gy.floor() - 0.5
            house = _soft(torch.maximum(fx.abs(), fy.abs()) - _col(_u(g, m, 0.22, 0.34)), max(s, 8) * 2)
            roof = palette((0.6, 0.3, 0.25), m, 0.15)
            out = _paint(out, house * 0.9, roof)
        elif name == "highway":
            out = _flat(palette(greens, m), s) * (0.8 + 0.4 * _smooth_noise(g, m, s, 4)[:, :1])
            ang = _col(_u(g, m, 0, math.pi))
            _, v = _rot(xk, yk, ang)
            off = _col(_u(g, m, -0.4, 0.4))
            road = _soft((v - off).abs() - _col(_u(g, m, 0.1, 0.16)), s)
            out = _paint(out, road, palette((0.45, 0.45, 0.45), m, 0.05))
        elif name == "river":
            out = _flat(palette(greens, m), s) * (0.8 + 0.4 * _smooth_noise(g, m, s, 4)[:, :1])
            ang = _col(_u(g, m, 0, math.pi))
            u, v = _rot(xk, yk, ang)
            curve = _col(_u(g, m, 0.2, 0.45)) * torch.sin(u * _col(_u(g, m, 2.0, 4.0)) + _col(_u(g, m, 0, 6.3)))
            band = _soft((v - curve).abs() - _col(_u(g, m, 0.08, 0.16)), s)
            out = _paint(out, band, palette((0.15, 0.28, 0.5), m))
        elif name == "industrial":
            out = _flat(palette((0.5, 0.5, 0.5), m), s) * (0.85 + 0.3 * _smooth_noise(g, m, s, 3)[:, :1])
            for _ in range(3):
                bx, by = _col(_u(g, m, -0.8, 0.8)), _col(_u(g, m, -0.8, 0.8))
                w, h = _col(_u(g, m, 0.15, 0.45)), _col(_u(g, m, 0.15, 0.45))
                box = _soft(torch.maximum((xk - bx).abs() - w, (yk - by).abs() - h), s)
                out = _paint(out, box, palette((0.82, 0.82, 0.85), m, 0.1))
        else:  # pasture
            out = _flat(palette((0.45, 0.62, 0.3), m), s) * (0.9 + 0.2 * _smooth_noise(g, m, s, 2)[:, :1])
        img[sel] = out
    img = img * _col(_u(g, n, 0.75, 1.2))[:, None]
    return _finish(img, g, 0.04), y


def _glyph_bank(seed: int, n_cls: int = 16, side: int = 5, min_dist: int = 6) -> Tensor:
    """``n_cls`` fixed random binary glyphs (``side x side``, about half the cells on), pairwise Hamming distance at
    least ``min_dist``; the bank depends on the seed only."""
    g = torch.Generator().manual_seed(seed * 104729 + 3)
    bank: list[Tensor] = []
    while len(bank) < n_cls:
        cand = (torch.rand(side, side, generator=g) < 0.5).float()
        if cand.sum() < side * side * 0.35 or cand.sum() > side * side * 0.65:
            continue
        if all(int((cand != b).sum()) >= min_dist for b in bank):
            bank.append(cand)
    return torch.stack(bank)


def gen_glyphs(g: torch.Generator, n: int, s: int, split: str, seed: int) -> tuple[Tensor, Tensor]:
    bank = _glyph_bank(seed)
    y = _balanced_labels(g, n, len(bank))
    src = F.pad(bank[y][:, None], (1, 1, 1, 1))
    m = _warp(src, s, _u(g, n, 0.6, 0.95), _u(g, n, -0.25, 0.25), _u(g, n, -0.15, 0.15), _u(g, n, -0.15, 0.15))
    bg_c, fg_c = _contrasting(g, n, 0.3)
    bg = _flat(bg_c, s) * (0.8 + 0.4 * _smooth_noise(g, n, s, 3, channels=1))
    return _finish(_paint(bg, m.clamp(0, 1), fg_c), g, 0.05), y


_N_ORIENT = 8


def gen_gratings(g: torch.Generator, n: int, s: int, split: str, seed: int) -> tuple[Tensor, Tensor]:
    y = _balanced_labels(g, n, _N_ORIENT)
    yy, xx = _grid(s)
    ang = _col(y.float() * math.pi / _N_ORIENT + _u(g, n, -0.06, 0.06))
    u, _ = _rot(xx, yy, ang)
    freq = _col(_u(g, n, 1.5, 4.0))  # cycles per half image
    wave = 0.5 + 0.5 * torch.sin(math.pi * freq * u + _col(_u(g, n, 0, 2 * math.pi)))
    contrast = _col(_u(g, n, 0.35, 1.0))
    m = 0.5 + (wave - 0.5) * contrast
    c1, c2 = _contrasting(g, n, 0.25)
    img = _paint(_flat(c1, s), m, c2)
    # a soft window of random size and position so the grating does not always fill the frame
    wx, wy, wr = _col(_u(g, n, -0.3, 0.3)), _col(_u(g, n, -0.3, 0.3)), _col(_u(g, n, 0.6, 1.4))
    win = torch.sigmoid((wr - torch.sqrt((xx - wx) ** 2 + (yy - wy) ** 2)) * 6)
    img = _paint(_flat(_rand_colour(g, n), s), win, img)
    return _finish(img, g, 0.06), y


_COUNT_NAMES = ["one", "two", "three", "four", "five", "six"]


def gen_count(g: torch.Generator, n: int, s: int, split: str, seed: int) -> tuple[Tensor, Tensor]:
    y = _balanced_labels(g, n, len(_COUNT_NAMES))
    yy, xx = _grid(s)
    img = _flat(_rand_colour(g, n, s=(0.0, 0.5), v=(0.3, 0.9)), s) * (0.85 + 0.3 * _smooth_noise(g, n, s, 3, channels=1))
    # objects sit in distinct cells of a jittered 3x3 grid, so they never overlap
    order = torch.argsort(torch.rand(n, 9, generator=g), dim=1)
    kinds = ["circle", "square", "triangle", "diamond"]
    for j in range(len(_COUNT_NAMES)):
        present = (y >= j).float()
        cell = order[:, j]
        cx = _col((cell % 3).float() * (2 / 3) - 2 / 3 + _u(g, n, -0.1, 0.1))
        cy = _col((cell // 3).float() * (2 / 3) - 2 / 3 + _u(g, n, -0.1, 0.1))
        r = _col(_u(g, n, 0.14, 0.22))
        ang = _col(_u(g, n, 0, math.pi))
        kind = torch.randint(len(kinds), (n,), generator=g)
        mask = torch.zeros(n, s, s)
        for k, name in enumerate(kinds):
            sel = kind == k
            if sel.any():
                mask[sel] = _soft(_shape_sdf(name, xx - cx[sel], yy - cy[sel], r[sel], ang[sel]), s)
        img = _paint(img, mask * _col(present), _rand_colour(g, n, s=(0.5, 1.0), v=(0.5, 1.0)))
    return _finish(img, g, 0.04), y


GENERATORS: dict[str, tuple[Gen, list[str]]] = {
    "digits": (gen_digits, [str(i) for i in range(10)]),
    "housenum": (gen_housenum, [str(i) for i in range(10)]),
    "signs": (gen_signs, [f"{rim} {shape.replace('_', ' ')}" for shape in _SIGN_SHAPES for rim in _SIGN_RIMS]),
    "textures": (gen_textures, list(_TEXTURES)),
    "landcover": (gen_landcover, list(_LAND)),
    "glyphs": (gen_glyphs, [f"glyph {i:02d}" for i in range(16)]),
    "gratings": (gen_gratings, [f"{180 * i / _N_ORIENT:g} degrees" for i in range(_N_ORIENT)]),
    "count": (gen_count, list(_COUNT_NAMES)),
}
assert list(GENERATORS) == TINY_TASKS


def _split_seed(seed: int, task: str, split: str) -> int:
    return (seed * 1_000_003 + TINY_TASKS.index(task) * 1009 + SPLITS.index(split) * 17 + 1) % (2**63)


def generate_task(task: str, split: str, n: int, image_size: int, seed: int) -> tuple[Tensor, Tensor, list[str]]:
    """Generate one split of one tiny task: (``uint8 [n, 3, S, S]`` images, ``int64 [n]`` labels, class names).
    Deterministic in (task, split, n, image size, seed)."""
    fn, classes = GENERATORS[task]
    g = torch.Generator().manual_seed(_split_seed(seed, task, split))
    with torch.no_grad():
        x, y = fn(g, n, image_size, split, seed)
    return x.contiguous(), y.long().contiguous(), list(classes)


# ----------------------------------------------------------------------------------------------------------------
# The suite

_MEMO: dict[tuple[str, str], dict[str, Tensor]] = {}
_MEMO_LOCK = threading.Lock()


@SUITES.register(
    "vision8",
    summary="8 image classification tasks: paper = SUN397, Cars, RESISC45, EuroSAT, SVHN, GTSRB, MNIST, DTD; "
    "tiny/micro = 8 generated offline look-alikes (digits, housenum, signs, textures, landcover, glyphs, gratings, "
    "count)",
    paper="Ilharco et al. 2023 (Task Arithmetic), Sec. 4 / Yang et al. 2024 (AdaMerging); auto-flexswitch.txt Table III",
)
class Vision8(Suite):
    modality = "image"

    def __init__(self, profile: str, seed: int = 0, cache: Any = None, progress: bool = True,
                 data_root: str | None = None):
        super().__init__(profile, seed, cache, progress)
        self.data_root = data_root
        if profile != "paper" and profile not in PROFILE_SIZES:
            raise UserError(f"suite vision8 has no profile {profile!r}; valid: paper, {', '.join(PROFILE_SIZES)}")
        self._paper: dict[tuple[str, str], TaskData] = {}

    # -- what the backbone needs to know
    @property
    def tasks(self) -> list[str]:
        return list(PAPER_TASKS if self.profile == "paper" else TINY_TASKS)

    @property
    def image_size(self) -> int | None:
        """Side of the generated images (None for the paper data, whose sizes vary)."""
        return None if self.profile == "paper" else PROFILE_SIZES[self.profile]["image_size"]

    def config(self) -> dict[str, Any]:
        """What the generated data depends on, besides the seed and this module's source."""
        return {"profile": self.profile, "tasks": self.tasks, **PROFILE_SIZES.get(self.profile, {})}

    @property
    def version(self) -> str:
        return code_version(sys.modules[__name__])

    def data_key(self) -> str:
        """A string identifying the data (backbones put it in their checkpoints' cache keys)."""
        if self.profile == "paper":
            return f"paper:{self.data_root or ''}"
        from benchmark.cache import config_key

        return config_key("vision8", self.config(), self.seed, self.version)

    def classnames(self, task: str) -> list[str]:
        if self.profile == "paper":
            return list(self.load(task, "train").classes or [])
        self._check(task, "train")
        return list(GENERATORS[task][1])

    # -- data
    def _check(self, task: str, split: str) -> None:
        if task not in self.tasks:
            raise UserError(f"suite vision8 ({self.profile}) has no task {task!r}; valid: {', '.join(self.tasks)}")
        if split not in SPLITS:
            raise UserError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")

    def prepare(self) -> Path | None:
        """Generate (or find in the cache) every task's data; returns the cache entry (None for paper)."""
        if self.profile == "paper":
            return None
        cache = self.cache if self.cache is not None else Cache()
        sizes = PROFILE_SIZES[self.profile]

        def build(tmp: Path) -> None:
            from safetensors.torch import save_file
            from tqdm.auto import tqdm

            classes = {}
            for task in tqdm(TINY_TASKS, desc=f"generate vision8 ({self.profile})", unit="task",
                             disable=not self.progress, leave=False):
                tensors = {}
                for split in SPLITS:
                    x, y, cls = generate_task(task, split, sizes[split], sizes["image_size"], self.seed)
                    tensors[f"{split}/inputs"], tensors[f"{split}/targets"] = x, y
                classes[task] = cls
                save_file(tensors, str(tmp / f"{task}.safetensors"))
            (tmp / "classes.json").write_text(json.dumps(classes, indent=1))

        return cache.get_or_build("vision8", self.config(), self.seed, self.version, build)

    def _tensors(self, task: str) -> dict[str, Tensor]:
        entry = self.prepare()
        assert entry is not None
        key = (str(entry), task)
        with _MEMO_LOCK:
            if key not in _MEMO:
                from safetensors.torch import load_file

                _MEMO[key] = load_file(str(entry / f"{task}.safetensors"))
            return _MEMO[key]

    def load(self, task: str, split: str) -> TaskData:
        self._check(task, split)
        if self.profile == "paper":
            if (task, split) not in self._paper:
                from tasks._vision_paper import load_paper_task

                self._paper[(task, split)] = load_paper_task(task, split, data_root=self.data_root)
            return self._paper[(task, split)]
        t = self._tensors(task)
        return TaskData(
            inputs=t[f"{split}/inputs"],
            targets=t[f"{split}/targets"],
            classes=list(GENERATORS[task][1]),
            meta={"task": task, "split": split, "profile": self.profile, "generated": True},
        )

    def metric(self, task: str) -> Metric:
        self._check(task, "test")
        return Accuracy()
