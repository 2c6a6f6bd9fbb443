"""Traffic policy parsing, validation, compilation and sticky choice (no server)."""

from __future__ import annotations

from collections import Counter

import pytest

from sidecar.errors import InvalidArgument
from sidecar.routing.policy import (
    BUCKETS,
    CompiledPolicy,
    TrafficPolicy,
    hash_key,
    parse_assignments,
    parse_percent,
)


def canary(pct: float, model: str = "m") -> CompiledPolicy:
    stable = round((100 - pct) * 10)
    return CompiledPolicy.compile(
        TrafficPolicy.build(model, [("1.0.0", stable), ("1.1.0", round(pct * 10))], stable="1.0.0")
    )


def test_percent_resolution_is_one_tenth():
    assert parse_percent("12.5", "w") == 125
    assert parse_percent(100, "w") == 1000
    assert parse_percent(0.1, "w") == 1
    with pytest.raises(InvalidArgument, match=r"0\.1 % resolution"):
        parse_percent("33.33", "w")
    with pytest.raises(InvalidArgument, match=r"outside 0\.\.100"):
        parse_percent(101, "w")
    with pytest.raises(InvalidArgument, match="percentage"):
        parse_percent("ten", "w")


def test_assignments_parse_and_refuse_garbage():
    assert parse_assignments("1.0.0=90, 1.1.0=10", "--weights") == (("1.0.0", 900), ("1.1.0", 100))
    with pytest.raises(InvalidArgument, match="VERSION=PERCENT"):
        parse_assignments("1.0.0:90", "--weights")


def test_weights_must_sum_to_100():
    with pytest.raises(InvalidArgument, match="sum to 95 %"):
        TrafficPolicy.build("m", [("1.0.0", 900), ("1.1.0", 50)])
    with pytest.raises(InvalidArgument, match="not a semantic version"):
        TrafficPolicy.build("m", [("latest", 1000)])
    with pytest.raises(InvalidArgument, match="both serve live traffic and shadow"):
        TrafficPolicy.build("m", [("1.0.0", 1000)], [("1.0.0", 1000)])
    with pytest.raises(InvalidArgument, match=r"stable version 2\.0\.0 must be one of"):
        TrafficPolicy.build("m", [("1.0.0", 1000)], stable="2.0.0")


def test_stable_defaults_to_heaviest_then_older():
    assert TrafficPolicy.build("m", [("1.1.0", 100), ("1.0.0", 900)]).stable == "1.0.0"
    assert TrafficPolicy.build("m", [("1.1.0", 500), ("1.0.0", 500)]).stable == "1.0.0"
    only = TrafficPolicy.build("m", [], stable="2.0.0")
    assert only.arms == (("2.0.0", 1000),)


def test_mapping_round_trip():
    p = TrafficPolicy.build("m", [("1.0.0", 905), ("1.1.0", 95)], [("1.2.0", 1000)])
    again = TrafficPolicy.from_mapping("m", p.as_mapping(), "x")
    assert again == p
    with pytest.raises(InvalidArgument, match="unknown key"):
        TrafficPolicy.from_mapping("m", {"weight": {}}, "routing.policies.m")


def test_sticky_choice_is_stable_across_compilations_and_processes():
    a, b = canary(30), canary(30)
    keys = [f"user-{i}" for i in range(500)]
    assert [a.choose(k) for k in keys] == [b.choose(k) for k in keys]
    # The hash is BLAKE2b, not Python's per-process salted hash(): the same value on every machine.
    assert hash_key(b"m\x00", "user-1") == 0xF09EB11D159A4C56
    assert a.bits("user-1") == hash_key(b"m\x00", "user-1")


def test_split_follows_weights():
    policy = canary(10)
    counts = Counter(policy.choose(f"k{i}") for i in range(20000))
    assert 0.085 < counts["1.1.0"] / 20000 < 0.115
    random_counts = Counter(policy.choose(None) for _ in range(20000))
    assert 0.085 < random_counts["1.1.0"] / 20000 < 0.115


def test_ramping_up_only_moves_keys_from_stable_to_canary():
    keys = [f"user-{i}" for i in range(5000)]
    at10 = {k for k in keys if canary(10).choose(k) == "1.1.0"}
    at25 = {k for k in keys if canary(25).choose(k) == "1.1.0"}
    assert at10 and at10 <= at25 and len(at25) > len(at10)


def test_zero_weight_and_full_weight():
    p = CompiledPolicy.compile(TrafficPolicy.build("m", [("1.0.0", 0), ("2.0.0", 1000)]))
    assert {p.choose(f"k{i}") for i in range(200)} == {"2.0.0"}
    assert p.bounds[-1] == BUCKETS


def test_shadow_sampling_share_and_independence():
    p = CompiledPolicy.compile(TrafficPolicy.build("m", [("1.0.0", 1000)], [("1.2.0", 250), ("1.3.0", 1000)]))
    picks = [p.shadows_for(f"k{i}") for i in range(8000)]
    assert all("1.3.0" in s for s in picks)
    share = sum("1.2.0" in s for s in picks) / len(picks)
    assert 0.22 < share < 0.28
    assert p.shadows_for("same") == p.shadows_for("same")
