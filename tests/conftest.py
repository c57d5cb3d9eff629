"""Shared test setup: offline hub, a shared cache for generated suites and micro checkpoints, and seeds."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parent.parent
# One cache for the whole test session (and across sessions): micro suites and checkpoints are built once.
os.environ.setdefault("MERGE_BENCH_CACHE", str(REPO / ".cache" / "test"))


@pytest.fixture(scope="session")
def cache_root() -> Path:
    return Path(os.environ["MERGE_BENCH_CACHE"])


@pytest.fixture(autouse=True)
def _seed():
    import torch

    torch.manual_seed(0)
