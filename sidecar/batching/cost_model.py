"""A learned model of the engine's compute time as a function of batch rows, refitted as it runs.

    time(rows) ~= fixed_ns + per_row_ns * rows

fitted by least squares over every observed engine run, each weighted by ``0.5 ** (age / half_life_runs)``
so the model follows the engine when its speed changes (a GPU clocking down, a neighbour stealing CPU).
The fit is kept as five exponentially decayed sums, so ``observe`` and ``predict_ns`` are O(1) and
allocation-free: cheap enough to run after every batch on the event loop.

When every run so far had the same size the slope cannot be separated from the intercept; the model
then predicts proportionally to rows (never below the observed mean), which over-estimates larger
batches: the safe side for deadline decisions.
"""

from __future__ import annotations

import math

_DEGENERATE = 1e-9  # relative variance of the observed sizes under which no slope is fitted


class CostModel:
    """Engine time in nanoseconds for a batch of ``rows``; ``ready`` once ``min_runs`` were observed."""

    __slots__ = (
        "_decay",
        "_mean_ns",
        "_mean_rows",
        "_proportional",
        "_s_n",
        "_s_nn",
        "_s_nt",
        "_s_t",
        "_w",
        "fixed_ns",
        "min_runs",
        "per_row_ns",
        "runs",
    )

    def __init__(self, half_life_runs: float = 256.0, min_runs: int = 4) -> None:
        if half_life_runs <= 0:
            raise ValueError("half_life_runs must be positive")
        self._decay = 0.5 ** (1.0 / half_life_runs)
        self.min_runs = min_runs
        self._w = self._s_n = self._s_nn = self._s_t = self._s_nt = 0.0
        self._mean_ns = self._mean_rows = 0.0
        self._proportional = True
        self.fixed_ns = 0.0
        self.per_row_ns = 0.0
        self.runs = 0

    @property
    def ready(self) -> bool:
        return self.runs >= self.min_runs

    def observe(self, rows: int, ns: float) -> None:
        """Record one engine run of ``rows`` rows that took ``ns`` nanoseconds, and refit."""
        if rows <= 0 or ns < 0 or not math.isfinite(ns):
            return
        d = self._decay
        self._w = self._w * d + 1.0
        self._s_n = self._s_n * d + rows
        self._s_nn = self._s_nn * d + rows * rows
        self._s_t = self._s_t * d + ns
        self._s_nt = self._s_nt * d + rows * ns
        self.runs += 1
        self._fit()

    def _fit(self) -> None:
        w, s_n, s_nn, s_t, s_nt = self._w, self._s_n, self._s_nn, self._s_t, self._s_nt
        self._mean_rows = s_n / w
        self._mean_ns = s_t / w
        variance = w * s_nn - s_n * s_n
        if variance <= _DEGENERATE * w * s_nn:
            self._proportional = True
            self.fixed_ns = self._mean_ns
            self.per_row_ns = self._mean_ns / self._mean_rows
            return
        self._proportional = False
        slope = (w * s_nt - s_n * s_t) / variance
        intercept = (s_t - slope * s_n) / w
        if slope < 0:  # noise: bigger batches are not really faster; flat model
            slope, intercept = 0.0, self._mean_ns
        elif intercept < 0:  # refit through the origin
            slope, intercept = s_nt / s_nn, 0.0
        self.per_row_ns = slope
        self.fixed_ns = intercept

    def predict_ns(self, rows: float) -> float:
        """Predicted engine time for ``rows`` rows (0 before the first observation)."""
        if self.runs == 0:
            return 0.0
        if self._proportional:
            return self._mean_ns * max(1.0, rows / self._mean_rows)
        return self.fixed_ns + self.per_row_ns * rows

    def __repr__(self) -> str:
        return (
            f"CostModel(fixed={self.fixed_ns / 1e3:.1f}us, per_row={self.per_row_ns / 1e3:.2f}us, "
            f"runs={self.runs}, proportional={self._proportional})"
        )
