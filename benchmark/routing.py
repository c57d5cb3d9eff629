"""Routing by KNN over stored exemplar features, shared by every routed method (no registration here).

* :func:`exemplar_features`: f_ex on each task's exemplars (drawn by :meth:`Pool.exemplars`), with their task
  labels: Auto-Switch's query set, Auto-FlexSwitch's references before K-means, Twin-Merging's router data.
* :func:`knn_task_weights`: Eq. 5 of auto-flexswitch.txt (Eq. 8 of t-switch.txt),
  ``w_k(x) = |Q_k ∩ N_x| / |N_x|`` with ``N_x`` the C nearest references.
* :func:`knn_route`: Eq. 5 for a batch of features ``[B, e]``, or per query ``[B, Q, e]`` with the image taking
  the task most of its queries vote for (one-hot), as the paper does for DETR (Sec. IV-A2, "majority voting").
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from benchmark.contract import Pool, StateDict

__all__ = ["exemplar_features", "flatten_queries", "mean_queries", "knn_task_weights", "knn_route"]


def flatten_queries(features: Tensor) -> Tensor:
    """``[B, e]`` as is; per-query ``[B, Q, e]`` flattened so that every query is a member ``[B Q, e]``."""
    return features.reshape(-1, features.shape[-1])


def mean_queries(features: Tensor) -> Tensor:
    """``[B, e]`` as is; per-query ``[B, Q, e]`` averaged over the queries."""
    return features.mean(dim=tuple(range(1, features.dim() - 1))) if features.dim() > 2 else features


def exemplar_features(
    pool: Pool,
    n: int,
    weights: StateDict | None = None,
    salt: int = 0,
    batch_size: int | None = None,
    reduce: Callable[[Tensor], Tensor] = flatten_queries,
) -> tuple[Tensor, Tensor]:
    """f_ex under ``weights`` (None = pretrained) on ``n`` train exemplars per task (``pool.exemplars(task, n,
    salt=salt)``), without gradients: features ``[M, e]`` (float32, on the CPU) and task indices ``[M]`` (long).

    ``batch_size=None`` computes each task's features in one forward; ``reduce`` maps ``[B, ..., e]`` features
    to rows (:func:`flatten_queries` or :func:`mean_queries`)."""
    if pool.ops is None:
        raise ValueError("exemplar features need data access (pool.ops)")
    feats, labels = [], []
    with torch.no_grad():
        for ti, task in enumerate(pool.tasks):
            x = pool.exemplars(task, n, salt=salt)
            parts = [x] if batch_size is None else pool.batches(x, batch_size)
            for part in parts:
                f = reduce(pool.ops.features(weights, part)).to(torch.float32).cpu()
                feats.append(f)
                labels.append(torch.full((f.shape[0],), ti, dtype=torch.long))
    return torch.cat(feats), torch.cat(labels)


def knn_task_weights(dist: Tensor, labels: Tensor, n_tasks: int, neighbours: int) -> Tensor:
    """Eq. 5: ``w_k(x) = |Q_k ∩ N_x| / |N_x|`` with ``N_x`` the ``neighbours`` nearest references (at most all of
    them). ``dist`` is ``[B, M]``, ``labels`` the references' task indices ``[M]``; ties in distance are broken by
    ``torch.topk``."""
    c = min(neighbours, dist.shape[1])
    idx = dist.topk(c, dim=1, largest=False).indices
    votes = F.one_hot(labels[idx], n_tasks).sum(1)
    return votes.to(torch.float32) / c


def knn_route(
    features: Tensor,
    refs: Tensor,
    labels: Tensor,
    n_tasks: int,
    neighbours: int,
    project: Tensor | None = None,
    exact: bool = True,
) -> Tensor:
    """Mixing weights ``[B, K]`` (Eq. 5) for ``features`` ``[B, e]`` or ``[B, Q, e]`` (majority vote per image).

    ``project`` (``[r, e]``) maps the features first (Auto-FlexSwitch's learned metric ``L``; ``refs`` must then
    be projected already). ``exact=True`` computes Euclidean distances without the matrix-product shortcut, so a
    sample's neighbours never depend on its batch (Auto-Switch); ``False`` is ``torch.cdist``'s default mode
    (Auto-FlexSwitch's)."""
    f = features.reshape(-1, features.shape[-1]).to(torch.float32)
    if project is not None:
        f = f @ project.T
    kw: dict[str, Any] = {"compute_mode": "donot_use_mm_for_euclid_dist"} if exact else {}
    w = knn_task_weights(torch.cdist(f, refs, **kw), labels, n_tasks, neighbours)
    if features.dim() != 3:
        return w
    votes = F.one_hot(w.argmax(1), n_tasks).reshape(features.shape[0], features.shape[1], n_tasks).sum(1)
    return F.one_hot(votes.argmax(1), n_tasks).to(torch.float32)
