"""When to close a batch: Triton's rule, or the adaptive rule driven by the cost model and deadlines.

The batcher asks ``close_at_ns`` only when a batch slot is free and something is queued; the answer
is a time on the ``time.monotonic_ns`` clock (<= now: close now), or ``NEXT_TURN``: decide again
after the event loop has run what is already waiting in it. Full batches (``max_batch_size`` rows)
and reachable preferred sizes close at once in both modes; those checks live in the batcher.

Triton's rule (``adaptive = false``): the oldest queued request may wait ``max_queue_delay_ms`` for
company, then the batch closes with whatever is queued.

Adaptive rule (``adaptive = true``). No request ever waits past ``max_queue_delay_ms`` on an idle
engine, nor past what its deadline allows; within that:

* Engine idle (no batch running): wait only when company is coming. ``ArrivalStats`` keeps the mean
  time between arrivals (``gap``) and the share of arrivals that found other requests pending
  (``p_busy``): a lone client has p_busy = 0 (its next request comes only after the answer), many
  concurrent clients ~ 1. Company is expected when the traffic is concurrent (``p_busy >=
  P_BUSY_COMPANY``) and at least ``COMPANY_ODDS`` arrivals are expected in what is left of the
  oldest request's ``max_queue_delay_ms``; else, or when the cost model says the queued rows already
  amortise the engine's fixed cost (``fixed < SATURATED * per_row * rows``), close now. So a lone
  request never waits. Otherwise gather: wait for the next arrival (each arrival may decide again),
  at most about two expected gaps after the last one (traffic that pauses closes the batch early)
  and never past the delay; when that time has come but requests arrived since the batcher last
  looked, or the event loop's last turn took longer than ``BUSY_TURN_NS``, decide again after one
  loop turn (``NEXT_TURN``), so requests the server has received but not yet queued join this batch.
* Engine busy (a batch running, another slot free): a batch started now would mostly wait for the
  device anyway, so hold it until the running batch is predicted to finish, less the time a merge
  takes and ``LEAD_SHARE`` of the running batch's duration (so the next batch is merged and queued
  on the device before the current one ends, and the device never idles between them), letting it
  grow meanwhile; the running batch's completion wakes the batcher at once. A running batch past its
  predicted finish is given ``OVERDUE_GRACE_NS`` more (its completion is usually waiting in a busy
  event loop) before the free slot is used. This hold may exceed ``max_queue_delay_ms``: it costs
  the queued requests little.
* CPU-bound concurrent traffic: when the event loop's thread is on the CPU more than ``LOOP_BUSY``
  of the time and arrivals find company (``p_busy >= P_BUSY_COMPANY``), the CPU, not the engine, is
  what limits throughput (a small model, many clients): every batch gathers for the whole
  ``max_queue_delay_ms`` as in Triton's rule, engine idle or not, since fewer and fuller runs save
  per-run overhead on that CPU for every request. Deadlines still cap the wait.
* Deadlines: never later than ``deadline - predicted_time(expected rows) * DEADLINE_SAFETY -
  DEADLINE_MARGIN_NS`` for the earliest deadline in the queue, so the batch grows only as large as the
  callers' deadlines allow.
* Until the cost model has seen ``CostModel.min_runs`` runs it knows no engine time: a busy engine
  falls back to Triton's rule.
"""

from __future__ import annotations

from sidecar.batching.cost_model import CostModel

NEXT_TURN = -1  # close_at_ns's answer for "decide again after one event-loop turn"
DEADLINE_SAFETY = 1.25  # predicted engine time is inflated by this much for deadline decisions
DEADLINE_MARGIN_NS = 1_000_000  # plus this: timer resolution (~1 ms in asyncio/uvloop), split, encode
LEAD_SHARE = 0.1  # the next batch is started this share of the running one's duration before it ends
OVERDUE_GRACE_NS = 2_000_000  # how long past its predicted finish a running batch still holds the next
BUSY_TURN_NS = 100_000  # an event-loop turn this long means the loop is busy (an idle turn takes ~10 us)
SATURATED = 0.05  # fixed cost below this share of the queued rows' cost: company saves too little to wait
EWMA = 0.125  # weight of a new sample in the arrival averages
MAX_GAP_NS = 1_000_000_000  # an idle spell counts as at most this gap between arrivals
P_BUSY_FLOOR = 0.01  # below this share of busy arrivals, no company is expected
P_BUSY_COMPANY = 0.1  # concurrent traffic: at least this share of arrivals found others pending
COMPANY_ODDS = 0.5  # ... and at least this many arrivals are expected while the window lasts
LOOP_BUSY = 0.5  # an event loop on the CPU this share of the time is a bottleneck worth batching for


class ArrivalStats:
    """Averages of the arrival process, updated once per request (exponentially weighted)."""

    __slots__ = ("count", "gap_ns", "last_ns", "p_busy", "rows_per_request")

    def __init__(self) -> None:
        self.gap_ns = float(MAX_GAP_NS)  # mean time between arrivals (the first gap seen replaces this)
        self.rows_per_request = 1.0
        self.p_busy = 0.0  # share of arrivals that found requests pending (queued or running)
        self.last_ns = 0
        self.count = 0

    def observe(self, arrival_ns: int, rows: int, busy: bool) -> None:
        count = self.count
        if count:
            gap = min(max(arrival_ns - self.last_ns, 0), MAX_GAP_NS)
            self.gap_ns = gap if count == 1 else self.gap_ns + (gap - self.gap_ns) * EWMA
            self.rows_per_request += (rows - self.rows_per_request) * EWMA
            self.p_busy += ((1.0 if busy else 0.0) - self.p_busy) * EWMA
        self.last_ns = arrival_ns
        self.count = count + 1

    def busy_gap_ns(self) -> float:
        """Expected time to the next arrival while requests are pending (inf when none come then)."""
        return self.gap_ns / self.p_busy if self.p_busy > P_BUSY_FLOOR else float("inf")


class ClosePolicy:
    """Decides when the next batch closes. Pure: all state comes in as arguments."""

    __slots__ = ("adaptive", "cost", "delay_ns", "max_rows")

    def __init__(self, max_rows: int, delay_ns: int, adaptive: bool, cost: CostModel) -> None:
        self.max_rows = max_rows
        self.delay_ns = delay_ns
        self.adaptive = adaptive
        self.cost = cost

    def close_at_ns(
        self,
        now_ns: int,
        requests: int,
        rows: int,
        head_arrival_ns: int,
        earliest_deadline_ns: int | None,
        running: int,
        earliest_finish: tuple[int, int] | None,
        merge_ns: float,
        arrivals: ArrivalStats,
        fresh_arrivals: int = 0,
        turn_ns: int = 0,
        loop_busy: float = 0.0,
    ) -> int:
        """When the batch that would start with the queue's head should close (ns, monotonic), or NEXT_TURN.

        ``earliest_finish``: (predicted finish, predicted duration) of the running batch that ends first;
        ``fresh_arrivals``: requests queued since the batcher last decided; ``turn_ns``: how long the
        event loop took to come back to the batcher after it asked for a turn (0: unknown);
        ``loop_busy``: the share of wall time the event loop's thread has recently spent on the CPU.
        """
        delay_close = head_arrival_ns + self.delay_ns
        if not self.adaptive:
            return delay_close
        cost = self.cost
        turn = False
        if loop_busy >= LOOP_BUSY and arrivals.p_busy >= P_BUSY_COMPANY:
            wait = delay_close  # concurrent traffic on a busy CPU: fewer, fuller runs save it for everyone
        elif running == 0:
            company = arrivals.p_busy >= P_BUSY_COMPANY and arrivals.gap_ns * COMPANY_ODDS <= delay_close - now_ns
            if company and cost.ready and cost.fixed_ns < SATURATED * cost.per_row_ns * rows:
                company = False
            if not company:
                wait = now_ns
            else:
                wait = min(arrivals.last_ns + int(2 * arrivals.gap_ns / arrivals.p_busy), delay_close)
                if wait <= now_ns and (fresh_arrivals > 0 or turn_ns >= BUSY_TURN_NS):
                    turn = True  # about to close, but requests are arriving: let the loop deliver them
        elif cost.ready and earliest_finish is not None:
            finish_ns, duration_ns = earliest_finish
            if now_ns < finish_ns:
                wait = finish_ns - int(merge_ns + LEAD_SHARE * duration_ns)
            else:
                wait = finish_ns + OVERDUE_GRACE_NS
        else:
            wait = delay_close
        if earliest_deadline_ns is not None:
            expected = float(rows)
            if wait > now_ns:
                expected += (wait - now_ns) / arrivals.gap_ns * arrivals.rows_per_request
            engine_ns = cost.predict_ns(min(expected, self.max_rows)) if cost.ready else 0.0
            latest = earliest_deadline_ns - int(engine_ns * DEADLINE_SAFETY) - DEADLINE_MARGIN_NS
            if latest <= now_ns:
                return latest
            if latest < wait:
                wait = latest
        return NEXT_TURN if turn else wait
