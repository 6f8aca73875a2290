"""What a comparison measured of one candidate, and what the requester declared about
the decision (data volume, how the model will be served, the budget).

Plain data: the trainer's collector fills it from the job row, the training report,
the registry and the evaluator; the rules (rules.py) and the report (report.py) only
read it. Numbers that were not measured are None, never 0, so that a rule on them does
not fire by accident and the report can say "not measured".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

MEASURED, FAILED, CANCELLED, OUT_OF_BUDGET = "MEASURED", "FAILED", "CANCELLED", "OUT_OF_BUDGET"
OUTCOMES = (MEASURED, FAILED, CANCELLED, OUT_OF_BUDGET)

# Method families the decision framework speaks of.
FAMILIES: dict[str, frozenset[str]] = {
    "full": frozenset({"full"}),
    "lora": frozenset({"lora", "qlora"}),
    "prompt": frozenset({"prompt", "prefix"}),
    "ia3": frozenset({"ia3"}),
    "any": frozenset({"full", "lora", "qlora", "prompt", "prefix", "ia3"}),
}
# Methods whose first step trains the base model unchanged (LoRA's B and IA3's vectors
# start as the identity), so their first loss is the base model's loss on the data.
STARTS_AS_BASE = frozenset({"full", "lora", "qlora", "ia3"})
# Methods whose adapter can be folded into the base weights (virtual tokens cannot).
MERGEABLE = frozenset({"lora", "qlora", "ia3"})


@dataclass
class CandidateMeasurement:
    """One candidate (a method and its config) after training and evaluation."""

    name: str
    method: str
    method_config: dict[str, Any] = field(default_factory=dict)
    outcome: str = MEASURED  # one of OUTCOMES
    error: str = ""
    job_id: str = ""
    model_version_id: str = ""
    evaluation_report_id: str = ""
    # Quality on the suite (whole-suite metrics), the judge, the release gate.
    suite: str = ""
    quality: dict[str, float] = field(default_factory=dict)
    judge_score: float | None = None
    gate_verdict: str = ""  # PASS | FAIL | "" (not evaluated)
    gate_reasons: list[str] = field(default_factory=list)
    # Training cost.
    steps: int = 0
    wall_time_s: float | None = None
    train_tokens: int | None = None
    peak_memory_bytes: int | None = None
    peak_memory_kind: str = ""
    trainable_params: int | None = None
    total_params: int | None = None
    first_loss: float | None = None
    final_loss: float | None = None
    # What it ships as and how fast it answers.
    artifact_kind: str = ""  # adapter | merged | full
    artifact_bytes: int | None = None
    latency_p50_s: float | None = None
    latency_p95_s: float | None = None
    # Served through Triton by the evaluator's serving probe: mode (adapter | merged) ->
    # {latency_p50_s, latency_p95_s, completion_tokens_per_s, requests}; empty when off.
    serving: dict[str, dict[str, float]] = field(default_factory=dict)

    def served_p50_ms(self, mode: str) -> float | None:
        value = self.serving.get(mode, {}).get("latency_p50_s")
        return None if value is None else value * 1000

    @property
    def trainable_share(self) -> float | None:
        """Trainable parameters as a share of the base model's."""
        if not self.trainable_params or not self.total_params:
            return None
        base = self.total_params - (self.trainable_params if self.method != "full" else 0)
        return self.trainable_params / base if base > 0 else None

    @property
    def can_merge(self) -> bool:
        return self.method in MERGEABLE

    @property
    def serving_options(self) -> list[str]:
        """How it can be deployed: merged (one model) and/or adapter (on a shared base)."""
        if self.method == "full":
            return ["merged"]
        return ["adapter", "merged"] if self.can_merge else ["adapter"]

    def quality_of(self, metric: str) -> float | None:
        value = self.quality.get(metric)
        if value is None and metric == "judge_score":
            value = self.judge_score
        return value

    def to_json(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "trainable_share": self.trainable_share,
            "can_merge": self.can_merge,
            "serving_options": self.serving_options,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CandidateMeasurement:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class DecisionContext:
    """What measurements cannot tell: the data volume and the serving platform, as the
    requester declared them, and the budget."""

    data_rows: int = 0  # rows of the training dataset version
    tenants: int = 1  # tenants (or products) that will share one base model
    fast_rollback: bool = False  # rollback must be a routing change, not a redeploy
    latency_budget_ms: float = 0.0  # p50 the serving stack must meet; 0 = none stated
    budget_candidate_wall_s: float = 0.0  # the most training time one candidate may use; 0 = none
    budget_max_steps: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DecisionContext:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})
