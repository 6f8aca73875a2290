"""Exact and near-duplicate removal."""

from __future__ import annotations

import io
import json
import random

import numpy as np
import pytest

from posttrain.data import IntakeConfig, run_intake, validate_upload
from posttrain.data.dedupe import MinHasher, NearDuplicateFinder, choose_bands, words

VOCAB = [f"w{i}" for i in range(5000)]


def _text(rng: random.Random, n: int = 120) -> str:
    return " ".join(rng.choices(VOCAB, k=n))


def _row(question: str, answer: str) -> dict:
    return {
        "messages": [
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer},
        ]
    }


def _jsonl(rows: list[dict]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


def _edit(text: str, changes: int, rng: random.Random) -> str:
    tokens = text.split()
    for _ in range(changes):
        tokens[rng.randrange(len(tokens))] = rng.choice(VOCAB)
    return " ".join(tokens)


def test_exact_duplicates_are_removed_and_reported() -> None:
    a, b = _row("Hi", "Hello"), _row("Bye", "Goodbye")
    data = _jsonl([a, b, a, a, b])
    result = validate_upload(data, IntakeConfig(near_dup_threshold=None))
    assert (result.rows_stored, result.exact_duplicates) == (2, 3)
    assert [(d.row, d.duplicate_of, d.kind) for d in result.duplicates] == [
        (3, 1, "exact"),
        (4, 1, "exact"),
        (5, 2, "exact"),
    ]
    assert result.rows_valid == 5


def test_near_duplicates_are_removed_and_distinct_rows_kept() -> None:
    rng = random.Random(7)
    base = [_row(_text(rng, 20), _text(rng, 200)) for _ in range(30)]
    near = [
        _row(r["messages"][0]["content"], _edit(r["messages"][1]["content"], 2, rng))
        for r in base[:5]
    ]
    result = validate_upload(_jsonl(base + near), IntakeConfig(near_dup_threshold=0.8))
    assert result.near_duplicates == 5
    assert result.rows_stored == 30
    pairs = {(d.row, d.duplicate_of) for d in result.duplicates}
    # Each pair is (a base row, its edit) in one order or the other: which survives is
    # decided by row hash, not position.
    assert {frozenset(p) for p in pairs} == {frozenset((i + 1, 31 + i)) for i in range(5)}
    assert all(d.kind == "near" and d.similarity >= 0.8 for d in result.duplicates)


def test_rows_below_the_threshold_are_kept() -> None:
    rng = random.Random(8)
    base = [_row("q", _text(rng, 100)) for _ in range(5)]
    far = [_row("q", _edit(r["messages"][1]["content"], 40, rng)) for r in base]
    result = validate_upload(_jsonl(base + far), IntakeConfig(near_dup_threshold=0.9))
    assert result.near_duplicates == 0 and result.rows_stored == 10


def test_near_duplicate_choice_and_version_ignore_row_order() -> None:
    rng = random.Random(9)
    rows = [_row(_text(rng, 10), _text(rng, 150)) for _ in range(40)]
    rows += [
        _row(r["messages"][0]["content"], _edit(r["messages"][1]["content"], 1, rng))
        for r in rows[:15]
    ]
    shuffled = rows[:]
    random.Random(1).shuffle(shuffled)
    outcomes = []
    for order in (rows, shuffled):
        train, evals = io.BytesIO(), io.BytesIO()
        result = run_intake(_jsonl(order), IntakeConfig(near_dup_threshold=0.8), train, evals)
        stored = set(train.getvalue().splitlines()) | set(evals.getvalue().splitlines())
        outcomes.append((result.version, result.near_duplicates, frozenset(stored)))
    assert outcomes[0] == outcomes[1]
    assert outcomes[0][1] == 15


def test_near_duplicates_are_left_out_of_split_files_but_in_the_normalised_sink() -> None:
    rng = random.Random(10)
    answer = _text(rng, 200)
    rows = [_row("q", answer), _row("q", _edit(answer, 1, rng)), _row("other", _text(rng, 50))]
    sink, train, evals = io.BytesIO(), io.BytesIO(), io.BytesIO()
    result = run_intake(_jsonl(rows), IntakeConfig(near_dup_threshold=0.8), train, evals)
    assert result.near_duplicates == 1 and result.rows_stored == 2
    assert result.files is not None
    assert result.files.train.rows + result.files.eval.rows == 2
    assert (
        validate_upload(_jsonl(rows), IntakeConfig(near_dup_threshold=0.8), sink).normalised.rows
        == 3
    )


def test_rows_without_words_are_never_near_duplicates() -> None:
    rows = [_row("?", "!"), _row("??", "!!"), _row("...", "!?")]
    result = validate_upload(_jsonl(rows), IntakeConfig(near_dup_threshold=0.5))
    assert result.near_duplicates == 0 and result.rows_stored == 3


def test_minhash_estimates_jaccard() -> None:
    rng = random.Random(11)
    hasher = MinHasher(num_perm=256, shingle_words=1)
    a = rng.sample(VOCAB, 400)
    b = a[:300] + rng.sample(VOCAB, 100)
    true = len(set(a) & set(b)) / len(set(a) | set(b))
    sa, sb = hasher.signature(" ".join(a)), hasher.signature(" ".join(b))
    assert sa is not None and sb is not None
    assert abs(float(np.mean(sa == sb)) - true) < 0.08
    assert (MinHasher(256, 1).signature(" ".join(a)) == sa).all()  # same in every process


def test_words_split_ascii_and_unspaced_scripts() -> None:
    assert words("Hello, World! it's 42") == [b"hello", b"world", b"it", b"s", b"42"]
    assert words("猫が好き cafe") == [w.encode() for w in ["猫", "が", "好", "き", "cafe"]]


@pytest.mark.parametrize("threshold", [0.5, 0.7, 0.8, 0.9, 0.95])
def test_banding_finds_pairs_at_the_threshold(threshold: float) -> None:
    bands, rows = choose_bands(128, threshold)
    assert bands * rows <= 128
    assert 1 - (1 - threshold**rows) ** bands >= 0.99


def test_finder_caps_comparisons_per_bucket() -> None:
    finder = NearDuplicateFinder(threshold=0.99, num_perm=16, shingle_words=1, max_candidates=2)
    try:
        for i in range(50):  # all share most words: one big bucket, few true duplicates
            finder.add(" ".join(["same"] * 30 + [f"x{i}"]))
        found = finder.find([i.to_bytes(4, "big") for i in range(50)])
    finally:
        finder.close()
    assert all(f.similarity >= 0.99 for f in found)
