"""``bitmask``: boolean tensors packed 8 per byte (numpy.packbits order), the baselines' mask format."""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor

from benchmark.registry import CODECS
from benchmark.storage import Codec, StorageError, numel_of, pack_bits, part, shape_of, unpack_bits


@CODECS.register("bitmask", summary="A boolean tensor (or a dict of them) packed 8 entries per byte.")
class BitmaskCodec(Codec):
    def encode(self, value: Any) -> tuple[dict[str, Tensor], dict[str, Any]]:
        if isinstance(value, Tensor):
            return {"bits": pack_bits(value)}, {"shape": list(value.shape)}
        return {k: pack_bits(v) for k, v in value.items()}, {"shapes": {k: list(v.shape) for k, v in value.items()}}

    def decode(self, parts: Mapping[str, Tensor], meta: Mapping[str, Any]) -> Any:
        """Every shape is checked against the bytes of its part before a bit is unpacked (``unpack_bits``)."""
        what = "bitmask artifact"
        if not isinstance(meta, Mapping):
            raise StorageError(f"{what}: meta must be a JSON object")

        def one(name: str, shape: Any) -> Tensor:
            dims = shape_of(shape, what)
            return unpack_bits(part(parts, name, what, torch.uint8), numel_of(dims)).reshape(dims)

        if "shape" in meta:
            return one("bits", meta["shape"])
        shapes = meta.get("shapes")
        if not isinstance(shapes, Mapping):
            raise StorageError(f"{what}: meta has neither 'shape' nor 'shapes'")
        return {k: one(k, s) for k, s in shapes.items()}
