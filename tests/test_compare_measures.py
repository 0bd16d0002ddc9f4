"""compare() with the measure protocol: several measures from one pass, each equal to its functional form on
hand-extracted activations; results that know their measure (repr, plot, save/load); the migration errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from reprsim import Extractor, SimilarityResult, compare
from reprsim.errors import InvalidParameterError, RankDeficientError
from reprsim.measures import CCA, CKA, Predictivity, ShapeMetric, get_measure
from reprsim.streaming import MinibatchCKAMatrix

from .toys import batches, hand_extract, mlp

LAYERS = ["1", "3", "4"]  # widths 16, 12, 3 at full rank (layer 0, Linear(10, 16), has rank 10)
MEASURES = [
    "cka",
    "cka_unbiased",
    "procrustes",
    "nbs",
    "cca",
    "cca_yanai",
    "svcca",
    "pwcca",
    "ensd",
    "eigenspace_overlap",
    "predictivity",
    ShapeMetric(0.5, folds=4),
    Predictivity(ridge=1.0, folds=4, predict="mean"),
    "cka_minibatch",
]


def comparison_of(models: dict[str, nn.Module], pairs: list[tuple[str, str]], measures: list[str]) -> Any:
    """compare()'s internal streaming object, to look at its accumulators (flattened tokens, every layer)."""
    from reprsim.models._compare import _Comparison, _measures

    extractors = {n: Extractor(m, LAYERS, pool="flatten") for n, m in models.items()}
    return _Comparison(extractors, {}, pairs, measures=_measures(None, measures), device=None)


def key(m: object) -> str:
    return m if isinstance(m, str) else get_measure(m).id  # type: ignore[arg-type]


def test_several_measures_in_one_pass_equal_their_functional_forms() -> None:
    net, other = mlp(0), mlp(1)
    calls: list[int] = []
    net.register_forward_hook(lambda *a: calls.append(1))
    data = batches(n=320)
    results = compare(net, other, data, layers_a=LAYERS, measures=MEASURES, progress=False)
    assert len(calls) == len(data)  # one forward per batch for all twelve measures
    assert list(results) == [key(m) for m in MEASURES]
    a, b = hand_extract(net, LAYERS, data), hand_extract(other, LAYERS, data)
    for spec in MEASURES:
        result = results[key(spec)]
        measure = get_measure(spec)
        assert result.measure["name"] == measure.name
        assert result.measure["config"] == measure.config()
        if measure.stream == "minibatch":
            acc = MinibatchCKAMatrix()
            for xb in data:
                acc.update([net[: int(l) + 1](xb) for l in LAYERS], [other[: int(l) + 1](xb) for l in LAYERS])
            expected = acc.compute()
        else:
            expected = torch.tensor([[float(measure(a[i], b[j])) for j in LAYERS] for i in LAYERS], dtype=torch.float64)
        torch.testing.assert_close(result.matrix, expected.double(), rtol=0, atol=1e-10, msg=str(spec))


def test_exact_measures_keep_one_set_of_moments_per_layer() -> None:
    """Moments are per layer; only the cross co-moment is per pair (the old exact path built p×p sums per pair)."""
    nets = {"a": mlp(0), "b": mlp(1), "c": mlp(2)}
    out = compare(nets, data=batches(), layers=LAYERS, measures=["cka", "procrustes"], progress=False)
    assert set(out) == {("a", "b"), ("a", "c"), ("b", "c")}
    assert set(out["a", "b"]) == {"cka", "procrustes"}
    single = compare(nets["a"], nets["c"], batches(), layers_a=LAYERS, measure="procrustes", progress=False)
    torch.testing.assert_close(out["a", "c"]["procrustes"].matrix, single.matrix, rtol=0, atol=1e-12)

    comparison = comparison_of(nets, [("a", "b"), ("a", "c"), ("b", "c")], ["cka"])
    comparison.run(batches(n=64), eval_models=True, progress=False)
    moments = comparison.plan.parts["moments"].moments
    assert moments is not None
    state = moments.state_dict()["state"]
    assert sum(k.startswith("m2.") for k in state) == 9  # 3 models × 3 layers, not one per pair
    assert sum(k.startswith("cross.") for k in state) == 3  # one block of cross co-moments per model pair


def test_self_comparison_runs_once_and_is_symmetric() -> None:
    net = mlp(0)
    r = compare(net, None, batches(), layers_a=LAYERS, measures=["procrustes", "cca"], progress=False)
    np.testing.assert_allclose(np.diag(r["procrustes"].to_numpy()), 0.0, atol=1e-6)
    np.testing.assert_allclose(np.diag(r["cca"].to_numpy()), 1.0, atol=1e-10)
    np.testing.assert_allclose(r["cca"].to_numpy(), r["cca"].to_numpy().T, atol=1e-12)


def test_results_know_their_measure(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    net, other = mlp(0), mlp(1)
    r = compare(net, other, batches(), layers_a=LAYERS, measure="procrustes", model_names=("A", "B"), progress=False)
    assert r.measure["direction"] == "distance"
    assert r.measure["id"] == "procrustes-distance=angular"
    assert "angular Procrustes distance" in repr(r)
    ax = r.plot()
    assert ax.figure.axes[-1].get_ylabel() == "angular Procrustes distance\n(lower = more similar)"
    assert ax.images[0].get_cmap().name == "magma_r"
    # the measure's declared range by default (a chance-level matrix does not fill the colour map); the data's
    # own range on request
    assert ax.images[0].get_clim() == pytest.approx((0.0, np.pi / 2))
    narrow = r.plot(vmin=r.color_range()[0], vmax=r.color_range()[1])
    assert narrow.images[0].get_clim() == pytest.approx((float(r.matrix.min()), float(r.matrix.max())))
    loaded = SimilarityResult.load(r.save(tmp_path / "r"))
    assert loaded.measure == r.measure
    # color_range() spans the data (a 0.12-0.21 matrix is not uniformly dark); full=True, the plot's default,
    # gives the measure's range widened to the data
    p = compare(net, other, batches(), layers_a=LAYERS, measure=Predictivity(folds=4), progress=False)
    assert p.color_range() == (float(p.matrix.min()), float(p.matrix.max()))
    lo, hi = p.color_range(full=True)
    assert float(p.matrix.min()) > 0.0
    assert (lo, hi) == (0.0, 1.0)  # R² in (-inf, 1] over positive values: from 0, predicting nothing
    narrow = SimilarityResult(torch.tensor([[0.12, 0.21]]), ["a"], ["c", "d"], {})
    assert narrow.color_range() == pytest.approx((0.12, 0.21))
    assert narrow.color_range(full=True) == (0.0, 1.0)
    # a signed declared range (unbiased CKA's [-1, 1]) over non-negative values starts at 0
    mb = compare(net, other, batches(), layers_a=LAYERS, measure="cka_minibatch", progress=False)
    assert mb.measure["range"] == [-1.0, 1.0]
    assert float(mb.matrix.min()) >= 0.0
    assert mb.color_range(full=True) == (0.0, 1.0)
    signed = SimilarityResult(torch.tensor([[-0.05, 0.3]]), ["a"], ["c", "d"], {"measure": mb.measure})
    assert signed.color_range(full=True) == (-1.0, 1.0)
    # results saved before measures existed read as CKA
    old = SimilarityResult(torch.eye(2), ["a", "b"], ["c", "d"], {"estimator": "minibatch"})
    assert old.measure["label"] == "CKA"
    assert old.color_range(full=True) == (0.0, 1.0)


def test_migration_and_measure_argument_errors() -> None:
    net = nn.Sequential(nn.Linear(4, 3))
    data = [torch.randn(8, 4)]
    with pytest.raises(InvalidParameterError, match="instead of estimator=, pass measure='cka_minibatch'"):
        compare(net, None, data, layers_a=["0"], estimator="exact", progress=False)
    with pytest.raises(TypeError, match="unexpected keyword arguments \\['layer'\\]"):
        compare(net, None, data, layer=["0"], progress=False)
    with pytest.raises(InvalidParameterError, match=r"either measure= .* or measures="):
        compare(net, None, data, layers_a=["0"], measure="cka", measures=["cka"], progress=False)
    with pytest.raises(InvalidParameterError, match=r"measures= takes a list"):
        compare(net, None, data, layers_a=["0"], measures="cka", progress=False)  # type: ignore[call-overload]
    with pytest.raises(InvalidParameterError, match="requested twice"):
        compare(net, None, data, layers_a=["0"], measures=["cka", "cka"], progress=False)
    with pytest.raises(InvalidParameterError, match="different fold counts"):
        compare(
            net,
            None,
            data,
            layers_a=["0"],
            measures=[ShapeMetric(0.5, folds=3), Predictivity(folds=4)],
            progress=False,
        )
    with pytest.raises(InvalidParameterError, match="minibatch CKA always uses unbiased HSIC"):
        CKA(estimator="minibatch", unbiased=True)


def test_degenerate_pair_names_both_layers() -> None:
    net = mlp(0)
    with pytest.raises(RankDeficientError, match=r"mean CCA ρ of model A:0 and model B:0: .*rank 10 of 16"):
        compare(net, None, batches(), layers_a=["0", "4"], measure="cca", progress=False)


def test_a_rejected_batch_leaves_every_accumulator_untouched() -> None:
    """NaN from one model's layer mid-stream: nothing of that batch reaches the moments or minibatch sums."""
    from reprsim.errors import NonFiniteError

    net, other = mlp(0), mlp(1)
    comparison = comparison_of({"A": net, "B": other}, [("A", "B")], ["cka", "procrustes", "cka_minibatch"])
    good = batches(n=64)
    with torch.no_grad():
        for b in good:
            comparison._step(b)
    moments = comparison.plan.parts["moments"].moments
    assert moments is not None
    before = {k: v.clone() for k, v in moments.state_dict()["state"].items()}
    minibatch = next(iter(comparison.plan.parts["minibatch"].accumulators.values()))
    before_mb = {k: v.clone() for k, v in minibatch.state_dict()["state"].items()}
    bad = batches(n=32, seed=9)[0].clone()
    bad[3, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="A: layer '1'"), torch.no_grad():
        comparison._step(bad)
    after = moments.state_dict()["state"]
    assert all(torch.equal(before[k], after[k]) for k in before)
    after_mb = minibatch.state_dict()["state"]
    assert all(torch.equal(before_mb[k], after_mb[k]) for k in before_mb)


def test_too_few_samples_for_exact_cca_are_refused_at_the_first_batch() -> None:
    """The data's length is known (a list of batches): exact CCA of 16 + 16 dimensions on 24 samples cannot be
    computed, so compare says so after one forward pass, naming the layers, not after all of them."""
    from reprsim.errors import InsufficientSamplesError

    net, other = mlp(0), mlp(1)
    seen = []
    net[0].register_forward_hook(lambda m, i, o: seen.append(o.shape[0]))
    data = batches(n=24, size=8)
    with pytest.raises(InsufficientSamplesError, match=r"cca of A:0 \(width 16\) and B:0 \(width 16\).*24 samples"):
        compare(net, other, data, layers_a=["0"], measure="cca", model_names=("A", "B"), progress=False)
    assert len(seen) == 1
    # with ridge, or with enough samples, the same call computes
    compare(net, other, data, layers_a=["1"], measure=CCA(ridge=0.1), progress=False)
    compare(net, other, batches(n=64, size=8), layers_a=["1"], measure="cca", progress=False)
    # predictivity checks the predictor's width only (16 + 1 ≤ 23 here)
    compare(net, other, data, layers_a=["1"], measure="predictivity", progress=False)
