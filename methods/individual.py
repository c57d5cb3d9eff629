"""``individual``: the reference row of one fine-tuned model per task (the upper bound merging aims at).

It stores every task's fine-tuned mergeable weights in their natural dtype, which is the storage cost of keeping
the task models around.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from benchmark.contract import Artifacts, Merged, Method, Pool, StateDict, TaskConditionedModel
from benchmark.registry import METHODS


class _PerTask(TaskConditionedModel):
    def __init__(self, weights: Mapping[str, StateDict]):
        self._w = weights

    def weights(self, task: str) -> StateDict:
        return self._w[task]


@METHODS.register("individual", summary="Reference row: each task evaluated with its own fine-tuned model.",
                  paper_rows=("Individual",), order=30)
class Individual(Method):
    whole_models = True  # runs forwards of the fine-tuned models
    kind = "task_conditioned"
    reference = True

    def merge(self, pool: Pool) -> Artifacts:
        arts = Artifacts()
        for t in pool.tasks:
            arts.add(f"finetuned/{t}", pool.finetuned[t], codec="state_dict")
        return arts

    def load(self, artifacts: Mapping[str, Any], pretrained: StateDict, tasks: Sequence[str]) -> Merged:
        return _PerTask({t: artifacts[f"finetuned/{t}"] for t in tasks})
