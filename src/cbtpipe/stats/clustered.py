"""Tests and intervals for sessions clustered by patient: McNemar's test for clustered pairs
(Durkalski et al. 2003) and cluster-bootstrap intervals of ratios and paired differences, which
resample patients."""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.stats as sps

from .stattests import finite


def mcnemar(b: int, c: int) -> dict[str, Any]:
    """McNemar's test on the discordant pairs ``b`` (first yes, second no) and ``c`` (the reverse):
    the chi-square with continuity correction (as R's mcnemar.test) and the exact binomial p."""
    out: dict[str, Any] = {"b": int(b), "c": int(c), "chi2": None, "p": None, "p_exact": None, "notes": []}
    n = b + c
    if n == 0:
        out["notes"].append("no discordant pairs: McNemar's test undefined")
        return out
    chi2 = (abs(b - c) - 1) ** 2 / n
    out.update(chi2=finite(chi2), p=finite(sps.chi2.sf(chi2, 1)), p_exact=finite(sps.binomtest(int(b), int(n), 0.5).pvalue))
    if n < 10:
        out["notes"].append(f"only {n} discordant pairs: use the exact p")
    return out


def clustered_mcnemar(pairs: dict[str, tuple[int, int]]) -> dict[str, Any]:
    """McNemar's test for clustered matched pairs (Durkalski, Palesch, Lipsitz and Rust 2003):
    ``pairs`` maps a cluster (patient) to its discordant counts (b: first yes and second no, c:
    the reverse). chi2 = (sum b_k - c_k)^2 / sum (b_k - c_k)^2 on 1 df; with one pair per cluster
    it is McNemar's statistic without continuity correction."""
    d = np.array([b - c for b, c in pairs.values()], float)
    out: dict[str, Any] = {
        "b": int(sum(b for b, _ in pairs.values())),
        "c": int(sum(c for _, c in pairs.values())),
        "clusters": len(pairs),
        "clusters_discordant": int(np.count_nonzero(d)),
        "chi2": None,
        "p": None,
        "notes": [],
    }
    den = float((d**2).sum())
    if den == 0:
        out["notes"].append("no discordant pairs: the test is undefined")
        return out
    chi2 = float(d.sum()) ** 2 / den
    out.update(chi2=finite(chi2), p=finite(sps.chi2.sf(chi2, 1)))
    if out["clusters_discordant"] < 10:
        out["notes"].append(f"only {out['clusters_discordant']} patient(s) with discordant pairs: the chi-square approximation is rough")
    return out


def _boot(num: np.ndarray, den: np.ndarray, *, n_boot: int, seed: int, alpha: float) -> dict[str, Any]:
    """sum(num) / sum(den) over clusters, with a percentile CI from resampling the clusters with
    replacement (no CI from fewer than 2 clusters)."""
    out: dict[str, Any] = {"estimate": None, "clusters": int(num.size), "ci": [None, None]}
    if not num.size:
        return out
    out["estimate"] = finite(num.sum() / den.sum())
    if num.size >= 2:
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, num.size, size=(n_boot, num.size))
        boots = num[idx].sum(axis=1) / den[idx].sum(axis=1)
        out["ci"] = [finite(np.quantile(boots, alpha / 2)), finite(np.quantile(boots, 1 - alpha / 2))]
    return out


def cluster_ratio(groups: dict[str, tuple[float, float]], *, n_boot: int, seed: int, alpha: float) -> dict[str, Any]:
    """A rate or mean over sessions (sum of values / number of sessions), clusters (patients)
    resampled for the CI. ``groups`` maps a cluster to its (sum of values, sessions)."""
    keys = sorted(k for k, (_, d) in groups.items() if d > 0)
    num = np.array([groups[k][0] for k in keys], float)
    den = np.array([groups[k][1] for k in keys], float)
    return {"num": finite(num.sum()), "den": finite(den.sum())} | _boot(num, den, n_boot=n_boot, seed=seed, alpha=alpha)


def cluster_diff(groups: dict[str, list[tuple[float, float]]], *, n_boot: int, seed: int, alpha: float) -> dict[str, Any]:
    """Mean of paired differences a - b over pairs, clusters (patients) resampled for the CI.
    ``groups`` maps a cluster to its pairs (a, b)."""
    keys = sorted(k for k, v in groups.items() if v)
    sums = np.array([sum(a - b for a, b in groups[k]) for k in keys], float)
    counts = np.array([len(groups[k]) for k in keys], float)
    return {"pairs": int(counts.sum())} | _boot(sums, counts, n_boot=n_boot, seed=seed, alpha=alpha)
