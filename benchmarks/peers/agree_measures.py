"""Do installable peers compute the same numbers as reprsim's moment measures? A table, not a test.

Run in a separate environment that has the peers (never reprsim dependencies):

    python -m venv /tmp/peers && . /tmp/peers/bin/activate
    pip install torch==2.13.0 && pip install deep-reps repsim scipy && pip install -e . --no-deps
    pip install --no-deps thingsvision   # its CKA module only (its own dependencies pin torch 2.0)
    pip install dcor rsatoolbox
    python benchmarks/peers/agree_measures.py

deep-reps 0.0.6 cannot be imported as a package (its ``__init__`` has a circular import, and it imports open_clip
for a CLIP helper no measure uses); this script loads its measure modules without running that ``__init__``.

For every pairing it prints the largest |reprsim − peer| over four data sets (n = 500; widths 20/20, 20/12,
12/20 and, for the CCA family, offset data), whether the two agree (< 1e-8), and, where they do not, which
convention differs (read from the peers' source). The peers' results go to stdout and into docs/peers.md by hand.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import traceback
import types
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

import reprsim
from reprsim.measures import CKA

Pair = tuple[np.ndarray, np.ndarray]


def deep_reps(module: str) -> Any:
    """A deep_reps submodule, imported without the package's broken ``__init__``."""
    if "deep_reps" not in sys.modules or not hasattr(sys.modules["deep_reps"], "__reprsim_stub__"):
        spec = importlib.util.find_spec("deep_reps")
        if spec is None or spec.submodule_search_locations is None:
            raise ImportError("deep-reps is not installed")
        package = types.ModuleType("deep_reps")
        package.__path__ = list(spec.submodule_search_locations)
        package.__reprsim_stub__ = True  # type: ignore[attr-defined]
        sys.modules["deep_reps"] = package
        # some modules import helpers from the package itself; give the stub what utils defines
        for name, value in vars(importlib.import_module("deep_reps.utils")).items():
            if not name.startswith("_"):
                setattr(package, name, value)
    return importlib.import_module(f"deep_reps.{module}")


def datasets() -> list[tuple[str, Pair]]:
    rng = np.random.default_rng(0)
    out = []
    for p, q, offset in ((20, 20, 0.0), (20, 12, 0.0), (12, 20, 0.0), (20, 20, 5.0)):
        x = rng.normal(size=(500, p)) @ np.diag(np.linspace(0.5, 2, p)) + offset
        y = np.tanh(x[:, : min(p, q)] - offset) @ rng.normal(size=(min(p, q), q)) + 0.3 * rng.normal(size=(500, q))
        out.append((f"p={p}, q={q}, offset={offset:g}", (x, y)))
    return out


def torch_pair(f: Callable[..., Any]) -> Callable[[np.ndarray, np.ndarray], float]:
    return lambda x, y: float(f(torch.tensor(x), torch.tensor(y)))


def repsim_pair(name: str, **kw: Any) -> Callable[[np.ndarray, np.ndarray], float]:
    def run(x: np.ndarray, y: np.ndarray) -> float:
        mod = importlib.import_module("repsim")
        return float(getattr(mod, name)([x, y], **kw)[0, 1])

    return run


def unit_centred(x: np.ndarray) -> np.ndarray:
    xc = x - x.mean(0)
    return xc / np.linalg.norm(xc)


PAIRINGS: list[tuple[str, Callable[..., float], str, Callable[[], Callable[..., float]]]] = []


def pairing(ours_name: str, ours: Callable[..., float], peer_name: str) -> Callable[[Any], Any]:
    def register(peer: Callable[[], Callable[..., float]]) -> Any:
        PAIRINGS.append((ours_name, ours, peer_name, peer))
        return peer

    return register


@pairing("cka", lambda x, y: reprsim.cka(x, y), "deep-reps centered_kernel_alignment")
def _dr_cka() -> Callable[..., float]:
    centered_kernel_alignment = deep_reps("rsm_measures").centered_kernel_alignment

    return torch_pair(centered_kernel_alignment)


@pairing("cka", lambda x, y: reprsim.cka(x, y), "repsim cka(kernel_type='linear', estimator='gretton')")
def _rs_cka() -> Callable[..., float]:
    return repsim_pair("cka", kernel_type="linear", estimator="gretton")


@pairing("cka_unbiased", lambda x, y: CKA(unbiased=True)(x, y), "repsim cka(kernel_type='linear', estimator='song')")
def _rs_cka_u() -> Callable[..., float]:
    return repsim_pair("cka", kernel_type="linear", estimator="song")


@pairing("cka_lange", lambda x, y: CKA(unbiased="lange")(x, y), "repsim cka(kernel_type='linear', estimator='lange')")
def _rs_cka_lange() -> Callable[..., float]:
    return repsim_pair("cka", kernel_type="linear", estimator="lange")


def hsic_of(x: np.ndarray, y: np.ndarray, unbiased: Any) -> float:
    return float(reprsim.hsic(reprsim.linear_gram(x), reprsim.linear_gram(y), unbiased=unbiased))


@pairing(
    "hsic(linear_gram(x), linear_gram(y), unbiased='lange')",
    lambda x, y: hsic_of(x, y, "lange"),
    "repsim hsic(kernel_type='linear', estimator='lange')",
)
def _rs_hsic_lange() -> Callable[..., float]:
    return repsim_pair("hsic", kernel_type="linear", estimator="lange")


def over_biased_self_hsic(unbiased: Any) -> Callable[[np.ndarray, np.ndarray], float]:
    """An unbiased cross-HSIC over the square root of the *biased* self-HSICs (what repsim's cka computes)."""
    return lambda x, y: hsic_of(x, y, unbiased) / np.sqrt(hsic_of(x, x, False) * hsic_of(y, y, False))


@pairing(
    "hsic(K, L, unbiased=True) / √(hsic(K, K) · hsic(L, L)) (biased self-HSICs)",
    over_biased_self_hsic(True),
    "repsim cka(kernel_type='linear', estimator='song')",
)
def _rs_cka_song_mixed() -> Callable[..., float]:
    return repsim_pair("cka", kernel_type="linear", estimator="song")


@pairing(
    "hsic(K, L, unbiased='lange') / √(hsic(K, K) · hsic(L, L)) (biased self-HSICs)",
    over_biased_self_hsic("lange"),
    "repsim cka(kernel_type='linear', estimator='lange')",
)
def _rs_cka_lange_mixed() -> Callable[..., float]:
    return repsim_pair("cka", kernel_type="linear", estimator="lange")


def thingsvision_cka(unbiased: bool) -> Callable[..., float]:
    import importlib.util

    spec = importlib.util.find_spec("thingsvision")
    if spec is None or spec.submodule_search_locations is None:
        raise ImportError("thingsvision is not installed")
    root = spec.submodule_search_locations[0]
    # the module file alone: thingsvision's package __init__ imports its model zoo
    names = ("cka_base", "cka_numpy")
    for name in names:
        full = f"thingsvision.core.cka.{name}"
        s = importlib.util.spec_from_file_location(full, f"{root}/core/cka/{name}.py")
        if s is None or s.loader is None:
            raise ImportError(f"cannot load {full}")
        module = importlib.util.module_from_spec(s)
        sys.modules[full] = module
        s.loader.exec_module(module)
    cls = sys.modules["thingsvision.core.cka.cka_numpy"].CKANumPy
    return lambda x, y: float(cls(m=len(x), kernel="linear", unbiased=unbiased).compare(x, y))


@pairing("cka", lambda x, y: reprsim.cka(x, y), "thingsvision CKANumPy(kernel='linear')")
def _tv_cka() -> Callable[..., float]:
    return thingsvision_cka(False)


@pairing("cka_unbiased", lambda x, y: CKA(unbiased=True)(x, y), "thingsvision CKANumPy(kernel='linear', unbiased=True)")
def _tv_cka_u() -> Callable[..., float]:
    return thingsvision_cka(True)


@pairing(
    "procrustes_euclidean (on centred unit-norm data)",
    lambda x, y: reprsim.procrustes(x, y, score="euclidean"),
    "deep-reps orthogonal_procrustes (on centred unit-norm data)",
)
def _dr_proc() -> Callable[..., float]:
    orthogonal_procrustes = deep_reps("alignment_measures").orthogonal_procrustes

    return lambda x, y: orthogonal_procrustes(torch.tensor(unit_centred(x)), torch.tensor(unit_centred(y)))


@pairing(
    "procrustes_euclidean",
    lambda x, y: reprsim.procrustes(x, y, score="euclidean"),
    "deep-reps orthogonal_procrustes (raw data)",
)
def _dr_proc_raw() -> Callable[..., float]:
    orthogonal_procrustes = deep_reps("alignment_measures").orthogonal_procrustes

    return torch_pair(orthogonal_procrustes)


@pairing("procrustes", lambda x, y: reprsim.procrustes(x, y), "deep-reps angular_shape_metric")
def _dr_ang() -> Callable[..., float]:
    angular_shape_metric = deep_reps("alignment_measures").angular_shape_metric

    def run(x: np.ndarray, y: np.ndarray) -> float:
        if x.shape[1] != y.shape[1]:
            raise ValueError("needs equal widths")
        return float(angular_shape_metric(torch.tensor(x).float(), torch.tensor(y).float()))

    return run


@pairing("nbs", lambda x, y: reprsim.procrustes(x, y, score="nbs"), "deep-reps normalized_bures_similarity")
def _dr_nbs() -> Callable[..., float]:
    normalized_bures_similarity = deep_reps("rsm_measures").normalized_bures_similarity

    return torch_pair(normalized_bures_similarity)


@pairing("cca", lambda x, y: reprsim.cca(x, y), "deep-reps compute_standard_cca")
def _dr_cca() -> Callable[..., float]:
    compute_standard_cca = deep_reps("cca_measures").compute_standard_cca

    return torch_pair(compute_standard_cca)


@pairing("cca_yanai", lambda x, y: reprsim.cca(x, y, reduce="yanai"), "deep-reps compute_yanai_cca")
def _dr_yanai() -> Callable[..., float]:
    compute_yanai_cca = deep_reps("cca_measures").compute_yanai_cca

    return torch_pair(compute_yanai_cca)


@pairing("cca_yanai", lambda x, y: reprsim.cca(x, y, reduce="yanai"), "repsim cca(summary_type='yanai')")
def _rs_yanai() -> Callable[..., float]:
    return repsim_pair("cca", summary_type="yanai")


@pairing("svcca", lambda x, y: reprsim.svcca(x, y), "deep-reps compute_standard_svcca")
def _dr_svcca() -> Callable[..., float]:
    compute_standard_svcca = deep_reps("cca_measures").compute_standard_svcca

    return torch_pair(compute_standard_svcca)


@pairing(
    "svcca(reduce='yanai')", lambda x, y: reprsim.svcca(x, y, reduce="yanai"), "repsim svcca(summary_type='yanai')"
)
def _rs_svcca() -> Callable[..., float]:
    return repsim_pair("svcca", summary_type="yanai")


def components_by_singular_values(a: np.ndarray, keep: float = 0.99) -> np.ndarray:
    """The top principal components holding ``keep`` of the sum of singular values (repsim's truncation)."""
    u, s, _ = np.linalg.svd(a - a.mean(0), full_matrices=False)
    k = int(np.searchsorted(np.cumsum(s) / s.sum(), keep - 1e-12) + 1)
    return u[:, :k] * s[:k]


@pairing(
    "cca(reduce='yanai') of the components repsim keeps (99% of Σ singular values)",
    lambda x, y: reprsim.cca(components_by_singular_values(x), components_by_singular_values(y), reduce="yanai"),
    "repsim svcca(summary_type='yanai')",
)
def _rs_svcca_sv() -> Callable[..., float]:
    return repsim_pair("svcca", summary_type="yanai")


@pairing("pwcca", lambda x, y: reprsim.pwcca(x, y), "repsim pwcca")
def _rs_pwcca() -> Callable[..., float]:
    return repsim_pair("pwcca")


@pairing(
    "mean of pwcca(weights_from='x') and (weights_from='y')",
    lambda x, y: (reprsim.pwcca(x, y, weights_from="x") + reprsim.pwcca(x, y, weights_from="y")) / 2,
    "repsim pwcca",
)
def _rs_pwcca_mean() -> Callable[..., float]:
    return repsim_pair("pwcca")


@pairing(
    "cca · min(p, q) / p (the sum of ρ over x's width)",
    lambda x, y: reprsim.cca(x, y) * min(x.shape[1], y.shape[1]) / x.shape[1],
    "deep-reps compute_standard_cca",
)
def _dr_cca_width() -> Callable[..., float]:
    compute_standard_cca = deep_reps("cca_measures").compute_standard_cca
    return torch_pair(compute_standard_cca)


@pairing("pwcca", lambda x, y: reprsim.pwcca(x, y), "deep-reps compute_wvcca")
def _dr_pwcca() -> Callable[..., float]:
    compute_wvcca = deep_reps("cca_measures").compute_wvcca

    return torch_pair(compute_wvcca)


@pairing("distance_correlation", lambda x, y: reprsim.measures.distance_correlation(x, y), "dcor distance_correlation")
def _dcor_v() -> Callable[..., float]:
    import dcor

    return lambda x, y: float(dcor.distance_correlation(x, y))


@pairing(
    "distance_correlation_unbiased",
    lambda x, y: reprsim.measures.distance_correlation(x, y, unbiased=True),
    "dcor u_distance_correlation_sqr",
)
def _dcor_u() -> Callable[..., float]:
    import dcor

    return lambda x, y: float(dcor.u_distance_correlation_sqr(x, y))


@pairing(
    "distance_correlation ** 2",
    lambda x, y: reprsim.measures.distance_correlation(x, y) ** 2,
    "deep-reps distance_correlation",
)
def _dr_dcor() -> Callable[..., float]:
    return torch_pair(deep_reps("rsm_measures").distance_correlation)


@pairing(
    "jaccard_knn(k=10, neighbours='euclidean')",
    lambda x, y: reprsim.measures.jaccard_knn(x, y, k=10, neighbours="euclidean"),
    "deep-reps knn_jaccard_similarity(k=10)",
)
def _dr_jaccard() -> Callable[..., float]:
    f = deep_reps("neighbors_measures").knn_jaccard_similarity
    return lambda x, y: float(f(torch.tensor(x), torch.tensor(y), 10))


@pairing(
    "jaccard_knn(k=10)", lambda x, y: reprsim.measures.jaccard_knn(x, y, k=10), "deep-reps knn_jaccard_similarity(k=10)"
)
def _dr_jaccard_cos() -> Callable[..., float]:
    f = deep_reps("neighbors_measures").knn_jaccard_similarity
    return lambda x, y: float(f(torch.tensor(x), torch.tensor(y), 10))


def rsatoolbox_rsa(rdm: str, how: str) -> Callable[..., float]:
    from rsatoolbox.data import Dataset
    from rsatoolbox.rdm import calc_rdm, compare

    return lambda x, y: float(
        compare(calc_rdm(Dataset(x), method=rdm), calc_rdm(Dataset(y), method=rdm), method=how)[0, 0]
    )


@pairing(
    "rsa(rdm='sqeuclidean_per_feature', compare='pearson')",
    lambda x, y: reprsim.measures.rsa(x, y, rdm="sqeuclidean_per_feature", compare="pearson"),
    "rsatoolbox calc_rdm('euclidean') + compare('corr')",
)
def _rsa_euc_corr() -> Callable[..., float]:
    return rsatoolbox_rsa("euclidean", "corr")


@pairing(
    "rsa(rdm='correlation', compare='spearman')",
    lambda x, y: reprsim.measures.rsa(x, y),
    "rsatoolbox calc_rdm('correlation') + compare('spearman')",
)
def _rsa_corr_spearman() -> Callable[..., float]:
    return rsatoolbox_rsa("correlation", "spearman")


@pairing(
    "rsa(rdm='correlation', compare='kendall')",
    lambda x, y: reprsim.measures.rsa(x, y, compare="kendall"),
    "rsatoolbox calc_rdm('correlation') + compare('kendall')",
)
def _rsa_corr_kendall() -> Callable[..., float]:
    return rsatoolbox_rsa("correlation", "kendall")


for _how, _theirs in (("cosine", "cosine"), ("rho_a", "rho-a"), ("tau_a", "tau-a")):
    pairing(
        f"rsa(rdm='sqeuclidean_per_feature', compare='{_how}')",
        lambda x, y, how=_how: reprsim.measures.rsa(x, y, rdm="sqeuclidean_per_feature", compare=how),
        f"rsatoolbox calc_rdm('euclidean') + compare('{_theirs}')",
    )(lambda theirs=_theirs: rsatoolbox_rsa("euclidean", theirs))


@pairing(
    "rank_similarity(k=10, neighbours='euclidean')",
    lambda x, y: reprsim.measures.rank_similarity(x, y, k=10, neighbours="euclidean"),
    "deep-reps rank_similarity(k=10)",
)
def _dr_rank() -> Callable[..., float]:
    f = deep_reps("neighbors_measures").rank_similarity
    return lambda x, y: float(f(torch.tensor(x), torch.tensor(y), 10))


def main() -> None:
    print("| reprsim | peer | max abs difference | agrees (< 1e-8) |")
    print("|---|---|---|---|")
    for ours_name, ours, peer_name, make in PAIRINGS:
        try:
            peer = make()
            diffs = []
            for _, (x, y) in datasets():
                try:
                    diffs.append(abs(ours(x, y) - peer(x, y)))
                except ValueError as exc:
                    if "equal widths" in str(exc):
                        continue
                    raise
            worst = max(diffs)
            print(f"| `{ours_name}` | {peer_name} | {worst:.2e} | {'yes' if worst < 1e-8 else 'no'} |")
        except Exception as exc:  # a peer's own error is part of the table
            last = traceback.format_exception_only(type(exc), exc)[-1].strip()
            print(f"| `{ours_name}` | {peer_name} | raises `{last[:90]}` | no |")


if __name__ == "__main__":
    main()
