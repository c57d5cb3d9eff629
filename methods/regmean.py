"""``regmean``: Regression Mean (Jin et al., ICLR 2023, "Dataless Knowledge Fusion by Merging Weights of Language
Models"), static.

For every mergeable weight W that acts as a linear map (the adapter lists them in ``ModelOps.linear_inputs``):

* Gram matrix per task, from the layer's inputs under the task's **fine-tuned** weights on ``n_exemplars``
  unlabeled train exemplars (the official code hooks every ``nn.Linear`` of each fine-tuned model):
  ``G_t = X_t^T X_t / N_t``, N_t the number of input rows (tokens). Dividing by N_t is what the official code
  (bloomberg/dataless-model-merging, ``compute_grams``) and fusion-bench do; with the same number of rows per task
  it leaves the solution unchanged, otherwise it weights tasks equally instead of by token count.
* Off-diagonal entries scaled by ``alpha`` (``reduce_non_diag``): ``G~ = alpha * G + (1 - alpha) * diag(G)``.
* ``W* = (sum_t G~_t)^-1 sum_t G~_t W_t`` in the ``[d_in, d_out]`` orientation, i.e. for an ``nn.Linear`` weight
  ``[d_out, d_in]``: ``W*^T = (sum G~_t)^-1 sum G~_t W_t^T``. Solved in float64 with ``torch.linalg.solve``
  (the references call ``torch.inverse`` in the model's dtype); a weight of ``[d_in, d_out]`` layout (``y = x W``)
  is merged without the transposes. Where ``sum G`` is singular (an input dimension that no exemplar activates;
  the references fail there) a 1e-8 relative ridge toward the plain average fixes the undetermined directions.
* Every other mergeable tensor (biases, norms, embeddings, convolutions the adapter does not list) is the plain
  average of the fine-tuned tensors.

Defaults follow fusion-bench's CLIP config (``clip_regmean.yaml``): 256 exemplars per task, batches of 32,
``alpha`` (``reduce_non_diagonal_ratio``) 0.95. Stored: the merged mergeable weights (``state_dict``).

The auto-flexswitch paper's Table II lists a sample size of 12800 for its RegMean rows (1600 per task over 8
tasks): ``--set n_exemplars=1600`` reproduces that setting.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from benchmark.contract import Artifacts, Merged, Method, Pool, StateDict, StaticModel, batches
from benchmark.registry import METHODS, Param


def compute_grams(ops: Any, task: str, weights: StateDict, inputs: Any, batch_size: int = 32) -> dict[str, Tensor]:
    """``G = X^T X / N`` (float64) for every linear weight the adapter reports, over all rows of all batches."""
    sums: dict[str, Tensor] = {}
    rows: dict[str, int] = {}
    with torch.no_grad():
        for batch in batches(ops, inputs, batch_size):
            for name, x in ops.linear_inputs(weights, batch).items():
                x = x.detach().reshape(-1, x.shape[-1]).double()
                xtx = x.T @ x
                sums[name] = sums[name] + xtx if name in sums else xtx
                rows[name] = rows.get(name, 0) + x.shape[0]
    return {k: (sums[k] / rows[k]).cpu() for k in sums}


def reduce_non_diag(gram: Tensor, alpha: float) -> Tensor:
    """Off-diagonal entries times alpha, the diagonal unchanged."""
    scale = torch.full_like(gram, alpha)
    scale.diagonal().fill_(1.0)
    return gram * scale


def linear_layout(weight: Tensor, d_in: int) -> str:
    """``"out_in"`` (nn.Linear, y = x W^T) or ``"in_out"`` (y = x W); the ``nn.Linear`` layout wins when both fit."""
    flat_in = weight.reshape(weight.shape[0], -1).shape[1]
    if flat_in == d_in:
        return "out_in"
    if weight.dim() == 2 and weight.shape[0] == d_in:
        return "in_out"
    raise ValueError(f"weight of shape {tuple(weight.shape)} does not take inputs of width {d_in}")


class RegMeanAccumulator:
    """Running ``sum_t G~_t``, ``sum_t G~_t W_t`` (float64, ``[d_in, d_in]`` / ``[d_in, d_out]``) and the weight sums
    for the plain means, fed one task at a time so that only one task's Gram matrices are alive at once (at paper
    scale the Gram matrices of 8 ViT-B/32 models take ~9 GB in float64)."""

    def __init__(self, alpha: float = 0.95):
        self.alpha = alpha
        self.n = 0
        self.sums: StateDict = {}
        self.lhs: dict[str, Tensor] = {}
        self.rhs: dict[str, Tensor] = {}
        self.hits: dict[str, int] = {}
        self.layout: dict[str, str] = {}
        self.ref: dict[str, Tensor] = {}

    def add(self, weights: Mapping[str, Tensor], grams: Mapping[str, Tensor]) -> None:
        self.n += 1
        for name, w in weights.items():
            self.ref.setdefault(name, w)
            self.sums[name] = self.sums[name] + w.double() if name in self.sums else w.double()
            if name not in grams:
                continue
            layout = self.layout.setdefault(name, linear_layout(w, grams[name].shape[0]))
            gt = reduce_non_diag(grams[name].double(), self.alpha)
            wd = w.double()
            w_in_out = wd.reshape(wd.shape[0], -1).T if layout == "out_in" else wd  # [d_in, d_out]
            self.lhs[name] = self.lhs[name] + gt if name in self.lhs else gt
            prod = gt @ w_in_out
            self.rhs[name] = self.rhs[name] + prod if name in self.rhs else prod
            self.hits[name] = self.hits.get(name, 0) + 1

    def result(self) -> StateDict:
        """The closed-form solution where every task gave a Gram matrix, the plain mean elsewhere."""
        out: StateDict = {}
        for name, ref in self.ref.items():
            mean = self.sums[name] / self.n
            if self.hits.get(name, 0) == self.n:
                layout = self.layout[name]
                sol = _solve(self.lhs[name], self.rhs[name], mean, layout)  # [d_in, d_out]
                merged = sol.T.reshape(ref.shape) if layout == "out_in" else sol
            else:
                merged = mean
            out[name] = merged.to(ref.dtype)
        return out


def _solve(lhs: Tensor, rhs: Tensor, mean: Tensor, layout: str) -> Tensor:
    """(sum G)^-1 sum G W. If sum G is singular (an input dimension no exemplar ever activates, e.g. a dead ReLU
    unit, where the references' ``torch.inverse`` fails), a ridge of 1e-8 * mean(diag) pulls the undetermined
    directions to the plain average of the weights and leaves the determined ones as they are."""
    try:
        return torch.linalg.solve(lhs, rhs)
    except torch.linalg.LinAlgError:
        prior = mean.reshape(mean.shape[0], -1).T if layout == "out_in" else mean
        eps = 1e-8 * float(lhs.diagonal().mean().clamp_min(1e-30))
        eye = torch.eye(lhs.shape[0], dtype=lhs.dtype)
        return torch.linalg.solve(lhs + eps * eye, rhs + eps * prior)


def regmean_merge(
    finetuned: Sequence[Mapping[str, Tensor]], grams: Sequence[Mapping[str, Tensor]], alpha: float = 0.95
) -> StateDict:
    """RegMean over the keys of ``finetuned[0]``: the closed-form solution where a Gram matrix exists (in every
    task), the plain mean elsewhere."""
    acc = RegMeanAccumulator(alpha)
    for sd, g in zip(finetuned, grams):
        acc.add(sd, g)
    return acc.result()


@METHODS.register(
    "regmean",
    summary="Static: closed-form least-squares merge of every linear layer from per-task input Gram matrices.",
    paper="Jin et al. 2023, Dataless Knowledge Fusion by Merging Weights of Language Models (ICLR), Sec. 3",
    params=[
        Param("n_exemplars", int, 256, "unlabeled train exemplars per task for the Gram matrices", lo=1),
        Param("alpha", float, 0.95, "scale of the Gram matrices' off-diagonal entries", lo=0.0, hi=1.0),
        Param("batch_size", int, 32, "exemplars per forward pass", lo=1),
    ],
    paper_rows=("RegMean",),
    order=100,
)
class RegMean(Method):
    whole_models = True  # runs forwards of the fine-tuned models
    kind = "static"

    def merge(self, pool: Pool) -> Artifacts:
        if pool.ops is None:
            raise ValueError("regmean needs data access (pool.ops) for its Gram matrices")
        acc = RegMeanAccumulator(self.params["alpha"])
        for task in pool.tasks:
            inputs = pool.exemplars(task, self.params["n_exemplars"])
            grams = compute_grams(pool.ops, task, pool.finetuned[task], inputs, self.params["batch_size"])
            if not grams:
                raise ValueError("the backbone's linear_inputs reported no linear weights; regmean needs them")
            acc.add(pool.finetuned[task], grams)
            del grams
        merged = acc.result()
        arts = Artifacts()
        arts.add("merged", merged, codec="state_dict")
        return arts

    def load(self, artifacts: Mapping[str, Any], pretrained: StateDict, tasks: Sequence[str]) -> Merged:
        return StaticModel(artifacts["merged"])
