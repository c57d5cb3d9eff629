"""``bitmask``: boolean tensors packed 8 per byte (numpy.packbits order), the baselines' mask format."""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor

from benchmark.registry import CODECS
from benchmark.storage import Codec, StorageError, pack_bits, unpack_bits


@CODECS.register("bitmask", summary="A boolean tensor (or a dict of them) packed 8 entries per byte.")
class BitmaskCodec(Codec):
    def encode(self, value: Any) -> tuple[dict[str, Tensor], dict[str, Any]]:
        if isinstance(value, Tensor):
            return {"bits": pack_bits(value)}, {"shape": list(value.shape)}
        return {k: pack_bits(v) for k, v in value.items()}, {"shapes": {k: list(v.shape) for k, v in value.items()}}

    def decode(self, parts: Mapping[str, Tensor], meta: Mapping[str, Any]) -> Any:
        def one(bits: Tensor, shape: list[int]) -> Tensor:
            n = 1
            for s in shape:
                n *= s
            return unpack_bits(bits, n).reshape(shape)

        if "shape" in meta:
            return one(parts["bits"], meta["shape"])
        try:
            return {k: one(parts[k], s) for k, s in meta["shapes"].items()}
        except KeyError as e:
            raise StorageError(f"bitmask artifact lacks part {e}") from None
