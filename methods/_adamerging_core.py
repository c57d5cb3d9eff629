"""Shared machinery of ``adamerging`` and ``adamerging_pp`` (Yang et al., ICLR 2024, "AdaMerging: Adaptive Model
Merging for Multi-Task Learning"); no registration here.

``theta(lambda) = theta + sum_t lambda_t tau_t`` (task-wise: one lambda per task) or
``theta(lambda)[l] = theta[l] + sum_t lambda_{t,l} tau_t[l]`` (layer-wise: one lambda per task and per mergeable
tensor, "layer" = one parameter tensor, as the official code enumerates the state dict). The pretrained model's
coefficient is fixed at 1.

Test-time adaptation, as in the official code (EnnengYang/AdaMerging, ``main_{task,layer}_wise_adamerging*.py``):

* lambda initialised to 0.3 (``prior``); the forward uses ``clamp(lambda, 0, 1)`` (the raw parameter is what Adam
  updates; outside [0, 1] its gradient is 0);
* every step, for every task: two batches of 16 (the official loop breaks after ``i > 0``, i.e. after its second
  batch) drawn from a freshly shuffled loader over the task's **unlabeled test inputs**; the loss is the sum over
  tasks and batches of the batch-mean prediction entropy ``-sum_c p_c log p_c`` under the task's own head;
* Adam, lr 1e-3, betas (0.9, 0.999), no weight decay, 500 steps.

Test inputs come from the optional ``ModelOps.test_inputs(task, n, seed)``; ``adapt_split="train"`` adapts on
unlabeled train exemplars instead (a deviation from the paper, for adapters without test access; it is recorded).

Stored: the merged weights (``state_dict``) and the clamped coefficients with the adaptation summary (``json``).
The merged model reports the coefficients through ``extra_metrics`` (the record's ``extra``).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from benchmark.contract import Artifacts, Merged, Method, Pool, StateDict, StaticModel
from benchmark.errors import UserError
from benchmark.registry import Param

GRANULARITIES = ("layer", "task")
SPLITS = ("test", "train")


def init_coefficients(n_tasks: int, keys: Sequence[str], granularity: str, init: float = 0.3) -> Tensor:
    """``[K]`` (task-wise) or ``[K, L]`` (layer-wise, L = len(keys)) filled with ``init``."""
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    shape = (n_tasks,) if granularity == "task" else (n_tasks, len(keys))
    return torch.full(shape, float(init))


def fuse(pretrained: Mapping[str, Tensor], vectors: Sequence[Mapping[str, Tensor]], coeffs: Tensor) -> StateDict:
    """theta + sum_t coeffs_t tau_t; ``coeffs`` ``[K]`` or ``[K, L]`` (columns in ``pretrained``'s key order).
    Differentiable in ``coeffs``."""
    out: StateDict = {}
    for j, k in enumerate(pretrained):
        acc = pretrained[k]
        for t, v in enumerate(vectors):
            c = coeffs[t] if coeffs.dim() == 1 else coeffs[t, j]
            acc = acc + c * v[k]
        out[k] = acc
    return out


def entropy(logits: Tensor) -> Tensor:
    """Per-row entropy of softmax(logits): -sum_c p_c log p_c."""
    return -(logits.softmax(-1) * logits.log_softmax(-1)).sum(-1)


def adapt_coefficients(
    pool: Pool, vectors: Sequence[Mapping[str, Tensor]], granularity: str = "layer", init: float = 0.3,
    lr: float = 1e-3, steps: int = 500, batch_size: int = 16, batches_per_step: int = 2,
    adapt_split: str = "test", adapt_examples: int | None = None, clamp: bool = True, progress: bool = True,
) -> tuple[Tensor, dict[str, Any]]:
    """Entropy-minimization of the merging coefficients. Returns the coefficients the model uses (clamped) and a
    summary (loss trajectory endpoints, the split adapted on)."""
    ops = pool.ops
    if ops is None:
        raise ValueError("adamerging needs data access (pool.ops) for test-time adaptation")
    if adapt_split not in SPLITS:
        raise ValueError(f"adapt_split must be one of {SPLITS}, got {adapt_split!r}")
    if adapt_split == "test" and not hasattr(ops, "test_inputs"):
        raise UserError(
            "adamerging adapts on unlabeled test inputs (as the paper does), but this backbone's ModelOps has no "
            "test_inputs(task, n, seed); implement it, or pass --set adapt_split=train"
        )
    keys = list(pool.pretrained)
    n_draw = adapt_examples if adapt_examples is not None else None
    data = {}
    for task in pool.tasks:  # salt 3: AdaMerging's own draw (Pool.exemplar_seed)
        n_task = n_draw if adapt_split == "test" or n_draw is not None else 1024
        data[task] = pool.exemplars(task, n_task, split=adapt_split, salt=3)
    raw = torch.nn.Parameter(init_coefficients(len(vectors), keys, granularity, init))
    opt = torch.optim.Adam([raw], lr=lr, betas=(0.9, 0.999), weight_decay=0.0)
    gen = pool.generator(salt=4242)
    losses: list[float] = []
    for _ in tqdm(range(steps), desc="adamerging", disable=None if progress else True, leave=False):
        coeffs = raw.clamp(0.0, 1.0) if clamp else raw
        weights = fuse(pool.pretrained, vectors, coeffs)
        loss = raw.new_zeros(())
        for task in pool.tasks:
            n = ops.num_examples(data[task])
            perm = torch.randperm(n, generator=gen)  # a freshly shuffled loader, first ``batches_per_step`` batches
            for b in range(batches_per_step):
                idx = perm[b * batch_size:(b + 1) * batch_size]
                if idx.numel() == 0:
                    break
                loss = loss + entropy(ops.logits(task, weights, ops.slice(data[task], idx))).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    final = (raw.detach().clamp(0.0, 1.0) if clamp else raw.detach()).clone()
    summary = {
        "adapt_split": adapt_split,
        "steps": steps,
        "loss_first": losses[0] if losses else None,
        "loss_last": losses[-1] if losses else None,
        "examples_per_task": {t: int(ops.num_examples(data[t])) for t in pool.tasks},
    }
    return final, summary


def coefficients_record(coeffs: Tensor, tasks: Sequence[str], keys: Sequence[str], granularity: str) -> dict:
    """A JSON-able view: task -> value (task-wise) or task -> {tensor name -> value} (layer-wise)."""
    if granularity == "task":
        return {t: float(coeffs[i]) for i, t in enumerate(tasks)}
    return {t: {k: float(coeffs[i, j]) for j, k in enumerate(keys)} for i, t in enumerate(tasks)}


ADA_PARAMS = [
    Param("granularity", str, "layer", "one coefficient per task and tensor (layer) or per task (task)",
          choices=GRANULARITIES),
    Param("init", float, 0.3, "initial coefficient (the official prior)", lo=0.0, hi=1.0),
    Param("lr", float, 1e-3, "Adam learning rate", lo=0.0),
    Param("steps", int, 500, "Adam steps (the official 'epochs')", lo=0),
    Param("batch_size", int, 16, "unlabeled inputs per batch", lo=1),
    Param("batches_per_step", int, 2, "batches per task per step (the official loop takes 2)", lo=1),
    Param("adapt_split", str, "test", "inputs adapted on: unlabeled test inputs (paper) or train exemplars",
          choices=SPLITS),
    Param("adapt_examples", int, None, "inputs per task drawn for adaptation (none = the whole test split, 1024 train)", lo=1,
          nullable=True),
    Param("clamp", bool, True, "clamp the coefficients to [0, 1] in the forward (official code)"),
]


class AdaMergedModel(StaticModel):
    def __init__(self, weights: StateDict, info: Mapping[str, Any]):
        super().__init__(weights)
        self._info = dict(info)

    def extra_metrics(self) -> dict[str, Any]:
        return {"adamerging": self._info}


class AdaMergingBase(Method):
    """AdaMerging over the task vectors :meth:`vectors` returns (plain ones; TIES-selected ones for ++)."""

    kind = "static"

    def vectors(self, pool: Pool) -> list[StateDict]:
        tv = pool.task_vectors()
        return [tv[t] for t in pool.tasks]

    def merge(self, pool: Pool) -> Artifacts:
        p = self.params
        vectors = self.vectors(pool)
        coeffs, summary = adapt_coefficients(
            pool, vectors, p["granularity"], p["init"], p["lr"], p["steps"], p["batch_size"], p["batches_per_step"],
            p["adapt_split"], p["adapt_examples"], p["clamp"], pool.progress,
        )
        with torch.no_grad():
            merged = fuse(pool.pretrained, vectors, coeffs)
        info = {
            "granularity": p["granularity"],
            "coefficients": coefficients_record(coeffs, pool.tasks, list(pool.pretrained), p["granularity"]),
            **summary,
        }
        arts = Artifacts()
        arts.add("merged", merged, codec="state_dict")
        arts.add("coefficients", info, codec="json")
        return arts

    def load(self, artifacts: Mapping[str, Any], pretrained: StateDict, tasks: Sequence[str]) -> Merged:
        return AdaMergedModel(artifacts["merged"], artifacts["coefficients"])
