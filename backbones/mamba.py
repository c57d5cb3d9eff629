"""Mamba-130M on the ``glue7`` suite (``mamba_130m``). The machinery is :mod:`backbones._text`'s; read its
docstring for the tiny recipe, the heads and ModelOps.

paper
    ``state-spaces/mamba-130m-hf`` (transformers ``MambaModel``) and per-task GLUE fine-tuned checkpoints, loaded by
    :func:`backbones._text_paper.load_mamba_paper`. No public GLUE fine-tunes of Mamba-130M exist (the papers
    fine-tune their own: AdamW, 4000 steps, batch 256, lr 5e-5), so they are read from local directories. Mergeable:
    every ``backbone.*`` parameter; each task keeps its own linear head on the pooled embedding, never merged.
    Pooling: the last non-pad token's state (after ``norm_f``) -- a causal model's only position that has read the
    whole input (sentence pairs are concatenated by the GPT-NeoX tokenizer, right-padded).

tiny / micro
    ``MambaModel`` at a small ``MambaConfig`` (:data:`CONFIGS`) over the suite's vocabulary; pretraining objective =
    causal LM (Mamba's own) + the contrastive term of :mod:`backbones._text`. The tiny config is narrower (32) and
    its batches smaller than RoBERTa's because the CPU path is expensive to *train*: the reference selective scan
    loops over positions and indexes ``[B, d_inner, L, state]`` tensors, whose backward materializes one such
    zero tensor per position (cost ~ B * d_inner * state * L^2; measured 3.3 s per step at width 64, state 8,
    batch 128 x 2 views, against 0.35 s for the 64-wide RoBERTa).

Kernels
    transformers' Mamba uses the ``mamba-ssm`` / ``causal-conv1d`` kernels when those packages are importable and
    its pure-PyTorch reference path otherwise (a sequential selective scan; slower, same numbers). In transformers
    5.x the choice is made when ``modeling_mamba`` is imported, *not* per device, so with the packages installed a
    CPU forward would call CUDA-only kernels. :func:`torch_path` therefore swaps the reference implementations in
    for every forward that does not run on CUDA (and only when a kernel package is importable); on CUDA with the
    packages present the kernels run untouched. Nothing here forces either path otherwise.
"""
from __future__ import annotations

import contextlib
import importlib.util
import inspect
from typing import Any, Iterator

import torch

from backbones._text import TextBackbone, TextEncoder, TextRecipe
from benchmark.registry import BACKBONES

__all__ = ["Mamba130M", "CONFIGS", "RECIPES", "build_mamba", "torch_path", "KERNEL_FUNCTIONS"]

# transformers MambaConfig fields per generated profile (vocab size and pad id come from the suite)
CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": dict(hidden_size=32, num_hidden_layers=4, state_size=4, expand=2, conv_kernel=4),
    "micro": dict(hidden_size=16, num_hidden_layers=1, state_size=4, expand=2, conv_kernel=4),
}

RECIPES: dict[str, TextRecipe] = {
    "tiny": TextRecipe(pretrain_steps=200, pretrain_batch=32, pretrain_lr=2e-3,
                       finetune_steps=200, finetune_batch=16, finetune_lr=2e-3, finetune_wd=0.0,
                       head_shots=1000, head_steps=300, head_lr=1e-2, distill_inputs=2000, distill_batch=16, distill_weight=1.0),
    "micro": TextRecipe(pretrain_steps=6, pretrain_batch=16, pretrain_lr=1e-3,
                        finetune_steps=4, finetune_batch=8, finetune_lr=1e-3, finetune_wd=0.0,
                        head_shots=8, head_steps=20, head_lr=1e-2, distill_inputs=32, distill_batch=8, distill_weight=10.0),
}

#: the module-level functions of transformers' modeling_mamba that may be bound to mamba-ssm / causal-conv1d kernels
KERNEL_FUNCTIONS = ("mamba_inner_fn", "mamba_selective_scan", "mamba_selective_state_update", "causal_conv1d_fn",
                    "causal_conv1d_update")
KERNEL_PACKAGES = ("mamba_ssm", "causal_conv1d", "kernels")


def kernels_importable() -> bool:
    return any(importlib.util.find_spec(p) is not None for p in KERNEL_PACKAGES)


@contextlib.contextmanager
def torch_path(device: torch.device) -> Iterator[None]:
    """Run transformers' Mamba on its pure-PyTorch reference functions unless ``device`` is CUDA (see the module
    docstring). A no-op on CUDA and when no kernel package is importable."""
    if device.type == "cuda" or not kernels_importable():
        yield
        return
    from transformers.models.mamba import modeling_mamba as mm

    swapped = {}
    for name in KERNEL_FUNCTIONS:
        fn = getattr(mm, name, None)
        if fn is not None:
            ref = inspect.unwrap(fn)  # the wrappers keep the reference function as __wrapped__
            if ref is not fn:
                swapped[name] = fn
                setattr(mm, name, ref)
    try:
        yield
    finally:
        for name, fn in swapped.items():
            setattr(mm, name, fn)


def build_mamba(config: dict[str, Any], vocab_size: int, pad_id: int) -> TextEncoder:
    """A ``MambaModel`` in a :class:`TextEncoder`: last-non-pad-token pooling, parameters ``backbone.*``."""
    from transformers import MambaConfig, MambaModel

    cfg = MambaConfig(vocab_size=vocab_size, pad_token_id=pad_id, use_mambapy=False, **config)
    return TextEncoder(MambaModel(cfg), "backbone", "last", use_cache=False)


@BACKBONES.register(
    "mamba_130m",
    summary="Mamba-130M state-space text encoder (transformers; mamba-ssm kernels on CUDA when installed), per-task "
            "linear heads; tiny: in-house 4-layer Mamba (causal LM + contrastive pretraining), frozen linear-probe heads",
    paper="Gu & Dao 2023 (Mamba), state-spaces/mamba-130m-hf; auto-flexswitch.txt Table X",
    suites=("glue7",),
    task_kind="nlu",
    default_suite="glue7",
)
class Mamba130M(TextBackbone):
    model = "mamba_130m"
    preload_modules = ("transformers.models.mamba.modeling_mamba",)
    lm = "clm"
    configs = CONFIGS
    recipes = RECIPES

    def new_encoder(self, vocab_size: int) -> TextEncoder:
        return build_mamba(self.config, vocab_size, self.suite.pad_id)

    def model_parts(self) -> tuple:
        return (build_mamba,)

    def forward_context(self) -> Any:
        return torch_path(self.device)

    def _load_paper(self) -> Any:
        from backbones._text_paper import load_mamba_paper

        return load_mamba_paper(self.tasks, cache=self._cache())
