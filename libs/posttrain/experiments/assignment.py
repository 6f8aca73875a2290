"""Sticky assignment of users to the variants (arms) of an experiment, and the hash of a
user key that logs carry instead of the key.

Assignment is a pure function of (experiment id, user key, variants, stopped arms): no
state, no randomness, the same answer in every process and after every restart.

- sha256(experiment id, user key) gives a number u, uniform in [0, 1). The variants'
  shares, taken in the order given, cut [0, 1) into consecutive intervals; the user gets
  the variant whose interval holds u. The order of the variants is part of the
  experiment: reordering them (or changing shares) moves users.
- When an arm is stopped, only its users move; everyone else keeps the arm they had,
  because their u and the intervals do not change. A stopped arm's users are re-hashed
  among the remaining arms in proportion to their shares, by weighted rendezvous hashing
  (each remaining arm draws sha256(experiment id, user key, arm name); the smallest
  -ln(draw) / share wins). Rendezvous hashing keeps them stable too: when a second arm is
  stopped later, the users re-hashed earlier move only if they had landed on that arm.

This module must never log or return a raw user key; `user_key_hash` is what goes into
logs and events (InferenceLogged.user_key_hash).
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import Collection, Sequence

SHARE_SUM_TOLERANCE = 1e-9
_ASSIGN_DOMAIN = b"posttrain.experiments.assign.v1"
_REHASH_DOMAIN = b"posttrain.experiments.rehash.v1"
_LOG_DOMAIN = b"posttrain.experiments.user-key-hash.v1"


def validate_variants(variants: Sequence[tuple[str, float]]) -> list[tuple[str, float]]:
    """Checks an experiment's (name, share) list and returns it as a list of tuples.

    Raises ValueError naming the field: two or more variants, non-empty unique names,
    every share finite and > 0, shares summing to 1 within SHARE_SUM_TOLERANCE.
    """
    checked = [(str(name), float(share)) for name, share in variants]
    if len(checked) < 2:
        raise ValueError(f"variants: an experiment needs two or more variants, got {len(checked)}")
    seen: set[str] = set()
    for i, (name, share) in enumerate(checked):
        if not name:
            raise ValueError(f"variants[{i}].name must not be empty")
        if name in seen:
            raise ValueError(f"variants[{i}].name {name!r} is repeated; names must be unique")
        seen.add(name)
        if not math.isfinite(share) or share <= 0:
            raise ValueError(f"variants[{i}].share of {name!r} must be > 0, got {share!r}")
    total = math.fsum(share for _, share in checked)
    if abs(total - 1.0) > SHARE_SUM_TOLERANCE:
        raise ValueError(
            f"variants: shares sum to {total!r}; they must sum to 1 (within {SHARE_SUM_TOLERANCE})"
        )
    return checked


def assign_variant(
    experiment_id: str,
    user_key: str,
    variants: Sequence[tuple[str, float]],
    *,
    stopped: Collection[str] = (),
) -> str:
    """The variant name this user sees in this experiment; see the module docstring.

    `variants` is the experiment's (name, share) list as created, stopped arms included;
    `stopped` names the arms no longer served. Raises ValueError for an empty id or key,
    invalid variants, an unknown stopped name, or every arm stopped.
    """
    if not experiment_id:
        raise ValueError("experiment_id must not be empty")
    if not user_key:
        # An empty key would put every anonymous user in one arm; the caller must make one.
        raise ValueError("user_key must not be empty; use a per-request key for anonymous users")
    arms = validate_variants(variants)
    names = {name for name, _ in arms}
    unknown = sorted(set(stopped) - names)
    if unknown:
        raise ValueError(f"stopped: {unknown} are not variants of experiment {experiment_id!r}")
    remaining = [(name, share) for name, share in arms if name not in stopped]
    if not remaining:
        raise ValueError(f"stopped: every arm of experiment {experiment_id!r} is stopped")

    primary = _interval_of(_uniform(_ASSIGN_DOMAIN, experiment_id, user_key), arms)
    if primary not in stopped:
        return primary
    return _rendezvous(experiment_id, user_key, remaining)


def user_key_hash(experiment_id: str, user_key: str, *, secret: bytes = b"") -> str:
    """Hex HMAC-SHA256 of the user key, keyed per experiment: what logs carry instead.

    The same user gets different hashes in different experiments, so logs of two
    experiments cannot be joined on it. Pass the deployment's `secret` where keys are
    guessable (emails, phone numbers), so that the hash cannot be reversed by trying keys.
    """
    key = _encode(_LOG_DOMAIN, secret, experiment_id.encode())
    return hmac.new(key, user_key.encode(), hashlib.sha256).hexdigest()


def _encode(*parts: bytes) -> bytes:
    # Length-prefixed, so ("ab", "c") and ("a", "bc") never hash alike.
    return b"".join(len(p).to_bytes(8, "big") + p for p in parts)


def _uniform(domain: bytes, *parts: str) -> float:
    digest = hashlib.sha256(_encode(domain, *(p.encode() for p in parts))).digest()
    return (int.from_bytes(digest[:8], "big") >> 11) / float(1 << 53)  # 53 bits: exact float


def _interval_of(u: float, arms: Sequence[tuple[str, float]]) -> str:
    cumulative = 0.0
    for name, share in arms:
        cumulative += share
        if u < cumulative:
            return name
    return arms[-1][0]  # shares may sum to 1 - 1e-16; the top sliver belongs to the last arm


def _rendezvous(experiment_id: str, user_key: str, arms: Sequence[tuple[str, float]]) -> str:
    def score(arm: tuple[str, float]) -> float:
        name, share = arm
        draw = _uniform(_REHASH_DOMAIN, experiment_id, user_key, name)
        # -ln(draw) / share is exponential with rate `share`: the smallest wins with
        # probability share / sum(shares). 1 - draw lies in (0, 1], so the log is finite.
        return -math.log(1.0 - draw) / share

    return min(arms, key=score)[0]
