"""When to close a batch: Triton's rule, or the adaptive rule driven by the cost model and deadlines.

The batcher asks ``close_at_ns`` only when a batch slot is free and something is queued; the answer
is a time on the ``time.monotonic_ns`` clock (<= now: close now). Full batches (``max_batch_size``
rows) and reachable preferred sizes close at once in both modes; those checks live in the batcher.

Triton's rule (``adaptive = false``): the oldest queued request may wait ``max_queue_delay_ms`` for
company, then the batch closes with whatever is queued.

Adaptive rule (``adaptive = true``):

* Engine idle (no batch running): close now, unless company is expected soon enough to pay for the
  wait: the queued requests would together wait about ``requests * gap`` for the next arrival (``gap``
  = mean time between arrivals), and that arrival, joining this batch, saves one engine run's fixed
  cost (``CostModel.fixed_ns``). Wait only while ``requests * gap < fixed_ns``, never past
  ``max_queue_delay_ms``. A lone request on an idle engine therefore never waits for company.
* Engine busy (a batch running, another slot free): a batch started now would mostly wait for the
  device anyway, so hold it until the running batch is predicted to finish (minus the time a merge
  takes), letting it grow meanwhile; the running batch's completion wakes the batcher at once. This
  hold may exceed ``max_queue_delay_ms``: it costs the queued requests (almost) nothing.
* Deadlines: never later than ``deadline - predicted_time(expected rows) * DEADLINE_SAFETY -
  DEADLINE_MARGIN_NS`` for the earliest deadline in the queue, so the batch grows only as large as the
  callers' deadlines allow.
* Until the cost model has seen ``CostModel.min_runs`` runs it knows no engine time: an idle engine
  closes at once and a busy one falls back to Triton's rule.
"""

from __future__ import annotations

from sidecar.batching.cost_model import CostModel

DEADLINE_SAFETY = 1.25  # predicted engine time is inflated by this much for deadline decisions
DEADLINE_MARGIN_NS = 1_000_000  # plus this: timer resolution (~1 ms in asyncio/uvloop), split, encode


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
        earliest_finish_ns: int | None,
        last_arrival_ns: int,
        gap_ns: float,
        rows_per_request: float,
        merge_ns: float,
    ) -> int:
        """When the batch that would start with the queue's head should close (ns, monotonic clock)."""
        delay_close = head_arrival_ns + self.delay_ns
        if not self.adaptive:
            return delay_close
        cost = self.cost
        if running == 0:
            if not cost.ready or requests * gap_ns >= cost.fixed_ns:
                return now_ns
            wait = min(last_arrival_ns + int(2 * gap_ns), delay_close)
        elif cost.ready and earliest_finish_ns is not None:
            wait = earliest_finish_ns - int(merge_ns)
        else:
            wait = delay_close
        if earliest_deadline_ns is not None:
            expected = float(rows)
            if wait > now_ns and gap_ns > 0:
                expected += (wait - now_ns) / gap_ns * rows_per_request
            engine_ns = cost.predict_ns(min(expected, self.max_rows)) if cost.ready else 0.0
            latest = earliest_deadline_ns - int(engine_ns * DEADLINE_SAFETY) - DEADLINE_MARGIN_NS
            if latest < wait:
                wait = latest
        return wait
