"""``adamerging_pp``: AdaMerging++ (Yang et al., ICLR 2024), static; AdaMerging on TIES-processed task vectors.

What the official code does (EnnengYang/AdaMerging, ``main_{task,layer}_wise_adamergingpp.py``): all task vectors
are flattened into one row each; ``ties_merging_split(tv_flat, reset_thresh=20, merge_func="dis-sum")``
keeps each task's top 20% entries by magnitude over the **whole** vector (trim), elects the sign of the sum of the
trimmed vectors (zeros resolved to the majority sign) and keeps, per task, only the entries that agree with it
(``selected_entries``). The disjoint sum it also returns is not used: AdaMerging then learns task-wise or
layer-wise coefficients over these per-task selected vectors, exactly as for plain AdaMerging (init 0.3, clamp
[0, 1], Adam lr 1e-3, 500 steps, two batches of 16 unlabeled test inputs per task per step); see
:mod:`methods._adamerging_core`.

The trim/elect step is the suite's TIES implementation (:mod:`methods.ties`), taken over the mergeable tensors
with a global top-k, as the official code flattens the whole state dict. ``topk`` is the kept fraction in percent.

Differences from the official code: those of :mod:`methods.adamerging`; the flattened vector covers the mergeable
tensors only (heads are per task and never merged).

The auto-flexswitch paper's Table II lists a sparsity rate of 0.5 for AdaMerging++ on ViT-B/32 (0.7 ConvNeXt, 0.3
ViT-L/14), i.e. ``--set topk=50`` (``30``, ``70``) if "sparsity rate" is the fraction trimmed away.
"""
from __future__ import annotations

from typing import Mapping, Sequence

from torch import Tensor

from benchmark.contract import Pool, StateDict
from benchmark.registry import METHODS, Param
from methods._adamerging_core import ADA_PARAMS, AdaMergingBase


def ties_selected_vectors(vectors: Sequence[Mapping[str, Tensor]], topk: float = 20.0) -> list[StateDict]:
    """Per-task task vectors after TIES's trim (top ``topk``% by magnitude over each whole vector) and elect (only
    the entries agreeing with the elected sign), before the disjoint merge."""
    from methods.ties import ties_select  # the suite's TIES, one implementation

    return ties_select(list(vectors), topk=topk, scope="global")


@METHODS.register(
    "adamerging_pp",
    summary="Static: AdaMerging's entropy-minimized coefficients over TIES-trimmed, sign-elected task vectors.",
    paper="Yang et al. 2024, AdaMerging: Adaptive Model Merging for Multi-Task Learning (ICLR), Sec. 3.3 (++)",
    params=[
        *ADA_PARAMS,
        Param("topk", float, 20.0, "TIES trim: percent of each task vector's entries kept (official K = 20)",
              lo=0.0, hi=100.0),
    ],
    paper_rows=("AdaMerging++",),
    order=120,
)
class AdaMergingPP(AdaMergingBase):
    kind = "static"

    def vectors(self, pool: Pool) -> list[StateDict]:
        tv = pool.task_vectors()
        return ties_selected_vectors([tv[t] for t in pool.tasks], self.params["topk"])
