"""PII findings: each kind found with its row and field, never the value itself, and no
findings on ordinary text and numbers."""

from __future__ import annotations

import json

import pytest

from posttrain.data import PII_DETECTORS, IntakeConfig, validate_upload
from posttrain.data.pii import luhn_ok, scan_row
from posttrain.data.schemas import parse_chat

SECRETS = {
    "email": ["jane.doe+news@example.co.uk", "a_b@mail.example.org"],
    "phone": [
        "+1 415-555-0132",
        "(415) 555-0132",
        "415.555.0132",
        "+44 20 7946 0958",
        "+4915123456789",
    ],
    "credit_card": [
        "4111 1111 1111 1111",
        "5500-0000-0000-0004",
        "378282246310005",
        "6011111111111117",
    ],
    "api_key": [
        "sk-proj-" + "Ab3dEf6hIj9kLm2nOp5qRs8t",
        "sk-ant-api03-" + "x" * 30,
        "ghp_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8",
        "xoxb-1234567890-abcdefghij",
        "hf_" + "abcdefghijklmnopqrstuvwxyzABCDEF",
        "AIza" + "SyA1234567890abcdefghijklmnopqrstuv",
    ],
    "aws_access_key": ["AKIAIOSFODNN7EXAMPLE", "ASIAY34FZKBOKMUTVV7A"],
    "bearer_token": [
        "Bearer eyJhbGciOiJIUzI1NiJ9abc123",
        "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N",
    ],
    "private_key": ["-----BEGIN RSA PRIVATE KEY-----", "-----BEGIN OPENSSH PRIVATE KEY-----"],
}

ORDINARY = [
    "The meeting is on 2024-03-15 at 10:30, room 4111.",
    "Version 1.2.3 fixed issue #123456 and PR 7890123.",
    "Order 1234567890123456 costs $1,299.99; invoice INV-2024-000123.",
    "Server 192.168.100.200 port 8080, build 20240315.1",
    "ISBN 978-3-16-148410-0, call extension 5550 tomorrow.",
    "The bearer of bad news arrived; a task-oriented plan with ask-me-anything sessions.",
    "Use @dataclass and user@localhost in the code sample; email me at support.",
    "Population 8,336,817 in 2023; coordinates 40.7128, -74.0060.",
    "A 16-digit id 1234 5678 9012 3456 that fails Luhn, and 0000 0000 0000 0000.",
    "Scikit-learn and sk-learn are different names; AKIA is a prefix of nothing here.",
    "-----BEGIN PUBLIC KEY----- is fine to share.",
]


def _row_with(text: str) -> dict:
    return {
        "messages": [
            {"role": "system", "content": "You are helpful."},
            {"role": "user", "content": f"Please remember this: {text} thanks"},
            {"role": "assistant", "content": "Noted."},
        ]
    }


@pytest.mark.parametrize(
    ("kind", "value"), [(k, v) for k, values in SECRETS.items() for v in values]
)
def test_each_kind_is_found_with_row_and_field_and_masked(kind: str, value: str) -> None:
    good = json.dumps(_row_with("nothing special")).encode()
    data = good + b"\n" + json.dumps(_row_with(value)).encode() + b"\n"
    result = validate_upload(data)
    assert result.accepted  # findings flag, they do not reject
    found = [(f.row, f.field, f.code) for f in result.pii_findings]
    assert (2, "messages[1].content", f"pii_{kind}") in found
    for finding in result.pii_findings:
        assert value not in finding.message
        assert value[4:-4] not in finding.message


@pytest.mark.parametrize("text", ORDINARY)
def test_ordinary_text_and_numbers_are_not_flagged(text: str) -> None:
    row, problems = parse_chat(_row_with(text), 64)
    assert row is not None and not problems
    assert scan_row(row) == []


def test_findings_name_the_instruction_field() -> None:
    row = {
        "instruction": "Email bob@example.com",
        "input": "card 4111-1111-1111-1111",
        "response": "ok",
    }
    result = validate_upload(json.dumps(row).encode())
    assert {(f.field, f.code) for f in result.pii_findings} == {
        ("instruction", "pii_email"),
        ("input", "pii_credit_card"),
    }


def test_tool_call_arguments_are_scanned() -> None:
    row = {
        "messages": [
            {"role": "user", "content": "Send it."},
            {
                "role": "assistant",
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "send", "arguments": '{"to": "x@example.com"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "sent"},
            {"role": "assistant", "content": "Done."},
        ]
    }
    result = validate_upload(json.dumps(row).encode())
    assert [(f.field, f.code) for f in result.pii_findings] == [
        ("messages[1].tool_calls[0].function.arguments", "pii_email")
    ]


def test_detectors_can_be_chosen() -> None:
    data = json.dumps(_row_with("jane@example.com AKIAIOSFODNN7EXAMPLE")).encode()
    result = validate_upload(data, IntakeConfig(pii_detectors=("aws_access_key",)))
    assert [f.code for f in result.pii_findings] == ["pii_aws_access_key"]
    assert validate_upload(data, IntakeConfig(pii_detectors=())).pii_findings == []


def test_every_registered_detector_is_tested() -> None:
    assert set(PII_DETECTORS) == set(SECRETS)


def test_luhn() -> None:
    assert luhn_ok("4111111111111111") and luhn_ok("378282246310005")
    assert not luhn_ok("4111111111111112")
