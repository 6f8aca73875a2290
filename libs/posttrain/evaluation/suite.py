"""Evaluation suites: the file format, loading with row-level errors, and the suite version.

A suite is a folder (in the artifact store, or on disk) with:

suite.yaml, the header:
    name: support                # required; [a-z0-9][a-z0-9_.-]*
    label: v1                    # a human label; the version is the content hash
    description: ...
    system_prompt: ...           # put first in every case whose prompt has no system turn
    rubric: |                    # what the LLM judge grades against (judge-based metrics)
      ...
    metrics: [token_f1, ...]     # case metrics of cases that do not list their own
    run_metrics: [latency, cost] # whole-run metrics (latency, cost, perplexity)
    metric_config:               # per metric: fields of its config dataclass
      regex_match: {pattern: "..."}
    max_new_tokens: 128          # default generation budget per case
    cases: cases.jsonl           # default "cases.jsonl"
    gate_policy: gate.yaml       # optional: the release-gate policy file (gate.py)
    anchors: anchors.jsonl       # optional: human-labelled anchor set for judge calibration

cases.jsonl, one case per line (blank lines and lines starting with "//" are skipped
but keep their line numbers):
    id            required, unique, [A-Za-z0-9][A-Za-z0-9_.:-]*
    prompt        required: a string (one user turn) or chat messages
                  [{"role": "system"|"user"|"assistant"|"tool", "content": str}, ...]
                  ending with a user or tool turn
    reference     the expected answer: a string, a list of acceptable strings, or any
                  JSON value (tool-call cases: {"name", "arguments"})
    tags          list of lower-case tags, e.g. domain, policy, adversarial, tool-call,
                  long-context ("overall" is reserved for the whole suite)
    metrics       a case metric name or a list of them (default: the header's metrics)
    json_schema   a JSON Schema (draft 2020-12) the output (json_valid) or the tool
                  arguments (tool_call_valid) must satisfy
    tools         OpenAI function definitions the model may call (tool_call_valid
                  checks calls against them). Not rendered into the prompt: the
                  Generator interface carries messages only, so describe the tools in
                  the system prompt, as a deployed assistant's prompt would
    must_refuse   true/false: policy cases (refusal, adversarial_pass)
    must_not_contain  strings that must not appear in the output (adversarial_pass)
    max_new_tokens    this case's generation budget
    notes         free text for people; ignored

The suite version is the content hash of the parsed header and cases (VERSION_RULE), so
reformatting the YAML does not change it, but any change of a prompt, reference, tag,
metric or setting does. The files a header names (cases, gate policy, anchors) are not
hashed by name; the cases are hashed by content, the gate policy and anchor set carry
their own versions in the report.

Every problem is collected with its row (1-based line of cases.jsonl; 0 for the header),
field and reason, and raised together as one SuiteError.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jsonschema
import yaml

from posttrain.data.canonical import canonical_json, json_type
from posttrain.data.violations import Violation
from posttrain.evaluation.metrics import METRICS, ConfigError, config_from_mapping

if TYPE_CHECKING:
    from posttrain.evaluation.calibration import AnchorItem
    from posttrain.evaluation.gate import GatePolicy

VERSION_RULE = "sha256('posttrain.suite.v1\\n' + canonical JSON {header, cases})"
_VERSION_PREFIX = b"posttrain.suite.v1\n"
OVERALL = "overall"  # the pseudo-tag of the whole suite in reports and gate policies

_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
_CASE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
_TAG = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_ROLES = ("system", "user", "assistant", "tool")
_HEADER_KEYS = {
    "name",
    "label",
    "description",
    "system_prompt",
    "rubric",
    "metrics",
    "run_metrics",
    "metric_config",
    "max_new_tokens",
    "cases",
    "gate_policy",
    "anchors",
}
_REFERENCE_KEYS = ("cases", "gate_policy", "anchors")  # file names: not part of the version
_CASE_KEYS = {
    "id",
    "prompt",
    "reference",
    "tags",
    "metrics",
    "json_schema",
    "tools",
    "must_refuse",
    "must_not_contain",
    "max_new_tokens",
    "notes",
}
MAX_NEW_TOKENS_LIMIT = 32768

Messages = list[dict[str, Any]]


class SuiteErrorCode(StrEnum):
    BAD_YAML = "bad_yaml"
    BAD_JSON = "bad_json"
    BAD_ENCODING = "bad_encoding"
    MISSING_FIELD = "missing_field"
    WRONG_TYPE = "wrong_type"
    BAD_VALUE = "bad_value"
    UNKNOWN_FIELD = "unknown_field"
    UNKNOWN_METRIC = "unknown_metric"
    DUPLICATE_ID = "duplicate_id"
    BAD_SCHEMA = "bad_schema"
    METRIC_REQUIREMENT = "metric_requirement"
    BAD_CONFIG = "bad_config"
    NO_CASES = "no_cases"
    MISSING_FILE = "missing_file"


class SuiteError(ValueError):
    """A suite that cannot be used; `violations` lists every problem found, with its row
    (1-based line in the cases file, 0 for the header), field and reason."""

    def __init__(self, violations: list[Violation], *, source: str = "suite") -> None:
        self.violations = violations
        shown = "\n".join(
            f"  {'header' if v.row == 0 else f'row {v.row}'}: {v.field or '(row)'}: {v.message} [{v.code}]"
            for v in violations[:50]
        )
        more = f"\n  ... and {len(violations) - 50} more" if len(violations) > 50 else ""
        super().__init__(f"{source}: {len(violations)} problem(s)\n{shown}{more}")


@dataclass(frozen=True)
class Case:
    """One evaluation case, with its prompt as the final chat messages (system prompt in)."""

    id: str
    messages: Messages
    reference: Any = None
    tags: tuple[str, ...] = ()
    metrics: tuple[str, ...] = ()
    json_schema: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    must_refuse: bool | None = None
    must_not_contain: tuple[str, ...] = ()
    max_new_tokens: int | None = None
    row: int = 0  # line in the cases file


@dataclass(frozen=True)
class Suite:
    name: str
    version: str  # content hash (VERSION_RULE)
    cases: tuple[Case, ...]
    label: str = ""
    description: str = ""
    system_prompt: str = ""
    rubric: str = ""
    metrics: tuple[str, ...] = ()
    run_metrics: tuple[str, ...] = ()
    metric_configs: Mapping[str, Any] = field(default_factory=dict)  # name -> config object
    max_new_tokens: int = 128
    gate_policy_ref: str = ""
    anchors_ref: str = ""
    gate_policy: GatePolicy | None = None
    anchors: tuple[AnchorItem, ...] = ()

    @property
    def tags(self) -> list[str]:
        return sorted({tag for case in self.cases for tag in case.tags})

    @property
    def case_metrics(self) -> list[str]:
        """Every case metric some case uses, in registry order."""
        used = {name for case in self.cases for name in case.metrics}
        return [name for name in METRICS if name in used]

    def config(self, metric: str) -> Any:
        return self.metric_configs[metric]


class _Problems:
    def __init__(self) -> None:
        self.items: list[Violation] = []

    def add(self, row: int, field_: str, code: SuiteErrorCode, message: str) -> None:
        self.items.append(Violation(row=row, field=field_, code=str(code), message=message))


# ----------------------------------------------------------------------------- header


def _metric_list(
    value: Any, where: str, kind: str, row: int, problems: _Problems
) -> tuple[str, ...] | None:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        problems.add(
            row, where, SuiteErrorCode.WRONG_TYPE, "must be a metric name or a list of names"
        )
        return None
    ok = True
    for i, name in enumerate(value):
        metric = METRICS.get(name)
        if metric is None:
            problems.add(
                row,
                f"{where}[{i}]",
                SuiteErrorCode.UNKNOWN_METRIC,
                f"unknown metric {name!r}; known: {', '.join(sorted(METRICS))}",
            )
            ok = False
        elif metric.kind != kind:
            other = "run_metrics (suite header)" if metric.kind == "run" else "metrics"
            problems.add(
                row,
                f"{where}[{i}]",
                SuiteErrorCode.UNKNOWN_METRIC,
                f"{name} is a {metric.kind} metric: list it in {other}",
            )
            ok = False
    if len(set(value)) != len(value):
        problems.add(row, where, SuiteErrorCode.BAD_VALUE, "lists a metric twice")
        ok = False
    return tuple(value) if ok else None


def _parse_header(raw: Any, problems: _Problems) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if not isinstance(raw, dict):
        problems.add(
            0, "", SuiteErrorCode.WRONG_TYPE, f"the header must be a mapping, got {json_type(raw)}"
        )
        return out
    for key in raw:
        if key not in _HEADER_KEYS:
            problems.add(
                0,
                str(key),
                SuiteErrorCode.UNKNOWN_FIELD,
                f"unknown header field; known: {', '.join(sorted(_HEADER_KEYS))}",
            )
    name = raw.get("name")
    if name is None:
        problems.add(0, "name", SuiteErrorCode.MISSING_FIELD, "the suite needs a name")
    elif not isinstance(name, str) or not _NAME.match(name):
        problems.add(
            0, "name", SuiteErrorCode.BAD_VALUE, "must match [a-z0-9][a-z0-9_.-]* (at most 64)"
        )
    else:
        out["name"] = name
    for key in (
        "label",
        "description",
        "system_prompt",
        "rubric",
        "cases",
        "gate_policy",
        "anchors",
    ):
        value = raw.get(key, "")
        if value is None:
            value = ""
        if not isinstance(value, str):
            problems.add(
                0, key, SuiteErrorCode.WRONG_TYPE, f"must be a string, got {json_type(value)}"
            )
        else:
            out[key] = value
    out["metrics"] = _metric_list(raw.get("metrics", []), "metrics", "case", 0, problems) or ()
    out["run_metrics"] = (
        _metric_list(raw.get("run_metrics", []), "run_metrics", "run", 0, problems) or ()
    )
    budget = raw.get("max_new_tokens", 128)
    if (
        isinstance(budget, bool)
        or not isinstance(budget, int)
        or not 0 < budget <= MAX_NEW_TOKENS_LIMIT
    ):
        problems.add(
            0,
            "max_new_tokens",
            SuiteErrorCode.BAD_VALUE,
            f"must be an integer in 1..{MAX_NEW_TOKENS_LIMIT}",
        )
    else:
        out["max_new_tokens"] = budget
    config = raw.get("metric_config") or {}
    if not isinstance(config, dict):
        problems.add(
            0,
            "metric_config",
            SuiteErrorCode.WRONG_TYPE,
            "must be a mapping of metric name -> settings",
        )
        config = {}
    for name, settings in config.items():
        if name not in METRICS:
            problems.add(
                0,
                f"metric_config.{name}",
                SuiteErrorCode.UNKNOWN_METRIC,
                f"unknown metric {name!r}",
            )
        elif not isinstance(settings, dict | None):
            problems.add(
                0,
                f"metric_config.{name}",
                SuiteErrorCode.WRONG_TYPE,
                "must be a mapping of settings",
            )
    out["metric_config"] = {
        k: v for k, v in config.items() if k in METRICS and isinstance(v, dict | None)
    }
    return out


def _build_configs(header: dict[str, Any], used: set[str], problems: _Problems) -> dict[str, Any]:
    """A config object for every registered metric the suite configures or uses."""
    configs: dict[str, Any] = {}
    for name in METRICS:
        settings = header.get("metric_config", {}).get(name)
        if settings is None and name not in used:
            continue
        try:
            configs[name] = config_from_mapping(METRICS[name].config, settings)
        except ConfigError as exc:
            for key, message in exc.problems:
                where = f"metric_config.{name}" + (f".{key}" if key else "")
                problems.add(0, where, SuiteErrorCode.BAD_CONFIG, message)
    return configs


# ----------------------------------------------------------------------------- cases


def _messages(prompt: Any, row: int, problems: _Problems) -> Messages | None:
    if isinstance(prompt, str):
        if not prompt.strip():
            problems.add(row, "prompt", SuiteErrorCode.BAD_VALUE, "must not be blank")
            return None
        return [{"role": "user", "content": prompt}]
    if not isinstance(prompt, list) or not prompt:
        problems.add(
            row,
            "prompt",
            SuiteErrorCode.WRONG_TYPE,
            "must be a string or a non-empty list of chat messages",
        )
        return None
    ok = True
    for i, message in enumerate(prompt):
        where = f"prompt[{i}]"
        if not isinstance(message, dict):
            problems.add(
                row,
                where,
                SuiteErrorCode.WRONG_TYPE,
                f"a message is an object, got {json_type(message)}",
            )
            ok = False
            continue
        if message.get("role") not in _ROLES:
            problems.add(
                row,
                f"{where}.role",
                SuiteErrorCode.BAD_VALUE,
                f"must be one of {', '.join(_ROLES)}",
            )
            ok = False
        if not isinstance(message.get("content"), str):
            problems.add(row, f"{where}.content", SuiteErrorCode.WRONG_TYPE, "must be a string")
            ok = False
    if ok and prompt[-1]["role"] not in ("user", "tool"):
        problems.add(
            row,
            f"prompt[{len(prompt) - 1}].role",
            SuiteErrorCode.BAD_VALUE,
            "the last turn must be user or tool: the model answers it",
        )
        ok = False
    return [dict(m) for m in prompt] if ok else None


def _check_schema(schema: Any, row: int, where: str, problems: _Problems) -> bool:
    if not isinstance(schema, dict):
        problems.add(row, where, SuiteErrorCode.WRONG_TYPE, "a JSON Schema must be an object")
        return False
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        path = "".join(f"[{p!r}]" if isinstance(p, int) else f".{p}" for p in exc.path)
        problems.add(
            row, where + path, SuiteErrorCode.BAD_SCHEMA, f"not a valid JSON Schema: {exc.message}"
        )
        return False
    return True


def _string_list(value: Any, row: int, where: str, problems: _Problems) -> tuple[str, ...] | None:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        problems.add(row, where, SuiteErrorCode.WRONG_TYPE, "must be a list of non-empty strings")
        return None
    return tuple(value)


def _parse_case(obj: Any, row: int, header: dict[str, Any], problems: _Problems) -> Case | None:
    before = len(problems.items)
    if not isinstance(obj, dict):
        problems.add(
            row, "", SuiteErrorCode.WRONG_TYPE, f"a case is a JSON object, got {json_type(obj)}"
        )
        return None
    for key in obj:
        if key not in _CASE_KEYS:
            problems.add(
                row,
                key,
                SuiteErrorCode.UNKNOWN_FIELD,
                f"unknown field; known: {', '.join(sorted(_CASE_KEYS))}",
            )
    case_id = obj.get("id")
    if case_id is None:
        problems.add(row, "id", SuiteErrorCode.MISSING_FIELD, "every case needs an id")
    elif not isinstance(case_id, str) or not _CASE_ID.match(case_id):
        problems.add(
            row,
            "id",
            SuiteErrorCode.BAD_VALUE,
            "must match [A-Za-z0-9][A-Za-z0-9_.:-]* (at most 128)",
        )
    if "prompt" not in obj:
        problems.add(row, "prompt", SuiteErrorCode.MISSING_FIELD, "every case needs a prompt")
        messages = None
    else:
        messages = _messages(obj["prompt"], row, problems)
    tags = _string_list(obj.get("tags", []), row, "tags", problems) or ()
    for i, tag in enumerate(tags):
        if not _TAG.match(tag) or tag == OVERALL:
            problems.add(
                row,
                f"tags[{i}]",
                SuiteErrorCode.BAD_VALUE,
                f"{tag!r}: tags are lower-case [a-z0-9_-], not {OVERALL!r}",
            )
    if "metrics" in obj:
        metrics = _metric_list(obj["metrics"], "metrics", "case", row, problems)
    else:
        metrics = header.get("metrics") or ()
    if metrics == ():
        problems.add(
            row,
            "metrics",
            SuiteErrorCode.MISSING_FIELD,
            "no metric: list some here or in the header's metrics",
        )
    schema = obj.get("json_schema")
    if schema is not None:
        _check_schema(schema, row, "json_schema", problems)
    tools = obj.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            problems.add(
                row,
                "tools",
                SuiteErrorCode.WRONG_TYPE,
                "must be a list of OpenAI function definitions",
            )
        else:
            for i, tool in enumerate(tools):
                function = tool.get("function", tool) if isinstance(tool, dict) else None
                if isinstance(function, dict) and isinstance(function.get("parameters"), dict):
                    _check_schema(
                        function["parameters"], row, f"tools[{i}].function.parameters", problems
                    )
    must_refuse = obj.get("must_refuse")
    if must_refuse is not None and not isinstance(must_refuse, bool):
        problems.add(row, "must_refuse", SuiteErrorCode.WRONG_TYPE, "must be true or false")
    forbidden = (
        _string_list(obj.get("must_not_contain", []), row, "must_not_contain", problems) or ()
    )
    budget = obj.get("max_new_tokens")
    if budget is not None and (
        isinstance(budget, bool)
        or not isinstance(budget, int)
        or not 0 < budget <= MAX_NEW_TOKENS_LIMIT
    ):
        problems.add(
            row,
            "max_new_tokens",
            SuiteErrorCode.BAD_VALUE,
            f"must be an integer in 1..{MAX_NEW_TOKENS_LIMIT}",
        )
    if obj.get("notes") is not None and not isinstance(obj["notes"], str):
        problems.add(row, "notes", SuiteErrorCode.WRONG_TYPE, "must be a string")
    for name in metrics or ():
        check = METRICS[name].check_case
        for field_, message in check(obj) if check else ():
            problems.add(row, field_, SuiteErrorCode.METRIC_REQUIREMENT, f"{name}: {message}")
    if len(problems.items) > before or messages is None:
        return None
    system = header.get("system_prompt", "")
    if system and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": system}, *messages]
    return Case(
        id=case_id,
        messages=messages,
        reference=obj.get("reference"),
        tags=tags,
        metrics=tuple(metrics),
        json_schema=schema,
        tools=tools,
        must_refuse=must_refuse,
        must_not_contain=forbidden,
        max_new_tokens=budget,
        row=row,
    )


def _no_constants(name: str) -> Any:
    raise ValueError(f"not JSON: {name} is not a JSON number")


def _read_rows(data: bytes | str, problems: _Problems) -> list[tuple[int, Any]]:
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = data[: exc.start].count(b"\n") + 1
            problems.add(line, "", SuiteErrorCode.BAD_ENCODING, f"not UTF-8 at byte {exc.start}")
            return []
    rows = []
    for number, line in enumerate(data.splitlines(), start=1):
        text = line.strip()
        if not text or text.startswith("//"):
            continue
        try:
            rows.append((number, json.loads(text, parse_constant=_no_constants)))
        except json.JSONDecodeError as exc:
            problems.add(
                number, "", SuiteErrorCode.BAD_JSON, f"not JSON: {exc.msg} at column {exc.colno}"
            )
        except ValueError as exc:  # NaN / Infinity: Python reads them, JSON has no such thing
            problems.add(number, "", SuiteErrorCode.BAD_JSON, str(exc))
    return rows


# ----------------------------------------------------------------------------- public


def suite_version(header: Mapping[str, Any], rows: list[Any]) -> str:
    """VERSION_RULE over the parsed header (minus file references) and the case rows."""
    content = {
        "header": {k: v for k, v in header.items() if k not in _REFERENCE_KEYS},
        "cases": rows,
    }
    return hashlib.sha256(_VERSION_PREFIX + canonical_json(content)).hexdigest()


def parse_suite(
    header: bytes | str | Mapping[str, Any],
    cases: bytes | str,
    *,
    source: str = "suite",
    gate_policy: GatePolicy | None = None,
    anchors: tuple[AnchorItem, ...] = (),
) -> Suite:
    """A suite from its header (YAML text or a mapping) and cases (JSONL), as read from the
    artifact store. Raises SuiteError listing every problem with its row and field."""
    problems = _Problems()
    if isinstance(header, Mapping):
        raw_header: Any = dict(header)
    else:
        try:
            raw_header = yaml.safe_load(header)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark else ""
            raise SuiteError(
                [Violation(0, "", str(SuiteErrorCode.BAD_YAML), f"not YAML{where}: {exc}")],
                source=source,
            ) from None
    parsed = _parse_header(raw_header, problems)
    rows = _read_rows(cases, problems)
    parsed_cases: list[Case] = []
    first_row: dict[str, int] = {}
    for number, obj in rows:
        duplicate = False
        if isinstance(obj, dict) and isinstance(obj.get("id"), str):
            duplicate = obj["id"] in first_row
            if duplicate:
                problems.add(
                    number,
                    "id",
                    SuiteErrorCode.DUPLICATE_ID,
                    f"{obj['id']!r} is already the id of row {first_row[obj['id']]}",
                )
            else:
                first_row[obj["id"]] = number
        case = _parse_case(obj, number, parsed, problems)
        if case is not None and not duplicate:
            parsed_cases.append(case)
    if not rows and not problems.items:
        problems.add(0, "cases", SuiteErrorCode.NO_CASES, "the suite has no case")
    used = {name for case in parsed_cases for name in case.metrics} | set(
        parsed.get("run_metrics", ())
    )
    configs = _build_configs(parsed, used, problems)
    if problems.items:
        raise SuiteError(sorted(problems.items, key=lambda v: v.row), source=source)
    return Suite(
        name=parsed["name"],
        version=suite_version(raw_header, [obj for _, obj in rows]),
        cases=tuple(parsed_cases),
        label=parsed["label"],
        description=parsed["description"],
        system_prompt=parsed["system_prompt"],
        rubric=parsed["rubric"],
        metrics=parsed["metrics"],
        run_metrics=parsed["run_metrics"],
        metric_configs=configs,
        max_new_tokens=parsed["max_new_tokens"],
        gate_policy_ref=parsed["gate_policy"],
        anchors_ref=parsed["anchors"],
        gate_policy=gate_policy,
        anchors=tuple(anchors),
    )


def load_suite(path: str | Path) -> Suite:
    """A suite from a folder holding suite.yaml (or the path of the YAML file itself), with
    its cases file and, when the header names them, its gate policy and anchor set."""
    from posttrain.evaluation.calibration import load_anchors
    from posttrain.evaluation.gate import load_gate_policy

    path = Path(path)
    header_path = path / "suite.yaml" if path.is_dir() else path
    folder = header_path.parent
    header_text = header_path.read_text(encoding="utf-8")
    try:
        header = yaml.safe_load(header_text)
    except yaml.YAMLError:
        header = None  # parse_suite reports it with the line
    refs = header if isinstance(header, dict) else {}
    missing = []
    files: dict[str, Path] = {}
    for key, default in (("cases", "cases.jsonl"), ("gate_policy", ""), ("anchors", "")):
        name = refs.get(key) or default
        if not isinstance(name, str) or not name:
            continue
        files[key] = folder / name
        if not files[key].is_file():
            missing.append(
                Violation(0, key, str(SuiteErrorCode.MISSING_FILE), f"{files[key]} does not exist")
            )
    if missing:
        raise SuiteError(missing, source=str(header_path))
    policy = load_gate_policy(files["gate_policy"]) if "gate_policy" in files else None
    anchors = load_anchors(files["anchors"].read_bytes()) if "anchors" in files else ()
    return parse_suite(
        header_text,
        files["cases"].read_bytes(),
        source=str(header_path),
        gate_policy=policy,
        anchors=tuple(anchors),
    )


DEFAULT_SUITE_DIR = Path(__file__).resolve().parent / "suites" / "support_v1"
