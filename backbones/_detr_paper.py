"""Paper profile of ``detr_r50``: ``facebook/detr-resnet-50`` and one fine-tuned DETR per RF100 domain.

:func:`load_detr_paper` returns a :class:`PaperDETR`: one :class:`backbones.detr.Detector` (the pretrained
``DetrForObjectDetection`` minus its class head), the pretrained and per-domain fine-tuned weights as state dicts of
that module (same keys, float32), and each domain's class head (``class_labels_classifier`` weight and bias of its
fine-tuned checkpoint; never merged).

Checkpoints
-----------
* pretrained: ``facebook/detr-resnet-50`` (transformers ``DetrForObjectDetection``; its timm ResNet-50 backbone is
  built by transformers, no separate ImageNet download: the checkpoint holds the backbone's weights). Looked for at
  ``<root>/facebook/detr-resnet-50`` first, then in the Hub / HF cache.
* fine-tuned: **no public per-domain checkpoints exist** (the paper trains its own: AdamW, batch 64, lr 1e-5
  backbone / 1e-4 rest, 15000 steps per domain). Each must be a local ``save_pretrained`` directory of a
  ``DetrForObjectDetection`` fine-tuned from ``facebook/detr-resnet-50`` on that domain, at
  ``<root>/detr-resnet-50_rf100/<domain>`` (``<domain>`` as in :data:`tasks.rf100_paper.DOMAINS`), with
  ``num_labels`` = the domain's class count in the order of :func:`tasks.rf100_paper.class_categories`.

``root`` is the ``root=`` argument or ``$MERGE_BENCH_MODELS``. Missing checkpoints raise one
:class:`~benchmark.errors.UserError` naming all of them.

The "Pretrained" row uses the pretrained detector with each domain's fine-tuned class head (DETR's COCO head has
no RF100 classes); the paper's near-zero Pretrained figures (Table VII, AVG 0.70) show the same: the pretrained
body does not produce the domain's queries that head was trained on.

``checkpoints`` maps each checkpoint's name to the sha256 of its weight file (sharded: of its ``"<file>
<sha256>"`` lines).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from torch import Tensor

from backbones._clip_paper import MODELS_ENV_VAR, _checkpoint_hash, _first_line, _hf_dir, _weight_files
from backbones._base import HEAD_PREFIX, converted_finetuned
from benchmark.errors import UserError

__all__ = ["PAPER_MODEL", "FINETUNED_DIR", "PaperDETR", "load_detr_paper", "finetuned_dir"]

PAPER_MODEL = "facebook/detr-resnet-50"
FINETUNED_DIR = "detr-resnet-50_rf100"


@dataclass
class PaperDETR:
    detector: object  # backbones.detr.Detector
    pretrained: dict[str, Tensor]
    finetuned: dict[str, Mapping[str, Tensor]]  # a LazyState per task with a cache
    heads: dict[str, tuple[Tensor, Tensor]]
    checkpoints: dict[str, str]
    image_size: int = 800  # DETR's shorter side (longer side at most 1333)
    mean: tuple = (0.485, 0.456, 0.406)
    std: tuple = (0.229, 0.224, 0.225)
    classes: dict[str, list[str]] = field(default_factory=dict)


def finetuned_dir(root: Path, task: str) -> Path:
    return root / FINETUNED_DIR / task


def _load_model(d: Path):
    from transformers import DetrForObjectDetection

    return DetrForObjectDetection.from_pretrained(str(d))


def load_detr_paper(tasks: Sequence[str], classnames: Mapping[str, Sequence[str]] | None = None, *,
                    root: str | os.PathLike | None = None, cache: Any = None) -> PaperDETR:
    """Load the pretrained DETR-ResNet50 and the fine-tuned DETR of every domain in ``tasks`` (see the module
    docstring). ``classnames[task]``, when given, must match the fine-tuned head's class count. ``cache`` (a
    :class:`benchmark.cache.Cache`, optional): each fine-tuned checkpoint is converted once into it and its state
    streamed from there, one tensor per access (a :class:`~benchmark.lazy_state.LazyState`); without one, the
    states are held in RAM. ``pretrained`` is the detector's own tensors."""
    from backbones.detr import Detector

    root_s = root if root is not None else os.environ.get(MODELS_ENV_VAR) or None
    root_p = Path(root_s).expanduser() if root_s is not None else None
    missing: list[tuple[str, str]] = []
    pre_dir, why = _hf_dir(PAPER_MODEL, root_p)
    if pre_dir is None:
        missing.append((PAPER_MODEL, why))
    ft_dirs: dict[str, Path] = {}
    for t in tasks:
        d = finetuned_dir(root_p, t) if root_p is not None else None
        if d is None or not _weight_files(d):
            missing.append((f"{FINETUNED_DIR}/{t}", f"no save_pretrained directory at {d}" if d else "no root"))
        else:
            ft_dirs[t] = d
    if missing:
        where = str(root_p) if root_p is not None else f"a directory passed as root= or ${MODELS_ENV_VAR}"
        raise UserError(
            f"detr_r50 (paper): missing checkpoint{'s' if len(missing) > 1 else ''} "
            f"{', '.join(n for n, _ in missing)}. Put {PAPER_MODEL} under {where}/{PAPER_MODEL} and one fine-tuned "
            f"DetrForObjectDetection per domain under {where}/{FINETUNED_DIR}/<domain> (no public ones exist). "
            + "; ".join(f"[{n}] {w}" for n, w in missing)
        )
    assert pre_dir is not None
    try:
        base = _load_model(pre_dir)
    except Exception as e:  # noqa: BLE001 -- a broken or incompatible checkpoint
        raise UserError(f"detr_r50 (paper): cannot load {pre_dir}: {_first_line(e)}") from e
    detector = Detector(base.model, base.bbox_predictor).eval()
    names = [n for n, _ in detector.named_parameters()]
    # the detector's own tensors: functional_call never writes them, so the pool can share them (no second copy)
    pretrained = {n: p.detach().float() for n, p in detector.named_parameters()}
    checkpoints = {PAPER_MODEL: _checkpoint_hash(_weight_files(pre_dir))}

    def read_task(d: Path) -> dict[str, Tensor]:
        try:
            ft = _load_model(d)
        except Exception as e:  # noqa: BLE001
            raise UserError(f"detr_r50 (paper): cannot load {d}: {_first_line(e)}") from e
        sd = dict(Detector(ft.model, ft.bbox_predictor).named_parameters())
        bad = [n for n in names if n not in sd or sd[n].shape != pretrained[n].shape]
        if bad:
            raise UserError(f"detr_r50 (paper): {d} is not a fine-tuned {PAPER_MODEL} (mismatched: {bad[:3]})")
        cls = ft.class_labels_classifier
        return {**{n: sd[n].detach().float() for n in names}, HEAD_PREFIX + "weight": cls.weight.detach().float(),
                HEAD_PREFIX + "bias": cls.bias.detach().float()}

    finetuned: dict[str, Mapping[str, Tensor]] = {}
    heads: dict[str, tuple[Tensor, Tensor]] = {}
    for t, d in ft_dirs.items():
        name = f"{FINETUNED_DIR}/{t}"
        checkpoints[name] = _checkpoint_hash(_weight_files(d))
        config = {"model": PAPER_MODEL, "source": "hf", "checkpoint": name, "sha256": checkpoints[name],
                  "keys": names}
        finetuned[t], head = converted_finetuned(cache, config, lambda d=d: read_task(d), names)
        w, b = head["weight"], head["bias"]
        if classnames is not None and t in classnames and w.shape[0] != len(classnames[t]) + 1:
            raise UserError(f"detr_r50 (paper): {d} has {w.shape[0] - 1} classes, the data {len(classnames[t])}")
        heads[t] = (w.clone(), b.clone())
    for p in detector.parameters():
        p.requires_grad_(False)
    return PaperDETR(detector, pretrained, finetuned, heads, checkpoints,
                     classes={t: list(classnames[t]) for t in tasks} if classnames is not None else {})
