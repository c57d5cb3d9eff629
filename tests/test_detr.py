"""The DETR adapter on the micro profile: mergeable tensors (box head in, class heads out), ModelOps shapes
(per-query logits and features, post-processed predictions, linear inputs), differentiable functional forwards, a
task_arithmetic run through the runner, and the paper loader on a random-init stand-in it writes."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from benchmark.cache import Cache
from benchmark.errors import UserError
from benchmark.registry import BACKBONES, SUITES
from backbones import detr as dt


def _make(cache, profile="micro", **suite_kw):
    suite = SUITES.get("rf100_7").obj(profile=profile, seed=0, cache=cache, progress=False, **suite_kw)
    return BACKBONES.get("detr_r50").obj(profile=profile, suite=suite, seed=0, cache=cache, progress=False)


@pytest.fixture(scope="session")
def bb(cache_root):
    b = _make(Cache(cache_root))
    b.prepare()
    return b


@pytest.fixture(scope="session")
def batch(bb):
    return next(bb.batches("cells", "test", 5))


def test_registered():
    p = BACKBONES.get("detr_r50")
    assert p.meta["suites"] == ("rf100_7",) and p.meta["default_suite"] == "rf100_7"


def test_states_are_the_detector_parameters(bb):
    pre = bb.pretrained_state()
    names = [n for n, _ in bb.detector.named_parameters()]
    assert list(pre) == names == bb.mergeable_names
    assert any(n.startswith("bbox_predictor.") for n in names)  # the class-agnostic box head is merged
    assert any(".backbone." in n for n in names) and any("decoder.layers.0.encoder_attn.q_proj" in n for n in names)
    assert not any("class_labels_classifier" in n for n in names)  # class heads are per domain
    for t in bb.tasks:
        ft = bb.finetuned_state(t)
        assert list(ft) == names
        assert all(v.dtype == torch.float32 and v.shape == pre[k].shape for k, v in ft.items())
        assert any(not torch.equal(ft[k], pre[k]) for k in pre), f"{t} was not fine-tuned"
    with pytest.raises(UserError):
        bb.finetuned_state("aerial")


def test_heads(bb):
    d = bb.config["d_model"]
    for t in bb.tasks:
        w, b = bb.head(t)
        assert w.shape == (len(bb.suite.classnames(t)) + 1, d) and b.shape == (w.shape[0],)
        assert not w.requires_grad


def test_ops_shapes(bb, batch):
    ops = bb.ops()
    x, y = batch
    q, d = bb.config["num_queries"], bb.config["d_model"]
    lg = ops.logits("cells", None, x)
    assert lg.shape == (len(y), q, 4)
    assert torch.allclose(lg, ops.logits("cells", bb.pretrained_state(), x), atol=1e-5)
    assert not torch.allclose(lg, ops.logits("cells", bb.finetuned_state("cells"), x))
    f = ops.features(None, x)
    assert f.shape == (len(y), q, d)
    w, b = bb.head("cells")
    assert torch.allclose(f @ w.T + b, lg, atol=1e-5)  # logits = head(f_ex) per query
    assert ops.num_examples(x) == len(y) and ops.num_examples(ops.slice(x, torch.tensor([0, 2]))) == 2
    out = ops.outputs("cells", None, x)  # both branches: class logits, then the boxes
    assert out.shape == (len(y), q, 4 + 4)
    assert torch.allclose(out[..., :4], lg, atol=1e-5) and torch.allclose(out[..., 4:], ops.boxes(None, x), atol=1e-5)


def test_predict_format(bb, batch):
    ops = bb.ops()
    x, y = batch
    s = bb.config["image_size"]
    out = ops.predict("cells", None, x)
    assert len(out) == len(y)
    q = bb.config["num_queries"]
    for o in out:
        assert o["boxes"].shape == (q, 4) and o["scores"].shape == (q,) and o["labels"].shape == (q,)
        assert ((o["scores"] >= 0) & (o["scores"] <= 1)).all() and ((o["labels"] >= 0) & (o["labels"] < 3)).all()
        assert (o["boxes"][:, 2] >= o["boxes"][:, 0]).all() and (o["boxes"][:, 3] >= o["boxes"][:, 1]).all()
        assert o["boxes"].min() >= -s and o["boxes"].max() <= 2 * s  # pixels, not normalized
    # scores and labels are the best real class of the softmax over C + 1
    p = ops.logits("cells", None, x).softmax(-1)[..., :-1]
    assert torch.allclose(out[0]["scores"], p[0].max(-1).values, atol=1e-6)
    m = bb.suite.metric("cells")
    m.update(out, y)
    assert 0.0 <= m.compute() <= 100.0


def test_functional_weights_are_differentiable(bb, batch):
    ops = bb.ops()
    x, _ = batch
    pre = bb.pretrained_state()
    coef = torch.tensor(0.3, requires_grad=True)
    ft = bb.finetuned_state("reef")
    w = {k: pre[k] + coef * (ft[k] - pre[k]) for k in pre}
    (ops.logits("reef", w, x).logsumexp(-1).sum() + ops.features(w, x).pow(2).sum()).backward()
    assert coef.grad is not None and torch.isfinite(coef.grad) and coef.grad != 0
    leaf = {k: v.clone().requires_grad_(True) for k, v in pre.items()}
    ops.predict("reef", leaf, x)  # predict runs under the same functional path
    box_loss = ops.boxes(leaf, x).sum()
    box_loss.backward()
    assert leaf["bbox_predictor.layers.2.weight"].grad is not None


def test_linear_inputs(bb, batch):
    ops = bb.ops()
    x, y = batch
    li = ops.linear_inputs(None, x)
    linears = {f"{n}.weight": m for n, m in bb.detector.named_modules() if isinstance(m, nn.Linear)}
    assert set(li) == set(linears)
    assert "bbox_predictor.layers.0.weight" in li and any("self_attn.k_proj" in k for k in li)
    for k, v in li.items():
        assert v.ndim == 2 and v.shape[1] == linears[k].weight.shape[1]


def test_exemplars_are_seeded_train_inputs(bb):
    ops = bb.ops()
    a, b, c = ops.exemplars("forms", 4, 0), ops.exemplars("forms", 4, 0), ops.exemplars("forms", 4, 1)
    assert torch.equal(a, b) and not torch.equal(a, c)
    train = bb.suite.load("forms", "train").inputs
    assert all(any(torch.equal(e, t) for t in train) for e in a)


def test_checkpoints_are_cached_and_hashed(bb, cache_root):
    ck = bb.checkpoints()
    assert set(ck) == {"pretrained", "heads", *[f"finetuned/{t}" for t in bb.tasks]}
    assert all(len(v) == 64 for v in ck.values())
    again = _make(Cache(cache_root))
    assert again.checkpoints() == ck  # rebuilt from the cache, same files


def test_generic_scenes_have_boxes():
    g = torch.Generator().manual_seed(0)
    x, t = dt.generic_scenes(g, 8, 32)
    assert x.shape == (8, 3, 32, 32) and len(t) == 8
    assert all(len(tt["labels"]) >= 1 for tt in t)
    assert all(((tt["labels"] >= 0) & (tt["labels"] < len(dt.GENERIC_CLASSES))).all() for tt in t)


def test_task_arithmetic_run_writes_a_record(cache_root, tmp_path):
    from benchmark.runner import RunSpec, run

    rec, path = run(RunSpec(method="task_arithmetic", backbone="detr_r50", profile="micro", results_dir=str(tmp_path),
                            cache_root=str(cache_root), batch_size=8, progress=False))
    assert path.exists() and json.loads(path.read_text())["run_id"] == rec["run_id"]
    assert rec["suite"] == "rf100_7" and set(rec["metrics"]) == set(SUITES.get("rf100_7").obj("micro").tasks)
    assert set(rec["metric_names"].values()) == {"mAP@50"}
    assert rec["suite_data"] == SUITES.get("rf100_7").obj("micro", cache=Cache(cache_root)).fingerprint()
    assert all(0.0 <= v <= 100.0 for v in rec["metrics"].values())


# ----------------------------------------------------------------------------------------------------------------
# paper profile on a random-init stand-in


def _stand_in_model(num_labels: int, seed: int):
    from transformers import DetrForObjectDetection

    torch.manual_seed(seed)
    cfg = dt.detr_config(dict(dt.CONFIGS["micro"], coord_channels=False), num_labels)  # RGB, as the real DETR
    return DetrForObjectDetection(cfg)


def _write_checkpoints(root, domains, num_labels=2):
    base = _stand_in_model(num_labels=5, seed=0)
    base.save_pretrained(root / "facebook" / "detr-resnet-50")
    for i, dmn in enumerate(domains):
        ft = _stand_in_model(num_labels, seed=1)
        sd = base.state_dict()
        with torch.no_grad():
            for k, v in ft.state_dict().items():
                if not k.startswith("class_labels_classifier") and v.dtype.is_floating_point:
                    v.copy_(sd[k] + 0.01 * (i + 1) * torch.randn_like(v))
        ft.save_pretrained(root / "detr-resnet-50_rf100" / dmn)
    return base


def test_paper_loader_on_stand_in(tmp_path):
    from backbones._detr_paper import load_detr_paper

    base = _write_checkpoints(tmp_path, ["microscopic", "aerial"])
    paper = load_detr_paper(["microscopic", "aerial"], {"microscopic": ["a", "b"], "aerial": ["c", "d"]},
                            root=tmp_path)
    names = [n for n, _ in paper.detector.named_parameters()]
    assert list(paper.pretrained) == names and not any("class_labels" in n for n in names)
    assert torch.equal(paper.pretrained["bbox_predictor.layers.0.weight"], base.bbox_predictor.layers[0].weight)
    for t in ("microscopic", "aerial"):
        assert list(paper.finetuned[t]) == names
        assert any(not torch.equal(paper.finetuned[t][k], paper.pretrained[k]) for k in names)
        assert paper.heads[t][0].shape == (3, dt.CONFIGS["micro"]["d_model"])
    assert set(paper.checkpoints) == {"facebook/detr-resnet-50", "detr-resnet-50_rf100/microscopic",
                                      "detr-resnet-50_rf100/aerial"}
    with pytest.raises(UserError, match="real_world"):
        load_detr_paper(["microscopic", "real_world"], root=tmp_path)
    with pytest.raises(UserError, match="classes"):
        load_detr_paper(["microscopic"], {"microscopic": ["a", "b", "c"]}, root=tmp_path)


def test_paper_profile_end_to_end_on_stand_ins(tmp_path, monkeypatch):
    from test_rf100 import _write_export

    _write_export(tmp_path / "data", "microscopic")
    _write_checkpoints(tmp_path / "models", ["microscopic"])
    monkeypatch.setenv("MERGE_BENCH_MODELS", str(tmp_path / "models"))
    monkeypatch.setattr(dt.Detr, "tasks", property(lambda self: ["microscopic"]))
    b = _make(None, profile="paper", data_root=str(tmp_path / "data"))
    b.prepare()
    assert b.image_size == 800
    x, y = next(b.batches("microscopic", "test", 2))
    out = b.ops().predict("microscopic", b.finetuned_state("microscopic"), x)
    # boxes come back in each image's own pixels (the images differ in size)
    assert len(out) == 2 and all(o["boxes"].shape == (dt.CONFIGS["micro"]["num_queries"], 4) for o in out)
    lg = b.ops().logits("microscopic", None, x)
    assert lg.shape == (2, dt.CONFIGS["micro"]["num_queries"], 3)
    m = b.suite.metric("microscopic")
    m.update(out, y)
    assert 0.0 <= m.compute() <= 100.0


def test_early_routing_is_a_user_error_on_detr(bb, batch):
    from benchmark.routing import routing_features

    x, _ = batch
    with pytest.raises(UserError, match="route_depth 1: this backbone's ModelOps has no early_features"):
        routing_features(bb.ops(), None, x, 1)


def test_paper_loader_with_a_cache_streams_converted_checkpoints(tmp_path, monkeypatch):
    """With a cache each domain's fine-tune is converted once: its state a LazyState equal to the in-RAM load, its
    class head too; a second load opens no fine-tuned model and still checks the class count; ``pretrained`` is
    the detector's own tensors (no second copy)."""
    from backbones import _detr_paper
    from benchmark.lazy_state import LazyState

    domains, classes = ["microscopic", "aerial"], {"microscopic": ["a", "b"], "aerial": ["c", "d"]}
    _write_checkpoints(tmp_path / "m", domains)
    ram = _detr_paper.load_detr_paper(domains, classes, root=tmp_path / "m")
    opened: list[str] = []
    real = _detr_paper._load_model
    monkeypatch.setattr(_detr_paper, "_load_model", lambda d: (opened.append(d.name), real(d))[1])
    cache = Cache(tmp_path / "cache")
    out = _detr_paper.load_detr_paper(domains, classes, root=tmp_path / "m", cache=cache)
    assert sorted(opened) == sorted(["detr-resnet-50", *domains])
    for t in domains:
        assert isinstance(out.finetuned[t], LazyState) and list(out.finetuned[t]) == list(ram.finetuned[t])
        assert all(torch.equal(out.finetuned[t][k], ram.finetuned[t][k]) for k in ram.finetuned[t])
        assert all(torch.equal(a, b) for a, b in zip(out.heads[t], ram.heads[t]))
    own = dict(out.detector.named_parameters())
    assert all(out.pretrained[k].data_ptr() == own[k].data_ptr() for k in out.pretrained)
    opened.clear()
    _detr_paper.load_detr_paper(domains, classes, root=tmp_path / "m", cache=cache)
    assert opened == ["detr-resnet-50"]
    with pytest.raises(UserError, match="classes"):
        _detr_paper.load_detr_paper(["microscopic"], {"microscopic": ["a", "b", "c"]}, root=tmp_path / "m",
                                    cache=cache)
