"""The switch codecs (sass, packbits, entropy): bit-exact round trips, SASS's exact size (Eq. 16) and group size
(Eq. 17), the entropy codec against the i.i.d. bound, and damaged streams reported as StorageError."""
from __future__ import annotations

import math
import zlib

import numpy as np
import pytest
import torch

from benchmark.contract import Artifacts
from benchmark.registry import CODECS
from benchmark.storage import StorageError, get_codec, read_artifacts, write_artifacts
from methods.codecs import _bitio as bio
from methods.codecs._sparse import SparseCodes
from methods.codecs.sass import (
    choose_group_size,
    decode_module,
    encode_module,
    exact_group_size,
    feasible_group_sizes,
    sass_bits,
    sass_expected_bits,
)

CODEC_CONFIGS = [
    ("sass", {}),
    ("sass", {"group": "exact"}),
    ("packbits", {}),
    ("packbits", {"zstd": True}),
    ("entropy", {}),
    ("entropy", {"contexts": False}),
]
IDS = [f"{n}{'-' + '-'.join(f'{k}={v}' for k, v in p.items()) if p else ''}" for n, p in CODEC_CONFIGS]


def H(p: float) -> float:
    return 0.0 if p <= 0 or p >= 1 else -(p * math.log2(p) + (1 - p) * math.log2(1 - p))


def sc_from(mask: np.ndarray, shape, bits: int, rng: np.random.Generator) -> SparseCodes:
    mask = np.asarray(mask, dtype=bool).reshape(-1)
    codes = rng.integers(0, 1 << bits, int(mask.sum()), dtype=np.uint8)
    return SparseCodes(tuple(shape), torch.from_numpy(mask.copy()), torch.from_numpy(codes), bits)


def bernoulli(shape, alpha: float, bits: int, rng: np.random.Generator) -> SparseCodes:
    n = int(np.prod(shape, dtype=np.int64))
    return sc_from(rng.random(n) >= alpha, shape, bits, rng)


def structured(rows: int, cols: int, alpha: float, rng: np.random.Generator, sigma: float = 0.7) -> SparseCodes:
    """A magnitude mask (top 1-alpha of |tau|) of a task vector with row and column scales: tau = s_r t_c eps."""
    tau = np.exp(sigma * rng.standard_normal(rows))[:, None] * np.exp(sigma * rng.standard_normal(cols))[None, :]
    tau = tau * rng.standard_t(3, (rows, cols))
    k = int(round((1 - alpha) * tau.size))
    thr = np.partition(np.abs(tau).ravel(), tau.size - k)[tau.size - k]
    mask = (np.abs(tau) >= thr).ravel()
    codes = (tau.ravel()[mask] > 0).astype(np.uint8)
    return SparseCodes((rows, cols), torch.from_numpy(mask), torch.from_numpy(codes), 1)


def adversarial(rng: np.random.Generator) -> dict[str, SparseCodes]:
    out = {}
    for bits in range(1, 9):
        out[f"zero.b{bits}"] = sc_from(np.zeros(100, bool), (100,), bits, rng)
        out[f"one.b{bits}"] = sc_from(np.ones(96, bool), (8, 12), bits, rng)
        out[f"rand.b{bits}"] = bernoulli((37, 11), [0.1, 0.5, 0.9, 0.99][bits % 4], bits, rng)
    out["n1_on"] = sc_from(np.ones(1, bool), (1,), 3, rng)
    out["n1_off"] = sc_from(np.zeros(1, bool), (1,), 8, rng)
    out["scalar"] = sc_from(np.ones(1, bool), (), 2, rng)
    out["prime_997"] = bernoulli((997,), 0.95, 2, rng)  # SASS: c = 1 is the only divisor <= 256
    out["prime_1009_zero"] = sc_from(np.zeros(1009, bool), (1009,), 1, rng)
    out["two_primes"] = bernoulli((2 * 509,), 0.99, 1, rng)  # divisors 1, 2, 509: c in {1, 2}
    out["last_only"] = sc_from(np.eye(1, 1000, 999, dtype=bool), (1000,), 5, rng)  # only the last group set
    out["first_only"] = sc_from(np.eye(1, 1000, 0, dtype=bool), (10, 100), 5, rng)
    out["odd_bytes"] = bernoulli((13,), 0.3, 7, rng)
    out["empty"] = sc_from(np.zeros(0, bool), (0,), 1, rng)
    out["empty2d"] = sc_from(np.zeros(0, bool), (5, 0), 4, rng)
    out["conv"] = bernoulli((16, 3, 4, 4), 0.8, 4, rng)
    out["dense_rows"] = sc_from(np.repeat(rng.random(64) < 0.3, 97), (64, 97), 1, rng)  # whole rows on/off
    out["structured"] = structured(96, 80, 0.9, rng)
    out["structured_dense"] = structured(64, 90, 0.3, rng)
    return out


def encoded_bytes(name: str, params: dict, value) -> int:
    parts, _ = get_codec(name, params).encode(value)
    return sum(t.numel() * t.element_size() for t in parts.values())


def roundtrip(name: str, params: dict, value):
    codec = get_codec(name, params)
    parts, meta = codec.encode(value)
    assert set(parts) == {"stream"} and parts["stream"].dtype == torch.uint8
    return codec.decode(parts, meta), parts, meta


# ----------------------------------------------------------------------------------------------------------------
# Round trips


def test_registered_with_versions_and_params():
    for name in ("sass", "packbits", "entropy"):
        plugin = CODECS.get(name)
        assert plugin.obj.version == 1 and plugin.summary
    assert {p.name for p in CODECS.get("packbits").params} >= {"zstd"}
    assert CODECS.get("packbits").resolve()["zstd"] is False


@pytest.mark.parametrize("name,params", CODEC_CONFIGS, ids=IDS)
def test_round_trip_adversarial_and_random(name, params):
    rng = np.random.default_rng(1)
    value = adversarial(rng)
    back, _, _ = roundtrip(name, params, value)
    assert list(back) == list(value)
    for k, v in value.items():
        assert back[k].equal(v), k
        assert back[k].mask.dtype == torch.bool and back[k].codes.dtype == torch.uint8
    single = bernoulli((33, 7), 0.6, 3, rng)
    back1, _, meta = roundtrip(name, params, single)
    assert isinstance(back1, SparseCodes) and back1.equal(single) and meta == {"single": True}


@pytest.mark.parametrize("name,params", CODEC_CONFIGS, ids=IDS)
def test_round_trip_through_the_artifact_file(tmp_path, name, params):
    rng = np.random.default_rng(2)
    switch = {"enc.q.weight": bernoulli((48, 64), 0.9, 1, rng), "enc.q.bias": bernoulli((48,), 0.7, 4, rng),
              "enc.fc.weight": structured(80, 72, 0.95, rng)}
    arts = Artifacts()
    arts.add("switch/task", switch, codec=name, **params)
    arts.add("side/task", torch.tensor([[0.5, -1.0, 0.1]]), codec="tensor")
    w = write_artifacts(arts, tmp_path / "a.safetensors")
    assert w.breakdown["switch/task"]["bytes"] == encoded_bytes(name, params, switch)
    back = read_artifacts(w.path)
    assert list(back["switch/task"]) == list(switch)
    for k, v in switch.items():
        assert back["switch/task"][k].equal(v)


def test_encode_rejects_inconsistent_values():
    rng = np.random.default_rng(3)
    good = bernoulli((10,), 0.5, 2, rng)
    too_wide = SparseCodes((10,), good.mask, torch.full((good.nnz,), 4, dtype=torch.uint8), 2)
    wrong_count = SparseCodes((10,), good.mask, torch.zeros(good.nnz + 1, dtype=torch.uint8), 2)
    wrong_shape = SparseCodes((3, 4), good.mask, good.codes, 2)
    for name, params in CODEC_CONFIGS:
        for bad in (too_wide, wrong_count, wrong_shape):
            with pytest.raises(ValueError):
                get_codec(name, params).encode({"m": bad})
        with pytest.raises(TypeError):
            get_codec(name, params).encode({"m": torch.zeros(3)})


# ----------------------------------------------------------------------------------------------------------------
# SASS: Eq. 16 exactly, Eq. 17


def mask_with_groups(n: int, c: int, groups: int, nnz: int, rng: np.random.Generator) -> np.ndarray:
    """A mask with exactly ``groups`` non-empty groups of c and ``nnz`` active entries."""
    g = n // c
    chosen = np.sort(rng.choice(g, groups, replace=False))
    mask = np.zeros(n, bool)
    mask[chosen * c + rng.integers(0, c, groups)] = True  # one entry in each chosen group
    free = np.flatnonzero(~mask.reshape(g, c)[chosen].reshape(-1))
    extra = rng.choice(free, nnz - groups, replace=False)
    rows, cols = np.divmod(extra, c)
    mask[chosen[rows] * c + cols] = True
    return mask


@pytest.mark.parametrize(
    "n,c,groups,nnz,b",
    [(1024, 32, 5, 17, 1), (1024, 32, 0, 0, 4), (1024, 32, 32, 1024, 8), (1000, 8, 125, 1000, 2), (1000, 1, 7, 7, 3),
     (998, 2, 499, 500, 5), (60, 60, 1, 60, 7), (256 * 9, 256, 9, 9, 1), (4096, 16, 100, 900, 6), (1, 1, 1, 1, 1)],
)
def test_sass_size_equals_the_formula(n, c, groups, nnz, b):
    rng = np.random.default_rng(n + c + nnz)
    mask = mask_with_groups(n, c, groups, nnz, rng)
    codes = rng.integers(0, 1 << b, nnz, dtype=np.uint8)
    payload, nbits = encode_module(mask, codes, b, c)
    assert nbits == sass_bits(n, c, groups, nnz, b) == 35 + n // c + nnz * (math.ceil(math.log2(c)) + b + 1)
    assert payload.size == (nbits + 7) // 8
    m2, c2, cc, nbits2 = decode_module(payload, n, b, "test")
    assert np.array_equal(m2, mask) and np.array_equal(c2, codes) and cc == c and nbits2 == nbits


def test_sass_codec_stream_is_frame_plus_padded_records():
    rng = np.random.default_rng(4)
    sc = bernoulli((768, 64), 0.93, 2, rng)
    parts, _ = get_codec("sass").encode({"w": sc})
    c = choose_group_size(sc.n, density=sc.nnz / sc.n)
    groups = len(np.unique(np.flatnonzero(sc.mask.numpy()) // c))
    nbits = sass_bits(sc.n, c, groups, sc.nnz, 2)
    head = 4 + 1 + 1 + 1 + (1 + 1 + bio.varint_len(768) + bio.varint_len(64) + bio.varint_len((nbits + 7) // 8))
    assert parts["stream"].numel() == head + (nbits + 7) // 8 + 4


def test_sass_bits_checks_its_arguments():
    assert sass_bits(0, 1, 0, 0, 1) == 0
    with pytest.raises(ValueError):
        sass_bits(100, 3, 1, 1, 1)  # 3 does not divide 100
    with pytest.raises(ValueError):
        sass_bits(100, 10, 2, 25, 1)  # 25 entries do not fit in 2 groups of 10
    with pytest.raises(ValueError):
        sass_bits(100, 10, 3, 2, 1)  # 3 non-empty groups need >= 3 entries
    with pytest.raises(ValueError):
        sass_bits(100, 10, 1, 1, 9)


def test_choose_group_size_is_eq17():
    assert choose_group_size(1024, 0.98) == 32  # ln2/0.02 = 34.7: divisors 32, 64
    assert choose_group_size(1024, 0.5) == 1  # ln2/0.5 = 1.39: nearer 1 than 2
    assert choose_group_size(768 * 3072, 0.97) == 24  # ln2/0.03 = 23.1
    assert choose_group_size(768 * 3072, 0.98) == 36 and exact_group_size(768 * 3072, 47186, 1) == 32
    assert choose_group_size(768 * 3072, density=0.02) == 36
    assert choose_group_size(6, density=math.log(2) / 1.49) == 1 and choose_group_size(6, density=math.log(2) / 1.51) == 2
    assert choose_group_size(1024, 1.0) == 256  # nothing active: the largest c in C
    assert choose_group_size(997, 0.99) == 1  # a prime: only c = 1
    assert choose_group_size(2**27, 0.0) == 1 and choose_group_size(2**28, 0.0) == 2  # G <= 2**27
    assert feasible_group_sizes(12) == [1, 2, 3, 4, 6, 12]
    with pytest.raises(ValueError):
        choose_group_size(2**31 - 1, 0.9)  # a prime above 2**27: no c in C
    with pytest.raises(ValueError):
        choose_group_size(100, 0.5, density=0.5)


def test_sass_exact_group_never_larger_than_eq17():
    rng = np.random.default_rng(5)
    for alpha in (0.6, 0.9, 0.97, 0.985):
        v = {"w": bernoulli((768, 3 * 96), alpha, 1, rng)}
        assert encoded_bytes("sass", {"group": "exact"}, v) <= encoded_bytes("sass", {}, v)


def trials_for(n: int, alpha: float, b: int, c: int, rel_se: float = 0.0028) -> int:
    """Trials so that the standard error of the mean size is ``rel_se`` of Eq. 16 (nnz is Binomial)."""
    w = math.ceil(math.log2(c)) + b + 1
    sd = math.sqrt(n * alpha * (1 - alpha)) * w
    return max(10, math.ceil((sd / (rel_se * sass_expected_bits(n, alpha, b, c))) ** 2))


@pytest.mark.parametrize("n", [2**10, 2**13, 2**16])
def test_sass_matches_eq16_within_1pct_on_bernoulli_masks(n):
    """Every trial's measured length is the exact formula; the mean over trials is Eq. 16 within 1 %, with enough
    trials that 1 % is >= 3.5 standard errors of the mean (the full Fig. 7 grid is in benchmarks/codec.py)."""
    rng = np.random.default_rng(n)
    for alpha in (0.1, 0.5, 0.8, 0.98):
        c = choose_group_size(n, alpha)
        trials = min(max(trials_for(n, alpha, b, c) for b in (1, 4, 8)), 4000)
        masks = rng.random((trials, n)) >= alpha
        nnzs = masks.sum(axis=1)
        groups = masks.reshape(trials, -1, c).any(axis=2).sum(axis=1)
        for b in (1, 4, 8):
            sizes = np.empty(trials)
            for t, mask in enumerate(masks):
                codes = rng.integers(0, 1 << b, int(nnzs[t]), dtype=np.uint8)
                payload, nbits = encode_module(mask, codes, b, c)
                assert nbits == sass_bits(n, c, int(groups[t]), int(nnzs[t]), b) and payload.size == (nbits + 7) // 8
                sizes[t] = nbits
            expected = sass_expected_bits(n, alpha, b, c)
            assert abs(sizes.mean() / expected - 1) < 0.01, (n, alpha, b, c, sizes.mean(), expected)


# ----------------------------------------------------------------------------------------------------------------
# The entropy codec against the i.i.d. bound


def iid_bound(value: dict[str, SparseCodes]) -> float:
    return sum(v.n * H(v.nnz / v.n) + v.nnz * v.bits for v in value.values() if v.n)


@pytest.mark.parametrize("alpha", [0.5, 0.7, 0.9, 0.97])
def test_entropy_within_3pct_of_the_iid_bound(alpha):
    rng = np.random.default_rng(int(alpha * 100))
    value = {"fc1": bernoulli((1024, 768), alpha, 1, rng), "q": bernoulli((768, 256), alpha, 1, rng),
             "bias": bernoulli((768,), alpha, 1, rng)}
    bits = 8 * encoded_bytes("entropy", {}, value)
    assert bits <= 1.03 * iid_bound(value)
    assert bits < 8 * encoded_bytes("sass", {}, value)
    assert bits <= 8 * encoded_bytes("packbits", {}, value) + 64


def test_entropy_contexts_go_below_the_iid_bound_on_structured_masks():
    rng = np.random.default_rng(6)
    value = {"w": structured(384, 512, 0.9, rng)}
    with_ctx = 8 * encoded_bytes("entropy", {}, value)
    without = 8 * encoded_bytes("entropy", {"contexts": False}, value)
    assert with_ctx < 0.97 * iid_bound(value) and with_ctx < without
    buf, _, entries = bio.unframe(get_codec("entropy").encode(value)[0], b"ENTC", 1, "t", 1)
    assert buf[entries[0].start] & 0x0F  # the module was split into row/column classes


def test_entropy_codes_are_zstd_compressed_when_skewed():
    rng = np.random.default_rng(7)
    mask = rng.random(40000) < 0.3
    codes = np.minimum(rng.geometric(0.6, int(mask.sum())) - 1, 15).astype(np.uint8)  # skewed 4-bit levels
    value = {"w": SparseCodes((200, 200), torch.from_numpy(mask), torch.from_numpy(codes), 4)}
    raw_codes_bits = 4 * int(mask.sum())
    bits = 8 * encoded_bytes("entropy", {}, value)
    assert bits < iid_bound(value) - 0.2 * raw_codes_bits
    back, _, _ = roundtrip("entropy", {}, value)
    assert back["w"].equal(value["w"])


@pytest.mark.parametrize("alpha,kind", [(0.5, "raw"), (0.63, "zstd"), (0.9, "golomb"), (0.08, "golomb")])
def test_entropy_picks_the_smallest_segment_code(alpha, kind):
    rng = np.random.default_rng(12)
    value = {"w": bernoulli((256, 256), alpha, 1, rng)}
    parts, meta = get_codec("entropy", {"contexts": False}).encode(value)
    buf, _, entries = bio.unframe(parts, b"ENTC", 1, "t", 1)
    r = bio.Reader(buf, "t", entries[0].start + 1)
    v = r.varint("descriptor", 2**30)
    assert {"raw": v == 0, "zstd": v == 1, "golomb": v >= 2}[kind]
    if kind == "golomb":
        assert (v - 2) & 1 == (alpha < 0.5)  # the rarer symbol is coded
    assert get_codec("entropy").decode(parts, meta)["w"].equal(value["w"])
    assert 8 * encoded_bytes("entropy", {}, value) <= 1.03 * iid_bound(value) + 8 * 32  # + frame and table


def test_packbits_size_is_mask_plus_codes():
    rng = np.random.default_rng(8)
    sc = bernoulli((13, 7), 0.4, 3, rng)
    stream = get_codec("packbits").encode({"m": sc})[0]["stream"]
    head = 4 + 1 + 1 + 1 + (1 + 1 + 1 + 1 + 1)
    assert stream.numel() == head + (91 + 7) // 8 + (sc.nnz * 3 + 7) // 8 + 4


# ----------------------------------------------------------------------------------------------------------------
# Damaged streams


def reseal(buf: np.ndarray) -> np.ndarray:
    """Recompute the CRC so that a corruption reaches the decoder's own checks."""
    body = buf[:-4]
    return np.concatenate([body, np.frombuffer((zlib.crc32(body) & 0xFFFFFFFF).to_bytes(4, "little"), np.uint8)])


def decode_raw(name: str, params: dict, buf: np.ndarray, meta: dict):
    return get_codec(name, params).decode({"stream": torch.from_numpy(np.ascontiguousarray(buf))}, meta)


@pytest.mark.parametrize("name,params", CODEC_CONFIGS, ids=IDS)
def test_truncated_or_corrupted_streams_raise_storage_error(name, params):
    rng = np.random.default_rng(9)
    value = {"a": bernoulli((40, 50), 0.9, 2, rng), "b": structured(80, 70, 0.8, rng), "c": bernoulli((9,), 0.5, 8, rng),
             "d": bernoulli((256, 200), 0.63, 1, rng)}  # a zstd segment
    parts, meta = get_codec(name, params).encode(value)
    buf = parts["stream"].numpy()
    for cut in sorted({0, 1, 5, 8, len(buf) // 3, len(buf) // 2, len(buf) - 5, len(buf) - 1}):
        with pytest.raises(StorageError):
            decode_raw(name, params, buf[:cut], meta)
    for i in rng.choice(len(buf), 40, replace=False):
        bad = buf.copy()
        bad[i] ^= np.uint8(1 << int(rng.integers(0, 8)))
        with pytest.raises(StorageError, match="CRC"):
            decode_raw(name, params, bad, meta)
    with pytest.raises(StorageError, match="magic"):
        bad = buf.copy()
        bad[0] ^= 0xFF
        decode_raw(name, params, reseal(bad), meta)
    with pytest.raises(StorageError, match="version"):
        bad = buf.copy()
        bad[4] = 9
        decode_raw(name, params, reseal(bad), meta)
    with pytest.raises(StorageError, match="modules"):
        decode_raw(name, params, buf, {"names": ["a", "b"]})
    with pytest.raises(StorageError):
        decode_raw(name, params, buf, {})
    with pytest.raises(StorageError, match="stream"):
        get_codec(name, params).decode({}, meta)
    with pytest.raises(StorageError):
        get_codec(name, params).decode({"stream": torch.zeros(40, dtype=torch.int32)}, meta)
    # inside the CRC: every resealed corruption is either refused as a StorageError or decodes to valid codes
    for _ in range(100):
        bad = buf.copy()
        i = int(rng.integers(5, len(buf) - 4))
        bad[i : i + int(rng.integers(1, 4))] = rng.integers(0, 256, dtype=np.uint8)
        if rng.random() < 0.3:
            bad = np.concatenate([bad[: int(rng.integers(5, len(buf) - 4))], bad[-4:]])
        try:
            out = decode_raw(name, params, reseal(bad), meta)
        except StorageError:
            continue
        for v in out.values():
            assert v.mask.numel() == int(np.prod(v.shape)) and v.codes.numel() == int(v.mask.sum())


def test_lengths_are_checked_before_allocating():
    rng = np.random.default_rng(10)
    value = {"a": bernoulli((64, 64), 0.9, 1, rng)}
    for name, params in CODEC_CONFIGS:
        parts, meta = get_codec(name, params).encode(value)
        buf = parts["stream"].numpy()
        # the module table: bits, ndim, dims (64, 64), payload length; claim a huge payload
        table = 4 + 1 + 1 + 1
        assert buf[table + 2] == 64 and buf[table + 3] == 64
        r = bio.Reader(buf, "t", table + 4)
        r.varint("payload length", 2**40)
        huge = np.frombuffer(bytes([0xFF, 0xFF, 0xFF, 0xFF, 0x0F]), np.uint8)
        bad = np.concatenate([buf[: table + 4], huge, buf[r.pos :]])
        with pytest.raises(StorageError, match="past the end|exceeds"):
            decode_raw(name, params, reseal(bad), meta)
        # a dimension claiming 2**40 elements
        bad = np.concatenate([buf[: table + 2], np.frombuffer(bytes([0x80, 0x80, 0x80, 0x80, 0x80, 0x20]), np.uint8), buf[table + 3 :]])
        with pytest.raises(StorageError, match="exceeds"):
            decode_raw(name, params, reseal(bad), meta)


def test_sass_header_must_match_the_shape():
    rng = np.random.default_rng(11)
    sc = bernoulli((1024,), 0.9, 1, rng)
    c = choose_group_size(1024, density=sc.nnz / 1024)
    payload, _ = encode_module(sc.mask.numpy(), sc.codes.numpy(), 1, c)
    with pytest.raises(StorageError, match="header"):
        decode_module(payload, 2048, 1, "t")
    with pytest.raises(StorageError, match="truncated"):
        decode_module(payload[:3], 1024, 1, "t")
    with pytest.raises(StorageError):
        decode_module(payload[:-1], 1024, 1, "t")
    with pytest.raises(StorageError):
        decode_module(np.concatenate([payload, np.zeros(1, np.uint8)]), 1024, 1, "t")
