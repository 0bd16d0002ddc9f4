"""The parts of a comparison, each driven alone through its contract (a Layout, Batches, prepare → commit →
keep, matrix, interval), against independent float64 references written from the formulas; and the table that
chooses them."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import scipy.stats
import torch

from reprsim import Uncertainty
from reprsim.errors import NonFiniteError
from reprsim.measures import get_measure
from reprsim.models._compare import PARTS
from reprsim.models._features import FeaturePart, KeptFeatures
from reprsim.models._layout import Batch, Checks, Layout, Part, Run
from reprsim.models._parts import MinibatchPart, MomentPart, PartSettings

from . import reference as ref
from . import reference_measures as refm

RUN_A, RUN_B = Run(1, 0), Run(2, 0)
WIDTHS_A, WIDTHS_B = {"x1": 5, "x2": 3}, {"y1": 4, "y2": 6}
N, ROWS = 120, 24


def data(seed: int = 0) -> dict[str, np.ndarray]:
    """Offset, correlated float64 layers: two of run A, two of run B, sharing a latent signal."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(N, 3))
    out = {}
    for name, w in {**WIDTHS_A, **WIDTHS_B}.items():
        out[name] = 5.0 + z @ rng.normal(size=(3, w)) + 0.7 * rng.normal(size=(N, w))
    return out


def layout() -> Layout:
    return Layout([("a", "b")], {"a": RUN_A, "b": RUN_B}, {"a": list(WIDTHS_A), "b": list(WIDTHS_B)}, {})


def settings(lay: Layout, u: Uncertainty | None = None, folds: int = 1) -> PartSettings:
    return PartSettings(lay, u if u is not None else Uncertainty(), folds, KeptFeatures(None), None)


def feed(part: Part, lay: Layout, arrays: dict[str, np.ndarray], rows: int = ROWS) -> None:
    """What the comparison does with each batch, for one part: check, prepare, commit when every flag passes,
    keep."""
    for number, s in enumerate(range(0, N, rows)):
        acts = {
            RUN_A: {k: torch.from_numpy(arrays[k][s : s + rows]) for k in WIDTHS_A},
            RUN_B: {k: torch.from_numpy(arrays[k][s : s + rows]) for k in WIDTHS_B},
        }
        lay.learn_keys(acts)
        batch = Batch(acts, None, number, N, rows)
        checks: Checks = []
        if part.reads_layers:
            lay.check_layers(acts, checks)
        pending = part.prepare(batch, checks)
        assert all(bool(f.all()) for f, _ in checks)
        assert all(bool(p.flags().all()) for p in pending)
        for p in pending:
            p.owner.commit(p, checked=True)
        part.keep(batch)


def cells(f: Any, arrays: dict[str, np.ndarray], rows: np.ndarray | None = None) -> np.ndarray:
    take = (lambda v: v) if rows is None else (lambda v: v[rows])
    return np.array([[f(take(arrays[i]), take(arrays[j])) for j in WIDTHS_B] for i in WIDTHS_A])


def check_jackknife(estimate: np.ndarray, values: np.ndarray, confidence: float, got: tuple[Any, ...]) -> None:
    """(low, high, bias) against the jackknife's formulas from G leave-one-out values: θ̂ ± t_{G−1} · se, with
    se² = (G − 1)/G · Σ (θ₍g₎ − θ̄)², and bias (G − 1)(θ̄ − θ̂)."""
    g = values.shape[0]
    se = np.sqrt((g - 1) / g * ((values - values.mean(0)) ** 2).sum(0))
    t = scipy.stats.t.ppf(1 - (1 - confidence) / 2, g - 1)
    low, high, bias = got
    np.testing.assert_allclose(low.numpy(), estimate - t * se, rtol=0, atol=1e-10)
    np.testing.assert_allclose(high.numpy(), estimate + t * se, rtol=0, atol=1e-10)
    assert bias is not None
    np.testing.assert_allclose(bias.numpy(), (g - 1) * (values.mean(0) - estimate), rtol=0, atol=1e-10)


def test_the_table_gives_each_declared_stream_one_part() -> None:
    assert {"moments": MomentPart, "minibatch": MinibatchPart, "samples": FeaturePart} == PARTS
    for name in ("cka", "procrustes", "cka_minibatch", "rsa", "cknna"):
        assert get_measure(name).stream in PARTS


def test_moment_part_alone_equals_the_formulas_and_its_jackknife() -> None:
    arrays, lay = data(), layout()
    measures = {"cka": get_measure("cka"), "angular": get_measure("procrustes")}
    u = Uncertainty(ci=0.9, blocks=4)
    part = MomentPart(measures, settings(lay, u, folds=4))
    feed(part, lay, arrays)
    got = part.matrix(("a", "b"), 0, measures["cka"])
    np.testing.assert_allclose(got.numpy(), cells(ref.cka, arrays), rtol=0, atol=1e-10)
    angular = part.matrix(("a", "b"), 0, measures["angular"])
    expected = cells(lambda x, y: refm.procrustes(x, y, "angular"), arrays)
    np.testing.assert_allclose(angular.numpy(), expected, rtol=0, atol=1e-10)
    # the jackknife over blocks of samples (sample i in block i % 4), from the leave-one-block-out formula
    low, high, bias, info = part.interval(("a", "b"), 0, measures["cka"], got, 0.9, 4, N)
    idx = np.arange(N)
    values = np.stack([cells(ref.cka, arrays, idx[idx % 4 != g]) for g in range(4)])
    check_jackknife(got.numpy(), values, 0.9, (low, high, bias))
    assert info == {"confidence": 0.9, "target": measures["cka"].target, "method": "jackknife", "blocks": 4}


def test_minibatch_part_alone_equals_the_batch_formula() -> None:
    arrays, lay = data(1), layout()
    measure = get_measure("cka_minibatch")
    part = MinibatchPart({"mb": measure}, settings(lay, Uncertainty(ci=0.95)))
    feed(part, lay, arrays)
    got = part.matrix(("a", "b"), 0, measure).numpy()
    starts = range(0, N, ROWS)
    expected = cells(lambda x, y: ref.minibatch_cka([x[s : s + ROWS] for s in starts],
                                                    [y[s : s + ROWS] for s in starts]), arrays)  # fmt: skip
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-10)
    # the delete-one-batch jackknife, each value the batch formula without one batch
    low, high, bias, info = part.interval(("a", "b"), 0, measure, torch.from_numpy(got), 0.95, 20, N)
    k = N // ROWS
    values = np.stack([
        cells(lambda x, y, g=g: ref.minibatch_cka([x[s : s + ROWS] for s in starts if s != g * ROWS],
                                                  [y[s : s + ROWS] for s in starts if s != g * ROWS]), arrays)
        for g in range(k)
    ])  # fmt: skip
    check_jackknife(got, values, 0.95, (low, high, bias))
    assert info["method"] == "jackknife over batches"
    assert info["batches"] == k


def test_minibatch_part_refuses_a_batch_without_changing_state() -> None:
    arrays, lay = data(2), layout()
    part = MinibatchPart({"mb": get_measure("cka_minibatch")}, settings(lay))
    feed(part, lay, arrays)
    acc = next(iter(part.accumulators.values()))
    before = {k: v.clone() for k, v in acc.state_dict()["state"].items()}
    bad = {RUN_A: {k: torch.from_numpy(arrays[k][:ROWS]).clone() for k in WIDTHS_A},
           RUN_B: {k: torch.from_numpy(arrays[k][:ROWS]) for k in WIDTHS_B}}  # fmt: skip
    bad[RUN_A]["x2"][0, 0] = float("nan")
    checks: Checks = []
    part.prepare(Batch(bad, None, 9, None, ROWS), checks)
    (flags, fail), *_ = checks
    with pytest.raises(NonFiniteError, match=r"a: layers \['x2'\]"):
        fail(flags.tolist())
    after = acc.state_dict()["state"]
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("budget", [None, 0], ids=["in-memory", "spilled"])
def test_feature_part_alone_keeps_every_row_and_equals_the_formulas(budget: int | None) -> None:
    arrays, lay = data(3), layout()
    measure = get_measure("distance_correlation")
    u = Uncertainty(ci=0.9, blocks=5)
    part = FeaturePart({"dcor": measure}, PartSettings(lay, u, 1, KeptFeatures(budget), None))
    feed(part, lay, arrays, rows=30)
    for name in (*WIDTHS_A, *WIDTHS_B):
        kept = part.store.get(lay.slot("a" if name in WIDTHS_A else "b", name))
        np.testing.assert_array_equal(kept.numpy(), arrays[name])
    assert ("spilled" in part.describe()) == (budget == 0)
    got = part.matrix(("a", "b"), 0, measure).numpy()
    dcor = lambda x, y: refm.distance_correlation(x, y, unbiased=False)  # noqa: E731
    np.testing.assert_allclose(got, cells(dcor, arrays), rtol=0, atol=1e-10)
    part.close()


def test_feature_part_tests_what_another_part_measures() -> None:
    """The permutation test reads the kept features, whatever part computed the measure itself."""
    arrays, lay = data(4), layout()
    measure = get_measure("cka")
    part = FeaturePart({}, settings(lay, Uncertainty(permutations=99, seed=3)))
    feed(part, lay, arrays)
    p_values, calibrated, chance, info = part.permutation(("a", "b"), measure, 99)
    assert p_values.shape == calibrated.shape == chance.shape == (2, 2)
    assert info["method"] == "monte_carlo"
    assert info["permutations"] == 99
    assert bool((p_values == 0.01).all())  # a shared latent signal: no permutation reaches the observed CKA
