"""The routing controller: the transport-free core of the routing control API.

Every change goes through ``set_policy``/``clear_policy``: checked (weights sum to 100 %, every
version named exists and is ready, shadows are not also live arms), compiled, written to the state
file, then installed in the router in one reference swap, and logged with who, what and when. A
change that fails any step raises ``InvalidArgument`` (or ``FailedPrecondition`` when the state
cannot be written) and the old policy stays in force.

Start-up order (``start``): policies recorded in the state file win over the config file's, because
they are the latest decision an operator made (a restart must never silently reset traffic to the
config's or to 100 % newest); a model cleared at run time stays cleared. The config's policy applies
to models the state file does not mention. ``sidecar route clear MODEL --to-config`` goes back to it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sidecar.engine.repository import Repository
from sidecar.errors import ConfigError, FailedPrecondition, InvalidArgument, ModelNotFound, SidecarError
from sidecar.routing.comparison import ShadowSnapshot
from sidecar.routing.policy import CompiledPolicy, TrafficPolicy
from sidecar.routing.router import Router
from sidecar.routing.state import StateFile

log = logging.getLogger(__name__)
audit = logging.getLogger("sidecar.routing.audit")

HISTORY_KEEP = 100


@dataclass(frozen=True, slots=True)
class PolicyRecord:
    """A policy as the control API shows it, with its provenance."""

    model: str
    policy: TrafficPolicy | None  # None: no policy (newest ready version answers)
    revision: int
    source: str  # "config", "state" (restored at start) or "control" (changed at run time)
    updated_by: str
    updated_at: str  # RFC 3339, UTC
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Change:
    """One entry of the audit trail."""

    at: str
    model: str
    actor: str
    action: str  # "set", "clear", "restore"
    before: str
    after: str
    revision: int
    reason: str = ""


@dataclass(frozen=True, slots=True)
class ShadowReport:
    model: str
    version: str
    mirror_permille: int
    window_s: float
    windows: tuple[ShadowSnapshot, ...]  # oldest first, the open window last
    total: ShadowSnapshot
    queue_depth: int = 0
    extra: Mapping[str, Any] = field(default_factory=dict)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _describe(policy: TrafficPolicy | None) -> str:
    return policy.describe() if policy is not None else "no policy (newest ready version)"


class RoutingController:
    def __init__(
        self,
        router: Router,
        repository: Repository,
        config_policies: Mapping[str, Any] | None = None,
        state: StateFile | None = None,
    ) -> None:
        self._router = router
        self._repository = repository
        self._state = state
        self._config: dict[str, TrafficPolicy] = {}
        for model, raw in (config_policies or {}).items():
            try:
                self._config[model] = TrafficPolicy.from_mapping(model, raw, f"routing.policies.{model}")
            except InvalidArgument as exc:
                raise ConfigError(exc.message) from None
        self._records: dict[str, PolicyRecord] = {}
        self._history: deque[Change] = deque(maxlen=HISTORY_KEEP)
        self._lock = asyncio.Lock()
        # Read now, so an unreadable state file stops the start before any port is bound.
        self._saved = state.load() if state is not None else None

    # -- start ----------------------------------------------------------------------------------
    def start(self) -> None:
        """Install the state file's policies, then the config's for the models it does not mention."""
        restored: dict[str, PolicyRecord] = {}
        saved = self._saved
        if saved is not None and self._state is not None:
            self._history.extend(saved.history)
            for model, record in saved.records.items():
                restored[model] = PolicyRecord(
                    model, record.policy, record.revision, "state", record.updated_by, record.updated_at, record.reason
                )
                config = self._config.get(model)
                if config is not None and config != record.policy:
                    log.warning(
                        "routing: model '%s' keeps its run-time policy from %s (%s, set by %s at %s) over the "
                        "config file's (%s); `sidecar route clear %s --to-config` returns to the config's",
                        model,
                        self._state.path,
                        _describe(record.policy),
                        record.updated_by,
                        record.updated_at,
                        _describe(config),
                        model,
                    )
        for model, policy in self._config.items():
            if model not in restored:
                restored[model] = PolicyRecord(model, policy, 0, "config", "config file", _now())
        for model, record in sorted(restored.items()):
            self._install(record)
            if record.policy is not None:
                self._warn_not_ready(record.policy)
                log.info("routing: model '%s' from %s: %s", model, record.source, record.policy.describe())

    def _warn_not_ready(self, policy: TrafficPolicy) -> None:
        for version in policy.versions:
            try:
                ready = self._repository.get(policy.model, version).ready
            except SidecarError:
                ready = False
            if not ready:
                log.warning(
                    "routing: model '%s' version %s in the traffic policy is not ready: its traffic goes to "
                    "the stable or newest ready version until it is",
                    policy.model,
                    version,
                )

    def _install(self, record: PolicyRecord) -> None:
        self._records = {**self._records, record.model: record}
        compiled = (
            CompiledPolicy.compile(record.policy, record.revision, {"source": record.source})
            if record.policy is not None
            else None
        )
        self._router.install(record.model, compiled)

    # -- reading --------------------------------------------------------------------------------
    def get(self, model: str) -> PolicyRecord:
        record = self._records.get(model)
        if record is not None:
            return record
        self._repository.versions(model)  # raises ModelNotFound for unknown models
        return PolicyRecord(model, None, 0, "default", "", "")

    def records(self) -> list[PolicyRecord]:
        return [self._records[m] for m in sorted(self._records)]

    def history(self, model: str = "") -> list[Change]:
        return [c for c in self._history if not model or c.model == model]

    def shadow_report(self, model: str = "") -> list[ShadowReport]:
        reports = []
        mirror = self._router.shadows
        for stats in mirror.all_stats(model or None):
            record = self._records.get(stats.model)
            share = 0
            if record is not None and record.policy is not None:
                share = dict(record.policy.shadows).get(stats.version, 0)
            reports.append(
                ShadowReport(
                    stats.model,
                    stats.version,
                    share,
                    stats.window_s,
                    stats.windows(),
                    stats.total(),
                    mirror.queue_depth,
                )
            )
        return reports

    # -- changing -------------------------------------------------------------------------------
    async def set_policy(
        self,
        policy: TrafficPolicy,
        actor: str,
        reason: str = "",
        expected_revision: int = 0,
        dry_run: bool = False,
    ) -> PolicyRecord:
        async with self._lock:
            self._validate(policy)
            current = self.get(policy.model)
            if expected_revision and expected_revision != current.revision:
                raise FailedPrecondition(
                    f"model '{policy.model}': policy revision is {current.revision}, not {expected_revision} "
                    "(someone changed it meanwhile); read it again and retry"
                )
            if dry_run:
                return PolicyRecord(policy.model, policy, current.revision, "dry-run", actor, _now(), reason)
            record = PolicyRecord(policy.model, policy, current.revision + 1, "control", actor, _now(), reason)
            return self._commit(current, record, "set")

    async def clear_policy(self, model: str, actor: str, reason: str = "", to_config: bool = False) -> PolicyRecord:
        async with self._lock:
            current = self.get(model)
            target = self._config.get(model) if to_config else None
            if target is not None:
                self._validate(target)
            record = PolicyRecord(model, target, current.revision + 1, "control", actor, _now(), reason)
            return self._commit(current, record, "reset" if to_config else "clear")

    def _commit(self, current: PolicyRecord, record: PolicyRecord, action: str) -> PolicyRecord:
        change = Change(
            record.updated_at,
            record.model,
            record.updated_by,
            action,
            _describe(current.policy),
            _describe(record.policy),
            record.revision,
            record.reason,
        )
        if self._state is not None:
            records = {**self._records, record.model: record}
            try:
                self._state.save(records, [*self._history, change][-HISTORY_KEEP:])
            except OSError as exc:
                raise FailedPrecondition(
                    f"cannot write the routing state file {self._state.path}: {exc.strerror or exc}; "
                    "the policy is unchanged (a change that would not survive a restart is refused)"
                ) from None
        self._install(record)
        self._history.append(change)
        audit.info(
            "routing policy of model '%s' %s by %s (revision %d): %s -> %s%s",
            record.model,
            {"set": "changed", "clear": "cleared", "reset": "reset to the config's"}[action],
            record.updated_by,
            record.revision,
            change.before,
            change.after,
            f" ({record.reason})" if record.reason else "",
        )
        return record

    def _validate(self, policy: TrafficPolicy) -> None:
        model = policy.model
        try:
            known = {mv.version_str: mv for mv in self._repository.versions(model)}
        except ModelNotFound:
            raise InvalidArgument(f"model '{model}' is not loaded; load it before giving it a traffic policy") from None
        problems = []
        for version in policy.versions:
            mv = known.get(version)
            if mv is None:
                problems.append(f"version {version} is not loaded (loaded: {', '.join(sorted(known)) or 'none'})")
            elif not mv.ready:
                problems.append(f"version {version} is {mv.state.value}, not READY")
        if problems:
            raise InvalidArgument(f"traffic policy for model '{model}' refused: {'; '.join(problems)}")
