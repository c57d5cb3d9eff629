"""Paper profile of the text backbones: RoBERTa-base and Mamba-130M with their per-task GLUE fine-tunes.

Both loaders return a :class:`PaperText`: one :class:`~backbones._text.TextEncoder`, the pretrained and per-task
fine-tuned weights as state dicts *of that module* (same keys, float32), a head per task (a dict of tensors for
:func:`backbones._text.apply_head`), the tokenizer, its pad id, and ``checkpoints`` (name -> sha256 of the weight
file; for a sharded checkpoint, the sha256 of its ``"<file> <sha256>"`` lines in file order).

Where the files come from: ``root`` (or ``$MERGE_BENCH_MODELS``) laid out as ``<root>/<hub id>``
(``save_pretrained`` output or ``huggingface-cli download <id> --local-dir <root>/<id>``). A checkpoint not found
there (or with no root) is taken from the Hub / HF cache (``huggingface_hub.snapshot_download``); if that fails too
(e.g. offline without a cached copy) a :class:`~benchmark.errors.UserError` says what is missing and where to put it.

RoBERTa (:func:`load_roberta_paper`)
    ``roberta-base`` loaded as ``RobertaModel`` without the pooler (``RobertaForSequenceClassification`` does not use
    it), and DARE's GLUE fine-tunes ``vanillaOVO/roberta_base_glue_ckpts``: one ``RobertaForSequenceClassification``
    directory per task, ``<ckpts>/<task>/roberta-base_lr<lr>`` (the learning rate DARE picked per task; any single
    ``roberta-base_lr*`` directory is taken, or ``<ckpts>/<task>`` itself when it holds a ``config.json``). Each
    fine-tune is loaded with transformers (so key renames between transformers versions are handled), its
    ``roberta.*`` weights become the task's fine-tuned state and its ``classifier.dense`` / ``classifier.out_proj``
    the task's head.

Mamba (:func:`load_mamba_paper`)
    ``state-spaces/mamba-130m-hf`` loaded as ``MambaModel`` (the checkpoint is a ``MambaForCausalLM``; its LM head
    is dropped). GLUE fine-tunes of Mamba-130M are not published, so each task's is read from a local directory,
    ``<ckpts>/<task>`` with ``ckpts`` = ``ckpts_root`` or ``$MERGE_BENCH_MAMBA_GLUE``: the ``save_pretrained`` output
    of the fine-tuned ``MambaModel`` (or ``MambaForCausalLM``) plus ``head.safetensors`` holding the task's linear
    head, ``out_proj.weight [C, e]`` and ``out_proj.bias [C]``. The tokenizer is the checkpoint's (GPT-NeoX), right
    padding; a missing pad token is set to the EOS token.

Memory: ``pretrained`` is the encoder's own tensors. With a ``cache`` (a :class:`benchmark.cache.Cache`), each
fine-tuned checkpoint is converted once into it (body and head, float32 safetensors) and its state streamed from
there, one tensor per access (a :class:`~benchmark.lazy_state.LazyState`); without one, the states are in RAM.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor

from backbones._base import HEAD_PREFIX, converted_finetuned
from backbones._text import TextEncoder
from benchmark.cache import sha256_file
from benchmark.errors import UserError

__all__ = ["PaperText", "load_roberta_paper", "load_mamba_paper", "ROBERTA_ID", "ROBERTA_GLUE_ID", "MAMBA_ID",
           "MODELS_ENV_VAR", "MAMBA_GLUE_ENV_VAR"]

ROBERTA_ID = "roberta-base"
ROBERTA_GLUE_ID = "vanillaOVO/roberta_base_glue_ckpts"
MAMBA_ID = "state-spaces/mamba-130m-hf"
MODELS_ENV_VAR = "MERGE_BENCH_MODELS"
MAMBA_GLUE_ENV_VAR = "MERGE_BENCH_MAMBA_GLUE"
_WEIGHT_FILES = ("*.json", "*.safetensors", "*.txt", "*.model", "*.bin")


@dataclass
class PaperText:
    encoder: TextEncoder
    tokenizer: Any
    pad_id: int
    pretrained: dict[str, Tensor]
    finetuned: dict[str, Mapping[str, Tensor]]  # a LazyState per task with a cache
    heads: dict[str, dict[str, Tensor]]
    checkpoints: dict[str, str] = field(default_factory=dict)


def _root(root: str | os.PathLike | None) -> Path | None:
    r = root if root is not None else os.environ.get(MODELS_ENV_VAR) or None
    return Path(r).expanduser() if r is not None else None


def resolve_checkpoint(hub_id: str, root: str | os.PathLike | None = None,
                       allow_patterns: Sequence[str] = _WEIGHT_FILES) -> Path:
    """``<root>/<hub_id>`` when it exists, else a Hub / HF-cache snapshot; a :class:`UserError` when neither."""
    base = _root(root)
    if base is not None and (base / hub_id).is_dir():
        return base / hub_id
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(hub_id, allow_patterns=list(allow_patterns)))
    except Exception as e:  # noqa: BLE001 -- offline, no cache, no access: the same advice
        where = f"{base / hub_id} does not exist, and " if base is not None else ""
        raise UserError(
            f"checkpoint {hub_id} not found: {where}the Hub / HF cache failed ({type(e).__name__}: {e}). Put it at "
            f"<root>/{hub_id} (save_pretrained or huggingface-cli download --local-dir) and pass root / set "
            f"${MODELS_ENV_VAR}"
        ) from e


def weights_sha256(directory: Path) -> str:
    """sha256 of a checkpoint directory's weight file, or of the ``"<file> <sha256>"`` lines of its shards."""
    files = sorted(directory.glob("*.safetensors")) or sorted(directory.glob("*.bin"))
    files = [f for f in files if f.name != "head.safetensors"]
    if not files:
        raise UserError(f"no weight file (*.safetensors / *.bin) in {directory}")
    if len(files) == 1:
        return sha256_file(files[0])
    lines = "".join(f"{f.name} {sha256_file(f)}\n" for f in files)
    return hashlib.sha256(lines.encode()).hexdigest()


def _params(encoder: TextEncoder) -> dict[str, Tensor]:
    """The encoder's own tensors: functional_call never writes them, so the pool can share them (no second copy)."""
    return {k: v.detach().float() for k, v in encoder.named_parameters()}


def _body_state(encoder: TextEncoder, body: torch.nn.Module, where: str) -> dict[str, Tensor]:
    """``body``'s parameters under ``encoder``'s names (``<attr>.<name>``); every encoder parameter must be there."""
    own = {f"{encoder.attr}.{k}": v for k, v in body.named_parameters()}
    want = [k for k, _ in encoder.named_parameters()]
    missing = [k for k in want if k not in own]
    if missing:
        raise UserError(f"{where} lacks {len(missing)} encoder weights (e.g. {missing[0]})")
    return {k: own[k].detach().float() for k in want}


def _finetuned(cache: Any, model: str, name: str, sha256: str, encoder: TextEncoder,
               read: Callable[[], dict[str, Tensor]]) -> tuple[Mapping[str, Tensor], dict[str, Tensor]]:
    """A task's (body state, head): converted once into the ``cache`` and streamed from there, or held in RAM
    without one (:func:`backbones._base.converted_finetuned`); the entry is keyed by the checkpoint's sha256."""
    keys = [k for k, _ in encoder.named_parameters()]
    config = {"model": model, "source": "hf", "checkpoint": name, "sha256": sha256, "keys": keys}
    return converted_finetuned(cache, config, read, keys)


def _roberta_task_dir(ckpts: Path, task: str) -> Path:
    d = ckpts / task
    cands = sorted(p for p in d.glob("roberta-base_lr*") if (p / "config.json").is_file())
    if len(cands) > 1:
        raise UserError(f"{d} holds several fine-tunes ({', '.join(p.name for p in cands)}); keep one")
    if cands:
        return cands[0]
    if (d / "config.json").is_file():
        return d
    raise UserError(f"no RoBERTa fine-tune for {task}: expected {d}/roberta-base_lr*/config.json or {d}/config.json")


def load_roberta_paper(tasks: Sequence[str], *, root: str | os.PathLike | None = None,
                       ckpts_root: str | os.PathLike | None = None, cache: Any = None) -> PaperText:
    """RoBERTa-base and its per-task GLUE fine-tunes (see the module docstring; ``cache``: there)."""
    from transformers import AutoTokenizer, RobertaForSequenceClassification, RobertaModel

    pre_dir = resolve_checkpoint(ROBERTA_ID, root)
    body = RobertaModel.from_pretrained(str(pre_dir), add_pooling_layer=False)
    encoder = TextEncoder(body, "roberta", "first")
    encoder.eval()
    tok = AutoTokenizer.from_pretrained(str(pre_dir))
    ckpts = Path(ckpts_root) if ckpts_root is not None else resolve_checkpoint(
        ROBERTA_GLUE_ID, root, [f"{t}/*" for t in tasks] + [f"{t}/*/*" for t in tasks])
    checkpoints = {ROBERTA_ID: weights_sha256(pre_dir)}

    def read_task(d: Path) -> dict[str, Tensor]:
        model = RobertaForSequenceClassification.from_pretrained(str(d))
        cls = model.classifier
        head = {"dense.weight": cls.dense.weight, "dense.bias": cls.dense.bias,
                "out_proj.weight": cls.out_proj.weight, "out_proj.bias": cls.out_proj.bias}
        return {**_body_state(encoder, model.roberta, str(d)),
                **{HEAD_PREFIX + k: v.detach().float() for k, v in head.items()}}

    finetuned, heads = {}, {}
    for task in tasks:
        d = _roberta_task_dir(ckpts, task)
        name = f"{ROBERTA_GLUE_ID}/{task}/{d.name}" if d.name != task else f"{ROBERTA_GLUE_ID}/{task}"
        checkpoints[name] = weights_sha256(d)
        finetuned[task], head = _finetuned(cache, ROBERTA_ID, name, checkpoints[name], encoder,
                                           lambda d=d: read_task(d))
        heads[task] = {k: v.clone() for k, v in head.items()}
    pad = tok.pad_token_id if tok.pad_token_id is not None else body.config.pad_token_id
    return PaperText(encoder, tok, int(pad), _params(encoder), finetuned, heads, checkpoints)


def load_mamba_paper(tasks: Sequence[str], *, root: str | os.PathLike | None = None,
                     ckpts_root: str | os.PathLike | None = None, cache: Any = None) -> PaperText:
    """Mamba-130M and its per-task GLUE fine-tunes from local directories (see the module docstring; ``cache``:
    there)."""
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, MambaModel

    pre_dir = resolve_checkpoint(MAMBA_ID, root)
    body = MambaModel.from_pretrained(str(pre_dir))
    encoder = TextEncoder(body, "backbone", "last", use_cache=False)
    encoder.eval()
    tok = AutoTokenizer.from_pretrained(str(pre_dir))
    tok.padding_side = "right"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    ck = ckpts_root if ckpts_root is not None else os.environ.get(MAMBA_GLUE_ENV_VAR) or None
    if ck is None:
        raise UserError(
            f"no GLUE fine-tunes of {MAMBA_ID} are published: give their directory as ckpts_root or "
            f"${MAMBA_GLUE_ENV_VAR} (<dir>/<task>: save_pretrained of the fine-tuned MambaModel + head.safetensors)")
    ckpts = Path(ck).expanduser()
    checkpoints = {MAMBA_ID: weights_sha256(pre_dir)}
    finetuned, heads = {}, {}
    for task in tasks:
        d = ckpts / task
        if not (d / "config.json").is_file() or not (d / "head.safetensors").is_file():
            raise UserError(f"no Mamba fine-tune for {task}: expected {d}/config.json, weights and head.safetensors")
        head = load_file(str(d / "head.safetensors"))  # its own small file, read directly (not converted)
        if "out_proj.weight" not in head:
            raise UserError(f"{d}/head.safetensors has no out_proj.weight (has {', '.join(head)})")
        heads[task] = {k: v.float() for k, v in head.items()}
        name = f"{ckpts.name}/{task}"
        checkpoints[name] = weights_sha256(d)
        finetuned[task], _ = _finetuned(cache, MAMBA_ID, name, checkpoints[name], encoder,
                                        lambda d=d: _body_state(encoder, MambaModel.from_pretrained(str(d)), str(d)))
    return PaperText(encoder, tok, int(tok.pad_token_id), _params(encoder), finetuned, heads, checkpoints)
