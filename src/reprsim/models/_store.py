"""Activation stores: per-layer (n, width) arrays on disk with their sample IDs, written in chunks and read in
chunks, so that activations from an earlier run, another framework or a model server can be compared without
the model.

Format (version 1), a folder::

    reprsim-store.json     the manifest, written last: its presence means the writer finished
    ids.npy | ids.txt      the sample IDs: int64 (.npy), or UTF-8 strings one per line (.txt)
    layers/0000.npy, ...   one standard .npy array per layer, shape (n, width), C order, little-endian

Every file is readable without reprsim (``np.load(path, mmap_mode="r")``, any .npy reader in another
language); nothing is ever unpickled. A writer killed mid-run leaves no manifest, and a store whose files are
shorter or longer than the manifest says is refused, so a truncated store is never read as shorter data.
Loose files are read too: a ``.npy`` (one layer, named after the file), a ``.npz`` (one array per layer) or a
``.safetensors`` file (one tensor per layer, parsed here without the safetensors package); an array named
``sample_ids`` in the last two holds the sample IDs.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import struct
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO, Union

import numpy as np
import torch

from .._validation import as_matrix
from .._version import __version__
from ..errors import InvalidParameterError, LayerNotFoundError, ShapeMismatchError, StoreError
from ._extract import _closest, _glob_to_regex

__all__ = ["ActivationStore", "StoreWriter", "open_store"]

FORMAT = "reprsim-activation-store"
VERSION = 1
MANIFEST = "reprsim-store.json"
#: Bytes reserved for each layer file's .npy header, so the final shape can be written in place at close.
HEADER_BYTES = 256
_DTYPES = {"float16": np.float16, "float32": np.float32, "float64": np.float64}
_TORCH = {"float16": torch.float16, "float32": torch.float32, "float64": torch.float64}
_SAFETENSORS = {"F16": np.float16, "F32": np.float32, "F64": np.float64, "BF16": np.uint16}
IDS_KEY = "sample_ids"

PathLike = Union[str, "os.PathLike[str]"]


def _npy_header(rows: int, width: int, dtype: np.dtype[Any]) -> bytes:
    """A version 1.0 .npy header for a C-order (rows, width) array, padded to exactly HEADER_BYTES."""
    text = f"{{'descr': '{dtype.str}', 'fortran_order': False, 'shape': ({rows}, {width}), }}"
    body = text.ljust(HEADER_BYTES - 10 - 1) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(body)) + body.encode("latin1")


def _read_npy_header(handle: BinaryIO, where: str) -> tuple[tuple[int, ...], np.dtype[Any], bool, int]:
    """(shape, dtype, fortran order, data offset) of an .npy file, read without unpickling anything."""
    try:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(handle)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(handle)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except (ValueError, OSError, SyntaxError) as exc:
        raise StoreError(f"{where} is not a readable .npy array ({exc})") from exc
    if dtype.hasobject:
        raise StoreError(
            f"{where} holds Python objects (dtype {dtype}); reprsim reads numbers only and never unpickles"
        )
    return tuple(int(s) for s in shape), dtype, bool(fortran), handle.tell()


def _as_rows(value: Any, name: str) -> torch.Tensor:
    """A chunk of one layer as a CPU (rows, width) tensor in a stored dtype (float16, float32 or float64)."""
    if isinstance(value, torch.Tensor):
        t = value.detach()
        if t.ndim < 1:
            raise ShapeMismatchError(f"layer {name!r} is a scalar; a chunk holds one row per sample")
        t = t.reshape(t.shape[0], -1) if t.ndim != 2 else t
        if t.dtype not in (torch.float16, torch.float32, torch.float64):
            t = t.float()  # bfloat16 (no NumPy dtype), integers, booleans
    elif isinstance(value, np.ndarray) and value.dtype == np.float16 and value.ndim >= 1:
        t = torch.from_numpy(np.ascontiguousarray(value).reshape(value.shape[0], -1))  # kept in float16
    else:
        t = as_matrix(value, f"layer {name!r}")
    return t.cpu().contiguous()


def _ids_of(ids: Any, rows: int, start: int) -> tuple[str, np.ndarray[Any, Any]]:
    """A chunk's sample IDs as ("int", int64 array) or ("str", str array); None numbers the rows."""
    if ids is None:
        return "index", np.arange(start, start + rows, dtype=np.int64)
    if isinstance(ids, torch.Tensor):
        ids = ids.detach().cpu().numpy()
    arr = np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids)
    if arr.ndim != 1 or arr.shape[0] != rows:
        raise ShapeMismatchError(f"ids must give one ID per row of the chunk ({rows}); got shape {arr.shape}")
    if arr.dtype.kind in "iu":
        return "int", arr.astype(np.int64)
    if arr.dtype.kind == "U":
        if any("\n" in s or "\r" in s for s in arr.tolist()):
            raise InvalidParameterError("sample IDs must not contain line breaks")
        return "str", arr
    raise InvalidParameterError(f"sample IDs must be integers or strings; got dtype {arr.dtype}")


class StoreWriter:
    """Write an activation store chunk by chunk (memory flat in n): one (n, width) array per layer, with the
    sample IDs, the model's name and the pooling.

    Parameters
    ----------
    path : str or path
        The store's folder; it must not exist, or be empty, unless ``overwrite=True``.
    model : str, optional
        The model's name, kept in the manifest (the default name of its side in :func:`compare_stores`).
    pool : str or mapping, optional
        How the activations were pooled (one description, or one per layer), kept in the manifest.
    overwrite : bool, default False
        Replace an existing store at ``path``.

    Notes
    -----
    The first chunk fixes the layers, their widths and dtypes (float16, float32 and float64 are kept;
    bfloat16 and integers are stored as float32). A chunk that does not match is refused before anything is
    written. The manifest is written by :meth:`close` (or at the end of a ``with`` block that raised
    nothing): until then, and after a crash or a kill, the store is incomplete and :func:`open_store` refuses
    it. Sample IDs are integers or strings, one per row, unique; without ``ids`` rows are numbered from 0.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> from reprsim import StoreWriter, open_store
    >>> folder = tempfile.mkdtemp()
    >>> with StoreWriter(folder + "/acts", model="net", pool="mean") as w:
    ...     for start in (0, 3):
    ...         w.write({"layer1": np.ones((3, 4), np.float32)}, ids=[f"img{start + i}" for i in range(3)])
    >>> store = open_store(folder + "/acts")
    >>> store.samples, store.widths, store.sample_ids[:2].tolist()
    (6, {'layer1': 4}, ['img0', 'img1'])
    """

    def __init__(
        self,
        path: PathLike,
        *,
        model: str | None = None,
        pool: Any = None,
        overwrite: bool = False,
    ) -> None:
        self.path = Path(path)
        if self.path.exists() and (not self.path.is_dir() or any(self.path.iterdir())):
            if not overwrite:
                raise StoreError(
                    f"{str(self.path)!r} already exists; pass overwrite=True to replace it, or choose another path"
                )
            if self.path.is_dir() and not (self.path / MANIFEST).exists() and not (self.path / "layers").exists():
                raise StoreError(
                    f"{str(self.path)!r} is a folder that is not an activation store; overwrite=True only replaces "
                    "stores, so that no other folder is deleted by mistake"
                )
            if self.path.is_dir():
                shutil.rmtree(self.path)
            else:
                self.path.unlink()
        (self.path / "layers").mkdir(parents=True, exist_ok=True)
        self.model, self.pool = model, pool
        self.samples = 0
        self._layers: list[str] = []
        self._widths: dict[str, int] = {}
        self._dtypes: dict[str, np.dtype[Any]] = {}
        self._files: dict[str, BinaryIO] = {}
        self._ids_kind: str | None = None
        self._ids: list[np.ndarray[Any, Any]] = []
        self._closed = False

    def write(self, layers: Mapping[str, Any], ids: Any = None) -> None:
        """Append one chunk: ``layers`` maps each layer's name to its (rows, ...) activations (flattened to
        (rows, width)); ``ids`` gives the rows' sample IDs (integers or strings), or None to number them."""
        if self._closed:
            raise StoreError(f"the store {str(self.path)!r} is closed; open a new StoreWriter to write another")
        if not isinstance(layers, Mapping) or not layers:
            raise InvalidParameterError("write() takes a mapping of layer names to (rows, width) arrays")
        chunk = {str(k): _as_rows(v, str(k)) for k, v in layers.items()}
        rows = {t.shape[0] for t in chunk.values()}
        if len(rows) != 1:
            raise ShapeMismatchError(f"the layers of one chunk have different row counts {sorted(rows)}")
        b = rows.pop()
        kind, id_array = _ids_of(ids, b, self.samples)
        if self._layers:
            if list(chunk) != self._layers:
                raise ShapeMismatchError(
                    f"this chunk has layers {list(chunk)} but the store was started with {self._layers}; every "
                    "chunk must hold the same layers, in the same order"
                )
            for k, t in chunk.items():
                if t.shape[1] != self._widths[k]:
                    raise ShapeMismatchError(
                        f"layer {k!r} has width {t.shape[1]} in this chunk but {self._widths[k]} in the first; "
                        "pool to a fixed width (pool='mean' or 'masked_mean') or pad every batch to one length"
                    )
            if kind != self._ids_kind:
                raise InvalidParameterError(
                    f"this chunk's sample IDs are {kind} but earlier chunks' were {self._ids_kind}; give every "
                    "chunk IDs of one kind (or none to number the rows)"
                )
        else:
            for k, t in chunk.items():
                handle = open(self.path / "layers" / f"{len(self._files):04d}.npy", "wb")  # noqa: SIM115
                dtype = np.dtype(str(t.dtype).removeprefix("torch."))
                handle.write(_npy_header(0, t.shape[1], dtype))
                self._files[k] = handle
                self._widths[k], self._dtypes[k] = t.shape[1], dtype
            self._layers, self._ids_kind = list(chunk), kind
        for k, t in chunk.items():
            data = t.to(_TORCH[self._dtypes[k].name])  # later chunks take the first chunk's dtype
            self._files[k].write(data.numpy().data.cast("B"))
        self._ids.append(id_array)
        self.samples += b

    def close(self) -> ActivationStore:
        """Finish the store: write each layer's final shape, the sample IDs and the manifest; returns the store
        opened for reading."""
        if self._closed:
            return open_store(self.path)
        if not self._layers:
            raise StoreError(f"nothing was written to {str(self.path)!r}; write at least one chunk before close()")
        ids = np.concatenate(self._ids)
        if np.unique(ids).shape[0] != ids.shape[0]:
            values, counts = np.unique(ids, return_counts=True)
            self.abort()
            raise StoreError(
                f"sample IDs must be unique; {int((counts > 1).sum())} occur more than once (e.g. "
                f"{values[counts > 1][:3].tolist()}); the store is left incomplete"
            )
        entries = []
        for i, k in enumerate(self._layers):
            handle = self._files[k]
            handle.seek(0)
            handle.write(_npy_header(self.samples, self._widths[k], self._dtypes[k]))
            handle.close()
            entries.append(
                {
                    "name": k,
                    "file": f"layers/{i:04d}.npy",
                    "width": self._widths[k],
                    "dtype": self._dtypes[k].name,
                    "pool": _describe_pool(self.pool, k),
                }
            )
        if self._ids_kind == "str":
            text = "".join(f"{s}\n" for s in ids.tolist())
            (self.path / "ids.txt").write_text(text, encoding="utf-8")
            ids_entry = {"file": "ids.txt", "kind": "str"}
        else:
            np.save(self.path / "ids.npy", ids, allow_pickle=False)
            ids_entry = {"file": "ids.npy", "kind": "int"}
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "samples": self.samples,
            "model": self.model,
            "ids": ids_entry,
            "layers": entries,
            "writer": f"reprsim {__version__}",
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        partial = self.path / (MANIFEST + ".partial")
        partial.write_text(json.dumps(manifest, indent=1), encoding="utf-8")
        os.replace(partial, self.path / MANIFEST)  # atomic: a manifest is either absent or complete
        self._closed = True
        return open_store(self.path)

    def abort(self) -> None:
        """Close the files without finishing: the store stays incomplete (and is refused when opened)."""
        for handle in self._files.values():
            handle.close()
        self._closed = True

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, kind: Any, *exc: object) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()


def _describe_pool(pool: Any, layer: str) -> Any:
    if isinstance(pool, Mapping):
        pool = pool.get(layer.split("#")[0])
    if pool is None or isinstance(pool, str):
        return pool
    return getattr(pool, "__name__", repr(pool))


class ActivationStore:
    """A read-only view of stored activations: an activation store folder, or a ``.npy``/``.npz``/
    ``.safetensors`` file; open one with :func:`open_store`.

    Attributes
    ----------
    path : Path
    samples : int
        Rows per layer.
    layers : list of str
        Layer names, in stored order.
    widths, dtypes : dict
        Each layer's width and NumPy dtype.
    sample_ids : ndarray or None
        One ID per row (int64 or str), or None for files that carry none (rows are then matched by position).
    model : str or None
        The model's name, where the store records it.
    pools : dict
        Each layer's pooling, where recorded.
    kind : str
        ``"store"``, ``"npy"``, ``"npz"`` or ``"safetensors"``.
    """

    def __init__(
        self,
        path: Path,
        kind: str,
        samples: int,
        arrays: dict[str, tuple[Path, int, int, np.dtype[Any]]],
        *,
        sample_ids: np.ndarray[Any, Any] | None = None,
        model: str | None = None,
        pools: dict[str, Any] | None = None,
        loaded: dict[str, np.ndarray[Any, Any]] | None = None,
        stored_dtypes: dict[str, str] | None = None,
    ) -> None:
        self.path, self.kind, self.samples = path, kind, samples
        self._arrays = arrays  # layer -> (file, byte offset, width, dtype as stored)
        self._loaded = loaded or {}  # npz members, read into memory
        self._stored = stored_dtypes or {}
        self.layers = list(arrays) if arrays else list(self._loaded)
        self.widths = {k: (arrays[k][2] if k in arrays else self._loaded[k].shape[1]) for k in self.layers}
        self.dtypes = {k: self._dtype(k) for k in self.layers}
        self.sample_ids = sample_ids
        self.model = model
        self.pools = pools or {}

    def _dtype(self, layer: str) -> np.dtype[Any]:
        if self._stored.get(layer) == "bfloat16":
            return np.dtype(np.float32)  # read as float32: NumPy has no bfloat16
        return self._arrays[layer][3] if layer in self._arrays else self._loaded[layer].dtype

    @property
    def name(self) -> str:
        """The model's name if recorded, else the file or folder name."""
        return self.model if self.model else self.path.stem if self.kind != "store" else self.path.name

    @property
    def nbytes(self) -> int:
        return sum(self.samples * self.widths[k] * self.dtypes[k].itemsize for k in self.layers)

    def _check_layer(self, layer: str) -> None:
        if layer not in self.widths:
            raise LayerNotFoundError(
                f"{str(self.path)!r} holds no layer {layer!r}; it holds {_closest(layer, self.layers)}"
                f"{' (and more: reprsim info shows them all)' if len(self.layers) > 5 else ''}"
            )

    def read(self, layer: str, start: int = 0, stop: int | None = None) -> np.ndarray[Any, Any]:
        """Rows ``start:stop`` of ``layer`` as a fresh (rows, width) array, read with one sequential read."""
        self._check_layer(layer)
        stop = self.samples if stop is None else min(stop, self.samples)
        start = max(0, min(start, stop))
        if layer in self._loaded:
            return np.array(self._loaded[layer][start:stop])
        file, offset, width, dtype = self._arrays[layer]
        out = np.empty((stop - start, width), dtype=dtype)
        row = width * dtype.itemsize
        with open(file, "rb", buffering=0) as handle:
            handle.seek(offset + start * row)
            view = out.data.cast("B")
            got = 0
            while got < len(view):
                n = handle.readinto(view[got:])
                if not n:
                    raise StoreError(f"{file} ended early: it was truncated after the store was opened")
                got += n
        return self._convert(layer, out)

    def rows(self, layer: str, index: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        """The rows ``index`` (any order) of ``layer``."""
        self._check_layer(layer)
        if layer in self._loaded:
            return np.array(self._loaded[layer][index])
        return self._convert(layer, np.asarray(self.array(layer, convert=False)[index]))

    def array(self, layer: str, *, convert: bool = True) -> np.ndarray[Any, Any]:
        """All of ``layer`` as a read-only memory map (no read until used; a loaded array for .npz files)."""
        self._check_layer(layer)
        if layer in self._loaded:
            return self._loaded[layer]
        file, offset, width, dtype = self._arrays[layer]
        mapped = np.memmap(file, dtype=dtype, mode="r", offset=offset, shape=(self.samples, width))
        return self._convert(layer, mapped) if convert else mapped

    def tensor(self, layer: str, order: np.ndarray[Any, Any] | None = None) -> torch.Tensor:
        """All of ``layer`` as a CPU tensor, rows in ``order`` if given: a copy-on-write memory map where the
        file allows (nothing read until used, the file never written), else read into memory."""
        self._check_layer(layer)
        if order is not None:
            return torch.from_numpy(self.rows(layer, order))
        if layer in self._loaded or layer in self._stored:
            return torch.from_numpy(self.read(layer))
        file, offset, width, dtype = self._arrays[layer]
        return torch.from_numpy(np.memmap(file, dtype=dtype, mode="c", offset=offset, shape=(self.samples, width)))

    def _convert(self, layer: str, raw: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        if self._stored.get(layer) == "bfloat16":
            bits = torch.from_numpy(np.ascontiguousarray(raw)).view(torch.bfloat16)
            return bits.float().numpy()
        return raw

    def select(self, spec: Any) -> list[str]:
        """The layers ``spec`` selects: None (all), a name, a glob (``blocks.*``), a regex, or a list of those."""
        if spec is None:
            return list(self.layers)
        items: Sequence[Any] = spec if isinstance(spec, (list, tuple)) else [spec]
        out: list[str] = []
        for item in items:
            if isinstance(item, re.Pattern):
                matched = [k for k in self.layers if item.fullmatch(k)]
            elif isinstance(item, str) and item in self.widths:
                matched = [item]
            elif isinstance(item, str) and any(c in item for c in "*?["):
                rx = _glob_to_regex(item)
                matched = [k for k in self.layers if rx.fullmatch(k)]
            elif isinstance(item, str):
                self._check_layer(item)
                matched = []
            else:
                raise InvalidParameterError(f"select stored layers by name, glob or regex; got {item!r}")
            if not matched:
                raise LayerNotFoundError(f"no layer of {str(self.path)!r} matches {item!r}; it holds {self.layers}")
            out.extend(k for k in matched if k not in out)
        return out

    def __repr__(self) -> str:
        size = self.nbytes / 2**20
        head = [
            f"{self.kind} {str(self.path)!r}: {self.samples} samples, {len(self.layers)} layers, {size:,.1f} MiB",
            f"model: {self.model}" if self.model else "model: (not recorded)",
        ]
        if self.sample_ids is None:
            head.append("sample IDs: none (rows are matched by position)")
        else:
            shown = ", ".join(str(s) for s in self.sample_ids[:3].tolist())
            more = ", ..." if self.samples > 3 else ""
            kind = "strings" if self.sample_ids.dtype.kind == "U" else "integers"
            head.append(f"sample IDs: {kind} ({shown}{more})")
        width = max(len(k) for k in self.layers) if self.layers else 5
        rows = [f"  {'layer'.ljust(width)}  {'width':>7}  {'dtype':<8}  pool"]
        for k in self.layers:
            stored = self._stored.get(k, self.dtypes[k].name)
            rows.append(f"  {k.ljust(width)}  {self.widths[k]:>7}  {stored:<8}  {self.pools.get(k) or '-'}")
        return "\n".join(head + rows)


def open_store(path: PathLike) -> ActivationStore:
    """Open stored activations for reading: an activation store folder (written by :class:`StoreWriter`,
    :func:`reprsim.compare` with ``stores=``, or any program that writes the documented format), or a
    ``.npy`` / ``.npz`` / ``.safetensors`` file with one array per layer.

    Every file is checked against the manifest (shape, dtype, size) before anything is read: an incomplete or
    truncated store raises :class:`~reprsim.errors.StoreError` naming the file and the problem.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> from reprsim import open_store
    >>> path = tempfile.mkdtemp() + "/layers.npz"
    >>> np.savez(path, fc1=np.zeros((10, 3), np.float32), fc2=np.zeros((10, 2), np.float32))
    >>> store = open_store(path)
    >>> store.layers, store.samples, store.sample_ids is None
    (['fc1', 'fc2'], 10, True)
    """
    p = Path(path)
    if not p.exists():
        raise StoreError(f"no store or array file at {str(p)!r}")
    if p.is_dir():
        return _open_folder(p)
    suffix = p.suffix.lower()
    if suffix == ".npy":
        return _open_npy(p)
    if suffix == ".npz":
        return _open_npz(p)
    if suffix == ".safetensors":
        return _open_safetensors(p)
    raise StoreError(
        f"{str(p)!r} is neither an activation store folder nor a .npy, .npz or .safetensors file; "
        "write activations with reprsim.StoreWriter, np.save / np.savez, or safetensors"
    )


def _open_folder(p: Path) -> ActivationStore:
    manifest_path = p / MANIFEST
    if not manifest_path.exists():
        if (p / "layers").exists():
            raise StoreError(
                f"{str(p)!r} is an incomplete activation store: it has no {MANIFEST}, so its writer did not finish "
                "(killed, crashed, or still running); write it again"
            )
        raise StoreError(f"{str(p)!r} is a folder without {MANIFEST}: not a reprsim activation store")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        if manifest.get("format") != FORMAT:
            raise StoreError(f"{manifest_path} is not a reprsim activation store manifest")
        if manifest.get("version") != VERSION:
            raise StoreError(
                f"{manifest_path} has format version {manifest.get('version')}; this reprsim reads version {VERSION}"
                ": upgrade reprsim"
            )
        n = int(manifest["samples"])
        entries = list(manifest["layers"])
        ids_entry = dict(manifest["ids"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, StoreError):
            raise
        raise StoreError(f"{manifest_path} is damaged ({type(exc).__name__}: {exc}); write the store again") from exc
    arrays: dict[str, tuple[Path, int, int, np.dtype[Any]]] = {}
    pools: dict[str, Any] = {}
    for entry in entries:
        name, file = str(entry["name"]), p / str(entry["file"])
        if not file.is_file():
            raise StoreError(f"store {str(p)!r}: the file of layer {name!r} ({file.name}) is missing")
        expected = np.dtype(_DTYPES.get(str(entry["dtype"]), np.void))
        if expected == np.void:
            raise StoreError(f"store {str(p)!r}: layer {name!r} has unsupported dtype {entry['dtype']!r}")
        with open(file, "rb") as handle:
            shape, dtype, fortran, offset = _read_npy_header(handle, str(file))
        width = int(entry["width"])
        if dtype != expected or fortran:
            raise StoreError(
                f"{file}: layer {name!r} is stored as {dtype}{' (Fortran order)' if fortran else ''} but the manifest "
                f"says {expected.name}: the store is inconsistent; write it again"
            )
        if shape != (n, width):
            raise StoreError(
                f"{file}: layer {name!r} has shape {shape} but the manifest says ({n}, {width}): the store is "
                "inconsistent; write it again"
            )
        _check_size(file, offset, n * width * dtype.itemsize, name)
        arrays[name] = (file, offset, width, dtype)
        pools[name] = entry.get("pool")
    ids = _read_ids(p, ids_entry, n)
    return ActivationStore(p, "store", n, arrays, sample_ids=ids, model=manifest.get("model"), pools=pools)


def _check_size(file: Path, offset: int, data: int, name: str) -> None:
    actual = file.stat().st_size
    if actual < offset + data:
        raise StoreError(
            f"{file}: layer {name!r} is truncated: {actual - offset:,} bytes of data where its shape needs "
            f"{data:,} (the file was cut short, e.g. a copy or a writer that was killed); write it again"
        )
    if actual > offset + data:
        raise StoreError(
            f"{file}: layer {name!r} has {actual - offset - data:,} bytes after its data: the file is not the "
            "array its header describes; write it again"
        )


def _read_ids(p: Path, entry: dict[str, Any], n: int) -> np.ndarray[Any, Any]:
    file = p / str(entry.get("file", ""))
    if not file.is_file():
        raise StoreError(f"store {str(p)!r}: the sample-ID file {file.name!r} is missing")
    if entry.get("kind") == "str":
        lines = file.read_text(encoding="utf-8").split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        ids: np.ndarray[Any, Any] = np.array(lines, dtype=str)
    else:
        with open(file, "rb") as handle:
            shape, dtype, _, offset = _read_npy_header(handle, str(file))
        if dtype.kind not in "iu" or len(shape) != 1:
            raise StoreError(f"{file}: sample IDs must be a 1-d integer array; got {dtype} of shape {shape}")
        _check_size(file, offset, shape[0] * dtype.itemsize, "sample IDs")
        ids = np.fromfile(file, dtype=dtype, offset=offset).astype(np.int64)
    if ids.shape[0] != n:
        raise StoreError(
            f"{file}: {ids.shape[0]} sample IDs for {n} samples: the store is truncated or inconsistent; write it again"
        )
    return ids


def _layer_array(name: str, shape: tuple[int, ...], where: str) -> tuple[int, int]:
    if len(shape) < 1:
        raise StoreError(f"{where}: array {name!r} is a scalar; each layer needs one row per sample")
    width = 1
    for s in shape[1:]:
        width *= s
    return shape[0], width


def _same_samples(counts: dict[str, int], where: str) -> int:
    if not counts:
        raise StoreError(f"{where} holds no layer arrays")
    if len(set(counts.values())) != 1:
        raise StoreError(
            f"{where}: the layers have different numbers of rows {counts}; every layer needs one per sample"
        )
    return next(iter(counts.values()))


def _open_npy(p: Path) -> ActivationStore:
    with open(p, "rb") as handle:
        shape, dtype, fortran, offset = _read_npy_header(handle, str(p))
    if fortran and len(shape) > 1:
        raise StoreError(f"{p} is in Fortran order; save it in C order (np.save(path, np.ascontiguousarray(a)))")
    n, width = _layer_array(p.stem, shape, str(p))
    dtype = _checked_dtype(dtype, p.stem, str(p))
    _check_size(p, offset, n * width * dtype.itemsize, p.stem)
    return ActivationStore(p, "npy", n, {p.stem: (p, offset, width, dtype)})


def _checked_dtype(dtype: np.dtype[Any], name: str, where: str) -> np.dtype[Any]:
    if dtype.kind != "f" or dtype.itemsize not in (2, 4, 8):
        raise StoreError(f"{where}: layer {name!r} has dtype {dtype}; activations must be float16, float32 or float64")
    if not dtype.isnative:
        raise StoreError(f"{where}: layer {name!r} is big-endian ({dtype}); save it little-endian: a.astype('<f4')")
    return dtype


def load_npz(path: Path, error: type[Exception], what: str) -> Any:
    """An .npz archive opened without unpickling; ``error(what: reason)`` when it is not one."""
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise error(f"{what}: it is not a readable .npz archive ({exc})") from exc
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise error(f"{what}: it holds a single array (a .npy file), not an archive")
    return archive


def _open_npz(p: Path) -> ActivationStore:
    archive = load_npz(p, StoreError, str(p))
    loaded: dict[str, np.ndarray[Any, Any]] = {}
    ids = None
    with archive:
        for key in archive.files:
            try:
                value = archive[key]
            except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
                raise StoreError(f"{p}: array {key!r} is truncated or damaged ({exc})") from exc
            if key == IDS_KEY:
                try:
                    ids = _ids_of(value, value.shape[0] if value.ndim else -1, 0)[1]
                except (InvalidParameterError, ShapeMismatchError) as exc:
                    raise StoreError(f"{p}: its {IDS_KEY} array cannot be read as sample IDs ({exc})") from exc
                continue
            n, width = _layer_array(key, value.shape, str(p))
            _checked_dtype(value.dtype, key, str(p))
            loaded[key] = np.ascontiguousarray(value.reshape(n, width))
    n = _same_samples({k: v.shape[0] for k, v in loaded.items()}, str(p))
    _check_ids(ids, n, str(p))
    return ActivationStore(p, "npz", n, {}, loaded=loaded, sample_ids=ids)


def _check_ids(ids: np.ndarray[Any, Any] | None, n: int, where: str) -> None:
    if ids is None:
        return
    if ids.shape[0] != n:
        raise StoreError(f"{where}: {ids.shape[0]} sample IDs for {n} rows")
    if np.unique(ids).shape[0] != n:
        raise StoreError(f"{where}: the sample IDs are not unique")


def _open_safetensors(p: Path) -> ActivationStore:
    size = p.stat().st_size
    with open(p, "rb") as handle:
        raw = handle.read(8)
        if len(raw) < 8:
            raise StoreError(f"{p} is too short to be a safetensors file")
        (length,) = struct.unpack("<Q", raw)
        if length > min(size - 8, 100 * 2**20):
            raise StoreError(f"{p} is not a safetensors file (its header length {length} exceeds the file)")
        try:
            header = json.loads(handle.read(length).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise StoreError(f"{p}: the safetensors header is damaged ({exc})") from exc
    start = 8 + length
    arrays: dict[str, tuple[Path, int, int, np.dtype[Any]]] = {}
    stored: dict[str, str] = {}
    counts: dict[str, int] = {}
    ids = None
    metadata = header.pop("__metadata__", None) or {}
    for key, info in header.items():
        code, shape, (begin, end) = info["dtype"], tuple(int(s) for s in info["shape"]), info["data_offsets"]
        if start + int(end) > size:
            raise StoreError(f"{p}: tensor {key!r} is truncated (the file ends before its data does)")
        if key == IDS_KEY:
            if code not in ("I64", "I32"):
                raise StoreError(f"{p}: {IDS_KEY} must be an integer tensor; got {code}")
            ids = np.fromfile(p, dtype="<i8" if code == "I64" else "<i4", count=shape[0], offset=start + begin)
            ids = ids.astype(np.int64)
            continue
        if code not in _SAFETENSORS:
            raise StoreError(f"{p}: tensor {key!r} has dtype {code}; activations must be F16, BF16, F32 or F64")
        dtype = np.dtype(_SAFETENSORS[code]).newbyteorder("<")
        n, width = _layer_array(key, shape, str(p))
        if int(end) - int(begin) != n * width * dtype.itemsize:
            raise StoreError(f"{p}: tensor {key!r} has {int(end) - int(begin)} bytes for shape {shape}")
        arrays[key] = (p, start + int(begin), width, dtype)
        counts[key] = n
        if code == "BF16":
            stored[key] = "bfloat16"
    n = _same_samples(counts, str(p))
    _check_ids(ids, n, str(p))
    model = metadata.get("model") if isinstance(metadata, dict) else None
    return ActivationStore(p, "safetensors", n, arrays, sample_ids=ids, model=model, stored_dtypes=stored)


def as_store(value: Any, what: str) -> ActivationStore:
    if isinstance(value, ActivationStore):
        return value
    if isinstance(value, (str, os.PathLike)):
        return open_store(value)
    raise InvalidParameterError(f"{what} must be a path to stored activations or an ActivationStore; got {value!r}")


def alignment(a: ActivationStore, b: ActivationStore, align: bool) -> np.ndarray[Any, Any] | None:
    """The rows of ``b`` in ``a``'s sample order (None: same order), after checking that both hold the same
    samples; errors name both paths and the fix."""
    where = f"{str(a.path)!r} and {str(b.path)!r}"
    if a.samples != b.samples:
        raise StoreError(
            f"{where} hold different numbers of samples ({a.samples} and {b.samples}); both must hold the same samples"
        )
    if a.sample_ids is None or b.sample_ids is None:
        if align:
            missing = str(a.path if a.sample_ids is None else b.path)
            raise StoreError(
                f"align=True reorders by sample ID, but {missing!r} has none; its rows are matched by position"
            )
        return None
    ia, ib = a.sample_ids, b.sample_ids
    if ia.dtype.kind != ib.dtype.kind:
        raise StoreError(f"{where} have sample IDs of different kinds (integers and strings); they cannot be matched")
    if np.array_equal(ia, ib):
        return None
    only_a = np.setdiff1d(ia, ib)
    only_b = np.setdiff1d(ib, ia)
    if only_a.size or only_b.size:
        raise StoreError(
            f"{where} hold different samples: {only_a.size} IDs only in the first (e.g. {only_a[:3].tolist()}), "
            f"{only_b.size} only in the second (e.g. {only_b[:3].tolist()}); compare stores of the same samples"
        )
    if not align:
        first = int(np.argmax(ia != ib))
        raise StoreError(
            f"{where} hold the same samples in a different order (row {first}: {ia[first]!r} and {ib[first]!r}); "
            "pass align=True (--align) to reorder the second by sample ID"
        )
    order_b = np.argsort(ib, kind="stable")
    return order_b[np.searchsorted(ib[order_b], ia)]


def chunks(
    sides: Sequence[tuple[ActivationStore, list[str], np.ndarray[Any, Any] | None]],
    rows: int,
    starts: Sequence[int] | None = None,
) -> Iterator[list[dict[str, torch.Tensor]]]:
    """Chunks of ``rows`` samples starting at ``starts`` (default: every chunk, in order): per side, its selected
    layers as CPU tensors (reordered where ``order`` is given). The next chunk is read in a background thread
    while the caller works on this one."""
    from concurrent.futures import Future, ThreadPoolExecutor

    n = sides[0][0].samples

    def load(start: int) -> list[dict[str, torch.Tensor]]:
        stop = min(start + rows, n)
        out = []
        for store, layers, order in sides:
            if order is None:
                out.append({k: torch.from_numpy(store.read(k, start, stop)) for k in layers})
            else:
                index = order[start:stop]
                sort = np.argsort(index)
                back = np.empty_like(sort)
                back[sort] = np.arange(sort.shape[0])
                out.append({k: torch.from_numpy(store.rows(k, index[sort])[back]) for k in layers})
        return out

    todo = list(range(0, n, rows) if starts is None else starts)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="reprsim-read") as pool:
        pending: Future[list[dict[str, torch.Tensor]]] | None = pool.submit(load, todo[0]) if todo else None
        for i in range(len(todo)):
            if pending is None:  # pragma: no cover - submitted for every index below len(todo)
                break
            current = pending.result()
            pending = pool.submit(load, todo[i + 1]) if i + 1 < len(todo) else None
            yield current
