"""Statistical tests for the comparison: paired tests, repeated measures, multiple testing, reliability.

Every function returns plain dicts whose numbers are finite floats or None, with a ``note`` that
says why a figure is missing (too few pairs, zero variance, ties...). Nothing returns NaN.
"""

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
    (Holm by default) within the tests of its family; a family of one test is left as it is."""
    out = [dict(t) for t in tests]
    for fam in dict.fromkeys(t["family"] for t in out):
        idx = [i for i, t in enumerate(out) if t["family"] == fam]
        for i, q in zip(idx, p_adjust([out[i]["p"] for i in idx], method), strict=True):
            out[i]["p_adjusted"] = q
            out[i]["family_size"] = sum(out[j]["p"] is not None for j in idx)
            out[i]["correction"] = method
    return out


def two_way_ss(y: np.ndarray) -> tuple[float, float, float]:
    """Sums of squares of a complete rows x columns table without replication: rows, columns,
    residual (what the repeated-measures ANOVA and the ICC both decompose)."""
    n, k = y.shape
    grand = y.mean()
    ss_rows = k * ((y.mean(axis=1) - grand) ** 2).sum()
    ss_cols = n * ((y.mean(axis=0) - grand) ** 2).sum()
    return ss_rows, ss_cols, ((y - grand) ** 2).sum() - ss_rows - ss_cols


def greenhouse_geisser(y: np.ndarray) -> float:
    """Greenhouse-Geisser epsilon of a subjects x conditions table: the sphericity correction of
    the repeated-measures ANOVA's degrees of freedom (1 when sphericity holds; at least 1/(k-1))."""
    n, k = y.shape
    if k < 3:
        return 1.0
    s = np.cov(y, rowvar=False)
    # orthonormal contrasts (normalized Helmert): the covariance of the k-1 differences
    c = np.zeros((k - 1, k))
    for i in range(1, k):
        c[i - 1, :i] = 1.0
        c[i - 1, i] = -float(i)
        c[i - 1] /= np.linalg.norm(c[i - 1])
    sc = c @ s @ c.T
    den = (k - 1) * np.trace(sc @ sc)
    return float(np.trace(sc) ** 2 / den) if den > 0 else 1.0


def rm_anova(y: np.ndarray) -> dict[str, Any]:
    """One-way repeated-measures ANOVA (statsmodels' AnovaRM) with the Greenhouse-Geisser
    correction; ``y`` is subjects x conditions (complete rows only)."""
    y = np.asarray(y, float)
    y = y[np.all(np.isfinite(y), axis=1)]
    n, k = y.shape if y.ndim == 2 else (0, 0)
    res: dict[str, Any] = {
        "n": int(n),
        "k": int(k),
        "F": None,
        "df1": None,
        "df2": None,
        "p": None,
        "partial_eta_sq": None,
        "gg_epsilon": None,
        "p_gg": None,
        "notes": [],
    }
    if k < 2 or n < 2:
        res["notes"].append("needs at least 2 conditions and 2 complete subjects")
        return res
    _ss_subj, ss_cond, ss_err = two_way_ss(y)
    df1, df2 = k - 1, (k - 1) * (n - 1)
    res.update(df1=df1, df2=df2)
    if ss_err <= 1e-12:
        res["notes"].append("zero residual variance: F undefined")
        return res
    import pandas as pd
    from statsmodels.stats.anova import AnovaRM

    long = pd.DataFrame({"subject": np.repeat(np.arange(n), k), "condition": np.tile(np.arange(k), n), "y": y.ravel()})
    row = AnovaRM(long, "y", "subject", within=["condition"]).fit().anova_table.iloc[0]
    F = float(row["F Value"])
    eps = greenhouse_geisser(y)
    res.update(
        F=finite(F),
        p=finite(row["Pr > F"]),
        partial_eta_sq=finite(ss_cond / (ss_cond + ss_err)),
        gg_epsilon=finite(eps),
        p_gg=finite(sps.f.sf(F, eps * df1, eps * df2)),
    )
    return res


def friedman(y: np.ndarray) -> dict[str, Any]:
    y = np.asarray(y, float)
    y = y[np.all(np.isfinite(y), axis=1)]
    n, k = y.shape if y.ndim == 2 else (0, 0)
    res: dict[str, Any] = {"n": int(n), "k": int(k), "chi2": None, "df": None, "p": None, "kendalls_w": None, "notes": []}
    if k < 3 or n < 2:
        res["notes"].append("Friedman test needs at least 3 conditions and 2 complete subjects")
        return res
    if np.all(y == y[:, :1]):
        res["notes"].append("all conditions tie within every subject: test undefined")
        return res
    r = sps.friedmanchisquare(*[y[:, j] for j in range(k)])
    res.update(chi2=finite(r.statistic), df=k - 1, p=finite(r.pvalue), kendalls_w=finite(r.statistic / (n * (k - 1))))
    return res


def icc(x: np.ndarray, alpha: float = 0.05) -> dict[str, Any]:
    """ICC(2,1) and ICC(2,k) (two-way random effects, absolute agreement; Shrout and Fleiss 1979),
    with their confidence intervals (McGraw and Wong 1996, case 2A, as R's psych::ICC).

    ``x`` is targets x raters; rows with a missing rating are dropped."""
    x = np.asarray(x, float)
    x = x[np.all(np.isfinite(x), axis=1)] if x.ndim == 2 else x
    n, k = x.shape if x.ndim == 2 else (0, 0)
    res: dict[str, Any] = {"n": int(n), "k": int(k), "icc2_1": None, "icc2_k": None, "ci2_1": None, "ci2_k": None, "notes": []}
    if n < 2 or k < 2:
        res["notes"].append("needs at least 2 targets and 2 ratings each")
        return res
    ss_r, ss_c, ss_e = two_way_ss(x)
    msr, msc, mse = ss_r / (n - 1), ss_c / (k - 1), ss_e / ((n - 1) * (k - 1))
    den1 = msr + (k - 1) * mse + k * (msc - mse) / n
    denk = msr + (msc - mse) / n
    if den1 <= 0 or denk <= 0 or (msr == 0 and mse == 0):
        res["notes"].append("no variance between or within targets: ICC undefined")
        return res
    r1 = (msr - mse) / den1
    res.update(icc2_1=finite(r1), icc2_k=finite((msr - mse) / denk))
    if mse > 0:
        # Satterthwaite's degrees of freedom for the denominator of the F bounds
        fj = msc / mse
        a = k * r1 * fj + n * (1 + (k - 1) * r1) - k * r1
        v = (k - 1) * (n - 1) * a**2 / ((n - 1) * k**2 * r1**2 * fj**2 + (n * (1 + (k - 1) * r1) - k * r1) ** 2)
        fu, fl = sps.f.ppf(1 - alpha / 2, n - 1, v), sps.f.ppf(1 - alpha / 2, v, n - 1)
        base = k * msc + (k * n - k - n) * mse
        lo = n * (msr - fu * mse) / (fu * base + n * msr)
        hi = n * (fl * msr - mse) / (base + n * fl * msr)
        res["ci2_1"] = [finite(lo), finite(hi)]
        res["ci2_k"] = [finite(lo * k / (1 + lo * (k - 1))), finite(hi * k / (1 + hi * (k - 1)))]
        if hi - lo > 0.5:
            res["notes"].append(f"{n} targets: the interval is too wide for the ICC to be read as a level of agreement")
    return res


def agreement(a: list[float], b: list[float]) -> dict[str, Any]:
    """Judge-human agreement: ICC(2,1), Spearman rho, mean absolute difference."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    res: dict[str, Any] = {
        "n": int(a.size),
        "icc2_1": None,
        "ci2_1": None,
        "kripp_alpha": None,
        "spearman": None,
        "p_spearman": None,
        "mad": None,
        "notes": [],
    }
    if a.size == 0:
        res["notes"].append("no sessions rated by both")
        return res
    res["mad"] = finite(np.abs(a - b).mean())
    if a.size >= 3 and a.std() > 0 and b.std() > 0:
        r = sps.spearmanr(a, b)
        res.update(spearman=finite(r.statistic), p_spearman=finite(r.pvalue))
    else:
        res["notes"].append("Spearman needs 3 or more pairs with variance")
    ic = icc(np.column_stack([a, b]))
    res["icc2_1"], res["ci2_1"] = ic["icc2_1"], ic["ci2_1"]
    res["kripp_alpha"] = krippendorff_alpha(np.column_stack([a, b]))
    res["notes"] += ic["notes"]
    return res


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


def mixed_arm_by_model(
    patient: list[str],
    model: list[str],
    arm: list[str],
    y: list[float],
    ref_arm: str = "instruct",
    alpha: float = 0.05,
    position: list[str] | None = None,
    risk: list[str] | None = None,
) -> dict[str, Any]:
    """A linear mixed model of a session's score: ``y ~ arm * model + (1 | patient)`` (REML,
    statsmodels MixedLM), with ``+ position`` (course position, a factor) when sessions come from
    more than one position and ``+ arm * risk`` (the persona's risk stratum) when both strata are
    present. Gives the fixed effects, the Wald tests of the arm x model interaction (does the gain
    from tuning depend on the model?) and of the arm x risk interaction, the estimated marginal
    means of every arm and model (averaged with equal weights over positions and risk strata),
    the arm effect within each model and averaged over models, and within each risk stratum
    (each with its standard error and Wald interval). Rows with a missing score are left out."""
    import warnings

    import pandas as pd
    import patsy
    import statsmodels.formula.api as smf

    df = pd.DataFrame({"patient": patient, "model": model, "arm": arm, "y": np.asarray(y, float)})
    df["position"] = [str(p) for p in position] if position is not None else "1"
    df["risk"] = list(risk) if risk is not None else "none"
    df = df[np.isfinite(df["y"])]
    models = sorted(df["model"].unique())
    arms = [ref_arm] + sorted(a for a in df["arm"].unique() if a != ref_arm)
    res: dict[str, Any] = {
        "n_sessions": int(len(df)),
        "n_patients": int(df["patient"].nunique()),
        "models": models,
        "arms": arms,
        "notes": [],
    }
    if len(models) < 2 or len(arms) < 2 or ref_arm not in set(df["arm"]):
        res["notes"].append(f"needs at least two models and the {ref_arm} arm beside another")
        return res
    if res["n_patients"] < 2:
        res["notes"].append("needs at least 2 patients")
        return res
    if res["n_patients"] < 5:
        res["notes"].append(f"{res['n_patients']} patients: the patient variance, and with it every standard error, is poorly estimated")
    df["model"] = pd.Categorical(df["model"], categories=models)
    df["arm"] = pd.Categorical(df["arm"], categories=arms)
    positions = sorted(df["position"].unique(), key=lambda p: (len(p), p))
    risks = sorted(df["risk"].unique(), key=lambda r: (r != "none", r))
    rhs = "C(arm) * C(model)"
    if len(positions) > 1:
        rhs += " + C(position)"
    if len(risks) > 1:
        rhs += " + C(arm):C(risk) + C(risk)"
    df["position"] = pd.Categorical(df["position"], categories=positions)
    df["risk"] = pd.Categorical(df["risk"], categories=risks)
    res["formula"] = f"y ~ {rhs} + (1 | patient)"
    res["positions"], res["risk_strata"] = positions, risks
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit = smf.mixedlm(f"y ~ {rhs}", df, groups=df["patient"]).fit(reml=True)
    res["notes"] += sorted({str(w.message).split("\n")[0] for w in caught})
    names = list(fit.fe_params.index)
    beta = fit.fe_params.to_numpy()
    cov = fit.cov_params().loc[names, names].to_numpy()
    z = sps.norm.ppf(1 - alpha / 2)

    def est(x: np.ndarray) -> dict[str, Any]:
        m, se = float(x @ beta), float(np.sqrt(max(0.0, x @ cov @ x)))
        p = float(2 * sps.norm.sf(abs(m) / se)) if se > 0 else None
        return {"estimate": finite(m), "se": finite(se), "ci": [finite(m - z * se), finite(m + z * se)], "p": finite(p)}

    res["fixed"] = [{"term": t, **est(np.eye(len(names))[i])} for i, t in enumerate(names)]

    def wald(idx: list[int]) -> dict[str, Any]:
        b, v = beta[idx], cov[np.ix_(idx, idx)]
        chi2 = float(b @ np.linalg.solve(v, b))
        return {"terms": [names[i] for i in idx], "chi2": finite(chi2), "df": len(idx), "p": finite(float(sps.chi2.sf(chi2, len(idx))))}

    res["interaction"] = wald([i for i, t in enumerate(names) if "C(arm)" in t and "C(model)" in t])
    risk_terms = [i for i, t in enumerate(names) if "C(arm)" in t and "C(risk)" in t]
    res["risk_interaction"] = wald(risk_terms) if risk_terms else None
    grid = pd.DataFrame(
        [(a, m, p, r) for m in models for a in arms for p in positions for r in risks], columns=["arm", "model", "position", "risk"]
    )
    for col, cats in (("arm", arms), ("model", models), ("position", positions), ("risk", risks)):
        grid[col] = pd.Categorical(grid[col], categories=cats)
    dm = patsy.dmatrix(rhs, grid)
    if list(dm.design_info.column_names) != names:  # the same coding as the fit, column for column
        raise RuntimeError(f"mixed model: cell design {dm.design_info.column_names} differs from the fit's {names}")
    X = np.asarray(dm)

    def row(**match: str) -> np.ndarray:
        """The design row of a marginal mean: averaged with equal weights over what is not fixed."""
        sel = np.ones(len(grid), bool)
        for col, v in match.items():
            sel &= (grid[col] == v).to_numpy()
        return X[sel].mean(axis=0)

    res["emm"] = [{"arm": a, "model": m, **est(row(arm=a, model=m))} for m in models for a in arms]
    res["arm_effects"] = []
    res["arm_effects_by_risk"] = []
    for a in arms[1:]:
        for m in models:
            res["arm_effects"].append({"arm": a, "model": m, **est(row(arm=a, model=m) - row(arm=ref_arm, model=m))})
        res["arm_effects"].append({"arm": a, "model": "average over models", **est(row(arm=a) - row(arm=ref_arm))})
        if len(risks) > 1:
            for r in risks:
                res["arm_effects_by_risk"].append({"arm": a, "risk": r, **est(row(arm=a, risk=r) - row(arm=ref_arm, risk=r))})
    res["patient_variance"] = finite(float(fit.cov_re.iloc[0, 0]))
    res["residual_variance"] = finite(float(fit.scale))
    res["converged"] = bool(fit.converged)
    return res


def krippendorff_alpha(x: np.ndarray, level: str = "interval") -> float | None:
    """Krippendorff's alpha of a units x raters matrix (NaN: not rated), at the interval level
    (squared differences) or the nominal level (any difference). Units with fewer than two ratings
    are not pairable and are left out; None when fewer than two pairable units or no expected
    disagreement. Computed from the coincidences (Krippendorff 2011, "Computing Krippendorff's
    alpha-reliability")."""
    x = np.asarray(x, float)
    ok = np.isfinite(x)
    m = ok.sum(axis=1)
    if (m >= 2).sum() < 2:
        return None
    if level == "interval":  # vectorized over units: sum (a - b)^2 = 2 m sum(v^2) - 2 (sum v)^2
        x, ok, m = x[m >= 2], ok[m >= 2], m[m >= 2]
        v = np.where(ok, x, 0.0)
        s1, s2 = v.sum(axis=1), (v**2).sum(axis=1)
        n = m.sum()
        d_o = ((2 * m * s2 - 2 * s1**2) / (m - 1)).sum() / n
        d_e = (2 * n * s2.sum() - 2 * s1.sum() ** 2) / (n * (n - 1))
        return finite(1 - d_o / d_e) if d_e > 0 else None
    units = [row[np.isfinite(row)] for row in x]
    units = [u for u in units if u.size >= 2]

    def pair_sum(v: np.ndarray) -> float:
        """The sum of delta over all ordered pairs of ``v``, in O(len(v))."""
        if level == "interval":  # sum (a - b)^2 = 2 n sum(v^2) - 2 (sum v)^2
            return float(2 * v.size * (v**2).sum() - 2 * v.sum() ** 2)
        _, counts = np.unique(v, return_counts=True)  # pairs of different values
        return float(v.size**2 - (counts**2).sum())

    values = np.concatenate(units)
    n = values.size
    d_o = sum(pair_sum(u) / (u.size - 1) for u in units) / n
    d_e = pair_sum(values) / (n * (n - 1))
    return finite(1 - d_o / d_e) if d_e > 0 else None


def inter_rater(x: np.ndarray, alpha: float = 0.05, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Agreement between raters (judges of a panel, or a judge and humans) on the same targets:
    ICC(2,1) with its interval, and Krippendorff's alpha (interval level) with a percentile
    bootstrap interval over targets."""
    x = np.asarray(x, float)
    res = icc(x, alpha)
    res["kripp_alpha"] = krippendorff_alpha(x)
    res["kripp_ci"] = None
    if res["kripp_alpha"] is not None and len(x) >= 3:
        rng = np.random.default_rng(seed)
        boots = [krippendorff_alpha(x[rng.integers(0, len(x), len(x))]) for _ in range(n_boot)]
        boots = [b for b in boots if b is not None]
        if boots:
            res["kripp_ci"] = [finite(float(np.quantile(boots, alpha / 2))), finite(float(np.quantile(boots, 1 - alpha / 2)))]
    return res
