"""``transport(sites={...})``: the transport stack fitted over sites that keep their rows (simulated federation).

Each site (every trial, and the target sample) holds its own rows. The stack's blocks depend on what the sites
agree on (the trials' labels, the arms, the covariates' coding), and every derived column of
:mod:`~estimators.transport.data` is computed from its own row alone; so the stack is built once from the
agreed description and each site's rows of the derived columns go to :func:`mestim.federated.simulate`, which
sums them site by site: the result equals the pooled ``transport(df)`` (tested to 1e-10). Here whoever calls
holds every table (a simulation, to try a configuration before deploying it), so the stack is built from their
union; the positivity diagnostics, which read every row's weight, are not computed.

Row weights (``weights=``, frequency or sampling) are a column of every site's table, summed where they are.
Clusters are not available: the federated engine clusters by site or not at all, and the sites here are the
trials and the target sample, not a sampling design's clusters.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from mestim.errors import DataError, SpecificationError

from .data import as_frame, column_hint


def pooled_frame(sites: Mapping, weights=None, cluster=None) -> tuple[pd.DataFrame, np.ndarray]:
    """The sites' tables one after another, and the site of each row; ``weights`` must be a column of every
    site's table, and ``cluster`` is refused (see the module's docstring)."""
    if not isinstance(sites, Mapping) or not sites:
        raise SpecificationError("sites= takes {'site name': table, ...} with at least one site")
    if cluster is not None:
        raise SpecificationError(f"cluster={cluster!r} is not available with sites=: a federated fit clusters by "
                                 "site or not at all (per-row cluster labels would leave the sites); fit the pooled "
                                 "table for clusters within trials")
    if weights is not None and not isinstance(weights, str):
        raise SpecificationError("weights= with sites= is the name of a column of every site's table, not an array")
    frames = {str(name): as_frame(table) for name, table in sites.items()}
    for name, frame in frames.items():
        if weights is not None and weights not in frame.columns:
            raise DataError(f"weight column '{weights}' is not in site '{name}''s table; "
                            + column_hint(weights, frame.columns))
    origin = np.concatenate([np.full(len(f), name, dtype=object) for name, f in frames.items()])
    return pd.concat(list(frames.values()), ignore_index=True), origin


def fit_sites(stack, origin: np.ndarray, **fit_options):
    """The stack fitted over the sites: each site's rows of the stack's columns, summed where they are."""
    from mestim.federated import simulate

    tables = {name: {k: np.asarray(v)[origin == name] for k, v in stack.data_for_fit.items()}
              for name in dict.fromkeys(origin)}
    return simulate(stack.blocks, tables, solve=stack.solve, weights=stack.weights, weight_type=stack.weight_type,
                    **fit_options)


def transport_estimator(name: str, version: str, *, trials, arms, covariates, target=0, binary: bool = False,
                        study: str = "S", treatment: str = "Z", outcome: str = "Y", weights: str | None = None,
                        **options):
    """The transport stack as an :class:`mestim.federated.Estimator` a site installs and allows, built from what
    the sites agreed on (the trials' labels, the arms, numeric covariates, a 0/1 outcome or not) rather than from
    their rows; ``options`` as :func:`~estimators.transport.api.transport_stack` (not ``weights``/``cluster``),
    checked once (:class:`~estimators.transport.options.TransportOptions`). ``weights``: the row weights' column,
    which a site's derived columns carry as they are (the fit is then ``mestim.federated.fit(..., weights=it,
    weight_type=...)``).

    The stack is built on a *skeleton*: a few rows per trial and arm and of the target sample, which code the
    trials, arms and covariates as the pooled table would. A site's columns are derived from its own
    rows the same way (its rows after the skeleton's, the skeleton's then dropped): every derived column of a row
    depends on that row alone, so the federated fit is the pooled ``transport(df)``'s (tested to 1e-10).

    Example (the transport stack fitted over a site per trial: the pooled fit)::

        >>> import numpy as np
        >>> from mestim import federated
        >>> from estimators.transport import load_transport_sim
        >>> from estimators.transport.federated import transport_estimator
        >>> df = load_transport_sim()
        >>> model, stack = transport_estimator("tr", "1", trials=[1, 2, 3, 4], arms=[0, 1],
        ...                                    covariates=["X1", "X2", "X3"], estimators=["dr"], per_trial=False)
        >>> sites = {f"site{s}": g for s, g in df.groupby("S")}
        >>> res = federated.simulate(model, sites)
        >>> from estimators.transport import transport
        >>> pooled = transport(df, covariates=["X1", "X2", "X3"], estimators=["dr"], per_trial=False)
        >>> bool(np.allclose(res.theta, pooled.fit.theta, rtol=1e-8))
        True
    """
    from mestim.federated import Estimator

    from .options import TransportOptions
    from .stack import build_stack

    per_cell = 2 * (len(covariates) + 2)  # rows per trial and arm: more than its outcome model's parameters
    values = (0.0, 1.0) if binary else (0.5, 1.5)
    rows = [{study: s, treatment: z, outcome: values[i % 2]} for s in trials for z in arms for i in range(per_cell)]
    rows += [{study: target, treatment: np.nan, outcome: np.nan} for _ in range(per_cell)]
    skeleton = pd.DataFrame(rows)
    covariate_values = np.random.default_rng(0).normal(size=(len(skeleton), len(covariates)))  # of full rank
    for j, c in enumerate(covariates):
        skeleton[c] = covariate_values[:, j]
    options = TransportOptions(**options, study=study, treatment=treatment, outcome=outcome,
                               covariates=list(covariates), target=target)
    stack = build_stack(skeleton, options)

    def derive(columns: dict) -> dict:
        both = pd.concat([skeleton, pd.DataFrame({k: columns[k] for k in skeleton.columns})], ignore_index=True)
        derived = build_stack(both, options).data_for_fit
        own = {k: np.asarray(v)[len(skeleton):] for k, v in derived.items()}
        if weights is None or weights not in columns:  # a site without them refuses the fit that names them
            return own
        return {**own, weights: np.asarray(columns[weights], float)}

    return Estimator(name, version, stack.blocks, derive=derive), stack
