"""Drawing primitives for the generated image suites (``vision8``, ``rf100_7``) and the image backbones' generic
pretraining images: batched, torch, CPU, and every random draw comes from the ``torch.Generator`` passed in, so a
drawing is a pure function of its generator's state.

Coordinates are pixel centres in [-1, 1]; masks are ``[N, S, S]`` in [0, 1]; colours are ``[N, 3]`` RGB in [0, 1];
images are float ``[N, 3, S, S]`` until :func:`finish` quantizes them to ``uint8``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ['uniform', 'column', 'grid', 'hsv', 'rand_colour', 'jitter_colour', 'paint', 'flat', 'soft', 'rotate', 'shape_sdf', 'smooth_noise', 'warp', 'finish', 'balanced_labels', 'luma', 'contrasting']



def uniform(g: torch.Generator, n: int, lo: float = 0.0, hi: float = 1.0) -> Tensor:
    return torch.rand(n, generator=g) * (hi - lo) + lo


def column(x: Tensor) -> Tensor:
    """[N] -> [N, 1, 1] for broadcasting against [N, S, S] grids."""
    return x.view(-1, 1, 1)


def grid(s: int) -> tuple[Tensor, Tensor]:
    """Pixel-centre coordinates in [-1, 1]: ``yy, xx`` of shape ``[1, S, S]``."""
    c = (torch.arange(s, dtype=torch.float32) + 0.5) / s * 2 - 1
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    return yy[None], xx[None]


def hsv(h: Tensor, s: Tensor, v: Tensor) -> Tensor:
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


def rand_colour(g: torch.Generator, n: int, s: tuple[float, float] = (0.3, 1.0), v: tuple[float, float] = (0.2, 1.0)) -> Tensor:
    return hsv(uniform(g, n), uniform(g, n, *s), uniform(g, n, *v))


def jitter_colour(g: torch.Generator, base: Tensor, amount: float) -> Tensor:
    return (base + (torch.rand(base.shape, generator=g) * 2 - 1) * amount).clamp(0, 1)


def paint(img: Tensor, mask: Tensor, colour: Tensor) -> Tensor:
    """Alpha-blend ``colour [N, 3]`` (or an image ``[N, 3, S, S]``) into ``img [N, 3, S, S]`` through ``mask [N, S, S]``."""
    m = mask[:, None]
    c = colour[:, :, None, None] if colour.ndim == 2 else colour
    return img * (1 - m) + c * m


def flat(colour: Tensor, s: int) -> Tensor:
    return colour[:, :, None, None].expand(-1, -1, s, s).clone()


def soft(sdf: Tensor, s: int) -> Tensor:
    """Anti-aliased inside-mask of a signed distance (in [-1, 1] image units; negative inside)."""
    return (0.5 - sdf * s / 2).clamp(0, 1)


def rotate(dx: Tensor, dy: Tensor, ang: Tensor) -> tuple[Tensor, Tensor]:
    c, s = torch.cos(ang), torch.sin(ang)
    return c * dx + s * dy, -s * dx + c * dy


def shape_sdf(kind: str, dx: Tensor, dy: Tensor, r: Tensor, ang: Tensor) -> Tensor:
    u, v = rotate(dx, dy, ang)
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


def smooth_noise(g: torch.Generator, n: int, s: int, cells: int, channels: int = 3) -> Tensor:
    """Low-frequency noise in [0, 1]: ``cells x cells`` uniform values upsampled (bicubic) to ``S x S``."""
    z = torch.rand(n, channels, cells, cells, generator=g)
    return F.interpolate(z, size=(s, s), mode="bicubic", align_corners=False).clamp(0, 1)


def warp(src: Tensor, s: int, scale: Tensor, ang: Tensor, tx: Tensor, ty: Tensor) -> Tensor:
    """Place ``src [N, 1, h, w]`` (values in [0, 1]) into an ``S x S`` canvas, scaled to ``scale`` of the canvas,
    rotated by ``ang`` and centred at ``(tx, ty)`` (in [-1, 1] units). Returns ``[N, S, S]``."""
    c, si = torch.cos(ang), torch.sin(ang)
    a = torch.stack([torch.stack([c, si], 1), torch.stack([-si, c], 1)], 1) / scale.view(-1, 1, 1)
    t = torch.stack([tx, ty], 1)[:, :, None]
    theta = torch.cat([a, -(a @ t)], 2)
    grid = F.affine_grid(theta, [src.shape[0], 1, s, s], align_corners=False)
    return F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[:, 0]


def finish(img: Tensor, g: torch.Generator, noise: float) -> Tensor:
    """Add pixel noise, clip, quantize to ``uint8``."""
    if noise > 0:
        img = img + torch.randn(img.shape, generator=g) * noise
    return (img.clamp(0, 1) * 255).round().to(torch.uint8)


def balanced_labels(g: torch.Generator, n: int, c: int) -> Tensor:
    y = torch.arange(n) % c
    return y[torch.randperm(n, generator=g)]


def luma(c: Tensor) -> Tensor:
    return c @ torch.tensor([0.299, 0.587, 0.114])


def contrasting(g: torch.Generator, n: int, min_luma: float = 0.3) -> tuple[Tensor, Tensor]:
    """Two random colours ``[N, 3]`` whose luminances differ by at least ``min_luma``."""
    a, b = rand_colour(g, n), rand_colour(g, n)
    la = luma(a)
    target = torch.where(la > 0.5, la - min_luma - uniform(g, n, 0, 0.3), la + min_luma + uniform(g, n, 0, 0.3)).clamp(0.02, 0.98)
    lb = luma(b).clamp_min(1e-3)
    b = (b * (target / lb)[:, None]).clamp(0, 1)
    # clamping can undo the contrast for saturated colours: fall back to grey at the target luminance
    bad = (luma(b) - la).abs() < min_luma * 0.8
    b[bad] = target[bad, None].expand(-1, 3)
    return a, b
