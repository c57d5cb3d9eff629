"""``json``: small structured values (learned coefficients, configs) stored as UTF-8 JSON bytes."""
from __future__ import annotations

import json
from typing import Any, Mapping

import torch
from torch import Tensor

from benchmark.registry import CODECS
from benchmark.storage import Codec, StorageError, part, reserve

#: Python objects per byte of JSON at most (a list of one-digit numbers: a pointer per 2 bytes); see ``decode``
_PARSED_PER_BYTE = 8


@CODECS.register("json", summary="A small JSON-able value stored as UTF-8 bytes.")
class JsonCodec(Codec):
    def encode(self, value: Any) -> tuple[dict[str, Tensor], dict[str, Any]]:
        raw = json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
        return {"utf8": torch.frombuffer(bytearray(raw), dtype=torch.uint8)}, {}

    def decode(self, parts: Mapping[str, Tensor], meta: Mapping[str, Any]) -> Any:
        """Bytes -> value; the parsed value is at most a small multiple of the bytes present (reserved first), and
        deep nesting, huge integers or bad UTF-8 are a :class:`StorageError` like any other damage."""
        what = "json artifact"
        raw = part(parts, "utf8", what, torch.uint8)
        if raw.dim() != 1:
            raise StorageError(f"{what}: the 'utf8' part must be a flat byte tensor")
        reserve(_PARSED_PER_BYTE * raw.numel(), what)
        try:
            return json.loads(bytes(raw.numpy()).decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError
            raise StorageError(f"{what} is corrupted ({type(e).__name__}: {str(e)[:80]})") from None
