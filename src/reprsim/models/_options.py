"""The option groups of :func:`~reprsim.compare` and :func:`~reprsim.compare_stores`: :class:`Uncertainty`.

A group is a small frozen value, checked when it is made, so that a wrong setting fails where it is written
rather than after the first batch, and one value can be built once and passed to every comparison of a study.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, NoReturn

from .._validation import check_int, check_probability, check_seed
from ..errors import InvalidParameterError

__all__ = ["Uncertainty"]


@dataclass(frozen=True)
class Uncertainty:
    """What a comparison reports beside each value: a confidence interval, a permutation test, or both.

    Passed as ``compare(..., uncertainty=Uncertainty(ci=0.95))`` (and likewise to :func:`compare_stores`).
    Everything comes from the same single pass over the data; what each measure's interval estimates, and the
    simulations behind the coverage, are in docs/uncertainty.md.

    Parameters
    ----------
    ci : float, optional
        Attach a confidence interval at this level (e.g. 0.95) to every cell (``result.low``/``result.high``):
        exact moment measures by a delete-a-block jackknife over ``blocks`` blocks of samples (sample ``i`` in
        block ``i % blocks``; the moments are then kept per block, ``blocks`` times their memory), minibatch CKA
        by the jackknife over its batches, sample-space measures by 100 half-samples without replacement of their
        kept features (the same half-samples for every cell). Each measure's ``describe()["resampling"]`` names
        its scheme, and the result's ``metadata["ci"]["target"]`` what the intervals estimate (the population
        value, or the estimator's expectation at this n).
    blocks : int, optional
        Blocks of the jackknife (at least 2, and at most the number of samples); by default 20, or the folds of
        a cross-validated measure in the run. Only with ``ci``.
    permutations : int or "moments", optional
        Run a permutation test with this many permutations of the second model's samples (the same permutation
        for all its layers): ``result.p_values`` and ``result.calibrated`` per cell, and in
        ``metadata["permutation"]`` the test of the best cell (corrected for the search over all cells) and of
        the mean. ``"moments"`` uses the exact moments of the permutation distribution where a measure has
        them (no Monte Carlo). The test needs every sample's pooled features, kept as for the sample-space
        measures; minibatch CKA has none (it is left untested with a warning).
    alpha : float, default 0.05
        Level of the permutation test: of the calibrated scores (0 at the 1 − alpha quantile of the null) and of
        the significance marks of the plots.
    seed : int, default 0
        Seeds the permutations and the half-samples.

    Raises
    ------
    InvalidParameterError
        When ``blocks`` comes without ``ci``, or a value is out of range. ``Uncertainty()`` (neither ``ci`` nor
        ``permutations``) is valid and asks for values only, as ``uncertainty=None`` does.

    Examples
    --------
    >>> from reprsim import Uncertainty
    >>> Uncertainty(ci=0.95, blocks=10)
    Uncertainty(ci=0.95, blocks=10, permutations=None, alpha=0.05, seed=0)
    >>> Uncertainty(ci=95)
    Traceback (most recent call last):
    ...
    reprsim.errors.InvalidParameterError: ci must be a finite number in (0, 1) (a confidence level, e.g. 0.95); got 95
    """

    ci: float | None = None
    blocks: int | None = None
    permutations: int | Literal["moments"] | None = None
    alpha: float = 0.05
    seed: int = 0

    def __post_init__(self) -> None:
        ci, blocks, permutations = self.ci, self.blocks, self.permutations
        if ci is not None:
            ci = check_probability(ci, "ci", "a confidence level, e.g. 0.95")
        if blocks is not None:
            blocks = check_int(blocks, "blocks", minimum=2, hint="the number of jackknife blocks")
            if ci is None:
                raise InvalidParameterError("blocks= sets the jackknife of ci=; pass ci=0.95 too (or drop blocks)")
        if permutations is not None and permutations != "moments":
            permutations = check_int(permutations, "permutations", minimum=1, hint="or 'moments' for the exact null")
        object.__setattr__(self, "ci", ci)
        object.__setattr__(self, "blocks", blocks)
        object.__setattr__(self, "permutations", permutations)
        object.__setattr__(self, "alpha", check_probability(self.alpha, "alpha", "e.g. 0.05"))
        object.__setattr__(self, "seed", check_seed(self.seed))


#: The fields of :class:`Uncertainty`, which compare() and compare_stores() took as keywords before 0.3.
UNCERTAINTY_KEYWORDS = ("ci", "blocks", "permutations", "alpha", "seed")
#: Keywords removed in 0.2, and what to pass instead.
REMOVED = {
    "estimator": "measure='cka_minibatch' (the old default), measure='cka' (estimator='exact') or "
    "measure='cka_unbiased' (estimator='exact_unbiased')",
    "kernel": "measure=reprsim.measures.CKA(estimator='minibatch', kernel='rbf')",
    "sigma": "measure=reprsim.measures.CKA(estimator='minibatch', kernel='rbf', sigma=...)",
    "median_fraction": "measure=reprsim.measures.CKA(estimator='minibatch', kernel='rbf', median_fraction=...)",
    "names": "model_names=(...) (the models' names; layer names are the result's names_a and names_b)",
}


def migration_error(function: str, given: Mapping[str, Any]) -> NoReturn:
    """Raise for keywords ``function`` does not take: for keywords it took before, the migration error with the
    replacement (the old interval and test keywords as one ``Uncertainty`` holding the values given); a
    TypeError, as Python's own, for any other."""
    moved = {k: v for k, v in given.items() if k in UNCERTAINTY_KEYWORDS}
    advice = [f"instead of {k}=, pass {REMOVED[k]}" for k in given if k in REMOVED]
    if moved:
        fields = ", ".join(f"{k}={v!r}" for k, v in moved.items())
        advice.insert(0, f"instead of {'=, '.join(moved)}=, pass uncertainty=reprsim.Uncertainty({fields})")
    if advice:
        raise InvalidParameterError(f"{function}()'s keywords changed (see the CHANGELOG): " + "; ".join(advice))
    raise TypeError(f"{function}() got unexpected keyword arguments {sorted(given)}")


def checked_uncertainty(value: object) -> Uncertainty:
    """``uncertainty=`` as compare and compare_stores accept it: None (values only) or an :class:`Uncertainty`."""
    if value is None:
        return Uncertainty()
    if isinstance(value, Uncertainty):
        return value
    raise InvalidParameterError(
        f"uncertainty= takes an Uncertainty (e.g. uncertainty=reprsim.Uncertainty(ci=0.95)) or None; got "
        f"{type(value).__name__}"
    )
