"""Dynamic batching: one queue per model version, rows merged into batches, outputs split back.

    submit(item) ──▶ RequestQueue (priority, arrival, shape group, deadline)
                          │  _schedule(): at most once per event-loop turn, on completion, on timer
                          ▼
                 ClosePolicy: close now, or when?  (Triton's rule or the adaptive rule)
                          │
                 _run(batch): merge (one np.concatenate per input) ─▶ engine.run ─▶ split (views)
                              (padded to the engine's shape buckets; big merges off the loop)
                          └─▶ every caller's future resolved exactly once

Rules (each has a unit test in tests/batching/):

* A batch holds at most the engine's ``max_batch_size`` rows (a request's rows are its batch
  dimension); a bigger request was already refused as INVALID_ARGUMENT by validation, which runs
  before submit, so one malformed request never reaches (or fails) a batch.
* Requests are taken by priority level, then arrival (see ``sidecar.batching.queue``); requests whose
  non-batch dimensions differ go into different batches; each caller gets exactly the outputs it
  asked for, as views of the batch's output rows.
* ``batches_in_flight`` batches may run at once, so the next batch is merged while one runs.
* Bounded queue: at ``max_queue_size`` queued requests a new one fails at once with QueueFull
  (RESOURCE_EXHAUSTED).
* Deadlines (the caller's gRPC deadline and the ``timeout`` parameter, already combined in
  ``InferenceRequest.deadline_ns``): a request that expires while queued is answered
  DEADLINE_EXCEEDED without running, promptly (one timer for the earliest deadline, not one per
  request). A caller that is cancelled is forgotten; its CancelledError propagates untouched.
* A failing engine run fails every request in that batch with the engine's error (EngineError,
  INTERNAL, for anything that is not already a SidecarError); the next batch runs normally.
* ``close()`` refuses new requests, runs everything queued without waiting for company, and returns
  when every accepted request has been answered.
* Shape buckets: an engine whose ``padded_rows(rows)`` says more than ``rows`` (a GPU session whose
  convolutions plan again whenever their input shape changes, which stalls a run for many times its
  length; see ``engine.shape_buckets``) gets its batch padded with zero rows up to that size;
  outputs are cut back to the real rows before they are split, and the monitor sees only the real
  rows.
* A merge of at least ``MERGE_OFF_LOOP_BYTES`` (image-sized requests) is copied on a worker thread
  (numpy releases the GIL while it copies), not on the event loop, which stays free for ingest.

A run's statistics and the monitor's look at it are recorded in a callback queued after its callers'
futures are resolved, so they run after the callers' tasks have passed their answers to gRPC.

Costs on the event loop: per request one future, one queue entry and no task and no timer; per batch
one task, one engine call and at most one timer. A decision (``_schedule``) runs at most once per
event-loop turn, on a batch's completion or on the timer; an arrival that cannot change the standing
decision (the batch waits with a wake-up armed, or all slots are busy) asks for none. A request
alone in the queue with a slot free and nothing to wait for runs in its caller's own task (no batch
task, no extra turns), so at concurrency 1 batching costs what no batching costs; if the engine offers
``run_inline`` (a one-row run it measured cheaper than a hand-off to its thread pool) and the loop has
CPU to spare (``INLINE_LOOP_BUSY``), that batch of one runs on the loop itself. Timers in asyncio
and uvloop resolve about 1 ms, so a wake-up is never armed closer than ``TIMER_MIN_NS``; short holds
end on events instead (the running batch completing, a request arriving).
"""

from __future__ import annotations

import asyncio
import time

import numpy as np

from sidecar.batching.buffers import MergeBuffers
from sidecar.batching.cost_model import CostModel
from sidecar.batching.gather import concatenate_into
from sidecar.batching.policy import DEADLINE_MARGIN_NS, DEADLINE_SAFETY, NEXT_TURN, ArrivalStats, ClosePolicy
from sidecar.batching.queue import Entry, RequestQueue, priority_level
from sidecar.batching.scheduler import BatchSettings, InferenceObserver, WorkItem, run_engine
from sidecar.engine.base import Engine
from sidecar.engine.statistics import VersionStatistics
from sidecar.errors import Cancelled, DeadlineExceeded, EngineError, QueueFull, ServerDraining, SidecarError
from sidecar.telemetry.spans import INVALID_SPAN, batch_span, record_queue_time
from sidecar.types import aligned_inputs, row_bytes

TIMER_MIN_NS = 1_000_000  # no wake-up is armed closer than this (event-loop timer resolution)
DUE_SLACK_NS = 100_000  # a close time this close to now counts as now
_EWMA = 0.125  # weight of a new sample in the merge-time average
LOAD_WINDOW_NS = 50_000_000  # the event loop's CPU share is sampled at most this often
# A lone request runs inline (on the loop) only while the loop has CPU to spare. Under concurrent load
# inline runs would answer every request alone, and one-by-one answers cost grpc.aio far more per
# request than answers that leave together (measured: mean batch 6.6 -> 1.0, server CPU +45 %).
INLINE_LOOP_BUSY = 0.75
MERGE_OFF_LOOP_BYTES = 1 << 20  # a merge this big is copied on a worker thread


class DynamicBatcher:
    """The Scheduler of a version with a batch dimension and batching enabled."""

    begin = None  # a batch's engine work starts when the batch is formed, never before a request is checked

    def __init__(
        self, engine: Engine, settings: BatchSettings, stats: VersionStatistics, model: str = "", version: str = ""
    ) -> None:
        self._engine = engine
        self._stats = stats
        self._model = model
        self._version = version
        self.label = f"model '{model}' version '{version}'"
        self.settings = settings
        self._batched = engine.max_batch_size > 0
        self._max_rows = max(1, engine.max_batch_size)
        self._slots = max(1, settings.batches_in_flight)
        self._max_queue = max(1, settings.max_queue_size)
        self._preferred = frozenset(s for s in settings.preferred_batch_sizes if 0 < s <= self._max_rows)
        self._input_names = tuple(s.name for s in engine.inputs)
        self._output_rank = {s.name: i for i, s in enumerate(engine.outputs)}
        # Only models with a variable non-batch dimension need shape groups.
        self._keyed = self._batched and any(d < 0 for s in engine.inputs for d in s.shape[1:])
        self.cost = CostModel()
        self._run_inline = getattr(engine, "run_inline", None)  # a lone small request runs on the loop
        delay_ns = int(settings.max_queue_delay_ms * 1_000_000)
        self._policy = ClosePolicy(self._max_rows, delay_ns, settings.adaptive, self.cost)
        self._queue = RequestQueue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._running = 0
        self._finishes: list[tuple[int, int]] = []  # (predicted finish, predicted duration) per running batch
        self._tasks: set[asyncio.Task[None]] = set()
        self._schedule_pending = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_ns = 0
        self._closed = False
        self._idle: asyncio.Event | None = None
        self.arrivals = ArrivalStats()
        self._arrivals = 0  # requests queued, ever
        self._arrivals_seen = 0  # ... as of the last decision
        self._turn_asked_ns = 0  # when the pending _schedule was asked for with call_soon (0: not so)
        self._waiting = False  # the last decision was to wait, with a wake-up armed
        self._deadline_guard_ns = DEADLINE_MARGIN_NS  # how much earlier than a deadline a batch may close
        self._merge_ns = 0.0  # EWMA of the time a merge takes
        self.loop_busy = 0.0  # share of wall time the event loop's thread spends on the CPU (EWMA)
        self._load_wall_ns = 0
        self._load_cpu_ns = 0
        self.observer: InferenceObserver | None = None  # told of every batch run (the monitoring stage)
        self._padded_rows = getattr(engine, "padded_rows", None) if self._batched else None
        self._bucket_set: tuple[tuple[int, ...], frozenset[int]] = ((), frozenset())  # engine.batch_buckets, as a set
        # Bytes of one row of all inputs, where every non-batch dimension is fixed (else 0: unknown).
        self._row_bytes = row_bytes(engine.inputs) if self._batched else 0
        # Big merges go into kept buffers: one per batch in flight, one being merged, one spare (the monitor
        # counts image-sized batches at once, sidecar.monitoring.version_monitor.hold_rows).
        self._buffers = MergeBuffers(self._slots + 2, self._max_rows, int(settings.kept_merge_mb * (1 << 20)))

    # -- Scheduler protocol ---------------------------------------------------------------------
    @property
    def queue_depth(self) -> int:
        """Requests waiting for a batch (not counting those running)."""
        return self._queue.count

    @property
    def batches_running(self) -> int:
        return self._running

    async def submit(self, item: WorkItem) -> dict[str, np.ndarray]:
        if self._closed:
            raise ServerDraining(f"{self.label} is shutting down and accepts no new requests")
        queue = self._queue
        deadline = item.request.deadline_ns
        if deadline is not None and deadline <= time.monotonic_ns():
            raise DeadlineExceeded(f"{self.label}: request '{item.request.id}' passed its deadline before queueing")
        if queue.count >= self._max_queue:
            now = time.monotonic_ns()
            if queue.due(now):
                self._fail_expired(queue.expire(now), now)
            if queue.count >= self._max_queue:
                raise QueueFull(
                    f"{self.label}: the queue is full ({queue.count} requests waiting, max_queue_size "
                    f"{self._max_queue}); retry with backoff, or raise batching.max_queue_size"
                )
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        key = tuple(item.request.inputs[n].shape[1:] for n in self._input_names) if self._keyed else None
        entry = Entry(item, loop.create_future(), key)
        arrival = item.arrival_ns
        self.arrivals.observe(arrival, item.rows, bool(queue.count or self._running))
        queue.push(entry, priority_level(item.request.priority))
        self._arrivals += 1
        if queue.count == 1 and self._running < self._slots and not self._schedule_pending:
            # Alone in the queue with a slot free: decide at once. A batch of just this request runs
            # in the caller's own task: no batch task, no extra loop turns, so a lone request costs
            # what it costs without batching.
            now = time.monotonic_ns()
            if now - self._load_wall_ns >= LOAD_WINDOW_NS:
                self._sample_load(now)
            limit, _ = self._due(now, 1, 0)
            if limit:
                self._arrivals_seen = self._arrivals
                launched = self._take(now, limit)
                if launched is not None:
                    await self._run(launched[0], launched[1], host=entry)
                    return entry.future.result()
        if not self._schedule_pending and not self._decided_for(entry):
            self._schedule_pending = True
            self._turn_asked_ns = arrival
            loop.call_soon(self._schedule)
        try:
            return await entry.future
        except asyncio.CancelledError:
            if queue.discard(entry):  # still queued: forget it, it will never run
                self._check_idle()
            raise

    def _decided_for(self, entry: Entry) -> bool:
        """Whether the decision already made (wait with a wake-up armed, or all slots busy) stands with
        ``entry`` queued too, so its arrival needs no new decision: the batch is not full, no preferred
        size may have been reached, and its deadline is no earlier than the armed wake-up allows."""
        if not (self._waiting or self._running >= self._slots) or self._timer is None:
            return False
        if self._queue.rows >= self._max_rows or self._preferred:
            return False
        d = entry.deadline_ns
        return d is None or d - self._deadline_guard_ns >= self._timer_ns

    async def close(self) -> None:
        """Stop accepting; run everything queued at once; return when every request is answered."""
        self._closed = True
        if self._queue.count or self._running:
            if self._idle is None:
                self._idle = asyncio.Event()
            self._schedule()
            await self._idle.wait()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- forming batches ------------------------------------------------------------------------
    def _schedule(self) -> None:
        """Start every batch that should start now; arm one wake-up for the next decision."""
        self._schedule_pending = False
        self._waiting = False
        queue = self._queue
        now = time.monotonic_ns()
        if queue.due(now):
            self._fail_expired(queue.expire(now), now)
        wake: int | None = None
        fresh = self._arrivals - self._arrivals_seen
        self._arrivals_seen = self._arrivals
        turn_ns = now - self._turn_asked_ns if self._turn_asked_ns else 0
        self._turn_asked_ns = 0
        if now - self._load_wall_ns >= LOAD_WINDOW_NS:
            self._sample_load(now)
        while queue.count and self._running < self._slots:
            limit, close_at = self._due(now, fresh, turn_ns)
            if close_at == NEXT_TURN:
                self._schedule_pending = True
                self._turn_asked_ns = now
                asyncio.get_running_loop().call_soon(self._schedule)
                break
            if not limit:
                wake = close_at
                self._waiting = True
                break
            self._launch(now, limit)
            fresh = turn_ns = 0
        if queue.count:
            deadline = queue.earliest_deadline()
            if deadline is not None and (wake is None or deadline < wake):
                wake = deadline
            self._deadline_guard_ns = int(self.cost.predict_ns(self._max_rows) * DEADLINE_SAFETY) + DEADLINE_MARGIN_NS
        self._arm(wake, now)

    def _sample_load(self, now: int) -> None:
        """Update ``loop_busy`` from this (the event loop's) thread's CPU time; one clock read per window."""
        cpu = time.thread_time_ns()
        if self._load_wall_ns:
            share = min(1.0, (cpu - self._load_cpu_ns) / (now - self._load_wall_ns))
            self.loop_busy += (share - self.loop_busy) * 0.5
        self._load_wall_ns, self._load_cpu_ns = now, cpu

    def _due(self, now: int, fresh: int, turn_ns: int) -> tuple[int, int]:
        """(rows to launch a batch with now, 0), or (0, when to decide again or NEXT_TURN)."""
        queue = self._queue
        limit = self._max_rows
        target = queue.preferred_target(self._preferred, limit) if self._preferred else 0
        if target:
            return target, 0
        if self._closed or queue.rows >= limit:
            return limit, 0
        close_at = self._close_at(now, fresh, turn_ns)
        if close_at != NEXT_TURN and close_at <= now + DUE_SLACK_NS:
            return self._aligned(now, limit), 0
        return 0, close_at

    def _aligned(self, now: int, limit: int) -> int:
        """Where batches are padded to the engine's buckets (``engine.batch_buckets``, see
        ``engine.shape_buckets``): a batch that takes the last free slot is cut to the largest bucket the
        queue fills exactly when that serves more rows per second by the cost model than running all its
        rows padded up (a GPU's 44 rows run as 64 take about as long as 64; 32 of them, half as long),
        and the rest waits for the next free slot with whatever arrives meanwhile. Not before the cost
        model has runs to go by, nor when a queued deadline could not wait for one more run. Otherwise
        ``limit``."""
        buckets = getattr(self._engine, "batch_buckets", ())
        if not buckets or self._running + 1 < self._slots or self._padded_rows is None or not self.cost.runs:
            return limit
        queue = self._queue
        rows = min(queue.rows, limit)
        known, bucket_set = self._bucket_set
        if known is not buckets:
            bucket_set = frozenset(buckets)
            self._bucket_set = (buckets, bucket_set)
        if rows in bucket_set:
            return limit
        target = queue.preferred_target(bucket_set, rows)
        if not target:
            return limit
        predict = self.cost.predict_ns
        whole_ns, part_ns = predict(self._padded_rows(rows)), predict(target)
        if target * whole_ns <= rows * part_ns:  # the padded whole serves at least as many rows a second
            return limit
        deadline = queue.earliest_deadline()
        if deadline is not None and deadline - now < part_ns + whole_ns + self._deadline_guard_ns:
            return limit
        return target

    def _close_at(self, now: int, fresh: int, turn_ns: int) -> int:
        queue = self._queue
        head = queue.head()
        return self._policy.close_at_ns(
            now,
            queue.count,
            queue.rows,
            head.item.arrival_ns if head is not None else now,
            queue.earliest_deadline(),
            self._running,
            min(self._finishes) if self._finishes else None,
            self._merge_ns,
            self.arrivals,
            fresh,
            turn_ns,
            self.loop_busy,
        )

    def _take(self, now: int, limit: int) -> tuple[list[Entry], tuple[int, int]] | None:
        """Take the next batch and claim a slot for it: (entries, predicted finish), or None if none."""
        expired: list[Entry] = []
        batch, rows = self._queue.take(now, limit, expired)
        if expired:
            self._fail_expired(expired, now)
        if not batch:
            return None
        duration = int(self._merge_ns + self.cost.predict_ns(rows))
        finish = (now + duration, duration)
        self._running += 1
        self._finishes.append(finish)
        return batch, finish

    def _launch(self, now: int, limit: int) -> None:
        launched = self._take(now, limit)
        if launched is not None:
            task = asyncio.get_running_loop().create_task(self._run(*launched))
            self._tasks.add(task)

    def _arm(self, wake: int | None, now: int) -> None:
        """Make sure the batcher wakes by ``wake``. A timer no longer needed is left to fire (it finds
        nothing to do): cancelling and re-arming one per batch would cost more than one idle wake-up."""
        if wake is None:
            return
        timer = self._timer
        if timer is not None:
            if self._timer_ns <= wake:
                return  # an earlier wake-up is armed; it will decide again
            timer.cancel()
        self._timer_ns = wake
        self._timer = asyncio.get_running_loop().call_later(max(wake - now, TIMER_MIN_NS) / 1e9, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._schedule()

    def _fail_expired(self, entries: list[Entry], now: int) -> None:
        for e in entries:
            if not e.future.done():
                waited_ms = (now - e.item.arrival_ns) / 1e6
                e.future.set_exception(
                    DeadlineExceeded(
                        f"{self.label}: request '{e.item.request.id}' passed its deadline after waiting "
                        f"{waited_ms:.1f} ms in the queue; it did not run"
                    )
                )
        if entries:
            self._check_idle()

    def _check_idle(self) -> None:
        if self._closed and self._idle is not None and not self._queue.count and not self._running:
            self._idle.set()

    # -- running a batch ------------------------------------------------------------------------
    async def _run(self, batch: list[Entry], finish: tuple[int, int], host: Entry | None = None) -> None:
        """Run one batch and answer its callers. ``host``: the caller running it in its own task."""
        released = False
        try:
            start = time.monotonic_ns()
            batch = self._still_wanted(batch, start)
            if not batch:
                return
            stats = self._stats
            rows = 0
            spans = []  # the request spans of traced requests (none when tracing is off)
            for e in batch:
                rows += e.rows
                queued = start - e.item.arrival_ns
                stats.record_queue(queued)
                span = e.item.span
                if span is not INVALID_SPAN:
                    record_queue_time(span, queued / 1e9)
                    spans.append(span)
            error: SidecarError | None = None
            outputs: dict[str, np.ndarray] = {}
            names = self._output_names(batch)
            try:
                padded = self._padded_rows(rows) if self._padded_rows is not None else rows
                if self._row_bytes * rows >= MERGE_OFF_LOOP_BYTES and len(batch) > 1:
                    feed = await asyncio.to_thread(self._merge, batch, rows, padded)
                else:
                    feed = self._merge(batch, rows, padded)
                inputs = feed if padded == rows else {n: a[:rows] for n, a in feed.items()}
                merged = time.monotonic_ns()
                # A lone request of a small model may run on the loop (if the engine measured it cheap).
                alone = host is not None and len(batch) == 1 and self.loop_busy < INLINE_LOOP_BUSY
                inline = self._run_inline if alone else None
                if spans:
                    with batch_span(self._model, self._version, spans, rows, self._engine.provider):
                        outputs = await run_engine(self._engine, inline, feed, names)
                else:
                    outputs = await run_engine(self._engine, inline, feed, names)
                if padded != rows:
                    outputs = {n: a[:rows] if a.ndim else a for n, a in outputs.items()}
            except SidecarError as exc:
                error = exc
            except asyncio.CancelledError:
                if host is not None:
                    host.future.cancel()  # the host itself was cancelled: nobody awaits its future
                self._fail(batch, Cancelled(f"{self.label}: the batch was cancelled (server shutting down)"))
                raise
            except Exception as exc:
                error = EngineError(f"{self.label}: model failed while running: {type(exc).__name__}: {exc}")
            else:
                error = self._check_outputs(outputs, names, rows)
            ran = time.monotonic_ns()
            released = True
            self._release(finish)
            if error is not None:
                self._fail(batch, error)
                return
            self._split(batch, outputs, names)
            done = time.monotonic_ns()
            merge_ns = merged - start
            self._merge_ns += (merge_ns - self._merge_ns) * _EWMA
            self.cost.observe(rows, ran - merged)
            # The statistics and the monitor's look at the run wait until the callers have their answers:
            # a callback queued now runs after the callers' tasks, which _split has just woken (and after
            # the host's own step, which returns its answer to gRPC).
            asyncio.get_running_loop().call_soon(
                self._after_run, batch, inputs, outputs, (rows, merge_ns, ran - merged, done - ran)
            )
        finally:
            if not released:
                self._release(finish)
            self._tasks.discard(asyncio.current_task())  # type: ignore[arg-type]
            self._check_idle()

    def _after_run(
        self,
        batch: list[Entry],
        inputs: dict[str, np.ndarray],
        outputs: dict[str, np.ndarray],
        times: tuple[int, int, int, int],
    ) -> None:
        rows, merge_ns, infer_ns, split_ns = times
        self._stats.record_execution(rows, len(batch), merge_ns, infer_ns, split_ns)
        if self.observer is not None:  # monitoring: one histogram update per batch, its callers answered
            self.observer.observe(inputs, outputs, [e.rows for e in batch])

    def _release(self, finish: tuple[int, int]) -> None:
        """Free the batch's slot and start the next batch before this one's outputs are split."""
        self._running -= 1
        self._finishes.remove(finish)
        if self._queue.count:
            self._schedule()

    def _still_wanted(self, batch: list[Entry], now: int) -> list[Entry]:
        """Drop callers cancelled or expired since the batch was taken (the model has not run yet)."""
        live: list[Entry] | None = None
        expired: list[Entry] = []
        for i, e in enumerate(batch):
            d = e.deadline_ns
            if e.future.done() or (d is not None and d <= now):
                if live is None:
                    live = batch[:i]
                if not e.future.done():
                    expired.append(e)
            elif live is not None:
                live.append(e)
        if expired:
            self._fail_expired(expired, now)
        return batch if live is None else live

    def _output_names(self, batch: list[Entry]) -> tuple[str, ...]:
        names = batch[0].item.output_names
        for e in batch:
            other = e.item.output_names
            if other is not names and other != names:
                wanted = {n for x in batch for n in x.item.output_names}
                return tuple(sorted(wanted, key=self._output_rank.__getitem__))
        return names

    def _merge(self, batch: list[Entry], rows: int, padded: int) -> dict[str, np.ndarray]:
        """One array per input: the batch's rows in order, then ``padded - rows`` zero rows. A big merge
        (``MERGE_OFF_LOOP_BYTES``) is written into a kept buffer (``sidecar.batching.buffers``)."""
        if padded == rows and len(batch) == 1:
            return dict(aligned_inputs(batch[0].item.request.inputs))
        pool = self._buffers if self._row_bytes * padded >= MERGE_OFF_LOOP_BYTES else None
        if padded == rows and pool is None:
            return {n: np.concatenate([e.item.request.inputs[n] for e in batch]) for n in self._input_names}
        out = {}
        for n in self._input_names:
            parts = [e.item.request.inputs[n] for e in batch]
            first = parts[0]
            if pool is not None:
                merged = pool.take(padded, first.shape[1:], first.dtype)
            else:
                merged = np.empty((padded, *first.shape[1:]), first.dtype)
            concatenate_into(merged[:rows], parts)
            if padded > rows:
                merged[rows:] = 0
            out[n] = merged
        return out

    def _check_outputs(self, outputs: dict[str, np.ndarray], names: tuple[str, ...], rows: int) -> EngineError | None:
        for name in names:
            array = outputs.get(name)
            if array is None:
                return EngineError(f"{self.label}: the engine returned no output '{name}'")
            if self._batched and (array.ndim == 0 or array.shape[0] != rows):
                return EngineError(
                    f"{self.label}: output '{name}' has shape {list(array.shape)} for a batch of {rows} rows; "
                    "a batched model's outputs must keep the batch dimension first"
                )
        return None

    def _split(self, batch: list[Entry], outputs: dict[str, np.ndarray], names: tuple[str, ...]) -> None:
        if len(batch) == 1:
            e = batch[0]
            if not e.future.done():
                wanted = e.item.output_names
                e.future.set_result(outputs if wanted == names else {n: outputs[n] for n in wanted})
            return
        offset = 0
        for e in batch:
            end = offset + e.rows
            if not e.future.done():
                e.future.set_result({n: outputs[n][offset:end] for n in e.item.output_names})
            offset = end

    @staticmethod
    def _fail(batch: list[Entry], error: SidecarError) -> None:
        for e in batch:
            if not e.future.done():
                e.future.set_exception(error)
