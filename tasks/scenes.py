"""Detection scenes for the generated detection suite (``rf100_7``) and the detector's generic pretraining scenes:
objects in distinct cells of a jittered grid, drawn by a :class:`Domain`'s background and per-class draw functions
(:mod:`tasks.drawing`), with boxes read from the rendered masks, so every box is exactly the object's pixels.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from tasks import drawing as dr

__all__ = ["Layer", "Draw", "Domain", "render_scenes", "by_class"]


Layer = tuple[Tensor, Tensor]  # (mask [n, S, S] in [0, 1], colour [n, 3] or image [n, 3, S, S])
# (generator, class ids [n], centre x [n,1,1], centre y [n,1,1], radius [n,1,1], xx, yy, side) -> layers
Draw = Callable[[torch.Generator, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, int], list[Layer]]


@dataclass(frozen=True)
class Domain:
    classes: tuple[str, ...]
    grid: int  # G: objects sit in distinct cells of a G x G grid
    count: tuple[int, int]  # objects per image, inclusive
    size: tuple[float, float]  # object radius as a fraction of half a cell
    background: Callable[[torch.Generator, int, int], Tensor]  # -> float [n, 3, S, S] in [0, 1]
    draw: Draw
    noise: float = 0.03
    post: Callable[[torch.Generator, Tensor, Tensor], Tensor] | None = None  # (g, image, background) -> image


def render_scenes(g: torch.Generator, n: int, s: int, dom: Domain) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """``n`` scenes of ``dom``: ``uint8 [n, 3, s, s]`` images, and per image its boxes (``float32 [m, 4]``, xyxy
    pixels) and labels (``int64 [m]``).

    Each object is drawn on a local window around its grid cell (cell +- 4 px, aligned to 4 px so pixelated sprites
    stay on the image's block grid); ``dom.draw`` gets the window's pixel-centre coordinates (``[n, P, P]``, in the
    image's [-1, 1] units) and returns masks on that window."""
    bg = dom.background(g, n, s)
    img = bg.clone()
    gsz = dom.grid
    cell = 2.0 / gsz
    k = torch.randint(dom.count[0], dom.count[1] + 1, (n,), generator=g)
    order = torch.argsort(torch.rand(n, gsz * gsz, generator=g), dim=1)
    win = min(s, int(math.ceil(s / gsz / 4)) * 4 + 8)
    ar = torch.arange(win)
    ii = torch.arange(n)
    slot_boxes, slot_labels, slot_valid = [], [], []
    for j in range(dom.count[1]):
        present = k > j
        c = order[:, j]
        r = dr.uniform(g, n, *dom.size) * cell / 2
        slack = (cell / 2 - r).clamp_min(0)
        cx = -1 + cell * ((c % gsz).float() + 0.5) + (torch.rand(n, generator=g) * 2 - 1) * slack
        cy = -1 + cell * ((c // gsz).float() + 0.5) + (torch.rand(n, generator=g) * 2 - 1) * slack
        cls = torch.randint(len(dom.classes), (n,), generator=g)
        # the window: top-left corner in pixels, a multiple of 4, inside the image
        ox = (((c % gsz).float() * s / gsz - 4).floor().long() // 4 * 4).clamp(0, s - win)
        oy = (((c // gsz).float() * s / gsz - 4).floor().long() // 4 * 4).clamp(0, s - win)
        rows, cols = oy[:, None] + ar, ox[:, None] + ar  # [n, P]
        xx = ((cols.float() + 0.5) / s * 2 - 1)[:, None, :].expand(n, win, win)
        yy = ((rows.float() + 0.5) / s * 2 - 1)[:, :, None].expand(n, win, win)
        layers = dom.draw(g, cls, dr.column(cx), dr.column(cy), dr.column(r), xx, yy, s)
        at = (ii[:, None, None], slice(None), rows[:, :, None], cols[:, None, :])
        patch = img[at].permute(0, 3, 1, 2)  # [n, 3, P, P]
        union = torch.zeros(n, win, win)
        for mask, colour in layers:
            m = mask * dr.column(present.float())
            if colour.ndim == 4:
                colour = colour[at].permute(0, 3, 1, 2)
            patch = dr.paint(patch, m, colour)
            union = torch.maximum(union, m)
        img[at] = patch.permute(0, 2, 3, 1)
        on = union > 0.5
        occ_x, occ_y = on.any(1), on.any(2)  # [n, P]: occupied columns (x), occupied rows (y)
        x0 = torch.where(occ_x, ar, win + 1).amin(1) + ox
        x1 = torch.where(occ_x, ar, -1).amax(1) + 1 + ox
        y0 = torch.where(occ_y, ar, win + 1).amin(1) + oy
        y1 = torch.where(occ_y, ar, -1).amax(1) + 1 + oy
        slot_boxes.append(torch.stack([x0, y0, x1, y1], 1).float())
        slot_labels.append(cls)
        slot_valid.append(present & (x1 - x0 >= 2) & (y1 - y0 >= 2))  # drop objects under 2 px
    all_boxes, all_labels, valid = torch.stack(slot_boxes, 1), torch.stack(slot_labels, 1), torch.stack(slot_valid, 1)
    out_boxes = [all_boxes[i][valid[i]].contiguous() for i in range(n)]
    out_labels = [all_labels[i][valid[i]].contiguous() for i in range(n)]
    if dom.post is not None:
        img = dom.post(g, img, bg)
    return dr.finish(img, g, dom.noise), out_boxes, out_labels


def by_class(cls: Tensor, n_cls: int, s: int, fn: Callable[[int, Tensor], tuple[Tensor, Tensor]]) -> Layer:
    """One layer whose mask and colour depend on the class: ``fn(class, rows) -> (mask [r, S, S], colour [r, 3])``."""
    n = len(cls)
    mask, colour = None, torch.zeros(n, 3)
    for c in range(n_cls):
        sel = (cls == c).nonzero().flatten()
        if len(sel):
            m, col = fn(c, sel)
            if mask is None:
                mask = torch.zeros(n, *m.shape[1:])
            mask[sel], colour[sel] = m, col
    return (mask if mask is not None else torch.zeros(n, s, s)), colour
