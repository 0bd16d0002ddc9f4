"""Full-precision float32 matrix products inside reprsim, whatever the caller's TF32 setting.

Training scripts often enable TensorFloat-32 (``torch.backends.cuda.matmul.allow_tf32 = True`` or
``torch.set_float32_matmul_precision("high")``): products keep 10 mantissa bits, and a float32 CKA then
differs from the exact value by about 1e-3. reprsim's own products (Grams, feature-space sums, similarity
scores) run with IEEE float32 instead, and the caller's setting is restored on the way out, so it still
applies to their models, including the forward passes that :func:`reprsim.compare` runs.

PyTorch 2.9 added per-backend flags (``torch.backends.cuda.matmul.fp32_precision``) and raises when the
legacy and new flags are both *written* in one process; reading the new flag and writing back exactly what
was read leaves every reader (legacy, new and ``torch.get_float32_matmul_precision``) answering as before.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar, cast

import torch

__all__ = ["full_precision", "full_precision_matmul"]

_F = TypeVar("_F", bound=Callable[..., Any])


def _backends() -> list[Any]:
    """The per-backend matmul flag holders of PyTorch ≥ 2.9 (empty on older versions)."""
    holders = [getattr(torch.backends.cuda, "matmul", None), getattr(torch.backends.mkldnn, "matmul", None)]
    return [h for h in holders if h is not None and hasattr(h, "fp32_precision")]


_HOLDERS = _backends()


class full_precision:
    """Context manager: float32 matrix products run as IEEE float32 inside the block; the caller's flags are
    restored after, also when the block raises. Cheap enough (about a microsecond) to enter once per layer
    and batch inside forward hooks."""

    __slots__ = ("_restore",)

    def __init__(self) -> None:
        self._restore: list[tuple[Any, Any]] = []

    def __enter__(self) -> None:
        if _HOLDERS:
            for h in _HOLDERS:
                saved = h.fp32_precision
                if saved != "ieee":
                    self._restore.append((h, saved))
                    h.fp32_precision = "ieee"
            return
        before = torch.get_float32_matmul_precision()  # PyTorch < 2.9: the legacy flags only
        cuda_tf32 = torch.backends.cuda.matmul.allow_tf32
        if before != "highest" or cuda_tf32:
            self._restore.append((before, cuda_tf32))
            torch.set_float32_matmul_precision("highest")
            torch.backends.cuda.matmul.allow_tf32 = False

    def __exit__(self, *exc: object) -> None:
        if _HOLDERS:
            for h, saved in reversed(self._restore):
                h.fp32_precision = saved
        else:
            for before, cuda_tf32 in self._restore:
                torch.set_float32_matmul_precision(before)
                torch.backends.cuda.matmul.allow_tf32 = cuda_tf32
        self._restore.clear()


def full_precision_matmul(fn: _F) -> _F:
    """Decorator: ``fn`` runs inside :func:`full_precision`."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with full_precision():
            return fn(*args, **kwargs)

    return cast(_F, wrapper)
