"""Artifact files: what a method stores, written by its codecs to one real file whose size is its storage.

Container format (``merge-bench-artifacts``, version 1): a safetensors file. Every artifact is encoded by its
codec into named parts (tensors; a bitstream is a ``uint8`` tensor) stored under ``"<artifact>::<part>"``. The
safetensors metadata key ``merge_bench`` holds a JSON index: for each artifact its codec, the codec's version and
the codec's own small metadata (shapes, dtypes, counts).

Storage = ``os.path.getsize`` of that file. The breakdown gives each artifact's encoded bytes and the container's
overhead (header + index), so the parts add up to the measured total exactly.

Reading is bounded and typed. A file is untrusted input: a header may declare any size, and a 24-byte entropy
stream once decoded to a 2**28-entry mask, 843 bytes asked for ~128 GiB, and malformed indexes raised
``KeyError``/``TypeError``/``RecursionError``. So :func:`read_artifacts` checks the file's sha256 against the one
:func:`write_artifacts` measured (when the caller has it), validates the index's types, and decodes under a budget
of decoded bytes (:func:`decode_budget`, sized by the caller from the model being loaded:
:func:`decode_limit_for`). Codecs call :func:`reserve` with the bytes a declared size would allocate *before*
allocating them, after checking it against the bytes actually present. Every failure is a :class:`StorageError`.
"""
from __future__ import annotations

import contextvars
import json
import os
import tempfile
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Iterator, Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file
from torch import Tensor

from benchmark.cache import sha256_file
from benchmark.contract import Artifacts
from benchmark.errors import StorageError
from benchmark.registry import CODECS, RegistryError

FORMAT = "merge-bench-artifacts"
FORMAT_VERSION = 1
_SEP = "::"




#: decoded bytes one read may produce when no caller set a budget (a direct ``codec.decode``): no header may make a
#: decoder allocate more than this, whatever it declares
DEFAULT_DECODE_LIMIT = 1 << 33
#: what :func:`decode_limit_for` allows beyond the model-derived part (routers, exemplar features, metadata)
DECODE_SLACK = 64 << 20
#: the dtypes a stored tensor may be decoded to (the tensor codecs' meta names one of these)
DTYPES = {name: getattr(torch, name) for name in (
    "float64", "float32", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool", "uint16",
    "uint32", "uint64", "complex64", "complex128") if isinstance(getattr(torch, name, None), torch.dtype)}

_BUDGET: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar("merge_bench_decode_budget", default=None)


def decode_limit_for(model_bytes: int, n_tasks: int) -> int:
    """The most decoded bytes an artifact file of a method on this model may hold: four full-precision copies of
    the mergeable weights per task and one for the pretrained (a method stores at most a vector per task, a mask
    or a sign per task, and float side information; masks decode to one byte per entry), plus
    :data:`DECODE_SLACK` for what does not scale with the model."""
    return 4 * (max(int(n_tasks), 0) + 1) * max(int(model_bytes), 0) + DECODE_SLACK


@contextmanager
def decode_budget(limit: int) -> Iterator[None]:
    """Decode under a budget of ``limit`` bytes in all (what :func:`reserve` counts)."""
    token = _BUDGET.set([int(limit)])
    try:
        yield
    finally:
        _BUDGET.reset(token)


def reserve(nbytes: int, what: str) -> None:
    """Take ``nbytes`` from the current decode budget, or raise :class:`StorageError` naming ``what``. Codecs call
    it before allocating what a declared size asks for, so a lying header fails here instead of in ``malloc``."""
    nbytes = int(nbytes)
    left = _BUDGET.get()
    if left is None:
        if nbytes > DEFAULT_DECODE_LIMIT:
            raise StorageError(f"{what}: declares {nbytes} decoded bytes, above the limit of {DEFAULT_DECODE_LIMIT}")
        return
    if nbytes < 0 or nbytes > left[0]:
        raise StorageError(f"{what}: declares {nbytes} decoded bytes, more than the {left[0]} left of this model's "
                           "decode limit")
    left[0] -= nbytes


def dtype_of(name: Any, what: str) -> torch.dtype:
    """The torch dtype a codec's meta names (one of :data:`DTYPES`), or :class:`StorageError`."""
    if not isinstance(name, str) or name not in DTYPES:
        raise StorageError(f"{what}: unknown dtype {name!r}; valid: {', '.join(DTYPES)}")
    return DTYPES[name]


def shape_of(value: Any, what: str) -> list[int]:
    """A shape from a codec's meta: a list of non-negative ints (JSON), or :class:`StorageError`."""
    if not isinstance(value, list) or len(value) > 16 or not all(
            isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**62 for d in value):
        raise StorageError(f"{what}: a shape is a list of at most 16 non-negative integers, got {value!r:.60}")
    return value


def numel_of(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def part(parts: Mapping[str, Any], name: str, what: str, dtype: torch.dtype | None = None) -> Tensor:
    """``parts[name]`` as a tensor (of ``dtype`` when given), or :class:`StorageError`."""
    t = parts.get(name) if isinstance(parts, Mapping) else None
    if not isinstance(t, Tensor):
        raise StorageError(f"{what}: lacks its part {name!r}")
    if dtype is not None and t.dtype != dtype:
        raise StorageError(f"{what}: part {name!r} is {t.dtype}, expected {dtype}")
    return t


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
    sha256: str = ""  # of the file as written: :func:`read_artifacts` checks it


def write_artifacts(artifacts: Artifacts, path: str | os.PathLike) -> Written:
    """Encode every artifact with its codec and write one file atomically. Returns the measured sizes."""
    from benchmark.records import remove_stale_temps

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent)  # what killed runs left half-written here
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
    return Written(path, total, breakdown, sha256_file(path))


def _index_entry(path: Path, name: Any, entry: Any) -> tuple[str, int, dict[str, Any] | None, Any, list[str]]:
    """One artifact's index entry, type-checked: (codec, codec version, codec params, meta, parts)."""
    if not isinstance(name, str) or not isinstance(entry, dict):
        raise StorageError(f"{path}: index entry {name!r:.40} is not a name -> object pair")
    codec, version, params, parts = (entry.get(k) for k in ("codec", "codec_version", "codec_params", "parts"))
    if not isinstance(codec, str) or isinstance(version, bool) or not isinstance(version, int):
        raise StorageError(f"{path}: artifact {name!r}: codec {codec!r:.40} v{version!r:.20} is not a name and version")
    if params is not None and not isinstance(params, dict):
        raise StorageError(f"{path}: artifact {name!r}: codec_params must be an object, got {params!r:.40}")
    if not isinstance(parts, list) or not all(isinstance(p, str) for p in parts) or len(set(parts)) != len(parts):
        raise StorageError(f"{path}: artifact {name!r}: parts must be a list of distinct names")
    return codec, version, params, entry.get("meta"), parts


def read_artifacts(path: str | os.PathLike, sha256: str | None = None, max_bytes: int | None = None) -> dict[str, Any]:
    """Read and decode every artifact of a file written by :func:`write_artifacts`.

    ``sha256``: the hash :func:`write_artifacts` measured; a file that no longer matches it (corrupted, replaced by
    another run's) is refused. ``max_bytes``: the decode budget (:func:`decode_limit_for`); the file itself may not
    be larger either. Any malformed input raises :class:`StorageError`, and nothing else.
    """
    path = Path(path)
    limit = DEFAULT_DECODE_LIMIT if max_bytes is None else int(max_bytes)
    try:
        size = path.stat().st_size
    except OSError as e:
        raise StorageError(f"{path}: not a readable artifact file ({e.strerror or e})") from None
    if size > limit:
        raise StorageError(f"{path}: {size} bytes exceed the decode limit of {limit} for this model")
    if sha256 is not None:
        try:
            got = sha256_file(path)
        except OSError as e:
            raise StorageError(f"{path}: not a readable artifact file ({e.strerror or e})") from None
        if got != sha256:
            raise StorageError(f"{path}: its sha256 {got[:12]}... is not the {sha256[:12]}... measured when it was "
                               "written (corrupted or replaced); refusing to evaluate it")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError, TypeError) as e:
        raise StorageError(f"{path}: not a readable artifact file ({e})") from None
    try:
        index = json.loads(meta["merge_bench"])
    except (KeyError, TypeError, ValueError, RecursionError):
        raise StorageError(f"{path}: no readable merge-bench index in the file") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT or index.get("version") != FORMAT_VERSION:
        got = index if not isinstance(index, dict) else f"{index.get('format')!r} v{index.get('version')!r}"
        raise StorageError(f"{path}: unsupported format {got!s:.60}")
    arts = index.get("artifacts")
    if not isinstance(arts, dict):
        raise StorageError(f"{path}: the index has no artifact table")
    entries = {name: _index_entry(path, name, entry) for name, entry in arts.items()}
    claimed = {f"{name}{_SEP}{p}" for name, e in entries.items() for p in e[4]}
    if set(tensors) - claimed:
        raise StorageError(f"{path}: tensors {sorted(set(tensors) - claimed)[:3]} belong to no artifact")
    out: dict[str, Any] = {}
    with decode_budget(limit):
        for name, (codec_name, version, params, cmeta, part_names) in entries.items():
            try:
                codec = get_codec(codec_name, params)
            except RegistryError as e:  # an unknown codec or parameter: this build cannot read the file
                raise StorageError(f"{path}: artifact {name!r}: {e}") from None
            if codec.version != version:
                raise StorageError(
                    f"{path}: artifact {name!r} was written by codec {codec_name} v{version},"
                    f" this build reads v{codec.version}"
                )
            try:
                parts = {p: tensors[f"{name}{_SEP}{p}"] for p in part_names}
            except KeyError as e:
                raise StorageError(f"{path}: artifact {name!r} lacks part {e}") from None
            try:
                out[name] = codec.decode(parts, cmeta)
            except StorageError as e:
                raise StorageError(f"{path}: artifact {name!r}: {e}") from None
            except (MemoryError, RecursionError) as e:
                raise StorageError(f"{path}: artifact {name!r}: {codec_name} decoder ran out of resources "
                                   f"({type(e).__name__})") from None
            except Exception as e:  # noqa: BLE001 - a plugin codec's own bug on malformed input: still one type
                raise StorageError(f"{path}: artifact {name!r}: {codec_name} failed on it "
                                   f"({type(e).__name__}: {str(e)[:120]})") from None
    return out


def tensor_nbytes(t: Tensor) -> int:
    return t.numel() * t.element_size()


def pack_bits(mask: Tensor) -> Tensor:
    """Boolean tensor -> uint8 tensor, 8 entries per byte, MSB first (numpy.packbits order)."""
    import numpy as np

    flat = mask.detach().to(torch.bool).reshape(-1).cpu().numpy()
    return torch.from_numpy(np.packbits(flat))


def _check_packed(packed: Any, n: int) -> None:
    if not isinstance(packed, Tensor) or packed.dtype != torch.uint8 or packed.dim() != 1 \
            or packed.numel() * 8 < n or packed.numel() > (n + 7) // 8:
        got = f"{packed.numel()} bytes" if isinstance(packed, Tensor) else type(packed).__name__
        raise StorageError(f"packed mask of {got} does not hold {n} bits")


def _unpack(packed: Tensor, n: int) -> Tensor:
    import numpy as np

    return torch.from_numpy(np.unpackbits(packed.cpu().numpy(), count=n).astype(bool))


def unpack_bits(packed: Tensor, n: int) -> Tensor:
    _check_packed(packed, n)
    reserve(n, "packed mask")
    return _unpack(packed, n)


_MADV_PAGEOUT = 21  # linux/mman.h (Linux 5.4+)


def page_out(t: Tensor) -> bool:
    """Ask the kernel to reclaim the memory pages under ``t`` (Linux ``madvise(MADV_PAGEOUT)``; False where it is
    refused or unavailable). A hint that loses nothing: a page of a mapped file is read back from the file when it
    is touched again, an anonymous one is swapped out or, without swap, stays. Pages at the ends that ``t`` shares
    with its neighbours go too (they come back the same way)."""
    n = t.numel() * t.element_size()
    if not n or t.device.type != "cpu":
        return False
    try:
        import ctypes
        import mmap

        libc = ctypes.CDLL("libc.so.6")
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        start = t.data_ptr()
        aligned = start - start % mmap.PAGESIZE
        return libc.madvise(aligned, start + n - aligned, _MADV_PAGEOUT) == 0
    except (OSError, AttributeError):
        return False


class PackedMask:
    """A boolean tensor kept packed 8 entries per byte (:func:`pack_bits`): 1/8 of a ``bool`` tensor's RAM, 1/32 of
    a float32's. ``bits`` is checked against ``shape`` on construction, so :meth:`unpack` cannot fail."""

    __slots__ = ("bits", "shape")

    def __init__(self, bits: Tensor, shape: Any):
        self.shape = tuple(int(d) for d in shape)
        _check_packed(bits, numel_of(list(self.shape)))
        self.bits = bits

    @classmethod
    def of(cls, mask: Tensor) -> "PackedMask":
        return cls(pack_bits(mask), mask.shape)

    def unpack(self) -> Tensor:
        return _unpack(self.bits, numel_of(list(self.shape))).reshape(self.shape)


class PackedMasks(Mapping[str, Tensor]):
    """``name -> bool tensor`` over :class:`PackedMask` s: each access unpacks one mask, so a model's worth of
    masks stays packed in RAM (the ``bitmask`` codec decodes dicts into this)."""

    def __init__(self, packed: Mapping[str, PackedMask]):
        self.packed = dict(packed)

    def __getitem__(self, key: str) -> Tensor:
        return self.packed[key].unpack()

    def __contains__(self, key: object) -> bool:
        return key in self.packed

    def __iter__(self) -> Iterator[str]:
        return iter(self.packed)

    def __len__(self) -> int:
        return len(self.packed)
