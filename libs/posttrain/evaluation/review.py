"""Human evaluation: sampling a report's outputs into a review queue, recording labels, and
turning labelled items into anchor-set entries for judge calibration.

Sampling is deterministic by seed: the same report and seed give the same items in the
same order. Sampling is stratified by tag (round-robin over tags, then the untagged), so
a small queue still covers policy, adversarial and long-context cases (a case is in the
stratum of its first tag). An item id is a
hash of (report id, case id): re-sampling never duplicates an item.

The service stores items and labels; labels arrive over gRPC (SubmitReviewLabel) or the
CLI. A label is a 1..5 score on the suite's rubric (what the judge grades), plus a
free-text label ("good", "wrong-ref", ...) and a comment. Only scored labels become
anchors.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from posttrain.evaluation.calibration import AnchorItem
from posttrain.evaluation.results import EvaluationResult


@dataclass(frozen=True)
class ReviewItem:
    id: str
    report_id: str
    case_id: str
    prompt: list[dict[str, Any]]
    output: str
    reference: Any = None
    tags: tuple[str, ...] = ()
    model_version_id: str = ""
    suite_version: str = ""
    judge_score: float | None = None  # what the judge said, shown after labelling
    # the label, once given
    label: str = ""
    score: int | None = None
    comment: str = ""
    labelled_by: str = ""

    @property
    def labelled(self) -> bool:
        return self.score is not None or bool(self.label)

    def to_proto(self) -> Any:
        from posttrain.v1 import evaluation_pb2

        reference = (
            self.reference
            if isinstance(self.reference, str) or self.reference is None
            else json.dumps(self.reference, sort_keys=True)
        )
        return evaluation_pb2.ReviewItem(
            id=self.id,
            report_id=self.report_id,
            prompt="\n".join(f"[{m['role']}] {m['content']}" for m in self.prompt),
            output=self.output,
            label=self.label,
            score=float(self.score or 0),
            comment=self.comment,
            labelled_by=self.labelled_by,
            case_id=self.case_id,
            reference=reference or "",
            tags=list(self.tags),
            model_version_id=self.model_version_id,
            suite_version=self.suite_version,
        )


def review_item_id(report_id: str, case_id: str) -> str:
    return "rev-" + hashlib.sha256(f"{report_id}\0{case_id}".encode()).hexdigest()[:20]


def sample_for_review(result: EvaluationResult, k: int, *, seed: int = 0) -> list[ReviewItem]:
    """k items (fewer when the report has fewer cases), stratified by tag, by seed."""
    rng = random.Random(seed)
    pools: dict[str, list[Any]] = {}
    for case in sorted(result.cases, key=lambda c: c.case_id):
        pools.setdefault(case.tags[0] if case.tags else "", []).append(case)
    for key in sorted(pools):
        rng.shuffle(pools[key])
    chosen = []
    while len(chosen) < k and any(pools.values()):
        for key in sorted(pools):
            if pools[key] and len(chosen) < k:
                chosen.append(pools[key].pop())
    p = result.provenance
    return [
        ReviewItem(
            id=review_item_id(result.report_id, c.case_id),
            report_id=result.report_id,
            case_id=c.case_id,
            prompt=c.messages,
            output=c.output,
            reference=c.reference,
            tags=c.tags,
            model_version_id=p.model_version_id,
            suite_version=p.suite_version,
            judge_score=c.scores["judge_score"].value if "judge_score" in c.scores else None,
        )
        for c in chosen
    ]


def apply_label(
    item: ReviewItem,
    *,
    labelled_by: str,
    score: int | None = None,
    label: str = "",
    comment: str = "",
) -> ReviewItem:
    """The item with a human label. score is 1..5 on the suite's rubric (None: no score,
    e.g. only flagging). Labelling again replaces the earlier label."""
    if score is not None and (
        isinstance(score, bool) or not isinstance(score, int) or not 1 <= score <= 5
    ):
        raise ValueError(f"score must be an integer 1..5, got {score!r}")
    if score is None and not label:
        raise ValueError("a label needs a score or a label text")
    if not labelled_by:
        raise ValueError("labelled_by is required: who gave the label")
    return replace(item, score=score, label=label, comment=comment, labelled_by=labelled_by)


def anchors_from_reviews(items: Sequence[ReviewItem]) -> list[AnchorItem]:
    """Anchor items from the scored review items, id = the review item id."""
    return [
        AnchorItem(
            id=item.id,
            prompt=item.prompt,
            answer=item.output,
            human_score=item.score,
            reference=item.reference,
            labelled_by=item.labelled_by,
            source=f"review:{item.report_id}/{item.case_id}",
        )
        for item in items
        if item.score is not None
    ]


def grow_anchor_set(existing: Sequence[AnchorItem], new: Sequence[AnchorItem]) -> list[AnchorItem]:
    """existing + new, by id; a new label for an item already there replaces it."""
    merged = {a.id: a for a in existing}
    merged.update({a.id: a for a in new})
    return sorted(merged.values(), key=lambda a: a.id)
