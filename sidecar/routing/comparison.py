"""Shadow-versus-primary comparison statistics, per shadow version, over tumbling time windows.

For every mirrored request whose shadow answered, the outputs both versions produced are compared:

- classifiers: the share of rows whose predicted class agrees. The predicted class is an integer
  output of shape ``[batch]`` (a label) when the model has one, else the arg-max over the last axis of
  a floating-point output of shape ``[batch, classes]`` (probabilities or logits);
- every numeric output: the mean and the max absolute difference, element-wise (except 1-D integer
  outputs, which are class labels: a difference between two class ids means nothing, agreement does);
- latency: the shadow's latency minus the primary's, mean and max;
- errors: shadow failures, timeouts and "mismatches" (missing outputs, other shapes, NaN where the
  primary has a number) over the copies that ran; copies dropped because the shadow queue was full.

Only the shadow workers and the request path update these (on the event loop), so no lock is needed;
readers take ``snapshot()`` values, which are immutable. The request path only bumps two integers
(``count_mirrored``, ``count_dropped``: no clock read); they are added to the window open at the next
update or read (a worker's result, a report), so near a window's end a copy may be counted in the next.
Beside the windows, ``cumulative()`` holds every figure since the shadow was configured, only ever
added to: metric collections read it from their own threads (``sidecar.telemetry.shadow_metrics``).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class ShadowSnapshot:
    """Comparison figures for one window (or the total since the shadow was configured)."""

    start_unix_s: float
    duration_s: float
    mirrored: int  # copies queued
    dropped: int  # copies refused because the shadow queue was full
    completed: int  # copies that got an answer from the shadow
    errors: int
    timeouts: int
    mismatches: int
    compared_rows: int
    class_rows: int
    agreement: float  # NaN when no classifier output was compared
    mean_abs_diff: float  # NaN when nothing numeric was compared
    max_abs_diff: float
    mean_latency_diff_ms: float  # shadow minus primary; NaN when no shadow answered
    max_latency_diff_ms: float
    mean_shadow_latency_ms: float
    agreed_rows: int = 0  # of class_rows, those whose predicted class agreed

    @property
    def ran(self) -> int:
        return self.completed + self.errors + self.timeouts

    @property
    def error_rate(self) -> float:
        return (self.errors + self.timeouts) / self.ran if self.ran else math.nan


class _Window:
    __slots__ = (
        "agree",
        "class_rows",
        "compared_rows",
        "completed",
        "diff_elements",
        "diff_sum",
        "dropped",
        "errors",
        "latency_diff_max_ns",
        "latency_diff_sum_ns",
        "max_abs_diff",
        "mirrored",
        "mismatches",
        "shadow_latency_sum_ns",
        "start",
        "timeouts",
    )

    def __init__(self, start: float) -> None:
        self.start = start
        self.mirrored = self.dropped = self.completed = self.errors = self.timeouts = self.mismatches = 0
        self.compared_rows = self.class_rows = self.agree = self.diff_elements = 0
        self.diff_sum = 0.0
        self.max_abs_diff = 0.0
        self.latency_diff_sum_ns = 0
        self.latency_diff_max_ns = -(1 << 62)
        self.shadow_latency_sum_ns = 0

    def snapshot(self, end: float) -> ShadowSnapshot:
        nan = math.nan
        return ShadowSnapshot(
            start_unix_s=self.start,
            duration_s=max(0.0, end - self.start),
            mirrored=self.mirrored,
            dropped=self.dropped,
            completed=self.completed,
            errors=self.errors,
            timeouts=self.timeouts,
            mismatches=self.mismatches,
            compared_rows=self.compared_rows,
            class_rows=self.class_rows,
            agreement=self.agree / self.class_rows if self.class_rows else nan,
            mean_abs_diff=self.diff_sum / self.diff_elements if self.diff_elements else nan,
            max_abs_diff=self.max_abs_diff if self.diff_elements else nan,
            mean_latency_diff_ms=self.latency_diff_sum_ns / self.completed / 1e6 if self.completed else nan,
            max_latency_diff_ms=self.latency_diff_max_ns / 1e6 if self.completed else nan,
            mean_shadow_latency_ms=self.shadow_latency_sum_ns / self.completed / 1e6 if self.completed else nan,
            agreed_rows=self.agree,
        )


class ShadowStats:
    """The windows of one (model, shadow version). ``window_s`` long, the last ``keep`` kept."""

    def __init__(self, model: str, version: str, window_s: float = 60.0, keep: int = 10) -> None:
        self.model = model
        self.version = version
        self.window_s = window_s
        self._closed: deque[ShadowSnapshot] = deque(maxlen=max(1, keep))
        now = time.time()
        self._current = _Window(now)
        self._cum = _Window(now)  # since configured, only added to (the windows' figures, mirrored and dropped aside)
        # Counted on the request path (never reset), added to the windows at their next update: the
        # windows have ``_synced_*`` of them (see the module docstring).
        self.mirrored_count = 0
        self.dropped_count = 0
        self._synced_mirrored = 0
        self._synced_dropped = 0

    def _window(self) -> _Window:
        now = time.time()
        current = self._current
        mirrored, dropped = self.mirrored_count, self.dropped_count
        if mirrored != self._synced_mirrored or dropped != self._synced_dropped:
            current.mirrored += mirrored - self._synced_mirrored
            current.dropped += dropped - self._synced_dropped
            self._synced_mirrored, self._synced_dropped = mirrored, dropped
        if now - current.start >= self.window_s:
            # Close the finished window (and skip empty ones the clock jumped over).
            self._closed.append(current.snapshot(current.start + self.window_s))
            elapsed = int((now - current.start) // self.window_s)
            current = self._current = _Window(current.start + elapsed * self.window_s)
        return current

    # -- recording (shadow workers and the mirror, on the event loop) -----------------------------
    def record_mirrored(self) -> None:
        self._window().mirrored += 1
        self.mirrored_count += 1
        self._synced_mirrored += 1

    def record_dropped(self) -> None:
        self._window().dropped += 1
        self.dropped_count += 1
        self._synced_dropped += 1

    def count_mirrored(self) -> None:
        """``record_mirrored`` for the request path: no clock read (the window gets it at its next update)."""
        self.mirrored_count += 1

    def count_dropped(self) -> None:
        """``record_dropped`` for the request path: no clock read (the window gets it at its next update)."""
        self.dropped_count += 1

    def record_error(self, timeout: bool = False) -> None:
        for w in (self._window(), self._cum):
            if timeout:
                w.timeouts += 1
            else:
                w.errors += 1

    def record_result(
        self,
        primary: Mapping[str, np.ndarray],
        shadow: Mapping[str, np.ndarray],
        primary_latency_ns: int,
        shadow_latency_ns: int,
    ) -> None:
        result = compare_outputs(primary, shadow)
        diff = shadow_latency_ns - primary_latency_ns
        for w in (self._window(), self._cum):
            w.completed += 1
            w.latency_diff_sum_ns += diff
            w.latency_diff_max_ns = max(w.latency_diff_max_ns, diff)
            w.shadow_latency_sum_ns += shadow_latency_ns
            _add(w, result)

    def record_batch(
        self,
        primaries: Sequence[Mapping[str, np.ndarray]],
        shadow: Mapping[str, np.ndarray],
        rows: Sequence[int],
        primary_latency_ns: Sequence[int],
        shadow_latency_ns: int,
    ) -> None:
        """Copies that ran joined in one request: ``shadow`` holds their outputs, ``rows[i]`` rows each.

        The figures are those of ``record_result`` per copy (each copy's shadow latency is the batch's),
        computed on the joined arrays in one pass when every copy's outputs line up; otherwise (a
        mismatch somewhere) copy by copy, so mismatches are still counted per copy."""
        windows = (self._window(), self._cum)
        for w in windows:
            w.completed += len(primaries)
            for primary_ns in primary_latency_ns:
                diff = shadow_latency_ns - primary_ns
                w.latency_diff_sum_ns += diff
                w.latency_diff_max_ns = max(w.latency_diff_max_ns, diff)
            w.shadow_latency_sum_ns += shadow_latency_ns * len(primaries)
        joined = _join(primaries)
        if joined is not None:
            result = compare_outputs(joined, shadow)
            if not result.mismatch:
                for w in windows:
                    _add(w, result)
                return
        total = sum(rows)
        offset = 0
        for primary, n in zip(primaries, rows, strict=True):
            part = {k: v[offset : offset + n] if v.ndim and v.shape[0] == total else v for k, v in shadow.items()}
            result = compare_outputs(primary, part)
            for w in windows:
                _add(w, result)
            offset += n

    # -- reading -------------------------------------------------------------------------------
    def current(self) -> ShadowSnapshot:
        return self._window().snapshot(time.time())

    def windows(self) -> tuple[ShadowSnapshot, ...]:
        """Closed windows, oldest first, then the current (open) one."""
        self._window()
        return (*self._closed, self._current.snapshot(time.time()))

    def cumulative(self) -> ShadowSnapshot:
        """Every figure since the shadow was configured, safe to read from any thread: made from totals
        that are only ever added to (a collection may miss the last few updates, never count one twice)."""
        snap = self._cum.snapshot(time.time())
        return dataclasses.replace(snap, mirrored=self.mirrored_count, dropped=self.dropped_count)

    def total(self) -> ShadowSnapshot:
        """Since the shadow was configured (``cumulative()``, with the request path's counts up to now)."""
        self._window()
        return self.cumulative()


def _add(w: _Window, result: Comparison) -> None:
    if result.mismatch:
        w.mismatches += 1
    w.compared_rows += result.rows
    w.class_rows += result.class_rows
    w.agree += result.agree
    w.diff_elements += result.elements
    w.diff_sum += result.abs_diff_sum
    w.max_abs_diff = max(w.max_abs_diff, result.max_abs_diff)


def _join(outputs: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray] | None:
    """The copies' outputs concatenated row-wise, or None when their names or shapes do not line up."""
    first = outputs[0]
    if any(other.keys() != first.keys() for other in outputs) or not all(v.ndim for v in first.values()):
        return None
    try:
        return {k: np.concatenate([o[k] for o in outputs]) for k in first}
    except ValueError:  # other trailing shapes that cannot be joined
        return None


@dataclass(frozen=True, slots=True)
class Comparison:
    rows: int = 0
    class_rows: int = 0
    agree: int = 0
    elements: int = 0
    abs_diff_sum: float = 0.0
    max_abs_diff: float = 0.0
    mismatch: bool = False


def predicted_class(outputs: Mapping[str, np.ndarray]) -> np.ndarray | None:
    """The per-row predicted class of a classifier's outputs, or None if they do not look like one."""
    for array in outputs.values():
        if array.dtype.kind in "iu" and array.ndim == 1:
            return array
    for array in outputs.values():
        if array.dtype.kind == "f" and array.ndim == 2 and array.shape[1] > 1:
            return np.argmax(array, axis=1)
    return None


def compare_outputs(primary: Mapping[str, np.ndarray], shadow: Mapping[str, np.ndarray]) -> Comparison:
    """Compare a shadow's outputs with the primary's (see the module docstring)."""
    mismatch = False
    elements = 0
    diff_sum = 0.0
    max_diff = 0.0
    rows = 0
    for name, p in primary.items():
        s = shadow.get(name)
        if s is None or s.shape != p.shape:
            mismatch = True
            continue
        rows = max(rows, p.shape[0] if p.ndim else 1)
        if p.dtype.kind in "iu" and p.ndim == 1:
            continue  # a label: compared by agreement below
        if p.dtype.kind not in "biuf" or s.dtype.kind not in "biuf" or p.size == 0:
            if p.dtype.kind in "OSU" and not np.array_equal(p, s):
                mismatch = True
            continue
        d = np.abs(p.astype(np.float64, copy=False) - s.astype(np.float64, copy=False))
        if not np.isfinite(d).all():
            bad = ~np.isfinite(d)
            if (np.isfinite(p.astype(np.float64, copy=False)) & bad).any():
                mismatch = True
            d = d[~bad]
            if d.size == 0:
                continue
        elements += d.size
        diff_sum += float(d.sum())
        max_diff = max(max_diff, float(d.max()))
    if set(shadow) - set(primary):
        mismatch = True
    class_rows = agree = 0
    pc = predicted_class(primary)
    sc = predicted_class({k: shadow[k] for k in primary if k in shadow}) if pc is not None else None
    if pc is not None and sc is not None and pc.shape == sc.shape:
        class_rows = int(pc.size)
        agree = int(np.count_nonzero(pc == sc))
    return Comparison(rows, class_rows, agree, elements, diff_sum, max_diff, mismatch)
