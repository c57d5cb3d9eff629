"""``weight_average``: the plain mean of the fine-tuned weights, static.

Weight averaging as in model soups (Wortsman et al., ICML 2022, the "uniform soup") and FusionBench's
``SimpleAverageAlgorithm``: ``theta_avg = (1/K) sum_t theta_t`` over the mergeable tensors. It is task arithmetic
with ``lambda = 1/K``. The sum runs over the tasks in ``pool.tasks`` order, then divides by K, as fusion-bench's
``state_dict_avg`` does (so the two agree bit for bit on float32 inputs).

Stored: the merged mergeable weights (``state_dict`` codec, natural dtype). No parameters.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from benchmark.contract import Artifacts, Merged, Method, Pool, StateDict, StaticModel
from benchmark.registry import METHODS


def weight_average_merge(models: Sequence[Mapping[str, Tensor]] | Mapping[str, Mapping[str, Tensor]]) -> StateDict:
    """The entry-wise mean of ``models`` (a list of state dicts, or ``task -> state dict``), keys of the first."""
    models = list(models.values()) if isinstance(models, Mapping) else list(models)
    if not models:
        raise ValueError("weight_average_merge needs at least one model")
    out: StateDict = {}
    for key in models[0]:
        acc = torch.zeros_like(models[0][key])
        for sd in models:
            acc += sd[key]
        out[key] = acc / len(models)
    return out


@METHODS.register(
    "weight_average",
    summary="Static: the entry-wise mean of the fine-tuned weights (uniform model soup).",
    paper="Wortsman et al. 2022, Model soups (ICML); FusionBench simple average",
    paper_rows=("Weight-Averaging",),
    order=40,
)
class WeightAverage(Method):
    kind = "static"

    def merge(self, pool: Pool) -> Artifacts:
        arts = Artifacts()
        arts.add("merged", weight_average_merge([pool.finetuned[t] for t in pool.tasks]), codec="state_dict")
        return arts

    def load(self, artifacts: Mapping[str, Any], pretrained: StateDict, tasks: Sequence[str]) -> Merged:
        return StaticModel(dict(artifacts["merged"]))
