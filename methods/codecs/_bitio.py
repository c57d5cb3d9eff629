"""Private helpers of the switch codecs (``sass``, ``packbits``, ``entropy``): vectorized bit fields, varints, a
bounds-checked reader, and the framing the three codecs share.

Framing (every switch codec, inside its ``stream`` part, a ``uint8`` tensor)::

    magic      4 bytes   ASCII, one per codec (b"SASS", b"PKBT", b"ENTC")
    version    u8        the codec's format version (its class attribute ``version``)
    flags      u8        codec-specific, 0 unless the codec says otherwise
    count      varint    number of modules
    per module, in order:
        bits   u8        b, 1..8
        ndim   u8        0..8
        dims   varint    x ndim (the module's shape; n = prod(dims) < 2**31)
        length varint    payload bytes
    payloads             concatenated, in module order
    crc32      4 bytes   zlib CRC-32 (little-endian) of every byte before it

Varints are unsigned LEB128 (7 bits a byte, low group first, at most 10 bytes). Bits inside a byte are MSB first
(``numpy.packbits`` order); multi-bit fields are written most significant bit first.

The module names are not in the stream: the codec's JSON meta holds them (``{"names": [...]}`` for a dict,
``{"single": true}`` for one ``SparseCodes``).

Decoding never trusts a length: every payload length, count and field is checked against the bytes that remain
before anything is allocated from it, and the CRC is checked first, so a damaged stream is reported as a
``StorageError`` naming what is wrong. The one size a compressed stream cannot bound by its own length is a
module's element count n (a mask of 10**6 zeros legitimately takes a few bytes): it is covered by the CRC, capped
at ``MAX_ELEMENTS``, and the whole table's decoded size (``DECODED_PER_ELEMENT`` bytes an element) is reserved from
the decode budget (:func:`benchmark.storage.reserve`, sized from the model being loaded) before any module is
decoded: a 24-byte stream that declares a 2**28-entry mask is refused, not allocated.
"""
from __future__ import annotations

import zlib
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from benchmark.storage import StorageError, reserve
from methods.codecs._sparse import SparseCodes

MAX_ELEMENTS = 2**31 - 1  # per module; int32-addressable, and 16x the paper's largest vector (2**27)
MAX_NDIM = 8
#: bytes a decoded element may take: its mask entry, its code (at most one a position) and one working copy
DECODED_PER_ELEMENT = 3
_CRC_BYTES = 4


# ----------------------------------------------------------------------------------------------------------------
# Varints and a bounds-checked byte reader


def put_varint(out: bytearray, v: int) -> None:
    if v < 0:
        raise ValueError(f"varint of a negative value {v}")
    while True:
        byte = v & 0x7F
        v >>= 7
        if v:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return


def varint_len(v: int) -> int:
    n = 1
    while v >= 0x80:
        v >>= 7
        n += 1
    return n


class Reader:
    """A cursor over a ``uint8`` array that raises ``StorageError`` instead of reading past the end."""

    def __init__(self, buf: np.ndarray, what: str, start: int = 0, end: int | None = None):
        self.buf = buf
        self.what = what
        self.pos = start
        self.end = len(buf) if end is None else end

    @property
    def remaining(self) -> int:
        return self.end - self.pos

    def fail(self, msg: str) -> StorageError:
        return StorageError(f"{self.what}: {msg}")

    def take(self, n: int, field: str = "data") -> np.ndarray:
        if n < 0 or n > self.remaining:
            raise self.fail(f"truncated: {field} needs {n} bytes at offset {self.pos}, only {self.remaining} left")
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self, field: str) -> int:
        return int(self.take(1, field)[0])

    def varint(self, field: str, max_value: int) -> int:
        v = 0
        shift = 0
        for _ in range(10):
            if self.pos >= self.end:
                raise self.fail(f"truncated: varint {field} runs past the end (offset {self.pos})")
            byte = int(self.buf[self.pos])
            self.pos += 1
            v |= (byte & 0x7F) << shift
            if not byte & 0x80:
                if v > max_value:
                    raise self.fail(f"{field} = {v} exceeds its bound {max_value}")
                return v
            shift += 7
        raise self.fail(f"varint {field} longer than 10 bytes (offset {self.pos})")

    def expect_end(self) -> None:
        if self.pos != self.end:
            raise self.fail(f"{self.end - self.pos} unexpected trailing bytes at offset {self.pos}")


# ----------------------------------------------------------------------------------------------------------------
# Bit fields


def ceil_log2(x: int) -> int:
    """ceil(log2 x) for x >= 1 (0 for x = 1)."""
    return (int(x) - 1).bit_length()


def field_bits(values: np.ndarray, width: int | np.ndarray) -> np.ndarray:
    """Expand each value into its ``width`` low bits, MSB first, concatenated: a ``uint8`` array of 0/1.

    ``width`` is one int or one per value (0 allowed: the value contributes no bits).
    """
    values = np.asarray(values, dtype=np.uint64)
    if np.isscalar(width) or np.ndim(width) == 0:
        w = int(width)
        if w == 0 or values.size == 0:
            return np.zeros(0, dtype=np.uint8)
        if values.size * w <= 1 << 18:  # small: one broadcast
            shifts = np.arange(w - 1, -1, -1, dtype=np.uint64)
            return ((values[:, None] >> shifts[None, :]) & np.uint64(1)).astype(np.uint8).reshape(-1)
        out = np.empty((values.size, w), dtype=np.uint8)  # large: a column at a time, no 8-byte temporaries
        for j in range(w):
            out[:, j] = (values >> np.uint64(w - 1 - j)) & np.uint64(1)
        return out.reshape(-1)
    widths = np.asarray(width, dtype=np.int64)
    total = int(widths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.uint8)
    owner = np.repeat(np.arange(values.size), widths)
    starts = np.cumsum(widths) - widths
    pos_in = np.arange(total, dtype=np.int64) - starts[owner]
    shift = (widths[owner] - 1 - pos_in).astype(np.uint64)
    return ((values[owner] >> shift) & np.uint64(1)).astype(np.uint8)


def read_fields(buf: np.ndarray, offsets: np.ndarray, widths: int | np.ndarray) -> np.ndarray:
    """Read fields of ``widths`` bits (<= 57; one int or one per field) starting at bit ``offsets`` of ``buf``.

    The caller has checked that every field lies inside ``buf``. Returns ``uint64``.
    """
    offsets = np.asarray(offsets, dtype=np.int64)
    if offsets.size == 0:
        return np.zeros(0, dtype=np.uint64)
    padded = np.concatenate([buf, np.zeros(8, dtype=np.uint8)])
    windows = np.lib.stride_tricks.sliding_window_view(padded, 8)
    win = np.ascontiguousarray(windows[offsets >> 3]).view(">u8").reshape(-1).astype(np.uint64)
    w = np.asarray(widths, dtype=np.uint64)
    shift = np.uint64(64) - (offsets & 7).astype(np.uint64) - w
    mask = (np.uint64(1) << w) - np.uint64(1)
    return (win >> shift) & mask


def bit_columns(bits2d: np.ndarray) -> np.ndarray:
    """Rows of 0/1 bits (MSB first) -> their unsigned values, ``uint64``."""
    out = np.zeros(bits2d.shape[0], dtype=np.uint64)
    for j in range(bits2d.shape[1]):
        out <<= np.uint64(1)
        out |= bits2d[:, j]
    return out


def read_fixed(buf: np.ndarray, bit_start: int, count: int, width: int) -> np.ndarray:
    """``count`` consecutive fields of ``width`` bits from bit ``bit_start``; ``uint64``. Bounds checked by caller."""
    if count == 0 or width == 0:
        return np.zeros(count, dtype=np.uint64)
    if width == 8 and bit_start & 7 == 0:
        return buf[bit_start >> 3 : (bit_start >> 3) + count].astype(np.uint64)
    skip = bit_start & 7
    bits = np.unpackbits(buf[bit_start >> 3 :], count=skip + count * width)[skip:]
    if width == 1:
        return bits.astype(np.uint64)
    return bit_columns(bits.reshape(count, width))


def pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """uint8 codes in [0, 2**bits) -> their ``bits`` low bits each, concatenated MSB first, packed into bytes."""
    codes = np.asarray(codes, dtype=np.uint8)
    if bits == 8:
        return codes.copy()
    if bits == 1:
        return np.packbits(codes.astype(bool))
    return np.packbits(np.unpackbits(codes[:, None], axis=1)[:, 8 - bits :].reshape(-1))


def unpack_codes(buf: np.ndarray, count: int, bits: int) -> np.ndarray:
    """Inverse of :func:`pack_codes`; the caller has checked ``len(buf) * 8 >= count * bits``."""
    if bits == 8:
        return buf[:count].copy()
    if bits == 1:
        return np.unpackbits(buf, count=count)
    b = np.unpackbits(buf, count=count * bits).reshape(count, bits)
    return np.packbits(b, axis=1).reshape(-1) >> np.uint8(8 - bits)


def unzstd(data: np.ndarray, size: int, what: str) -> np.ndarray:
    """One complete zstd frame that declares, and holds, exactly ``size`` bytes and nothing after it.

    ``size`` comes from the (already budgeted) module table, never from the frame; the decompressor is capped at
    it (``max_output_size``), so ~1 KB of zstd cannot become hundreds of MiB."""
    import zstandard

    raw = data.tobytes()
    try:
        declared = zstandard.frame_content_size(raw)
    except zstandard.ZstdError as e:
        raise StorageError(f"{what}: not a zstd frame ({e})") from None
    if declared != size:
        raise StorageError(f"{what}: zstd frame declares {declared} bytes, expected {size}")
    if size == 0:  # zstandard reads max_output_size=0 as "no limit"
        max_out = 1
    else:
        max_out = size
    try:
        out = zstandard.ZstdDecompressor().decompress(raw, max_output_size=max_out, allow_extra_data=False)
    except zstandard.ZstdError as e:
        raise StorageError(f"{what}: zstd frame is corrupted, truncated or followed by stray bytes ({e})") from None
    if len(out) != size:
        raise StorageError(f"{what}: zstd frame holds {len(out)} bytes, expected {size}")
    return np.frombuffer(out, dtype=np.uint8)


def check_zero_padding(buf: np.ndarray, nbits: int, what: str) -> None:
    """The bits of ``buf`` after the first ``nbits`` (the final byte's padding) must be zero."""
    if nbits & 7 and int(buf[nbits >> 3]) & (0xFF >> (nbits & 7)):
        raise StorageError(f"{what}: non-zero padding bits after bit {nbits}")


# ----------------------------------------------------------------------------------------------------------------
# The value: one SparseCodes or a dict of them


def as_modules(value: Any) -> tuple[list[str] | None, list[SparseCodes]]:
    if isinstance(value, SparseCodes):
        return None, [value]
    if isinstance(value, Mapping) and all(isinstance(v, SparseCodes) for v in value.values()):
        return [str(k) for k in value], list(value.values())
    raise TypeError(f"a switch codec stores a SparseCodes or a dict of them, got {type(value).__name__}")


def check_module(sc: SparseCodes, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Validate a module before encoding; returns (mask bool [n], codes uint8 [nnz]) as numpy."""
    n = 1
    for s in sc.shape:
        if s < 0:
            raise ValueError(f"{where}: negative dimension in shape {sc.shape}")
        n *= s
    if n != sc.n:
        raise ValueError(f"{where}: shape {sc.shape} holds {n} elements but the mask has {sc.n}")
    if n > MAX_ELEMENTS:
        raise ValueError(f"{where}: {n} elements exceed the switch codecs' limit of {MAX_ELEMENTS} per module")
    if len(sc.shape) > MAX_NDIM:
        raise ValueError(f"{where}: {len(sc.shape)} dimensions exceed the limit of {MAX_NDIM}")
    mask = sc.mask.detach().cpu().numpy()
    codes = sc.codes.detach().cpu().numpy()
    nnz = int(np.count_nonzero(mask))
    if nnz != codes.size:
        raise ValueError(f"{where}: {nnz} active positions but {codes.size} codes")
    if codes.size and int(codes.max()) >> sc.bits:
        raise ValueError(f"{where}: a code exceeds {sc.bits} bits (max {int(codes.max())})")
    return mask, codes


def meta_for(names: list[str] | None) -> dict[str, Any]:
    return {"single": True} if names is None else {"names": names}


def names_from_meta(meta: Mapping[str, Any], what: str) -> list[str] | None:
    if not isinstance(meta, Mapping):
        raise StorageError(f"{what}: meta must be a JSON object, got {type(meta).__name__}")
    if meta.get("single") is True:
        return None
    names = meta.get("names")
    if not isinstance(names, list) or not all(isinstance(x, str) for x in names):
        raise StorageError(f"{what}: meta has neither 'single' nor a list of 'names'")
    return names


def build_value(names: list[str] | None, modules: list[SparseCodes]) -> Any:
    if names is None:
        return modules[0]
    return dict(zip(names, modules))


# ----------------------------------------------------------------------------------------------------------------
# Framing


def frame(magic: bytes, version: int, flags: int, modules: Sequence[tuple[SparseCodes, bytes | np.ndarray]]) -> Tensor:
    """Header + module table + payloads + CRC-32 -> one uint8 tensor."""
    head = bytearray(magic)
    head.append(version)
    head.append(flags)
    put_varint(head, len(modules))
    for sc, payload in modules:
        head.append(sc.bits)
        head.append(len(sc.shape))
        for s in sc.shape:
            put_varint(head, s)
        put_varint(head, len(payload))
    chunks = [np.frombuffer(bytes(head), dtype=np.uint8)]
    chunks += [np.frombuffer(p, dtype=np.uint8) if isinstance(p, (bytes, bytearray)) else p for _, p in modules]
    body = np.concatenate(chunks) if len(chunks) > 1 else chunks[0]
    crc = zlib.crc32(body) & 0xFFFFFFFF
    out = np.concatenate([body, np.frombuffer(crc.to_bytes(4, "little"), dtype=np.uint8)])
    return torch.from_numpy(out)


class Entry:
    __slots__ = ("shape", "n", "bits", "start", "end")

    def __init__(self, shape: tuple[int, ...], n: int, bits: int, start: int, end: int):
        self.shape, self.n, self.bits, self.start, self.end = shape, n, bits, start, end


def unframe(parts: Mapping[str, Tensor], magic: bytes, version: int, what: str, count: int | None) -> tuple[np.ndarray, int, list[Entry]]:
    """Check the stream (dtype, CRC, magic, version) and parse the module table. Returns (buffer, flags, entries)."""
    try:
        t = parts["stream"]
    except KeyError:
        raise StorageError(f"{what}: the artifact lacks its 'stream' part") from None
    if not isinstance(parts, Mapping):
        raise StorageError(f"{what}: parts must be a name -> tensor map")
    if not isinstance(t, Tensor) or t.dtype != torch.uint8 or t.dim() != 1:
        raise StorageError(f"{what}: the stream must be a flat uint8 tensor")
    buf = t.detach().cpu().contiguous().numpy()
    if len(buf) < len(magic) + 3 + _CRC_BYTES:
        raise StorageError(f"{what}: stream of {len(buf)} bytes is too short to hold a header")
    body_end = len(buf) - _CRC_BYTES
    stored = int.from_bytes(bytes(buf[body_end:]), "little")
    if zlib.crc32(buf[:body_end]) & 0xFFFFFFFF != stored:
        raise StorageError(f"{what}: CRC-32 mismatch (the stream is truncated or corrupted)")
    r = Reader(buf, what, 0, body_end)
    got = bytes(r.take(len(magic), "magic"))
    if got != magic:
        raise StorageError(f"{what}: bad magic {got!r}, expected {magic!r}")
    v = r.u8("version")
    if v != version:
        raise StorageError(f"{what}: format version {v}, this build reads version {version}")
    flags = r.u8("flags")
    n_mod = r.varint("module count", r.remaining)  # each module takes >= 3 table bytes
    if count is not None and n_mod != count:
        raise StorageError(f"{what}: the stream holds {n_mod} modules, the meta names {count}")
    table = []
    for i in range(n_mod):
        bits = r.u8("bits")
        if not 1 <= bits <= 8:
            raise StorageError(f"{what}: module {i}: bits {bits} not in 1..8")
        ndim = r.u8("ndim")
        if ndim > MAX_NDIM:
            raise StorageError(f"{what}: module {i}: {ndim} dimensions exceed {MAX_NDIM}")
        shape = tuple(r.varint("dim", MAX_ELEMENTS) for _ in range(ndim))
        n = 1
        for s in shape:
            n *= s
        if n > MAX_ELEMENTS:
            raise StorageError(f"{what}: module {i}: shape {shape} exceeds {MAX_ELEMENTS} elements")
        length = r.varint("payload length", r.remaining)
        table.append((shape, n, bits, length))
    reserve(DECODED_PER_ELEMENT * sum(t[1] for t in table), what)
    entries = []
    pos = r.pos
    for i, (shape, n, bits, length) in enumerate(table):
        if length > body_end - pos:
            raise StorageError(f"{what}: module {i}: payload of {length} bytes runs past the end of the stream")
        entries.append(Entry(shape, n, bits, pos, pos + length))
        pos += length
    if pos != body_end:
        raise StorageError(f"{what}: {body_end - pos} unexpected bytes after the last payload")
    return buf, flags, entries


def open_stream(parts: Mapping[str, Tensor], meta: Mapping[str, Any], magic: bytes, version: int, what: str,
                flags_allowed: tuple[int, ...] = (0,)) -> tuple[list[str] | None, np.ndarray, int, list[Entry]]:
    """What every sparse codec's ``decode`` starts with: the module names from ``meta``, then :func:`unframe`,
    refusing flags the codec does not define. Returns (names, buffer, flags, entries)."""
    names = names_from_meta(meta, what)
    buf, flags, entries = unframe(parts, magic, version, what, 1 if names is None else len(names))
    if flags not in flags_allowed:
        raise StorageError(f"{what}: unknown flags {flags:#x}")
    return names, buf, flags, entries


def make_codes(shape: tuple[int, ...], mask: np.ndarray, codes: np.ndarray, bits: int) -> SparseCodes:
    return SparseCodes(shape, torch.from_numpy(np.ascontiguousarray(mask, dtype=bool)), torch.from_numpy(np.ascontiguousarray(codes, dtype=np.uint8)), bits)
