"""RoBERTa-base on the ``glue7`` suite (``roberta_base``). The machinery is :mod:`backbones._text`'s; read its
docstring for the tiny recipe, the heads and ModelOps.

paper
    ``roberta-base`` (``RobertaModel``, no pooler) and the GLUE fine-tuned ``RobertaForSequenceClassification``
    checkpoints of DARE (Yu et al. 2024), ``vanillaOVO/roberta_base_glue_ckpts`` (``<task>/roberta-base_lr*``),
    which EMR-Merging, Twin-Merging and the switch papers merge ("publicly available RoBERTa fine-tuning weights",
    auto-flexswitch.txt Sec. IV-A3) -- :func:`backbones._text_paper.load_roberta_paper`. Mergeable: every
    ``roberta.*`` parameter (embeddings and the 12 layers); each task keeps its own ``RobertaClassificationHead``
    (``dense`` + ``out_proj`` on the ``<s>`` state), never merged.

tiny / micro
    ``RobertaModel`` at a small ``RobertaConfig`` (:data:`CONFIGS`) over the suite's vocabulary; pooled embedding =
    the ``[CLS]`` (first) token's state, as ``RobertaClassificationHead`` reads it; pretraining objective = masked
    LM (RoBERTa's own) + the contrastive term of :mod:`backbones._text`.
"""
from __future__ import annotations

from typing import Any

from backbones._text import TextBackbone, TextEncoder, TextRecipe
from benchmark.registry import BACKBONES

__all__ = ["RobertaBase", "CONFIGS", "RECIPES", "build_roberta"]

# transformers RobertaConfig fields per generated profile (vocab size and pad id come from the suite)
CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128,
                 hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1),
    "micro": dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                  hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1),
}

RECIPES: dict[str, TextRecipe] = {
    "tiny": TextRecipe(pretrain_steps=400, pretrain_batch=64, pretrain_lr=1e-3,
                       finetune_steps=200, finetune_batch=32, finetune_lr=1e-3, finetune_wd=0.0,
                       head_shots=1000, head_steps=300, head_lr=1e-2, distill_inputs=2000, distill_batch=32, distill_weight=1.0),
    "micro": TextRecipe(pretrain_steps=6, pretrain_batch=16, pretrain_lr=1e-3,
                        finetune_steps=4, finetune_batch=8, finetune_lr=1e-3, finetune_wd=0.0,
                        head_shots=8, head_steps=20, head_lr=1e-2, distill_inputs=32, distill_batch=8, distill_weight=10.0),
}


def build_roberta(config: dict[str, Any], vocab_size: int, pad_id: int, max_len: int) -> TextEncoder:
    """A ``RobertaModel`` (no pooler) in a :class:`TextEncoder`: first-token pooling, parameters ``roberta.*``.
    Positions start after ``pad_id`` (RoBERTa's convention), so ``max_position_embeddings = max_len + pad_id + 1``."""
    from transformers import RobertaConfig, RobertaModel

    cfg = RobertaConfig(vocab_size=vocab_size, pad_token_id=pad_id, max_position_embeddings=max_len + pad_id + 1,
                        type_vocab_size=1, **config)
    cfg._attn_implementation = "sdpa"
    return TextEncoder(RobertaModel(cfg, add_pooling_layer=False), "roberta", "first")


@BACKBONES.register(
    "roberta_base",
    summary="RoBERTa-base text encoder (transformers), per-task classification heads; tiny: in-house 4-layer "
            "RoBERTa (MLM + contrastive pretraining) with frozen linear-probe heads",
    paper="Liu et al. 2019 (RoBERTa); GLUE checkpoints of Yu et al. 2024 (DARE, vanillaOVO/roberta_base_glue_ckpts)",
    suites=("glue7",),
    task_kind="nlu",
    default_suite="glue7",
)
class RobertaBase(TextBackbone):
    model = "roberta_base"
    preload_modules = ("transformers.models.roberta.modeling_roberta",)
    lm = "mlm"
    configs = CONFIGS
    recipes = RECIPES

    def new_encoder(self, vocab_size: int) -> TextEncoder:
        return build_roberta(self.config, vocab_size, self.suite.pad_id, self.suite.seq_len)

    def model_parts(self) -> tuple:
        return (build_roberta,)

    def _load_paper(self) -> Any:
        from backbones._text_paper import load_roberta_paper

        return load_roberta_paper(self.tasks, cache=self._cache())
