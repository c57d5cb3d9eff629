"""The binary task switch shared by ``t_switch`` and ``auto_switch`` (no registration here).

Source: ../shared/papers/auto-flexswitch.txt, Sec. III-B (Eq. 2-5); the conference version
../shared/papers/t-switch.txt, Sec. 3 (Eq. 2-8, there "Bin-Discard"); and the authors' code
(github.com/lfy-123/Binary-Task-Switch, ``merge_vit/merge_vit.py``), read for the points the papers leave open.

Per task k and module l (a module is one mergeable tensor), with tau = theta_k - theta:

* **Activation switch** A (P-Spar, Eq. 2): ``A_j = 1`` iff ``tau_j > gamma+`` or ``tau_j < gamma-``, gamma+ and
  gamma- the alpha-quantiles of the positive and of the negative entries, i.e. the top ``1 - alpha`` of the positive
  entries and of the negative entries by magnitude (:func:`p_spar_mask`).
* **Polarity switch** P (Eq. 4): ``+1`` where ``tau > 0``, ``-1`` where ``tau <= 0``. Stored only on active entries,
  as one bit (1 = positive), in :class:`SparseCodes` with ``bits = 1``.
* **Knob** (Eq. 3): ``beta = ||tau ⊙ A||_2 / ||A ⊙ P||_2 = ||tau[A]||_2 / sqrt(|A|)``, so that
  ``||beta A ⊙ P||_2 = ||tau ⊙ A||_2``; computed in float64, stored as float32. ``beta = 0`` for an empty mask.
* T-Switch: ``theta_k = theta + beta_k A_k ⊙ P_k``; Auto-Switch (Eq. 5):
  ``theta(x) = theta + sum_k w_k(x) beta_k A_k ⊙ P_k``.

Choices the paper leaves open, and where the official code differs:

* **Count and ties.** A side with n entries keeps exactly ``floor((1 - alpha) n + 1/2)`` of them (rounded half
  up): the largest magnitudes, and among entries equal to the threshold magnitude the ones with the lowest flat
  index (row-major). So the kept fraction is ``1 - alpha`` up to half an entry, alpha = 0 keeps every non-zero entry
  and the result never depends on anything but tau. The official code keeps ``int(n (1 - alpha))`` (floored after
  a float product, so ``int(10 * 0.1...)`` can lose one), keeps *every* entry tied with the threshold (``>=``), and
  when that count is 0 keeps the whole side unpruned (with a warning); here a count of 0 keeps nothing.
* **tau == 0.** Eq. 2's strict inequalities with ``gamma+ > 0 > gamma-`` never activate a zero entry, and the
  official code only ranks non-zero entries: zero entries are inactive at every alpha, so Eq. 4's ``P = -1`` for
  ``tau <= 0`` never reaches the stored bits (at alpha = 0, ``beta A ⊙ P = beta sign(tau)`` with ``sign(0) = 0``).
* **Quantiles.** The threshold is ``torch.kthvalue`` (exact, O(n)), not ``torch.quantile`` (which interpolates,
  needs a sort and, in older torch releases, refuses more than 2^24 elements).
* **0-d tensors.** The official code leaves 0-d parameters dense; here every mergeable tensor is a module (a
  scalar keeps its single entry iff ``1 - alpha >= 1/2``).
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from benchmark.contract import Artifacts, Pool, StateDict
from benchmark.registry import Param
from methods.codecs._sparse import SparseCodes

SWITCH_CODECS = ("entropy", "sass", "packbits")
#: entries per chunk of a fused weight build: 1 MB of float32 scratch, which stays in cache (on a 2-core CPU a
#: 2.4M-entry module built 1.6x faster in 256k chunks than in one piece, and no faster in 64k or 1M ones)
BUILD_CHUNK = 1 << 18

SWITCH_PARAMS = [
    Param("alpha", float, 0.7, "sparsity: drop this share of the positive and of the negative entries (Eq. 2)",
          lo=0.0, hi=1.0),
    Param("codec", str, "entropy", "codec of the switches (mask + polarity bit per module)", choices=SWITCH_CODECS),
]


# ----------------------------------------------------------------------------------------------------------------
# Eq. 2-4: one module


def keep_count(n: int, alpha: float) -> int:
    """How many of a side's ``n`` entries P-Spar keeps: ``(1 - alpha) n`` rounded half up."""
    return min(n, max(0, math.floor((1.0 - alpha) * n + 0.5)))


def top_k_mask(values: Tensor, k: int) -> Tensor:
    """Bool mask of exactly ``k`` largest entries of the flat tensor ``values``; among entries equal to the k-th
    largest value, the ones with the lowest indices. O(n) with ``torch.kthvalue``."""
    n = values.numel()
    if k <= 0:
        return torch.zeros(n, dtype=torch.bool, device=values.device)
    if k >= n:
        return torch.ones(n, dtype=torch.bool, device=values.device)
    thr = torch.kthvalue(values, n - k + 1).values  # the k-th largest
    above = values > thr
    at = values == thr
    need = k - int(above.sum())
    if int(at.sum()) > need:  # ties at the threshold: the first ``need`` of them
        at &= torch.cumsum(at, 0) <= need
    return above | at


def p_spar_mask(tau: Tensor, alpha: float) -> Tensor:
    """Activation switch A (Eq. 2) as a flat bool ``[n]``: the top ``1 - alpha`` of the positive and of the negative
    entries by magnitude, counted and tie-broken as the module docstring says. Zero entries are never active.

    Each side is a :func:`top_k_mask` of ``+tau`` (or ``-tau``) with k at most that side's count, so the k largest
    are all on that side."""
    flat = tau.detach().reshape(-1)
    pos = top_k_mask(flat, keep_count(int((flat > 0).sum()), alpha))
    return pos | top_k_mask(-flat, keep_count(int((flat < 0).sum()), alpha))


def knob(active: Tensor) -> float:
    """Eq. 3 on the active entries ``tau[A]``: ``||tau[A]||_2 / sqrt(|A|)`` (``||A ⊙ P||_2 = sqrt(|A|)``)."""
    n = active.numel()
    return float(active.double().norm() / math.sqrt(n)) if n else 0.0


def module_switch(tau: Tensor, alpha: float) -> tuple[SparseCodes, float]:
    """One module's switch: A (the mask), P on the active entries (1 = positive, Eq. 4) and beta (Eq. 3)."""
    mask = p_spar_mask(tau, alpha)
    active = tau.detach().reshape(-1)[mask]
    codes = (active > 0).to(torch.uint8)
    return SparseCodes(tuple(tau.shape), mask.cpu(), codes.cpu(), 1), knob(active)


def task_switch(tau: Mapping[str, Tensor], alpha: float) -> tuple[dict[str, SparseCodes], Tensor]:
    """A task's switches, module by module in ``tau``'s order, and its knobs as float32 ``[L]`` in the same order."""
    codes, betas = {}, []
    for name, t in tau.items():
        codes[name], beta = module_switch(t, alpha)
        betas.append(beta)
    return codes, torch.tensor(betas, dtype=torch.float32)


def signs(sc: SparseCodes) -> Tensor:
    """A ⊙ P as an int8 tensor of the module's shape, values in {-1, 0, 1}, from stored codes only."""
    flat = torch.zeros(sc.n, dtype=torch.int8)
    flat[sc.mask] = sc.codes.to(torch.int8) * 2 - 1
    return flat.reshape(sc.shape)


# ----------------------------------------------------------------------------------------------------------------
# Storage and the reloaded switches


def add_switches(arts: Artifacts, pool: Pool, params: Mapping[str, Any]) -> None:
    """Artifacts ``switch/<task>`` (dict module -> SparseCodes, with ``params['codec']``) and ``knobs/<task>``
    (float32 ``[L]``, codec ``tensor``). The knobs follow the module order of the task's switch artifact, which the
    switch codecs record (their ``names``), so :class:`SwitchBank` rebuilds from the file alone. One tensor of one
    task vector is computed at a time (``pool.task_vector``)."""
    for t in pool.tasks:
        codes, knobs = task_switch(pool.task_vector(t), params["alpha"])
        arts.add(f"switch/{t}", codes, codec=params["codec"])
        arts.add(f"knobs/{t}", knobs, codec="tensor")


class SwitchBank:
    """The reloaded switches of every task: A ⊙ P (int8, dense) and beta per module. Builds
    ``theta + sum_k c_k beta_k A_k ⊙ P_k`` for any coefficients c (T-Switch: one-hot; Auto-Switch: Eq. 5)."""

    def __init__(self, artifacts: Mapping[str, Any], pretrained: StateDict, tasks: Sequence[str]):
        self.pretrained = pretrained
        self.tasks = list(tasks)
        self.signs: dict[str, dict[str, Tensor]] = {}
        self.knobs: dict[str, dict[str, float]] = {}
        self.kept: dict[str, float] = {}
        self._wide: Tensor | None = None
        for t in self.tasks:
            codes: Mapping[str, SparseCodes] = artifacts[f"switch/{t}"]
            knobs = artifacts[f"knobs/{t}"]
            if set(codes) != set(pretrained):
                raise ValueError(f"switch/{t} holds modules {sorted(set(codes) ^ set(pretrained))} not matching the model")
            if knobs.shape != (len(codes),):
                raise ValueError(f"knobs/{t} has shape {tuple(knobs.shape)}, expected ({len(codes)},)")
            self.signs[t] = {k: signs(c) for k, c in codes.items()}
            self.knobs[t] = dict(zip(codes, knobs.tolist()))  # float32 values, exact as Python floats
            self.kept[t] = sum(c.nnz for c in codes.values()) / max(1, sum(c.n for c in codes.values()))

    def vector(self, task: str, key: str) -> Tensor:
        """beta A ⊙ P of one module (float32)."""
        return self.knobs[task][key] * self.signs[task][key].to(torch.float32)

    def weights(self, coeffs: Sequence[float], out: StateDict | None = None) -> StateDict:
        """``theta + sum_k coeffs[k] * beta_k A_k ⊙ P_k`` (Eq. 5; T-Switch's Eq. 7 with one-hot ``coeffs``),
        ``coeffs`` in task order; zero coefficients are skipped. Written in place into ``out`` when given (a
        state dict this method returned before), else into new tensors.

        Fused: each module is built in chunks of ``BUILD_CHUNK`` entries; per chunk one copy of theta, then per
        active task its int8 signs widened into one small scratch buffer (it stays in cache) and added with
        ``alpha = c beta``, so no full-size temporary is made. The result is bit-identical to
        ``acc = acc + (c * beta) * signs.float()`` task after task: ``c beta`` is rounded to float32 in both, its
        product with a sign in {-1, 0, 1} is exact, and so each sum rounds once, in the same order."""
        if out is None:
            out = {key: torch.empty(base.shape, dtype=base.dtype, device=base.device)
                   for key, base in self.pretrained.items()}
        active = [(t, c) for t, c in zip(self.tasks, coeffs) if c]
        scratch = self._scratch()
        for key, base in self.pretrained.items():
            acc, flat = out[key].view(-1), base.reshape(-1)
            parts = [(self.signs[t][key].view(-1), c * self.knobs[t][key]) for t, c in active]
            for i in range(0, flat.numel(), BUILD_CHUNK):
                chunk = acc[i:i + BUILD_CHUNK]
                chunk.copy_(flat[i:i + BUILD_CHUNK])
                wide = scratch[: chunk.numel()]
                for sign, alpha in parts:
                    wide.copy_(sign[i:i + BUILD_CHUNK])
                    chunk.add_(wide, alpha=alpha)
        return out

    def _scratch(self) -> Tensor:
        """One float32 buffer of ``BUILD_CHUNK`` entries (or the largest module, if smaller), made on first use."""
        if self._wide is None:
            first = next(iter(self.pretrained.values()), torch.empty(0))
            n = min(BUILD_CHUNK, max((b.numel() for b in self.pretrained.values()), default=0))
            self._wide = torch.empty(n, dtype=first.dtype, device=first.device)
        return self._wide

    def summary(self) -> dict[str, Any]:
        """Realized kept fraction (1 - sparsity) per task, for the record."""
        return {"kept_fraction": dict(self.kept)}
