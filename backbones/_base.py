"""What every adapter in this folder shares: the device choice, the cache, preparing once, the Backbone API's
accessors (states, checkpoints, heads), batching and the ModelOps object, whose data access and per-layer input
capture are :class:`BaseOps`'.

A subclass sets :attr:`model`, :attr:`module_attr` (the attribute holding the ``nn.Module`` whose parameters are
the mergeable tensors) and :attr:`ops_class`, provides :attr:`configs` (model config per generated profile) and
implements ``_prepare_paper`` / ``_prepare_tiny``, which fill ``_pretrained``, ``_finetuned``, ``heads`` and
``_checkpoints``.
"""
from __future__ import annotations

import os
from typing import Any, Callable, ClassVar, Iterator, Mapping

import torch
from torch import Tensor, nn

from benchmark.cache import Cache
from benchmark.contract import Backbone, StateDict
from benchmark.errors import UserError
from benchmark.lazy_state import LazyState, cached_state
from backbones._tiny import stable_hash

__all__ = ["PreparedBackbone", "BaseOps", "DEVICE_ENV_VAR", "converted_finetuned", "PAPER_CONVERSION_VERSION",
           "HEAD_PREFIX"]

#: where the models run (``cpu``, ``cuda``, ``cuda:1``); default: CUDA for the paper profile when there is one
DEVICE_ENV_VAR = "MERGE_BENCH_DEVICE"

#: version of the conversion of a paper fine-tuned checkpoint into the cache (part of every converted entry's key)
PAPER_CONVERSION_VERSION = "1"
#: the prefix under which a converted checkpoint keeps its task's head (never merged) beside the body's tensors
HEAD_PREFIX = "head:"


def converted_finetuned(cache: Cache | None, config: Mapping[str, Any], read: Callable[[], Mapping[str, Tensor]],
                        keys: list[str]) -> tuple[Mapping[str, Tensor], dict[str, Tensor]]:
    """A paper fine-tuned checkpoint as ``(body, head)``: ``body`` its mergeable tensors (``keys``), ``head`` the
    tensors ``read`` returned under :data:`HEAD_PREFIX` (the prefix dropped; empty when it returned none).

    With a ``cache``: the checkpoint is converted once into it as float32 safetensors (``read`` runs only then, so
    one raw checkpoint is in RAM at a time, and what it checks is checked once per checkpoint) and ``body`` is a
    :class:`~benchmark.lazy_state.LazyState` read one tensor per access, so the pool never holds a task's whole
    model. ``config`` keys the entry and must name the checkpoint's sha256 and the keys, so a changed checkpoint is
    converted again. The head is small and read into RAM. Without a cache: ``read()``, held in RAM."""
    if cache is None:
        state: Mapping[str, Tensor] = read()
    else:
        state = cached_state(cache, "paper_finetuned", dict(config), PAPER_CONVERSION_VERSION, read)
    head = {k[len(HEAD_PREFIX):]: state[k] for k in state if k.startswith(HEAD_PREFIX)}
    if isinstance(state, LazyState):
        body: Mapping[str, Tensor] = state.restricted(list(keys))
    else:
        body = {k: state[k] for k in keys}
    return body, head


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

    #: model config and build recipe per generated profile (a subclass sets them, or overrides the properties)
    configs: ClassVar[dict[str, dict[str, Any]]] = {}
    recipes: ClassVar[dict[str, Any]] = {}

    @property
    def config(self) -> dict[str, Any]:
        return dict(self.configs[self.profile])

    @property
    def recipe(self) -> Any:
        return self.recipes[self.profile]

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


class BaseOps:
    """The model-independent part of every adapter's :class:`benchmark.contract.ModelOps`: seeded exemplar and test
    draws, slicing of every input form the adapters take (tensors, lists of images or text pairs, lazily decoded
    image lists), moving a weight set to the device once, and capturing the inputs of the mergeable linear layers
    (RegMean, Fisher, Twin). An adapter's ops add the forward passes (``features``, ``logits``, ...)."""

    def __init__(self, backbone: Any):
        self.bb = backbone
        self._moved: tuple[tuple, dict[str, Tensor]] | None = None

    # -- data
    def exemplars(self, task: str, n: int, seed: int) -> Any:
        """``n`` unlabeled train inputs of ``task``, seeded (no labels)."""
        data = self.bb.suite.load(task, "train")
        g = torch.Generator().manual_seed(seed * 1_000_003 + stable_hash(task))
        idx = torch.randperm(len(data), generator=g)[: min(n, len(data))]
        return self.slice(data.inputs, idx)

    def test_inputs(self, task: str, n: int | None, seed: int) -> Any:
        """Up to ``n`` unlabeled test inputs of ``task`` (all when None), in a seeded random order."""
        data = self.bb.suite.load(task, "test")
        g = torch.Generator().manual_seed(seed * 1_000_003 + stable_hash(task) + 1)
        idx = torch.randperm(len(data), generator=g)
        if n is not None:
            idx = idx[: min(n, len(data))]
        return self.slice(data.inputs, idx)

    def num_examples(self, inputs: Any) -> int:
        return int(inputs.shape[0]) if isinstance(inputs, Tensor) else len(inputs)

    def slice(self, inputs: Any, index: Tensor | slice) -> Any:
        if isinstance(inputs, Tensor):
            return inputs[index]
        if isinstance(index, Tensor) and index.dtype == torch.bool:
            index = index.nonzero().flatten()
        if isinstance(inputs, (list, tuple)):
            if isinstance(index, slice):
                return list(inputs[index])
            return [inputs[i] for i in torch.as_tensor(index).tolist()]
        return inputs[index]  # ImageList and friends slice lazily

    # -- model
    def _weights(self, weights: Mapping[str, Tensor] | None) -> dict[str, Tensor] | None:
        if weights is None:
            return None
        dev = self.bb.device
        if dev.type == "cpu":
            return dict(weights)
        # a routed or merged weight set is reused for many batches: move it once, unless it is being trained
        key = tuple((k, id(v), v._version) for k, v in weights.items())
        if self._moved is not None and self._moved[0] == key:
            return self._moved[1]
        moved = {k: v.to(dev) for k, v in weights.items()}
        if not any(v.requires_grad for v in weights.values()):
            self._moved = (key, moved)
        return moved

    def capture_linear_inputs(self, module: nn.Module, run: Callable[[], Any],
                              rows: Callable[[Tensor], Tensor] | None = None) -> dict[str, Tensor]:
        """Inputs ``[N, d_in]`` of every ``nn.Linear`` in ``module`` whose weight is mergeable, keyed by the weight's
        name, recorded while ``run()`` does one forward; ``rows`` picks the rows that count (the text adapters drop
        pads)."""
        out: dict[str, Tensor] = {}
        handles = []
        mergeable = set(self.bb.mergeable_names)
        for mod_name, mod in module.named_modules():
            wname = f"{mod_name}.weight" if mod_name else "weight"
            if isinstance(mod, nn.Linear) and wname in mergeable:

                def hook(_m: nn.Module, args: tuple, _out: Any, wname: str = wname) -> None:
                    x = args[0] if rows is None else rows(args[0])
                    out[wname] = x.reshape(-1, x.shape[-1])

                handles.append(mod.register_forward_hook(hook))
        try:
            run()
        finally:
            for h in handles:
                h.remove()
        return out
