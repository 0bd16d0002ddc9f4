"""Input coercion and checks shared by every public entry point.

Everything that crosses the public boundary goes through here: NumPy arrays, tensors and array-likes become
floating-point torch tensors of shape ``(n, features)``, and bad input is rejected with a message that says
what was expected, what was received, and how to fix it. No mathematics lives here.
"""

from __future__ import annotations

import math
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
KERNELS = ("linear", "rbf")
#: The kernels reprsim computes Grams with.
Kernel = Literal["linear", "rbf"]


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
        t = t.reshape(t.shape[0], -1)
    if t.shape[1] == 0:
        raise ShapeMismatchError(
            f"{name} has no features: shape {tuple(t.shape)}; each sample needs at least one value"
        )
    if dtype is not None:
        if not dtype.is_floating_point:
            raise InvalidParameterError(f"dtype must be a floating-point torch dtype; got {dtype}")
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
    xt = as_matrix(x, names[0], dtype=dtype)
    yt = as_matrix(y, names[1], dtype=dtype)
    if xt.shape[0] != yt.shape[0]:
        raise ShapeMismatchError(
            f"{names[0]} and {names[1]} must hold the same samples (same first dimension); got "
            f"{names[0]} with {xt.shape[0]} samples (shape {tuple(xt.shape)}) and {names[1]} with "
            f"{yt.shape[0]} samples (shape {tuple(yt.shape)})"
        )
    check_same_device({names[0]: xt, names[1]: yt})
    check_n_samples(xt.shape[0], unbiased)
    check_has_data(xt, names[0])
    check_has_data(yt, names[1])
    common = torch.promote_types(xt.dtype, yt.dtype)
    xt, yt = xt.to(common), yt.to(common)
    # A finite sum proves every element finite (NaN and ±inf propagate); only a non-finite sum (possibly a
    # mere overflow) pays for check_finite's exact count.
    finite_x, finite_y, varies_x, varies_y, amax_x, amax_y = torch.stack(
        [
            torch.isfinite(xt.sum()).double(),
            torch.isfinite(yt.sum()).double(),
            _varies(xt).double().to(xt.device),
            _varies(yt).double().to(yt.device),
            xt.detach().abs().max().double(),
            yt.detach().abs().max().double(),
        ]
    ).tolist()
    if not (finite_x and finite_y):
        check_finite(xt, names[0])
        check_finite(yt, names[1])
    if rescale:
        xt, yt = rescaled(xt, amax_x), rescaled(yt, amax_y)
    else:
        for name, t, amax in ((names[0], xt, amax_x), (names[1], yt, amax_y)):
            check_magnitude(t, amax, name)
    for name, t, varies in ((names[0], xt, varies_x), (names[1], yt, varies_y)):
        if not varies:
            raise ConstantRepresentationError(
                f"{name} is the same for every one of its {t.shape[0]} samples, so its self-similarity is 0 "
                f"and CKA is 0/0 (undefined). Check that the layer is not dead or saturated, or drop it"
            )
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


def check_magnitude(x: torch.Tensor, amax: float, name: str) -> None:
    """For measures that are not scale invariant: refuse magnitudes whose squares leave the dtype's range."""
    info = torch.finfo(x.dtype)
    if amax > 0 and not (math.sqrt(info.tiny) < amax < math.sqrt(info.max) / max(x.shape[1], 1)):
        raise InvalidParameterError(
            f"{name} holds values up to {amax:.3g}, whose squared distances leave the range of {x.dtype} "
            f"(overflow above about {math.sqrt(info.max):.1g}, underflow below about {math.sqrt(info.tiny):.1g}); "
            "rescale the data (and an explicit sigma with it), or use dtype=torch.float64"
        )


def _varies(x: torch.Tensor) -> torch.Tensor:
    """A 0-d bool tensor on ``x``'s device: does any row differ from the first?"""
    if x.device.type == "cpu":  # torch.equal exits at the first difference; no queue to stall on the CPU
        return torch.tensor(not is_constant(x))
    return (x != x[:1]).any()


def is_constant(x: torch.Tensor) -> bool:
    """True when every row of ``x`` equals the first (the representation carries no information)."""
    return torch.equal(x, x[:1].expand_as(x))  # exits at the first difference


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
