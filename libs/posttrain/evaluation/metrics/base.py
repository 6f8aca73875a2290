"""What a metric is: one registered unit with a name, a typed config and a scoring function.

Two kinds:
- "case" metrics score one case's output (CaseScore: a value, pass/fail, a detail); the
  suite value is the mean over the cases that use the metric, overall and per tag.
- "run" metrics measure the run as a whole (latency, cost, perplexity) and may produce
  several named values; with `per_tag` they are also computed on each tag's cases.

A metric never generates text or calls a model itself, except through what the runner
hands it in the context (the judge for judge-based metrics, the token scorer for
perplexity), so scoring stored outputs again gives the same numbers.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from posttrain.evaluation.judge import Judge
    from posttrain.evaluation.metrics.cost import Prices
    from posttrain.evaluation.results import CaseResult
    from posttrain.evaluation.suite import Case


@dataclass(frozen=True, slots=True)
class CaseScore:
    """One metric on one case. value None: not scored (e.g. no judge given); such a score
    is left out of the means and does not decide whether the case passed."""

    value: float | None
    passed: bool
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"value": self.value, "passed": self.passed, "detail": self.detail}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> CaseScore:
        return cls(obj["value"], bool(obj["passed"]), obj.get("detail", ""))

    @classmethod
    def skipped(cls, why: str) -> CaseScore:
        return cls(None, False, f"skipped: {why}")


@dataclass(frozen=True)
class CaseContext:
    """What a case metric may look at besides the case and the output."""

    configs: Mapping[str, Any]  # metric name -> its config, as the suite set it
    scores: Mapping[str, CaseScore]  # the case's scores computed so far
    rubric: str = ""
    judge: Judge | None = None
    production_output: str | None = None  # the production model's output on this case


@dataclass(frozen=True)
class RunContext:
    """What a run metric may look at besides the case results."""

    cases: Mapping[str, Case]  # case id -> case
    prices: Prices | None = None
    # rows -> (summed NLL in nats, number of scored tokens); see metrics/perplexity.py
    score_tokens: Callable[[Sequence[Mapping[str, Any]]], tuple[float, int]] | None = None


CaseScoreFn = Callable[["Case", str, Any, CaseContext], CaseScore]
RunComputeFn = Callable[[Sequence["CaseResult"], RunContext, Any], dict[str, float]]
CaseCheckFn = Callable[[Mapping[str, Any]], list[tuple[str, str]]]


@dataclass(frozen=True)
class Metric:
    """A registered metric.

    outputs: the names of the values it produces -> True when higher is better (a case
    metric produces one value named like the metric). judge_based: its numbers come from
    an LLM judge, so they only count in a gate when the judge is trusted. after_others:
    scored after the case's other metrics (it reads them from CaseContext.scores).
    check_case: (field, message) problems of a raw case row that uses this metric."""

    name: str
    kind: Literal["case", "run"]
    config: type
    help: str
    outputs: Mapping[str, bool]
    score: CaseScoreFn | None = None
    compute: RunComputeFn | None = None
    check_case: CaseCheckFn | None = None
    judge_based: bool = False
    after_others: bool = False
    per_tag: bool = True


class MetricSkipped(Exception):
    """Raised by a run metric that cannot be measured on this run; the message says why
    and ends up in the report's notes."""


class ConfigError(ValueError):
    """A metric (or gate/judge) config mapping that does not fit its dataclass."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{f}: {m}" for f, m in problems))


def _type_ok(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin in (list, tuple, Sequence):
        args = typing.get_args(hint)
        return isinstance(value, list | tuple) and all(_type_ok(v, args[0]) for v in value)
    if origin in (dict, Mapping):
        return isinstance(value, Mapping)
    return isinstance(value, origin or hint)


def config_from_mapping(cls: type, data: Mapping[str, Any] | None) -> Any:
    """An instance of the config dataclass `cls` from a mapping (YAML), type-checked.

    Unknown keys and wrong types are errors (a typo in a threshold must not be silently
    ignored). Lists become tuples where the field says tuple. Raises ConfigError."""
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls) if f.init}
    problems = [(key, "unknown setting") for key in data if key not in known]
    for key, value in data.items():
        if key in known and not _type_ok(value, hints[key]):
            problems.append((key, f"expected {hints[key]}, got {type(value).__name__}"))
    if problems:
        raise ConfigError(problems)
    for key, value in data.items():
        if typing.get_origin(hints[key]) is tuple and isinstance(value, list):
            data[key] = tuple(value)
    try:
        return cls(**data)
    except (TypeError, ValueError) as exc:
        raise ConfigError([("", str(exc))]) from exc


def config_help(cls: type) -> dict[str, str]:
    """Field name -> help text, from each field's metadata["help"]."""
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}


def setting(default: Any, help: str) -> Any:  # noqa: A002 - mirrors dataclasses.field
    """A config field with a help text; mutable defaults are copied per instance."""
    if isinstance(default, list | dict | set):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})
