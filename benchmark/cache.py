"""Content-addressed cache for generated suites and in-house pretrained/fine-tuned tiny checkpoints.

Key = sha256 of (name, config, seed, code version). The code version is a hash of the source files that produce
the entry, so editing a generator or a training loop invalidates what it built. The cache lives outside git, at
``$MERGE_BENCH_CACHE`` or ``~/.cache/merge-bench``.

Entries are written to a temporary path and renamed into place, and builders run under a file lock, so two
processes never build the same entry at once and an interrupted build leaves nothing behind.

Builders run with a fixed number of torch intra-op threads, :func:`build_threads` (2, or the machine's core count
if smaller), and that number is part of the key: float reductions split differently across threads, so a
checkpoint trained with 1 thread differs in its bits from one trained with 2 (measured on the tiny RoBERTa and CLIP
builds). Pinning it makes a build's bits independent of the host's core count and of ``OMP_NUM_THREADS``.
"""
from __future__ import annotations

import fcntl
import hashlib
import inspect
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterator

ENV_VAR = "MERGE_BENCH_CACHE"
BUILD_THREADS = 2


def build_threads() -> int:
    """Intra-op threads every cached build runs with (see the module docstring)."""
    return max(1, min(BUILD_THREADS, os.cpu_count() or 1))


@contextmanager
def _pinned_threads(n: int) -> Iterator[None]:
    import torch

    prev = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


def default_root() -> Path:
    return Path(os.environ.get(ENV_VAR) or Path.home() / ".cache" / "merge-bench")


def code_version(*objs: ModuleType | type | Callable | str) -> str:
    """Hash of the source text of modules/classes/functions (or literal strings) that define an entry."""
    h = hashlib.sha256()
    for obj in objs:
        src = obj if isinstance(obj, str) else inspect.getsource(obj)
        h.update(src.encode())
    return h.hexdigest()[:16]


def config_key(name: str, config: Any, seed: int, version: str) -> str:
    blob = json.dumps({"name": name, "config": config, "seed": seed, "code": version, "threads": build_threads()},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class Cache:
    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root is not None else default_root()

    def dir_for(self, name: str, config: Any, seed: int, version: str) -> Path:
        return self.root / name / config_key(name, config, seed, version)

    @contextmanager
    def _lock(self, target: Path) -> Iterator[None]:
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target.parent / f".{target.name}.lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def get_or_build(
        self, name: str, config: Any, seed: int, version: str, build: Callable[[Path], None]
    ) -> Path:
        """Return the entry's directory, calling ``build(tmpdir)`` to fill it the first time.

        ``build`` writes files into the temporary directory it is given; it is renamed into place when ``build``
        returns, so a crash mid-build leaves no entry.
        """
        target = self.dir_for(name, config, seed, version)
        if (target / ".complete").exists():
            return target
        with self._lock(target):
            if (target / ".complete").exists():
                return target
            tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
            try:
                with _pinned_threads(build_threads()):
                    build(tmp)
                with open(tmp / "entry.json", "w") as f:
                    json.dump({"name": name, "config": config, "seed": seed, "code": version,
                               "threads": build_threads()}, f, indent=1, default=str)
                (tmp / ".complete").touch()
                if target.exists():
                    shutil.rmtree(target)
                os.replace(tmp, target)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        return target
