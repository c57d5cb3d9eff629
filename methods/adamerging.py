"""``adamerging``: AdaMerging (Yang et al., ICLR 2024), static; task-wise or layer-wise merging coefficients learned
by entropy minimization on unlabeled test inputs (test-time adaptation).

See :mod:`methods._adamerging_core` for the procedure and its defaults, taken from the official code
(EnnengYang/AdaMerging): coefficients initialised at 0.3 and clamped to [0, 1] in the forward, Adam lr 1e-3, 500
steps, two batches of 16 unlabeled test inputs per task per step, "layer" = one parameter tensor. The default
granularity is layer-wise, the paper's main variant (Table III's AdaMerging row).

Differences from the official code:

* Coefficients, not the weights, are what differs between steps: the merged weights are built once per step and
  shared by the tasks' forwards (the official code rebuilds them per task with the same values).
* Only the mergeable tensors get coefficients; heads are per task and never merged.
* ``adapt_split=train`` (not the default) adapts on train exemplars for adapters without test access.

The auto-flexswitch paper's Table II gives a sample size of 64000 for AdaMerging (= 500 steps x 8 tasks x 16, i.e.
one batch of 16 per task per step, as fusion-bench's loop does): ``--set batches_per_step=1`` reproduces it.
fusion-bench's own CLIP config differs from the official code in other ways too (1000 steps, no clamping).
"""
from __future__ import annotations

from benchmark.registry import METHODS
from methods._adamerging_core import ADA_PARAMS, AdaMergingBase


@METHODS.register(
    "adamerging",
    summary="Static: task/layer-wise merging coefficients learned by entropy minimization on unlabeled test inputs.",
    paper="Yang et al. 2024, AdaMerging: Adaptive Model Merging for Multi-Task Learning (ICLR), Sec. 3.2-3.3",
    params=ADA_PARAMS,
    paper_rows=("AdaMerging",),
    order=110,
)
class AdaMerging(AdaMergingBase):
    kind = "static"
