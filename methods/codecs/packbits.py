"""``packbits``: the plain baseline for switch codes: the mask packed 8 entries a byte, the codes b bits each.

Byte format (version 1). The ``stream`` part is the switch codecs' common frame (``methods/codecs/_bitio.py``:
magic ``b"PKBT"``, version 1, the module table with each module's b and shape, the payloads, CRC-32). The frame's
flags byte is 0 for raw payloads and 1 when the parameter ``zstd`` is on. A module's payload:

- raw (flags 0): ``ceil(n / 8)`` bytes of mask (``numpy.packbits`` order, MSB first, zero padding), then
  ``ceil(nnz * b / 8)`` bytes of codes (each code's b low bits, MSB first, concatenated, zero padding), nnz being
  the number of set bits in the mask: n + nnz b bits, each stream padded to a byte.
- zstd (flags 1): varint L, then a zstd frame of L bytes holding the packed mask, then a zstd frame (the rest of
  the payload) holding the packed codes. Each frame must decompress to exactly the raw stream's size.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import zstandard
from torch import Tensor

from benchmark.registry import CODECS, Param
from benchmark.storage import Codec
from methods.codecs import _bitio as bio

MAGIC = b"PKBT"
VERSION = 1
FLAG_ZSTD = 1


@CODECS.register(
    "packbits",
    summary="Baseline switch codec: mask packed 8 a byte + codes packed b bits each, optionally zstd-compressed.",
    paper="baseline; cf. Indep (auto-flexswitch.txt Sec. III-C4), which also stores b bits for inactive entries",
    params=[
        Param("zstd", bool, False, "zstd-compress the packed mask and the packed codes"),
        Param("level", int, 3, "zstd compression level (with zstd=true)", lo=1, hi=22),
    ],
)
class PackbitsCodec(Codec):
    version = VERSION

    def encode(self, value: Any) -> tuple[dict[str, Tensor], dict[str, Any]]:
        names, modules = bio.as_modules(value)
        use_zstd = bool(self.params.get("zstd", False))
        cctx = zstandard.ZstdCompressor(level=int(self.params.get("level", 3))) if use_zstd else None
        payloads = []
        for i, sc in enumerate(modules):
            mask, codes = bio.check_module(sc, f"packbits: module {names[i] if names else 0!r}")
            pm, pc = np.packbits(mask), bio.pack_codes(codes, sc.bits)
            if cctx is None:
                payload = np.concatenate([pm, pc])
            else:
                zm, zc = cctx.compress(pm.tobytes()), cctx.compress(pc.tobytes())
                head = bytearray()
                bio.put_varint(head, len(zm))
                payload = np.frombuffer(bytes(head) + zm + zc, dtype=np.uint8)
            payloads.append((sc, payload))
        return {"stream": bio.frame(MAGIC, VERSION, FLAG_ZSTD if use_zstd else 0, payloads)}, bio.meta_for(names)

    def decode(self, parts: Mapping[str, Tensor], meta: Mapping[str, Any]) -> Any:
        what = "packbits artifact"
        names, buf, flags, entries = bio.open_stream(parts, meta, MAGIC, VERSION, what, (0, FLAG_ZSTD))
        out = []
        for i, e in enumerate(entries):
            w = f"{what}, module {i}"
            r = bio.Reader(buf, w, e.start, e.end)
            mask_bytes = (e.n + 7) // 8
            if flags == FLAG_ZSTD:
                zlen = r.varint("zstd mask frame length", r.remaining)
                pm = bio.unzstd(r.take(zlen, "zstd mask frame"), mask_bytes, w)
            else:
                pm = r.take(mask_bytes, "mask")
            bio.check_zero_padding(pm, e.n, w)
            mask = np.unpackbits(pm, count=e.n).astype(bool)
            nnz = int(np.count_nonzero(mask))
            code_bytes = (nnz * e.bits + 7) // 8
            if flags == FLAG_ZSTD:
                pc = bio.unzstd(r.take(r.remaining, "zstd codes frame"), code_bytes, w)
            else:
                pc = r.take(code_bytes, "codes")
                r.expect_end()
            bio.check_zero_padding(pc, nnz * e.bits, w)
            out.append(bio.make_codes(e.shape, mask, bio.unpack_codes(pc, nnz, e.bits), e.bits))
        return bio.build_value(names, out)
