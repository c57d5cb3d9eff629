"""GLUE metrics beyond accuracy: Matthews correlation (CoLA). Streaming, in percent (x100), like
:mod:`tasks.metrics`."""
from __future__ import annotations

import math
from typing import Any

import torch

from benchmark.contract import Metric

__all__ = ["MatthewsCorrelation"]


class MatthewsCorrelation(Metric):
    """Matthews correlation coefficient x100 of predictions (argmax of ``outputs [B, C]``, or labels ``[B]``)
    against integer ``targets``. The multiclass form (Gorodkin 2004), which is the usual MCC for two classes and
    what ``sklearn.metrics.matthews_corrcoef`` computes; 0 when it is undefined (a constant prediction or
    target), as sklearn returns."""

    name = "mcc"

    def __init__(self) -> None:
        self.confusion: dict[tuple[int, int], int] = {}

    def update(self, outputs: Any, targets: Any) -> None:
        outputs = torch.as_tensor(outputs)
        targets = torch.as_tensor(targets).reshape(-1)
        pred = outputs.argmax(dim=-1) if outputs.ndim > 1 else outputs
        pred = pred.reshape(-1).to(targets.device)
        if pred.shape[0] != targets.shape[0]:
            raise ValueError(f"mcc: {pred.shape[0]} predictions for {targets.shape[0]} targets")
        for t, p in zip(targets.tolist(), pred.tolist()):
            self.confusion[(int(t), int(p))] = self.confusion.get((int(t), int(p)), 0) + 1

    def compute(self) -> float:
        classes = sorted({k for pair in self.confusion for k in pair})
        s = sum(self.confusion.values())
        if s == 0:
            return 0.0
        t_k = {k: sum(v for (t, _), v in self.confusion.items() if t == k) for k in classes}
        p_k = {k: sum(v for (_, p), v in self.confusion.items() if p == k) for k in classes}
        c = sum(v for (t, p), v in self.confusion.items() if t == p)
        cov_tp = c * s - sum(t_k[k] * p_k[k] for k in classes)
        cov_pp = s * s - sum(p_k[k] ** 2 for k in classes)
        cov_tt = s * s - sum(t_k[k] ** 2 for k in classes)
        if cov_pp == 0 or cov_tt == 0:
            return 0.0
        return 100.0 * cov_tp / math.sqrt(cov_pp * cov_tt)
