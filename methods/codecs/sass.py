"""``sass``: FlexSwitch's Sparsity-Aware Storage Strategy (auto-flexswitch.txt, Sec. III-C4, Eq. 16-17).

A module's flat vector of n entries is cut into G = n / c groups of c entries (c | n). A bitmap of G bits marks
the groups holding at least one active entry; then, for every non-empty group in order and every active entry of
it in ascending position, one record::

    index in the group   ceil(log2 c) bits   (0 bits when c = 1)
    value (the code)     b bits
    end flag             1 bit: 1 on the group's last active entry, else 0

so the bitmap drives decoding: a non-empty group's records run up to and including the first record whose end
flag is 1. The exact size of one module's record, in bits, is (``sass_bits``)::

    35 + n/c + nnz * (ceil(log2 c) + b + 1)

which is Eq. 16 with the realized count of active entries nnz in place of its expectation n(1 - alpha). The
group size is chosen by Eq. 17, c = argmin over C of |ln 2 / (1 - alpha) - c|, alpha = 1 - nnz/n the module's
realized sparsity (``choose_group_size``); the codec parameter ``group=exact`` picks instead the c in C that
minimizes the exact size above (Eq. 17 ignores the ceiling of log2 c).

Byte format (version 1). The ``stream`` part is the switch codecs' common frame (see ``methods/codecs/_bitio.py``:
magic ``b"SASS"``, version 1, flags 0, the module table with each module's b and shape, the payloads, CRC-32).
Each module's payload is its SASS record, MSB first, zero-padded to a whole byte::

    bits  0..26    G - 1        (27 bits; G = n / c groups, 1 <= G <= 2**27)
    bits 27..34    c - 1        (8 bits; group size 1 <= c <= 256)
    next G bits    the bitmap of non-empty groups
    then           nnz records of ceil(log2 c) + b + 1 bits, as above

The payload's length before padding equals ``sass_bits(n, c, nonempty_groups, nnz, b)`` exactly; a module with
n = 0 has an empty payload (0 bits). b and the shape live in the frame's module table, not in the 35-bit header
(the paper counts neither: Eq. 16's 35 bits are the group count and the group size only).

Decisions where the paper is ambiguous (each one documented here, tested in tests/test_codecs.py):

- The 35-bit header: the paper gives "27 bits for the group count information" and "8 bits for the maximum group
  size of 256". We store G - 1 and c - 1, so that G = 2**27 (the paper's largest vector, n = 2**27, at c = 1) and
  c = 256 are representable. n = G * c is implied, and is checked against the shape in the module table.
- The end flag is one bit per active entry (the "+1" inside Eq. 16's parenthesis, multiplied by n(1 - alpha)),
  not one per group. So the number of non-empty groups does not enter the size: ``sass_bits`` takes it only to
  check that the arguments are consistent.
- The candidate set C: Eq. 17 names all divisors of n, but the header holds c <= 256 and G <= 2**27, so
  C = {c : c | n, 1 <= c <= 256, n / c <= 2**27}. A module with no such divisor (n > 2**27 with no divisor of
  n in [n / 2**27, 256]) is outside the paper's design and ``encode`` raises ``ValueError``.
- alpha in Eq. 17 is the module's realized sparsity 1 - nnz/n (the encoder sees the mask; the decoder reads c
  from the header). All-zero masks (alpha = 1, target c = infinity) take the largest c in C.
- Ties in Eq. 17 (the target exactly half-way between two divisors) take the smaller c.
- Eq. 16's expectation for an i.i.d. Bernoulli mask with keep-probability 1 - alpha is exact, not approximate:
  the size is affine in nnz and E[nnz] = n(1 - alpha), so ``sass_expected_bits`` = E[sass_bits] at a fixed c.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
from torch import Tensor

from benchmark.registry import CODECS, Param
from benchmark.storage import Codec, StorageError
from methods.codecs import _bitio as bio

HEADER_BITS = 35
COUNT_BITS = 27
SIZE_BITS = 8
MAX_GROUP_SIZE = 1 << SIZE_BITS  # 256
MAX_GROUPS = 1 << COUNT_BITS  # 2**27
MAGIC = b"SASS"
VERSION = 1


def feasible_group_sizes(n: int) -> list[int]:
    """C of Eq. 17 under the 35-bit header: divisors c of n with c <= 256 and n / c <= 2**27, ascending."""
    if n <= 0:
        return [1] if n == 0 else []
    return [c for c in range(1, min(n, MAX_GROUP_SIZE) + 1) if n % c == 0 and n // c <= MAX_GROUPS]


def choose_group_size(n: int, alpha: float | None = None, *, density: float | None = None) -> int:
    """Eq. 17: the c in C nearest ln 2 / (1 - alpha). Give the sparsity ``alpha`` or the ``density`` 1 - alpha.

    Ties take the smaller c; alpha = 1 (no active entry) takes the largest c in C.
    """
    if (alpha is None) == (density is None):
        raise ValueError("give exactly one of alpha (sparsity) and density (1 - alpha)")
    d = 1.0 - float(alpha) if density is None else float(density)
    if not 0.0 <= d <= 1.0:
        raise ValueError(f"sparsity must lie in [0, 1], got alpha = {1.0 - d}")
    cands = feasible_group_sizes(n)
    if not cands:
        raise ValueError(
            f"SASS cannot store a vector of {n} entries: no divisor c <= {MAX_GROUP_SIZE} with n / c <= {MAX_GROUPS}"
        )
    if d == 0.0:
        return cands[-1]
    target = math.log(2.0) / d
    return min(cands, key=lambda c: (abs(target - c), c))


def _check_args(n: int, c: int, nonempty_groups: int, nnz: int, b: int) -> int:
    if n < 0 or c < 1 or n % c:
        raise ValueError(f"group size c = {c} must divide n = {n}")
    if not 1 <= b <= 8:
        raise ValueError(f"b = {b} not in 1..8")
    g = n // c
    if not 0 <= nonempty_groups <= g or not 0 <= nnz <= n:
        raise ValueError(f"need 0 <= nonempty_groups <= n/c and 0 <= nnz <= n; got {nonempty_groups}, {nnz}")
    if not nonempty_groups <= nnz <= nonempty_groups * c:
        raise ValueError(f"{nnz} active entries cannot fill exactly {nonempty_groups} non-empty groups of {c}")
    return g


def sass_bits(n: int, c: int, nonempty_groups: int, nnz: int, b: int) -> int:
    """The exact size in bits of one module's SASS record: 35 + n/c + nnz * (ceil(log2 c) + b + 1).

    ``nonempty_groups`` is checked for consistency but does not change the size: the end flag is per active entry.
    n = 0 takes 0 bits (an empty payload).
    """
    g = _check_args(n, c, nonempty_groups, nnz, b)
    if n == 0:
        return 0
    return HEADER_BITS + g + nnz * (bio.ceil_log2(c) + b + 1)


def sass_expected_bits(n: int, alpha: float, b: int, c: int | None = None) -> float:
    """Eq. 16: 35 + n/c + n (1 - alpha) (ceil(log2 c) + b + 1), c from Eq. 17 at ``alpha`` unless given."""
    if c is None:
        c = choose_group_size(n, alpha)
    if n % c:
        raise ValueError(f"group size c = {c} must divide n = {n}")
    return HEADER_BITS + n / c + n * (1.0 - alpha) * (bio.ceil_log2(c) + b + 1)


def exact_group_size(n: int, nnz: int, b: int) -> int:
    """The c in C minimizing the exact size (ties: the smaller c)."""
    cands = feasible_group_sizes(n)
    if not cands:
        choose_group_size(n, 0.5)  # raises the explanatory error
    return min(cands, key=lambda c: (n // c + nnz * (bio.ceil_log2(c) + b + 1), c))


# ----------------------------------------------------------------------------------------------------------------
# One module


def encode_module(mask: np.ndarray, codes: np.ndarray, b: int, c: int) -> tuple[np.ndarray, int]:
    """One module's SASS record: (bytes, length in bits before padding)."""
    n = mask.size
    if n == 0:
        return np.zeros(0, dtype=np.uint8), 0
    if n % c or not 1 <= c <= MAX_GROUP_SIZE or n // c > MAX_GROUPS:
        raise ValueError(f"group size {c} is not in C for n = {n}")
    g = n // c
    width = bio.ceil_log2(c) + b + 1
    pos = np.flatnonzero(mask)
    grp = pos // c
    idx = (pos - grp * c).astype(np.uint64)
    bitmap = np.zeros(g, dtype=np.uint8)
    bitmap[grp] = 1
    flag = np.ones(pos.size, dtype=np.uint64)
    if pos.size > 1:
        flag[:-1] = grp[1:] != grp[:-1]
    rec = (idx << np.uint64(b + 1)) | (codes.astype(np.uint64) << np.uint64(1)) | flag
    bits = np.concatenate(
        [bio.field_bits(np.array([g - 1]), COUNT_BITS), bio.field_bits(np.array([c - 1]), SIZE_BITS), bitmap, bio.field_bits(rec, width)]
    )
    return np.packbits(bits), int(bits.size)


def decode_module(p: np.ndarray, n: int, b: int, what: str) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Inverse of :func:`encode_module`. Returns (mask, codes, c, length in bits)."""
    nbytes = p.size
    if n == 0:
        if nbytes:
            raise StorageError(f"{what}: an empty module must have an empty payload, got {nbytes} bytes")
        return np.zeros(0, dtype=bool), np.zeros(0, dtype=np.uint8), 1, 0
    avail = nbytes * 8
    if avail < HEADER_BITS:
        raise StorageError(f"{what}: truncated: {nbytes} bytes cannot hold the 35-bit header")
    head = bio.read_fields(p, np.array([0, COUNT_BITS]), np.array([COUNT_BITS, SIZE_BITS]))
    g, c = int(head[0]) + 1, int(head[1]) + 1
    if g * c != n:
        raise StorageError(f"{what}: header says {g} groups of {c} = {g * c} entries, the shape holds {n}")
    start = HEADER_BITS + g
    if start > avail:
        raise StorageError(f"{what}: truncated: the bitmap of {g} groups runs past the {nbytes}-byte payload")
    bits = np.unpackbits(p)
    nonempty = np.flatnonzero(bits[HEADER_BITS:start].view(bool))
    n_groups = nonempty.size
    width = bio.ceil_log2(c) + b + 1
    records = bits[start : start + (avail - start) // width * width].reshape(-1, width)
    if n_groups == 0:
        nnz = 0
    else:
        ends = np.cumsum(records[:, width - 1], dtype=np.int64)
        if ends.size == 0 or int(ends[-1]) < n_groups:
            raise StorageError(
                f"{what}: truncated: the records end before the last of the {n_groups} non-empty groups"
            )
        nnz = int(np.searchsorted(ends, n_groups)) + 1
    nbits = start + nnz * width
    if (nbits + 7) // 8 != nbytes:
        raise StorageError(f"{what}: the record takes {(nbits + 7) // 8} bytes, the payload has {nbytes}")
    if bits[nbits:].any():
        raise StorageError(f"{what}: non-zero padding bits after bit {nbits}")
    rec = bio.bit_columns(records[:nnz])
    flag = (rec & np.uint64(1)).astype(np.int64)
    codes = ((rec >> np.uint64(1)) & np.uint64((1 << b) - 1)).astype(np.uint8)
    idx = (rec >> np.uint64(b + 1)).astype(np.int64)
    if nnz and int(idx.max()) >= c:
        raise StorageError(f"{what}: an index {int(idx.max())} is outside its group of {c}")
    grp = nonempty[np.cumsum(flag) - flag]
    pos = grp * c + idx
    if nnz > 1 and not bool(np.all(pos[1:] > pos[:-1])):
        raise StorageError(f"{what}: indices are not strictly increasing inside a group")
    mask = np.zeros(n, dtype=bool)
    mask[pos] = True
    return mask, codes, c, nbits


# ----------------------------------------------------------------------------------------------------------------
# The codec


@CODECS.register(
    "sass",
    summary="FlexSwitch's SASS: grouped COO, bitmap of non-empty groups, index+value+end-flag records (Eq. 16-17).",
    paper="auto-flexswitch.txt, Sec. III-C4, Eq. 16-17",
    params=[
        Param("group", str, "eq17", "group size rule: eq17 (the paper) or exact (argmin of the exact size)",
              choices=("eq17", "exact")),
    ],
)
class SassCodec(Codec):
    version = VERSION

    def group_size(self, n: int, nnz: int, b: int) -> int:
        if n == 0:
            return 1
        if self.params.get("group", "eq17") == "exact":
            return exact_group_size(n, nnz, b)
        return choose_group_size(n, density=nnz / n)

    def encode(self, value: Any) -> tuple[dict[str, Tensor], dict[str, Any]]:
        names, modules = bio.as_modules(value)
        payloads = []
        for i, sc in enumerate(modules):
            where = f"sass: module {names[i] if names else 0!r}"
            mask, codes = bio.check_module(sc, where)
            c = self.group_size(mask.size, codes.size, sc.bits)
            payload, _ = encode_module(mask, codes, sc.bits, c)
            payloads.append((sc, payload))
        return {"stream": bio.frame(MAGIC, VERSION, 0, payloads)}, bio.meta_for(names)

    def decode(self, parts: Mapping[str, Tensor], meta: Mapping[str, Any]) -> Any:
        what = "sass artifact"
        names, buf, _, entries = bio.open_stream(parts, meta, MAGIC, VERSION, what)
        out = []
        for i, e in enumerate(entries):
            mask, codes, _, _ = decode_module(buf[e.start : e.end], e.n, e.bits, f"{what}, module {i}")
            out.append(bio.make_codes(e.shape, mask, codes, e.bits))
        return bio.build_value(names, out)
