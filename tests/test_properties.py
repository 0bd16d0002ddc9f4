"""Invariances CKA must have, and the one linear CKA must not have, over many random draws."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import reprsim

ESTIMATORS = [
    {"kernel": "linear", "unbiased": False},
    {"kernel": "linear", "unbiased": True},
    {"kernel": "rbf", "unbiased": False},
    {"kernel": "rbf", "unbiased": True},
]

seeds = st.integers(0, 2**32 - 1)
sizes = st.tuples(st.integers(6, 60), st.integers(1, 24), st.integers(1, 24))


def draw_pair(seed: int, n: int, p: int, q: int) -> tuple[np.ndarray, np.ndarray, np.random.Generator]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, p)) * rng.uniform(0.2, 3.0, size=p)
    y = np.concatenate([x[:, : min(p, q)], rng.normal(size=(n, max(q - p, 0)))], axis=1)[:, :q]
    y = y + rng.uniform(0.1, 1.5) * rng.normal(size=(n, q))
    return x, y, rng


def orthogonal(rng: np.random.Generator, d: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(d, d)))
    return q * np.sign(np.diag(r))


COMMON = settings(max_examples=40, deadline=None)


@pytest.mark.parametrize("est", ESTIMATORS)
@COMMON
@given(seed=seeds, shape=sizes)
def test_orthogonal_invariance(est: dict[str, object], seed: int, shape: tuple[int, int, int]) -> None:
    x, y, rng = draw_pair(seed, *shape)
    base = reprsim.cka(x, y, **est)  # type: ignore[arg-type]
    rotated = reprsim.cka(x @ orthogonal(rng, x.shape[1]), y @ orthogonal(rng, y.shape[1]), **est)  # type: ignore[arg-type]
    assert abs(base - rotated) < 1e-9


@pytest.mark.parametrize("est", ESTIMATORS)
@COMMON
@given(seed=seeds, shape=sizes, scale=st.floats(1e-3, 1e3), shift=st.floats(-100, 100))
def test_isotropic_scaling_and_translation_invariance(
    est: dict[str, object], seed: int, shape: tuple[int, int, int], scale: float, shift: float
) -> None:
    x, y, rng = draw_pair(seed, *shape)
    base = reprsim.cka(x, y, **est)  # type: ignore[arg-type]
    offset = shift * rng.normal(size=x.shape[1])
    moved = reprsim.cka(scale * x + offset, y, **est)  # type: ignore[arg-type]
    assert abs(base - moved) < 1e-8


@pytest.mark.parametrize("est", ESTIMATORS)
@COMMON
@given(seed=seeds, shape=sizes)
def test_symmetry_and_self_similarity(est: dict[str, object], seed: int, shape: tuple[int, int, int]) -> None:
    x, y, _ = draw_pair(seed, *shape)
    assert abs(reprsim.cka(x, y, **est) - reprsim.cka(y, x, **est)) < 1e-12  # type: ignore[arg-type]
    assert abs(reprsim.cka(x, x, **est) - 1.0) < 1e-12  # type: ignore[arg-type]


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
@COMMON
@given(seed=seeds, shape=sizes)
def test_biased_cka_in_unit_interval(kernel: str, seed: int, shape: tuple[int, int, int]) -> None:
    x, y, rng = draw_pair(seed, *shape)
    unrelated = rng.normal(size=y.shape)
    for other in (y, unrelated):
        value = reprsim.cka(x, other, kernel=kernel)
        assert -1e-12 <= value <= 1.0 + 1e-12


@COMMON
@given(seed=seeds, n=st.integers(20, 60), p=st.integers(2, 8), factor=st.floats(5.0, 50.0))
def test_linear_cka_not_invariant_to_non_isotropic_scaling(seed: int, n: int, p: int, factor: float) -> None:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, p))
    y = x[:, :1] + 0.1 * rng.normal(size=(n, 1))  # y follows x's first feature only
    stretched = x.copy()
    stretched[:, 1:] *= factor  # magnify the features y does not follow
    for unbiased in (False, True):
        before = reprsim.cka(x, y, unbiased=unbiased)
        after = reprsim.cka(stretched, y, unbiased=unbiased)
        assert before - after > 0.05


@COMMON
@given(seed=seeds, n=st.integers(30, 60), p=st.integers(100, 300))
def test_unbiased_removes_the_width_bias_of_biased_cka(seed: int, n: int, p: int) -> None:
    rng = np.random.default_rng(seed)
    x, y = rng.normal(size=(n, p)), rng.normal(size=(n, p))
    assert reprsim.cka(x, y) > 0.5  # independent, wide: biased CKA is pulled towards 1 (0.599 at n = 60, p = 100)
    assert abs(reprsim.cka(x, y, unbiased=True)) < 0.2
