"""The shadow gate: how much shadow work the primary traffic can afford right now, measured on the primary.

Shadows are the lowest priority, so the signal is the primary's own health, not a proxy such as the
process's CPU share (which misses a box shared with other processes, or a saturated event loop while
the CPUs are half idle). The gate runs a small experiment continuously:

* Time is cut into cycles of ``cycle_s`` (100 ms). In the first part of a cycle (the *on* phase,
  ``share`` x 80 % of it) shadow copies may start; in the rest (the *off* phase, at least 20 %) none
  starts, so the copies queue (bounded; the overflow is dropped and counted).
* Primary requests the router answers are the samples: their latency, and the phase they started in.
  A request started in the off phase while no copy was running, and finished before any copy started,
  is *clean*: it saw no shadow work. One started in the on phase is *loaded*. Others are not counted.
  Both sets are sampled by time, not by overlap, so a slow request is not more likely to be "loaded".
  Not every request is timed: the router counts ``skip`` down (one integer per request) and calls
  ``primary_start`` only when it reaches 0; each sample sets ``skip`` to its phase's stride minus one.
  The strides (``stride_on``, ``stride_off``) are set each cycle from the last cycle's request rate
  and the next phases' lengths, so that each phase gets about ``_TARGET_SAMPLES`` timed requests
  (stride 1, every request, at low rates or in a short phase). The other requests pay no clock read
  and no call into the gate.
* At the end of a cycle, with enough samples of both kinds and at least one copy started (pooled
  over up to 10 cycles when the on phase is short): if the
  loaded requests' median latency exceeds the clean ones' by more than ``max_slowdown`` (5 %), shadow
  work hurts the primary and ``share`` halves (multiplicative decrease, down to ``min_share``, which
  keeps a little shadow work running so the gate keeps measuring); otherwise it grows by 0.1 (additive
  increase, up to 1). Without primary traffic there is nothing to protect and it grows too.

* Before the latency test, a saturation test: the event loop thread's CPU time over the cycle (every
  judgement reads the thread's clock once). A loop on the CPU for ``max_loop_busy`` (70 %) of the cycle
  or more is the primary's bottleneck: each microsecond a shadow copy spends on it is taken from live
  requests, so ``share`` halves (down to ``min_share``) without waiting for latency samples. The latency
  test alone misses this in a closed loop (a saturated client-server pair): shadow work during an on
  phase slows every request a little, the ones answered in the next off phase too, so the medians of
  the two phases differ less than the throughput lost (in the served c=64 benchmark the loop is busy
  about 85 % of the time, against 40 % at 40 % of that load).

So an idle or lightly loaded sidecar mirrors almost every copy (share 1: copies run 80 % of the time
and the queue absorbs the rest), while a saturated one, where every shadow copy takes capacity from
live requests, settles near ``min_share``: most copies are dropped and counted, and the primary keeps
its throughput and tail latency. ``share`` is the fraction of the time shadows may start, not a CPU
budget; a copy that runs long (a hanging shadow) holds its worker, which bounds it instead.

Concurrency: used on the event loop only (router and shadow workers); no locks.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

_ON_FRACTION = 0.8  # of a cycle at share 1; the rest is always off, to measure the clean baseline
_MIN_SAMPLES = 8  # of each kind (pooled over cycles if need be) before the gate judges
_INCREASE = 0.1
_MAX_CARRY = 10  # cycles whose samples may be pooled before a judgement (then they are dropped)
_TARGET_SAMPLES = 48  # primary requests timed per phase and cycle (strides set from the last cycle's rate)

# primary_start() tokens: started in the on phase / not counted; larger values are clean candidates
ON = 0
SKIP = -1


class ShadowGate:
    def __init__(
        self,
        cycle_s: float = 0.1,
        max_slowdown: float = 0.05,
        min_share: float = 0.03,
        max_loop_busy: float = 0.7,
        clock: Callable[[], int] = time.monotonic_ns,
        cpu_clock: Callable[[], int] = time.thread_time_ns,
    ) -> None:
        self._cycle_ns = max(1, int(cycle_s * 1e9))
        self._max_ratio = 1.0 + max(0.0, max_slowdown)
        self.min_share = min(1.0, max(0.0, min_share))
        self.share = 1.0
        self._clock = clock
        self._cpu_clock = cpu_clock  # read on the event loop's thread (every caller of _judge runs there)
        self.max_loop_busy = max_loop_busy if max_loop_busy > 0 else float("inf")
        self._cycle_cpu: int | None = None  # the loop thread's CPU clock at the last judgement (none yet)
        self.loop_busy = 0.0  # the loop thread's share of the last cycle's wall time on the CPU
        self.saturated = 0  # judgements that cut the share because the loop was saturated
        self.running = 0  # shadow copies running now
        # primary requests the router lets through untimed before the next sample (it counts down)
        self.skip = 0
        self.stride_on = 1  # one request in ``stride_on`` is timed in the on phase (set per cycle)
        self.stride_off = 1  # ... and one in ``stride_off`` in the off phase
        self._requests = 0  # primary requests started this cycle, as counted by the samples
        self._starts = 0  # shadow copies started, ever (an epoch: did one start during a request?)
        self._cycle_start = self._on_until = self._cycle_end = 0
        self._new_cycle(clock())
        # this cycle's samples: latencies (ns) of loaded and clean primary requests
        self._on: list[int] = []
        self._off: list[int] = []
        self._copies = 0
        self._carried = 0  # cycles pooled into the current samples
        # what the last judged cycles said (for tests, status and the benchmark)
        self.cycles = 0
        self.decreases = 0
        self.increases = 0
        self.last_ratio = 0.0

    # -- the primary's side (the router) --------------------------------------------------------
    def primary_start(self) -> int:
        """Call as a sampled primary request starts (``skip`` reached 0); pass the token to ``primary_end``."""
        now = self._clock()
        if now >= self._cycle_end:
            self._judge(now)
        if now < self._on_until:
            stride = self.stride_on
            self._requests += stride
            self.skip = stride - 1
            return ON
        stride = self.stride_off
        self._requests += stride
        self.skip = stride - 1
        return self._starts + 1 if self.running == 0 else SKIP

    def primary_end(self, token: int, latency_ns: int) -> None:
        if token == ON:
            self._on.append(latency_ns)
        elif token > 0 and token == self._starts + 1 and self.running == 0:
            self._off.append(latency_ns)

    # -- the shadows' side (the workers) --------------------------------------------------------
    def wait_ns(self) -> int:
        """0 when a copy may start now, else how long until the next on phase."""
        now = self._clock()
        if now >= self._cycle_end:
            self._judge(now)
        if now < self._on_until:
            return 0
        return self._cycle_end - now

    def cycle_left_ns(self) -> int:
        """How long until the current cycle ends, where the next on phase begins."""
        now = self._clock()
        if now >= self._cycle_end:
            self._judge(now)
        return self._cycle_end - now

    def started(self) -> None:
        self.running += 1
        self._starts += 1
        self._copies += 1

    def finished(self) -> None:
        self.running -= 1

    # -- control --------------------------------------------------------------------------------
    def _judge(self, now: int) -> None:
        on, off = self._on, self._off
        on_n, off_n = len(on), len(off)
        self._carried += 1
        requests = self._requests  # about as many primary requests started since the cycle began
        elapsed = now - self._cycle_start
        self._requests = 0
        cpu, last = self._cpu_clock(), self._cycle_cpu
        self._cycle_cpu = cpu
        self.loop_busy = 0.0 if last is None else (cpu - last) / max(1, elapsed)
        if requests < _MIN_SAMPLES and on_n + off_n < _MIN_SAMPLES:
            self.share = min(1.0, self.share + _INCREASE)  # (almost) no primary traffic to protect
        elif self.loop_busy >= self.max_loop_busy:
            # The loop is the primary's bottleneck: shadow work there is taken from live requests.
            self.share = max(self.min_share, self.share * 0.5)
            self.decreases += 1
            self.saturated += 1
        elif self._copies and on_n >= _MIN_SAMPLES and off_n >= _MIN_SAMPLES:
            self.cycles += 1
            self.last_ratio = statistics.median(on) / max(1.0, statistics.median(off))
            if self.last_ratio > self._max_ratio:
                self.share = max(self.min_share, self.share * 0.5)
                self.decreases += 1
            else:
                self.share = min(1.0, self.share + _INCREASE)
                self.increases += 1
        elif self._carried < _MAX_CARRY:
            # Too few samples of one kind (a short on phase at a low share), or no copy ran yet:
            # keep this cycle's samples for the next judgement and keep the share meanwhile.
            self._new_cycle(now, requests, elapsed)
            return
        self._on = []
        self._off = []
        self._copies = 0
        self._carried = 0
        self._new_cycle(now, requests, elapsed)

    def _new_cycle(self, now: int, requests: int = 0, elapsed_ns: int = 1) -> None:
        """Start a cycle at ``now``. ``requests`` started in the last ``elapsed_ns``: the rate that sets
        the strides, so that each phase of this cycle gets about ``_TARGET_SAMPLES`` timed requests."""
        on_ns = int(self._cycle_ns * _ON_FRACTION * self.share)
        self._cycle_start = now
        self._cycle_end = now + self._cycle_ns
        self._on_until = now + on_ns
        per = max(1, elapsed_ns) * _TARGET_SAMPLES  # requests per phase = requests * phase_ns / elapsed_ns
        self.stride_on = max(1, requests * on_ns // per)
        self.stride_off = max(1, requests * (self._cycle_ns - on_ns) // per)
