"""Streaming CKA: :class:`LinearCKA` (exact, on the shared cross moments), :class:`MinibatchCKA` and
:class:`MinibatchCKAMatrix` (Nguyen, Raghu & Kornblith 2021).

The mathematics of a single batch lives in :mod:`reprsim.measures._cka`; the declared-state protocol in
:mod:`reprsim.streaming._protocol`.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .._precision import full_precision_matmul
from .._validation import Kernel, check_bool, check_finite, check_kernel
from ..errors import (
    ConstantRepresentationError,
    DeviceMismatchError,
    IncompatibleStateError,
    InsufficientSamplesError,
    InvalidParameterError,
    ReprsimWarning,
    ShapeMismatchError,
)
from ..measures._cka import (
    CKA,
    amplification,
    unbiased_hsic_pairs,
    unbiased_moment_terms,
    zero_diagonal_grams,
)
from ._moments import _MomentState
from ._protocol import Dims, Pending, _Accumulator, _coerce_batch, batch_layers

__all__ = ["LinearCKA", "MinibatchCKA", "MinibatchCKAMatrix"]


class LinearCKA(_MomentState):
    """Exact streaming linear CKA: after any sequence of batches, equal to :func:`reprsim.cka` on their
    concatenation.

    The state of :class:`CrossMoments` for one pair of representations (it shares that state's arithmetic, not
    its interface: one tensor per side, and :meth:`compute` is linear CKA): the sample count, means and centred
    co-moments XcᵀXc, YcᵀYc, XcᵀYc (and, for the unbiased estimator, the
    row-norm moments), merged with the parallel update of Chan et al., so memory is O(p² + q² + pq) whatever
    the number of samples and a large common offset of the features costs no accuracy.

    Parameters
    ----------
    unbiased : bool, default False
        Use the unbiased HSIC estimator of Song et al. (2012) (needs 4 samples in total; batches may have any
        size).
    dtype : {torch.float64, torch.float32}, default torch.float64
        Dtype of the state and of the per-batch products; float16/bfloat16 batches are accumulated in it.
        The unbiased estimator needs float64 (its fourth-order terms cancel in :meth:`compute`).

    Notes
    -----
    Accuracy: the biased estimator agrees with the float64 reference to about 1e-12 (float64 state) or 1e-6
    (float32). The unbiased one subtracts large terms (‖XcᵀYc‖² and Σ aᵢbᵢ, with aᵢ the squared centred row
    norms) that nearly cancel when a few rows dominate, e.g. with far more features than samples;
    :meth:`compute` estimates that loss and warns (:class:`ReprsimWarning`) when the result may be off by more
    than 1e-10, in which case :func:`reprsim.cka` on the concatenated data, which centres the Grams, keeps
    full accuracy.

    Examples
    --------
    >>> import torch
    >>> from reprsim import cka
    >>> from reprsim.streaming import LinearCKA
    >>> x, y = torch.randn(1000, 16, dtype=torch.float64), torch.randn(1000, 8, dtype=torch.float64)
    >>> acc = LinearCKA()
    >>> for xb, yb in zip(x.split(128), y.split(128)):
    ...     acc.update(xb, yb)
    >>> abs(acc.compute() - float(cka(x, y))) < 1e-12
    True
    """

    def __init__(self, unbiased: bool = False, dtype: torch.dtype = torch.float64) -> None:
        unbiased = check_bool(unbiased, "unbiased")
        if unbiased and dtype != torch.float64:
            raise InvalidParameterError(
                f"LinearCKA(unbiased=True) keeps fourth-order sums whose terms cancel in compute(); a {dtype} state "
                "loses up to 6e-2 of the result. Use the default dtype=torch.float64 (batches of any dtype are "
                "accepted)"
            )
        super().__init__(fourth=bool(unbiased), dtype=dtype)
        self.unbiased = bool(unbiased)

    def _config(self) -> dict[str, Any]:
        return {"unbiased": self.unbiased, "dtype": str(self._dtype)}

    def prepare(self, x: Any, y: Any = None, *, checked: bool = False, start: int | None = None) -> Pending:
        """A batch's contribution, checked, to :meth:`commit` later (see :class:`Pending`): ``x`` and ``y`` one
        tensor each, (b, ...), the same b samples."""
        if isinstance(x, (list, tuple)) or isinstance(y, (list, tuple)):
            raise InvalidParameterError(
                "LinearCKA compares one pair of representations (one tensor per side); for lists of layers use "
                "CrossMoments, whose compute_matrix('cka') gives every pair"
            )
        xt, yt = _coerce_batch(x, y)
        return super().prepare(xt, yt, checked=checked, start=start)

    def update(self, x: Any, y: Any = None) -> None:
        """Add a batch: ``x`` of shape (b, ...) and ``y`` of shape (b, ...), the same b samples in order."""
        self._update(x, y)

    def compute(self) -> float:
        """CKA of everything seen so far, as a Python float."""
        self._require_samples(4 if self.unbiased else 2, f"{'unbiased' if self.unbiased else 'biased'} CKA")
        m = self.moments()
        value = CKA(unbiased=self.unbiased).from_moments(m)
        if self.unbiased:
            self._warn_if_cancelled(float(amplification(*unbiased_moment_terms(m))))
        return float(value)

    def _warn_if_cancelled(self, amp: float) -> None:
        """Warn when the unbiased terms cancel beyond the documented accuracy of the state dtype."""
        eps = float(torch.finfo(self._dtype).eps)  # float64: the unbiased state is never float32
        if amp * eps > 1e-10:
            warnings.warn(
                f"the unbiased estimator's terms cancel to 1/{amp:.1e} of their size on this data (rows whose norms "
                f"dominate, typically many more features than samples), so this streamed value is accurate to "
                f"about {amp * eps:.0e} only. reprsim.cka(x, y, unbiased=True) on the concatenated data keeps "
                "full accuracy there (it centres the n×n Grams)",
                ReprsimWarning,
                stacklevel=3,
            )


def _check_records(records: torch.Tensor, batches: int, totals: Sequence[torch.Tensor]) -> None:
    """Per-batch records must be one row per batch whose columns sum to the state's totals (up to rounding)."""
    if records.shape[0] != batches:
        raise IncompatibleStateError(f"state holds {records.shape[0]} per-batch records for {batches} batches")
    total = torch.cat([t.reshape(-1) for t in totals])
    summed = records.sum(dim=0)
    scale = records.abs().sum(dim=0) + total.abs()
    if bool(((summed - total).abs() > 1e-6 * scale + 1e-300).any()):
        raise IncompatibleStateError("state's per-batch records do not add up to its totals; the state is inconsistent")


class _MinibatchBase(_Accumulator):
    """Minibatch CKA of Nguyen, Raghu & Kornblith (2021): per batch, unbiased HSIC of (K, L), (K, K) and
    (L, L) for every pair of layers, summed over batches; CKA is the ratio of the sums."""

    def __init__(
        self,
        kernel: Kernel = "linear",
        sigma: float | None = None,
        median_fraction: float = 1.0,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        super().__init__(dtype)
        check_kernel(kernel, sigma, median_fraction)
        self.kernel = kernel
        self.sigma = None if sigma is None else float(sigma)
        self.median_fraction = float(median_fraction)
        self._declare_states()

    def _declare_states(self) -> None:
        """Each estimator declares its own state (see _Accumulator._add_state)."""
        raise NotImplementedError

    def _config(self) -> dict[str, Any]:
        return {
            "kernel": self.kernel,
            "sigma": self.sigma,
            "median_fraction": self.median_fraction,
            "dtype": str(self._dtype),
        }

    @full_precision_matmul
    def layer_grams(self, values: Sequence[Any], names: Sequence[str]) -> tuple[torch.Tensor, tuple[int, ...]]:
        """Check one batch of one side's layers and build their zero-diagonal Grams (no state touched).

        Returns the (L, b, b) Grams and the layers' widths. All layers are checked for NaN/inf with one host
        synchronisation; the exact per-input count is only computed when something is wrong.
        """
        tensors, b, on = batch_layers(values, names)
        device = on.device
        if b < 4:
            raise InsufficientSamplesError(
                f"minibatch CKA computes the unbiased HSIC of each batch, which needs at least 4 rows; got a "
                f"batch of {b}. Drop the incomplete last batch (DataLoader(drop_last=True)) or use larger "
                "batches"
            )
        self._prepare_device(device)
        sums = torch.stack([t.sum().to(torch.float64) for t in tensors])
        if not bool(torch.isfinite(sums).all()):
            for name, t in zip(names, tensors):
                check_finite(t, name)
        dtype = torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32
        grams = zero_diagonal_grams(
            [t.to(dtype) for t in tensors], self.kernel, self.sigma, self.median_fraction, names
        )
        return grams, tuple(t.shape[1] for t in tensors)

    def _pair_terms(
        self, ga: torch.Tensor, wa: tuple[int, ...], gb: torch.Tensor | None, wb: tuple[int, ...] | None
    ) -> tuple[Dims, torch.Tensor, torch.Tensor, torch.Tensor]:
        """HSIC terms of one batch from both sides' Grams (``gb`` None: the A side against itself)."""
        if gb is not None:
            if gb.shape[-1] != ga.shape[-1]:
                raise ShapeMismatchError(
                    f"both sides of a batch must hold the same samples; got {ga.shape[-1]} and {gb.shape[-1]} rows"
                )
            if gb.device != ga.device:
                raise DeviceMismatchError(f"the two sides of this batch are on {ga.device} and {gb.device}")
        wb = wa if wb is None else wb
        dims = (len(wa), len(wb), *wa, *wb)
        if self._dims is not None and dims != self._dims:
            raise ShapeMismatchError(
                f"this batch has layers of widths {self._describe(dims)} but earlier batches had "
                f"{self._describe(self._dims)}; every batch must come from the same layers"
            )
        # The pair arithmetic (L_a·L_b·b² operations, small next to building the Grams) runs in float64 whatever
        # the state dtype: the unbiased estimator's terms cancel, and float32 there cost 1.9e-4.
        wide = torch.float64 if ga.device.type != "mps" else torch.float32
        cross, self_a, self_b = unbiased_hsic_pairs(ga.to(wide), None if gb is None else gb.to(wide))
        return dims, cross.to(self._dtype), self_a.to(self._dtype), self_b.to(self._dtype)

    def _describe(self, dims: Dims) -> str:
        la, lb = dims[0], dims[1]
        return f"xs {list(dims[2 : 2 + la])}, ys {list(dims[2 + la : 2 + la + lb])}"


class MinibatchCKAMatrix(_MinibatchBase):
    """Minibatch CKA between every layer of model A and every layer of model B, streamed over batches.

    Per batch, each layer's Gram is built once and all pair HSICs come from one matrix product of the
    flattened zero-diagonal Grams plus row-sum and total-sum corrections; no loop over pairs and no host
    synchronisation per pair. The state is three sums of shape (n_a, n_b), (n_a,) and (n_b,).

    Parameters
    ----------
    kernel : {"linear", "rbf"}, default "linear"
    sigma : float, optional
        RBF bandwidth. By default the median convention of :func:`reprsim.cka`, computed per batch and per
        layer: the kernel then changes slightly from batch to batch.
    median_fraction : float, default 1.0
    dtype : torch.dtype, default torch.float64
        Dtype of the accumulated sums (per-batch Grams are computed in the batch's own precision, at least
        float32).
    records : bool, default False
        Also keep every batch's HSIC terms (:attr:`hsic_records`, (n_a·n_b + n_a + n_b) numbers per batch), for
        the jackknife over batches (:func:`reprsim.inference.stream_interval`).

    Examples
    --------
    >>> import torch
    >>> from reprsim.streaming import MinibatchCKAMatrix
    >>> acc = MinibatchCKAMatrix()
    >>> for _ in range(4):
    ...     a = torch.randn(64, 32)
    ...     acc.update([a, a.tanh()], [2 * a, torch.randn(64, 8)])
    >>> m = acc.compute()
    >>> m.shape
    torch.Size([2, 2])
    >>> round(float(m[0, 0]), 6)
    1.0
    """

    def __init__(
        self,
        kernel: Kernel = "linear",
        sigma: float | None = None,
        median_fraction: float = 1.0,
        dtype: torch.dtype = torch.float64,
        records: bool = False,
    ) -> None:
        self.records = check_bool(records, "records")
        super().__init__(kernel, sigma, median_fraction, dtype)

    def _config(self) -> dict[str, Any]:
        return {**super()._config(), "records": self.records}

    def _declare_states(self) -> None:
        self._add_state("n", lambda d: (), "sum")
        self._add_state("batches", lambda d: (), "sum")
        self._add_state("kl", lambda d: (d[0], d[1]), "sum")
        self._add_state("kk", lambda d: (d[0],), "sum")
        self._add_state("ll", lambda d: (d[1],), "sum")
        if self.records:
            self._add_state("records", lambda d: (0, d[0] * d[1] + d[0] + d[1]), "cat")

    def _check_invariants(self, state: Mapping[str, torch.Tensor], dims: Dims) -> None:
        """Every batch holds at least 4 samples; kept records are one row per batch and sum to the totals."""
        batches, n = float(state["batches"]), float(state["n"])
        if batches != round(batches) or batches < 0 or n < 4 * batches or (batches == 0) != (n == 0):
            raise IncompatibleStateError(
                f"state holds {n:g} samples in {batches:g} batches; minibatch CKA's batches hold at least 4 samples"
            )
        if self.records:
            _check_records(state["records"], int(batches), [state["kl"].reshape(-1), state["kk"], state["ll"]])

    @property
    def hsic_records(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-batch unbiased HSIC terms (with ``records=True``): (batches, n_a, n_b) HSIC(K_a, L_b),
        (batches, n_a) HSIC(K_a, K_a) and (batches, n_b) HSIC(L_b, L_b)."""
        if not self.records:
            raise InvalidParameterError("this accumulator keeps no per-batch records: create it with records=True")
        if self._dims is None:
            raise IncompatibleStateError("MinibatchCKAMatrix has seen no batch yet")
        la, lb = self._dims[0], self._dims[1]
        r = self._state["records"]
        return r[:, : la * lb].reshape(-1, la, lb), r[:, la * lb : la * lb + la], r[:, la * lb + la :]

    @full_precision_matmul
    def update(self, xs: Sequence[Any], ys: Sequence[Any] | None = None) -> None:
        """Add one batch: ``xs`` holds every layer of model A, ``ys`` every layer of model B (default:
        ``xs``), each of shape (b, ...), the same b ≥ 4 samples in the same order."""
        for side, v in (("xs", xs), ("ys", ys)):
            if v is not None and hasattr(v, "shape") and not isinstance(v, (list, tuple)):
                raise InvalidParameterError(
                    f"MinibatchCKAMatrix.update takes a list of layers per side; {side} is one array of shape "
                    f"{tuple(v.shape)}, whose rows would be read as layers. Pass update([x], [y]) (or use "
                    "MinibatchCKA for one pair)"
                )
        with torch.no_grad():
            ga, wa = self.layer_grams(xs, [f"xs[{i}]" for i in range(len(xs))])
            gb, wb = (None, None) if ys is None else self.layer_grams(ys, [f"ys[{j}]" for j in range(len(ys))])
            self.update_grams(ga, wa, gb, wb)

    @full_precision_matmul
    def update_grams(
        self,
        grams_a: torch.Tensor,
        widths_a: tuple[int, ...],
        grams_b: torch.Tensor | None = None,
        widths_b: tuple[int, ...] | None = None,
    ) -> None:
        """Add one batch from Grams built by :meth:`layer_grams` (zero diagonals, shape (L, b, b)).

        Lets a caller that compares one model with several others build each model's Grams once per batch.
        ``grams_b`` None compares side A with itself.
        """
        with torch.no_grad():
            self.commit(self.prepare_grams(grams_a, widths_a, grams_b, widths_b))

    @full_precision_matmul
    def prepare_grams(
        self,
        grams_a: torch.Tensor,
        widths_a: tuple[int, ...],
        grams_b: torch.Tensor | None = None,
        widths_b: tuple[int, ...] | None = None,
    ) -> Pending:
        """What one batch adds to the state, checked for shapes but not yet for finiteness (no host sync);
        add it with :meth:`commit`."""
        dims, cross, self_a, self_b = self._pair_terms(grams_a, widths_a, grams_b, widths_b)
        one = torch.ones((), dtype=self._dtype, device=grams_a.device)
        b = grams_a.shape[-1]
        contribution = {"n": one * b, "batches": one, "kl": cross, "kk": self_a, "ll": self_b}
        if self.records:
            contribution["records"] = torch.cat([cross.reshape(-1), self_a, self_b])[None]
        return Pending(self, dims, grams_a.device, contribution)

    @full_precision_matmul
    def compute(self, *, names_a: Sequence[str] | None = None, names_b: Sequence[str] | None = None) -> torch.Tensor:
        """The (n_a, n_b) matrix of minibatch CKA; a layer constant in every batch gives NaN and a warning
        (naming the layer by ``names_a``/``names_b`` when given)."""
        self._require_samples(4, "minibatch CKA")
        s = self._state
        name_a = (lambda i: f"xs[{i}]") if names_a is None else names_a.__getitem__
        name_b = (lambda j: f"ys[{j}]") if names_b is None else names_b.__getitem__
        bad = [name_a(i) for i in torch.nonzero(s["kk"] <= 0).flatten().tolist()]
        bad += [name_b(j) for j in torch.nonzero(s["ll"] <= 0).flatten().tolist()]
        if bad:
            warnings.warn(
                f"{', '.join(bad)} had zero variation in every batch (the same value for every sample: a dead unit, "
                "or a token that does not depend on the input); CKA with it is undefined and reported as NaN",
                ReprsimWarning,
                stacklevel=2,
            )
        kk = torch.where(s["kk"] > 0, s["kk"], torch.nan)
        ll = torch.where(s["ll"] > 0, s["ll"], torch.nan)
        return s["kl"] / torch.sqrt(torch.outer(kk, ll))


class MinibatchCKA(_MinibatchBase):
    """Minibatch CKA (Nguyen, Raghu & Kornblith, 2021) between two representations, for any kernel.

    Per batch, the unbiased HSIC of (K, L), (K, K) and (L, L) is added to running sums and
    ``compute()`` returns ``Σ HSIC(K, L) / sqrt(Σ HSIC(K, K) · Σ HSIC(L, L))``. With one batch of all samples
    it equals ``cka(x, y, unbiased=True)``. The per-batch triples are kept (three numbers a batch) in
    :attr:`hsic_records`, for uncertainty estimates.

    Parameters
    ----------
    kernel, sigma, median_fraction, dtype
        As in :class:`MinibatchCKAMatrix`.

    Examples
    --------
    >>> import torch
    >>> from reprsim.streaming import MinibatchCKA
    >>> acc = MinibatchCKA()
    >>> for _ in range(8):
    ...     x = torch.randn(32, 10)
    ...     acc.update(x, x @ torch.linalg.qr(torch.randn(10, 10))[0])  # a rotation of x
    >>> round(acc.compute(), 6), acc.hsic_records.shape
    (1.0, torch.Size([8, 3]))
    """

    def _declare_states(self) -> None:
        self._add_state("n", lambda d: (), "sum")
        self._add_state("kl", lambda d: (), "sum")
        self._add_state("kk", lambda d: (), "sum")
        self._add_state("ll", lambda d: (), "sum")
        self._add_state("records", lambda d: (0, 3), "cat")

    def _describe(self, dims: Dims) -> str:
        return f"x: {dims[2]}, y: {dims[3]}"

    def _check_invariants(self, state: Mapping[str, torch.Tensor], dims: Dims) -> None:
        """One record per batch of at least 4 samples, summing to the totals."""
        records = state["records"]
        if float(state["n"]) < 4 * records.shape[0] or (records.shape[0] == 0) != (float(state["n"]) == 0):
            raise IncompatibleStateError(
                f"state holds {float(state['n']):g} samples in {records.shape[0]} batches; minibatch CKA's batches "
                "hold at least 4 samples"
            )
        _check_records(records, records.shape[0], [state["kl"].reshape(1), state["kk"].reshape(1),
                                                   state["ll"].reshape(1)])  # fmt: skip

    @property
    def hsic_records(self) -> torch.Tensor:
        """(batches, 3) tensor of per-batch unbiased HSIC(K, L), HSIC(K, K), HSIC(L, L)."""
        return self._state["records"].clone() if self._dims is not None else torch.zeros((0, 3), dtype=self._dtype)

    @full_precision_matmul
    def update(self, x: Any, y: Any) -> None:
        """Add one batch: ``x`` of shape (b, ...) and ``y`` of shape (b, ...), the same b ≥ 4 samples."""
        with torch.no_grad():
            ga, wa = self.layer_grams([x], ["x"])
            gb, wb = self.layer_grams([y], ["y"])
            dims, cross, self_a, self_b = self._pair_terms(ga, wa, gb, wb)
            kl, kk, ll = cross[0, 0], self_a[0], self_b[0]
            device = ga.device
            self._commit(
                dims,
                device,
                {
                    "n": torch.tensor(float(ga.shape[-1]), dtype=self._dtype, device=device),
                    "kl": kl,
                    "kk": kk,
                    "ll": ll,
                    "records": torch.stack([kl, kk, ll])[None],
                },
            )

    @full_precision_matmul
    def compute(self) -> float:
        """Minibatch CKA of everything seen so far, as a Python float."""
        self._require_samples(4, "minibatch CKA")
        s = self._state
        for name, v in (("x", s["kk"]), ("y", s["ll"])):
            if not bool(v > 0):
                raise ConstantRepresentationError(
                    f"{name} had zero variation in every batch, so CKA is 0/0 (undefined); check for a dead layer"
                )
        return float(s["kl"] / (s["kk"] * s["ll"]).sqrt())
