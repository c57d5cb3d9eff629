"""``glue7``: the 7 GLUE tasks the RoBERTa / Mamba merging papers use (auto-flexswitch.txt Sec. IV-A3, Tables IX
and X), in two forms.

paper
    GLUE CoLA, SST-2, MRPC, QQP, MNLI, QNLI, RTE, read with HF ``datasets`` from local files
    (:func:`tasks.glue_paper.load_glue_task`). GLUE's test labels are hidden, so -- as DARE, EMR-Merging,
    FusionBench and the papers do -- our ``test`` split is GLUE's *validation* split (``validation_matched`` for
    MNLI), our ``val`` split is a seeded 10 % of GLUE's train split (at most 1000 examples, DARE's rule) and
    ``train`` is the rest. Inputs are lists of ``(text_a, text_b | None)`` pairs; the backbone tokenizes them.

tiny (default) and micro
    Seven offline, seeded, *generated* sentence and sentence-pair tasks over one templated language (a
    generated vocabulary of pseudo-words with number and tense morphology, synonyms, antonyms, hypernyms and
    sentiment-bearing adjectives), one per GLUE type, each needing its own skill:

    ==============  =======  =========================================================================
    task            classes  what decides the label (GLUE analogue)
    ==============  =======  =========================================================================
    acceptability   2        is the sentence grammatical? (agreement, word order, a missing determiner,
                             adjective after noun) -- CoLA, scored with MCC
    sentiment       2        polarity of the one evaluative adjective, flipped by negation -- SST-2
    paraphrase      2        do two sentences say the same (verb and adjective synonyms) or the opposite
                             (negation toggled, evaluative adjective reversed) -- MRPC
    duplicate       2        do two questions ask the same thing (not: the other participant, another
                             tense) -- QQP
    nli             3        entailment / neutral / contradiction of a hypothesis (hypernyms, dropped or
                             added adjectives, negation, antonyms) -- MNLI
    answerability   2        does the sentence answer the question (not: it denies the event, or tells of
                             another tense) -- QNLI
    entailment      2        does a two-clause premise entail a short hypothesis -- RTE
    ==============  =======  =========================================================================

    Every task's negatives differ from its positives by a small, task-specific edit, so a label needs the
    task's skill, not a surface cue. The pair tasks compare *coarse* properties of the two segments (polarity,
    negation, tense, the asked role) rather than exact word identity: we measured that a 4-layer, 64-wide
    RoBERTa does not learn word-by-word alignment (another noun in the second sentence) from 2000 examples in
    800 steps (test accuracy 50 %, from scratch or pretrained), far beyond the tiny profile's CPU budget.

    Inputs are ``int64 [N, L]`` token ids, ``[CLS] a [SEP]`` or ``[CLS] a [SEP] b [SEP]``, right-padded with
    :data:`PAD_ID`. The vocabulary is word-level and built from the grammar (:func:`vocabulary`, 162 tokens; ids
    are the same for every seed). ``tiny``: 2000 train, 200 val, 500 test per task, ``L = 32``; ``micro``: a few
    dozen per split. Generated data is cached (:class:`benchmark.cache.Cache`,
    keyed by profile, sizes, seed and the source of this module and of :mod:`tasks.generated`).

    :func:`generic_sentences` draws "generic" inputs from the same language that belong to no task (random
    sentences, questions and unrelated pairs): the backbones' fine-tuning keeps their embeddings fixed.

Metrics (as the papers report them): Matthews correlation x100 for CoLA / acceptability
(:class:`tasks.nlu_metrics.MatthewsCorrelation`), top-1 accuracy for every other task.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

from benchmark.contract import Metric, TaskData
from benchmark.errors import UserError
from benchmark.registry import SUITES
from tasks import grammar as gr
from tasks.generated import GeneratedSuite
from tasks.grammar import CLS_ID, LEX, MASK_ID, PAD_ID, SEP_ID, SPECIALS, VOCAB, encode, render, vocabulary  # noqa: F401  (re-exported)
from tasks.metrics import Accuracy
from tasks.nlu_metrics import MatthewsCorrelation

__all__ = ["Glue7", "TINY_TASKS", "PAPER_TASKS", "PROFILE_SIZES", "SPLITS", "vocabulary", "generate_task",
           "generic_sentences", "PAD_ID", "CLS_ID", "SEP_ID", "MASK_ID", "encode"]

PAPER_TASKS = ["cola", "sst2", "mrpc", "qqp", "mnli", "qnli", "rte"]
TINY_TASKS = ["acceptability", "sentiment", "paraphrase", "duplicate", "nli", "answerability", "entailment"]
MCC_TASKS = {"cola", "acceptability"}
SPLITS = ("train", "val", "test")

PROFILE_SIZES: dict[str, dict[str, int]] = {
    "tiny": {"seq_len": 32, "train": 2000, "val": 200, "test": 500},
    "micro": {"seq_len": 32, "train": 48, "val": 16, "test": 24},
}

# ----------------------------------------------------------------------------------------------------------------
# The seven generators: (rng, label) -> (text a, text b | None); labels are drawn balanced by the caller


def gen_acceptability(rng: random.Random, y: int) -> tuple[list[str], None]:
    c = gr.clause(rng)
    if y == 1:
        return gr.sentence(render(c, passive=rng.random() < 0.2)), None
    kind = rng.randrange(4)
    if kind == 0:  # subject-verb agreement
        c = gr.copy_clause(c)
        c["past"] = False
        words = render(c)
        vi = len(gr.render_np(c["subj"]))
        if c["neg"]:
            words[vi] = "do" if words[vi] == "does" else "does"
        else:
            v = c["verb"]
            words[vi] = v if words[vi] == v + "s" else v + "s"
    elif kind == 1:  # two adjacent words swapped
        words = render(c)
        while True:
            i = rng.randrange(len(words) - 1)
            if words[i] != words[i + 1]:
                break
        words[i], words[i + 1] = words[i + 1], words[i]
    elif kind == 2:  # the object loses its determiner
        words = render(c)
        words.pop(len(gr.render_np(c["subj"])) + len(gr.render_verb(c)))
    else:  # an adjective after its noun
        np_ = c["obj"]
        if not np_["adj"]:
            np_ = dict(np_, adj=rng.choice(gr.LEX["neutral"] + gr.LEX["pos"]))
            c = dict(c, obj=np_)
        words = render(c)
        i = words.index(np_["adj"], len(gr.render_np(c["subj"])))
        words[i], words[i + 1] = words[i + 1], words[i]
    return gr.sentence(words), None


def gen_sentiment(rng: random.Random, y: int) -> tuple[list[str], None]:
    neg = rng.random() < 0.5
    polarity = (1 if y == 1 else -1) * (-1 if neg else 1)
    c = gr.clause(rng, neg=neg)
    for role in ("subj", "obj"):  # distractor adjectives carry no sentiment
        c[role]["adj"] = rng.choice(gr.LEX["neutral"]) if rng.random() < 0.4 else None
    role = rng.choice(["subj", "obj"])
    c[role]["adj"] = rng.choice(gr.LEX["pos"] if polarity > 0 else gr.LEX["neg"])
    return gr.sentence(render(c)), None


def gen_paraphrase(rng: random.Random, y: int) -> tuple[list[str], list[str]]:
    c = gr.clause(rng, neg=rng.random() < 0.3)
    role = rng.choice(["subj", "obj"])
    c[role]["adj"] = rng.choice(gr.LEX["pos"] + gr.LEX["neg"])
    b = gr.synonymize(rng, c)
    if y == 0:  # the same words, but the opposite claim: negation toggled or the evaluative adjective reversed
        if rng.random() < 0.5:
            b["neg"] = not b["neg"]
        else:
            b[role]["adj"] = gr.adj_antonym(b[role]["adj"])
    return gr.sentence(render(c)), gr.sentence(render(b))


def _question(q: dict[str, Any], variant: int) -> list[str]:
    """A question about clause ``q``: ``who`` asks for the subject, ``what`` for the object."""
    past = q["past"]
    if q["ask"] == "subj":
        verb = q["verb"] + ("ed" if past else "s")
        if variant == 0:
            return ["who", verb] + gr.render_np(q["obj"]) + ["?"]
        return gr.render_np(q["obj"]) + ["was", q["verb"] + "ed", "by", "who", "?"]
    aux = "did" if past else ("do" if q["subj"]["plural"] else "does")
    if variant == 0:
        return ["what", aux] + gr.render_np(q["subj"]) + [q["verb"], "?"]
    return ["which", q["obj"]["noun"] + "s", aux] + gr.render_np(q["subj"]) + [q["verb"], "?"]


def gen_duplicate(rng: random.Random, y: int) -> tuple[list[str], list[str]]:
    q = gr.clause(rng, adv=None)
    q["ask"] = rng.choice(["subj", "obj"])
    b = gr.synonymize(rng, q)
    if y == 0:  # asks for the other participant, or about another time
        if rng.random() < 0.5:
            b["ask"] = "obj" if q["ask"] == "subj" else "subj"
        else:
            b["past"] = not q["past"]
    return _question(q, 0), _question(b, 0)


def _hypothesis(rng: random.Random, c: dict[str, Any], label: int) -> dict[str, Any]:
    """A hypothesis for premise clause ``c``: 0 entailment, 1 neutral, 2 contradiction."""
    h = gr.copy_clause(c)
    h["adv"] = None
    if label == 0:  # more general: drop adjectives, hypernym, synonym verb
        for role in ("subj", "obj"):
            if rng.random() < 0.6:
                h[role]["adj"] = None
        role = rng.choice(["subj", "obj"])
        if rng.random() < 0.5:
            h[role]["noun"] = gr.category(h[role]["noun"])
            h[role]["adj"] = None
        if rng.random() < 0.5:
            h["verb"] = gr.verb_synonym(h["verb"])
    elif label == 1:  # more specific or unrelated detail: an adjective the premise lacks, another same-kind noun
        role = rng.choice(["subj", "obj"])
        if rng.random() < 0.5 or h[role]["adj"] is not None:
            nouns = [n for n in gr.LEX["nouns"] if gr.category(n) == gr.category(h[role]["noun"]) and n != h[role]["noun"]]
            h[role]["noun"] = rng.choice(nouns)
        else:
            h[role]["adj"] = rng.choice(gr.LEX["neutral"])
    else:  # contradiction: negation, or an antonym
        evaluative = [r for r in ("subj", "obj") if h[r]["adj"] and gr.adj_polarity(h[r]["adj"]) != 0]
        if evaluative and rng.random() < 0.5:
            r = rng.choice(evaluative)
            h[r]["adj"] = gr.adj_antonym(h[r]["adj"])
        else:
            h["neg"] = not h["neg"]
    return h


def gen_nli(rng: random.Random, y: int) -> tuple[list[str], list[str]]:
    c = gr.clause(rng)
    if c["subj"]["det"] in ("every", "some"):  # keep the determiners out of the entailment logic
        c["subj"]["det"] = "the"
    return gr.sentence(render(c)), gr.sentence(render(_hypothesis(rng, c, y)))


def gen_answerability(rng: random.Random, y: int) -> tuple[list[str], list[str]]:
    q = gr.clause(rng, adv=None)
    q["ask"] = rng.choice(["subj", "obj"])
    s = gr.synonymize(rng, q)
    s["adv"] = rng.choice(gr.LEX["adverbs"]) if rng.random() < 0.3 else None
    if y == 0:  # the sentence denies the event, or tells of another time
        if rng.random() < 0.5:
            s["neg"] = True
        else:
            s["past"] = not q["past"]
    return _question(q, 0), gr.sentence(render(s))


def gen_entailment(rng: random.Random, y: int) -> tuple[list[str], list[str]]:
    c1, c2 = gr.clause(rng, adv=None), gr.clause(rng, adv=None)
    for c in (c1, c2):
        if c["subj"]["det"] in ("every", "some"):
            c["subj"]["det"] = "the"
    premise = render(c1) + ["and"] + render(c2)
    pick = rng.choice([c1, c2])
    if y == 1:
        h = _hypothesis(rng, pick, 0)
    elif rng.random() < 0.5:
        h = _hypothesis(rng, pick, rng.choice([1, 2]))
    else:  # a blend of the two clauses: one's subject doing the other's action
        h = gr.copy_clause(c1)
        h["obj"] = dict(c2["obj"])
        if h["obj"]["noun"] == c1["obj"]["noun"] or h["obj"]["noun"] == h["subj"]["noun"]:
            h["obj"]["noun"] = gr.other_than(rng, gr.LEX["nouns"], {c1["obj"]["noun"], h["subj"]["noun"]})
    return gr.sentence(premise), gr.sentence(render(h))


Gen = Callable[[random.Random, int], tuple[list[str], list[str] | None]]
GENERATORS: dict[str, tuple[Gen, list[str]]] = {
    "acceptability": (gen_acceptability, ["unacceptable", "acceptable"]),
    "sentiment": (gen_sentiment, ["negative", "positive"]),
    "paraphrase": (gen_paraphrase, ["not_equivalent", "equivalent"]),
    "duplicate": (gen_duplicate, ["not_duplicate", "duplicate"]),
    "nli": (gen_nli, ["entailment", "neutral", "contradiction"]),
    "answerability": (gen_answerability, ["not_entailment", "entailment"]),
    "entailment": (gen_entailment, ["not_entailment", "entailment"]),
}
assert list(GENERATORS) == TINY_TASKS


def _split_seed(seed: int, task: str, split: str) -> int:
    return seed * 1_000_003 + TINY_TASKS.index(task) * 1009 + SPLITS.index(split) * 17 + 1


def generate_task(task: str, split: str, n: int, seq_len: int, seed: int) -> tuple[Tensor, Tensor, list[str]]:
    """One split of one tiny task: (``int64 [n, seq_len]`` ids, ``int64 [n]`` labels, class names). Labels are
    balanced and shuffled; deterministic in (task, split, n, seq_len, seed)."""
    fn, classes = GENERATORS[task]
    rng = random.Random(_split_seed(seed, task, split))
    labels = [i % len(classes) for i in range(n)]
    rng.shuffle(labels)
    rows = [encode(*fn(rng, y), seq_len) for y in labels]
    return torch.tensor(rows, dtype=torch.long), torch.tensor(labels, dtype=torch.long), list(classes)


def generic_sentences(n: int, seq_len: int, seed: int) -> Tensor:
    """``n`` generic inputs of the language that belong to no task: a random sentence or question alone, or two
    unrelated ones as a pair (``int64 [n, seq_len]``)."""
    rng = random.Random(seed * 1_000_003 + 4242)

    def one() -> list[str]:
        c = gr.clause(rng, neg=rng.random() < 0.2)
        if rng.random() < 0.25:
            c["ask"] = rng.choice(["subj", "obj"])
            return _question(c, 0)
        return gr.sentence(render(c, passive=rng.random() < 0.2))

    return torch.tensor([encode(one(), one() if rng.random() < 0.6 else None, seq_len) for _ in range(n)],
                        dtype=torch.long)


# ----------------------------------------------------------------------------------------------------------------
# The suite


@SUITES.register(
    "glue7",
    summary="7 NLU tasks: paper = GLUE CoLA, SST-2, MRPC, QQP, MNLI, QNLI, RTE (validation as test); tiny/micro = 7 "
    "generated offline look-alikes (acceptability, sentiment, paraphrase, duplicate, nli, answerability, entailment)",
    paper="Wang et al. 2019 (GLUE); auto-flexswitch.txt Sec. IV-A3, Tables IX-X (MCC for CoLA, accuracy otherwise)",
)
class Glue7(GeneratedSuite):
    modality = "text"
    paper_tasks = tuple(PAPER_TASKS)
    tiny_tasks = tuple(TINY_TASKS)
    profile_sizes = PROFILE_SIZES
    sources = (gr,)
    pad_id, cls_id, sep_id, mask_id = PAD_ID, CLS_ID, SEP_ID, MASK_ID

    # -- what the backbone needs to know (generated profiles)
    @property
    def vocab(self) -> list[str] | None:
        return None if self.profile == "paper" else list(gr.VOCAB)

    def generic(self, n: int, seed: int) -> Tensor:
        """Generic inputs of the language that belong to no task (generated profiles only)."""
        if self.profile == "paper":
            raise UserError("glue7 (paper) has no generated generic sentences")
        return generic_sentences(n, self.sizes["seq_len"], seed)

    # -- data
    def generate(self, task: str, split: str) -> dict[str, Tensor]:
        x, y, _ = generate_task(task, split, self.sizes[split], self.sizes["seq_len"], self.seed)
        return {"inputs": x, "targets": y}

    def write_extra(self, entry: Path) -> None:
        (entry / "vocab.txt").write_text("\n".join(gr.VOCAB) + "\n")

    def tiny_classnames(self, task: str) -> list[str]:
        return list(GENERATORS[task][1])

    def paper_classnames(self, task: str) -> list[str]:
        from tasks.glue_paper import GLUE_CLASSES

        return list(GLUE_CLASSES[task])

    def load_paper(self, task: str, split: str) -> TaskData:
        from tasks.glue_paper import load_glue_task

        return load_glue_task(task, split, data_root=self.data_root)

    def task_data(self, task: str, split: str, tensors: dict[str, Tensor]) -> TaskData:
        data = super().task_data(task, split, tensors)
        data.meta["pad_id"] = PAD_ID
        return data

    def metric(self, task: str) -> Metric:
        self.check(task, "test")
        return MatthewsCorrelation() if task in MCC_TASKS else Accuracy()


def decode(ids: Tensor) -> str:
    """Token ids back to text (pads dropped), for looking at examples."""
    return " ".join(gr.VOCAB[i] for i in ids.tolist() if i != PAD_ID)
