"""Separability and agreement: kNN accuracy, linear probes, prediction agreement between two models.

The analyses of Shekhar et al. (2022) beyond CKA: how linearly / locally separable the classes are in a layer
(:func:`knn_accuracy`, :class:`RidgeProbe`, :func:`logistic_probe`) and how alike two models' predictions are
(:func:`prediction_agreement`). Pure torch on (n, features) tensors, on their device; running models over data
lives in :mod:`reprsim.probes._separability`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any, Union

import numpy as np
import torch

from .._precision import full_precision_matmul
from .._validation import as_matrix, check_finite, check_int, check_real, is_integer
from ..errors import InsufficientSamplesError, InvalidParameterError, ShapeMismatchError
from ..measures._base import refuse_renamed
from ..streaming._protocol import _Accumulator, shifted_cross_sum

#: The probes' keywords renamed in 0.3.
PROBE_RENAMED = {
    "alpha": (
        "ridge",
        "the name reprsim gives the ridge penalty everywhere (Predictivity, CCA); alpha= is a test's level",
    ),
    "probe_alpha": ("probe_ridge", "as RidgeProbe(ridge=...)"),
}

__all__ = ["RidgeProbe", "knn_accuracy", "logistic_probe", "prediction_agreement"]

TrainSet = Union[tuple[Any, Any], Iterable[tuple[Any, Any]]]


def _labels(y: Any, n: int, name: str, device: torch.device, num_classes: int | None = None) -> torch.Tensor:
    """``y`` as a (n,) long tensor of class labels in 0..num_classes-1, or a clear error."""
    if isinstance(y, (list, tuple)) and not y and n == 0:
        return torch.zeros(0, dtype=torch.long, device=device)
    try:
        t = torch.as_tensor(y, device=device)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise InvalidParameterError(
            f"{name} must be a 1-d array of {n} integer class labels; got a {type(y).__name__} that torch cannot "
            "convert"
        ) from exc
    if t.ndim != 1 or t.shape[0] != n:
        raise ShapeMismatchError(f"{name} must be a 1-d array of {n} integer class labels; got shape {tuple(t.shape)}")
    if t.is_complex() or not (t.dtype.is_floating_point or t.dtype == torch.bool or _is_integer(t.dtype)):
        raise InvalidParameterError(f"{name} must hold integer class labels; got dtype {t.dtype}")
    if t.dtype.is_floating_point and not bool((t == t.round()).all()):
        raise InvalidParameterError(f"{name} must hold integer class labels; got non-integer values")
    t = t.long()
    if t.numel() and bool((t < 0).any()):
        raise InvalidParameterError(f"{name} must hold class labels 0..C-1; got negative values")
    if num_classes is not None and t.numel():
        _num_classes(num_classes, int(t.max()), name)
    return t


def _is_integer(dtype: torch.dtype) -> bool:
    return not dtype.is_floating_point and not dtype.is_complex and dtype != torch.bool


def _features(x: Any, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
    t = as_matrix(x, name, dtype=dtype).detach()
    check_finite(t, name)
    return t


def _chunks(train: TrainSet) -> Iterable[tuple[Any, Any]]:
    # (features, labels) as a tuple or a list of two; otherwise an iterable of such chunks
    if isinstance(train, (tuple, list)) and len(train) == 2 and not isinstance(train[0], (tuple, list)):
        return [(train[0], train[1])]
    return train


def _positive_ints(values: Any, name: str) -> list[int]:
    if is_integer(values):
        values = (values,)
    if not isinstance(values, Sequence) or isinstance(values, str) or not values:
        raise InvalidParameterError(f"{name} must be a non-empty sequence of positive integers; got {values!r}")
    return [check_int(v, f"every entry of {name}", minimum=1) for v in values]


def _num_classes(value: Any, largest: int, name: str = "the labels") -> int:
    """``num_classes`` checked against the largest label seen (None: one more than it)."""
    if value is None:
        return largest + 1
    c = check_int(value, "num_classes", minimum=1)
    if largest >= c:
        raise InvalidParameterError(
            f"num_classes={c} allows labels 0..{c - 1} but {name} go up to {largest}; pass a larger "
            "num_classes or leave it None"
        )
    return c


@full_precision_matmul
def knn_accuracy(
    train: TrainSet,
    test_features: Any,
    test_labels: Any,
    *,
    k: int = 20,
    metric: str = "cosine",
    weighting: str = "temperature",
    temperature: float = 0.07,
    topk: Sequence[int] = (1, 5),
    num_classes: int | None = None,
    test_chunk: int = 1024,
) -> dict[str, float]:
    """k-nearest-neighbour classification accuracy of a representation (top-1, top-5, ...).

    Parameters
    ----------
    train : (features, labels) or an iterable of (features, labels) chunks
        Training representation (n_train, d) and integer labels. Chunks are streamed: only the running k
        best neighbours of each test sample are kept, so the train set need not fit in memory at once.
    test_features : array_like or torch.Tensor, shape (n_test, d)
    test_labels : array_like, shape (n_test,)
    k : int, default 20
    metric : {"cosine", "euclidean"}, default "cosine"
    weighting : {"temperature", "uniform"}, default "temperature"
        ``temperature``: the weighted vote of DINO (Caron et al., 2021), each neighbour voting
        ``exp(similarity / temperature)`` (for "euclidean", similarity is the negative distance).
        ``uniform``: one vote per neighbour (scikit-learn's KNeighborsClassifier).
    temperature : float, default 0.07
    topk : sequence of int, default (1, 5)
        Accuracy is reported for each: the true class among the ``t`` highest-voted classes.
    num_classes : int, optional
        By default one more than the largest label seen.
    test_chunk : int, default 1024
        Test samples scored at a time (memory is O(test_chunk × train chunk)).

    Returns
    -------
    dict
        ``{"top1": ..., "top5": ...}``: fractions in [0, 1].

    Examples
    --------
    >>> import torch
    >>> from reprsim.probes import knn_accuracy
    >>> x = torch.cat([torch.randn(50, 8) + 4, torch.randn(50, 8) - 4])
    >>> y = torch.arange(100) // 50
    >>> knn_accuracy((x, y), x + 0.1, y, k=5, topk=(1,))
    {'top1': 1.0}
    """
    if metric not in ("cosine", "euclidean"):
        raise InvalidParameterError(f"metric must be 'cosine' or 'euclidean'; got {metric!r}")
    if weighting not in ("temperature", "uniform"):
        raise InvalidParameterError(f"weighting must be 'temperature' or 'uniform'; got {weighting!r}")
    k = check_int(k, "k", minimum=1)
    topk = _positive_ints(topk, "topk")
    test_chunk = check_int(test_chunk, "test_chunk", minimum=1)
    temperature = check_real(temperature, "temperature", low=0.0, low_open=True)
    xt = _features(test_features, "test_features")
    if xt.shape[0] == 0:
        raise InsufficientSamplesError("test_features holds no samples; kNN accuracy needs at least one")
    yt = _labels(test_labels, xt.shape[0], "test_labels", xt.device)
    if metric == "cosine":
        xt = torch.nn.functional.normalize(xt, dim=1)
    n_test = xt.shape[0]
    best_sim = torch.full((n_test, k), -math.inf, dtype=xt.dtype, device=xt.device)
    best_lab = torch.zeros((n_test, k), dtype=torch.long, device=xt.device)
    max_label = int(yt.max()) if n_test else 0
    seen = 0
    for i, (fx, fy) in enumerate(_chunks(train)):
        tx = _features(fx, f"train features (chunk {i})").to(device=xt.device, dtype=xt.dtype)
        if tx.shape[1] != xt.shape[1]:
            raise ShapeMismatchError(
                f"train features have {tx.shape[1]} dimensions but test features {xt.shape[1]}; both must come "
                "from the same layer and pooling"
            )
        ty = _labels(fy, tx.shape[0], f"train labels (chunk {i})", xt.device)
        if tx.shape[0] == 0:
            continue
        seen += tx.shape[0]
        max_label = max(max_label, int(ty.max()))
        if metric == "cosine":
            tx = torch.nn.functional.normalize(tx, dim=1)
        for lo in range(0, n_test, test_chunk):
            q = xt[lo : lo + test_chunk]
            sim = q @ tx.T if metric == "cosine" else -torch.cdist(q, tx)
            sims = torch.cat([best_sim[lo : lo + test_chunk], sim], dim=1)
            labs = torch.cat([best_lab[lo : lo + test_chunk], ty.expand(q.shape[0], -1)], dim=1)
            top = sims.topk(k, dim=1)
            best_sim[lo : lo + test_chunk] = top.values
            best_lab[lo : lo + test_chunk] = labs.gather(1, top.indices)
    if seen < k:
        raise InsufficientSamplesError(f"kNN with k={k} needs at least {k} training samples; got {seen}")
    c = _num_classes(num_classes, max_label)
    if weighting == "temperature":
        # exp(sim/T) overflows for euclidean similarities; votes are only compared per sample, so shift first
        weights = torch.exp((best_sim - best_sim[:, :1]) / temperature)
    else:
        weights = torch.ones_like(best_sim)
    votes = torch.zeros((n_test, c), dtype=weights.dtype, device=xt.device).scatter_add_(1, best_lab, weights)
    out = {}
    # stable sort: among tied votes the smaller class wins, as in scikit-learn's argmax
    order = torch.sort(votes, dim=1, descending=True, stable=True).indices
    for t in topk:
        hit = (order[:, :t] == yt[:, None]).any(dim=1)
        out[f"top{t}"] = float(hit.double().mean())
    return out


class RidgeProbe(_Accumulator):
    """Closed-form ridge-regression classifier trained from streamed sufficient statistics.

    Exact and mergeable like the CKA accumulators: ``update`` adds a batch's XᵀX, XᵀY and column sums
    (targets are one-vs-all ±1, as in scikit-learn's RidgeClassifier); ``fit`` solves
    ``(Xcᵀ Xc + λ I) W = Xcᵀ Yc`` with an unpenalised intercept. ``merge``, ``state_dict``, ``to`` and
    ``all_reduce`` work as for :class:`LinearCKA`. The sums are taken relative to the first sample seen, so
    features with a large common offset (1e6 with a spread of 1e-3, say) keep their digits; any change of the
    state (another batch, merge, load, reset, all_reduce) makes the next prediction refit.

    Parameters
    ----------
    num_classes : int
    ridge : float, default 1.0
        Ridge penalty λ, named as in :class:`~reprsim.measures.Predictivity` (scikit-learn's ``alpha``). State
        dicts saved before 0.3, whose configuration says ``alpha``, load.
    dtype : torch.dtype, default torch.float64

    Examples
    --------
    >>> import torch
    >>> from reprsim.probes import RidgeProbe
    >>> x = torch.cat([torch.randn(40, 5) + 2, torch.randn(40, 5) - 2])
    >>> y = torch.arange(80) // 40
    >>> probe = RidgeProbe(num_classes=2)
    >>> for xb, yb in zip(x.split(16), y.split(16)):
    ...     probe.update(xb, yb)
    >>> probe.accuracy(x, y)
    1.0
    """

    _version = 2
    _readable = (1,)  # version 1 named the penalty "alpha"

    def __init__(
        self, num_classes: int, ridge: float = 1.0, dtype: torch.dtype = torch.float64, **removed: Any
    ) -> None:
        refuse_renamed("RidgeProbe", removed, PROBE_RENAMED)
        super().__init__(dtype)
        self.num_classes = check_int(num_classes, "num_classes", minimum=2)
        self.ridge = check_real(ridge, "ridge", low=0.0)
        self._add_state("n", lambda d: (), "sum")
        self._add_state("shift", lambda d: (d[0],), "frame")
        self._add_state("sx", lambda d: (d[0],), "sum")
        self._add_state("sy", lambda d: (self.num_classes,), "sum")
        self._add_state("sxx", lambda d: (d[0], d[0]), "sum")
        self._add_state("sxy", lambda d: (d[0], self.num_classes), "sum")
        self._fitted: tuple[int, torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def _config(self) -> dict[str, Any]:
        return {"num_classes": self.num_classes, "ridge": self.ridge, "dtype": str(self._dtype)}

    def _upgrade_config(self, version: int, config: dict[str, Any]) -> dict[str, Any]:
        if version == 1 and "alpha" in config:
            config["ridge"] = config.pop("alpha")
        return config

    def _shift_state(self, state: dict[str, torch.Tensor], frame: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        d = frame["shift"] - state["shift"]
        n, sx = state["n"], state["sx"]
        return {
            **state,
            "shift": frame["shift"].clone(),
            "sx": sx - n * d,
            "sxx": shifted_cross_sum(n, sx, sx, state["sxx"], d, d),
            "sxy": shifted_cross_sum(n, sx, state["sy"], state["sxy"], d, torch.zeros_like(state["sy"])),
        }

    def update(self, x: Any, y: Any) -> None:
        """Add a batch of features (b, d) and integer labels (b,)."""
        with torch.no_grad():
            xt = _features(x, "x")
            self._prepare_device(xt.device)
            yt = _labels(y, xt.shape[0], "y", xt.device, self.num_classes)
            if self._dims is not None and xt.shape[1] != self._dims[0]:
                raise ShapeMismatchError(f"this batch has {xt.shape[1]} features but earlier ones had {self._dims[0]}")
            if xt.shape[0] == 0:
                return
            x64 = xt.to(self._dtype)
            shift = x64[0].clone() if self._dims is None else self._state["shift"]
            u = x64 - shift
            targets = torch.full((xt.shape[0], self.num_classes), -1.0, dtype=self._dtype, device=xt.device)
            targets.scatter_(1, yt[:, None], 1.0)
            first = self._dims is None
            self._commit(
                (xt.shape[1],),
                xt.device,
                {
                    "n": torch.tensor(float(xt.shape[0]), dtype=self._dtype, device=xt.device),
                    "sx": u.sum(0),
                    "sy": targets.sum(0),
                    "sxx": u.T @ u,
                    "sxy": u.T @ targets,
                },
            )
            if first:
                self._state["shift"] = shift

    def _solution(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Weights (d, C), the feature centre (d,) and the mean target (C,), refitted after any state change."""
        if self._fitted is None or self._fitted[0] != self._generation:
            n = self._require_samples(2, "a ridge probe")
            s = self._state
            mu, my = s["sx"] / n, s["sy"] / n  # mean of the shifted features, mean target
            cxx = s["sxx"] - n * torch.outer(mu, mu)
            cxy = s["sxy"] - n * torch.outer(mu, my)
            eye = torch.eye(cxx.shape[0], dtype=cxx.dtype, device=cxx.device)
            w = torch.linalg.solve(cxx + self.ridge * eye, cxy)
            self._fitted = (self._generation, w, s["shift"] + mu, my)
        return self._fitted[1], self._fitted[2], self._fitted[3]

    def fit(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Solve for the weights (d, C) and intercept (C,) from everything seen."""
        w, centre, my = self._solution()
        return w, my - centre @ w

    def decision_function(self, x: Any) -> torch.Tensor:
        """Scores (n, C) of each class for features ``x``."""
        w, centre, my = self._solution()
        xt = _features(x, "x").to(device=w.device, dtype=w.dtype)
        if xt.shape[1] != w.shape[0]:
            raise ShapeMismatchError(
                f"x has {xt.shape[1]} features but the probe was trained on {w.shape[0]}; both must come from the "
                "same layer and pooling"
            )
        return (xt - centre) @ w + my  # centred first: offset features would cancel in x·w − centre·w

    def predict(self, x: Any) -> torch.Tensor:
        return self.decision_function(x).argmax(dim=1)

    def accuracy(self, x: Any, y: Any) -> float:
        """Fraction of ``x`` whose predicted class equals ``y``."""
        pred = self.predict(x)
        return float((pred == _labels(y, pred.shape[0], "y", pred.device)).double().mean())


@full_precision_matmul
def logistic_probe(
    train_features: Any,
    train_labels: Any,
    test_features: Any,
    test_labels: Any,
    *,
    C: float = 1.0,
    max_iter: int = 500,
    num_classes: int | None = None,
    standardize: bool = True,
) -> dict[str, Any]:
    """Multinomial logistic-regression probe fitted with L-BFGS; accuracy on the test set.

    Minimises ``C · Σ cross-entropy + ½ ‖W‖²`` (intercept unpenalised), scikit-learn's objective for
    ``LogisticRegression(C=C)``. Meant for the final representation, whose features fit in memory.

    Parameters
    ----------
    train_features, test_features : (n, d)
    train_labels, test_labels : (n,) integer labels
    C : float, default 1.0
        Inverse regularisation strength.
    max_iter : int, default 500
    num_classes : int, optional
    standardize : bool, default True
        Scale features by the train set's mean and standard deviation first (the usual probe protocol).

    Returns
    -------
    dict
        ``accuracy`` (float), ``weights`` (d, C), ``intercept`` (C,), ``iterations`` and ``converged``.

    Examples
    --------
    >>> import torch
    >>> from reprsim.probes import logistic_probe
    >>> x = torch.cat([torch.randn(40, 3) + 2, torch.randn(40, 3) - 2])
    >>> y = torch.arange(80) // 40
    >>> logistic_probe(x, y, x, y)["accuracy"]
    1.0
    """
    if not (isinstance(C, (int, float)) and C > 0 and math.isfinite(C)):
        raise InvalidParameterError(f"C must be a positive finite number; got {C!r}")
    max_iter = check_int(max_iter, "max_iter", minimum=1)
    x = _features(train_features, "train_features", dtype=torch.float64)
    y = _labels(train_labels, x.shape[0], "train_labels", x.device)
    xt = _features(test_features, "test_features", dtype=torch.float64).to(x.device)
    yt = _labels(test_labels, xt.shape[0], "test_labels", x.device)
    if x.shape[0] == 0 or xt.shape[0] == 0:
        raise InsufficientSamplesError(
            f"a logistic probe needs training and test samples; got {x.shape[0]} and {xt.shape[0]}"
        )
    if xt.shape[1] != x.shape[1]:
        raise ShapeMismatchError(
            f"test_features have {xt.shape[1]} dimensions but train_features {x.shape[1]}; both must come from the "
            "same layer and pooling"
        )
    c = _num_classes(num_classes, max(int(y.max()), int(yt.max())))
    if standardize:
        mu, sd = x.mean(0), x.std(0).clamp_min(1e-12)
        x, xt = (x - mu) / sd, (xt - mu) / sd
    w = torch.zeros((x.shape[1], c), dtype=torch.float64, device=x.device, requires_grad=True)
    b = torch.zeros(c, dtype=torch.float64, device=x.device, requires_grad=True)
    opt = torch.optim.LBFGS(
        [w, b],
        lr=1.0,
        max_iter=max_iter,
        tolerance_grad=1e-9,
        tolerance_change=1e-12,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = C * torch.nn.functional.cross_entropy(x @ w + b, y, reduction="sum") + 0.5 * (w * w).sum()
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    with torch.enable_grad():
        opt.step(closure)  # type: ignore[no-untyped-call]
    state = opt.state[opt._params[0]]
    iterations = int(state.get("n_iter", 0))
    w_, b_ = w.detach(), b.detach()
    pred = (xt @ w_ + b_).argmax(dim=1)
    return {
        "accuracy": float((pred == yt).double().mean()),
        "weights": w_,
        "intercept": b_,
        "iterations": iterations,
        "converged": iterations < max_iter,
    }


def _kendall_tau_b(xs: torch.Tensor, ys: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Kendall's tau-b of each row's valid entries: Σ sgn(Δx)sgn(Δy) / sqrt(Σ|sgn Δx| · Σ|sgn Δy|)."""
    sx = torch.sign(xs[:, :, None] - xs[:, None, :])
    sy = torch.sign(ys[:, :, None] - ys[:, None, :])
    pair = (valid[:, :, None] & valid[:, None, :]).to(xs.dtype)
    num = (sx * sy * pair).sum(dim=(1, 2))
    den = torch.sqrt((sx.abs() * pair).sum(dim=(1, 2)) * (sy.abs() * pair).sum(dim=(1, 2)))
    return num / den


def prediction_agreement(
    scores_a: Any,
    scores_b: Any,
    labels: Any = None,
    *,
    ks: Sequence[int] = (5, 10, 100),
    chunk: int = 512,
) -> dict[str, dict[str, float]]:
    """How alike two models' class predictions are, overall and on the samples both get right / wrong.

    Parameters
    ----------
    scores_a, scores_b : (n, C)
        Logits, probabilities or any scores of the same n samples over the same C classes.
    labels : (n,), optional
        True classes; when given, every metric is also reported on the samples both models classify
        correctly (``both_correct``) and on those both get wrong (``both_wrong``).
    ks : sequence of int, default (5, 10, 100)
        For each k, Kendall's tau-b between the two models' scores over the union of their top-k classes,
        averaged over samples (k is capped at C).
    chunk : int, default 512
        Samples processed at a time (memory O(chunk · (2k)²)).

    Returns
    -------
    dict
        ``{"all": {...}, "both_correct": {...}, "both_wrong": {...}}`` (the last two with labels), each with
        ``n`` (samples in the subset), ``top1_agreement`` (fraction with the same top-1 class),
        ``f1_agreement`` (macro F1 of B's top-1 predictions scored against A's; symmetric in A and B) and
        ``kendall_tau_top{k}``. Metrics of an empty subset are NaN.

    Examples
    --------
    >>> import torch
    >>> from reprsim.probes import prediction_agreement
    >>> a = torch.tensor([[3.0, 2.0, 1.0], [1.0, 3.0, 2.0]])
    >>> prediction_agreement(a, 2 * a, ks=(3,))["all"]
    {'n': 2, 'top1_agreement': 1.0, 'f1_agreement': 1.0, 'kendall_tau_top3': 1.0}
    """
    ks = _positive_ints(ks, "ks")
    chunk = check_int(chunk, "chunk", minimum=1)
    for name, scores in (("scores_a", scores_a), ("scores_b", scores_b)):
        shape = tuple(scores.shape) if hasattr(scores, "shape") else np.shape(scores)
        if len(shape) != 2:
            raise ShapeMismatchError(
                f"{name} must be a (samples, classes) matrix of scores; got shape {shape}. Select or reduce the "
                "extra dimensions first (e.g. the last token's logits)"
            )
    a = _features(scores_a, "scores_a", dtype=torch.float64)
    b = _features(scores_b, "scores_b", dtype=torch.float64).to(a.device)
    if a.shape[0] == 0:
        raise InsufficientSamplesError("scores_a and scores_b hold no samples; agreement needs at least one")
    if a.shape != b.shape:
        raise ShapeMismatchError(
            f"scores_a and scores_b must have the same shape (n, C); got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    n, c = a.shape
    pa, pb = a.argmax(1), b.argmax(1)
    subsets = {"all": torch.ones(n, dtype=torch.bool, device=a.device)}
    if labels is not None:
        y = _labels(labels, n, "labels", a.device, num_classes=c)
        subsets["both_correct"] = (pa == y) & (pb == y)
        subsets["both_wrong"] = (pa != y) & (pb != y)
    taus: dict[int, torch.Tensor] = {}
    for k in ks:
        kk = min(int(k), c)
        vals = []
        for lo in range(0, n, chunk):
            sa, sb = a[lo : lo + chunk], b[lo : lo + chunk]
            union = torch.cat([sa.topk(kk, dim=1).indices, sb.topk(kk, dim=1).indices], dim=1)
            union, _ = union.sort(dim=1)
            # mark repeated class indices (present in both top-k lists) so each class counts once
            valid = torch.ones_like(union, dtype=torch.bool)
            valid[:, 1:] = union[:, 1:] != union[:, :-1]
            vals.append(_kendall_tau_b(sa.gather(1, union), sb.gather(1, union), valid))
        taus[kk] = torch.cat(vals)
    out: dict[str, dict[str, float]] = {}
    for name, mask in subsets.items():
        m = int(mask.sum())
        res: dict[str, float] = {"n": m}
        if m == 0:
            res.update(top1_agreement=math.nan, f1_agreement=math.nan)
            res.update({f"kendall_tau_top{k}": math.nan for k in ks})
        else:
            res["top1_agreement"] = float((pa[mask] == pb[mask]).double().mean())
            res["f1_agreement"] = _macro_f1(pa[mask], pb[mask])
            for k in ks:
                t = taus[min(int(k), c)][mask]
                res[f"kendall_tau_top{k}"] = float(t[~t.isnan()].mean()) if bool((~t.isnan()).any()) else math.nan
        out[name] = res
    return out


def _macro_f1(reference: torch.Tensor, predicted: torch.Tensor) -> float:
    """Macro F1 over the classes present in either vector (2TP / (2TP + FP + FN) per class)."""
    f1 = []
    for cls in torch.unique(torch.cat([reference, predicted])).tolist():
        r, p = reference == cls, predicted == cls
        tp = float((r & p).sum())
        fp_fn = float((r ^ p).sum())
        f1.append(2 * tp / (2 * tp + fp_fn))
    return sum(f1) / len(f1)
