"""The Pearson type III tail fitted to exact permutation moments (Josse, Pagès & Husson 2008): p-values and
critical values of trace statistics without Monte Carlo. The moments themselves come from
:mod:`reprsim.measures._traces`."""

from __future__ import annotations

import math

import torch

from ..measures._traces import NullMoments

__all__ = ["pearson3_quantile", "pearson3_sf"]


#: Beyond this gamma shape (skewness below 2/√10⁸) the fitted tail is the normal one.
_NORMAL_SHAPE = 1e8


def pearson3_sf(t: float, m: NullMoments) -> float:
    """P(T ≥ t) under the Pearson type III distribution with the moments ``m`` (a gamma shifted and scaled to the
    mean, standard deviation and skewness; mirrored for negative skewness; normal without skewness)."""
    if m.sd == 0:
        return 1.0 if t <= m.mean else 0.0
    z = (t - m.mean) / m.sd
    g = m.skewness
    shape = 4.0 / (g * g) if g != 0 else math.inf
    if shape > _NORMAL_SHAPE:
        return 0.5 * math.erfc(z / math.sqrt(2.0))
    k = torch.tensor(shape, dtype=torch.float64)
    if g > 0:
        x = shape + z * math.sqrt(shape)  # (t − loc)/θ with loc = μ − 2σ/γ, θ = σγ/2
        return 1.0 if x <= 0 else float(torch.special.gammaincc(k, torch.tensor(x, dtype=torch.float64)))
    x = shape - z * math.sqrt(shape)
    return 0.0 if x <= 0 else float(torch.special.gammainc(k, torch.tensor(x, dtype=torch.float64)))


def pearson3_quantile(q: float, m: NullMoments) -> float:
    """The q-quantile of the fitted Pearson type III (the inverse of 1 − :func:`pearson3_sf`), by bisection."""
    if m.sd == 0:
        return m.mean
    lo, hi = m.mean - m.sd, m.mean + m.sd
    while 1.0 - pearson3_sf(lo, m) > q:
        lo = m.mean - 2 * (m.mean - lo)
    while 1.0 - pearson3_sf(hi, m) < q:
        hi = m.mean + 2 * (hi - m.mean)
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if 1.0 - pearson3_sf(mid, m) < q:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-14 * max(1.0, abs(mid)):
            break
    return 0.5 * (lo + hi)
