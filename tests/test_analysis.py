"""kNN, probes and prediction agreement against independent references (scikit-learn, scipy)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from scipy.stats import kendalltau
from torch import nn

import reprsim
from reprsim.errors import IncompatibleStateError, InsufficientSamplesError, InvalidParameterError
from reprsim.probes import RidgeProbe, knn_accuracy, logistic_probe, prediction_agreement

sklearn = pytest.importorskip("sklearn")
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.linear_model import LogisticRegression, RidgeClassifier  # noqa: E402
from sklearn.neighbors import KNeighborsClassifier  # noqa: E402


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    x, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(0)
    x = x + 0.01 * rng.normal(size=x.shape)  # break exact distance ties, which sklearn and torch order differently
    return x[:1200], y[:1200], x[1200:], y[1200:]


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("k", [1, 7, 20])
def test_knn_uniform_matches_sklearn(digits: tuple[np.ndarray, ...], metric: str, k: int) -> None:
    xtr, ytr, xte, yte = digits
    ref = KNeighborsClassifier(n_neighbors=k, metric=metric, algorithm="brute").fit(xtr, ytr)
    expected = float((ref.predict(xte) == yte).mean())
    got = knn_accuracy((xtr, ytr), xte, yte, k=k, metric=metric, weighting="uniform", topk=(1,))
    assert got["top1"] == pytest.approx(expected, abs=1e-12)
    # streamed in train chunks (and test chunks) gives the same answer
    chunks = [(xtr[i : i + 250], ytr[i : i + 250]) for i in range(0, 1200, 250)]
    again = knn_accuracy(chunks, xte, yte, k=k, metric=metric, weighting="uniform", topk=(1,), test_chunk=100)
    assert again == got


def test_knn_temperature_weighting_and_top5(digits: tuple[np.ndarray, ...]) -> None:
    xtr, ytr, xte, yte = digits
    got = knn_accuracy((xtr, ytr), xte, yte, k=20)
    # independent reference for DINO's weighted vote, in NumPy
    a = xtr / np.linalg.norm(xtr, axis=1, keepdims=True)
    b = xte / np.linalg.norm(xte, axis=1, keepdims=True)
    sim = b @ a.T
    idx = np.argsort(-sim, axis=1, kind="stable")[:, :20]
    votes = np.zeros((len(xte), 10))
    for i in range(len(xte)):
        np.add.at(votes[i], ytr[idx[i]], np.exp(sim[i, idx[i]] / 0.07))
    ranked = np.argsort(-votes, axis=1, kind="stable")
    assert got["top1"] == pytest.approx(float((ranked[:, 0] == yte).mean()), abs=1e-12)
    assert got["top5"] == pytest.approx(float((ranked[:, :5] == yte[:, None]).any(1).mean()), abs=1e-12)
    assert got["top5"] >= got["top1"]
    with pytest.raises(InsufficientSamplesError, match="k=20 needs at least 20 training samples; got 5"):
        knn_accuracy((xtr[:5], ytr[:5]), xte, yte)


@pytest.mark.parametrize("alpha", [0.1, 10.0])
def test_ridge_probe_matches_sklearn_and_streams(digits: tuple[np.ndarray, ...], alpha: float) -> None:
    xtr, ytr, xte, yte = digits
    ref = RidgeClassifier(alpha=alpha).fit(xtr, ytr)
    probe = RidgeProbe(num_classes=10, ridge=alpha)
    for i in range(0, 1200, 128):
        probe.update(xtr[i : i + 128], ytr[i : i + 128])
    w, b = probe.fit()
    np.testing.assert_allclose(w.numpy(), ref.coef_.T, rtol=0, atol=1e-8)
    np.testing.assert_allclose(b.numpy(), ref.intercept_, rtol=0, atol=1e-8)
    assert probe.accuracy(xte, yte) == pytest.approx(ref.score(xte, yte), abs=1e-12)
    # merge of two halves, and a checkpoint round trip, give the same probe
    a, c = RidgeProbe(10, alpha), RidgeProbe(10, alpha)
    a.update(xtr[:600], ytr[:600])
    c.update(xtr[600:], ytr[600:])
    buf = io.BytesIO()
    torch.save(a.merge(c).state_dict(), buf)
    buf.seek(0)
    loaded = RidgeProbe(10, alpha).load_state_dict(torch.load(buf, weights_only=True))
    torch.testing.assert_close(loaded.fit()[0], w, rtol=0, atol=1e-10)
    with pytest.raises(IncompatibleStateError, match="configurations differ"):
        RidgeProbe(10, alpha + 1).merge(a)
    # a checkpoint written before 0.3 (format version 1), whose configuration named the penalty "alpha", loads
    old = a.state_dict()
    old["version"] = 1
    old["config"] = {"num_classes": 10, "alpha": alpha, "dtype": "torch.float64"}
    torch.testing.assert_close(RidgeProbe(10, alpha).load_state_dict(old).fit()[0], w, rtol=0, atol=1e-10)
    with pytest.raises(IncompatibleStateError, match="configurations differ"):
        RidgeProbe(10, alpha + 1).load_state_dict(old)
    with pytest.raises(InvalidParameterError, match=r"alpha= is now ridge= \(ridge=0.5\)"):
        RidgeProbe(10, alpha=0.5)


def test_logistic_probe_matches_sklearn(digits: tuple[np.ndarray, ...]) -> None:
    xtr, ytr, xte, yte = digits
    mu, sd = xtr.mean(0), np.maximum(xtr.std(0, ddof=1), 1e-12)
    ref = LogisticRegression(C=0.5, max_iter=5000, tol=1e-10).fit((xtr - mu) / sd, ytr)
    got = logistic_probe(xtr, ytr, xte, yte, C=0.5)
    assert got["converged"]
    np.testing.assert_allclose(got["weights"].numpy(), ref.coef_.T, atol=2e-3)
    assert got["accuracy"] == pytest.approx(ref.score((xte - mu) / sd, yte), abs=1.5 / len(yte))


def test_prediction_agreement_against_scipy_and_hand_counts() -> None:
    rng = np.random.default_rng(3)
    n, c = 300, 40
    base = rng.normal(size=(n, c))
    a = base + 0.5 * rng.normal(size=(n, c))
    b = base + 0.5 * rng.normal(size=(n, c))
    b[:50] = rng.normal(size=(50, c))  # some samples where the models disagree completely
    labels = base.argmax(1)
    labels[::7] = (labels[::7] + 1) % c  # some that both get wrong
    got = prediction_agreement(a, b, labels, ks=(5, 10, 100))
    pa, pb = a.argmax(1), b.argmax(1)
    for name, mask in (
        ("all", np.ones(n, bool)),
        ("both_correct", (pa == labels) & (pb == labels)),
        ("both_wrong", (pa != labels) & (pb != labels)),
    ):
        res = got[name]
        assert res["n"] == int(mask.sum())
        assert res["top1_agreement"] == pytest.approx(float((pa[mask] == pb[mask]).mean()), abs=1e-12)
        for k in (5, 10, 100):
            kk = min(k, c)
            taus = []
            for i in np.flatnonzero(mask):
                union = np.union1d(np.argsort(-a[i])[:kk], np.argsort(-b[i])[:kk])
                taus.append(kendalltau(a[i, union], b[i, union]).statistic)
            assert res[f"kendall_tau_top{k}"] == pytest.approx(float(np.mean(taus)), abs=1e-10)
        f1s = []
        for cls in np.union1d(pa[mask], pb[mask]):
            tp = np.sum((pa[mask] == cls) & (pb[mask] == cls))
            fp_fn = np.sum((pa[mask] == cls) != (pb[mask] == cls))
            f1s.append(2 * tp / (2 * tp + fp_fn))
        assert res["f1_agreement"] == pytest.approx(float(np.mean(f1s)), abs=1e-12)
    assert got["both_correct"]["top1_agreement"] == 1.0  # both right means both predicted the label


def test_prediction_agreement_is_symmetric_and_handles_ties() -> None:
    a = torch.tensor([[1.0, 1.0, 0.0, 2.0], [0.0, 3.0, 3.0, 1.0]])
    b = torch.tensor([[2.0, 1.0, 1.0, 3.0], [1.0, 2.0, 0.0, 0.0]])
    ab, ba = prediction_agreement(a, b, ks=(4,)), prediction_agreement(b, a, ks=(4,))
    assert ab == ba
    expected = np.mean([kendalltau(a[i].numpy(), b[i].numpy()).statistic for i in range(2)])
    assert ab["all"]["kendall_tau_top4"] == pytest.approx(expected, abs=1e-12)


# -- separability per pooling, the ridge probe's accuracy and refits, clear errors (from the review of 0.2) --------


class _Tokens(nn.Module):
    """(batch, tokens, 4) inputs → (batch, tokens, 6) token features, per token."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 6)
        self.act = nn.Tanh()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.proj(x))


def test_separability_with_pools_of_different_widths_matches_each_pooling_alone() -> None:
    torch.manual_seed(0)
    model = _Tokens().eval()
    g = torch.Generator().manual_seed(1)
    centres = torch.randn(5, 3, 4, generator=g)  # 5 classes, 3 tokens
    y = torch.arange(150) % 5
    x = centres[y] + 1.2 * torch.randn(150, 3, 4, generator=g)
    train = list(zip(x[:100].split(25), y[:100].split(25)))
    test = list(zip(x[100:].split(25), y[100:].split(25)))
    pools = ["mean", "flatten", "cls"]  # widths 6, 18, 6
    got = reprsim.probes.separability(model, train, test, layers=["act"], pool=pools, k=7, probe=True)
    with torch.no_grad():
        ftr, fte = model(x[:100]), model(x[100:])
    for p in pools:
        a, b = reprsim.pool_tokens(ftr, p), reprsim.pool_tokens(fte, p)
        expected = reprsim.probes.knn_accuracy((a, y[:100]), b, y[100:], k=7, topk=(1, 5), num_classes=5)
        probe = reprsim.probes.RidgeProbe(num_classes=5)
        probe.update(a, y[:100])
        expected["probe"] = probe.accuracy(b, y[100:])
        assert got[p]["act"] == expected, p
    assert len({got[p]["act"]["top1"] for p in pools}) > 1  # the poolings really score differently


def _ridge_reference(x: np.ndarray, y: np.ndarray, classes: int, alpha: float) -> np.ndarray:
    """Weights of ridge regression on ±1 one-vs-all targets with an unpenalised intercept (centred data)."""
    t = -np.ones((len(y), classes))
    t[np.arange(len(y)), y] = 1.0
    xc, tc = x - x.mean(0), t - t.mean(0)
    return np.linalg.solve(xc.T @ xc + alpha * np.eye(x.shape[1]), xc.T @ tc)


def test_ridge_probe_with_a_huge_common_offset() -> None:
    rng = np.random.default_rng(0)
    y = np.arange(400) % 3
    z = rng.normal(size=(400, 5)) + 2.0 * np.eye(3, 5)[y]
    x = 1e6 + 1e-3 * z  # the review's case: 0% accuracy from raw sums
    probe = reprsim.probes.RidgeProbe(num_classes=3, ridge=1e-8)
    for lo in range(0, 400, 64):
        probe.update(x[lo : lo + 64], y[lo : lo + 64])
    w, _ = probe.fit()
    np.testing.assert_allclose(w.numpy(), _ridge_reference(1e-3 * z, y, 3, 1e-8), rtol=1e-6)
    clean = reprsim.probes.RidgeProbe(num_classes=3, ridge=1e-8 / 1e-6)  # the same problem without offset and scale
    clean.update(z, y)
    assert probe.accuracy(x, y) == clean.accuracy(z, y) > 0.8


def test_ridge_probe_refits_after_every_change_of_state() -> None:
    rng = np.random.default_rng(1)
    xa, ya = rng.normal(size=(100, 4)), rng.integers(0, 2, 100)
    xb, yb = rng.normal(size=(100, 4)) + 1.0, rng.integers(0, 2, 100)

    def weights(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return _ridge_reference(x, y, 2, 1.0)

    a = reprsim.probes.RidgeProbe(2)
    a.update(xa, ya)
    a.predict(xa)  # fitted on A
    b = reprsim.probes.RidgeProbe(2)
    b.update(xb, yb)
    a.merge(b)
    np.testing.assert_allclose(a.fit()[0].numpy(), weights(np.vstack([xa, xb]), np.concatenate([ya, yb])))
    scores_merged = a.decision_function(xa)
    a.load_state_dict(b.state_dict())
    np.testing.assert_allclose(a.fit()[0].numpy(), weights(xb, yb))
    assert not torch.allclose(a.decision_function(xa), scores_merged)
    a.reset()
    with pytest.raises(reprsim.errors.IncompatibleStateError, match="seen no samples"):
        a.predict(xa)


def _xy(n: int = 20, d: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, d, generator=g), torch.arange(n) % 2


def test_knn_accuracy_bad_inputs() -> None:
    x, y = _xy()
    cases = [
        (
            lambda: reprsim.probes.knn_accuracy((x[:0], y[:0]), x, y, k=3),
            reprsim.errors.InsufficientSamplesError,
            "got 0",
        ),
        (
            lambda: reprsim.probes.knn_accuracy((x, y), x, y, k=3, num_classes=1),
            reprsim.errors.InvalidParameterError,
            "up to 1",
        ),
        (
            lambda: reprsim.probes.knn_accuracy((x, y), x, y, k=2.5),
            reprsim.errors.InvalidParameterError,
            "k must be an integer; got 2.5",
        ),
        (lambda: reprsim.probes.knn_accuracy((x, y), x, y, topk=(0,)), reprsim.errors.InvalidParameterError, "topk"),
        (
            lambda: reprsim.probes.knn_accuracy((x, y), x[:0], y[:0], k=3),
            reprsim.errors.InsufficientSamplesError,
            "no samples",
        ),
        (
            lambda: reprsim.probes.knn_accuracy((x, y), x, y, test_chunk=0),
            reprsim.errors.InvalidParameterError,
            "test_chunk",
        ),
        (
            lambda: reprsim.probes.knn_accuracy((x, y), x[:, :2], y, k=3),
            reprsim.errors.ShapeMismatchError,
            "dimensions",
        ),
    ]
    for call, error, message in cases:
        with pytest.raises(error, match=message):
            call()
    as_list = reprsim.probes.knn_accuracy([x, y], x, y, k=3, topk=(1,))  # a list works like a tuple
    assert as_list == reprsim.probes.knn_accuracy((x, y), x, y, k=3, topk=(1,))


def test_logistic_probe_bad_inputs() -> None:
    x, y = _xy()
    cases = [
        (lambda: reprsim.probes.logistic_probe(x[:0], y[:0], x, y), reprsim.errors.InsufficientSamplesError, "got 0"),
        (lambda: reprsim.probes.logistic_probe(x, y, x[:, :2], y), reprsim.errors.ShapeMismatchError, "dimensions"),
        (
            lambda: reprsim.probes.logistic_probe(x, y, x, y, num_classes=1),
            reprsim.errors.InvalidParameterError,
            "up to 1",
        ),
        (lambda: reprsim.probes.logistic_probe(x, y, x, y, C=0.0), reprsim.errors.InvalidParameterError, "C must be"),
    ]
    for call, error, message in cases:
        with pytest.raises(error, match=message):
            call()


def test_prediction_agreement_bad_inputs() -> None:
    s = torch.randn(10, 4)
    cases = [
        (lambda: reprsim.probes.prediction_agreement(s, s, ks=(-3,)), "every entry of ks must be an integer ≥ 1"),
        (lambda: reprsim.probes.prediction_agreement(s, s, ks=(0,)), "every entry of ks must be an integer ≥ 1"),
        (lambda: reprsim.probes.prediction_agreement(s, s, chunk=0), "chunk must be an integer ≥ 1; got 0"),
        (lambda: reprsim.probes.prediction_agreement(s, s, torch.full((10,), 4)), "labels go up to 4"),
    ]
    for call, message in cases:
        with pytest.raises(reprsim.errors.InvalidParameterError, match=message):
            call()
    with pytest.raises(reprsim.errors.ShapeMismatchError, match=r"\(samples, classes\) matrix"):
        reprsim.probes.prediction_agreement(s.reshape(10, 2, 2), s.reshape(10, 2, 2))
    with pytest.raises(reprsim.errors.InsufficientSamplesError, match="no samples"):
        reprsim.probes.prediction_agreement(s[:0], s[:0])


def test_separability_and_ridge_probe_bad_inputs() -> None:
    x, y = _xy()
    model = nn.Sequential(nn.Linear(3, 3))
    with pytest.raises(reprsim.errors.InsufficientSamplesError, match="got 0 and"):
        reprsim.probes.separability(model, [], [(x, y)], layers=["0"], pool="flatten", k=3)
    with pytest.raises(reprsim.errors.InvalidParameterError, match="up to 1"):
        reprsim.probes.separability(model, [(x, y)], [(x, y)], layers=["0"], pool="flatten", k=3, num_classes=1)
    with pytest.raises(reprsim.errors.InvalidParameterError, match=r"probe_alpha= is now probe_ridge= \(probe_ridge=2"):
        reprsim.probes.separability(model, [(x, y)], [(x, y)], layers=["0"], probe=True, probe_alpha=2.0)
    with pytest.raises(TypeError, match="unexpected keyword arguments"):
        reprsim.probes.separability(model, [(x, y)], [(x, y)], layers=["0"], probe_lambda=2.0)
    # the penalty reaches the probe: its accuracy is scikit-learn's RidgeClassifier's with that alpha, for a
    # penalty strong enough to change the predictions (random labels on random features)
    xs, ys = _xy(60, 8)
    ys = torch.randint(0, 2, (60,), generator=torch.Generator().manual_seed(1))
    net = nn.Sequential(nn.Linear(8, 8))
    feats = net(xs).detach().double().numpy()
    scores = {}
    for ridge in (1e-3, 200.0):
        got = reprsim.probes.separability(net, [(xs, ys)], [(xs, ys)], layers=["0"], pool="flatten", k=3,
                                          probe=True, probe_ridge=ridge)["flatten"]["0"]["probe"]  # fmt: skip
        scores[ridge] = RidgeClassifier(alpha=ridge).fit(feats, ys.numpy()).score(feats, ys.numpy())
        assert got == pytest.approx(scores[ridge], abs=1e-12), ridge
    assert scores[1e-3] != scores[200.0]
    probe = reprsim.probes.RidgeProbe(2)
    with pytest.raises(reprsim.errors.InvalidParameterError, match="up to 2"):
        probe.update(x, y + 1)
    probe.update(x, y)
    with pytest.raises(reprsim.errors.ShapeMismatchError, match="trained on 3"):
        probe.predict(x[:, :2])
