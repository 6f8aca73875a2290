"""Near-duplicate detection: MinHash signatures of word shingles, LSH banding, and an
order-independent choice of which row of a near-duplicate group to keep.

Text of a row: its free-text fields (message contents, tool-call arguments) joined,
lower-cased, split into words (runs of letters/digits; each CJK/kana/hangul character is
its own word, so unspaced scripts shingle too). Shingles are `shingle_words` consecutive
words (a row shorter than that is one shingle). Similarity is the Jaccard index of the
shingle sets, estimated by `num_perm` MinHash values (standard error about
sqrt(J(1-J)/num_perm), 0.03 at J=0.9 with 128). Everything is seeded by constants, so
the same rows give the same signatures in every process.

Which row survives: rows are visited in the order of their row hash, and a row is dropped
when an already-kept row is at least `threshold` similar. So the outcome depends on the
set of rows, not on their order in the file, and the dataset version stays
order-independent.

Memory: signatures are spooled to an anonymous temporary file (4 * num_perm bytes a row,
512 B at the default) and memory-mapped at the end; RAM holds per band one 8-byte key a
row while grouping, plus Python lists for rows that share a bucket with another row.
"""

from __future__ import annotations

import math
import re
import tempfile
import zlib
from dataclasses import dataclass

import numpy as np

_WORD = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]|[^\W_]+")
_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: spreads structured 64-bit keys over all bits."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


# ASCII fast path: letters and digits kept (lower-cased), everything else a separator.
_ASCII_WORD_CHARS = bytes(c if chr(c).isalnum() and c < 128 else 32 for c in range(256)).lower()


def words(text: str) -> list[bytes]:
    """The words of a text, UTF-8 encoded, lower-cased."""
    if text.isascii():
        return text.encode("ascii").translate(_ASCII_WORD_CHARS).split()
    found = _WORD.findall(text.lower())
    return "\n".join(found).encode("utf-8", "surrogatepass").split(b"\n") if found else []


def choose_bands(num_perm: int, threshold: float, recall: float = 0.99) -> tuple[int, int]:
    """(bands, rows per band): the most selective banding that still makes a pair at the
    threshold a candidate with probability >= recall. Candidates are then verified on the
    full signature, so a loose band only costs comparisons, never wrong drops."""
    for rows in range(num_perm, 0, -1):
        bands = num_perm // rows
        if 1.0 - (1.0 - threshold**rows) ** bands >= recall:
            return bands, rows
    return num_perm, 1


class MinHasher:
    """Shingle hashes are 32-bit (well mixed); permutation i is x -> a_i * x + b_i mod 2**32
    with odd a_i, a bijection of the 32-bit values."""

    def __init__(self, num_perm: int = 128, shingle_words: int = 3) -> None:
        self.num_perm = num_perm
        self.shingle_words = shingle_words
        rng = np.random.default_rng(0x9E3779B9)
        self._a = rng.integers(1, 2**32, size=num_perm, dtype=np.uint32) | np.uint32(1)
        self._b = rng.integers(0, 2**32, size=num_perm, dtype=np.uint32)
        self._weights = rng.integers(1, 2**63, size=shingle_words, dtype=np.uint64) | np.uint64(1)

    def signature(self, text: str) -> np.ndarray | None:
        """uint32[num_perm], or None for a text without words (never a near-duplicate)."""
        tokens = words(text)
        if not tokens:
            return None
        hashes = np.fromiter(map(zlib.crc32, tokens), dtype=np.uint64, count=len(tokens))
        n = min(self.shingle_words, len(hashes))
        shingles = np.zeros(len(hashes) - n + 1, dtype=np.uint64)
        for k in range(n):  # position-weighted sum of the words of each shingle
            shingles += hashes[k : len(hashes) - n + 1 + k] * self._weights[k]
        shingles = (_mix64(shingles) >> np.uint64(32)).astype(np.uint32)
        result = np.full(self.num_perm, np.iinfo(np.uint32).max, dtype=np.uint32)
        for start in range(0, len(shingles), 2048):  # bounded temporaries on long rows
            block = np.multiply.outer(shingles[start : start + 2048], self._a)
            block += self._b
            np.minimum(result, block.min(axis=0), out=result)
        return result


@dataclass(frozen=True, slots=True)
class NearDuplicate:
    index: int  # row index (in the order signatures were added) that is dropped
    kept: int  # index of the kept row it resembles
    similarity: float  # estimated Jaccard


class NearDuplicateFinder:
    """Collects signatures row by row, then decides near-duplicates in one batch."""

    def __init__(
        self,
        threshold: float,
        num_perm: int = 128,
        shingle_words: int = 3,
        max_candidates: int = 64,
    ) -> None:
        self.threshold = threshold
        self.max_candidates = max_candidates
        self.hasher = MinHasher(num_perm, shingle_words)
        self.bands, self.rows_per_band = choose_bands(num_perm, threshold)
        self._spool = tempfile.TemporaryFile()
        self._present = bytearray()  # 1 when the row has a signature
        self._empty = bytes(4 * num_perm)

    def add(self, text: str) -> None:
        signature = self.hasher.signature(text)
        self._present.append(signature is not None)
        self._spool.write(self._empty if signature is None else signature.tobytes())

    def __len__(self) -> int:
        return len(self._present)

    def close(self) -> None:
        self._spool.close()

    def find(self, order_keys: list[bytes]) -> list[NearDuplicate]:
        """Near-duplicates among the added rows; order_keys[i] (the row hash) fixes which
        row of a group is kept: the one with the smallest key that is not itself dropped."""
        n = len(self._present)
        if n < 2:
            return []
        self._spool.flush()
        signatures = np.memmap(
            self._spool, dtype=np.uint32, mode="r", shape=(n, self.hasher.num_perm)
        )
        present = np.frombuffer(bytes(self._present), dtype=np.uint8).astype(bool)
        indices = np.nonzero(present)[0]
        # For every row that shares a bucket with another row: the (band, key) buckets.
        buckets: dict[int, list[tuple[int, int]]] = {}
        r = self.rows_per_band
        for band in range(self.bands):
            keys = np.zeros(len(indices), dtype=np.uint64)
            for col in range(band * r, (band + 1) * r):  # a column at a time: 8 B a row
                keys = _mix64(keys ^ signatures[indices, col].astype(np.uint64))
            order = np.argsort(keys, kind="stable")
            sorted_keys = keys[order]
            same_as_next = sorted_keys[1:] == sorted_keys[:-1]
            shared = np.zeros(len(indices), dtype=bool)
            shared[:-1] |= same_as_next
            shared[1:] |= same_as_next
            for pos in np.nonzero(shared)[0]:
                row = int(indices[order[pos]])
                buckets.setdefault(row, []).append((band, int(sorted_keys[pos])))
        if not buckets:
            return []

        kept_in_bucket: dict[tuple[int, int], list[int]] = {}
        found: list[NearDuplicate] = []
        need = math.ceil(self.threshold * self.hasher.num_perm - 1e-9)
        for row in sorted(buckets, key=order_keys.__getitem__):
            signature = signatures[row]
            match: NearDuplicate | None = None
            for bucket in buckets[row]:
                for other in kept_in_bucket.get(bucket, ())[: self.max_candidates]:
                    same = int(np.count_nonzero(signatures[other] == signature))
                    if same >= need:
                        match = NearDuplicate(row, other, same / self.hasher.num_perm)
                        break
                if match:
                    break
            if match:
                found.append(match)
            else:
                for bucket in buckets[row]:
                    kept_in_bucket.setdefault(bucket, []).append(row)
        del signatures
        return found
