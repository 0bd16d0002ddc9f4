"""Reading array files that an attacker (or an accident) may have shaped: .npy headers, .npz members,
safetensors headers and the paths a store's manifest names.

Everything here reads headers before data and bounds what a header may declare by the bytes the file really
holds, so a crafted file gives a :class:`~reprsim.errors.StoreError` naming it, never an allocation of what
the header claims, a read of a file outside the store, an unpickled object or a hang on a FIFO. Nothing here
knows the store format itself (:mod:`._store`).
"""

from __future__ import annotations

import ast
import json
import os
import stat
import struct
import unicodedata
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from ..errors import StoreError

__all__ = [
    "MAX_HEADER",
    "NpyHeader",
    "ZipMember",
    "inside",
    "npz_members",
    "printable",
    "read_npy_header",
    "regular_file",
    "safetensors_header",
]

#: The largest .npy header text read (NumPy's own writers stay far below; its reader refuses beyond 10,000).
MAX_HEADER = 65536
_MAGIC = b"\x93NUMPY"


def printable(text: Any) -> str:
    """``text`` with control and format characters escaped (``\\x1b`` for an escape), so that a name read from
    a file cannot drive the terminal it is printed to."""
    s = str(text)
    if all(unicodedata.category(c)[0] != "C" for c in s):
        return s
    return "".join(c if unicodedata.category(c)[0] != "C" else c.encode("unicode_escape").decode("ascii") for c in s)


def check_name(name: Any, where: str, what: str = "layer name") -> str:
    """A name read from a file: a non-empty string without control characters."""
    if not isinstance(name, str) or not name:
        raise StoreError(f"{where}: a {what} must be a non-empty string; got {printable(repr(name))}")
    if any(unicodedata.category(c) in ("Cc", "Cf", "Cs") for c in name):
        raise StoreError(
            f"{where}: the {what} {printable(repr(name))} holds control characters; rename it (reprsim refuses "
            "names that would be printed raw)"
        )
    return name


def regular_file(path: Path, where: str) -> os.stat_result:
    """``os.stat`` of ``path`` (following links), which must be a regular file: a FIFO, a device or a socket
    named like an array file would block or read without end."""
    try:
        st = path.stat()
    except OSError as exc:
        raise StoreError(f"{where}: {printable(str(path))!r} cannot be read ({exc.strerror or exc})") from exc
    if not stat.S_ISREG(st.st_mode):
        kind = "a FIFO" if stat.S_ISFIFO(st.st_mode) else "a folder" if stat.S_ISDIR(st.st_mode) else "not a file"
        raise StoreError(
            f"{where}: {printable(str(path))!r} is {kind}, not a regular file; reprsim reads activations from "
            "regular files only"
        )
    return st


def inside(folder: Path, relative: Any, where: str) -> Path:
    """The path a manifest names, relative to the store ``folder``: a relative path without ``..`` that
    resolves (links followed) to a regular file inside the folder; anything else is refused."""
    if not isinstance(relative, str) or not relative or "\x00" in relative:
        raise StoreError(f"{where}: a file entry must be a relative path; got {printable(repr(relative))}")
    rel = Path(relative)
    if rel.is_absolute() or ".." in rel.parts or relative.startswith(("/", "\\")):
        raise StoreError(
            f"{where}: the manifest names {printable(repr(relative))}, which is not inside the store; a store "
            "reads only files in its own folder"
        )
    path = folder / rel
    try:
        resolved, root = path.resolve(strict=True), folder.resolve(strict=True)
    except (OSError, RuntimeError) as exc:
        raise StoreError(f"{where}: the file {printable(relative)!r} is missing") from exc
    if root not in resolved.parents:
        raise StoreError(
            f"{where}: {printable(relative)!r} leads outside the store (to {printable(str(resolved))!r}, through a "
            "symbolic link); a store reads only files in its own folder"
        )
    regular_file(resolved, where)
    return path


@dataclass(frozen=True)
class NpyHeader:
    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    fortran: bool
    offset: int  # where the data begin, from the start of the .npy stream

    @property
    def nbytes(self) -> int:
        count = 1
        for s in self.shape:
            count *= s
        return count * self.dtype.itemsize


def read_npy_header(handle: BinaryIO, where: str, size: int) -> NpyHeader:
    """The header of the .npy stream at ``handle``'s position, whose stream holds ``size`` bytes in all.

    Parsed here rather than by NumPy, whose reader first reads as many bytes as the header's length field
    claims (up to 4 GiB): the length is bounded by :data:`MAX_HEADER` and by ``size``, the header is a literal
    dict (never code, never a pickle), and a structured or object dtype is refused.
    """
    start = handle.tell()
    magic = handle.read(8)
    if len(magic) < 8 or magic[:6] != _MAGIC:
        raise StoreError(f"{where} is not a .npy array (no .npy magic string)")
    major = magic[6]
    if major not in (1, 2, 3):
        raise StoreError(f"{where}: unsupported .npy format version {major}.{magic[7]}")
    width = 2 if major == 1 else 4
    raw = handle.read(width)
    if len(raw) < width:
        raise StoreError(f"{where} is truncated inside its .npy header")
    (length,) = struct.unpack("<H" if width == 2 else "<I", raw)
    if length > MAX_HEADER or 8 + width + length > size:
        raise StoreError(
            f"{where}: its .npy header claims {length:,} bytes, more than the file holds or a header needs "
            f"(at most {MAX_HEADER:,}); the file is damaged or crafted"
        )
    text = handle.read(length)
    if len(text) < length:
        raise StoreError(f"{where} is truncated inside its .npy header")
    try:
        header = ast.literal_eval(text.decode("utf-8" if major == 3 else "latin1"))
    except (ValueError, SyntaxError, UnicodeDecodeError, MemoryError, RecursionError) as exc:
        raise StoreError(f"{where}: its .npy header cannot be read ({type(exc).__name__})") from exc
    if not isinstance(header, dict) or set(header) != {"descr", "fortran_order", "shape"}:
        raise StoreError(f"{where}: its .npy header is not a NumPy array header")
    descr, fortran, shape = header["descr"], header["fortran_order"], header["shape"]
    if not isinstance(descr, str):
        raise StoreError(
            f"{where} holds records or Python objects (dtype {printable(repr(descr))}); reprsim reads arrays of "
            "numbers only and never unpickles"
        )
    try:
        dtype = np.dtype(descr)
    except (TypeError, ValueError) as exc:
        raise StoreError(f"{where}: unknown dtype {printable(repr(descr))} in its .npy header") from exc
    if dtype.hasobject:
        raise StoreError(
            f"{where} holds Python objects (dtype {dtype}); reprsim reads numbers only and never unpickles"
        )
    if not isinstance(fortran, bool) or not isinstance(shape, tuple):
        raise StoreError(f"{where}: its .npy header is not a NumPy array header")
    if not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 2**62 for s in shape):
        raise StoreError(f"{where}: its .npy header gives the shape {printable(repr(shape))}")
    return NpyHeader(tuple(shape), dtype, fortran, handle.tell() - start)


@dataclass(frozen=True)
class ZipMember:
    """One array of an .npz archive: where its data start in the archive file when it is stored uncompressed
    (``offset``, else -1: a compressed member is decompressed as it is read) and its header."""

    name: str  # the array's name (the member's name without ".npy")
    member: str
    header: NpyHeader
    offset: int


def _local_data_start(handle: BinaryIO, info: zipfile.ZipInfo, where: str) -> int:
    """Where an uncompressed member's bytes begin in the archive: after its local header, whose name and extra
    fields may differ in length from the central directory's."""
    handle.seek(info.header_offset)
    local = handle.read(30)
    if len(local) < 30 or local[:4] != b"PK\x03\x04":
        raise StoreError(f"{where}: member {printable(info.filename)!r} has a damaged local header")
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    return int(info.header_offset) + 30 + int(name_len) + int(extra_len)


def npz_members(path: Path, size: int) -> list[ZipMember]:
    """Every array of the .npz archive ``path`` (``size`` bytes), from the headers alone: nothing is
    decompressed beyond each member's .npy header, and a header whose data would not match the member's size
    is refused before anything is allocated."""
    where = str(path)
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile, ValueError, EOFError) as exc:
        raise StoreError(f"{where}: it is not a readable .npz archive ({exc})") from exc
    members: list[ZipMember] = []
    with archive, open(path, "rb") as raw:
        seen: set[str] = set()
        for info in archive.infolist():
            if info.is_dir():
                continue
            if not info.filename.endswith(".npy"):
                raise StoreError(f"{where}: member {printable(info.filename)!r} is not a .npy array")
            name = check_name(info.filename[: -len(".npy")], where, "array name")
            if name in seen:
                raise StoreError(f"{where}: the array {printable(name)!r} occurs twice")
            seen.add(name)
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise StoreError(f"{where}: member {printable(name)!r} uses an unsupported compression")
            try:
                with archive.open(info) as member:
                    header = read_npy_header(member, f"{where}: array {printable(name)!r}", info.file_size)  # type: ignore[arg-type]
            except (OSError, zipfile.BadZipFile, EOFError, ValueError) as exc:  # zlib errors are ValueError-like
                raise StoreError(f"{where}: array {printable(name)!r} is damaged ({exc})") from exc
            if header.offset + header.nbytes != info.file_size:
                raise StoreError(
                    f"{where}: array {printable(name)!r} declares shape {header.shape} ({header.nbytes:,} bytes) "
                    f"but holds {info.file_size - header.offset:,}; the archive is damaged or crafted"
                )
            offset = -1
            if info.compress_type == zipfile.ZIP_STORED:
                offset = _local_data_start(raw, info, where) + header.offset
                if offset + header.nbytes > size:
                    raise StoreError(f"{where}: array {printable(name)!r} is truncated")
            members.append(ZipMember(name, info.filename, header, offset))
    return members


def safetensors_header(path: Path, size: int) -> tuple[int, dict[str, Any]]:
    """(where the data begin, the header) of a safetensors file: the header's length bounded by the file and
    100 MiB, its JSON parsed with duplicate keys refused, every tensor's offsets checked to lie in the data."""
    where = str(path)
    with open(path, "rb") as handle:
        raw = handle.read(8)
        if len(raw) < 8:
            raise StoreError(f"{where} is too short to be a safetensors file")
        (length,) = struct.unpack("<Q", raw)
        if length > min(size - 8, 100 * 2**20):
            raise StoreError(f"{where} is not a safetensors file (its header length {length} exceeds the file)")
        text = handle.read(length)

    def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [k for k, _ in pairs]
        if len(set(keys)) != len(keys):
            dup = next(k for k in keys if keys.count(k) > 1)
            raise StoreError(f"{where}: the safetensors header names {printable(dup)!r} twice")
        return dict(pairs)

    try:
        header = json.loads(text.decode("utf-8"), object_pairs_hook=unique)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise StoreError(f"{where}: the safetensors header is damaged ({exc})") from exc
    if not isinstance(header, dict):
        raise StoreError(f"{where}: the safetensors header is not a JSON object")
    start = 8 + length
    for key, info in header.items():
        if key == "__metadata__":
            continue
        check_name(key, where, "tensor name")
        ok = (
            isinstance(info, dict)
            and isinstance(info.get("dtype"), str)
            and isinstance(info.get("shape"), list)
            and all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 2**62 for s in info["shape"])
            and isinstance(info.get("data_offsets"), list)
            and len(info["data_offsets"]) == 2
            and all(isinstance(o, int) and not isinstance(o, bool) for o in info["data_offsets"])
        )
        if not ok:
            raise StoreError(
                f"{where}: the header entry of tensor {printable(key)!r} is not a safetensors tensor "
                "(dtype, shape, data_offsets)"
            )
        begin, end = info["data_offsets"]
        if not 0 <= begin <= end or start + end > size:
            raise StoreError(
                f"{where}: tensor {printable(key)!r} has data offsets [{begin}, {end}] outside the file's "
                f"{size - start:,} data bytes: the file is truncated or damaged"
            )
    return start, header
