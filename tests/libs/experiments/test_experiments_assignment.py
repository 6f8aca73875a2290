"""Sticky assignment: same user same arm, shares within tolerance, stopping an arm moves only
its users; and the logged hash of the user key."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter

import pytest

from posttrain.experiments import assign_variant, user_key_hash, validate_variants

ARMS = [("base", 0.5), ("adapter-v3", 0.3), ("adapter-v4", 0.2)]
USERS = [f"user-{i}" for i in range(100_000)]

# Pinned answers: a change of the hash scheme would silently reshuffle every running
# experiment, so it must show up here first.
GOLDEN = {
    "alice": "base",
    "bob": "base",
    "grace": "adapter-v3",
    "heidi": "adapter-v3",
    "judy": "adapter-v4",
    "mallory": "adapter-v4",
}


def test_same_user_gets_the_same_variant_on_every_call() -> None:
    first = assign_variant("exp-1", "user-42", ARMS)
    assert all(assign_variant("exp-1", "user-42", ARMS) == first for _ in range(10_000))


def test_assignment_is_pinned_and_survives_a_process_restart() -> None:
    assert {u: assign_variant("exp-golden", u, ARMS) for u in GOLDEN} == GOLDEN
    users = USERS[:200]
    here = [assign_variant("exp-1", u, ARMS) for u in users]
    code = (
        "import json, sys\n"
        "from posttrain.experiments.assignment import assign_variant\n"
        f"arms = {ARMS!r}\n"
        "users = json.load(sys.stdin)\n"
        "print(json.dumps([assign_variant('exp-1', u, arms) for u in users]))\n"
    )
    # A fresh interpreter with another str-hash seed: nothing may depend on process state.
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    done = subprocess.run(
        [sys.executable, "-c", code],
        input=json.dumps(users),
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=120,
    )
    assert json.loads(done.stdout) == here


def test_shares_are_met_within_tolerance_over_100k_users() -> None:
    counts = Counter(assign_variant("exp-shares", u, ARMS) for u in USERS)
    for name, share in ARMS:
        assert abs(counts[name] / len(USERS) - share) < 0.01, (name, counts)


def test_experiments_assign_independently() -> None:
    one = [assign_variant("exp-A", u, ARMS) for u in USERS[:5000]]
    two = [assign_variant("exp-B", u, ARMS) for u in USERS[:5000]]
    agree = sum(a == b for a, b in zip(one, two, strict=True)) / 5000
    assert abs(agree - (0.5**2 + 0.3**2 + 0.2**2)) < 0.03  # as if drawn independently


def test_stopping_an_arm_moves_only_its_users_and_keeps_the_ratio_of_the_rest() -> None:
    users = USERS[:30_000]
    before = {u: assign_variant("exp-stop", u, ARMS) for u in users}
    after = {u: assign_variant("exp-stop", u, ARMS, stopped={"adapter-v3"}) for u in users}
    assert all(after[u] == before[u] for u in users if before[u] != "adapter-v3")
    moved = Counter(after[u] for u in users if before[u] == "adapter-v3")
    assert set(moved) == {"base", "adapter-v4"}
    assert abs(moved["base"] / sum(moved.values()) - 0.5 / 0.7) < 0.02

    # A second stop moves only the users of that arm, re-hashed ones included.
    later = {
        u: assign_variant("exp-stop", u, ARMS, stopped={"adapter-v3", "adapter-v4"}) for u in users
    }
    assert all(later[u] == after[u] for u in users if after[u] != "adapter-v4")
    assert set(later.values()) == {"base"}


def test_assignment_refusals_name_the_field() -> None:
    with pytest.raises(ValueError, match=r"stopped: \['nope'\]"):
        assign_variant("e", "u", ARMS, stopped={"nope"})
    with pytest.raises(ValueError, match="every arm"):
        assign_variant("e", "u", ARMS, stopped={n for n, _ in ARMS})
    with pytest.raises(ValueError, match="user_key"):
        assign_variant("e", "", ARMS)
    with pytest.raises(ValueError, match="experiment_id"):
        assign_variant("", "u", ARMS)


@pytest.mark.parametrize(
    ("variants", "message"),
    [
        ([("a", 1.0)], r"variants: an experiment needs two or more"),
        ([("a", 0.5), ("a", 0.5)], r"variants\[1\]\.name 'a' is repeated"),
        ([("", 0.5), ("b", 0.5)], r"variants\[0\]\.name must not be empty"),
        ([("a", 1.1), ("b", -0.1)], r"variants\[1\]\.share of 'b' must be > 0"),
        ([("a", 1.0), ("b", 0.0)], r"variants\[1\]\.share of 'b' must be > 0"),
        ([("a", float("nan")), ("b", 0.5)], r"variants\[0\]\.share"),
        ([("a", 0.5), ("b", 0.4)], r"variants: shares sum to 0\.9"),
        ([("a", 0.5), ("b", 0.5 + 2e-9)], r"variants: shares sum to"),
    ],
)
def test_invalid_variants_are_refused_naming_the_field(variants: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        validate_variants(variants)


def test_shares_off_by_float_rounding_are_accepted() -> None:
    tenths = [(f"arm{i}", 0.1) for i in range(10)]  # sums to 0.9999999999999999
    assert validate_variants(tenths) == tenths
    assert assign_variant("e", "u", tenths).startswith("arm")


def test_user_key_hash_is_stable_salted_per_experiment_and_never_the_key() -> None:
    key = "alice@example.com"
    h = user_key_hash("exp-1", key)
    assert h == user_key_hash("exp-1", key)
    assert len(h) == 64 and int(h, 16) >= 0
    assert key not in h
    assert h != user_key_hash("exp-2", key)
    assert h != user_key_hash("exp-1", key, secret=b"deployment secret")
    assert h != user_key_hash("exp-1", "bob@example.com")
