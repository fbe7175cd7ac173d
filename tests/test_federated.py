"""Federated fits (mestim.federated): the sites' sums give the pooled fit; what a site refuses; faults.

In one process (simulate) and, in test_flower_*, through Flower: a SuperLink and three SuperNodes started as
separate processes on 127.0.0.1 once for the module."""

import hashlib
import json

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import mestim
from estimators.glm import glm
from mestim import federated as F


def _clustered_data(n=600, seed=1):
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"x": rng.normal(size=n), "hospital": rng.integers(0, 4, n), "w": rng.uniform(0.5, 2, n)})
    df["y"] = (rng.random(n) < 1 / (1 + np.exp(-(0.3 + 0.8 * df.x + 0.2 * df.hospital)))).astype(float)
    return df


def _split(df, by):
    return {f"{by}{k}": g.drop(columns=by).reset_index(drop=True) for k, g in df.groupby(by)}


def _same(fed, pooled):
    assert fed.labels == pooled.labels
    np.testing.assert_allclose(fed.theta, pooled.theta, rtol=0, atol=1e-10)
    np.testing.assert_allclose(fed.se, pooled.se, rtol=1e-8)


def test_glm_clusters_as_sites_equals_pooled():
    """Logistic GLM, frequency weights, the hospitals as clusters and as sites: θ and SE of the pooled fit (the
    pooled clustered meat Σ_g U_g U_gᵀ is built from per-row ψ; the federated one from the sites' totals)."""
    df = _clustered_data()
    est = [glm("m", "y", formula="~ x", family="binomial")]
    pooled = mestim.fit(est, df, weights="w", cluster="hospital", correction="df")
    fed = F.simulate(est, _split(df, "hospital"), weights="w", cluster="sites", correction="df")
    _same(fed, pooled)
    assert fed.n_clusters == pooled.n_clusters == 4 and fed.n_rows == len(df)
    unclustered = F.simulate(est, _split(df, "hospital"), weights="w")
    _same(unclustered, mestim.fit(est, df, weights="w"))
    with pytest.raises(mestim.SpecificationError, match="not available"):
        fed.influence()  # no per-row values leave a site


def _mean_var(theta, row):
    return jnp.array([row["y"] - theta[0], (row["y"] - theta[0]) ** 2 - theta[1]])


def test_user_psi_allowed_by_its_source():
    df = _clustered_data()
    est = F.Estimator.user_psi(_mean_var, init=[0.0, 1.0], names=["mean", "var"])
    pooled = mestim.fit(_mean_var, df, init=[0.0, 1.0], names=["mean", "var"])
    _same(F.simulate(est, _split(df, "hospital")), pooled)
    # deployed sites run a user ψ only when they reviewed its source (its digest), and rebuild it from that source
    tables = _split(df, "hospital")
    allowed = {n: F.Site(n, t, sources=[est.digest]) for n, t in tables.items()}
    _same(F.fit(est, F.Loopback(allowed)), pooled)
    assert est.digest == hashlib.sha256(est.source.encode()).hexdigest()
    refusing = dict(allowed, hospital2=F.Site("hospital2", tables["hospital2"]))
    with pytest.raises(F.FederatedError, match="site 'hospital2' refused to prepare.*not allowed at this site"):
        F.fit(est, F.Loopback(refusing))


def test_site_refuses_a_different_estimator_naming_what_differs():
    df = _clustered_data()
    tables = _split(df, "hospital")
    mine = F.Estimator("logit", "2", [glm("m", "y", formula="~ x", family="binomial")])
    sites = {n: F.Site(n, t, estimators=[mine]) for n, t in tables.items()}
    asked = F.Estimator("logit", "2", [glm("m", "y", formula="~ x", family="poisson")])
    with pytest.raises(F.FederatedError, match="block 'm': its estimating function is .*poisson"):
        F.fit(asked, F.Loopback(sites))
    with pytest.raises(F.FederatedError, match="version 3 was asked for; this site allows version 2"):
        F.fit(F.Estimator("logit", "3", mine.estimator), F.Loopback(sites))
    with pytest.raises(F.FederatedError, match="'probit' is not allowed at this site"):
        F.fit(F.Estimator("probit", "2", mine.estimator), F.Loopback(sites))
    assert F.fit(mine, F.Loopback(sites)).converged


def test_min_rows_refusal_and_audit_log(tmp_path):
    df = _clustered_data()
    est = F.Estimator("logit", "1", [glm("m", "y", formula="~ x", family="binomial", mask="adult")])
    df["adult"] = (np.arange(len(df)) % 40 != 0).astype(float)  # 1 row in 40 is a child
    tables = _split(df, "hospital")
    sites = {n: F.Site(n, t, estimators=[est], log=tmp_path / f"{n}.jsonl") for n, t in tables.items()}
    fed = F.fit(est, F.Loopback(sites), coordinator="analyst@uni")  # the mask's rows: 0/1 column 'mask:m' hidden
    assert fed.converged
    log = [json.loads(line) for line in (tmp_path / "hospital0.jsonl").read_text().splitlines()]
    passes = int(fed.notes[0].split(": ")[1].split()[0])
    assert [e["request"] for e in log] == ["levels", "prepare"] + [f"sums of pass {k}" for k in range(1, passes + 1)]
    assert all(e["to"] == "analyst@uni" and e["when"] for e in log)
    assert log[-1]["rows"] == len(tables["hospital0"]) and log[-1]["what"].startswith("Σψ (")
    # a block on the children alone rests on ~4 rows per site: refused, nothing released
    kids = F.Estimator("kids", "1", [glm("m", "y", formula="~ x", family="binomial",
                                         mask=lambda c: 1 - np.asarray(c["adult"]))])
    sites = {n: F.Site(n, t, estimators=[kids]) for n, t in tables.items()}
    with pytest.raises(F.FederatedError, match="refused to prepare.*fewer than min_rows = 10 rows.*where 'm.mask' is 1"):
        F.fit(kids, F.Loopback(sites))
    assert all(e["request"] == "levels" for s in sites.values() for e in s.log.entries)


def test_small_category_is_neither_revealed_nor_fitted():
    df = _clustered_data()
    df["grp"] = np.where(np.arange(len(df)) < 6, "rare", "common")  # 6 rows, all at one site
    levels = F.Site("a", df).handle({"protocol": 1, "kind": "levels", "coordinator": "c"}, {})[0]["levels"]
    assert levels["grp"] is None and levels["hospital"] == [0, 1, 2, 3]  # 'rare' is not even named
    est = [glm("m", "y", formula="~ x + C(grp)", family="binomial")]
    with pytest.raises(F.FederatedError, match="fewer than min_rows"):
        F.simulate(est, {"a": df.iloc[:300], "b": df.iloc[300:]})


def test_data_changed_between_passes_is_detected():
    df = _clustered_data()
    tables = _split(df, "hospital")
    est = F.Estimator("logit", "1", [glm("m", "y", formula="~ x", family="binomial")])
    sites = {n: F.Site(n, t, estimators=[est]) for n, t in tables.items()}

    class Tamper(F.Loopback):
        def exchange(self, requests, what):
            if what == "pass 2":
                tables["hospital1"].loc[0, "x"] += 1.0
            return super().exchange(requests, what)

    with pytest.raises(F.FederatedError, match="site 'hospital1' refused pass 2: pass 2: the site's data changed.*'x'"):
        F.fit(est, Tamper(sites))
