"""The artifact container: measured sizes add up, values come back bit-exactly, damage is reported clearly."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

from benchmark.contract import Artifacts
from benchmark.storage import StorageError, pack_bits, read_artifacts, unpack_bits, write_artifacts


def test_round_trip_is_bit_exact_and_sizes_add_up(tmp_path):
    g = torch.Generator().manual_seed(0)
    sd = {"a.weight": torch.randn(7, 5, generator=g), "a.bias": torch.randn(5, generator=g).half()}
    mask = torch.rand(37, generator=g) > 0.5
    arts = Artifacts()
    arts.add("merged", sd, codec="state_dict")
    arts.add("mask", mask, codec="bitmask")
    arts.add("knob", torch.tensor([0.25, 2.0]), codec="tensor")
    arts.add("coeffs", {"x": [0.1, 0.2]}, codec="json")
    w = write_artifacts(arts, tmp_path / "a.safetensors")
    assert w.total_bytes == (tmp_path / "a.safetensors").stat().st_size
    assert sum(b["bytes"] for b in w.breakdown.values()) == w.total_bytes
    assert w.breakdown["merged"]["bytes"] == 7 * 5 * 4 + 5 * 2
    assert w.breakdown["mask"]["bytes"] == 5  # 37 bits packed 8 per byte
    back = read_artifacts(w.path)
    for k in sd:
        assert back["merged"][k].dtype == sd[k].dtype and torch.equal(back["merged"][k], sd[k])
    assert torch.equal(back["mask"], mask)
    assert torch.equal(back["knob"], torch.tensor([0.25, 2.0]))
    assert back["coeffs"] == {"x": [0.1, 0.2]}


def test_cast_codec_is_lossy_on_purpose(tmp_path):
    arts = Artifacts()
    x = torch.tensor([1.0 + 2**-20])
    arts.add("x", x, codec="tensor", dtype="float16")
    back = read_artifacts(write_artifacts(arts, tmp_path / "x.safetensors").path)
    assert back["x"].dtype == torch.float32 and back["x"].item() == 1.0


@pytest.mark.parametrize("n", [1, 7, 8, 9, 64, 1001])
def test_pack_bits_round_trip(n):
    m = torch.rand(n) > 0.3
    assert torch.equal(unpack_bits(pack_bits(m), n), m)


def test_unpack_refuses_wrong_length():
    with pytest.raises(StorageError):
        unpack_bits(torch.zeros(2, dtype=torch.uint8), 17)


def test_truncated_file_raises_storage_error(tmp_path):
    arts = Artifacts()
    arts.add("m", {"w": torch.randn(100)}, codec="state_dict")
    p = write_artifacts(arts, tmp_path / "t.safetensors").path
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(StorageError):
        read_artifacts(p)
    p.write_bytes(b"garbage")
    with pytest.raises(StorageError):
        read_artifacts(p)


def test_unknown_codec_is_refused_before_writing(tmp_path):
    from benchmark.registry import RegistryError

    arts = Artifacts()
    arts.add("x", torch.zeros(1), codec="nope")
    with pytest.raises(RegistryError, match="unknown codec 'nope'"):
        write_artifacts(arts, tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()


@pytest.mark.skipif(sys.platform != "linux", reason="madvise(MADV_PAGEOUT) is Linux's")
def test_page_out_hands_pages_back_and_loses_nothing(tmp_path):
    import numpy as np

    from benchmark.storage import page_out
    vals = torch.arange(3 * 4096, dtype=torch.float32)
    (tmp_path / "x.bin").write_bytes(vals.numpy().tobytes())
    file_view = torch.from_numpy(np.memmap(tmp_path / "x.bin", dtype=np.float32, mode="c"))
    assert torch.equal(file_view, vals)  # its pages are now resident
    assert page_out(file_view[5:9000])  # unaligned: the pages around it go too
    assert torch.equal(file_view, vals)  # a file page is read back from the file when touched again
    anon = vals.clone()
    assert page_out(anon) and torch.equal(anon, vals)  # an anonymous one stays (no swap) or is swapped back in
    assert not page_out(torch.zeros(0))


def _resident_kib(path) -> int:
    """Resident KiB of this process's mappings of ``path`` (``/proc/self/smaps``)."""
    total, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split(maxsplit=1)[0]
            if "-" in head and all(c in "0123456789abcdef-" for c in head):
                inside = line.rstrip().endswith(str(path))
            elif inside and line.startswith("Rss:"):
                total += int(line.split()[1])
    return total


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="Linux /proc")
def test_page_out_empties_the_resident_pages_of_a_file_view(tmp_path):
    """What EMR's evaluation relies on: a mapped file view's pages leave RSS after ``page_out`` (its smaps ``Rss``
    goes to 0) and come back, unchanged, when read."""
    import numpy as np

    from benchmark.storage import page_out
    vals = torch.arange(256 * 1024, dtype=torch.float32)  # 1 MiB, 256 pages
    f = tmp_path / "x.bin"
    with open(f, "wb") as fh:  # written back before it is mapped: the kernel does not reclaim dirty file pages
        fh.write(vals.numpy().tobytes())
        fh.flush()
        os.fsync(fh.fileno())
    view = torch.from_numpy(np.memmap(f, dtype=np.float32, mode="c"))
    assert torch.equal(view, vals) and _resident_kib(f) == 1024
    assert page_out(view)
    assert _resident_kib(f) == 0
    assert torch.equal(view, vals) and _resident_kib(f) == 1024
