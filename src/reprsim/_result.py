"""The result of a model comparison: :class:`SimilarityResult` (matrix, layer names, metadata; plot; save/load).

Saved as one ``.npz`` file holding the matrix, the layer names and a JSON string of metadata, and loaded with
``allow_pickle=False``: nothing is ever unpickled. matplotlib is imported only inside :meth:`plot`.
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

from ._errors import InvalidParameterError, ShapeMismatchError

__all__ = ["SimilarityResult"]


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
        Plain values: the models' names, estimator, kernel, pooling, samples and batches seen, version.

    Examples
    --------
    >>> import torch
    >>> from reprsim import SimilarityResult
    >>> r = SimilarityResult(torch.tensor([[1.0, 0.2], [0.3, 0.9]], dtype=torch.float64),
    ...                      ["block0", "block1"], ["layer0", "layer1"], {"model_a": "A", "model_b": "B"})
    >>> r["block1", "layer1"]
    0.9
    >>> r
    SimilarityResult(A [2 layers] x B [2 layers])
                layer0  layer1
    block0  1.000  0.200
    block1  0.300  0.900
    """

    matrix: torch.Tensor
    names_a: list[str]
    names_b: list[str]
    metadata: dict[str, Any] = field(default_factory=dict)

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

    @property
    def model_a(self) -> str:
        return str(self.metadata.get("model_a", "model A"))

    @property
    def model_b(self) -> str:
        return str(self.metadata.get("model_b", "model B"))

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
        head = (
            f"SimilarityResult({self.model_a} [{len(self.names_a)} layers] x "
            f"{self.model_b} [{len(self.names_b)} layers])"
        )
        if len(self.names_a) > 16 or len(self.names_b) > 12 or not self.names_a or not self.names_b:
            return head
        width = max(len(n) for n in self.names_a)
        cols = "".join(f"  {n[-6:]:>6}" for n in self.names_b)
        rows = [
            f"{name:<{width}}" + "".join(f"  {v:6.3f}" for v in row)
            for name, row in zip(self.names_a, self.matrix.tolist())
        ]
        return "\n".join([head, " " * width + cols, *rows])

    def plot(
        self,
        ax: Any = None,
        *,
        cmap: str = "magma",
        vmin: float | None = 0.0,
        vmax: float | None = 1.0,
        annotate: bool | None = None,
        title: str | None = None,
    ) -> Any:
        """Heatmap with model A's layers on the y axis and model B's on the x axis (needs matplotlib).

        Parameters
        ----------
        ax : matplotlib Axes, optional
            Where to draw; a new figure by default.
        cmap, vmin, vmax
            Colour map and range (unbiased estimators can go slightly below 0: pass ``vmin=None`` to let
            the data decide).
        annotate : bool, optional
            Write each value in its cell; by default when the matrix has at most 12×12 entries.
        title : str, optional
            By default "model A vs model B (estimator, kernel)".

        Returns
        -------
        matplotlib.axes.Axes
        """
        try:
            import matplotlib.pyplot as plt
        except ImportError as exc:  # pragma: no cover - exercised only without the extra
            raise ImportError("SimilarityResult.plot needs matplotlib: pip install 'reprsim[plot]'") from exc
        if ax is None:
            size = (max(4.0, 0.45 * len(self.names_b) + 2.5), max(3.5, 0.4 * len(self.names_a) + 1.5))
            _, ax = plt.subplots(figsize=size, layout="constrained")
        data = self.to_numpy()
        im = ax.imshow(data, cmap=cmap, vmin=vmin, vmax=vmax, origin="lower", aspect="auto")
        ax.set_yticks(range(len(self.names_a)), self.names_a, fontsize=8)
        ax.set_xticks(range(len(self.names_b)), self.names_b, fontsize=8, rotation=60, ha="right")
        ax.set_ylabel(self.model_a)
        ax.set_xlabel(self.model_b)
        if annotate is None:
            annotate = data.size <= 144
        if annotate:
            for i in range(data.shape[0]):
                for j in range(data.shape[1]):
                    v = data[i, j]
                    text = "nan" if math.isnan(v) else f"{v:.2f}"
                    ax.text(
                        j,
                        i,
                        text,
                        ha="center",
                        va="center",
                        fontsize=6,
                        color="white" if (not math.isnan(v) and v < 0.6) else "black",
                    )
        est = ", ".join(str(self.metadata[k]) for k in ("estimator", "kernel") if k in self.metadata)
        ax.set_title(title if title is not None else f"{self.model_a} vs {self.model_b}" + (f" ({est})" if est else ""))
        ax.figure.colorbar(im, ax=ax, label="CKA")
        return ax

    def save(self, path: str | Path) -> Path:
        """Write the result to ``path`` (a ``.npz`` file: matrix, names, JSON metadata; no pickle)."""
        path = _npz_path(path)
        np.savez(
            path,
            matrix=self.to_numpy(),
            names_a=np.array(self.names_a, dtype=str),
            names_b=np.array(self.names_b, dtype=str),
            metadata=np.array(json.dumps(self.metadata, sort_keys=True)),
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
        try:
            f = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise InvalidParameterError(f"{what}: it is not a readable .npz archive ({exc})") from exc
        if not isinstance(f, np.lib.npyio.NpzFile):
            raise InvalidParameterError(f"{what}: it holds a single array (a .npy file), not a result archive")
        with f:
            missing = sorted({"matrix", "names_a", "names_b", "metadata"} - set(f.files))
            if missing:
                raise InvalidParameterError(f"{what}: the archive lacks {missing}")
            try:
                matrix = torch.from_numpy(np.asarray(f["matrix"], dtype=np.float64).copy())
                names_a, names_b = [str(n) for n in f["names_a"]], [str(n) for n in f["names_b"]]
                metadata = json.loads(str(f["metadata"]))
            except (OSError, ValueError, EOFError, zipfile.BadZipFile, TypeError) as exc:
                raise InvalidParameterError(f"{what}: it is truncated or damaged ({exc})") from exc
        return cls(matrix, names_a, names_b, metadata)


def _npz_path(path: str | Path) -> Path:
    """Where :meth:`SimilarityResult.save` writes ``path``: with ``.npz`` appended unless it ends so."""
    path = Path(path)
    return path if path.suffix == ".npz" else path.with_name(path.name + ".npz")
