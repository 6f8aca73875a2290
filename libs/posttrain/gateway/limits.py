"""Per-tenant rate limits: one token bucket per tenant, in this process.

A bucket holds up to `burst` tokens and refills at `rate` tokens per second; a request
takes one or is refused with the time until the next token. With several gateway
replicas each enforces its own buckets (the effective limit is replicas x rate).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """`rate_per_s` <= 0 turns the limit off (for every tenant without its own rate)."""

    def __init__(
        self,
        rate_per_s: float,
        burst: int,
        *,
        per_tenant: Mapping[str, float] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate_per_s = rate_per_s
        self.burst = max(1, burst)
        self.per_tenant = dict(per_tenant or {})
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def rate_of(self, tenant: str) -> float:
        return self.per_tenant.get(tenant, self.rate_per_s)

    def take(self, tenant: str) -> float | None:
        """None if the request may go; else the seconds until the tenant has a token."""
        rate = self.rate_of(tenant)
        if rate <= 0:
            return None
        now = self._clock()
        with self._lock:
            bucket = self._buckets.get(tenant)
            if bucket is None:
                bucket = self._buckets[tenant] = _Bucket(float(self.burst), now)
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * rate)
            bucket.updated = now
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return None
            return (1.0 - bucket.tokens) / rate
