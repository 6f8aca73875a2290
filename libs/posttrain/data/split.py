"""The deterministic train/eval split, and writing the two split files.

A row goes to eval when split_score(row hash, seed) < eval_fraction, where the score is
the first 8 bytes of sha256("posttrain.split:<seed>:" + row hash bytes) read as a
fraction in [0, 1). It depends only on the row's content and the seed: the same row lands
in the same split in every upload, whatever its position, and adding rows to a dataset
never moves old ones between splits.

Small datasets: with 0 < eval_fraction < 1 and at least 2 rows, if no row scored into
eval, the lowest-scoring row moves to eval; if every row did, the highest-scoring one
moves to train. Both rules depend on the row set only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import IO

from posttrain.data.canonical import row_digest
from posttrain.data.readers import ByteSource, iter_chunks, iter_lines

SPLIT_RULE = (
    "eval iff int(sha256('posttrain.split:<seed>:' + row sha256)[:8]) / 2**64 < eval_fraction; "
    "with >= 2 rows and 0 < eval_fraction < 1 each split gets >= 1 row"
)


def split_score(digest: bytes, seed: int) -> float:
    prefix = f"posttrain.split:{seed}:".encode()
    return int.from_bytes(hashlib.sha256(prefix + digest).digest()[:8], "big") / 2.0**64


@dataclass(frozen=True)
class DatasetSplit:
    seed: int
    eval_fraction: float
    eval_digests: frozenset[bytes]  # row hashes (32 bytes) of the eval rows
    train_rows: int
    eval_rows: int

    def is_eval(self, digest: bytes) -> bool:
        return digest in self.eval_digests

    @property
    def eval_row_hashes(self) -> list[str]:
        return sorted(d.hex() for d in self.eval_digests)


def assign_split(digests: Iterable[bytes], eval_fraction: float, seed: int) -> DatasetSplit:
    """Splits a set of distinct row hashes (see the module doc for the rule)."""
    eval_set: set[bytes] = set()
    total = 0
    lowest_train: tuple[float, bytes] | None = None
    highest_eval: tuple[float, bytes] | None = None
    for digest in digests:
        total += 1
        score = split_score(digest, seed)
        if score < eval_fraction:
            eval_set.add(digest)
            if highest_eval is None or (score, digest) > highest_eval:
                highest_eval = (score, digest)
        elif lowest_train is None or (score, digest) < lowest_train:
            lowest_train = (score, digest)
    if total >= 2 and 0.0 < eval_fraction < 1.0:
        if not eval_set and lowest_train is not None:
            eval_set.add(lowest_train[1])
        elif len(eval_set) == total and highest_eval is not None:
            eval_set.discard(highest_eval[1])
    return DatasetSplit(
        seed=seed,
        eval_fraction=eval_fraction,
        eval_digests=frozenset(eval_set),
        train_rows=total - len(eval_set),
        eval_rows=len(eval_set),
    )


@dataclass(frozen=True)
class StoredFile:
    """What a manifest records about one written file."""

    rows: int
    size_bytes: int
    sha256: str


@dataclass(frozen=True)
class SplitFiles:
    train: StoredFile
    eval: StoredFile


class JsonlWriter:
    """Writes lines to a binary sink in 256 KiB batches, counting rows, bytes and sha256."""

    def __init__(self, sink: IO[bytes]) -> None:
        self.sink = sink
        self.sha = hashlib.sha256()
        self.rows = 0
        self.size = 0
        self._buffer: list[bytes] = []
        self._buffered = 0

    def write_line(self, line: bytes) -> None:
        self._buffer.append(line)
        self._buffered += len(line)
        self.rows += 1
        if self._buffered >= 1 << 18:
            self.flush()

    def flush(self) -> None:
        if self._buffer:
            data = b"".join(self._buffer)
            self.sink.write(data)
            self.sha.update(data)
            self.size += len(data)
            self._buffer.clear()
            self._buffered = 0

    def stored(self) -> StoredFile:
        self.flush()
        return StoredFile(rows=self.rows, size_bytes=self.size, sha256=self.sha.hexdigest())


def write_split(
    normalised: ByteSource,
    split: DatasetSplit,
    train_sink: IO[bytes],
    eval_sink: IO[bytes],
    skip: frozenset[bytes] = frozenset(),
) -> SplitFiles:
    """Streams normalised JSONL (as written by validate_upload) into train and eval files,
    leaving out rows whose hash is in `skip` (near-duplicates), keeping the input order."""
    train, evals = JsonlWriter(train_sink), JsonlWriter(eval_sink)
    for line in iter_lines(iter_chunks(normalised), max_bytes=1 << 62):
        if not line:
            continue
        digest = row_digest(line)
        if digest in skip:
            continue
        (evals if digest in split.eval_digests else train).write_line(line + b"\n")
    return SplitFiles(train=train.stored(), eval=evals.stored())
