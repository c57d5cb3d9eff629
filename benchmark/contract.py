"""The contracts between the harness, methods, backbones and suites.

Methods never import backbones and backbones never import methods: both import this module, and the runner
(:mod:`benchmark.runner`) wires them together.

Method contract (DESIGN.md, "The method contract")
--------------------------------------------------
``Method.merge(pool) -> Artifacts``: everything the method keeps besides the pretrained model, each artifact
tagged with the codec that writes it. The runner writes the artifacts to a real file, reloads them and calls
``Method.load(artifacts, pretrained, tasks)``, which rebuilds the merged model from the reloaded values only. So
a lossy or buggy codec shows up in accuracy, and storage is the size of that file.

``load`` returns one of three merged-model kinds:

* :class:`StaticModel` -- one set of weights;
* :class:`TaskConditionedModel` -- weights for a given task id;
* :class:`RoutedModel` -- per-input mixing weights over the tasks, decided from f_ex features.

All weights are *mergeable* tensors only (a dict ``name -> Tensor``); the adapter keeps everything else
(per-task heads, buffers) and never merges it.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterator, Mapping, Protocol, Sequence

import torch
from torch import Tensor

StateDict = dict[str, Tensor]

__all__ = [
    "StateDict",
    "Artifact",
    "Artifacts",
    "ModelOps",
    "Pool",
    "Merged",
    "StaticModel",
    "TaskConditionedModel",
    "RoutedModel",
    "Method",
    "TaskData",
    "Suite",
    "Backbone",
    "Metric",
    "task_vectors",
    "TaskVectorView",
    "as_vector_list",
    "batches",
    "EXEMPLAR_SPLITS",
]


def task_vectors(pretrained: StateDict, finetuned: Mapping[str, StateDict]) -> dict[str, StateDict]:
    """tau_k = theta_k - theta for every task (Sec. III-A)."""
    return {t: {k: ft[k] - pretrained[k] for k in pretrained} for t, ft in finetuned.items()}


class TaskVectorView(Mapping[str, Tensor]):
    """``theta_t - theta`` computed on access, key by key (nothing cached): a task vector that costs no memory.
    When ``finetuned``/``pretrained`` are themselves lazy mappings (memory-mapped checkpoints), one tensor of each
    is touched per access."""

    def __init__(self, finetuned: Mapping[str, Tensor], pretrained: Mapping[str, Tensor]):
        self.finetuned = finetuned
        self.pretrained = pretrained

    def __getitem__(self, key: str) -> Tensor:
        return self.finetuned[key] - self.pretrained[key]

    def __contains__(self, key: object) -> bool:  # Mapping's default would compute the tensor
        return key in self.pretrained

    def __iter__(self) -> Iterator[str]:
        return iter(self.pretrained)

    def __len__(self) -> int:
        return len(self.pretrained)

    def numel(self, key: str) -> int:
        """The size of tensor ``key`` without computing it."""
        return self.pretrained[key].numel()


def as_vector_list(task_vectors: Sequence[Mapping[str, Tensor]] | Mapping[str, Mapping[str, Tensor]]
                   ) -> list[Mapping[str, Tensor]]:
    """A list of task vectors from a list or a ``task -> task vector`` mapping."""
    if isinstance(task_vectors, Mapping):
        return list(task_vectors.values())
    return list(task_vectors)


def batches(ops: "ModelOps", inputs: Any, batch_size: int) -> Iterator[Any]:
    """Consecutive sub-batches of at most ``batch_size`` examples of ``inputs``, in order."""
    n = ops.num_examples(inputs)
    for s in range(0, n, batch_size):
        yield ops.slice(inputs, slice(s, min(s + batch_size, n)))


#: the splits :meth:`Pool.exemplars` draws from: ``train`` (``ModelOps.exemplars``) and ``test``
#: (``ModelOps.test_inputs``, unlabeled, for test-time adaptation only)
EXEMPLAR_SPLITS = ("train", "test")


# ----------------------------------------------------------------------------------------------------------------
# Artifacts


@dataclass
class Artifact:
    """One stored thing: a value and the codec (by registry name) that writes it."""

    value: Any
    codec: str = "tensor"
    codec_params: dict[str, Any] = field(default_factory=dict)


class Artifacts(dict):
    """``name -> Artifact``, in insertion order. Names may use '/' to group (e.g. ``switch/mnist``)."""

    def add(self, name: str, value: Any, codec: str = "tensor", **codec_params: Any) -> None:
        if name in self:
            raise ValueError(f"artifact {name!r} added twice")
        self[name] = Artifact(value, codec, dict(codec_params))


# ----------------------------------------------------------------------------------------------------------------
# What a method sees of the model and the data


class ModelOps(Protocol):
    """Data-dependent access to the backbone, handed to methods by the harness.

    ``weights`` is always a dict of mergeable tensors; ``None`` means the pretrained weights. Calls are
    differentiable with respect to ``weights`` (``torch.func.functional_call`` underneath), so methods can learn
    coefficients or gates through them.
    """

    def exemplars(self, task: str, n: int, seed: int) -> Any:
        """``n`` unlabeled inputs of ``task``'s train split (never the test split), seeded. Methods call
        :meth:`Pool.exemplars`, which derives the seed by the one rule of every method."""

    def logits(self, task: str, weights: StateDict | None, inputs: Any) -> Tensor:
        """The task head's outputs for ``inputs`` under ``weights``."""

    def features(self, weights: StateDict | None, inputs: Any) -> Tensor:
        """f_ex: the features before the task head, ``[B, e]`` (or ``[B, Q, e]`` for per-query detectors)."""

    def linear_inputs(self, weights: StateDict | None, inputs: Any) -> dict[str, Tensor]:
        """For every mergeable 2-D weight that acts as a linear map: its inputs, flattened to ``[N, d_in]``.

        Keys are the weights' names. A weight is taken in the ``nn.Linear`` layout ``[d_out, d_in]`` (``y = x W^T``)
        unless only its first dimension matches ``d_in`` (``y = x W``, e.g. open_clip's ``proj``); a square weight
        used as ``x W`` must therefore be left out (or given transposed by the adapter)."""

    def test_inputs(self, task: str, n: int | None, seed: int) -> Any:
        """Optional (methods check with ``hasattr``). Up to ``n`` unlabeled inputs of ``task``'s *test* split (all of
        them when ``n`` is None), in a seeded random order; never labels. Only test-time adaptation methods use it
        (AdaMerging / AdaMerging++ minimize prediction entropy on the unlabeled test inputs, as their paper does)."""

    def predict(self, task: str, weights: StateDict | None, inputs: Any) -> Any:
        """Optional (the runner checks with ``getattr``). What ``task``'s metric consumes, when that is more than the
        logits: a detector returns its post-processed boxes, scores and labels per image. Without it the runner
        feeds :meth:`logits` to the metric."""

    def outputs(self, task: str, weights: StateDict | None, inputs: Any) -> Tensor:
        """Optional (methods check with ``getattr``). Every output of ``task``'s model as one tensor, concatenated
        along the last dimension: a detector's class logits *and* boxes (``[B, Q, C + 1 + 4]``). For preservation
        losses on the model's outputs rather than its class distribution (FlexSwitch's MSE / CKA, Eq. 10/11, which
        the paper uses on DETR "to ensure alignment of both the classification and regression branches"). Without
        it those methods use :meth:`logits`."""

    def num_examples(self, inputs: Any) -> int:
        """How many examples ``inputs`` holds."""

    def slice(self, inputs: Any, index: Tensor | slice) -> Any:
        """A sub-batch of ``inputs``."""


@dataclass
class Pool:
    """What a method gets: the pretrained weights, the fine-tuned weights per task, data access, and a seed.

    ``pretrained`` and ``finetuned[task]`` hold the mergeable tensors only, float32, with identical keys. They are
    mappings: a method reads them one tensor at a time through the task-vector views below, so that weights backed
    by memory-mapped files stream instead of being held all at once.

    Task vectors (tau_k = theta_k - theta, Sec. III-A):

    * :meth:`task_vector` / :meth:`lazy_task_vectors`: :class:`TaskVectorView` s, computed key by key on access;
    * :meth:`iter_task_vectors`: ``(name, {task: tau_task[name]})`` per mergeable tensor, one tensor at a time;
    * :meth:`task_vectors`: every task vector materialised (for methods that reuse them many times, e.g.
      AdaMerging's 500 differentiable steps).

    Data: :meth:`exemplars` draws ``n`` unlabeled inputs of a task with the one seeding rule of every method
    (:meth:`exemplar_seed`); :meth:`batches` cuts inputs into sub-batches. Other random choices use
    :meth:`generator`.
    """

    tasks: list[str]
    pretrained: StateDict
    finetuned: dict[str, StateDict]
    ops: ModelOps | None = None
    seed: int = 0
    progress: bool = True  # whether long method work (training loops) may show progress bars (`run --no-progress`)

    def materialise(self) -> None:
        """Read every fine-tuned model whole into RAM (in place). The runner calls it only for methods that declare
        ``whole_models = True`` (those that run forwards of the fine-tuned models: Fisher, RegMean, FlexSwitch,
        Individual, ...); every other method streams the fine-tuned tensors one at a time from disk."""
        self.finetuned = {t: (sd if isinstance(sd, dict) else {k: sd[k] for k in sd})
                          for t, sd in self.finetuned.items()}

    # -- task vectors ------------------------------------------------------------------------------------------

    def task_vector(self, task: str) -> TaskVectorView:
        """tau_task, lazily: each tensor is computed when read."""
        return TaskVectorView(self.finetuned[task], self.pretrained)

    def lazy_task_vectors(self) -> list[TaskVectorView]:
        """One :class:`TaskVectorView` per task, in ``tasks`` order."""
        return [self.task_vector(t) for t in self.tasks]

    def iter_task_vectors(self) -> Iterator[tuple[str, dict[str, Tensor]]]:
        """``(name, {task: tau_task[name]})`` for every mergeable tensor, in ``pretrained``'s key order: the
        per-tensor loop of a merge that needs only one tensor of every task at a time."""
        for name in self.pretrained:
            base = self.pretrained[name]
            yield name, {t: self.finetuned[t][name] - base for t in self.tasks}

    def task_vectors(self) -> dict[str, StateDict]:
        """Every task vector at once (``task -> state dict``); prefer the lazy forms where one pass suffices."""
        return task_vectors(self.pretrained, {t: self.finetuned[t] for t in self.tasks})

    # -- data --------------------------------------------------------------------------------------------------

    def exemplar_seed(self, task: str, salt: int = 0) -> int:
        """The one seeding rule of every exemplar draw: ``seed * 1009 + (position of task) + 7919 * salt``.

        ``salt`` separates the independent draws of different methods (or of one method). It reproduces the draws
        of every committed record: salt 0 -- RegMean, Fisher, FlexSwitch, Auto-Switch and Auto-FlexSwitch (so the
        switch family's learning and routing see the same exemplars); 3 -- AdaMerging(++)'s adaptation inputs;
        5 -- Twin-Merging's router exemplars."""
        return self.seed * 1009 + self.tasks.index(task) + 7919 * salt

    def exemplars(self, task: str, n: int | None, split: str = "train", salt: int = 0) -> Any:
        """``n`` unlabeled inputs of ``task``, drawn with :meth:`exemplar_seed` ``(task, salt)``.

        ``split="train"`` (the default, and what every method but test-time adaptation uses): ``ModelOps.exemplars``.
        ``split="test"``: ``ModelOps.test_inputs`` (``n=None`` = the whole split), for test-time adaptation only;
        a ``ValueError`` when the adapter has no test access."""
        if self.ops is None:
            raise ValueError("this pool has no data access (pool.ops is None)")
        if split not in EXEMPLAR_SPLITS:
            raise ValueError(f"exemplars: unknown split {split!r}; valid: {', '.join(EXEMPLAR_SPLITS)}")
        seed = self.exemplar_seed(task, salt)
        if split == "test":
            if not hasattr(self.ops, "test_inputs"):
                raise ValueError("this backbone's ModelOps has no test_inputs(task, n, seed)")
            return self.ops.test_inputs(task, n, seed)
        if n is None:
            raise ValueError("exemplars: n may be None only for split='test'")
        return self.ops.exemplars(task, n, seed)

    def batches(self, inputs: Any, batch_size: int) -> Iterator[Any]:
        """Consecutive sub-batches of ``inputs`` (see :func:`batches`)."""
        return batches(self.ops, inputs, batch_size)

    def generator(self, salt: int = 0) -> torch.Generator:
        """A seeded CPU generator (``seed * 1_000_003 + salt``), so every random choice a method makes besides its
        exemplar draws is reproducible."""
        g = torch.Generator()
        g.manual_seed(self.seed * 1_000_003 + salt)
        return g


# ----------------------------------------------------------------------------------------------------------------
# Merged models


class Merged(ABC):
    kind: ClassVar[str]

    def extra_metrics(self) -> dict[str, Any]:
        """Method-specific figures for the record (routing accuracy, learned coefficients, ...)."""
        return {}

    def write_figures(self, directory: Any, stem: str) -> list[Any]:
        """Optional PNGs (e.g. FlexSwitch's per-module sparsity/bit-width heat map) written into ``directory`` with
        names starting with ``stem``; returns their paths. The runner links them from the record."""
        return []


class StaticModel(Merged):
    kind = "static"

    def __init__(self, weights: StateDict):
        self._weights = weights

    def weights(self) -> StateDict:
        return self._weights


class TaskConditionedModel(Merged):
    kind = "task_conditioned"

    @abstractmethod
    def weights(self, task: str) -> StateDict:
        """The weights to use when the task id is ``task``."""


class RoutedModel(Merged):
    """Per-input merging. The runner computes f_ex under :meth:`routing_weights` (after the first
    ``routing_depth`` blocks when that is set, ``ModelOps.early_features``), asks :meth:`route` for mixing
    weights ``[B, K]`` (columns in ``tasks`` order), groups samples whose rows are equal and builds one set of
    weights per group with :meth:`build` (:class:`benchmark.routing.RoutedInference`)."""

    kind = "routed"
    #: None: route on f_ex of the full model (the papers); d > 0: on the features after its first d blocks
    routing_depth: int | None = None

    def routing_weights(self) -> StateDict | None:
        """The weights f_ex runs under; ``None`` = the pretrained model (Auto-Switch's query model)."""
        return None

    @abstractmethod
    def route(self, features: Tensor) -> Tensor:
        """Mixing weights ``[B, K]`` for a batch of features."""

    @abstractmethod
    def weights(self, mix: Tensor) -> StateDict:
        """The weights for one row of mixing weights ``[K]``."""

    def routing_ablations(self) -> dict[str, Callable[[Tensor], Tensor]]:
        """Other routers over the same routing features, ``name -> features -> [B, K]``, whose routing accuracy the
        runner records beside :meth:`route`'s (``extra.routing_ablations``); they never change a prediction. Built
        from what :meth:`~Method.load` read back, like :meth:`route`."""
        return {}

    def build(self, mix: Tensor, out: StateDict | None = None) -> StateDict:
        """:meth:`weights` ``(mix)``, written in place into ``out`` when given (a state dict this method returned
        before, which the caller no longer needs) so that a run reuses one buffer instead of allocating a model per
        routing row. The values must equal :meth:`weights`' exactly; the default ignores ``out``."""
        return self.weights(mix)


# ----------------------------------------------------------------------------------------------------------------
# Methods


class Method(ABC):
    """Base class of every merging method. Subclasses set ``kind`` and register with ``METHODS.register``.

    ``kind`` is one of ``static``, ``task_conditioned``, ``routed``; reference rows (Pretrained, Individual) set
    ``reference = True`` so the leaderboard can show them apart from the merging methods.
    """

    kind: ClassVar[str] = "static"
    reference: ClassVar[bool] = False
    #: set by methods that need every fine-tuned model whole in RAM (they run its forward); the runner then
    #: materialises the pool for them, every other method streams the fine-tuned tensors from disk
    whole_models: ClassVar[bool] = False
    plugin_name: ClassVar[str] = ""

    def __init__(self, **params: Any):
        self.params = params

    @abstractmethod
    def merge(self, pool: Pool) -> Artifacts:
        """Compute what the method stores."""

    @abstractmethod
    def load(self, artifacts: Mapping[str, Any], pretrained: StateDict, tasks: Sequence[str]) -> Merged:
        """Rebuild the merged model from reloaded artifact values and the pretrained weights alone."""


# ----------------------------------------------------------------------------------------------------------------
# Suites and metrics


@dataclass
class TaskData:
    """One split of one task. ``inputs`` is whatever the backbone's preprocessing consumes (an image tensor
    ``[N, 3, H, W]`` uint8, token ids, COCO-style detection samples...); ``targets`` matches it."""

    inputs: Any
    targets: Any
    classes: list[str] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.targets)


class Metric(ABC):
    """Streaming metric: feed batches, then read the score (in percent, as the papers report)."""

    name: ClassVar[str]

    @abstractmethod
    def update(self, outputs: Any, targets: Any) -> None: ...

    @abstractmethod
    def compute(self) -> float: ...


class Suite(ABC):
    """A task suite. ``load`` returns one split (``train``, ``val`` or ``test``) of one task for a profile."""

    plugin_name: ClassVar[str] = ""
    modality: ClassVar[str] = "image"
    #: the splits ``load`` serves; hyperparameter selection (``select_by: val``) needs ``val``
    splits: ClassVar[tuple[str, ...]] = ("train", "val", "test")
    #: side of a generated suite's images, which the backbone's tiny build must match (None: sizes vary)
    image_size: int | None = None
    #: a generated text suite's word-level vocabulary (ids are positions), None where the backbone's tokenizer rules
    vocab: list[str] | None = None
    #: a generated text suite's sequence length and special token ids (None elsewhere)
    seq_len: int | None = None
    pad_id: int | None = None
    cls_id: int | None = None
    sep_id: int | None = None
    mask_id: int | None = None

    def __init__(self, profile: str, seed: int = 0, cache: Any = None, progress: bool = True):
        self.profile = profile
        self.seed = seed
        self.cache = cache
        self.progress = progress

    @property
    @abstractmethod
    def tasks(self) -> list[str]: ...

    @abstractmethod
    def load(self, task: str, split: str) -> TaskData: ...

    @abstractmethod
    def metric(self, task: str) -> Metric: ...

    # What a backbone may ask of a suite besides its data; nothing else (backbones never import a suite's module).
    def prepare(self) -> Any:
        """Make the data available (generate or find it in the cache). Idempotent; the default has nothing to do."""
        return None

    def data_key(self) -> str:
        """A string that changes whenever the data does: backbones put it in their checkpoints' cache keys."""
        return f"{type(self).__name__}:{self.profile}"

    def fingerprint(self) -> str | None:
        """The sha256 of the data this suite serves, as stored (a record's ``suite_data``: runs on different data
        are never compared), or None where it cannot be had without hashing a whole real data set (the paper
        profile: there the record's checkpoint hashes and the user's data folders identify the run)."""
        return None

    def classnames(self, task: str) -> list[str]:
        """The class names of ``task``'s label space (zero-shot heads, head sizes)."""
        return list(self.load(task, "train").classes or [])

    def generic(self, n: int, seed: int) -> Any:
        """``n`` unlabeled inputs that belong to no task (a backbone's in-house pretraining and preservation set)."""
        from benchmark.errors import UserError

        raise UserError(f"suite {self.plugin_name or type(self).__name__} ({self.profile}) has no generic inputs")


# ----------------------------------------------------------------------------------------------------------------
# Backbones


class Backbone(ABC):
    """A backbone adapter. It owns loading (paper: real checkpoints; tiny: in-house pretraining and fine-tuning,
    cached), which tensors are mergeable, per-task heads, f_ex, and per-task forward/evaluation.

    Register with ``BACKBONES.register(name, summary=..., paper=..., suites=(...), default_suite=...)``.
    """

    plugin_name: ClassVar[str] = ""
    #: modules the adapter imports lazily (inside functions, so ``list`` stays fast) that every run needs; the
    #: process pool's fork server imports them once (:mod:`benchmark._preload`) instead of each run's child
    preload_modules: ClassVar[tuple[str, ...]] = ()

    def __init__(self, profile: str, suite: Suite, seed: int = 0, cache: Any = None, progress: bool = True):
        self.profile = profile
        self.suite = suite
        self.seed = seed
        self.cache = cache
        self.progress = progress

    @property
    def tasks(self) -> list[str]:
        return list(self.suite.tasks)

    @abstractmethod
    def prepare(self) -> None:
        """Load (or build and cache) the pretrained and fine-tuned models. Idempotent."""

    @abstractmethod
    def pretrained_state(self) -> StateDict:
        """Mergeable tensors of the pretrained model (float32)."""

    @abstractmethod
    def finetuned_state(self, task: str) -> StateDict:
        """Mergeable tensors of ``task``'s fine-tuned model (float32), same keys as the pretrained ones."""

    @abstractmethod
    def checkpoints(self) -> dict[str, str]:
        """``checkpoint name -> sha256`` of every checkpoint used."""

    @abstractmethod
    def batches(self, task: str, split: str, batch_size: int) -> Iterator[tuple[Any, Any]]:
        """Labeled batches of a split, in a fixed order."""

    @abstractmethod
    def ops(self) -> ModelOps:
        """The :class:`ModelOps` methods use (exemplars, logits, features, linear inputs)."""

    def versions(self) -> dict[str, str]:
        return {}
