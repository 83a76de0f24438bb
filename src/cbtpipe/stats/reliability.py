"""Agreement between raters on the same targets: ICC(2,1) with the McGraw-Wong interval, Bland-Altman
style agreement, and Krippendorff's alpha (the ``krippendorff`` package) with a bootstrap interval."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import stats as sps

from .anova import two_way_ss
from .stattests import finite


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


def krippendorff_alpha(x: np.ndarray, level: str = "interval") -> float | None:
    """Krippendorff's alpha of a units x raters matrix (NaN: not rated), from the ``krippendorff``
    package, at the ``level`` of measurement: "nominal", "ordinal" (the level of a 0-6 CTRS item:
    ranks, not distances), "interval" or "ratio". Units with fewer than two ratings are not
    pairable and are left out; None when fewer than two pairable units or no expected
    disagreement (a single value throughout)."""
    import krippendorff

    x = np.asarray(x, float)
    x = x[np.isfinite(x).sum(axis=1) >= 2]
    if len(x) < 2 or np.unique(x[np.isfinite(x)]).size < 2:
        return None
    return finite(krippendorff.alpha(reliability_data=x.T, level_of_measurement=level))


def _boot_ci(x: np.ndarray, level: str, alpha: float, n_boot: int, seed: int) -> list[float | None] | None:
    """A percentile bootstrap interval of Krippendorff's alpha over the units (targets)."""
    rng = np.random.default_rng(seed)
    boots = [krippendorff_alpha(x[rng.integers(0, len(x), len(x))], level) for _ in range(n_boot)]
    boots = [b for b in boots if b is not None]
    return [finite(float(np.quantile(boots, alpha / 2))), finite(float(np.quantile(boots, 1 - alpha / 2)))] if boots else None


def inter_rater(x: np.ndarray, alpha: float = 0.05, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Agreement between raters (judges of a panel, or a judge and humans) on the same targets:
    ICC(2,1) with its interval, and Krippendorff's alpha at the interval and the ordinal level,
    each with a percentile bootstrap interval over targets."""
    x = np.asarray(x, float)
    res = icc(x, alpha)
    for level, key in (("interval", "kripp"), ("ordinal", "kripp_ordinal")):
        res[f"{key}_alpha"] = krippendorff_alpha(x, level)
        ok = res[f"{key}_alpha"] is not None and len(x) >= 3
        res[f"{key}_ci"] = _boot_ci(x, level, alpha, n_boot, seed) if ok else None
    return res
