"""Class separability per layer: :func:`separability` runs a model over labelled data and scores every layer.

For each selected layer and each token pooling, kNN accuracy (and optionally a ridge-probe accuracy) of a
test set against a train set, with one forward pass per batch however many poolings are scored. Built on
:class:`reprsim.Extractor` and the functions of :mod:`reprsim.probes._probes`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from ..errors import InsufficientSamplesError, InvalidParameterError
from ..measures._base import refuse_renamed
from ..models._extract import (
    Extractor,
    LayerSpec,
    eval_mode,
    exclusive,
    model_device,
    move_batch,
    pool_tokens,
    resolve_layers,
)
from ._probes import PROBE_RENAMED, RidgeProbe, _num_classes, knn_accuracy

__all__ = ["separability"]


def _split(batch: Any) -> tuple[Any, torch.Tensor]:
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], torch.as_tensor(batch[1])
    raise InvalidParameterError(f"separability needs labelled batches (inputs, labels); got a {type(batch).__name__}")


def _cat_labels(labels: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long)


def _collect(
    data: Iterable[Any], extractor: Extractor, widths: dict[str, list[int]], pools: Sequence[str], device: torch.device
) -> tuple[dict[str, dict[str, torch.Tensor]], torch.Tensor]:
    feats: dict[str, dict[str, list[torch.Tensor]]] = {p: {} for p in pools}
    labels = []
    for batch in data:
        inputs, y = _split(batch)
        acts = extractor(move_batch(inputs, device))
        labels.append(y)
        for name, packed in acts.items():
            # each pooling has its own width (mean: d, flatten: tokens·d): split by what was packed
            for p, part in zip(pools, torch.split(packed, widths[name], dim=1)):
                feats[p].setdefault(name, []).append(part)
    return {p: {n: torch.cat(v) for n, v in d.items()} for p, d in feats.items()}, _cat_labels(labels)


def separability(
    model: nn.Module,
    train: Iterable[Any],
    test: Iterable[Any],
    *,
    layers: LayerSpec,
    pool: str | Sequence[str] = ("cls", "mean", "mean_no_cls"),
    k: int = 20,
    metric: str = "cosine",
    temperature: float = 0.07,
    probe: bool = False,
    probe_ridge: float = 1.0,
    num_classes: int | None = None,
    device: torch.device | str | None = None,
    **removed: Any,
) -> dict[str, dict[str, dict[str, float]]]:
    """kNN (and ridge-probe) accuracy of every selected layer, for each token pooling.

    Parameters
    ----------
    model : nn.Module
        Run in eval mode for the duration; its ``training`` flags are restored afterwards.
    train, test : iterables of (inputs, labels) batches
    layers : layer selection
        As in :class:`reprsim.Extractor`, e.g. ``"blocks.*"``.
    pool : {"cls", "mean", "mean_no_cls", "flatten"} or a sequence of them, default ("cls", "mean", "mean_no_cls")
        Token poolings to score (the three of Shekhar et al., 2022); each is computed from the same forward.
    k, metric, temperature
        As in :func:`reprsim.probes.knn_accuracy` (DINO's weighted 20-NN by default).
    probe : bool, default False
        Also fit a :class:`reprsim.probes.RidgeProbe` per layer and pooling on the train set.
    probe_ridge : float, default 1.0
        Its ridge penalty (``RidgeProbe(ridge=...)``).
    num_classes : int, optional
        By default one more than the largest label.
    device : optional
        Where batches go; by default the model's device.

    Returns
    -------
    dict
        ``result[pool][layer] == {"top1": ..., "top5": ..., ["probe": ...]}``.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from reprsim.probes import separability
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 16))
    >>> x = torch.cat([torch.randn(60, 4) + 3, torch.randn(60, 4) - 3])
    >>> y = torch.arange(120) // 60
    >>> data = list(zip(x.split(30), y.split(30)))
    >>> res = separability(net, data, data, layers=["0", "2"], pool="flatten", k=5)
    >>> res["flatten"]["2"]["top1"]
    1.0
    """
    refuse_renamed("separability", removed, PROBE_RENAMED)
    pools = [pool] if isinstance(pool, str) else list(pool)
    if not pools:
        raise InvalidParameterError("pool must name at least one pooling")
    widths: dict[str, list[int]] = {}

    def packer(layer: str) -> Callable[[torch.Tensor], torch.Tensor]:
        def packed(t: torch.Tensor) -> torch.Tensor:
            parts = [pool_tokens(t, p) for p in pools]
            widths[layer] = [part.shape[1] for part in parts]
            return torch.cat(parts, dim=1)

        return packed

    names = resolve_layers(model, layers)
    extractor = Extractor(model, names, pool={name: packer(name) for name in names})
    where = torch.device(device) if device is not None else model_device(model)
    with exclusive([model]), eval_mode([model]), torch.no_grad():
        train_f, train_y = _collect(train, extractor, widths, pools, where)
        test_f, test_y = _collect(test, extractor, widths, pools, where)
    if train_y.numel() == 0 or test_y.numel() == 0:
        raise InsufficientSamplesError(
            f"separability needs labelled training and test samples; got {train_y.numel()} and {test_y.numel()}"
        )
    c = _num_classes(num_classes, max(int(train_y.max()), int(test_y.max())))
    out: dict[str, dict[str, dict[str, float]]] = {}
    for p in pools:
        out[p] = {}
        for name in train_f[p]:
            xtr, xte = train_f[p][name], test_f[p][name]
            res = knn_accuracy(
                (xtr, train_y.to(xtr.device)),
                xte,
                test_y.to(xte.device),
                k=k,
                metric=metric,
                temperature=temperature,
                topk=(1, 5) if c >= 5 else (1,),
                num_classes=c,
            )
            if probe:
                rp = RidgeProbe(num_classes=c, ridge=probe_ridge)
                rp.update(xtr, train_y)
                res["probe"] = rp.accuracy(xte, test_y)
            out[p][name] = res
    return out
