"""Judge calibration against human-labelled anchor sets: agreement, Cohen's kappa,
Pearson and Spearman correlation, and whether the judge is trusted.

An anchor set is JSONL, one item a line:
    {"id": str, "prompt": str | chat messages, "answer": str, "reference"?: any,
     "human_score": 1..5, "labelled_by"?: str, "source"?: str}
It grows from human review (review.py). Its version is the sha256 of its canonical rows
sorted by id, so the report can say which anchors a calibration used.

The math (numpy only):
- exact agreement: share of items where judge == human; within-one: |judge - human| <= 1.
- Cohen's kappa: (p_o - p_e) / (1 - p_e) over the categories seen in either rater;
  quadratic-weighted: 1 - sum(w O) / sum(w E), w_ij = (i - j)^2, O the observed joint
  proportions, E the product of the marginals. Undefined (nan) when the denominator is 0
  (both raters used one single category).
- Pearson r, and Spearman rho = Pearson of average ranks (ties share the mean rank).
  nan when a side has no variance.
A grade the judge did not give (unparseable reply) is scored 0: it agrees with no human
label and is kept in every statistic, so a judge cannot look better by failing to answer.
nan never passes a threshold.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from posttrain.data.canonical import canonical_json
from posttrain.data.violations import Violation
from posttrain.evaluation.metrics.base import setting

UNGRADED = 0  # the score an ungraded item gets


# ----------------------------------------------------------------------------- math


def _pair(a: Sequence[float], b: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"need two equally long 1-D sequences, got {x.shape} and {y.shape}")
    if x.size == 0:
        raise ValueError("need at least one pair")
    return x, y


def exact_agreement(a: Sequence[float], b: Sequence[float]) -> float:
    x, y = _pair(a, b)
    return float(np.mean(x == y))


def within_one_agreement(a: Sequence[float], b: Sequence[float]) -> float:
    x, y = _pair(a, b)
    return float(np.mean(np.abs(x - y) <= 1))


def confusion_matrix(a: Sequence[int], b: Sequence[int]) -> tuple[np.ndarray, list[int]]:
    """Counts[i, j] of items rated categories[i] by a and categories[j] by b."""
    x, y = _pair(a, b)
    categories = sorted({int(v) for v in np.concatenate([x, y])})
    index = {c: i for i, c in enumerate(categories)}
    counts = np.zeros((len(categories), len(categories)), dtype=np.float64)
    for u, v in zip(x, y, strict=True):
        counts[index[int(u)], index[int(v)]] += 1
    return counts, categories


def cohen_kappa(
    a: Sequence[int], b: Sequence[int], *, weights: Literal["none", "quadratic"] = "none"
) -> float:
    counts, categories = confusion_matrix(a, b)
    observed = counts / counts.sum()
    expected = np.outer(observed.sum(axis=1), observed.sum(axis=0))
    if weights == "none":
        w = 1.0 - np.eye(len(categories))
    elif weights == "quadratic":
        c = np.asarray(categories, dtype=np.float64)
        w = (c[:, None] - c[None, :]) ** 2
    else:
        raise ValueError(f"weights must be 'none' or 'quadratic', got {weights!r}")
    disagreement_expected = float((w * expected).sum())
    if disagreement_expected == 0:
        return math.nan
    return 1.0 - float((w * observed).sum()) / disagreement_expected


def pearson(a: Sequence[float], b: Sequence[float]) -> float:
    x, y = _pair(a, b)
    dx, dy = x - x.mean(), y - y.mean()
    denominator = math.sqrt(float((dx * dx).sum()) * float((dy * dy).sum()))
    return math.nan if denominator == 0 else float((dx * dy).sum()) / denominator


def average_ranks(values: Sequence[float]) -> np.ndarray:
    """1-based ranks; tied values share the mean of the ranks they span."""
    x = np.asarray(values, dtype=np.float64)
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x), dtype=np.float64)
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and x[order[j + 1]] == x[order[i]]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    x, y = _pair(a, b)
    return pearson(average_ranks(x), average_ranks(y))


# ----------------------------------------------------------------------------- policy


@dataclass(frozen=True)
class CalibrationPolicy:
    """When a judge is trusted. Every threshold that is set must be met (nan never is)."""

    min_anchors: int = setting(10, "fewer anchor items than this: not trusted")
    agreement: str = setting(
        "within_one", "which agreement min_agreement applies to: exact | within_one"
    )
    min_agreement: float = setting(0.8, "the least agreement with the human scores")
    kappa: str = setting("quadratic", "which kappa min_kappa applies to: unweighted | quadratic")
    min_kappa: float | None = setting(0.4, "the least Cohen's kappa (None: not required)")
    min_spearman: float | None = setting(
        None, "the least Spearman correlation (None: not required)"
    )

    def __post_init__(self) -> None:
        if self.agreement not in ("exact", "within_one"):
            raise ValueError("agreement must be exact or within_one")
        if self.kappa not in ("unweighted", "quadratic"):
            raise ValueError("kappa must be unweighted or quadratic")


@dataclass(frozen=True)
class Calibration:
    n: int
    exact_agreement: float
    within_one: float
    kappa: float
    weighted_kappa: float
    pearson: float
    spearman: float
    trusted: bool
    reasons: list[str] = field(default_factory=list)  # why not trusted (empty when trusted)
    judge_id: str = ""
    judge_version: str = ""
    anchor_set_version: str = ""
    judge_scores: list[int] = field(default_factory=list)
    human_scores: list[int] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            k: (None if isinstance(v, float) and math.isnan(v) else v)
            for k, v in asdict(self).items()
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Calibration:
        nan_fields = (
            "exact_agreement",
            "within_one",
            "kappa",
            "weighted_kappa",
            "pearson",
            "spearman",
        )
        values = {k: (math.nan if k in nan_fields and v is None else v) for k, v in obj.items()}
        return cls(**values)


def _ok(value: float, threshold: float | None) -> bool:
    return threshold is None or (not math.isnan(value) and value >= threshold)


def calibrate(
    judge_scores: Sequence[int | None],
    human_scores: Sequence[int],
    policy: CalibrationPolicy = CalibrationPolicy(),
    *,
    judge_id: str = "",
    judge_version: str = "",
    anchor_set_version: str = "",
) -> Calibration:
    """Statistics of judge vs human scores and the trust decision under `policy`."""
    judged = [UNGRADED if s is None else int(s) for s in judge_scores]
    human = [int(s) for s in human_scores]
    x, y = _pair(judged, human)
    stats = {
        "exact_agreement": exact_agreement(x, y),
        "within_one": within_one_agreement(x, y),
        "kappa": cohen_kappa(judged, human),
        "weighted_kappa": cohen_kappa(judged, human, weights="quadratic"),
        "pearson": pearson(x, y),
        "spearman": spearman(x, y),
    }
    agreement = stats["exact_agreement" if policy.agreement == "exact" else "within_one"]
    kappa = stats["weighted_kappa" if policy.kappa == "quadratic" else "kappa"]
    reasons = []
    if len(human) < policy.min_anchors:
        reasons.append(f"{len(human)} anchor items < min_anchors {policy.min_anchors}")
    if not _ok(agreement, policy.min_agreement):
        reasons.append(f"{policy.agreement} agreement {agreement:.3f} < {policy.min_agreement}")
    if not _ok(kappa, policy.min_kappa):
        reasons.append(f"{policy.kappa} kappa {kappa:.3f} < {policy.min_kappa}")
    if not _ok(stats["spearman"], policy.min_spearman):
        reasons.append(f"spearman {stats['spearman']:.3f} < {policy.min_spearman}")
    return Calibration(
        n=len(human),
        trusted=not reasons,
        reasons=reasons,
        judge_id=judge_id,
        judge_version=judge_version,
        anchor_set_version=anchor_set_version,
        judge_scores=judged,
        human_scores=human,
        **stats,
    )


# ----------------------------------------------------------------------------- anchors


@dataclass(frozen=True)
class AnchorItem:
    id: str
    prompt: list[dict[str, Any]]
    answer: str
    human_score: int
    reference: Any = None
    labelled_by: str = ""
    source: str = ""

    def to_json(self) -> dict[str, Any]:
        obj: dict[str, Any] = {
            "id": self.id,
            "prompt": self.prompt,
            "answer": self.answer,
            "human_score": self.human_score,
        }
        for key in ("reference", "labelled_by", "source"):
            if getattr(self, key) not in (None, ""):
                obj[key] = getattr(self, key)
        return obj


class AnchorSetError(ValueError):
    def __init__(self, violations: list[Violation]) -> None:
        self.violations = violations
        lines = "\n".join(f"  row {v.row}: {v.field}: {v.message}" for v in violations[:50])
        super().__init__(f"anchor set: {len(violations)} problem(s)\n{lines}")


def load_anchors(data: bytes | str) -> list[AnchorItem]:
    """Anchor items from JSONL; every bad row is reported (AnchorSetError) with its line."""
    text = data.decode("utf-8") if isinstance(data, bytes) else data
    items, problems, seen = [], [], set()
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("//"):
            continue

        def bad(field_: str, message: str, *, _n: int = number) -> None:
            problems.append(Violation(_n, field_, "bad_anchor", message))

        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            bad("", f"not JSON: {exc.msg}")
            continue
        if not isinstance(obj, dict):
            bad("", "an anchor item is an object")
            continue
        prompt = obj.get("prompt")
        if isinstance(prompt, str):
            prompt = [{"role": "user", "content": prompt}]
        score = obj.get("human_score")
        checks = [
            ("id", isinstance(obj.get("id"), str) and obj["id"], "a non-empty string is required"),
            ("id", obj.get("id") not in seen, "duplicate id"),
            (
                "prompt",
                isinstance(prompt, list) and prompt,
                "a string or chat messages is required",
            ),
            ("answer", isinstance(obj.get("answer"), str), "a string is required"),
            (
                "human_score",
                isinstance(score, int) and not isinstance(score, bool) and 1 <= score <= 5,
                "an integer 1..5 is required",
            ),
        ]
        failed = [(f, m) for f, ok, m in checks if not ok]
        for field_, message in failed:
            bad(field_, message)
        if failed:
            continue
        seen.add(obj["id"])
        items.append(
            AnchorItem(
                id=obj["id"],
                prompt=prompt,
                answer=obj["answer"],
                human_score=score,
                reference=obj.get("reference"),
                labelled_by=obj.get("labelled_by", ""),
                source=obj.get("source", ""),
            )
        )
    if problems:
        raise AnchorSetError(problems)
    return items


def dump_anchors(items: Sequence[AnchorItem]) -> bytes:
    """Canonical JSONL, sorted by id."""
    return b"".join(canonical_json(i.to_json()) + b"\n" for i in sorted(items, key=lambda i: i.id))


def anchor_set_version(items: Sequence[AnchorItem]) -> str:
    return hashlib.sha256(b"posttrain.anchors.v1\n" + dump_anchors(items)).hexdigest()


def calibrate_judge(
    judge: Any,
    anchors: Sequence[AnchorItem],
    policy: CalibrationPolicy = CalibrationPolicy(),
    *,
    rubric: str = "",
) -> Calibration:
    """Grade every anchor item with the judge and compare with the human scores."""
    from posttrain.evaluation.judge import GradeRequest

    if not anchors:
        raise ValueError("an empty anchor set cannot calibrate a judge")
    grades = [
        judge.grade(
            GradeRequest(prompt=a.prompt, answer=a.answer, reference=a.reference, rubric=rubric)
        )
        for a in anchors
    ]
    return calibrate(
        [g.score for g in grades],
        [a.human_score for a in anchors],
        policy,
        judge_id=judge.id,
        judge_version=judge.version,
        anchor_set_version=anchor_set_version(anchors),
    )
