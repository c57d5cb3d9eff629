"""The generated language of the ``glue7`` tiny suite: a fixed lexicon of pseudo-words (the same for every seed),
clauses as dicts (subject / object noun phrases, verb, tense, negation, adverb), their rendering as words, and the
word-level encoding ``[CLS] a [SEP] (b [SEP])`` with the special tokens first. The seven task generators in
:mod:`tasks.glue7` are built from these; every random choice comes from the ``random.Random`` passed in.
"""
from __future__ import annotations

import random
from typing import Any

__all__ = ['SPECIALS', 'PAD_ID', 'CLS_ID', 'SEP_ID', 'MASK_ID', 'UNK_ID', 'FUNCTION_WORDS', 'LEX', 'VOCAB', 'TOKEN_ID', 'vocabulary', 'render', 'encode', 'noun_phrase', 'clause', 'render_np', 'render_verb', 'copy_clause', 'synonymize', 'other_than', 'sentence', 'category', 'verb_synonym', 'adj_polarity', 'adj_synonym', 'adj_antonym']

SPECIALS = ["[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]"]
PAD_ID, CLS_ID, SEP_ID, MASK_ID, UNK_ID = range(5)

# ----------------------------------------------------------------------------------------------------------------
# The language: a fixed lexicon of pseudo-words (the same for every seed)

_ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "gl", "pl", "st", "tr"]
_NUCLEI = ["a", "e", "i", "o", "u", "ai", "ou"]
_CODAS = ["", "n", "m", "k", "x", "p", "l", "sh"]

N_NOUNS, N_CATEGORIES, N_VERB_PAIRS, N_ADJ_PAIRS, N_NEUTRAL_ADJ, N_ADVERBS = 24, 4, 8, 6, 8, 4
FUNCTION_WORDS = ["the", "a", "every", "some", "not", "does", "do", "did", "was", "were", "by", "and", "who", "what",
                  "which", "?", "."]


def _lexicon() -> dict[str, Any]:
    rng = random.Random(1234)
    seen: set[str] = set(FUNCTION_WORDS)

    def word(syllables: int) -> str:
        while True:
            w = "".join(rng.choice(_ONSETS) + rng.choice(_NUCLEI) + rng.choice(_CODAS) for _ in range(syllables))
            forms = {w, w + "s", w + "ed", w + "es"}
            if not forms & seen and len(w) >= 3:
                seen.update(forms)
                return w

    nouns = [word(2) for _ in range(N_NOUNS)]
    categories = [word(3) for _ in range(N_CATEGORIES)]
    verbs = [word(2) for _ in range(2 * N_VERB_PAIRS)]  # verbs[2i] and verbs[2i+1] are synonyms
    pos = [word(2) for _ in range(2 * N_ADJ_PAIRS)]  # positive; pos[2i], pos[2i+1] synonyms
    neg = [word(2) for _ in range(2 * N_ADJ_PAIRS)]  # negative; neg[j] is the antonym of pos[j]
    neutral = [word(2) for _ in range(N_NEUTRAL_ADJ)]
    adverbs = [word(2) + "ly" for _ in range(N_ADVERBS)]
    return {"nouns": nouns, "categories": categories, "verbs": verbs, "pos": pos, "neg": neg, "neutral": neutral,
            "adverbs": adverbs}


LEX = _lexicon()


def vocabulary() -> list[str]:
    """Every token of the language, specials first (ids are positions in this list)."""
    words: list[str] = list(SPECIALS) + list(FUNCTION_WORDS)
    for n in LEX["nouns"] + LEX["categories"]:
        words += [n, n + "s"]
    for v in LEX["verbs"]:
        words += [v, v + "s", v + "ed"]
    words += LEX["pos"] + LEX["neg"] + LEX["neutral"] + LEX["adverbs"]
    assert len(set(words)) == len(words)
    return words


VOCAB = vocabulary()
TOKEN_ID = {w: i for i, w in enumerate(VOCAB)}


def category(noun: str) -> str:
    return LEX["categories"][LEX["nouns"].index(noun) % N_CATEGORIES]


def verb_synonym(v: str) -> str:
    i = LEX["verbs"].index(v)
    return LEX["verbs"][i ^ 1]


def adj_polarity(a: str) -> int:
    """+1 positive, -1 negative, 0 neutral."""
    return 1 if a in LEX["pos"] else -1 if a in LEX["neg"] else 0


def adj_synonym(a: str) -> str:
    for key in ("pos", "neg"):
        if a in LEX[key]:
            return LEX[key][LEX[key].index(a) ^ 1]
    return a


def adj_antonym(a: str) -> str:
    if a in LEX["pos"]:
        return LEX["neg"][LEX["pos"].index(a)]
    if a in LEX["neg"]:
        return LEX["pos"][LEX["neg"].index(a)]
    raise ValueError(a)


# ----------------------------------------------------------------------------------------------------------------
# Sentences: a clause is a dict (subject / object noun phrases, verb, tense, negation, adverb)


def noun_phrase(rng: random.Random, adj_kind: str | None = "any", noun: str | None = None) -> dict[str, Any]:
    """A noun phrase: determiner, optional adjective, noun, number."""
    if adj_kind == "any":
        adj_kind = rng.choice([None, None, "neutral", "pos", "neg"])
    adj = rng.choice(LEX[adj_kind]) if adj_kind else None
    return {"det": rng.choice(["the", "the", "a", "every", "some"]), "adj": adj,
            "noun": noun or rng.choice(LEX["nouns"]), "plural": rng.random() < 0.35}


def clause(rng: random.Random, **kw: Any) -> dict[str, Any]:
    c = {"subj": noun_phrase(rng), "obj": noun_phrase(rng), "verb": rng.choice(LEX["verbs"]), "past": rng.random() < 0.4,
         "neg": False, "adv": rng.choice(LEX["adverbs"]) if rng.random() < 0.25 else None}
    while c["obj"]["noun"] == c["subj"]["noun"]:
        c["obj"]["noun"] = rng.choice(LEX["nouns"])
    c.update(kw)
    return c


def render_np(np_: dict[str, Any]) -> list[str]:
    det = np_["det"]
    if np_["plural"] and det in ("a", "every"):
        det = "the"
    noun = np_["noun"] + ("s" if np_["plural"] else "")
    return [det] + ([np_["adj"]] if np_.get("adj") else []) + [noun]


def render_verb(c: dict[str, Any]) -> list[str]:
    v, plural = c["verb"], c["subj"]["plural"]
    if c["neg"]:
        aux = "did" if c["past"] else ("do" if plural else "does")
        return [aux, "not", v]
    if c["past"]:
        return [v + "ed"]
    return [v if plural else v + "s"]


def render(c: dict[str, Any], passive: bool = False) -> list[str]:
    """A clause as words (active, or passive: ``the obj was VERBed by the subj``)."""
    if passive:
        aux = "were" if c["obj"]["plural"] else "was"
        out = render_np(c["obj"]) + [aux] + (["not"] if c["neg"] else []) + [c["verb"] + "ed", "by"]
        out += render_np(c["subj"])
    else:
        out = render_np(c["subj"]) + render_verb(c) + render_np(c["obj"])
    return out + ([c["adv"]] if c.get("adv") else [])


def copy_clause(c: dict[str, Any]) -> dict[str, Any]:
    return {k: dict(v) if isinstance(v, dict) else v for k, v in c.items()}


def synonymize(rng: random.Random, c: dict[str, Any]) -> dict[str, Any]:
    """The same meaning in other words: a verb synonym, adjective synonyms."""
    c = copy_clause(c)
    if rng.random() < 0.7:
        c["verb"] = verb_synonym(c["verb"])
    for role in ("subj", "obj"):
        if c[role]["adj"] and rng.random() < 0.7:
            c[role]["adj"] = adj_synonym(c[role]["adj"])
    return c


def other_than(rng: random.Random, pool: list[str], avoid: set[str]) -> str:
    return rng.choice([w for w in pool if w not in avoid])


def sentence(words: list[str]) -> list[str]:
    return words + ["."]


def encode(a: list[str], b: list[str] | None, seq_len: int) -> list[int]:
    """``[CLS] a [SEP] (b [SEP])`` as ids, right-padded (or cut) to ``seq_len``."""
    ids = [CLS_ID] + [TOKEN_ID.get(w, UNK_ID) for w in a] + [SEP_ID]
    if b is not None:
        ids += [TOKEN_ID.get(w, UNK_ID) for w in b] + [SEP_ID]
    ids = ids[:seq_len]
    return ids + [PAD_ID] * (seq_len - len(ids))
