"""The leaderboard's "Suite cards" section: for every committed suite card (``tasks/cards/*.json``, written by
``python -m benchmark suite-card``), the properties the stand-in suite is calibrated to, each beside its target
(:func:`benchmark.suite_card.check`), and the per-task identifiability."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

__all__ = ["load_cards", "render_cards"]


def load_cards(cards_dir: str | os.PathLike | None) -> list[dict[str, Any]]:
    """Every card under ``cards_dir`` (none when it is None or missing), ordered by suite, backbone, profile, seed.
    A file that is not a card is a one-line error naming it (a silently skipped card would hide a failed target)."""
    from benchmark.errors import UserError
    from benchmark.suite_card import check

    if cards_dir is None or not Path(cards_dir).is_dir():
        return []
    cards = []
    for path in sorted(Path(cards_dir).glob("*.json")):
        try:
            card = json.loads(path.read_text())
            _ = card["suite"], card["profile"], card["seed"], card["gram_similarity"]
            _ = [card["identifiability"]["per_task"][t] for t in card["identifiability"]["per_task"]]
            check(card)  # every value a target reads: a card missing one is refused here, not mid-render
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise UserError(f"suite card {str(path)!r} is not a card ({type(e).__name__}: {e})") from None
        cards.append(card)
    return sorted(cards, key=lambda c: (c["suite"], c["backbone"], c["profile"], c["seed"]))


def render_cards(cards: Sequence[dict[str, Any]]) -> str:
    """The section as markdown ('' without cards)."""
    if not cards:
        return ""
    from benchmark.suite_card import EXEMPLARS, NEIGHBOURS, TA_LAMBDA, check

    out = ["## Suite cards", "",
           "Measured on each backbone's own models with no merging method involved (`python -m benchmark suite-card"
           f" --backbone B`): task identifiability (a {NEIGHBOURS}-NN over {EXEMPLARS} train exemplars per task on"
           f" the routing features), Spearman(entropy, loss) under Task Arithmetic at λ = {TA_LAMBDA}, the merge"
           " signal and the tasks' input Gram similarity. Each target is one a stand-in suite must meet to stand in"
           " for the real one (issue 13); ✗ marks one it misses.", ""]
    for card in cards:
        out.append(f"### {card['suite']} on {card['backbone']} ({card['profile']}, seed {card['seed']})")
        out.append("")
        out.append("| property | measured | target |")
        out.append("| --- | ---: | ---: |")
        for name, value, bound, met in check(card):
            out.append(f"| {name} | {value:.2f}{'' if met else ' ✗'} | ≥ {bound:g} |")
        out.append(f"| input Gram similarity (%) | {card['gram_similarity']:.1f} | |")
        out.append("")
        per = card["identifiability"]["per_task"]
        out.append("| identifiability (%) | " + " | ".join(per) + " |")
        out.append("| --- | " + " | ".join("---:" for _ in per) + " |")
        out.append("| per task | " + " | ".join(f"{v:.1f}" for v in per.values()) + " |")
        es = card.get("entropy_spearman")
        if es is not None:
            out.append("| Spearman(entropy, loss) | " + " | ".join(f"{es['per_task'][t]:+.2f}" for t in per) + " |")
        out.append("")
    return "\n".join(out)
