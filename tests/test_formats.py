"""Feature files from other tools as stores: HDF5 (thingsvision's ``features.hdf5``, groups, chunked and
compressed datasets) and MATLAB .mat files (v5 through scipy.io; v7.3, which is HDF5 with MATLAB's column-major
layout), each read against the arrays written and compared against float64 references."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from reprsim import compare_stores, open_store
from reprsim.errors import StoreError
from tests import reference as ref
from tests import reference_measures as refm

h5py = pytest.importorskip("h5py")
scipy_io = pytest.importorskip("scipy.io")

ROOT = Path(__file__).resolve().parents[1]


def data(n: int = 120, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 10)) + 2.0
    conv = np.tanh(rng.normal(size=(n, 3, 2, 4)) + x[:, :1, None, None])  # a (n, c, h, w) feature map
    return x, conv


def write_matlab_v73(path: Path, variables: dict[str, np.ndarray]) -> None:
    """A MATLAB v7.3 file as MATLAB writes one: a 512-byte text header (the HDF5 user block), then each variable
    as a dataset holding the array in column-major order (so HDF5 sees the reversed shape) with its
    ``MATLAB_class`` attribute."""
    with h5py.File(path, "w", userblock_size=512) as f:
        for name, value in variables.items():
            data = f.create_dataset(name, data=np.asarray(value).T)  # .T reverses every axis: column-major
            kind = {"float64": "double", "float32": "single", "int64": "int64", "uint16": "char"}[value.dtype.name]
            data.attrs["MATLAB_class"] = np.bytes_(kind)
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Thu Dec  3 12:00:00 2026 HDF5 schema 1.00 ."
    with open(path, "r+b") as handle:
        handle.write(header.ljust(116, b" "))


def test_thingsvision_hdf5_is_read_at_its_byte_offset(tmp_path: Path) -> None:
    # thingsvision's layout: one dataset "features" of shape (n, width), contiguous, no IDs
    x, _ = data()
    with h5py.File(tmp_path / "features.hdf5", "w") as f:
        f.create_dataset("features", data=x.astype(np.float32))
    store = open_store(tmp_path / "features.hdf5")
    assert (store.kind, store.layers, store.samples, store.widths) == ("hdf5", ["features"], 120, {"features": 10})
    assert store.sample_ids is None
    assert isinstance(store.array("features"), np.memmap)  # contiguous: memory-mapped, like a .npy file
    np.testing.assert_array_equal(store.read("features", 7, 31), x[7:31].astype(np.float32))
    np.testing.assert_array_equal(store.array("features"), x.astype(np.float32))
    assert "hdf5" in repr(store)


def test_groups_chunked_compressed_and_big_endian_datasets(tmp_path: Path) -> None:
    x, conv = data()
    ids = np.array([f"img{i:04d}.png" for i in range(120)])
    with h5py.File(tmp_path / "run.h5", "w") as f:
        f.create_dataset("blocks/0/out", data=x, chunks=(16, 10), compression="gzip")
        f.create_dataset("blocks/1/conv", data=conv.astype(">f4"))  # big-endian, contiguous
        f.create_dataset("head", data=x[:, :3].astype(np.float16), chunks=(50, 3), shuffle=True)
        f.create_dataset("sample_ids", data=ids.astype(object), dtype=h5py.string_dtype())
    store = open_store(tmp_path / "run.h5")
    assert store.layers == ["blocks/0/out", "blocks/1/conv", "head"]
    assert store.widths == {"blocks/0/out": 10, "blocks/1/conv": 24, "head": 3}
    assert store.dtypes == {"blocks/0/out": np.float64, "blocks/1/conv": np.float32, "head": np.float16}
    assert store.sample_ids.tolist() == ids.tolist()
    np.testing.assert_array_equal(store.read("blocks/0/out", 5, 77), x[5:77])
    # a sample's features in C order, as np.reshape(n, -1) gives them for a .npy file
    np.testing.assert_array_equal(store.read("blocks/1/conv", 100), conv[100:].reshape(20, 24).astype(np.float32))
    np.testing.assert_array_equal(store.read("head"), x[:, :3].astype(np.float16))
    order = np.random.default_rng(1).permutation(120)
    np.testing.assert_array_equal(store.rows("blocks/0/out", order), x[order])
    np.testing.assert_array_equal(store.tensor("blocks/0/out").numpy(), x)


@pytest.mark.parametrize("chunk_rows", [13, 1000])
def test_compare_stores_on_hdf5_and_mat_files_equals_float64_references(tmp_path: Path, chunk_rows: int) -> None:
    x, conv = data()
    y = np.tanh(x @ np.random.default_rng(2).normal(size=(10, 6)))
    ids = np.arange(500, 620)
    with h5py.File(tmp_path / "a.hdf5", "w") as f:
        f.create_dataset("x", data=x, chunks=(32, 10), compression="gzip")
        f.create_dataset("conv", data=conv)
        f.create_dataset("sample_ids", data=ids)
    scipy_io.savemat(tmp_path / "b.mat", {"y": y, "sample_ids": ids.astype(np.float64)})  # MATLAB's double IDs
    out = compare_stores(tmp_path / "a.hdf5", tmp_path / "b.mat", measures=["cka", "procrustes", "mutual_knn"],
                         chunk_rows=chunk_rows, progress=False)  # fmt: skip
    assert out["cka"].names_a == ["conv", "x"]  # HDF5 lists a group's members by name
    for name, xs in (("x", x), ("conv", conv.reshape(120, -1))):
        assert float(out["cka"][name, "y"]) == pytest.approx(ref.cka(xs, y, "linear"), abs=1e-10)
        assert float(out["procrustes"][name, "y"]) == pytest.approx(refm.procrustes(xs, y, "angular"), abs=1e-10)
        assert float(out["mutual_knn"][name, "y"]) == pytest.approx(refm.mutual_knn(xs, y, 10), abs=1e-12)
    shuffled = np.random.default_rng(3).permutation(120)
    scipy_io.savemat(tmp_path / "c.mat", {"y": y[shuffled], "sample_ids": ids[shuffled]})
    r = compare_stores(tmp_path / "a.hdf5", tmp_path / "c.mat", measure="cka", align=True, progress=False)
    assert float(r["x", "y"]) == pytest.approx(ref.cka(x, y, "linear"), abs=1e-10)


def test_a_mat_variable_reads_the_same_from_v5_and_v73(tmp_path: Path) -> None:
    x, conv = data()
    ids = np.array([f"s{i}" for i in range(120)])
    scipy_io.savemat(tmp_path / "v5.mat", {"fc": x, "conv": conv.astype(np.float32), "sample_ids": ids})
    # MATLAB's char matrix of IDs: (n, length) of UTF-16 code units
    chars = np.array([[ord(c) for c in s.ljust(4)] for s in ids.tolist()], dtype=np.uint16)
    write_matlab_v73(tmp_path / "v73.mat", {"fc": x, "conv": conv.astype(np.float32), "sample_ids": chars})
    for name in ("v5.mat", "v73.mat"):
        store = open_store(tmp_path / name)
        assert store.kind == "mat"
        assert sorted(store.layers) == ["conv", "fc"], name
        assert store.widths["conv"] == 24
        assert store.dtypes["conv"] == np.float32
        assert store.sample_ids.tolist() == ids.tolist(), name
        np.testing.assert_array_equal(store.read("fc"), x, err_msg=name)
        np.testing.assert_array_equal(store.read("fc", 17, 40), x[17:40], err_msg=name)
        # MATLAB's index order, (n, c, h, w) flattened as NumPy flattens it: the same in both versions
        np.testing.assert_array_equal(store.read("conv", 3, 9), conv[3:9].reshape(6, 24).astype(np.float32))
    numeric = np.arange(120, dtype=np.int64)
    write_matlab_v73(tmp_path / "ids.mat", {"fc": x, "sample_ids": numeric.astype(np.float64)})
    assert open_store(tmp_path / "ids.mat").sample_ids.tolist() == numeric.tolist()


def test_thingsvision_per_image_mat_is_one_layer_with_the_names_as_ids(tmp_path: Path) -> None:
    # with file names known, thingsvision saves one variable per image, each a row of features
    x, _ = data(n=6)
    names = [f"cat_{i:02d}" for i in range(6)]
    scipy_io.savemat(tmp_path / "features.mat", {k: x[i].astype(np.float32) for i, k in enumerate(names)})
    store = open_store(tmp_path / "features.mat")
    assert store.layers == ["features"]
    assert store.sample_ids.tolist() == names
    np.testing.assert_array_equal(store.read("features"), x.astype(np.float32))
    np.testing.assert_array_equal(store.read("features", 2, 4), x[2:4].astype(np.float32))


def test_files_that_cannot_be_layers_are_refused_naming_the_dataset(tmp_path: Path) -> None:
    x, _ = data()
    with h5py.File(tmp_path / "labels.h5", "w") as f:
        f.create_dataset("features", data=x)
        f.create_dataset("labels", data=np.arange(120))
    with pytest.raises(StoreError, match=r"'labels' has dtype int64.*sample_ids"):
        open_store(tmp_path / "labels.h5")
    with h5py.File(tmp_path / "rows.h5", "w") as f:
        f.create_dataset("a", data=x)
        f.create_dataset("b", data=x[:100])
    with pytest.raises(StoreError, match="different numbers of rows"):
        open_store(tmp_path / "rows.h5")
    with h5py.File(tmp_path / "ids.h5", "w") as f:
        f.create_dataset("a", data=x)
        f.create_dataset("sample_ids", data=np.zeros(120, dtype=np.int64))
    with pytest.raises(StoreError, match="not unique"):
        open_store(tmp_path / "ids.h5")
    with h5py.File(tmp_path / "cut.h5", "w") as f:
        f.create_dataset("a", data=x)
    with open(tmp_path / "cut.h5", "r+b") as handle:
        handle.truncate(handle.seek(0, 2) - 100)
    with pytest.raises(StoreError, match=r"cut\.h5.*truncated"):
        open_store(tmp_path / "cut.h5")
    outside = tmp_path / "outside.bin"
    x.astype("<f8").tofile(outside)
    with h5py.File(tmp_path / "external.h5", "w") as f:  # a path in the file names data elsewhere
        f.create_dataset("features", shape=x.shape, dtype="<f8", external=[(str(outside), 0, x.nbytes)])
    with pytest.raises(StoreError, match=r"'features' keeps its data in other files"):
        open_store(tmp_path / "external.h5")
    (tmp_path / "text.hdf5").write_text("not hdf5")
    with pytest.raises(StoreError, match="not a readable HDF5 file"):
        open_store(tmp_path / "text.hdf5")
    scipy_io.savemat(tmp_path / "cell.mat", {"fc": x, "note": "a comment"})
    with pytest.raises(StoreError, match=r"'note' is of MATLAB class 'char'"):
        open_store(tmp_path / "cell.mat")
    (tmp_path / "text.mat").write_text("not a mat file")
    with pytest.raises(StoreError, match=r"not a readable MATLAB \.mat file"):
        open_store(tmp_path / "text.mat")


def test_without_h5py_the_error_names_the_extra(tmp_path: Path) -> None:
    x, _ = data()
    with h5py.File(tmp_path / "f.h5", "w") as f:
        f.create_dataset("features", data=x)
    code = (
        "import sys; sys.modules['h5py'] = None\n"  # as if h5py were not installed
        "from reprsim import open_store\n"
        f"open_store({str(tmp_path / 'f.h5')!r})\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode != 0
    assert "reprsim[hdf5]" in done.stderr
    cli = subprocess.run(
        [sys.executable, "-c", "import sys; sys.modules['h5py'] = None\nfrom reprsim.cli import main\n"
         f"raise SystemExit(main(['info', {str(tmp_path / 'f.h5')!r}]))"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert cli.returncode == 3, cli.stderr  # the CLI's "missing optional dependency"
    assert "reprsim[hdf5]" in cli.stderr
