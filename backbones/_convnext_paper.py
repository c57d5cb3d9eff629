"""Paper profile of the ``convnext`` backbone: ``facebook/convnext-base-224`` and FusionBench's 8 fine-tuned copies.

:func:`load_convnext_paper` returns a :class:`PaperConvNeXt`: one encoder module (:class:`backbones.convnext.
ConvNeXtEncoder` around transformers' ``ConvNextModel``, no projection: embeddings = the 1024-d ``pooler_output``),
the pretrained and per-task fine-tuned weights as state dicts *of that module* (``convnext.*`` keys, float32), and
each task's classifier ``(weight [C, e], bias [C])``.

Checkpoints (transformers ``ConvNextForImageClassification``)
    pretrained ``facebook/convnext-base-224`` (its ImageNet-1k classifier is not used); fine-tuned
    ``tanganke/convnext-base-224_<task>_sgd_batch-size-64_lr-0.01_steps-4000`` (FusionBench's
    ``convnext-base-224_8-tasks`` model pool; the whole model is fine-tuned with SGD and a new ``classifier``
    sized to the task). *Mergeable*: every ``convnext.*`` parameter. *Heads*: each fine-tuned checkpoint's
    ``classifier.weight`` / ``classifier.bias``, per task, never merged -- there is no zero-shot head for a
    ConvNeXt, so the "Pretrained" row is the pretrained encoder under the fine-tuned heads, as in FusionBench.

Where: ``root`` (or ``$MERGE_BENCH_MODELS``) laid out as ``<root>/<hub id>`` (``save_pretrained`` output or
``huggingface-cli download <id> --local-dir <root>/<id>``), else the Hub / HF cache; missing checkpoints raise a
:class:`~benchmark.errors.UserError` naming each of them (the same lookup as :mod:`backbones._clip_paper`). Weight
files are read directly (safetensors or ``pytorch_model.bin``, sharded or not); ``ConvNextModel`` checkpoints
(keys without the ``convnext.`` prefix) are accepted for the pretrained model. The architecture comes from the
pretrained checkpoint's ``config.json``; every fine-tuned tensor must match its shape.

Preprocessing: ConvNeXt's evaluation transform, from the pretrained checkpoint's ``preprocessor_config.json``
(``ConvNextImageProcessor``): for a crop size below 384 the shorter side is resized to ``crop / crop_pct``
(224 / 0.875 = 256) and the centre ``crop`` x ``crop`` kept; at 384 and above the image is resized to the crop size
without cropping. Mean / std from the same file (ImageNet's by default).

``checkpoints`` maps each hub id to the sha256 of its weight file (sharded: the sha256 of ``"<file> <sha256>"``
lines), as the CLIP loader does.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from torch import Tensor, nn

from backbones._clip_paper import (
    MODELS_ENV_VAR,
    _checkpoint_hash,
    _first_line,
    _hf_dir,
    _missing_error,
    _weight_files,
    read_state_file,
)
from backbones._base import HEAD_PREFIX, converted_finetuned
from benchmark.errors import UserError

__all__ = ["PRETRAINED", "FINETUNED", "PaperConvNeXt", "load_convnext_paper", "convnext_state"]

PRETRAINED = "facebook/convnext-base-224"
FINETUNED = "tanganke/convnext-base-224_{task}_sgd_batch-size-64_lr-0.01_steps-4000"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_MODEL_TOP = ("embeddings.", "encoder.", "layernorm.")


@dataclass
class PaperConvNeXt:
    """What the paper-profile ConvNeXt adapter needs; see the module docstring."""

    encoder: nn.Module
    pretrained: dict[str, Tensor]  # every encoder parameter, float32
    finetuned: dict[str, Mapping[str, Tensor]]  # task -> same keys as ``pretrained`` (a LazyState with a cache)
    heads: dict[str, tuple[Tensor, Tensor]]  # task -> (classifier weight [C, e], bias [C]); frozen
    image_size: int  # the centre crop
    resize_size: int  # the shorter side before the crop
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    checkpoints: dict[str, str]  # hub id -> sha256


def convnext_state(state: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Split a ``ConvNextForImageClassification`` / ``ConvNextModel`` state dict into (encoder tensors under
    ``convnext.*``, classifier tensors ``weight`` / ``bias``)."""
    enc, head = {}, {}
    for k, v in state.items():
        k = k.removeprefix("module.")
        if k.startswith("convnext."):
            enc[k] = v
        elif k.startswith(_MODEL_TOP):
            enc["convnext." + k] = v
        elif k.startswith("classifier."):
            head[k[len("classifier."):]] = v
    return enc, head


def _read(d: Path) -> dict[str, Tensor]:
    state: dict[str, Tensor] = {}
    for f in _weight_files(d):
        state.update(read_state_file(f))
    return state


def _preprocess(d: Path) -> tuple[int, int, tuple, tuple]:
    """(crop size, resize size, mean, std) of ConvNeXt's evaluation transform, from ``preprocessor_config.json``."""
    crop, crop_pct, mean, std = 224, 224 / 256, IMAGENET_MEAN, IMAGENET_STD
    p = d / "preprocessor_config.json"
    if p.is_file():
        with open(p) as f:
            cfg = json.load(f)
        size = cfg.get("size", crop)
        if isinstance(size, Mapping):
            size = size.get("shortest_edge") or size.get("height") or crop
        crop = int(size)
        crop_pct = float(cfg.get("crop_pct") or crop_pct)
        mean = tuple(float(x) for x in cfg.get("image_mean", mean))
        std = tuple(float(x) for x in cfg.get("image_std", std))
    resize = int(crop / crop_pct) if crop < 384 else crop
    return crop, resize, mean, std  # type: ignore[return-value]


def load_convnext_paper(
    tasks: Sequence[str],
    num_classes: Mapping[str, int] | None = None,
    *,
    root: str | os.PathLike | None = None,
    pretrained: str = PRETRAINED,
    finetuned: str = FINETUNED,
    cache: Any = None,
) -> PaperConvNeXt:
    """Load the pretrained ConvNeXt and the fine-tuned checkpoints of ``tasks`` (see the module docstring).

    ``num_classes[task]`` (optional): the task's number of classes, checked against its classifier. ``root``
    (default ``$MERGE_BENCH_MODELS``): where checkpoints are looked for first. ``pretrained`` / ``finetuned``: hub
    ids (``finetuned`` with ``{task}``). ``cache`` (a :class:`benchmark.cache.Cache`, optional): each fine-tuned
    checkpoint is converted once into it and its state streamed from there, one tensor per access (a
    :class:`~benchmark.lazy_state.LazyState`); without one, the states are held in RAM. ``pretrained`` is the
    encoder's own tensors. Everything returned lives on the CPU.
    """
    from transformers import ConvNextConfig, ConvNextModel

    from backbones.convnext import ConvNeXtEncoder

    if not tasks:
        raise UserError("load_convnext_paper needs at least one task")
    root_s = root if root is not None else os.environ.get(MODELS_ENV_VAR) or None
    root_p = Path(root_s).expanduser() if root_s is not None else None
    ids = {"": pretrained, **{t: finetuned.format(task=t) for t in tasks}}
    found = {key: _hf_dir(repo, root_p) for key, repo in ids.items()}
    missing = [(ids[key], why) for key, (d, why) in found.items() if d is None]
    if missing:
        raise _missing_error(missing, root_p)
    dirs: dict[str, Path] = {key: d for key, (d, _) in found.items() if d is not None}

    pre_dir = dirs[""]
    try:
        config = ConvNextConfig.from_pretrained(pre_dir)
    except Exception as e:  # noqa: BLE001
        raise UserError(f"cannot read the ConvNeXt config of {pretrained} in {pre_dir}: {_first_line(e)}") from e
    encoder = ConvNeXtEncoder(ConvNextModel(config)).eval()
    params = {k: p for k, p in encoder.named_parameters()}
    checkpoints = {pretrained: _checkpoint_hash(_weight_files(pre_dir))}

    def check(repo: str, d: Path, state: Mapping[str, Tensor]) -> None:
        miss = [k for k in params if k not in state]
        if miss:
            raise UserError(f"{repo} ({d}) is not a ConvNeXt checkpoint of {pretrained}'s architecture: {len(miss)} "
                            f"of its weights are missing, e.g. {', '.join(miss[:3])}")
        bad = [k for k in params if tuple(state[k].shape) != tuple(params[k].shape)]
        if bad:
            k = bad[0]
            raise UserError(f"{repo}: {k} has shape {tuple(state[k].shape)}, the pretrained {pretrained} "
                            f"{tuple(params[k].shape)}: not a fine-tuned copy of this model")

    pre_state, _ = convnext_state(_read(pre_dir))
    check(pretrained, pre_dir, pre_state)
    encoder.load_state_dict({k: pre_state[k] for k in encoder.state_dict()}, strict=True)
    del pre_state
    # the encoder's own tensors: functional_call never writes them, so the pool can share them (no second copy)
    pre = {k: p.detach().float() for k, p in params.items()}
    keys = list(params)

    def read_task(repo: str, d: Path) -> dict[str, Tensor]:
        state, head = convnext_state(_read(d))
        check(repo, d, state)
        w = head.get("weight")
        if w is None or w.ndim != 2 or w.shape[1] != config.hidden_sizes[-1]:
            raise UserError(f"{repo} ({d}): no classifier.weight [C, {config.hidden_sizes[-1]}]; a fine-tuned "
                            f"ConvNextForImageClassification checkpoint is needed for the task's head")
        b = head.get("bias")
        b = b if b is not None else w.new_zeros(w.shape[0])
        return {**{k: state[k].float() for k in keys}, HEAD_PREFIX + "weight": w.detach().float(),
                HEAD_PREFIX + "bias": b.detach().float()}

    fts: dict[str, Mapping[str, Tensor]] = {}
    heads: dict[str, tuple[Tensor, Tensor]] = {}
    for t in tasks:
        repo, d = ids[t], dirs[t]
        checkpoints[repo] = _checkpoint_hash(_weight_files(d))
        config_key = {"model": pretrained, "source": "hf", "checkpoint": repo, "sha256": checkpoints[repo],
                      "keys": keys}
        fts[t], head = converted_finetuned(cache, config_key, lambda repo=repo, d=d: read_task(repo, d), keys)
        w, b = head["weight"], head["bias"]
        if num_classes is not None and t in num_classes and w.shape[0] != int(num_classes[t]):
            raise UserError(f"{repo}: its classifier has {w.shape[0]} classes, the task {t} {num_classes[t]}")
        heads[t] = (w.clone().requires_grad_(False), b.clone().requires_grad_(False))

    crop, resize, mean, std = _preprocess(pre_dir)
    return PaperConvNeXt(encoder=encoder, pretrained=pre, finetuned=fts, heads=heads, image_size=crop,
                         resize_size=resize, mean=mean, std=std, checkpoints=checkpoints)
