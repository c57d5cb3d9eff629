"""The ``roberta_base`` adapter: micro profile (states, heads, ModelOps, cache, a runner run) and the paper loader on
random-init stand-ins the test saves itself (``save_pretrained`` of tiny configs, a word-level tokenizer it
builds). No network. The ``check_*`` helpers are shared with tests/test_mamba.py."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from torch import nn

from backbones import _text
from backbones import _text_paper
from benchmark.cache import Cache, sha256_file
from benchmark.lazy_state import LazyState
from benchmark.registry import BACKBONES, SUITES
from tasks import glue7 as g7

WORDS = ["hello", "world", "the", "cat", "sat", "on", "mat", "a", "dog", "ran", "?", "."]


def make(name: str, cache: Cache, profile: str = "micro", seed: int = 0):
    suite = SUITES.get("glue7").obj(profile=profile, seed=seed, cache=cache, progress=False)
    return BACKBONES.get(name).obj(profile=profile, suite=suite, seed=seed, cache=cache, progress=False)


def word_tokenizer(roberta_template: bool):
    """A word-level fast tokenizer built offline: ``<s> a </s></s> b </s>`` (RoBERTa) or plain concatenation."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<s>", "<pad>", "</s>", "<unk>", *WORDS])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    if roberta_template:
        tk.post_processor = processors.TemplateProcessing(
            single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")


# ----------------------------------------------------------------------------------------------------------------
# Checks shared by both text adapters


def check_registered(name: str) -> None:
    p = BACKBONES.get(name)
    assert p.meta["suites"] == ("glue7",) and p.meta["default_suite"] == "glue7"


def check_states(bb) -> None:
    pre = bb.pretrained_state()
    names = [n for n, _ in bb.encoder.named_parameters()]
    assert list(pre) == names and len(names) > 5
    for t in bb.tasks:
        ft = bb.finetuned_state(t)
        assert list(ft) == names
        assert all(v.dtype == torch.float32 and v.shape == pre[k].shape for k, v in ft.items())
        assert any(not torch.equal(ft[k], pre[k]) for k in pre), f"{t} was not fine-tuned"
        head = bb.head(t)
        assert set(head) == {"probe.weight", "probe.bias"} and not head["probe.weight"].requires_grad
        assert head["probe.weight"].shape == (len(bb.suite.classnames(t)), bb.config["hidden_size"])
    ck = bb.checkpoints()
    assert set(ck) == {"pretrained", "heads", *(f"finetuned/{t}" for t in bb.tasks)}
    assert len(set(ck.values())) == len(ck) and all(len(v) == 64 for v in ck.values())


def check_ops(bb, task: str = "nli") -> None:
    ops = bb.ops()
    x, y = next(bb.batches(task, "test", 6))
    n_cls = len(bb.suite.classnames(task))
    a = ops.logits(task, None, x)
    assert a.shape == (6, n_cls)
    assert torch.allclose(a, ops.logits(task, bb.pretrained_state(), x), atol=1e-5)
    assert not torch.allclose(a, ops.logits(task, bb.finetuned_state(task), x))
    f = ops.features(None, x)
    assert f.shape == (6, bb.config["hidden_size"])
    assert torch.allclose(_text.apply_head(bb.head(task), f), a, atol=1e-5)
    # padding does not change anything: the same inputs with more pad columns
    padded = torch.cat([x, torch.full((6, 7), bb.pad_id, dtype=torch.long)], 1)
    assert torch.allclose(ops.logits(task, None, padded), a, atol=1e-5)
    # differentiable w.r.t. the weights (torch.func.functional_call underneath)
    pre = bb.pretrained_state()
    coef = torch.tensor(0.3, requires_grad=True)
    w = {k: pre[k] + coef * (bb.finetuned_state(task)[k] - pre[k]) for k in pre}
    nn.functional.cross_entropy(ops.logits(task, w, x), y).backward()
    assert coef.grad is not None and torch.isfinite(coef.grad) and coef.grad != 0
    leaf = {k: v.clone().requires_grad_(True) for k, v in pre.items()}
    ops.features(leaf, x).sum().backward()
    assert sum(int(v.grad is not None and v.grad.abs().sum() > 0) for v in leaf.values()) > len(leaf) // 2
    assert all(not p.requires_grad for p in bb.encoder.parameters())
    # linear inputs: every called nn.Linear with a mergeable weight, real tokens only
    li = ops.linear_inputs(None, x)
    linear = {f"{n}.weight" for n, m in bb.encoder.named_modules() if isinstance(m, nn.Linear)}
    assert li and set(li) <= linear and set(li) <= set(pre)
    n_real = int((x != bb.pad_id).sum())
    for k, v in li.items():
        assert v.ndim == 2 and v.shape == (n_real, pre[k].shape[1]), k
    # exemplars: seeded, from train, unlabeled
    e = ops.exemplars(task, 5, seed=0)
    assert torch.equal(e, ops.exemplars(task, 5, seed=0)) and ops.num_examples(e) == 5
    train = {tuple(r) for r in bb.suite.load(task, "train").inputs.tolist()}
    assert {tuple(r) for r in e.tolist()} <= train
    assert ops.num_examples(ops.test_inputs(task, None, seed=0)) == len(bb.suite.load(task, "test"))
    assert torch.equal(ops.slice(e, torch.tensor([3, 1])), e[[3, 1]])


def check_cache_reused(name: str, bb, monkeypatch) -> None:
    real = Cache.get_or_build

    def no_build(self, key, config, seed, version, build):
        return real(self, key, config, seed, version, lambda tmp: (_ for _ in ()).throw(AssertionError(key)))

    monkeypatch.setattr(Cache, "get_or_build", no_build)
    again = make(name, bb.cache)
    again.prepare()
    assert again.checkpoints() == bb.checkpoints()


def check_pretraining_deterministic(name: str, bb, tmp_path: Path) -> None:
    fresh = make(name, Cache(tmp_path))
    assert sha256_file(fresh.stage_file("pretrain")) == bb.checkpoints()["pretrained"]


def check_run(name: str, bb, cache_root: Path, tmp_path: Path) -> None:
    from benchmark.runner import RunSpec, run

    rec, path = run(RunSpec(method="task_arithmetic", backbone=name, profile="micro", results_dir=str(tmp_path),
                            cache_root=str(cache_root), progress=False))
    assert path.exists() and set(rec["metrics"]) == set(bb.tasks) and rec["suite"] == "glue7"
    assert rec["metric_names"]["acceptability"] == "mcc" and rec["metric_names"]["nli"] == "accuracy"
    assert rec["checkpoints"] == bb.checkpoints() and rec["storage_bytes"] > 0


# ----------------------------------------------------------------------------------------------------------------
# micro profile


@pytest.fixture(scope="session")
def bb(cache_root):
    b = make("roberta_base", Cache(cache_root))
    b.prepare()
    return b


def test_registered():
    check_registered("roberta_base")


def test_states_heads_checkpoints(bb):
    check_states(bb)
    assert any(".attention.self.query.weight" in n for n in bb.pretrained_state())
    assert bb.encoder.pooling == "first" and bb.encoder.roberta.pooler is None


def test_ops(bb):
    check_ops(bb, "nli")
    check_ops(bb, "acceptability")


def test_cache_is_reused(bb, monkeypatch):
    check_cache_reused("roberta_base", bb, monkeypatch)


def test_pretraining_is_deterministic(bb, tmp_path):
    check_pretraining_deterministic("roberta_base", bb, tmp_path)


def test_runner_task_arithmetic(bb, cache_root, tmp_path):
    check_run("roberta_base", bb, cache_root, tmp_path)


# ----------------------------------------------------------------------------------------------------------------
# paper profile on stand-ins

CFG = dict(vocab_size=4 + len(WORDS), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
           intermediate_size=24, max_position_embeddings=40, pad_token_id=1, type_vocab_size=1)


@pytest.fixture(scope="module")
def roberta_root(tmp_path_factory):
    from transformers import RobertaConfig, RobertaForMaskedLM, RobertaForSequenceClassification

    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    pre = RobertaForMaskedLM(RobertaConfig(**CFG))  # as roberta-base ships: with an LM head
    pre.save_pretrained(root / "roberta-base")
    word_tokenizer(True).save_pretrained(root / "roberta-base")
    ckpts = root / "vanillaOVO" / "roberta_base_glue_ckpts"
    for i, task in enumerate(g7.PAPER_TASKS):
        torch.manual_seed(i + 1)
        ft = RobertaForSequenceClassification(RobertaConfig(**CFG, num_labels=3 if task == "mnli" else 2))
        ft.roberta.load_state_dict(pre.roberta.state_dict(), strict=False)
        with torch.no_grad():
            for p in ft.roberta.parameters():
                p.add_(torch.randn_like(p) * 0.02)
        ft.save_pretrained(ckpts / task / ("roberta-base_lr5e-05" if task == "mrpc" else "roberta-base_lr1e-05"))
    return root


def test_paper_loader_reproduces_the_fine_tuned_classifiers(roberta_root, monkeypatch, tmp_path):
    from transformers import RobertaForSequenceClassification

    monkeypatch.setenv("MERGE_BENCH_MODELS", str(roberta_root))
    b = make("roberta_base", Cache(tmp_path / "cache"), profile="paper")
    b.prepare()
    # each fine-tune converted once into the cache and streamed from there; a second load converts nothing
    assert all(isinstance(b.finetuned_state(t), LazyState) for t in b.tasks)
    converted: list[str] = []
    real_body = _text_paper._body_state
    monkeypatch.setattr(_text_paper, "_body_state",
                        lambda e, m, where: (converted.append(where), real_body(e, m, where))[1])
    make("roberta_base", Cache(tmp_path / "cache"), profile="paper").prepare()
    assert converted == []
    pre = b.pretrained_state()
    assert all(k.startswith("roberta.") for k in pre) and not any("pooler" in k or "lm_head" in k for k in pre)
    assert set(b.finetuned_state("rte")) == set(pre)
    assert b.pad_id == 1
    ops = b.ops()
    x = [("hello world", "the cat sat"), ("a dog ran", "on the mat ."), ("the cat", "dog ?")]
    for task in ("mrpc", "mnli"):
        d = next((roberta_root / "vanillaOVO" / "roberta_base_glue_ckpts" / task).iterdir())
        ref = RobertaForSequenceClassification.from_pretrained(str(d)).eval()
        enc = b.tokenizer([a for a, _ in x], [c for _, c in x], padding=True, return_tensors="pt")
        with torch.no_grad():
            want = ref(**enc).logits
            got = ops.logits(task, b.finetuned_state(task), x)
        assert torch.allclose(got, want, atol=1e-5), task
        assert b.checkpoints()[f"vanillaOVO/roberta_base_glue_ckpts/{task}/{d.name}"] == sha256_file(
            d / "model.safetensors")
    assert set(b.head("cola")) == {"dense.weight", "dense.bias", "out_proj.weight", "out_proj.bias"}
    assert ops.features(None, x).shape == (3, 16)
    assert b.checkpoints()["roberta-base"] == hashlib.sha256(
        (roberta_root / "roberta-base" / "model.safetensors").read_bytes()).hexdigest()
    li = ops.linear_inputs(None, x)
    assert li["roberta.encoder.layer.0.attention.self.query.weight"].shape[0] == int(
        b.tokenizer([a for a, _ in x], [c for _, c in x], padding=True, return_tensors="pt")["attention_mask"].sum())


def test_paper_loader_names_what_is_missing(roberta_root, tmp_path, monkeypatch):
    import shutil

    from backbones import _text_paper
    from benchmark.errors import UserError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    root = tmp_path / "m"
    shutil.copytree(roberta_root / "roberta-base", root / "roberta-base")
    with pytest.raises(UserError, match="roberta_base_glue_ckpts"):
        _text_paper.load_roberta_paper(["cola"], root=root)
    with pytest.raises(UserError, match="no RoBERTa fine-tune for rte"):
        _text_paper.load_roberta_paper(["rte"], root=root, ckpts_root=tmp_path)
