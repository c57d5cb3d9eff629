"""Content-addressed cache for generated suites and in-house pretrained/fine-tuned tiny checkpoints.

Key = sha256 of (name, config, seed, code version). The code version is a hash of the source files that produce
the entry, so editing a generator or a training loop invalidates what it built. The cache lives outside git, at
``$MERGE_BENCH_CACHE`` or ``~/.cache/merge-bench``.

Entries are written to a temporary path and renamed into place, and builders run under a file lock, so two
processes never build the same entry at once and an interrupted build leaves no entry. A temporary directory that
a killed build left behind is swept the next time anyone takes that entry's lock (no one else can be writing it).

Every entry is verified when it is read. Its ``entry.json`` (written last, before the ``.complete`` marker) holds
the key's inputs and the sha256 and size of every file the builder wrote. Reading an entry recomputes its key from
``entry.json`` (an entry moved or copied under another key is caught), checks that no file is missing, added,
resized or changed, and only then hands the directory out. A ``.complete`` marker alone proves nothing: 512 bytes of
garbage in one cached fine-tuned checkpoint once dropped every task to chance with exit 0, and a truncated one was a
raw traceback that no rerun repaired. An entry that fails is rebuilt once, with a :class:`CacheWarning` naming it
and why; if the rebuilt entry fails too, or the bad one cannot be removed, :class:`CacheError` refuses in one line.
:meth:`Cache.sha256` gives the verified hash of an entry's file, which is what records name as checkpoints.

Hashing is sequential reads at disk speed, but one process reads the same entry many times (every suite load asks
for it), so a process remembers each entry it verified together with the (inode, size, mtime) of its files, and
re-hashes only when one of those changed.

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
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterator

from benchmark.errors import UserError

ENV_VAR = "MERGE_BENCH_CACHE"
BUILD_THREADS = 2
#: the entry's manifest and its completion marker; neither is part of the hashed content
MANIFEST = "entry.json"
COMPLETE = ".complete"
#: version of the manifest's layout; an entry with another (or none: built before entries were hashed) is rebuilt
MANIFEST_VERSION = 2


class CacheError(UserError):
    """A cache entry that cannot be used or repaired, or a cache root that is not a writable directory."""


class CacheWarning(UserWarning):
    """A cache entry failed verification and is being rebuilt (printed on one line by the CLI)."""


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


def config_key(name: str, config: Any, seed: int, version: str, threads: int | None = None) -> str:
    """The entry's key; ``threads`` defaults to :func:`build_threads` (given when re-deriving a stored entry's)."""
    blob = json.dumps({"name": name, "config": config, "seed": seed, "code": version,
                       "threads": build_threads() if threads is None else threads},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _content(entry: Path) -> list[Path]:
    """The files a builder wrote into ``entry`` (recursively), the manifest and the marker left out."""
    return sorted(p for p in entry.rglob("*") if p.is_file() and p.relative_to(entry).as_posix() not in
                  (MANIFEST, COMPLETE))


def _signature(entry: Path, files: list[Path]) -> tuple:
    out = []
    for p in [entry / MANIFEST, *files]:
        st = p.stat()
        out.append((p.relative_to(entry).as_posix(), st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(out)


#: entry directory -> (signature when verified, {relative path: sha256}); see the module docstring
_VERIFIED: dict[str, tuple[tuple, dict[str, str]]] = {}
_VERIFIED_LOCK = threading.Lock()


class Cache:
    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root is not None else default_root()

    def dir_for(self, name: str, config: Any, seed: int, version: str) -> Path:
        return self.root / name / config_key(name, config, seed, version)

    def check_writable(self) -> None:
        """Create the root and write-test it, so that a run learns of a bad cache (a file, a read-only folder)
        before its work, in one line."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".write-test.")
            os.close(fd)
            os.unlink(tmp)
        except OSError as e:
            raise CacheError(f"cache {str(self.root)!r} (${ENV_VAR}) is not a writable directory "
                             f"({e.strerror or e})") from None

    def verify(self, entry: Path, name: str | None = None, key: str | None = None) -> dict[str, str]:
        """The entry's files -> their sha256, after checking them against its manifest (module docstring).

        Raises :class:`ValueError` saying what is wrong: no manifest or an old one, a key that does not match the
        inputs the manifest records (``key``, default the directory's name), a file missing, added or changed."""
        entry = Path(entry)
        try:
            files = _content(entry)
            sig = _signature(entry, files)
        except OSError as e:
            raise ValueError(f"unreadable ({e.strerror or e})") from None
        with _VERIFIED_LOCK:
            memo = _VERIFIED.get(str(entry))
        if memo is not None and memo[0] == sig:
            return dict(memo[1])
        try:
            manifest = json.loads((entry / MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ValueError(f"its {MANIFEST} is unreadable ({e})") from None
        if not isinstance(manifest, dict) or manifest.get("manifest") != MANIFEST_VERSION:
            raise ValueError(f"its {MANIFEST} has no content hashes (built by an older merge-bench)")
        want = manifest.get("files")
        if not isinstance(want, dict) or not all(isinstance(v, dict) for v in want.values()):
            raise ValueError(f"its {MANIFEST} has no valid file list")
        try:
            expect_key = config_key(manifest["name"], manifest["config"], manifest["seed"], manifest["code"],
                                    manifest["threads"])
        except (KeyError, TypeError) as e:
            raise ValueError(f"its {MANIFEST} lacks the key's inputs ({e})") from None
        if expect_key != (key or entry.name) or (name is not None and manifest["name"] != name):
            raise ValueError(f"it holds the entry {manifest['name']}/{expect_key}, not this one (moved or swapped)")
        have = {p.relative_to(entry).as_posix(): p for p in files}
        if set(have) != set(want):
            missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
            raise ValueError(f"its files differ from its manifest (missing {missing}, unexpected {extra})")
        hashes = {}
        for rel, p in have.items():
            size = p.stat().st_size
            if size != want[rel].get("bytes"):
                raise ValueError(f"{rel} has {size} bytes, the manifest says {want[rel].get('bytes')} (truncated "
                                 "or overwritten)")
            try:
                h = sha256_file(p)
            except OSError as e:
                raise ValueError(f"{rel} is unreadable ({e.strerror or e})") from None
            if h != want[rel].get("sha256"):
                raise ValueError(f"{rel} does not match its content hash (corrupted or replaced)")
            hashes[rel] = h
        with _VERIFIED_LOCK:
            _VERIFIED[str(entry)] = (sig, dict(hashes))
        return hashes

    def sha256(self, path: str | os.PathLike) -> str:
        """The verified sha256 of a file inside a cache entry (what a record names as its checkpoint's hash)."""
        path = Path(path)
        for entry in path.parents:
            if (entry / MANIFEST).is_file():
                try:
                    return self.verify(entry)[path.relative_to(entry).as_posix()]
                except (ValueError, KeyError) as e:
                    raise CacheError(f"cache entry {entry}: {e}") from None
        raise CacheError(f"{path} is not inside a cache entry")

    @contextmanager
    def _lock(self, target: Path) -> Iterator[None]:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fh = open(target.parent / f".{target.name}.lock", "w")
        except OSError as e:
            raise CacheError(f"cache entry {target}: cannot lock it ({e.strerror or e})") from None
        with fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def get_or_build(
        self, name: str, config: Any, seed: int, version: str, build: Callable[[Path], None]
    ) -> Path:
        """Return the entry's directory, verified (module docstring), calling ``build(tmpdir)`` to fill it the first
        time, and once more when the entry fails verification.

        ``build`` writes files into the temporary directory it is given; their hashes are recorded and the directory
        is renamed into place when ``build`` returns, so a crash mid-build leaves no entry.
        """
        target = self.dir_for(name, config, seed, version)
        label = f"{name}/{target.name}"
        if (target / COMPLETE).exists():
            try:
                self.verify(target, name)
                return target
            except ValueError:
                pass  # decided again under the lock: another process may be rebuilding it right now
        self.check_writable()
        with self._lock(target):
            self._sweep_temps(target)
            if (target / COMPLETE).exists() or target.exists():
                try:
                    self.verify(target, name)
                    return target
                except ValueError as e:
                    warnings.warn(f"cache entry {label} ({target}) is not valid: {e}; rebuilding it", CacheWarning,
                                  stacklevel=2)
                    try:
                        if target.is_dir() and not target.is_symlink():
                            shutil.rmtree(target)
                        else:
                            target.unlink()
                    except OSError as e2:
                        raise CacheError(f"cache entry {label} is not valid ({e}) and cannot be removed "
                                         f"({e2.strerror or e2}); delete {target}") from None
            self._build(target, name, config, seed, version, build)
            try:
                self.verify(target, name)
            except ValueError as e:  # a fresh build that does not verify: the disk or the builder is broken
                raise CacheError(f"cache entry {label} was rebuilt and still does not verify ({e}); refusing to "
                                 "use it") from None
        return target

    def _build(self, target: Path, name: str, config: Any, seed: int, version: str,
               build: Callable[[Path], None]) -> None:
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
        try:
            with _pinned_threads(build_threads()):
                build(tmp)
            files = {p.relative_to(tmp).as_posix(): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
                     for p in _content(tmp)}
            with open(tmp / MANIFEST, "w") as f:
                json.dump({"manifest": MANIFEST_VERSION, "name": name, "config": config, "seed": seed,
                           "code": version, "threads": build_threads(), "files": files}, f, indent=1, default=str)
            (tmp / COMPLETE).touch()
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    @staticmethod
    def _sweep_temps(target: Path) -> None:
        """Remove the temporary build directories a killed build of ``target`` left (the caller holds its lock, so
        none of them is being written)."""
        for old in target.parent.glob(f".{target.name}.*"):
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old, ignore_errors=True)
