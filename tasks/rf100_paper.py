"""Paper profile of ``rf100_7``: the seven RoboFlow 100 domains of auto-flexswitch.txt Sec. IV-A2, read from
Roboflow's COCO exports.

Where the data is read from
---------------------------
``data_root`` (or ``$MERGE_BENCH_DATA``): the first of ``<root>/rf100/<domain>`` and ``<root>/<domain>`` that
exists, with ``<domain>`` one of :data:`DOMAINS` (``aerial``, ``videogames``, ``microscopic``, ``underwater``,
``documents``, ``electromagnetic``, ``real_world``; the paper does not say which RF100 data set stands for each
domain, so the directory holds whichever export you choose -- e.g. RF100's ``aerial-pool``,
``apex-videogame``, ``cell-towers``... -- as Roboflow writes it: "COCO" format, one folder per split)::

    <domain>/train/_annotations.coco.json   <domain>/train/<image files>
    <domain>/valid/_annotations.coco.json   (val split; a folder named ``val`` works too)
    <domain>/test/_annotations.coco.json

Classes
-------
The split's ``categories`` sorted by id, except Roboflow's dataset-level parent category (the one whose
``supercategory`` is ``"none"`` while the real classes name it as their supercategory), which RF100 exports carry
but never annotate. Labels are indices into that list (0-based); annotations of a dropped category are ignored.
The class list is taken from the ``train`` split so every split shares it.

Targets
-------
Per image ``{"boxes": float32 [m, 4] xyxy pixels, "labels": int64 [m], "image_id": int}`` (COCO ``xywh`` converted;
``iscrowd`` annotations are skipped, as COCO evaluation ignores them anyway), ``image_id`` the export's image id.
``inputs`` is a :class:`CocoImages` view: lazily decoded ``uint8 [3, H, W]`` RGB tensors of any size.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from benchmark.contract import TaskData
from benchmark.errors import UserError

__all__ = ["DOMAINS", "DATA_ENV_VAR", "CocoImages", "load_rf100_task", "read_coco", "domain_dir"]

DATA_ENV_VAR = "MERGE_BENCH_DATA"
DOMAINS = ("aerial", "videogames", "microscopic", "underwater", "documents", "electromagnetic", "real_world")
SPLIT_DIRS = {"train": ("train",), "val": ("valid", "val"), "test": ("test",)}
ANNOTATIONS = "_annotations.coco.json"


class CocoImages(Sequence):
    """A lazy view of image files: ``images[i]`` decodes one image to ``uint8 [3, H, W]`` (RGB); a slice, an index
    list / array / LongTensor gives another view."""

    def __init__(self, paths: Sequence[str | os.PathLike]):
        self.paths = [Path(p) for p in paths]

    def __len__(self) -> int:
        return len(self.paths)

    def __repr__(self) -> str:
        return f"CocoImages({len(self)} images)"

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, (int, np.integer)) or (isinstance(index, Tensor) and index.ndim == 0):
            from PIL import Image

            with Image.open(self.paths[int(index)]) as im:
                arr = np.asarray(im.convert("RGB"))
            return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()
        if isinstance(index, slice):
            return CocoImages(self.paths[index])
        if isinstance(index, Tensor):
            index = index.cpu().numpy()
        idx = np.asarray(index)
        if idx.dtype == bool:
            idx = np.nonzero(idx)[0]
        return CocoImages([self.paths[int(i)] for i in idx.reshape(-1)])


def domain_dir(task: str, data_root: str | os.PathLike | None = None) -> Path:
    if task not in DOMAINS:
        raise UserError(f"unknown RF100 domain {task!r}; valid: {', '.join(DOMAINS)}")
    root_s = data_root if data_root is not None else os.environ.get(DATA_ENV_VAR)
    if not root_s:
        raise UserError(f"RF100 domain {task!r}: no data root; set ${DATA_ENV_VAR} (or data_root=) to a directory "
                        f"holding rf100/<domain>/{{train,valid,test}}/{ANNOTATIONS} (Roboflow COCO exports)")
    root = Path(root_s).expanduser()
    for cand in (root / "rf100" / task, root / task):
        if cand.is_dir():
            return cand
    raise UserError(f"RF100 domain {task!r} not found: looked for {root / 'rf100' / task} and {root / task}")


def _split_dir(base: Path, split: str) -> Path:
    if split not in SPLIT_DIRS:
        raise UserError(f"unknown split {split!r}; valid: {', '.join(SPLIT_DIRS)}")
    for name in SPLIT_DIRS[split]:
        if (base / name / ANNOTATIONS).is_file():
            return base / name
    raise UserError(f"{base}: no {'/'.join(SPLIT_DIRS[split])}/{ANNOTATIONS}")


def class_categories(categories: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The categories that are classes, sorted by id (Roboflow's unannotated parent category dropped)."""
    cats = sorted(categories, key=lambda c: int(c["id"]))
    parents = {c.get("supercategory") for c in cats}
    keep = [c for c in cats if not (c.get("supercategory") in (None, "none") and c["name"] in parents)]
    return keep or cats


def read_coco(split_dir: Path, classes: list[dict[str, Any]] | None = None
              ) -> tuple[CocoImages, list[dict[str, Any]], list[dict[str, Any]]]:
    """One split: (images, targets, class categories)."""
    with open(split_dir / ANNOTATIONS) as f:
        coco = json.load(f)
    cats = classes if classes is not None else class_categories(coco.get("categories", []))
    index = {int(c["id"]): i for i, c in enumerate(cats)}
    by_image: dict[int, list[dict[str, Any]]] = {}
    for a in coco.get("annotations", []):
        if a.get("iscrowd", 0) or int(a["category_id"]) not in index:
            continue
        by_image.setdefault(int(a["image_id"]), []).append(a)
    images = sorted(coco.get("images", []), key=lambda im: int(im["id"]))
    paths, targets = [], []
    for im in images:
        paths.append(split_dir / im["file_name"])
        anns = by_image.get(int(im["id"]), [])
        xywh = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes = torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1)
        labels = torch.tensor([index[int(a["category_id"])] for a in anns], dtype=torch.long)
        targets.append({"boxes": boxes, "labels": labels, "image_id": int(im["id"])})
    return CocoImages(paths), targets, cats


def load_rf100_task(task: str, split: str, data_root: str | os.PathLike | None = None) -> TaskData:
    """One split of one RF100 domain (see the module docstring)."""
    base = domain_dir(task, data_root)
    train_dir = _split_dir(base, "train")
    with open(train_dir / ANNOTATIONS) as f:
        classes = class_categories(json.load(f).get("categories", []))
    images, targets, cats = read_coco(_split_dir(base, split), classes)
    return TaskData(inputs=images, targets=targets, classes=[str(c["name"]) for c in cats],
                    meta={"task": task, "split": split, "profile": "paper", "source": str(base)})
