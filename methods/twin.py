"""``twin``: Twin-Merging (Lu et al., NeurIPS 2024, "Twin-Merging: Dynamic Integration of Modular Expertise in Model
Merging"), routed.

1. **Shared expert**: task arithmetic over the mergeable tensors, ``theta* = theta + lambda sum_t tau_t`` with
   ``lambda = 0.29`` (the official ``config/twin_merge.yml`` / ``run_task_arith`` value).
2. **Exclusive knowledge** per task: ``theta_t - theta*``, compressed per tensor by a truncated SVD keeping
   ``rank = int(density * min(m, n))`` singular values (official ``mask_strategy=svd``, ``mask_rate=0.9``, i.e.
   density 0.1; ``rank`` overrides it with a fixed rank). Tensors with more than two dimensions are reshaped to
   ``[shape[0], -1]``; 1-D tensors are kept dense, as the official ``sparsify.svd`` returns them unchanged.
3. **Router**: the official ``SimpleMLP`` on f_ex features of the shared expert (``routing_weights()`` returns
   theta*, so the runner computes f_ex under it): ``Linear(e, 2e) - BatchNorm - LeakyReLU - Dropout(0.5) -
   Linear(2e, 2e) - BatchNorm - LeakyReLU - Dropout(0.5) - Linear(2e, K)``, trained with cross-entropy on
   unlabeled **train exemplars labelled by their task id** -- this uses the task identity of the exemplars as
   training labels, which is how Twin-Merging trains its router -- AdamW lr 5e-4, no weight decay, linear decay,
   batch 1024, 50 epochs (the official ``transformers.Trainer`` settings).
4. **Inference**: per sample, ``w = softmax(router(f_ex(x)))`` and ``theta(x) = theta* + sum_t w_t U_t S_t V_t^T``.

Storage: the shared expert's delta ``theta* - theta = lambda sum_t tau_t`` (``state_dict``; the same bytes as theta*
itself, and theta* is rebuilt as ``theta + delta`` in merge and load alike, so the router sees identical
features), per task the SVD factors U, S, Vh and the dense 1-D differences (``state_dict``, natural dtype), the
router's weights and BatchNorm statistics (``state_dict``) and a small ``json`` with the ranks and the router's
training accuracy. The paper's 711 MB for ViT-B/32 (Table III of auto-flexswitch.txt) is this layout: the full
shared expert plus rank-10% factors for 8 tasks.

The auto-flexswitch paper's Table II uses a scaling coefficient of 0.3 (0.2 for ViT-L/14 and DETR) and 8000 router
samples (1000 per task; 7000 for DETR's 7 domains) for its Twin-Merging rows; the router default here is 1000 per
task (the official GLUE script takes up to 5500 per task, a data-set-specific number).

Differences from the official code (the discriminative/RoBERTa release; there is no ViT release):

* Biases and heads: the official code excludes ``.*bias.*`` and the classifier from merging and runs every sample
  through the *true task's* fine-tuned model for them, which leaks the task identity. Here heads come from the task
  being evaluated (as for every method) and biases are merged like every other 1-D tensor (shared expert +
  dense exclusive difference, routed).
* The official router keeps the epoch with the best accuracy on the *test* features (``load_best_model_at_end``
  with the test set as eval set); here it trains for the fixed number of epochs and never sees test data.
* Router inputs are the adapter's f_ex features (the official code averages RoBERTa's last hidden states); a
  per-query feature map ``[B, Q, e]`` is averaged over queries.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmark.contract import Artifacts, Merged, Method, Pool, RoutedModel, StateDict
from benchmark.registry import METHODS, Param
from benchmark.routing import exemplar_features, mean_queries


# ----------------------------------------------------------------------------------------------------------------
# Pure maths


def shared_delta(vectors: Sequence[Mapping[str, Tensor]], scaling: float) -> StateDict:
    """The shared expert's offset from theta: task arithmetic's ``lambda * sum_t tau_t``."""
    # Twin-Merging's shared expert is defined as task arithmetic: the suite's one implementation, by its public API
    from methods.task_arithmetic import task_arithmetic_merge

    zero = {k: torch.zeros_like(v) for k, v in vectors[0].items()}
    return task_arithmetic_merge(zero, list(vectors), scaling)


def svd_rank(shape: Sequence[int], density: float, rank: int | None) -> int:
    m = shape[0]
    n = math.prod(shape[1:])
    full = min(m, n)
    r = rank if rank is not None else int(density * full)
    return max(1, min(full, r))


def compress(diff: Mapping[str, Tensor], density: float = 0.1, rank: int | None = None
             ) -> tuple[StateDict, StateDict, StateDict, StateDict]:
    """Truncated SVD of every tensor with >= 2 dims (``U [m, r]``, ``S [r]``, ``Vh [r, n]``), dense 1-D tensors."""
    us, ss, vhs, dense = {}, {}, {}, {}
    for k, d in diff.items():
        if d.dim() < 2:
            dense[k] = d.clone()
            continue
        mat = d.reshape(d.shape[0], -1)
        u, s, vh = torch.linalg.svd(mat, full_matrices=False)
        r = svd_rank(d.shape, density, rank)
        us[k], ss[k], vhs[k] = u[:, :r].contiguous(), s[:r].contiguous(), vh[:r].contiguous()
    return us, ss, vhs, dense


def expand(us: Mapping[str, Tensor], ss: Mapping[str, Tensor], vhs: Mapping[str, Tensor],
           dense: Mapping[str, Tensor], shapes: Mapping[str, torch.Size]) -> StateDict:
    """The dense exclusive difference ``U diag(S) Vh`` (reshaped), plus the dense 1-D tensors."""
    out = dict(dense)
    for k in us:
        out[k] = ((us[k] * ss[k]) @ vhs[k]).reshape(shapes[k])
    return out


class Router(nn.Module):
    """The official Twin-Merging router (``SimpleMLP``)."""

    def __init__(self, in_dim: int, n_tasks: int, hidden: int, dropout: float = 0.5):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden)
        self.bn1 = nn.BatchNorm1d(hidden)
        self.fc3 = nn.Linear(hidden, hidden)
        self.bn3 = nn.BatchNorm1d(hidden)
        self.fc4 = nn.Linear(hidden, n_tasks)
        self.dropout = nn.Dropout(p=dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = self.dropout(F.leaky_relu(self.bn1(self.fc1(x.float()))))
        x = self.dropout(F.leaky_relu(self.bn3(self.fc3(x))))
        return self.fc4(x)

    @classmethod
    def from_state(cls, state: Mapping[str, Tensor]) -> "Router":
        hidden, in_dim = state["fc1.weight"].shape
        r = cls(in_dim, state["fc4.weight"].shape[0], hidden)
        r.load_state_dict(dict(state))
        return r.eval()


def pooled(features: Tensor) -> Tensor:
    """[B, e] router inputs; per-query features [B, Q, e] are averaged over queries."""
    return mean_queries(features)


def train_router(feats: Tensor, labels: Tensor, n_tasks: int, generator: torch.Generator, hidden_mult: int = 2,
                 lr: float = 5e-4, epochs: int = 50, batch_size: int = 1024, dropout: float = 0.5) -> Router:
    """Cross-entropy on (feature, task id) pairs, AdamW with linearly decaying lr (transformers.Trainer's default)."""
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    with torch.random.fork_rng(devices=[]):  # init and dropout draw from the global RNG; leave it untouched
        torch.manual_seed(seed)
        router = Router(feats.shape[1], n_tasks, hidden_mult * feats.shape[1], dropout)
        n = feats.shape[0]
        per_epoch = math.ceil(n / batch_size)
        total = max(1, per_epoch * epochs)
        opt = torch.optim.AdamW(router.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: max(0.0, 1.0 - step / total))
        router.train()
        for _ in range(epochs):
            perm = torch.randperm(n, generator=generator)
            for s in range(0, n, batch_size):
                idx = perm[s:s + batch_size]
                if idx.numel() < 2:  # BatchNorm needs two samples in training mode
                    continue
                loss = F.cross_entropy(router(feats[idx]), labels[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
    return router.eval()


# ----------------------------------------------------------------------------------------------------------------
# The merged model


class TwinModel(RoutedModel):
    def __init__(self, pretrained: StateDict, delta: StateDict, exclusive: Mapping[str, StateDict], router: Router,
                 tasks: Sequence[str], meta: Mapping[str, Any]):
        self._shared = {k: pretrained[k] + delta[k] for k in pretrained}
        # per tensor, the K dense exclusive differences stacked [K, ...]: one weight build is one tensordot per tensor
        self._excl = {k: torch.stack([exclusive[t][k] for t in tasks]) for k in self._shared}
        self._router = router
        self._meta = dict(meta)

    def routing_weights(self) -> StateDict:
        return self._shared

    def route(self, features: Tensor) -> Tensor:
        with torch.no_grad():
            return torch.softmax(self._router(pooled(features).float().cpu()), dim=-1)

    def weights(self, mix: Tensor) -> StateDict:
        mix = mix.to(torch.float32)
        return {k: v + torch.tensordot(mix, self._excl[k], dims=1) for k, v in self._shared.items()}

    def extra_metrics(self) -> dict[str, Any]:
        return {"twin": self._meta}


@METHODS.register(
    "twin",
    summary="Routed: task-arithmetic shared expert + per-task SVD-compressed exclusive knowledge, mixed per sample "
            "by an MLP router on shared-expert features.",
    paper="Lu et al. 2024, Twin-Merging: Dynamic Integration of Modular Expertise in Model Merging (NeurIPS), Sec. 3",
    params=[
        Param("scaling", float, 0.29, "task-arithmetic lambda of the shared expert", lo=0.0),
        Param("density", float, 0.1, "fraction of each tensor's singular values kept (official mask_rate 0.9)",
              lo=0.0, hi=1.0),
        Param("rank", int, None, "fixed SVD rank instead of density * min(m, n)", lo=1, nullable=True),
        Param("router_examples", int, 1000, "unlabeled train exemplars per task for the router (labelled by task id)",
              lo=2),
        Param("router_epochs", int, 50, "router training epochs", lo=0),
        Param("router_lr", float, 5e-4, "router AdamW learning rate (linear decay)", lo=0.0),
        Param("router_batch_size", int, 1024, "router batch size", lo=2),
        Param("router_hidden_mult", int, 2, "router hidden width as a multiple of the feature width", lo=1),
        Param("router_dropout", float, 0.5, "router dropout", lo=0.0, hi=1.0),
    ],
    paper_rows=("Twin-Merging",),
    order=140,
)
class TwinMerging(Method):
    whole_models = True  # runs forwards of the fine-tuned models
    kind = "routed"

    def merge(self, pool: Pool) -> Artifacts:
        if pool.ops is None:
            raise ValueError("twin needs data access (pool.ops) to train its router")
        p = self.params
        delta = shared_delta(pool.lazy_task_vectors(), p["scaling"])
        shared = {k: pool.pretrained[k] + delta[k] for k in pool.pretrained}
        arts = Artifacts()
        arts.add("shared_delta", delta, codec="state_dict")
        ranks: dict[str, int] = {}
        for t in pool.tasks:
            diff = {k: pool.finetuned[t][k] - shared[k] for k in shared}
            us, ss, vhs, dense = compress(diff, p["density"], p["rank"])
            ranks = {k: int(s.numel()) for k, s in ss.items()}
            arts.add(f"exclusive/{t}/U", us, codec="state_dict")
            arts.add(f"exclusive/{t}/S", ss, codec="state_dict")
            arts.add(f"exclusive/{t}/Vh", vhs, codec="state_dict")
            arts.add(f"exclusive/{t}/dense", dense, codec="state_dict")
        # salt 5: the router's own draw (Pool.exemplar_seed); features of the shared expert, 256 per forward
        feats_t, labels_t = exemplar_features(pool, p["router_examples"], shared, salt=5, batch_size=256,
                                              reduce=mean_queries)
        router = train_router(feats_t, labels_t, len(pool.tasks), pool.generator(salt=77), p["router_hidden_mult"],
                              p["router_lr"], p["router_epochs"], p["router_batch_size"], p["router_dropout"])
        with torch.no_grad():
            train_acc = float((router(feats_t).argmax(1) == labels_t).float().mean()) * 100
        arts.add("router", {k: v.detach().clone() for k, v in router.state_dict().items()}, codec="state_dict")
        meta = {
            "ranks": ranks,
            "mean_rank": sum(ranks.values()) / max(len(ranks), 1),
            "router_train_accuracy": train_acc,
            "router_examples": int(feats_t.shape[0]),
        }
        arts.add("meta", meta, codec="json")
        return arts

    def load(self, artifacts: Mapping[str, Any], pretrained: StateDict, tasks: Sequence[str]) -> Merged:
        shapes = {k: v.shape for k, v in pretrained.items()}
        exclusive = {
            t: expand(artifacts[f"exclusive/{t}/U"], artifacts[f"exclusive/{t}/S"], artifacts[f"exclusive/{t}/Vh"],
                      artifacts[f"exclusive/{t}/dense"], shapes)
            for t in tasks
        }
        return TwinModel(pretrained, artifacts["shared_delta"], exclusive, Router.from_state(artifacts["router"]),
                         tasks, artifacts["meta"])
