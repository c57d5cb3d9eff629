"""The base of the generated task suites (``vision8``, ``rf100_7``, ``glue7``): one class that owns everything a
suite with a ``paper`` profile (real data, read by the suite's own loader) and generated profiles (``tiny``,
``micro``: offline, seeded, cached) has in common, so that a suite only declares its tasks and sizes and supplies
its generator, as lm-eval-harness's task configs do:

* the profile check (an unknown profile is a :class:`~benchmark.errors.UserError` naming the valid ones);
* the task and split check;
* the cache entry of the generated data: one safetensors file per task, ``<split>/<name>`` tensors, written by
  :meth:`GeneratedSuite.generate` for every split, plus what :meth:`GeneratedSuite.write_extra` adds; keyed by the
  profile, the sizes, the seed and :attr:`GeneratedSuite.version`;
* the in-process memo of loaded files (shared by every instance, so the backbone's, the method's and the
  harness's suite objects read a file once);
* the paper branch of :meth:`load`, memoised per instance.

A subclass sets :attr:`paper_tasks`, :attr:`tiny_tasks`, :attr:`profile_sizes` and implements :meth:`generate`,
:meth:`tiny_classnames`, :meth:`load_paper` and :meth:`metric`; it may override :meth:`task_data` (how the stored
tensors become a :class:`~benchmark.contract.TaskData`), :meth:`paper_classnames` and :meth:`write_extra`.

The data's version is the source of the subclass's module, of this one and of the primitive modules the subclass
names in :attr:`~GeneratedSuite.sources` (:func:`benchmark.cache.code_version`): editing a generator, a primitive
or the file layout here changes every key, so a stale entry is never read back.
"""
from __future__ import annotations

import hashlib
import json
import sys
import threading
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

from torch import Tensor

from benchmark.cache import Cache, CacheError, code_version, config_key
from benchmark.contract import Suite, TaskData
from benchmark.errors import UserError

__all__ = ["GeneratedSuite"]

_MEMO: dict[tuple[str, str], dict[str, Tensor]] = {}
_MEMO_LOCK = threading.Lock()


class GeneratedSuite(Suite):
    """A suite with a ``paper`` profile and generated profiles (see the module docstring)."""

    #: the real suite's task names (``paper`` profile) and the generated look-alikes' (``tiny``, ``micro``), in order
    paper_tasks: ClassVar[tuple[str, ...]] = ()
    tiny_tasks: ClassVar[tuple[str, ...]] = ()
    #: per generated profile: the images / sequences per split and the generator's size parameters
    profile_sizes: ClassVar[dict[str, dict[str, int]]] = {}
    #: the modules besides the suite's own whose source shapes the generated data (its drawing or grammar
    #: primitives): part of :attr:`version`, so editing a primitive never reads back a stale entry
    sources: ClassVar[tuple[ModuleType, ...]] = ()

    def __init__(self, profile: str, seed: int = 0, cache: Any = None, progress: bool = True,
                 data_root: str | None = None):
        super().__init__(profile, seed, cache, progress)
        self.data_root = data_root
        if profile != "paper" and profile not in self.profile_sizes:
            raise UserError(f"suite {self.plugin_name} has no profile {profile!r}; valid: paper, "
                            f"{', '.join(self.profile_sizes)}")
        self._paper: dict[tuple[str, str], TaskData] = {}

    # -- what the backbone may ask
    @property
    def tasks(self) -> list[str]:
        return list(self.paper_tasks if self.profile == "paper" else self.tiny_tasks)

    @property
    def sizes(self) -> dict[str, int]:
        """The generated profile's sizes (empty for ``paper``)."""
        return dict(self.profile_sizes.get(self.profile, {}))

    @property
    def image_size(self) -> int | None:  # type: ignore[override]
        """Side of the generated images (None for the paper data, whose sizes vary, and for text)."""
        return self.sizes.get("image_size")

    @property
    def seq_len(self) -> int | None:  # type: ignore[override]
        """Length of the generated token sequences (None for the paper data and for images)."""
        return self.sizes.get("seq_len")

    def config(self) -> dict[str, Any]:
        """What the generated data depends on, besides the seed and :attr:`version`."""
        return {"profile": self.profile, "tasks": self.tasks, **self.sizes}

    @property
    def version(self) -> str:
        return code_version(sys.modules[type(self).__module__], sys.modules[__name__], *self.sources)

    def data_key(self) -> str:
        if self.profile == "paper":
            return f"paper:{self.data_root or ''}"
        return config_key(self.plugin_name, self.config(), self.seed, self.version)

    def classnames(self, task: str) -> list[str]:
        self.check(task, "train")
        return self.paper_classnames(task) if self.profile == "paper" else list(self.tiny_classnames(task))

    def check(self, task: str, split: str) -> None:
        """A :class:`UserError` naming the valid choices unless ``task`` and ``split`` exist on this profile."""
        if task not in self.tasks:
            raise UserError(f"suite {self.plugin_name} ({self.profile}) has no task {task!r}; "
                            f"valid: {', '.join(self.tasks)}")
        if split not in self.splits:
            raise UserError(f"unknown split {split!r}; valid: {', '.join(self.splits)}")

    # -- data
    def _cache(self) -> Cache:
        return self.cache if self.cache is not None else Cache()

    def prepare(self) -> Path | None:
        """Generate (or find in the cache) every task's data; returns the cache entry (``None`` for paper)."""
        if self.profile == "paper":
            return None
        cache = self._cache()

        def build(tmp: Path) -> None:
            from safetensors.torch import save_file
            from tqdm.auto import tqdm

            for task in tqdm(self.tiny_tasks, desc=f"generate {self.plugin_name} ({self.profile})", unit="task",
                             disable=not self.progress, leave=False):
                tensors: dict[str, Tensor] = {}
                for split in self.splits:
                    tensors.update({f"{split}/{k}": v for k, v in self.generate(task, split).items()})
                save_file(tensors, str(tmp / f"{task}.safetensors"))
            self.write_extra(tmp)

        return cache.get_or_build(self.plugin_name, self.config(), self.seed, self.version, build)

    def fingerprint(self) -> str | None:
        """The sha256 of the cache entry's files (each file's verified sha256 by its name): the generated data
        itself, so it changes with any array and with nothing else (a refactor that leaves the bytes alone keeps
        it; a version key does not). None on the paper profile."""
        entry = self.prepare()
        if entry is None:
            return None
        cache = self._cache()
        try:
            files = cache.verify(entry)
        except ValueError as e:
            raise CacheError(f"cache entry {entry}: {e}") from None
        return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()

    def stored(self, task: str) -> dict[str, Tensor]:
        """The task's stored tensors (all splits), read once per process."""
        entry = self.prepare()
        assert entry is not None
        key = (str(entry), task)
        with _MEMO_LOCK:
            if key not in _MEMO:
                from safetensors.torch import load_file

                _MEMO[key] = load_file(str(entry / f"{task}.safetensors"))
            return _MEMO[key]

    def load(self, task: str, split: str) -> TaskData:
        self.check(task, split)
        if self.profile == "paper":
            if (task, split) not in self._paper:
                self._paper[(task, split)] = self.load_paper(task, split)
            return self._paper[(task, split)]
        t = self.stored(task)
        return self.task_data(task, split, {k.split("/", 1)[1]: v for k, v in t.items() if k.startswith(split + "/")})

    # -- what a suite supplies
    def generate(self, task: str, split: str) -> dict[str, Tensor]:
        """One split of one generated task as named tensors (``inputs``, ``targets``, ...), a pure function of
        (task, split, :attr:`sizes`, seed)."""
        raise NotImplementedError

    def write_extra(self, entry: Path) -> None:
        """Files besides the per-task tensors (class names, a vocabulary), for people reading the cache."""

    def tiny_classnames(self, task: str) -> list[str]:
        raise NotImplementedError

    def paper_classnames(self, task: str) -> list[str]:
        return list(self.load(task, "train").classes or [])

    def load_paper(self, task: str, split: str) -> TaskData:
        raise NotImplementedError

    def task_data(self, task: str, split: str, tensors: dict[str, Tensor]) -> TaskData:
        """The stored tensors of one split as the :class:`TaskData` the backbones read."""
        return TaskData(inputs=tensors["inputs"], targets=tensors["targets"], classes=self.tiny_classnames(task),
                        meta={"task": task, "split": split, "profile": self.profile, "generated": True})
