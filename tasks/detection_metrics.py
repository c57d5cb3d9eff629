"""COCO mAP@50 for the detection suite, computed by pycocotools' ``COCOeval`` (the RF100 / auto-flexswitch metric).

Box convention (the suite's and the adapter's): ``xyxy`` in **pixels** of the original image, ``float32 [k, 4]``.
The metric converts to COCO's ``xywh`` itself, so callers never see it.

``update(outputs, targets)`` takes one batch:

* ``outputs``: a list (one per image) of dicts ``{"boxes": [k, 4], "scores": [k], "labels": [k]}`` -- what
  ``DetrOps.predict`` returns; ``labels`` index the task's classes (0-based);
* ``targets``: a list (same order) of dicts ``{"boxes": [m, 4], "labels": [m], "image_id": int}``.

``compute()`` builds the ground truth and the detections as in-memory COCO objects (category id = label + 1, every
ground-truth box ``iscrowd = 0`` with ``area = w * h``), runs ``COCOeval(..., "bbox")`` with its default parameters
(IoU thresholds .50:.05:.95, maxDets 1/10/100, all areas) and returns ``stats[1]`` -- the AP at IoU = 0.50 over all
areas with up to 100 detections per image, averaged over the categories that have ground truth -- times 100. With
no detections at all the score is 0; categories without any ground-truth box are left out of the mean (COCO's
rule), and a set without any ground truth scores 0.
"""
from __future__ import annotations

import contextlib
import io
from typing import Any, Sequence

import numpy as np
import torch

from benchmark.contract import Metric

__all__ = ["MeanAP50", "xyxy_to_xywh"]


def xyxy_to_xywh(boxes: Any) -> np.ndarray:
    b = torch.as_tensor(boxes, dtype=torch.float64).reshape(-1, 4).numpy()
    return np.stack([b[:, 0], b[:, 1], b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], 1)


class MeanAP50(Metric):
    """Streaming COCO mAP@50 (percent). ``num_classes``: the task's class count (every class is a COCO category,
    whether or not it occurs)."""

    name = "mAP@50"

    def __init__(self, num_classes: int | None = None) -> None:
        self.num_classes = num_classes
        self._images: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._dets: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]] = []

    def update(self, outputs: Sequence[dict[str, Any]], targets: Sequence[dict[str, Any]]) -> None:
        if len(outputs) != len(targets):
            raise ValueError(f"mAP@50: {len(outputs)} predictions for {len(targets)} images")
        for out, tgt in zip(outputs, targets):
            img = int(tgt["image_id"])
            if img in self._images:
                raise ValueError(f"mAP@50: image_id {img} seen twice")
            gl = torch.as_tensor(tgt["labels"]).reshape(-1).long().numpy()
            self._images[img] = (xyxy_to_xywh(tgt["boxes"]), gl)
            pl = torch.as_tensor(out["labels"]).reshape(-1).long().numpy()
            ps = torch.as_tensor(out["scores"], dtype=torch.float64).detach().reshape(-1).numpy()
            pb = xyxy_to_xywh(torch.as_tensor(out["boxes"]).detach())
            if not (len(pl) == len(ps) == len(pb)):
                raise ValueError("mAP@50: boxes, scores and labels of an image differ in length")
            self._dets.append((img, pb, ps, pl))

    def _categories(self) -> list[int]:
        if self.num_classes is not None:
            return list(range(self.num_classes))
        seen = {int(c) for _, gl in self._images.values() for c in gl} | {int(c) for *_, pl in self._dets for c in pl}
        return sorted(seen)

    def compute(self) -> float:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        n_gt = sum(len(gl) for _, gl in self._images.values())
        n_dt = sum(len(ps) for _, _, ps, _ in self._dets)
        if n_gt == 0 or n_dt == 0:
            return 0.0
        images, anns = [], []
        for img, (boxes, labels) in self._images.items():
            images.append({"id": img, "width": 1, "height": 1})
            for b, c in zip(boxes.tolist(), labels.tolist()):
                anns.append({"id": len(anns) + 1, "image_id": img, "category_id": int(c) + 1, "bbox": b,
                             "area": max(b[2], 0.0) * max(b[3], 0.0), "iscrowd": 0})
        cats = [{"id": c + 1, "name": str(c)} for c in self._categories()]
        dets = [{"image_id": img, "category_id": int(c) + 1, "bbox": b, "score": float(s)}
                for img, pb, ps, pl in self._dets for b, s, c in zip(pb.tolist(), ps.tolist(), pl.tolist())]
        with contextlib.redirect_stdout(io.StringIO()):
            gt = COCO()
            gt.dataset = {"images": images, "annotations": anns, "categories": cats}
            gt.createIndex()
            dt = gt.loadRes(dets)
            ev = COCOeval(gt, dt, "bbox")
            ev.params.imgIds = sorted(self._images)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        ap50 = float(ev.stats[1])
        return 100.0 * ap50 if ap50 >= 0 else 0.0
