"""Statistical tests for the comparison: paired tests, repeated measures, multiple testing, reliability.

Every function returns plain dicts whose numbers are finite floats or None, with a ``note`` that
says why a figure is missing (too few pairs, zero variance, ties...). Nothing returns NaN."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import stats as sps


def finite(x: Any) -> float | None:
    """A finite float or None (the statistics never report NaN or infinity)."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def rank_biserial_paired(d: np.ndarray) -> float | None:
    """Matched-pairs rank-biserial correlation (Kerby 2014): (R+ - R-) / (R+ + R-), zeros dropped."""
    d = d[d != 0]
    if d.size == 0:
        return None
    ranks = sps.rankdata(np.abs(d))
    rp, rm = ranks[d > 0].sum(), ranks[d < 0].sum()
    return finite((rp - rm) / (rp + rm))


def paired_comparison(
    a: list[float] | np.ndarray,
    b: list[float] | np.ndarray,
    *,
    alpha: float = 0.05,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """Compare paired samples a - b (e.g. tuned - instruct, paired by patient)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    d = a - b
    n = int(d.size)
    res: dict[str, Any] = {
        "n": n,
        "mean_a": None,
        "mean_b": None,
        "mean_diff": None,
        "sd_diff": None,
        "ci_t": [None, None],
        "ci_boot": [None, None],
        "t": None,
        "df": None,
        "p_t": None,
        "wilcoxon_V": None,
        "p_wilcoxon": None,
        "cohens_dz": None,
        "rank_biserial": None,
        "notes": [],
    }
    if n == 0:
        res["notes"].append("no complete pairs")
        return res
    res.update(mean_a=finite(a.mean()), mean_b=finite(b.mean()), mean_diff=finite(d.mean()))
    if n < 2:
        res["notes"].append("fewer than 2 pairs: no test possible")
        return res
    sd = float(d.std(ddof=1))
    res["sd_diff"] = finite(sd)
    res["df"] = n - 1
    if sd == 0:
        res["notes"].append("zero variance of the differences: t-test and d_z undefined")
    else:
        se = sd / math.sqrt(n)
        tcrit = sps.t.ppf(1 - alpha / 2, n - 1)
        t = d.mean() / se
        res.update(
            t=finite(t),
            p_t=finite(2 * sps.t.sf(abs(t), n - 1)),
            ci_t=[finite(d.mean() - tcrit * se), finite(d.mean() + tcrit * se)],
            cohens_dz=finite(d.mean() / sd),
        )
    rng = np.random.default_rng(seed)
    boots = d[rng.integers(0, n, size=(n_boot, n))].mean(axis=1)
    res["ci_boot"] = [finite(np.quantile(boots, alpha / 2)), finite(np.quantile(boots, 1 - alpha / 2))]
    nz = d[d != 0]
    if nz.size == 0:
        res["notes"].append("all differences are zero: Wilcoxon test undefined")
    else:
        # As R's wilcox.test: zeros dropped; exact p without ties and n < 50, else the normal
        # approximation with continuity correction.
        ties = len(np.unique(np.abs(nz))) < nz.size
        method = "approx" if (ties or nz.size >= 50) else "exact"
        w = sps.wilcoxon(nz, zero_method="wilcox", correction=True, method=method, alternative="two-sided")
        ranks = sps.rankdata(np.abs(nz))
        res["wilcoxon_V"] = finite(ranks[nz > 0].sum())
        res["p_wilcoxon"] = finite(w.pvalue)
        if ties:
            res["notes"].append("ties among differences: Wilcoxon p from the normal approximation")
        if nz.size < d.size:
            res["notes"].append(f"{d.size - nz.size} zero difference(s) dropped from the Wilcoxon test")
    res["rank_biserial"] = rank_biserial_paired(d)
    if n < 5:
        res["notes"].append(f"only {n} pairs: tests have very little power")
    return res


def p_adjust(pvals: list[float | None], method: str = "holm") -> list[float | None]:
    """Holm or Benjamini-Hochberg adjustment (statsmodels' multipletests, as R's p.adjust); None
    entries stay None."""
    from statsmodels.stats.multitest import multipletests

    if method not in ("holm", "fdr_bh"):
        raise ValueError(f"unknown correction {method}")
    idx = [i for i, p in enumerate(pvals) if p is not None]
    out: list[float | None] = [None] * len(pvals)
    if idx:
        adj = multipletests([pvals[i] for i in idx], method=method)[1]
        for i, a in zip(idx, adj, strict=True):
            out[i] = float(a)
    return out


def adjust_within_families(tests: list[dict[str, Any]], method: str = "holm") -> list[dict[str, Any]]:
    """Each test (a dict with ``family`` and ``p``) with ``p_adjusted``: the p-values adjusted
    within the tests of its family, by the family's ``correction`` where its tests name one
    (Holm, ``method``, by default); a family of one test is left as it is."""
    out = [dict(t) for t in tests]
    for fam in dict.fromkeys(t["family"] for t in out):
        idx = [i for i, t in enumerate(out) if t["family"] == fam]
        how = next((out[i]["correction"] for i in idx if out[i].get("correction")), method)
        for i, q in zip(idx, p_adjust([out[i]["p"] for i in idx], how), strict=True):
            out[i]["p_adjusted"] = q
            out[i]["family_size"] = sum(out[j]["p"] is not None for j in idx)
            out[i]["correction"] = how
    return out


def paired_with_covariate(d: np.ndarray, c: np.ndarray, *, alpha: float = 0.05) -> dict[str, Any]:
    """The paired difference adjusted for a paired covariate: OLS of the per-patient differences
    ``d`` on the covariate's differences ``c`` (d = b0 + b1 c). The intercept b0 is the difference
    expected between arms at equal covariate (for example equal session length); b1 is how much
    of the difference goes with the covariate."""
    import statsmodels.api as sm

    d, c = np.asarray(d, float), np.asarray(c, float)
    keep = np.isfinite(d) & np.isfinite(c)
    d, c = d[keep], c[keep]
    res: dict[str, Any] = {
        "n": int(d.size),
        "adjusted_diff": None,
        "ci": [None, None],
        "p": None,
        "slope": None,
        "p_slope": None,
        "notes": [],
    }
    if d.size < 3:
        res["notes"].append("fewer than 3 pairs: no adjusted estimate")
        return res
    if float(np.ptp(c)) == 0:
        res["notes"].append("the covariate does not vary between pairs: no adjusted estimate")
        return res
    fit = sm.OLS(d, sm.add_constant(c)).fit()
    lo, hi = fit.conf_int(alpha)[0]
    res.update(
        adjusted_diff=finite(fit.params[0]),
        ci=[finite(lo), finite(hi)],
        p=finite(fit.pvalues[0]),
        slope=finite(fit.params[1]),
        p_slope=finite(fit.pvalues[1]),
    )
    return res


def spearman(x: list[float] | np.ndarray, y: list[float] | np.ndarray) -> dict[str, Any]:
    x, y = np.asarray(x, float), np.asarray(y, float)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    res: dict[str, Any] = {"n": int(x.size), "rho": None, "p": None, "notes": []}
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        res["notes"].append("fewer than 3 sessions or no variation: no correlation")
        return res
    r = sps.spearmanr(x, y)
    res.update(rho=finite(r.statistic), p=finite(r.pvalue))
    return res


def clustered_spearman(
    x: list[float] | np.ndarray,
    y: list[float] | np.ndarray,
    clusters: list[str],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """Spearman's rho of x and y when observations are clustered (sessions of one patient): the
    test takes the cluster as the unit, over each cluster's mean x and mean y (``rho``, ``p``,
    ``n`` clusters); the observation-level rho is given beside it (``rho_sessions``) with a
    percentile interval from resampling whole clusters (``ci_sessions``)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    cl = np.asarray(clusters, dtype=object)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y, cl = x[keep], y[keep], cl[keep]
    ids = sorted(set(cl.tolist()))
    members = [np.flatnonzero(cl == i) for i in ids]
    res = spearman([x[m].mean() for m in members], [y[m].mean() for m in members]) | {"unit": "patient"}
    ses = spearman(x, y)
    res |= {"rho_sessions": ses["rho"], "n_sessions": ses["n"], "ci_sessions": [None, None]}
    if ses["rho"] is not None and len(ids) >= 3:
        rng = np.random.default_rng(seed)
        boots = []
        for _ in range(n_boot):
            idx = np.concatenate([members[k] for k in rng.integers(0, len(ids), len(ids))])
            if np.ptp(x[idx]) > 0 and np.ptp(y[idx]) > 0:
                boots.append(sps.spearmanr(x[idx], y[idx]).statistic)
        if boots:
            res["ci_sessions"] = [finite(np.quantile(boots, alpha / 2)), finite(np.quantile(boots, 1 - alpha / 2))]
    return res


def paired_power(dz: float, n: int, alpha: float = 0.05) -> float:
    """Power of the two-sided paired t-test (a one-sample t-test of the differences) for the
    standardized effect ``dz`` with ``n`` pairs: the noncentral t distribution, as R's
    power.t.test(type = "paired", strict = TRUE)."""
    df = n - 1
    tc = sps.t.ppf(1 - alpha / 2, df)
    nc = dz * math.sqrt(n)
    p = float(sps.nct.sf(tc, df, nc) + sps.nct.cdf(-tc, df, nc))
    return 1.0 if math.isnan(p) and nc > tc else p


def minimum_detectable_dz(n: int, alpha: float = 0.05, power: float = 0.8) -> float | None:
    """The smallest d_z the paired t-test detects with ``power`` at two-sided ``alpha`` with ``n``
    pairs (None below 3 pairs: with one degree of freedom the question has no useful answer)."""
    if n < 3:
        return None
    from scipy.optimize import brentq

    hi = 0.5
    while paired_power(hi, n, alpha) < power:
        hi *= 2
    return float(brentq(lambda d: paired_power(d, n, alpha) - power, 1e-6, hi, xtol=1e-10))
