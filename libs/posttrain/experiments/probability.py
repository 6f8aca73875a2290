"""The distributions the experiment statistics need, written out so that the library adds no
dependency (no scipy): the normal from the standard library, Student's t through the
regularized incomplete beta function, and the Wilson score interval.

Accuracy: the t tail agrees with mpmath's exact value to a relative 1e-10 or better up to
T_NORMAL_DF degrees of freedom; beyond that the normal is used, which differs from t by
less than 1e-5 there.
"""

from __future__ import annotations

import math
from statistics import NormalDist

T_NORMAL_DF = 1e5
_STANDARD_NORMAL = NormalDist()


def normal_two_sided_p(z: float) -> float:
    """P(|Z| >= |z|) for a standard normal Z."""
    return math.erfc(abs(z) / math.sqrt(2.0))


def normal_critical(alpha: float) -> float:
    """z with P(|Z| >= z) = alpha: 1.959964 for alpha 0.05."""
    _check_alpha(alpha)
    return _STANDARD_NORMAL.inv_cdf(1.0 - alpha / 2.0)


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with `df` degrees of freedom (df may be fractional)."""
    if df <= 0:
        raise ValueError(f"df must be > 0, got {df}")
    if df > T_NORMAL_DF:
        return normal_two_sided_p(t)
    return regularized_beta(df / (df + t * t), df / 2.0, 0.5)


def t_critical(alpha: float, df: float) -> float:
    """t with P(|T| >= t) = alpha: 2.228139 for alpha 0.05 and 10 degrees of freedom."""
    _check_alpha(alpha)
    if df > T_NORMAL_DF:
        return normal_critical(alpha)
    low, high = 0.0, 2.0
    while t_two_sided_p(high, df) > alpha:
        high *= 2.0
    for _ in range(200):  # bisection to float resolution; the p-value falls as t grows
        mid = (low + high) / 2.0
        if mid in (low, high):
            break
        if t_two_sided_p(mid, df) > alpha:
            low = mid
        else:
            high = mid
    return (low + high) / 2.0


def wilson_interval(successes: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion; (0, 1) when n is 0.

    center = (p + z^2 / 2n) / (1 + z^2 / n)
    half   = z * sqrt(p (1 - p) / n + z^2 / 4n^2) / (1 + z^2 / n)
    """
    if n < 0 or not 0 <= successes <= max(n, 0):
        raise ValueError(f"need 0 <= successes <= n, got {successes} of {n}")
    if n == 0:
        return 0.0, 1.0
    z = normal_critical(alpha)
    p = successes / n
    denominator = 1.0 + z * z / n
    center = (p + z * z / (2.0 * n)) / denominator
    half = z * math.sqrt(p * (1.0 - p) / n + z * z / (4.0 * n * n)) / denominator
    return max(0.0, center - half), min(1.0, center + half)


def regularized_beta(x: float, a: float, b: float) -> float:
    """I_x(a, b), by the continued fraction of Numerical Recipes (6.4), modified Lentz."""
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"x must lie in [0, 1], got {x}")
    if x == 0.0 or x == 1.0:
        return x
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    front = math.exp(log_front)
    # The fraction converges fast only on one side of the mean; use symmetry on the other.
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_fraction(x, a, b) / a
    return 1.0 - front * _beta_fraction(1.0 - x, b, a) / b


def _beta_fraction(x: float, a: float, b: float) -> float:
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c = 1.0
    d = 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 20_000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        step = d * c
        h *= step
        if abs(step - 1.0) < eps:
            return h
    raise ArithmeticError(f"incomplete beta did not converge for x={x}, a={a}, b={b}")


def _check_alpha(alpha: float) -> None:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
