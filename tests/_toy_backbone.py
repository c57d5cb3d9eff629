"""A toy backbone + suite registered for runner tests: linear classifiers on Gaussian blobs (instant)."""
from __future__ import annotations

from typing import Any, Iterator

import torch

from benchmark.contract import Backbone, Metric, Suite, TaskData
from benchmark.registry import BACKBONES, SUITES

from _toy_pool import ToyOps, toy_pool


class _Acc(Metric):
    name = "accuracy"

    def __init__(self):
        self.hit = self.n = 0

    def update(self, outputs, targets):
        self.hit += int((outputs.argmax(1) == targets).sum())
        self.n += len(targets)

    def compute(self):
        return 100.0 * self.hit / max(self.n, 1)


if "toy_blobs" not in SUITES:

    @SUITES.register("toy_blobs", summary="test suite: Gaussian blobs")
    class ToyBlobs(Suite):
        modality = "vector"

        @property
        def tasks(self):
            return ["t0", "t1", "t2"]

        def load(self, task: str, split: str) -> TaskData:
            raise NotImplementedError  # the toy backbone holds its data itself

        def metric(self, task: str) -> Metric:
            return _Acc()

    @BACKBONES.register("toy_linear", summary="test backbone: a linear classifier", suites=("toy_blobs",),
                        default_suite="toy_blobs")
    class ToyLinear(Backbone):
        def prepare(self) -> None:
            self.pool = toy_pool(seed=0)

        def pretrained_state(self):
            return self.pool.pretrained

        def finetuned_state(self, task):
            return self.pool.finetuned[task]

        def checkpoints(self):
            return {"toy": "0" * 64}

        def batches(self, task: str, split: str, batch_size: int) -> Iterator[tuple[Any, Any]]:
            x = self.pool.ops.data[task]
            y = torch.arange(x.shape[0]) % 4
            for i in range(0, x.shape[0], batch_size):
                yield x[i : i + batch_size], y[i : i + batch_size]

        def ops(self) -> ToyOps:
            return self.pool.ops
