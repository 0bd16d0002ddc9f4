"""matplotlib's pyplot, imported when a plot is drawn (matplotlib is the optional ``plot`` extra)."""

from __future__ import annotations

from typing import Any

__all__ = ["pyplot"]


def pyplot(what: str) -> Any:
    """``matplotlib.pyplot``, or an ImportError saying that ``what`` needs the ``plot`` extra."""
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ImportError(f"{what} needs matplotlib: pip install 'reprsim[plot]'") from exc
    return plt
