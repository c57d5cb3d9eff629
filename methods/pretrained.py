"""``pretrained``: the reference row of the unmerged pretrained model. It stores nothing."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from benchmark.contract import Artifacts, Merged, Method, Pool, StateDict, StaticModel
from benchmark.registry import METHODS


@METHODS.register("pretrained", summary="Reference row: the pretrained model, no task knowledge, no storage.",
                  paper_rows=("Pre-trained",), order=0)
class Pretrained(Method):
    kind = "static"
    reference = True

    def merge(self, pool: Pool) -> Artifacts:
        return Artifacts()

    def load(self, artifacts: Mapping[str, Any], pretrained: StateDict, tasks: Sequence[str]) -> Merged:
        return StaticModel(pretrained)
