"""FlexSwitch: learnable sparsity (LGS), bit-width allocation (BAS) and cost-aware storage (SASS).

Source: ../shared/papers/auto-flexswitch.txt, Sec. III-C, Eq. 6-17, with the settings of Sec. IV-A.

For each task k and each module l (= each mergeable tensor) FlexSwitch learns, jointly:

* **LGS** (Eq. 6-7): positive / negative threshold logits ``s+``, ``s-`` mapped into the range of the
  corresponding signed magnitudes by ``phi(x) = arctan(x)/pi + 0.5``; a soft gate
  ``M = sig((tau - t+)/(rho r+)) + sig((-t- - tau)/(rho r-))``, scaled by ``softplus(kappa)``.
* **BAS** (Eq. 12-13): bit-width logits over W = {1, 2, 4, 8} with temperature ``omega``; a softmax mixture of the
  asymmetric quantizer ``Q(tau; b)``.
* **Loss** (Eq. 14): ``sum_l |M_l|_1 / sum_l n_l + sum_l wbar_l / (L max W) + lambda * L_per`` with ``L_per`` one of
  KL at T=4 (Eq. 9), MSE on outputs (Eq. 10) or CKA (Eq. 11), against the fine-tuned model on N unlabeled
  exemplars. KL reads the task head's logits; MSE and CKA read every output the adapter gives
  (``ModelOps.outputs`` when it has it: a detector's class logits and boxes, as the paper's MSE on DETR must
  align "both the classification and regression branches"), else the logits. Each loss is per sample as Eq. 9-11
  define it: a sample's outputs are summed (Eq. 9's sum over j, Eq. 10's squared norm; Eq. 11's row of F), and the
  batch mean is over the B inputs. On a detector a sample is an image and its outputs are all Q queries' (``[B, Q,
  C]``), so lambda weighs a whole image's loss, as it weighs a whole image's on a classifier; averaging over the B*Q
  query rows instead would make the paper's lambda act as lambda/Q (1/100 at DETR-R50's 100 queries, 1/16 at the
  tiny detector's). Adam, lr 0.05 (LGS) and 0.1 (BAS),
  500 steps, batch 32; rho and omega start at 1.0 and are multiplied by 0.9 every 10 steps.
* **Defaults** (:data:`FLEX_KIND_DEFAULTS`): KL, lambda = 0.3 (Tables III/IV, ViT-B/32 and ViT-L/14); on detection
  backbones MSE, lambda = 0.5, Table VII's DETR-R50 setting. ``python -m benchmark list`` shows both.
* **Finalize** (Eq. 15 and after Eq. 11): hard mask ``1(M > 0.5)``, ``b = W[argmax w]``,
  ``tau~ = softplus(kappa) * M_hard * Q(tau; b)``.

Storage: per module the active positions and the b-bit quantization level of each (``SparseCodes``), written with
SASS (Eq. 16-17) or the project's entropy codec, whichever file part is smaller (``codec="auto"``, measured in bytes),
plus three float32 numbers per module (scale, offset, step) from which the values are rebuilt:
``value = scale * (offset + (level + 0.5) * step)``.

Differences from the paper, and choices it leaves open (no official code was available to compare with):

* **Eq. 13 as printed** (``I = Clamp(floor((tau + v-max)/delta), 1, 2^b) - 1``) sends the two lowest bins to level 0
  and reaches the top level only at ``tau = v+max``; at b = 1 every entry but the maximum gets the same value. The
  default ``quantizer="uniform"`` is the evident intent, ``I = Clamp(floor((tau + v-max)/delta), 0, 2^b - 1)``
  (2^b bins of width delta, mid-point reconstruction); ``quantizer="paper"`` implements the formula as printed.
* Initial values (not given in the paper): ``s+ = s- = 0`` (thresholds mid-range), ``softplus(kappa) = 1``,
  bit-width logits 0 (uniform mixture).
* The hard mask is taken at the final temperature rho (for small rho it is the threshold mask ``|tau| > t``).
* Modules with no positive (or no negative) entries get an empty range on that side: that side's gate is 0.
* ``variant`` gives the component ablations of Table XI: ``lgs+bas`` (FlexSwitch), ``lgs`` (learned mask stored as
  T-Switch's binary switch, Eq. 3 knob on the learned mask), ``bas`` (P-Spar mask at fixed ``alpha``, learned
  bit-width).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from benchmark.contract import Artifacts, Merged, Method, Pool, StateDict, TaskConditionedModel
from benchmark.registry import METHODS, KindDefaults, Param
from methods._switch import knob, p_spar_mask
from methods.codecs._sparse import SparseCodes

BIT_WIDTHS = (1, 2, 4, 8)
LOSSES = ("kl", "mse", "cka")
VARIANTS = ("lgs+bas", "lgs", "bas")
SWITCH_CODECS = ("auto", "sass", "entropy", "packbits")


# ----------------------------------------------------------------------------------------------------------------
# Pure maths (Eq. 6-15)


def phi(x: Tensor) -> Tensor:
    """phi(x) = arctan(x)/pi + 0.5, a smooth map R -> (0, 1) (Eq. 6)."""
    return torch.atan(x) / math.pi + 0.5


@dataclass
class Ranges:
    """Magnitude ranges of a module's positive and negative entries (Eq. 6): [v+min, v+max], [v-min, v-max]."""

    vp_min: Tensor
    vp_max: Tensor
    vn_min: Tensor
    vn_max: Tensor

    @property
    def rp(self) -> Tensor:
        return self.vp_max - self.vp_min

    @property
    def rn(self) -> Tensor:
        return self.vn_max - self.vn_min


def ranges(tau: Tensor) -> Ranges:
    pos = tau[tau > 0]
    neg = -tau[tau < 0]
    z = tau.new_zeros(())
    return Ranges(
        pos.min() if pos.numel() else z,
        pos.max() if pos.numel() else z,
        neg.min() if neg.numel() else z,
        neg.max() if neg.numel() else z,
    )


def thresholds(r: Ranges, s_pos: Tensor, s_neg: Tensor) -> tuple[Tensor, Tensor]:
    """t+ = v+min + phi(s+) r+max, t- = v-min + phi(s-) r-max (Eq. 6): always inside the signed ranges."""
    return r.vp_min + phi(s_pos) * r.rp, r.vn_min + phi(s_neg) * r.rn


def _soft_step(x: Tensor, width: Tensor) -> Tensor:
    """sigmoid(x / width); a hard step where the range is a single value (width 0)."""
    return torch.sigmoid(x / width) if width > 0 else (x >= 0).to(x.dtype)


def gate(tau: Tensor, r: Ranges, s_pos: Tensor, s_neg: Tensor, rho: float) -> Tensor:
    """The soft mask M of Eq. 7 (without the softplus scale). As rho -> 0 it tends to 1(tau > t+) + 1(tau < -t-).

    A side with no entries (no positive, or no negative, values) contributes nothing."""
    t_pos, t_neg = thresholds(r, s_pos, s_neg)
    m = tau.new_zeros(tau.shape)
    if r.vp_max > 0:
        m = m + _soft_step(tau - t_pos, rho * r.rp)
    if r.vn_max > 0:
        m = m + _soft_step(-t_neg - tau, rho * r.rn)
    return m


def quant_step(r: Ranges, bits: int) -> Tensor:
    """delta = (v+max + v-max) / 2^b (Eq. 13)."""
    return (r.vp_max + r.vn_max) / (2**bits)


def quant_index(tau: Tensor, r: Ranges, bits: int, quantizer: str = "uniform") -> Tensor:
    """The bin index I(tau; b) of Eq. 13, in [0, 2^b - 1] (see the module docstring for ``quantizer``)."""
    delta = quant_step(r, bits)
    if delta <= 0:
        return torch.zeros(tau.shape, dtype=torch.long)
    raw = torch.floor((tau + r.vn_max) / delta)
    if quantizer == "paper":
        return raw.clamp(1, 2**bits).long() - 1
    return raw.clamp(0, 2**bits - 1).long()


def dequantize(index: Tensor, offset: Tensor, step: Tensor) -> Tensor:
    """Q = -v-max + (I + 0.5) delta (Eq. 13), written as offset + (I + 0.5) * step."""
    return offset + (index.to(step.dtype) + 0.5) * step


def quantize(tau: Tensor, r: Ranges, bits: int, quantizer: str = "uniform") -> Tensor:
    return dequantize(quant_index(tau, r, bits, quantizer), -r.vn_max, quant_step(r, bits))


def mixed_bits(w: Tensor, omega: float, widths: Sequence[int] = BIT_WIDTHS) -> Tensor:
    """wbar = sum_i softmax(w/omega)_i W_i, the mixed bit-width of Eq. 14."""
    return (torch.softmax(w / omega, dim=-1) * torch.tensor(widths, dtype=w.dtype)).sum(-1)


def per_sample_mean(x: Tensor) -> Tensor:
    """``1/B sum_i (sum of x_i over every other axis)``: a per-sample quantity summed over its outputs, averaged over
    the B samples of the batch (axis 0), as Eq. 9 and Eq. 10 read. On a classifier ``x`` is ``[B, C]``; on a
    detector ``[B, Q, C]``, so an image's Q queries add up to its loss instead of counting as Q samples."""
    return x.reshape(x.shape[0], -1).sum(1).mean()


def loss_kl(student: Tensor, teacher: Tensor, temperature: float = 4.0) -> Tensor:
    """Eq. 9: T^2/B sum_i sum_j q_ij log(q_ij / p_ij), q from the fine-tuned model, p from the switched one. Per-query
    logits ``[B, Q, C]``: the sum over j runs over every query's classes (:func:`per_sample_mean`)."""
    log_q = F.log_softmax(teacher / temperature, dim=-1)
    log_p = F.log_softmax(student / temperature, dim=-1)
    return temperature**2 * per_sample_mean(log_q.exp() * (log_q - log_p))


def loss_mse(student: Tensor, teacher: Tensor) -> Tensor:
    """Eq. 10: 1/B sum_i ||f(x_i; Theta_k) - f(x_i; Theta + tau^)||_2^2, f(x_i) every output of sample i (all the
    queries of an image on a detector)."""
    return per_sample_mean((teacher - student) ** 2)


def loss_cka(student: Tensor, teacher: Tensor) -> Tensor:
    """Eq. 11: 1 - ||F^T H F^||_F^2 / (||F^T H F||_F ||F^^T H F^||_F), H = I - 11^T/B the centering matrix, F the
    ``[B, C]`` matrix of the B samples' outputs. Per-query outputs ``[B, Q, C]`` (detectors): a sample's row is its
    image's Q outputs, flattened (``[B, Q C]``), as Eq. 11 has one row per input."""
    teacher, student = (t.reshape(t.shape[0], -1) for t in (teacher, student))
    fc = teacher - teacher.mean(0, keepdim=True)  # H F
    sc = student - student.mean(0, keepdim=True)
    cross = torch.linalg.matrix_norm(fc.T @ sc) ** 2
    denom = torch.linalg.matrix_norm(fc.T @ fc) * torch.linalg.matrix_norm(sc.T @ sc)
    return 1 - cross / denom.clamp_min(1e-12)


PER_LOSSES = {"kl": loss_kl, "mse": loss_mse, "cka": loss_cka}


# ----------------------------------------------------------------------------------------------------------------
# Learning one task's switch


@dataclass
class FlexConfig:
    loss: str = "kl"
    lam: float = 0.3
    steps: int = 500
    batch_size: int = 32
    n_exemplars: int = 100
    lr_lgs: float = 0.05
    lr_bas: float = 0.1
    rho0: float = 1.0
    omega0: float = 1.0
    decay: float = 0.9
    decay_every: int = 10
    temperature: float = 4.0
    variant: str = "lgs+bas"
    alpha: float = 0.7
    quantizer: str = "uniform"


@dataclass
class LearnedModule:
    """A finalized module: hard mask, bit-width, levels, and (scale, offset, step) to rebuild the values."""

    mask: Tensor
    bits: int
    levels: Tensor
    scale: float
    offset: float
    step: float

    def values(self) -> Tensor:
        return self.scale * dequantize(self.levels, torch.tensor(self.offset), torch.tensor(self.step))


def learn_task_switch(
    pool: Pool, task: str, cfg: FlexConfig, generator: torch.Generator, progress: bool = False
) -> tuple[dict[str, LearnedModule], dict[str, list[float]]]:
    """Optimize LGS/BAS for one task (Eq. 14) and finalize it. Returns the modules and the loss history."""
    ops = pool.ops
    if ops is None:
        raise ValueError("flexswitch needs data access (pool.ops) for its performance-preservation loss")
    keys = list(pool.pretrained)
    taus = {k: pool.finetuned[task][k] - pool.pretrained[k] for k in keys}
    rs = {k: ranges(taus[k]) for k in keys}
    n_total = sum(t.numel() for t in taus.values())
    exemplars = pool.exemplars(task, cfg.n_exemplars)  # salt 0: the draw Auto-FlexSwitch routes with
    n_ex = ops.num_examples(exemplars)
    # KL compares class distributions; MSE / CKA compare outputs, a detector's boxes included (ModelOps.outputs)
    forward = ops.logits if cfg.loss == "kl" else getattr(ops, "outputs", ops.logits)
    with torch.no_grad():
        teacher = forward(task, pool.finetuned[task], exemplars)

    use_lgs = cfg.variant in ("lgs+bas", "lgs")
    use_bas = cfg.variant in ("lgs+bas", "bas")
    L = len(keys)
    s_pos = torch.zeros(L, requires_grad=use_lgs)
    s_neg = torch.zeros(L, requires_grad=use_lgs)
    kappa = torch.full((L,), math.log(math.e - 1), requires_grad=use_lgs)  # softplus(kappa) = 1
    w = torch.zeros(L, len(BIT_WIDTHS), requires_grad=use_bas)
    groups = []
    if use_lgs:
        groups.append({"params": [s_pos, s_neg, kappa], "lr": cfg.lr_lgs})
    if use_bas:
        groups.append({"params": [w], "lr": cfg.lr_bas})
    opt = torch.optim.Adam(groups)
    fixed_mask = {k: p_spar_mask(taus[k], cfg.alpha).reshape(taus[k].shape).to(taus[k].dtype) for k in keys} if not use_lgs else None
    q_levels = (
        {k: torch.stack([quantize(taus[k], rs[k], b, cfg.quantizer) for b in BIT_WIDTHS]) for k in keys}
        if use_bas
        else None
    )
    per_loss = PER_LOSSES[cfg.loss]
    history: dict[str, list[float]] = {"loss": [], "sparsity_term": [], "bits_term": [], "per": []}
    rho = cfg.rho0
    omega = cfg.omega0
    for step in tqdm(range(cfg.steps), desc=f"flexswitch {task}", disable=not progress, leave=False):
        if step and step % cfg.decay_every == 0:
            rho *= cfg.decay
            omega *= cfg.decay
        idx = torch.randperm(n_ex, generator=generator)[: cfg.batch_size]
        batch = ops.slice(exemplars, idx)
        weights: StateDict = {}
        sparse_term = taus[keys[0]].new_zeros(())
        for i, k in enumerate(keys):
            m = gate(taus[k], rs[k], s_pos[i], s_neg[i], rho) if use_lgs else fixed_mask[k]
            if use_lgs:
                sparse_term = sparse_term + m.sum()
            vals = (torch.softmax(w[i] / omega, -1).view(-1, *[1] * taus[k].dim()) * q_levels[k]).sum(0) if use_bas else taus[k]
            weights[k] = pool.pretrained[k] + F.softplus(kappa[i]) * m * vals
        sparse_term = sparse_term / n_total
        bits_term = mixed_bits(w, omega).sum() / (L * max(BIT_WIDTHS)) if use_bas else sparse_term.new_zeros(())
        per = per_loss(forward(task, weights, batch), teacher[idx], **({"temperature": cfg.temperature} if cfg.loss == "kl" else {}))
        loss = sparse_term + bits_term + cfg.lam * per
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        history["loss"].append(loss.item())
        history["sparsity_term"].append(sparse_term.item())
        history["bits_term"].append(bits_term.item())
        history["per"].append(per.item())

    out: dict[str, LearnedModule] = {}
    with torch.no_grad():
        for i, k in enumerate(keys):
            out[k] = finalize_module(
                taus[k].reshape(-1),
                rs[k],
                cfg,
                s_pos[i], s_neg[i], kappa[i], w[i], rho,
                fixed_mask=None if use_lgs else fixed_mask[k].reshape(-1) > 0,
            )
    return out, history


def finalize_module(
    tau: Tensor,
    r: Ranges,
    cfg: FlexConfig,
    s_pos: Tensor,
    s_neg: Tensor,
    kappa: Tensor,
    w: Tensor,
    rho: float,
    fixed_mask: Tensor | None = None,
) -> LearnedModule:
    """The stored form of one trained module (after Eq. 11 and Eq. 15): the hard mask ``1(M > 0.5)`` of the gate at
    the final temperature ``rho`` (or ``fixed_mask``, variant ``bas``), the bit-width ``b = W[argmax_i w_i]``
    (Eq. 15; 1 without BAS), the levels ``I(tau; b)`` of the active entries (Eq. 13) and the learned scale
    ``softplus(kappa)`` that multiplies them when the vector is rebuilt. ``tau`` is flat."""
    mask = gate(tau, r, s_pos, s_neg, rho) > 0.5 if fixed_mask is None else fixed_mask
    if cfg.variant == "lgs":  # T-Switch B-Approx on the learned mask: sign bit and Eq. 3 knob
        levels = (tau[mask] > 0).to(torch.long)
        return LearnedModule(mask, 1, levels, knob(tau[mask]), -2.0, 2.0)
    bits = BIT_WIDTHS[int(w.argmax())] if cfg.variant in ("lgs+bas", "bas") else 1
    levels = quant_index(tau[mask], r, bits, cfg.quantizer)
    return LearnedModule(mask, bits, levels, float(F.softplus(kappa)), float(-r.vn_max), float(quant_step(r, bits)))


# ----------------------------------------------------------------------------------------------------------------
# Storage and the merged model


def to_sparse_codes(modules: Mapping[str, LearnedModule], shapes: Mapping[str, torch.Size]) -> dict[str, SparseCodes]:
    return {
        k: SparseCodes(tuple(shapes[k]), m.mask.reshape(-1).to(torch.bool), m.levels.to(torch.uint8), m.bits)
        for k, m in modules.items()
    }


def side_table(modules: Mapping[str, LearnedModule]) -> Tensor:
    """[L, 3] float32: (scale, offset, step) per module, in the switch's module order."""
    return torch.tensor([[m.scale, m.offset, m.step] for m in modules.values()], dtype=torch.float32)


def rebuild_task_vector(codes: Mapping[str, SparseCodes], side: Tensor) -> StateDict:
    """tau~ = scale * M_hard * Q(tau; b), from reloaded codes and the side table only."""
    out: StateDict = {}
    for i, (k, c) in enumerate(codes.items()):
        scale, offset, step = side[i].tolist()
        flat = torch.zeros(c.n, dtype=torch.float32)
        flat[c.mask] = scale * dequantize(c.codes.long(), torch.tensor(offset), torch.tensor(step))
        out[k] = flat.reshape(c.shape)
    return out


def encoded_bytes(codec: str, value: Any) -> int:
    from benchmark.storage import get_codec

    parts, _ = get_codec(codec).encode(value)
    return sum(t.numel() * t.element_size() for t in parts.values())


def pick_codec(choice: str, codes: Mapping[str, SparseCodes]) -> str:
    """``auto``: the smaller of SASS and the entropy codec for this task's switch, measured in encoded bytes."""
    if choice != "auto":
        return choice
    from benchmark.registry import CODECS

    candidates = [c for c in ("sass", "entropy") if c in CODECS]
    if not candidates:
        return "packbits"
    return min(candidates, key=lambda c: encoded_bytes(c, codes))


def switch_summary(codes: Mapping[str, Mapping[str, SparseCodes]]) -> dict[str, Any]:
    """Learned per-module sparsity and bit-width, per task, and their averages (for the record)."""
    per_task = {}
    for t, mods in codes.items():
        n = sum(c.n for c in mods.values())
        nnz = sum(c.nnz for c in mods.values())
        per_task[t] = {
            "sparsity": 1 - nnz / max(n, 1),
            "mean_bits": sum(c.bits * c.nnz for c in mods.values()) / max(nnz, 1),
            "modules": {k: {"sparsity": 1 - c.nnz / max(c.n, 1), "bits": c.bits} for k, c in mods.items()},
        }
    return per_task


class FlexSwitchModel(TaskConditionedModel):
    def __init__(self, pretrained: StateDict, vectors: Mapping[str, StateDict], summary: dict[str, Any]):
        self._pre = pretrained
        self._vec = vectors
        self._summary = summary

    def weights(self, task: str) -> StateDict:
        return {k: self._pre[k] + self._vec[task][k] for k in self._pre}

    def extra_metrics(self) -> dict[str, Any]:
        return {"flexswitch": self._summary}

    def write_figures(self, directory: Any, stem: str) -> list[Any]:
        return [heatmap(self._summary, directory, stem)]


def heatmap(summary: Mapping[str, Any], directory: Any, stem: str) -> Any:
    """Per-module learned sparsity and bit-width per task, in the style of the paper's Fig. 4 (a byte-stable PNG)."""
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [t for t in summary if isinstance(summary[t], dict) and "modules" in summary[t]]
    modules = list(summary[tasks[0]]["modules"])
    sp = torch.tensor([[summary[t]["modules"][m]["sparsity"] for t in tasks] for m in modules])
    bits = torch.tensor([[float(summary[t]["modules"][m]["bits"]) for t in tasks] for m in modules])
    h = max(3.0, 0.12 * len(modules) + 1.5)
    fig, axes = plt.subplots(1, 2, figsize=(4 + 0.9 * len(tasks), h), sharey=True)
    for ax, data, title, cmap in ((axes[0], sp, "sparsity", "viridis"), (axes[1], bits, "bit-width", "magma")):
        im = ax.imshow(data.numpy(), aspect="auto", cmap=cmap, interpolation="nearest")
        ax.set_xticks(range(len(tasks)), tasks, rotation=60, ha="right", fontsize=7)
        ax.set_title(title, fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.05)
    axes[0].set_yticks(range(len(modules)), modules, fontsize=max(3, 7 - len(modules) // 40))
    fig.tight_layout()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{stem}-flexswitch.png"
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)
    return path


FLEX_PARAMS = [
    Param("loss", str, "kl", "performance-preservation loss: KL (Eq. 9), MSE (Eq. 10) or CKA (Eq. 11)", choices=LOSSES),
    Param("lam", float, 0.3, "lambda, weight of the performance-preservation loss (Eq. 14; Table I)", lo=0.0),
    Param("steps", int, 500, "Adam steps per task", lo=0),
    Param("batch_size", int, 32, "exemplars per step", lo=1),
    Param("n_exemplars", int, 100, "unlabeled exemplars per task (train split)", lo=1),
    Param("lr_lgs", float, 0.05, "Adam lr of the LGS parameters (s+, s-, kappa)", lo=0.0),
    Param("lr_bas", float, 0.1, "Adam lr of the BAS bit-width logits", lo=0.0),
    Param("decay", float, 0.9, "rho and omega are multiplied by this every decay_every steps", lo=0.0, hi=1.0),
    Param("decay_every", int, 10, "steps between temperature decays", lo=1),
    Param("variant", str, "lgs+bas", "component ablation (Table XI)", choices=VARIANTS),
    Param("alpha", float, 0.7, "P-Spar sparsity for variant=bas", lo=0.0, hi=1.0),
    Param("quantizer", str, "uniform", "Eq. 13 bins: uniform (intent) or paper (as printed)", choices=("uniform", "paper")),
    Param("codec", str, "auto", "switch codec; auto = the smaller of sass and entropy", choices=SWITCH_CODECS),
]


#: FlexSwitch / Auto-FlexSwitch's defaults, each one table's setting as a whole. Plain defaults (every kind but
#: detection): KL with lambda = 0.3, Auto-FlexSwitch+KL's setting on ViT-B/32 and ViT-L/14 (Tables III and IV)
#: and inside Table I's KL grid; Adam, lrs, 500 steps, batch 32, N = 100 and the temperature schedule of Sec. IV-B
#: (the Fig. 8 setting). Detection: MSE with lambda = 0.5, the one setting Table VII reports on DETR-R50
#: ("Auto-FlexSwitch+MSE (lambda = 0.5)"; Table VI gives no other). NLU keeps the plain defaults: Tables IX
#: (RoBERTa, KL lambda = 0.5) and X (Mamba, KL lambda = 5) disagree, so no one setting is "the NLU setting".
FLEX_KIND_DEFAULTS = {
    "detection": KindDefaults({"loss": "mse", "lam": 0.5},
                              "auto-flexswitch.txt Table VII, DETR-R50: Auto-FlexSwitch+MSE (λ = 0.5)"),
}


def flex_config(params: Mapping[str, Any]) -> FlexConfig:
    names = set(FlexConfig.__dataclass_fields__)
    return FlexConfig(**{k: v for k, v in params.items() if k in names})


def learn_switches(pool: Pool, params: Mapping[str, Any], arts: Artifacts, progress: bool = True) -> dict[str, Any]:
    """Learn and add every task's switch to ``arts``; returns the training summary (final losses per task)."""
    cfg = flex_config(params)
    shapes = {k: v.shape for k, v in pool.pretrained.items()}
    history = {}
    for ti, task in enumerate(pool.tasks):
        modules, hist = learn_task_switch(pool, task, cfg, pool.generator(salt=1000 + ti), progress)
        codes = to_sparse_codes(modules, shapes)
        arts.add(f"switch/{task}", codes, codec=pick_codec(params["codec"], codes))
        arts.add(f"side/{task}", side_table(modules), codec="tensor")
        history[task] = {k: v[-1] if v else None for k, v in hist.items()}
    return history


def load_switches(artifacts: Mapping[str, Any], tasks: Sequence[str]) -> tuple[dict[str, StateDict], dict[str, Any]]:
    vectors = {t: rebuild_task_vector(artifacts[f"switch/{t}"], artifacts[f"side/{t}"]) for t in tasks}
    summary = switch_summary({t: artifacts[f"switch/{t}"] for t in tasks})
    return vectors, summary


@METHODS.register(
    "flexswitch",
    summary="Task-conditioned: learned per-module sparsity (LGS), bit-width (BAS), stored with SASS or entropy coding.",
    paper="Auto-FlexSwitch (auto-flexswitch.txt), Sec. III-C, Eq. 6-17",
    params=FLEX_PARAMS,
    kind_defaults=FLEX_KIND_DEFAULTS,
    paper_rows=("FlexSwitch+{loss}",),
    order=180,
)
class FlexSwitch(Method):
    whole_models = True  # runs forwards of the fine-tuned models
    kind = "task_conditioned"

    def merge(self, pool: Pool) -> Artifacts:
        arts = Artifacts()
        learn_switches(pool, self.params, arts, pool.progress)
        return arts

    def load(self, artifacts: Mapping[str, Any], pretrained: StateDict, tasks: Sequence[str]) -> Merged:
        vectors, summary = load_switches(artifacts, tasks)
        return FlexSwitchModel(pretrained, vectors, summary)
