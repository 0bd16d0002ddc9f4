"""HSIC and CKA of whole representations: :func:`hsic`, :func:`cka_from_grams`, :func:`cka`,
:func:`cka_matrix`.

Pure and differentiable; results follow the input's device. The streaming accumulators build on the
private helpers here (:func:`unbiased_hsic_from_terms`) so that one formula serves every code path.
Gram construction and centring live in :mod:`reprsim._kernels`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any, Literal, Union, overload

import numpy as np
import torch

from .._kernels import _u_center, as_gram, radial_from_sq_distances, squared_distances
from .._precision import full_precision_matmul
from .._validation import (
    Kernel,
    as_matrix,
    check_bool,
    check_finite,
    check_kernel,
    check_magnitude,
    check_n_samples,
    check_pair,
    check_same_device,
    check_same_samples,
    is_constant,
    rescaled,
)
from ..errors import ConstantRepresentationError, InvalidParameterError, ReprsimWarning, ShapeMismatchError
from ._base import Cache, Measure, NoTraceForm, as_result, evaluate, num, refuse_renamed, register
from ._linalg import check_variance
from ._moments import Moments
from ._strips import column_centred, rbf_hsic_terms, row_norms, strip_rows, triangle_median
from ._traces import DENSE_NULL_MAX, TraceSide, dense_side, linear_side

__all__ = ["CKA", "cka", "cka_from_grams", "cka_matrix", "hsic"]


def unbiased_hsic_from_terms(
    tr_kl: torch.Tensor, sum_k: torch.Tensor, sum_l: torch.Tensor, one_kl_one: torch.Tensor, n: int
) -> torch.Tensor:
    """Unbiased HSIC of Song et al. (2012) from its four terms.

    With K̃, L̃ the Grams with zeroed diagonals: ``tr_kl = tr(K̃L̃)``, ``sum_k = 1ᵀK̃1``, ``sum_l = 1ᵀL̃1`` and
    ``one_kl_one = 1ᵀK̃L̃1``. Every code path (Grams, feature space, streaming) reduces to these terms.
    """
    m = float(n)  # streamed counts reach 10¹⁵, whose products overflow int64
    return (tr_kl + sum_k * sum_l / ((m - 1) * (m - 2)) - 2.0 * one_kl_one / (m - 2)) / (m * (m - 3))


def unbiased_hsic_with_scale(
    sq: torch.Tensor, diag: torch.Tensor, sum_k: torch.Tensor, sum_l: torch.Tensor, one_kl_one: torch.Tensor, n: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Unbiased HSIC from its terms with ``tr(K̃L̃) = sq − diag``, and the sum of the terms' magnitudes.

    The terms cancel when the diagonals dominate the Grams (widths far above n, heavy-tailed rows): each
    term's rounding error reaches the result amplified by ``scale / |HSIC|``, which :func:`amplification`
    turns into the accuracy to expect.
    """
    value = unbiased_hsic_from_terms(sq - diag, sum_k, sum_l, one_kl_one, n)
    m = float(n)
    scale = sq.abs() + diag.abs() + (sum_k * sum_l).abs() / ((m - 1) * (m - 2)) + 2.0 * one_kl_one.abs() / (m - 2)
    return value, scale / (m * (m - 3))


def amplification(
    kl: tuple[torch.Tensor, torch.Tensor], kk: tuple[torch.Tensor, torch.Tensor], ll: tuple[torch.Tensor, torch.Tensor]
) -> torch.Tensor:
    """How much a CKA of three (HSIC, scale) pairs magnifies the relative rounding error of its terms."""
    return kl[1] / kl[0].abs() + 0.5 * (kk[1] / kk[0].abs() + ll[1] / ll[0].abs())


def inner(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Σ a·b over all entries, as a plain sum of products.

    Not a BLAS dot product: torch.dot accumulates float32 with an error that grows with the length (2.5e-6
    on a CKA from 2000×2000 Grams, against 1.5e-8 for the cascade summation of ``sum``), for a 5% speed-up.
    """
    return (a * b).sum()


def frobenius(t: torch.Tensor) -> torch.Tensor:
    """Frobenius norm as the square root of :func:`inner`.

    Not torch.linalg.vector_norm: on the CPU it accumulates float32 with an error that grows with the
    element count (1e-4 relative for a 5000×5000 Gram), against about 1e-7 for ``sum``.
    """
    return inner(t, t).sqrt()


def _zero_diag(k: torch.Tensor) -> torch.Tensor:
    return k.masked_fill(torch.eye(k.shape[0], dtype=torch.bool, device=k.device), 0.0)


#: What ``unbiased=`` takes: the HSIC estimator in CKA's numerator and denominator.
Unbiased = Union[bool, Literal["lange"]]


def check_unbiased(value: Any) -> Unbiased:
    """``unbiased=``: False (Gretton et al.'s biased HSIC), True (Song et al.'s unbiased HSIC) or ``"lange"``
    (Lange et al.'s: the double-centred Grams with their diagonals dropped)."""
    if isinstance(value, str):
        if value == "lange":
            return "lange"
        raise InvalidParameterError(
            f"unbiased must be False (Gretton et al.'s biased HSIC), True (Song et al.'s unbiased HSIC) or 'lange' "
            f"(Lange et al.'s: the double-centred Grams without their diagonals); got {value!r}"
        )
    return check_bool(value, "unbiased")


def _masked_center(k: torch.Tensor) -> torch.Tensor:
    """Lange et al.'s centring: the double-centred Gram with its diagonal dropped."""
    return _zero_diag(_double_center(k))


def _center_for(unbiased: bool | str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The centring whose inner products give each HSIC estimator (up to a constant that cancels in CKA)."""
    if unbiased == "lange":
        return _masked_center
    return _u_center if unbiased else _double_center


def _check_grams(k: Any, l: Any, unbiased: bool) -> tuple[torch.Tensor, torch.Tensor]:
    kt, lt = as_gram(k, "k"), as_gram(l, "l")
    if kt.shape != lt.shape:
        raise ShapeMismatchError(
            f"k and l must be Grams of the same samples; got shapes {tuple(kt.shape)} and {tuple(lt.shape)}"
        )
    check_same_device({"k": kt, "l": lt})
    check_n_samples(kt.shape[0], unbiased, what="HSIC")
    common = torch.promote_types(kt.dtype, lt.dtype)
    return kt.to(common), lt.to(common)


@full_precision_matmul
def hsic(k: Any, l: Any, *, unbiased: Unbiased = False) -> Any:
    """Hilbert-Schmidt independence criterion of two Gram matrices.

    Parameters
    ----------
    k, l : array_like or torch.Tensor, shape (n, n)
        Gram matrices of the same n samples (e.g. from :func:`linear_gram` or :func:`rbf_gram`).
    unbiased : bool or "lange", default False
        False: the biased estimator ``tr(KHLH) / (n−1)²`` of Gretton et al. (2005).
        True: the unbiased estimator of Song et al. (2012), which needs n ≥ 4 and can be negative.
        ``"lange"``: Lange et al.'s, ``Σ_{i≠j} (HKH)ᵢⱼ(HLH)ᵢⱼ / (n(n−3))`` (the double-centred Grams without
        their diagonals; n ≥ 4).

    Returns
    -------
    float or torch.Tensor
        A Python float when neither Gram is a tensor; otherwise a differentiable 0-d tensor (the rule of every
        scalar reprsim returns).

    Notes
    -----
    Both Grams are centred (double centring, or U-centring for the unbiased estimator) before their inner
    product, so uncentred Grams are fine. The Grams themselves carry the rounding error of their inputs: for a
    linear Gram of features with a common offset ``c`` and spread ``s``, expect a relative error of about
    ``ε·(c/s)²`` (ε the dtype's machine epsilon; ~1e-12 at c = 1000·s in float64). Centre the features before
    building the Gram, or call :func:`cka` on the features, to avoid that loss.

    Examples
    --------
    >>> import torch
    >>> from reprsim import hsic, linear_gram
    >>> x = torch.tensor([[0.0], [1.0], [2.0], [4.0]])
    >>> # centred x has squared norm 8.75, so biased HSIC(K, K) = 8.75² / (n − 1)² = 8.5069
    >>> round(float(hsic(linear_gram(x), linear_gram(x))), 4)
    8.5069
    """
    unbiased = check_unbiased(unbiased)
    kt, lt = _check_grams(k, l, bool(unbiased))
    n = kt.shape[0]
    # Both Grams are centred before their inner product: ⟨HKH, HLH⟩ = tr(KHLH), and ⟨Ũ(K), Ũ(L)⟩ is Song's
    # estimator times n(n−3). Applying the formulas to raw Grams instead cancels catastrophically when the
    # features share an offset (Gram entries far larger than their variation): 0.04 relative error at an
    # offset of 1000× the feature scale, in float64.
    if unbiased == "lange":
        value = inner(_masked_center(kt), _masked_center(lt.T)) / (n * (n - 3))
    elif unbiased:
        value = inner(_u_center(kt), _u_center(lt.T)) / (n * (n - 3))
    else:
        value = inner(_double_center(kt), _double_center(lt.T)) / (n - 1) ** 2
    return as_result(value, value, k, l)


@full_precision_matmul
def cka_from_grams(k: Any, l: Any, *, unbiased: Unbiased = False) -> Any:
    """Centered kernel alignment of two Gram matrices.

    ``HSIC(K, L) / sqrt(HSIC(K, K) · HSIC(L, L))`` with the biased or the unbiased HSIC estimator.

    Parameters
    ----------
    k, l : array_like or torch.Tensor, shape (n, n)
        Symmetric Gram matrices of the same n samples.
    unbiased : bool or "lange", default False
        True: Song et al.'s unbiased HSIC estimator; ``"lange"``: Lange et al.'s (see :func:`hsic`). Both need
        n ≥ 4, and the result can then be negative and is not clamped.

    Returns
    -------
    float or torch.Tensor
        A Python float when neither Gram is a tensor; otherwise a differentiable 0-d tensor.

    Raises
    ------
    ConstantRepresentationError
        When ``k`` or ``l`` has zero HSIC with itself (CKA is 0/0).

    Examples
    --------
    >>> import torch
    >>> from reprsim import cka_from_grams, linear_gram
    >>> x = torch.randn(50, 8, dtype=torch.float64)
    >>> round(float(cka_from_grams(linear_gram(x), linear_gram(2 * x))), 6)
    1.0
    """
    unbiased = check_unbiased(unbiased)
    kt, lt = _check_grams(k, l, bool(unbiased))
    center = _center_for(unbiased)
    return as_result(_cosine_of_centered(center(kt), center(lt), ("k", "l")), kt, k, l)


def _double_center(k: torch.Tensor) -> torch.Tensor:
    return k - k.mean(dim=0, keepdim=True) - k.mean(dim=1, keepdim=True) + k.mean()


def _cosine_of_centered(kc: torch.Tensor, lc: torch.Tensor, names: tuple[str, str]) -> torch.Tensor:
    """⟨Kc, Lc⟩ / (‖Kc‖ ‖Lc‖): the HSIC normalisation constants cancel in CKA."""
    nk = frobenius(kc)
    nl = frobenius(lc)
    _check_denominator(nk, nl, names)
    return torch.div(inner(kc, lc), nk * nl)


def _check_denominator(nk: torch.Tensor, nl: torch.Tensor, names: tuple[str, str]) -> None:
    for name, positive in zip(names, (torch.stack([nk, nl]) > 0).tolist()):  # one host synchronisation
        if not positive:
            raise ConstantRepresentationError(
                f"{name} has zero HSIC with itself (after centring it carries no variation), so CKA is "
                f"0/0 (undefined). Check for a constant or dead representation"
            )


@overload
def cka(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    kernel: Kernel = ...,
    unbiased: Unbiased = ...,
    sigma: float | None = ...,
    median_fraction: float = ...,
    dtype: torch.dtype | None = ...,
    chunk_rows: int | None = ...,
    **removed: Any,
) -> torch.Tensor: ...


@overload
def cka(
    x: np.ndarray[Any, Any],
    y: np.ndarray[Any, Any],
    *,
    kernel: Kernel = ...,
    unbiased: Unbiased = ...,
    sigma: float | None = ...,
    median_fraction: float = ...,
    dtype: torch.dtype | None = ...,
    chunk_rows: int | None = ...,
    **removed: Any,
) -> float: ...


@overload
def cka(
    x: Any,
    y: Any,
    *,
    kernel: Kernel = ...,
    unbiased: Unbiased = ...,
    sigma: float | None = ...,
    median_fraction: float = ...,
    dtype: torch.dtype | None = ...,
    chunk_rows: int | None = ...,
    **removed: Any,
) -> float | torch.Tensor: ...


@full_precision_matmul
def cka(
    x: Any,
    y: Any,
    *,
    kernel: Kernel = "linear",
    unbiased: Unbiased = False,
    sigma: float | None = None,
    median_fraction: float = 1.0,
    dtype: torch.dtype | None = None,
    chunk_rows: int | None = None,
    **removed: Any,
) -> Any:
    """Centered kernel alignment (Kornblith et al., 2019) between two representations of the same samples.

    Parameters
    ----------
    x : array_like or torch.Tensor, shape (n, ...)
        Representation of n samples, e.g. one layer's activations; trailing dimensions are flattened.
    y : array_like or torch.Tensor, shape (n, ...)
        Another representation of the same n samples, in the same order; its width may differ from ``x``'s.
    kernel : {"linear", "rbf", "laplace"}, default "linear"
        Kernel applied to each representation: ``x·x'``, the RBF kernel ``exp(−‖x − x'‖²/(2σ²))`` or the Laplace
        kernel ``exp(−‖x − x'‖/(√2σ))`` (σ as the similarity-repository scheme's ``laplace-sigma=σ``: repsim's
        length scale √2σ).
    unbiased : bool or "lange", default False
        False: the biased HSIC estimator in numerator and denominator (the CKA of Kornblith et al.). It is
        biased upwards when the widths are large relative to n: unrelated wide representations score close
        to 1. True: the unbiased HSIC estimator of Song et al. (2012) ("debiased CKA"); needs n ≥ 4 and can
        be negative, which is reported as is, never clamped. ``"lange"``: the estimator of Lange et al.
        (2023), the cosine of the double-centred Grams with their diagonals dropped (n ≥ 4; also not
        clamped).
    sigma : float, optional
        RBF or Laplace bandwidth. By default ``median_fraction * sqrt(median squared distance)`` per
        representation, the median taken over the full n×n matrix including its zero diagonal.
    median_fraction : float, default 1.0
        Multiple of the median distance for the bandwidth when ``sigma`` is None.
    dtype : torch.dtype, optional
        Compute in this dtype (e.g. ``torch.float64``). By default float64 inputs stay float64 and
        everything else is computed in float32 (float16/bfloat16 and integers are upcast).
    chunk_rows : int, optional
        RBF and Laplace kernels only: compute blockwise, ``chunk_rows`` rows of the n × n kernels at a time
        (memory O(chunk_rows · n) instead of several n × n matrices). By default the kernels are built whole up
        to n = 4096 samples and blockwise (64 MiB strips) beyond. The blockwise path gives the same number (the
        median bandwidth is found exactly, by histogram passes over the strips) but is not differentiable.

    Returns
    -------
    float or torch.Tensor
        A Python float when neither input is a tensor; otherwise a 0-d tensor on the inputs' device,
        differentiable except on the blockwise RBF path. Biased CKA lies in [0, 1].

    Raises
    ------
    ShapeMismatchError
        ``x`` and ``y`` hold different numbers of samples.
    InsufficientSamplesError
        Fewer than 2 samples (4 with ``unbiased=True``).
    NonFiniteError
        NaN or infinite values; the message says which input and how many.
    ConstantRepresentationError
        A representation is identical for all samples (CKA is 0/0).
    InvalidParameterError
        Unknown kernel, non-positive ``sigma``.
    DeviceMismatchError
        ``x`` and ``y`` are on different devices.

    Notes
    -----
    Linear CKA is computed in feature space, ``‖YᵀX‖²_F / (‖XᵀX‖_F ‖YᵀY‖_F)`` on column-centred inputs, at
    O(n(p² + q² + pq)), or from n×n Grams at O(n²(p + q)), whichever is cheaper; both give the same number.
    The unbiased linear estimator also has an exact feature-space form, so no n×n matrix is built when the
    widths are small.

    Examples
    --------
    >>> import numpy as np
    >>> from reprsim import cka
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(100, 10))
    >>> q, _ = np.linalg.qr(rng.normal(size=(10, 10)))
    >>> round(cka(x, 3.0 * x @ q + 1.0), 6)  # invariant to rotation, isotropic scaling and translation
    1.0
    >>> a, b = rng.normal(size=(100, 1000)), rng.normal(size=(100, 1000))  # unrelated, wider than n
    >>> cka(a, b) > 0.85  # biased CKA is pulled towards 1 when features outnumber samples
    True
    >>> abs(cka(a, b, unbiased=True)) < 0.05  # the unbiased estimator is not
    True
    """
    refuse_renamed("cka", removed)
    check_kernel(kernel, sigma, median_fraction)
    unbiased = check_unbiased(unbiased)
    if chunk_rows is not None and kernel == "linear":
        raise InvalidParameterError(
            "chunk_rows= applies to the RBF and Laplace kernels; linear CKA never builds an n × n matrix whole"
        )
    rows = strip_rows(1, chunk_rows)  # validates chunk_rows
    # also: finite, not constant; rescaled to magnitude ~1 when scale invariance allows (not with a fixed sigma)
    xt, yt = check_pair(x, y, unbiased=bool(unbiased), dtype=dtype, rescale=kernel == "linear" or sigma is None)
    if kernel == "linear":
        value = _lange_linear_cka(xt, yt) if unbiased == "lange" else _linear_cka(xt, yt, bool(unbiased))
    elif chunk_rows is not None or xt.shape[0] > DENSE_RBF_MAX:
        if torch.is_grad_enabled() and (xt.requires_grad or yt.requires_grad):
            raise InvalidParameterError(
                f"blockwise {'RBF' if kernel == 'rbf' else 'Laplace'} CKA (n = {xt.shape[0]} > {DENSE_RBF_MAX}, or "
                "chunk_rows=) is not differentiable; detach the inputs, or compute gradients on at most 4096 samples"
            )
        value = rbf_cka_blockwise(
            xt, yt, sigma, median_fraction, unbiased, rows if chunk_rows is not None else None, kernel
        )
    else:
        kc, lc = (
            _centered_radial_gram(t, kernel, sigma, median_fraction, unbiased, name)
            for t, name in ((xt, "x"), (yt, "y"))
        )
        value = _cosine_of_centered(kc, lc, ("x", "y"))
    return as_result(value, value, x, y)


#: Up to this many samples, RBF CKA builds its n × n kernels whole (differentiable); beyond, in strips.
DENSE_RBF_MAX = 4096


@torch.no_grad()
@full_precision_matmul
def rbf_cka_blockwise(
    x: torch.Tensor,
    y: torch.Tensor,
    sigma: float | None,
    median_fraction: float,
    unbiased: bool | str,
    chunk_rows: int | None,
    kernel: str = "rbf",
) -> torch.Tensor:
    """RBF or Laplace CKA of (n, p) and (n, q) tensors in strips of the kernels: memory O(chunk_rows · n), the same
    value as the dense computation (the bandwidth is the exact median of the n² squared distances when ``sigma``
    is None)."""
    n = x.shape[0]
    rows = strip_rows(n, chunk_rows)
    gammas, prepared = [], []
    for t, name in ((x, "x"), (y, "y")):
        tc = column_centred(t)  # held whole up to COPY_BYTES, else rebuilt block by block from t
        sq = tc.sq_norms()
        if sigma is None:
            s2 = median_fraction**2 * triangle_median(tc, sq, rows)
            if not bool(s2 > 0):
                raise InvalidParameterError(
                    f"the median squared distance between the samples of {name} is 0 (more than half of all "
                    "sample pairs coincide), so the median bandwidth is 0; pass an explicit sigma"
                )
        else:
            s2 = torch.tensor(float(sigma) ** 2, dtype=torch.float64, device=t.device)
        # exp(−γd²) for the RBF kernel, exp(−γd) for the Laplace kernel
        gammas.append(1.0 / (2.0 * s2) if kernel == "rbf" else 1.0 / (2.0 * s2).sqrt())
        prepared.append((tc, sq))
    (xc, sqx), (yc, sqy) = prepared
    song = unbiased is True
    (kl, kk, ll), rk, rl = rbf_hsic_terms(xc, sqx, yc, sqy, gammas[0], gammas[1], song, rows, kernel == "laplace")

    def hsic_of(s: torch.Tensor, ra: torch.Tensor, rb: torch.Tensor) -> torch.Tensor:
        """HSIC from Σ K∘L and the row sums: unbiased (Song et al.), biased tr(KHLH), or Lange et al.'s (tr(KHLH)
        less the product of the centred diagonals, (HKH)ᵢᵢ = 1 − 2(K1)ᵢ/n + 1ᵀK1/n²)."""
        ta, tb = ra.sum(), rb.sum()
        if song:
            return unbiased_hsic_from_terms(s, ta, tb, ra @ rb, n)
        centred = s - 2.0 / n * (ra @ rb) + ta * tb / n**2
        if unbiased == "lange":
            da, db = 1.0 - 2.0 / n * ra + ta / n**2, 1.0 - 2.0 / n * rb + tb / n**2
            return centred - da @ db
        return centred

    cross, self_x, self_y = hsic_of(kl, rk, rl), hsic_of(kk, rk, rk), hsic_of(ll, rl, rl)
    _check_denominator(self_x, self_y, ("x", "y"))
    return (cross / (self_x * self_y).sqrt()).to(x.dtype)


def _centered(x: torch.Tensor) -> torch.Tensor:
    # CKA is translation invariant; subtracting the column means first (rather than correcting XᵀX by
    # n·μμᵀ afterwards) keeps float32 accurate when the features share a large offset.
    return x - x.mean(dim=0, keepdim=True)


def _prefer_feature_space(n: int, p: int, q: int) -> bool:
    return p * p + q * q + p * q <= n * (p + q)


def _linear_cka(x: torch.Tensor, y: torch.Tensor, unbiased: bool) -> torch.Tensor:
    n, p = x.shape
    q = y.shape[1]
    if not _prefer_feature_space(n, p, q):
        return _linear_cka_sample_space(x, y, unbiased)
    xc, yc = _centered(x), _centered(y)
    # Every product is divided by tr(XᵀX) = ‖Xc‖² (and tr(YᵀY)) before it is squared: CKA is scale
    # invariant and every square is then at most 1, so float32 cannot overflow however large the activations.
    kk, sx = _symmetric_sq_norm(xc)  # ‖XᵀX / sx‖², from the upper triangle of XᵀX only
    ll, sy = _symmetric_sq_norm(yc)
    _check_denominator(sx, sy, ("x", "y"))
    gxy = (xc.T @ yc) / (sx.sqrt() * sy.sqrt())
    kl = inner(gxy, gxy).to(kk.dtype)
    if unbiased:
        num, dx, dy = _unbiased_linear_feature_terms(xc, yc, sx, sy, kl, kk, ll)
        if x.dtype == torch.float32 and float(amplification(num, dx, dy)) * _EPS32 > FLOAT32_TOLERANCE:
            # The unbiased terms cancel (heavy-tailed rows dominate both ‖XᵀY‖² and Σ aᵢbᵢ): float32
            # products would lose the result's digits, so this input is computed again in float64.
            return _linear_cka(x.double(), y.double(), True).to(x.dtype)
        _check_denominator(dx[0], dy[0], ("x", "y"))
        return torch.div(num[0], (dx[0] * dy[0]).sqrt()).to(x.dtype)
    return torch.div(kl, (kk * ll).sqrt()).to(x.dtype)


def _lange_linear_cka(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Linear CKA with Lange et al.'s HSIC: with K = XcXcᵀ, whose diagonal is a (the squared row norms of the
    centred data), ⟨K − diag a, L − diag b⟩ = ‖XcᵀYc‖² − a·b, so the feature-space form needs no n × n matrix;
    wider than the sample count, the Grams' strips with their diagonals zeroed."""
    n, p = x.shape
    q = y.shape[1]
    xc, yc = _centered(x), _centered(y)
    if not _prefer_feature_space(n, p, q):
        a, b = (row_norms(t, squared=True, dtype=t.dtype) for t in (xc, yc))
        zeros = torch.zeros(n, dtype=x.dtype, device=x.device)
        kl, kk, ll = _gram_inner_products(xc, yc, a.sum(), b.sum(), (zeros, zeros))  # zero shifts: diagonals dropped
        _check_denominator(kk, ll, ("x", "y"))
        return torch.div(kl, (kk * ll).sqrt()).to(x.dtype)
    kk, sx = _symmetric_sq_norm(xc)
    ll, sy = _symmetric_sq_norm(yc)
    _check_denominator(sx, sy, ("x", "y"))
    gxy = (xc.T @ yc) / (sx.sqrt() * sy.sqrt())
    kl = inner(gxy, gxy).to(kk.dtype)
    a, b = ((xc * xc).sum(dim=1) / sx).to(kk.dtype), ((yc * yc).sum(dim=1) / sy).to(kk.dtype)
    num, dx, dy = (kl - a @ b, kl + a @ b), (kk - a @ a, kk + a @ a), (ll - b @ b, ll + b @ b)
    if x.dtype == torch.float32 and float(amplification(num, dx, dy)) * _EPS32 > FLOAT32_TOLERANCE:
        return _lange_linear_cka(x.double(), y.double()).to(x.dtype)  # the diagonals dominate: see _linear_cka
    _check_denominator(dx[0], dy[0], ("x", "y"))
    return torch.div(num[0], (dx[0] * dy[0]).sqrt()).to(x.dtype)


_EPS32 = float(torch.finfo(torch.float32).eps)
FLOAT32_TOLERANCE = 1e-6  # the accuracy a float32 result is computed to (documented as ~1e-5 with margin)


def _symmetric_sq_norm(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """‖AᵀA / s‖²_F (summed in float64) and s = tr(AᵀA), from the upper triangle of AᵀA only.

    AᵀA is symmetric: column strip i of A against columns i..p gives rows i..i+r of its upper triangle (the
    diagonal block once, the rest twice), 0.72x the time of the full product at n=10000, p=768 on the CPU.
    """
    p = a.shape[1]
    r = _strip_rows(p, a.device)
    acc = torch.float64 if a.device.type != "mps" else a.dtype
    starts = range(0, p, r)
    strips = [a[:, i : i + r].T @ a[:, i:] for i in starts]
    trace = torch.stack([t[:, : min(r, p - i)].diagonal().sum() for i, t in zip(starts, strips)]).sum()
    total = a.new_zeros((), dtype=acc)
    for i, t in zip(starts, strips):
        t = t / trace if t.requires_grad else t.div_(trace)
        width = min(r, p - i)
        whole = inner(t, t).to(acc)
        total = total + (whole if width == t.shape[1] else 2.0 * whole - inner(t[:, :width], t[:, :width]).to(acc))
    return total, trace


def _strip_rows(n: int, device: torch.device) -> int:
    """Rows per strip of the Gram in :func:`_gram_inner_products`. On the CPU, 256-row strips cut the
    multiply-adds of a large Gram towards half at full BLAS speed (measured best of 128 to 512 for n from 600
    to 4000); on a GPU, where each strip costs kernel launches, whole Grams up to 4096 samples, then strips
    of at most 2^24 entries so memory stays flat."""
    if device.type == "cpu":
        return n if n <= 384 else 256
    return n if n <= 4096 else max(256, 2**24 // n)


def _gram_inner_products(
    xc: torch.Tensor,
    yc: torch.Tensor,
    sx: torch.Tensor,
    sy: torch.Tensor,
    shifts: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """⟨K, L⟩, ⟨K, K⟩ and ⟨L, L⟩ for K = Xc Xcᵀ / sx and L = Yc Ycᵀ / sy, without forming either n×n matrix.

    Both Grams are symmetric, so only their upper triangle of row strips is built: strip i is rows i..i+r
    against columns i..n (the diagonal block once, the rest twice), which takes (n + r)/2n of the full
    products' work and r·n memory. With sx = tr(Xc Xcᵀ) every entry is at most 1 in magnitude, so no
    square can overflow float32; each strip's sums are added in float64.

    ``shifts`` = (c, d) turns K into its U-centred form: ``K_ij + c_i + c_j`` off the diagonal and 0 on it
    (likewise L with d), the Grams whose inner product is unbiased HSIC up to n(n−3).
    """
    n = xc.shape[0]
    r = _strip_rows(n, xc.device)
    acc = torch.float64 if xc.device.type != "mps" else xc.dtype
    totals = [xc.new_zeros((), dtype=acc) for _ in range(3)]

    def strip(a: torch.Tensor, s: torch.Tensor, i: int, c: torch.Tensor | None) -> torch.Tensor:
        g = (a[i : i + r] @ a[i:].T).div_(s)
        if c is not None:
            g.add_(c[i : i + r, None]).add_(c[None, i:])
            g[:, : min(r, n - i)].diagonal().zero_()
        return g

    cx, cy = (None, None) if shifts is None else shifts
    if r >= n:  # one strip: the whole Grams (on a GPU, fewer kernels matter more than the halved work)
        k, l = strip(xc, sx, 0, cx), strip(yc, sy, 0, cy)
        return inner(k, l).to(acc), inner(k, k).to(acc), inner(l, l).to(acc)
    for i in range(0, n, r):
        k, l = strip(xc, sx, i, cx), strip(yc, sy, i, cy)
        width = min(r, n - i)
        for t, (a, b) in enumerate(((k, l), (k, k), (l, l))):
            whole = inner(a, b).to(acc)
            diagonal_block = inner(a[:, :width], b[:, :width]).to(acc) if width < a.shape[1] else whole
            totals[t] = totals[t] + 2.0 * whole - diagonal_block
    return totals[0], totals[1], totals[2]


def _linear_cka_sample_space(x: torch.Tensor, y: torch.Tensor, unbiased: bool) -> torch.Tensor:
    """Linear CKA from the n×n Grams' inner products (for widths larger than the sample count)."""
    xc, yc = _centered(x), _centered(y)
    a, b = (row_norms(t, squared=True, dtype=t.dtype) for t in (xc, yc))  # diag(Xc Xcᵀ), diag(Yc Ycᵀ)
    sx, sy = a.sum(), b.sum()  # positive: check_pair rejected constant inputs (a zero would show as NaN below)
    shifts = None
    if unbiased:
        # U-centring of the scaled Grams: with K̃ = K − diag(a) and r = K̃1 = Xc(Xcᵀ1) − a (a vector, from the
        # features), Ũ_ij = K_ij − (r_i + r_j)/(n−2) + 1ᵀr/((n−1)(n−2)) off the diagonal. Taking the inner
        # products of the U-centred strips, rather than expanding Song's four terms, avoids their
        # cancellation: on heavy-tailed data with n ≪ p the terms cancel to 1e-9 of their size.
        n = x.shape[0]
        shifts = tuple(_u_shift((t @ t.sum(dim=0)).div_(s) - d / s, n) for t, d, s in ((xc, a, sx), (yc, b, sy)))
    kl, kk, ll = _gram_inner_products(xc, yc, sx, sy, shifts)  # type: ignore[arg-type]
    _check_denominator(kk, ll, ("x", "y"))
    return torch.div(kl, (kk * ll).sqrt()).to(x.dtype)


def _u_shift(rows: torch.Tensor, n: int) -> torch.Tensor:
    """c with Ũ_ij = K_ij + c_i + c_j (i ≠ j) for a Gram whose zero-diagonal row sums are ``rows``."""
    return rows.sum() / (2 * (n - 1) * (n - 2)) - rows / (n - 2)


def _scaled_linear_gram(xc: torch.Tensor) -> torch.Tensor:
    """Xc Xcᵀ / tr(Xc Xcᵀ): H X Xᵀ H is Xc Xcᵀ, already double-centred; the scale keeps squares below 1."""
    k = xc @ xc.T
    return k.div_(k.trace())


def _unbiased_linear_feature_terms(
    x: torch.Tensor,
    y: torch.Tensor,
    sx: torch.Tensor,
    sy: torch.Tensor,
    sq_xy: torch.Tensor,
    sq_xx: torch.Tensor,
    sq_yy: torch.Tensor,
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Unbiased HSIC(K, L), HSIC(K, K), HSIC(L, L) for linear kernels without any n×n matrix.

    With K = XXᵀ, a = diag(K) (squared row norms) and c = Xᵀ1 (column sums):
    tr(K̃L̃) = ‖XᵀY‖² − a·b, 1ᵀK̃1 = ‖c‖² − Σa, K̃1 = Xc − a. ``sq_xy`` etc. are ‖XᵀY‖², ‖XᵀX‖², ‖YᵀY‖² of
    the products already divided by ``sx = ‖X‖²`` and ``sy = ‖Y‖²``, so every term is computed for X/‖X‖ and
    Y/‖Y‖, in the dtype of those sums (float64). Each comes with the scale of its terms (see
    :func:`unbiased_hsic_with_scale`).
    """
    n = x.shape[0]
    acc = sq_xy.dtype
    a, b = ((x * x).sum(dim=1) / sx).to(acc), ((y * y).sum(dim=1) / sy).to(acc)
    cx, cy = x.sum(dim=0), y.sum(dim=0)
    kx1, ly1 = ((x @ cx) / sx).to(acc) - a, ((y @ cy) / sy).to(acc) - b
    sum_k, sum_l = ((cx @ cx) / sx).to(acc) - a.sum(), ((cy @ cy) / sy).to(acc) - b.sum()
    return (
        unbiased_hsic_with_scale(sq_xy, a @ b, sum_k, sum_l, kx1 @ ly1, n),
        unbiased_hsic_with_scale(sq_xx, a @ a, sum_k, sum_k, kx1 @ kx1, n),
        unbiased_hsic_with_scale(sq_yy, b @ b, sum_l, sum_l, ly1 @ ly1, n),
    )


def _centered_radial_gram(
    x: torch.Tensor, kernel: str, sigma: float | None, median_fraction: float, unbiased: bool | str, name: str
) -> torch.Tensor:
    k = radial_from_sq_distances(squared_distances(x), kernel, sigma, median_fraction, name)
    return _center_for(unbiased)(k)


def _centered_gram(
    x: torch.Tensor, kernel: str, sigma: float | None, median_fraction: float, unbiased: bool | str, name: str
) -> torch.Tensor:
    """The centred Gram whose inner products give HSIC (up to a constant that cancels in CKA)."""
    if kernel != "linear":
        return _centered_radial_gram(x, kernel, sigma, median_fraction, unbiased, name)
    k = _scaled_linear_gram(_centered(x))
    if unbiased == "lange":
        return _zero_diag(k)  # already double-centred
    return _u_center(k) if unbiased else k


def _layer_list(value: Any, name: str) -> list[Any]:
    """A sequence of representations: a list, a tuple or any iterable of arrays (a generator is read once);
    one array is refused, since its rows would be read as representations."""
    if isinstance(value, (torch.Tensor, np.ndarray)) or hasattr(value, "__array__") or hasattr(value, "__dlpack__"):
        shape = tuple(getattr(value, "shape", ()))
        raise InvalidParameterError(
            f"{name} is one array of shape {shape}, whose rows would be read as {shape[0] if shape else '?'} "
            f"representations; pass a list of representations: cka_matrix([x]) (or [x, y, ...])"
        )
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise InvalidParameterError(f"{name} must be a list of representations; got {type(value).__name__}")
    return list(value)


@full_precision_matmul
def cka_matrix(
    xs: Sequence[Any],
    ys: Sequence[Any] | None = None,
    *,
    kernel: Kernel = "linear",
    unbiased: Unbiased = False,
    sigma: float | None = None,
    median_fraction: float = 1.0,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """CKA between every pair of representations in two sequences of the same n samples.

    Each representation's centred Gram is built once; all pairs then come from one matrix product of the
    flattened, normalised Grams, with no loop over pairs.

    Parameters
    ----------
    xs : sequence of array_like or torch.Tensor, each of shape (n, ...)
        Representations of the same n samples, e.g. every layer of model A; widths may differ.
    ys : sequence of array_like or torch.Tensor, optional
        A second sequence (e.g. every layer of model B). Default: ``xs`` itself, whose Grams are then
        built once.
    kernel, unbiased, sigma, median_fraction, dtype
        As in :func:`cka`; ``sigma=None`` takes the median bandwidth of each representation separately.

    Returns
    -------
    torch.Tensor, shape (len(xs), len(ys))
        Entry ``[i, j]`` is CKA between ``xs[i]`` and ``ys[j]``. A constant representation gives a row or
        column of NaN, with a :class:`ReprsimWarning` naming its index.

    Notes
    -----
    Memory is O((len(xs) + len(ys)) · n²); for datasets too large for that, stream batches into
    :class:`reprsim.streaming.MinibatchCKAMatrix`.

    Examples
    --------
    >>> import torch
    >>> from reprsim import cka_matrix
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> x = torch.randn(64, 16, dtype=torch.float64)
    >>> m = cka_matrix([x, 2 * x, torch.randn(64, 4, dtype=torch.float64)])
    >>> m.shape
    torch.Size([3, 3])
    >>> round(float(m[0, 1]), 6), bool(torch.allclose(m, m.T))
    (1.0, True)
    """
    check_kernel(kernel, sigma, median_fraction)
    unbiased = check_unbiased(unbiased)
    same = ys is None or ys is xs
    xs = _layer_list(xs, "xs")
    ys_seq = xs if same else _layer_list(ys, "ys")
    if len(xs) == 0 or len(ys_seq) == 0:
        raise ShapeMismatchError(
            f"cka_matrix needs at least one representation in each sequence; got {len(xs)} and {len(ys_seq)}"
        )
    named = [(f"xs[{i}]", v) for i, v in enumerate(xs)]
    if not same:
        named += [(f"ys[{j}]", v) for j, v in enumerate(ys_seq)]
    mats = {name: as_matrix(v, name, dtype=dtype) for name, v in named}
    first = mats[named[0][0]]
    check_same_samples(mats)
    check_n_samples(first.shape[0], bool(unbiased))
    for name, m in mats.items():
        check_finite(m, name)
    check_same_device(mats)
    amaxes = torch.stack([m.detach().abs().max().double() for m in mats.values()]).tolist()  # one host sync
    for (name, m), amax in zip(list(mats.items()), amaxes):
        if kernel == "linear" or sigma is None:
            mats[name] = rescaled(m, amax)
        else:
            check_magnitude(m, amax, name)
    common = first.dtype
    for m in mats.values():
        common = torch.promote_types(common, m.dtype)

    grams = []
    constant = []
    for name, m in mats.items():
        m = m.to(common)
        if is_constant(m):
            constant.append(name)
            grams.append(torch.full((m.shape[0] ** 2,), float("nan"), dtype=common, device=m.device))
            continue
        g = _centered_gram(m, kernel, sigma, median_fraction, unbiased, name).reshape(-1)
        grams.append(g / frobenius(g))
    if constant:
        warnings.warn(
            f"{', '.join(constant)} {'is' if len(constant) == 1 else 'are'} constant over all samples; "
            f"CKA with {'it' if len(constant) == 1 else 'them'} is undefined and reported as NaN",
            ReprsimWarning,
            stacklevel=2,
        )
    ga = torch.stack(grams[: len(xs)])
    gb = ga if same else torch.stack(grams[len(xs) :])
    return ga @ gb.T


@full_precision_matmul
def batch_gram(x: torch.Tensor, kernel: str, sigma: float | None, median_fraction: float, name: str) -> torch.Tensor:
    """The (n, n) Gram of one representation of one batch, before its diagonal is zeroed (see
    :func:`zero_diagonal_grams`, which unbiased HSIC consumes).

    Linear Grams are built from data shifted by its first row: the estimator is translation invariant, the
    shift keeps float32 accurate for offset features, and an exactly constant representation gives an
    exactly zero Gram. Not rescaled: minibatch CKA sums HSIC over batches, so each batch keeps its own
    scale. Computed in at least float32.
    """
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()
    if kernel != "linear":
        return radial_from_sq_distances(squared_distances(x), kernel, sigma, median_fraction, name)
    u = x - x[:1]
    return u @ u.T


def zero_diagonals_(grams: torch.Tensor) -> torch.Tensor:
    """Zero the diagonal of every Gram in an (L, n, n) stack, in place (one kernel for all layers)."""
    grams.diagonal(dim1=-2, dim2=-1).zero_()
    return grams


@full_precision_matmul
def zero_diagonal_grams(
    xs: Sequence[torch.Tensor], kernel: str, sigma: float | None, median_fraction: float, names: Sequence[str]
) -> torch.Tensor:
    """:func:`batch_gram` of every representation of one batch, stacked with zeroed diagonals: (len(xs), n, n)."""
    return zero_diagonals_(torch.stack([batch_gram(x, kernel, sigma, median_fraction, nm) for x, nm in zip(xs, names)]))


@full_precision_matmul
def unbiased_hsic_pairs(
    ga: torch.Tensor, gb: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Unbiased HSIC between every pair of stacked zero-diagonal Grams, and of each with itself.

    ``ga`` is (La, n, n), ``gb`` is (Lb, n, n) or None for ``ga`` itself, both with zero diagonals (see
    :func:`zero_diagonal_grams`). Returns the (La, Lb) cross matrix and the (La,) and (Lb,) self terms. All
    pairs come from one product of the flattened Grams plus row-sum and total-sum corrections (the terms of
    :func:`unbiased_hsic_from_terms`).
    """
    n = ga.shape[-1]

    def stats(g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rows = g.sum(dim=-1)
        return g.reshape(g.shape[0], -1), rows, rows.sum(dim=-1)

    fa, ra, ta = stats(ga)
    fb, rb, tb = (fa, ra, ta) if gb is None else stats(gb)
    cross = unbiased_hsic_from_terms(fa @ fb.T, ta[:, None], tb[None, :], ra @ rb.T, n)
    if gb is None:
        # self terms from the same product as the cross terms: a layer against itself is then exactly 1
        self_a = cross.diagonal().clone()
        return cross, self_a, self_a
    self_a = unbiased_hsic_from_terms((fa * fa).sum(dim=1), ta, ta, (ra * ra).sum(dim=1), n)
    self_b = unbiased_hsic_from_terms((fb * fb).sum(dim=1), tb, tb, (rb * rb).sum(dim=1), n)
    return cross, self_a, self_b


class CKA(Measure):
    """Centered kernel alignment as a measure object, for :func:`reprsim.compare` and the measure registry.

    Parameters
    ----------
    unbiased : bool or "lange", default False
        True: the unbiased HSIC estimator of Song et al. (2012); ``"lange"``: Lange et al.'s (the double-centred
        Grams without their diagonals), as in :func:`reprsim.cka` (exact estimator only).
    estimator : {"exact", "minibatch"}, default "exact"
        ``exact``: linear CKA of the whole dataset, streamed from the shared cross moments (widths up to a few
        thousand). ``minibatch``: minibatch CKA of Nguyen et al. (2021), unbiased HSIC summed over batches,
        any kernel and width.
    kernel : {"linear", "rbf", "laplace"}, default "linear"
        With ``estimator="exact"``, RBF or Laplace CKA of the whole dataset from every sample's features,
        blockwise (their Grams do not stream from moments; in ``compare`` the pooled features are kept, as for
        the other sample-space measures).
    sigma, median_fraction
        RBF or Laplace bandwidth, as in :func:`reprsim.cka`.
    chunk_rows : int, optional
        Exact RBF or Laplace CKA: rows per strip of the kernels (see :func:`reprsim.cka`).

    Examples
    --------
    >>> import numpy as np
    >>> from reprsim.measures import CKA
    >>> x = np.random.default_rng(0).normal(size=(100, 8))
    >>> round(CKA()(x, 2 * x), 6)
    1.0
    """

    name = "cka"
    form = "score"
    symmetric = True
    invariances = frozenset({"orthogonal", "isotropic_scaling", "translation", "permutation"})

    def __init__(
        self,
        unbiased: Unbiased = False,
        estimator: Literal["exact", "minibatch"] = "exact",
        kernel: Kernel = "linear",
        sigma: float | None = None,
        median_fraction: float = 1.0,
        chunk_rows: int | None = None,
        **removed: Any,
    ) -> None:
        refuse_renamed(type(self).__name__, removed)
        if estimator not in ("exact", "minibatch"):
            raise InvalidParameterError(f"estimator must be 'exact' or 'minibatch'; got {estimator!r}")
        check_kernel(kernel, sigma, median_fraction)
        unbiased = check_unbiased(unbiased)
        if chunk_rows is not None:
            strip_rows(1, chunk_rows)
        if estimator == "minibatch" and unbiased:
            raise InvalidParameterError(
                f"minibatch CKA always uses unbiased HSIC per batch (Song et al.'s); drop unbiased={unbiased!r}"
            )
        self.unbiased: Unbiased = unbiased
        self.estimator, self.kernel = estimator, kernel
        self.sigma = None if sigma is None else float(sigma)
        self.median_fraction = float(median_fraction)
        self.chunk_rows = chunk_rows
        if estimator == "minibatch":
            self.stream = "minibatch"
        else:  # linear CKA streams exactly from moments; an RBF kernel needs every sample (blockwise)
            self.stream = "moments" if kernel == "linear" else "samples"
            self.sample_resampling = "blocks"  # a smooth kernel statistic: the jackknife (recomputed) covers
        self.fourth = bool(self.unbiased) and self.stream == "moments"
        # Song's unbiased HSIC (per batch, or over the whole data) estimates the population HSIC without bias, and
        # Lange's nearly so (its centring uses the sample means; its bias is as small as Song's in the
        # simulation): the ratio is consistent and its intervals cover the population CKA (tests/test_coverage.py)
        if kernel == "linear" and (self.unbiased or estimator == "minibatch"):
            self.target = "population"
        self.min_samples = 4 if self.unbiased else 2
        if self.unbiased or estimator == "minibatch":
            self.range = (-1.0, 1.0)  # unbiased HSIC can be negative; it is never clamped
        if kernel != "linear":
            # a median bandwidth scales with the data; a fixed one does not
            inv = {"orthogonal", "translation", "permutation"} | ({"isotropic_scaling"} if sigma is None else set())
            self.invariances = frozenset(inv)

    @property
    def id(self) -> str:
        if self.kernel == "linear":
            kernel = "linear"
        elif self.sigma is not None:
            kernel = f"({self.kernel}-sigma={num(self.sigma)})"
        else:
            kernel = f"({self.kernel}-median_fraction={num(self.median_fraction)})"
        estimator = "-estimator=minibatch" if self.estimator == "minibatch" else ""
        hsic = "lange" if self.unbiased == "lange" else ("song" if self.unbiased or estimator else "gretton")
        return f"cka-kernel={kernel}-hsic={hsic}{estimator}-score"

    @property
    def label(self) -> str:
        if self.estimator == "minibatch":
            return f"minibatch CKA ({self.kernel})"
        kind = {"linear": "linear", "rbf": "RBF", "laplace": "Laplace"}[self.kernel]
        if self.unbiased == "lange":
            return f"{kind} CKA (Lange's HSIC)"
        return f"unbiased {kind} CKA" if self.unbiased else f"{kind} CKA"

    def config(self) -> dict[str, Any]:
        out: dict[str, Any] = {"unbiased": self.unbiased, "estimator": self.estimator, "kernel": self.kernel}
        if self.kernel != "linear":
            out.update(sigma=self.sigma, median_fraction=self.median_fraction)
        return out

    def __call__(self, x: Any, y: Any) -> Any:
        if self.estimator == "minibatch":
            return evaluate(self, x, y)  # raises: minibatch CKA needs batches
        if self.kernel != "linear":
            return evaluate(self, x, y)
        return cka(x, y, unbiased=self.unbiased)

    def from_samples(
        self, x: torch.Tensor, y: torch.Tensor, cache_x: Cache = None, cache_y: Cache = None
    ) -> torch.Tensor:
        value: torch.Tensor = cka(
            x,
            y,
            kernel=self.kernel,
            unbiased=self.unbiased,
            sigma=self.sigma,
            median_fraction=self.median_fraction,
            chunk_rows=self.chunk_rows,
        )
        return value

    def null_trace(self, t: torch.Tensor) -> TraceSide:
        if self.estimator == "minibatch":
            raise NoTraceForm(
                "minibatch CKA is a ratio of sums over batches, not one trace statistic; test measure='cka' or "
                "'cka_unbiased' for an exact-moment null"
            )
        if self.unbiased == "lange":
            raise NoTraceForm(
                "Lange's HSIC drops the diagonals of double-centred Grams, whose permutation moments are not among "
                "the exact forms here (double- or U-centred)"
            )
        if self.kernel == "linear":
            return linear_side(t, bool(self.unbiased))
        n = t.shape[0]
        if n > DENSE_NULL_MAX:
            raise NoTraceForm(
                f"the exact null of {self.label} holds n × n kernels and their cube; n = {n} is beyond {DENSE_NULL_MAX}"
            )
        d2 = squared_distances(t.to(torch.float64))
        k = radial_from_sq_distances(d2, self.kernel, self.sigma, self.median_fraction, "x")
        return dense_side(k, "u" if self.unbiased else "double")

    def from_moments(self, m: Moments) -> torch.Tensor:
        tx = check_variance(m, "x", "CKA")
        ty = check_variance(m, "y", "CKA")
        if not self.unbiased:
            # normalised by the traces first, so sums of squares of large activations cannot overflow
            cxx, cyy, cxy = m.cxx / tx, m.cyy / ty, m.cxy / (tx.sqrt() * ty.sqrt())
            return inner(cxy, cxy) / (frobenius(cxx) * frobenius(cyy))
        if self.unbiased == "lange":
            return _lange_from_moments(m, tx, ty)
        kl, kk, ll = unbiased_moment_terms(m)
        for name, v in (("x", kk[0]), ("y", ll[0])):
            if not bool(v > 0):
                raise ConstantRepresentationError(
                    f"the unbiased HSIC of {name} with itself is {float(v):.3g} ≤ 0, so unbiased CKA is undefined; "
                    "check for a constant or nearly constant representation"
                )
        return kl[0] / (kk[0] * ll[0]).sqrt()


def _lange_from_moments(m: Moments, tx: torch.Tensor, ty: torch.Tensor) -> torch.Tensor:
    """Linear CKA with Lange et al.'s HSIC from the moments: (‖Cxy‖² − Σab) / √((‖Cxx‖² − Σa²)(‖Cyy‖² − Σb²)),
    with a, b the squared row norms of the centred data (the Grams' diagonals), every term divided by the traces
    first."""
    f = m.fourth
    if f is None:
        raise InvalidParameterError("CKA with Lange's HSIC needs the fourth-order moments; stream with fourth=True")
    cxx, cyy, cxy = m.cxx / tx, m.cyy / ty, m.cxy / (tx.sqrt() * ty.sqrt())
    num = inner(cxy, cxy) - f.ab / (tx * ty)
    dx, dy = inner(cxx, cxx) - f.aa / (tx * tx), inner(cyy, cyy) - f.bb / (ty * ty)
    for name, v in (("x", dx), ("y", dy)):
        if not bool(v > 0):
            raise ConstantRepresentationError(
                f"{name}'s centred Gram without its diagonal is zero, so CKA with Lange's HSIC is undefined; check "
                "for a constant representation, or one that varies in a single sample"
            )
    return num / (dx * dy).sqrt()


def unbiased_moment_terms(
    m: Moments,
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Unbiased HSIC(K, L), HSIC(K, K), HSIC(L, L), each with the scale of its terms, from centred moments.

    In the frame of the means (Σu = 0), 1ᵀK̃1 = −Σa and 1ᵀK̃L̃1 = Σab, so the four terms of Song et al.
    reduce to ‖XcᵀYc‖², Σab and the traces (a, b: squared row norms of the centred data).
    """
    f = m.fourth
    if f is None:
        raise InvalidParameterError("unbiased CKA needs the fourth-order moments; stream with fourth=True")
    n = m.n
    sa, sb = -m.cxx.diagonal().sum(), -m.cyy.diagonal().sum()
    kl = unbiased_hsic_with_scale(inner(m.cxy, m.cxy), f.ab, sa, sb, f.ab, n)
    kk = unbiased_hsic_with_scale(inner(m.cxx, m.cxx), f.aa, sa, sa, f.aa, n)
    ll = unbiased_hsic_with_scale(inner(m.cyy, m.cyy), f.bb, sb, sb, f.bb, n)
    return kl, kk, ll


register("cka", lambda: CKA())
register("cka_unbiased", lambda: CKA(unbiased=True))
register("cka_minibatch", lambda: CKA(estimator="minibatch"))
register("cka_rbf", lambda: CKA(kernel="rbf"))
register("cka_lange", lambda: CKA(unbiased="lange"))
register("cka_laplace", lambda: CKA(kernel="laplace"))
