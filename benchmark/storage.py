"""Artifact files: what a method stores, written by its codecs to one real file whose size is its storage.

Container format (``merge-bench-artifacts``, version 1): a safetensors file. Every artifact is encoded by its
codec into named parts (tensors; a bitstream is a ``uint8`` tensor) stored under ``"<artifact>::<part>"``. The
safetensors metadata key ``merge_bench`` holds a JSON index: for each artifact its codec, the codec's version and
the codec's own small metadata (shapes, dtypes, counts).

Storage = ``os.path.getsize`` of that file. The breakdown gives each artifact's encoded bytes and the container's
overhead (header + index), so the parts add up to the measured total exactly.
"""
from __future__ import annotations

import json
import os
import tempfile
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from benchmark.contract import Artifacts
from benchmark.registry import CODECS

FORMAT = "merge-bench-artifacts"
FORMAT_VERSION = 1
_SEP = "::"


class StorageError(ValueError):
    """An artifact file that cannot be read back: truncated, corrupted or of an unknown format."""


class Codec(ABC):
    """Encodes one artifact value into tensors. Register with ``CODECS.register(name, summary=..., params=...)``.

    ``encode`` returns ``(parts, meta)``: named tensors (whose bytes are the storage) and a small JSON-able dict.
    ``decode(parts, meta)`` must return the value bit-exactly for lossless codecs.
    """

    version: ClassVar[int] = 1
    lossless: ClassVar[bool] = True

    def __init__(self, **params: Any):
        self.params = params

    @abstractmethod
    def encode(self, value: Any) -> tuple[dict[str, Tensor], dict[str, Any]]: ...

    @abstractmethod
    def decode(self, parts: Mapping[str, Tensor], meta: Mapping[str, Any]) -> Any: ...


def get_codec(name: str, params: Mapping[str, Any] | None = None) -> Codec:
    plugin = CODECS.get(name)
    return plugin.obj(**plugin.resolve(params))


@dataclass
class Written:
    path: Path
    total_bytes: int
    breakdown: dict[str, dict[str, Any]]


def write_artifacts(artifacts: Artifacts, path: str | os.PathLike) -> Written:
    """Encode every artifact with its codec and write one file atomically. Returns the measured sizes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, Tensor] = {}
    index: dict[str, Any] = {}
    breakdown: dict[str, dict[str, Any]] = {}
    seen_ptrs: set[int] = set()
    for name, art in artifacts.items():
        if _SEP in name:
            raise ValueError(f"artifact name {name!r} may not contain {_SEP!r}")
        codec = get_codec(art.codec, art.codec_params)
        parts, meta = codec.encode(art.value)
        nbytes = 0
        for part, t in parts.items():
            t = t.detach().cpu().contiguous()
            if t.numel() and t.untyped_storage().data_ptr() in seen_ptrs:  # safetensors refuses shared storage
                t = t.clone()
            seen_ptrs.add(t.untyped_storage().data_ptr())
            tensors[f"{name}{_SEP}{part}"] = t
            nbytes += t.numel() * t.element_size()
        index[name] = {
            "codec": art.codec,
            "codec_version": codec.version,
            "codec_params": codec.params,
            "meta": meta,
            "parts": list(parts),
        }
        breakdown[name] = {"codec": art.codec, "bytes": nbytes}
    header = {"merge_bench": json.dumps({"format": FORMAT, "version": FORMAT_VERSION, "artifacts": index})}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=header)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    total = path.stat().st_size
    breakdown["container_overhead"] = {"codec": "safetensors", "bytes": total - sum(b["bytes"] for b in breakdown.values())}
    return Written(path, total, breakdown)


def read_artifacts(path: str | os.PathLike) -> dict[str, Any]:
    """Read and decode every artifact of a file written by :func:`write_artifacts`."""
    path = Path(path)
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise StorageError(f"{path}: not a readable artifact file ({e})") from None
    try:
        index = json.loads(meta["merge_bench"])
    except (KeyError, json.JSONDecodeError):
        raise StorageError(f"{path}: no merge-bench index in the file") from None
    if index.get("format") != FORMAT or index.get("version") != FORMAT_VERSION:
        raise StorageError(f"{path}: unsupported format {index.get('format')!r} v{index.get('version')!r}")
    out: dict[str, Any] = {}
    for name, entry in index["artifacts"].items():
        codec = get_codec(entry["codec"], entry.get("codec_params"))
        if codec.version != entry["codec_version"]:
            raise StorageError(
                f"{path}: artifact {name!r} was written by codec {entry['codec']} v{entry['codec_version']},"
                f" this build reads v{codec.version}"
            )
        try:
            parts = {p: tensors[f"{name}{_SEP}{p}"] for p in entry["parts"]}
        except KeyError as e:
            raise StorageError(f"{path}: artifact {name!r} lacks part {e}") from None
        out[name] = codec.decode(parts, entry["meta"])
    return out


def tensor_nbytes(t: Tensor) -> int:
    return t.numel() * t.element_size()


def pack_bits(mask: Tensor) -> Tensor:
    """Boolean tensor -> uint8 tensor, 8 entries per byte, MSB first (numpy.packbits order)."""
    import numpy as np

    flat = mask.detach().to(torch.bool).reshape(-1).cpu().numpy()
    return torch.from_numpy(np.packbits(flat))


def unpack_bits(packed: Tensor, n: int) -> Tensor:
    import numpy as np

    if packed.dtype != torch.uint8 or packed.numel() * 8 < n or packed.numel() > (n + 7) // 8:
        raise StorageError(f"packed mask of {packed.numel()} bytes does not hold {n} bits")
    bits = np.unpackbits(packed.cpu().numpy(), count=n)
    return torch.from_numpy(bits.astype(bool))
