"""Agreement of reprsim.inference.bootstrap with shesha-geometry's paired bootstrap of linear CKA.

Run in the peers' environment: ``python benchmarks/peers/agree_shesha.py``. shesha draws resample b as
``default_rng(seed).choice(n, n, replace=True)`` (one generator for all resamples) and reads percentile
intervals with NumPy; the same index rows are handed to ``bootstrap(..., resamples=rows, method="percentile")``.
"""

from __future__ import annotations

import numpy as np
from shesha.sim import cka_linear

from reprsim.inference import bootstrap


def main() -> None:
    rng = np.random.default_rng(0)
    print("| data | quantity | shesha-geometry | reprsim | difference |")
    print("|---|---|---|---|---|")
    for strength in (0.3, 1.0):
        x = rng.normal(size=(150, 10))
        y = strength * np.tanh(x[:, :6]) + rng.normal(size=(150, 6))
        theirs = cka_linear(x, y, n_bootstrap_ci=500, ci=0.95, seed=11)
        draw = np.random.default_rng(11)
        rows = np.stack([draw.choice(150, 150, replace=True) for _ in range(500)])
        ours = bootstrap(x, y, "cka", resamples=rows, method="percentile", confidence=0.95)
        for name, t, o in (
            ("mean of the resamples", theirs["mean"], float(ours.distribution.mean())),
            ("2.5% end", theirs["ci_low"], ours.low),
            ("97.5% end", theirs["ci_high"], ours.high),
        ):
            print(f"| strength {strength} | {name} | {t:.12f} | {o:.12f} | {abs(t - o):.1e} |")


if __name__ == "__main__":
    main()
