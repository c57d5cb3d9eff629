"""A state dict that stays on disk: :class:`LazyState` reads one tensor of a safetensors file per access.

Why positional reads (``os.pread`` into a freshly allocated tensor) rather than ``mmap``: the pages of a
memory-mapped file count in the process's RSS once touched and stay resident until the kernel needs them, so a
merge that walks 8 mapped models tensor by tensor ends with all 8 resident. A tensor read with ``pread`` is an
ordinary allocation, freed as soon as the merge drops it; the pool then holds one tensor per task at a time.
"""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch
from torch import Tensor

_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}
_NAMES = {v: k for k, v in _DTYPES.items()}


class LazyState(Mapping[str, Tensor]):
    """``key -> tensor`` over a safetensors file; each ``[key]`` reads that tensor's bytes (nothing is cached)."""

    def __init__(self, path: str | os.PathLike, keys: list[str] | None = None):
        self.path = Path(path)
        with open(self.path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        header.pop("__metadata__", None)
        self._base = 8 + n
        self._meta = {k: header[k] for k in (keys if keys is not None else header)}

    def __getitem__(self, key: str) -> Tensor:
        m = self._meta[key]
        start, end = m["data_offsets"]
        out = torch.empty(m["shape"], dtype=_DTYPES[m["dtype"]])
        buf = memoryview(out.view(-1).view(torch.uint8).numpy()) if out.numel() else memoryview(b"")
        fd = os.open(self.path, os.O_RDONLY)
        try:
            got = 0
            while got < end - start:  # pread may return fewer bytes than asked
                k = os.preadv(fd, [buf[got:]], self._base + start + got)
                if k <= 0:
                    raise OSError(f"{self.path}: short read of {key!r}")
                got += k
        finally:
            os.close(fd)
        return out

    def __contains__(self, key: object) -> bool:  # Mapping's default would read the tensor
        return key in self._meta

    def __iter__(self) -> Iterator[str]:
        return iter(self._meta)

    def __len__(self) -> int:
        return len(self._meta)

    def restricted(self, keys: list[str]) -> "LazyState":
        """The same file with only ``keys``, in that order (its header is not read again); a ``KeyError`` names
        the keys the file lacks."""
        missing = [k for k in keys if k not in self._meta]
        if missing:
            raise KeyError(f"{self.path} lacks {', '.join(missing[:3])}")
        out = object.__new__(LazyState)
        out.path, out._base, out._meta = self.path, self._base, {k: self._meta[k] for k in keys}
        return out

    def numel(self, key: str) -> int:
        n = 1
        for d in self._meta[key]["shape"]:
            n *= d
        return n


def save_streaming(state: Mapping[str, Tensor], path: str | os.PathLike) -> None:
    """Write ``state`` as a safetensors file one tensor at a time (a :class:`LazyState` source is never held
    whole). Keys in ``state``'s order; the layout is the safetensors format (8-byte header length, JSON, data)."""
    header, off = {}, 0
    lazy = isinstance(state, LazyState)  # its header gives shapes and sizes without reading a tensor
    for k in state:
        if lazy:
            m = state._meta[k]
            shape, dt, nbytes = m["shape"], m["dtype"], m["data_offsets"][1] - m["data_offsets"][0]
        else:
            t = state[k]
            shape, dt, nbytes = list(t.shape), _NAMES[t.dtype], t.numel() * t.element_size()
        header[k] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + nbytes]}
        off += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-aligned, as safetensors writes it
    tmp = Path(f"{path}.tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for k in state:
            t = state[k].contiguous()
            f.write(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
            del t
    os.replace(tmp, path)


#: the file name of a state converted into a cache entry by :func:`cached_state`
STATE_FILE = "state.safetensors"


def cached_state(cache, name: str, config: Any, version: str, read: Callable[[], Mapping[str, Tensor]],
                 keys: list[str] | None = None) -> LazyState:
    """A state converted once into a cache entry, then read from there one tensor at a time.

    ``read()`` is called only when the entry does not exist yet (or fails verification): it returns the state to
    store (e.g. a checkpoint read whole and checked, converted to float32); it is written with
    :func:`save_streaming` and dropped, so at most one such state is in RAM at a time. ``config`` must name what
    the state is derived from (the checkpoint's sha256 and the conversion), since it keys the entry.
    ``cache`` is a :class:`benchmark.cache.Cache`."""

    def build(tmp: Path) -> None:
        save_streaming(read(), tmp / STATE_FILE)

    entry = cache.get_or_build(name, config, 0, version, build)
    return LazyState(entry / STATE_FILE, keys)
