"""How sure is a similarity score? Permutation tests and null-calibrated scores for any measure.

:func:`permutation_test` asks whether two representations share more structure than their own geometry
produces by chance (rows of one permuted), for one pair or for the maximum or mean over a layers × layers
matrix, and returns the add-one p-value and the calibrated score of Gröger, Wen & Brbić (2026).
"""

from __future__ import annotations

from ._permutation import PermutationTest, permutation_test

__all__ = ["PermutationTest", "permutation_test"]
