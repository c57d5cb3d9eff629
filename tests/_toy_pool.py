"""A toy pool for method tests: a linear classifier per task on Gaussian-blob inputs, with real ModelOps.

The "backbone" is ``logits = x @ W.T + b`` with per-task blobs; fine-tuning is a few real gradient steps per task,
so task vectors have the structure methods expect (not random noise)."""
from __future__ import annotations

import torch
from torch import Tensor

from benchmark.contract import Pool, StateDict


class ToyOps:
    def __init__(self, data: dict[str, Tensor]):
        self.data = data

    def exemplars(self, task: str, n: int, seed: int) -> Tensor:
        g = torch.Generator().manual_seed(seed)
        x = self.data[task]
        return x[torch.randperm(x.shape[0], generator=g)[:n]]

    def features(self, weights: StateDict | None, inputs: Tensor) -> Tensor:
        return inputs

    def logits(self, task: str, weights: StateDict | None, inputs: Tensor) -> Tensor:
        w = self.pretrained if weights is None else weights
        return inputs @ w["lin.weight"].T + w["lin.bias"]

    def linear_inputs(self, weights: StateDict | None, inputs: Tensor) -> dict[str, Tensor]:
        return {"lin.weight": inputs}

    def num_examples(self, inputs: Tensor) -> int:
        return inputs.shape[0]

    def slice(self, inputs: Tensor, index) -> Tensor:
        return inputs[index]


def toy_pool(n_tasks: int = 3, dim: int = 16, classes: int = 4, n: int = 64, seed: int = 0, steps: int = 30) -> Pool:
    g = torch.Generator().manual_seed(seed)
    pre = {"lin.weight": 0.1 * torch.randn(classes, dim, generator=g), "lin.bias": torch.zeros(classes)}
    tasks = [f"t{i}" for i in range(n_tasks)]
    data, finetuned = {}, {}
    for ti, t in enumerate(tasks):
        centre = 3 * torch.randn(classes, dim, generator=g)
        y = torch.arange(n) % classes
        x = centre[y] + torch.randn(n, dim, generator=g) + 4 * torch.randn(1, dim, generator=g)
        data[t] = x
        w = {k: v.clone().requires_grad_(True) for k, v in pre.items()}
        opt = torch.optim.SGD(list(w.values()), lr=0.05)
        for _ in range(steps):
            loss = torch.nn.functional.cross_entropy(x @ w["lin.weight"].T + w["lin.bias"], y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        finetuned[t] = {k: v.detach() for k, v in w.items()}
    ops = ToyOps(data)
    ops.pretrained = pre
    return Pool(tasks=tasks, pretrained=pre, finetuned=finetuned, ops=ops, seed=seed)
