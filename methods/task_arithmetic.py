"""``task_arithmetic``: Task Arithmetic (Ilharco et al., ICLR 2023, "Editing Models with Task Arithmetic"), static.

``theta_m = theta + lambda * sum_t tau_t`` with ``tau_t = theta_t - theta`` over the mergeable tensors. The sum runs
over the tasks in ``pool.tasks`` order and is then scaled, as fusion-bench's ``task_arithmetic_merge`` /
``TaskArithmeticAlgorithm`` do (they agree bit for bit on float32 inputs).

``scaling_coef`` (lambda) defaults to 0.3, the value of the T-Switch supplementary (Table 5) and of fusion-bench's
config. The auto-flexswitch paper grid-searched it per backbone (its Table II: 0.2 for ViT-B/32 and ConvNeXt,
0.3 for ViT-L/14, 0.2 for DETR): ``--set scaling_coef=0.2`` reproduces those settings.

The task vectors are never all held at once: the pool's lazy task vectors (:meth:`Pool.lazy_task_vectors`,
:class:`benchmark.contract.TaskVectorView`) compute ``theta_t - theta`` one tensor at a time, so merging needs the
pool plus a few tensors of working memory.

Stored: the merged mergeable weights (``state_dict`` codec, natural dtype).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from torch import Tensor

from benchmark.contract import (Artifacts, Merged, Method, Pool, StateDict, StaticModel, TaskVectorView,
                                as_vector_list)
from benchmark.registry import METHODS, Param


def task_arithmetic_merge(
    pretrained: Mapping[str, Tensor],
    task_vectors: Sequence[Mapping[str, Tensor]] | Mapping[str, Mapping[str, Tensor]],
    scaling_coef: float = 0.3,
) -> StateDict:
    """``theta + scaling_coef * sum_t tau_t`` over the keys of ``pretrained``. With no task vectors: a copy of
    ``pretrained``."""
    vectors = as_vector_list(task_vectors)
    if not vectors:
        return {k: v.clone() for k, v in pretrained.items()}
    out: StateDict = {}
    for key in pretrained:  # one key at a time: lazy task vectors are computed once each
        first = vectors[0][key]
        acc = first if isinstance(vectors[0], TaskVectorView) else first.clone()  # a view's tensor is fresh
        for tv in vectors[1:]:
            acc += tv[key]
        # in place, bit for bit ``pretrained + acc * scaling_coef`` (IEEE addition commutes): no temporaries
        out[key] = acc.mul_(scaling_coef).add_(pretrained[key])
    return out


@METHODS.register(
    "task_arithmetic",
    summary="Static: theta + lambda * (sum of the task vectors).",
    paper="Ilharco et al. 2023, Editing Models with Task Arithmetic (ICLR)",
    params=[
        Param("scaling_coef", float, 0.3, "lambda, the scale of the summed task vectors (T-Switch supp. Table 5)",
              lo=0.0),
    ],
    paper_rows=("Task-Arithmetic",),
    order=50,
)
class TaskArithmetic(Method):
    kind = "static"

    def merge(self, pool: Pool) -> Artifacts:
        merged = task_arithmetic_merge(pool.pretrained, pool.lazy_task_vectors(), self.params["scaling_coef"])
        arts = Artifacts()
        arts.add("merged", merged, codec="state_dict")
        return arts

    def load(self, artifacts: Mapping[str, Any], pretrained: StateDict, tasks: Sequence[str]) -> Merged:
        return StaticModel(dict(artifacts["merged"]))
