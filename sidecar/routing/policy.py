"""Traffic policies: what share of a model's traffic each version gets, and which versions shadow it.

A policy is plain frozen data (``TrafficPolicy``): a stable version, the live arms with weights in
per-mille (0.1 % resolution, summing to 1000) and the shadow versions with their mirror share. It is
compiled once (``CompiledPolicy``) into a cumulative-weight array; choosing a version is one hash and
one ``bisect``. Compiled policies are immutable and replaced as a whole, so a request reads either the
old policy or the new one, never half of each.

Sticky assignment: a routing key (e.g. a user id) is hashed once with BLAKE2b (64 bits), salted
with the model name; the low 32 bits are its point for choosing the arm, the high 32 bits its point
for shadow sampling, so whether a request is mirrored does not depend on which arm served it. The
same key, model and policy give the same version on every request, after restarts and on every
replica (Python's own ``hash`` is randomised per process, so it is not used). Non-stable arms occupy
the low end of the range and the stable version the rest, so raising a canary from 10 % to 20 % only
moves keys from stable to the canary, never back and forth. Without a key, 64 random bits are drawn.
"""

from __future__ import annotations

import hashlib
import math
import random
from bisect import bisect_right
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sidecar.engine.semver import SemVer
from sidecar.errors import InvalidArgument

PERMILLE = 1000  # weights are integers in 0.1 % units
BUCKETS = 1 << 32  # hash points; weights scale onto this range exactly (1000 divides 2**32 * 1000)


def parse_percent(value: Any, where: str) -> int:
    """A percentage (number or string, 0..100, at most one decimal) -> per-mille integer."""
    if isinstance(value, bool):
        raise InvalidArgument(f"{where}: weight must be a percentage, not {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InvalidArgument(f"{where}: weight must be a percentage such as 12.5, not {value!r}") from None
    if not math.isfinite(number) or number < 0 or number > 100:
        raise InvalidArgument(f"{where}: weight {value!r} is outside 0..100 percent")
    permille = round(number * 10)
    if abs(permille - number * 10) > 1e-6:
        raise InvalidArgument(f"{where}: weight {value!r} is finer than the 0.1 % resolution")
    return permille


def format_percent(permille: int) -> str:
    return f"{permille // 10}" if permille % 10 == 0 else f"{permille / 10:.1f}"


def parse_assignments(text: str, where: str) -> tuple[tuple[str, int], ...]:
    """``"1.0.0=90,1.1.0=10"`` -> ((version, permille), ...)."""
    items = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        version, sep, pct = part.partition("=")
        if not sep or not version.strip() or not pct.strip():
            raise InvalidArgument(f"{where}: {part!r} is not VERSION=PERCENT (e.g. 1.1.0=10)")
        items.append((version.strip(), parse_percent(pct.strip(), f"{where} {version.strip()}")))
    return tuple(items)


def canonical_version(version: str, where: str) -> str:
    try:
        return str(SemVer.parse(version))
    except ValueError as exc:
        raise InvalidArgument(f"{where}: {exc}") from None


@dataclass(frozen=True, slots=True)
class TrafficPolicy:
    """One model's policy. ``arms``/``shadows`` are (version, per-mille) pairs in canonical semver form."""

    model: str
    stable: str
    arms: tuple[tuple[str, int], ...]
    shadows: tuple[tuple[str, int], ...] = ()

    @classmethod
    def build(
        cls,
        model: str,
        weights: Iterable[tuple[str, int]] | Mapping[str, int],
        shadows: Iterable[tuple[str, int]] | Mapping[str, int] = (),
        stable: str = "",
    ) -> TrafficPolicy:
        """Normalise and check the shape of a policy (not whether its versions exist: see the controller).

        ``stable`` defaults to the version with the largest weight (the older one on a tie). With no
        weights, the stable version gets 100 %.
        """
        where = f"policy for model '{model}'"
        if isinstance(weights, Mapping):
            weights = weights.items()
        if isinstance(shadows, Mapping):
            shadows = shadows.items()
        arms: dict[str, int] = {}
        for version, permille in weights:
            v = canonical_version(version, where)
            if v in arms:
                raise InvalidArgument(f"{where}: version {v} is weighted twice")
            arms[v] = _check_permille(permille, f"{where}: weight of {v}")
        stable_v = canonical_version(stable, where) if stable else ""
        if not arms:
            if not stable_v:
                raise InvalidArgument(f"{where}: give weights (e.g. 1.0.0=90,1.1.0=10) or a stable version")
            arms = {stable_v: PERMILLE}
        total = sum(arms.values())
        if total != PERMILLE:
            raise InvalidArgument(
                f"{where}: weights sum to {format_percent(total)} %, they must sum to 100 % "
                f"({', '.join(f'{v}={format_percent(p)}' for v, p in arms.items())})"
            )
        if not stable_v:
            stable_v = max(sorted(arms, key=SemVer.parse), key=lambda v: arms[v])  # first max: the older
        elif stable_v not in arms:
            raise InvalidArgument(f"{where}: the stable version {stable_v} must be one of the weighted versions")
        shadow_map: dict[str, int] = {}
        for version, permille in shadows:
            v = canonical_version(version, where)
            if v in shadow_map:
                raise InvalidArgument(f"{where}: shadow version {v} is listed twice")
            if v in arms:
                raise InvalidArgument(f"{where}: version {v} cannot both serve live traffic and shadow it")
            shadow_map[v] = _check_permille(permille, f"{where}: mirror share of shadow {v}")
        return cls(
            model=model,
            stable=stable_v,
            arms=tuple(sorted(arms.items(), key=lambda kv: SemVer.parse(kv[0]))),
            shadows=tuple(sorted(shadow_map.items(), key=lambda kv: SemVer.parse(kv[0]))),
        )

    @classmethod
    def from_mapping(cls, model: str, raw: Mapping[str, Any], where: str) -> TrafficPolicy:
        """From config/state data: ``{stable = "1.0.0", weights = {...}, shadows = {...}}`` (percent)."""
        if not isinstance(raw, Mapping):
            raise InvalidArgument(f"{where} must be a table")
        unknown = sorted(set(raw) - {"stable", "weights", "shadows"})
        if unknown:
            raise InvalidArgument(f"{where}: unknown key(s) {', '.join(unknown)} (known: stable, weights, shadows)")
        weights = raw.get("weights", {})
        shadows = raw.get("shadows", {})
        stable = raw.get("stable", "")
        if not isinstance(weights, Mapping) or not isinstance(shadows, Mapping) or not isinstance(stable, str):
            raise InvalidArgument(f"{where}: weights and shadows must be tables of version = percent, stable a string")
        return cls.build(
            model,
            [(str(v), parse_percent(p, f"{where}.weights.{v}")) for v, p in weights.items()],
            [(str(v), parse_percent(p, f"{where}.shadows.{v}")) for v, p in shadows.items()],
            stable,
        )

    def as_mapping(self) -> dict[str, Any]:
        return {
            "stable": self.stable,
            "weights": {v: p / 10 for v, p in self.arms},
            "shadows": {v: p / 10 for v, p in self.shadows},
        }

    def describe(self) -> str:
        text = ",".join(f"{v}={format_percent(p)}" for v, p in self.arms) + f" (stable {self.stable})"
        if self.shadows:
            text += " shadow " + ",".join(f"{v}={format_percent(p)}" for v, p in self.shadows)
        return text

    @property
    def versions(self) -> tuple[str, ...]:
        return tuple(v for v, _ in self.arms) + tuple(v for v, _ in self.shadows)


def _check_permille(value: int, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= PERMILLE:
        raise InvalidArgument(f"{where} must be 0..100 % in 0.1 % steps")
    return value


_LOW = BUCKETS - 1


def hash_key(salt: bytes, key: str) -> int:
    """64 stable bits for ``key``: identical on every process and machine."""
    return int.from_bytes(hashlib.blake2b(salt + key.encode(), digest_size=8).digest(), "little")


def key_bits(salt: bytes, key: str | None) -> int:
    """The 64 bits a request is routed by: its key's hash, or a random draw without a key."""
    return hash_key(salt, key) if key else random.getrandbits(64)


@dataclass(frozen=True, slots=True)
class CompiledPolicy:
    """The decision structure: ``bounds[i]`` is the exclusive upper hash point of ``versions[i]``.

    Built once per policy change; never mutated. ``choose`` is O(log n) in the number of arms.
    """

    policy: TrafficPolicy
    versions: tuple[str, ...]
    bounds: tuple[int, ...]
    shadow_versions: tuple[str, ...]
    shadow_bounds: tuple[int, ...]  # a request is mirrored to shadow i when its shadow point < bound
    salt: bytes
    revision: int = 0
    meta: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def compile(cls, policy: TrafficPolicy, revision: int = 0, meta: Mapping[str, Any] | None = None) -> CompiledPolicy:
        # Non-stable arms first (in version order), stable last: ramping a canary up only moves keys
        # from stable to the canary. Zero-weight arms take no range at all.
        ordered = [(v, p) for v, p in policy.arms if v != policy.stable and p > 0]
        ordered += [(v, p) for v, p in policy.arms if v == policy.stable and p > 0]
        versions, bounds, cumulative = [], [], 0
        for version, permille in ordered:
            cumulative += permille
            versions.append(version)
            bounds.append(cumulative * BUCKETS // PERMILLE)
        return cls(
            policy=policy,
            versions=tuple(versions),
            bounds=tuple(bounds),
            shadow_versions=tuple(v for v, _ in policy.shadows),
            shadow_bounds=tuple(p * BUCKETS // PERMILLE for _, p in policy.shadows),
            salt=policy.model.encode() + b"\x00",
            revision=revision,
            meta=dict(meta or {}),
        )

    def bits(self, key: str | None) -> int:
        """The request's 64 routing bits (see the module docstring); compute once, use for both choices."""
        return key_bits(self.salt, key)

    def choose_bits(self, bits: int) -> str:
        if len(self.versions) == 1:
            return self.versions[0]
        return self.versions[bisect_right(self.bounds, bits & _LOW)]

    def shadows_bits(self, bits: int) -> tuple[str, ...]:
        if not self.shadow_versions:
            return ()
        point = bits >> 32
        return tuple(v for v, bound in zip(self.shadow_versions, self.shadow_bounds, strict=True) if point < bound)

    def choose(self, key: str | None) -> str:
        """The version for a request with this sticky key (None or "": a random draw)."""
        if len(self.versions) == 1:
            return self.versions[0]
        return self.choose_bits(self.bits(key))

    def shadows_for(self, key: str | None) -> tuple[str, ...]:
        """The shadow versions a request with this key is copied to."""
        if not self.shadow_versions:
            return ()
        return self.shadows_bits(self.bits(key))
