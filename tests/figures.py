"""Test helper: does everything a figure draws lie on its canvas? (Clipped labels are the failure it catches.)"""

from __future__ import annotations

from typing import Any


def overflow(fig: Any) -> list[str]:
    """What of ``fig`` is drawn outside its canvas: empty when nothing is.

    Renders the figure, then compares the tight bounding box of everything drawn (which counts only what is
    drawn: tick labels beyond an axis's range are not) with the canvas. When it sticks out, each visible text
    whose extent leaves the canvas is named, with how far.
    """
    from matplotlib.text import Text

    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    drawn = fig.get_tightbbox(renderer)  # inches
    canvas = fig.bbox_inches
    tolerance = 0.01
    if (
        drawn.x0 >= canvas.x0 - tolerance
        and drawn.y0 >= canvas.y0 - tolerance
        and drawn.x1 <= canvas.x1 + tolerance
        and drawn.y1 <= canvas.y1 + tolerance
    ):
        return []
    width, height = fig.bbox.width, fig.bbox.height
    found = []
    for text in fig.findobj(Text):
        if not (text.get_visible() and text.get_text()):
            continue
        e = text.get_window_extent(renderer)
        beyond = max(-e.x0, -e.y0, e.x1 - width, e.y1 - height)
        if beyond > 1:
            found.append(f"{text.get_text()!r} by {beyond:.0f} px")
    return found or [f"drawn area {drawn.bounds} beyond the canvas {canvas.bounds} (inches)"]
