"""How sure is a similarity score? Permutation tests and null-calibrated scores for any measure.

:func:`permutation_test` asks whether two representations share more structure than their own geometry
produces by chance (rows of one permuted), for one pair or for the maximum or mean over a layers × layers
matrix, and returns the add-one p-value and the calibrated score of Gröger, Wen & Brbić (2026).
:func:`bootstrap` gives a percentile or BCa confidence interval by resampling samples (pairs of rows, or
half-samples for measures that duplicated rows would inflate).
"""

from __future__ import annotations

from ._bootstrap import BootstrapInterval, bootstrap
from ._permutation import PermutationTest, permutation_test

__all__ = ["BootstrapInterval", "PermutationTest", "bootstrap", "permutation_test"]
