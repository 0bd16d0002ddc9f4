"""The README quickstart: several measures of how similar two representations are, a matrix of every pair, and
a permutation test."""

import numpy as np

from reprsim import cca, cka, cka_matrix, procrustes
from reprsim.inference import permutation_test

rng = np.random.default_rng(0)
x = rng.normal(size=(500, 64))  # 500 samples, 64 features (e.g. one layer)
y = np.tanh(x @ rng.normal(size=(64, 32)))  # another representation of the same samples
print(f"linear CKA     {cka(x, y):.3f}")
print(f"unbiased CKA   {cka(x, y, unbiased=True):.3f}")  # use this when features are many relative to samples
print(f"RBF CKA        {cka(x, y, kernel='rbf'):.3f}")
print(f"Procrustes     {procrustes(x, y):.3f} rad")  # angular distance: 0 means equal up to rotation and scale
print(f"mean CCA rho   {cca(x, y):.3f}")
print(cka_matrix([x, y, rng.normal(size=(500, 8))]))  # every pair, one matrix product
test = permutation_test(x, y, "cka", permutations="moments")  # more than the two shapes alone would give?
p = "< 0.001" if test.p_value < 1e-3 else f"= {test.p_value:.3f}"  # the fitted tail is checked to 1e-3
print(f"permutation p {p}, calibrated score {test.calibrated:.3f}")
