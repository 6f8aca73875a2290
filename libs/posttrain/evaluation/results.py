"""An evaluation's result: per-case outputs and scores, metric tables, deltas vs production,
the gate verdict and the provenance, as deterministic JSON and as protobuf.

JSON (REPORT_FORMAT) is the report artifact: keys sorted, so the same evaluation with the
same seed gives byte-identical JSON (measured latency aside: a deterministic generator
makes that identical too). No wall-clock time is in it unless the caller passes
created_at. Metric tables are {scope: {name: value}}, scope "overall" or a tag.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from posttrain.data.canonical import canonical_json
from posttrain.evaluation.calibration import Calibration
from posttrain.evaluation.gate import OVERALL, PASS, GateResult
from posttrain.evaluation.metrics.base import CaseScore

REPORT_FORMAT = "posttrain.evaluation_report.v1"


@dataclass(frozen=True)
class Provenance:
    """What the numbers are tied to. The caller fills in the first six; run_suite adds
    the rest from the suite, the judge, the policy and the seed."""

    model_version_id: str = ""
    # whose evaluation: the tenant's anchor set calibrated the judge. A base model is
    # shared by every tenant, and each gets a report of its own.
    tenant: str = ""
    adapter: str = ""  # the adapter evaluated on the model ("" when none / merged)
    prompt_template_revision: str = ""  # revision of the chat/prompt template used
    code_version: str = ""  # "" -> `git describe` of the running code
    generator: str = ""  # which runtime produced the outputs, e.g. "local-hf", "triton"
    suite: str = ""
    suite_version: str = ""
    judge_id: str = ""
    judge_version: str = ""
    anchor_set_version: str = ""
    gate_policy: str = ""  # name@version
    seed: int = 0
    prices: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class CaseResult:
    case_id: str
    tags: tuple[str, ...]
    messages: list[dict[str, Any]]
    reference: Any
    output: str
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    scores: dict[str, CaseScore]
    # every non-judge metric that scored the case passed (and at least one did)
    passed: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "case_id": self.case_id,
            "tags": list(self.tags),
            "messages": self.messages,
            "reference": self.reference,
            "output": self.output,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "latency_s": self.latency_s,
            "scores": {k: v.to_json() for k, v in self.scores.items()},
            "passed": self.passed,
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> CaseResult:
        return cls(
            case_id=obj["case_id"],
            tags=tuple(obj["tags"]),
            messages=obj["messages"],
            reference=obj.get("reference"),
            output=obj["output"],
            prompt_tokens=obj["prompt_tokens"],
            completion_tokens=obj["completion_tokens"],
            latency_s=obj["latency_s"],
            scores={k: CaseScore.from_json(v) for k, v in obj["scores"].items()},
            passed=obj["passed"],
        )


def report_id_for(provenance: Provenance) -> str:
    """A deterministic id: the same model, suite, judge, policy, code and seed give the
    same id, so storing a re-run is idempotent."""
    return "eval-" + hashlib.sha256(canonical_json(provenance.to_json())).hexdigest()[:20]


@dataclass(frozen=True)
class ServingLatency:
    """The candidate served one way (adapter on its base, or merged), timed one request at
    a time: what a client of that deployment would wait."""

    mode: str  # adapter | merged
    triton_model: str
    requests: int
    latency_p50_s: float
    latency_p95_s: float
    completion_tokens_per_s: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class EvaluationResult:
    report_id: str
    provenance: Provenance
    metrics: dict[str, dict[str, float]]  # scope -> name -> value
    case_counts: dict[str, int]  # scope -> number of cases
    cases: list[CaseResult]
    production_metrics: dict[str, dict[str, float]] | None = None
    production_report_id: str = ""
    deltas: dict[str, dict[str, float]] = field(default_factory=dict)  # candidate - production
    gate: GateResult | None = None
    judge_trusted: bool = False
    calibration: Calibration | None = None
    notes: list[str] = field(default_factory=list)
    created_at: str | None = None  # ISO 8601, when the caller stamps it
    serving: list[ServingLatency] = field(default_factory=list)  # the serving probe's

    @property
    def overall(self) -> dict[str, float]:
        return self.metrics.get(OVERALL, {})

    @property
    def verdict(self) -> str:
        return self.gate.verdict if self.gate else ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": REPORT_FORMAT,
            "report_id": self.report_id,
            "provenance": self.provenance.to_json(),
            "metrics": self.metrics,
            "case_counts": self.case_counts,
            "production_metrics": self.production_metrics,
            "production_report_id": self.production_report_id,
            "deltas": self.deltas,
            "gate": self.gate.to_json() if self.gate else None,
            "judge_trusted": self.judge_trusted,
            "calibration": self.calibration.to_json() if self.calibration else None,
            "notes": list(self.notes),
            "created_at": self.created_at,
            "serving": [s.to_json() for s in self.serving],
            "cases": [c.to_json() for c in self.cases],
        }

    def to_json(self) -> str:
        return (
            json.dumps(
                self.to_dict(), sort_keys=True, indent=1, ensure_ascii=False, allow_nan=False
            )
            + "\n"
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> EvaluationResult:
        obj = json.loads(text)
        if obj.get("format") != REPORT_FORMAT:
            raise ValueError(
                f"not an evaluation report ({REPORT_FORMAT}): format {obj.get('format')!r}"
            )
        return cls(
            report_id=obj["report_id"],
            provenance=Provenance(**obj["provenance"]),
            metrics=obj["metrics"],
            case_counts=obj["case_counts"],
            cases=[CaseResult.from_json(c) for c in obj["cases"]],
            production_metrics=obj.get("production_metrics"),
            production_report_id=obj.get("production_report_id", ""),
            deltas=obj.get("deltas", {}),
            gate=GateResult.from_json(obj["gate"]) if obj.get("gate") else None,
            judge_trusted=obj.get("judge_trusted", False),
            calibration=Calibration.from_json(obj["calibration"])
            if obj.get("calibration")
            else None,
            notes=obj.get("notes", []),
            created_at=obj.get("created_at"),
            serving=[ServingLatency(**s) for s in obj.get("serving", [])],
        )

    def flat_metrics(self) -> dict[str, float]:
        """{name: value} overall plus {name@tag: value} per tag (evaluation.completed)."""
        out = {}
        for scope, values in self.metrics.items():
            for name, value in values.items():
                out[name if scope == OVERALL else f"{name}@{scope}"] = value
        return out

    def to_proto(self, *, json_report: Any = None, html_report: Any = None) -> Any:
        """posttrain.v1.EvaluationReport; json_report/html_report: common_pb2.ArtifactRef."""
        from google.protobuf.timestamp_pb2 import Timestamp

        from posttrain.v1 import evaluation_pb2

        p = self.provenance
        report = evaluation_pb2.EvaluationReport(
            id=self.report_id,
            model_version_id=p.model_version_id,
            suite=p.suite,
            suite_version=p.suite_version,
            judge=p.judge_id,
            judge_trusted=self.judge_trusted,
            verdict=_verdict_proto(self.verdict),
            reasons=self.gate.reasons if self.gate else [],
            code_version=p.code_version,
            seed=p.seed,
            adapter=p.adapter,
            prompt_template_revision=p.prompt_template_revision,
            judge_version=p.judge_version,
            gate_policy=p.gate_policy,
            anchor_set_version=p.anchor_set_version,
            notes=self.notes,
        )
        for scope in sorted(self.metrics, key=lambda s: (s != OVERALL, s)):
            production = (self.production_metrics or {}).get(scope, {})
            for name, value in sorted(self.metrics[scope].items()):
                metric = report.metrics.add(
                    name=name, tag="" if scope == OVERALL else scope, value=value
                )
                if name in production:
                    metric.production_value = production[name]
                    metric.has_production_value = True
        for served in self.serving:
            report.serving.add(**served.to_json())
        if json_report is not None:
            report.json_report.CopyFrom(json_report)
        if html_report is not None:
            report.html_report.CopyFrom(html_report)
        if self.created_at:
            stamp = Timestamp()
            stamp.FromJsonString(self.created_at)
            report.created_at.CopyFrom(stamp)
        return report

    def to_event(self, *, report: Any = None) -> Any:
        """posttrain.v1.EvaluationCompleted, the payload of evaluation.completed. Without a
        gate policy the verdict is FAIL ("no gate policy applied"): a gate fails safe."""
        from posttrain.v1 import events_pb2

        p = self.provenance
        event = events_pb2.EvaluationCompleted(
            report_id=self.report_id,
            model_version_id=p.model_version_id,
            suite=p.suite,
            suite_version=p.suite_version,
            verdict=_verdict_proto(self.verdict or "FAIL"),
            reasons=self.gate.reasons if self.gate else ["no gate policy applied"],
        )
        event.metrics.update(self.flat_metrics())
        if report is not None:
            event.report.CopyFrom(report)
        return event


def _verdict_proto(verdict: str) -> int:
    from posttrain.v1 import common_pb2

    if verdict == PASS:
        return common_pb2.GATE_VERDICT_PASS
    if verdict:
        return common_pb2.GATE_VERDICT_FAIL
    return common_pb2.GATE_VERDICT_UNSPECIFIED
