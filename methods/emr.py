"""``emr``: EMR-Merging, Elect, Mask & Rescale (Huang et al., NeurIPS 2024), task-conditioned and tuning-free.

For task vectors tau_t = theta_t - theta over the mergeable tensors:

* **Elect**: ``flag = sign(sum_t tau_t)`` (a zero sum counts as negative, as ``(s > 0) * 2 - 1`` in the official
  code); ``tau_uni = flag * max_t |tau_t * (tau_t * flag > 0)|`` -- per entry, the largest magnitude among the
  tasks that agree with the elected sign.
* **Mask**: ``m_t = (tau_t * flag > 0)``, one boolean per entry and task.
* **Rescale**: ``r_t = sum_n mean|tau_t[n]| / sum_n mean|m_t[n] * tau_uni[n]|``, n over the tensors. This is what
  the official code (harveyhuang18/EMR_Merging, ``emr_merge``) and fusion-bench compute: a *sum over tensors of
  per-tensor means*, which is neither the paper's whole-model mean (that would weight every entry equally) nor a
  per-tensor rescaler; we follow the code. ``rescale="model_mean"`` gives the paper's whole-model ratio
  ``sum|tau_t| / sum|m_t * tau_uni|``.
* **Task t**: ``theta_t = theta + r_t * m_t * tau_uni``.

Storage: ``tau_uni`` (``state_dict`` codec, natural dtype), one packed mask per task (``bitmask`` codec, a dict of
bool tensors, 8 entries per byte) and the K rescalers (``tensor``, float32).

Memory: the task vectors are read one tensor at a time (the pool's lazy views) and the masks are packed as they
are made, and stay packed after reloading (unpacked one tensor at a time when a task's weights are built): the
merge holds ``tau_uni`` plus 1/32 of a model per task, not every task vector at once. A task's weights are built
tensor by tensor, and the pages of each reloaded ``tau_uni`` and mask tensor (the artifact file is mapped) are
handed back once used, so the evaluation holds the pretrained weights and one task's, not ``tau_uni`` too; the
price is reading ``tau_uni`` from the file again for every task.

Differences from the reference: none in the default; only the mergeable tensors take part (heads are per task and
are never merged, as everywhere in this suite).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from benchmark.contract import Artifacts, Merged, Method, Pool, StateDict, TaskConditionedModel
from benchmark.registry import METHODS, Param
from benchmark.storage import PackedMask, PackedMasks, page_out

RESCALE_MODES = ("code", "model_mean")


def emr_merge(
    vectors: Sequence[Mapping[str, Tensor]], rescale: str = "code", packed: bool = False
) -> tuple[StateDict, list[Mapping[str, Tensor]], Tensor]:
    """Elect, mask, rescale. Returns ``(tau_uni, masks per task, rescalers [K])``; keys in the order of
    ``vectors[0]``. Each task vector tensor is read once (lazy task vectors are computed once each).

    ``packed=True``: each task's masks are a :class:`~benchmark.storage.PackedMasks`, packed tensor by tensor as
    they are made (8 tasks' ``bool`` masks would otherwise hold 2 float32 model copies)."""
    if rescale not in RESCALE_MODES:
        raise ValueError(f"rescale must be one of {RESCALE_MODES}, got {rescale!r}")
    k_tasks = len(vectors)
    keys = list(vectors[0])
    tau_uni: StateDict = {}
    masks: list[dict[str, Any]] = [{} for _ in range(k_tasks)]
    num = torch.zeros(k_tasks, dtype=torch.float64)
    den = torch.zeros(k_tasks, dtype=torch.float64)
    for name in keys:
        stacked = torch.stack([v[name] for v in vectors])  # [K, ...]
        flag = (stacked.sum(0) > 0).to(stacked.dtype) * 2 - 1
        agree = stacked * flag > 0  # [K, ...]
        uni = (stacked.abs() * agree).amax(0) * flag
        tau_uni[name] = uni
        for t in range(k_tasks):
            masks[t][name] = PackedMask.of(agree[t]) if packed else agree[t]
            kept = (uni * agree[t]).abs()
            if rescale == "code":
                num[t] += stacked[t].abs().mean().double()
                den[t] += kept.mean().double()
            else:
                num[t] += stacked[t].abs().sum().double()
                den[t] += kept.sum().double()
    rescalers = (num / den).to(torch.float32)
    return tau_uni, [PackedMasks(m) for m in masks] if packed else masks, rescalers


def emr_task_weights(pretrained: Mapping[str, Tensor], tau_uni: Mapping[str, Tensor], mask: Mapping[str, Tensor],
                     rescaler: Tensor | float) -> StateDict:
    """theta_t = theta + r_t * m_t * tau_uni (computed as ``(tau_uni * m_t) * r_t``, the reference's order)."""
    return {k: pretrained[k] + (tau_uni[k] * mask[k]) * rescaler for k in pretrained}


class EMRModel(TaskConditionedModel):
    def __init__(self, pretrained: StateDict, tau_uni: StateDict, masks: Mapping[str, Mapping[str, Tensor]],
                 rescalers: Tensor, tasks: Sequence[str]):
        self._pre = pretrained
        self._uni = tau_uni
        self._masks = masks
        self._r = rescalers
        self._tasks = list(tasks)

    def weights(self, task: str) -> StateDict:
        i = self._tasks.index(task)
        mask = self._masks[task]
        r = self._r[i]
        out: StateDict = {}
        # the reloaded tau_uni and masks are pages of the mapped artifact file, and a page once read stays resident:
        # tau_uni (a model copy) and, by the last task, all 8 tasks' masks (a quarter of one) would sit beside the
        # task's weights through its evaluation, 4.0 copies on 8 ViT-L/14 stand-ins. So each tensor's pages are
        # handed back once it is used (read from the file again for the next task: a disk read per task)
        for k in self._pre:
            out[k] = emr_task_weights({k: self._pre[k]}, self._uni, {k: mask[k]}, r)[k]
            page_out(self._uni[k])
            if isinstance(mask, PackedMasks):
                page_out(mask.packed[k].bits)
        return out

    def extra_metrics(self) -> dict[str, Any]:
        density = {}
        for t in self._tasks:
            n = sum(m.numel() for m in self._masks[t].values())
            density[t] = sum(int(m.sum()) for m in self._masks[t].values()) / max(n, 1)
        return {"emr": {"rescalers": dict(zip(self._tasks, self._r.tolist())), "mask_density": density}}


@METHODS.register(
    "emr",
    summary="Task-conditioned: elected unified task vector + per-task sign masks and rescalers (tuning-free).",
    paper="Huang et al. 2024, EMR-Merging: Tuning-Free High-Performance Model Merging (NeurIPS), Sec. 3",
    params=[
        Param("rescale", str, "code", "rescaler: sum of per-tensor means (official code) or whole-model mean (paper)",
              choices=RESCALE_MODES),
    ],
    paper_rows=("EMR-Merging",),
    order=130,
)
class EMRMerging(Method):
    kind = "task_conditioned"

    def merge(self, pool: Pool) -> Artifacts:
        tau_uni, masks, rescalers = emr_merge(pool.lazy_task_vectors(), self.params.get("rescale", "code"),
                                              packed=True)
        arts = Artifacts()
        arts.add("tau_uni", tau_uni, codec="state_dict")
        for t, m in zip(pool.tasks, masks):
            arts.add(f"masks/{t}", m, codec="bitmask")
        arts.add("rescalers", rescalers, codec="tensor")
        return arts

    def load(self, artifacts: Mapping[str, Any], pretrained: StateDict, tasks: Sequence[str]) -> Merged:
        masks = {t: artifacts[f"masks/{t}"] for t in tasks}
        return EMRModel(pretrained, artifacts["tau_uni"], masks, artifacts["rescalers"], tasks)
