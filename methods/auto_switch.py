"""Auto-Switch: T-Switch's binary task switches, mixed per input by a KNN over unlabeled exemplar features.

Source: ../shared/papers/auto-flexswitch.txt, Sec. III-B3b (Eq. 5), settings of Sec. IV (Table II: ViT-B/32
alpha = 0.7, 100 exemplars per task) and Sec. IV-B (Fig. 10: N in {100, 300, 500}, C in {5, 10, 20}); the
conference version ../shared/papers/t-switch.txt, Sec. 3.4 (Eq. 8) and supplementary Sec. 8.2 (N and C ablation).
The switch maths (Eq. 2-4) and its open points are in :mod:`methods._switch`.

Defaults: auto-flexswitch.txt Table II's ViT-B/32 setting as a whole (alpha = 0.7, 800 samples = N = 100 per task)
with C = 10, the middle of Fig. 10's {5, 10, 20}.

* Query sets: ``Q_k = {f_ex(x; theta) : x in E_k}``, f_ex of the *pretrained* model on ``n_exemplars`` unlabeled
  train-split exemplars per task (``pool.exemplars``, salt 0, the same draw as Auto-FlexSwitch's, so both see the
  same exemplars; :func:`benchmark.routing.exemplar_features`).
* Routing (Eq. 5): the ``neighbours`` (C) nearest members of ``Q = ∪_k Q_k`` to ``f_ex(x; theta)`` under the
  Euclidean distance, ``w_k(x) = |Q_k ∩ N_x| / |N_x|`` and ``theta(x) = theta + sum_k w_k(x) beta_k A_k ⊙ P_k``.
  Per sample: the runner groups samples whose weight rows are equal and builds one model per group.
* Per-query features (detectors, ``[B, Q, e]``): the paper merges one task per image, "aggregat[ing] the KNN
  prediction probabilities for each sample via majority voting" (Sec. IV-A2). ``query_summary="all"`` does that
  over every query: each exemplar query is a member of Q, each test query is routed and the image takes the task
  most of its queries vote for. Its storage rules it out at paper scale: 7 domains x N exemplars x 100 queries x
  256 floats is 71.7 MB at N = 100 (358 MB at N = 500), more than the paper's whole Auto-Switch row (65.48 MB,
  Table VII). ``"mean"`` (the default) summarizes each image by the mean of its query outputs, in the query set
  and at test time alike (1/Q of the storage: 0.72 MB at N = 100), and the image takes the task most of its mean
  query's C neighbours vote for (still one task per image). On the tiny detr_r50 suite (seed 0): routing accuracy
  54.00% -> 52.64%, mAP@50 7.22 -> 7.08, queries 2.87 MB -> 0.18 MB; Eq. 5's shares of the mean query instead
  of its vote gave 6.15. Features without a query axis (``[B, e]``) are routed by Eq. 5 under both settings.
* Routing depth, ``route_depth`` (beyond the paper): 0 routes on f_ex of the full pretrained model, as the papers
  do; d > 0 on the pretrained model's features after its first d blocks (``ModelOps.early_features``), in the
  query set and at test time alike, so the routing forward costs about d / depth of a forward. Its effect on
  routing accuracy and scores: ``benchmarks/routed_inference.py`` and the README.

Stored: the switches and knobs exactly as ``t_switch`` (``switch/<task>``, ``knobs/<task>``), the query features
``queries`` (``[K N, e]``, codec ``tensor`` in ``query_dtype``; default ``float32``, which is what the paper's
storage counts: 800 x 512 x 4 B = 1.6 MB, the Auto-Switch minus T-Switch gap of t-switch.txt Table 2; ``float16``
halves it) and their task labels ``query_labels`` (uint8, codec ``tensor``).

Where the official code (github.com/lfy-123/Binary-Task-Switch, ``merge_vit/merge_vit.py``) differs from the paper:

* **Distance.** sklearn's ``KNeighborsClassifier(n_neighbors=C)`` with its defaults: Euclidean (Minkowski p = 2) on
  the raw image-encoder outputs, uniform weights; ``predict_proba`` is exactly Eq. 5. The journal also names the
  Euclidean distance of raw features (Sec. III-C5). Here: exact Euclidean distances (``torch.cdist`` without the
  matrix-product shortcut, so a sample's neighbours do not depend on its batch); ties in distance are broken by
  ``torch.topk``.
* **Batch averaging.** The official code averages the KNN weights over each evaluation batch (256 test images of
  one task) and merges once per batch. That uses the fact that a batch holds a single task, which a per-input
  router should not know; the paper's Eq. 5 is per input. ``batch_average=True`` reproduces the official code
  (``route`` returns the batch mean in every row); the default ``False`` follows Eq. 5.
* **Query model.** The conference paper (t-switch.txt Sec. 3.4) extracts query features with the model merged
  from averaged task vectors; the journal and the official code use the pretrained model, as here.
* **Exemplars.** The official code takes the first batch of a shuffled train loader *with* the training
  augmentation; here ``ops.exemplars`` (train split, seeded, no augmentation).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from benchmark.contract import Artifacts, Merged, Method, Pool, RoutedModel, StateDict
from benchmark.registry import METHODS, Param
from benchmark.routing import exemplar_features, flatten_queries, knn_route, mean_queries
from methods._switch import SWITCH_PARAMS, SwitchBank, add_switches

QUERY_DTYPES = ("float32", "float16")
QUERY_SUMMARIES = ("mean", "all")


def query_set(pool: Pool, n: int, summary: str = "mean", depth: int | None = None) -> tuple[Tensor, Tensor]:
    """f_ex of the pretrained model (after its first ``depth`` blocks when set) on ``n`` exemplars per task:
    features ``[M, e]`` (float32) and their task indices ``[M]``. Per-query features are averaged per image
    (``summary="mean"``) or flattened, every query a member (``"all"``)."""
    reduce = mean_queries if summary == "mean" else flatten_queries
    return exemplar_features(pool, n, reduce=reduce, depth=depth)


def knn_weights(features: Tensor, queries: Tensor, labels: Tensor, n_tasks: int, neighbours: int,
                summary: str = "all") -> Tensor:
    """Eq. 5 for every sample: ``[B, K]``. ``features`` is ``[B, e]``, or ``[B, Q, e]`` (a one-hot majority vote
    per image, of its queries for ``summary="all"``, of its mean query's neighbours for ``"mean"``); exact
    Euclidean distances (:func:`benchmark.routing.knn_route`)."""
    return knn_route(features, queries, labels, n_tasks, neighbours, exact=True, queries=summary)


class AutoSwitchModel(RoutedModel):
    def __init__(self, bank: SwitchBank, queries: Tensor, labels: Tensor, neighbours: int, batch_average: bool,
                 summary: str = "mean", depth: int | None = None):
        self.bank = bank
        self.queries = queries.to(torch.float32)
        self.labels = labels.long()
        self.neighbours = neighbours
        self.batch_average = batch_average
        self.summary = summary
        self.routing_depth = depth or None

    def route(self, features: Tensor) -> Tensor:
        w = knn_weights(features, self.queries, self.labels, len(self.bank.tasks), self.neighbours, self.summary)
        if self.batch_average:
            w = w.mean(0, keepdim=True).repeat(w.shape[0], 1)
        return w

    def weights(self, mix: Tensor) -> StateDict:
        return self.bank.weights(mix.tolist())

    def build(self, mix: Tensor, out: StateDict | None = None) -> StateDict:
        return self.bank.weights(mix.tolist(), out)

    def extra_metrics(self) -> dict[str, Any]:
        return {
            "switch": self.bank.summary(),
            "query_set": {"size": int(self.queries.shape[0]), "dim": int(self.queries.shape[1])},
        }


@METHODS.register(
    "auto_switch",
    summary="Routed: T-Switch switches mixed per input by the task shares of its C nearest exemplar features (Eq. 5).",
    paper="Auto-Switch (auto-flexswitch.txt Sec. III-B, Eq. 2-5; t-switch.txt Sec. 3.4, Eq. 8)",
    params=SWITCH_PARAMS
    + [
        Param("n_exemplars", int, 100, "N, unlabeled train exemplars per task in the query set", lo=1),
        Param("neighbours", int, 10, "C, neighbours of the KNN (Eq. 5)", lo=1),
        Param("batch_average", bool, False, "official-code variant: one batch-mean weight row per evaluation batch"),
        Param("query_dtype", str, "float32", "storage dtype of the query features", choices=QUERY_DTYPES),
        Param("query_summary", str, "mean", "per-query features (DETR): 'mean' per image, or 'all' queries with a "
              "majority vote (the paper's protocol; 100x the storage)", choices=QUERY_SUMMARIES),
        Param("route_depth", int, 0, "route on the features after this many blocks of the pretrained model; "
              "0 = the full model (the paper)", lo=0),
    ],
    paper_rows=("Auto-Switch", "Auto-Switch (CVPR)"),
    order=170,
)
class AutoSwitch(Method):
    kind = "routed"

    def merge(self, pool: Pool) -> Artifacts:
        if pool.ops is None:
            raise ValueError("auto_switch needs data access (pool.ops) for its exemplar query set")
        if len(pool.tasks) > 256:
            raise ValueError("auto_switch stores task labels as uint8: at most 256 tasks")
        p = self.params
        # the query set first: a route_depth the backbone cannot serve fails before the switches are computed
        feats, labels = query_set(pool, p["n_exemplars"], p["query_summary"], p["route_depth"])
        arts = Artifacts()
        add_switches(arts, pool, self.params)
        dtype = self.params["query_dtype"]
        arts.add("queries", feats, codec="tensor", dtype="natural" if dtype == "float32" else dtype)
        arts.add("query_labels", labels.to(torch.uint8), codec="tensor")
        return arts

    def load(self, artifacts: Mapping[str, Any], pretrained: StateDict, tasks: Sequence[str]) -> Merged:
        p = self.params
        bank = SwitchBank(artifacts, pretrained, tasks)
        return AutoSwitchModel(bank, artifacts["queries"], artifacts["query_labels"], p["neighbours"],
                               p["batch_average"], p["query_summary"], p["route_depth"])
