"""Distribution functions the drift tests need, in plain Python (no SciPy at run time).

* ``chi2_sf(x, df)``: the chi-square survival function, i.e. the regularized upper incomplete gamma
  function Q(df/2, x/2), by its power series below ``a + 1`` and its continued fraction above.
* ``chi2_isf(alpha, df)``: the critical value with ``chi2_sf(value, df) == alpha`` (bisection; cached,
  since thresholds are asked for the same few (alpha, df) pairs over and over).
* ``kolmogorov_sf(t)``: P(K > t) for the Kolmogorov distribution (the asymptotic law of sqrt(n) D).
* ``kolmogorov_isf(alpha)``: its inverse, the c(alpha) of the two-sample KS critical value
  ``c(alpha) * sqrt(1/n + 1/m)``.

The tests compare every function with SciPy as the oracle.
"""

from __future__ import annotations

import math
from functools import lru_cache

_EPS = 1e-15
_MAX_ITER = 1000


def _gamma_p_series(a: float, x: float) -> float:
    """Regularized lower incomplete gamma P(a, x) by its power series (converges fast for x < a + 1)."""
    term = 1.0 / a
    total = term
    n = a
    for _ in range(_MAX_ITER):
        n += 1.0
        term *= x / n
        total += term
        if abs(term) < abs(total) * _EPS:
            break
    return total * math.exp(-x + a * math.log(x) - math.lgamma(a))


def _gamma_q_fraction(a: float, x: float) -> float:
    """Regularized upper incomplete gamma Q(a, x) by its continued fraction (modified Lentz), x >= a + 1."""
    tiny = 1e-300
    b = x + 1.0 - a
    c = 1.0 / tiny
    d = 1.0 / b
    h = d
    for i in range(1, _MAX_ITER):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        if abs(d) < tiny:
            d = tiny
        c = b + an / c
        if abs(c) < tiny:
            c = tiny
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < _EPS:
            break
    return math.exp(-x + a * math.log(x) - math.lgamma(a)) * h


def chi2_sf(x: float, df: float) -> float:
    """P(X > x) for X ~ chi-square with ``df`` degrees of freedom."""
    if df <= 0:
        raise ValueError(f"degrees of freedom must be positive, not {df}")
    if math.isnan(x):
        return math.nan
    if x <= 0:
        return 1.0
    if math.isinf(x):
        return 0.0
    a, y = df / 2.0, x / 2.0
    if y < a + 1.0:
        return min(1.0, max(0.0, 1.0 - _gamma_p_series(a, y)))
    return min(1.0, max(0.0, _gamma_q_fraction(a, y)))


@lru_cache(maxsize=4096)
def chi2_isf(alpha: float, df: float) -> float:
    """The value ``x`` with ``chi2_sf(x, df) == alpha`` (0 < alpha < 1)."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), not {alpha}")
    lo, hi = 0.0, max(1.0, 2.0 * df)
    while chi2_sf(hi, df) > alpha:
        lo, hi = hi, hi * 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if chi2_sf(mid, df) > alpha:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


def kolmogorov_sf(t: float) -> float:
    """P(K > t) for the Kolmogorov distribution."""
    if math.isnan(t):
        return math.nan
    if t <= 0:
        return 1.0
    if t < 1.0:
        # CDF = sqrt(2 pi)/t * sum_k exp(-(2k-1)^2 pi^2 / (8 t^2)): converges fast for small t.
        s = 0.0
        for k in range(1, 50):
            term = math.exp(-((2 * k - 1) ** 2) * math.pi**2 / (8.0 * t * t))
            s += term
            if term < 1e-17:
                break
        return min(1.0, max(0.0, 1.0 - math.sqrt(2.0 * math.pi) / t * s))
    # SF = 2 * sum_k (-1)^(k-1) exp(-2 k^2 t^2): converges fast for t >= 1.
    s = 0.0
    for k in range(1, 100):
        term = math.exp(-2.0 * k * k * t * t)
        s += term if k % 2 else -term
        if term < 1e-17:
            break
    return min(1.0, max(0.0, 2.0 * s))


@lru_cache(maxsize=256)
def kolmogorov_isf(alpha: float) -> float:
    """The ``t`` with ``kolmogorov_sf(t) == alpha`` (0 < alpha < 1); e.g. 1.358 for alpha 0.05."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), not {alpha}")
    lo, hi = 0.0, 10.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if kolmogorov_sf(mid) > alpha:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-13:
            break
    return 0.5 * (lo + hi)
