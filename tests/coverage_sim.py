"""Coverage simulations of reprsim's intervals, shared by tests/test_coverage.py (small, seeded) and
benchmarks/coverage.py (the tables in docs/uncertainty.md).

Gaussian designs with closed-form population values: x ~ N(0, Σx), Σx = diag(λ) with λ from 1 down to 0.2, and
y = x A + ε, ε ~ N(0, I), A a fixed random p × q matrix scaled by 1/√p; so Σxy = Σx A and Σyy = AᵀΣxA + I. From
them the population linear CKA ‖Σxy‖²_F / (‖Σxx‖_F ‖Σyy‖_F), ENSD tr Σxx tr Σyy ‖Σxy‖²_F / (‖Σxx‖²_F ‖Σyy‖²_F),
NBS ‖Σxy‖_* / √(tr Σxx tr Σyy) (and the Procrustes angle, its arccos), the canonical correlations (the singular
values of Σxx^(−1/2) Σxy Σyy^(−1/2)), the eigenspace overlap Σρ²/max(p, q), the R² of the population
regression of y on x, 1 − tr(Σyy − ΣyxΣxx⁻¹Σxy) / tr Σyy, and the mean over targets of their correlation with
the population prediction, √((ΣyxΣxx⁻¹Σxy)ⱼⱼ / (Σyy)ⱼⱼ). Every expression here is written from these formulas in
NumPy; nothing is computed by the code under test except the intervals themselves.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from reprsim.inference import stream_interval
from reprsim.measures import CKA, GULP, Derived, Measure, Predictivity, Procrustes, ShapeMetric, get_measure
from reprsim.streaming import CrossMoments, MinibatchCKA

MOMENT_MEASURES = (
    "cka",
    "cka_unbiased",
    "cka_lange",
    "nbs",
    "procrustes",
    "cca",
    "predictivity",
    "ensd",
    "eigenspace_overlap",
)

#: Cross-validated moment measures (5 folds, sample i in fold i mod 5): their jackknife leaves out one fold and
#: cross-validates over the other four.
CROSS_VALIDATED: dict[str, Measure] = {
    "predictivity_cv": Predictivity(folds=5),
    "predictivity_pearsonr_cv": Predictivity(folds=5, scoring="pearsonr"),
    "shape_metric_cv": ShapeMetric(0.5, folds=5),
}

#: Further moment measures with the default 20 blocks (the PLS regression has no closed-form population value).
FURTHER: dict[str, Measure] = {
    "gulp": GULP(),
    "predictivity_pearsonr": Predictivity(scoring="pearsonr"),
    "predictivity_pls": Predictivity(components=2, scoring="pearsonr"),
}

#: The unscaled Euclidean forms, which grow with n: their resampled values are scaled to n (no closed form here).
EXTENSIVE: dict[str, Measure] = {
    "cka_euclidean": Derived(CKA(), "euclidean"),
    "nbs_squared_euclidean": Derived(Procrustes("nbs"), "squared_euclidean"),
}


@dataclass
class Design:
    p: int
    q: int
    seed: int = 0

    def __post_init__(self) -> None:
        rng = np.random.default_rng(1000 + self.seed + 7 * self.p + self.q)
        self.lam = np.linspace(1.0, 0.2, self.p)
        self.a = rng.normal(size=(self.p, self.q)) / np.sqrt(self.p)
        self.sxx = np.diag(self.lam)
        self.sxy = self.sxx @ self.a
        self.syy = self.a.T @ self.sxx @ self.a + np.eye(self.q)

    def draw(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        x = rng.normal(size=(n, self.p)) * np.sqrt(self.lam)
        return x, x @ self.a + rng.normal(size=(n, self.q))

    def population(self) -> dict[str, float]:
        sxx, syy, sxy = self.sxx, self.syy, self.sxy
        cka = float(np.sum(sxy**2) / (np.linalg.norm(sxx) * np.linalg.norm(syy)))
        nbs = float(np.linalg.svd(sxy, compute_uv=False).sum() / np.sqrt(np.trace(sxx) * np.trace(syy)))

        def inv_sqrt(c: np.ndarray) -> np.ndarray:
            w, v = np.linalg.eigh(c)
            return (v / np.sqrt(w)) @ v.T

        rho = np.linalg.svd(inv_sqrt(sxx) @ sxy @ inv_sqrt(syy), compute_uv=False)
        explained = sxy.T @ np.linalg.solve(sxx, sxy)
        r2 = 1.0 - np.trace(syy - explained) / np.trace(syy)
        # each target's population correlation with its best linear prediction: √(ΣyxΣxx⁻¹Σxy)ⱼⱼ / Σyyⱼⱼ)
        r = np.sqrt(np.diag(explained) / np.diag(syy))
        ensd = float(np.trace(sxx) * np.trace(syy) * np.sum(sxy**2) / (np.sum(sxx**2) * np.sum(syy**2)))
        return {
            "cka": cka,
            "cka_unbiased": cka,
            "cka_lange": cka,
            "cka_minibatch": cka,
            "nbs": nbs,
            "procrustes": float(np.arccos(nbs)),
            "cca": float(rho.mean()),
            "predictivity": float(r2),
            "predictivity_cv": float(r2),
            "predictivity_pearsonr_cv": float(r.mean()),
            "predictivity_pearsonr": float(r.mean()),
            "predictivity_pls": float("nan"),
            "cka_euclidean": float("nan"),
            "nbs_squared_euclidean": float("nan"),
            # rank X + rank Y − 2Σρᵢ², the ρᵢ² the eigenvalues of Σxx⁻¹ΣxyΣyy⁻¹Σyx
            "gulp": float(self.p + self.q - 2 * np.sum(rho**2)),
            "shape_metric_cv": float("nan"),  # no closed form
            "ensd": ensd,
            # the means are 0, so the uncentred column spaces' overlap is the canonical correlations' Σρ²
            "eigenspace_overlap": float(np.sum(rho**2) / max(self.p, self.q)),
        }


@dataclass
class Coverage:
    """Per measure: how often the intervals covered the estimator's mean over the data sets (its expectation at
    this n) and the population value, the mean half-width, the spread of the estimates, and the mean bias the
    resampling saw."""

    of_expectation: float
    of_population: float
    half_width: float
    spread: float
    bias_seen: float
    bias_true: float


def _summarise(
    estimates: np.ndarray, lows: np.ndarray, highs: np.ndarray, biases: np.ndarray, truth: float
) -> Coverage:
    mean = float(estimates.mean())
    return Coverage(
        of_expectation=float(np.mean((lows <= mean) & (mean <= highs))),
        of_population=float(np.mean((lows <= truth) & (truth <= highs))),
        half_width=float(np.mean(highs - lows) / 2),
        spread=float(estimates.std()),
        bias_seen=float(np.mean(biases)) if not np.isnan(biases).all() else float("nan"),
        bias_true=mean - truth,
    )


def moment_coverage(
    n: int, p: int, datasets: int, seed: int = 0, measures: tuple[str, ...] = MOMENT_MEASURES, blocks: int = 20,
    check: Callable[[np.ndarray, np.ndarray, dict[str, object]], None] | None = None,
) -> dict[str, Coverage]:  # fmt: skip
    """95% delete-a-block jackknife intervals (the declared resampling of moment measures) from streamed per-block
    moments, over ``datasets`` draws of the design with q = max(1, p // 2). ``check(x, y, intervals)`` is called
    on each data set (the tests compare the other entry points there). The names of :data:`CROSS_VALIDATED`
    need ``blocks=5``, their folds."""
    design = Design(p, max(1, p // 2))
    truth = design.population()
    rng = np.random.default_rng(seed)
    rows: dict[str, list[tuple[float, float, float, float]]] = {m: [] for m in measures}
    for _ in range(datasets):
        x, y = design.draw(n, rng)
        acc = CrossMoments(fourth=True, folds=blocks)
        acc.update(torch.tensor(x), torch.tensor(y))
        intervals = {m: stream_interval(acc, {**CROSS_VALIDATED, **FURTHER, **EXTENSIVE}.get(m, m)) for m in measures}
        for m, ci in intervals.items():
            rows[m].append((ci.estimate, ci.low, ci.high, ci.bias if ci.bias is not None else np.nan))
        if check is not None:
            check(x, y, intervals)  # type: ignore[arg-type]
    out = {}
    for m in measures:
        e, lo, hi, b = (np.array(v) for v in zip(*rows[m]))
        out[m] = _summarise(e, lo, hi, b, truth[m])
    return out


def minibatch_coverage(n: int, p: int, batch: int, datasets: int, seed: int = 0, method: str = "jackknife") -> Coverage:
    """95% intervals of minibatch linear CKA over its batches (its declared resampling: the jackknife over
    batches; ``method="percentile"`` for the opt-in bootstrap over batches), whose target is the population
    CKA."""
    design = Design(p, max(1, p // 2))
    rng = np.random.default_rng(seed)
    rows = []
    for r in range(datasets):
        x, y = design.draw(n, rng)
        acc = MinibatchCKA()
        for lo in range(0, n, batch):
            acc.update(torch.tensor(x[lo : lo + batch]), torch.tensor(y[lo : lo + batch]))
        ci = stream_interval(acc, method=method, resamples=1000, seed=r)  # type: ignore[arg-type]
        rows.append((ci.estimate, ci.low, ci.high, ci.bias if ci.bias is not None else np.nan))
    e, lo, hi, b = (np.array(v) for v in zip(*rows))
    return _summarise(e, lo, hi, b, design.population()["cka_minibatch"])


def sample_coverage(
    n: int, p: int, datasets: int, measures: tuple[str, ...], halves: int, seed: int = 0
) -> dict[str, Coverage]:
    """95% intervals by each sample-space measure's declared resampling (the jackknife over 20 blocks for the
    kernel statistics, ``halves`` half-samples for RSA and the neighbour measures) over a nonlinear design
    (y = tanh(x A) + noise, no closed-form population value), against each estimator's mean over the data sets."""
    from reprsim.inference import bootstrap

    rng = np.random.default_rng(seed)
    a = rng.normal(size=(p, p)) / np.sqrt(p) * 1.5
    rows: dict[str, list[tuple[float, float, float, float]]] = {m: [] for m in measures}
    for r in range(datasets):
        x = rng.normal(size=(n, p))
        y = np.tanh(x @ a) + 0.5 * rng.normal(size=(n, p))
        for m in measures:
            ci = bootstrap(x, y, get_measure(m), resamples=halves, seed=r)
            rows[m].append((ci.estimate, ci.low, ci.high, ci.bias if ci.bias is not None else np.nan))
    out = {}
    for m in measures:
        e, lo, hi, b = (np.array(v) for v in zip(*rows[m]))
        out[m] = _summarise(e, lo, hi, b, float("nan"))
    return out
