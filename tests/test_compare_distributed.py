"""compare() under a real torchrun (gloo on localhost, 2 and 3 ranks): every rank's result equals one process on
all the data; ranks that disagree or fail stop together instead of waiting."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import reprsim
from tests import torchrun_compare as script

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 240


def torchrun(case: str, ranks: int, out: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "REPRSIM_TEST_STORES": str(out)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}",
               str(ROOT / "tests" / "torchrun_compare.py"), case, str(out)]  # fmt: skip
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=TIMEOUT, cwd=ROOT)


def assert_same_record(got: Any, expected: Any) -> None:
    """Nested metadata equal: the same keys, strings, integers and Nones, and floats to 1e-12."""
    if isinstance(expected, dict):
        assert isinstance(got, dict), got
        assert sorted(got) == sorted(expected), (got, expected)
        for k in expected:
            assert_same_record(got[k], expected[k])
    elif isinstance(expected, list):
        assert isinstance(got, list), got
        assert len(got) == len(expected), (got, expected)
        for g, e in zip(got, expected):
            assert_same_record(g, e)
    elif isinstance(expected, float):
        assert isinstance(got, float), got
        assert got == pytest.approx(expected, rel=0, abs=1e-12), (got, expected)
    else:
        assert type(got) is type(expected), (got, expected)
        assert got == expected, (got, expected)


def check_equal(
    case: str, ranks: int, tmp_path: Path, stderr: list[str] | None = None
) -> dict[str, reprsim.SimilarityResult]:
    """Each rank's results equal one process's; ``stderr`` receives what the ranks wrote there."""
    done = torchrun(case, ranks, tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    if stderr is not None:
        stderr.append(done.stderr)
    single = script.run(case, distributed=False)
    key = next(iter(single))
    runs = [
        reprsim.SimilarityResult.load(tmp_path / f"rank{r}-{key}.npz").metadata["distributed"] for r in range(ranks)
    ]
    # each rank ran its own share of the forward passes, and together they ran every batch once
    assert sum(r["batches_run"] for r in runs) == single[key].metadata["batches"]
    assert max(r["batches_run"] for r in runs) <= -(-single[key].metadata["batches"] // ranks)
    for rank in range(ranks):
        for key, expected in single.items():
            got = reprsim.SimilarityResult.load(tmp_path / f"rank{rank}-{key}.npz")
            np.testing.assert_allclose(got.to_numpy(), expected.to_numpy(), rtol=0, atol=1e-12, err_msg=key)
            for extra in ("low", "high", "p_values", "calibrated"):
                mine, theirs = getattr(got, extra), getattr(expected, extra)
                assert (mine is None) == (theirs is None), (key, extra)
                if mine is not None:
                    np.testing.assert_allclose(
                        mine.numpy(), theirs.numpy(), rtol=0, atol=1e-12, err_msg=f"{key} {extra}"
                    )
            assert got.metadata["samples"] == expected.metadata["samples"]
            assert got.metadata["batches"] == expected.metadata["batches"]
            assert got.metadata["distributed"]["world_size"] == ranks
            if "permutation" in expected.metadata:
                # the same draws and counts; the thresholds are quantiles of nulls that the ranks computed on
                # their own threads, so they agree to rounding like every other number here
                assert_same_record(got.metadata["permutation"], expected.metadata["permutation"])
    return single


def test_moment_measures_under_torchrun_equal_one_process(tmp_path: Path) -> None:
    # 7 uneven batches over 2 ranks: 4 and 3 batches, 206 and 147 samples; folds and records in stream order
    single = check_equal("moments", 2, tmp_path)
    assert len(single) == len(script.MOMENTS)
    got = reprsim.SimilarityResult.load(tmp_path / "rank1-cka.npz")
    assert got.metadata["distributed"]["shard"] == "batches"
    assert got.low is not None
    assert got.metadata["samples"] == sum(script.SIZES["moments"])


def test_a_rank_with_an_empty_shard_takes_part(tmp_path: Path) -> None:
    # 2 batches over 3 ranks: rank 2 runs no forward pass, learns the layers from the others, same result
    check_equal("two", 3, tmp_path)


def test_the_default_measure_is_chosen_alike_on_every_rank(tmp_path: Path) -> None:
    # a layer of 9,000 features: minibatch CKA, also on rank 2, which sees no batch and learns the choice
    single = check_equal("default", 3, tmp_path)
    assert single["default"].metadata["default_measure"].startswith("cka_minibatch (model A:1 has 9,000 features")
    for rank in range(3):
        got = reprsim.SimilarityResult.load(tmp_path / f"rank{rank}-default.npz")
        assert got.metadata["default_measure"] == single["default"].metadata["default_measure"]
        assert got.measure["id"] == "cka-kernel=linear-hsic=song-estimator=minibatch-score"


def test_sample_space_measures_gather_every_rank_s_rows(tmp_path: Path) -> None:
    # neighbours, RSA, distance correlation, RBF CKA and a permutation test on the rows of all 3 ranks, in stream
    # order (so the seeded permutations and the jackknife's blocks are one process's). With progress=True, rank 0
    # alone shows the pass, the reduction (the moments and each of the 6 layers' gathered rows) and the results
    stderr: list[str] = []
    check_equal("samples", 3, tmp_path, stderr)
    assert re.search(r"reduce: 100%.*\b7/7 ", stderr[0]), stderr[0][-2000:]
    # one rank draws it: tqdm may redraw a finished bar when it closes, so count the bars' first frames
    assert len(re.findall(r"reduce:\s+0%", stderr[0])) == 1, stderr[0][-2000:]
    assert re.search(r"results: 100%", stderr[0])


def test_a_distributed_sampler_shard(tmp_path: Path) -> None:
    check_equal("sampler", 2, tmp_path)
    got = reprsim.SimilarityResult.load(tmp_path / "rank0-procrustes.npz")
    assert got.metadata["distributed"]["shard"] == "data"


def test_compare_stores_under_torchrun_reads_a_share_each(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script.write_stores(tmp_path)
    monkeypatch.setenv("REPRSIM_TEST_STORES", str(tmp_path))
    check_equal("stores", 3, tmp_path)


def test_a_plain_dataloader_is_split_by_batches_and_each_rank_loads_its_share(tmp_path: Path) -> None:
    # shuffled without a seed: every rank would draw its own order; rank 0's is used, so the result is one
    # process's on the same samples (moment and neighbour measures do not depend on the order)
    check_equal("loader", 2, tmp_path)
    loaded = [int((tmp_path / f"rank{r}.loaded").read_text()) for r in range(2)]
    assert sum(loaded) == 222  # every sample loaded once, by one rank
    assert min(loaded) > 0


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("mismatch", "same call"),  # rank 1 selected other layers
        ("options", "same call"),  # rank 1 asked for another measure
        ("failure", "NaN"),  # rank 1 met a bad batch: its error, and on the other rank an error naming it
        ("shuffled", "iterated different data"),  # shard="batches" over data that differ between ranks
        ("dictmask", "iterated different data"),  # the same first tensor (a mask), other inputs
    ],
)
def test_ranks_that_disagree_or_fail_all_stop_with_a_clear_error(tmp_path: Path, case: str, message: str) -> None:
    done = torchrun(case, 2, tmp_path)  # a hang would hit the subprocess timeout
    assert done.returncode != 0
    errors = {r: (tmp_path / f"rank{r}.err").read_text() for r in range(2)}
    if case == "failure":  # the failing rank's own error; the other names it
        assert "NaN" in errors[1]
        assert "failed on rank 1" in errors[0]
        assert "NaN" in errors[0]
        return
    for rank, text in errors.items():
        assert message in text, (rank, text)


def test_batch_fingerprints_cover_every_tensor_and_the_row_order() -> None:
    import torch

    from reprsim.models._distributed import fingerprint

    mask, x = torch.ones(6, 4), torch.arange(12.0).reshape(6, 2)
    base = fingerprint({"attention_mask": mask, "x": x})
    assert base[0] == 6
    assert not torch.equal(base[1], fingerprint({"attention_mask": mask, "x": x + 1})[1])  # not the first tensor
    assert not torch.equal(base[1], fingerprint({"attention_mask": mask, "x": x.flip(0)})[1])  # rows reordered
    assert torch.equal(base[1], fingerprint({"attention_mask": mask.clone(), "x": x.clone()})[1])
    assert torch.equal(fingerprint((x, [mask]))[1], torch.cat([fingerprint(x)[1], fingerprint(mask)[1]]))


def test_options_outside_torchrun() -> None:
    import collections

    import torch

    from reprsim.models._distributed import rows_of

    net = script.net(0)
    data = script.batches([10, 12])
    with pytest.raises(reprsim.errors.InvalidParameterError, match="torchrun --nproc_per_node"):
        reprsim.compare(
            net, net, data, layers=["1"], measure="cka", runtime=reprsim.Runtime(distributed=True), progress=False
        )
    with pytest.raises(reprsim.errors.InvalidParameterError, match="shard must be"):
        reprsim.compare(
            net, net, data, layers=["1"], measure="cka", runtime=reprsim.Runtime(shard="rows"), progress=False
        )
    alone = reprsim.compare(net, net, data, layers=["1"], measure="cka", progress=False)
    assert "distributed" not in alone.metadata
    x = torch.zeros(7, 3)
    assert rows_of(x) == 7
    assert rows_of((x, torch.zeros(7))) == 7
    assert rows_of({"input_ids": x}) == 7
    assert rows_of(collections.UserDict({"mask": None, "input_ids": x})) == 7
    assert rows_of("text") is None
