"""Auto-FlexSwitch: FlexSwitch task vectors, merged per input by KNN over K-means centres under a learned
low-rank metric.

Source: ../shared/papers/auto-flexswitch.txt, Sec. III-C5 (Eq. 18-19) and Eq. 5, settings of Sec. IV-A.

* Query features: f_ex of the *pretrained* model on the N unlabeled exemplars per task that FlexSwitch uses.
* K-means with E centres per task (default E = 20) gives the condensed reference sets A_k.
* A low-rank metric ``d_L(a, b) = ||L a - L b||_2`` with ``L in R^{r x e}`` (r = 32; Eq. 18) is trained with Adam
  (lr 0.5, 100 epochs) on Eq. 19: for every exemplar, ``-log(sum_{z in N_x ∩ A_k} d^-1 / sum_{z in N_x} d^-1)``.
* Routing: the C nearest centres under d_L, then Eq. 5, ``w_k(x) = |A_k ∩ N_x| / |N_x|``, and
  ``theta(x) = theta + sum_k w_k(x) tau~_k``.
* Per-query features (detectors, ``[B, Q, e]``): each query is routed, and the image takes the task that most of
  its queries vote for (a one-hot row), so one weight build serves the whole image.

Defaults: FlexSwitch's (:data:`methods.flexswitch.FLEX_KIND_DEFAULTS`: KL, lambda = 0.3 as Tables III/IV; MSE,
lambda = 0.5 on detection backbones, Table VII), with E = 20, r = 32, lr 0.5, 100 epochs, C = 10 (Sec. III-C5 and
IV-A).

Choices the paper leaves open (documented, as no official code was available): L starts from the top-r principal
directions of the centres (so training starts from Euclidean distance in the principal subspace; r is capped at
e); an epoch is one full-batch step over the K*N exemplars; a sample with no same-task neighbour keeps a 1e-12
floor in Eq. 19's numerator, so its gradient still pushes the wrong neighbours away. ``routing`` offers the
ablations: ``learned_metric`` (default), ``centres`` (Euclidean KNN over the centres) and ``plain_knn``
(Auto-Switch's Euclidean KNN over every query feature). A learned-metric run records, beside its own routing
accuracy, that of the same centres without L (``routing_ablations.centres_euclidean``) and of the runner's plain
KNN over N = 100 exemplars per task (``routing_ablations.plain_knn``).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from benchmark.contract import Artifacts, Merged, Method, Pool, RoutedModel, StateDict
from benchmark.registry import METHODS, Param
from benchmark.routing import exemplar_features, knn_route, knn_task_weights  # noqa: F401 (knn_task_weights: public)
# Auto-FlexSwitch is defined on FlexSwitch: its task vectors are FlexSwitch's, learned and stored by its public API
from methods.flexswitch import FLEX_KIND_DEFAULTS, FLEX_PARAMS, heatmap, learn_switches, load_switches

ROUTINGS = ("learned_metric", "centres", "plain_knn")


def kmeans_centres(feats: Tensor, n_centres: int, seed: int) -> Tensor:
    from sklearn.cluster import KMeans

    e = min(n_centres, feats.shape[0])
    km = KMeans(n_clusters=e, n_init=10, random_state=seed).fit(feats.double().numpy())
    return torch.from_numpy(km.cluster_centers_).to(torch.float32)


def pca_init(x: Tensor, rank: int) -> Tensor:
    xc = x - x.mean(0, keepdim=True)
    _, _, vh = torch.linalg.svd(xc, full_matrices=False)
    basis = vh[:rank]
    if basis.shape[0] < rank:  # fewer centres than the rank: pad with orthogonal random directions
        extra = torch.linalg.qr(torch.randn(x.shape[1], rank, generator=torch.Generator().manual_seed(0)))[0].T
        basis = torch.cat([basis, extra[: rank - basis.shape[0]]])
    return basis.clone()


def metric_loss(L: Tensor, feats: Tensor, labels: Tensor, centres: Tensor, centre_labels: Tensor, neighbours: int) -> Tensor:
    """Eq. 19, averaged over the exemplars."""
    d = torch.cdist(feats @ L.T, centres @ L.T).clamp_min(1e-12)
    c = min(neighbours, centres.shape[0])
    nd, idx = d.topk(c, dim=1, largest=False)
    inv = 1.0 / nd
    same = (centre_labels[idx] == labels[:, None]).to(inv.dtype)
    return -torch.log((inv * same).sum(1).clamp_min(1e-12) / inv.sum(1)).mean()


def train_metric(
    feats: Tensor, labels: Tensor, centres: Tensor, centre_labels: Tensor, rank: int, lr: float, epochs: int, neighbours: int
) -> tuple[Tensor, list[float]]:
    L = pca_init(centres, min(rank, feats.shape[1])).requires_grad_(True)
    opt = torch.optim.Adam([L], lr=lr)
    hist = []
    for _ in range(epochs):
        loss = metric_loss(L, feats, labels, centres, centre_labels, neighbours)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        hist.append(loss.item())
    return L.detach(), hist


class AutoFlexSwitchModel(RoutedModel):
    def __init__(
        self,
        pretrained: StateDict,
        vectors: Mapping[str, StateDict],
        tasks: Sequence[str],
        refs: Tensor,
        ref_labels: Tensor,
        L: Tensor | None,
        neighbours: int,
        summary: dict[str, Any],
    ):
        self._pre = pretrained
        self._vec = [vectors[t] for t in tasks]
        self._raw_refs = refs
        self._refs = refs if L is None else refs @ L.T
        self._labels = ref_labels.long()
        self._L = L
        self._k = len(tasks)
        self._c = neighbours
        self._summary = summary

    def route(self, features: Tensor) -> Tensor:
        # torch.cdist's default mode, as the committed records were computed
        return knn_route(features, self._refs, self._labels, self._k, self._c, project=self._L, exact=False)

    def routing_ablations(self) -> dict[str, Any]:
        """With a learned metric: the same stored centres under plain Euclidean distance (no L), so the record shows
        what L itself changes (the runner adds the plain KNN over every exemplar)."""
        if self._L is None:
            return {}
        raw = self._raw_refs
        return {"centres_euclidean": lambda f: knn_route(f, raw, self._labels, self._k, self._c, exact=False)}

    def weights(self, mix: Tensor) -> StateDict:
        out = {}
        for key, base in self._pre.items():
            acc = base.clone()
            for k, wk in enumerate(mix.tolist()):
                if wk:
                    acc += wk * self._vec[k][key]
            out[key] = acc
        return out

    def extra_metrics(self) -> dict[str, Any]:
        return {"flexswitch": self._summary}

    def write_figures(self, directory: Any, stem: str) -> list[Any]:
        return [heatmap(self._summary, directory, stem)]


@METHODS.register(
    "auto_flexswitch",
    summary="Routed: FlexSwitch vectors mixed per input by KNN over K-means centres under a learned low-rank metric.",
    paper="Auto-FlexSwitch (auto-flexswitch.txt), Sec. III-C5, Eq. 5, 18-19",
    params=FLEX_PARAMS
    + [
        Param("centres", int, 20, "K-means centres E per task", lo=1),
        Param("rank", int, 32, "rank r of the metric L (capped at the feature size)", lo=1),
        Param("metric_lr", float, 0.5, "Adam lr of L", lo=0.0),
        Param("metric_epochs", int, 100, "epochs (full-batch steps) of Eq. 19", lo=0),
        Param("neighbours", int, 10, "C, the neighbours of the KNN (Eq. 5)", lo=1),
        Param("routing", str, "learned_metric", "ablation: learned_metric, centres, plain_knn", choices=ROUTINGS),
    ],
    kind_defaults=FLEX_KIND_DEFAULTS,
    paper_rows=("Auto-FlexSwitch+{loss}",),
    order=190,
)
class AutoFlexSwitch(Method):
    whole_models = True  # runs forwards of the fine-tuned models
    kind = "routed"

    def merge(self, pool: Pool) -> Artifacts:
        p = self.params
        arts = Artifacts()
        history = learn_switches(pool, p, arts, pool.progress)
        # per-query detectors: every query is a sample; the same exemplars (salt 0) as the switches learned on
        feats_t, labels_t = exemplar_features(pool, p["n_exemplars"])
        feats = [feats_t[labels_t == ti] for ti in range(len(pool.tasks))]
        if p["routing"] == "plain_knn":
            arts.add("refs", feats_t, codec="tensor")
            arts.add("ref_labels", labels_t.to(torch.uint8), codec="tensor")
            arts.add("history", history, codec="json")
            return arts
        cents = [kmeans_centres(f, p["centres"], pool.seed * 31 + ti) for ti, f in enumerate(feats)]
        centres = torch.cat(cents)
        centre_labels = torch.cat([torch.full((c.shape[0],), ti, dtype=torch.long) for ti, c in enumerate(cents)])
        arts.add("refs", centres, codec="tensor")
        arts.add("ref_labels", centre_labels.to(torch.uint8), codec="tensor")
        if p["routing"] == "learned_metric":
            torch.manual_seed(pool.seed)
            L, hist = train_metric(
                feats_t, labels_t, centres, centre_labels, p["rank"], p["metric_lr"], p["metric_epochs"], p["neighbours"]
            )
            arts.add("metric", L, codec="tensor")
            history["metric_loss"] = {"first": hist[0] if hist else None, "last": hist[-1] if hist else None}
        arts.add("history", history, codec="json")
        return arts

    def load(self, artifacts: Mapping[str, Any], pretrained: StateDict, tasks: Sequence[str]) -> Merged:
        vectors, summary = load_switches(artifacts, tasks)
        summary = dict(summary, training=artifacts["history"])
        return AutoFlexSwitchModel(
            pretrained,
            vectors,
            tasks,
            artifacts["refs"],
            artifacts["ref_labels"],
            artifacts.get("metric"),
            self.params["neighbours"],
            summary,
        )
