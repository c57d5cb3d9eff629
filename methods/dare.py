"""``dare``: DARE, Drop And REscale (Yu et al., ICML 2024, "Language Models are Super Mario: Absorbing Abilities
from Homologous Models as a Free Lunch"), static.

Every entry of every task vector is dropped with probability ``p`` (``drop_rate``) and the survivors are rescaled
by ``1 / (1 - p)``, so each entry keeps its expectation; the dropped task vectors are then combined by the
``base`` method:

* ``base="task_arithmetic"`` (default): ``theta + scaling_coef * sum_t dare(tau_t)`` (fusion-bench's
  ``DareTaskArithmetic``);
* ``base="ties"``: TIES (trim to ``topk``%, elect, disjoint ``merge_func``; :mod:`methods.ties`) over the dropped
  vectors, then ``theta + scaling_coef * tau_m`` (fusion-bench's ``DareTiesMerging``, the DARE paper's
  "DARE + TIES-Merging"). ``topk``, ``topk_scope`` and ``merge_func`` only matter here.

Drop rule, as fusion-bench's ``param_random_drop_``: ``keep = u > p`` with ``u ~ U[0, 1)`` drawn by ``torch.rand``
in the tensor's dtype, then ``tau * keep / (1 - p)`` (``rescale=False``: no division).

Seeds -> masks (deterministic under ``--seed``, independent of the order in which tensors are visited):

* task ``i`` (its position in ``pool.tasks``) owns the generator ``pool.generator(salt=DARE_SALT + i)``, i.e.
  ``torch.Generator().manual_seed(seed * 1_000_003 + 0xDA2E + i)``;
* from it, one 62-bit seed per mergeable tensor is drawn in *sorted* key order
  (``torch.randint(0, 2**62, (n_keys,), generator=g)``);
* the mask of tensor ``key`` of task ``i`` is ``torch.rand(shape, generator=torch.Generator().manual_seed(s))
  > p`` with that tensor's seed ``s``. (``torch.manual_seed(s); torch.rand_like(tau) > p`` -- fusion-bench's
  call -- draws the same uniforms, which is how the tests compare against it with identical masks.)

Per-tensor seeds let the masks be regenerated on demand: the dropped task vectors are never materialised, and the
TIES base (which reads every task vector three times: threshold, elect, merge) sees the same mask on every pass.
The price is time: torch's CPU generator draws ~9 ns per uniform, so at 88M parameters x 8 tasks one drop pass
costs ~6.5 s on one core (DARE + task arithmetic ~7.5 s, DARE + TIES ~39 s with its three passes), against ~0.9 s
for plain task arithmetic; caching the masks instead would cost one byte per entry and task.

Defaults: ``drop_rate=0.5``, ``scaling_coef=0.3``, ``base="task_arithmetic"``, one reference's setting as a whole:
T-Switch supp. Table 5 (DARE's discard rate 0.5 on its Task-Arithmetic row's lambda 0.3). ``merge_func`` only acts
with ``base="ties"``; it stays ``dis-mean`` so the committed records keep their config hashes, and with lambda = 0.3
``--set base=ties --set merge_func=dis-sum`` is the coherent pair (see :mod:`methods.ties`). The
auto-flexswitch paper grid-searched (Table II: p = 0.4 / lambda = 0.2 for ViT-B/32, 0.1 / 0.2 for ConvNeXt,
0.6 / 0.4 for ViT-L/14; Table VI: 0.4 / 0.2 for DETR).

Stored: the merged mergeable weights (``state_dict`` codec, natural dtype).
"""
from __future__ import annotations

from typing import Any, Iterator, Mapping, Sequence

import torch
from torch import Tensor

from benchmark.contract import Artifacts, Merged, Method, Pool, StateDict, StaticModel, as_vector_list
from benchmark.registry import METHODS, Param
# DARE is defined on its base merge (DARE + task arithmetic, DARE + TIES): their public functions
from methods.task_arithmetic import task_arithmetic_merge
from methods.ties import MERGE_FUNCS, TOPK_SCOPES, ties_merge

DARE_SALT = 0xDA2E
BASES = ("task_arithmetic", "ties")


def dare_seeds(generator: torch.Generator, keys: Sequence[str]) -> dict[str, int]:
    """One seed per tensor, drawn from ``generator`` in sorted key order."""
    names = sorted(keys)
    draws = torch.randint(0, 2**62, (len(names),), generator=generator, dtype=torch.int64)
    return dict(zip(names, draws.tolist()))


def dare_mask(shape: Sequence[int] | torch.Size, drop_rate: float, generator: torch.Generator,
              dtype: torch.dtype = torch.float32) -> Tensor:
    """``keep = u > p``, ``u ~ U[0, 1)`` from ``generator`` (bool, ``shape``)."""
    return torch.rand(tuple(shape), generator=generator, dtype=dtype) > drop_rate


def dare_drop(tau: Tensor, drop_rate: float, generator: torch.Generator, rescale: bool = True) -> Tensor:
    """Drop each entry of ``tau`` with probability ``drop_rate`` and rescale the rest by ``1 / (1 - drop_rate)``."""
    if not 0.0 <= drop_rate <= 1.0 or (rescale and drop_rate == 1.0):
        raise ValueError(f"drop_rate must lie in [0, 1) ([0, 1] without rescaling); got {drop_rate!r}")
    out = tau * dare_mask(tau.shape, drop_rate, generator, tau.dtype)
    return out / (1 - drop_rate) if rescale else out


class DroppedTaskVector(Mapping[str, Tensor]):
    """``dare(tau)`` computed on access from per-tensor seeds: the same mask on every access, nothing cached."""

    def __init__(self, tau: Mapping[str, Tensor], seeds: Mapping[str, int], drop_rate: float, rescale: bool = True):
        missing = set(tau) - set(seeds)
        if missing:
            raise ValueError(f"no DARE seed for {sorted(missing)[:3]}")
        self.tau, self.seeds, self.drop_rate, self.rescale = tau, seeds, drop_rate, rescale

    def __getitem__(self, key: str) -> Tensor:
        g = torch.Generator().manual_seed(int(self.seeds[key]))
        return dare_drop(self.tau[key], self.drop_rate, g, self.rescale)

    def __iter__(self) -> Iterator[str]:
        return iter(self.tau)

    def __len__(self) -> int:
        return len(self.tau)

    def numel(self, key: str) -> int:
        f = getattr(self.tau, "numel", None)
        return f(key) if callable(f) else self.tau[key].numel()


def dare_task_vectors(
    task_vectors: Sequence[Mapping[str, Tensor]] | Mapping[str, Mapping[str, Tensor]],
    drop_rate: float,
    seeds: Sequence[Mapping[str, int]],
    rescale: bool = True,
) -> list[DroppedTaskVector]:
    """Lazy dropped task vectors, task ``i`` masked with ``seeds[i]`` (see :func:`dare_seeds`)."""
    vectors = as_vector_list(task_vectors)
    if len(seeds) != len(vectors):
        raise ValueError(f"{len(vectors)} task vectors but {len(seeds)} seed maps")
    return [DroppedTaskVector(tv, s, drop_rate, rescale) for tv, s in zip(vectors, seeds)]


def dare_merge(
    pretrained: Mapping[str, Tensor],
    task_vectors: Sequence[Mapping[str, Tensor]] | Mapping[str, Mapping[str, Tensor]],
    seeds: Sequence[Mapping[str, int]],
    drop_rate: float = 0.5,
    base: str = "task_arithmetic",
    scaling_coef: float = 0.3,
    rescale: bool = True,
    topk: float = 20.0,
    topk_scope: str = "global",
    merge_func: str = "dis-mean",
) -> StateDict:
    """DARE the task vectors with ``seeds``, then merge them with ``base``."""
    dropped = dare_task_vectors(task_vectors, drop_rate, seeds, rescale)
    if base == "task_arithmetic":
        return task_arithmetic_merge(pretrained, dropped, scaling_coef)
    if base == "ties":
        return ties_merge(pretrained, dropped, topk, merge_func, scaling_coef, topk_scope)
    raise ValueError(f"base must be one of {', '.join(BASES)}; got {base!r}")


def pool_seeds(pool: Pool) -> list[dict[str, int]]:
    """The per-tensor seeds of every task, from ``pool.generator(DARE_SALT + i)``."""
    return [dare_seeds(pool.generator(salt=DARE_SALT + i), list(pool.pretrained)) for i in range(len(pool.tasks))]


@METHODS.register(
    "dare",
    summary="Static: drop task-vector entries at random (rate p), rescale by 1/(1-p), then task arithmetic or TIES.",
    paper="Yu et al. 2024, Language Models are Super Mario: Absorbing Abilities from Homologous Models as a Free "
          "Lunch (ICML)",
    params=[
        Param("drop_rate", float, 0.5, "p, the probability of dropping each task-vector entry", lo=0.0, hi=0.99),
        Param("rescale", bool, True, "rescale the kept entries by 1/(1-p)"),
        Param("base", str, "task_arithmetic", "how the dropped task vectors are merged", choices=BASES),
        Param("scaling_coef", float, 0.3, "lambda, the scale of the merged task vector", lo=0.0),
        Param("topk", float, 20.0, "base=ties: percent of each dropped task vector kept by the trim",
              lo=0.0, hi=100.0),
        Param("topk_scope", str, "global", "base=ties: top-k over the whole vector or per tensor",
              choices=TOPK_SCOPES),
        Param("merge_func", str, "dis-mean", "base=ties: disjoint merge function", choices=MERGE_FUNCS),
    ],
    paper_rows=("DARE",),
    order=60,
)
class Dare(Method):
    kind = "static"

    def merge(self, pool: Pool) -> Artifacts:
        p = self.params
        merged = dare_merge(pool.pretrained, pool.lazy_task_vectors(), pool_seeds(pool), p["drop_rate"], p["base"],
                            p["scaling_coef"], p["rescale"], p["topk"], p["topk_scope"], p["merge_func"])
        arts = Artifacts()
        arts.add("merged", merged, codec="state_dict")
        return arts

    def load(self, artifacts: Mapping[str, Any], pretrained: StateDict, tasks: Sequence[str]) -> Merged:
        return StaticModel(dict(artifacts["merged"]))
