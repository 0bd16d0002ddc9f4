"""Activation stores: the format's round trips, its refusals (incomplete, truncated, inconsistent, mismatched,
pickled) and comparisons of stores, against float64 references on the arrays written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import reprsim
from reprsim import StoreWriter, compare, compare_stores, open_store
from reprsim.errors import LayerNotFoundError, ShapeMismatchError, StoreError
from tests import reference as ref
from tests import reference_measures as refm

ROOT = Path(__file__).resolve().parents[1]


def data(n: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 12)) + 3.0
    y = np.tanh(x @ rng.normal(size=(12, 9))) + 0.3 * rng.normal(size=(n, 9))
    return x, y, np.maximum(x[:, :7], 3.0)


def write(path: Path, layers: dict[str, np.ndarray], *, chunk: int = 64, ids: np.ndarray | None = None,
          model: str | None = None) -> None:  # fmt: skip
    n = next(iter(layers.values())).shape[0]
    with StoreWriter(path, model=model, pool="mean") as w:
        for s in range(0, n, chunk):
            w.write({k: v[s : s + chunk] for k, v in layers.items()}, ids=None if ids is None else ids[s : s + chunk])


# -- the format ------------------------------------------------------------------------------------------


def test_round_trip_of_every_dtype_and_the_manifest(tmp_path: Path) -> None:
    x, y, z = data()
    layers = {"blocks.0": x, "blocks.1": y.astype(np.float32), "head": z.astype(np.float16)}
    ids = np.array([f"img-{i:04d}" for i in range(x.shape[0])])
    write(tmp_path / "s", layers, chunk=37, ids=ids, model="vit")
    store = open_store(tmp_path / "s")
    assert store.samples == 300
    assert store.layers == list(layers)
    assert store.model == "vit"
    assert store.widths == {"blocks.0": 12, "blocks.1": 9, "head": 7}
    assert {k: v.name for k, v in store.dtypes.items()} == {"blocks.0": "float64", "blocks.1": "float32",
                                                            "head": "float16"}  # fmt: skip
    for k, v in layers.items():
        np.testing.assert_array_equal(store.read(k), v)
        np.testing.assert_array_equal(store.read(k, 50, 120), v[50:120])
        np.testing.assert_array_equal(np.load(tmp_path / "s" / "layers" / f"{store.layers.index(k):04d}.npy"), v)
    np.testing.assert_array_equal(store.sample_ids, ids)
    manifest = json.loads((tmp_path / "s" / "reprsim-store.json").read_text())
    assert manifest["format"] == "reprsim-activation-store"
    assert manifest["version"] == 1
    assert [e["pool"] for e in manifest["layers"]] == ["mean"] * 3
    text = repr(store)
    assert "300 samples" in text
    assert "blocks.1" in text
    assert "img-0000" in text


def test_torch_chunks_bfloat16_and_integer_ids(tmp_path: Path) -> None:
    x = torch.randn(20, 3, 4)  # flattened to width 12
    with StoreWriter(tmp_path / "s") as w:
        w.write({"a": x[:10], "b": x[:10, 0].bfloat16()}, ids=torch.arange(100, 110))
        w.write({"a": x[10:], "b": x[10:, 0].bfloat16()}, ids=np.arange(110, 120))
    store = open_store(tmp_path / "s")
    np.testing.assert_array_equal(store.read("a"), x.reshape(20, 12).numpy())
    np.testing.assert_array_equal(store.read("b"), x[:, 0].bfloat16().float().numpy())
    assert store.sample_ids.tolist() == list(range(100, 120))


def test_a_rejected_chunk_changes_nothing(tmp_path: Path) -> None:
    x, y, _ = data(40)
    w = StoreWriter(tmp_path / "s")
    w.write({"a": x[:20], "b": y[:20]})
    with pytest.raises(ShapeMismatchError, match="width 5 in this chunk but 9"):
        w.write({"a": x[20:], "b": y[20:, :5]})
    with pytest.raises(ShapeMismatchError, match="same layers"):
        w.write({"a": x[20:]})
    with pytest.raises(ShapeMismatchError, match="one ID per row"):
        w.write({"a": x[20:], "b": y[20:]}, ids=[1, 2])
    w.write({"a": x[20:], "b": y[20:]})
    store = w.close()
    np.testing.assert_array_equal(store.read("b"), y)
    assert store.sample_ids.tolist() == list(range(40))


def test_writer_refusals(tmp_path: Path) -> None:
    x, _, _ = data(10)
    with pytest.raises(StoreError, match="unique"), StoreWriter(tmp_path / "dup") as w:
        w.write({"a": x}, ids=[0, 1, 2, 3, 4, 5, 6, 7, 8, 0])
    with pytest.raises(StoreError, match="incomplete"):
        open_store(tmp_path / "dup")
    write(tmp_path / "s", {"a": x})
    with pytest.raises(StoreError, match="already exists"):
        StoreWriter(tmp_path / "s")
    StoreWriter(tmp_path / "s", overwrite=True).abort()  # a store is replaced: the old one is gone
    with pytest.raises(StoreError, match="incomplete"):
        open_store(tmp_path / "s")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    with pytest.raises(StoreError, match="not an activation store"):
        StoreWriter(tmp_path / "notes", overwrite=True)
    assert (tmp_path / "notes" / "keep.txt").exists()
    with pytest.raises(reprsim.errors.InvalidParameterError, match="line breaks"):
        StoreWriter(tmp_path / "nl").write({"a": x[:2]}, ids=["a\nb", "c"])


def test_a_killed_writer_leaves_a_store_that_is_refused(tmp_path: Path) -> None:
    code = (
        "import sys, time, numpy as np\n"
        "from reprsim import StoreWriter\n"
        "w = StoreWriter(sys.argv[1])\n"
        "for i in range(10**6):\n"
        "    w.write({'a': np.ones((100, 8))})\n"
        "    if i == 3: print('writing', flush=True)\n"
        "    time.sleep(0.01)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "s")], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert (tmp_path / "s" / "layers" / "0000.npy").stat().st_size > 0
    with pytest.raises(StoreError, match=r"incomplete.*did not finish"):
        open_store(tmp_path / "s")


@pytest.mark.parametrize("cut", [1, 8 * 12, 8 * 12 * 100])
def test_a_truncated_layer_is_refused_never_read_as_shorter_data(tmp_path: Path, cut: int) -> None:
    x, _, _ = data()
    write(tmp_path / "s", {"a": x, "b": x[:, :3]})
    file = tmp_path / "s" / "layers" / "0000.npy"
    os.truncate(file, file.stat().st_size - cut)
    with pytest.raises(StoreError, match=r"0000\.npy.*truncated"):
        open_store(tmp_path / "s")


def test_inconsistent_manifests_and_files_are_refused(tmp_path: Path) -> None:
    x, _, _ = data(50)
    write(tmp_path / "s", {"a": x, "b": x[:, :3].astype(np.float32)})
    manifest_path = tmp_path / "s" / "reprsim-store.json"
    original = manifest_path.read_text()

    def edit(change: dict[str, object], layer: int | None = None) -> None:
        m = json.loads(original)
        (m["layers"][layer] if layer is not None else m).update(change)
        manifest_path.write_text(json.dumps(m))

    edit({"width": 11}, 0)
    with pytest.raises(StoreError, match=r"shape \(50, 12\) but the manifest says \(50, 11\)"):
        open_store(tmp_path / "s")
    edit({"dtype": "float64"}, 1)
    with pytest.raises(StoreError, match="stored as float32 but the manifest says float64"):
        open_store(tmp_path / "s")
    edit({"samples": 49})
    with pytest.raises(StoreError, match="manifest says"):
        open_store(tmp_path / "s")
    edit({"version": 2})
    with pytest.raises(StoreError, match="version 2"):
        open_store(tmp_path / "s")
    manifest_path.write_text(original[:40])
    with pytest.raises(StoreError, match="damaged"):
        open_store(tmp_path / "s")
    manifest_path.write_text(original)
    (tmp_path / "s" / "ids.npy").unlink()
    with pytest.raises(StoreError, match="sample-ID file"):
        open_store(tmp_path / "s")


def test_nothing_is_unpickled(tmp_path: Path) -> None:
    objects = np.array([{"a": 1}, None], dtype=object)
    np.save(tmp_path / "obj.npy", objects, allow_pickle=True)
    with pytest.raises(StoreError, match="never unpickles"):
        open_store(tmp_path / "obj.npy")
    np.savez(tmp_path / "obj.npz", layer=objects)
    with pytest.raises(StoreError, match=r"obj\.npz"):
        open_store(tmp_path / "obj.npz")


def test_loose_files(tmp_path: Path) -> None:
    x, y, _ = data(60)
    np.save(tmp_path / "fc1.npy", x.astype(np.float32))
    assert open_store(tmp_path / "fc1.npy").layers == ["fc1"]
    np.testing.assert_array_equal(open_store(tmp_path / "fc1.npy").read("fc1"), x.astype(np.float32))
    np.savez(tmp_path / "two.npz", a=x, b=y.reshape(60, 3, 3), sample_ids=np.arange(60)[::-1])
    two = open_store(tmp_path / "two.npz")
    assert two.layers == ["a", "b"]
    assert two.widths["b"] == 9
    assert two.sample_ids[0] == 59
    st = pytest.importorskip("safetensors.numpy")
    st.save_file({"a": x.astype(np.float32), "b": y}, str(tmp_path / "t.safetensors"), metadata={"model": "m"})
    t = open_store(tmp_path / "t.safetensors")
    assert t.model == "m"
    assert set(t.layers) == {"a", "b"}
    np.testing.assert_array_equal(t.read("b", 5, 9), y[5:9])
    np.testing.assert_array_equal(t.read("a"), x.astype(np.float32))
    with open(tmp_path / "t.safetensors", "r+b") as f:
        f.truncate(f.seek(0, 2) - 16)
    with pytest.raises(StoreError, match="truncated"):
        open_store(tmp_path / "t.safetensors")
    for bad in ("missing.npy", "x.csv"):
        (tmp_path / "x.csv").write_text("1,2")
        with pytest.raises(StoreError, match=bad.split(".")[0]):
            open_store(tmp_path / bad)


def test_bfloat16_safetensors(tmp_path: Path) -> None:
    st = pytest.importorskip("safetensors.torch")
    x = torch.randn(30, 5)
    st.save_file({"h": x.bfloat16()}, str(tmp_path / "b.safetensors"))
    got = open_store(tmp_path / "b.safetensors").read("h")
    np.testing.assert_array_equal(got, x.bfloat16().float().numpy())


# -- comparing stores ------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_rows", [7, 64, 300, 1000])
def test_compare_stores_equals_float64_references(tmp_path: Path, chunk_rows: int) -> None:
    x, y, z = data()
    write(tmp_path / "a", {"x": x, "z": z}, chunk=50, model="A")
    write(tmp_path / "b", {"y": y}, chunk=50, model="B")
    out = compare_stores(tmp_path / "a", tmp_path / "b", measures=["cka", "cka_unbiased", "procrustes", "mutual_knn"],
                         chunk_rows=chunk_rows, progress=False)  # fmt: skip
    for i, xs in enumerate((x, z)):
        assert out["cka"].matrix[i, 0].item() == pytest.approx(ref.cka(xs, y, "linear"), abs=1e-10)
        assert out["cka_unbiased"].matrix[i, 0].item() == pytest.approx(
            ref.cka(xs, y, "linear", unbiased=True), abs=1e-10
        )
        assert out["procrustes"].matrix[i, 0].item() == pytest.approx(refm.procrustes(xs, y, "angular"), abs=1e-10)
        assert out["mutual_knn"].matrix[i, 0].item() == pytest.approx(refm.mutual_knn(xs, y, 10), abs=1e-12)
    assert out["cka"].model_a == "A"
    assert out["cka"].names_b == ["y"]
    assert out["cka"].metadata["stores"] == {"A": str(tmp_path / "a"), "B": str(tmp_path / "b")}


def test_compare_stores_within_one_store_and_layer_selection(tmp_path: Path) -> None:
    x, y, z = data()
    write(tmp_path / "a", {"blocks.0.x": x, "blocks.1.y": y, "head": z})
    r = compare_stores(tmp_path / "a", measure="cka", layers_a="blocks.**", progress=False)
    assert r.names_a == r.names_b == ["blocks.0.x", "blocks.1.y"]
    assert r.matrix[0, 1].item() == pytest.approx(ref.cka(x, y, "linear"), abs=1e-10)
    with pytest.raises(LayerNotFoundError, match="head"):
        compare_stores(tmp_path / "a", measure="cka", layers_a=["hed"], progress=False)


def test_sample_ids_must_match_or_be_aligned(tmp_path: Path) -> None:
    x, y, _ = data()
    ids = np.arange(1000, 1300)
    perm = np.random.default_rng(1).permutation(300)
    write(tmp_path / "a", {"x": x}, ids=ids)
    write(tmp_path / "b", {"y": y[perm]}, ids=ids[perm])
    with pytest.raises(StoreError, match=r"different order.*align=True"):
        compare_stores(tmp_path / "a", tmp_path / "b", measure="cka", progress=False)
    r = compare_stores(tmp_path / "a", tmp_path / "b", measures=["cka", "mutual_knn"], align=True, progress=False,
                       chunk_rows=41)  # fmt: skip
    assert r["cka"].matrix.item() == pytest.approx(ref.cka(x, y, "linear"), abs=1e-10)
    assert r["mutual_knn"].matrix.item() == pytest.approx(refm.mutual_knn(x, y, 10), abs=1e-12)
    write(tmp_path / "c", {"y": y}, ids=ids + 1)
    with pytest.raises(StoreError, match="different samples: 1 IDs only in the first"):
        compare_stores(tmp_path / "a", tmp_path / "c", measure="cka", align=True, progress=False)
    write(tmp_path / "d", {"y": y[:299]})
    with pytest.raises(StoreError, match="different numbers of samples"):
        compare_stores(tmp_path / "a", tmp_path / "d", measure="cka", progress=False)
    write(tmp_path / "e", {"y": y}, ids=np.array([str(i) for i in ids]))
    with pytest.raises(StoreError, match="different kinds"):
        compare_stores(tmp_path / "a", tmp_path / "e", measure="cka", progress=False)
    np.save(tmp_path / "y.npy", y)  # no IDs: matched by position
    r = compare_stores(tmp_path / "a", tmp_path / "y.npy", measure="cka", progress=False)
    assert r.matrix.item() == pytest.approx(ref.cka(x, y, "linear"), abs=1e-10)
    with pytest.raises(StoreError, match="has none"):
        compare_stores(tmp_path / "a", tmp_path / "y.npy", measure="cka", align=True, progress=False)


def net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4)).double()


def test_compare_writes_stores_that_give_back_the_same_numbers(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(b, 10, generator=g, dtype=torch.float64), torch.arange(b) + start)
               for start, b in ((0, 30), (30, 25), (55, 40))]  # fmt: skip
    a, b = net(0), net(1)
    measures = ["cka", "procrustes", "rsa"]
    direct = compare(a, b, batches, layers=["1", "3", "4"], measures=measures, progress=False, ci=0.9, blocks=5,
                     stores=(tmp_path / "a", tmp_path / "b"),
                     sample_ids=lambda batch: [f"s{int(i)}" for i in batch[1]])  # fmt: skip
    sa, sb = open_store(tmp_path / "a"), open_store(tmp_path / "b")
    assert sa.model == "model A"
    assert sb.layers == ["1", "3", "4"]
    assert sa.samples == 95
    assert sa.sample_ids[31] == "s31"
    with torch.no_grad():
        np.testing.assert_array_equal(sb.read("4"), torch.cat([b(bt[0]) for bt in batches]).numpy())
    stored = compare_stores(tmp_path / "a", tmp_path / "b", measures=measures, progress=False, ci=0.9, blocks=5)
    for m in measures:
        np.testing.assert_allclose(stored[m].to_numpy(), direct[m].to_numpy(), rtol=0, atol=1e-12)
        assert stored[m].low is not None
        assert direct[m].low is not None
        np.testing.assert_allclose(stored[m].low.numpy(), direct[m].low.numpy(), rtol=0, atol=1e-12)


def test_a_failed_compare_leaves_its_stores_incomplete(tmp_path: Path) -> None:
    batches = [torch.randn(20, 10, dtype=torch.float64) for _ in range(3)]
    batches[2][0, 0] = float("nan")
    with pytest.raises(reprsim.errors.NonFiniteError):
        compare(
            net(0), net(1), batches, layers=["1"], measure="cka", progress=False, stores={"model A": tmp_path / "a"}
        )
    with pytest.raises(StoreError, match="incomplete"):
        open_store(tmp_path / "a")
    with pytest.raises(reprsim.errors.InvalidParameterError, match="not among the models"):
        compare(net(0), net(1), batches[:2], layers=["1"], progress=False, stores={"vit": tmp_path / "v"})
    with pytest.raises(reprsim.errors.InvalidParameterError, match="pass stores= too"):
        compare(net(0), net(1), batches[:2], layers=["1"], progress=False, sample_ids=lambda b: None)


def test_compare_stores_reads_in_bounded_memory(tmp_path: Path) -> None:
    # chunks are read one at a time: a store several times the chunk size streams with the chunk's memory only
    x = np.random.default_rng(0).normal(size=(4000, 16))
    write(tmp_path / "a", {"x": x}, chunk=1000)
    seen: list[int] = []
    from reprsim.models import _compare_stores

    original = _compare_stores.chunks

    def spy(sides, rows, starts=None):  # type: ignore[no-untyped-def]
        for c in original(sides, rows, starts):
            seen.append(c[0]["x"].shape[0])
            yield c

    _compare_stores.chunks = spy
    try:
        r = compare_stores(tmp_path / "a", measure="cka", chunk_rows=512, progress=False)
    finally:
        _compare_stores.chunks = original
    assert seen == [512] * 7 + [416]
    assert r.matrix.item() == pytest.approx(1.0, abs=1e-12)


def test_compare_stores_on_each_device(tmp_path: Path, device: str) -> None:
    x, y, _ = data()
    write(tmp_path / "a", {"x": x.astype(np.float32)})
    write(tmp_path / "b", {"y": y.astype(np.float32)})
    out = compare_stores(tmp_path / "a", tmp_path / "b", measures=["cka", "cka_minibatch", "rsa"], device=device,
                         chunk_rows=100, progress=False)  # fmt: skip
    x32, y32 = x.astype(np.float32).astype(np.float64), y.astype(np.float32).astype(np.float64)
    assert out["cka"].matrix.item() == pytest.approx(ref.cka(x32, y32, "linear"), abs=1e-10)
    expected = ref.minibatch_cka([x32[s : s + 100] for s in range(0, 300, 100)],
                                 [y32[s : s + 100] for s in range(0, 300, 100)], "linear")  # fmt: skip
    assert out["cka_minibatch"].matrix.item() == pytest.approx(expected, abs=1e-5)
    from scipy.spatial.distance import pdist
    from scipy.stats import spearmanr

    rho = spearmanr(pdist(x32, "correlation"), pdist(y32, "correlation"))[0]
    assert out["rsa"].matrix.item() == pytest.approx(rho, abs=1e-5)  # float32 RDMs: near-ties may swap ranks
