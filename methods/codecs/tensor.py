"""``tensor`` and ``state_dict``: float tensors in their natural dtype, as safetensors stores them."""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor

from benchmark.registry import CODECS, Param
from benchmark.storage import Codec, StorageError

_DTYPES = {"natural": None, "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@CODECS.register(
    "tensor",
    summary="One tensor, stored as is (natural dtype) or cast to a float dtype.",
    params=[Param("dtype", str, "natural", "storage dtype for float tensors", choices=tuple(_DTYPES))],
)
class TensorCodec(Codec):
    @property
    def lossless(self) -> bool:  # type: ignore[override]
        return self.params.get("dtype", "natural") == "natural"

    def _cast(self, t: Tensor) -> Tensor:
        dtype = _DTYPES[self.params.get("dtype", "natural")]
        return t.to(dtype) if dtype is not None and t.is_floating_point() else t

    def encode(self, value: Any) -> tuple[dict[str, Tensor], dict[str, Any]]:
        if not isinstance(value, Tensor):
            value = torch.as_tensor(value)
        return {"data": self._cast(value)}, {"dtype": str(value.dtype).removeprefix("torch.")}

    def decode(self, parts: Mapping[str, Tensor], meta: Mapping[str, Any]) -> Any:
        return parts["data"].to(getattr(torch, meta["dtype"]))


@CODECS.register(
    "state_dict",
    summary="A dict of named tensors (a model's mergeable weights), each in its natural dtype or cast.",
    params=[Param("dtype", str, "natural", "storage dtype for float tensors", choices=tuple(_DTYPES))],
)
class StateDictCodec(TensorCodec):
    def encode(self, value: Any) -> tuple[dict[str, Tensor], dict[str, Any]]:
        parts = {}
        dtypes = {}
        for k, t in value.items():
            parts[k] = self._cast(t)
            dtypes[k] = str(t.dtype).removeprefix("torch.")
        return parts, {"dtypes": dtypes}

    def decode(self, parts: Mapping[str, Tensor], meta: Mapping[str, Any]) -> Any:
        try:
            return {k: parts[k].to(getattr(torch, d)) for k, d in meta["dtypes"].items()}
        except KeyError as e:
            raise StorageError(f"state_dict artifact lacks tensor {e}") from None
