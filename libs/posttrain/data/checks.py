"""Row checks: what a well-typed row must also satisfy to be trained on.

Each check is one function registered by name in ROW_CHECKS; the pipeline runs them in
registration order on every row that parsed, and IntakeConfig.disabled_checks turns one
off by name. Adding a check is one function and one decorator line here. A check gets the
row in its stored form and reports fields in the uploaded shape via row.source_path().
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from posttrain.data.config import IntakeConfig
from posttrain.data.schemas import ROLES, ChatRow
from posttrain.data.violations import ErrorCode, Problem

RowCheck = Callable[[ChatRow, IntakeConfig], Iterable[Problem]]
ROW_CHECKS: dict[str, RowCheck] = {}


def row_check(name: str) -> Callable[[RowCheck], RowCheck]:
    def register(check: RowCheck) -> RowCheck:
        if name in ROW_CHECKS:
            raise ValueError(f"row check {name!r} is registered twice")
        ROW_CHECKS[name] = check
        return check

    return register


@row_check("known_roles")
def known_roles(row: ChatRow, config: IntakeConfig) -> Iterator[Problem]:
    for i, message in enumerate(row.messages):
        if message["role"] not in ROLES:
            yield Problem(
                row.source_path(f"messages[{i}].role"),
                ErrorCode.UNKNOWN_ROLE,
                f"role {message['role'][:40]!r} is not one of {', '.join(ROLES)}",
            )


@row_check("ends_with_assistant")
def ends_with_assistant(row: ChatRow, config: IntakeConfig) -> Iterator[Problem]:
    """(An unknown last role is known_roles' finding, not reported twice.)"""
    if not row.messages:
        yield Problem("messages", ErrorCode.EMPTY_CONVERSATION, "messages is empty")
        return
    last = len(row.messages) - 1
    if row.messages[last]["role"] in ROLES and row.messages[last]["role"] != "assistant":
        yield Problem(
            row.source_path(f"messages[{last}].role"),
            ErrorCode.LAST_TURN_NOT_ASSISTANT,
            f"the last turn is {row.messages[last]['role'][:40]!r}; a conversation must end "
            "with an assistant turn to have something to learn",
        )


@row_check("answers_not_empty")
def answers_not_empty(row: ChatRow, config: IntakeConfig) -> Iterator[Problem]:
    for i, message in enumerate(row.messages):
        if message["role"] == "assistant" and not message.get("tool_calls"):
            if not message["content"].strip():
                yield Problem(
                    row.source_path(f"messages[{i}].content"),
                    ErrorCode.EMPTY_ANSWER,
                    "assistant turn has no text and no tool call",
                )


@row_check("tool_calls")
def tool_calls(row: ChatRow, config: IntakeConfig) -> Iterator[Problem]:
    """Tool calls only on assistant turns, unique ids, every tool result answering an
    earlier call of the same row, and calls naming a declared tool when `tools` is given."""
    bad = ErrorCode.BAD_TOOL_CALL
    declared = {t["function"]["name"] for t in row.tools or ()}
    call_ids: set[str] = set()
    for i, message in enumerate(row.messages):
        path = f"messages[{i}]"
        calls = message.get("tool_calls", ())
        if calls and message["role"] != "assistant":
            yield Problem(f"{path}.tool_calls", bad, "only assistant turns can call tools")
        for j, call in enumerate(calls):
            if call["id"] in call_ids:
                yield Problem(f"{path}.tool_calls[{j}].id", bad, "tool call id is used twice")
            call_ids.add(call["id"])
            name = call["function"]["name"]
            if declared and name not in declared:
                yield Problem(
                    f"{path}.tool_calls[{j}].function.name",
                    bad,
                    f"calls {name[:60]!r}, which is not among the row's tools",
                )
        answered = message.get("tool_call_id")
        if message["role"] == "tool":
            if answered is None:
                yield Problem(f"{path}.tool_call_id", bad, "a tool turn needs a tool_call_id")
            elif answered not in call_ids:
                yield Problem(
                    f"{path}.tool_call_id",
                    bad,
                    "tool_call_id does not match an earlier tool call of this conversation",
                )
        elif answered is not None:
            yield Problem(f"{path}.tool_call_id", bad, "only tool turns carry a tool_call_id")


@row_check("token_budget")
def token_budget(row: ChatRow, config: IntakeConfig) -> Iterator[Problem]:
    budget = config.max_tokens_per_row
    if budget is not None and row.tokens > budget:
        yield Problem(
            "",
            ErrorCode.TOO_MANY_TOKENS,
            f"row has about {row.tokens} tokens, more than the budget of {budget}",
        )


def run_checks(row: ChatRow, config: IntakeConfig) -> list[Problem]:
    problems: list[Problem] = []
    for name, check in ROW_CHECKS.items():
        if name not in config.disabled_checks:
            problems.extend(check(row, config))
    return problems
