"""How sure is a similarity score? Permutation tests and null-calibrated scores for any measure.

:func:`permutation_test` asks whether two representations share more structure than their own geometry
produces by chance (rows of one permuted), for one pair or for the maximum or mean over a layers × layers
matrix, and returns the add-one p-value and the calibrated score of Gröger, Wen & Brbić (2026).
:func:`bootstrap` gives a percentile or BCa confidence interval by resampling samples (pairs of rows, or
half-samples for measures that duplicated rows would inflate); :func:`jackknife` a delete-a-block jackknife
interval; :func:`stream_interval` an interval from a streaming accumulator without a second pass.
"""

from ._bootstrap import bootstrap, jackknife
from ._interval import Interval
from ._permutation import PermutationTest, permutation_test
from ._stream import stream_interval

__all__ = ["Interval", "PermutationTest", "bootstrap", "jackknife", "permutation_test", "stream_interval"]
