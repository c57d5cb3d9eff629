"""Instant, training-free plugins for the sweep tests: two backbones, two suites and one method.

A plain module (no pytest import), so every process a sweep starts can import it: the test process, the
``python -m benchmark sweep`` subprocesses, the local executor's children and Ray's workers. Sweep files load it
with ``plugins: [_fake_plugins]``; the tests put this folder on ``PYTHONPATH``.

The model is a linear classifier ``logits = x @ W.T`` per task. Each task's fine-tuned weights are the pretrained
ones plus a task vector that solves it; ``fake_sweep_merge`` keeps ``pretrained + lam * sum(task vectors)``. The
method can also sleep, raise, or SIGKILL its own process once (keyed on a marker file), which is what the resume,
failure and retry tests need.
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any, Iterator

import torch

from benchmark.contract import Artifacts, Backbone, Method, Metric, StaticModel, Suite, TaskData
from benchmark.registry import BACKBONES, METHODS, SUITES, Param

DIM, CLASSES, N = 8, 3, 48
TASKS = ("a", "b")


class _Acc(Metric):
    name = "accuracy"

    def __init__(self) -> None:
        self.hit = self.n = 0

    def update(self, outputs, targets) -> None:
        self.hit += int((outputs.argmax(1) == targets).sum())
        self.n += len(targets)

    def compute(self) -> float:
        return 100.0 * self.hit / max(self.n, 1)


class _Ops:
    def __init__(self, pretrained):
        self.pretrained = pretrained

    def logits(self, task, weights, inputs):
        w = self.pretrained if weights is None else weights
        return inputs @ w["w"].T

    def features(self, weights, inputs):
        return inputs

    def slice(self, inputs, index):
        return inputs[index]

    def num_examples(self, inputs):
        return inputs.shape[0]


class _FakeSuite(Suite):
    modality = "vector"

    @property
    def tasks(self) -> list[str]:
        return list(TASKS)

    def load(self, task: str, split: str) -> TaskData:
        raise NotImplementedError  # the fake backbone makes its own data

    def metric(self, task: str) -> Metric:
        return _Acc()


SUITES.register("fake_sweep_suite", summary="sweep tests: two linear tasks")(type("FakeSweepSuite", (_FakeSuite,), {}))
SUITES.register("fake_sweep_suite_b", summary="sweep tests: the same tasks again")(
    type("FakeSweepSuiteB", (_FakeSuite,), {})
)


class _FakeBackbone(Backbone):
    def prepare(self) -> None:
        g = torch.Generator().manual_seed(1234)
        self.pre = {"w": 1.5 * torch.randn(CLASSES, DIM, generator=g)}
        self.teacher = {t: torch.randn(CLASSES, DIM, generator=g) for t in TASKS}
        self.ft = {t: {"w": self.pre["w"] + self.teacher[t]} for t in TASKS}
        seeds = {"train": 1, "val": 2, "test": 3}
        self.data = {}
        for s, seed in seeds.items():
            gs = torch.Generator().manual_seed(seed)
            for t in TASKS:
                x = torch.randn(N, DIM, generator=gs)
                self.data[t, s] = (x, (x @ self.teacher[t].T).argmax(1))

    def pretrained_state(self):
        return self.pre

    def finetuned_state(self, task):
        return self.ft[task]

    def checkpoints(self):
        return {"fake": "0" * 64}

    def batches(self, task: str, split: str, batch_size: int) -> Iterator[tuple[Any, Any]]:
        x, y = self.data[task, split]
        for i in range(0, len(y), batch_size):
            yield x[i : i + batch_size], y[i : i + batch_size]

    def ops(self):
        return _Ops(self.pre)


BACKBONES.register(
    "fake_sweep_backbone", summary="sweep tests: linear classifier", suites=("fake_sweep_suite", "fake_sweep_suite_b"),
    default_suite="fake_sweep_suite",
)(type("FakeSweepBackbone", (_FakeBackbone,), {}))
BACKBONES.register(
    "fake_sweep_backbone2", summary="sweep tests: another linear classifier", suites=("fake_sweep_suite",),
    default_suite="fake_sweep_suite",
)(type("FakeSweepBackbone2", (_FakeBackbone,), {}))


@METHODS.register(
    "fake_sweep_merge",
    summary="sweep tests: pretrained + lam * sum of task vectors; can sleep, fail, or kill its process once",
    params=[
        Param("lam", float, 0.5, "scaling coefficient", lo=0.0, hi=2.0),
        Param("mode", str, "sum", "how task vectors combine", choices=("sum", "mean")),
        Param("sleep", float, 0.0, "seconds to sleep in merge", lo=0.0),
        Param("fail", bool, False, "raise in merge"),
        Param("crash_marker", str, "", "if set and this file is absent: create it, then SIGKILL our own process"),
    ],
)
class FakeSweepMerge(Method):
    def merge(self, pool):
        p = self.params
        if p["crash_marker"] and not Path(p["crash_marker"]).exists():
            Path(p["crash_marker"]).write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        if p["fail"]:
            raise RuntimeError("fake_sweep_merge was asked to fail")
        time.sleep(p["sleep"])
        k = 1.0 if p["mode"] == "sum" else 1.0 / len(pool.tasks)
        tv = pool.task_vectors()
        merged = {n: pool.pretrained[n] + p["lam"] * k * sum(tv[t][n] for t in pool.tasks) for n in pool.pretrained}
        arts = Artifacts()
        arts.add("merged", merged, codec="state_dict")
        return arts

    def load(self, artifacts, pretrained, tasks):
        return StaticModel(artifacts["merged"])
