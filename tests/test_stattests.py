"""Statistics checked against published reference values.

Reference outputs are R 4.x on R's built-in datasets, typed in as constants:
* ``sleep`` (Cushny and Peebles; R datasets::sleep), paired by ID:
  ``t.test(extra[group==2], extra[group==1], paired=TRUE)`` gives t = 4.0621, df = 9,
  p-value = 0.002833, 95% CI 0.7001142 2.4598858, mean difference 1.58.
  ``wilcox.test(..., paired=TRUE)`` gives V = 45, p-value = 0.009091 (normal approximation with
  continuity correction, because of ties and one zero difference).
* ``RoundingTimes`` (Hollander and Wolfe, the example of R's ?friedman.test):
  ``friedman.test(RoundingTimes)`` gives Friedman chi-squared = 11.143, df = 2, p-value = 0.003805.
* Shrout and Fleiss (1979), Table 2 (6 targets x 4 judges): ICC(2,1) = 0.29, ICC(2,4) = 0.62;
  R's ``psych::ICC`` on that table (its documented example) gives the 95% bounds 0.019 to 0.76
  (single random raters) and 0.071 to 0.93 (average random raters).
* ``p.adjust(c(0.01, 0.02, 0.03, 0.04, 0.05), "holm")`` = 0.05 0.08 0.09 0.09 0.09;
  ``p.adjust(c(0.01, 0.04, 0.03, 0.005), "BH")`` = 0.02 0.04 0.04 0.02.
* Krippendorff (2011), "Computing Krippendorff's alpha-reliability", the worked example (4 coders,
  12 units, missing values): alpha = 0.743 nominal, 0.849 interval.
* ``power.t.test(delta = 0.5, sd = 1, power = 0.8, type = "paired")`` gives n = 33.36713 (the
  classic "34 pairs for d_z = 0.5"); ``pwr::pwr.t.test(n = 30, power = 0.8, type = "paired")``
  gives d = 0.5292, and with n = 10, d = 0.9960. statsmodels' TTestPower, a second
  implementation, is checked beside them.
"""

import math

import numpy as np
import pytest

from cbtpipe.report import fmt
from cbtpipe.stats import minimum_detectable_dz
from cbtpipe.stats.anova import friedman, rm_anova
from cbtpipe.stats.mixed import mixed_arm_by_model
from cbtpipe.stats.reliability import agreement, icc, inter_rater, krippendorff_alpha
from cbtpipe.stats.stattests import p_adjust, paired_comparison, paired_power, rank_biserial_paired

SLEEP_1 = [0.7, -1.6, -0.2, -1.2, -0.1, 3.4, 3.7, 0.8, 0.0, 2.0]
SLEEP_2 = [1.9, 0.8, 1.1, 0.1, -0.1, 4.4, 5.5, 1.6, 4.6, 3.4]

ROUNDING = np.array(
    [
        [5.40, 5.50, 5.55],
        [5.85, 5.70, 5.75],
        [5.20, 5.60, 5.50],
        [5.55, 5.50, 5.40],
        [5.90, 5.85, 5.70],
        [5.45, 5.55, 5.60],
        [5.40, 5.40, 5.35],
        [5.45, 5.50, 5.35],
        [5.25, 5.15, 5.00],
        [5.85, 5.80, 5.70],
        [5.25, 5.20, 5.10],
        [5.65, 5.55, 5.45],
        [5.60, 5.35, 5.45],
        [5.05, 5.00, 4.95],
        [5.50, 5.50, 5.40],
        [5.45, 5.55, 5.50],
        [5.55, 5.55, 5.35],
        [5.45, 5.50, 5.55],
        [5.50, 5.45, 5.25],
        [5.65, 5.60, 5.40],
        [5.70, 5.65, 5.55],
        [6.30, 6.30, 6.25],
    ]
)

SHROUT_FLEISS = np.array([[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]], float)


def test_paired_t_matches_r_sleep():
    r = paired_comparison(SLEEP_2, SLEEP_1, n_boot=500, seed=1)
    assert r["n"] == 10 and r["df"] == 9
    assert r["t"] == pytest.approx(4.0621, abs=1e-4)
    assert r["p_t"] == pytest.approx(0.002833, abs=1e-6)
    assert r["ci_t"][0] == pytest.approx(0.7001142, abs=1e-6)
    assert r["ci_t"][1] == pytest.approx(2.4598858, abs=1e-6)
    assert r["mean_diff"] == pytest.approx(1.58)
    assert r["cohens_dz"] == pytest.approx(1.58 / np.std(np.subtract(SLEEP_2, SLEEP_1), ddof=1))


def test_wilcoxon_matches_r_sleep():
    r = paired_comparison(SLEEP_2, SLEEP_1, n_boot=200)
    assert r["wilcoxon_V"] == pytest.approx(45)
    assert r["p_wilcoxon"] == pytest.approx(0.009091, abs=1e-5)
    assert any("zero difference" in n for n in r["notes"])
    assert r["rank_biserial"] == pytest.approx(1.0)


def test_bootstrap_ci_brackets_the_mean_and_is_seeded():
    a = paired_comparison(SLEEP_2, SLEEP_1, n_boot=1000, seed=3)
    b = paired_comparison(SLEEP_2, SLEEP_1, n_boot=1000, seed=3)
    assert a["ci_boot"] == b["ci_boot"]
    assert a["ci_boot"][0] < a["mean_diff"] < a["ci_boot"][1]


def test_friedman_matches_r_rounding_times():
    r = friedman(ROUNDING)
    assert r["chi2"] == pytest.approx(11.143, abs=1e-3)
    assert r["df"] == 2
    assert r["p"] == pytest.approx(0.003805, abs=1e-6)


def test_rm_anova_matches_statsmodels():
    import pandas as pd
    from statsmodels.stats.anova import AnovaRM

    n, k = ROUNDING.shape
    df = pd.DataFrame({"s": np.repeat(np.arange(n), k), "c": np.tile(np.arange(k), n), "y": ROUNDING.ravel()})
    ref = AnovaRM(df, "y", "s", within=["c"]).fit().anova_table
    r = rm_anova(ROUNDING)
    assert r["F"] == pytest.approx(ref["F Value"].iloc[0], rel=1e-9)
    assert r["p"] == pytest.approx(ref["Pr > F"].iloc[0], rel=1e-9)
    assert (r["df1"], r["df2"]) == (2, 42)
    assert 0.5 <= r["gg_epsilon"] <= 1 and r["p_gg"] >= r["p"]


def test_greenhouse_geisser_epsilon():
    """Against the textbook formula on the double-centred covariance (Greenhouse & Geisser 1959),
    computed independently of the contrast-based one used by rm_anova."""
    from cbtpipe.stats.anova import greenhouse_geisser

    rng = np.random.default_rng(3)
    y = rng.normal(size=(12, 4)) @ np.diag([1, 2, 3, 4]) + rng.normal(size=(12, 1))
    s = np.cov(y, rowvar=False)
    k = s.shape[0]
    sd = s - s.mean(axis=0) - s.mean(axis=1)[:, None] + s.mean()
    ref = np.trace(sd) ** 2 / ((k - 1) * (sd**2).sum())
    assert greenhouse_geisser(y) == pytest.approx(ref, rel=1e-10)
    assert 1 / (k - 1) <= greenhouse_geisser(y) <= 1
    assert greenhouse_geisser(y[:, :2]) == 1.0
    # compound symmetry (equal variances, equal covariances): sphericity holds, epsilon is 1
    cs = rng.normal(size=(2000, 1)) + rng.normal(size=(2000, 3))
    assert greenhouse_geisser(cs) == pytest.approx(1.0, abs=0.01)


def test_icc_matches_shrout_fleiss():
    r = icc(SHROUT_FLEISS)
    assert r["icc2_1"] == pytest.approx(0.29, abs=0.005)
    assert r["icc2_k"] == pytest.approx(0.62, abs=0.005)
    assert r["ci2_1"] == pytest.approx([0.019, 0.761], abs=0.0005)
    assert r["ci2_k"] == pytest.approx([0.071, 0.927], abs=0.0005)
    assert "too wide" in r["notes"][0]  # six targets tell little about the level of agreement


def test_p_adjust_matches_r():
    assert p_adjust([0.01, 0.02, 0.03, 0.04, 0.05], "holm") == pytest.approx([0.05, 0.08, 0.09, 0.09, 0.09])
    assert p_adjust([0.01, 0.04, 0.03, 0.005], "fdr_bh") == pytest.approx([0.02, 0.04, 0.04, 0.02])
    assert p_adjust([None, 0.5], "holm") == [None, 0.5]


@pytest.mark.parametrize(
    "a,b,note",
    [
        ([], [], "no complete pairs"),
        ([3.0], [1.0], "fewer than 2 pairs"),
        ([2.0, 3.0, 4.0], [1.0, 2.0, 3.0], "zero variance"),
        ([1.0, 2.0], [1.0, 2.0], "all differences are zero"),
        ([1.0, float("nan"), 3.0], [0.0, 1.0, float("nan")], "fewer than 2 pairs"),
    ],
)
def test_edge_cases_never_give_nan(a, b, note):
    r = paired_comparison(a, b)
    assert any(note in n for n in r["notes"]), r["notes"]
    for v in r.values():
        if isinstance(v, float):
            assert math.isfinite(v)
        if isinstance(v, list):
            assert all(x is None or (isinstance(x, str) or math.isfinite(x)) for x in v)


def test_degenerate_inputs():
    assert friedman(np.ones((5, 3)))["chi2"] is None
    assert friedman(np.ones((5, 2)))["p"] is None
    assert rm_anova(np.ones((1, 3)))["F"] is None
    assert icc(np.ones((4, 2)))["icc2_1"] is None
    assert rank_biserial_paired(np.zeros(3)) is None
    assert agreement([], [])["mad"] is None
    assert fmt(float("nan")) == "—" and fmt(None) == "—"


def test_minimum_detectable_effect_matches_r_and_statsmodels():
    from statsmodels.stats.power import TTestPower

    assert minimum_detectable_dz(30) == pytest.approx(0.5292, abs=1e-4)
    assert minimum_detectable_dz(10) == pytest.approx(0.9960, abs=1e-4)
    # n = 33.367 pairs give exactly 80% power at d_z = 0.5: 33 fall short, 34 suffice
    assert paired_power(0.5, 33) < 0.8 < paired_power(0.5, 34)
    for n in (3, 8, 30, 120):
        assert minimum_detectable_dz(n, 0.05, 0.9) == pytest.approx(TTestPower().solve_power(nobs=n, alpha=0.05, power=0.9), abs=1e-5)
    assert minimum_detectable_dz(2) is None


def _ols_reference(rows):
    """A second, independent implementation of the mixed model's interaction test: with complete,
    balanced data and a random intercept per patient, REML's residual variance equals the mean
    square error of OLS with a dummy per patient, and the Wald chi-squared of the arm x model
    terms equals that OLS's F test of the same terms times their number."""
    pats = sorted({r["patient"] for r in rows})
    models = sorted({r["model"] for r in rows})[1:]

    def design(with_interaction):
        out = []
        for r in rows:
            cbt = float(r["arm"] == "cbt")
            x = [float(r["patient"] == p) for p in pats] + [cbt] + [float(r["model"] == m) for m in models]
            out.append(x + ([cbt * float(r["model"] == m) for m in models] if with_interaction else []))
        return np.array(out)

    y = np.array([float(r["total"]) for r in rows])
    rss = {}
    for full in (True, False):
        X = design(full)
        b = np.linalg.lstsq(X, y, rcond=None)[0]
        rss[full] = float(((y - X @ b) ** 2).sum())
        if full:
            dfe = len(y) - X.shape[1]
            inter = b[-len(models) :]
    q = len(models)
    return {"chi2": (rss[False] - rss[True]) / q / (rss[True] / dfe) * q, "mse": rss[True] / dfe, "interaction": inter}


def test_mixed_model_matches_an_independent_implementation(root):
    """tests/data/mixed_arm_model.csv: 12 patients x 3 models x 2 arms, simulated once (numpy
    default_rng(1): a patient intercept with SD 2, noise with SD 1.5, CBT +2 and +1.5 more for m2)
    and committed. Reference values from _ols_reference (chi2 10.3211 on 2 df, residual variance
    1.80472)."""
    import csv

    rows = list(csv.DictReader((root / "tests/data/mixed_arm_model.csv").open()))
    r = mixed_arm_by_model(
        [x["patient"] for x in rows], [x["model"] for x in rows], [x["arm"] for x in rows], [float(x["total"]) for x in rows]
    )
    ref = _ols_reference(rows)
    assert ref["chi2"] == pytest.approx(10.3211, abs=1e-3) and ref["mse"] == pytest.approx(1.80472, abs=1e-4)
    assert r["converged"] and r["interaction"]["df"] == 2
    assert r["interaction"]["chi2"] == pytest.approx(ref["chi2"], rel=1e-5)
    assert r["residual_variance"] == pytest.approx(ref["mse"], rel=1e-5)
    fixed = {f["term"]: f["estimate"] for f in r["fixed"]}
    assert [fixed[t] for t in r["interaction"]["terms"]] == pytest.approx(list(ref["interaction"]), abs=1e-6)
    # the marginal means are the cell means (balanced data); the arm effect within m2 is theirs apart
    cell = {
        (x["arm"], x["model"]): np.mean([float(y["total"]) for y in rows if (y["arm"], y["model"]) == (x["arm"], x["model"])]) for x in rows
    }
    emm = {(e["arm"], e["model"]): e["estimate"] for e in r["emm"]}
    assert emm == pytest.approx(cell, abs=1e-6)
    eff = {e["model"]: e for e in r["arm_effects"]}
    assert eff["m2"]["estimate"] == pytest.approx(cell[("cbt", "m2")] - cell[("instruct", "m2")], abs=1e-6)
    assert eff["average over models"]["estimate"] == pytest.approx(
        np.mean([cell[("cbt", m)] - cell[("instruct", m)] for m in ("m1", "m2", "m3")])
    )
    assert r["interaction"]["p"] < 0.01


def test_mixed_model_needs_two_models_and_both_arms():
    r = mixed_arm_by_model(["p1", "p2", "p3"] * 2, ["m1"] * 6, ["cbt"] * 3 + ["instruct"] * 3, [1, 2, 3, 2, 3, 5])
    assert "needs at least two models" in r["notes"][0] and "interaction" not in r


NA = float("nan")
# Krippendorff's worked example: units (rows) x coders A-D (columns), NaN where a coder gave none
KRIPP = np.array(
    [
        [1, 2, 3, 3, 2, 1, 4, 1, 2, NA, NA, NA],
        [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, NA, 3],
        [NA, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, NA],
        [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, NA],
    ]
).T


def test_krippendorff_alpha_matches_the_worked_example():
    assert krippendorff_alpha(KRIPP, "nominal") == pytest.approx(0.743, abs=5e-4)
    assert krippendorff_alpha(KRIPP, "ordinal") == pytest.approx(0.815, abs=5e-4)
    assert krippendorff_alpha(KRIPP, "interval") == pytest.approx(0.849, abs=5e-4)
    # unit 12 has one rating (not pairable): dropping it changes nothing
    assert krippendorff_alpha(KRIPP[:11]) == pytest.approx(krippendorff_alpha(KRIPP))
    assert krippendorff_alpha(np.ones((5, 2))) is None and krippendorff_alpha(KRIPP[:1]) is None
    r = inter_rater(KRIPP, n_boot=300, seed=1)
    assert r["kripp_ci"][0] < r["kripp_alpha"] <= r["kripp_ci"][1] and r["n"] == 8  # ICC uses complete units only
    assert r["kripp_ordinal_alpha"] == pytest.approx(0.815, abs=5e-4)
    assert r["kripp_ordinal_ci"][0] < r["kripp_ordinal_alpha"] <= r["kripp_ordinal_ci"][1]
