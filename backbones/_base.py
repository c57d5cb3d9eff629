"""What every adapter in this folder shares: the device choice, the cache, preparing once, the Backbone API's
accessors (states, checkpoints, heads), batching and the ModelOps object.

A subclass sets :attr:`model`, :attr:`module_attr` (the attribute holding the ``nn.Module`` whose parameters are
the mergeable tensors) and :attr:`ops_class`, provides :attr:`configs` (model config per generated profile) and
implements ``_prepare_paper`` / ``_prepare_tiny``, which fill ``_pretrained``, ``_finetuned``, ``heads`` and
``_checkpoints``.
"""
from __future__ import annotations

import os
from typing import Any, ClassVar, Iterator

import torch

from benchmark.cache import Cache
from benchmark.contract import Backbone, StateDict
from benchmark.errors import UserError
from benchmark.lazy_state import LazyState

__all__ = ["PreparedBackbone", "DEVICE_ENV_VAR"]

#: where the models run (``cpu``, ``cuda``, ``cuda:1``); default: CUDA for the paper profile when there is one
DEVICE_ENV_VAR = "MERGE_BENCH_DEVICE"


class PreparedBackbone(Backbone):
    """See the module docstring."""

    model: ClassVar[str] = ""
    module_attr: ClassVar[str] = "encoder"
    ops_class: ClassVar[type] = object

    def __init__(self, profile: str, suite: Any, seed: int = 0, cache: Any = None, progress: bool = True):
        super().__init__(profile, suite, seed, cache, progress)
        if profile != "paper" and profile not in self.configs:
            raise UserError(f"backbone {self.model} has no profile {profile!r}; valid: paper, {', '.join(self.configs)}")
        dev = os.environ.get(DEVICE_ENV_VAR)
        self.device = torch.device(dev) if dev else torch.device(
            "cuda" if profile == "paper" and torch.cuda.is_available() else "cpu")
        self._prepared = False
        self._ops: Any = None
        self.heads: dict[str, Any] = {}
        self._pretrained: dict[str, torch.Tensor] = {}
        self._finetuned: dict[str, dict[str, torch.Tensor]] = {}
        self._checkpoints: dict[str, str] = {}
        self.mergeable_names: list[str] = []

    @property
    def configs(self) -> dict[str, dict[str, Any]]:
        raise NotImplementedError

    @property
    def config(self) -> dict[str, Any]:
        return dict(self.configs[self.profile])

    def _cache(self) -> Cache:
        return self.cache if self.cache is not None else Cache()

    def _prepare_paper(self) -> None:
        raise NotImplementedError

    def _prepare_tiny(self) -> None:
        raise NotImplementedError

    def _after_prepare(self) -> None:
        """Hook run once the module is on its device and frozen."""

    # -- Backbone API
    def prepare(self) -> None:
        if self._prepared:
            return
        if self.profile == "paper":
            self._prepare_paper()
        else:
            self._prepare_tiny()
        module = getattr(self, self.module_attr)
        module.to(self.device).eval()
        for p in module.parameters():
            p.requires_grad_(False)
        self._after_prepare()
        self._prepared = True

    def pretrained_state(self) -> StateDict:
        self.prepare()
        return dict(self._pretrained)

    def finetuned_state(self, task: str) -> StateDict:
        """The task's fine-tuned mergeable tensors: a copy of the dict, or the read-only
        :class:`~benchmark.lazy_state.LazyState` itself (never read whole here)."""
        self.prepare()
        if task not in self._finetuned:
            raise UserError(f"{self.model}: no task {task!r}; valid: {', '.join(self.tasks)}")
        sd = self._finetuned[task]
        return sd if isinstance(sd, LazyState) else dict(sd)

    def streamed(self, state: Any) -> Any:
        """``state`` restricted to :attr:`mergeable_names`: a :class:`~benchmark.lazy_state.LazyState` stays on
        disk (the paper loaders' converted checkpoints), anything else is read into a float32 dict."""
        if isinstance(state, LazyState):
            try:
                return state.restricted(list(self.mergeable_names))
            except KeyError as e:
                raise UserError(f"{self.model}: {e.args[0]}") from None
        return {k: state[k].float() for k in self.mergeable_names}

    def checkpoints(self) -> dict[str, str]:
        """Checkpoint name -> sha256. For cached (tiny) checkpoints these are the hashes the cache verified the
        files against before they were loaded (:meth:`benchmark.cache.Cache.sha256`), not a second reading."""
        self.prepare()
        return dict(self._checkpoints)

    def head(self, task: str) -> Any:
        """``task``'s head (never merged)."""
        self.prepare()
        return self.heads[task]

    def batches(self, task: str, split: str, batch_size: int) -> Iterator[tuple[Any, Any]]:
        data = self.suite.load(task, split)
        n = len(data)
        ops = self.ops()
        for i in range(0, n, batch_size):
            yield ops.slice(data.inputs, slice(i, min(i + batch_size, n))), data.targets[i : i + batch_size]

    def ops(self) -> Any:
        self.prepare()
        if self._ops is None:
            self._ops = self.ops_class(self)
        return self._ops
