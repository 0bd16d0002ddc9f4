"""Input coercion and checks shared by every public entry point.

Everything that crosses the public boundary goes through here: NumPy arrays, tensors and array-likes become
floating-point torch tensors of shape ``(n, features)``, and bad input is rejected with a message that says
what was expected, what was received, and how to fix it. No mathematics lives here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import torch
import torch.utils.dlpack

from .errors import (
    ConstantRepresentationError,
    DeviceMismatchError,
    InsufficientSamplesError,
    InvalidParameterError,
    NonFiniteError,
    ShapeMismatchError,
)

_LOW_PRECISION = (torch.float16, torch.bfloat16)
KERNELS = ("linear", "rbf", "laplace")
#: The kernels reprsim computes Grams with.
Kernel = Literal["linear", "rbf", "laplace"]


def as_matrix(x: Any, name: str, *, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Return ``x`` as a floating tensor of shape ``(n, features)``.

    Accepts torch tensors, NumPy arrays, any object exposing ``__dlpack__`` (JAX, CuPy, TensorFlow tensors: read
    through DLPack, on their device, without a copy) and anything ``np.asarray`` understands (``__array__``).
    Trailing dimensions are flattened; a 1-d input is one feature per sample. float16/bfloat16, integer and
    boolean inputs are upcast to float32 (float64 stays float64); ``dtype`` forces a floating dtype.
    The tensor keeps its device and, where no cast is needed, shares memory with the input.
    """
    if isinstance(x, torch.Tensor):
        t = x
    elif not isinstance(x, np.ndarray) and hasattr(x, "__dlpack__"):
        # JAX, CuPy, TensorFlow (and NumPy ≥ 1.22 arrays, handled below): DLPack shares the memory, on its device
        try:
            t = torch.utils.dlpack.from_dlpack(x)
        except (RuntimeError, TypeError, BufferError) as exc:
            raise InvalidParameterError(
                f"{name} (a {type(x).__name__}) exposes __dlpack__ but torch cannot read it ({exc}); convert it to "
                "a NumPy array or a torch tensor first"
            ) from exc
    else:
        try:
            arr = np.asarray(x)
        except Exception as exc:  # pragma: no cover - numpy's own message is kept as the cause
            raise InvalidParameterError(
                f"{name} must be a NumPy array or a torch tensor of shape (n_samples, ...); "
                f"got an object of type {type(x).__name__} that NumPy cannot convert"
            ) from exc
        if arr.dtype == object or arr.dtype.kind in "USV":
            raise InvalidParameterError(
                f"{name} must hold numbers; got a NumPy array of dtype {arr.dtype} "
                f"(type {type(x).__name__}). Convert it with np.asarray(..., dtype=float)."
            )
        if not (arr.flags.writeable and arr.flags.c_contiguous):
            arr = np.array(arr, order="C")  # from_numpy needs a writeable, positively strided buffer
        t = torch.from_numpy(arr)
    if t.layout != torch.strided:
        raise InvalidParameterError(
            f"{name} is a {t.layout} tensor; reprsim needs dense tensors. Convert it with {name}.to_dense() first"
        )
    if t.is_complex():
        raise InvalidParameterError(f"{name} must be real-valued; got dtype {t.dtype}")
    if t.ndim == 0:
        raise ShapeMismatchError(f"{name} must have shape (n_samples, ...) with at least one dimension; got a scalar")
    if t.ndim == 1:
        t = t.unsqueeze(1)
    elif t.ndim > 2:
        t = t.reshape(t.shape[0], math.prod(t.shape[1:]))
    if t.shape[1] == 0:
        raise ShapeMismatchError(
            f"{name} has no features: shape {tuple(t.shape)}; each sample needs at least one value"
        )
    dtype = check_compute_dtype(dtype)
    if dtype is not None:
        return t.to(dtype)
    if t.dtype in _LOW_PRECISION or not t.dtype.is_floating_point:
        return t.to(torch.float32)
    return t


def check_has_data(x: torch.Tensor, name: str) -> None:
    """Meta tensors have shapes but no values: say so instead of failing inside the first value check."""
    if x.device.type == "meta":
        raise InvalidParameterError(
            f"{name} is a meta tensor (shape {tuple(x.shape)}, no data); similarity needs real values. "
            "Materialise the model or tensor on a real device (e.g. model.to_empty(device='cpu') and load weights)"
        )


def check_finite(x: torch.Tensor, name: str) -> None:
    """Raise :class:`NonFiniteError` naming how many NaN and infinite values ``x`` holds."""
    check_has_data(x, name)
    # A finite sum proves every element finite (NaN and ±inf propagate) at a fraction of isfinite's cost;
    # only a non-finite sum (possibly a mere overflow) pays for the exact count.
    if bool(torch.isfinite(x.sum())):
        return
    finite = torch.isfinite(x)
    if bool(finite.all()):
        return
    n_nan = int(torch.isnan(x).sum())
    n_inf = int((~finite).sum()) - n_nan
    raise NonFiniteError(
        f"{name} contains {n_nan} NaN and {n_inf} infinite values out of {x.numel()} "
        f"(shape {tuple(x.shape)}); remove those samples or impute them (e.g. torch.nan_to_num) first"
    )


def min_samples(unbiased: bool) -> int:
    """Fewest samples an estimator is defined for: 2 (biased) or 4 (unbiased HSIC of Song et al.)."""
    return 4 if unbiased else 2


def check_n_samples(n: int, unbiased: bool, what: str = "CKA") -> None:
    need = min_samples(unbiased)
    if n < need:
        kind = "unbiased" if unbiased else "biased"
        raise InsufficientSamplesError(
            f"{kind} {what} needs at least {need} samples; got {n}. "
            + ("Use more samples or unbiased=False." if unbiased else "Use more samples.")
        )


def check_same_device(tensors: dict[str, torch.Tensor]) -> torch.device:
    """Return the common device of ``tensors`` or raise :class:`DeviceMismatchError` listing them all."""
    devices = {t.device for t in tensors.values()}
    if len(devices) > 1:
        where = ", ".join(f"{k} on {t.device}" for k, t in tensors.items())
        raise DeviceMismatchError(f"inputs must be on one device; got {where}. Move them with .to(device) first")
    return next(iter(tensors.values())).device


def check_same_samples(named: Mapping[str, torch.Tensor]) -> int:
    """Every tensor of ``named`` holds the same number of samples (rows); returns it. The one message for
    representations that cannot be compared sample by sample."""
    items = list(named.items())
    first_name, first = items[0]
    for name, t in items[1:]:
        if t.shape[0] != first.shape[0]:
            raise ShapeMismatchError(
                f"{first_name} and {name} must hold the same samples in the same order (one row per sample); got "
                f"{first.shape[0]} rows in {first_name} (shape {tuple(first.shape)}) and {t.shape[0]} in {name} "
                f"(shape {tuple(t.shape)})"
            )
    return int(first.shape[0])


def check_pair(
    x: Any,
    y: Any,
    *,
    unbiased: bool,
    dtype: torch.dtype | None,
    names: tuple[str, str] = ("x", "y"),
    rescale: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Coerce and check two representations of the same samples; return them in one common dtype.

    Besides shapes, devices and sample counts, both must be finite and neither constant. The value checks
    share one host synchronisation, which on a GPU would otherwise stall the queue once per check. With
    ``rescale`` (for scale-invariant measures), an input whose magnitude would overflow or underflow its
    products is divided by a power of two (see :func:`rescaled`).
    """
    dtype = check_compute_dtype(dtype)
    xt = as_matrix(x, names[0], dtype=dtype)
    yt = as_matrix(y, names[1], dtype=dtype)
    check_same_samples({names[0]: xt, names[1]: yt})
    check_same_device({names[0]: xt, names[1]: yt})
    check_n_samples(xt.shape[0], unbiased)
    check_has_data(xt, names[0])
    check_has_data(yt, names[1])
    common = torch.promote_types(xt.dtype, yt.dtype)
    xt, yt = xt.to(common), yt.to(common)
    # A finite sum proves every element finite (NaN and ±inf propagate); only a non-finite sum (possibly a
    # mere overflow) pays for check_finite's exact count. All value checks share one host synchronisation.
    amax_x, amax_y = xt.detach().abs().amax(), yt.detach().abs().amax()
    finite_x, finite_y, varies_x, varies_y, ax, ay = torch.stack(
        [
            torch.isfinite(xt.sum()).double(),
            torch.isfinite(yt.sum()).double(),
            relative_spread(xt, amax_x),
            relative_spread(yt, amax_y),
            amax_x.double(),
            amax_y.double(),
        ]
    ).tolist()
    if not (finite_x and finite_y):
        check_finite(xt, names[0])
        check_finite(yt, names[1])
    if rescale:
        xt, yt = rescaled(xt, ax), rescaled(yt, ay)
    else:
        for name, t, amax in ((names[0], xt, ax), (names[1], yt, ay)):
            check_magnitude(t, amax, name)
    for name, t, spread in ((names[0], xt, varies_x), (names[1], yt, varies_y)):
        check_spread(spread, t.dtype, name, t.shape[0], "CKA")
    return xt, yt


_SAFE = 2.0**32  # magnitudes whose squares and products of squares stay normal in float32


def rescaled(x: torch.Tensor, amax: float) -> torch.Tensor:
    """``x`` divided by a power of two near its largest magnitude when that is outside [2⁻³², 2³²].

    Products of values around 1e18 overflow float32 (and around 1e200, float64); squares of values around
    1e-30 underflow to zero and make a varying input look constant. Scale-invariant measures are unchanged
    by the division, which is exact (a power of two), so out-of-range inputs are brought to magnitude ~1
    instead of giving NaN or a false "constant" error.
    """
    if amax == 0.0 or 1.0 / _SAFE <= amax <= _SAFE:
        return x
    _, exponent = math.frexp(amax)
    return torch.ldexp(x, torch.tensor(-exponent, device=x.device)).to(x.dtype)


def check_magnitude(x: torch.Tensor, amax: float, name: str, dtype: torch.dtype | None = None) -> None:
    """For measures that are not scale invariant: refuse magnitudes whose squares leave the range of ``dtype``
    (the dtype the measure computes in; by default ``x``'s)."""
    dtype = x.dtype if dtype is None else dtype
    info = torch.finfo(dtype)
    if amax > 0 and not (math.sqrt(info.tiny) < amax < math.sqrt(info.max) / max(x.shape[1], 1)):
        raise InvalidParameterError(
            f"{name} holds values up to {amax:.3g}, whose squared distances leave the range of {dtype} "
            f"(overflow above about {math.sqrt(info.max):.1g}, underflow below about {math.sqrt(info.tiny):.1g}); "
            "rescale the data (and an explicit sigma with it), or use dtype=torch.float64"
        )


#: A representation counts as constant when the spread of its samples (the root-mean-square of its centred
#: values) is at most this many machine epsilons of its dtype times its magnitude (the root-mean-square of its
#: values). Rounding alone leaves a spread of a few epsilons: the mean of n equal values is itself rounded, so
#: an exactly constant layer (a dead unit, a zero-weight layer's bias) centres to residues of that size, on
#: which a measure would compute a meaningless number. Every measure and accumulator uses this one rule.
CONSTANT_EPS = 64.0


def constant_tolerance(dtype: torch.dtype) -> float:
    """The largest relative spread (see :data:`CONSTANT_EPS`) that counts as constant in ``dtype``."""
    return CONSTANT_EPS * float(torch.finfo(dtype).eps)


@torch.no_grad()
def relative_spread(x: torch.Tensor, amax: torch.Tensor | None = None) -> torch.Tensor:
    """The relative spread of an (n, p) representation, as a 0-d float64 tensor on its device (no host sync):
    sqrt(Σ‖x_i − x̄‖² / Σ‖x_i‖²), computed in float64 a block of rows at a time after division by the largest
    magnitude ``amax`` (so that no square overflows or underflows). 0 for an all-zero input."""
    n, p = x.shape
    top = (x.abs().amax() if amax is None else amax).double()
    scale = torch.where(top > 0, top, torch.ones_like(top))
    mean = x.sum(dim=0, dtype=torch.float64) / n / scale
    rows = max(1, 2**22 // max(p, 1))
    centred = torch.zeros((), dtype=torch.float64, device=x.device)
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    for start in range(0, n, rows):
        b = x[start : start + rows].double() / scale
        centred += (b - mean).square().sum()
        total += b.square().sum()
    return torch.where(total > 0, (centred / torch.where(total > 0, total, 1.0)).sqrt(), 0.0)


def spread_of_moments(n: int, mean: torch.Tensor, trace: torch.Tensor) -> float:
    """The relative spread of a representation from its moments: sqrt(tr(XcᵀXc) / (tr(XcᵀXc) + n‖x̄‖²))."""
    t, m = float(trace.detach()), mean.detach().double()
    top = max(float(m.abs().max()) if m.numel() else 0.0, math.sqrt(max(t, 0.0) / max(n, 1)))
    if top == 0.0 or not math.isfinite(top):
        return 0.0 if top == 0.0 else 1.0
    scaled_t, scaled_m = t / (top * top), float((m / top).square().sum())
    total = scaled_t + n * scaled_m
    return math.sqrt(max(scaled_t, 0.0) / total) if total > 0 else 0.0


def check_spread(spread: float, dtype: torch.dtype, name: str, n: int, what: str = "the measure") -> None:
    """Raise :class:`ConstantRepresentationError` when a relative spread counts as constant in ``dtype``."""
    if spread <= constant_tolerance(dtype):
        raise ConstantRepresentationError(
            f"{name} is constant: its {n} samples differ by no more than rounding (relative spread {spread:.2g}, "
            f"at most {constant_tolerance(dtype):.2g} counts as constant in {str(dtype).removeprefix('torch.')}), "
            f"so {what} is undefined. Check that the layer is not dead or saturated, or drop it"
        )


def check_varies(x: torch.Tensor, name: str, what: str = "the measure") -> None:
    """Raise :class:`ConstantRepresentationError` when ``x`` counts as constant (see :data:`CONSTANT_EPS`)."""
    check_spread(float(relative_spread(x)), x.dtype, name, x.shape[0], what)


def is_constant(x: torch.Tensor) -> bool:
    """True when ``x`` counts as constant (see :data:`CONSTANT_EPS`): it carries no information."""
    return float(relative_spread(x)) <= constant_tolerance(x.dtype)


def check_kernel(kernel: str, sigma: Any, median_fraction: Any) -> None:
    if kernel not in KERNELS:
        raise InvalidParameterError(f"kernel must be one of {KERNELS}; got {kernel!r}")
    if sigma is not None:
        check_bandwidth(sigma, "sigma", "Pass sigma=None to use median_fraction * sqrt(median squared distance)")
    check_bandwidth(median_fraction, "median_fraction", "1.0 is the convention of Kornblith et al. (2019)")


def check_bandwidth(value: Any, name: str, hint: str) -> float:
    """A positive real number whose square (the kernel's 2σ² denominator) stays a normal float64."""
    if isinstance(value, (bool, str, bytes)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InvalidParameterError(f"{name} must be a positive real number; got {value!r} ({type(value).__name__})")
    v = float(value)
    if not (v > 0 and math.isfinite(v)):
        raise InvalidParameterError(f"{name} must be a positive finite bandwidth; got {value!r}. {hint}")
    square = v * v  # a float product: inf or 0 rather than OverflowError
    if not (np.finfo(np.float64).tiny < square < np.finfo(np.float64).max / 4):
        raise InvalidParameterError(
            f"{name}={value!r} is too {'large' if v > 1 else 'small'}: its square "
            f"{'overflows' if v > 1 else 'underflows'} float64, so every kernel entry would be "
            f"{'1' if v > 1 else '0'}. Choose a bandwidth on the scale of the data's distances. {hint}"
        )
    return v


# -- scalar options: one validator per kind, one message each ---------------------------------------------
#
# Every public entry point checks its options with these, so that the same kind of value is accepted (and
# refused, with the same message) everywhere: integers include NumPy integers but not booleans, booleans are
# booleans (``unbiased="False"`` is not truthy here), probabilities lie strictly between 0 and 1.


def _kind(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def is_integer(value: Any) -> bool:
    """An integer: a Python or NumPy integer, not a boolean."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _hinted(hint: str) -> str:
    return f" ({hint})" if hint else ""


def format_bytes(nbytes: float) -> str:
    """``nbytes`` for a message, to three significant digits: "512 B", "3.4 MiB", "4.02 GiB" (so that a size
    just over a limit does not print as the limit itself)."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= size:
            value = nbytes / size
            return f"{value:.3g} {unit}" if value < 1000 else f"{value:,.0f} {unit}"
    return f"{nbytes:.0f} B"


def check_int(value: Any, name: str, *, minimum: int | None = None, maximum: int | None = None, hint: str = "") -> int:
    """``value`` as a Python int within [minimum, maximum]; :class:`InvalidParameterError` otherwise."""
    if not is_integer(value):
        raise InvalidParameterError(f"{name} must be an integer{_hinted(hint)}; got {_kind(value)}")
    v = int(value)
    if (minimum is not None and v < minimum) or (maximum is not None and v > maximum):
        if maximum is None:
            bounds = f"≥ {minimum}"
        elif minimum is None:
            bounds = f"≤ {maximum}"
        else:
            bounds = f"from {minimum} to {maximum}"
        raise InvalidParameterError(f"{name} must be an integer {bounds}{_hinted(hint)}; got {v}")
    return v


def check_bool(value: Any, name: str) -> bool:
    """``value`` as a Python bool; strings, numbers and None are refused (``"False"`` is truthy in Python)."""
    if not isinstance(value, (bool, np.bool_)):
        raise InvalidParameterError(f"{name} must be True or False; got {_kind(value)}")
    return bool(value)


def check_real(
    value: Any,
    name: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    finite: bool = True,
    hint: str = "",
) -> float:
    """``value`` as a float in the interval given by ``low``/``high`` (closed unless ``*_open``); finite unless
    ``finite=False``. Booleans and strings are refused."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InvalidParameterError(f"{name} must be a real number{_hinted(hint)}; got {_kind(value)}")
    v = float(value)
    bad = math.isnan(v) or (finite and math.isinf(v))
    if low is not None:
        bad = bad or (v <= low if low_open else v < low)
    if high is not None:
        bad = bad or (v >= high if high_open else v > high)
    if bad:
        left = "(" if low_open or low is None else "["
        right = ")" if high_open or high is None else "]"
        span = f"in {left}{'-∞' if low is None else f'{low:g}'}, {'∞' if high is None else f'{high:g}'}{right}"
        what = f"a finite number {span}" if finite else f"a number {span}"
        raise InvalidParameterError(f"{name} must be {what}{_hinted(hint)}; got {value!r}")
    return v


def check_probability(value: Any, name: str, hint: str = "") -> float:
    """A level strictly between 0 and 1 (a confidence level, a test level α)."""
    return check_real(value, name, low=0.0, high=1.0, low_open=True, high_open=True, hint=hint)


def check_seed(value: Any) -> int:
    """A seed for a ``torch.Generator``: a non-negative integer."""
    return check_int(value, "seed", minimum=0, hint="pass a non-negative integer such as 0")


def check_compute_dtype(dtype: Any) -> torch.dtype | None:
    """The floating dtype a measure is computed in: None (the inputs' own), float32 or float64.

    float16 and bfloat16 are refused: sums of squares overflow float16 at a few thousand samples (CKA then comes
    out NaN) and bfloat16 keeps three significant digits. Inputs in those dtypes are accepted and upcast.
    """
    if dtype is None:
        return None
    if not isinstance(dtype, torch.dtype):
        raise InvalidParameterError(
            f"dtype must be a torch dtype (torch.float32 or torch.float64) or None; got {_kind(dtype)}"
        )
    if dtype in _LOW_PRECISION:
        raise InvalidParameterError(
            f"dtype={dtype} is too narrow to compute in: sums of squares overflow float16 (CKA becomes NaN at a few "
            "thousand samples) and bfloat16 keeps three digits. Pass dtype=torch.float32 or torch.float64; "
            f"{dtype} inputs are accepted and upcast"
        )
    if not dtype.is_floating_point:
        raise InvalidParameterError(f"dtype must be torch.float32 or torch.float64; got {dtype}")
    return dtype


def refuse_keywords(function: str, given: Mapping[str, Any], advice: list[str]) -> None:
    """The one way reprsim refuses keywords a function does not take (its ``**removed``): the migration error
    with ``advice`` (what to write instead of each keyword it took before), else Python's own TypeError for
    keywords it never took. Nothing when ``given`` is empty."""
    if advice:
        raise InvalidParameterError(f"{function}'s keywords changed (see the CHANGELOG): " + "; ".join(advice))
    if given:
        raise TypeError(f"{function}() got unexpected keyword arguments {sorted(given)}")
