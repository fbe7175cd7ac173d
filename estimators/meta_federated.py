"""Meta-analysis of participant rows that stay at their sites: ``meta_analysis(sites=…)``, ``mestim meta --sites``.

A meta-analysis of 2×2 tables needs, per study k and arm a, the participants n_a(k) and the events e_a(k): counts
a site can release without a row leaving it (a :class:`mestim.federated.Counts`, DataSHIELD's ``ds.table``). Each
site holds participant rows of one or more studies: a study id, the arm (1 treated, 0 control), a 0/1 outcome and
optionally a frequency weight (a row of weight w counts as w participants) — their names are the roles ``study``,
``treatment``, ``outcome`` and ``weights`` (defaults :data:`ROLES`). The coordinator asks every site for its
counts per (``by`` columns, study, arm) in one round (:func:`mestim.federated.tabulate`; a site refuses when a study
arm rests on 1 to min_rows − 1 of its rows, naming it; zero events pass) and adds them per study and arm: a study
whose rows are at several sites (a multicentre trial) gets the sum of its sites' counts, which is the 2×2 table of
its pooled rows. The tables ai = e₁, bi = n₁ − e₁, ci = e₀, di = n₀ − e₀ then go through the same meta-analysis
as tables read from a file (:mod:`estimators.meta_batch`), so the results are those of ``mestim meta`` on the 2×2
tables of the pooled rows (tested to 1e-10 on every number). Here the federation is simulated in one process
(:func:`mestim.federated.simulate`, every site allowing the counts), as ``transport(sites=…)``; deployed sites
install :func:`meta_counts` and the coordinator turns the ServerApp's table into 2×2 tables with
:func:`two_by_two`.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from mestim.errors import DataError, SpecificationError

ROLES = {"study": "study", "treatment": "treatment", "outcome": "outcome", "weights": None}  # role: default column
TABLE_COLUMNS = ("study", "ai", "bi", "ci", "di")  # the 2×2 tables' columns besides the ``by`` columns


def roles(columns: Mapping | None) -> dict:
    """The participant rows' column for each role (:data:`ROLES`), the defaults overridden by ``columns``."""
    columns = dict(columns or {})
    unknown = sorted(set(columns) - set(ROLES))
    if unknown:
        raise DataError(f"unknown column role(s) {unknown} for participant rows at sites; roles are {list(ROLES)} "
                        "(e.g. columns={'study': 'trial', 'treatment': 'arm', 'outcome': 'death'})")
    return {**ROLES, **columns}


def meta_counts(name: str = "meta-2x2", version: str = "1", *, study: str = "study", treatment: str = "treatment",
                outcome: str = "outcome", weights: str | None = None, by=()):
    """What a site allows for a meta-analysis of its participant rows: per (``by`` columns, study, arm) the rows,
    Σw (participants) and Σw·outcome (events), a named and versioned :class:`mestim.federated.Counts`."""
    from mestim.federated import Counts

    return Counts(name, version, by=(*by, study, treatment), events=(outcome,), weights=weights)


def two_by_two(released, counts) -> tuple:
    """(tables, notes): the 2×2 tables (the ``by`` columns, study, ai, bi, ci, di; one row per study, sorted) from
    :func:`mestim.federated.tabulate`'s table of ``counts`` (:func:`meta_counts`), each study's counts summed over
    the sites that hold its rows; the notes say where the counts came from and which studies are at several sites."""
    *by, study, treatment = counts.by
    outcome = counts.events[0]
    arms = set(released[treatment].tolist())
    if not arms <= {0, 1}:
        raise DataError(f"the treatment column '{treatment}' holds {sorted(arms - {0, 1}, key=str)} at the sites: "
                        "code the arms 1 (treated) and 0 (control)")
    keys = [*by, study]
    cells = released.groupby([*keys, treatment], sort=True)[["sum_w", outcome]].sum()
    n, events = (cells[c].unstack(treatment, fill_value=0.0).reindex(columns=[0, 1], fill_value=0.0)
                 for c in ("sum_w", outcome))
    tables = n.index.to_frame(index=False).rename(columns={study: "study"})
    tables["ai"], tables["bi"] = events[1].to_numpy(), (n[1] - events[1]).to_numpy()
    tables["ci"], tables["di"] = events[0].to_numpy(), (n[0] - events[0]).to_numpy()
    sites = sorted(set(released["site"]))
    notes = [f"2×2 tables from the counts of {len(sites)} site(s) ({', '.join(sites)}): participants and events per "
             "study and arm; no participant row left a site"]
    held = released.groupby(keys, sort=True)["site"].unique()
    shared = [f"{' | '.join(map(str, k)) if isinstance(k, tuple) else k} (sites {', '.join(v)})"
              for k, v in held.items() if len(v) > 1]
    if shared:
        notes.append(f"{len(shared)} stud(ies) with rows at several sites, their counts summed (the table of the "
                     f"pooled rows): {'; '.join(shared[:5])}{' …' if len(shared) > 5 else ''}")
    return tables, notes


def from_sites(df, sites: Mapping | None, columns: Mapping | None = None, by=None) -> tuple:
    """(tables, columns, notes) for :func:`estimators.meta_batch.meta_analysis` / ``meta_analyses``: the 2×2
    tables of the participant rows held by ``sites`` ({site name: table}; ``columns`` maps the :data:`ROLES`),
    through the federated protocol simulated in this process; without ``sites``, ``df`` and ``columns`` as given."""
    if sites is None:
        return df, columns, []
    from mestim.federated import simulate  # the engine's modules, only when there are sites

    if df is not None:
        raise SpecificationError("give the 2×2 tables as df= or participant rows as sites= ({'site': table, ...}), "
                                 "not both")
    if not isinstance(sites, Mapping) or not sites:
        raise SpecificationError("sites= takes {'site name': table of participant rows, ...} with at least one site")
    named = roles(columns)
    groups = ([] if by is None else [b.strip() for b in by.split(",") if b.strip()] if isinstance(by, str) else
              [str(b) for b in by])  # checked by the sites, which hold the columns
    clash = sorted(set(groups) & set(TABLE_COLUMNS))
    if clash:
        raise DataError(f"meta-analysis id column(s) {clash} share a name with a column of the 2×2 tables: rename "
                        "them")
    counts = meta_counts(**named, by=groups)
    tables, notes = two_by_two(simulate(counts, {str(k): v for k, v in sites.items()}), counts)
    return tables, {"study": "study"}, notes

