"""Repeated measures over the models: a one-way repeated-measures ANOVA with the Greenhouse-Geisser
correction, and the Friedman test."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import stats as sps

from .stattests import finite


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
