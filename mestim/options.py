"""The options of a fit, checked when they are given: a typo fails before any data is touched or compiled."""

from __future__ import annotations

import dataclasses
import numbers

from .errors import SpecificationError, check_choice

WEIGHT_TYPES = ("frequency", "sampling")
CORRECTIONS = (None, "df", "fay")
SOLVES = (None, "blockwise", "joint")
DATA_DTYPES = (None, "float64", "float32")
ROOT_FINDERS = ("auto", "newton", "lm")
GMM = (None, "two-step", "iterated")


@dataclasses.dataclass(frozen=True)
class FitOptions:
    """Everything :func:`mestim.fit` and :func:`mestim.scale.fit_stream` take besides the estimator and data.

    Attributes:
        weight_type: ``"frequency"`` (a row of weight w counts as w rows) or ``"sampling"`` (inverse-probability
            weights: meat Σ w² ψψᵀ, n = number of rows).
        correction: None, ``"df"`` (n/(n − p)) or ``"fay"`` (Fay & Graubard's bias-corrected meat).
        solve: ``"blockwise"`` (one solve per dependency level) or ``"joint"`` (one solve of the whole stack);
            None: blockwise, or joint with ``gmm=`` (which minimises one quadratic form of the whole stack).
        chunk_size: rows per chunk of every sum over rows; None chooses it from the stack's size and the device.
        max_iter, xtol, gtol: solver limits (:mod:`mestim.solve`).
        data_dtype: None/``"float64"``, or ``"float32"`` to store the columns ψ reads in float32.
        root_finder: ``"auto"``, ``"newton"``, ``"lm"`` (:mod:`mestim.solve`), or a function
            ``root_finder(fun, jac, x0) -> x`` of host arrays (e.g. a wrapper of ``scipy.optimize.root``) run on
            each dependency level; mestim checks its answer against ``gtol``.
        gmm: None, or ``"two-step"``/``"iterated"`` for over-identified equations (:mod:`mestim.gmm`).
    """

    weight_type: str = "frequency"
    correction: str | None = None
    solve: str | None = None
    chunk_size: int | None = None
    max_iter: int = 100
    xtol: float = 1e-10
    gtol: float = 1e-12
    data_dtype: str | None = None
    root_finder: object = "auto"
    gmm: str | None = None

    def __post_init__(self):
        check_choice("weight_type", self.weight_type, WEIGHT_TYPES)
        check_choice("correction", self.correction, CORRECTIONS)
        check_choice("solve", self.solve, SOLVES)
        dtype = None if self.data_dtype is None else str(getattr(self.data_dtype, "__name__", self.data_dtype))
        check_choice("data_dtype", dtype, DATA_DTYPES)
        object.__setattr__(self, "data_dtype", None if dtype == "float64" else dtype)
        if not callable(self.root_finder):
            check_choice("root_finder", self.root_finder, ROOT_FINDERS)
        check_choice("gmm", self.gmm, GMM)
        if self.gmm is not None and self.solve == "blockwise":
            raise SpecificationError("solve='blockwise' is not available with gmm=: GMM minimises one quadratic form "
                                     "of the whole stack's moments; leave solve= out (or use 'joint')")
        object.__setattr__(self, "solve", self.solve or ("joint" if self.gmm is not None else "blockwise"))
        if self.gmm is not None and self.correction == "fay":
            raise SpecificationError("correction='fay' is not available with gmm=: use None or 'df'")
        if self.gmm is not None and callable(self.root_finder):
            raise SpecificationError("a root_finder function solves Σψ = 0, which has no solution with gmm=: use "
                                     "root_finder='auto', 'newton' or 'lm'")
        if self.chunk_size is not None:
            _positive_int("chunk_size", self.chunk_size)
        _positive_int("max_iter", self.max_iter)
        for name in ("xtol", "gtol"):
            value = getattr(self, name)
            if not isinstance(value, numbers.Real) or not value > 0:
                raise SpecificationError(f"{name}={value!r}: give a positive number (e.g. 1e-10)")

    @property
    def sampling(self) -> bool:
        return self.weight_type == "sampling"

    @property
    def method(self) -> str:
        """The built-in root finder's rules (``"auto"`` when the user gave a function)."""
        return "auto" if callable(self.root_finder) else self.root_finder


def _positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise SpecificationError(f"{name}={value!r}: give a positive whole number")
