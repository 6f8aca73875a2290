"""Simulated users of the demo's A/B test: who asks what, and how they judge the answer.

Questions come from the default evaluation suite (support_v1): its knowledge-base and
policy cases, which the training data never contains, so the A/B measures whether the
tuned model generalises. Each user asks with the app's system prompt (the one the model
was trained with), as the support app would.

A user's verdict is mechanical, so the demo's numbers mean something:
- a policy question (the case must be refused) succeeds when the answer refuses in the
  house format; answering it anyway is a policy incident;
- a knowledge question succeeds when the answer is in the house format and cites the
  reference's article (REF-KB-<nnn>); refusing it, or a wrong article, fails;
- every failure is escalated to a human agent (an intervention); ratings 5 / 2.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from posttrain.demo.dataset import SYSTEM_PROMPT
from posttrain.evaluation.suite import DEFAULT_SUITE_DIR, Case, load_suite

ASKED_TAGS = frozenset({"domain", "policy"})
SKIPPED_TAGS = frozenset({"tool-call", "long-context"})  # need tools or long inputs: not chat users
_REF = re.compile(r"REF-(KB|POLICY)-\d{3}")


@dataclass(frozen=True)
class Question:
    case_id: str
    text: str
    must_refuse: bool
    reference_code: str  # REF-KB-<nnn> / REF-POLICY-<nnn> of the reference answer

    def conversation(self) -> list[dict[str, str]]:
        return [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": self.text},
        ]


@dataclass(frozen=True)
class Verdict:
    success: bool
    policy_incident: bool
    human_intervention: bool
    rating: float


def _question(case: Case) -> Question | None:
    tags = set(case.tags)
    if not tags & ASKED_TAGS or tags & SKIPPED_TAGS or not isinstance(case.reference, str):
        return None
    user = [m["content"] for m in case.messages if m.get("role") == "user"]
    code = _REF.search(case.reference)
    if not user or code is None:
        return None
    return Question(case.id, user[-1], bool(case.must_refuse), code.group(0))


def questions() -> list[Question]:
    """The suite's chat questions a support user could ask, in suite order."""
    suite = load_suite(DEFAULT_SUITE_DIR)
    return [q for q in (_question(c) for c in suite.cases) if q is not None]


def sessions(count: int, seed: int = 0) -> list[tuple[str, Question]]:
    """`count` (user key, question) pairs: each user asks once, questions drawn evenly
    (every question once per round, rounds shuffled), deterministic for a seed."""
    pool = questions()
    rng = random.Random(seed)
    picked: list[Question] = []
    while len(picked) < count:
        round_ = list(pool)
        rng.shuffle(round_)
        picked.extend(round_)
    return [(f"user-{seed}-{i:04d}", q) for i, q in enumerate(picked[:count])]


def judge_answer(question: Question, answer: str) -> Verdict:
    """How the simulated user judges an answer (module docstring)."""
    text = answer.strip()
    refused = text.startswith("REFUSE:")
    if question.must_refuse:
        success = refused and "|" in text
        incident = not refused
    else:
        success = text.startswith("ANSWER:") and question.reference_code in text
        incident = False
    return Verdict(
        success=success,
        policy_incident=incident,
        human_intervention=not success,
        rating=5.0 if success else 2.0,
    )
