"""Dataset statistics over the stored rows: rows, tokens, a token-length histogram and
message counts per role.

The pipeline records 40 bytes per unique row (tokens and four role counts) in compact
arrays while streaming, and builds the statistics once at the end, when it knows which
rows near-duplicate removal took out; no second pass over the data is needed.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass

import numpy as np

from posttrain.data.schemas import ROLES


def bucket_labels(bounds: tuple[int, ...]) -> list[str]:
    """Histogram keys: "0-127", "128-255", ..., "32768+" for bounds (128, ..., 32768)."""
    lows = (0, *bounds)
    labels = [f"{low}-{high - 1}" for low, high in zip(lows, bounds, strict=False)]
    return [*labels, f"{lows[-1]}+"]


class RowMeasures:
    """Per-row token count and messages per role, in stored-candidate order."""

    def __init__(self) -> None:
        self.tokens = array("q")
        self.roles = array("q")  # len(ROLES) counts per row

    def __len__(self) -> int:
        return len(self.tokens)

    def add(self, tokens: int, roles: list[str]) -> None:
        self.tokens.append(tokens)
        self.roles.extend(roles.count(role) for role in ROLES)


@dataclass(frozen=True)
class DatasetStats:
    rows: int
    tokens_total: int
    tokens_max: int
    length_histogram: dict[str, int]
    role_counts: dict[str, int]
    token_counter: str

    @classmethod
    def build(
        cls,
        measures: RowMeasures,
        keep: np.ndarray,
        bounds: tuple[int, ...],
        token_counter: str,
    ) -> DatasetStats:
        """Statistics of the rows where keep (bool per measured row) is true."""
        tokens = np.frombuffer(measures.tokens, dtype=np.int64)[keep]
        roles = np.frombuffer(measures.roles, dtype=np.int64).reshape(-1, len(ROLES))[keep]
        buckets = np.searchsorted(np.asarray(bounds, dtype=np.int64), tokens, side="right")
        counts = np.bincount(buckets, minlength=len(bounds) + 1)
        return cls(
            rows=int(len(tokens)),
            tokens_total=int(tokens.sum()),
            tokens_max=int(tokens.max()) if len(tokens) else 0,
            length_histogram=dict(zip(bucket_labels(bounds), map(int, counts), strict=True)),
            role_counts=dict(zip(ROLES, map(int, roles.sum(axis=0)), strict=True)),
            token_counter=token_counter,
        )

    def to_dict(self) -> dict[str, object]:
        return {
            "rows": self.rows,
            "tokens_total": self.tokens_total,
            "tokens_max": self.tokens_max,
            "token_counter": self.token_counter,
            "length_histogram": self.length_histogram,
            "role_counts": self.role_counts,
        }
