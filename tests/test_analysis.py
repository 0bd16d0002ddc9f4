"""kNN, probes and prediction agreement against independent references (scikit-learn, scipy)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from scipy.stats import kendalltau

from reprsim.errors import IncompatibleStateError, InsufficientSamplesError
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
    probe = RidgeProbe(num_classes=10, alpha=alpha)
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
