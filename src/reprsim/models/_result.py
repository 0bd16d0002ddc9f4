"""The result of a model comparison: :class:`SimilarityResult` (matrix, layer names, metadata; plot; save/load).

Saved as one ``.npz`` file holding the matrix, the layer names and a JSON string of metadata, and loaded with
``allow_pickle=False``: nothing is ever unpickled. matplotlib is imported only inside :meth:`SimilarityResult.plot`.
"""

from __future__ import annotations

import json
import math
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._pyplot import pyplot
from ..errors import InvalidParameterError, ShapeMismatchError

__all__ = ["SimilarityResult"]

_EXTRAS = ("low", "high", "bias", "p_values", "calibrated", "chance")


@dataclass
class SimilarityResult:
    """Layer-by-layer similarity between two models.

    Attributes
    ----------
    matrix : torch.Tensor, shape (len(names_a), len(names_b))
        ``matrix[i, j]`` compares layer ``names_a[i]`` of model A with layer ``names_b[j]`` of model B
        (float64, on the CPU).
    names_a, names_b : list of str
        Layer names along each axis.
    metadata : dict
        Plain values: the models' names, the measure (``metadata["measure"]``: name, id, label, direction,
        range, ...; see :meth:`reprsim.measures.Measure.describe`), pooling, samples and batches seen,
        version; with intervals, ``metadata["ci"]`` (confidence, method, blocks or resamples); with a
        permutation test, ``metadata["permutation"]`` (permutations, alpha, seed, and the test of the best cell
        and of the mean, each with observed, p_value, threshold, calibrated).
    low, high : torch.Tensor, optional
        Each cell's confidence interval (``compare(..., uncertainty=Uncertainty(ci=0.95))``).
    p_values : torch.Tensor, optional
        Each cell's add-one permutation p-value (``compare(..., uncertainty=Uncertainty(permutations=K))``; not
        corrected for the number of cells: ``metadata["permutation"]["best"]`` is the corrected test of the best
        cell).
    calibrated : torch.Tensor, optional
        Each cell's calibrated score (0 where not significant at ``metadata["permutation"]["alpha"]``).
    bias : torch.Tensor, optional
        With intervals, each cell's bias at this n as the resampling sees it; where it exceeds the interval's
        half-width for a biased measure the interval covers the estimator's expectation at this n, not the
        population value, and the repr says so (``metadata["ci"]["target"]`` says what the intervals estimate).
    chance : torch.Tensor, optional
        Each cell's chance level: the mean of the measure over the permutations of model B's samples (with
        ``permutations="moments"``, exact; with Monte Carlo, the mean of the drawn values).

    Examples
    --------
    >>> import torch
    >>> from reprsim import SimilarityResult
    >>> r = SimilarityResult(torch.tensor([[1.0, 0.2], [0.3, 0.9]], dtype=torch.float64),
    ...                      ["block0", "block1"], ["layer0", "layer1"], {"model_a": "A", "model_b": "B"})
    >>> r["block1", "layer1"]
    0.9
    >>> r
    SimilarityResult(A [2 layers] x B [2 layers], similarity)
            layer0  layer1
    block0   1.000   0.200
    block1   0.300   0.900
    """

    matrix: torch.Tensor
    names_a: list[str]
    names_b: list[str]
    metadata: dict[str, Any] = field(default_factory=dict)
    low: torch.Tensor | None = None
    high: torch.Tensor | None = None
    p_values: torch.Tensor | None = None
    calibrated: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    chance: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.metadata, Mapping):
            raise InvalidParameterError(
                f"metadata must be a mapping of names to plain values; got a {type(self.metadata).__name__}"
            )
        self.metadata = dict(self.metadata)
        self.matrix = torch.as_tensor(self.matrix, dtype=torch.float64).detach().cpu()
        self.names_a, self.names_b = [str(n) for n in self.names_a], [str(n) for n in self.names_b]
        if tuple(self.matrix.shape) != (len(self.names_a), len(self.names_b)):
            raise ShapeMismatchError(
                f"matrix has shape {tuple(self.matrix.shape)} but there are {len(self.names_a)} names for its "
                f"rows and {len(self.names_b)} for its columns"
            )
        for name in _EXTRAS:
            value = getattr(self, name)
            if value is None:
                continue
            value = torch.as_tensor(value, dtype=torch.float64).detach().cpu()
            if value.shape != self.matrix.shape:
                raise ShapeMismatchError(
                    f"{name} has shape {tuple(value.shape)}; the matrix {tuple(self.matrix.shape)}"
                )
            setattr(self, name, value)
        if (self.low is None) != (self.high is None):
            raise InvalidParameterError("an interval needs both low and high")
        if self.low is not None and self.high is not None and bool((self.low > self.high).any()):
            i, j = (int(v) for v in (self.low > self.high).nonzero()[0])
            raise InvalidParameterError(
                f"an interval's low end exceeds its high end at cell ({self.names_a[i]!r}, {self.names_b[j]!r}): "
                f"{float(self.low[i, j])} > {float(self.high[i, j])}"
            )
        if self.p_values is not None and bool(((self.p_values < 0) | (self.p_values > 1)).any()):
            raise InvalidParameterError("p_values must lie in [0, 1] (NaN marks a cell without a test)")
        if self.calibrated is not None and bool((self.calibrated < 0).any()):
            raise InvalidParameterError("calibrated scores are ≥ 0 (0: not significant)")

    @property
    def model_a(self) -> str:
        return str(self.metadata.get("model_a", "model A"))

    @property
    def model_b(self) -> str:
        return str(self.metadata.get("model_b", "model B"))

    @property
    def measure(self) -> dict[str, Any]:
        """What the matrix holds: name, label, ``direction`` ("similarity": larger is more similar, or
        "distance": smaller is), ``range``. Results saved before measures existed read as CKA."""
        default = {"name": "cka", "label": "CKA", "direction": "similarity", "range": [0.0, 1.0]}
        found = self.metadata.get("measure")
        return {**default, **found} if isinstance(found, Mapping) else default

    def __getitem__(self, key: tuple[str, str]) -> float:
        """``result["blocks.3", "blocks.5"]``: the similarity of one pair of layers by name."""
        a, b = key
        try:
            return float(self.matrix[self.names_a.index(a), self.names_b.index(b)])
        except ValueError as exc:
            raise InvalidParameterError(
                f"no layer pair ({a!r}, {b!r}); rows are {self.names_a}, columns are {self.names_b}"
            ) from exc

    def to_numpy(self) -> np.ndarray[Any, np.dtype[np.float64]]:
        return self.matrix.numpy().copy()

    def __repr__(self) -> str:
        m = self.measure
        what = m["label"] if "measure" in self.metadata else m["direction"]
        head = (
            f"SimilarityResult({self.model_a} [{len(self.names_a)} layers] x "
            f"{self.model_b} [{len(self.names_b)} layers], {what})"
        )
        if len(self.names_a) > 16 or len(self.names_b) > 12 or not self.names_a or not self.names_b:
            return "\n".join([head, *self._footer()])
        alpha = self._alpha

        def cell(i: int, j: int) -> str:
            text = f"{float(self.matrix[i, j]):.3f}"
            if self.low is not None and self.high is not None:
                text += f" [{float(self.low[i, j]):.3f}, {float(self.high[i, j]):.3f}]"
            if self.p_values is not None:
                text += "*" if float(self.p_values[i, j]) <= alpha else " "
            return text

        cells = [[cell(i, j) for j in range(len(self.names_b))] for i in range(len(self.names_a))]
        width = max(len(n) for n in self.names_a)
        size = max(6, *(len(n) for n in self.names_b), *(len(c) for row in cells for c in row))
        cols = "".join(f"  {n:>{size}}" for n in self.names_b)
        rows = [f"{name:<{width}}" + "".join(f"  {c:>{size}}" for c in row) for name, row in zip(self.names_a, cells)]
        return "\n".join([head, " " * width + cols, *rows, *self._footer()])

    @property
    def bias_warning(self) -> str | None:
        """A caution when intervals of a biased measure cannot cover the population value: the cells whose bias at
        this n (as the resampling sees it) exceeds their interval's half-width."""
        ci = self.metadata.get("ci")
        if self.bias is None or self.low is None or self.high is None or not isinstance(ci, Mapping):
            return None
        if ci.get("target") != "expectation":
            return None
        over = (self.bias.abs() > (self.high - self.low) / 2) & torch.isfinite(self.bias)
        count = int(over.sum())
        if not count:
            return None
        return (
            f"in {count} of {over.numel()} cells the measure's bias at this n (up to "
            f"{float(self.bias.abs()[over].max()):.3g}) exceeds the interval's half-width: there the intervals cover "
            "the estimator's expectation at this n, not the population value"
            + (" (measure='cka_unbiased' estimates that)" if self.measure.get("name") == "cka" else "")
        )

    @property
    def _alpha(self) -> float:
        """The permutation test's level, for the significance marks."""
        perm = self.metadata.get("permutation")
        return float(perm.get("alpha", 0.05)) if isinstance(perm, Mapping) else 0.05

    def _footer(self) -> list[str]:
        lines = []
        ci = self.metadata.get("ci")
        if self.low is not None and isinstance(ci, Mapping):
            target = {"population": "the population value", "expectation": "the estimator's expectation at this n"}
            of = target.get(str(ci.get("target", "")), "")
            lines.append(
                f"[low, high]: {float(ci.get('confidence', 0.95)):.0%} {ci.get('method', '')} interval"
                + (f" of {of}" if of else "")
            )
            warning = self.bias_warning
            if warning:
                lines.append(f"warning: {warning}")
        perm = self.metadata.get("permutation")
        if self.p_values is not None and isinstance(perm, Mapping):
            best = perm.get("best", {})
            how = (
                "exact permutation moments"
                if perm.get("method") == "moments"
                else f"{perm.get('permutations')} permutations"
            )
            lines.append(
                f"*: p ≤ {perm.get('alpha')} ({how}, per cell); best cell "
                f"{float(best.get('observed', math.nan)):.3f}: p = {float(best.get('p_value', math.nan)):.4g} "
                f"over the search of all cells, calibrated {float(best.get('calibrated', math.nan)):.3f}"
            )
        return lines

    def color_range(self, *, full: bool = False) -> tuple[float, float]:
        """A colour range for :meth:`plot`: by default the data's own (a 0.12–0.21 matrix uses the whole colour
        map, as other CKA packages' heatmaps do: pass it as ``plot(vmin=..., vmax=...)`` to see small
        differences). ``full=True``, what :meth:`plot` uses by default: the measure's range where it is finite
        (0–1 for CKA), widened to the data, so that a matrix near chance level does not fill the colour map
        and heatmaps share one scale; a range that extends below 0 (unbiased CKA's −1, R²'s −∞) starts at 0 when
        no value is negative."""
        finite = self.matrix[torch.isfinite(self.matrix)]
        lo, hi = (float(v) for v in self.measure["range"])
        if not full and finite.numel() and float(finite.max()) > float(finite.min()):
            return float(finite.min()), float(finite.max())
        if finite.numel() and lo < 0.0 <= float(finite.min()):
            lo = 0.0  # below 0 only by estimation noise (unbiased CKA) or bad fits (R²), and no value is there
        if not math.isfinite(lo):
            lo = float(finite.min()) if finite.numel() else 0.0
        if not math.isfinite(hi):
            hi = float(finite.max()) if finite.numel() else 1.0
        if finite.numel():
            lo, hi = min(lo, float(finite.min())), max(hi, float(finite.max()))  # unbiased CKA can dip below 0
        return lo, hi

    def plot(
        self,
        ax: Any = None,
        *,
        cmap: str | None = None,
        vmin: float | None = None,
        vmax: float | None = None,
        annotate: bool | None = None,
        title: str | None = None,
        calibrated: bool = False,
    ) -> Any:
        """Heatmap with model A's layers on the y axis and model B's on the x axis (needs matplotlib).

        The colour bar is labelled with the measure and its direction; distances use the reversed colour
        map, so that bright cells are similar layers for every measure. With permutation p-values, cells not
        significant at the test's α are hatched; with intervals, each annotation adds the interval's half-width.

        Parameters
        ----------
        ax : matplotlib Axes, optional
            Where to draw; a new figure by default.
        cmap : str, optional
            Colour map; "magma" for similarities and "magma_r" for distances by default.
        vmin, vmax : float, optional
            Colour range; by default ``color_range(full=True)``, the measure's declared range (0–1 for CKA, 0–π/2
            for angular distances) widened to the data: a matrix of independent representations (CCA of
            unrelated Gaussians is about 0.5) does not run from black to white. For the data's own range pass
            ``*result.color_range()``. With an exact-moment permutation null (``chance``), the colour bar marks
            the mean chance level of the cells.
        annotate : bool, optional
            Write each value in its cell; by default when the matrix has at most 12×12 entries.
        title : str, optional
            By default "model A vs model B".
        calibrated : bool, default False
            Draw each cell's score calibrated against its own permutation null instead of the measure (needs a
            result of ``permutations=``): 0 where the cell does not beat its null's critical value at α, 1 at
            the measure's bound, on a fixed 0–1 scale for similarities and distances alike (Gröger et al.
            2026; see :class:`reprsim.inference.PermutationTest`). What remains bright is what chance
            does not explain.

        Returns
        -------
        matplotlib.axes.Axes
        """
        plt = pyplot("SimilarityResult.plot")
        m = dict(self.measure)
        if calibrated:
            if self.calibrated is None:
                raise InvalidParameterError(
                    "calibrated=True draws the calibrated scores of a permutation test, which this result does not "
                    "have: run compare(..., uncertainty=Uncertainty(permutations='moments')) (or a number of "
                    "permutations)"
                )
            m["label"] = f"calibrated {m['label']} (0: chance at α = {self._alpha:g})"
            m["direction"] = "similarity"
        distance = m["direction"] == "distance"
        lo, hi = (0.0, 1.0) if calibrated else self.color_range(full=True)
        vmin = lo if vmin is None else vmin
        vmax = hi if vmax is None else vmax
        if ax is None:
            size = (max(4.0, 0.45 * len(self.names_b) + 2.5), max(3.5, 0.4 * len(self.names_a) + 1.5))
            _, ax = plt.subplots(figsize=size, layout="constrained")
        data = (
            self.calibrated.numpy().astype(np.float64)
            if calibrated and self.calibrated is not None
            else self.to_numpy()
        )
        cmap = cmap if cmap is not None else ("magma_r" if distance else "magma")
        im = ax.imshow(data, cmap=cmap, vmin=vmin, vmax=vmax, origin="lower", aspect="auto")
        ax.set_yticks(range(len(self.names_a)), self.names_a, fontsize=8)
        ax.set_xticks(range(len(self.names_b)), self.names_b, fontsize=8, rotation=60, ha="right")
        ax.set_ylabel(self.model_a)
        ax.set_xlabel(self.model_b)
        if annotate is None:
            annotate = data.size <= 144
        notes = []
        if self.p_values is not None:
            from matplotlib.patches import Rectangle

            alpha = self._alpha
            for i, j in zip(*np.nonzero(self.p_values.numpy() > alpha)):
                ax.add_patch(
                    Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="///", edgecolor="0.55", linewidth=0)
                )
            notes.append(f"hatched: p > {alpha:g}")
        half = None if calibrated or self.low is None or self.high is None else ((self.high - self.low) / 2).numpy()
        if half is not None and annotate:
            notes.append(f"± half of the {float(self.metadata.get('ci', {}).get('confidence', 0.95)):.0%} interval")
        if annotate:
            span = (vmax - vmin) or 1.0
            for i in range(data.shape[0]):
                for j in range(data.shape[1]):
                    v = data[i, j]
                    text = "nan" if math.isnan(v) else f"{v:.2f}"
                    if half is not None and not math.isnan(v):
                        text += f"\n±{half[i, j]:.2f}"
                    bright = (v - vmin) / span if not distance else (vmax - v) / span
                    ax.text(
                        j,
                        i,
                        text,
                        ha="center",
                        va="center",
                        fontsize=6,
                        color="white" if (not math.isnan(v) and bright < 0.6) else "black",
                    )
        default = f"{self.model_a} vs {self.model_b}"
        if notes:  # a line each: on one line they ran past a narrow figure's edges
            default += "".join(f"\n{note}" for note in notes)
        ax.set_title(title if title is not None else default, fontsize=None if title is not None or not notes else 9)
        # the direction hint on a line of its own: one long line ran past the top of a short bar and the figure
        hint = "\n(lower = more similar)" if distance else ""
        bar = ax.figure.colorbar(im, ax=ax, label=f"{m['label']}{hint}")
        if not calibrated and self.chance is not None and bool(torch.isfinite(self.chance).any()):
            level = float(self.chance[torch.isfinite(self.chance)].mean())
            bar.ax.axhline(level, color="cyan", linewidth=1.5)
            bar.ax.text(0.5, level, "chance", transform=bar.ax.get_yaxis_transform(), ha="center", va="bottom",
                        fontsize=6, color="cyan")  # fmt: skip
        return ax

    def plot_diagonal(self, ax: Any = None, *, title: str | None = None) -> Any:
        """Line plot of the matched pairs, cell (i, i) for i < min(rows, columns): similarity by depth, as for
        two runs of one architecture (needs matplotlib).

        With intervals, a shaded band spans each cell's interval; with an exact-moment permutation null, a dashed
        line marks each cell's chance level (the null mean); cells not significant at the test's α are drawn
        as open circles. Tick labels are the layer name, or "a / b" where the two models' names differ.

        Parameters
        ----------
        ax : matplotlib Axes, optional
            Where to draw; a new figure by default.
        title : str, optional
            By default "model A vs model B, matched layers".

        Returns
        -------
        matplotlib.axes.Axes

        Examples
        --------
        >>> import matplotlib
        >>> matplotlib.use("Agg")
        >>> import torch
        >>> from reprsim import SimilarityResult
        >>> r = SimilarityResult(torch.tensor([[0.9, 0.2], [0.3, 0.7]]), ["l1", "l2"], ["l1", "l2"],
        ...                      {"measure": {"label": "linear CKA", "direction": "similarity"}})
        >>> ax = r.plot_diagonal()
        >>> [round(float(v), 2) for v in ax.lines[0].get_ydata()]
        [0.9, 0.7]
        """
        plt = pyplot("SimilarityResult.plot_diagonal")
        k = min(len(self.names_a), len(self.names_b))
        if ax is None:
            _, ax = plt.subplots(figsize=(max(4.0, 0.5 * k + 2.0), 3.5), layout="constrained")
        m = self.measure
        steps = np.arange(k)
        values = self.to_numpy().diagonal()[:k]
        colour = "C0"
        if self.low is not None and self.high is not None:
            level = float(self.metadata.get("ci", {}).get("confidence", 0.95))
            low, high = self.low.numpy().diagonal()[:k], self.high.numpy().diagonal()[:k]
            ax.fill_between(steps, low, high, color=colour, alpha=0.2, linewidth=0, label=f"{level:.0%} interval")
        ax.plot(steps, values, color=colour, marker="o", label=m.get("label", "value"))
        if self.p_values is not None:
            weak = self.p_values.numpy().diagonal()[:k] > self._alpha
            if weak.any():
                ax.plot(steps[weak], values[weak], linestyle="none", marker="o", markerfacecolor="white",
                        markeredgecolor=colour, label=f"p > {self._alpha:g}")  # fmt: skip
        if self.chance is not None:
            ax.plot(steps, self.chance.numpy().diagonal()[:k], color="0.4", linestyle="--", label="chance (null mean)")
        names = [a if a == b else f"{a} / {b}" for a, b in zip(self.names_a, self.names_b)]
        ax.set_xticks(steps, names, fontsize=8, rotation=60 if k > 4 else 0, ha="right" if k > 4 else "center")
        hint = "\n(lower = more similar)" if m.get("direction") == "distance" else ""
        ax.set_ylabel(f"{m.get('label', 'value')}{hint}")
        ax.set_xlabel("matched layers")
        ax.set_title(title if title is not None else f"{self.model_a} vs {self.model_b}, matched layers")
        if len(ax.get_legend_handles_labels()[0]) > 1:
            ax.legend(fontsize=7)
        return ax

    def save(self, path: str | Path) -> Path:
        """Write the result to ``path`` (a ``.npz`` file: matrix, names, JSON metadata; no pickle)."""
        path = _npz_path(path)
        extras = {k: getattr(self, k).numpy() for k in _EXTRAS if getattr(self, k) is not None}
        np.savez(
            path,
            matrix=self.to_numpy(),
            names_a=np.array(self.names_a, dtype=str),
            names_b=np.array(self.names_b, dtype=str),
            metadata=np.array(json.dumps(self.metadata, sort_keys=True)),
            **extras,
        )
        return path

    @classmethod
    def load(cls, path: str | Path) -> SimilarityResult:
        """Read a result written by :meth:`save` (``load("x")`` reads the ``x.npz`` that ``save("x")`` wrote)."""
        given = Path(path)
        path = given if given.exists() else _npz_path(given)
        if not path.exists():
            raise FileNotFoundError(f"no result file at {str(given)!r} (nor {str(path)!r})")
        what = f"{str(path)!r} is not a SimilarityResult file written by SimilarityResult.save"
        from ._store import load_npz

        with load_npz(path, InvalidParameterError, what) as f:
            missing = sorted({"matrix", "names_a", "names_b", "metadata"} - set(f.files))
            if missing:
                raise InvalidParameterError(f"{what}: the archive lacks {missing}")
            try:
                matrix = torch.from_numpy(np.asarray(f["matrix"], dtype=np.float64).copy())
                names_a, names_b = [str(n) for n in f["names_a"]], [str(n) for n in f["names_b"]]
                metadata = json.loads(str(f["metadata"]))
                extras = {
                    k: torch.from_numpy(np.asarray(f[k], dtype=np.float64).copy()) for k in _EXTRAS if k in f.files
                }
            except (OSError, ValueError, EOFError, zipfile.BadZipFile, TypeError) as exc:
                raise InvalidParameterError(f"{what}: it is truncated or damaged ({exc})") from exc
        return cls(matrix, names_a, names_b, metadata, **extras)


def _npz_path(path: str | Path) -> Path:
    """Where :meth:`SimilarityResult.save` writes ``path``: with ``.npz`` appended unless it ends so."""
    path = Path(path)
    return path if path.suffix == ".npz" else path.with_name(path.name + ".npz")
