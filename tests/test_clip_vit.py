"""The CLIP ViT adapter on the micro profile: mergeable tensors, functional and differentiable forwards, f_ex,
linear inputs (q/k/v included), seeded train-split exemplars, cached and hashed checkpoints, and the paper branch's
glue on a stand-in loader."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from torch import nn

from benchmark.cache import Cache, sha256_file
from benchmark.registry import BACKBONES, SUITES
from backbones import clip_vit as cv


def _make(name: str, cache: Cache, profile: str = "micro", seed: int = 0):
    suite = SUITES.get("vision8").obj(profile=profile, seed=seed, cache=cache, progress=False)
    return BACKBONES.get(name).obj(profile=profile, suite=suite, seed=seed, cache=cache, progress=False)


@pytest.fixture(scope="session")
def bb(cache_root):
    b = _make("clip_vit_b32", Cache(cache_root))
    b.prepare()
    return b


@pytest.fixture(scope="session")
def batch(bb):
    x, y = next(bb.batches("digits", "test", 6))
    return x, y


def test_registered():
    for name in ("clip_vit_b32", "clip_vit_l14"):
        p = BACKBONES.get(name)
        assert p.meta["suites"] == ("vision8",) and p.meta["default_suite"] == "vision8"


def test_states_are_the_encoder_parameters(bb):
    pre = bb.pretrained_state()
    names = [n for n, _ in bb.encoder.named_parameters()]
    assert list(pre) == names
    assert any(".self_attn.q_proj.weight" in n for n in names) and "visual_projection.weight" in names
    for t in bb.tasks:
        ft = bb.finetuned_state(t)
        assert list(ft) == names
        assert all(v.dtype == torch.float32 and v.shape == pre[k].shape for k, v in ft.items())
        assert any(not torch.equal(ft[k], pre[k]) for k in pre), f"{t} was not fine-tuned"


def test_heads_are_frozen_scaled_prototypes(bb):
    e = bb.config["projection_dim"]
    for t in bb.tasks:
        h = bb.head(t)
        assert h.shape == (len(bb.suite.classnames(t)), e) and not h.requires_grad
        assert torch.allclose(h.norm(dim=1), torch.full((h.shape[0],), cv.RECIPES["micro"].logit_scale), atol=1e-4)


def test_logits_none_equal_logits_under_pretrained(bb, batch):
    ops = bb.ops()
    x, y = batch
    a = ops.logits("digits", None, x)
    b = ops.logits("digits", bb.pretrained_state(), x)
    assert a.shape == (len(y), 10)
    assert torch.allclose(a, b, atol=1e-5)
    c = ops.logits("digits", bb.finetuned_state("digits"), x)
    assert not torch.allclose(a, c)
    # logits = normalize(f_ex) @ head.T
    f = ops.features(None, x)
    assert f.shape == (len(y), bb.config["projection_dim"])
    assert torch.allclose(torch.nn.functional.normalize(f, dim=-1) @ bb.head("digits").T, a, atol=1e-5)


def test_early_features_are_the_tower_cut_after_depth_blocks(bb, batch):
    ops = bb.ops()
    x, _ = batch
    vm = bb.encoder.vision_model
    n = len(vm.encoder.layers)
    px = cv.to_pixels(x, bb.image_size, bb.mean, bb.std, bb.device)
    with torch.no_grad():
        # the full depth is the tower's own pooled output (before the projection) ...
        assert torch.equal(ops.early_features(None, x, n), vm(pixel_values=px).pooler_output)
        # ... and depth d its class token after block d, through post_layernorm, computed here by hand
        h = vm.pre_layrnorm(vm.embeddings(px))
        h = vm.encoder.layers[0](h, None)
        assert torch.equal(ops.early_features(None, x, 1), vm.post_layernorm(h[:, 0]))
        pre = bb.pretrained_state()
        assert torch.allclose(ops.early_features(pre, x, 1), ops.early_features(None, x, 1), atol=1e-6)
        # weights reach the blocks it runs, and not what it skips (the projection)
        first = {k: v + 0.1 if ".layers.0." in k else v for k, v in pre.items()}
        assert not torch.allclose(ops.early_features(first, x, 1), ops.early_features(pre, x, 1))
        proj = {k: v + 1.0 if k.startswith("visual_projection.") else v for k, v in pre.items()}
        assert torch.equal(ops.early_features(proj, x, 1), ops.early_features(pre, x, 1))
    for bad in (0, n + 1):
        with pytest.raises(ValueError, match="depth"):
            ops.early_features(None, x, bad)


def test_functional_weights_are_differentiable(bb, batch):
    ops = bb.ops()
    x, y = batch
    pre = bb.pretrained_state()
    coef = torch.tensor(0.3, requires_grad=True)
    tv = {k: bb.finetuned_state("signs")[k] - v for k, v in pre.items()}
    w = {k: pre[k] + coef * tv[k] for k in pre}
    loss = nn.functional.cross_entropy(ops.logits("digits", w, x), y)
    loss.backward()
    assert coef.grad is not None and torch.isfinite(coef.grad) and coef.grad != 0
    leaf = {k: v.clone().requires_grad_(True) for k, v in pre.items()}
    ops.features(leaf, x).sum().backward()
    q = next(k for k in leaf if k.endswith("self_attn.q_proj.weight"))
    assert leaf[q].grad is not None and leaf[q].grad.abs().sum() > 0
    assert all(not p.requires_grad for p in bb.encoder.parameters())  # the module itself is never trained


def test_linear_inputs_cover_attention_and_mlp(bb, batch):
    ops = bb.ops()
    x, _ = batch
    li = ops.linear_inputs(None, x)
    pre = bb.pretrained_state()
    linear = [n for n, m in bb.encoder.named_modules() if isinstance(m, nn.Linear)]
    assert sorted(li) == sorted(f"{n}.weight" for n in linear)
    for proj in ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"):
        assert any(f".{proj}.weight" in k for k in li), proj
    cfg = bb.config
    tokens = (cfg["image_size"] // cfg["patch_size"]) ** 2 + 1
    for k, v in li.items():
        assert v.ndim == 2 and v.shape[1] == pre[k].shape[1]
        assert v.shape[0] == (len(x) if k == "visual_projection.weight" else len(x) * tokens)
    # under other weights the inputs change (deeper layers see the fine-tuned model's activations)
    li_ft = ops.linear_inputs(bb.finetuned_state("digits"), x)
    assert not torch.allclose(li["visual_projection.weight"], li_ft["visual_projection.weight"])


def _rows(x: torch.Tensor) -> set[str]:
    return {hashlib.sha1(r.numpy().tobytes()).hexdigest() for r in x}


def test_exemplars_come_from_train_and_are_seeded(bb):
    ops = bb.ops()
    train = _rows(bb.suite.load("glyphs", "train").inputs)
    test = _rows(bb.suite.load("glyphs", "test").inputs)
    a = ops.exemplars("glyphs", 8, seed=0)
    assert ops.num_examples(a) == 8 and _rows(a) <= train and not _rows(a) & test
    assert torch.equal(a, ops.exemplars("glyphs", 8, seed=0))
    assert not torch.equal(a, ops.exemplars("glyphs", 8, seed=1))
    assert not torch.equal(a, ops.exemplars("count", 8, seed=0))
    t = ops.test_inputs("glyphs", None, seed=0)
    assert ops.num_examples(t) == len(bb.suite.load("glyphs", "test")) and _rows(t) == test
    assert torch.equal(ops.slice(a, torch.tensor([2, 0])), a[[2, 0]])


def test_batches_cover_the_split_in_order(bb):
    d = bb.suite.load("count", "val")
    xs, ys = zip(*bb.batches("count", "val", 5))
    assert torch.equal(torch.cat(xs), d.inputs) and torch.equal(torch.cat(ys), d.targets)


def test_checkpoints_are_sha256_of_real_files(bb, cache_root):
    ck = bb.checkpoints()
    assert set(ck) == {"pretrained", "heads", *(f"finetuned/{t}" for t in bb.tasks)}
    files = {sha256_file(p): p for p in Path(cache_root, "clip_vit_b32").rglob("*.safetensors")}
    for name, digest in ck.items():
        assert len(digest) == 64 and digest in files, name
    assert len(set(ck.values())) == len(ck)


def test_cache_is_reused(bb, monkeypatch):
    # Patch the builder handed to the cache, not the _build_* methods: their source is part of the cache key.
    real = Cache.get_or_build

    def no_build(self, name, config, seed, version, build):
        def boom(tmp):
            raise AssertionError(f"built {name} again")

        return real(self, name, config, seed, version, boom)

    monkeypatch.setattr(Cache, "get_or_build", no_build)
    again = _make("clip_vit_b32", bb.cache)
    again.prepare()
    assert again.checkpoints() == bb.checkpoints()


def test_every_recipe_field_reaches_a_cache_key(bb, monkeypatch):
    """Changing any recipe field must change some stage's cache key (a field left out of every key let two
    fine-tuning recipes share one cached checkpoint)."""
    import dataclasses

    def keys(recipe):
        seen = []
        real = Cache.get_or_build

        def spy(self, name, config, seed, version, build):
            seen.append((name, repr(config)))
            return real(self, name, config, seed, version, build)

        with monkeypatch.context() as m:
            m.setitem(cv.RECIPES, "micro", recipe)
            m.setattr(Cache, "get_or_build", spy)
            b = _make("clip_vit_b32", bb.cache)
            b.stage_file("pretrain")
            b.stage_file("heads", "p")
            b.stage_file("finetune", "p", "h", "digits")
        return seen

    base = cv.RECIPES["micro"]
    monkeypatch.setattr(Cache, "get_or_build", lambda self, name, config, seed, version, build: Path("/nonexistent"))
    reference = keys(base)
    for f in dataclasses.fields(base):
        v = getattr(base, f.name)
        changed = dataclasses.replace(base, **{f.name: v + 1 if isinstance(v, int) else v * 2 + 0.5})
        assert keys(changed) != reference, f"recipe field {f.name} is in no cache key"


def test_pretraining_is_deterministic(bb, tmp_path):
    """A fresh cache rebuilds a bit-identical pretrained checkpoint."""
    fresh = _make("clip_vit_b32", Cache(tmp_path))
    path = fresh.stage_file("pretrain")
    assert sha256_file(path) == bb.checkpoints()["pretrained"]


def test_l14_micro_is_a_bigger_variant(cache_root):
    b = _make("clip_vit_l14", Cache(cache_root))
    b.prepare()
    assert b.config["patch_size"] < cv.CONFIGS["clip_vit_b32"]["micro"]["patch_size"]
    x, _ = next(b.batches("textures", "test", 4))
    assert b.ops().logits("textures", None, x).shape == (4, 8)


def test_runner_end_to_end(bb, cache_root, tmp_path):
    from benchmark.runner import RunSpec, run

    rec, path = run(RunSpec(method="individual", backbone="clip_vit_b32", profile="micro", results_dir=str(tmp_path),
                            cache_root=str(cache_root), progress=False))
    assert path.exists() and set(rec["metrics"]) == set(bb.tasks)
    assert rec["checkpoints"] == bb.checkpoints() and rec["storage_bytes"] > 0
    assert rec["suite_data"] == bb.suite.fingerprint() and len(rec["suite_data"]) == 64  # the data it ran on


# ----------------------------------------------------------------------------------------------------------------
# The paper branch, on a stand-in for backbones._clip_paper.load_clip_paper


def test_paper_branch_uses_the_paper_loader(monkeypatch):
    from backbones import _clip_paper
    from benchmark.contract import TaskData
    from tasks import vision_paper

    enc = cv.build_encoder(dict(image_size=16, patch_size=8, hidden_size=16, intermediate_size=32,
                                num_hidden_layers=1, num_attention_heads=2, projection_dim=8))
    state = {k: v.detach().clone() for k, v in enc.state_dict().items()}
    frozen = ["visual_projection.weight"]
    tasks = ["sun397", "stanford-cars", "resisc45", "eurosat", "svhn", "gtsrb", "mnist", "dtd"]
    seen = {}

    def fake_clip(model, tasks_, classnames, *, root=None, cache=None):
        seen["args"] = (model, list(tasks_), {t: len(c) for t, c in classnames.items()})
        ft = {t: {k: v + 0.01 * (i + 1) for k, v in state.items()} for i, t in enumerate(tasks_)}
        heads = {t: nn.functional.normalize(torch.randn(3, 8), dim=1) * 100 for t in tasks_}
        return _clip_paper.PaperCLIP(enc, dict(state), ft, heads, 16, (0.5,) * 3, (0.25,) * 3,
                                     {"openai/clip-vit-base-patch32": "0" * 64}, frozen=frozen)

    def fake_task(task, split, *, data_root=None):
        return TaskData(torch.randint(0, 255, (5, 3, 20, 24), dtype=torch.uint8), torch.tensor([0, 1, 2, 0, 1]),
                        ["a", "b", "c"])

    monkeypatch.setattr(_clip_paper, "load_clip_paper", fake_clip)
    monkeypatch.setattr(vision_paper, "load_paper_task", fake_task)
    b = _make("clip_vit_b32", Cache("/nonexistent"), profile="paper")
    b.prepare()
    assert seen["args"] == ("clip_vit_b32", tasks, {t: 3 for t in tasks})
    pre = b.pretrained_state()
    assert "visual_projection.weight" not in pre and len(pre) == len(state) - 1
    assert set(b.finetuned_state("mnist")) == set(pre)
    ops = b.ops()
    x, y = next(b.batches("dtd", "test", 4))
    out = ops.logits("dtd", b.finetuned_state("dtd"), x)
    assert out.shape == (4, 3)
    assert "visual_projection.weight" not in ops.linear_inputs(None, x)
    assert b.checkpoints() == {"openai/clip-vit-base-patch32": "0" * 64}
