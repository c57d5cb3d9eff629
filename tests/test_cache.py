"""The build cache: builds run with pinned intra-op threads, whatever the caller's setting, and the thread count is
part of the key (a checkpoint's bits depend on it)."""
from __future__ import annotations

import torch

from benchmark import cache as cache_mod
from benchmark.cache import Cache, build_threads, config_key


def test_builds_run_with_the_pinned_thread_count(tmp_path):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        seen: list[int] = []
        Cache(tmp_path).get_or_build("x", {"a": 1}, 0, "v1", lambda tmp: seen.append(torch.get_num_threads()))
        assert seen == [build_threads()]
        assert torch.get_num_threads() == 1  # restored
    finally:
        torch.set_num_threads(before)


def test_the_thread_count_is_part_of_the_key(monkeypatch):
    k2 = config_key("x", {"a": 1}, 0, "v1")
    monkeypatch.setattr(cache_mod, "BUILD_THREADS", 1)
    monkeypatch.setattr(cache_mod.os, "cpu_count", lambda: 8)
    assert build_threads() == 1
    k1 = config_key("x", {"a": 1}, 0, "v1")
    monkeypatch.setattr(cache_mod, "BUILD_THREADS", 2)
    assert build_threads() == 2 and config_key("x", {"a": 1}, 0, "v1") == k2 != k1
