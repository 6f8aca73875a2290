"""Dataset versions are content-addressed; diffs between two versions are by row hash.

Version id rule (VERSION_RULE): sha256 over the hex row hashes of the stored rows, sorted,
each followed by "\\n", preceded by the line "posttrain.dataset.v1\\n". A row hash is
sha256 of the row's canonical JSON (canonical.py).

Why sorted, not file order: a dataset version is a set of examples: exact duplicates are
removed, near-duplicate removal is order-independent, the split is by hash, and training
shuffles. So the same rows uploaded in another order are the same version (the upload
answers already_existed), while the stored files keep the first upload's order. The rule
needs only the row hashes, so a version can be re-verified from a manifest's hash list
or by re-hashing the stored files, without trusting the order they were written in.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from posttrain.data.canonical import canonical_json, row_digest

VERSION_RULE = "sha256('posttrain.dataset.v1\\n' + sorted(hex row sha256 + '\\n'))"
_VERSION_PREFIX = b"posttrain.dataset.v1\n"

Row = Mapping[str, Any] | str | bytes
RowSource = Iterable[Row] | Callable[[], Iterable[Row]]


def version_id(digests: Iterable[bytes]) -> str:
    """The version id of a set of rows given by their 32-byte row hashes (repeats count once)."""
    sha = hashlib.sha256(_VERSION_PREFIX)
    previous = b""
    for digest in sorted(digests):  # hex order == byte order, so sort the bytes
        if digest != previous:
            sha.update(digest.hex().encode("ascii") + b"\n")
            previous = digest
    return sha.hexdigest()


def _canonical(row: Row) -> bytes:
    if isinstance(row, bytes | str):
        row = json.loads(row)
    return canonical_json(row)


def _rows(source: RowSource) -> Iterable[bytes]:
    rows = source() if callable(source) else source
    for row in rows:
        if isinstance(row, bytes | str) and not row.strip():
            continue  # blank lines of a JSONL file
        yield _canonical(row)


def dataset_version(rows: RowSource) -> str:
    """The version id of normalised rows (dicts or JSON lines, e.g. a stored file)."""
    return version_id(row_digest(line) for line in _rows(rows))


@dataclass(frozen=True)
class DatasetDiff:
    rows_added: int
    rows_removed: int
    added: list[str]  # hex row hashes, sorted
    removed: list[str]
    added_samples: list[str] = field(default_factory=list)  # canonical JSON rows
    removed_samples: list[str] = field(default_factory=list)


def diff(rows_a: RowSource, rows_b: RowSource, max_samples: int = 0) -> DatasetDiff:
    """Rows in b and not in a (added) and in a and not in b (removed), by row hash.

    Rows are dicts or JSON lines (any JSON writer's: they are re-canonicalised). Memory
    is the two hash sets. Removed samples need a second look at a: pass a callable that
    returns a fresh iterable (or a list) when max_samples > 0.
    """
    if max_samples and not callable(rows_a) and iter(rows_a) is rows_a:
        raise ValueError("removed samples need rows_a twice: pass a list or a callable")
    hashes_a = {row_digest(line) for line in _rows(rows_a)}
    hashes_b: set[bytes] = set()
    added_samples: list[str] = []
    for line in _rows(rows_b):
        digest = row_digest(line)
        if digest not in hashes_a and digest not in hashes_b and len(added_samples) < max_samples:
            added_samples.append(line.decode("utf-8"))
        hashes_b.add(digest)
    removed = hashes_a - hashes_b
    removed_samples: list[str] = []
    if max_samples and removed:
        sampled: set[bytes] = set()
        for line in _rows(rows_a):
            digest = row_digest(line)
            if digest in removed and digest not in sampled:
                sampled.add(digest)
                removed_samples.append(line.decode("utf-8"))
                if len(removed_samples) == max_samples:
                    break
    added = hashes_b - hashes_a
    return DatasetDiff(
        rows_added=len(added),
        rows_removed=len(removed),
        added=sorted(d.hex() for d in added),
        removed=sorted(d.hex() for d in removed),
        added_samples=added_samples,
        removed_samples=removed_samples,
    )
