"""Shared machinery of the text backbones (``roberta_base``, ``mamba_130m``) on the ``glue7`` suite.

One code path for every profile
-------------------------------
The adapter holds one :class:`TextEncoder`: a transformers body (``RobertaModel`` / ``MambaModel``) kept under the
attribute name its sequence-classification checkpoints use (``roberta.*``, ``backbone.*``), mapping token ids and
an attention mask to a pooled embedding ``[B, e]`` -- the hidden state of the first token (``<s>`` / ``[CLS]``,
what ``RobertaClassificationHead`` reads) or of the last non-pad token (causal models: the only position that has
seen the whole input). Its *mergeable* tensors are all the body's parameters; heads are per task and never merged.
Every forward runs ``torch.func.functional_call(encoder, weights, ...)``, so it is differentiable with respect to
``weights``. Padding is trimmed to the longest input of each batch (right padding: the positions, and a causal
model's outputs, do not change).

Heads (:func:`apply_head`), a dict of tensors per task:

* paper RoBERTa: ``dense.*`` + ``out_proj.*`` -- ``RobertaClassificationHead`` (``out_proj(tanh(dense(x)))``);
* paper Mamba: ``out_proj.*`` -- a linear layer on the pooled embedding;
* tiny / micro: ``probe.weight``, ``probe.bias``, a linear layer on the *normalized* embedding (below).

tiny / micro (in-house, cached)
    The same transformers classes at small configs, over the suite's word-level vocabulary. Three cached stages,
    as :mod:`backbones.clip_vit` does for images, for the same reasons (read its docstring):

    1. **label-free pretraining** on the unlabeled union of the tasks' train inputs: the model's own language-model
       objective -- masked LM for RoBERTa, causal LM for Mamba (the output layer is tied to the input embeddings, so
       no extra tensors) -- on 15 %-masked views, *plus* a SimCSE-style InfoNCE term (Gao et al. 2021) between the
       pooled embeddings of two differently masked views of each input. Why both: the LM objective alone trains
       token states, but leaves the pooled embedding (which a head reads) untrained -- with frozen heads the
       Pretrained row would be chance and fine-tuning would have to build sentence features from scratch. The
       contrastive term makes the pooled embedding a sentence representation, as CLIP's pretraining makes its
       image embedding one; the LM term teaches the words' roles, which the tasks' skills build on.
    2. **frozen heads**, fitted on the frozen pretrained model, so "Pretrained" is a meaningful row (the analogue
       of CLIP's zero-shot heads): a linear probe per task -- logistic regression on the normalized pretrained
       embeddings of up to ``head_shots`` labeled train inputs per class (``head_steps`` full-batch Adam steps
       from zero) -- kept frozen while fine-tuning, so every task's fine-tuning moves only the shared (mergeable)
       encoder. This is LP-FT (Kumar et al. 2022, "Fine-tuning can distort pretrained features"): probing first
       and then fine-tuning against the fixed probe distorts the pretrained features less than fine-tuning
       against a random head, which is what task vectors that add up need. CLIP-style class centroids do not
       work for text: sentences of different classes share almost all their content, so the centroids are nearly
       parallel and noise-dominated; fine-tuning against them reached 63-81 % on the easiest task (sentiment)
       where fine-tuning against the probe reaches 100 % (measured, 200 steps).
    3. **fine-tuning** of the whole encoder per task (AdamW, cosine schedule, cross-entropy through the frozen
       head) plus the embedding-preservation term of :mod:`backbones.clip_vit`: ``distill_weight`` times the mean
       cosine distance between the encoder's and the pretrained encoder's pooled embeddings of *generic* inputs
       (:func:`tasks.glue7.generic_sentences`: random sentences, questions and unrelated pairs of the language,
       none of them any task's). The weight is 1, not CLIP's 10: the generic sentences share the tasks' language
       (CLIP's generic images do not share its tasks' domains), so holding them fixed also holds the task inputs.
       Measured on roberta_base, seed 0: with weight 10 fine-tuning barely moved (Individual 64.3 vs Pretrained
       55.2; sentiment 55.6 %, which 200 steps against the same head solve to 100 % without the term); with
       weight 1, Individual 72.9, Weight Averaging 58.5, Task Arithmetic (0.3) 62.5, and pairwise task-vector
       cosines fell from 0.66 to 0.17.

ModelOps (:class:`TextOps`, on :class:`backbones._base.BaseOps`): inputs are ``int64 [N, L]`` token ids
right-padded with the suite's pad id (generated profiles) or lists of ``(text_a, text_b | None)`` pairs (paper),
which the adapter's tokenizer encodes. ``features`` (f_ex) is the pooled embedding; ``linear_inputs`` hooks every
``nn.Linear`` whose weight is mergeable and keeps the rows of real (non-pad) tokens only.
"""
from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from backbones._base import BaseOps, PreparedBackbone
from backbones._tiny import EpochSampler, TinyBuild, cosine_lr, deterministic, fit, stable_hash
from benchmark.cache import code_version
from benchmark.contract import StateDict
from benchmark.errors import UserError

__all__ = ["TextEncoder", "TextBackbone", "TextOps", "TextRecipe", "apply_head", "mask_tokens", "PAPER_MAX_LENGTH"]

PAPER_MAX_LENGTH = 128  # tokens per (pair of) sentence(s) on the paper profile, as DARE's GLUE loader truncates


@dataclass(frozen=True)
class TextRecipe:
    """How the in-house checkpoints are made (part of every cache key)."""

    pretrain_steps: int
    pretrain_batch: int  # inputs per step (two masked views each)
    pretrain_lr: float
    finetune_steps: int
    finetune_batch: int
    finetune_lr: float
    finetune_wd: float
    head_shots: int  # labeled train inputs per class the frozen linear-probe heads are fitted on
    head_steps: int  # full-batch Adam steps of the probe (logistic regression on normalized embeddings)
    head_lr: float
    distill_inputs: int  # generic inputs the fine-tuning keeps the pretrained embeddings on
    distill_batch: int
    distill_weight: float  # beta of the embedding-preservation term (0: plain fine-tuning)
    pretrain_mask: float = 0.15  # share of real tokens masked in each view
    pretrain_lm_weight: float = 1.0  # weight of the LM term beside the contrastive one
    pretrain_temperature: float = 0.1  # InfoNCE temperature
    warmup: float = 0.1


# ----------------------------------------------------------------------------------------------------------------
# The encoder


class TextEncoder(nn.Module):
    """A transformers body under ``attr`` (``roberta`` / ``backbone``): ``(input_ids, attention_mask) -> [B, e]``.

    ``pooling``: ``"first"`` (the first token's state) or ``"last"`` (the last non-pad token's state; right
    padding)."""

    def __init__(self, body: nn.Module, attr: str, pooling: str, **call_kwargs: Any):
        super().__init__()
        if pooling not in ("first", "last"):
            raise ValueError(pooling)
        setattr(self, attr, body)
        self.attr = attr
        self.pooling = pooling
        self.call_kwargs = dict(call_kwargs)  # extra keyword arguments of every body call (Mamba: use_cache=False)

    @property
    def body(self) -> nn.Module:
        return getattr(self, self.attr)

    def hidden(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Last hidden states ``[B, L, e]``."""
        return self.body(input_ids=input_ids, attention_mask=attention_mask, **self.call_kwargs).last_hidden_state

    def pool(self, hidden: Tensor, attention_mask: Tensor) -> Tensor:
        if self.pooling == "first":
            return hidden[:, 0]
        last = attention_mask.long().sum(1).clamp(min=1) - 1
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.pool(self.hidden(input_ids, attention_mask), attention_mask)

    def token_logits(self, hidden: Tensor) -> Tensor:
        """Language-model logits over the vocabulary through the (tied) input embeddings."""
        return hidden @ self.body.get_input_embeddings().weight.T


def apply_head(head: Mapping[str, Tensor], feats: Tensor) -> Tensor:
    """A task head's logits for pooled embeddings ``[B, e]`` (see the module docstring for the three kinds)."""
    if "probe.weight" in head:
        return F.normalize(feats, dim=-1) @ head["probe.weight"].T + head["probe.bias"]
    x = feats
    if "dense.weight" in head:
        x = torch.tanh(F.linear(x, head["dense.weight"], head.get("dense.bias")))
    return F.linear(x, head["out_proj.weight"], head.get("out_proj.bias"))


def mask_tokens(ids: Tensor, real: Tensor, share: float, mask_id: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """A view of ``ids`` with ``share`` of the real, non-special tokens (``real``) replaced by ``mask_id``; returns
    the view and where it was masked. Specials (ids below ``mask_id``) are never masked."""
    pick = (torch.rand(ids.shape, generator=g) < share) & real & (ids > mask_id)
    return torch.where(pick, torch.full_like(ids, mask_id), ids), pick


# ----------------------------------------------------------------------------------------------------------------
# ModelOps


class TextOps(BaseOps):
    """Data-dependent access to a text adapter (:class:`benchmark.contract.ModelOps`). ``exemplars``,
    ``test_inputs``, ``num_examples`` and ``slice`` are :class:`~backbones._base.BaseOps`' (token-id tensors
    and lists of text pairs slice the same way as image tensors and image lists)."""

    bb: "TextBackbone"

    def _embed(self, weights: Mapping[str, Tensor] | None, inputs: Any) -> Tensor:
        ids, mask = self.bb.tokens(inputs)
        return self._call(weights, ids, mask)

    def _call(self, weights: Mapping[str, Tensor] | None, ids: Tensor, mask: Tensor) -> Tensor:
        w = self._weights(weights)
        with self.bb.forward_context():
            if w is None:
                return self.bb.encoder(ids, mask)
            return torch.func.functional_call(self.bb.encoder, w, (ids, mask), strict=False)

    def features(self, weights: StateDict | None, inputs: Any) -> Tensor:
        """f_ex: the pooled embedding ``[B, e]`` (what the heads read)."""
        return self._embed(weights, inputs)

    def logits(self, task: str, weights: StateDict | None, inputs: Any) -> Tensor:
        emb = self._embed(weights, inputs)
        head = {k: v.to(device=emb.device, dtype=emb.dtype) for k, v in self.bb.head(task).items()}
        return apply_head(head, emb)

    def linear_inputs(self, weights: StateDict | None, inputs: Any) -> dict[str, Tensor]:
        """Inputs ``[N, d_in]`` of every ``nn.Linear`` whose weight is mergeable, real tokens only (pads dropped),
        keyed by the weight's name. Weights used without calling their module (Mamba's ``dt_proj``) are absent."""
        ids, mask = self.bb.tokens(inputs)
        keep = mask.bool()

        def real_tokens(x: Tensor) -> Tensor:
            return x[keep] if x.ndim == 3 and tuple(x.shape[:2]) == tuple(keep.shape) else x

        return self.capture_linear_inputs(self.bb.encoder, lambda: self._call(weights, ids, mask), real_tokens)


# ----------------------------------------------------------------------------------------------------------------
# The adapter


def _version(stage: str, parts: tuple) -> str:
    """Source of what shapes a cached stage; ``parts``: the subclass's model-building functions."""
    common = (TextEncoder, *parts, cosine_lr, deterministic, stable_hash, fit, TinyBuild, TextBackbone.tokens,
              TextBackbone.check_suite, TextBackbone.load_pretrained)
    if stage == "pretrain":
        return code_version(*common, mask_tokens, TextBackbone._build_pretrain, TextBackbone._lm_loss)
    if stage == "heads":
        return code_version(*common, TextBackbone._build_heads, apply_head)
    if stage == "finetune":
        return code_version(*common, apply_head, EpochSampler, TextBackbone._build_finetune, TextBackbone._distill_set)
    return code_version(sys.modules[__name__], *parts)


class TextBackbone(TinyBuild, PreparedBackbone):
    """See the module docstring. Subclasses set :attr:`model`, :attr:`configs`, :attr:`recipes`, :attr:`lm`
    (``"mlm"`` / ``"clm"``) and implement :meth:`new_encoder`, :meth:`model_parts` and :meth:`_load_paper`."""

    model: str = ""
    lm: str = "mlm"
    ops_class = TextOps

    def __init__(self, profile: str, suite: Any, seed: int = 0, cache: Any = None, progress: bool = True):
        super().__init__(profile, suite, seed, cache, progress)
        self._distill: tuple[Tensor, Tensor, Tensor] | None = None
        self.encoder: TextEncoder
        self.tokenizer: Any = None
        self.pad_id = 0

    # -- to override
    def new_encoder(self, vocab_size: int) -> TextEncoder:
        raise NotImplementedError

    def model_parts(self) -> tuple:
        return ()

    def _load_paper(self) -> Any:
        raise NotImplementedError

    def forward_context(self) -> Any:
        """A context every forward runs in (Mamba: keep the pure-PyTorch path off CUDA)."""
        import contextlib

        return contextlib.nullcontext()

    def versions(self) -> dict[str, str]:
        return {self.model: _version("all", self.model_parts())}

    # -- inputs
    def tokens(self, inputs: Any) -> tuple[Tensor, Tensor]:
        """``(input_ids, attention_mask)`` on the device, padding trimmed to the batch's longest input. Token-id
        tensors are taken as they are (pad = :attr:`pad_id`); lists of ``(text_a, text_b | None)`` pairs (or of
        strings) go through :attr:`tokenizer`."""
        if isinstance(inputs, Tensor):
            ids = inputs.long()
            mask = (ids != self.pad_id).long()
        else:
            if self.tokenizer is None:
                raise UserError(f"{self.model} ({self.profile}) takes token ids, got {type(inputs).__name__}")
            pairs = [p if isinstance(p, (tuple, list)) else (p, None) for p in inputs]
            a = [p[0] for p in pairs]
            b = [p[1] for p in pairs]
            kw = dict(truncation=True, max_length=PAPER_MAX_LENGTH)
            if all(x is None for x in b) or all(x is not None for x in b):
                enc = self.tokenizer(a, None if b[0] is None else b, padding=True, return_tensors="pt", **kw)
            else:  # singles and pairs mixed: encode one by one, then pad
                enc = self.tokenizer.pad([self.tokenizer(x, y, **kw) for x, y in zip(a, b)], return_tensors="pt")
            ids, mask = enc["input_ids"], enc["attention_mask"]
        if ids.shape[1] > 0:
            width = max(1, int(mask.sum(1).max()))
            ids, mask = ids[:, :width], mask[:, :width]
        return ids.to(self.device), mask.to(self.device)

    # -- paper profile
    def _prepare_paper(self) -> None:
        paper = self._load_paper()
        self.encoder = paper.encoder
        self.tokenizer = paper.tokenizer
        self.pad_id = int(paper.pad_id)
        self.mergeable_names = [n for n, _ in self.encoder.named_parameters()]
        self._pretrained = {k: paper.pretrained[k].float() for k in self.mergeable_names}
        self._finetuned = {t: self.streamed(paper.finetuned[t]) for t in self.tasks}
        self.heads = {t: {k: v.detach().float().to(self.device) for k, v in paper.heads[t].items()}
                      for t in self.tasks}
        self._checkpoints = dict(paper.checkpoints)

    # -- tiny / micro profiles (the stages of backbones._tiny.TinyBuild)
    def check_suite(self) -> None:
        if self.suite.vocab is None:
            raise UserError(f"{self.model} ({self.profile}) needs a generated suite with a vocabulary")
        self.pad_id = int(self.suite.pad_id)

    def stage_config(self, stage: str) -> dict[str, Any]:
        prefixes = {"pretrain": ("pretrain",), "heads": ("head",), "finetune": ("finetune", "distill")}[stage]
        return {"model": self.model, "profile": self.profile, "config": self.config, "data": self.suite.data_key(),
                "tasks": self.tasks, "lm": self.lm,
                "recipe": {k: v for k, v in asdict(self.recipe).items()
                           if k.startswith(prefixes) or (k == "warmup" and stage != "heads")}}

    def stage_version(self, stage: str) -> str:
        return _version(stage, self.model_parts())

    def load_pretrained(self, state: dict[str, Tensor]) -> None:
        self.encoder = self.new_encoder(len(self.suite.vocab))
        self.encoder.load_state_dict(state, strict=True)
        self.encoder.eval()  # no dropout while the heads and the preservation anchors are computed
        self.mergeable_names = [n for n, _ in self.encoder.named_parameters()]
        self._pretrained = {k: state[k].float() for k in self.mergeable_names}

    def load_heads(self, flat: dict[str, Tensor]) -> dict[str, Any]:
        return {t: {k.split("/", 1)[1]: v.float() for k, v in flat.items() if k.split("/", 1)[0] == t}
                for t in self.tasks}

    def _lm_loss(self, enc: TextEncoder, hidden: Tensor, ids: Tensor, view: Tensor, picked: Tensor,
                 mask: Tensor) -> Tensor:
        """Masked LM (predict the masked tokens) or causal LM (predict every next real token from the masked
        prefix), through the tied embeddings."""
        if self.lm == "mlm":
            if not picked.any():
                return hidden.sum() * 0
            return F.cross_entropy(enc.token_logits(hidden[picked]), ids[picked])
        nxt = mask[:, 1:].bool()
        return F.cross_entropy(enc.token_logits(hidden[:, :-1][nxt]), ids[:, 1:][nxt])

    def _build_pretrain(self, tmp: Path) -> None:
        from safetensors.torch import save_file

        r = self.recipe
        # the unlabeled union of the tasks' train inputs; their labels are never read
        data = torch.cat([self.suite.load(t, "train").inputs for t in self.tasks])
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + 101)
        torch.manual_seed(self.seed)
        enc = self.new_encoder(len(self.suite.vocab))
        n = r.pretrain_batch
        positives = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])

        def step_loss() -> Tensor:
            ids, mask = self.tokens(data[torch.randint(len(data), (n,), generator=g)])
            ids, mask = ids.cpu(), mask.cpu()
            v1, p1 = mask_tokens(ids, mask.bool(), r.pretrain_mask, self.suite.mask_id, g)
            v2, p2 = mask_tokens(ids, mask.bool(), r.pretrain_mask, self.suite.mask_id, g)
            views, picked = torch.cat([v1, v2]), torch.cat([p1, p2])
            ids2, mask2 = torch.cat([ids, ids]), torch.cat([mask, mask])
            hidden = enc.hidden(views, mask2)
            z = F.normalize(enc.pool(hidden, mask2), dim=-1)
            sim = (z @ z.T / r.pretrain_temperature).fill_diagonal_(float("-inf"))
            loss = F.cross_entropy(sim, positives)
            if r.pretrain_lm_weight:
                loss = loss + r.pretrain_lm_weight * self._lm_loss(enc, hidden, ids2, views, picked, mask2)
            return loss

        enc.train()
        fit(enc.parameters(), step_loss, steps=r.pretrain_steps, lr=r.pretrain_lr, weight_decay=0.01, warmup=r.warmup,
            desc=f"pretrain {self.model} ({self.profile})", progress=self.progress, context=self.forward_context())
        enc.eval()
        save_file({k: v.detach().contiguous() for k, v in enc.state_dict().items()}, str(tmp / "pretrained.safetensors"))

    def _build_heads(self, tmp: Path) -> None:
        from safetensors.torch import save_file

        r = self.recipe
        out = {}
        with self.forward_context():
            for task in self.tasks:
                data = self.suite.load(task, "train")
                n_cls = len(data.classes or []) or int(data.targets.max()) + 1
                g = torch.Generator().manual_seed(self.seed * 1_000_003 + stable_hash(task) + 7)
                pick = torch.cat([(data.targets == c).nonzero().flatten()[
                    torch.randperm(int((data.targets == c).sum()), generator=g)[: r.head_shots]] for c in range(n_cls)])
                with torch.no_grad():
                    feats = torch.cat([F.normalize(self.encoder.cpu()(*[t.cpu() for t in self.tokens(
                        data.inputs[pick[i : i + 256]])]), dim=-1) for i in range(0, len(pick), 256)])
                y = data.targets[pick]
                w = torch.zeros(n_cls, feats.shape[1], requires_grad=True)
                b = torch.zeros(n_cls, requires_grad=True)
                opt = torch.optim.Adam([w, b], lr=r.head_lr)
                for _ in range(r.head_steps):  # full-batch logistic regression on the frozen features
                    loss = F.cross_entropy(feats @ w.T + b, y)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                out[f"{task}/probe.weight"] = w.detach().contiguous()
                out[f"{task}/probe.bias"] = b.detach().contiguous()
        save_file(out, str(tmp / "heads.safetensors"))

    def _build_finetune(self, task: str, tmp: Path) -> None:
        from safetensors.torch import save_file

        r = self.recipe
        data = self.suite.load(task, "train")
        x, y = data.inputs, data.targets
        head = {k: v.detach().cpu() for k, v in self.heads[task].items()}
        gen_ids, gen_mask, anchor = self._distill_set()
        torch.manual_seed(self.seed * 1_000_003 + stable_hash(task))
        enc = self.new_encoder(len(self.suite.vocab))
        enc.load_state_dict({k: v.detach().clone() for k, v in self.encoder.state_dict().items()}, strict=True)
        order = torch.Generator().manual_seed(self.seed * 1_000_003 + stable_hash(task) + 3)
        batches = EpochSampler(len(y), r.finetune_batch, order)

        def step_loss() -> Tensor:
            idx = batches.next()
            ids, mask = self.tokens(x[idx])
            loss = F.cross_entropy(apply_head(head, enc(ids.cpu(), mask.cpu())), y[idx])
            if r.distill_weight:
                j = torch.randint(len(gen_ids), (r.distill_batch,), generator=order)
                gi, gm = gen_ids[j], gen_mask[j]
                width = int(gm.sum(1).max())
                drift = 1 - (F.normalize(enc(gi[:, :width], gm[:, :width]), dim=-1) * anchor[j]).sum(-1)
                loss = loss + r.distill_weight * drift.mean()
            return loss

        enc.train()
        fit(enc.parameters(), step_loss, steps=r.finetune_steps, lr=r.finetune_lr, weight_decay=r.finetune_wd,
            warmup=r.warmup, desc=f"fine-tune {self.model} on {task}", progress=self.progress,
            context=self.forward_context())
        enc.eval()
        save_file({k: v.detach().contiguous() for k, v in enc.state_dict().items()}, str(tmp / "finetuned.safetensors"))

    def _distill_set(self) -> tuple[Tensor, Tensor, Tensor]:
        """The generic inputs (ids, mask) and their normalized pretrained embeddings; built once per adapter."""
        if self._distill is None:
            gen = self.suite.generic(self.recipe.distill_inputs, self.seed)
            ids = gen.long()
            mask = (ids != self.pad_id).long()
            with torch.no_grad(), self.forward_context():
                anchor = torch.cat([F.normalize(self.encoder.cpu()(ids[i : i + 256], mask[i : i + 256]), dim=-1)
                                    for i in range(0, len(ids), 256)])
            self._distill = (ids, mask, anchor)
        return self._distill

