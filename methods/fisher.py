"""``fisher``: Fisher-weighted averaging (Matena & Raffel, NeurIPS 2022, "Merging Models with Fisher-Weighted
Averaging"), static.

Per task t, the diagonal Fisher of its fine-tuned model (task head included) over the mergeable tensors, on
``n_exemplars`` unlabeled train exemplars, with the label drawn from the model's **own predictive distribution**:

* ``estimator="exact"`` (default; the paper, and the official code's ``_compute_exact_fisher_for_batch``):
  ``F = 1/N sum_n sum_y p(y|x_n) (d log p(y|x_n) / d theta)^2``, per example and per class: one forward per
  example, then its C class gradients as batched vector-Jacobian products (one-hot cotangents,
  ``is_grads_batched``, in chunks of at most ``2^25`` gradient entries), or one backward per class if the adapter's
  forward cannot be vmapped. Cost: N forwards and N*C backward rows per task.
* ``estimator="sampled"``: the Monte-Carlo form of the same expectation, one ``y ~ p(y|x_n)`` per example (one
  backward per example; for many classes at paper scale).
* ``estimator="batched"`` (the MergeLM / fusion-bench estimator, batches of ``batch_size`` = 32):
  ``F = 1/N sum_batches (d/d theta sum_{n in batch} sum_y sqrt(p(y|x_n)) log p(y|x_n))^2`` with ``p`` detached.
  It squares a *sum* of per-example terms, so it carries cross terms between examples and classes; it is cheaper
  and is what fusion-bench's numbers use.

Merge: ``theta* = sum_t c_t F~_t theta_t / sum_t c_t F~_t`` per entry, where

* ``F~ = max(F, fisher_floor)`` (``floor_mode="max"``, the official ``fisher_floor`` applied to every model: with no
  target model in multi-task merging, ``favor_target_model`` does not apply) or ``F~ = F + fisher_floor``
  (``floor_mode="add"``, fusion-bench's ``minimal_fisher_weight``);
* ``normalize_fisher_weight`` (default True, as in fusion-bench and the official ``normalize_fishers``):
  ``c_t = (1/(||F_t|| + floor)) / sum_s 1/(||F_s|| + floor)``, ||.|| the L2 norm over all mergeable tensors;
  otherwise ``c_t = 1/K``.

A mergeable tensor that gets no gradient has F = 0 and is therefore averaged (through the floor). Heads are per
task and never merged. Stored: the merged weights (``state_dict``).

Defaults: 256 exemplars per task (fusion-bench's ``num_fisher_examples``), floor 1e-6. The auto-flexswitch paper's
Table II lists a sample size of 8192 for its Fisher rows (1024 per task): ``--set n_exemplars=1024``. A single
output (regression heads) has no label distribution: its Fisher is 0 and the tensor is averaged.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from benchmark.contract import Artifacts, Merged, Method, Pool, StateDict, StaticModel, batches
from benchmark.registry import METHODS, Param

ESTIMATORS = ("exact", "sampled", "batched")
FLOOR_MODES = ("max", "add")


def _leaf_weights(weights: Mapping[str, Tensor]) -> StateDict:
    return {k: v.detach().clone().requires_grad_(True) for k, v in weights.items()}


def _grads(out: Tensor, leaves: StateDict, **kw: Any) -> list[Tensor]:
    gs = torch.autograd.grad(out, list(leaves.values()), allow_unused=True, **kw)
    # a tensor the output does not use (a detector's box head under class logits) gets zeros, batched like the rest
    lead = (kw["grad_outputs"].shape[0],) if kw.get("is_grads_batched") else ()
    return [v.new_zeros(lead + v.shape) if g is None else g.to(v.device) for g, v in zip(gs, leaves.values())]


def _one_hot_rows(idx: Tensor, n: int, like: Tensor) -> Tensor:
    rows = torch.zeros(idx.numel(), n, dtype=like.dtype, device=like.device)
    rows[torch.arange(idx.numel()), idx.to(like.device)] = 1
    return rows


def _example_fisher(ops: Any, task: str, leaves: StateDict, x1: Any, budget: int, vmappable: bool,
                    label: int | None = None) -> tuple[list[Tensor], bool]:
    """One example's ``sum_y p(y|x) g_y^2`` (or, with ``label``, the single sampled term ``g_label^2``).

    One forward, then the per-class gradients in chunks of batched vector-Jacobian products (one-hot cotangents,
    ``is_grads_batched``) of at most ``budget`` gradient entries; one backward per class if the forward cannot be
    vmapped. Logits ``[1, C]``; extra middle dimensions (per-query ``[1, Q, C]``) are independent categoricals whose
    Fishers add. Returns the per-tensor sums and whether vmapping still works."""
    logp = F.log_softmax(ops.logits(task, leaves, x1), dim=-1).reshape(-1)
    p = logp.detach().exp().cpu()
    m = logp.numel()
    classes = torch.arange(m) if label is None else torch.tensor([label])
    weight = p if label is None else torch.ones(m, dtype=p.dtype)
    acc = [torch.zeros_like(v) for v in leaves.values()]
    n_params = sum(v.numel() for v in leaves.values())
    step = max(1, budget // max(1, n_params))
    for s in range(0, classes.numel(), step):
        idx = classes[s:s + step]
        last = s + step >= classes.numel()
        if vmappable:
            try:
                # the graph is kept even after the last chunk: if vmapping fails, the fallback backpropagates again
                gs = _grads(logp, leaves, grad_outputs=_one_hot_rows(idx, m, logp), is_grads_batched=True,
                            retain_graph=True)
                for a, g in zip(acc, gs):
                    a.add_((g.pow(2) * weight[idx].view(-1, *[1] * (g.dim() - 1))).sum(0))
                continue
            except (RuntimeError, NotImplementedError):
                vmappable = False
        for j, y in enumerate(idx.tolist()):
            gs = _grads(logp[y], leaves, retain_graph=not (last and j == idx.numel() - 1))
            for a, g in zip(acc, gs):
                a.add_(weight[y] * g.pow(2))
    return acc, vmappable


def compute_fisher(
    ops: Any, task: str, weights: Mapping[str, Tensor], inputs: Any, estimator: str = "exact",
    batch_size: int = 32, vjp_budget: int = 2**25, generator: torch.Generator | None = None,
) -> StateDict:
    """Diagonal Fisher of ``task``'s model under ``weights`` on ``inputs`` (see the module docstring)."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    leaves = _leaf_weights(weights)
    keys = list(leaves)
    acc = [torch.zeros_like(v) for v in leaves.values()]
    n = ops.num_examples(inputs)
    if estimator == "batched":
        for x in batches(ops, inputs, batch_size):
            logp = F.log_softmax(ops.logits(task, leaves, x), dim=-1)
            target = (logp.detach().exp().sqrt() * logp).sum()
            for a, g in zip(acc, _grads(target, leaves)):
                a.add_(g.pow(2))
    else:
        vmappable = True
        for i in range(n):
            x1 = ops.slice(inputs, slice(i, i + 1))
            label = None
            if estimator == "sampled":
                with torch.no_grad():
                    probs = F.softmax(ops.logits(task, weights, x1), dim=-1).reshape(-1).cpu()
                label = int(torch.multinomial(probs, 1, generator=generator))
            part, vmappable = _example_fisher(ops, task, leaves, x1, vjp_budget, vmappable, label)
            for a, g in zip(acc, part):
                a.add_(g)
    return {k: a / n for k, a in zip(keys, acc)}


def fisher_norms(fishers: Sequence[Mapping[str, Tensor]]) -> Tensor:
    """||F_t||_2 over all tensors, per task."""
    return torch.stack([torch.sqrt(sum(f.double().pow(2).sum() for f in fs.values())) for fs in fishers]).float()


def fisher_merge(
    params: Sequence[Mapping[str, Tensor]], fishers: Sequence[Mapping[str, Tensor]], fisher_floor: float = 1e-6,
    floor_mode: str = "max", normalize: bool = True,
) -> StateDict:
    """theta* = sum_t c_t F~_t theta_t / sum_t c_t F~_t, per entry, over the keys of ``params[0]``."""
    if floor_mode not in FLOOR_MODES:
        raise ValueError(f"floor_mode must be one of {FLOOR_MODES}, got {floor_mode!r}")
    k_tasks = len(params)
    coeff = torch.full((k_tasks,), 1.0 / k_tasks)
    if normalize:
        inv = 1.0 / (fisher_norms(fishers) + fisher_floor)
        coeff = coeff * (inv / inv.sum())
    out: StateDict = {}
    for name in params[0]:
        theta = torch.stack([p[name] for p in params])
        fis = torch.stack([f[name] for f in fishers])
        fis = fis.clamp_min(fisher_floor) if floor_mode == "max" else fis + fisher_floor
        c = coeff.view(-1, *[1] * (theta.dim() - 1)).to(theta.dtype)
        out[name] = (c * fis * theta).sum(0) / (c * fis).sum(0)
    return out


@METHODS.register(
    "fisher",
    summary="Static: per-entry average of the fine-tuned weights weighted by each model's diagonal Fisher.",
    paper="Matena & Raffel 2022, Merging Models with Fisher-Weighted Averaging (NeurIPS), Sec. 2-3",
    params=[
        Param("n_exemplars", int, 256, "unlabeled train exemplars per task for the Fisher", lo=1),
        Param("estimator", str, "exact", "exact per-example Fisher (paper), one sampled label per example, or "
              "fusion-bench's batched estimator",
              choices=ESTIMATORS),
        Param("batch_size", int, 32, "exemplars per batch (the batched estimator's squared-gradient unit)", lo=1),
        Param("fisher_floor", float, 1e-6, "lower bound (max) or additive smoothing (add) of every Fisher entry",
              lo=0.0),
        Param("floor_mode", str, "max", "max(F, floor) as the official code, or F + floor as fusion-bench",
              choices=FLOOR_MODES),
        Param("normalize_fisher_weight", bool, True, "weight each model by 1/||F_t|| (normalized to sum 1)"),
    ],
    paper_rows=("Fisher Merging",),
    order=80,
)
class FisherMerging(Method):
    whole_models = True  # runs forwards of the fine-tuned models
    kind = "static"

    def merge(self, pool: Pool) -> Artifacts:
        if pool.ops is None:
            raise ValueError("fisher needs data access (pool.ops) for the Fisher information")
        p = self.params
        fishers = []
        for ti, task in enumerate(pool.tasks):
            inputs = pool.exemplars(task, p["n_exemplars"])
            fishers.append(compute_fisher(pool.ops, task, pool.finetuned[task], inputs, p["estimator"],
                                          p["batch_size"], generator=pool.generator(salt=500 + ti)))
        merged = fisher_merge([pool.finetuned[t] for t in pool.tasks], fishers, p["fisher_floor"], p["floor_mode"],
                              p["normalize_fisher_weight"])
        arts = Artifacts()
        arts.add("merged", merged, codec="state_dict")
        return arts

    def load(self, artifacts: Mapping[str, Any], pretrained: StateDict, tasks: Sequence[str]) -> Merged:
        return StaticModel(artifacts["merged"])
