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
from reprsim import StoreWriter, Uncertainty, compare, compare_stores, open_store
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
    with pytest.raises(StoreError, match="not a complete activation store"):
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
    direct = compare(a, b, batches, layers=["1", "3", "4"], measures=measures, progress=False,
                     uncertainty=Uncertainty(ci=0.9, blocks=5), stores=(tmp_path / "a", tmp_path / "b"),
                     sample_ids=lambda batch: [f"s{int(i)}" for i in batch[1]])  # fmt: skip
    sa, sb = open_store(tmp_path / "a"), open_store(tmp_path / "b")
    assert sa.model == "model A"
    assert sb.layers == ["1", "3", "4"]
    assert sa.samples == 95
    assert sa.sample_ids[31] == "s31"
    with torch.no_grad():
        np.testing.assert_array_equal(sb.read("4"), torch.cat([b(bt[0]) for bt in batches]).numpy())
    stored = compare_stores(
        tmp_path / "a", tmp_path / "b", measures=measures, progress=False, uncertainty=Uncertainty(ci=0.9, blocks=5)
    )
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
    out = compare_stores(tmp_path / "a", tmp_path / "b", measures=["cka", "cka_minibatch", "rsa"],
                         runtime=reprsim.Runtime(device=device), chunk_rows=100, progress=False)  # fmt: skip
    x32, y32 = x.astype(np.float32).astype(np.float64), y.astype(np.float32).astype(np.float64)
    assert out["cka"].matrix.item() == pytest.approx(ref.cka(x32, y32, "linear"), abs=1e-10)
    expected = ref.minibatch_cka([x32[s : s + 100] for s in range(0, 300, 100)],
                                 [y32[s : s + 100] for s in range(0, 300, 100)], "linear")  # fmt: skip
    assert out["cka_minibatch"].matrix.item() == pytest.approx(expected, abs=1e-5)
    from scipy.spatial.distance import pdist
    from scipy.stats import spearmanr

    rho = spearmanr(pdist(x32, "correlation"), pdist(y32, "correlation"))[0]
    assert out["rsa"].matrix.item() == pytest.approx(rho, abs=1e-5)  # float32 RDMs: near-ties may swap ranks


# -- what overwrite may delete, and what a manifest may name -------------------------------------------------


def test_overwrite_never_deletes_a_folder_that_is_not_a_proven_store(tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / "layers").mkdir(parents=True)
    (project / "train.py").write_text("print('mine')")
    (project / "data.csv").write_text("1,2")
    (project / "layers" / "model.py").write_text("class Net: ...")
    with pytest.raises(StoreError, match=r"not a complete activation store.*overwrite=True replaces only"):
        StoreWriter(project, overwrite=True)
    assert sorted(p.name for p in project.rglob("*")) == ["data.csv", "layers", "model.py", "train.py"]
    # a complete store with a file it does not list: refused, nothing deleted
    x, _, _ = data(20)
    write(tmp_path / "s", {"a": x})
    (tmp_path / "s" / "notes.txt").write_text("keep")
    with pytest.raises(StoreError, match=r"holds files its store does not list \('notes.txt'\)"):
        StoreWriter(tmp_path / "s", overwrite=True)
    assert (tmp_path / "s" / "notes.txt").exists()
    assert open_store(tmp_path / "s").samples == 20
    # a file, and a folder reached through a symbolic link, are never replaced
    (tmp_path / "file.npy").write_bytes(b"x")
    with pytest.raises(StoreError, match="is a file, not a store folder"):
        StoreWriter(tmp_path / "file.npy", overwrite=True)
    (tmp_path / "s" / "notes.txt").unlink()
    (tmp_path / "link").symlink_to(tmp_path / "s")
    with pytest.raises(StoreError, match="symbolic link"):
        StoreWriter(tmp_path / "link", overwrite=True)
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(StoreError, match="symbolic link"):
        StoreWriter(tmp_path / "dangling")
    assert open_store(tmp_path / "s").samples == 20


def test_overwrite_replaces_a_store_deleting_only_its_files_and_never_through_a_link(tmp_path: Path) -> None:
    x, y, _ = data(30)
    write(tmp_path / "s", {"a": x, "b": y})
    with StoreWriter(tmp_path / "s", overwrite=True) as w:
        w.write({"c": y[:10]})
    store = open_store(tmp_path / "s")
    assert store.layers == ["c"]
    assert store.samples == 10
    assert sorted(p.name for p in (tmp_path / "s" / "layers").iterdir()) == ["0000.npy"]
    # a layer file replaced by a link to a file outside: the store is not proven, and the outside file survives
    outside = tmp_path / "precious.npy"
    np.save(outside, x)
    layer = tmp_path / "s" / "layers" / "0000.npy"
    layer.unlink()
    layer.symlink_to(outside)
    with pytest.raises(StoreError, match="symbolic link"):
        StoreWriter(tmp_path / "s", overwrite=True)
    np.testing.assert_array_equal(np.load(outside), x)


def test_an_aborted_store_can_be_replaced_but_not_one_being_written(tmp_path: Path) -> None:
    x, _, _ = data(20)
    w = StoreWriter(tmp_path / "s")
    w.write({"a": x})
    with pytest.raises(StoreError, match="being written by another StoreWriter"):
        StoreWriter(tmp_path / "s", overwrite=True)
    with pytest.raises(StoreError, match="incomplete"):
        open_store(tmp_path / "s")
    store = w.close()  # the first writer is unharmed
    np.testing.assert_array_equal(store.read("a"), x)
    assert store.sample_ids.tolist() == list(range(20))
    w = StoreWriter(tmp_path / "s", overwrite=True)
    w.write({"b": x[:5]})
    w.abort()
    with StoreWriter(tmp_path / "s", overwrite=True) as again:  # its claim lists what it wrote
        again.write({"b": x[:7]})
    assert open_store(tmp_path / "s").samples == 7


def test_writers_racing_for_one_path_leave_one_consistent_store(tmp_path: Path) -> None:
    import threading

    x, _, _ = data(40)
    write(tmp_path / "s", {"a": x})
    outcomes: list[object] = []
    barrier = threading.Barrier(6)

    def race(k: int) -> None:
        barrier.wait()
        try:
            with StoreWriter(tmp_path / "s", overwrite=True) as w:
                w.write({"a": x[:, :3] + k}, ids=np.arange(40) + 1000 * k)
            outcomes.append(k)
        except StoreError as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=race, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    winners = [o for o in outcomes if isinstance(o, int)]
    assert len(outcomes) == 6, outcomes
    assert winners, outcomes
    store = open_store(tmp_path / "s")
    k = int(store.sample_ids[0]) // 1000  # the IDs and the data come from the same writer
    np.testing.assert_array_equal(store.read("a"), x[:, :3] + k)
    assert store.sample_ids.tolist() == (np.arange(40) + 1000 * k).tolist()


def _manifest(path: Path) -> dict:
    return json.loads((path / "reprsim-store.json").read_text())


def _set_manifest(path: Path, m: dict) -> None:
    (path / "reprsim-store.json").write_text(json.dumps(m))


def test_manifest_paths_must_stay_inside_the_store(tmp_path: Path) -> None:
    x, _, _ = data(20)
    write(tmp_path / "s", {"a": x})
    original = _manifest(tmp_path / "s")
    np.save(tmp_path / "x.npy", x)
    for file, what in [("../x.npy", "not inside the store"), (str(tmp_path / "x.npy"), "not inside the store")]:
        m = json.loads(json.dumps(original))
        m["layers"][0]["file"] = file
        _set_manifest(tmp_path / "s", m)
        with pytest.raises(StoreError, match=what):
            open_store(tmp_path / "s")
    m = json.loads(json.dumps(original))
    m["ids"] = {"file": "/etc/passwd", "kind": "str"}
    _set_manifest(tmp_path / "s", m)
    with pytest.raises(StoreError, match="not inside the store"):
        open_store(tmp_path / "s")
    _set_manifest(tmp_path / "s", original)
    (tmp_path / "s" / "ids.npy").unlink()
    (tmp_path / "s" / "ids.npy").symlink_to(tmp_path / "x.npy")  # a link leading out of the folder
    with pytest.raises(StoreError, match="leads outside the store"):
        open_store(tmp_path / "s")


def test_manifest_names_are_validated(tmp_path: Path) -> None:
    x, _, _ = data(20)
    write(tmp_path / "s", {"a": x, "b": x})
    original = _manifest(tmp_path / "s")
    m = json.loads(json.dumps(original))
    m["layers"][1]["name"] = "a"
    _set_manifest(tmp_path / "s", m)
    with pytest.raises(StoreError, match="lists the layer 'a' twice"):
        open_store(tmp_path / "s")
    m["layers"][1]["name"] = "b\x1b[2J"
    _set_manifest(tmp_path / "s", m)
    with pytest.raises(StoreError, match=r"control characters") as info:
        open_store(tmp_path / "s")
    assert "\x1b" not in str(info.value)  # printed escaped, never raw
    for bad in ({"layers": "a"}, {"layers": []}, {"samples": -1}, {"ids": 3}):
        _set_manifest(tmp_path / "s", {**original, **bad})
        with pytest.raises(StoreError, match="damaged"):
            open_store(tmp_path / "s")


def test_duplicate_sample_ids_in_a_store_are_refused(tmp_path: Path) -> None:
    x, _, _ = data(20)
    write(tmp_path / "s", {"a": x}, ids=np.arange(20))
    ids = np.arange(20)
    ids[7] = 3
    np.save(tmp_path / "s" / "ids.npy", ids)
    with pytest.raises(StoreError, match=r"not unique \(1 occur more than once, e.g. \['3'\]\)"):
        open_store(tmp_path / "s")


def _npy_with_header_length(path: Path, length: int) -> None:
    path.write_bytes(b"\x93NUMPY\x02\x00" + length.to_bytes(4, "little") + b"{'descr': '<f8'}")


def test_headers_are_bounded_before_anything_is_allocated(tmp_path: Path) -> None:
    _npy_with_header_length(tmp_path / "big.npy", 2**31)
    with pytest.raises(StoreError, match=r"header claims 2,147,483,648 bytes"):
        open_store(tmp_path / "big.npy")
    # an .npz whose sample_ids declare 10¹⁰ rows
    import zipfile

    with zipfile.ZipFile(tmp_path / "ids.npz", "w") as z:
        z.writestr("a.npy", _npy_bytes(np.ones((4, 2))))
        header = _npy_bytes(np.arange(4))[:128].replace(b"(4,)", b"(10000000000,)")
        z.writestr("sample_ids.npy", header + np.arange(4).tobytes())
    with pytest.raises(StoreError, match=r"sample_ids.*declares shape \(10000000000,\)"):
        open_store(tmp_path / "ids.npz")


def _npy_bytes(a: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, a)
    return buffer.getvalue()


def test_a_compressed_npz_is_opened_from_its_headers_and_read_lazily(tmp_path: Path) -> None:
    import tracemalloc

    big = np.zeros((100_000, 256), np.float32)  # 100 MB of zeros: about 100 KB compressed
    big[:, 0] = np.arange(100_000)
    np.savez_compressed(tmp_path / "bomb.npz", layer=big, other=big[:, :8])
    assert (tmp_path / "bomb.npz").stat().st_size < 2 * 2**20
    tracemalloc.start()
    store = open_store(tmp_path / "bomb.npz")
    text = repr(store)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 8 * 2**20, peak  # headers only: decompressing the layers would take 100 MB
    assert "100000 samples" in text
    np.testing.assert_array_equal(store.read("layer", 50_000, 50_010), big[50_000:50_010])
    np.testing.assert_array_equal(store.read("layer", 10, 12), big[10:12])  # a step back reopens the member
    np.testing.assert_array_equal(store.rows("other", np.array([5, 99_999, 0])), big[[5, 99_999, 0], :8])
    x, y, _ = data(200)
    np.savez_compressed(tmp_path / "a.npz", fc=x.astype(np.float32), sample_ids=np.arange(200))
    np.savez(tmp_path / "b.npz", fc=y.astype(np.float32), sample_ids=np.arange(200))
    result = compare_stores(tmp_path / "a.npz", tmp_path / "b.npz", measure="cka", chunk_rows=64, progress=False)
    assert abs(result["fc", "fc"] - ref.cka(x.astype(np.float32), y.astype(np.float32))) < 1e-6


def test_a_fifo_is_refused_instead_of_read(tmp_path: Path) -> None:
    import threading

    fifo = tmp_path / "layer.npy"
    os.mkfifo(fifo)
    errors: list[BaseException] = []

    def attempt() -> None:
        try:
            open_store(fifo)
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=attempt, daemon=True)
    t.start()
    t.join(timeout=20)
    assert not t.is_alive(), "open_store blocked on a FIFO"
    assert isinstance(errors[0], StoreError)
    assert "FIFO" in str(errors[0])


def test_values_beyond_a_float16_store_are_refused_and_nothing_is_written(tmp_path: Path) -> None:
    w = StoreWriter(tmp_path / "s")
    w.write({"a": np.ones((4, 3), np.float16), "b": np.ones((4, 2), np.float32)})
    with pytest.raises(reprsim.errors.InvalidParameterError, match=r"values up to 100000.*float16.*65504"):
        w.write({"a": np.full((4, 3), 1e5, np.float32), "b": np.ones((4, 2), np.float32)})
    w.write({"a": np.full((2, 3), 2.0, np.float16), "b": np.ones((2, 2), np.float32)})
    store = w.close()
    assert store.samples == 6
    assert np.isfinite(store.read("a")).all()
    assert np.isfinite(store.read("b")).all()


def test_writer_inputs_that_used_to_raise_raw_errors(tmp_path: Path) -> None:
    with StoreWriter(tmp_path / "zero") as w:  # a zero-row first chunk fixes the layers, then rows follow
        w.write({"a": np.ones((0, 2, 3))})
        w.write({"a": np.ones((4, 2, 3))})
    assert open_store(tmp_path / "zero").widths == {"a": 6}
    with pytest.raises(reprsim.errors.InvalidParameterError, match="lone surrogate"):
        StoreWriter(tmp_path / "u").write({"a": np.ones((2, 2))}, ids=["ok", "\ud800"])
    with pytest.raises(reprsim.errors.InvalidParameterError, match="meta tensor"):
        StoreWriter(tmp_path / "m").write({"a": torch.empty(3, 2, device="meta")})
    with pytest.raises(reprsim.errors.InvalidParameterError, match="overwrite must be True or False"):
        StoreWriter(tmp_path / "o", overwrite="yes")  # type: ignore[arg-type]
    np.save(tmp_path / "w0.npy", np.ones((5, 0)))
    with pytest.raises(StoreError, match=r"no features \(width 0\)"):
        open_store(tmp_path / "w0.npy")


def test_malformed_safetensors_headers_are_refused(tmp_path: Path) -> None:
    import struct

    def craft(header: dict, data: bytes = b"\0" * 32) -> Path:
        text = json.dumps(header).encode()
        path = tmp_path / f"t{len(list(tmp_path.iterdir()))}.safetensors"
        path.write_bytes(struct.pack("<Q", len(text)) + text + data)
        return path

    base = {"dtype": "F32", "shape": [4, 2]}
    with pytest.raises(StoreError, match="outside the file"):
        open_store(craft({"a": {**base, "data_offsets": [-8, 24]}}))
    with pytest.raises(StoreError, match="not a safetensors tensor"):
        open_store(craft({"a": {**base, "data_offsets": [0]}}))
    with pytest.raises(StoreError, match="not a safetensors tensor"):
        open_store(craft({"a": {"dtype": "F32", "shape": [-4, 2], "data_offsets": [0, 32]}}))
    entry = b'{"dtype": "F32", "shape": [4, 2], "data_offsets": [0, 32]}'
    text = b'{"a": ' + entry + b', "a": ' + entry + b"}"
    path = tmp_path / "dup.safetensors"
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"\0" * 32)
    with pytest.raises(StoreError, match="names 'a' twice"):
        open_store(path)
