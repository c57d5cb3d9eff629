"""``vision8``: the 8-task image classification suite of the CLIP papers (Task Arithmetic, TIES, AdaMerging, the
switch family), in two forms.

paper
    The real data sets, read by :func:`tasks.vision_paper.load_paper_task`: SUN397, Stanford Cars, RESISC45,
    EuroSAT, SVHN, GTSRB, MNIST, DTD.

tiny (default) and micro
    Eight offline, seeded, *generated* image classification tasks, each with its own label space and visual domain,
    chosen to mirror the paper's mix (a digit task, a cluttered-digit task, signs, textures, land cover, a
    fine-grained task with many classes, and two tasks read from structure rather than colour):

    ==========  =======  ================================================================================
    task        classes  what decides the class (everything else is a seeded nuisance)
    ==========  =======  ================================================================================
    digits      10       a real handwritten digit (scikit-learn's ``load_digits``), light on dark (MNIST)
    housenum    10       the centre digit among cropped distractor digits on a lit wall (SVHN)
    signs       12       sign shape (6) x rim colour (red/blue), white face with a random pictogram (GTSRB)
    textures    8        texture family: stripes, checks, dots, grid, zigzag, blotches, rings, crosshatch
                         at random scale, angle and colours (DTD)
    landcover   8        aerial land-cover layout: forest, water, crop rows, residential, highway, river,
                         industrial, pasture (EuroSAT / RESISC45)
    glyphs      16       one of 16 fixed random 5x5 glyphs (drawn once from the seed), randomly coloured,
                         scaled, rotated, on a street scene (fine-grained, many classes: Stanford Cars)
    gratings    8        orientation of a grey sinusoidal grating in 22.5 degree steps, random frequency,
                         phase, contrast and window
    count       6        how many (1-6) objects of random shape and colour lie on the background (CLEVR count)
    ==========  =======  ================================================================================

    Each task also has its data set's *look* (issue 13: a real suite's data sets differ in colour statistics,
    background, scale and layout, so their inputs identify their task): housenum's warm walls lit from above
    (SVHN), glyphs on a sky-over-road street scene (Stanford Cars), achromatic gratings on mid-grey, count's
    shaded objects on a grey floor (CLEVR), textures' close-up contrast and vignette (DTD), land cover's aerial
    haze, muted colour and sensor grain (EuroSAT). On the tiny ViT-B/32's pretrained features a 10-NN over 100
    exemplars per task tells the task of a test input 98.95% of the time (every task >= 96.4%), against 68.5%
    without the looks.

    The digit tasks draw their source digits from disjoint pools of the 1797 scikit-learn digits per split
    (train / val / test), so no test digit is ever seen in training. Every split is generated from its own seeded
    stream. ``tiny`` renders 32x32 images (2400 train, 200 val, 500 test per task); ``micro`` renders the same
    generators at 16x16 with a few dozen images per split, for tests. Generated data is cached
    (:class:`benchmark.cache.Cache`, keyed by profile, sizes, seed and the sources of this module and :mod:`tasks.generated`) as one
    safetensors file per task holding ``uint8 [N, 3, S, S]`` images and ``int64`` labels.

``metric(task)`` is top-1 :class:`~tasks.metrics.Accuracy` for every task, as in the papers.
"""
from __future__ import annotations

import json
import math
import threading
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from benchmark.contract import Metric, TaskData
from benchmark.registry import SUITES
from tasks import drawing as dr
from tasks.generated import GeneratedSuite
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
    y = dr.balanced_labels(g, n, 10)
    src = _draw_digits(g, _digit_pool(seed, split), y)
    m = dr.warp(src, s, dr.uniform(g, n, 0.75, 1.0), dr.uniform(g, n, -0.3, 0.3), dr.uniform(g, n, -0.15, 0.15), dr.uniform(g, n, -0.15, 0.15))
    bg = dr.flat(dr.hsv(dr.uniform(g, n), dr.uniform(g, n, 0, 0.4), dr.uniform(g, n, 0.0, 0.25)), s)
    fg = dr.hsv(dr.uniform(g, n), dr.uniform(g, n, 0, 0.3), dr.uniform(g, n, 0.75, 1.0))
    return dr.finish(dr.paint(bg, m.clamp(0, 1), fg), g, 0.04), y


def gen_housenum(g: torch.Generator, n: int, s: int, split: str, seed: int) -> tuple[Tensor, Tensor]:
    """SVHN's look: house numbers on warm walls (hue 0.02-0.12) lit from above, cropped neighbour digits either side."""
    y = dr.balanced_labels(g, n, 10)
    pool = _digit_pool(seed, split)
    bg_c = dr.hsv(dr.uniform(g, n, 0.02, 0.12), dr.uniform(g, n, 0.35, 0.8), dr.uniform(g, n, 0.35, 0.85))
    lum = dr.luma(bg_c)
    fg = torch.where((lum > 0.5)[:, None], bg_c * 0.25, (bg_c + 0.6).clamp(0, 1))
    yy, xx = dr.grid(s)
    light = (0.8 + 0.35 * (-yy)).clamp(0.4, 1.2)
    bg = (dr.flat(bg_c, s) * light[:, None] * (0.8 + 0.4 * dr.smooth_noise(g, n, s, 4))).clamp(0, 1)
    scale = dr.uniform(g, n, 0.7, 0.9)
    img = bg
    for side in (-1.0, 1.0):
        d_lab = torch.randint(10, (n,), generator=g)
        d_src = _draw_digits(g, pool, d_lab)
        keep = dr.uniform(g, n) < 0.6
        dm = dr.warp(d_src, s, scale, dr.uniform(g, n, -0.15, 0.15), side * dr.uniform(g, n, 0.75, 0.9), dr.uniform(g, n, -0.1, 0.1))
        img = dr.paint(img, dm * dr.column(keep.float()), fg)
    m = dr.warp(_draw_digits(g, pool, y), s, scale, dr.uniform(g, n, -0.15, 0.15), dr.uniform(g, n, -0.06, 0.06), dr.uniform(g, n, -0.08, 0.08))
    img = dr.paint(img, m, fg)
    return dr.finish(img, g, 0.05), y


_SIGN_SHAPES = ["circle", "triangle", "triangle_down", "diamond", "octagon", "square"]
_SIGN_RIMS = {"red": (0.85, 0.1, 0.1), "blue": (0.1, 0.25, 0.85)}


def gen_signs(g: torch.Generator, n: int, s: int, split: str, seed: int) -> tuple[Tensor, Tensor]:
    n_cls = len(_SIGN_SHAPES) * len(_SIGN_RIMS)
    y = dr.balanced_labels(g, n, n_cls)
    yy, xx = dr.grid(s)
    # cluttered background: low-frequency colour noise plus a few random blobs
    img = dr.smooth_noise(g, n, s, 3) * 0.7 + 0.15
    for _ in range(3):
        bx, by, br = dr.column(dr.uniform(g, n, -1, 1)), dr.column(dr.uniform(g, n, -1, 1)), dr.column(dr.uniform(g, n, 0.1, 0.35))
        img = dr.paint(img, dr.soft(torch.sqrt((xx - bx) ** 2 + (yy - by) ** 2) - br, s) * 0.7, dr.rand_colour(g, n))
    cx, cy = dr.column(dr.uniform(g, n, -0.15, 0.15)), dr.column(dr.uniform(g, n, -0.15, 0.15))
    r = dr.column(dr.uniform(g, n, 0.55, 0.8))
    ang = dr.column(dr.uniform(g, n, -0.12, 0.12))
    light = dr.column(dr.uniform(g, n, 0.55, 1.0))  # illumination
    shape_id = y // len(_SIGN_RIMS)
    rim_id = y % len(_SIGN_RIMS)
    rims = torch.tensor(list(_SIGN_RIMS.values()))[rim_id]
    rims = dr.jitter_colour(g, rims, 0.12)
    face = dr.jitter_colour(g, torch.full((n, 3), 0.92), 0.06)
    outer = torch.zeros(n, s, s)
    inner = torch.zeros(n, s, s)
    for k, kind in enumerate(_SIGN_SHAPES):
        sel = shape_id == k
        if not sel.any():
            continue
        dx, dy = xx - cx[sel], yy - cy[sel]
        outer[sel] = dr.soft(dr.shape_sdf(kind, dx, dy, r[sel], ang[sel]), s)
        inner[sel] = dr.soft(dr.shape_sdf(kind, dx, dy, r[sel] * 0.62, ang[sel]), s)
    img = dr.paint(img, outer, rims)
    img = dr.paint(img, inner, face)
    # pictogram (nuisance): a bar, a dot, a cross or nothing, dark
    pict = torch.randint(4, (n,), generator=g)
    dx, dy = xx - cx, yy - cy
    pm = torch.zeros(n, s, s)
    pr = r * 0.28
    bar = dr.soft(torch.maximum(dx.abs() - pr, dy.abs() - pr * 0.35), s)
    dot = dr.soft(torch.sqrt(dx * dx + dy * dy) - pr * 0.6, s)
    crs = dr.soft(dr.shape_sdf("cross", dx, dy, pr, torch.zeros_like(pr)), s)
    for k, m in enumerate((bar, dot, crs)):
        sel = pict == k
        pm[sel] = m[sel]
    img = dr.paint(img, pm * inner, torch.full((n, 3), 0.1))
    img = img * light[:, None]
    return dr.finish(img, g, 0.04), y


_TEXTURES = ["striped", "checkered", "dotted", "grid", "zigzagged", "blotchy", "concentric", "crosshatched"]


def gen_textures(g: torch.Generator, n: int, s: int, split: str, seed: int) -> tuple[Tensor, Tensor]:
    y = dr.balanced_labels(g, n, len(_TEXTURES))
    yy, xx = dr.grid(s)
    ang = dr.column(dr.uniform(g, n, 0, math.pi))
    period = dr.column(dr.uniform(g, n, 0.3, 0.6))  # in [-1, 1] units: 3..7 periods across a 32 px image
    phase = dr.column(dr.uniform(g, n, 0, 1))
    u, v = dr.rotate(xx, yy, ang)
    fu, fv = u / period + phase, v / period + phase
    sharp = dr.column(dr.uniform(g, n, 3, 8))

    def sq(t: Tensor) -> Tensor:  # soft square wave in [0, 1]
        return torch.sigmoid(torch.sin(2 * math.pi * t) * sharp)

    def tri(t: Tensor) -> Tensor:
        return (t - t.floor() - 0.5).abs() * 2

    cx, cy = dr.column(dr.uniform(g, n, -0.6, 0.6)), dr.column(dr.uniform(g, n, -0.6, 0.6))

    def line(t: Tensor, w: float = 0.15) -> Tensor:  # thin soft lines at the integers of t
        return torch.sigmoid((w - (t - t.round()).abs()) * sharp * 6)

    u2, _ = dr.rotate(xx, yy, ang + math.pi / 3)
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
            z = dr.smooth_noise(g, len(sel), s, max(3, s // 5), channels=1)[:, 0]
            m[sel] = torch.sigmoid((z - 0.5) * 12)
        else:
            m[sel] = pats[name]()[sel]
    c1, c2 = dr.contrasting(g, n, 0.25)
    img = dr.paint(dr.flat(c1, s), m, c2)
    img = img * (0.8 + 0.2 * dr.smooth_noise(g, n, s, 3, channels=1))
    # DTD's look, close-up photographs of materials: a close-up's contrast and an off-centre light's vignette, on
    # the quantized image (the calibration probe's order: issue 13)
    img = dr.finish(img, g, 0.04).float() / 255
    mean = img.mean((1, 2, 3), keepdim=True)
    img = (mean + 1.4 * (img - mean)).clamp(0, 1)
    lx, ly = dr.column(dr.uniform(g, n, -0.6, 0.6)), dr.column(dr.uniform(g, n, -0.6, 0.6))
    vig = (1.15 - 0.45 * ((xx - lx) ** 2 + (yy - ly) ** 2)).clamp(0.35, 1.15)
    return dr.finish(img * vig[:, None], g, 0.0), y


_LAND = ["forest", "sea or lake", "annual crop", "residential", "highway", "river", "industrial", "pasture"]


def gen_landcover(g: torch.Generator, n: int, s: int, split: str, seed: int) -> tuple[Tensor, Tensor]:
    y = dr.balanced_labels(g, n, len(_LAND))
    yy, xx = dr.grid(s)
    img = torch.zeros(n, 3, s, s)

    def palette(base: tuple[float, float, float], k: int, amount: float = 0.1) -> Tensor:
        return dr.jitter_colour(g, torch.tensor(base).expand(k, 3), amount)

    greens = (0.3, 0.5, 0.2)
    for k, name in enumerate(_LAND):
        sel = (y == k).nonzero().flatten()
        m = len(sel)
        if m == 0:
            continue
        yk, xk = yy.expand(m, s, s), xx.expand(m, s, s)
        if name == "forest":
            base = palette((0.12, 0.32, 0.12), m)
            tex = dr.smooth_noise(g, m, s, max(4, s // 3))
            out = dr.flat(base, s) * (0.6 + 0.8 * tex[:, :1])
        elif name == "sea or lake":
            base = palette((0.12, 0.25, 0.5), m)
            out = dr.flat(base, s) * (0.85 + 0.3 * dr.smooth_noise(g, m, s, 2)[:, :1])
            shore = dr.soft(-(xk * dr.column(dr.uniform(g, m, -1, 1)) + yk * dr.column(dr.uniform(g, m, -1, 1)) - dr.column(dr.uniform(g, m, 0.8, 1.4))), s)
            out = dr.paint(out, shore, palette(greens, m))
        elif name == "annual crop":
            ang = dr.column(dr.uniform(g, m, 0, math.pi))
            u, _ = dr.rotate(xk, yk, ang)
            rows = torch.sigmoid(torch.sin(2 * math.pi * u / dr.column(dr.uniform(g, m, 0.2, 0.35))) * 4)
            out = dr.paint(dr.flat(palette((0.55, 0.45, 0.25), m), s), rows, palette((0.4, 0.55, 0.2), m))
        elif name == "residential":
            out = dr.flat(palette((0.6, 0.58, 0.52), m), s)
            cell = 2.0 / max(3, s // 6)
            gx, gy = (xk + 1) / cell, (yk + 1) / cell
            fx, fy = gx - gx.floor() - 0.5, gy - gy.floor() - 0.5
            house = dr.soft(torch.maximum(fx.abs(), fy.abs()) - dr.column(dr.uniform(g, m, 0.22, 0.34)), max(s, 8) * 2)
            roof = palette((0.6, 0.3, 0.25), m, 0.15)
            out = dr.paint(out, house * 0.9, roof)
        elif name == "highway":
            out = dr.flat(palette(greens, m), s) * (0.8 + 0.4 * dr.smooth_noise(g, m, s, 4)[:, :1])
            ang = dr.column(dr.uniform(g, m, 0, math.pi))
            _, v = dr.rotate(xk, yk, ang)
            off = dr.column(dr.uniform(g, m, -0.4, 0.4))
            road = dr.soft((v - off).abs() - dr.column(dr.uniform(g, m, 0.1, 0.16)), s)
            out = dr.paint(out, road, palette((0.45, 0.45, 0.45), m, 0.05))
        elif name == "river":
            out = dr.flat(palette(greens, m), s) * (0.8 + 0.4 * dr.smooth_noise(g, m, s, 4)[:, :1])
            ang = dr.column(dr.uniform(g, m, 0, math.pi))
            u, v = dr.rotate(xk, yk, ang)
            curve = dr.column(dr.uniform(g, m, 0.2, 0.45)) * torch.sin(u * dr.column(dr.uniform(g, m, 2.0, 4.0)) + dr.column(dr.uniform(g, m, 0, 6.3)))
            band = dr.soft((v - curve).abs() - dr.column(dr.uniform(g, m, 0.08, 0.16)), s)
            out = dr.paint(out, band, palette((0.15, 0.28, 0.5), m))
        elif name == "industrial":
            out = dr.flat(palette((0.5, 0.5, 0.5), m), s) * (0.85 + 0.3 * dr.smooth_noise(g, m, s, 3)[:, :1])
            for _ in range(3):
                bx, by = dr.column(dr.uniform(g, m, -0.8, 0.8)), dr.column(dr.uniform(g, m, -0.8, 0.8))
                w, h = dr.column(dr.uniform(g, m, 0.15, 0.45)), dr.column(dr.uniform(g, m, 0.15, 0.45))
                box = dr.soft(torch.maximum((xk - bx).abs() - w, (yk - by).abs() - h), s)
                out = dr.paint(out, box, palette((0.82, 0.82, 0.85), m, 0.1))
        else:  # pasture
            out = dr.flat(palette((0.45, 0.62, 0.3), m), s) * (0.9 + 0.2 * dr.smooth_noise(g, m, s, 2)[:, :1])
        img[sel] = out
    img = img * dr.column(dr.uniform(g, n, 0.75, 1.2))[:, None]
    # EuroSAT's look, Sentinel-2 at 10 m: muted colour under an aerial haze (a light blue-grey veil that lifts the
    # blacks and lowers the contrast) and a fine sensor grain, on the quantized image (the probe's order: issue 13)
    img = dr.finish(img, g, 0.04).float() / 255
    grey = img.mean(1, keepdim=True)
    img = grey + 0.6 * (img - grey)
    veil = dr.jitter_colour(g, torch.tensor([0.62, 0.68, 0.78]).expand(n, 3), 0.04)
    a = dr.column(dr.uniform(g, n, 0.25, 0.4))[:, None]
    img = (1 - a) * img + a * veil[:, :, None, None]
    return dr.finish(img + 0.03 * torch.randn(n, 1, s, s, generator=g), g, 0.0), y


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
    """Stanford Cars' look: the glyph (the car) on a two-tone street scene, a light cool sky over a dark grey road."""
    bank = _glyph_bank(seed)
    y = dr.balanced_labels(g, n, len(bank))
    src = F.pad(bank[y][:, None], (1, 1, 1, 1))
    m = dr.warp(src, s, dr.uniform(g, n, 0.5, 0.8), dr.uniform(g, n, -0.25, 0.25), dr.uniform(g, n, -0.15, 0.15), dr.uniform(g, n, -0.1, 0.2))
    yy, xx = dr.grid(s)
    horizon = dr.column(dr.uniform(g, n, -0.2, 0.2))
    sky = dr.hsv(dr.uniform(g, n, 0.52, 0.62), dr.uniform(g, n, 0.1, 0.4), dr.uniform(g, n, 0.75, 1.0))
    road = dr.hsv(dr.uniform(g, n, 0.0, 1.0), dr.uniform(g, n, 0.0, 0.1), dr.uniform(g, n, 0.2, 0.45))
    up = torch.sigmoid((horizon - yy) * s / 3)
    bg = dr.paint(dr.flat(road, s), up, sky)
    fg = dr.hsv(dr.uniform(g, n), dr.uniform(g, n, 0.7, 1.0), dr.uniform(g, n, 0.5, 1.0))
    return dr.finish(dr.paint(bg, m.clamp(0, 1), fg), g, 0.04), y


_N_ORIENT = 8


def gen_gratings(g: torch.Generator, n: int, s: int, split: str, seed: int) -> tuple[Tensor, Tensor]:
    """An achromatic Gabor patch on a mid-grey surround, as psychophysics gratings are; the orientation is the class."""
    y = dr.balanced_labels(g, n, _N_ORIENT)
    yy, xx = dr.grid(s)
    ang = dr.column(y.float() * math.pi / _N_ORIENT + dr.uniform(g, n, -0.06, 0.06))
    u, _ = dr.rotate(xx, yy, ang)
    freq = dr.column(dr.uniform(g, n, 1.5, 4.0))
    wave = torch.sin(math.pi * freq * u + dr.column(dr.uniform(g, n, 0, 2 * math.pi)))
    contrast = dr.column(dr.uniform(g, n, 0.35, 1.0))
    wx, wy, wr = dr.column(dr.uniform(g, n, -0.25, 0.25)), dr.column(dr.uniform(g, n, -0.25, 0.25)), dr.column(dr.uniform(g, n, 0.5, 0.9))
    env = torch.exp(-((xx - wx) ** 2 + (yy - wy) ** 2) / (2 * (wr / 2) ** 2))
    grey = dr.column(dr.uniform(g, n, 0.4, 0.6))
    lum = (grey + 0.5 * contrast * wave * env).clamp(0, 1)
    img = lum[:, None].expand(-1, 3, -1, -1).clone()
    return dr.finish(img, g, 0.04), y


_COUNT_NAMES = ["one", "two", "three", "four", "five", "six"]


def gen_count(g: torch.Generator, n: int, s: int, split: str, seed: int) -> tuple[Tensor, Tensor]:
    """CLEVR's look: shaded objects (lit from the top left) on a neutral grey floor lighter towards the camera."""
    y = dr.balanced_labels(g, n, len(_COUNT_NAMES))
    yy, xx = dr.grid(s)
    grey = dr.column(dr.uniform(g, n, 0.35, 0.55))
    floor = (grey * (1.0 + 0.25 * yy)).clamp(0, 1)  # lighter towards the camera (bottom)
    img = floor[:, None].expand(-1, 3, -1, -1).clone()
    order = torch.argsort(torch.rand(n, 9, generator=g), dim=1)
    kinds = ["circle", "square", "triangle", "diamond"]
    for j in range(len(_COUNT_NAMES)):
        present = (y >= j).float()
        cell = order[:, j]
        cx = dr.column((cell % 3).float() * (2 / 3) - 2 / 3 + dr.uniform(g, n, -0.1, 0.1))
        cy = dr.column((cell // 3).float() * (2 / 3) - 2 / 3 + dr.uniform(g, n, -0.1, 0.1))
        r = dr.column(dr.uniform(g, n, 0.14, 0.22))
        ang = dr.column(dr.uniform(g, n, 0, math.pi))
        kind = torch.randint(len(kinds), (n,), generator=g)
        mask = torch.zeros(n, s, s)
        for k, name in enumerate(kinds):
            sel = kind == k
            if sel.any():
                mask[sel] = dr.soft(dr.shape_sdf(name, xx - cx[sel], yy - cy[sel], r[sel], ang[sel]), s)
        colour = dr.rand_colour(g, n, s=(0.5, 1.0), v=(0.5, 1.0))
        shade = (1.15 - 0.6 * ((xx - cx) + (yy - cy)) / (2 * r)).clamp(0.5, 1.3)  # lit from the top left
        obj = (colour[:, :, None, None] * shade[:, None]).clamp(0, 1)
        img = dr.paint(img, mask * dr.column(present), obj)
    return dr.finish(img, g, 0.03), y


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


@SUITES.register(
    "vision8",
    summary="8 image classification tasks: paper = SUN397, Cars, RESISC45, EuroSAT, SVHN, GTSRB, MNIST, DTD; "
    "tiny/micro = 8 generated offline look-alikes (digits, housenum, signs, textures, landcover, glyphs, gratings, "
    "count)",
    paper="Ilharco et al. 2023 (Task Arithmetic), Sec. 4 / Yang et al. 2024 (AdaMerging); auto-flexswitch.txt Table III",
)
class Vision8(GeneratedSuite):
    modality = "image"
    paper_tasks = tuple(PAPER_TASKS)
    tiny_tasks = tuple(TINY_TASKS)
    profile_sizes = PROFILE_SIZES
    sources = (dr,)

    def generate(self, task: str, split: str) -> dict[str, Tensor]:
        x, y, _ = generate_task(task, split, self.sizes[split], self.sizes["image_size"], self.seed)
        return {"inputs": x, "targets": y}

    def write_extra(self, entry: Path) -> None:
        (entry / "classes.json").write_text(json.dumps({t: list(GENERATORS[t][1]) for t in TINY_TASKS}, indent=1))

    def tiny_classnames(self, task: str) -> list[str]:
        return list(GENERATORS[task][1])

    def load_paper(self, task: str, split: str) -> TaskData:
        from tasks.vision_paper import load_paper_task

        return load_paper_task(task, split, data_root=self.data_root)

    def metric(self, task: str) -> Metric:
        self.check(task, "test")
        return Accuracy()
