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
``sample_ids`` in the last two holds the sample IDs. HDF5 and MATLAB files are read in ``_formats``.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
import re
import socket
import struct
import unicodedata
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable, Union

import numpy as np
import torch

from .._validation import as_matrix, check_bool
from .._version import __version__
from ..errors import InvalidParameterError, LayerNotFoundError, ShapeMismatchError, StoreError
from ._extract import _closest, _glob_to_regex, module_of
from ._files import (
    NpyHeader,
    check_name,
    inside,
    npz_members,
    printable,
    read_npy_header,
    regular_file,
    safetensors_header,
)

__all__ = ["ActivationStore", "StoreWriter", "open_store"]

FORMAT = "reprsim-activation-store"
VERSION = 1
MANIFEST = "reprsim-store.json"
#: Marks a store folder as claimed by a writer (created exclusively); removed once the manifest is written.
CLAIM = "reprsim-store.claim"
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


def _read_header(path: Path, where: str) -> NpyHeader:
    """The .npy header of a regular file (see :func:`._files.read_npy_header`)."""
    size = regular_file(path, where).st_size
    with open(path, "rb") as handle:
        return read_npy_header(handle, where, size)


def _as_rows(value: Any, name: str) -> torch.Tensor:
    """A chunk of one layer as a CPU (rows, width) tensor in a stored dtype (float16, float32 or float64)."""
    if isinstance(value, torch.Tensor):
        t = value.detach()
        if t.device.type == "meta":
            raise InvalidParameterError(
                f"layer {name!r} is a meta tensor (shape {tuple(t.shape)}, no data); write real activations"
            )
        if t.ndim < 1:
            raise ShapeMismatchError(f"layer {name!r} is a scalar; a chunk holds one row per sample")
        t = t.reshape(t.shape[0], math.prod(t.shape[1:])) if t.ndim != 2 else t
        if t.dtype not in (torch.float16, torch.float32, torch.float64):
            t = t.float()  # bfloat16 (no NumPy dtype), integers, booleans
    elif isinstance(value, np.ndarray) and value.dtype == np.float16 and value.ndim >= 1:
        flat = np.ascontiguousarray(value).reshape(value.shape[0], math.prod(value.shape[1:]))
        t = torch.from_numpy(flat)  # kept in float16
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
        for s in arr.tolist():
            if "\n" in s or "\r" in s:
                raise InvalidParameterError("sample IDs must not contain line breaks")
            try:
                s.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise InvalidParameterError(
                    f"sample ID {s!r} is not valid Unicode text (a lone surrogate); IDs are written as UTF-8"
                ) from exc
        return "str", arr
    raise InvalidParameterError(f"sample IDs must be integers or strings; got dtype {arr.dtype}")


def _claim(path: Path, files: Sequence[str] = (), state: str = "writing") -> None:
    """Write the claim file that marks ``path`` as a store being written (or one whose writer aborted, with the
    files it made): created exclusively, so two writers cannot both claim one folder."""
    record = {
        "format": FORMAT,
        "state": state,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "files": list(files),
    }
    text = json.dumps(record).encode("utf-8")
    if state == "writing":
        try:
            fd = os.open(path / CLAIM, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except FileExistsError as exc:
            raise StoreError(
                f"{str(path)!r} is being written by another StoreWriter ({_claim_holder(path)}); two writers on one "
                "store would mix their data. Wait for it to finish, or choose another path"
            ) from exc
        with os.fdopen(fd, "wb") as handle:
            handle.write(text)
        return
    partial = path / (CLAIM + ".partial")
    partial.write_bytes(text)
    os.replace(partial, path / CLAIM)


def _read_claim(path: Path, name: str = CLAIM) -> dict[str, Any] | None:
    claim = path / name
    if claim.is_symlink() or not claim.is_file():
        return None
    try:
        record = json.loads(claim.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) and record.get("format") == FORMAT else None


def _claim_holder(path: Path) -> str:
    record = _read_claim(path) or {}
    return (
        f"process {printable(record.get('pid', '?'))} on {printable(record.get('host', '?'))} since "
        f"{printable(record.get('since', '?'))}"
    )


def _owned_files(path: Path, aside: str | None = None) -> list[Path]:
    """The files of the store at ``path`` that ``overwrite=True`` may delete: those a complete store's manifest
    lists (or an aborted writer's claim), when the folder holds them and nothing else, none a symbolic link.
    Anything else is refused with the reason: nothing unproven is ever deleted. ``aside``: the name an aborted
    writer's claim was moved to by the writer now holding the folder (whose own claim is then present)."""
    where = f"{printable(str(path))!r}"
    keep_out = (
        "overwrite=True replaces only a folder that holds a complete reprsim activation store and nothing else, "
        "so that no other folder is deleted by mistake; delete it yourself if it is yours, or choose another path"
    )
    try:
        manifest_path = path / MANIFEST
        listed: list[str]
        if manifest_path.is_file() and not manifest_path.is_symlink():
            try:
                manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
                if manifest.get("format") != FORMAT:
                    raise ValueError("not a reprsim manifest")
                listed = [str(e["file"]) for e in manifest["layers"]] + [str(manifest["ids"]["file"])]
            except (UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
                raise StoreError(f"{where} has a damaged store manifest ({exc}); {keep_out}") from exc
            listed.append(MANIFEST)
        else:
            claim = _read_claim(path, aside or CLAIM)
            if claim is None:
                raise StoreError(
                    f"{where} is not a complete activation store (it has neither a store manifest nor a reprsim "
                    f"writer's claim); {keep_out}"
                )
            if claim.get("state") != "aborted":
                raise StoreError(
                    f"{where} is being written by another StoreWriter ({_claim_holder(path)}); two writers on one "
                    "store would mix their data. If no writer is running any more (it was killed), delete the "
                    "folder yourself"
                )
            listed = [str(f) for f in claim.get("files", [])]
        allowed = {MANIFEST, MANIFEST + ".partial", CLAIM, CLAIM + ".partial"} | ({aside} if aside else set())
        for rel in listed:
            parts = Path(rel).parts
            if Path(rel).is_absolute() or ".." in parts or len(parts) > 2 or (len(parts) == 2 and parts[0] != "layers"):
                raise StoreError(
                    f"{where}: its manifest names {printable(rel)!r}, which is not a store file; {keep_out}"
                )
            allowed.add(rel)
        found: list[str] = []
        for entry in os.scandir(path):
            if entry.name == "layers" and entry.is_dir(follow_symlinks=False):
                found.extend(f"layers/{e.name}" for e in os.scandir(entry.path))
                continue
            found.append(entry.name)
        foreign = [f for f in found if f not in allowed]
        if foreign:
            shown = ", ".join(repr(printable(f)) for f in sorted(foreign)[:5])
            raise StoreError(f"{where} holds files its store does not list ({shown}); {keep_out}")
        files: list[Path] = []
        for rel in found:
            file = path / rel
            if file.is_symlink() or not file.is_file():
                raise StoreError(f"{where}: {printable(rel)!r} is a symbolic link or not a regular file; {keep_out}")
            files.append(file)
        return files
    except OSError as exc:  # the folder changed while it was read: another writer is replacing it
        raise StoreError(
            f"{where} changed while it was inspected ({exc.strerror or exc}): another StoreWriter is replacing it; "
            "choose another path"
        ) from exc


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
        Replace the store at ``path``: only a complete store (or one whose writer aborted) in a folder that
        holds nothing else, deleting only the files its manifest lists. Any other folder or file, a folder
        another writer is writing, and any symbolic link are refused with the reason.

    Notes
    -----
    The first chunk fixes the layers, their widths and dtypes (float16, float32 and float64 are kept;
    bfloat16 and integers are stored as float32); values beyond the stored dtype's range (above 65504 in a
    float16 store) are refused rather than stored as infinity. A chunk that does not match is refused before
    anything is written. The folder is claimed when the writer starts (a claim file created exclusively, so a
    second writer on the same path is refused); the manifest is written by :meth:`close` (or at the end of a
    ``with`` block that raised nothing): until then, and after a crash or a kill, the store is incomplete and
    :func:`open_store` refuses it. Sample IDs are integers or strings, one per row, unique; without ``ids``
    rows are numbered from 0.

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
        overwrite = check_bool(overwrite, "overwrite")
        if not isinstance(path, (str, os.PathLike)):
            raise InvalidParameterError(f"path must be a folder path (str or os.PathLike); got {type(path).__name__}")
        self.path = Path(path)
        where = repr(printable(str(self.path)))
        if self.path.is_symlink():
            raise StoreError(
                f"{where} is a symbolic link; a store is never written or replaced through one: pass the folder's "
                "real path"
            )
        if self.path.exists():
            if not self.path.is_dir():
                raise StoreError(f"{where} is a file, not a store folder; choose another path")
            empty = not any(self.path.iterdir())
            if not empty and not overwrite:
                raise StoreError(f"{where} already exists; pass overwrite=True to replace it, or choose another path")
            if empty:
                _claim(self.path)
            else:
                self._take_over()
        else:
            try:
                self.path.mkdir(parents=True)
            except FileExistsError:
                pass  # another writer made it at the same moment: the claim below decides
            except OSError as exc:
                raise StoreError(f"cannot create the store folder {where}: {exc.strerror or exc}") from exc
            _claim(self.path)
        (self.path / "layers").mkdir(exist_ok=True)
        self.model, self.pool = model, pool
        self.samples = 0
        self._layers: list[str] = []
        self._widths: dict[str, int] = {}
        self._dtypes: dict[str, np.dtype[Any]] = {}
        self._files: dict[str, BinaryIO] = {}
        self._ids_kind: str | None = None
        self._ids: list[np.ndarray[Any, Any]] = []
        self._closed = False

    def _take_over(self) -> None:
        """Replace the proven store at ``path``: refuse anything unproven without touching it, claim the folder
        (exclusively: a writer racing for it is refused), prove it again under the claim, then delete the
        files the proof lists and nothing else."""
        _owned_files(self.path)  # refuses a foreign folder before anything in it changes
        aside = None
        claim = _read_claim(self.path)
        if claim is not None and claim.get("state") != "aborted":  # a live writer's: never taken from it
            raise StoreError(
                f"{str(self.path)!r} is being written by another StoreWriter ({_claim_holder(self.path)}); two "
                "writers on one store would mix their data. Wait for it to finish, or choose another path"
            )
        if claim is not None:  # an aborted writer's claim: moved aside, atomically, by one racer
            aside = f"{CLAIM}.{os.getpid()}.{id(self)}"
            try:
                os.rename(self.path / CLAIM, self.path / aside)
            except FileNotFoundError as exc:
                raise StoreError(
                    f"{str(self.path)!r} was claimed by another StoreWriter at the same moment; choose another path"
                ) from exc
        _claim(self.path)
        try:
            old = _owned_files(self.path, aside)
        except StoreError:
            (self.path / CLAIM).unlink(missing_ok=True)
            raise
        for file in old:
            if file.name != CLAIM:
                file.unlink(missing_ok=True)  # unlink removes a name, never what a link points to
        layers = self.path / "layers"
        if layers.is_dir() and not layers.is_symlink() and not any(layers.iterdir()):
            layers.rmdir()

    def write(self, layers: Mapping[str, Any], ids: Any = None) -> None:
        """Append one chunk: ``layers`` maps each layer's name to its (rows, ...) activations (flattened to
        (rows, width)); ``ids`` gives the rows' sample IDs (integers or strings), or None to number them."""
        if self._closed:
            raise StoreError(f"the store {str(self.path)!r} is closed; open a new StoreWriter to write another")
        if not isinstance(layers, Mapping) or not layers:
            raise InvalidParameterError("write() takes a mapping of layer names to (rows, width) arrays")
        for k in layers:
            if not isinstance(k, str) or not k or any(unicodedata.category(c)[0] == "C" for c in k):
                raise InvalidParameterError(
                    f"layer names must be non-empty strings without control characters; got {printable(repr(k))}"
                )
        chunk = {k: _as_rows(v, k) for k, v in layers.items()}
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
            dtypes = self._dtypes
        else:
            for k, t in chunk.items():
                if t.shape[1] == 0:
                    raise ShapeMismatchError(f"layer {k!r} has no features (width 0); each row needs at least one")
            dtypes = {k: np.dtype(str(t.dtype).removeprefix("torch.")) for k, t in chunk.items()}
        # every layer cast (later chunks take the first chunk's dtype) and checked before anything is written
        cast = {k: t.to(_TORCH[dtypes[k].name]) for k, t in chunk.items()}
        for k, t in chunk.items():
            if bool(torch.isfinite(t).all()) and not bool(torch.isfinite(cast[k]).all()):
                top = float(t.abs().max())
                raise InvalidParameterError(
                    f"layer {k!r} holds values up to {top:.6g}, beyond the range of this store's {dtypes[k].name} "
                    f"(largest {float(np.finfo(dtypes[k]).max):.6g}), which would be stored as infinity. Write "
                    "float32 activations (the first chunk fixes each layer's dtype), or rescale them"
                )
        if not self._layers:
            for k, t in chunk.items():
                handle = open(self.path / "layers" / f"{len(self._files):04d}.npy", "wb")  # noqa: SIM115
                handle.write(_npy_header(0, t.shape[1], dtypes[k]))
                self._files[k] = handle
                self._widths[k], self._dtypes[k] = t.shape[1], dtypes[k]
            self._layers, self._ids_kind = list(chunk), kind
        for k, data in cast.items():
            if data.numel():
                self._files[k].write(data.numpy().data.cast("B"))
        self._ids.append(id_array)
        self.samples += b

    def close(self) -> ActivationStore:
        """Finish the store: write each layer's final shape, the sample IDs and the manifest; returns the store
        opened for reading."""
        if self._closed:
            return open_store(self.path)
        if not self._layers:
            self.abort()
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
        (self.path / CLAIM).unlink(missing_ok=True)  # released only once the store is complete
        self._closed = True
        return open_store(self.path)

    def abort(self) -> None:
        """Close the files without finishing: the store stays incomplete (and is refused when opened); its
        claim records the files made, so that ``overwrite=True`` may replace it later."""
        if self._closed:
            return
        for handle in self._files.values():
            handle.close()
        made = [f"layers/{i:04d}.npy" for i in range(len(self._files))]
        made += [f for f in ("ids.txt", "ids.npy", MANIFEST + ".partial") if (self.path / f).exists()]
        with contextlib.suppress(OSError):
            _claim(self.path, made, state="aborted")
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
        pool = pool.get(module_of(layer))
    if pool is None or isinstance(pool, str):
        return pool
    return getattr(pool, "__name__", repr(pool))


@dataclass(frozen=True)
class _Array:
    """Where one layer's (rows, width) data live: at ``offset`` in ``file`` (a .npy layer file, an uncompressed
    .npz member, a safetensors tensor, a contiguous HDF5 dataset), or, for a compressed .npz member, in
    ``member`` of the archive ``file``, after ``offset`` bytes of its .npy header (decompressed as it is read),
    or, for data no byte offset describes (a chunked HDF5 dataset, a .mat variable), ``source(start, stop)``
    returns rows ``start:stop``."""

    file: Path
    offset: int
    width: int
    dtype: np.dtype[Any]
    member: str | None = None
    source: Callable[[int, int], np.ndarray[Any, Any]] | None = field(default=None, compare=False)

    @property
    def mapped(self) -> bool:
        """Whether the data lie at ``offset`` in ``file`` as one C-order block (a memory map can read them)."""
        return self.member is None and self.source is None


class ActivationStore:
    """A read-only view of stored activations: an activation store folder, or a ``.npy``/``.npz``/
    ``.safetensors``/``.h5``/``.hdf5``/``.mat`` file; open one with :func:`open_store`. Nothing is read until
    asked for (only headers when opened), so opening and listing never cost more than the headers.

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
        ``"store"``, ``"npy"``, ``"npz"``, ``"safetensors"``, ``"hdf5"`` or ``"mat"``.
    """

    def __init__(
        self,
        path: Path,
        kind: str,
        samples: int,
        arrays: dict[str, _Array],
        *,
        sample_ids: np.ndarray[Any, Any] | None = None,
        model: str | None = None,
        pools: dict[str, Any] | None = None,
        stored_dtypes: dict[str, str] | None = None,
    ) -> None:
        self.path, self.kind, self.samples = path, kind, samples
        self._arrays = arrays
        self._stored = stored_dtypes or {}
        self.layers = list(arrays)
        self.widths = {k: arrays[k].width for k in self.layers}
        self.dtypes = {k: self._dtype(k) for k in self.layers}
        self.sample_ids = sample_ids
        self.model = model
        self.pools = pools or {}
        # an open stream per compressed member, positioned where the last read ended (sequential chunks then
        # decompress each byte once)
        self._streams: dict[str, Any] = {}

    def _dtype(self, layer: str) -> np.dtype[Any]:
        if self._stored.get(layer) == "bfloat16":
            return np.dtype(np.float32)  # read as float32: NumPy has no bfloat16
        return self._arrays[layer].dtype

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

    def _member_bytes(self, a: _Array, layer: str, start: int, count: int) -> bytes:
        """``count`` bytes of a compressed member's data from byte ``start`` of its data."""
        stream = self._streams.get(layer)
        if stream is None:
            archive = zipfile.ZipFile(a.file)
            stream = (archive, archive.open(a.member or ""))
            self._streams[layer] = stream
        handle = stream[1]
        handle.seek(a.offset + start)
        data: bytes = handle.read(count)
        if len(data) != count:
            raise StoreError(f"{a.file}: array {layer!r} ended early: the archive is truncated")
        return data

    def read(self, layer: str, start: int = 0, stop: int | None = None) -> np.ndarray[Any, Any]:
        """Rows ``start:stop`` of ``layer`` as a fresh (rows, width) array, read with one sequential read."""
        self._check_layer(layer)
        stop = self.samples if stop is None else min(stop, self.samples)
        start = max(0, min(start, stop))
        a = self._arrays[layer]
        row = a.width * a.dtype.itemsize
        if a.source is not None:
            return self._convert(layer, a.source(start, stop))
        out = np.empty((stop - start, a.width), dtype=a.dtype)
        if a.member is not None:
            out.data.cast("B")[:] = self._member_bytes(a, layer, start * row, (stop - start) * row)
            return self._convert(layer, out)
        with open(a.file, "rb", buffering=0) as handle:
            handle.seek(a.offset + start * row)
            view = out.data.cast("B")
            got = 0
            while got < len(view):
                n = handle.readinto(view[got:])
                if not n:
                    raise StoreError(f"{a.file} ended early: it was truncated after the store was opened")
                got += n
        return self._convert(layer, out)

    def rows(self, layer: str, index: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        """The rows ``index`` (any order) of ``layer``."""
        self._check_layer(layer)
        if not self._arrays[layer].mapped:
            return np.array(self.read(layer)[index])
        return self._convert(layer, np.asarray(self.array(layer, convert=False)[index]))

    def array(self, layer: str, *, convert: bool = True) -> np.ndarray[Any, Any]:
        """All of ``layer`` as a read-only memory map (no read until used; read into memory for a compressed
        .npz member, a chunked HDF5 dataset or a .mat variable)."""
        self._check_layer(layer)
        a = self._arrays[layer]
        if not a.mapped:
            return self.read(layer)
        mapped = np.memmap(a.file, dtype=a.dtype, mode="r", offset=a.offset, shape=(self.samples, a.width))
        return self._convert(layer, mapped) if convert else mapped

    def tensor(self, layer: str, order: np.ndarray[Any, Any] | None = None) -> torch.Tensor:
        """All of ``layer`` as a CPU tensor, rows in ``order`` if given: a copy-on-write memory map where the
        file allows (nothing read until used, the file never written), else read into memory."""
        self._check_layer(layer)
        if order is not None:
            return torch.from_numpy(self.rows(layer, order))
        a = self._arrays[layer]
        if not a.mapped or layer in self._stored:
            return torch.from_numpy(self.read(layer))
        return torch.from_numpy(
            np.memmap(a.file, dtype=a.dtype, mode="c", offset=a.offset, shape=(self.samples, a.width))
        )

    def _convert(self, layer: str, raw: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        if self._stored.get(layer) == "bfloat16":
            bits = torch.from_numpy(np.ascontiguousarray(raw)).view(torch.bfloat16)
            return bits.float().numpy()
        return raw

    def close(self) -> None:
        """Close the streams of compressed members (they are reopened when read again)."""
        for archive, handle in self._streams.values():
            handle.close()
            archive.close()
        self._streams.clear()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

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
            f"{self.kind} {printable(str(self.path))!r}: {self.samples} samples, {len(self.layers)} layers, "
            f"{size:,.1f} MiB",
            f"model: {printable(self.model)}" if self.model else "model: (not recorded)",
        ]
        if self.sample_ids is None:
            head.append("sample IDs: none (rows are matched by position)")
        else:
            shown = ", ".join(printable(s) for s in self.sample_ids[:3].tolist())
            more = ", ..." if self.samples > 3 else ""
            kind = "strings" if self.sample_ids.dtype.kind == "U" else "integers"
            head.append(f"sample IDs: {kind} ({shown}{more})")
        names = {k: printable(k) for k in self.layers}
        width = max(len(v) for v in names.values()) if self.layers else 5
        rows = [f"  {'layer'.ljust(width)}  {'width':>7}  {'dtype':<8}  pool"]
        for k in self.layers:
            stored = self._stored.get(k, self.dtypes[k].name)
            pool = printable(self.pools.get(k) or "-")
            rows.append(f"  {names[k].ljust(width)}  {self.widths[k]:>7}  {stored:<8}  {pool}")
        return "\n".join(head + rows)


def open_store(path: PathLike) -> ActivationStore:
    """Open stored activations for reading: an activation store folder (written by :class:`StoreWriter`,
    :func:`reprsim.compare` with ``stores=``, or any program that writes the documented format), or a
    ``.npy`` / ``.npz`` / ``.safetensors`` / ``.h5`` / ``.hdf5`` / ``.mat`` file with one array per layer
    (HDF5 needs h5py: ``pip install 'reprsim[hdf5]'``; MATLAB files need ``'reprsim[mat]'``).

    Only headers are read: every file is checked against the manifest (shape, dtype, size) and every header
    against the bytes its file holds before anything else is read; an incomplete, truncated or inconsistent
    store, a file a manifest names outside its folder, a non-regular file or duplicate sample IDs raise
    :class:`~reprsim.errors.StoreError` naming the file and the problem.

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
    if not isinstance(path, (str, os.PathLike)):
        raise InvalidParameterError(f"path must be a str or os.PathLike; got {type(path).__name__}")
    p = Path(path)
    if not p.exists():
        raise StoreError(f"no store or array file at {printable(str(p))!r}")
    if p.is_dir():
        return _open_folder(p)
    regular_file(p, printable(str(p)))
    suffix = p.suffix.lower()
    if suffix == ".npy":
        return _open_npy(p)
    if suffix == ".npz":
        return _open_npz(p)
    if suffix == ".safetensors":
        return _open_safetensors(p)
    if suffix in (".h5", ".hdf5", ".mat"):
        from ._formats import open_hdf5, open_mat

        return open_mat(p) if suffix == ".mat" else open_hdf5(p)
    raise StoreError(
        f"{printable(str(p))!r} is neither an activation store folder nor a .npy, .npz, .safetensors, .h5/.hdf5 "
        "or .mat file; write activations with reprsim.StoreWriter, np.save / np.savez, or safetensors"
    )


def _open_folder(p: Path) -> ActivationStore:
    manifest_path = p / MANIFEST
    where = repr(printable(str(p)))
    if not manifest_path.exists():
        if (p / "layers").exists() or (p / CLAIM).exists():
            raise StoreError(
                f"{where} is an incomplete activation store: it has no {MANIFEST}, so its writer did not finish "
                "(killed, crashed, or still running); write it again"
            )
        raise StoreError(f"{where} is a folder without {MANIFEST}: not a reprsim activation store")
    try:
        regular_file(manifest_path, where)
        if manifest_path.stat().st_size > 64 * 2**20:
            raise StoreError(f"{manifest_path} is larger than any store manifest (64 MiB); it is not one")
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise StoreError(f"{manifest_path} is not a reprsim activation store manifest")
        if manifest.get("version") != VERSION:
            raise StoreError(
                f"{manifest_path} has format version {printable(manifest.get('version'))}; this reprsim reads "
                f"version {VERSION}: upgrade reprsim"
            )
        n = manifest["samples"]
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ValueError(f"samples must be a non-negative integer; got {printable(repr(n))}")
        entries = manifest["layers"]
        if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
            raise ValueError("layers must be a non-empty list of layer entries")
        ids_entry = manifest["ids"]
        if not isinstance(ids_entry, dict):
            raise ValueError("ids must be an entry with a file and a kind")
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, StoreError):
            raise
        raise StoreError(f"{manifest_path} is damaged ({type(exc).__name__}: {exc}); write the store again") from exc
    arrays: dict[str, _Array] = {}
    pools: dict[str, Any] = {}
    for entry in entries:
        name = check_name(entry.get("name"), f"{manifest_path}", "layer name")
        if name in arrays:
            raise StoreError(f"{manifest_path} lists the layer {printable(name)!r} twice; the store is inconsistent")
        shown = printable(name)
        file = inside(p, entry.get("file"), f"store {where}, layer {shown!r}")
        expected = np.dtype(_DTYPES.get(str(entry.get("dtype")), np.void))
        if expected == np.void:
            raise StoreError(f"store {where}: layer {shown!r} has unsupported dtype {printable(entry.get('dtype'))!r}")
        header = _read_header(file, str(file))
        width = entry.get("width")
        if not isinstance(width, int) or isinstance(width, bool) or width < 1:
            raise StoreError(f"store {where}: layer {shown!r} has width {printable(repr(width))}; widths are ≥ 1")
        if header.dtype != expected or header.fortran:
            raise StoreError(
                f"{file}: layer {shown!r} is stored as {header.dtype}{' (Fortran order)' if header.fortran else ''} "
                f"but the manifest says {expected.name}: the store is inconsistent; write it again"
            )
        if header.shape != (n, width):
            raise StoreError(
                f"{file}: layer {shown!r} has shape {header.shape} but the manifest says ({n}, {width}): the store "
                "is inconsistent; write it again"
            )
        _check_size(file, header.offset, n * width * header.dtype.itemsize, shown)
        arrays[name] = _Array(file, header.offset, width, header.dtype)
        pools[name] = entry.get("pool")
    ids = _read_ids(p, ids_entry, n)
    model = manifest.get("model")
    return ActivationStore(
        p, "store", n, arrays, sample_ids=ids, model=model if isinstance(model, str) else None, pools=pools
    )


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
    where = f"store {printable(str(p))!r}"
    if not isinstance(entry.get("file"), str) or not (p / entry["file"]).exists():
        raise StoreError(f"{where}: the sample-ID file {printable(repr(entry.get('file')))} is missing")
    file = inside(p, entry.get("file"), f"{where}, sample IDs")
    if entry.get("kind") == "str":
        size = file.stat().st_size
        if size > 2**20 + 1024 * max(n, 1):
            raise StoreError(f"{file}: {size:,} bytes of sample IDs for {n} samples; the store is inconsistent")
        try:
            lines = file.read_text(encoding="utf-8").split("\n")
        except UnicodeDecodeError as exc:
            raise StoreError(
                f"{file}: the sample IDs are not UTF-8 text ({exc.reason} at byte {exc.start}); write them as UTF-8, "
                "one per line"
            ) from exc
        if lines and lines[-1] == "":
            lines.pop()
        ids: np.ndarray[Any, Any] = np.array(lines, dtype=str)
    else:
        header = _read_header(file, str(file))
        if header.dtype.kind not in "iu" or len(header.shape) != 1:
            raise StoreError(
                f"{file}: sample IDs must be a 1-d integer array; got {header.dtype} of shape {header.shape}"
            )
        _check_size(file, header.offset, header.nbytes, "sample IDs")
        if header.shape[0] != n:
            raise StoreError(
                f"{file}: {header.shape[0]} sample IDs for {n} samples: the store is truncated or inconsistent; "
                "write it again"
            )
        ids = np.fromfile(file, dtype=header.dtype, offset=header.offset).astype(np.int64)
    if ids.shape[0] != n:
        raise StoreError(
            f"{file}: {ids.shape[0]} sample IDs for {n} samples: the store is truncated or inconsistent; write it again"
        )
    _check_ids(ids, n, str(file))
    return ids


def _layer_array(name: str, shape: tuple[int, ...], where: str) -> tuple[int, int]:
    if len(shape) < 1:
        raise StoreError(f"{where}: array {printable(name)!r} is a scalar; each layer needs one row per sample")
    width = math.prod(shape[1:])
    if width == 0:
        raise StoreError(f"{where}: array {printable(name)!r} has shape {shape}: no features (width 0)")
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
    header = _read_header(p, str(p))
    if header.fortran and len(header.shape) > 1:
        raise StoreError(f"{p} is in Fortran order; save it in C order (np.save(path, np.ascontiguousarray(a)))")
    name = check_name(p.stem, str(p), "layer name (the file's name)")
    n, width = _layer_array(name, header.shape, str(p))
    dtype = _checked_dtype(header.dtype, name, str(p))
    _check_size(p, header.offset, n * width * dtype.itemsize, name)
    return ActivationStore(p, "npy", n, {name: _Array(p, header.offset, width, dtype)})


def _checked_dtype(dtype: np.dtype[Any], name: str, where: str) -> np.dtype[Any]:
    if dtype.kind != "f" or dtype.itemsize not in (2, 4, 8):
        raise StoreError(
            f"{where}: layer {printable(name)!r} has dtype {dtype}; activations must be float16, float32 or float64"
        )
    if not dtype.isnative:
        raise StoreError(
            f"{where}: layer {printable(name)!r} is big-endian ({dtype}); save it little-endian: a.astype('<f4')"
        )
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
    members = npz_members(p, p.stat().st_size)
    arrays: dict[str, _Array] = {}
    counts: dict[str, int] = {}
    ids_member = None
    for m in members:
        if m.name == IDS_KEY:
            ids_member = m
            continue
        if m.header.fortran and len(m.header.shape) > 1:
            raise StoreError(f"{p}: array {printable(m.name)!r} is in Fortran order; save it in C order")
        n, width = _layer_array(m.name, m.header.shape, str(p))
        dtype = _checked_dtype(m.header.dtype, m.name, str(p))
        if m.offset >= 0:
            arrays[m.name] = _Array(p, m.offset, width, dtype)
        else:
            arrays[m.name] = _Array(p, m.header.offset, width, dtype, member=m.member)
        counts[m.name] = n
    n = _same_samples(counts, str(p))
    ids = None
    if ids_member is not None:
        h = ids_member.header
        if len(h.shape) != 1 or h.shape[0] != n:
            raise StoreError(f"{p}: its {IDS_KEY} array has shape {h.shape} for {n} rows; it needs ({n},)")
        if h.dtype.kind not in "iuU" or (h.dtype.kind in "iu" and h.dtype.itemsize > 8):
            raise StoreError(f"{p}: its {IDS_KEY} array has dtype {h.dtype}; sample IDs are integers or strings")
        with zipfile.ZipFile(p) as archive, archive.open(ids_member.member) as handle:
            handle.seek(h.offset)
            raw = handle.read(h.nbytes)
        if len(raw) != h.nbytes:
            raise StoreError(f"{p}: its {IDS_KEY} array is truncated")
        values = np.frombuffer(raw, dtype=h.dtype)
        ids = values.astype(np.int64) if h.dtype.kind in "iu" else values.astype(str)
        _check_ids(ids, n, str(p))
    return ActivationStore(p, "npz", n, arrays, sample_ids=ids)


def _check_ids(ids: np.ndarray[Any, Any] | None, n: int, where: str) -> None:
    if ids is None:
        return
    if ids.shape[0] != n:
        raise StoreError(f"{where}: {ids.shape[0]} sample IDs for {n} rows")
    values, counts = np.unique(ids, return_counts=True)
    if values.shape[0] != n:
        shown = [printable(v) for v in values[counts > 1][:3].tolist()]
        raise StoreError(
            f"{where}: the sample IDs are not unique ({int((counts > 1).sum())} occur more than once, e.g. {shown}); "
            "rows could not be matched by ID"
        )


def _open_safetensors(p: Path) -> ActivationStore:
    size = p.stat().st_size
    start, header = safetensors_header(p, size)
    arrays: dict[str, _Array] = {}
    stored: dict[str, str] = {}
    counts: dict[str, int] = {}
    ids = None
    metadata = header.pop("__metadata__", None) or {}
    for key, info in header.items():
        code, shape, (begin, end) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
        if key == IDS_KEY:
            if code not in ("I64", "I32") or len(shape) != 1:
                raise StoreError(f"{p}: {IDS_KEY} must be a 1-d integer tensor; got {printable(code)} of {shape}")
            itemsize = 8 if code == "I64" else 4
            if end - begin != shape[0] * itemsize:
                raise StoreError(f"{p}: {IDS_KEY} has {end - begin} bytes for shape {shape}")
            ids_raw = (code, shape[0], start + begin)
            continue
        if code not in _SAFETENSORS:
            raise StoreError(
                f"{p}: tensor {printable(key)!r} has dtype {printable(code)}; activations must be F16, BF16, F32 or F64"
            )
        dtype = np.dtype(_SAFETENSORS[code]).newbyteorder("<")
        n, width = _layer_array(key, shape, str(p))
        if end - begin != n * width * dtype.itemsize:
            raise StoreError(f"{p}: tensor {printable(key)!r} has {end - begin} bytes for shape {shape}")
        arrays[key] = _Array(p, start + begin, width, dtype)
        counts[key] = n
        if code == "BF16":
            stored[key] = "bfloat16"
    n = _same_samples(counts, str(p))
    if IDS_KEY in header:
        code, count, offset = ids_raw
        if count != n:
            raise StoreError(f"{p}: {count} sample IDs for {n} rows")
        ids = np.fromfile(p, dtype="<i8" if code == "I64" else "<i4", count=count, offset=offset).astype(np.int64)
        _check_ids(ids, n, str(p))
    model = metadata.get("model") if isinstance(metadata, dict) else None
    return ActivationStore(
        p,
        "safetensors",
        n,
        arrays,
        sample_ids=ids,
        model=model if isinstance(model, str) else None,
        stored_dtypes=stored,
    )


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
