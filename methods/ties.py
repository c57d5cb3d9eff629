"""``ties``: TIES-Merging (Yadav et al., NeurIPS 2023, "Resolving Interference When Merging Models"), static.

For task vectors ``tau_t = theta_t - theta`` over the mergeable tensors:

1. **Trim**: keep each task vector's top ``topk`` % entries by magnitude, zero the rest. With
   ``topk_scope="global"`` (default) the top-k is taken over the task's *whole* flattened vector, as the official
   code and fusion-bench (``topk_values_mask`` on the flattened state dict) do; ``"per_tensor"`` takes it within
   every tensor separately. The rule is the reference's exactly: with ``d`` entries, ``kth = d - int(d * topk/100)``
   and an entry survives iff ``|tau| >=`` the ``kth``-smallest ``|tau|`` (1-based). So without ties
   ``int(d * topk/100) + 1`` entries survive (the reference's rule: one more than k %), **ties at the threshold are
   all kept**, ``topk=100`` keeps everything and ``topk=0`` keeps only the entries equal to the largest magnitude.
2. **Elect sign**: ``gamma = sgn(sum_t trimmed_t)`` per entry. Entries whose sum is exactly 0 get the *majority
   sign* ``sgn(sum of gamma over every entry of the whole mergeable vector)``, as the reference's
   ``resolve_zero_signs(..., "majority")`` (whole-vector majority in both scopes).
3. **Disjoint merge** over the non-zero trimmed entries whose sign equals ``gamma``: ``dis-mean`` (their mean: the
   paper's rule), ``dis-sum`` (their sum) or ``dis-max`` (the largest magnitude, with sign ``gamma``).
4. ``theta_m = theta + scaling_coef * tau_m``.

Defaults: ``topk=20``, ``merge_func="dis-sum"``, ``scaling_coef=0.3``, ``topk_scope="global"``: one reference's
setting as a whole, AdaMerging's TIES row (``main_ties_merging.py`` for ViT-B/32: ``K=20, merge_func="dis-sum",
scaling_coef_=0.3``) and fusion-bench's ``ties_merging.yaml`` (``threshold: 20, merge_func: sum,
scaling_factor: 0.3``). The documented alternative is the official TIES setting, the paper's disjoint *mean* with
lambda searched on validation (the paper reports about 0.8-2.5; its notebook uses 1.0): ``--set merge_func=dis-mean
--set scaling_coef=1.0``, or the ``ties`` grid of ``sweeps/tiny_grid.yaml``, selected by val.

Paper vs. code (documented differences):

* **merge function**: the paper defines the disjoint *mean*; fusion-bench and AdaMerging use the disjoint *sum*,
  which is what we default to, because lambda = 0.3 is a dis-sum-sized coefficient. The scales differ: a dis-mean
  vector has about the magnitude of *one* task vector, a dis-sum vector that of their sum, so dis-mean with
  lambda = 0.3 (this suite's default before issue 18, a pair no reference uses) moves the weights much less than
  task arithmetic with 0.3 does, after throwing away 80% of every task vector, and lands below weight averaging.
  The papers' settings: T-Switch supp. Table 5 lists discard rate 0.5 (``topk=50``) and
  lambda 0.3, its Table 6 an optimal discard rate 0.3 for ViT-B/32 and ViT-L/14 (``topk=70``); auto-flexswitch
  Table II lists sparsity 0.8 (``topk=20``) with lambda 0.8 for ViT-B/32, ConvNeXt and ViT-L/14, Table VI
  sparsity 0.1 (``topk=90``) with lambda 0.8 for DETR. Neither paper states its merge function.
* **no elected sign**: where the elected sign stays 0 after the zero resolution (only when the majority sign itself
  is 0, i.e. the elected signs of the whole vector cancel exactly) the paper's set ``A_p`` holds only zero entries,
  so the merged entry is 0; the reference code instead keeps the *negative* entries there (``torch.where(sign > 0,
  v > 0, v < 0)``) for dis-mean / dis-sum. We follow the paper. Real checkpoints practically never get there.
* only the mergeable tensors are flattened (heads are per task and never merged, as everywhere in this suite).

Memory: task vectors are computed one tensor at a time (``TaskVectorView``); the global threshold of a task is
found with ``numpy.partition`` on one reused ``|tau_t|`` buffer of the model's size (introselect, exact: 0.16-0.5 s
for 88M float32 entries on a 2-core machine, against 2-4 s for ``torch.kthvalue`` and 2.6-4 s for ``torch.topk``;
``benchmarks/static_merge_time.py --compare-kth`` measures it); sign election and the disjoint merge accumulate
task by task, so the working set is one model-sized float buffer, one int8 sign per entry and a few tensors,
independent of the number of tasks (peak RSS growth ~1.0 GB at 88M parameters x 8 tasks, 2.9 models' worth, the
merged output included). The zero-sign patch keeps, per entry a majority would change, its index and two candidate
values; entries whose candidates equal the merged value (every task trimmed them, most of the zero sums) are not
kept, since keeping them held 0.6 model copies on 8 ViT-L/14 stand-ins. Each task vector is computed twice: once for the thresholds, once in the fused
elect-and-merge pass (:func:`fused_ties_merge`). At 88M x 8 TIES takes 11.0 s on one thread, 98x the bound of
moving its bytes once (``benchmarks/paper_scale.py``): it is compute bound (the selection and the per-task passes).

Stored: the merged mergeable weights (``state_dict`` codec, natural dtype).
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import Tensor

from benchmark.contract import Artifacts, Merged, Method, Pool, StateDict, StaticModel, as_vector_list
from benchmark.registry import METHODS, Param

TOPK_SCOPES = ("global", "per_tensor")
MERGE_FUNCS = ("dis-mean", "dis-sum", "dis-max")

Thresholds = dict[str, "float | None"]  # key -> threshold on |tau| (None: keep everything)


def _merge_func(name: str) -> str:
    short = name.split("-")[-1]  # fusion-bench accepts "mean" and "dis-mean" alike
    if f"dis-{short}" not in MERGE_FUNCS:
        raise ValueError(f"merge_func must be one of {', '.join(MERGE_FUNCS)}; got {name!r}")
    return short


def _check(topk: float, scope: str) -> None:
    if not 0.0 <= topk <= 100.0:
        raise ValueError(f"topk is a percentage in [0, 100]; got {topk!r}")
    if scope not in TOPK_SCOPES:
        raise ValueError(f"scope must be one of {', '.join(TOPK_SCOPES)}; got {scope!r}")


def _numel(tv: Mapping[str, Tensor], key: str) -> int:
    f = getattr(tv, "numel", None)  # lazy views know sizes without computing the tensor
    return f(key) if callable(f) else tv[key].numel()


def kth_threshold(abs_values: Tensor, topk: float) -> float | None:
    """The reference's trim threshold for one flat vector of magnitudes: the ``(d - int(d * topk/100))``-th smallest
    value (1-based), or ``None`` when everything is kept. ``abs_values`` is reordered in place (it is a scratch
    buffer). A Python float holds the value exactly (it is one of the tensor's entries); floats rather than 0-dim
    tensors also keep a thousand long-lived tiny allocations from fragmenting the heap between the big temporaries
    (with 0-dim tensors the per-tensor scope grew RSS by ~4.5 GB at 88M parameters)."""
    d = abs_values.numel()
    kth = d - int(d * (topk / 100))
    if kth <= 0:
        return None
    buf = abs_values.detach()
    if buf.dtype not in (torch.float32, torch.float64) or buf.device.type != "cpu":
        buf = buf.to("cpu", torch.float32)
    arr = buf.numpy()  # shares memory with buf
    arr.partition(kth - 1)  # introselect, O(d), in place
    return float(arr[kth - 1])


def trim(t: Tensor, threshold: float | None) -> Tensor:
    """Zero the entries below the threshold (``t * (|t| >= thr)``, the reference's masking)."""
    return t if threshold is None else t * (t.abs() >= threshold)


def trim_thresholds(vectors: Sequence[Mapping[str, Tensor]], keys: Sequence[str], topk: float,
                    scope: str = "global") -> list[Thresholds]:
    """Per task, the trim threshold of every key: one value for all keys (global) or one per tensor."""
    _check(topk, scope)
    out: list[Thresholds] = []
    if scope == "per_tensor":
        for tv in vectors:
            out.append({k: kth_threshold(tv[k].reshape(-1).abs(), topk) for k in keys})
        return out
    if not keys:
        return [{} for _ in vectors]
    sizes = [_numel(vectors[0], k) for k in keys]
    buf: Tensor | None = None
    for tv in vectors:
        offset = 0
        for k, n in zip(keys, sizes):
            t = tv[k]
            if buf is None:
                buf = torch.empty(sum(sizes), dtype=t.dtype)
            torch.abs(t.reshape(-1), out=buf[offset:offset + n])
            offset += n
        thr = kth_threshold(buf, topk)
        out.append({k: thr for k in keys})
    return out


def elect_signs(vectors: Sequence[Mapping[str, Tensor]], keys: Sequence[str], thresholds: Sequence[Thresholds]
                ) -> dict[str, Tensor]:
    """``sgn(sum_t trimmed_t)`` per entry (int8), zeros resolved to the whole-vector majority sign."""
    signs: dict[str, Tensor] = {}
    total = 0
    for k in keys:
        acc: Tensor | None = None
        for tv, thr in zip(vectors, thresholds):
            t = trim(tv[k], thr[k])
            acc = t.clone() if acc is None else acc.add_(t)
        sg = torch.sign(acc).to(torch.int8)
        signs[k] = sg
        total += int(sg.sum(dtype=torch.int64))
    majority = (total > 0) - (total < 0)
    if majority:
        for sg in signs.values():
            sg[sg == 0] = majority
    return signs


def disjoint_merge(trimmed: Iterable[Tensor], sign: Tensor, merge_func: str = "dis-mean") -> Tensor:
    """Aggregate, entry by entry, the non-zero trimmed values whose sign equals ``sign`` (accumulated one task at a
    time). Entries with no agreeing value (or a 0 sign) are 0."""
    how = _merge_func(merge_func)
    acc: Tensor | None = None
    cnt: Tensor | None = None
    sgn = None
    for t in trimmed:
        if sgn is None:
            sgn = sign.to(t.dtype)
        agree = t * sgn > 0  # non-zero and of the elected sign (a 0 sign agrees with nothing)
        if how == "max":
            mag = t.abs() * agree
            acc = mag if acc is None else torch.maximum(acc, mag)
            continue
        sel = t * agree
        acc = sel if acc is None else acc.add_(sel)
        if how == "mean":
            cnt = agree.to(t.dtype) if cnt is None else cnt.add_(agree)
    if acc is None:
        raise ValueError("disjoint_merge needs at least one task vector")
    if how == "mean":
        return acc / cnt.clamp(min=1)
    if how == "max":
        return acc * sgn
    return acc


def ties_merged_vector(
    task_vectors: Sequence[Mapping[str, Tensor]] | Mapping[str, Mapping[str, Tensor]],
    topk: float = 20.0,
    merge_func: str = "dis-mean",
    scope: str = "global",
    keys: Sequence[str] | None = None,
) -> StateDict:
    """``tau_m``: trim, elect, disjoint merge. Keys: ``keys`` or those of the first task vector."""
    vectors = as_vector_list(task_vectors)
    _merge_func(merge_func)
    if not vectors:
        raise ValueError("ties needs at least one task vector")
    keys = list(vectors[0]) if keys is None else list(keys)
    thresholds = trim_thresholds(vectors, keys, topk, scope)
    signs = elect_signs(vectors, keys, thresholds)
    return {k: disjoint_merge((trim(tv[k], thr[k]) for tv, thr in zip(vectors, thresholds)), signs[k], merge_func)
            for k in keys}


def ties_merge(
    pretrained: Mapping[str, Tensor],
    task_vectors: Sequence[Mapping[str, Tensor]] | Mapping[str, Mapping[str, Tensor]],
    topk: float = 20.0,
    merge_func: str = "dis-mean",
    scaling_coef: float = 0.3,
    scope: str = "global",
) -> StateDict:
    """``theta + scaling_coef * tau_m`` over the keys of ``pretrained``; a copy of it when there are no tasks."""
    vectors = as_vector_list(task_vectors)
    if not vectors:
        return {k: v.clone() for k, v in pretrained.items()}
    return fused_ties_merge(pretrained, vectors, topk, merge_func, scaling_coef, scope)


def fused_ties_merge(
    pretrained: Mapping[str, Tensor],
    vectors: Sequence[Mapping[str, Tensor]],
    topk: float = 20.0,
    merge_func: str = "dis-mean",
    scaling_coef: float = 0.3,
    scope: str = "global",
) -> StateDict:
    """``theta + scaling_coef * tau_m`` (TIES steps 2-4) with sign election and disjoint merge fused into **one**
    pass per tensor, ``torch.equal`` to ``pretrained + scaling_coef * ties_merged_vector(...)``.

    Why: the three-pass form reads (and, for lazy task vectors, recomputes ``theta_t - theta``) every task vector
    three times. Here each trimmed ``tau_t[k]`` is computed once, kept for the one tensor ``k`` (n_tasks tensors
    of one parameter's size), summed for ``gamma = sgn(sum_t trimmed_t)`` and merged right away. The one step
    that needs the whole vector is the zero-sign resolution (entries with ``sum_t trimmed_t = 0`` take the
    whole-vector majority sign, known only after the last tensor): for those few entries (exact cancellations and
    all-trimmed entries) we keep both candidate merged values (majority +1 and -1), gathered by index, and patch
    the chosen one in at the end. Every operation is elementwise, in the same order as the unfused form, so the
    result is bit-identical."""
    _merge_func(merge_func)  # a bad name fails before the first pass
    keys = list(pretrained)
    thresholds = trim_thresholds(vectors, keys, topk, scope)  # pass 1: one read of every task vector
    merged: StateDict = {}
    pending: list[tuple[str, Tensor, Tensor, Tensor]] = []  # key, flat zero-sign indices, candidates for +1 / -1
    total = 0
    for k in keys:
        trimmed = [trim(tv[k], thr[k]) for tv, thr in zip(vectors, thresholds)]
        acc = trimmed[0].clone()
        for t in trimmed[1:]:
            acc.add_(t)
        sg = torch.sign(acc).to(torch.int8)
        del acc
        total += int(sg.sum(dtype=torch.int64))
        tau = disjoint_merge(trimmed, sg, merge_func)
        base = pretrained[k]
        merged[k] = base + scaling_coef * tau
        del tau
        idx = (sg.reshape(-1) == 0).nonzero().reshape(-1)
        if idx.numel():
            flat = [t.reshape(-1)[idx] for t in trimmed]
            cands = []
            for s in (1, -1):
                ones = torch.full((idx.numel(),), s, dtype=torch.int8)
                cands.append(base.reshape(-1)[idx] + scaling_coef * disjoint_merge(flat, ones, merge_func))
            del flat
            # only the entries that either majority would change are kept, compared bit for bit: most zero sums
            # are entries every task trimmed (0.8^8 = 17% of them at topk=20 with independent tasks), whose
            # candidates equal the merged value, and keeping those held 16 bytes per entry, 0.6 model copies
            now = _bits(merged[k].reshape(-1)[idx])
            keep = (_bits(cands[0]) != now) | (_bits(cands[1]) != now)
            if bool(keep.any()):
                pending.append((k, idx[keep], cands[0][keep], cands[1][keep]))
            del now, keep, cands
        del trimmed, sg
    majority = (total > 0) - (total < 0)
    if majority:  # with majority 0 the zero-sign entries agree with nothing: tau_m = 0 there, as merged already has
        for k, idx, pos, neg in pending:
            merged[k].view(-1)[idx] = pos if majority > 0 else neg
    return merged


_INT_OF_SIZE = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _bits(t: Tensor) -> Tensor:
    """``t``'s bit patterns (a view as the integer type of its width): equal iff the values are bit-identical."""
    return t.view(_INT_OF_SIZE[t.element_size()])


def ties_select(
    task_vectors: Sequence[Mapping[str, Tensor]] | Mapping[str, Mapping[str, Tensor]],
    topk: float = 20.0,
    scope: str = "global",
) -> list[StateDict]:
    """Per task, the trimmed vector restricted to the entries that agree with the elected sign (the reference's
    ``ties_merging_split`` ``selected_entries``), before the disjoint merge. Used by AdaMerging++."""
    vectors = as_vector_list(task_vectors)
    if not vectors:
        return []
    keys = list(vectors[0])
    thresholds = trim_thresholds(vectors, keys, topk, scope)
    signs = elect_signs(vectors, keys, thresholds)
    out: list[StateDict] = []
    for tv, thr in zip(vectors, thresholds):
        sd: StateDict = {}
        for k in keys:
            t = trim(tv[k], thr[k])
            sd[k] = t * (t * signs[k].to(t.dtype) > 0)
        out.append(sd)
    return out


TIES_PARAMS = (
    Param("scaling_coef", float, 0.3, "lambda, the scale of the merged task vector", lo=0.0),
    Param("topk", float, 20.0, "trim: percent of each task vector's entries kept, by magnitude (paper k = 20)",
          lo=0.0, hi=100.0),
    Param("topk_scope", str, "global", "top-k over the whole flattened task vector (official code) or per tensor",
          choices=TOPK_SCOPES),
    Param("merge_func", str, "dis-sum", "disjoint merge: sum (AdaMerging / fusion-bench, with lambda 0.3), mean "
          "(paper, with lambda searched on val) or max",
          choices=MERGE_FUNCS),
)


@METHODS.register(
    "ties",
    summary="Static: trim each task vector to its top-k%, elect signs, merge the agreeing entries (disjoint sum).",
    paper="Yadav et al. 2023, TIES-Merging: Resolving Interference When Merging Models (NeurIPS)",
    params=TIES_PARAMS,
    paper_rows=("Ties-Merging",),
    order=70,
)
class Ties(Method):
    kind = "static"

    def merge(self, pool: Pool) -> Artifacts:
        p = self.params
        merged = ties_merge(pool.pretrained, pool.lazy_task_vectors(), p["topk"], p["merge_func"], p["scaling_coef"],
                            p["topk_scope"])
        arts = Artifacts()
        arts.add("merged", merged, codec="state_dict")
        return arts

    def load(self, artifacts: Mapping[str, Any], pretrained: StateDict, tasks: Sequence[str]) -> Merged:
        return StaticModel(dict(artifacts["merged"]))
