"""Shadow mirroring: copy a share of live requests to shadow versions, off the client's path.

After the primary answered, the router ``offer``s the request and the primary's outputs; ``offer``
never awaits and never blocks: the copy goes into a bounded queue, or, when the queue is full, is
dropped and counted. A fixed number of worker tasks take copies from the queue and run them on the
shadow version, each under its own timeout, then compare the answers (``comparison.ShadowStats``).

Lowest priority means shadows only use capacity the primary traffic leaves: ``gate.ShadowGate``
measures the primary's own latency with and without shadow work running and lets copies start only in
its *on* phases, whose share of the time shrinks when shadow work slows the primary and grows back
when it does not (see its docstring). On top, a copy starts only while at most
``max_primary_inflight`` primary requests are in flight (counted by the router) and the event loop
comes back to the worker within ``max_loop_lag_ms`` (``asyncio.sleep(0)``). Otherwise the worker
waits, the queue fills and further copies are dropped (and counted): under saturation that is the
expected outcome, and the statistics show the coverage (copies run versus dropped) next to the
comparison. Every wait ends on an event, never by polling: an off phase on a timer set to its known
end; too many primaries, or a lagging loop (primary work being done), on the router's signal that a
primary request finished with at most ``max_primary_inflight`` still in flight (``primary_finished``;
the router compares with one integer, ``wake_inflight``, which is -1 while no worker waits), after
which the worker looks again. A lagging loop is probed again at the next completion, or at the gate's
next on phase if no primary finishes before it, so a worker never waits long on an idle server (the
last primary to finish wakes it, the next on phase at the latest). One worker at a time waits for
capacity (the others queue on a lock behind it), so a completion wakes one worker, not all; and the
capacity one worker was let through on is taken: while primaries are in flight, the next worker looks
again only after one of them finished, so turns never start in bursts on one moment of free capacity
(in the served c=64 benchmark such bursts cost the primary's p99 about 10 %).
A worker that finds a copy first waits ``collect_ms`` for more (unless a full turn is already
queued), then, once let through, takes up to ``copies_per_turn`` queued copies at once, scaled by the gate's
``share`` (a saturated primary, with the share near its floor, pays for a few copies a turn). Copies for the same
shadow version with the same input signature are joined into **one request** (their rows concatenated,
up to the version's ``max_batch_size``): one pass through the shadow version (one model run, one
monitoring observation, one span linked to every primary) and one vectorised comparison for all of
them, instead of paying that per copy; each copy's latency is then its batch's. Versions without a
batch dimension, and odd copies, run one by one. The copies carry the least urgent batching priority.
Shadow answers are never returned to anybody, and a shadow's failure, hang or garbage only shows up
in its statistics and logs, never in a client's response.

**The primary's path** pays almost nothing, above all for a copy that is dropped. The router reads the
model's ``ShadowPlan`` (its shadows, their mirror shares and statistics, compiled once per policy
change), and before the primary runs one integer (``room``, free places in the queue) says whether its
copy can be queued. If not, the copy is dropped: no clock read, no object, no span lookup, one counter
per shadow (``ShadowStats.count_dropped``, folded into the time windows later, off the request path).
Otherwise the router times the primary and ``offer_planned`` appends one tuple holding references to
the request, its answer, its latency and its span (no copy of any tensor) and counts it as mirrored.
Everything per copy beyond that (span links, the request for the shadow, comparing) runs in the
workers. The gate times only one primary request in its phase's stride (see ``gate``).

Memory is bounded by ``queue_size`` copies (each holds references to the request's input views and
the primary's outputs, nothing more).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from bisect import bisect_right
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from opentelemetry import trace

from sidecar.engine.base import DEADLINE_NS
from sidecar.errors import DeadlineExceeded, SidecarError
from sidecar.routing.comparison import ShadowStats
from sidecar.routing.gate import ShadowGate
from sidecar.routing.policy import BUCKETS, CompiledPolicy
from sidecar.types import InferenceRequest, InferenceResponse

log = logging.getLogger(__name__)
_tracer = trace.get_tracer("sidecar.routing")

# Triton's convention: priority 0 is the default level and larger numbers are less urgent.
SHADOW_PRIORITY = 1 << 30


@dataclass(frozen=True, slots=True)
class ShadowJob:
    request: InferenceRequest  # the primary's request, as the client sent it
    version: str  # the shadow version that gets the copy
    primary: InferenceResponse
    primary_latency_ns: int
    stats: ShadowStats
    parent: Any  # the primary's span or its span context (for a link), or None


# A queued copy, as the request path leaves it (a plain tuple: the cheapest immutable value to make):
# (request, version, primary response, primary latency ns, stats, the primary's span or span context)
_Queued = tuple


@dataclass(frozen=True, slots=True)
class ShadowPlan:
    """One model's shadows as the request path reads them; built once per policy change, never mutated.

    A request is mirrored to a shadow when the upper 32 of its routing bits are below the shadow's
    bound, so the shadows a request goes to are always the first few in order of decreasing bound:
    ``prefixes[k]`` holds the first ``k`` (statistics objects, made once), and ``pick`` finds ``k`` by
    bisecting ``bounds`` (ascending) without making anything. ``always``: every shadow mirrors 100 %,
    so no bits are needed for mirroring; ``needs_bits``: the policy has to draw routing bits at all
    (several arms, or a shadow below 100 %); ``only``: the policy's one live version when it has one
    arm, else ""."""

    policy: CompiledPolicy
    bounds: tuple[int, ...]  # ascending
    prefixes: tuple[tuple[ShadowStats, ...], ...]  # prefixes[k]: the k shadows with the largest bounds
    every: tuple[ShadowStats, ...]  # prefixes[-1]
    always: bool
    needs_bits: bool
    only: str

    def pick(self, bits: int) -> tuple[ShadowStats, ...]:
        """The statistics of the shadows a request with these routing bits is mirrored to (maybe none)."""
        if self.always:
            return self.every
        return self.prefixes[len(self.bounds) - bisect_right(self.bounds, bits >> 32)]


# (model, version) -> the ModelVersion-like object that answers (``await .infer(request)``)
Resolver = Callable[[str, str], Any]


class ShadowMirror:
    def __init__(
        self,
        resolve: Resolver,
        queue_size: int = 1024,
        workers: int = 2,
        timeout_s: float = 5.0,
        window_s: float = 60.0,
        windows: int = 10,
        max_loop_lag_ms: float = 0.5,
        max_primary_inflight: int = 4,
        gate: ShadowGate | None = None,
        copies_per_turn: int = 64,
        collect_ms: float = 0.0,
    ) -> None:
        self._resolve = resolve
        # The queue: a deque bounded by ``room`` (free places), which the request path reads before
        # anything else; workers sleep on ``_waiter`` while it is empty. Used on the event loop only.
        self._queue: deque[_Queued] = deque()
        self._size = max(1, queue_size)
        self.room = self._size
        self._waiter: asyncio.Future[None] | None = None
        self._workers_n = max(1, workers)
        self._per_turn = max(1, copies_per_turn)
        self._collect_s = max(0.0, collect_ms) / 1e3
        self._timeout_s = timeout_s
        self._window_s = window_s
        self._windows = windows
        self._max_lag_ns = int(max_loop_lag_ms * 1e6)
        self._max_primary = max_primary_inflight
        self.primary_inflight = 0  # kept by the router: primary requests being answered now
        # While a worker waits for primary work to finish: the router calls ``primary_finished`` when a
        # primary request ends with ``primary_inflight`` at or below this; -1 (never) while none waits.
        self.wake_inflight = -1
        self._primary_waiters: list[asyncio.Future[None]] = []  # one per waiting worker
        self._admitted = False  # a worker was let through last: the next one waits for a fresh completion
        self.gate = gate if gate is not None else ShadowGate()
        self.active = False  # some policy has shadows: the router then feeds the gate its samples
        self._workers: list[asyncio.Task] = []
        # (model, version) -> stats; replaced, never mutated, so readers iterate without a lock
        self._stats: dict[tuple[str, str], ShadowStats] = {}
        # model -> its ShadowPlan (models whose policy has shadows); replaced, never mutated
        self.plans: dict[str, ShadowPlan] = {}
        self.dropped_total = 0
        self.started_total = 0  # copies that ran (or started to) on a shadow version
        self.deferrals = 0  # times a worker waited for the gate, the primary or the loop

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        if not self._workers:
            # One worker at a time waits for capacity, the others queue on this lock: a primary finishing
            # wakes one worker, not all. Made here: it belongs to the running loop.
            admit = asyncio.Lock()
            self._workers = [asyncio.ensure_future(self._worker(admit)) for _ in range(self._workers_n)]

    async def stop(self) -> None:
        """Drop queued copies, cancel the ones running (shadows never delay a shutdown)."""
        workers, self._workers = self._workers, []
        self._queue.clear()
        self.room = self._size
        self._waiter = None  # belongs to this loop; a later start() makes its own
        self._primary_waiters = []  # the same (the cancelled workers were their only waiters)
        self.wake_inflight = -1
        self._admitted = False
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    # -- statistics -----------------------------------------------------------------------------
    def stats_for(self, model: str, version: str) -> ShadowStats:
        key = (model, version)
        stats = self._stats.get(key)
        if stats is None:
            stats = ShadowStats(model, version, self._window_s, self._windows)
            self._stats = {**self._stats, key: stats}
        return stats

    def all_stats(self, model: str | None = None) -> list[ShadowStats]:
        return [s for (m, _), s in sorted(self._stats.items()) if model is None or m == model]

    def install(self, model: str, policy: CompiledPolicy | None, active: bool) -> None:
        """``model``'s traffic policy changed (the router calls this): its shadows become the model's
        ``ShadowPlan``, and shadows no longer configured lose their statistics and queued copies.

        ``active``: whether any model still has shadows, so the gate needs samples."""
        self.reset(model, policy.shadow_versions if policy is not None else (), active)
        if policy is not None and policy.shadow_versions:
            self.plans = {**self.plans, model: self._plan(model, policy)}

    def reset(self, model: str, keep: tuple[str, ...], active: bool | None = None) -> None:
        """Forget ``model``'s shadows that are not in ``keep``: their statistics, their queued copies,
        and the model's plan (which would name them; ``install`` makes a new one).

        ``active``: whether any model still has shadows (the router knows), so the gate needs samples."""
        if active is not None:
            self.active = active
        self._stats = {k: s for k, s in self._stats.items() if k[0] != model or k[1] in keep}
        plan = self.plans.get(model)
        if plan is not None and not set(plan.policy.shadow_versions) <= set(keep):
            self.plans = {m: p for m, p in self.plans.items() if m != model}
        kept = [job for job in self._queue if job[0].model_name != model or job[1] in keep]
        self._queue = deque(kept)
        self.room = self._size - len(kept)

    def _plan(self, model: str, policy: CompiledPolicy) -> ShadowPlan:
        targets = sorted(zip(policy.shadow_bounds, policy.shadow_versions, strict=True), reverse=True)
        stats = tuple(self.stats_for(model, v) for _, v in targets)
        prefixes = tuple(stats[:k] for k in range(len(stats) + 1))
        always = all(bound >= BUCKETS for bound, _ in targets)
        only = policy.versions[0] if len(policy.versions) == 1 else ""
        bounds = tuple(sorted(bound for bound, _ in targets))
        return ShadowPlan(policy, bounds, prefixes, stats, always, needs_bits=not only or not always, only=only)

    # -- the request path -----------------------------------------------------------------------
    def offer(
        self,
        versions: tuple[str, ...],
        request: InferenceRequest,
        primary: InferenceResponse,
        primary_latency_ns: int,
        parent: Any,
    ) -> None:
        """Queue a copy of ``request`` for each shadow version; never waits, never raises.

        ``parent``: the primary's span or span context (for the shadow span's link), or None."""
        targets = tuple(self.stats_for(request.model_name, version) for version in versions)
        self.offer_planned(targets, request, primary, primary_latency_ns, parent)

    def offer_planned(
        self, targets: Any, request: InferenceRequest, primary: InferenceResponse, latency_ns: int, span: Any
    ) -> None:
        """``offer`` for the router: ``targets`` from ``ShadowPlan.pick``; never waits, never raises."""
        for stats in targets:
            if self.room:
                self._put((request, stats.version, primary, latency_ns, stats, span))
                stats.mirrored_count += 1  # ShadowStats.count_mirrored, without the call
            else:
                stats.dropped_count += 1
                self.dropped_total += 1

    def drop_planned(self, targets: Any) -> None:
        """Count the copies of a request that found the queue full (the router checked ``room``)."""
        for stats in targets:
            stats.dropped_count += 1  # ShadowStats.count_dropped, without the call
        self.dropped_total += len(targets)

    def _put(self, job: _Queued) -> None:
        self._queue.append(job)
        self.room -= 1
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def _get(self) -> _Queued:
        while not self._queue:
            waiter = self._waiter
            if waiter is None:
                waiter = self._waiter = asyncio.get_running_loop().create_future()
            await asyncio.shield(waiter)  # shared by the idle workers: one cancelled leaves it to the others
        return self._take()

    def _take(self) -> _Queued:
        self.room += 1
        return self._queue.popleft()

    # -- workers --------------------------------------------------------------------------------
    async def _worker(self, admit: asyncio.Lock) -> None:
        while True:
            job = ShadowJob(*await self._get())
            if self._collect_s and len(self._queue) < self._per_turn - 1:
                await asyncio.sleep(self._collect_s)  # let more copies arrive: one request for all of them
            async with admit:
                await self._wait_for_capacity()
            # Take what else is queued and run it all at once: up to copies_per_turn, scaled by the gate's
            # share, so a saturated primary (share near its floor) pays for a few copies per turn, not 64.
            per_turn = max(1, round(self._per_turn * self.gate.share))
            jobs = [job]
            while len(jobs) < per_turn and self._queue:
                jobs.append(ShadowJob(*self._take()))
            runs = self._group(jobs) if len(jobs) > 1 else [[job]]
            if len(runs) == 1:
                await self._run_guarded(runs[0])
            else:
                await asyncio.gather(*(self._run_guarded(r) for r in runs))

    def _group(self, jobs: list[ShadowJob]) -> list[list[ShadowJob]]:
        """Group copies that can share one request: same shadow version, outputs and input signature,
        rows within the version's max_batch_size. Everything else runs alone."""
        groups: dict[tuple, list[ShadowJob]] = {}
        for job in jobs:
            r = job.request
            key = (
                r.model_name,
                job.version,
                r.requested_outputs,
                job.stats,
                tuple((n, a.dtype.str, a.shape[1:]) for n, a in r.inputs.items()),
            )
            groups.setdefault(key, []).append(job)
        runs: list[list[ShadowJob]] = []
        for (model, version, *_), group in groups.items():
            limit = _batch_limit(self._resolve, model, version) if len(group) > 1 else 0
            if not limit or not group[0].request.inputs:
                runs += [[j] for j in group]
                continue
            chunk: list[ShadowJob] = []
            rows = 0
            for job in group:
                n = _rows(job.request)
                if n < 1 or n > limit:
                    runs.append([job])
                    continue
                if rows + n > limit:
                    runs.append(chunk)
                    chunk, rows = [], 0
                chunk.append(job)
                rows += n
            if chunk:
                runs.append(chunk)
        return runs

    async def _run_guarded(self, jobs: list[ShadowJob]) -> None:
        gate = self.gate
        gate.started()
        self.started_total += len(jobs)
        try:
            await self._run(jobs)
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug in comparison must not kill the worker
            log.exception("shadow comparison failed for %s", jobs[0].request.model_name)
        finally:
            gate.finished()

    # -- waiting for capacity -------------------------------------------------------------------
    def primary_finished(self) -> None:
        """The router calls this when a primary request ended with ``primary_inflight`` at or below
        ``wake_inflight`` (only while a worker waits): the waiting workers look at the capacity again."""
        if self.primary_inflight > self._max_primary:
            return
        waiters, self._primary_waiters = self._primary_waiters, []
        self.wake_inflight = -1
        for waiter in waiters:
            _wake(waiter)

    async def _wait_for_capacity(self) -> None:
        """Return once the gate is in an on phase, few primary requests are in flight and the loop is free.

        Every wait ends on an event, never on a poll: the off phase's known end (a timer), or the router's
        signal that a primary request finished with at most ``max_primary_inflight`` still in flight."""
        gate = self.gate
        if self._admitted and self.primary_inflight:
            # The worker before this one was let through on the capacity seen then: it is taken. Look
            # again once a primary finished (or at the next on phase), so turns do not start in bursts.
            self._admitted = False
            self.deferrals += 1
            await self._primary_finished(gate.cycle_left_ns() / 1e9)
        while True:
            wait_ns = gate.wait_ns()
            if wait_ns:
                self.deferrals += 1
                await asyncio.sleep(wait_ns / 1e9)
                continue
            if self.primary_inflight > self._max_primary:
                self.deferrals += 1
                await self._primary_finished()
                continue
            start = time.monotonic_ns()
            await asyncio.sleep(0)
            if time.monotonic_ns() - start <= self._max_lag_ns:
                if self.primary_inflight <= self._max_primary and not gate.wait_ns():  # still so after the probe
                    self._admitted = True
                    return
                continue
            # The loop lags: primary work is being done (requests answered, or their answers encoded and sent
            # after the router counted them out, at the end of a batch). Probe again once the next primary
            # finished, or at the next on phase if none finishes before it (a long one, or the last one was).
            self.deferrals += 1
            await self._primary_finished(gate.cycle_left_ns() / 1e9)

    async def _primary_finished(self, timeout_s: float | None = None) -> None:
        """Wait until ``primary_finished`` wakes the waiting workers (or ``timeout_s`` passed).

        Each worker waits on a future of its own: a worker cancelled (``stop``) cancels only its own."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._primary_waiters.append(waiter)
        self.wake_inflight = self._max_primary
        timer = None if timeout_s is None else loop.call_later(timeout_s, _wake, waiter)
        try:
            await waiter
        finally:
            if timer is not None:
                timer.cancel()
            waiters = self._primary_waiters
            if waiter in waiters:  # timed out or cancelled: the router did not take it
                waiters.remove(waiter)
                if not waiters:
                    self.wake_inflight = -1

    async def _run(self, jobs: list[ShadowJob]) -> None:
        """Run one copy, or several joined into one request (``_group``), and compare the answers."""
        job = jobs[0]
        timeout_s = self._timeout_s
        start = time.monotonic_ns()
        deadline = start + int(timeout_s * 1e9)
        if len(jobs) == 1:
            request = dataclasses.replace(
                job.request, model_version=job.version, priority=SHADOW_PRIORITY, deadline_ns=deadline
            )
        else:
            first = job.request
            request = InferenceRequest(
                first.model_name,
                job.version,
                f"shadow-batch-{len(jobs)}",
                {name: np.concatenate([j.request.inputs[name] for j in jobs]) for name in first.inputs},
                first.requested_outputs,
                deadline_ns=deadline,
                priority=SHADOW_PRIORITY,
            )
        token = DEADLINE_NS.set(deadline)
        links = [trace.Link(c) for c in (_span_context(j.parent) for j in jobs) if c is not None and c.is_valid]
        try:
            with _tracer.start_as_current_span(
                "sidecar.shadow",
                context=trace.set_span_in_context(trace.INVALID_SPAN),
                links=links,
                attributes={
                    "model.name": request.model_name,
                    "model.version": request.model_version,
                    "sidecar.shadow.primary_version": job.primary.model_version,
                    "sidecar.shadow.copies": len(jobs),
                },
                record_exception=False,
            ) as span:
                try:
                    mv = self._resolve(request.model_name, request.model_version)
                    # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation
                    # that arrives as the shadow answers, and stop() would then wait forever.
                    async with asyncio.timeout(timeout_s):
                        response = await mv.infer(request)
                except (TimeoutError, DeadlineExceeded):
                    for j in jobs:
                        j.stats.record_error(timeout=True)
                    span.set_attribute("sidecar.shadow.outcome", "timeout")
                    return
                except SidecarError as exc:
                    for j in jobs:
                        j.stats.record_error()
                    span.set_attribute("sidecar.shadow.outcome", "error")
                    span.set_attribute("error.type", type(exc).__name__)
                    log.debug("shadow %s %s failed: %s", request.model_name, request.model_version, exc.message)
                    return
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    for j in jobs:
                        j.stats.record_error()
                    span.set_attribute("sidecar.shadow.outcome", "error")
                    log.warning("shadow %s %s failed: %r", request.model_name, request.model_version, exc)
                    return
                latency = time.monotonic_ns() - start
                if len(jobs) == 1:
                    job.stats.record_result(job.primary.outputs, _outputs(response), job.primary_latency_ns, latency)
                else:
                    job.stats.record_batch(
                        [j.primary.outputs for j in jobs],
                        _outputs(response),
                        [_rows(j.request) for j in jobs],
                        [j.primary_latency_ns for j in jobs],
                        latency,
                    )
                span.set_attribute("sidecar.shadow.outcome", "ok")
        finally:
            DEADLINE_NS.reset(token)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _span_context(parent: Any) -> Any:
    """The span context of a queued copy's primary (its span, or already its context, or None)."""
    get = getattr(parent, "get_span_context", None)
    return get() if get is not None else parent


def _rows(request: InferenceRequest) -> int:
    """The copy's rows: the first dimension of its first input (0 for a scalar)."""
    for array in request.inputs.values():
        return array.shape[0] if array.ndim else 0
    return 0


def _batch_limit(resolve: Resolver, model: str, version: str) -> int:
    """How many rows one request to this version may carry (0: it has no batch dimension)."""
    try:
        engine = getattr(resolve(model, version), "engine", None)
    except SidecarError:
        return 0  # the copies run alone and report the error each
    return int(getattr(engine, "max_batch_size", 0) or 0)


def _outputs(response: Any) -> Mapping[str, np.ndarray]:
    outputs = getattr(response, "outputs", None)
    if not isinstance(outputs, Mapping):
        return {}
    return {k: v for k, v in outputs.items() if isinstance(v, np.ndarray)}
