"""``entropy``: the project's switch codec: Golomb-coded mask gaps with row/column density contexts, vectorized.

The mask is coded in segments. In a segment of L entries the positions of the rarer symbol (the ones, or the
zeros when more than half are set) are coded as gaps g >= 0 (the run of the other symbol before each) with a
Golomb code whose parameter m is chosen per segment by the exact coded size. Golomb codes are the optimal prefix
codes for the geometric gaps of an i.i.d. Bernoulli mask, within 0.3-0.8 % of the entropy for sparsities from
0.7 up. Near half density, where a Golomb code of small m loses up to 3 %, a segment is stored raw (exact at
alpha = 0.5) or as a zstd frame of its packed bits (zstd Huffman-codes the bytes: within 0.4-0.7 % of the
entropy for densities 0.3-0.4), whichever of the three is smallest. Where the rows or columns of a 2-D module
differ in density (magnitude masks of task vectors do), the module is split into density contexts: rows are
ranked by density into 2**kr equal classes, columns into 2**kc, and each (row class, column class) block is its
own segment with its own code. That codes a structured mask below the i.i.d. bound n H(alpha). The codes (b bits
per active entry) are stored packed, or zstd-compressed where that is smaller (skewed quantization levels).

Decoding is vectorized over all codewords of a module: the Golomb quotients (unary) and remainders (truncated
binary) are in separate streams, so every codeword's position is known without a sequential parse.

Byte format (version 1). The ``stream`` part is the switch codecs' common frame (``methods/codecs/_bitio.py``:
magic ``b"ENTC"``, version 1, flags 0, the module table with each module's b and shape, the payloads, CRC-32). A
module is viewed as a matrix of R = shape[0] rows and C = n / R columns (R = 1 for 0-d and 1-d shapes). Its payload::

    mode        u8      bits 0-1: kr, bits 2-3: kc (2**kr row classes, 2**kc column classes), bit 4: the codes
                        are zstd-compressed, bits 5-7: 0
    row classes         if kr > 0: R fields of kr bits (the class of each row), MSB first, zero-padded to a byte
    column classes      if kc > 0: C fields of kc bits, likewise
    segments            one descriptor for every block (a, b), a-major, of L = R_a * C_b > 0 entries (R_a rows
                        in class a, C_b columns in class b; a block's entries in row-major order, rows and columns
                        ascending). The descriptor is a varint v, then:
                          v = 0: raw, L bits in the raw stream
                          v = 1: zstd, varint Z: a zstd frame of Z bytes holding the ceil(L / 8) packed bytes
                          v >= 2: Golomb, m = ((v - 2) >> 1) + 1 and s = (v - 2) & 1 (0: the ones are coded,
                                  1: the zeros), then varint K: the number of coded symbols (K <= L)
    varint |U|, varint |X|   byte lengths of U and X, present iff some segment is Golomb-coded
    U           the quotients q = g // m of every codeword (Golomb segments in order), unary: q zeros then a
                one; zero-padded to a byte
    A           with k = ceil(log2 m), u = 2**k - m, r = g % m: the truncated-binary remainder's first k - 1 bits
                (r if r < u, else (r + u) >> 1); nothing when m = 1; zero-padded to a byte
    X           the last bit ((r + u) & 1) of every remainder with r >= u, in order; zero-padded
    raw         the raw segments' entries, 1 bit each, concatenated; zero-padded
    zstd        the zstd segments' frames, in order
    codes       packed codes (b bits each, MSB first, ceil(nnz b / 8) bytes) or, with mode bit 4, one zstd frame
                of them, to the end of the payload

nnz, the count of set mask bits, is known once the mask is decoded. Each stream's length is stored (U, X, the
zstd frames) or implied by the segments, and the decoder checks every one against the bytes that remain, that
padding bits are zero, that each zstd frame declares and holds exactly its size, and that the payload is used up.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
import zstandard
from torch import Tensor

from benchmark.registry import CODECS, Param
from benchmark.storage import Codec
from methods.codecs import _bitio as bio

MAGIC = b"ENTC"
VERSION = 1
MAX_M = 1 << 24
MIN_STRUCTURED = 4096  # modules smaller than this are coded as one segment
_CODES_ZSTD_LEVEL = 10


# ----------------------------------------------------------------------------------------------------------------
# Golomb coding of gap sequences


def _k_u(m_seg: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per codeword k = ceil(log2 m) and u = 2**k - m, from the segments' m and codeword counts."""
    k_seg = np.array([bio.ceil_log2(int(m)) for m in m_seg], dtype=np.int64)
    u_seg = (np.left_shift(1, k_seg) - np.asarray(m_seg, dtype=np.int64)).astype(np.int64)
    return np.repeat(k_seg, counts), np.repeat(u_seg, counts)


def golomb_bits(gaps: np.ndarray, m: int) -> int:
    """Exact Golomb-coded size of ``gaps`` with parameter m (unary quotient + truncated-binary remainder)."""
    if gaps.size == 0:
        return 0
    k = bio.ceil_log2(m)
    u = (1 << k) - m
    q = gaps // m
    total = int(q.sum()) + gaps.size
    if m > 1:
        total += (k - 1) * gaps.size + int(np.count_nonzero(gaps % m >= u))
    return total


def best_m(gaps: np.ndarray, length: int) -> tuple[int, int]:
    """The Golomb parameter near the geometric optimum that minimizes the exact size. Returns (m, bits)."""
    k = gaps.size
    if k == 0:
        return 1, 0
    theta = min(max((length - k) / length, 1e-12), 1 - 1e-12)  # P(a gap continues)
    m0 = max(1, math.ceil(-math.log1p(theta) / math.log(theta)))
    cands = sorted({min(max(1, m), MAX_M) for m in (m0 - 1, m0, m0 + 1)})
    gmax = int(gaps.max())
    if gmax < k:  # cheaper on the histogram of gap lengths
        hist = np.bincount(gaps)
        g = np.arange(hist.size, dtype=np.int64)
        costs = []
        for m in cands:
            kk = bio.ceil_log2(m)
            per = g // m + 1
            if m > 1:
                per += (kk - 1) + (g % m >= (1 << kk) - m)
            costs.append((int(hist @ per), m))
    else:
        costs = [(golomb_bits(gaps, m), m) for m in cands]
    bits, m = min(costs)
    return m, bits


def _golomb_positions(
    r: bio.Reader, ubuf: np.ndarray, abuf: np.ndarray, abits: int, xbuf: np.ndarray,
    m_seg: np.ndarray, counts: np.ndarray, total: int,
) -> np.ndarray:
    """Decode the U/A/X streams: the running sum of (gap + 1) over all codewords (int64, length ``total``)."""
    ones = np.flatnonzero(np.unpackbits(ubuf).view(bool))
    if ones.size != total:
        raise r.fail(f"the quotient stream holds {ones.size} codewords, the segments {total}")
    if (int(ones[-1]) >> 3) + 1 != ubuf.size if total else ubuf.size:
        raise r.fail("trailing bytes in the quotient stream")
    bio.check_zero_padding(abuf, abits, r.what)
    live = m_seg[counts > 0]
    if live.size and np.all(live == live[0]):  # one Golomb parameter: scalar arithmetic
        m = int(live[0])
        if m == 1:
            if xbuf.size:
                raise r.fail("an extra-bit stream where no remainder has one")
            return ones + 1
        k = bio.ceil_log2(m)
        u = (1 << k) - m
        a = bio.read_fixed(abuf, 0, total, k - 1).astype(np.int64)
        if u == 0:
            hi = None
            nx = total
        else:
            hi = a >= u
            nx = int(np.count_nonzero(hi))
        m_arr: Any = m
        u_arr: Any = u
    else:
        m_arr = np.repeat(m_seg, counts)
        k_arr, u_arr = _k_u(m_seg, counts)
        a = np.zeros(total, dtype=np.int64)
        bit = start = 0
        for m_s, cnt in zip(m_seg.tolist(), counts.tolist()):  # A fields have one width per segment
            w = max(bio.ceil_log2(m_s) - 1, 0)
            if w and cnt:
                a[start : start + cnt] = bio.read_fixed(abuf, bit, cnt, w)
            bit += w * cnt
            start += cnt
        hi = (k_arr >= 1) & (a >= u_arr)
        nx = int(np.count_nonzero(hi))
    if (nx + 7) // 8 != xbuf.size:
        raise r.fail(f"the extra-bit stream has {xbuf.size} bytes, {nx} bits are needed")
    bio.check_zero_padding(xbuf, nx, r.what)
    x = np.unpackbits(xbuf, count=nx)
    if hi is None:  # every remainder has its extra bit
        rem = 2 * a + x
    else:  # gather the extra bits in order without boolean indexing
        xf = np.append(x, np.uint8(0))[np.cumsum(hi) - 1]
        rem = np.where(hi, 2 * a + xf - u_arr, a)
    steps = m_arr * np.diff(ones, prepend=-1) - m_arr + rem + 1
    return np.cumsum(steps)


RAW, ZSTD, GOLOMB = 0, 1, 2
_ZSTD_MIN = 4096  # segments at least this long try zstd (Huffman-coded bytes) at mid densities
_ZSTD_LEVEL = 1


class _Segment:
    __slots__ = ("length", "kind", "s", "m", "gaps", "frame")

    def __init__(self, length: int):
        self.length = length
        self.kind = RAW
        self.s = 0
        self.m = 1
        self.gaps = np.zeros(0, dtype=np.int64)
        self.frame = b""

    def descriptor(self) -> bytes:
        out = bytearray()
        if self.kind == RAW:
            bio.put_varint(out, 0)
        elif self.kind == ZSTD:
            bio.put_varint(out, 1)
            bio.put_varint(out, len(self.frame))
        else:
            bio.put_varint(out, ((self.m - 1) << 1 | self.s) + 2)
            bio.put_varint(out, int(self.gaps.size))
        return bytes(out)


def _plan_segment(bits: np.ndarray) -> _Segment:
    """Raw, zstd or Golomb (of the rarer symbol): whichever is smallest, descriptor included."""
    seg = _Segment(bits.size)
    ones = int(np.count_nonzero(bits))
    s = 1 if 2 * ones > bits.size else 0
    pos = np.flatnonzero(bits if s == 0 else ~bits)
    gaps = np.diff(pos, prepend=-1) - 1
    m, gbits = best_m(gaps, bits.size)
    best = bits.size + 8
    gcost = gbits + 8 * (bio.varint_len(2 * m) + bio.varint_len(gaps.size))
    if gcost < best:
        best = gcost
        seg.kind, seg.s, seg.m, seg.gaps = GOLOMB, s, m, gaps
    if bits.size >= _ZSTD_MIN and 0.25 * bits.size <= ones <= 0.75 * bits.size:
        frame = zstandard.ZstdCompressor(level=_ZSTD_LEVEL).compress(np.packbits(bits).tobytes())
        if 8 * (len(frame) + 1 + bio.varint_len(len(frame))) < best:
            seg.kind, seg.frame, seg.gaps = ZSTD, frame, np.zeros(0, dtype=np.int64)
    return seg


def _golomb_streams(segs: list[_Segment]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(U, A, X) packed bytes for all Golomb segments, in order."""
    gsegs = [s for s in segs if s.kind == GOLOMB]
    if not gsegs:
        z = np.zeros(0, dtype=np.uint8)
        return z, z, z
    qs, abits, xbits = [], [], []
    for sg in gsegs:
        m = sg.m
        q, r = np.divmod(sg.gaps, m)
        qs.append(q)
        if m == 1:
            continue
        k = bio.ceil_log2(m)
        u = (1 << k) - m
        if u == 0:
            a, x = r >> 1, r & 1
        else:
            hi = r >= u
            v = r + u
            a = np.where(hi, v >> 1, r)
            x = v[hi] & 1
        if k > 1:
            abits.append(bio.field_bits(a, k - 1))
        xbits.append(x.astype(np.uint8))
    q = np.concatenate(qs)
    ustream = np.zeros(int(q.sum()) + q.size, dtype=np.uint8)
    ustream[np.cumsum(q + 1) - 1] = 1
    cat = lambda parts: np.packbits(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.uint8)  # noqa: E731
    return np.packbits(ustream), cat(abits), cat(xbits)


# ----------------------------------------------------------------------------------------------------------------
# Density contexts


def _view(shape: tuple[int, ...], n: int) -> tuple[int, int]:
    if len(shape) >= 2 and shape[0] > 0:
        return shape[0], n // shape[0]
    return 1, n


def _rank_classes(density: np.ndarray, k: int) -> np.ndarray:
    """Classes 0..2**k-1 of equal size by rank of density (stable); nested across k."""
    n = density.size
    cls = np.empty(n, dtype=np.int64)
    cls[np.argsort(density, kind="stable")] = (np.arange(n, dtype=np.int64) << k) // max(n, 1)
    return cls


def _h(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-12, 1 - 1e-12)
    return -(p * np.log2(p) + (1 - p) * np.log2(1 - p))


def _choose_contexts(m2: np.ndarray) -> tuple[int, int, np.ndarray, np.ndarray]:
    """Estimate (entropy + side information) the best (kr, kc) in 0..3 for a R x C mask; return it and the
    finest classes (kr = kc = 3) from which the coarser ones follow by shifting."""
    rows, cols = m2.shape
    rc3 = _rank_classes(m2.mean(axis=1), 3)
    cc3 = _rank_classes(m2.mean(axis=0), 3)
    onehot_c = np.zeros((cols, 8), dtype=np.float32)
    onehot_c[np.arange(cols), cc3] = 1
    per_row = m2.astype(np.float32) @ onehot_c  # R x 8, exact integer counts
    table = np.zeros((8, 8), dtype=np.float64)
    np.add.at(table, rc3, per_row.astype(np.float64))
    rsize = np.bincount(rc3, minlength=8).astype(np.float64)
    csize = np.bincount(cc3, minlength=8).astype(np.float64)
    best = None
    for kr in range(4):
        for kc in range(4):
            if (kr and rows < 2) or (kc and cols < 2):
                continue
            t = table.reshape(1 << kr, 8 >> kr, 1 << kc, 8 >> kc).sum(axis=(1, 3))
            size = np.outer(rsize.reshape(1 << kr, -1).sum(1), csize.reshape(1 << kc, -1).sum(1))
            live = size > 0
            est = float((size[live] * _h(t[live] / size[live])).sum()) * 1.006
            est += rows * kr + cols * kc + 24 * int(live.sum())
            if best is None or est < best[0]:
                best = (est, kr, kc)
    assert best is not None
    return best[1], best[2], rc3, cc3


def _segments(mask: np.ndarray, rows: int, cols: int, kr: int, kc: int, rc3: np.ndarray, cc3: np.ndarray):
    """The segments' bit arrays in block order, and the (packed) class tables."""
    if kr == 0 and kc == 0:
        return ([mask] if mask.size else []), b""
    m2 = mask.reshape(rows, cols)
    rc = rc3 >> (3 - kr)
    cc = cc3 >> (3 - kc)
    rperm = np.argsort(rc, kind="stable")
    cperm = np.argsort(cc, kind="stable")
    rb = np.concatenate([[0], np.cumsum(np.bincount(rc, minlength=1 << kr))])
    cb = np.concatenate([[0], np.cumsum(np.bincount(cc, minlength=1 << kc))])
    out = []
    for a in range(1 << kr):
        sub = m2[rperm[rb[a] : rb[a + 1]]]
        for b in range(1 << kc):
            blk = sub[:, cperm[cb[b] : cb[b + 1]]]
            if blk.size:
                out.append(blk.reshape(-1))
    side = b""
    if kr:
        side += np.packbits(bio.field_bits(rc, kr)).tobytes()
    if kc:
        side += np.packbits(bio.field_bits(cc, kc)).tobytes()
    return out, side


def encode_mask(mask: np.ndarray, shape: tuple[int, ...], contexts: bool = True) -> tuple[int, bytes]:
    """(mode bits 0-3, mask bytes: classes + descriptors + streams) of the smaller of the flat and the context
    coding of one module's mask."""
    n = mask.size
    rows, cols = _view(shape, n)
    cands = [(0, 0)]
    rc3 = cc3 = np.zeros(0, dtype=np.int64)
    if contexts and n >= MIN_STRUCTURED and rows >= 2 and cols >= 2:
        kr, kc, rc3, cc3 = _choose_contexts(mask.reshape(rows, cols))
        if (kr, kc) != (0, 0):
            cands.append((kr, kc))
    best = None
    for kr, kc in cands:
        seg_bits, side = _segments(mask, rows, cols, kr, kc, rc3, cc3)
        segs = [_plan_segment(s) for s in seg_bits]
        body = bytearray(side)
        for s in segs:
            body += s.descriptor()
        if any(s.kind == GOLOMB for s in segs):
            u, a, x = _golomb_streams(segs)
            bio.put_varint(body, u.size)
            bio.put_varint(body, x.size)
            body += u.tobytes() + a.tobytes() + x.tobytes()
        raws = [b for s, b in zip(segs, seg_bits) if s.kind == RAW]
        if raws:
            body += np.packbits(np.concatenate(raws)).tobytes()
        for s in segs:
            if s.kind == ZSTD:
                body += s.frame
        if best is None or len(body) < len(best[1]):
            best = (kr | kc << 2, bytes(body))
    assert best is not None
    return best


def decode_mask(r: bio.Reader, mode: int, shape: tuple[int, ...], n: int) -> np.ndarray:
    kr, kc = mode & 3, (mode >> 2) & 3
    rows, cols = _view(shape, n)
    if (kr or kc) and n == 0:
        raise r.fail("an empty module cannot have density contexts")
    rc = cc = None
    if kr:
        rc = bio.read_fixed(r.take((rows * kr + 7) // 8, "row classes"), 0, rows, kr).astype(np.int64)
    if kc:
        cc = bio.read_fixed(r.take((cols * kc + 7) // 8, "column classes"), 0, cols, kc).astype(np.int64)
    rsz = np.bincount(rc, minlength=1 << kr) if rc is not None else np.array([rows])
    csz = np.bincount(cc, minlength=1 << kc) if cc is not None else np.array([cols])
    lengths = (rsz[:, None] * csz[None, :]).reshape(-1)
    lengths = lengths[lengths > 0]
    nseg = lengths.size
    kind = np.zeros(nseg, dtype=np.int64)
    s_arr = np.zeros(nseg, dtype=np.int64)
    m_arr = np.ones(nseg, dtype=np.int64)
    k_arr = np.zeros(nseg, dtype=np.int64)
    zlen = np.zeros(nseg, dtype=np.int64)
    for i in range(nseg):
        v = r.varint("segment descriptor", 2 * MAX_M + 1)
        if v == 0:
            kind[i] = RAW
        elif v == 1:
            kind[i] = ZSTD
            zlen[i] = r.varint("zstd segment length", r.remaining)
        else:
            kind[i] = GOLOMB
            s_arr[i], m_arr[i] = (v - 2) & 1, ((v - 2) >> 1) + 1
            k_arr[i] = r.varint("segment symbol count", int(lengths[i]))
    gsel = kind == GOLOMB
    total_k = int(k_arr.sum())
    pos = np.zeros(0, dtype=np.int64)
    if gsel.any():
        ulen = r.varint("U length", r.remaining)
        xlen = r.varint("X length", r.remaining)
        if total_k > 8 * ulen:
            raise r.fail(f"{total_k} Golomb codewords cannot fit in a {ulen}-byte quotient stream")
        ubuf = r.take(ulen, "U stream")
        gm, gk = m_arr[gsel], k_arr[gsel]
        kk = np.array([bio.ceil_log2(int(m)) for m in gm], dtype=np.int64)
        abits = int((np.maximum(kk - 1, 0) * gk).sum())
        abuf = r.take((abits + 7) // 8, "A stream")
        xbuf = r.take(xlen, "X stream")
        cs = _golomb_positions(r, ubuf, abuf, abits, xbuf, gm, gk, total_k)
        ends = np.cumsum(k_arr)
        starts = ends - k_arr
        if gk.size == 1:
            pos = cs - 1
        else:
            base = np.where(starts > 0, cs[np.maximum(starts - 1, 0)], 0) if total_k else np.zeros(nseg, dtype=np.int64)
            pos = cs - 1 - np.repeat(base, k_arr)
        last = ends[k_arr > 0] - 1
        if np.any(pos[last] >= lengths[k_arr > 0]):
            raise r.fail("a Golomb-coded position runs past its segment")
    rawbits = int(lengths[kind == RAW].sum())
    rawbuf = r.take((rawbits + 7) // 8, "raw stream")
    bio.check_zero_padding(rawbuf, rawbits, r.what)
    explicit = {}  # segment -> its bits, for raw and zstd segments
    ro = 0
    for i in np.flatnonzero(kind != GOLOMB).tolist():
        ln = int(lengths[i])
        if kind[i] == RAW:
            explicit[i] = (rawbuf, ro, ln)
            ro += ln
        else:
            packed = bio.unzstd(r.take(int(zlen[i]), "zstd segment"), (ln + 7) // 8, r.what)
            bio.check_zero_padding(packed, ln, r.what)
            explicit[i] = (packed, 0, ln)

    def bits_of(i: int) -> np.ndarray:
        buf, start, ln = explicit[i]
        return np.unpackbits(buf, count=start + ln)[start:].view(bool)

    if nseg == 0:
        return np.zeros(0, dtype=bool)
    if nseg == 1:  # the common, flat case
        if kind[0] != GOLOMB:
            return bits_of(0).copy()
        out = np.full(n, bool(s_arr[0]))
        out[pos] = not s_arr[0]
        return out
    offs = np.cumsum(lengths) - lengths
    seq = np.repeat(s_arr.astype(bool), lengths)
    seq[np.repeat(offs, k_arr) + pos] = np.repeat(s_arr == 0, k_arr)
    for i in explicit:
        seq[offs[i] : offs[i] + lengths[i]] = bits_of(i)
    if not (kr or kc):
        return seq
    # blocks (a, b) a-major, rows and columns in class order -> the permuted matrix -> the module
    rb = np.concatenate([[0], np.cumsum(rsz)])
    cb = np.concatenate([[0], np.cumsum(csz)])
    perm = np.empty((rows, cols), dtype=bool)
    i = 0
    for a in range(rsz.size):
        for b in range(csz.size):
            ln = int(rsz[a] * csz[b])
            if ln:
                perm[rb[a] : rb[a + 1], cb[b] : cb[b + 1]] = seq[offs[i] : offs[i] + ln].reshape(int(rsz[a]), int(csz[b]))
                i += 1
    if rc is not None:
        perm = perm[np.argsort(np.argsort(rc, kind="stable"))]
    if cc is not None:
        perm = np.take(perm, np.argsort(np.argsort(cc, kind="stable")), axis=1)
    return perm.reshape(-1)


# ----------------------------------------------------------------------------------------------------------------
# The codec


@CODECS.register(
    "entropy",
    summary="Switch codec: Golomb-coded mask gaps with row/column density contexts; codes packed or zstd.",
    paper="merge-bench (this project); bound: n (H(alpha) + (1 - alpha) b) bits",
    params=[Param("contexts", bool, True, "split 2-D modules into row/column density classes where smaller")],
)
class EntropyCodec(Codec):
    version = VERSION

    def encode(self, value: Any) -> tuple[dict[str, Tensor], dict[str, Any]]:
        names, modules = bio.as_modules(value)
        contexts = bool(self.params.get("contexts", True))
        payloads = []
        for i, sc in enumerate(modules):
            mask, codes = bio.check_module(sc, f"entropy: module {names[i] if names else 0!r}")
            mode, body = encode_mask(mask, sc.shape, contexts)
            packed = bio.pack_codes(codes, sc.bits)
            if packed.size >= 128:
                z = zstandard.ZstdCompressor(level=_CODES_ZSTD_LEVEL).compress(packed.tobytes())
                if len(z) < packed.size:
                    mode |= 1 << 4
                    packed = np.frombuffer(z, dtype=np.uint8)
            payloads.append((sc, np.concatenate([np.array([mode], dtype=np.uint8), np.frombuffer(body, dtype=np.uint8), packed])))
        return {"stream": bio.frame(MAGIC, VERSION, 0, payloads)}, bio.meta_for(names)

    def decode(self, parts: Mapping[str, Tensor], meta: Mapping[str, Any]) -> Any:
        what = "entropy artifact"
        names, buf, _, entries = bio.open_stream(parts, meta, MAGIC, VERSION, what)
        out = []
        for i, e in enumerate(entries):
            r = bio.Reader(buf, f"{what}, module {i}", e.start, e.end)
            mode = r.u8("mode")
            if mode >> 5:
                raise r.fail(f"unknown mode bits {mode:#x}")
            mask = decode_mask(r, mode, e.shape, e.n)
            nnz = int(np.count_nonzero(mask))
            size = (nnz * e.bits + 7) // 8
            if mode >> 4 & 1:
                packed = bio.unzstd(r.take(r.remaining, "zstd codes frame"), size, r.what)
            else:
                packed = r.take(size, "codes")
                r.expect_end()
            bio.check_zero_padding(packed, nnz * e.bits, r.what)
            out.append(bio.make_codes(e.shape, mask, bio.unpack_codes(packed, nnz, e.bits), e.bits))
        return bio.build_value(names, out)
