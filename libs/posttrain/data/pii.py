"""PII and secret detectors: flag where personal data or credentials sit in a row.

Findings are reported (row, uploaded field, kind, a masked snippet); they never carry the
value itself and do not reject a row: a reviewer decides, in the approval workflow.
Each detector is one function registered by name in PII_DETECTORS, yielding (start, end)
spans of a text. Detectors lean towards precision: a phone number must look like one
(a + country code or separators in the usual places), a card number must pass the Luhn
check and start like a real card, so ordinary numbers, dates and ids are not flagged.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator

from posttrain.data.schemas import ChatRow
from posttrain.data.violations import Problem

PiiDetector = Callable[[str], Iterable[tuple[int, int]]]
PII_DETECTORS: dict[str, PiiDetector] = {}


def pii_detector(kind: str) -> Callable[[PiiDetector], PiiDetector]:
    def register(detector: PiiDetector) -> PiiDetector:
        if kind in PII_DETECTORS:
            raise ValueError(f"PII detector {kind!r} is registered twice")
        PII_DETECTORS[kind] = detector
        return detector

    return register


def _spans(pattern: re.Pattern[str], text: str) -> Iterator[tuple[int, int]]:
    for match in pattern.finditer(text):
        yield match.span()


_EMAIL = re.compile(
    r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@(?:[A-Za-z0-9-]{1,63}\.)+[A-Za-z]{2,24}\b"
)


@pii_detector("email")
def email(text: str) -> Iterator[tuple[int, int]]:
    if "@" in text:
        yield from _spans(_EMAIL, text)


# +CC then groups (e.g. +44 20 7946 0958, +1-415-555-0132, +4915123456789), or the
# North American (415) 555-0132 / 415-555-0132 / 415.555.0132 with separators.
_PHONE = re.compile(
    r"(?<![\w.+/-])(?:"
    r"\+[0-9]{1,3}(?:[ .-]?\(?[0-9]{1,4}\)?){2,5}"
    r"|\([0-9]{3}\)[ .-]?[0-9]{3}[ .-][0-9]{4}"
    r"|[0-9]{3}([.-])[0-9]{3}\1[0-9]{4}"
    r"|[0-9]{3} [0-9]{3} [0-9]{4}"
    r")(?![\w/-]|\.[0-9])"
)


def _has_digit(text: str) -> bool:
    # Substring tests run at memchr speed; a regex scan costs ten times more per row.
    return any(digit in text for digit in "0123456789")


@pii_detector("phone")
def phone(text: str) -> Iterator[tuple[int, int]]:
    if not _has_digit(text):
        return
    for match in _PHONE.finditer(text):
        digits = sum(c.isdigit() for c in match.group())
        if 10 <= digits <= 15:
            yield match.span()


_CARD = re.compile(r"(?<![\w.-])[0-9](?:[ -]?[0-9]){12,18}(?![\w-]|\.[0-9])")
# Issuer prefixes (IIN ranges) of the major networks: a Luhn-valid number that starts
# otherwise is almost always an id, not a card.
_CARD_PREFIX = re.compile(r"^(?:4|5[1-5]|2[2-7]|3[47]|3[0689]|6(?:011|5|4[4-9]|22)|35|62)")


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


@pii_detector("credit_card")
def credit_card(text: str) -> Iterator[tuple[int, int]]:
    if not _has_digit(text):
        return
    for match in _CARD.finditer(text):
        digits = re.sub(r"[ -]", "", match.group())
        if 13 <= len(digits) <= 19 and _CARD_PREFIX.match(digits) and luhn_ok(digits):
            yield match.span()


_API_KEY = re.compile(
    r"(?<![A-Za-z0-9_-])(?:"
    r"sk-(?:[A-Za-z0-9]+-)*[A-Za-z0-9_-]{20,}"  # OpenAI / Anthropic style (sk-proj-, sk-ant-)
    r"|(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,}"  # Stripe
    r"|gh[pousr]_[A-Za-z0-9]{36,}"  # GitHub
    r"|github_pat_[A-Za-z0-9_]{40,}"
    r"|xox[abprs]-[A-Za-z0-9-]{10,}"  # Slack
    r"|AIza[0-9A-Za-z_-]{35}"  # Google
    r"|hf_[A-Za-z0-9]{30,}"  # Hugging Face
    r")"
)


_UNDERSCORE_KEY_MARKERS = (
    "sk_",
    "rk_",
    "hf_",
    "ghp_",
    "gho_",
    "ghu_",
    "ghs_",
    "ghr_",
    "github_pat_",
)


@pii_detector("api_key")
def api_key(text: str) -> Iterator[tuple[int, int]]:
    if (
        "sk-" in text
        or "xox" in text
        or "AIza" in text
        or ("_" in text and any(marker in text for marker in _UNDERSCORE_KEY_MARKERS))
    ):
        yield from _spans(_API_KEY, text)


# Access key ids: AKIA (long-term) and ASIA (temporary); other prefixes name users/roles.
_AWS_KEY = re.compile(r"(?<![A-Z0-9])(?:AKIA|ASIA)[A-Z0-9]{16}(?![A-Z0-9])")


@pii_detector("aws_access_key")
def aws_access_key(text: str) -> Iterator[tuple[int, int]]:
    if "AKIA" in text or "ASIA" in text:
        yield from _spans(_AWS_KEY, text)


# "Bearer <token>" with a token that looks machine-made (has a digit), and bare JWTs.
_BEARER = re.compile(
    r"\b[Bb]earer\s+(?=[A-Za-z0-9._~+/-]*\d)[A-Za-z0-9._~+/-]{16,}=*"
    r"|\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"
)


@pii_detector("bearer_token")
def bearer_token(text: str) -> Iterator[tuple[int, int]]:
    if "earer" in text or "eyJ" in text:
        yield from _spans(_BEARER, text)


_PRIVATE_KEY = re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----")


@pii_detector("private_key")
def private_key(text: str) -> Iterator[tuple[int, int]]:
    if "-----BEGIN" in text:
        yield from _spans(_PRIVATE_KEY, text)


def mask(value: str) -> str:
    """Enough to find the value again in the file, never enough to use it."""
    if len(value) < 8:
        return "*" * len(value)
    return f"{value[:2]}{'*' * min(len(value) - 4, 12)}{value[-2:]} ({len(value)} chars)"


def scan_row(row: ChatRow, kinds: Iterable[str] | None = None) -> list[Problem]:
    """PII findings of one row, as Problems with code `pii_<kind>`."""
    names = PII_DETECTORS if kinds is None else kinds
    findings: list[Problem] = []
    for path, text in row.texts:
        for kind in names:
            for start, end in PII_DETECTORS[kind](text):
                findings.append(Problem(path, f"pii_{kind}", f"{kind}: {mask(text[start:end])}"))
    return findings
