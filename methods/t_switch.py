"""T-Switch: each task vector as a binary task switch -- activation mask, polarity bits and one knob per module.

Source: ../shared/papers/auto-flexswitch.txt, Sec. III-B3a (Eq. 2-4; Fig. 6 / Table I for alpha), the conference
version ../shared/papers/t-switch.txt, Sec. 3.4 (Eq. 7), and its supplementary (Table 5/6: alpha searched over
0.1-0.9, 0.7 best on ViT-B/32). The maths, and every point where the official code differs from the paper, are in
:mod:`methods._switch`.

Defaults: ``alpha=0.7``, T-Switch supp. Table 6's optimal discard rate on ViT-B/32 (auto-flexswitch.txt Table II
gives Auto-Switch the same 0.7 there), and the entropy codec (the project's smallest lossless switch format; the
codec changes storage only, never accuracy).

Per task k and module l: ``A`` keeps the top ``1 - alpha`` of the positive and of the negative entries of tau by
magnitude (P-Spar, Eq. 2), ``P`` is the sign (Eq. 4), ``beta = ||tau ⊙ A||_2 / ||A ⊙ P||_2`` (Eq. 3), and with the
task id given the model is ``theta_k = theta + beta A ⊙ P``.

Stored: ``switch/<task>``, a dict module -> :class:`~methods.codecs._sparse.SparseCodes` (the mask and one polarity
bit per active entry, 1 = positive) written with ``codec`` (default ``entropy``, the smallest of the project's
lossless switch codecs; ``sass`` is the paper's Eq. 16-17 format, ``packbits`` the plain baseline), and
``knobs/<task>``, float32 ``[L]`` in the switch's module order (codec ``tensor``). The record's storage breakdown
shows each part. ``load`` rebuilds ``theta + beta A ⊙ P`` from those reloaded values only.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from benchmark.contract import Artifacts, Merged, Method, Pool, StateDict, TaskConditionedModel
from benchmark.registry import METHODS
from methods._switch import SWITCH_PARAMS, SwitchBank, add_switches


class TSwitchModel(TaskConditionedModel):
    def __init__(self, bank: SwitchBank):
        self.bank = bank

    def weights(self, task: str) -> StateDict:
        return self.bank.weights([1.0 if t == task else 0.0 for t in self.bank.tasks])

    def extra_metrics(self) -> dict[str, Any]:
        return {"switch": self.bank.summary()}


@METHODS.register(
    "t_switch",
    summary="Task-conditioned: per module a P-Spar mask, polarity bits and one L2 knob (binary task switch).",
    paper="T-Switch (auto-flexswitch.txt Sec. III-B, Eq. 2-4; t-switch.txt Sec. 3.4, Eq. 7)",
    params=SWITCH_PARAMS,
    paper_rows=("T-Switch",),
    order=160,
)
class TSwitch(Method):
    kind = "task_conditioned"

    def merge(self, pool: Pool) -> Artifacts:
        arts = Artifacts()
        add_switches(arts, pool, self.params)
        return arts

    def load(self, artifacts: Mapping[str, Any], pretrained: StateDict, tasks: Sequence[str]) -> Merged:
        return TSwitchModel(SwitchBank(artifacts, pretrained, tasks))
