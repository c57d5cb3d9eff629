"""Routing by KNN over stored exemplar features, shared by every routed method (no registration here).

* :func:`exemplar_features`: f_ex on each task's exemplars (drawn by :meth:`Pool.exemplars`), with their task
  labels: Auto-Switch's query set, Auto-FlexSwitch's references before K-means, Twin-Merging's router data.
* :func:`knn_task_weights`: Eq. 5 of auto-flexswitch.txt (Eq. 8 of t-switch.txt),
  ``w_k(x) = |Q_k ∩ N_x| / |N_x|`` with ``N_x`` the C nearest references.
* :func:`knn_route`: Eq. 5 for a batch of features ``[B, e]``, or per query ``[B, Q, e]`` with the image taking
  the task most of its queries vote for (one-hot), as the paper does for DETR (Sec. IV-A2, "majority voting"),
  or, from 1/Q of the storage, the task most of its mean query's C neighbours vote for (``queries="mean"``).
* :class:`RoutedInference`: the runner's per-batch routed step (routing features, groups of equal rows, a cached
  weight set per one-hot row and one reused buffer for the mixed rows).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from benchmark.contract import ModelOps, Pool, RoutedModel, StateDict
from benchmark.errors import UserError

__all__ = ["exemplar_features", "flatten_queries", "mean_queries", "knn_task_weights", "knn_route",
           "routing_features", "one_hot_index", "RoutedInference", "ONE_HOT_CACHE", "plain_knn_router",
           "PLAIN_KNN_NEIGHBOURS", "PLAIN_KNN_EXEMPLARS"]


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
    depth: int | None = None,
) -> tuple[Tensor, Tensor]:
    """f_ex under ``weights`` (None = pretrained) on ``n`` train exemplars per task (``pool.exemplars(task, n,
    salt=salt)``), without gradients: features ``[M, e]`` (float32, on the CPU) and task indices ``[M]`` (long).

    ``batch_size=None`` computes each task's features in one forward; ``reduce`` maps ``[B, ..., e]`` features
    to rows (:func:`flatten_queries` or :func:`mean_queries`). ``depth`` d > 0 takes the features after the
    first d blocks instead (:func:`routing_features`)."""
    if pool.ops is None:
        raise ValueError("exemplar features need data access (pool.ops)")
    feats, labels = [], []
    with torch.no_grad():
        for ti, task in enumerate(pool.tasks):
            x = pool.exemplars(task, n, salt=salt)
            parts = [x] if batch_size is None else pool.batches(x, batch_size)
            for part in parts:
                f = reduce(routing_features(pool.ops, weights, part, depth)).to(torch.float32).cpu()
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
    queries: str = "all",
) -> Tensor:
    """Mixing weights ``[B, K]`` (Eq. 5) for ``features`` ``[B, e]`` or ``[B, Q, e]`` (one-hot per image).

    Per-query features, ``queries``: ``"all"`` routes every query and the image takes the task most of its queries
    vote for (the paper's DETR protocol; ``refs`` then hold every exemplar query, :func:`flatten_queries`);
    ``"mean"`` routes the image's mean query (``refs`` from :func:`mean_queries`) and the image takes the task most
    of its C neighbours vote for -- one row per image as well, from 1/Q of the reference storage.

    ``project`` (``[r, e]``) maps the features first (Auto-FlexSwitch's learned metric ``L``; ``refs`` must then
    be projected already). ``exact=True`` computes Euclidean distances without the matrix-product shortcut, so a
    sample's neighbours never depend on its batch (Auto-Switch); ``False`` is ``torch.cdist``'s default mode
    (Auto-FlexSwitch's)."""
    if queries not in ("all", "mean"):
        raise ValueError(f"knn_route: queries must be 'all' or 'mean', not {queries!r}")
    if features.dim() == 3 and queries == "mean":
        w = knn_route(mean_queries(features), refs, labels, n_tasks, neighbours, project, exact)
        return F.one_hot(w.argmax(1), n_tasks).to(torch.float32)
    f = features.reshape(-1, features.shape[-1]).to(torch.float32)
    if project is not None:
        f = f @ project.T
    kw: dict[str, Any] = {"compute_mode": "donot_use_mm_for_euclid_dist"} if exact else {}
    w = knn_task_weights(torch.cdist(f, refs, **kw), labels, n_tasks, neighbours)
    if features.dim() != 3:
        return w
    votes = F.one_hot(w.argmax(1), n_tasks).reshape(features.shape[0], features.shape[1], n_tasks).sum(1)
    return F.one_hot(votes.argmax(1), n_tasks).to(torch.float32)


#: the harness's plain-KNN routing baseline (Auto-Switch's router at its defaults): C neighbours, N per task
PLAIN_KNN_NEIGHBOURS = 10
PLAIN_KNN_EXEMPLARS = 100


def plain_knn_router(pool: Pool, model: RoutedModel, n: int = PLAIN_KNN_EXEMPLARS,
                     neighbours: int = PLAIN_KNN_NEIGHBOURS) -> Callable[[Tensor], Tensor]:
    """Euclidean KNN (Eq. 5) over ``n`` train exemplars per task (salt 0, the draw the routed methods store), with
    features computed as ``model`` computes its own (under ``routing_weights()``, at ``routing_depth``); per-query
    features vote per image (the paper's DETR protocol). The runner records its routing accuracy beside every
    routed method's, so a method's router is always seen against the plain one on the same inputs."""
    refs, labels = exemplar_features(pool, n, weights=model.routing_weights(), depth=model.routing_depth)
    k = len(pool.tasks)
    return lambda feats: knn_route(feats, refs, labels, k, neighbours)


# ----------------------------------------------------------------------------------------------------------------
# The routed inference step

#: one-hot weight sets kept per run: the task being evaluated and one other; each is one model copy
ONE_HOT_CACHE = 2


def routing_features(ops: ModelOps, weights: StateDict | None, inputs: Any, depth: int | None = None) -> Tensor:
    """f_ex (``ops.features``), or with ``depth`` d > 0 the features after the first d blocks
    (``ops.early_features(weights, inputs, d)``, optional in :class:`~benchmark.contract.ModelOps`). A backbone
    without it is the user's choice of ``route_depth``: a one-line :class:`UserError`."""
    if not depth:
        return ops.features(weights, inputs)
    early = getattr(ops, "early_features", None)
    if early is None:
        raise UserError(f"route_depth {depth}: this backbone's ModelOps has no early_features")
    return early(weights, inputs, depth)


def one_hot_index(row: Tensor) -> int | None:
    """``k`` when ``row`` is exactly the k-th one-hot row (one entry 1, the rest 0), else None."""
    nz = row.nonzero().flatten()
    if nz.numel() == 1 and float(row[nz[0]]) == 1.0:
        return int(nz[0])
    return None


class RoutedInference:
    """One routed model's inference, batch by batch: what the runner calls and ``benchmarks/routed_inference.py``
    times.

    * :meth:`route`: f_ex under ``model.routing_weights()`` (at ``model.routing_depth``) and ``model.route``.
    * :meth:`groups`: the samples whose rows are equal, one group per distinct row (``torch.unique`` order), so
      each distinct row is built once per batch.
    * :meth:`weights`: a one-hot row reuses its task's weight set, kept across batches in an LRU of
      ``cache_size`` sets (a row that is one-hot for task k always gives the same weights); every other row is
      built by ``model.build`` into one buffer that the next mixed row overwrites, so at most ``cache_size + 1``
      weight sets are resident whatever the number of rows. A caller must be done with a mixed row's weights
      before asking for the next.

    ``builds`` counts the weight sets built, ``cache_hits`` the one-hot rows served from the cache."""

    def __init__(self, model: RoutedModel, ops: ModelOps, cache_size: int = ONE_HOT_CACHE):
        self.model = model
        self.ops = ops
        self.cache_size = cache_size
        self.cache: OrderedDict[int, StateDict] = OrderedDict()
        self.buffer: StateDict | None = None
        self.builds = 0
        self.cache_hits = 0
        self.last_features: Tensor | None = None

    def route(self, inputs: Any) -> Tensor:
        """Mixing weights ``[B, K]`` for a batch of inputs (its routing features stay in ``last_features``, for the
        runner's routing diagnostics)."""
        feats = routing_features(self.ops, self.model.routing_weights(), inputs, self.model.routing_depth)
        self.last_features = feats
        return self.model.route(feats)

    @staticmethod
    def groups(mix: Tensor) -> list[tuple[Tensor, Tensor]]:
        """``(row, sample indices)`` for every distinct row of ``mix``."""
        uniq, inverse = torch.unique(mix, dim=0, return_inverse=True)
        return [(uniq[g], (inverse == g).nonzero().flatten()) for g in range(uniq.shape[0])]

    def run(self, inputs: Any, predict: Callable[[StateDict, Any], Any]) -> tuple[Tensor, list[tuple[Tensor, Any]]]:
        """One batch: its mixing weights ``[B, K]`` and, per group of equal rows, ``(sample indices,
        predict(weights, sub-batch))``; each group's outputs are computed before the next group's weights."""
        mix = self.route(inputs)
        return mix, [(idx, predict(self.weights(row), self.ops.slice(inputs, idx))) for row, idx in self.groups(mix)]

    def weights(self, row: Tensor) -> StateDict:
        """The weights of one row (see the class docstring for which are cached and which are reused)."""
        k = one_hot_index(row)
        if k is None:
            self.buffer = self.model.build(row, self.buffer)
            self.builds += 1
            return self.buffer
        if k in self.cache:
            self.cache.move_to_end(k)
            self.cache_hits += 1
            return self.cache[k]
        w = self.model.build(row)
        self.builds += 1
        if self.cache_size > 0:
            self.cache[k] = w
            if len(self.cache) > self.cache_size:
                self.cache.popitem(last=False)
        return w
