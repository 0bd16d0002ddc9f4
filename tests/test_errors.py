"""Bad input gets a clear error that names the problem and the fix; each message is pinned here."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import reprsim
from reprsim import ReprsimError, ReprsimWarning
from reprsim.errors import (
    ConstantRepresentationError,
    DeviceMismatchError,
    InsufficientSamplesError,
    InvalidParameterError,
    NonFiniteError,
    ShapeMismatchError,
)

rng = np.random.default_rng(0)
X = rng.normal(size=(20, 5))
Y = rng.normal(size=(20, 3))


def test_error_family() -> None:
    for cls in (
        ShapeMismatchError,
        InsufficientSamplesError,
        NonFiniteError,
        ConstantRepresentationError,
        DeviceMismatchError,
        InvalidParameterError,
    ):
        assert issubclass(cls, ReprsimError)
        assert issubclass(cls, ValueError)
    assert issubclass(reprsim.errors.IncompatibleStateError, RuntimeError)


def test_different_sample_counts() -> None:
    with pytest.raises(
        ShapeMismatchError,
        match=r"x and y must hold the same samples .* 20 rows in x \(shape \(20, 5\)\) and 19 in y",
    ):
        reprsim.cka(X, Y[:19])


@pytest.mark.parametrize(
    ("n", "unbiased", "msg"),
    [(1, False, "at least 2 samples; got 1"), (3, True, "at least 4 samples; got 3.*unbiased=False")],
)
def test_too_few_samples(n: int, unbiased: bool, msg: str) -> None:
    with pytest.raises(InsufficientSamplesError, match=msg):
        reprsim.cka(X[:n], Y[:n], unbiased=unbiased)


def test_non_finite_names_input_and_counts() -> None:
    bad = Y.copy()
    bad[0, 0] = np.nan
    bad[3, 1] = np.nan
    bad[5, 2] = -np.inf
    with pytest.raises(NonFiniteError, match=r"y contains 2 NaN and 1 infinite values out of 60"):
        reprsim.cka(X, bad)
    with pytest.raises(NonFiniteError, match=r"xs\[1\] contains 2 NaN"):
        reprsim.cka_matrix([X, bad])


def test_constant_representation() -> None:
    const = np.full((20, 4), 3.25)
    with pytest.raises(
        ConstantRepresentationError, match=r"y is constant: its 20 samples differ by no more than rounding"
    ):
        reprsim.cka(X, const)
    with pytest.raises(ConstantRepresentationError, match="x is constant"):
        reprsim.cka(const, Y, kernel="rbf")


def test_constant_in_cka_matrix_gives_nan_and_warning() -> None:
    const = np.zeros((20, 2))
    with pytest.warns(ReprsimWarning, match=r"ys\[1\] is constant over all samples"):
        m = reprsim.cka_matrix([X, Y], [Y, const])
    assert torch.isnan(m[:, 1]).all()
    assert torch.isfinite(m[:, 0]).all()
    assert abs(float(m[1, 0]) - 1.0) < 1e-12


@pytest.mark.parametrize("sigma", [0.0, -1.0, float("inf"), float("nan")])
def test_non_positive_sigma(sigma: float) -> None:
    with pytest.raises(InvalidParameterError, match="sigma must be a positive finite bandwidth"):
        reprsim.cka(X, Y, kernel="rbf", sigma=sigma)


def test_zero_median_bandwidth_asks_for_sigma() -> None:
    dup = np.concatenate([np.repeat(X[:1], 18, axis=0), X[1:3]])  # 326 of the 400 pairs coincide
    with pytest.raises(InvalidParameterError, match="median bandwidth is 0; pass an explicit sigma"):
        reprsim.cka(dup, Y, kernel="rbf")
    assert 0.0 <= reprsim.cka(dup, Y, kernel="rbf", sigma=1.0) <= 1.0


def test_unknown_kernel() -> None:
    with pytest.raises(InvalidParameterError, match=r"kernel must be one of \('linear', 'rbf'\); got 'cosine'"):
        reprsim.cka(X, Y, kernel="cosine")


def test_mismatched_devices() -> None:
    with pytest.raises(DeviceMismatchError, match=r"x on cpu, y on meta.*\.to\(device\)"):
        reprsim.cka(torch.from_numpy(X), torch.empty(20, 3, device="meta"))


def test_bad_types_and_shapes() -> None:
    with pytest.raises(InvalidParameterError, match="must hold numbers"):
        reprsim.cka(np.array([["a", "b"], ["c", "d"]]), Y[:2])
    with pytest.raises(ShapeMismatchError, match="got a scalar"):
        reprsim.cka(np.float64(1.0), Y)
    with pytest.raises(ShapeMismatchError, match="has no features"):
        reprsim.cka(np.zeros((20, 0)), Y)
    with pytest.raises(InvalidParameterError, match=r"dtype must be torch\.float32 or torch\.float64"):
        reprsim.cka(X, Y, dtype=torch.int64)
    with pytest.raises(ShapeMismatchError, match=r"square \(n, n\) Gram matrix; got shape \(20, 5\)"):
        reprsim.hsic(X, X)
    with pytest.raises(ShapeMismatchError, match="at least one representation in each sequence"):
        reprsim.cka_matrix([])
