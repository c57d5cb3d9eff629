"""The ConvNeXt adapter: micro profile (mergeable tensors, functional and differentiable forwards, f_ex, linear
inputs of the pointwise convolutions, hashed checkpoints, a run through the runner) and the paper loader on
random-init stand-ins written here with ``save_pretrained``."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from torch import nn

from backbones import _convnext_paper as cp
from backbones import convnext as cx
from benchmark.cache import Cache, sha256_file
from benchmark.errors import UserError
from benchmark.registry import BACKBONES, SUITES


def _make(cache: Cache, profile: str = "micro", seed: int = 0):
    suite = SUITES.get("vision8").obj(profile=profile, seed=seed, cache=cache, progress=False)
    return BACKBONES.get("convnext").obj(profile=profile, suite=suite, seed=seed, cache=cache, progress=False)


@pytest.fixture(scope="session")
def bb(cache_root):
    b = _make(Cache(cache_root))
    b.prepare()
    return b


@pytest.fixture(scope="session")
def batch(bb):
    return next(bb.batches("digits", "test", 6))


def test_registered():
    p = BACKBONES.get("convnext")
    assert p.meta["suites"] == ("vision8",) and p.meta["default_suite"] == "vision8"
    assert p.obj is cx.ConvNeXt


def test_encoder_is_transformers_convnext(bb):
    from transformers import ConvNextModel

    assert isinstance(bb.encoder.convnext, ConvNextModel)
    assert bb.encoder.convnext.config.hidden_sizes == cx.CONFIGS["micro"]["hidden_sizes"]
    assert bb.mean == cx.IMAGENET_MEAN and bb.std == cx.IMAGENET_STD


def test_states_are_the_encoder_parameters(bb):
    pre = bb.pretrained_state()
    names = [n for n, _ in bb.encoder.named_parameters()]
    assert list(pre) == names
    for part in (".dwconv.weight", ".pwconv1.weight", ".pwconv2.weight", ".layer_scale_parameter",
                 "embeddings.patch_embeddings.weight", "downsampling_layer.1.weight"):
        assert any(part in n for n in names), part
    assert "projection.weight" in names
    for t in bb.tasks:
        ft = bb.finetuned_state(t)
        assert list(ft) == names
        assert all(v.dtype == torch.float32 and v.shape == pre[k].shape for k, v in ft.items())
        assert any(not torch.equal(ft[k], pre[k]) for k in pre), f"{t} was not fine-tuned"
    with pytest.raises(UserError):
        bb.finetuned_state("mnist")


def test_logits_and_features(bb, batch):
    ops = bb.ops()
    x, y = batch
    a = ops.logits("digits", None, x)
    assert a.shape == (len(y), 10)
    assert torch.allclose(a, ops.logits("digits", bb.pretrained_state(), x), atol=1e-5)
    assert not torch.allclose(a, ops.logits("digits", bb.finetuned_state("digits"), x))
    f = ops.features(None, x)
    assert f.shape == (len(y), cx.CONFIGS["micro"]["embed_dim"])
    assert torch.allclose(nn.functional.normalize(f, dim=-1) @ bb.head("digits").T, a, atol=1e-5)


def test_logits_are_differentiable_in_the_weights(bb, batch):
    ops = bb.ops()
    x, y = batch
    pre = bb.pretrained_state()
    coef = torch.tensor(0.3, requires_grad=True)
    w = {k: v + coef * (bb.finetuned_state("signs")[k] - v) for k, v in pre.items()}
    nn.functional.cross_entropy(ops.logits("digits", w, x), y).backward()
    assert coef.grad is not None and torch.isfinite(coef.grad) and coef.grad != 0
    leaf = {k: v.clone().requires_grad_(True) for k, v in pre.items()}
    ops.features(leaf, x).sum().backward()
    for k in ("convnext.embeddings.patch_embeddings.weight", "convnext.encoder.stages.0.layers.0.dwconv.weight",
              "convnext.encoder.stages.0.layers.0.layer_scale_parameter"):
        assert leaf[k].grad is not None and leaf[k].grad.abs().sum() > 0, k
    assert all(not p.requires_grad for p in bb.encoder.parameters())


def test_linear_inputs_are_the_pointwise_convs_and_projection(bb, batch):
    ops = bb.ops()
    x, _ = batch
    li = ops.linear_inputs(None, x)
    pre = bb.pretrained_state()
    linear = [n for n, m in bb.encoder.named_modules() if isinstance(m, nn.Linear)]
    assert sorted(li) == sorted(f"{n}.weight" for n in linear) and set(li) <= set(pre)
    assert any(k.endswith("pwconv1.weight") for k in li) and any(k.endswith("pwconv2.weight") for k in li)
    cfg = cx.CONFIGS["micro"]
    side = cfg["image_size"] // cfg["patch_size"]
    for k, v in li.items():
        assert v.ndim == 2 and v.shape[1] == pre[k].shape[1], k
        if k == "projection.weight":
            assert v.shape[0] == len(x)
        else:  # one row per pixel of the stage's feature map (channels-last), halved per stage
            stage = int(k.split("stages.")[1].split(".")[0])
            assert v.shape[0] == len(x) * (side >> stage) ** 2, k
    li_ft = ops.linear_inputs(bb.finetuned_state("digits"), x)
    assert not torch.allclose(li["projection.weight"], li_ft["projection.weight"])


def test_checkpoints_are_sha256_of_real_files(bb, cache_root):
    ck = bb.checkpoints()
    assert set(ck) == {"pretrained", "heads", *(f"finetuned/{t}" for t in bb.tasks)}
    files = {sha256_file(p) for p in Path(cache_root, "convnext").rglob("*.safetensors")}
    assert all(len(d) == 64 and d in files for d in ck.values())
    assert len(set(ck.values())) == len(ck)


def test_every_recipe_and_config_field_reaches_a_cache_key(bb, monkeypatch):
    def keys(recipe, config):
        seen = []

        def spy(self, name, cfg, seed, version, build):
            seen.append((name, repr(cfg), version))
            return Path("/nonexistent")

        with monkeypatch.context() as m:
            m.setitem(cx.RECIPES, "micro", recipe)
            m.setitem(cx.CONFIGS, "micro", config)
            m.setattr(Cache, "get_or_build", spy)
            b = _make(bb.cache)
            b.stage_file("pretrain")
            b.stage_file("heads", "p")
            b.stage_file("finetune", "p", "h", "digits")
        return seen

    base_r, base_c = cx.RECIPES["micro"], cx.CONFIGS["micro"]
    reference = keys(base_r, base_c)
    for f in dataclasses.fields(base_r):
        v = getattr(base_r, f.name)
        changed = dataclasses.replace(base_r, **{f.name: v + 1 if isinstance(v, int) else v * 2 + 0.5})
        assert keys(changed, base_c) != reference, f"recipe field {f.name} is in no cache key"
    assert keys(base_r, {**base_c, "depths": [1, 2]}) != reference


def test_runner_task_arithmetic_writes_a_record(bb, cache_root, tmp_path):
    from benchmark.runner import RunSpec, run

    rec, path = run(RunSpec(method="task_arithmetic", backbone="convnext", profile="micro",
                            results_dir=str(tmp_path), cache_root=str(cache_root), progress=False))
    assert path.exists() and path.parent == tmp_path
    assert set(rec["metrics"]) == set(bb.tasks)
    assert all(0.0 <= v <= 100.0 for v in rec["metrics"].values())
    assert rec["checkpoints"] == bb.checkpoints() and rec["storage_bytes"] > 0


# ----------------------------------------------------------------------------------------------------------------
# Paper profile, on random-init stand-ins


def _standin_config(num_labels: int = 1000):
    from transformers import ConvNextConfig

    return ConvNextConfig(num_channels=3, patch_size=4, num_stages=2, hidden_sizes=[8, 16], depths=[1, 1],
                          num_labels=num_labels, image_size=32)


@pytest.fixture(scope="module")
def paper_root(tmp_path_factory):
    """``<root>/facebook/convnext-base-224`` and ``<root>/tanganke/convnext-base-224_<task>_...`` for two tasks:
    random-init ``ConvNextForImageClassification`` models, the fine-tuned ones perturbed copies of the pretrained
    one with task-sized classifiers."""
    from transformers import ConvNextForImageClassification, ConvNextImageProcessor

    root = tmp_path_factory.mktemp("convnext_models")
    torch.manual_seed(0)
    pre = ConvNextForImageClassification(_standin_config()).eval()
    pre.save_pretrained(root / cp.PRETRAINED)
    ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=0.5, image_mean=[0.5, 0.4, 0.3],
                           image_std=[0.2, 0.25, 0.3]).save_pretrained(root / cp.PRETRAINED)
    models = {}
    for i, (task, n) in enumerate((("eurosat", 10), ("dtd", 47))):
        ft = ConvNextForImageClassification(_standin_config(n)).eval()
        sd = {k: v + 0.01 * (i + 1) * torch.randn_like(v) if k.startswith("convnext.") else v
              for k, v in pre.state_dict().items() if not k.startswith("classifier.")}
        ft.load_state_dict(sd, strict=False)
        d = root / cp.FINETUNED.format(task=task)
        ft.save_pretrained(d)
        if task == "dtd":  # a pytorch_model.bin checkpoint, as older transformers wrote them
            from safetensors.torch import load_file

            torch.save(load_file(str(d / "model.safetensors")), d / "pytorch_model.bin")
            (d / "model.safetensors").unlink()
        models[task] = ft
    return root, pre, models


def test_paper_loader_on_standins(paper_root):
    root, pre, models = paper_root
    p = cp.load_convnext_paper(["eurosat", "dtd"], {"eurosat": 10, "dtd": 47}, root=root)
    names = [n for n, _ in p.encoder.named_parameters()]
    assert names and all(n.startswith("convnext.") for n in names)
    assert list(p.pretrained) == names and all(list(p.finetuned[t]) == names for t in ("eurosat", "dtd"))
    for k, v in pre.state_dict().items():
        if k.startswith("convnext."):
            assert torch.equal(p.pretrained[k], v)
    assert not torch.equal(p.finetuned["dtd"][names[0]], p.pretrained[names[0]])
    assert (p.image_size, p.resize_size) == (32, 64)
    assert p.mean == (0.5, 0.4, 0.3) and p.std == (0.2, 0.25, 0.3)
    assert set(p.checkpoints) == {cp.PRETRAINED, *(cp.FINETUNED.format(task=t) for t in ("eurosat", "dtd"))}
    assert p.checkpoints[cp.PRETRAINED] == sha256_file(root / cp.PRETRAINED / "model.safetensors")
    assert p.checkpoints[cp.FINETUNED.format(task="dtd")] == sha256_file(
        root / cp.FINETUNED.format(task="dtd") / "pytorch_model.bin")
    # encoder under a task's weights + that task's head = the fine-tuned classifier model
    x = torch.randn(3, 3, 32, 32)
    for t, m in models.items():
        w, b = p.heads[t]
        assert w.shape == (m.config.num_labels, 16) and not w.requires_grad
        emb = torch.func.functional_call(p.encoder, p.finetuned[t], (x,))
        with torch.no_grad():
            torch.testing.assert_close(nn.functional.linear(emb, w, b), m(pixel_values=x).logits)


def test_paper_loader_errors(paper_root, tmp_path, monkeypatch):
    root, _, _ = paper_root
    monkeypatch.delenv(cp.MODELS_ENV_VAR, raising=False)
    with pytest.raises(UserError, match="convnext-base-224_svhn"):
        cp.load_convnext_paper(["eurosat", "svhn"], root=root)
    with pytest.raises(UserError, match="47 classes"):
        cp.load_convnext_paper(["dtd"], {"dtd": 45}, root=root)
    monkeypatch.setenv(cp.MODELS_ENV_VAR, str(root))  # found through the environment variable
    assert set(cp.load_convnext_paper(["eurosat"]).heads) == {"eurosat"}
    # a fine-tuned model of another architecture is refused
    from transformers import ConvNextForImageClassification

    other = _standin_config(10)
    other.hidden_sizes = [8, 24]
    ConvNextForImageClassification(other).save_pretrained(tmp_path / cp.FINETUNED.format(task="eurosat"))
    (tmp_path / "facebook").symlink_to(root / "facebook")
    with pytest.raises(UserError, match="shape"):
        cp.load_convnext_paper(["eurosat"], root=tmp_path)


def test_paper_branch_of_the_adapter(paper_root, monkeypatch):
    """The adapter on the paper profile: loader output wired in, ConvNeXt preprocessing of odd-sized images, and
    linear heads with bias."""
    from benchmark.contract import TaskData
    from tasks import vision_paper

    root, _, models = paper_root
    real = cp.load_convnext_paper
    monkeypatch.setattr(cp, "load_convnext_paper", lambda tasks, num_classes=None, cache=None: real(
        [t for t in tasks if t in models], {t: n for t, n in num_classes.items() if t in models}, root=root,
        cache=cache))
    n_cls = {"eurosat": 10, "dtd": 47}

    def fake_task(task, split, *, data_root=None):
        g = torch.Generator().manual_seed(len(task))
        n = n_cls.get(task, 3)
        return TaskData(torch.randint(0, 255, (5, 3, 40, 48), dtype=torch.uint8, generator=g),
                        torch.arange(5) % n, [f"c{i}" for i in range(n)])

    monkeypatch.setattr(vision_paper, "load_paper_task", fake_task)
    suite = SUITES.get("vision8").obj(profile="paper", seed=0, cache=Cache("/nonexistent"), progress=False)
    monkeypatch.setattr(type(suite), "tasks", property(lambda self: ["eurosat", "dtd"]))
    b = BACKBONES.get("convnext").obj(profile="paper", suite=suite, seed=0, cache=None, progress=False)
    b.prepare()
    assert b.image_size == 32 and b.resize_size == 64
    assert set(b.pretrained_state()) == {n for n, _ in b.encoder.named_parameters()}
    ops = b.ops()
    x, _ = next(b.batches("dtd", "test", 4))
    out = ops.logits("dtd", b.finetuned_state("dtd"), x)
    assert out.shape == (4, 47)
    # ConvNeXt's eval transform: resize the shorter side to 64, centre crop 32, normalize
    px = vision_paper.to_pixel_values(x, 64, b.mean, b.std)[..., 16:48, 16:48]
    with torch.no_grad():
        torch.testing.assert_close(out, models["dtd"](pixel_values=px).logits)
    li = ops.linear_inputs(None, x)
    assert li and all(k.endswith(("pwconv1.weight", "pwconv2.weight")) for k in li)


def test_paper_loader_with_a_cache_streams_converted_checkpoints(paper_root, tmp_path, monkeypatch):
    """With a cache each fine-tune is converted once: its state a LazyState equal to the in-RAM load, its head too;
    a second load reads no fine-tuned checkpoint, the class-count check still runs on a converted head, and a
    changed checkpoint is converted again. ``pretrained`` is the encoder's own tensors (no second copy)."""
    import shutil

    from safetensors.torch import load_file, save_file

    from benchmark.lazy_state import LazyState

    root, _, _ = paper_root
    tasks, ncls = ["eurosat", "dtd"], {"eurosat": 10, "dtd": 47}
    ram = cp.load_convnext_paper(tasks, ncls, root=root)
    reads: list[str] = []
    real = cp._read
    monkeypatch.setattr(cp, "_read", lambda d: (reads.append(Path(d).name), real(d))[1])
    cache = Cache(tmp_path / "cache")
    out = cp.load_convnext_paper(tasks, ncls, root=root, cache=cache)
    ft_dir = {t: Path(cp.FINETUNED.format(task=t)).name for t in tasks}
    assert sorted(reads) == sorted(["convnext-base-224", *ft_dir.values()])
    for t in tasks:
        assert isinstance(out.finetuned[t], LazyState) and list(out.finetuned[t]) == list(ram.finetuned[t])
        assert all(torch.equal(out.finetuned[t][k], ram.finetuned[t][k]) for k in ram.finetuned[t])
        assert all(torch.equal(a, b) for a, b in zip(out.heads[t], ram.heads[t]))
    enc = dict(out.encoder.named_parameters())
    assert all(out.pretrained[k].data_ptr() == enc[k].data_ptr() for k in out.pretrained)

    reads.clear()
    cp.load_convnext_paper(tasks, ncls, root=root, cache=cache)
    assert reads == ["convnext-base-224"]  # the pretrained checkpoint loads the encoder; no fine-tune is read
    with pytest.raises(UserError, match="47 classes"):
        cp.load_convnext_paper(["dtd"], {"dtd": 45}, root=root, cache=cache)

    root2 = tmp_path / "root"
    shutil.copytree(root, root2)
    f = root2 / cp.FINETUNED.format(task="eurosat") / "model.safetensors"
    changed = {k: v + 1.0 for k, v in load_file(str(f)).items()}
    save_file(changed, str(f))
    reads.clear()
    third = cp.load_convnext_paper(tasks, ncls, root=root2, cache=cache)
    assert sorted(reads) == sorted(["convnext-base-224", ft_dir["eurosat"]])
    k = next(iter(third.pretrained))
    assert torch.equal(third.finetuned["eurosat"][k], changed[k])
    assert torch.equal(third.finetuned["dtd"][k], ram.finetuned["dtd"][k])
