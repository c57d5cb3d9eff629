"""The rf100_7 detection suite: generated domains (micro profile) are deterministic, their boxes valid and tight,
and the paper loader reads a Roboflow COCO export (a stand-in the test writes)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from benchmark.cache import Cache
from benchmark.errors import UserError
from benchmark.registry import SUITES
from tasks import rf100
from tasks.rf100_paper import CocoImages, class_categories, load_rf100_task
from tasks.detection_metrics import MeanAP50


@pytest.fixture(scope="session")
def suite(cache_root):
    s = SUITES.get("rf100_7").obj(profile="micro", seed=0, cache=Cache(cache_root), progress=False)
    s.prepare()
    return s


def test_registered_and_task_names():
    s = SUITES.get("rf100_7")
    assert s.name == "rf100_7"
    assert rf100.TINY_TASKS == ["rooftops", "arcade", "cells", "reef", "forms", "radar", "street"]
    assert not set(rf100.TINY_TASKS) & set(rf100.PAPER_TASKS)
    assert len(rf100.PAPER_TASKS) == 7


def test_splits_shapes_and_box_validity(suite):
    sizes = rf100.PROFILE_SIZES["micro"]
    s = sizes["image_size"]
    for task in suite.tasks:
        for split in ("train", "val", "test"):
            d = suite.load(task, split)
            assert d.inputs.dtype == torch.uint8 and tuple(d.inputs.shape) == (sizes[split], 3, s, s)
            assert len(d.targets) == sizes[split] and d.classes == list(rf100.DOMAINS[task].classes)
            assert [t["image_id"] for t in d.targets] == list(range(sizes[split]))
            n_obj = 0
            for t in d.targets:
                b, lab = t["boxes"], t["labels"]
                assert b.dtype == torch.float32 and b.shape == (len(lab), 4) and lab.dtype == torch.long
                assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all() and (b[:, 2] <= s).all() and (b[:, 3] <= s).all()
                assert (b[:, 2] - b[:, 0] >= 2).all() and (b[:, 3] - b[:, 1] >= 2).all()
                assert ((lab >= 0) & (lab < len(d.classes))).all()
                assert len(lab) <= rf100.DOMAINS[task].count[1]
                n_obj += len(lab)
            assert n_obj > 0


def test_generation_is_deterministic_and_seeded():
    a_x, a_t = rf100.generate_task("cells", "test", 6, 32, 0)
    b_x, b_t = rf100.generate_task("cells", "test", 6, 32, 0)
    c_x, _ = rf100.generate_task("cells", "test", 6, 32, 1)
    d_x, _ = rf100.generate_task("cells", "train", 6, 32, 0)
    assert torch.equal(a_x, b_x) and not torch.equal(a_x, c_x) and not torch.equal(a_x, d_x)
    assert all(torch.equal(p["boxes"], q["boxes"]) and torch.equal(p["labels"], q["labels"]) for p, q in zip(a_t, b_t))


def test_boxes_are_tight_around_the_drawn_objects():
    # an object changes the pixels inside its box and the box's border rows/columns touch it
    g = torch.Generator().manual_seed(0)
    dom = rf100.DOMAINS["forms"]
    x, boxes, _ = rf100.render_scenes(g, 4, 64, dom)
    g2 = torch.Generator().manual_seed(0)
    bg = dom.background(g2, 4, 64)
    bg = (bg.clamp(0, 1) * 255).round()
    for i in range(4):
        diff = (x[i].float() - bg[i]).abs().amax(0) > 60  # noise is small; objects change pixels a lot
        outside = diff.clone()
        for b in boxes[i].long().tolist():
            inside = diff[b[1] : b[3], b[0] : b[2]]
            assert inside.float().mean() > 0.1
            outside[max(b[1] - 1, 0) : b[3] + 1, max(b[0] - 1, 0) : b[2] + 1] = False  # +-1 px: anti-aliasing
        assert outside.float().mean() < 0.02


def test_domains_differ_in_density_and_scale():
    stats = {}
    for task in rf100.TINY_TASKS:
        _, targets = rf100.generate_task(task, "val", 40, 64, 0)
        n = np.mean([len(t["labels"]) for t in targets])
        area = torch.cat([(t["boxes"][:, 2] - t["boxes"][:, 0]) * (t["boxes"][:, 3] - t["boxes"][:, 1]) for t in targets])
        stats[task] = (n, float(area.median()))
    assert stats["cells"][0] > 2 * stats["street"][0] and stats["rooftops"][0] > 2 * stats["forms"][0]
    assert stats["forms"][1] > 4 * stats["rooftops"][1] and stats["street"][1] > 3 * stats["cells"][1]


def test_metric_and_round_trip(suite):
    m = suite.metric("reef")
    assert isinstance(m, MeanAP50) and m.num_classes == 3
    d = suite.load("reef", "test")
    perfect = [{"boxes": t["boxes"], "labels": t["labels"], "scores": torch.ones(len(t["labels"]))} for t in d.targets]
    m.update(perfect, d.targets)
    assert m.compute() == pytest.approx(100.0)
    packed = rf100.pack_targets(d.targets)
    back = rf100.unpack_targets(packed)
    assert all(torch.equal(a["boxes"], b["boxes"]) and a["image_id"] == b["image_id"] for a, b in zip(d.targets, back))
    with pytest.raises(UserError):
        suite.load("aerial", "test")
    with pytest.raises(UserError):
        SUITES.get("rf100_7").obj(profile="huge")


# ----------------------------------------------------------------------------------------------------------------
# paper loader on a stand-in Roboflow export


def _write_export(root, domain="microscopic"):
    from PIL import Image

    cats = [{"id": 0, "name": "cells-xyz", "supercategory": "none"},
            {"id": 1, "name": "platelet", "supercategory": "cells-xyz"},
            {"id": 2, "name": "rbc", "supercategory": "cells-xyz"}]
    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("valid", 2), ("test", 2)):
        d = root / "rf100" / domain / split
        d.mkdir(parents=True)
        images, anns = [], []
        for i in range(n):
            w, h = 40 + 8 * i, 30
            Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(d / f"im{i}.jpg")
            images.append({"id": 10 + i, "file_name": f"im{i}.jpg", "width": w, "height": h})
            anns.append({"id": len(anns), "image_id": 10 + i, "category_id": 2, "bbox": [1, 2, 10, 5], "area": 50,
                         "iscrowd": 0})
            anns.append({"id": len(anns), "image_id": 10 + i, "category_id": 1, "bbox": [20, 3, 4, 6], "area": 24,
                         "iscrowd": 0})
            anns.append({"id": len(anns), "image_id": 10 + i, "category_id": 1, "bbox": [0, 0, 5, 5], "area": 25,
                         "iscrowd": 1})
        (d / "_annotations.coco.json").write_text(json.dumps({"images": images, "annotations": anns,
                                                              "categories": cats}))


def test_paper_loader_reads_a_coco_export(tmp_path, monkeypatch):
    _write_export(tmp_path)
    monkeypatch.setenv("MERGE_BENCH_DATA", str(tmp_path))
    d = load_rf100_task("microscopic", "val")
    assert d.classes == ["platelet", "rbc"]
    assert len(d) == 2 and isinstance(d.inputs, CocoImages)
    t = d.targets[1]
    assert t["image_id"] == 11
    assert t["boxes"].tolist() == [[1.0, 2.0, 11.0, 7.0], [20.0, 3.0, 24.0, 9.0]]  # xywh -> xyxy; crowd dropped
    assert t["labels"].tolist() == [1, 0]
    img = d.inputs[1]
    assert img.dtype == torch.uint8 and tuple(img.shape) == (3, 30, 48)
    sub = d.inputs[torch.tensor([1])]
    assert isinstance(sub, CocoImages) and len(sub) == 1 and torch.equal(sub[0], img)
    # through the suite's paper profile
    s = SUITES.get("rf100_7").obj(profile="paper", data_root=str(tmp_path))
    assert s.load("microscopic", "train").classes == ["platelet", "rbc"]
    assert s.metric("microscopic").num_classes == 2
    with pytest.raises(UserError):
        s.load("aerial", "test")  # not in the export


def test_roboflow_parent_category_is_dropped_only_when_it_is_a_parent():
    cats = [{"id": 0, "name": "x", "supercategory": "none"}, {"id": 1, "name": "a", "supercategory": "x"}]
    assert [c["name"] for c in class_categories(cats)] == ["a"]
    plain = [{"id": 3, "name": "b", "supercategory": "none"}, {"id": 1, "name": "a", "supercategory": "none"}]
    assert [c["name"] for c in class_categories(plain)] == ["a", "b"]
