"""The ``mamba_130m`` adapter: micro profile (states, heads, ModelOps, cache, a runner run), the pure-PyTorch path
off CUDA, and the paper loader on random-init stand-ins the test saves itself. No network."""
from __future__ import annotations

import pytest
import torch

from backbones import mamba as mb
from backbones import _text_paper
from benchmark.cache import Cache, sha256_file
from benchmark.lazy_state import LazyState
from tasks import glue7 as g7
from test_roberta import (WORDS, check_cache_reused, check_ops, check_pretraining_deterministic, check_registered,
                          check_run, check_states, make, word_tokenizer)


@pytest.fixture(scope="session")
def bb(cache_root):
    b = make("mamba_130m", Cache(cache_root))
    b.prepare()
    return b


def test_registered():
    check_registered("mamba_130m")


def test_states_heads_checkpoints(bb):
    check_states(bb)
    names = list(bb.pretrained_state())
    assert all(n.startswith("backbone.") for n in names)
    assert any(n.endswith("mixer.A_log") for n in names) and any(n.endswith("mixer.in_proj.weight") for n in names)
    assert bb.encoder.pooling == "last"


def test_ops(bb):
    check_ops(bb, "paraphrase")
    check_ops(bb, "acceptability")


def test_last_token_pooling(bb):
    """The pooled embedding is the hidden state at each input's last real token."""
    x, _ = next(bb.batches("nli", "test", 4))
    ids, mask = bb.tokens(x)
    with torch.no_grad():
        h = bb.encoder.hidden(ids, mask)
        want = torch.stack([h[i, int(mask[i].sum()) - 1] for i in range(len(x))])
        assert torch.allclose(bb.ops().features(None, x), want, atol=1e-6)


def test_linear_inputs_cover_the_mixer(bb):
    x, _ = next(bb.batches("nli", "test", 3))
    li = bb.ops().linear_inputs(None, x)
    for proj in ("in_proj", "x_proj", "out_proj"):
        assert any(k.endswith(f"mixer.{proj}.weight") for k in li), proj
    assert not any(k.endswith("dt_proj.weight") for k in li)  # used as a matrix, never called


def test_cpu_forward_never_calls_cuda_kernels(bb, monkeypatch):
    """With a kernel package importable (faked) and the module functions bound to a kernel (a stand-in that
    fails), a CPU forward still runs, on the reference functions, and gives the same numbers."""
    from transformers.models.mamba import modeling_mamba as mm

    x, _ = next(bb.batches("sentiment", "test", 3))
    want = bb.ops().logits("sentiment", None, x)
    real = mm.mamba_selective_scan

    def kernel(*a, **k):
        raise RuntimeError("CUDA kernel called on CPU")

    kernel.__wrapped__ = real
    monkeypatch.setattr(mm, "mamba_selective_scan", kernel)
    monkeypatch.setattr(mb, "kernels_importable", lambda: True)
    got = bb.ops().logits("sentiment", None, x)
    assert torch.allclose(got, want, atol=1e-6)
    assert mm.mamba_selective_scan is kernel  # restored after the forward
    with pytest.raises(RuntimeError, match="CUDA kernel"), torch.no_grad():
        bb.encoder(*bb.tokens(x))  # outside the context the (fake) kernel would run


def test_cache_is_reused(bb, monkeypatch):
    check_cache_reused("mamba_130m", bb, monkeypatch)


def test_pretraining_is_deterministic(bb, tmp_path):
    check_pretraining_deterministic("mamba_130m", bb, tmp_path)


def test_runner_task_arithmetic(bb, cache_root, tmp_path):
    check_run("mamba_130m", bb, cache_root, tmp_path)


# ----------------------------------------------------------------------------------------------------------------
# paper profile on stand-ins

CFG = dict(vocab_size=4 + len(WORDS), hidden_size=16, num_hidden_layers=2, state_size=4, expand=2, conv_kernel=4,
           pad_token_id=1, bos_token_id=0, eos_token_id=2)


@pytest.fixture(scope="module")
def mamba_dirs(tmp_path_factory):
    from safetensors.torch import save_file
    from transformers import MambaConfig, MambaForCausalLM, MambaModel

    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    pre = MambaForCausalLM(MambaConfig(**CFG))  # as state-spaces/mamba-130m-hf ships: backbone.* + lm_head
    pre.save_pretrained(root / "state-spaces" / "mamba-130m-hf")
    word_tokenizer(False).save_pretrained(root / "state-spaces" / "mamba-130m-hf")
    ckpts = tmp_path_factory.mktemp("mamba_glue")
    for i, task in enumerate(g7.PAPER_TASKS):
        torch.manual_seed(i + 1)
        ft = MambaModel(MambaConfig(**CFG))
        ft.load_state_dict(pre.backbone.state_dict())
        with torch.no_grad():
            for p in ft.parameters():
                p.add_(torch.randn_like(p) * 0.02)
        ft.save_pretrained(ckpts / task)
        n_cls = 3 if task == "mnli" else 2
        save_file({"out_proj.weight": torch.randn(n_cls, 16), "out_proj.bias": torch.randn(n_cls)},
                  str(ckpts / task / "head.safetensors"))
    return root, ckpts


def test_paper_loader_reproduces_the_fine_tuned_models(mamba_dirs, monkeypatch, tmp_path):
    from safetensors.torch import load_file
    from transformers import MambaModel

    root, ckpts = mamba_dirs
    monkeypatch.setenv("MERGE_BENCH_MODELS", str(root))
    monkeypatch.setenv("MERGE_BENCH_MAMBA_GLUE", str(ckpts))
    b = make("mamba_130m", Cache(tmp_path / "cache"), profile="paper")
    b.prepare()
    # each fine-tune converted once into the cache and streamed from there; a second load converts nothing
    assert all(isinstance(b.finetuned_state(t), LazyState) for t in b.tasks)
    converted: list[str] = []
    real_body = _text_paper._body_state
    monkeypatch.setattr(_text_paper, "_body_state",
                        lambda e, m, where: (converted.append(where), real_body(e, m, where))[1])
    make("mamba_130m", Cache(tmp_path / "cache"), profile="paper").prepare()
    assert converted == []
    pre = b.pretrained_state()
    assert all(k.startswith("backbone.") for k in pre) and not any("lm_head" in k for k in pre)
    assert b.pad_id == 1 and b.tokenizer.padding_side == "right"
    ops = b.ops()
    x = [("hello world", "the cat sat"), ("a dog ran on the mat", None), ("the cat", "dog ?")]
    for task in ("qnli", "mnli"):
        ref = MambaModel.from_pretrained(str(ckpts / task)).eval()
        head = load_file(str(ckpts / task / "head.safetensors"))
        want = []
        for a, c in x:  # one at a time: no padding at all
            ids = b.tokenizer(a, c, return_tensors="pt")["input_ids"]
            with torch.no_grad():
                last = ref(input_ids=ids, use_cache=False).last_hidden_state[0, -1]
            want.append(last @ head["out_proj.weight"].T + head["out_proj.bias"])
        with torch.no_grad():
            got = ops.logits(task, b.finetuned_state(task), x)
        assert torch.allclose(got, torch.stack(want), atol=1e-5), task
        assert b.checkpoints()[f"{ckpts.name}/{task}"] == sha256_file(ckpts / task / "model.safetensors")
    assert b.checkpoints()["state-spaces/mamba-130m-hf"] == sha256_file(
        root / "state-spaces" / "mamba-130m-hf" / "model.safetensors")


def test_paper_loader_needs_the_fine_tunes(mamba_dirs, monkeypatch):
    from backbones import _text_paper
    from benchmark.errors import UserError

    root, _ = mamba_dirs
    monkeypatch.delenv("MERGE_BENCH_MAMBA_GLUE", raising=False)
    with pytest.raises(UserError, match="MERGE_BENCH_MAMBA_GLUE"):
        _text_paper.load_mamba_paper(["cola"], root=root)
