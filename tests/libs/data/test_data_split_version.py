"""The train/eval split, version ids and diffs."""

from __future__ import annotations

import hashlib
import io
import json
import random

import pytest

from posttrain.data import (
    IntakeConfig,
    assign_split,
    dataset_version,
    diff,
    row_hash,
    run_intake,
    validate_upload,
    version_id,
)


def _row(i: int) -> dict:
    return {
        "messages": [
            {"role": "user", "content": f"Question number {i}?"},
            {"role": "assistant", "content": f"Answer number {i}, with detail {i * 7919 % 1000}."},
        ]
    }


def _jsonl(rows: list[dict]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


def _intake(rows: list[dict], **config: object):
    train, evals = io.BytesIO(), io.BytesIO()
    result = run_intake(_jsonl(rows), IntakeConfig(near_dup_threshold=None, **config), train, evals)  # type: ignore[arg-type]
    assert result.accepted, result.errors
    return result, train.getvalue(), evals.getvalue()


def test_split_is_deterministic_and_ignores_row_order() -> None:
    rows = [_row(i) for i in range(500)]
    shuffled = rows[:]
    random.Random(3).shuffle(shuffled)
    first, train_a, eval_a = _intake(rows, eval_fraction=0.1)
    second, train_b, eval_b = _intake(shuffled, eval_fraction=0.1)
    assert first.split.eval_digests == second.split.eval_digests
    assert set(eval_a.splitlines()) == set(eval_b.splitlines())
    assert set(train_a.splitlines()) == set(train_b.splitlines())
    assert 25 <= first.split.eval_rows <= 75  # ~10% of 500
    assert first.split.train_rows + first.split.eval_rows == 500


def test_split_files_keep_file_order() -> None:
    rows = [_row(i) for i in range(200)]
    _, train, evals = _intake(rows, eval_fraction=0.2)
    order = {
        json.dumps(json.loads(json.dumps(r)), sort_keys=True, separators=(",", ":")): i
        for i, r in enumerate(rows)
    }
    for data in (train, evals):
        positions = [order[line.decode()] for line in data.splitlines()]
        assert positions == sorted(positions)


def test_adding_rows_never_moves_old_rows_between_splits() -> None:
    small, _, _ = _intake([_row(i) for i in range(300)], eval_fraction=0.1)
    large, _, _ = _intake([_row(i) for i in range(600)], eval_fraction=0.1)
    assert small.split.eval_digests <= large.split.eval_digests
    old = set(small.row_digests)
    assert large.split.eval_digests & old == small.split.eval_digests


def test_seed_changes_the_split() -> None:
    rows = [_row(i) for i in range(300)]
    a, _, _ = _intake(rows, eval_fraction=0.1, split_seed=1)
    b, _, _ = _intake(rows, eval_fraction=0.1, split_seed=2)
    assert a.split.eval_digests != b.split.eval_digests
    assert a.version == b.version  # the version is the rows, not how they are split


@pytest.mark.parametrize("n", [2, 3, 5])
def test_tiny_datasets_get_an_eval_row_and_a_train_row(n: int) -> None:
    result, train, evals = _intake([_row(i) for i in range(n)], eval_fraction=1e-6)
    assert result.split.eval_rows == 1 and len(evals.splitlines()) == 1
    assert len(train.splitlines()) == n - 1
    many_eval, _, _ = _intake([_row(i) for i in range(n)], eval_fraction=1 - 1e-6)
    assert many_eval.split.train_rows == 1


def test_one_row_or_zero_fraction_has_no_eval() -> None:
    assert _intake([_row(1)], eval_fraction=1e-6)[0].split.eval_rows == 0  # nothing to move
    assert _intake([_row(i) for i in range(10)], eval_fraction=0.0)[0].split.eval_rows == 0


def test_assign_split_depends_only_on_the_set() -> None:
    digests = [hashlib.sha256(str(i).encode()).digest() for i in range(100)]
    a = assign_split(digests, 0.2, seed=5)
    b = assign_split(list(reversed(digests)), 0.2, seed=5)
    assert a == b


def test_version_ignores_order_and_duplicates_but_not_content() -> None:
    rows = [_row(i) for i in range(50)]
    shuffled = rows[:]
    random.Random(4).shuffle(shuffled)
    a = validate_upload(_jsonl(rows)).version
    assert validate_upload(_jsonl(shuffled + rows[:5])).version == a
    assert validate_upload(_jsonl(rows[:-1])).version != a
    changed = json.loads(json.dumps(rows))
    changed[0]["messages"][1]["content"] += "!"
    assert validate_upload(_jsonl(changed)).version != a


def test_version_is_reproducible_from_the_stored_files() -> None:
    result, train, evals = _intake([_row(i) for i in range(40)], eval_fraction=0.25)
    lines = (train + evals).splitlines()
    assert dataset_version(lines) == result.version
    assert version_id(bytes.fromhex(row_hash(line)) for line in lines) == result.version
    expected = hashlib.sha256(
        b"posttrain.dataset.v1\n"
        + b"".join(sorted(hashlib.sha256(line).hexdigest().encode() + b"\n" for line in lines))
    ).hexdigest()
    assert result.version == expected
    manifest = result.manifest()
    assert manifest["files"]["train.jsonl"]["sha256"] == hashlib.sha256(train).hexdigest()
    assert manifest["train_rows"] + manifest["eval_rows"] == manifest["rows"] == 40


def test_row_hash_recanonicalises() -> None:
    row = _row(1)
    assert (
        row_hash(row) == row_hash(json.dumps(row, indent=2)) == row_hash(json.dumps(row).encode())
    )


def test_diff_by_row_hash() -> None:
    a = [json.dumps(_row(i)) for i in range(10)]
    b = [json.dumps(_row(i)) for i in range(3, 14)]
    result = diff(a, b, max_samples=2)
    assert (result.rows_added, result.rows_removed) == (4, 3)
    assert result.added == sorted(row_hash(r) for r in b[-4:])
    assert result.removed == sorted(row_hash(r) for r in a[:3])
    assert [json.loads(s) for s in result.added_samples] == [_row(10), _row(11)]
    assert [json.loads(s) for s in result.removed_samples] == [_row(0), _row(1)]
    assert diff(a, list(reversed(a))).rows_added == 0


def test_diff_accepts_files_via_callables_and_refuses_one_shot_iterators() -> None:
    a_bytes = _jsonl([_row(i) for i in range(5)])
    b_bytes = _jsonl([_row(i) for i in range(1, 6)])
    result = diff(lambda: io.BytesIO(a_bytes), lambda: io.BytesIO(b_bytes), max_samples=5)
    assert (result.rows_added, result.rows_removed, len(result.removed_samples)) == (1, 1, 1)
    with pytest.raises(ValueError, match="twice"):
        diff(iter(a_bytes.splitlines()), b_bytes.splitlines(), max_samples=1)
