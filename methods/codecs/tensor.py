"""``tensor`` and ``state_dict``: float tensors in their natural dtype, as safetensors stores them."""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor

from benchmark.registry import CODECS, Param
from benchmark.storage import Codec, StorageError, dtype_of, part, reserve

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
        what = "tensor artifact"
        if not isinstance(meta, Mapping):
            raise StorageError(f"{what}: meta must be a JSON object")
        return _restore(part(parts, "data", what), meta.get("dtype"), what)


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
        what = "state_dict artifact"
        dtypes = meta.get("dtypes") if isinstance(meta, Mapping) else None
        if not isinstance(dtypes, Mapping):
            raise StorageError(f"{what}: meta has no 'dtypes' object")
        return {k: _restore(part(parts, k, f"{what} tensor {k!r}"), d, f"{what} tensor {k!r}")
                for k, d in dtypes.items()}


def _restore(t: Tensor, dtype_name: Any, what: str) -> Tensor:
    """``t`` cast back to the dtype it was encoded from (one of the storage module's DTYPES); the cast's output is
    reserved from the decode budget first (a float16 part restored to float64 is four times its bytes)."""
    dtype = dtype_of(dtype_name, what)
    if dtype != t.dtype:
        reserve(t.numel() * torch.empty(0, dtype=dtype).element_size(), what)
    return t.to(dtype)
