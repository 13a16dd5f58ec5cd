"""train/evaluate.py: values against scikit-learn and hand computation, calibration,
thresholds, and the written report."""

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import stats
from sklearn.metrics import (
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    recall_score,
    roc_auc_score,
)

from medray.train.evaluate import (
    apply_temperature,
    auprc,
    auroc_with_ci,
    baseline_metrics,
    brier_score,
    calibration_slope_intercept,
    challenge_score,
    choose_threshold,
    classification_metrics,
    evaluate_model_outputs,
    evaluate_split,
    expected_calibration_error,
    fit_temperature,
    mean_sd,
    net_benefit,
    write_report,
)

# Binary scores with ties inside and across classes.
Y_BIN = np.array([0, 0, 1, 1, 0, 1, 0, 1, 1, 0, 1, 0])
P_BIN = np.array([0.1, 0.4, 0.4, 0.8, 0.3, 0.3, 0.6, 0.6, 0.9, 0.1, 0.55, 0.2])

# Three classes; rounding to one decimal creates ties in every column.
Y_MC = np.array([0, 1, 2, 2, 1, 0, 0, 2, 1, 1, 2, 0])
P_MC = np.array([
    [0.6, 0.2, 0.2], [0.2, 0.6, 0.2], [0.1, 0.3, 0.6], [0.3, 0.3, 0.4],
    [0.4, 0.4, 0.2], [0.3, 0.3, 0.4], [0.5, 0.1, 0.4], [0.2, 0.2, 0.6],
    [0.1, 0.8, 0.1], [0.3, 0.4, 0.3], [0.2, 0.6, 0.2], [0.4, 0.3, 0.3],
])


def calibrated_logits(n, n_classes, rng, scale=2.0):
    """Logits and labels drawn from softmax(logits): calibrated by construction."""
    logits = rng.normal(scale=scale, size=(n, n_classes))
    probs = apply_temperature(logits, 1.0)
    cumulative = probs.cumsum(axis=1)
    labels = (rng.random((n, 1)) > cumulative).sum(axis=1)
    return logits, np.minimum(labels, n_classes - 1)


# --- AUROC ------------------------------------------------------------------------------


def test_binary_auroc_matches_sklearn_with_ties():
    result = auroc_with_ci(Y_BIN, P_BIN, n_boot=0)
    assert result["value"] == pytest.approx(roc_auc_score(Y_BIN, P_BIN), abs=1e-12)
    # (N, 2) probabilities give the same value as the P(class 1) vector.
    two_col = np.stack([1 - P_BIN, P_BIN], axis=1)
    assert auroc_with_ci(Y_BIN, two_col, n_boot=0)["value"] == pytest.approx(result["value"])


def test_multiclass_auroc_matches_sklearn_ovr_macro_with_ties():
    expected = roc_auc_score(Y_MC, P_MC, multi_class="ovr", average="macro")
    assert auroc_with_ci(Y_MC, P_MC, n_boot=0)["value"] == pytest.approx(expected, abs=1e-12)


def test_auroc_matches_sklearn_on_random_tied_scores():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 500)
    p = np.round(rng.random(500) * 0.6 + 0.3 * y, 1)
    assert auroc_with_ci(y, p, n_boot=0)["value"] == pytest.approx(roc_auc_score(y, p))


def test_bootstrap_ci_contains_estimate_and_narrows_with_more_data():
    rng = np.random.default_rng(0)

    def ci(n):
        y = rng.integers(0, 2, n)
        p = rng.random(n) + 0.5 * y
        return auroc_with_ci(y, p, n_boot=500, seed=1)

    small, large = ci(100), ci(4000)
    for r in (small, large):
        assert r["low"] <= r["value"] <= r["high"]
    assert (large["high"] - large["low"]) < 0.5 * (small["high"] - small["low"])


def test_bootstrap_is_seeded_and_fast():
    import time

    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 1000)
    p = rng.random(1000) + 0.3 * y
    start = time.perf_counter()
    first = auroc_with_ci(y, p, n_boot=1000, seed=7)
    assert time.perf_counter() - start < 1.0
    assert auroc_with_ci(y, p, n_boot=1000, seed=7) == first


def test_multiclass_bootstrap_ci_contains_estimate():
    r = auroc_with_ci(Y_MC, P_MC, n_boot=300, seed=0)
    assert r["low"] <= r["value"] <= r["high"]


def test_single_class_gives_none_auroc_without_exception():
    assert auroc_with_ci(np.ones(5, int), np.linspace(0, 1, 5)) == {
        "value": None, "low": None, "high": None,
    }
    result = evaluate_split(np.zeros(6, int), np.random.default_rng(0).normal(size=(6, 2)),
                            ["neg", "pos"], n_boot=50)
    assert result["auroc"] is None and result["auroc_ci"] == [None, None]
    assert result["sensitivity"] is None  # no positives: undefined
    assert result["specificity"] is not None
    json.dumps(result)


# --- Classification metrics ---------------------------------------------------------------


def test_binary_metrics_hand_computed():
    # TP=8, FN=2, FP=3, TN=7, as P(class 1) just above/below the 0.5 default.
    y = np.array([1] * 10 + [0] * 10)
    p = np.array([0.9] * 8 + [0.2] * 2 + [0.7] * 3 + [0.1] * 7)
    m = classification_metrics(y, p, class_names=["healthy", "disease"])
    assert m["confusion_matrix"] == [[7, 3], [2, 8]]
    assert m["sensitivity"] == pytest.approx(8 / 10)
    assert m["specificity"] == pytest.approx(7 / 10)
    assert m["ppv"] == pytest.approx(8 / 11)
    assert m["npv"] == pytest.approx(7 / 9)
    assert m["f1"] == pytest.approx(2 * 8 / (2 * 8 + 3 + 2))
    assert m["accuracy"] == pytest.approx(15 / 20)
    assert m["threshold"] == 0.5
    assert m["per_class"]["disease"] == {
        "precision": pytest.approx(8 / 11), "recall": pytest.approx(0.8),
        "f1": pytest.approx(16 / 21), "support": 10,
    }


def test_binary_metrics_match_sklearn_at_threshold():
    threshold = 0.4
    pred = (P_BIN >= threshold).astype(int)
    m = classification_metrics(Y_BIN, P_BIN, threshold=threshold)
    assert m["confusion_matrix"] == confusion_matrix(Y_BIN, pred).tolist()
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(Y_BIN, pred))
    assert m["f1"] == pytest.approx(f1_score(Y_BIN, pred))
    assert m["sensitivity"] == pytest.approx(recall_score(Y_BIN, pred))
    assert m["specificity"] == pytest.approx(recall_score(Y_BIN, pred, pos_label=0))


def test_multiclass_metrics_match_sklearn():
    pred = P_MC.argmax(axis=1)
    m = classification_metrics(Y_MC, P_MC, class_names=["a", "b", "c"])
    assert m["confusion_matrix"] == confusion_matrix(Y_MC, pred).tolist()
    assert m["accuracy"] == pytest.approx(np.mean(pred == Y_MC))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(Y_MC, pred))
    assert m["sensitivity"] == pytest.approx(recall_score(Y_MC, pred, average="macro"))
    assert m["f1"] == pytest.approx(f1_score(Y_MC, pred, average="macro"))
    per_class_f1 = f1_score(Y_MC, pred, average=None)
    for name, value in zip("abc", per_class_f1):
        assert m["per_class"][name]["f1"] == pytest.approx(value)
    # Macro specificity from the one-vs-rest confusion matrices.
    cm = confusion_matrix(Y_MC, pred)
    spec = [(cm.sum() - cm[k].sum() - cm[:, k].sum() + cm[k, k]) / (cm.sum() - cm[k].sum())
            for k in range(3)]
    assert m["specificity"] == pytest.approx(np.mean(spec))
    assert m["threshold"] is None
    with pytest.raises(ValueError, match="binary"):
        classification_metrics(Y_MC, P_MC, threshold=0.5)


def test_zero_division_is_none_without_warnings():
    y = np.array([0, 0, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.4])  # nothing reaches 0.5: no positive calls
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = classification_metrics(y, p)
    assert m["ppv"] is None
    assert m["per_class"]["1"]["precision"] is None
    assert m["sensitivity"] == 0.0 and m["f1"] == 0.0  # defined: 0 / 2
    assert m["npv"] == pytest.approx(0.5)


# --- Thresholds -------------------------------------------------------------------------


def test_youden_threshold_hand_computed():
    y = np.array([0, 0, 0, 1, 0, 0, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
    # J at 0.7 = 2/3 + 1 - 1 = 0.667; at 0.4 = 1 + 3/5 - 1 = 0.6; every other cut is lower.
    assert choose_threshold(y, p, "youden") == pytest.approx(0.7)


def test_target_sensitivity_threshold_reaches_target_on_val():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 400)
    p = np.clip(rng.normal(0.4 + 0.2 * y, 0.15), 0, 1)
    t = choose_threshold(y, p, "target_sensitivity", target_sensitivity=0.9)
    assert np.mean(p[y == 1] >= t) >= 0.9
    # It is the highest such threshold: the next score up misses the target.
    higher = np.min(p[p > t])
    assert np.mean(p[y == 1] >= higher) < 0.9


def test_argmax_threshold_gives_the_most_probable_class():
    y = np.array([0, 0, 1, 1])
    logits = np.array([[2.0, -1.0], [0.1, 0.0], [0.0, 0.3], [-1.0, 1.0]])
    out = evaluate_model_outputs((y, logits), (y, logits), ["no", "yes"], threshold_method="argmax", n_boot=0)
    assert out["threshold"] == 0.5
    assert out["test"]["accuracy"] == 1.0  # argmax of every row is its label


P_SIX = np.array([0.9, 0.8, 0.7, 0.6, 0.2, 0.1])


def test_challenge_threshold_maximises_min_of_sensitivity_and_ppv_hand_computed():
    # Scores descending: 0.9 (pos), 0.8 (neg), 0.7 (pos), 0.6 (pos), 0.2 (neg), 0.1 (neg).
    y = np.array([1, 0, 1, 1, 0, 0])
    p = np.array([0.9, 0.8, 0.7, 0.6, 0.2, 0.1])
    # >= 0.9: sens 1/3, PPV 1; >= 0.8: 1/3, 1/2; >= 0.7: 2/3, 2/3; >= 0.6: 1, 3/4 -> min 3/4 wins.
    assert choose_threshold(y, p, "challenge") == 0.6
    assert challenge_score(0.75, 1.0) == 0.75 and challenge_score(None, 0.5) is None


def test_auprc_is_average_precision_and_baselines_score_the_rows_they_cover():
    y = np.array([1, 0, 1, 1, 0, 0])
    p = np.array([0.9, 0.8, 0.7, 0.6, 0.2, 0.1])
    # Precision at each positive, in rank order: 1/1, 2/3, 3/4 -> mean 0.8056.
    assert auprc(y, p) == pytest.approx((1 + 2 / 3 + 3 / 4) / 3)
    assert auprc(np.zeros(3, int), np.ones(3)) is None
    # A severity score in points, missing (NaN) for two patients: ranked on the other four.
    scores = np.array([14.0, 3.0, np.nan, 9.0, np.nan, 2.0])
    out = baseline_metrics(y, scores, n_boot=200, seed=0)
    assert out["n"] == 4 and out["auroc"] == pytest.approx(roc_auc_score([1, 0, 1, 0], [14, 3, 9, 2]))
    assert out["auprc"] == pytest.approx(1.0) and out["auroc_ci"][0] <= out["auroc"] <= out["auroc_ci"][1]
    assert baseline_metrics(y, np.full(6, np.nan))["auroc"] is None


def test_binary_splits_report_auprc_and_the_challenge_score_at_the_threshold():
    y = np.array([1, 0, 1, 1, 0, 0])
    logits = np.log(np.stack([1 - P_SIX, P_SIX], axis=1))
    out = evaluate_split(y, logits, ["lived", "died"], threshold=0.6, n_boot=0)
    assert out["auprc"] == pytest.approx((1 + 2 / 3 + 3 / 4) / 3)
    assert out["challenge_score"] == pytest.approx(min(out["sensitivity"], out["ppv"])) == pytest.approx(0.75)


def test_threshold_errors_are_clear():
    with pytest.raises(ValueError, match="both classes"):
        choose_threshold(np.ones(4, int), np.linspace(0, 1, 4))
    with pytest.raises(ValueError, match="target_sensitivity"):
        choose_threshold(Y_BIN, P_BIN, "target_sensitivity")
    with pytest.raises(ValueError, match="unknown threshold method"):
        choose_threshold(Y_BIN, P_BIN, "f1")


# --- Calibration ------------------------------------------------------------------------


def test_temperature_recovers_overconfidence_and_reduces_ece():
    logits, y = calibrated_logits(5000, 3, np.random.default_rng(0))
    overconfident = 5.0 * logits
    t = fit_temperature(overconfident, y)
    assert t == pytest.approx(5.0, rel=0.1)
    before = expected_calibration_error(y, apply_temperature(overconfident, 1.0))
    after = expected_calibration_error(y, apply_temperature(overconfident, t))
    assert after < 0.5 * before
    assert after < 0.03


def test_temperature_of_calibrated_logits_is_near_one():
    logits, y = calibrated_logits(5000, 2, np.random.default_rng(1))
    assert fit_temperature(logits, y) == pytest.approx(1.0, rel=0.1)


def test_ece_of_perfectly_calibrated_set_is_small():
    rng = np.random.default_rng(4)
    p = rng.random(20000)
    y = (rng.random(20000) < p).astype(int)
    assert expected_calibration_error(y, p) < 0.02


def test_ece_hand_computed_uses_top_label_confidence():
    # P(class 1) = 0.2 is a class-0 call with confidence 0.8, so all four rows share one
    # bin at confidence 0.8; rows 0-2 are right, row 3 wrong: ECE = |3/4 - 0.8| = 0.05.
    # (Binning P(class 1) instead would split them and give a different value.)
    y = np.array([1, 0, 0, 0])
    p = np.array([0.8, 0.2, 0.2, 0.8])
    assert expected_calibration_error(y, p, n_bins=10) == pytest.approx(0.05)


# --- End to end -------------------------------------------------------------------------


def binary_outputs(rng, n):
    logits, y = calibrated_logits(n, 2, rng)
    return y, 3.0 * logits  # over-confident, as trained networks tend to be


def test_evaluate_model_outputs_is_json_and_consistent():
    rng = np.random.default_rng(6)
    val, test = binary_outputs(rng, 600), binary_outputs(rng, 600)
    result = evaluate_model_outputs(val, test, ["benign", "malignant"], n_boot=200)
    assert set(result) == {"val", "test", "temperature", "threshold"}
    assert result == json.loads(json.dumps(result))
    assert result["temperature"] == pytest.approx(3.0, rel=0.2)
    for split in ("val", "test"):
        s = result[split]
        assert s["threshold"] == result["threshold"]
        assert s["temperature"] == result["temperature"]
        assert s["ece_calibrated"] < s["ece"]
        assert s["auroc_ci"][0] <= s["auroc"] <= s["auroc_ci"][1]
        assert s["n"] == 600
        assert {"accuracy", "balanced_accuracy", "sensitivity", "specificity", "ppv", "npv",
                "f1", "confusion_matrix", "per_class"} <= set(s)
    # The val metrics use the calibrated probabilities the threshold was chosen on.
    y_val, z_val = val
    pred = apply_temperature(z_val, result["temperature"])[:, 1] >= result["threshold"]
    assert result["val"]["sensitivity"] == pytest.approx(recall_score(y_val, pred))


def test_evaluate_model_outputs_target_sensitivity_and_multiclass():
    rng = np.random.default_rng(8)
    val, test = binary_outputs(rng, 400), binary_outputs(rng, 400)
    result = evaluate_model_outputs(val, test, ["neg", "pos"], "target_sensitivity",
                                    target_sensitivity=0.95, n_boot=0)
    assert result["val"]["sensitivity"] >= 0.95
    assert result["val"]["auroc_ci"] == [None, None]

    z_val, y_val = calibrated_logits(300, 4, rng)
    z_test, y_test = calibrated_logits(300, 4, rng)
    result = evaluate_model_outputs((y_val, z_val), (y_test, z_test), list("abcd"), n_boot=100)
    assert result["threshold"] is None
    assert result["test"]["auroc"] == pytest.approx(roc_auc_score(
        y_test, apply_temperature(z_test, result["temperature"]), multi_class="ovr"))
    assert len(result["test"]["confusion_matrix"]) == 4


# --- Clinical metrics: Brier, calibration slope and intercept, net benefit ---------------


def test_a_reliability_plot_draws_bins_that_are_all_one_class(tmp_path):
    from medray.train.evaluate import plot_reliability

    # The top bin is all positive, the bottom all negative: Wilson's bounds meet the
    # observed 1 and 0 up to rounding, which must not become a negative error bar.
    y = np.array([0] * 10 + [1] * 10)
    p = np.linspace(0.01, 0.99, 20)
    path = plot_reliability(y, np.column_stack([1 - p, p]), None, tmp_path / "r.png", n_bins=2)
    assert Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_quantile_bins_hold_equal_counts_with_wilson_intervals():
    from medray.train.evaluate import quantile_bins, wilson_interval

    p = np.linspace(0.05, 0.95, 20)
    y = (np.arange(20) % 2 == 0).astype(int)
    bins = quantile_bins(y, p, n_bins=4)
    assert [b["n"] for b in bins] == [5, 5, 5, 5]
    assert bins[0]["predicted"] == pytest.approx(p[:5].mean()) and bins[0]["observed"] == pytest.approx(3 / 5)
    assert [bins[0]["low"], bins[0]["high"]] == wilson_interval(3, 5)


def test_brier_matches_sklearn_binary_and_the_multiclass_sum_by_hand():
    from sklearn.metrics import brier_score_loss

    assert brier_score(Y_BIN, P_BIN) == pytest.approx(brier_score_loss(Y_BIN, P_BIN), abs=1e-12)
    assert brier_score(Y_BIN, np.column_stack([1 - P_BIN, P_BIN])) == pytest.approx(brier_score_loss(Y_BIN, P_BIN))
    # Two cases, three classes: (0.6-1)^2+0.2^2+0.2^2 = 0.24 and 0.2^2+0.4^2+(0.4-1)^2 = 0.56 -> mean 0.40.
    assert brier_score([0, 2], [[0.6, 0.2, 0.2], [0.2, 0.4, 0.4]]) == pytest.approx(0.40)


def test_calibration_slope_matches_sklearns_unpenalised_logistic_fit():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(4)
    risk = rng.uniform(0.02, 0.98, 400)
    y = (rng.random(400) < risk).astype(int)
    overconfident = 1 / (1 + np.exp(-2.0 * np.log(risk / (1 - risk))))  # logits doubled: slope near 0.5
    fit = calibration_slope_intercept(y, overconfident)
    logit = np.log(overconfident / (1 - overconfident))[:, None]
    reference = LogisticRegression(C=np.inf, tol=1e-10, max_iter=10_000).fit(logit, y)
    assert fit["calibration_slope"] == pytest.approx(reference.coef_[0, 0], abs=1e-5)
    assert 0.4 < fit["calibration_slope"] < 0.6


def test_calibration_intercept_is_the_offset_models_maximum_likelihood():
    from scipy.optimize import minimize_scalar

    rng = np.random.default_rng(5)
    risk = rng.uniform(0.05, 0.6, 300)
    y = (rng.random(300) < risk).astype(int)
    inflated = np.minimum(risk * 1.5, 0.95)  # risks overestimated: the intercept is negative
    offset = np.log(inflated / (1 - inflated))

    def loss(a):
        mu = 1 / (1 + np.exp(-(a + offset)))
        return -np.sum(y * np.log(mu) + (1 - y) * np.log(1 - mu))

    expected = minimize_scalar(loss, bounds=(-5, 5), method="bounded", options={"xatol": 1e-10}).x
    fit = calibration_slope_intercept(y, inflated)
    assert fit["calibration_intercept"] == pytest.approx(expected, abs=1e-6)
    assert fit["calibration_intercept"] < 0
    # Probabilities that are the outcome's own distribution: slope near 1, intercept near 0.
    truthful = calibration_slope_intercept(y, risk)
    assert abs(truthful["calibration_intercept"]) < 0.3 and 0.6 < truthful["calibration_slope"] < 1.6


def test_calibration_is_undefined_with_one_outcome_or_perfect_separation():
    none = {"calibration_slope": None, "calibration_intercept": None}
    assert calibration_slope_intercept([1, 1, 1], [0.2, 0.5, 0.9]) == none
    assert calibration_slope_intercept([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == none


def test_net_benefit_by_hand():
    # 10 cases, 4 positive. At pt = 0.25 (odds 1/3): treated = p >= 0.25 -> 3 TP, 2 FP.
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    p = np.array([0.9, 0.6, 0.3, 0.1, 0.5, 0.25, 0.2, 0.1, 0.05, 0.0])
    (row,) = net_benefit(y, p, [0.25])
    assert row["model"] == pytest.approx(3 / 10 - 2 / 10 / 3)
    assert row["treat_all"] == pytest.approx(0.4 - 0.6 / 3)
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        net_benefit(y, p, [1.0])


def test_binary_splits_carry_the_clinical_metrics_and_multiclass_leaves_them_out():
    rng = np.random.default_rng(6)
    logits, y = calibrated_logits(200, 2, rng)
    split = evaluate_split(y, logits, ["a", "b"], temperature=1.0, threshold=0.5, n_boot=0,
                           net_benefit_thresholds=[0.1, 0.3])
    probs = apply_temperature(logits, 1.0)
    assert split["brier"] == pytest.approx(brier_score(y, probs))
    assert split["calibration_slope"] == calibration_slope_intercept(y, probs[:, 1])["calibration_slope"]
    assert [r["threshold"] for r in split["net_benefit"]] == [0.1, 0.3]
    logits3, y3 = calibrated_logits(200, 3, rng)
    multi = evaluate_split(y3, logits3, ["a", "b", "c"], n_boot=0)
    assert multi["net_benefit"] is None and multi["calibration_slope"] is None and multi["brier"] > 0


def test_write_report_writes_valid_pngs_and_json(tmp_path):
    rng = np.random.default_rng(9)
    val, test = binary_outputs(rng, 300), binary_outputs(rng, 300)
    names = ["benign", "malignant"]
    metrics = evaluate_model_outputs(val, test, names, n_boot=100)
    history = [
        {"epoch": e, "train_loss": 1 / e, "val_loss": 1.2 / e, "val_auroc": 0.7 + 0.02 * e,
         "val_accuracy": 0.6 + 0.03 * e}
        for e in range(1, 6)
    ]
    paths = write_report(tmp_path / "report", metrics, val, test, history, names, selected_epoch=3)

    assert set(paths) == {"metrics", "roc", "reliability", "confusion_matrix", "learning_curves", "decision_curve"}
    assert json.loads(Path(paths["metrics"]).read_text()) == metrics
    for key in ("roc", "reliability", "confusion_matrix", "learning_curves", "decision_curve"):
        with open(paths[key], "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
        with Image.open(paths[key]) as image:
            width, height = image.size
            assert 300 <= width <= 2000 and 250 <= height <= 2000
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == [
        "confusion_matrix.png", "decision_curve.png", "learning_curves.png", "metrics.json", "reliability.png",
        "roc.png",
    ]


def test_mean_sd_is_the_mean_sample_sd_and_t_interval_of_the_defined_values():
    values = [0.91, 0.88, 0.95, 0.90, 0.86]
    summary = mean_sd([*values, None, float("nan")], interval=True)  # runs without the figure are left out
    sd = np.std(values, ddof=1)
    half = stats.t.ppf(0.975, 4) * sd / np.sqrt(5)
    assert summary["n"] == 5 and summary["mean"] == pytest.approx(np.mean(values))
    assert summary["sd"] == pytest.approx(sd) == pytest.approx(0.033912, abs=1e-6)
    assert summary["ci"] == pytest.approx([np.mean(values) - half, np.mean(values) + half])
    assert summary["values"][:5] == values and summary["values"][5] is None
    assert "ci" not in mean_sd(values)
    assert mean_sd([1.0, 1.0, 0.8], interval=True, bounds=(0.0, 1.0))["ci"][1] == 1.0
    assert mean_sd([0.8], interval=True) == {"mean": 0.8, "sd": None, "n": 1, "values": [0.8], "ci": [None, None]}
    assert mean_sd([None, None]) == {"mean": None, "sd": None, "n": 0, "values": [None, None]}
