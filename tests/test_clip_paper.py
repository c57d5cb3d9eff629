"""Paper-profile CLIP loading (backbones/_clip_paper.py) and the 8 real vision tasks (tasks/vision_paper.py), on
stand-ins the tests write themselves: random-init tiny CLIP models saved like the Hub checkpoints (transformers) and
like the task_vectors release (open_clip), and tiny image datasets saved with ``datasets``. All offline."""
from __future__ import annotations

import hashlib
import json
import pickle
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from benchmark.errors import UserError

transformers = pytest.importorskip("transformers")
open_clip = pytest.importorskip("open_clip")
datasets = pytest.importorskip("datasets")

from backbones import _clip_paper as cp  # noqa: E402
from tasks import vision_paper as vp  # noqa: E402

B32 = "openai/clip-vit-base-patch32"
FT = "tanganke/clip-vit-base-patch32_{}"
HF_TASKS = ["mnist", "eurosat", "svhn"]
CLASSNAMES = {
    "mnist": [str(i) for i in range(10)],
    "eurosat": ["annual crop", "forest", "sea or lake"],
    "svhn": [str(i) for i in range(10)],
    "dtd": ["banded", "dotted"],
    "gtsrb": ["stop", "yield"],
}


def sha256(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


# ----------------------------------------------------------------------------------------------------------------
# transformers stand-ins


def _bytes_to_unicode() -> dict[int, str]:
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def tiny_tokenizer():
    """A CLIP BPE tokenizer over bytes plus a few merges, built offline."""
    chars = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for c in chars + [c + "</w>" for c in chars]:
        vocab[c] = len(vocab)
    merges = [("p", "h"), ("ph", "o"), ("t", "o</w>"), ("o", "f</w>"), ("a", "t")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return transformers.CLIPTokenizer(vocab=vocab, merges=merges)


VISION = dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
              num_attention_heads=4)


def tiny_clip(tok) -> "transformers.CLIPModel":
    torch.manual_seed(0)
    text = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=77, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id)
    cfg = transformers.CLIPConfig(text_config=text, vision_config=VISION, projection_dim=16)
    return transformers.CLIPModel(cfg).eval()


def perturbed_vision(clip, seed: int) -> dict[str, torch.Tensor]:
    """A 'fine-tuned' vision tower: the pretrained one plus noise, keys as transformers 5 CLIPVisionModel."""
    g = torch.Generator().manual_seed(seed)
    sd = clip.vision_model.state_dict()
    return {k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in sd.items()}


def write_hf_root(root: Path, tasks=HF_TASKS, projection_for: str | None = None) -> dict:
    """root/openai/clip-vit-base-patch32 (CLIPModel + tokenizer + preprocessor) and one fine-tuned vision model per
    task, in three formats: transformers-5 save_pretrained (mnist), transformers-4 keys ``vision_model.*`` in
    safetensors (eurosat, like the tanganke files) and pytorch_model.bin (svhn)."""
    from safetensors.torch import save_file

    tok = tiny_tokenizer()
    clip = tiny_clip(tok)
    pre = root / B32
    clip.save_pretrained(pre)
    tok.save_pretrained(pre)
    proc = transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    proc.save_pretrained(pre)
    saved = {}
    for i, t in enumerate(tasks):
        d = root / FT.format(t)
        d.mkdir(parents=True)
        sd = perturbed_vision(clip, seed=100 + i)
        saved[t] = {"vision_model." + k: v.clone() for k, v in sd.items()}
        if t == projection_for:
            proj = clip.visual_projection.weight.detach() + 0.1
            saved[t]["visual_projection.weight"] = proj.clone()
        if t == "mnist" and t != projection_for:
            vm = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**VISION))
            vm.load_state_dict(sd)
            vm.save_pretrained(d)
        elif t == "svhn":
            torch.save(dict(saved[t]), d / "pytorch_model.bin")
            (d / "config.json").write_text(json.dumps({"model_type": "clip_vision_model"}))
        else:
            save_file({k: v.contiguous() for k, v in saved[t].items()}, str(d / "model.safetensors"))
            (d / "config.json").write_text(json.dumps({"model_type": "clip_vision_model"}))
    return {"clip": clip, "tok": tok, "saved": saved}


@pytest.fixture(scope="module")
def hf_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    info = write_hf_root(root)
    return root, info


@pytest.fixture(scope="module")
def hf_loaded(hf_root):
    root, _ = hf_root
    return cp.load_clip_paper("clip_vit_b32", HF_TASKS, CLASSNAMES, root=str(root))


def test_hf_state_dicts_match_the_files(hf_root, hf_loaded):
    root, info = hf_root
    out = hf_loaded
    clip = info["clip"]
    assert out.source == "hf"
    keys = set(out.pretrained)
    assert keys == {"vision_model." + k for k, _ in clip.vision_model.named_parameters()}
    assert "visual_projection.weight" not in keys and out.frozen == ["visual_projection.weight"]
    for k, v in clip.vision_model.named_parameters():
        assert out.pretrained["vision_model." + k].dtype == torch.float32
        assert torch.equal(out.pretrained["vision_model." + k], v.detach())
    for t in HF_TASKS:
        assert set(out.finetuned[t]) == keys
        for k in keys:
            assert torch.equal(out.finetuned[t][k], info["saved"][t][k]), (t, k)
    # the encoder's own parameters are the pretrained ones (and its projection is CLIP's)
    enc_sd = dict(out.encoder.named_parameters())
    assert torch.equal(enc_sd["visual_projection.weight"], clip.visual_projection.weight)


def test_hf_with_a_cache_streams_converted_checkpoints(hf_root, tmp_path, monkeypatch):
    """With a cache the fine-tuned states are LazyStates over float32 safetensors converted once into it: equal to
    the files, the raw checkpoints not read again on a second load, converted again when a checkpoint changes.
    ``pretrained`` is the encoder's own tensors (no second copy)."""
    from safetensors.torch import save_file

    from benchmark.cache import Cache
    from benchmark.lazy_state import LazyState

    root, info = hf_root
    cache = Cache(tmp_path / "cache")
    reads = []
    real = cp.read_state_file
    monkeypatch.setattr(cp, "read_state_file", lambda p, *a, **k: (reads.append(Path(p)), real(p, *a, **k))[1])
    out = cp.load_clip_paper("clip_vit_b32", HF_TASKS, CLASSNAMES, root=str(root), cache=cache)
    assert len(reads) == len(HF_TASKS)
    for t in HF_TASKS:
        assert isinstance(out.finetuned[t], LazyState) and set(out.finetuned[t]) == set(out.pretrained)
        for k in out.pretrained:
            got = out.finetuned[t][k]
            assert got.dtype == torch.float32 and torch.equal(got, info["saved"][t][k]), (t, k)
    enc = dict(out.encoder.named_parameters())
    assert all(out.pretrained[k].data_ptr() == enc[k].data_ptr() for k in out.pretrained)

    reads.clear()
    again = cp.load_clip_paper("clip_vit_b32", HF_TASKS, CLASSNAMES, root=str(root), cache=cache)
    assert reads == []  # served from the converted entries
    assert all(again.finetuned[t].path == out.finetuned[t].path for t in HF_TASKS)

    # a changed checkpoint (same path) has another sha256, hence another entry
    f = root / cp.PAPER_MODELS["clip_vit_b32"].finetuned.format(task="eurosat") / "model.safetensors"
    changed = {k: v + 1.0 for k, v in info["saved"]["eurosat"].items()}
    save_file({k: v.contiguous() for k, v in changed.items()}, str(f))
    try:
        third = cp.load_clip_paper("clip_vit_b32", HF_TASKS, CLASSNAMES, root=str(root), cache=cache)
        assert [p.parent.name for p in reads] == [f.parent.name]
        k = next(iter(third.pretrained))
        assert torch.equal(third.finetuned["eurosat"][k], changed[k])
        assert torch.equal(third.finetuned["mnist"][k], info["saved"]["mnist"][k])
    finally:  # the module's other tests read this root
        save_file({k: v.contiguous() for k, v in info["saved"]["eurosat"].items()}, str(f))


def test_hf_encoder_matches_get_image_features(hf_root, hf_loaded):
    _, info = hf_root
    clip, out = info["clip"], hf_loaded
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ref = clip.get_image_features(pixel_values=x)
        ref = ref if isinstance(ref, torch.Tensor) else ref.pooler_output
        got = out.encoder(x)
        assert got.shape == (3, 16)
        torch.testing.assert_close(got, ref)
        # fine-tuned weights through functional_call == a CLIPVisionModel holding them, projected
        t = "eurosat"
        vm = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**VISION)).eval()
        vm.load_state_dict({k.removeprefix("vision_model."): v for k, v in info["saved"][t].items()})
        ref_ft = clip.visual_projection(vm(pixel_values=x).pooler_output)
        got_ft = torch.func.functional_call(out.encoder, out.finetuned[t], (x,))
        torch.testing.assert_close(got_ft, ref_ft)
        assert not torch.allclose(got_ft, got)


def test_hf_heads_are_normalized_zero_shot_heads(hf_root, hf_loaded):
    _, info = hf_root
    clip, tok, out = info["clip"], info["tok"], hf_loaded
    scale = clip.logit_scale.exp().item()
    assert out.logit_scale == pytest.approx(scale)
    for t in HF_TASKS:
        h = out.heads[t]
        assert h.shape == (len(CLASSNAMES[t]), 16) and not h.requires_grad
        torch.testing.assert_close(h.norm(dim=-1), torch.full((h.shape[0],), scale))
    # independent computation for one task
    t = "eurosat"
    rows = []
    with torch.no_grad():
        for c in CLASSNAMES[t]:
            enc = tok([tmpl.format(c) for tmpl in vp.TEMPLATES[t]], padding=True, return_tensors="pt")
            e = clip.get_text_features(**enc)
            e = e if isinstance(e, torch.Tensor) else e.pooler_output
            e = F.normalize(e, dim=-1).mean(0)
            rows.append(e / e.norm())
    torch.testing.assert_close(out.heads[t], torch.stack(rows) * scale)
    # logits = normalized embeddings @ head.T
    emb = torch.randn(4, 16)
    torch.testing.assert_close(out.logits(t, emb), F.normalize(emb, dim=-1) @ out.heads[t].T)


def test_hf_checkpoints_and_preprocessing(hf_root, hf_loaded):
    root, _ = hf_root
    out = hf_loaded
    files = {
        B32: root / B32 / "model.safetensors",
        FT.format("mnist"): root / FT.format("mnist") / "model.safetensors",
        FT.format("eurosat"): root / FT.format("eurosat") / "model.safetensors",
        FT.format("svhn"): root / FT.format("svhn") / "pytorch_model.bin",
    }
    assert out.checkpoints == {name: sha256(p) for name, p in files.items()}
    assert out.image_size == 32
    assert out.mean == pytest.approx(cp.OPENAI_MEAN) and out.std == pytest.approx(cp.OPENAI_STD)


def test_hf_templates_option(hf_root):
    root, _ = hf_root
    custom = {"mnist": ["digit {}"]}
    out = cp.load_clip_paper("clip_vit_b32", ["mnist"], CLASSNAMES, root=root, templates=custom)
    base = cp.load_clip_paper("clip_vit_b32", ["mnist"], CLASSNAMES, root=root)
    assert not torch.allclose(out.heads["mnist"], base.heads["mnist"])
    fb = cp.load_clip_paper("clip_vit_b32", ["mnist"], CLASSNAMES, root=root, templates="fusion_bench")
    assert fb.heads["mnist"].shape == (10, 16)


def test_hf_missing_checkpoint_is_a_user_error(hf_root, monkeypatch, tmp_path):
    root, _ = hf_root
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))
    with pytest.raises(UserError) as e:
        cp.load_clip_paper("clip_vit_b32", ["mnist", "gtsrb", "dtd"], CLASSNAMES, root=root)
    msg = str(e.value)
    assert "tanganke/clip-vit-base-patch32_gtsrb" in msg and "tanganke/clip-vit-base-patch32_dtd" in msg
    assert "_mnist" not in msg and "root" in msg
    # no root at all, offline, empty cache: the pretrained model is named too
    monkeypatch.delenv(cp.MODELS_ENV_VAR, raising=False)
    with pytest.raises(UserError, match="openai/clip-vit-large-patch14"):
        cp.load_clip_paper("clip_vit_l14", ["mnist"], CLASSNAMES)


def test_bad_arguments_are_user_errors(hf_root):
    root, _ = hf_root
    with pytest.raises(UserError, match="clip_vit_b32"):
        cp.load_clip_paper("clip_vit_h14", ["mnist"], CLASSNAMES, root=root)
    with pytest.raises(UserError, match="class names"):
        cp.load_clip_paper("clip_vit_b32", ["mnist"], {}, root=root)
    with pytest.raises(UserError, match="open_clip"):
        cp.load_clip_paper("clip_vit_b32", ["mnist"], CLASSNAMES, root=root, source="timm")


def test_hf_projection_is_mergeable_only_when_finetuned(tmp_path):
    info = write_hf_root(tmp_path, tasks=["mnist", "eurosat"], projection_for="eurosat")
    out = cp.load_clip_paper("clip_vit_b32", ["mnist", "eurosat"], CLASSNAMES, root=tmp_path)
    k = "visual_projection.weight"
    assert k in out.pretrained and out.frozen == []
    assert torch.equal(out.finetuned["eurosat"][k], info["saved"]["eurosat"][k])
    assert torch.equal(out.finetuned["mnist"][k], out.pretrained[k])  # no projection in its checkpoint


# ----------------------------------------------------------------------------------------------------------------
# open_clip stand-ins (task_vectors layout)

ARCH = "mb-test-tiny-ViT"
OC_CFG = {"embed_dim": 16, "quick_gelu": True,
          "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 8},
          "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 4, "layers": 2}}
OC_TASKS = ["mnist", "eurosat", "dtd"]


@pytest.fixture(scope="module")
def oc_arch(tmp_path_factory):
    d = tmp_path_factory.mktemp("oc_cfg")
    (d / f"{ARCH}.json").write_text(json.dumps(OC_CFG))
    open_clip.add_model_config(d / f"{ARCH}.json")
    return ARCH


@pytest.fixture
def tiny_spec(oc_arch, monkeypatch):
    monkeypatch.setitem(cp.PAPER_MODELS, "clip_tiny", cp.ClipPaperSpec(B32, FT, oc_arch))
    return "clip_tiny"


def tiny_open_clip():
    torch.manual_seed(1)
    return open_clip.create_model(ARCH, force_quick_gelu=True).eval()


def perturbed(sd: dict, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in sd.items()}


def test_open_clip_state_dicts(tmp_path, tiny_spec):
    from safetensors.torch import save_file

    model = tiny_open_clip()
    base = tmp_path / ARCH
    base.mkdir()
    # ImageEncoder(keep_lang=True).state_dict(): "model." prefix, text tower included
    torch.save({"model." + k: v for k, v in model.state_dict().items()}, base / "zeroshot.pt")
    vis = model.visual.state_dict()
    ft = {t: perturbed(vis, 10 + i) for i, t in enumerate(OC_TASKS)}
    (base / "MNIST").mkdir()
    torch.save({"visual." + k: v for k, v in ft["mnist"].items()}, base / "MNIST" / "finetuned.pt")
    (base / "EuroSATVal").mkdir()
    torch.save(ft["eurosat"], base / "EuroSATVal" / "finetuned.pt")  # visual-only keys
    (base / "DTD").mkdir()
    save_file({k: v.contiguous() for k, v in ft["dtd"].items()}, str(base / "DTD" / "finetuned.safetensors"))

    out = cp.load_clip_paper(tiny_spec, OC_TASKS, CLASSNAMES, root=tmp_path, source="open_clip")
    assert out.source == "open_clip" and out.frozen == []
    assert set(out.pretrained) == set(dict(model.visual.named_parameters())) and "proj" in out.pretrained
    for k, v in model.visual.named_parameters():
        assert torch.equal(out.pretrained[k], v.detach())
    for t in OC_TASKS:
        assert set(out.finetuned[t]) == set(out.pretrained)
        for k in out.pretrained:
            assert torch.equal(out.finetuned[t][k], ft[t][k])
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(out.encoder(x), model.encode_image(x))
    # heads from the text tower of zeroshot.pt
    scale = model.logit_scale.exp().item()
    tok = open_clip.get_tokenizer(ARCH)
    with torch.no_grad():
        rows = []
        for c in CLASSNAMES["dtd"]:
            e = F.normalize(model.encode_text(tok([s.format(c) for s in vp.TEMPLATES["dtd"]])), dim=-1).mean(0)
            rows.append(e / e.norm())
    torch.testing.assert_close(out.heads["dtd"], torch.stack(rows) * scale)
    assert out.checkpoints == {
        f"{ARCH}/zeroshot.pt": sha256(base / "zeroshot.pt"),
        f"{ARCH}/MNIST/finetuned.pt": sha256(base / "MNIST" / "finetuned.pt"),
        f"{ARCH}/EuroSATVal/finetuned.pt": sha256(base / "EuroSATVal" / "finetuned.pt"),
        f"{ARCH}/DTD/finetuned.safetensors": sha256(base / "DTD" / "finetuned.safetensors"),
    }
    assert out.image_size == 32 and out.mean == pytest.approx(cp.OPENAI_MEAN)


def _fake_task_vectors_module():
    """Classes shaped like mlfoundations/task_vectors' src.modeling, registered as ``src.modeling``."""
    src = types.ModuleType("src")
    modeling = types.ModuleType("src.modeling")

    class ImageEncoder(nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model
            self.train_preprocess = None
            if hasattr(self.model, "transformer"):
                delattr(self.model, "transformer")  # task_vectors drops the text transformer

    class ClassificationHead(nn.Linear):
        def __init__(self, normalize, weights):
            super().__init__(weights.shape[1], weights.shape[0])
            self.normalize = normalize
            self.weight = nn.Parameter(weights.clone())
            self.bias = nn.Parameter(torch.zeros(weights.shape[0]))

    for cls in (ImageEncoder, ClassificationHead):
        cls.__module__ = "src.modeling"
        cls.__qualname__ = cls.__name__
        setattr(modeling, cls.__name__, cls)
    src.modeling = modeling
    return src, modeling


def test_open_clip_pickled_task_vectors_checkpoints(tmp_path, tiny_spec, monkeypatch):
    src, modeling = _fake_task_vectors_module()
    monkeypatch.setitem(sys.modules, "src", src)
    monkeypatch.setitem(sys.modules, "src.modeling", modeling)
    base = tmp_path / ARCH
    base.mkdir()
    zs_model = tiny_open_clip()
    pre_visual = {k: v.clone() for k, v in zs_model.visual.state_dict().items()}
    torch.save(modeling.ImageEncoder(zs_model), base / "zeroshot.pt")
    ft, heads = {}, {}
    for i, (t, name) in enumerate([("mnist", "MNIST"), ("eurosat", "EuroSAT")]):
        m = tiny_open_clip()
        m.visual.load_state_dict(perturbed(pre_visual, 20 + i))
        ft[t] = {k: v.clone() for k, v in m.visual.state_dict().items()}
        (base / name).mkdir()
        enc = modeling.ImageEncoder(m)
        if t == "mnist":
            torch.save(enc, base / name / "finetuned.pt")
        else:  # task_vectors' torch_load_old format: a plain pickle
            with open(base / name / "finetuned.pt", "wb") as f:
                pickle.dump(enc, f)
        heads[t] = torch.randn(len(CLASSNAMES[t]), 16)
        torch.save(modeling.ClassificationHead(True, heads[t]), base / f"head_{name}.pt")
    monkeypatch.delitem(sys.modules, "src")
    monkeypatch.delitem(sys.modules, "src.modeling")  # the original code base is not importable when loading

    with pytest.raises(UserError, match="allow_pickle"):
        cp.load_clip_paper(tiny_spec, ["mnist", "eurosat"], CLASSNAMES, root=tmp_path, source="open_clip")
    out = cp.load_clip_paper(tiny_spec, ["mnist", "eurosat"], CLASSNAMES, root=tmp_path, source="open_clip",
                             allow_pickle=True)
    assert "src" not in sys.modules
    for k in out.pretrained:
        assert torch.equal(out.pretrained[k], pre_visual[k])
    for t in ("mnist", "eurosat"):
        assert torch.equal(out.heads[t], heads[t])
        for k in out.pretrained:
            assert torch.equal(out.finetuned[t][k], ft[t][k])
    assert f"{ARCH}/head_MNIST.pt" in out.checkpoints

    # a task without a head file, and zeroshot.pt without a text tower: nothing to build its head from, offline
    (base / "DTD").mkdir()
    torch.save(ft["mnist"], base / "DTD" / "finetuned.pt")
    with pytest.raises(UserError, match="dtd"):
        cp.load_clip_paper(tiny_spec, ["mnist", "dtd"], CLASSNAMES, root=tmp_path, source="open_clip",
                           allow_pickle=True)


def test_open_clip_missing_checkpoints(tmp_path, tiny_spec):
    with pytest.raises(UserError, match="zeroshot.pt") as e:
        cp.load_clip_paper(tiny_spec, ["mnist", "gtsrb"], CLASSNAMES, root=tmp_path, source="open_clip")
    assert "GTSRB/finetuned.pt" in str(e.value)
    with pytest.raises(UserError, match="root"):
        cp.load_clip_paper(tiny_spec, ["mnist"], CLASSNAMES, root=None, source="open_clip")


# ----------------------------------------------------------------------------------------------------------------
# datasets


def _image(rng, h, w, mode="RGB"):
    from PIL import Image

    if mode == "L":
        return Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8), mode="L")
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), mode="RGB")


def _dataset(n, names, seed, mode="RGB"):
    rng = np.random.default_rng(seed)
    images = [_image(rng, int(rng.integers(20, 48)), int(rng.integers(20, 48)), mode) for _ in range(n)]
    labels = [int(i % len(names)) for i in range(n)]
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
    return datasets.Dataset.from_dict({"image": images, "label": labels}, features=feats), images, labels


EUROSAT_NAMES = ["AnnualCrop", "Forest", "SeaLake"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    train, _, train_labels = _dataset(23, EUROSAT_NAMES, 0)
    test, test_images, test_labels = _dataset(7, EUROSAT_NAMES, 1)
    datasets.DatasetDict({"train": train, "test": test}).save_to_disk(str(root / "tanganke" / "eurosat"))
    # one save_to_disk directory per split, grayscale digits, under the hub id "mnist"
    mtrain, _, _ = _dataset(12, [str(i) for i in range(10)], 2, mode="L")
    mtest, mimages, _ = _dataset(5, [str(i) for i in range(10)], 3, mode="L")
    mtrain.save_to_disk(str(root / "mnist" / "train"))
    mtest.save_to_disk(str(root / "mnist" / "test"))
    return root, {"test_images": test_images, "test_labels": test_labels, "train_labels": train_labels,
                  "mnist_images": mimages}


def test_load_test_split(data_root):
    root, ref = data_root
    td = vp.load_paper_task("eurosat", "test", data_root=root)
    assert td.classes == ["annual crop", "forest", "sea lake"]
    assert td.targets.dtype == torch.long and td.targets.tolist() == ref["test_labels"]
    assert len(td) == len(td.inputs) == 7
    x = td.inputs[2]
    assert x.dtype == torch.uint8 and x.shape[0] == 3
    assert torch.equal(x, torch.from_numpy(np.array(ref["test_images"][2])).permute(2, 0, 1))
    sub = td.inputs[1:4]
    assert isinstance(sub, vp.ImageList) and len(sub) == 3 and torch.equal(sub[1], x)
    assert torch.equal(td.inputs[torch.tensor([2, 0])][0], x)
    assert [t.shape for t in td.inputs] == [t.shape for t in td.inputs.load()]
    assert td.meta["dataset"] == "tanganke/eurosat" and td.meta["source_split"] == "test"


def test_val_is_fusion_bench_slice_of_train(data_root):
    root, ref = data_root
    tr = vp.load_paper_task("eurosat", "train", data_root=root)
    va = vp.load_paper_task("eurosat", "val", data_root=root)
    assert len(tr) + len(va) == 23 and len(va) == int(23 * 0.1)
    tr_idx, va_idx = set(tr.inputs.indices.tolist()), set(va.inputs.indices.tolist())
    assert not tr_idx & va_idx and tr_idx | va_idx == set(range(23))
    # the same sets as FusionBench's train_validation_split(validation_fraction=0.1, random_seed=0)
    fb_tr, fb_va = torch.utils.data.random_split(range(23), [23 - 2, 2], generator=torch.Generator().manual_seed(0))
    assert set(fb_tr.indices) == tr_idx and set(fb_va.indices) == va_idx
    assert va.targets.tolist() == [ref["train_labels"][i] for i in sorted(va_idx)]
    assert va.meta["val_carved"] and tr.meta["val_carved"]


def test_per_split_dirs_env_var_and_grayscale(data_root, monkeypatch):
    root, ref = data_root
    monkeypatch.setenv(vp.DATA_ENV_VAR, str(root))
    td = vp.load_paper_task("mnist", "test")
    assert td.classes == [str(i) for i in range(10)] and len(td) == 5
    x = td.inputs[0]
    assert x.shape[0] == 3 and torch.equal(x[0], x[2])  # L -> RGB
    assert torch.equal(x[0], torch.from_numpy(np.array(ref["mnist_images"][0])))
    fb = vp.load_paper_task("mnist", "test", class_names="fusion_bench")
    assert fb.classes == [str(i) for i in range(10)]
    with pytest.raises(UserError, match="FusionBench lists 10"):
        vp.load_paper_task("eurosat", "test", class_names="fusion_bench")


def test_to_pixel_values(data_root):
    root, _ = data_root
    td = vp.load_paper_task("eurosat", "test", data_root=root)
    mean, std = cp.OPENAI_MEAN, cp.OPENAI_STD
    px = vp.to_pixel_values(td.inputs, 16, mean, std)
    assert px.shape == (7, 3, 16, 16) and px.dtype == torch.float32
    # a constant image: resize/crop keep the value, then (v/255 - mean)/std per channel
    const = torch.empty(3, 40, 24, dtype=torch.uint8)
    const[0], const[1], const[2] = 10, 128, 250
    out = vp.to_pixel_values([const], 16, mean, std)
    for c, v in enumerate((10, 128, 250)):
        torch.testing.assert_close(out[0, c], torch.full((16, 16), (v / 255 - mean[c]) / std[c]))
    # shorter side resized, then a center crop: a wide image keeps its middle columns
    wide = torch.zeros(3, 16, 48, dtype=torch.uint8)
    wide[:, :, 16:32] = 255
    out = vp.to_pixel_values(wide, 16, (0, 0, 0), (1, 1, 1))
    assert torch.all(out == 1.0)
    # tensors, a batch tensor and PIL images agree
    imgs = [td.inputs[i] for i in range(3)]
    from torchvision.transforms.functional import to_pil_image

    a = vp.to_pixel_values(imgs, 16, mean, std)
    b = vp.to_pixel_values([to_pil_image(t) for t in imgs], 16, mean, std)
    torch.testing.assert_close(a, b)
    same = torch.stack([imgs[0], imgs[0]])
    torch.testing.assert_close(vp.to_pixel_values(same, 16, mean, std), a[[0, 0]])


def test_missing_dataset_is_a_user_error(data_root, monkeypatch):
    root, _ = data_root
    with pytest.raises(UserError, match="tanganke/dtd"):
        vp.load_paper_task("dtd", "test", data_root=root)
    with pytest.raises(UserError, match="unknown paper vision task"):
        vp.load_paper_task("cifar10", "test", data_root=root)
    with pytest.raises(UserError, match="split"):
        vp.load_paper_task("eurosat", "validation", data_root=root)
    monkeypatch.delenv(vp.DATA_ENV_VAR, raising=False)
    with pytest.raises(UserError, match="tanganke/gtsrb"):  # offline, no cache
        vp.load_paper_task("gtsrb", "test")


def test_class_names_and_templates():
    assert vp.clean_classname("/a/apartment_building/outdoor") == "apartment building outdoor"
    assert vp.clean_classname("abbey") == "abbey"
    assert vp.clean_classname("HerbaceousVegetation") == "herbaceous vegetation"
    assert vp.clean_classname("AM General Hummer SUV 2000") == "AM General Hummer SUV 2000"
    assert vp.clean_classname("baseball_diamond") == "baseball diamond"
    assert set(vp.TEMPLATES) == set(vp.TASKS) == set(vp.DATASETS)
    for t in vp.TASKS:
        prompts = [f("cat") for f in vp.clip_templates(t)]
        assert prompts and all("cat" in p for p in prompts)
        fb = [f("cat") for f in vp.clip_templates(t, "fusion_bench")]
        assert fb and all("cat" in p for p in fb)
    assert len(vp.fusion_bench_classnames("gtsrb")) == 43
    with pytest.raises(UserError):
        vp.clip_templates("mnist", "clip")


def test_fusion_bench_names_after_fusion_bench_was_imported():
    """fusion_bench swaps itself for a lazy module without ``__spec__`` on import, where find_spec raises."""
    pytest.importorskip("fusion_bench")
    import subprocess

    code = ("import fusion_bench, fusion_bench.method\n"
            "from tasks import vision_paper as vp\n"
            "print(len(vp.fusion_bench_classnames('gtsrb')), len(vp.clip_templates('mnist', 'fusion_bench')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parent.parent,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    n_classes, n_templates = map(int, out.stdout.split()[-2:])
    assert n_classes == 43 and n_templates > 0


def _mapped_ranges(path: Path) -> list[tuple[int, int]]:
    """The address ranges of this process's mappings of ``path`` (/proc/self/maps)."""
    out = []
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split(maxsplit=5)
            if len(parts) == 6 and Path(parts[5].strip()) == path:
                lo, hi = parts[0].split("-")
                out.append((int(lo, 16), int(hi, 16)))
    return out


@pytest.mark.skipif(not Path("/proc/self/maps").is_file(), reason="needs Linux /proc")
def test_hf_encoder_does_not_hold_the_pretrained_file_mapped(hf_root, tmp_path):
    """The vision tower's tensors are memory of their own, not views of the mapped pretrained CLIPModel file (a view
    kept the whole file, text tower included, mapped and its touched pages resident after loading)."""
    import gc

    root, info = hf_root
    out = cp.load_clip_paper("clip_vit_b32", HF_TASKS, CLASSNAMES, root=str(root))
    pre_file = (root / B32 / "model.safetensors").resolve()
    tensors = list(out.encoder.parameters()) + list(out.encoder.buffers()) + list(out.pretrained.values())
    gc.collect()
    ranges = _mapped_ranges(pre_file)
    inside = [t.shape for t in tensors if any(lo <= t.data_ptr() < hi for lo, hi in ranges)]
    assert not inside
    for k, v in info["clip"].vision_model.named_parameters():  # and the values are the file's
        assert torch.equal(out.pretrained["vision_model." + k], v.detach())


def test_own_memory_reads_the_file_values_and_copies_what_the_file_lacks(tmp_path):
    from safetensors.torch import load_file, save_file

    m = torch.nn.Linear(3, 2)
    m.register_buffer("scale", torch.tensor([2.0, 3.0]))
    save_file({"weight": torch.full((2, 3), 7.0), "bias": torch.tensor([1.0, -1.0])}, str(tmp_path / "w.safetensors"))
    mapped = load_file(str(tmp_path / "w.safetensors"))  # what transformers holds: views of the map
    with torch.no_grad():
        m.weight.copy_(mapped["weight"])
        m.bias.copy_(torch.tensor([5.0, 5.0]))  # disagrees with the file: converted while loading, so it is kept
    before = {n: t.data_ptr() for n, t in list(m.named_parameters()) + list(m.named_buffers())}
    cp._own_memory(m, [tmp_path / "w.safetensors"])
    assert torch.equal(m.weight, torch.full((2, 3), 7.0)) and torch.equal(m.bias, torch.tensor([5.0, 5.0]))
    assert torch.equal(m.scale, torch.tensor([2.0, 3.0])) and "scale" in dict(m.named_buffers())
    after = {n: t.data_ptr() for n, t in list(m.named_parameters()) + list(m.named_buffers())}
    assert all(after[n] != before[n] for n in before)
    assert isinstance(m.weight, torch.nn.Parameter) and m.weight.requires_grad
