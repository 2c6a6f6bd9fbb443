"""The router: picks the model version that answers a request, dispatches to it, mirrors to shadows.

- A request that names a version is pinned to it: no policy, no shadow.
- A model without a traffic policy is answered by its newest ready version (semantic-version order).
- A model with a policy: its ``CompiledPolicy`` chooses the version from the request's sticky key
  (``routing_key`` parameter or ``x-routing-key`` header, else the request id, else a random draw).
  If the chosen version is gone or not ready (being unloaded, say), the request falls back to the
  policy's stable version, then to the newest ready version, and the fallback is logged; a client
  never pays for a policy that went stale a moment before the controller caught up.
- After the primary answered, the shadow versions the policy picks for this request get a copy
  (``ShadowMirror.offer``, never waiting).

Concurrency: ``_policies`` maps model -> CompiledPolicy and is replaced as a whole on every change
(never mutated), so the request path reads it without a lock and never sees half a policy.
"""

from __future__ import annotations

import logging
import time

from sidecar.engine.base import DEADLINE_NS
from sidecar.engine.repository import ModelVersion, Repository
from sidecar.errors import SidecarError
from sidecar.routing.gate import SKIP
from sidecar.routing.policy import CompiledPolicy
from sidecar.routing.shadow import ShadowMirror
from sidecar.telemetry.spans import current_span
from sidecar.types import InferenceRequest, InferenceResponse

log = logging.getLogger(__name__)

_FALLBACK_LOG_INTERVAL_NS = 10_000_000_000


class Router:
    def __init__(self, repository: Repository, shadows: ShadowMirror | None = None) -> None:
        self._repository = repository
        self._policies: dict[str, CompiledPolicy] = {}
        self.shadows = shadows if shadows is not None else ShadowMirror(repository.get)
        self._fallback_logged: dict[tuple[str, str], int] = {}
        self.fallbacks = 0

    # -- policies (the controller installs them) ------------------------------------------------
    def install(self, model: str, policy: CompiledPolicy | None) -> None:
        """Atomically replace ``model``'s policy (None: back to the newest ready version)."""
        policies = dict(self._policies)
        if policy is None:
            policies.pop(model, None)
        else:
            policies[model] = policy
        self._policies = policies
        active = any(p.shadow_versions for p in policies.values())
        self.shadows.install(model, policy, active)

    def policy(self, model: str) -> CompiledPolicy | None:
        return self._policies.get(model)

    def policies(self) -> dict[str, CompiledPolicy]:
        return self._policies

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        self.shadows.start()

    async def stop(self) -> None:
        await self.shadows.stop()

    # -- the request path -----------------------------------------------------------------------
    async def dispatch(self, request: InferenceRequest) -> InferenceResponse:
        token = DEADLINE_NS.set(request.deadline_ns)
        mirror = self.shadows
        try:
            if not mirror.active:  # no shadows anywhere: nothing to mirror, nothing to measure for the gate
                return await _answer(mirror, self.decide(request)[0], request)
            # Shadows somewhere. Every primary request counts for the shadow gate (shadows share the
            # process's capacity), but only one in gate.stride is timed. A copy the queue has no room for
            # is dropped here, before anything is made for it: one integer read, one counter per shadow.
            plan = None if request.model_version else mirror.plans.get(request.model_name)
            if plan is None:
                mv = self.decide(request)[0]
                targets: tuple = ()
            else:
                policy = plan.policy
                if plan.needs_bits:
                    bits = policy.bits(request.routing_key or request.id or None)
                    mv = self._resolve(policy, policy.choose_bits(bits))
                    targets = plan.pick(bits)
                else:  # one live version, every shadow at 100 %: nothing to draw
                    mv = self._resolve(policy, plan.only)
                    targets = plan.every
            gate = mirror.gate
            if gate.skip:
                gate.skip -= 1
                if not targets or not mirror.room:
                    response = await _answer(mirror, mv, request)
                    if targets:
                        mirror.drop_planned(targets)
                    return response
                sample = SKIP
            else:
                sample = gate.primary_start()
            start = time.monotonic_ns()
            response = await _answer(mirror, mv, request)
            latency = time.monotonic_ns() - start
            if sample != SKIP:
                gate.primary_end(sample, latency)
            if targets:
                mirror.offer_planned(targets, request, response, latency, current_span())
            return response
        finally:
            DEADLINE_NS.reset(token)

    def decide(self, request: InferenceRequest) -> tuple[ModelVersion, tuple[str, ...]]:
        """The routing decision: the version that answers ``request`` and the shadows that get a copy."""
        if request.model_version:
            return self._repository.get(request.model_name, request.model_version), ()
        policy = self._policies.get(request.model_name)
        if policy is None:
            return self._repository.get(request.model_name), ()
        key = request.routing_key or request.id or None
        if not policy.shadow_versions:
            return self._resolve(policy, policy.choose(key)), ()
        bits = policy.bits(key)  # one hash for both decisions
        return self._resolve(policy, policy.choose_bits(bits)), policy.shadows_bits(bits)

    def _resolve(self, policy: CompiledPolicy, version: str) -> ModelVersion:
        model = policy.policy.model
        try:
            mv = self._repository.get(model, version)
            if mv.ready:
                return mv
            problem = f"is {mv.state.value}"
        except SidecarError as exc:
            mv = None
            problem = f"is unavailable ({exc.message})"
        fallback = self._fallback(policy, version)
        if fallback is None:
            if mv is not None:
                return mv  # nothing else is ready either: let the chosen version report its state
            return self._repository.get(model)  # raises the repository's own, precise error
        self.fallbacks += 1
        now = time.monotonic_ns()
        key = (model, version)
        if now - self._fallback_logged.get(key, 0) > _FALLBACK_LOG_INTERVAL_NS:
            self._fallback_logged[key] = now
            log.warning(
                "routing: model '%s' version %s from the traffic policy %s; serving %s instead",
                model,
                version,
                problem,
                fallback.version_str,
            )
        return fallback

    def _fallback(self, policy: CompiledPolicy, failed: str) -> ModelVersion | None:
        model = policy.policy.model
        stable = policy.policy.stable
        if stable != failed:
            try:
                mv = self._repository.get(model, stable)
                if mv.ready:
                    return mv
            except SidecarError:
                pass
        try:
            mv = self._repository.get(model)
        except SidecarError:
            return None
        return mv if mv.ready else None


async def _answer(mirror: ShadowMirror, mv: ModelVersion, request: InferenceRequest) -> InferenceResponse:
    """The primary's answer, counted in flight for the shadow workers: one waiting for capacity is woken
    when a primary finishes with few enough still in flight (``ShadowMirror.wake_inflight``, -1 while
    none waits, so then this is one comparison)."""
    mirror.primary_inflight += 1
    try:
        return await mv.infer(request)
    finally:
        mirror.primary_inflight -= 1
        if mirror.primary_inflight <= mirror.wake_inflight:
            mirror.primary_finished()
