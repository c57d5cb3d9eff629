"""``json``: small structured values (learned coefficients, configs) stored as UTF-8 JSON bytes."""
from __future__ import annotations

import json
from typing import Any, Mapping

import torch
from torch import Tensor

from benchmark.registry import CODECS
from benchmark.storage import Codec, StorageError


@CODECS.register("json", summary="A small JSON-able value stored as UTF-8 bytes.")
class JsonCodec(Codec):
    def encode(self, value: Any) -> tuple[dict[str, Tensor], dict[str, Any]]:
        raw = json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
        return {"utf8": torch.frombuffer(bytearray(raw), dtype=torch.uint8)}, {}

    def decode(self, parts: Mapping[str, Tensor], meta: Mapping[str, Any]) -> Any:
        try:
            return json.loads(bytes(parts["utf8"].numpy()).decode())
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise StorageError(f"json artifact is corrupted ({e})") from None
