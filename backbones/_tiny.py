"""The tiny / micro build every adapter in this folder shares, written once: three cached stages, each a pure
function of its config, the seed and the source of what shapes it (:func:`benchmark.cache.code_version`):

1. ``pretrain``: label-free (or generic-data) pretraining of the backbone from a seeded init ->
   ``pretrained.safetensors``;
2. ``heads``: one head per task on the frozen pretrained model -> ``heads.safetensors``;
3. ``finetune/<task>``: the pretrained model fine-tuned on one task against its frozen head, held to the
   pretrained model on generic inputs (the preservation term) -> ``finetuned.safetensors``.

:class:`TinyBuild` runs them in that order, each keyed by the checkpoints of the stages before it, and loads
what they wrote; an adapter supplies the three builders and how to load their files (:meth:`TinyBuild.load_pretrained`,
:meth:`TinyBuild.load_heads`), plus each stage's config and version. :func:`fit` is the optimisation loop the
builders share (AdamW, linear warm-up then cosine decay, deterministic algorithms, a progress bar), and
:class:`EpochSampler` the without-replacement minibatch order of the fine-tunes.
"""
from __future__ import annotations

import contextlib
import math
import zlib
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch
from torch import Tensor

__all__ = ["cosine_lr", "deterministic", "stable_hash", "fit", "EpochSampler", "TinyBuild"]


def cosine_lr(step: int, total: int, warmup: float) -> float:
    """The learning-rate factor at ``step`` of ``total``: linear warm-up over the first ``warmup`` share of the
    steps, then cosine decay to 0."""
    w = max(1, int(total * warmup))
    if step < w:
        return (step + 1) / w
    return 0.5 * (1 + math.cos(math.pi * (step - w) / max(1, total - w)))


@contextlib.contextmanager
def deterministic() -> Iterator[None]:
    """Deterministic algorithms for the duration (warn, do not fail, where an op has none)."""
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev)


def stable_hash(text: str) -> int:
    """A hash of ``text`` that is the same in every process (Python's ``hash`` of a str is salted)."""
    return zlib.crc32(text.encode())


def fit(params: Iterable[Tensor], step_loss: Callable[[], Tensor], *, steps: int, lr: float, weight_decay: float,
        warmup: float, desc: str, progress: bool, grad_clip: float | None = None,
        context: Any = None) -> None:
    """``steps`` AdamW steps on ``params``, each on the loss ``step_loss()`` returns (it draws its own batch), with
    the learning rate ``lr * cosine_lr(step)``, the gradient norm clipped to ``grad_clip`` when given, under
    :func:`deterministic` and ``context`` (a context manager, e.g. the text backbones' forward context)."""
    from tqdm.auto import tqdm

    params = list(params)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda st: cosine_lr(st, steps, warmup))
    with deterministic(), (context if context is not None else contextlib.nullcontext()):
        bar = tqdm(range(steps), desc=desc, unit="step", disable=not progress, leave=False)
        for _step in bar:
            loss = step_loss()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(params, grad_clip)
            opt.step()
            sched.step()
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)


class EpochSampler:
    """Minibatches of ``batch`` indices into ``n`` examples, without replacement within an epoch; a new seeded
    permutation starts when the current one has fewer than ``batch`` left (the tail is dropped)."""

    def __init__(self, n: int, batch: int, generator: torch.Generator):
        self.n, self.batch, self.g = n, batch, generator
        self.perm, self.pos = torch.randperm(n, generator=generator), 0

    def next(self) -> Tensor:
        if self.pos + self.batch > len(self.perm):
            self.perm, self.pos = torch.randperm(self.n, generator=self.g), 0
        idx = self.perm[self.pos : self.pos + self.batch]
        self.pos += self.batch
        return idx


class TinyBuild:
    """The staged tiny build (see the module docstring), mixed into a
    :class:`~backbones._base.PreparedBackbone`. An adapter implements :meth:`check_suite`, :meth:`stage_config`,
    :meth:`stage_version`, :meth:`load_pretrained`, :meth:`load_heads` and the builders ``_build_pretrain(tmp)``,
    ``_build_heads(tmp)`` and ``_build_finetune(task, tmp)``."""

    model: str
    seed: int
    tasks: list[str]
    suite: Any
    mergeable_names: list[str]
    heads: dict[str, Any]
    _finetuned: dict[str, Any]
    _checkpoints: dict[str, str]

    # -- what an adapter supplies
    def check_suite(self) -> None:
        """A :class:`~benchmark.errors.UserError` if the suite's generated data does not fit this build."""

    def stage_config(self, stage: str) -> dict[str, Any]:
        """What the ``stage``'s output depends on besides the seed, the earlier stages' checkpoints and the source."""
        raise NotImplementedError

    def stage_version(self, stage: str) -> str:
        """The source hash of what shapes ``stage``."""
        raise NotImplementedError

    def load_pretrained(self, state: dict[str, Tensor]) -> None:
        """Build the module from the pretrain stage's file; set :attr:`mergeable_names` and ``_pretrained``."""
        raise NotImplementedError

    def load_heads(self, flat: dict[str, Tensor]) -> dict[str, Any]:
        """The per-task heads from the heads stage's file."""
        raise NotImplementedError

    # -- the build
    def stage_file(self, stage: str, pretrained: str = "", heads: str = "", task: str | None = None) -> Path:
        """The file ``stage`` writes (built unless cached and verified), keyed by its config, the seed, its source
        and the sha256 of the checkpoints it starts from (``pretrained`` for heads and fine-tunes, ``heads`` and
        ``task`` for a fine-tune)."""
        if stage == "pretrain":
            extra, build, name, file = {}, self._build_pretrain, "pretrain", "pretrained"  # type: ignore[attr-defined]
        elif stage == "heads":
            extra, build, name, file = {"pretrained": pretrained}, self._build_heads, "heads", "heads"  # type: ignore[attr-defined]
        else:
            extra = {"pretrained": pretrained, "heads": heads, "task": task}
            build, name, file = (lambda tmp: self._build_finetune(task, tmp)), f"finetune/{task}", "finetuned"  # type: ignore[attr-defined]
        cfg = {**self.stage_config(stage), **extra}
        entry = self._cache().get_or_build(f"{self.model}/{name}", cfg, self.seed,  # type: ignore[attr-defined]
                                           self.stage_version(stage), build)
        return entry / f"{file}.safetensors"

    def _prepare_tiny(self) -> None:
        from safetensors.torch import load_file

        self.check_suite()
        self.suite.prepare()
        cache = self._cache()  # type: ignore[attr-defined]
        pre_path = self.stage_file("pretrain")
        self.load_pretrained(load_file(str(pre_path)))
        pre = self._checkpoints["pretrained"] = cache.sha256(pre_path)
        heads_path = self.stage_file("heads", pre)
        self.heads = self.load_heads(load_file(str(heads_path)))
        heads = self._checkpoints["heads"] = cache.sha256(heads_path)
        for task in self.tasks:
            path = self.stage_file("finetune", pre, heads, task)
            sd = load_file(str(path))
            self._finetuned[task] = {k: sd[k].float() for k in self.mergeable_names}
            self._checkpoints[f"finetuned/{task}"] = cache.sha256(path)
