"""Agreement of reprsim's permutation test of distance correlation with hyppo's Dcorr test.

Run in the peers' environment: ``python benchmarks/peers/agree_hyppo.py``. hyppo draws permutation k as
``RandomState(s_k).permutation(n)`` with the seeds s = ``RandomState(random_state).randint(2**31 - 1, size=reps)``;
those orders are handed to ``permutation_test(..., permutations=orders)``. hyppo's unbiased Dcorr statistic is the
bias-corrected squared distance correlation (reprsim's ``distance_correlation_unbiased``).
"""

from __future__ import annotations

import numpy as np
from hyppo.independence import Dcorr

from reprsim.inference import permutation_test


def hyppo_orders(n: int, reps: int, random_state: int) -> np.ndarray:
    seeds = np.random.RandomState(random_state).randint(np.iinfo(np.int32).max, size=reps)
    return np.stack([np.random.RandomState(s).permutation(n) for s in seeds])


def main() -> None:
    rng = np.random.default_rng(0)
    print("| data | hyppo statistic | reprsim statistic | hyppo p-value | reprsim p-value |")
    print("|---|---|---|---|---|")
    for strength in (0.0, 0.2, 1.0):
        x = rng.normal(size=(120, 3))
        y = strength * np.sin(x[:, :2]) + rng.normal(size=(120, 2))
        stat, p = Dcorr(bias=False).test(x, y, reps=300, auto=False, random_state=5)
        ours = permutation_test(x, y, "distance_correlation_unbiased", permutations=hyppo_orders(120, 300, 5))
        print(f"| strength {strength} | {stat:.12f} | {ours.observed:.12f} | {p:.6f} | {ours.p_value:.6f} |")


if __name__ == "__main__":
    main()
