"""Streaming metrics, one small :class:`~benchmark.contract.Metric` class each. Feed batches with ``update``, read
the score with ``compute`` (in percent, as the papers report)."""
from __future__ import annotations

from typing import Any

import torch

from benchmark.contract import Metric

__all__ = ["Accuracy"]


class Accuracy(Metric):
    """Top-1 accuracy of ``outputs`` (logits or scores ``[B, C]``, or predicted labels ``[B]``) against integer
    ``targets`` ``[B]``; ``compute()`` is in percent (0 with no examples)."""

    name = "accuracy"

    def __init__(self) -> None:
        self.correct = 0
        self.total = 0

    def update(self, outputs: Any, targets: Any) -> None:
        outputs = torch.as_tensor(outputs)
        targets = torch.as_tensor(targets).reshape(-1)
        pred = outputs.argmax(dim=-1) if outputs.ndim > 1 else outputs
        pred = pred.reshape(-1).to(targets.device)
        if pred.shape[0] != targets.shape[0]:
            raise ValueError(f"accuracy: {pred.shape[0]} predictions for {targets.shape[0]} targets")
        self.correct += int((pred == targets).sum())
        self.total += int(targets.shape[0])

    def compute(self) -> float:
        return 100.0 * self.correct / self.total if self.total else 0.0
