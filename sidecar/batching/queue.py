"""The per-version request queue: priority levels, arrival order, shape groups, deadlines.

Order. Requests are served by priority level, then by arrival. Levels follow Triton's ``priority``
parameter: 1 is the most urgent level and larger numbers are less urgent; 0 (or no parameter) is the
*default* level, which is served as level 1. So traffic that sets no priority is never overtaken, and
a client can only demote its own requests (the shadow mirror uses a very large number).

Groups. Requests whose non-batch dimensions differ cannot share one tensor. Each entry carries a
``key`` (its inputs' non-batch shapes, or None when the model has no variable non-batch dimension);
a batch takes only entries whose key equals that of the first entry it takes; the others keep their
place for the next batch.

Dead entries. A caller that is cancelled, or a request that expires while queued, is marked GONE and
left in its deque (removing from the middle of a deque is O(n)); ``count``/``rows`` exclude it at once
and the scans skip it. Everything here runs on the event loop thread: no locks.
"""

from __future__ import annotations

import asyncio
from bisect import insort
from collections import deque
from typing import Any

import numpy as np

from sidecar.batching.scheduler import WorkItem

QUEUED, TAKEN, GONE = 0, 1, 2
DEFAULT_PRIORITY_LEVEL = 1
_NO_DEADLINE = 1 << 62
_NO_KEY = object()
_COMPACT_MIN = 64  # discarded entries tolerated in the deques before compacting


def priority_level(priority: int) -> int:
    """The queue level of a request's ``priority`` parameter: 0 (default) is served as 1, the most urgent."""
    return priority if priority > 0 else DEFAULT_PRIORITY_LEVEL


class Entry:
    """One queued request and the future its caller awaits."""

    __slots__ = ("deadline_ns", "future", "item", "key", "rows", "state")

    def __init__(self, item: WorkItem, future: asyncio.Future[dict[str, np.ndarray]], key: Any) -> None:
        self.item = item
        self.future = future
        self.rows = item.rows
        self.key = key
        self.deadline_ns = item.request.deadline_ns
        self.state = QUEUED


class RequestQueue:
    """Entries by priority level (ascending), FIFO within a level."""

    def __init__(self) -> None:
        self._levels: dict[int, deque[Entry]] = {}
        self._order: list[int] = []  # levels present, most urgent first
        self.count = 0  # live (QUEUED) entries
        self.rows = 0  # their rows
        self._dead = 0  # discarded entries still sitting in the deques
        self._min_deadline = _NO_DEADLINE
        self._deadline_stale = False

    def __len__(self) -> int:
        return self.count

    # -- in and out ---------------------------------------------------------------------------
    def push(self, entry: Entry, level: int) -> None:
        dq = self._levels.get(level)
        if dq is None:
            dq = self._levels[level] = deque()
            insort(self._order, level)
        dq.append(entry)
        self.count += 1
        self.rows += entry.rows
        d = entry.deadline_ns
        if d is not None and d < self._min_deadline:
            self._min_deadline = d

    def _remove(self, entry: Entry, state: int) -> None:
        entry.state = state
        self.count -= 1
        self.rows -= entry.rows
        if entry.deadline_ns == self._min_deadline:
            self._deadline_stale = True

    def discard(self, entry: Entry) -> bool:
        """Forget a queued entry (its caller was cancelled). False if it already left the queue.

        The entry stays in its deque until a scan passes it; once discarded entries outnumber live
        ones (callers cancelling while the engine is stuck), the deques are compacted, so memory stays
        bounded by the live queue, not by the number of cancellations."""
        if entry.state != QUEUED:
            return False
        self._remove(entry, GONE)
        self._dead += 1
        if self._dead > max(_COMPACT_MIN, self.count):
            self._compact()
        return True

    def _compact(self) -> None:
        for level in tuple(self._order):
            kept = deque(e for e in self._levels[level] if e.state == QUEUED)
            if kept:
                self._levels[level] = kept
            else:
                del self._levels[level]
                self._order.remove(level)
        self._dead = 0

    def _forget(self, entry: Entry) -> None:
        """A dead entry popped from a deque."""
        if entry.state == GONE and self._dead:
            self._dead -= 1

    def head(self) -> Entry | None:
        """The entry a batch would start with: most urgent level, oldest first."""
        for level in self._order:
            dq = self._levels[level]
            while dq and dq[0].state != QUEUED:
                self._forget(dq.popleft())
            if dq:
                return dq[0]
        return None

    def take(self, now_ns: int, limit_rows: int, expired: list[Entry]) -> tuple[list[Entry], int]:
        """Pop the next batch: compatible entries in order, up to ``limit_rows`` rows.

        Entries found expired on the way are popped into ``expired`` for the caller to answer. The
        batch stops at the first compatible entry that does not fit (no overtaking by smaller ones).
        """
        batch: list[Entry] = []
        rows = 0
        key: Any = _NO_KEY
        full = False
        for level in tuple(self._order):
            dq = self._levels[level]
            skipped: list[Entry] = []
            while dq:
                e = dq[0]
                if e.state != QUEUED:
                    self._forget(dq.popleft())
                    continue
                d = e.deadline_ns
                if d is not None and d <= now_ns:
                    dq.popleft()
                    self._remove(e, GONE)
                    expired.append(e)
                    continue
                if key is _NO_KEY:
                    key = e.key
                elif e.key != key:
                    skipped.append(dq.popleft())
                    continue
                if batch and rows + e.rows > limit_rows:
                    full = True
                    break
                dq.popleft()
                self._remove(e, TAKEN)
                batch.append(e)
                rows += e.rows
                if rows >= limit_rows:
                    full = True
                    break
            if skipped:
                dq.extendleft(reversed(skipped))
            if not dq:
                del self._levels[level]
                self._order.remove(level)
            if full:
                break
        if not self.count:
            self._min_deadline, self._deadline_stale = _NO_DEADLINE, False
        return batch, rows

    # -- deadlines ----------------------------------------------------------------------------
    def earliest_deadline(self) -> int | None:
        """The earliest deadline among queued entries (None if none has one)."""
        if self._deadline_stale:
            self._rescan()
        return None if self._min_deadline == _NO_DEADLINE else self._min_deadline

    def _rescan(self) -> None:
        m = _NO_DEADLINE
        for dq in self._levels.values():
            for e in dq:
                d = e.deadline_ns
                if e.state == QUEUED and d is not None and d < m:
                    m = d
        self._min_deadline = m
        self._deadline_stale = False

    def due(self, now_ns: int) -> bool:
        """Whether some queued entry may have expired (cheap; may say yes spuriously once)."""
        return self._min_deadline <= now_ns

    def expire(self, now_ns: int) -> list[Entry]:
        """Remove and return every queued entry whose deadline has passed; drop dead entries."""
        expired: list[Entry] = []
        for level in tuple(self._order):
            kept: deque[Entry] = deque()
            for e in self._levels[level]:
                if e.state != QUEUED:
                    continue
                d = e.deadline_ns
                if d is not None and d <= now_ns:
                    self._remove(e, GONE)
                    expired.append(e)
                else:
                    kept.append(e)
            if kept:
                self._levels[level] = kept
            else:
                del self._levels[level]
                self._order.remove(level)
        self._dead = 0
        self._rescan()
        return expired

    # -- preferred batch sizes ----------------------------------------------------------------
    def preferred_target(self, preferred: frozenset[int], max_rows: int) -> int:
        """The largest preferred size that the queued entries, taken in order, add up to exactly (0 if none)."""
        best = 0
        rows = 0
        for level in self._order:
            for e in self._levels[level]:
                if e.state != QUEUED:
                    continue
                rows += e.rows
                if rows > max_rows:
                    return best
                if rows in preferred:
                    best = rows
        return best
