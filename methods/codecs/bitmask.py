"""``bitmask``: boolean tensors packed 8 per byte (numpy.packbits order), the baselines' mask format.

A dict of masks decodes into a :class:`~benchmark.storage.PackedMasks`, which stays packed in RAM and unpacks one
mask per access (8 tasks' masks of a model would otherwise take 2 float32 model copies as ``bool``). Every part's
size is checked against its shape, and its decoded size reserved, when the file is read, not on access."""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor

from benchmark.registry import CODECS
from benchmark.storage import (Codec, PackedMask, PackedMasks, StorageError, numel_of, pack_bits, part, reserve,
                               shape_of, unpack_bits)


def _packed(v: Any) -> Tensor:
    return v.bits if isinstance(v, PackedMask) else pack_bits(v)


@CODECS.register("bitmask", summary="A boolean tensor (or a dict of them) packed 8 entries per byte.")
class BitmaskCodec(Codec):
    def encode(self, value: Any) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """``value``: a bool tensor, or a mapping of bool tensors / :class:`~benchmark.storage.PackedMask` s (the
        file is the same either way)."""
        if isinstance(value, Tensor):
            return {"bits": pack_bits(value)}, {"shape": list(value.shape)}
        if isinstance(value, PackedMasks):
            value = value.packed
        return ({k: _packed(v) for k, v in value.items()},
                {"shapes": {k: list(v.shape) for k, v in value.items()}})

    def decode(self, parts: Mapping[str, Tensor], meta: Mapping[str, Any]) -> Any:
        """Every shape is checked against the bytes of its part before a bit is unpacked (``unpack_bits``)."""
        what = "bitmask artifact"
        if not isinstance(meta, Mapping):
            raise StorageError(f"{what}: meta must be a JSON object")

        if "shape" in meta:
            dims = shape_of(meta["shape"], what)
            return unpack_bits(part(parts, "bits", what, torch.uint8), numel_of(dims)).reshape(dims)
        shapes = meta.get("shapes")
        if not isinstance(shapes, Mapping):
            raise StorageError(f"{what}: meta has neither 'shape' nor 'shapes'")
        out = {}
        for k, s in shapes.items():
            dims = shape_of(s, what)
            out[k] = PackedMask(part(parts, k, what, torch.uint8), dims)  # checks the size against the shape
            reserve(numel_of(dims), "packed mask")
        return PackedMasks(out)
