"""COCO mAP@50 (pycocotools) on hand-made boxes whose answer is known."""
from __future__ import annotations

import pytest
import torch

from tasks.detection_metrics import MeanAP50, xyxy_to_xywh


def _t(boxes, labels, image_id):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), "labels": torch.tensor(labels),
            "image_id": image_id}


def _p(boxes, labels, scores):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), "labels": torch.tensor(labels),
            "scores": torch.tensor(scores, dtype=torch.float32)}


GT = [_t([[0, 0, 10, 10], [20, 20, 40, 30]], [0, 1], 1), _t([[5, 5, 25, 25]], [1], 2)]


def _score(preds, targets=GT, num_classes=2):
    m = MeanAP50(num_classes)
    m.update(preds[:1], targets[:1])  # two batches, as the runner feeds them
    m.update(preds[1:], targets[1:])
    return m.compute()


def test_xywh_conversion():
    assert xyxy_to_xywh(torch.tensor([[1.0, 2.0, 4.0, 7.0]])).tolist() == [[1.0, 2.0, 3.0, 5.0]]


def test_perfect_predictions_score_100():
    preds = [_p([[0, 0, 10, 10], [20, 20, 40, 30]], [0, 1], [0.9, 0.8]), _p([[5, 5, 25, 25]], [1], [0.7])]
    assert _score(preds) == pytest.approx(100.0)


def test_missed_object_halves_its_class():
    # class 0 perfect (AP 1); class 1: one of its two objects found with the top score -> recall 0.5, AP ~ 0.5
    preds = [_p([[0, 0, 10, 10], [20, 20, 40, 30]], [0, 1], [0.9, 0.8]), _p([], [], [])]
    assert _score(preds) == pytest.approx(100 * (1.0 + 0.50495) / 2, abs=0.5)


def test_wrong_class_counts_as_miss_and_false_positive():
    preds = [_p([[0, 0, 10, 10], [20, 20, 40, 30]], [1, 1], [0.9, 0.8]), _p([[5, 5, 25, 25]], [1], [0.7])]
    # class 0: never predicted -> AP 0. class 1: 2 TP of 2 GT, one FP ranked first -> precision envelope
    # 2/3 at recall 0.5 and 1.0 -> AP ~ 0.667
    s = _score(preds)
    assert s == pytest.approx(100 * (0.0 + 2 / 3) / 2, abs=0.5)
    assert s < 50


@pytest.mark.parametrize("width,hit", [(7.0, True), (6.0, True), (4.9, False), (4.0, False)])
def test_iou_threshold_at_one_half(width, hit):
    # GT [0,0,10,10]; prediction [0,0,10,w] has IoU w/10 -> counted at IoU >= 0.5 only
    gt = [_t([[0, 0, 10, 10]], [0], 7)]
    m = MeanAP50(1)
    m.update([_p([[0, 0, 10, width]], [0], [0.9])], gt)
    assert m.compute() == pytest.approx(100.0 if hit else 0.0)


def test_iou_just_above_and_below_one_half():
    gt = [_t([[0, 0, 100, 100]], [0], 3)]
    for w, expect in ((50.5, 100.0), (49.5, 0.0)):
        m = MeanAP50(1)
        m.update([_p([[0, 0, 100, w]], [0], [0.5])], gt)
        assert m.compute() == pytest.approx(expect)


def test_no_detections_and_duplicate_ids():
    m = MeanAP50(2)
    m.update([_p([], [], [])], GT[:1])
    assert m.compute() == 0.0
    with pytest.raises(ValueError):
        m.update([_p([], [], [])], GT[:1])
    with pytest.raises(ValueError):
        MeanAP50().update([_p([], [], [])], GT)


def test_duplicate_detection_is_a_false_positive():
    gt = [_t([[0, 0, 10, 10]], [0], 1), _t([[0, 0, 10, 10]], [0], 2)]
    # image 1: a duplicate with a higher score than image 2's true positive
    preds = [_p([[0, 0, 10, 10], [0, 0, 10, 10]], [0, 0], [0.9, 0.8]), _p([[0, 0, 10, 10]], [0], [0.7])]
    m = MeanAP50(1)
    m.update(preds, gt)
    assert m.compute() == pytest.approx(100 * (0.5 + 0.5 * 2 / 3), abs=1.0)
