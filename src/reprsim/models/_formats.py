"""Feature files written by other tools: HDF5 (``.h5``/``.hdf5``, read with h5py) and MATLAB ``.mat`` files
(v7.3, which is HDF5, read with h5py; v4–v7, read with scipy.io), as they come from thingsvision, MATLAB
pipelines or any script. Both packages are optional extras (``reprsim[hdf5]``, ``reprsim[mat]``).

Every float dataset (variable) with one row per sample is a layer, named by its path in the file; an integer or
string dataset named ``sample_ids`` holds the sample IDs. Only headers are read when a file is opened. An HDF5
dataset stored contiguously and uncompressed is read like a ``.npy`` file, at its byte offset (memory maps,
sequential reads); a chunked or compressed one through h5py, a block of rows at a time.

MATLAB stores arrays column-major, so a MATLAB (n, width) matrix appears in HDF5 as (width, n): a v7.3 layer's
samples are along the *last* HDF5 axis, and a sample's features are flattened in MATLAB's own index order, as
scipy.io gives them for a v5 file (so one array saved in either version reads the same).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from ..errors import StoreError
from ._files import check_name, printable

if TYPE_CHECKING:
    from ._store import ActivationStore

__all__ = ["open_hdf5", "open_mat"]

IDS_KEY = "sample_ids"
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
# MATLAB classes of numeric arrays, and the NumPy dtype each is read as
_MATLAB_FLOAT = {"double": np.float64, "single": np.float32}


def _h5py(what: str) -> Any:
    try:
        import h5py
    except ImportError as exc:
        raise ImportError(f"reading {what} needs h5py: pip install 'reprsim[hdf5]'") from exc
    return h5py


def is_hdf5(path: Path) -> bool:
    """Whether ``path`` holds an HDF5 file (its superblock at byte 0, or at 512 after a MATLAB v7.3 header)."""
    with open(path, "rb") as handle:
        head = handle.read(520)
    return head[:8] == _HDF5_SIGNATURE or head[512:520] == _HDF5_SIGNATURE


class _Rows:
    """Rows ``start:stop`` of one HDF5 dataset as a (rows, width) array, reading only those rows. The file is
    opened for each read (a chunk of rows is megabytes, an open is microseconds), so nothing stays open and
    the background reader thread shares no handle."""

    def __init__(self, file: Path, name: str, width: int, dtype: np.dtype[Any], *, matlab: bool) -> None:
        self.file, self.name, self.width, self.dtype, self.matlab = file, name, width, dtype, matlab

    def __call__(self, start: int, stop: int) -> np.ndarray[Any, Any]:
        h5py = _h5py("an HDF5 file")
        with h5py.File(self.file, "r") as f:
            data = f[self.name]
            if self.matlab:  # samples along the last axis; MATLAB's index order after transposing
                block = np.asarray(data.astype(self.dtype)[..., start:stop]).T
            else:
                block = np.asarray(data.astype(self.dtype)[start:stop])
        return np.ascontiguousarray(block.reshape(stop - start, self.width), dtype=self.dtype)


class _Loaded:
    """Rows of an array read whole on first use (a v4–v7 .mat variable: the format has no row access, and a
    compressed variable must be inflated whole), kept for later reads."""

    def __init__(self, load: Callable[[], np.ndarray[Any, Any]], width: int, dtype: np.dtype[Any]) -> None:
        self.load, self.width, self.dtype = load, width, dtype
        self.data: np.ndarray[Any, Any] | None = None

    def __call__(self, start: int, stop: int) -> np.ndarray[Any, Any]:
        if self.data is None:
            raw = self.load()
            self.data = np.ascontiguousarray(raw.reshape(raw.shape[0], -1), dtype=self.dtype)
        return np.array(self.data[start:stop])


def _layer_shape(name: str, shape: tuple[int, ...], where: str) -> tuple[int, int]:
    """(rows, width) of a layer, as for any array file; a dataset or variable without rows is refused too."""
    from ._store import _layer_array

    n, width = _layer_array(name, shape, where)
    if n == 0:
        raise StoreError(f"{where}: {printable(name)!r} has shape {shape}: it is empty")
    return n, width


def _check_matlab_class(name: str, matlab_class: str, where: str) -> None:
    if matlab_class not in _MATLAB_FLOAT:
        raise StoreError(
            f"{where}: variable {printable(name)!r} is of MATLAB class {printable(matlab_class)!r}; layers must be "
            f"double or single arrays (sample IDs go in a variable named {IDS_KEY!r})"
        )


def _float_dtype(dtype: np.dtype[Any], name: str, where: str) -> np.dtype[Any]:
    """The native float dtype a layer is read as; anything else is refused, naming the dataset."""
    if dtype.kind != "f" or dtype.itemsize not in (2, 4, 8):
        raise StoreError(
            f"{where}: {printable(name)!r} has dtype {dtype}; activations must be float16, float32 or float64 "
            f"(sample IDs go in a dataset named {IDS_KEY!r})"
        )
    return np.dtype(dtype.newbyteorder("="))


def _ids(values: np.ndarray[Any, Any], where: str) -> np.ndarray[Any, Any]:
    """Sample IDs as int64 or str: integers, whole numbers stored as floats (MATLAB's default class), or text."""
    values = values.reshape(-1)
    if values.dtype.kind in "iu":
        return values.astype(np.int64)
    if values.dtype.kind == "f":
        if not np.all(np.isfinite(values)) or np.any(values != np.round(values)) or np.any(np.abs(values) > 2**53):
            raise StoreError(f"{where}: its {IDS_KEY} are floats that are not whole numbers; IDs are integers or text")
        return values.astype(np.int64)
    if values.dtype.kind in "SO":
        try:
            return np.array([v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values.tolist()])
        except UnicodeDecodeError as exc:
            raise StoreError(f"{where}: its {IDS_KEY} are not UTF-8 text") from exc
    if values.dtype.kind == "U":
        return values.astype(str)
    raise StoreError(f"{where}: its {IDS_KEY} have dtype {values.dtype}; sample IDs are integers or strings")


def open_hdf5(path: Path, kind: str = "hdf5") -> ActivationStore:
    """An :class:`ActivationStore` over an HDF5 file (or, with ``kind="mat"``, a MATLAB v7.3 file)."""
    from ._store import ActivationStore, _Array, _check_ids, _same_samples

    h5py = _h5py("a MATLAB v7.3 file" if kind == "mat" else "an HDF5 file")
    matlab = kind == "mat"
    where = printable(str(path))
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise StoreError(f"{where}: it is not a readable HDF5 file ({exc})") from exc
    size = path.stat().st_size
    arrays: dict[str, Any] = {}
    counts: dict[str, int] = {}
    ids = None
    with f:
        datasets: list[tuple[str, Any]] = []

        def visit(name: str, obj: Any) -> None:
            # MATLAB keeps cell contents and class data in '#refs#' and '#subsystem#': not variables
            if isinstance(obj, h5py.Dataset) and not (matlab and name.startswith("#")):
                datasets.append((name, obj))

        f.visititems(visit)
        for name, data in datasets:
            check_name(name, where, "dataset name")
            if name == IDS_KEY:
                raw = np.asarray(data[()])
                if matlab and _matlab_class(data) == "char":  # a char matrix: (n, length) in MATLAB
                    rows = raw.T.reshape(raw.shape[-1], -1).tolist()
                    ids = np.array(["".join(map(chr, row)).rstrip() for row in rows])
                else:
                    ids = _ids(raw, where)
                continue
            if data.external or data.is_virtual:  # raw data in other files, which a path could name anywhere
                raise StoreError(
                    f"{where}: dataset {printable(name)!r} keeps its data in other files (HDF5 external or virtual "
                    "storage); reprsim reads only the file it is given: copy the data into it (h5repack)"
                )
            shape = tuple(int(s) for s in data.shape)
            if matlab:
                if data.attrs.get("MATLAB_empty"):
                    raise StoreError(f"{where}: variable {printable(name)!r} is empty")
                _check_matlab_class(name, _matlab_class(data), where)
                shape = shape[::-1]  # MATLAB's (n, ...) order
            n, width = _layer_shape(name, shape, where)
            dtype = _float_dtype(data.dtype, name, where)
            offset = _contiguous_offset(data) if not matlab and data.dtype.isnative else None
            if offset is not None and offset + n * width * dtype.itemsize <= size:
                arrays[name] = _Array(path, offset, width, dtype)
            else:
                if offset is not None:
                    raise StoreError(
                        f"{where}: dataset {printable(name)!r} ends beyond the end of the file: it was truncated "
                        "(a partial copy?); write it again"
                    )
                arrays[name] = _Array(path, 0, width, dtype, source=_Rows(path, name, width, dtype, matlab=matlab))
            counts[name] = n
    n = _same_samples(counts, where)
    if ids is not None:
        _check_ids(ids, n, where)
    return ActivationStore(path, kind, n, arrays, sample_ids=ids)


def _matlab_class(data: Any) -> str:
    value = data.attrs.get("MATLAB_class", b"")
    return value.decode() if isinstance(value, bytes) else str(value)


def _contiguous_offset(data: Any) -> int | None:
    """The byte offset of a dataset's data when they lie in the file as one C-order block (contiguous layout,
    no filters, not external, allocated), else None."""
    if data.chunks is not None or data.compression is not None:  # external data were refused before
        return None
    offset = data.id.get_offset()
    return int(offset) if offset is not None else None


def open_mat(path: Path) -> ActivationStore:
    """An :class:`ActivationStore` over a MATLAB .mat file: v7.3 through h5py, v4–v7 through scipy.io.

    A v4–v7 file in which every variable is one row of the same width (thingsvision's layout when it knows the
    file names: one variable per image) is read as one layer ``features``, one row per variable, with the
    variables' names as the sample IDs.
    """
    from ._store import ActivationStore, _Array, _check_ids, _same_samples

    if is_hdf5(path):
        return open_hdf5(path, kind="mat")
    try:
        import scipy.io
    except ImportError as exc:
        raise ImportError("reading a MATLAB .mat file needs scipy: pip install 'reprsim[mat]'") from exc
    where = printable(str(path))
    try:
        variables = scipy.io.whosmat(str(path))
    except Exception as exc:  # scipy raises ValueError, TypeError or its own MatReadError for a damaged file
        raise StoreError(f"{where}: it is not a readable MATLAB .mat file ({exc})") from exc

    def variable(name: str) -> Callable[[], np.ndarray[Any, Any]]:
        def load() -> np.ndarray[Any, Any]:
            return np.asarray(scipy.io.loadmat(str(path), variable_names=[name])[name])

        return load

    for name, _, matlab_class in variables:
        check_name(name, where, "variable name")
        if name != IDS_KEY:
            _check_matlab_class(name, matlab_class, where)
    layers = [(name, tuple(int(s) for s in shape), c) for name, shape, c in variables if name != IDS_KEY]
    per_sample = len(layers) > 1 and all(len(s) == 2 and s[0] == 1 for _, s, _ in layers)
    if per_sample and len({s for _, s, _ in layers}) == 1 and len({c for _, _, c in layers}) == 1:
        names = [name for name, _, _ in layers]
        dtype = np.dtype(_MATLAB_FLOAT[layers[0][2]])

        def stacked() -> np.ndarray[Any, Any]:
            loaded = scipy.io.loadmat(str(path), variable_names=names)
            return np.concatenate([np.asarray(loaded[k]) for k in names])

        width = layers[0][1][1]
        arrays = {"features": _Array(path, 0, width, dtype, source=_Loaded(stacked, width, dtype))}
        ids = np.array(names)
        _check_ids(ids, len(names), where)
        return ActivationStore(path, "mat", len(names), arrays, sample_ids=ids)
    arrays = {}
    counts: dict[str, int] = {}
    for name, shape, matlab_class in layers:
        n, width = _layer_shape(name, shape, where)
        dtype = np.dtype(_MATLAB_FLOAT[matlab_class])
        arrays[name] = _Array(path, 0, width, dtype, source=_Loaded(variable(name), width, dtype))
        counts[name] = n
    n = _same_samples(counts, where)
    sample_ids = None
    if any(name == IDS_KEY for name, _, _ in variables):
        raw = np.asarray(scipy.io.loadmat(str(path), variable_names=[IDS_KEY])[IDS_KEY])
        if raw.dtype.kind == "U":  # a char matrix, read as one string per row, padded with spaces
            sample_ids = np.array([str(s).rstrip() for s in raw.reshape(-1).tolist()])
        elif raw.dtype == object:  # a cell array of strings
            sample_ids = np.array([str(np.asarray(v).reshape(-1)[0]) for v in raw.reshape(-1)])
        else:
            sample_ids = _ids(raw, where)
        _check_ids(sample_ids, n, where)
    return ActivationStore(path, "mat", n, arrays, sample_ids=sample_ids)
