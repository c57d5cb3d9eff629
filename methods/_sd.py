"""Pure helpers on state dicts shared by the methods (no registration here)."""
from __future__ import annotations

from typing import Iterable, Mapping

import torch
from torch import Tensor

from benchmark.contract import StateDict


def add(a: Mapping[str, Tensor], b: Mapping[str, Tensor], scale: float = 1.0) -> StateDict:
    """a + scale * b, key by key."""
    return {k: a[k] + scale * b[k] for k in a}


def weighted_sum(sds: Iterable[Mapping[str, Tensor]], weights: Iterable[float]) -> StateDict:
    out: StateDict = {}
    for sd, w in zip(sds, weights):
        for k, v in sd.items():
            out[k] = out[k] + w * v if k in out else w * v
    return out


def stack(sds: list[Mapping[str, Tensor]], key: str) -> Tensor:
    return torch.stack([sd[key] for sd in sds], dim=0)
