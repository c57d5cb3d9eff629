"""The ``glue7`` suite: generated tasks (deterministic, balanced, right splits and labels, tasks that differ by
small edits), the Matthews correlation against scikit-learn, and the paper GLUE loader on stand-in files the test
writes (parquet, as the Hub repository holds them, and save_to_disk)."""
from __future__ import annotations

import pytest
import torch

from benchmark.cache import Cache
from benchmark.errors import UserError
from benchmark.registry import SUITES
from tasks import glue7 as g7
from tasks.metrics import Accuracy
from tasks.nlu_metrics import MatthewsCorrelation


@pytest.fixture(scope="session")
def suite(cache_root):
    s = SUITES.get("glue7").obj(profile="micro", seed=0, cache=Cache(cache_root), progress=False)
    s.prepare()
    return s


def test_registered_and_tasks(suite):
    assert SUITES.get("glue7").obj is g7.Glue7
    assert suite.tasks == g7.TINY_TASKS
    assert g7.Glue7("paper").tasks == ["cola", "sst2", "mrpc", "qqp", "mnli", "qnli", "rte"]
    with pytest.raises(UserError):
        g7.Glue7("huge")
    with pytest.raises(UserError):
        suite.load("cola", "train")


def test_splits_shapes_and_balanced_labels(suite):
    sizes = g7.PROFILE_SIZES["micro"]
    for task in suite.tasks:
        n_cls = len(suite.classnames(task))
        assert n_cls == (3 if task == "nli" else 2)
        for split in g7.SPLITS:
            d = suite.load(task, split)
            assert d.inputs.dtype == torch.long and d.inputs.shape == (sizes[split], sizes["seq_len"])
            assert d.targets.shape == (sizes[split],)
            counts = torch.bincount(d.targets, minlength=n_cls)
            assert counts.max() - counts.min() <= 1, (task, split, counts)
            assert (d.inputs[:, 0] == g7.CLS_ID).all()
            real = d.inputs != g7.PAD_ID
            # right padding: no real token after the first pad
            assert (real.long().cumsum(1) == real.long().sum(1, keepdim=True)).logical_or(real).all()
            n_sep = (d.inputs == g7.SEP_ID).sum(1)
            pair = task not in ("acceptability", "sentiment")
            assert (n_sep == (2 if pair else 1)).all(), task


def test_generation_is_deterministic_and_seeded():
    a = g7.generate_task("nli", "train", 30, 32, seed=0)
    b = g7.generate_task("nli", "train", 30, 32, seed=0)
    c = g7.generate_task("nli", "train", 30, 32, seed=1)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    tr = {tuple(r) for r in g7.generate_task("paraphrase", "train", 200, 32, 0)[0].tolist()}
    te = {tuple(r) for r in g7.generate_task("paraphrase", "test", 200, 32, 0)[0].tolist()}
    assert len(tr & te) < 5  # different streams per split


def test_cached_suite_equals_generator(suite):
    x, y, _ = g7.generate_task("duplicate", "val", g7.PROFILE_SIZES["micro"]["val"], 32, 0)
    d = suite.load("duplicate", "val")
    assert torch.equal(d.inputs, x) and torch.equal(d.targets, y)


def test_labels_follow_the_grammar():
    """Spot checks of the generators' semantics on decoded examples."""
    x, y, _ = g7.generate_task("sentiment", "train", 400, 32, 0)
    for ids, lab in zip(x, y):
        words = g7.decode(ids).split()
        pol = [1 if w in g7.LEX["pos"] else -1 for w in words if w in g7.LEX["pos"] or w in g7.LEX["neg"]]
        assert len(pol) == 1
        assert (pol[0] * (-1 if "not" in words else 1) > 0) == bool(lab)
    x, y, _ = g7.generate_task("acceptability", "train", 200, 32, 0)
    good = {tuple(r) for r, lab in zip(x.tolist(), y.tolist()) if lab == 1}
    bad = {tuple(r) for r, lab in zip(x.tolist(), y.tolist()) if lab == 0}
    assert not good & bad
    # the paraphrase negatives are small edits: same length class, mostly the same words
    x, y, _ = g7.generate_task("paraphrase", "train", 200, 32, 0)
    lens = (x != g7.PAD_ID).sum(1).float()
    assert abs(lens[y == 1].mean() - lens[y == 0].mean()) < 2


def test_generic_sentences_are_no_task_inputs():
    gen = g7.generic_sentences(300, 32, 0)
    assert gen.shape == (300, 32) and torch.equal(gen, g7.generic_sentences(300, 32, 0))
    rows = {tuple(r) for r in gen.tolist()}
    for task in g7.TINY_TASKS:
        task_rows = {tuple(r) for r in g7.generate_task(task, "train", 300, 32, 0)[0].tolist()}
        assert len(rows & task_rows) <= 3


def test_metrics_per_task(suite):
    assert isinstance(suite.metric("acceptability"), MatthewsCorrelation)
    assert all(isinstance(suite.metric(t), Accuracy) for t in suite.tasks if t != "acceptability")


@pytest.mark.parametrize(
    "y_true,y_pred",
    [
        ([0, 1, 1, 0, 1, 0, 1, 1], [0, 1, 0, 0, 1, 1, 1, 1]),
        ([1, 1, 1, 0], [1, 1, 1, 1]),  # constant prediction: undefined, 0 as sklearn
        ([0, 1, 2, 2, 1, 0, 2, 1, 0], [0, 2, 2, 1, 1, 0, 2, 0, 0]),  # three classes
        ([0, 1, 0, 1], [1, 0, 1, 0]),  # perfectly wrong: -100
        ([1, 0, 1, 0, 0], [1, 0, 1, 0, 0]),
    ],
)
def test_mcc_matches_sklearn(y_true, y_pred):
    from sklearn.metrics import matthews_corrcoef

    m = MatthewsCorrelation()
    half = len(y_true) // 2  # streamed in two batches, the second as logits
    m.update(torch.tensor(y_pred[:half]), torch.tensor(y_true[:half]))
    logits = torch.nn.functional.one_hot(torch.tensor(y_pred[half:]), 3).float()
    m.update(logits, torch.tensor(y_true[half:]))
    assert m.compute() == pytest.approx(100 * matthews_corrcoef(y_true, y_pred), abs=1e-9)


# ----------------------------------------------------------------------------------------------------------------
# Paper GLUE loader on stand-in files


def _rows(task: str, n: int, offset: int = 0) -> dict[str, list]:
    from tasks.glue_paper import GLUE_COLUMNS

    a, b = GLUE_COLUMNS[task]
    n_cls = 3 if task == "mnli" else 2
    out = {a: [f"{task} a {i + offset}" for i in range(n)], "label": [(i + offset) % n_cls for i in range(n)],
           "idx": list(range(n))}
    if b is not None:
        out[b] = [f"{task} b {i + offset}" for i in range(n)]
    return out


def test_glue_loader_parquet_and_save_to_disk(tmp_path):
    import datasets

    from tasks import glue_paper as gp

    # cola and mnli as the Hub repo's parquet files, rte as a save_to_disk DatasetDict
    for task, splits in (("cola", ("train", "validation", "test")),
                         ("mnli", ("train", "validation_matched", "validation_mismatched"))):
        d = tmp_path / "glue" / task
        d.mkdir(parents=True)
        for k, split in enumerate(splits):
            rows = _rows(task, 50 if split == "train" else 12, offset=1000 * k)
            if split == "test":
                rows["label"] = [-1] * len(rows["label"])
            datasets.Dataset.from_dict(rows).to_parquet(str(d / f"{split}-00000-of-00001.parquet"))
    datasets.DatasetDict({s: datasets.Dataset.from_dict(_rows("rte", 30 if s == "train" else 9, 100 * i))
                          for i, s in enumerate(("train", "validation"))}).save_to_disk(str(tmp_path / "glue" / "rte"))

    root = str(tmp_path)
    test = gp.load_glue_task("cola", "test", data_root=root)
    assert len(test) == 12 and test.inputs[0] == ("cola a 1000", None) and test.meta["source_split"] == "validation"
    tr, va = gp.load_glue_task("cola", "train", data_root=root), gp.load_glue_task("cola", "val", data_root=root)
    assert len(tr) + len(va) == 50 and len(va) == 5
    assert not {x for x, _ in tr.inputs} & {x for x, _ in va.inputs}
    assert tr.targets.tolist() == [int(s.split()[-1]) % 2 for s, _ in tr.inputs]
    mnli = gp.load_glue_task("mnli", "test", data_root=root)
    assert mnli.meta["source_split"] == "validation_matched" and mnli.inputs[0] == ("mnli a 1000", "mnli b 1000")
    assert mnli.classes == ["entailment", "neutral", "contradiction"]
    rte = gp.load_glue_task("rte", "test", data_root=root)
    assert len(rte) == 9 and rte.inputs[0] == ("rte a 100", "rte b 100")
    # the suite's paper profile goes through the loader
    s = g7.Glue7("paper", data_root=root)
    assert s.load("rte", "val").inputs == gp.load_glue_task("rte", "val", data_root=root).inputs
    assert isinstance(s.metric("cola"), MatthewsCorrelation)
    with pytest.raises(UserError, match="no local copy"):
        gp.load_glue_task("qqp", "test", data_root=root)
