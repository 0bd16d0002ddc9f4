"""One public API style: the return-type rule, one keyword per idea, namespaces, one version source."""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import pkgutil
import re
from pathlib import Path
from types import ModuleType
from typing import Literal

import numpy as np
import pytest
import torch
from torch import nn

import reprsim
from reprsim.errors import InvalidParameterError

ROOT = Path(__file__).resolve().parents[1]

SCALAR_FUNCTIONS = {
    "cka": lambda x, y: reprsim.cka(x, y),
    "hsic": lambda x, y: reprsim.hsic(x @ x.T, y @ y.T),  # Grams of the input's own type
    "cka_from_grams": lambda x, y: reprsim.cka_from_grams(x @ x.T, y @ y.T),
    "procrustes": reprsim.procrustes,
    "shape_metric": lambda x, y: reprsim.shape_metric(x, y, alpha=0.5),
    "cca": reprsim.cca,
    "svcca": reprsim.svcca,
    "pwcca": reprsim.pwcca,
    "predictivity": reprsim.predictivity,
}


@pytest.mark.parametrize("name", list(SCALAR_FUNCTIONS))
def test_scalars_are_floats_for_numpy_and_tensors_for_torch(name: str) -> None:
    fn = SCALAR_FUNCTIONS[name]
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 4)), rng.normal(size=(60, 3))
    assert type(fn(x, y)) is float
    xt = torch.tensor(x, requires_grad=True)
    value = fn(xt, torch.tensor(y))
    assert isinstance(value, torch.Tensor)
    assert value.ndim == 0
    assert value.dtype == torch.float64
    value.backward()  # differentiable through the moments and the eigendecompositions
    assert xt.grad is not None
    assert bool(torch.isfinite(xt.grad).all())
    # one tensor argument is enough to get a tensor back
    assert isinstance(fn(x, torch.tensor(y)), torch.Tensor)


def test_matrices_and_vectors_are_tensors() -> None:
    x = np.random.default_rng(0).normal(size=(30, 3))
    assert isinstance(reprsim.cka_matrix([x, x]), torch.Tensor)
    assert isinstance(reprsim.canonical_correlations(x, x), torch.Tensor)
    assert isinstance(reprsim.predictivity(x, x, ridge=1.0, reduce="none"), torch.Tensor)


def test_namespaces_hold_what_the_top_level_does_not() -> None:
    top = set(reprsim.__all__)
    assert not {"InvalidParameterError", "LinearCKA", "RidgeProbe", "knn_accuracy", "separability"} & top
    assert {"errors", "measures", "streaming", "probes", "inference"} <= top
    assert reprsim.errors.InvalidParameterError.__module__ == "reprsim.errors"
    for name in reprsim.__all__:
        assert hasattr(reprsim, name), name
    for ns in (reprsim.measures, reprsim.streaming, reprsim.probes, reprsim.errors, reprsim.inference):
        for name in ns.__all__:
            assert hasattr(ns, name), (ns.__name__, name)


def test_public_namespaces_show_only_their_api() -> None:
    """Tab completion in a notebook lists what ``dir()`` holds: no ``annotations`` from a __future__ import."""
    import importlib

    for name in ("", ".measures", ".streaming", ".probes", ".errors", ".inference", ".models", ".demo"):
        assert "annotations" not in vars(importlib.import_module("reprsim" + name)), name


def test_one_version_source() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in pyproject
    assert 'path = "src/reprsim/_version.py"' in pyproject
    assert importlib.metadata.version("reprsim") == reprsim.__version__


def test_same_keyword_for_the_same_idea() -> None:
    tokens = torch.randn(2, 3, 4)
    assert torch.equal(reprsim.pool_tokens(tokens, pool="cls"), tokens[:, 0])
    net = nn.Sequential(nn.Linear(4, 4))
    data = [torch.randn(8, 4)]
    r = reprsim.compare(net, None, data, layers_a=["0"], model_names=("a", "b"), progress=False)
    assert (r.model_a, r.model_b, r.names_a) == ("a", "b", ["0"])
    with pytest.raises(InvalidParameterError, match=r"model_names=\(\.\.\.\)"):
        reprsim.compare(net, None, data, layers_a=["0"], names=("a", "b"), progress=False)


#: Records the library returns (their fields are read, not passed): outside the keyword vocabulary.
RESULT_RECORDS = {"LayerInfo", "SimilarityResult", "Interval", "PermutationTest", "Moments", "Pending"}


def public_keywords() -> dict[str, list[tuple[str, object]]]:
    """Every keyword of every public function, constructor and method: {keyword: [(where, annotation), ...]}."""
    import typing

    found: dict[str, list[tuple[str, object]]] = {}
    seen: set[int] = set()
    for ns in ("reprsim", "reprsim.measures", "reprsim.streaming", "reprsim.inference", "reprsim.probes"):
        module = importlib.import_module(ns)
        for name in module.__all__:
            obj = getattr(module, name)
            if id(obj) in seen or name in RESULT_RECORDS or isinstance(obj, ModuleType):
                continue
            seen.add(id(obj))
            if inspect.isclass(obj):
                if issubclass(obj, BaseException):
                    continue
                targets = [(name, obj.__init__)] + [
                    (f"{name}.{m}", f) for m, f in vars(obj).items() if not m.startswith("_") and inspect.isfunction(f)
                ]
            elif callable(obj):
                targets = [(name, obj)]
            else:
                continue
            for where, f in targets:
                hints = typing.get_type_hints(f)
                for p in inspect.signature(f).parameters.values():
                    if p.name in ("self", "cls") or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                        continue
                    found.setdefault(p.name, []).append((f"{ns}.{where}", hints.get(p.name)))
    return found


def vocabulary(annotation: object) -> frozenset[object] | None:
    """The values a Literal annotation allows (through unions and aliases), or None when it is not one."""
    import typing

    if typing.get_origin(annotation) is typing.Literal:
        return frozenset(typing.get_args(annotation))
    values: set[object] = set()
    literal = False
    for arg in typing.get_args(annotation):
        inner = vocabulary(arg)
        if inner is not None:
            values |= inner
            literal = True
    return frozenset(values) if literal else None


def keyword_conflicts() -> dict[str, list[str]]:
    """Keywords used with two vocabularies: two Literal value sets that share no value, or a Literal in one
    signature and a number in another."""
    conflicts: dict[str, list[str]] = {}
    for keyword, uses in public_keywords().items():
        sets = [(where, vocabulary(a)) for where, a in uses]
        literal = [(where, v) for where, v in sets if v is not None]
        numbers = [where for where, a in uses if vocabulary(a) is None and a in (int, float, int | None, float | None)]
        found = [
            f"{wa} {sorted(map(str, va))} vs {wb} {sorted(map(str, vb))}"
            for i, (wa, va) in enumerate(literal)
            for wb, vb in literal[i + 1 :]
            if va is not None and vb is not None and not va & vb
        ]
        if literal and numbers:
            found.append(f"{literal[0][0]} takes names, {numbers[0]} a number")
        if found:
            conflicts[keyword] = found
    return conflicts


def test_one_vocabulary_per_keyword() -> None:
    """One name per idea: a keyword's values come from one vocabulary across the whole public API."""
    uses = public_keywords()
    assert len(uses) > 100  # the walk reaches the API (functions, constructors, methods)
    assert {"kernel", "neighbours", "reduce", "pool", "measure"} <= set(uses)
    assert keyword_conflicts() == {}


def test_the_keyword_vocabulary_check_finds_a_conflict(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check above on a public API with kernel= in CKNNA's old vocabulary next to CKA's."""

    def cknna_before(x: object, *, kernel: Literal["cosine", "inner_product"] = "cosine") -> None:
        """CKNNA's signature in 0.2."""

    monkeypatch.setattr(reprsim, "cknna_before", cknna_before, raising=False)
    monkeypatch.setattr(reprsim, "__all__", [*reprsim.__all__, "cknna_before"])
    conflicts = keyword_conflicts()
    assert "kernel" in conflicts
    assert any("cknna_before" in c and "reprsim.cka" in c for c in conflicts["kernel"]), conflicts["kernel"]


def test_no_positional_argument_changes_meaning() -> None:
    nets = {"a": nn.Sequential(nn.Linear(4, 4)), "b": nn.Sequential(nn.Linear(4, 4))}
    data = [torch.randn(8, 4)]
    with pytest.raises(InvalidParameterError, match="pass the data by keyword"):
        reprsim.compare(nets, data, layers=["0"], progress=False)  # type: ignore[call-overload]
    out = reprsim.compare(nets, data=data, layers=["0"], progress=False)
    assert set(out) == {("a", "b")}


def test_the_demo_imports_only_the_public_api() -> None:
    import ast

    public = {"": reprsim, "errors": reprsim.errors, "probes": reprsim.probes, "measures": reprsim.measures,
              "streaming": reprsim.streaming}  # fmt: skip
    for path in (ROOT / "src" / "reprsim" / "demo").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 2:  # from .. / from ..x
                module = node.module or ""
                assert module in public, (path.name, module)
                exported = set(public[module].__all__)
                assert {a.name for a in node.names} <= exported | {"__version__"}, (path.name, module)


ROLE = re.compile(r":(?:mod|func|class|meth|attr|data|obj|exc):`~?([\w.]+)`")
NAMESPACES = ("reprsim", "reprsim.measures", "reprsim.streaming", "reprsim.models", "reprsim.inference",
              "reprsim.probes", "reprsim.errors", "builtins")  # fmt: skip


def _resolves(name: str, module: ModuleType, owner: object) -> bool:
    """Whether a docstring's cross-reference names something that exists: a dotted ``reprsim...`` path, a
    ``.relative`` module of the same package, or a name in the owning class, the module or a public namespace."""

    def chain(root: object, parts: list[str]) -> bool:
        for part in parts:
            if not hasattr(root, part):
                return False
            root = getattr(root, part)
        return True

    if name.startswith("."):
        name = (module.__package__ or "") + name
    parts = name.split(".")
    if parts[0] == "reprsim":
        for i in range(len(parts), 0, -1):
            try:
                found = importlib.import_module(".".join(parts[:i]))
            except ImportError:
                continue
            return chain(found, parts[i:])
        return False
    roots = ([owner] if owner is not None else []) + [module] + [importlib.import_module(n) for n in NAMESPACES]
    return any(chain(root, parts) for root in roots)


def test_every_docstring_cross_reference_names_something_that_exists() -> None:
    # module docstrings had named modules that were renamed or merged (reprsim._cka, reprsim._analysis, ...)
    stale = []
    for info in pkgutil.walk_packages(reprsim.__path__, "reprsim."):
        if info.name == "reprsim.__main__":  # runs the CLI on import
            continue
        module = importlib.import_module(info.name)
        docs: list[tuple[str | None, object, str]] = [(module.__doc__, None, info.name)]
        for key, value in vars(module).items():
            if getattr(value, "__module__", None) != module.__name__:
                continue
            if inspect.isfunction(value):
                docs.append((value.__doc__, None, f"{info.name}.{key}"))
            elif inspect.isclass(value):
                docs.append((value.__doc__, value, f"{info.name}.{key}"))
                for member, attr in vars(value).items():
                    if inspect.isfunction(attr) or isinstance(attr, property):
                        docs.append((attr.__doc__, value, f"{info.name}.{key}.{member}"))
        for doc, owner, where in docs:
            stale += [f"{where}: {name}" for name in ROLE.findall(doc or "") if not _resolves(name, module, owner)]
    assert not stale, stale
