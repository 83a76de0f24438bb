"""The linear mixed model of a session's score over every session: arm x model (+ position, + arm x
risk), a random intercept per patient (REML, statsmodels MixedLM)."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import stats as sps

from .stattests import finite


def _frame(patient, model, arm, y, ref_arm, position, risk) -> tuple[Any, dict[str, Any]]:
    """The sessions with a score as a data frame, and the result's header (counts, levels)."""
    import pandas as pd

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
    return df, res


def _design(df: Any, res: dict[str, Any]) -> str:
    """Makes the factors categorical and returns the fixed part of the formula: position and the
    arm x risk term only where sessions come from more than one position or stratum."""
    import pandas as pd

    df["model"] = pd.Categorical(df["model"], categories=res["models"])
    df["arm"] = pd.Categorical(df["arm"], categories=res["arms"])
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
    return rhs


class _Fit:
    """A fitted model's fixed effects: estimates of linear combinations with their standard error,
    Wald interval and p, and Wald tests of groups of terms."""

    def __init__(self, fit: Any, alpha: float):
        self.names = list(fit.fe_params.index)
        self.beta = fit.fe_params.to_numpy()
        self.cov = fit.cov_params().loc[self.names, self.names].to_numpy()
        self.z = sps.norm.ppf(1 - alpha / 2)

    def est(self, x: np.ndarray) -> dict[str, Any]:
        m, se = float(x @ self.beta), float(np.sqrt(max(0.0, x @ self.cov @ x)))
        p = float(2 * sps.norm.sf(abs(m) / se)) if se > 0 else None
        return {"estimate": finite(m), "se": finite(se), "ci": [finite(m - self.z * se), finite(m + self.z * se)], "p": finite(p)}

    def wald(self, idx: list[int]) -> dict[str, Any]:
        b, v = self.beta[idx], self.cov[np.ix_(idx, idx)]
        chi2 = float(b @ np.linalg.solve(v, b))
        return {
            "terms": [self.names[i] for i in idx],
            "chi2": finite(chi2),
            "df": len(idx),
            "p": finite(float(sps.chi2.sf(chi2, len(idx)))),
        }

    def terms(self, *parts: str) -> list[int]:
        return [i for i, t in enumerate(self.names) if all(p in t for p in parts)]


def _marginal_means(f: _Fit, rhs: str, res: dict[str, Any], ref_arm: str) -> None:
    """Estimated marginal means of every arm and model, and the arm effects within each model,
    averaged over models and within each risk stratum: each a contrast of design rows averaged
    with equal weights over what it does not fix."""
    import pandas as pd
    import patsy

    models, arms, positions, risks = res["models"], res["arms"], res["positions"], res["risk_strata"]
    grid = pd.DataFrame(
        [(a, m, p, r) for m in models for a in arms for p in positions for r in risks], columns=["arm", "model", "position", "risk"]
    )
    for col, cats in (("arm", arms), ("model", models), ("position", positions), ("risk", risks)):
        grid[col] = pd.Categorical(grid[col], categories=cats)
    dm = patsy.dmatrix(rhs, grid)
    if list(dm.design_info.column_names) != f.names:  # the same coding as the fit, column for column
        raise RuntimeError(f"mixed model: cell design {dm.design_info.column_names} differs from the fit's {f.names}")
    X = np.asarray(dm)

    def row(**match: str) -> np.ndarray:
        sel = np.ones(len(grid), bool)
        for col, v in match.items():
            sel &= (grid[col] == v).to_numpy()
        return X[sel].mean(axis=0)

    res["emm"] = [{"arm": a, "model": m, **f.est(row(arm=a, model=m))} for m in models for a in arms]
    res["arm_effects"], res["arm_effects_by_risk"] = [], []
    for a in arms[1:]:
        for m in models:
            res["arm_effects"].append({"arm": a, "model": m, **f.est(row(arm=a, model=m) - row(arm=ref_arm, model=m))})
        res["arm_effects"].append({"arm": a, "model": "average over models", **f.est(row(arm=a) - row(arm=ref_arm))})
        if len(risks) > 1:
            for r in risks:
                res["arm_effects_by_risk"].append({"arm": a, "risk": r, **f.est(row(arm=a, risk=r) - row(arm=ref_arm, risk=r))})


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

    import statsmodels.formula.api as smf

    df, res = _frame(patient, model, arm, y, ref_arm, position, risk)
    if len(res["models"]) < 2 or len(res["arms"]) < 2 or ref_arm not in set(df["arm"]):
        res["notes"].append(f"needs at least two models and the {ref_arm} arm beside another")
        return res
    if res["n_patients"] < 2:
        res["notes"].append("needs at least 2 patients")
        return res
    if res["n_patients"] < 5:
        res["notes"].append(f"{res['n_patients']} patients: the patient variance, and with it every standard error, is poorly estimated")
    rhs = _design(df, res)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit = smf.mixedlm(f"y ~ {rhs}", df, groups=df["patient"]).fit(reml=True)
    res["notes"] += sorted({str(w.message).split("\n")[0] for w in caught})
    f = _Fit(fit, alpha)
    res["fixed"] = [{"term": t, **f.est(np.eye(len(f.names))[i])} for i, t in enumerate(f.names)]
    res["interaction"] = f.wald(f.terms("C(arm)", "C(model)"))
    risk_terms = f.terms("C(arm)", "C(risk)")
    res["risk_interaction"] = f.wald(risk_terms) if risk_terms else None
    _marginal_means(f, rhs, res, ref_arm)
    res["patient_variance"] = finite(float(fit.cov_re.iloc[0, 0]))
    res["residual_variance"] = finite(float(fit.scale))
    res["converged"] = bool(fit.converged)
    return res
