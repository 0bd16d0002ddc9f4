"""Coverage of reprsim's 95% intervals by simulation: the tables of docs/uncertainty.md.

Usage: ``python benchmarks/coverage.py [--datasets 200] [--sample-n 100] [--skip-samples]``. The designs and the
closed-form population values are those of ``tests/coverage_sim.py`` (tests/test_coverage.py runs the same
simulations at the same sizes and asserts the documented ranges). Prints markdown tables:

1. moment measures, delete-a-block jackknife (20 blocks): coverage of the estimator's expectation at this n and of
   the population value, and the standard error the jackknife implies over the true spread of the estimates;
2. the bias of the biased estimators against the interval's half-width (where the population value is out of
   reach);
3. minibatch CKA: the jackknife over batches against the bootstrap over batches, 2 to 10 batches;
4. sample-space measures by their declared resampling (no closed form: coverage of the estimator's mean).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from tests.coverage_sim import (
    CROSS_VALIDATED,
    FURTHER,
    MOMENT_MEASURES,
    minibatch_coverage,
    moment_coverage,
    sample_coverage,
)

CELLS = [(100, 2), (100, 10), (100, 50), (400, 2), (400, 10), (400, 50)]
SAMPLE_MEASURES = ("distance_correlation", "distance_correlation_unbiased", "cka_rbf", "rsa", "mutual_knn")


def pct(v: float) -> str:
    return f"{100 * v:.1f}"


def cross_validated_table(r: int) -> None:
    """Cross-validated moment measures, 5 folds: the delete-a-fold jackknife (t with 4 degrees of freedom)."""
    print(f"\n### Cross-validated measures (5 folds): % of {r} data sets covered (expectation / population; se ÷ sd)\n")
    print("| measure | " + " | ".join(f"n={n}, p={p}" for n, p in CELLS) + " |")
    print("|---|" + "---|" * len(CELLS))
    cov = {(n, p): moment_coverage(n, p, r, seed=n + p, measures=tuple(CROSS_VALIDATED), blocks=5) for n, p in CELLS}
    for m in CROSS_VALIDATED:
        cells = []
        for key in CELLS:
            c = cov[key][m]
            population = "–" if np.isnan(c.bias_true) else pct(c.of_population)
            cells.append(f"{pct(c.of_expectation)} / {population} ({c.half_width / 2.776 / c.spread:.2f})")
        print(f"| {m} | " + " | ".join(cells) + " |")


def further_table(r: int) -> None:
    """GULP and the Pearson and PLS predictivities, 20 blocks (n = 400, p = 50 left out: it is slow)."""
    cells = CELLS[:-1]
    print(f"\n### Further moment measures: % of {r} data sets covered (expectation / population; se ÷ sd)\n")
    print("| measure | " + " | ".join(f"n={n}, p={p}" for n, p in cells) + " |")
    print("|---|" + "---|" * len(cells))
    cov = {(n, p): moment_coverage(n, p, r, seed=n + p, measures=tuple(FURTHER)) for n, p in cells}
    for m in FURTHER:
        row = []
        for key in cells:
            c = cov[key][m]
            population = "–" if np.isnan(c.bias_true) else pct(c.of_population)
            row.append(f"{pct(c.of_expectation)} / {population} ({c.half_width / 2.093 / c.spread:.2f})")
        print(f"| {m} | " + " | ".join(row) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--datasets", type=int, default=200)
    parser.add_argument("--sample-n", type=int, default=100)
    parser.add_argument("--skip-samples", action="store_true")
    args = parser.parse_args()
    r = args.datasets
    start = time.perf_counter()
    results = {(n, p): moment_coverage(n, p, r, seed=n + p) for n, p in CELLS}
    head = " | ".join(f"n={n}, p={p}" for n, p in CELLS)
    cells = {
        f"### Moment measures: % of {r} data sets covered (expectation / population; se ÷ true sd)": lambda c: (
            f"{pct(c.of_expectation)} / {pct(c.of_population)} ({c.half_width / 2.093 / c.spread:.2f})"
        ),
        "\n### Bias of the estimator (true, as the jackknife sees it) against the interval's half-width": lambda c: (
            f"{c.bias_true:+.3f} ({c.bias_seen:+.3f}) vs ±{c.half_width:.3f}"
        ),
    }
    for title, cell in cells.items():
        print(f"{title}\n")
        print(f"| measure | {head} |")
        print("|---|" + "---|" * len(CELLS))
        for m in MOMENT_MEASURES:
            print(f"| {m} | " + " | ".join(cell(results[key][m]) for key in CELLS) + " |")
    print(f"\n### Minibatch CKA, n = 400: % of {r} data sets covering the population CKA\n")
    print("| p | batches | jackknife over batches | bootstrap over batches (percentile) |")
    print("|---|---|---|---|")
    for p in (2, 10, 50):
        for batch in (40, 100, 200):
            jk = minibatch_coverage(400, p, batch, r, seed=p + batch)
            bs = minibatch_coverage(400, p, batch, r, seed=p + batch, method="percentile")
            print(f"| {p} | {400 // batch} | {pct(jk.of_population)} | {pct(bs.of_population)} |")
    cross_validated_table(r)
    further_table(r)
    if not args.skip_samples:
        n = args.sample_n
        print(f"\n### Sample-space measures, n = {n}: % of {r} data sets covering the estimator's mean (se ÷ sd)\n")
        print("| measure | resampling | " + " | ".join(f"p={p}" for p in (2, 10, 50)) + " |")
        print("|---|---|---|---|---|")
        cov = {p: sample_coverage(n, p, r, SAMPLE_MEASURES, halves=100, seed=p) for p in (2, 10, 50)}
        from reprsim.measures import get_measure

        for m in SAMPLE_MEASURES:
            blocks = get_measure(m).resampling == "blocks"
            how = "jackknife, 20 blocks" if blocks else "100 half-samples"
            z = 2.093 if blocks else 1.96  # t₁₉ or the normal quantile: the implied se
            cells = [f"{pct(cov[p][m].of_expectation)} ({cov[p][m].half_width / z / cov[p][m].spread:.2f})"
                     for p in (2, 10, 50)]  # fmt: skip
            print(f"| {m} | {how} | " + " | ".join(cells) + " |")
    print(f"\n({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
