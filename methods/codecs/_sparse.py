"""The value type the switch codecs (``sass``, ``packbits``, the entropy codec) store.

A switch-style task vector is, per module, a set of active positions and one b-bit code per active position:
T-Switch stores the polarity bit (b = 1); FlexSwitch stores a quantization level (b in {1, 2, 4, 8}). Float side
information (knobs, quantizer ranges) is small and is stored as separate ``tensor`` artifacts.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class SparseCodes:
    """One module's sparse codes.

    ``shape``: the module's tensor shape; ``mask``: flat bool ``[n]``, n = prod(shape); ``codes``: uint8 ``[nnz]``
    in ``[0, 2**bits)``, in the order of the active positions; ``bits``: b in 1..8.
    """

    shape: tuple[int, ...]
    mask: Tensor
    codes: Tensor
    bits: int

    def __post_init__(self) -> None:
        self.shape = tuple(int(s) for s in self.shape)
        if self.mask.dtype != torch.bool or self.mask.dim() != 1:
            raise ValueError("mask must be a flat bool tensor")
        if self.codes.dtype != torch.uint8 or self.codes.dim() != 1:
            raise ValueError("codes must be a flat uint8 tensor")
        if not 1 <= self.bits <= 8:
            raise ValueError(f"bits must be in 1..8, got {self.bits}")

    @property
    def n(self) -> int:
        return self.mask.numel()

    @property
    def nnz(self) -> int:
        return self.codes.numel()

    def equal(self, other: "SparseCodes") -> bool:
        return (
            self.shape == other.shape
            and self.bits == other.bits
            and torch.equal(self.mask, other.mask)
            and torch.equal(self.codes, other.codes)
        )
