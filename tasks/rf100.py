"""``rf100_7``: the 7-domain object detection suite of auto-flexswitch.txt Sec. IV-A2 (Table VII), in two forms.

paper
    The seven RoboFlow 100 domains the paper merges DETR-ResNet50 over -- Aerial, Videogames, Microscopic,
    Underwater, Documents, Electromagnetic, Real World -- read from Roboflow's COCO exports by
    :func:`tasks.rf100_paper.load_rf100_task` (``<root>/<domain>/{train,valid,test}/_annotations.coco.json`` with
    the images beside it; ``root`` = ``$MERGE_BENCH_DATA/rf100``). Inputs are lazily decoded images of any size.

tiny (default) and micro
    Seven offline, seeded, *generated* detection domains that differ the way RF100's do -- in object types, object
    scale, density and background -- each with its own label space:

    ===========  ================================  =======  ========  ============================================
    domain       classes                           objects  scale     background (the RF100 domain it mirrors)
    ===========  ================================  =======  ========  ============================================
    rooftops     car, tree, pool                   3-9      small     green-brown ground texture, a road (Aerial)
    arcade       hero, coin, ghost                 1-5      medium    flat colour, chequered floor; objects are
                                                                      pixelated sprites (Videogames)
    cells        red cell, white cell, platelet    4-10     small     pale stained slide with smooth noise
                                                                      (Microscopic)
    reef         fish, jellyfish, urchin           1-4      medium    blue-green depth gradient, caustics and haze
                                                                      that lower the contrast (Underwater)
    forms        table, figure, stamp              1-3      large     cream page covered in text lines (Documents)
    radar        hotspot, streak, arc              1-5      medium    dark speckle noise, false colour
                                                                      (Electromagnetic)
    street       ball, crate, cone                 1-3      large     cluttered sky/ground scene (Real World)
    ===========  ================================  =======  ========  ============================================

    Objects are placed in distinct cells of a jittered ``G x G`` grid (``G`` sets the density), so they never
    overlap, and each object's box is the tight box of its rendered mask (mask > 0.5). ``tiny`` renders 64x64
    images (800 train, 64 val, 200 test per domain), ``micro`` the same generators at 32x32 with a few dozen images
    per split, for tests. Every split comes from its own seeded stream; data is cached
    (:class:`benchmark.cache.Cache`, keyed by profile, sizes, seed and the sources of this module and :mod:`tasks.generated`) as one
    safetensors file per domain.

Targets (both profiles): one dict per image, ``{"boxes": float32 [m, 4], "labels": int64 [m], "image_id": int}``,
boxes **xyxy in pixels** of the image as stored (the paper loader converts COCO's ``xywh``), labels indexing
``TaskData.classes`` (0-based), ``image_id`` unique within a split. Inputs are ``uint8 [N, 3, S, S]`` (generated)
or a lazy image list (paper).

``metric(task)`` is COCO mAP@50 (x100) by pycocotools (:class:`tasks.detection_metrics.MeanAP50`), as the paper.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from benchmark.contract import Metric, TaskData
from benchmark.registry import SUITES
from tasks import drawing as dr
from tasks import scenes
from tasks.generated import GeneratedSuite
from tasks.scenes import Domain, by_class, render_scenes
from tasks.detection_metrics import MeanAP50

__all__ = ["RF100", "PAPER_TASKS", "TINY_TASKS", "PROFILE_SIZES", "DOMAINS", "Domain", "render_scenes",
           "generate_task", "pack_targets", "unpack_targets"]

PAPER_TASKS = ["aerial", "videogames", "microscopic", "underwater", "documents", "electromagnetic", "real_world"]
TINY_TASKS = ["rooftops", "arcade", "cells", "reef", "forms", "radar", "street"]
SPLITS = ("train", "val", "test")

PROFILE_SIZES: dict[str, dict[str, int]] = {
    "tiny": {"image_size": 64, "train": 800, "val": 64, "test": 200},
    "micro": {"image_size": 32, "train": 24, "val": 8, "test": 12},
}

def _jit(g: torch.Generator, base: tuple[float, float, float], n: int, amount: float = 0.08) -> Tensor:
    return dr.jitter_colour(g, torch.tensor(base).expand(n, 3), amount)


def _rect(dx: Tensor, dy: Tensor, hw: Tensor, hh: Tensor) -> Tensor:
    return torch.maximum(dx.abs() - hw, dy.abs() - hh)


def _ellipse(u: Tensor, v: Tensor, a: Tensor, b: Tensor) -> Tensor:
    return (torch.sqrt((u / a) ** 2 + (v / b) ** 2) - 1) * torch.minimum(a, b)


def _pixelate(mask: Tensor, s: int, block: int) -> Tensor:
    """Blocky sprite masks: average over ``block x block`` cells, threshold, upsample (nearest)."""
    if block <= 1:
        return mask
    m = F.avg_pool2d(mask[:, None], block)
    return F.interpolate((m > 0.5).float(), size=tuple(mask.shape[-2:]), mode="nearest")[:, 0]


# -- backgrounds

def _bg_ground(g: torch.Generator, n: int, s: int) -> Tensor:
    base = _jit(g, (0.35, 0.42, 0.25), n, 0.1)
    tex = dr.smooth_noise(g, n, s, max(4, s // 6))
    img = dr.flat(base, s) * (0.7 + 0.6 * tex)
    yy, xx = dr.grid(s)
    ang = dr.column(dr.uniform(g, n, 0, math.pi))
    u, _ = dr.rotate(xx, yy, ang)
    road = dr.soft((u - dr.column(dr.uniform(g, n, -0.8, 0.8))).abs() - 0.06, s) * dr.column((dr.uniform(g, n) < 0.6).float())
    return dr.paint(img.clamp(0, 1), road, _jit(g, (0.45, 0.45, 0.45), n, 0.05))


def _bg_arcade(g: torch.Generator, n: int, s: int) -> Tensor:
    img = dr.flat(dr.rand_colour(g, n, s=(0.5, 1.0), v=(0.3, 0.8)), s)
    yy, xx = dr.grid(s)
    per = dr.column(dr.uniform(g, n, 0.15, 0.3))
    chk = ((torch.floor((xx + 1) / per) + torch.floor((yy + 1) / per)) % 2)
    floor = (yy > dr.column(dr.uniform(g, n, 0.4, 0.8))).float() * (0.5 + 0.5 * chk)
    return dr.paint(img, floor, dr.rand_colour(g, n, s=(0.2, 0.8), v=(0.2, 0.6)))


def _bg_slide(g: torch.Generator, n: int, s: int) -> Tensor:
    base = _jit(g, (0.93, 0.82, 0.86), n, 0.05)
    return (dr.flat(base, s) * (0.9 + 0.15 * dr.smooth_noise(g, n, s, 5))).clamp(0, 1)


def _bg_water(g: torch.Generator, n: int, s: int) -> Tensor:
    yy, xx = dr.grid(s)
    top, deep = _jit(g, (0.15, 0.55, 0.6), n, 0.08), _jit(g, (0.03, 0.15, 0.35), n, 0.05)
    t = ((yy + 1) / 2).expand(n, s, s)
    img = dr.paint(dr.flat(top, s), t, deep)
    caustic = 0.5 + 0.5 * torch.sin(xx * dr.column(dr.uniform(g, n, 6, 12)) + torch.sin(yy * 5) * 2 + dr.column(dr.uniform(g, n, 0, 6.3)))
    return (img * (0.85 + 0.25 * caustic[:, None])).clamp(0, 1)


def _bg_page(g: torch.Generator, n: int, s: int) -> Tensor:
    img = dr.flat(_jit(g, (0.95, 0.93, 0.86), n, 0.03), s)
    yy, xx = dr.grid(s)
    pitch = dr.column(dr.uniform(g, n, 0.09, 0.14))
    phase = dr.column(dr.uniform(g, n, 0, 1))
    line = (((yy + 1) / pitch + phase) % 1 < 0.35).float()
    words = (dr.smooth_noise(g, n, s, max(4, s // 4), channels=1)[:, 0] > 0.4).float()
    margin = ((xx.abs() < 0.85) & (yy.abs() < 0.9)).float()
    return dr.paint(img, line * words * margin * 0.8, torch.full((n, 3), 0.25))


def _bg_speckle(g: torch.Generator, n: int, s: int) -> Tensor:
    base = _jit(g, (0.06, 0.06, 0.2), n, 0.04)
    speck = torch.rand(n, 1, s, s, generator=g) ** 3
    return (dr.flat(base, s) + 0.35 * speck * torch.tensor([0.3, 0.5, 1.0]).view(1, 3, 1, 1)).clamp(0, 1)


def _bg_street(g: torch.Generator, n: int, s: int) -> Tensor:
    yy, xx = dr.grid(s)
    sky, ground = _jit(g, (0.6, 0.75, 0.9), n, 0.1), _jit(g, (0.4, 0.36, 0.3), n, 0.12)
    horizon = dr.column(dr.uniform(g, n, -0.5, 0.2))
    img = dr.paint(dr.flat(sky, s), (yy > horizon).float().expand(n, s, s), ground)
    img = img * (0.8 + 0.4 * dr.smooth_noise(g, n, s, 4))
    for _ in range(4):  # clutter
        bx, by, br = dr.column(dr.uniform(g, n, -1, 1)), dr.column(dr.uniform(g, n, -1, 1)), dr.column(dr.uniform(g, n, 0.1, 0.3))
        img = dr.paint(img, dr.soft(_rect(xx - bx, yy - by, br, br * 0.6), s) * 0.6, dr.rand_colour(g, n))
    return img.clamp(0, 1)


# -- objects

def _draw_rooftops(g, cls, cx, cy, r, xx, yy, s):
    dx, dy = xx - cx, yy - cy
    vertical = dr.column((dr.uniform(g, len(cls)) < 0.5).float())
    car_col = dr.rand_colour(g, len(cls), s=(0.6, 1.0), v=(0.6, 1.0))

    def fn(c: int, sel: Tensor) -> tuple[Tensor, Tensor]:
        x, y, rr, vt = dx[sel], dy[sel], r[sel], vertical[sel]
        if c == 0:  # car: an elongated rectangle, along or across the image
            hw, hh = rr * (1 - 0.5 * vt), rr * (0.5 + 0.5 * vt)
            return dr.soft(_rect(x, y, hw, hh), s), car_col[sel]
        if c == 1:  # tree: a dark green disc
            return dr.soft(torch.sqrt(x * x + y * y) - rr, s), _jit(g, (0.08, 0.3, 0.08), len(sel), 0.05)
        return dr.soft(_rect(x, y, rr * 0.8, rr * 0.8), s), _jit(g, (0.3, 0.8, 0.95), len(sel), 0.06)  # pool

    return [by_class(cls, 3, s, fn)]


def _draw_arcade(g, cls, cx, cy, r, xx, yy, s):
    dx, dy = xx - cx, yy - cy
    block = max(1, s // 16)
    hero_col = torch.tensor([[0.9, 0.15, 0.15], [0.15, 0.3, 0.95]])[torch.randint(2, (len(cls),), generator=g)]

    def fn(c: int, sel: Tensor) -> tuple[Tensor, Tensor]:
        x, y, rr = dx[sel], dy[sel], r[sel]
        z = torch.zeros_like(rr)
        if c == 0:  # hero: a cross
            m = dr.soft(dr.shape_sdf("cross", x, y, rr, z), s)
            col = hero_col[sel]
        elif c == 1:  # coin: a yellow disc
            m = dr.soft(torch.sqrt(x * x + y * y) - rr * 0.8, s)
            col = _jit(g, (1.0, 0.85, 0.1), len(sel), 0.05)
        else:  # ghost: a pale, downward triangle
            m = dr.soft(dr.shape_sdf("triangle_down", x, y, rr * 1.1, z), s)
            col = _jit(g, (0.9, 0.88, 1.0), len(sel), 0.05)
        return _pixelate(m, s, block), col

    return [by_class(cls, 3, s, fn)]


def _draw_cells(g, cls, cx, cy, r, xx, yy, s):
    dx, dy = xx - cx, yy - cy
    n = len(cls)
    ang = dr.column(dr.uniform(g, n, 0, math.pi))
    u, v = dr.rotate(dx, dy, ang)
    r = r * torch.where(dr.column((cls == 2).float()) > 0, 0.55, 1.0)  # platelets are small

    def body(c: int, sel: Tensor) -> tuple[Tensor, Tensor]:
        uu, vv, rr = u[sel], v[sel], r[sel]
        if c == 0:  # red cell: a pale red ellipse
            return dr.soft(_ellipse(uu, vv, rr, rr * 0.85), s), _jit(g, (0.9, 0.45, 0.45), len(sel), 0.05)
        if c == 1:  # white cell: a lavender disc (its lobed nucleus is the second layer)
            return dr.soft(_ellipse(uu, vv, rr, rr), s), _jit(g, (0.75, 0.65, 0.85), len(sel), 0.05)
        return dr.soft(dr.shape_sdf("diamond", uu, vv, rr, torch.zeros_like(rr)), s), _jit(g, (0.45, 0.2, 0.55), len(sel), 0.05)

    def nucleus(c: int, sel: Tensor) -> tuple[Tensor, Tensor]:
        uu, vv, rr = u[sel], v[sel], r[sel]
        if c == 1:
            lobes = torch.minimum(_ellipse(uu - rr * 0.3, vv, rr * 0.35, rr * 0.45),
                                  _ellipse(uu + rr * 0.3, vv, rr * 0.35, rr * 0.45))
            return dr.soft(lobes, s), _jit(g, (0.35, 0.1, 0.45), len(sel), 0.05)
        if c == 0:  # central pallor
            return dr.soft(_ellipse(uu, vv, rr * 0.4, rr * 0.35), s) * 0.6, _jit(g, (0.97, 0.75, 0.75), len(sel), 0.03)
        return torch.zeros(len(sel), *dx.shape[1:]), torch.zeros(len(sel), 3)

    return [by_class(cls, 3, s, body), by_class(cls, 3, s, nucleus)]


def _draw_reef(g, cls, cx, cy, r, xx, yy, s):
    dx, dy = xx - cx, yy - cy
    n = len(cls)
    flip = dr.column(torch.where(dr.uniform(g, n) < 0.5, -1.0, 1.0))
    fish_col = dr.hsv(dr.uniform(g, n, 0.05, 0.16), dr.uniform(g, n, 0.7, 1.0), dr.uniform(g, n, 0.8, 1.0))

    def fn(c: int, sel: Tensor) -> tuple[Tensor, Tensor]:
        x, y, rr = dx[sel] * flip[sel], dy[sel], r[sel]
        if c == 0:  # fish: an ellipse body and a triangular tail
            bodym = _ellipse(x + rr * 0.25, y, rr * 0.7, rr * 0.4)
            tail = torch.maximum(-(x - rr * 0.45), (y.abs() - (x - rr * 0.45)) * 0.7) - 0.0
            tail = torch.maximum(tail, x - rr)
            return dr.soft(torch.minimum(bodym, tail), s), fish_col[sel]
        if c == 1:  # jellyfish: a dome with a fringe
            dome = torch.maximum(torch.sqrt(x * x + (y + rr * 0.2) ** 2) - rr * 0.8, y - rr * 0.2)
            fringe = torch.maximum(_rect(x, y - rr * 0.55, rr * 0.6, rr * 0.35),
                                   -(torch.sin(x / rr * 12).abs() - 0.5) * rr * 0.2)
            return dr.soft(torch.minimum(dome, fringe), s), _jit(g, (0.95, 0.7, 0.85), len(sel), 0.05)
        return dr.soft(dr.shape_sdf("cross", x, y, rr, torch.full_like(rr, 0.6)), s), _jit(g, (0.15, 0.05, 0.2), len(sel), 0.04)

    return [by_class(cls, 3, s, fn)]


def _haze(g: torch.Generator, img: Tensor, bg: Tensor) -> Tensor:
    a = dr.uniform(g, len(img), 0.25, 0.45).view(-1, 1, 1, 1)
    return img * (1 - a) + bg * a


def _draw_forms(g, cls, cx, cy, r, xx, yy, s):
    dx, dy = xx - cx, yy - cy
    n = len(cls)
    aspect = dr.column(dr.uniform(g, n, 0.45, 0.75))

    def box(c: int, sel: Tensor) -> tuple[Tensor, Tensor]:
        x, y, rr, a = dx[sel], dy[sel], r[sel], aspect[sel]
        if c == 2:  # stamp: a coloured ring
            ring = (torch.sqrt(x * x + y * y) - rr * 0.7).abs() - rr * 0.12
            col = torch.tensor([[0.8, 0.1, 0.1], [0.1, 0.2, 0.8]])[torch.randint(2, (len(sel),), generator=g)]
            return dr.soft(ring, s), col
        if c == 0:  # table: a white panel (its rules are the second layer)
            return dr.soft(_rect(x, y, rr, rr * a), s), torch.full((len(sel), 3), 0.99)
        return dr.soft(_rect(x, y, rr * a, rr), s), dr.rand_colour(g, len(sel), s=(0.4, 0.9), v=(0.4, 0.9))  # figure

    def rules(c: int, sel: Tensor) -> tuple[Tensor, Tensor]:
        x, y, rr, a = dx[sel], dy[sel], r[sel], aspect[sel]
        if c != 0:
            return torch.zeros(len(sel), *dx.shape[1:]), torch.zeros(len(sel), 3)
        inside = dr.soft(_rect(x, y, rr, rr * a), s)
        gx = ((x + rr) / (rr * 0.5)) % 1
        gy = ((y + rr * a) / (rr * a * 0.5)) % 1
        line = ((gx < 0.12) | (gy < 0.2)).float()
        edge = (_rect(x, y, rr, rr * a).abs() < 1.5 / s).float()
        return torch.maximum(line * inside, edge), torch.full((len(sel), 3), 0.1)

    return [by_class(cls, 3, s, box), by_class(cls, 3, s, rules)]


def _draw_radar(g, cls, cx, cy, r, xx, yy, s):
    dx, dy = xx - cx, yy - cy
    n = len(cls)
    ang = dr.column(dr.uniform(g, n, -0.4, 0.4))
    u, v = dr.rotate(dx, dy, ang)
    hot = dr.hsv(dr.uniform(g, n, 0.0, 0.17), dr.uniform(g, n, 0.3, 0.9), torch.ones(n))

    def fn(c: int, sel: Tensor) -> tuple[Tensor, Tensor]:
        uu, vv, rr = u[sel], v[sel], r[sel]
        if c == 0:  # hotspot: a bright blob with a soft halo
            d = torch.sqrt(uu * uu + vv * vv)
            return ((1 - d / rr) * 2).clamp(0, 1), hot[sel]
        if c == 1:  # streak: a long thin bright line
            return dr.soft(_rect(uu, vv, rr, rr * 0.15), s), hot[sel]
        return dr.soft((torch.sqrt(uu * uu + vv * vv) - rr * 0.75).abs() - rr * 0.15, s), _jit(g, (0.3, 1.0, 0.5), len(sel), 0.1)

    return [by_class(cls, 3, s, fn)]


def _draw_street(g, cls, cx, cy, r, xx, yy, s):
    dx, dy = xx - cx, yy - cy
    n = len(cls)
    ball_col = dr.rand_colour(g, n, s=(0.6, 1.0), v=(0.6, 1.0))

    def body(c: int, sel: Tensor) -> tuple[Tensor, Tensor]:
        x, y, rr = dx[sel], dy[sel], r[sel]
        z = torch.zeros_like(rr)
        if c == 0:  # ball
            return dr.soft(torch.sqrt(x * x + y * y) - rr * 0.85, s), ball_col[sel]
        if c == 1:  # crate
            return dr.soft(_rect(x, y, rr * 0.85, rr * 0.85), s), _jit(g, (0.6, 0.4, 0.2), len(sel), 0.06)
        return dr.soft(dr.shape_sdf("triangle", x, y, rr * 1.15, z), s), _jit(g, (1.0, 0.5, 0.05), len(sel), 0.05)

    def detail(c: int, sel: Tensor) -> tuple[Tensor, Tensor]:
        x, y, rr = dx[sel], dy[sel], r[sel]
        if c == 0:  # highlight
            return dr.soft(torch.sqrt((x + rr * 0.3) ** 2 + (y + rr * 0.3) ** 2) - rr * 0.25, s) * 0.7, torch.ones(len(sel), 3)
        if c == 1:  # planks
            inside = dr.soft(_rect(x, y, rr * 0.85, rr * 0.85), s)
            return inside * ((((y + rr) / (rr * 0.4)) % 1) < 0.2).float(), torch.full((len(sel), 3), 0.3)
        stripe = dr.soft(_rect(x, y - rr * 0.1, rr, rr * 0.08), s)
        tri = dr.soft(dr.shape_sdf("triangle", x, y, rr * 1.15, torch.zeros_like(rr)), s)
        return stripe * tri, torch.ones(len(sel), 3)

    return [by_class(cls, 3, s, body), by_class(cls, 3, s, detail)]


DOMAINS: dict[str, Domain] = {
    "rooftops": Domain(("car", "tree", "pool"), 4, (3, 9), (0.45, 0.75), _bg_ground, _draw_rooftops),
    "arcade": Domain(("hero", "coin", "ghost"), 3, (1, 5), (0.55, 0.9), _bg_arcade, _draw_arcade, noise=0.01),
    "cells": Domain(("red cell", "white cell", "platelet"), 4, (4, 10), (0.6, 0.95), _bg_slide, _draw_cells),
    "reef": Domain(("fish", "jellyfish", "urchin"), 3, (1, 4), (0.55, 0.9), _bg_water, _draw_reef, noise=0.04,
                   post=_haze),
    "forms": Domain(("table", "figure", "stamp"), 2, (1, 3), (0.55, 0.9), _bg_page, _draw_forms, noise=0.02),
    "radar": Domain(("hotspot", "streak", "arc"), 3, (1, 5), (0.45, 0.85), _bg_speckle, _draw_radar, noise=0.05),
    "street": Domain(("ball", "crate", "cone"), 2, (1, 3), (0.55, 0.9), _bg_street, _draw_street),
}
assert list(DOMAINS) == TINY_TASKS


def _split_seed(seed: int, task: str, split: str) -> int:
    return (seed * 1_000_003 + TINY_TASKS.index(task) * 1009 + SPLITS.index(split) * 17 + 5) % (2**63)


def generate_task(task: str, split: str, n: int, image_size: int, seed: int) -> tuple[Tensor, list[dict[str, Any]]]:
    """One split of one generated domain: ``uint8 [n, 3, S, S]`` images and their targets. Deterministic in
    (task, split, n, image size, seed)."""
    g = torch.Generator().manual_seed(_split_seed(seed, task, split))
    with torch.no_grad():
        x, boxes, labels = render_scenes(g, n, image_size, DOMAINS[task])
    targets = [{"boxes": b.float(), "labels": lab, "image_id": i} for i, (b, lab) in enumerate(zip(boxes, labels))]
    return x.contiguous(), targets


def pack_targets(targets: list[dict[str, Any]]) -> dict[str, Tensor]:
    """Targets -> flat tensors (``boxes [M, 4]``, ``labels [M]``, ``counts [N]``, ``image_ids [N]``) for storage."""
    return {
        "boxes": torch.cat([torch.as_tensor(t["boxes"]).reshape(-1, 4).float() for t in targets]) if targets else torch.zeros(0, 4),
        "labels": torch.cat([torch.as_tensor(t["labels"]).reshape(-1).long() for t in targets]) if targets else torch.zeros(0, dtype=torch.long),
        "counts": torch.tensor([len(t["labels"]) for t in targets], dtype=torch.long),
        "image_ids": torch.tensor([int(t["image_id"]) for t in targets], dtype=torch.long),
    }


def unpack_targets(p: dict[str, Tensor]) -> list[dict[str, Any]]:
    out, pos = [], 0
    for c, i in zip(p["counts"].tolist(), p["image_ids"].tolist()):
        out.append({"boxes": p["boxes"][pos : pos + c], "labels": p["labels"][pos : pos + c], "image_id": i})
        pos += c
    return out


# ----------------------------------------------------------------------------------------------------------------
# The suite


@SUITES.register(
    "rf100_7",
    summary="7 detection domains: paper = RF100 Aerial, Videogames, Microscopic, Underwater, Documents, "
    "Electromagnetic, Real World (COCO exports); tiny/micro = 7 generated offline look-alikes (rooftops, arcade, "
    "cells, reef, forms, radar, street)",
    paper="Ciaglia et al. 2022 (RF100); auto-flexswitch.txt Sec. IV-A2, Table VII",
)
class RF100(GeneratedSuite):
    modality = "image"
    paper_tasks = tuple(PAPER_TASKS)
    tiny_tasks = tuple(TINY_TASKS)
    profile_sizes = PROFILE_SIZES
    sources = (dr, scenes)

    def generate(self, task: str, split: str) -> dict[str, Tensor]:
        x, targets = generate_task(task, split, self.sizes[split], self.sizes["image_size"], self.seed)
        return {"inputs": x, **pack_targets(targets)}

    def tiny_classnames(self, task: str) -> list[str]:
        return list(DOMAINS[task].classes)

    def load_paper(self, task: str, split: str) -> TaskData:
        from tasks.rf100_paper import load_rf100_task

        return load_rf100_task(task, split, data_root=self.data_root)

    def task_data(self, task: str, split: str, tensors: dict[str, Tensor]) -> TaskData:
        targets = unpack_targets({k: tensors[k] for k in ("boxes", "labels", "counts", "image_ids")})
        return TaskData(inputs=tensors["inputs"], targets=targets, classes=self.tiny_classnames(task),
                        meta={"task": task, "split": split, "profile": self.profile, "generated": True})

    def metric(self, task: str) -> Metric:
        self.check(task, "test")
        n_cls = len(self.classnames(task)) if self.profile != "paper" else len(self.load(task, "test").classes or []) or None
        return MeanAP50(n_cls)
