"""Medical evaluation of a classifier's outputs: metrics, thresholds, calibration, plots.

Pure functions over numpy arrays: no Ray, no storage. `write_report` writes to a local
directory; whoever uploads it (e.g. the promotion step) copies that directory.

Conventions used throughout:

- `y_true` holds integer class indices in [0, K). Logits and probabilities are (N, K)
  with K >= 2; binary models have K = 2 and class 1 is the positive class. Where a
  function takes probabilities, a binary caller may also pass the (N,) vector of
  P(class 1).
- A metric whose denominator is zero (e.g. PPV when nothing is predicted positive) is
  `None`, never 0.0 or NaN: "undefined" must not look like "bad", and `None` survives
  JSON as `null`. Macro averages average over the classes where the metric is defined.
- AUROC needs both a positive and a negative example. With a single class in `y_true`
  it is `None` (value and CI), not an exception, so that evaluating a tiny or skewed
  split still yields the other metrics. Threshold choice on such a split raises
  `ValueError`: there is nothing to choose from.
- Binary decisions are `P(class 1) >= threshold`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from numpy.typing import ArrayLike
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax
from sklearn.metrics import average_precision_score, roc_curve

# Temperatures outside this range mean the validation set is degenerate (e.g. perfectly
# separable, which drives T to 0); clamping keeps the probabilities usable.
TEMPERATURE_BOUNDS = (0.05, 20.0)

# Bootstrap resamples are processed in chunks so that the (chunk, N) count matrices
# stay around this many elements (~16 MB of int64) whatever the split size.
_BOOT_CHUNK_ELEMENTS = 2_000_000


# ---------------------------------------------------------------------------------------
# Input checks


def _labels(y_true: ArrayLike, n_classes: int | None = None) -> np.ndarray:
    y = np.asarray(y_true)
    if y.ndim != 1:
        raise ValueError(f"y_true must be 1-D class indices, got shape {y.shape}")
    if y.size == 0:
        raise ValueError("y_true is empty")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.mod(y, 1) == 0):
            raise ValueError("y_true must hold integer class indices")
    y = y.astype(np.int64)
    if y.min() < 0 or (n_classes is not None and y.max() >= n_classes):
        raise ValueError(f"y_true holds labels outside [0, {n_classes}): {np.unique(y).tolist()}")
    return y


def _probs_2d(probs: ArrayLike, n: int) -> np.ndarray:
    """(N, K) probabilities; a binary (N,) vector of P(class 1) becomes [1 - p, p]."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim == 1:
        p = np.stack([1.0 - p, p], axis=1)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"probs must be (N,) or (N, K>=2), got shape {np.shape(probs)}")
    if p.shape[0] != n:
        raise ValueError(f"probs has {p.shape[0]} rows but y_true has {n}")
    return p


def _logits_2d(logits: ArrayLike, n: int) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2 or z.shape[1] < 2:
        raise ValueError(f"logits must be (N, K>=2), got shape {z.shape}")
    if z.shape[0] != n:
        raise ValueError(f"logits has {z.shape[0]} rows but y_true has {n}")
    return z


def _ratio(num: float, den: float) -> float | None:
    return float(num) / float(den) if den > 0 else None


def _mean_defined(values: Sequence[float | None]) -> float | None:
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if defined else None


# ---------------------------------------------------------------------------------------
# AUROC with a bootstrap confidence interval


def _auroc_from_draws(
    scores: np.ndarray, pos_draws: np.ndarray, neg_draws: np.ndarray
) -> np.ndarray:
    """AUROC of each resample, given the rows drawn as positives and as negatives.

    `pos_draws` is (B, n_pos) row indices, `neg_draws` (B, n_neg). AUROC is the
    probability that a random positive outscores a random negative, ties counting 1/2
    (the Mann-Whitney statistic, which is what `roc_auc_score` computes). Rows are
    grouped by distinct score; per resample we count draws per group, then each
    positive group scores the negatives in lower groups plus half those in its own.
    """
    uniq, group = np.unique(scores, return_inverse=True)
    m = uniq.size
    n_boot = pos_draws.shape[0]
    offsets = (np.arange(n_boot) * m)[:, None]

    def counts(draws: np.ndarray) -> np.ndarray:
        flat = (group[draws] + offsets).ravel()
        return np.bincount(flat, minlength=n_boot * m).reshape(n_boot, m)

    pos = counts(pos_draws)
    neg = counts(neg_draws)
    neg_below = np.cumsum(neg, axis=1) - neg
    wins = (pos * (2 * neg_below + neg)).sum(axis=1) / 2.0
    return wins / (pos_draws.shape[1] * neg_draws.shape[1])


def _macro_auroc_from_draws(
    probs: np.ndarray, columns: Sequence[int], draws: dict[int, np.ndarray]
) -> np.ndarray:
    """Mean one-vs-rest AUROC over `columns`; `draws[c]` is (B, n_c) rows of class c."""
    per_column = []
    for k in columns:
        neg = np.concatenate([d for c, d in draws.items() if c != k], axis=1)
        per_column.append(_auroc_from_draws(probs[:, k], draws[k], neg))
    return np.mean(per_column, axis=0)


def auroc_with_ci(
    y_true: ArrayLike,
    probs: ArrayLike,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict[str, float | None]:
    """AUROC and its (1 - alpha) percentile-bootstrap confidence interval.

    Binary (`probs` is (N,) P(class 1), or (N, 2)): the usual AUROC of class 1.
    K > 2 classes (`probs` (N, K)): the unweighted mean of one-vs-rest AUROCs, as
    `roc_auc_score(..., multi_class="ovr", average="macro")`; classes absent from
    `y_true` are left out of the mean (scikit-learn raises instead).

    The bootstrap is stratified: each resample redraws every class with replacement at
    its original count, so no resample lacks a class. Returns `{"value", "low", "high"}`;
    all three are `None` when `y_true` has a single class, and low/high are `None` when
    `n_boot` is 0.
    """
    y = _labels(y_true)
    p = _probs_2d(probs, y.size)
    n_classes = p.shape[1]
    if y.max() >= n_classes:
        raise ValueError(f"y_true has label {y.max()} but probs has {n_classes} columns")
    present = np.unique(y).tolist()
    if len(present) < 2:
        return {"value": None, "low": None, "high": None}
    columns = [1] if n_classes == 2 else present
    rows = {c: np.flatnonzero(y == c) for c in present}

    identity = {c: r[None, :] for c, r in rows.items()}
    value = float(_macro_auroc_from_draws(p, columns, identity)[0])
    if n_boot <= 0:
        return {"value": value, "low": None, "high": None}

    rng = np.random.default_rng(seed)
    chunk = max(1, _BOOT_CHUNK_ELEMENTS // y.size)
    boot = []
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        draws = {c: r[rng.integers(0, r.size, size=(b, r.size))] for c, r in rows.items()}
        boot.append(_macro_auroc_from_draws(p, columns, draws))
    low, high = np.quantile(np.concatenate(boot), [alpha / 2, 1 - alpha / 2])
    return {"value": value, "low": float(low), "high": float(high)}


def auprc(y_true: ArrayLike, pos_scores: ArrayLike) -> float | None:
    """Area under the precision-recall curve of class 1 (average precision, the step
    interpolation, as scikit-learn): what a rare positive class (13.9% deaths in
    PhysioNet 2012) makes of a ranking, where AUROC looks kinder. None without a positive."""
    y = _labels(y_true)
    if not (y == 1).any():
        return None
    return float(average_precision_score(y == 1, np.asarray(pos_scores, dtype=np.float64)))


def challenge_score(sensitivity: float | None, ppv: float | None) -> float | None:
    """min(sensitivity, PPV) at the operating threshold: the PhysioNet/CinC 2012
    challenge's event-1 score (Silva et al. 2012); None where either is undefined."""
    if sensitivity is None or ppv is None:
        return None
    return float(min(sensitivity, ppv))


def baseline_metrics(y_true: ArrayLike, scores: ArrayLike, n_boot: int = 1000, seed: int = 0,
                     threshold: float | None = None) -> dict:
    """One baseline's figures that compare with the model's on the same split.

    Binary (`scores` (N,) for class 1, NaN where it has none: a severity score is missing
    for some patients): AUROC with its bootstrap CI and AUPRC, on the rows it scores, and
    with a `threshold` (the score from which it predicts class 1) its accuracy.
    K classes (`scores` (N, K) class probabilities): macro AUROC with its CI, accuracy
    and macro-F1 of the argmax. `n` counts the rows scored."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim == 2:
        y = _labels(y_true, s.shape[1])
        auroc = auroc_with_ci(y, s, n_boot=n_boot, seed=seed)
        predicted = classification_metrics(y, s)
        return {"auroc": auroc["value"], "auroc_ci": [auroc["low"], auroc["high"]],
                "accuracy": predicted["accuracy"], "macro_f1": predicted["f1"], "n": int(y.size)}
    y = _labels(y_true)
    scored = np.isfinite(s)
    y, s = y[scored], s[scored]
    if y.size == 0 or len(np.unique(y)) < 2:
        return {"auroc": None, "auroc_ci": [None, None], "auprc": None, "n": int(y.size)}
    # Ranks only: any increasing map of the scores gives the same AUROC and AUPRC.
    auroc = auroc_with_ci(y, _rank_probabilities(s), n_boot=n_boot, seed=seed)
    accuracy = {} if threshold is None else {"accuracy": float(np.mean((s >= threshold) == (y == 1)))}
    return {"auroc": auroc["value"], "auroc_ci": [auroc["low"], auroc["high"]], "auprc": auprc(y, s),
            **accuracy, "n": int(y.size)}


def _rank_probabilities(scores: np.ndarray) -> np.ndarray:
    """Scores of any scale (SAPS-I points) as values in [0, 1] with the same order."""
    from scipy.stats import rankdata

    return (rankdata(scores) - 1) / max(len(scores) - 1, 1)


# ---------------------------------------------------------------------------------------
# Operating threshold (binary)


def choose_threshold(
    y_true: ArrayLike,
    pos_probs: ArrayLike,
    method: str = "youden",
    target_sensitivity: float | None = None,
) -> float:
    """Pick the decision threshold on P(class 1) from validation data.

    Candidates are the distinct validation scores; a case is called positive when its
    score is >= the threshold.

    - "youden": maximise sensitivity + specificity - 1; on a tie, the highest threshold
      (fewer false positives).
    - "target_sensitivity": the highest threshold whose validation sensitivity is at
      least `target_sensitivity` (the best specificity that keeps the target), the
      usual choice for screening.
    - "argmax": 0.5, i.e. the most probable class (temperature scaling keeps the
      order of the two logits): the protocol of published benchmarks such as MedMNIST.
    - "challenge": maximise min(sensitivity, PPV), the PhysioNet/CinC 2012 score; on
      a tie, the highest threshold.

    Raises ValueError when `y_true` lacks either class.
    """
    if method == "argmax":
        return 0.5
    y = _labels(y_true, 2)
    s = np.asarray(pos_probs, dtype=np.float64)
    if s.shape != y.shape:
        raise ValueError(f"pos_probs must be (N,) like y_true, got shape {s.shape}")
    if np.unique(y).size < 2:
        raise ValueError("choosing a threshold needs both classes in the validation labels")
    # Thresholds come back descending, one per distinct score, after a leading +inf
    # (nothing called positive) that is never a useful operating point.
    fpr, tpr, thresholds = roc_curve(y, s, drop_intermediate=False)
    fpr, tpr, thresholds = fpr[1:], tpr[1:], thresholds[1:]
    if method == "youden":
        return float(thresholds[np.argmax(tpr - fpr)])
    if method == "challenge":
        positives, negatives = (y == 1).sum(), (y == 0).sum()
        ppv = tpr * positives / np.maximum(tpr * positives + fpr * negatives, 1e-12)
        return float(thresholds[np.argmax(np.minimum(tpr, ppv))])
    if method == "target_sensitivity":
        if target_sensitivity is None or not 0.0 < target_sensitivity <= 1.0:
            raise ValueError(
                f"target_sensitivity must be in (0, 1] for method 'target_sensitivity', "
                f"got {target_sensitivity}"
            )
        # tpr rises as the threshold falls and reaches 1.0 at the lowest score.
        return float(thresholds[np.argmax(tpr >= target_sensitivity - 1e-12)])
    raise ValueError(f"unknown threshold method {method!r}; use 'youden', 'target_sensitivity', 'argmax' or "
                     "'challenge'")


# ---------------------------------------------------------------------------------------
# Calibration


def apply_temperature(logits: ArrayLike, temperature: float) -> np.ndarray:
    """Softmax probabilities (N, K) of `logits / temperature`."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    z = np.asarray(logits, dtype=np.float64)
    return softmax(z / temperature, axis=-1)


def fit_temperature(logits: ArrayLike, y_true: ArrayLike) -> float:
    """Temperature T minimising the validation NLL of softmax(logits / T).

    The NLL is convex in 1/T, hence unimodal in log T, so a bounded Brent search over
    log T finds the optimum without a learning rate to tune: T ~ 1 for calibrated
    logits, T > 1 for over-confident ones. T is clamped to `TEMPERATURE_BOUNDS`.
    """
    y = _labels(y_true)
    z = _logits_2d(logits, y.size)
    if y.max() >= z.shape[1]:
        raise ValueError(f"y_true has label {y.max()} but logits has {z.shape[1]} columns")
    rows = np.arange(y.size)

    def nll(log_t: float) -> float:
        return float(-log_softmax(z * np.exp(-log_t), axis=1)[rows, y].mean())

    lo, hi = np.log(TEMPERATURE_BOUNDS)
    result = minimize_scalar(nll, bounds=(lo, hi), method="bounded", options={"xatol": 1e-5})
    return float(np.exp(result.x))


def _calibration_bins(
    y: np.ndarray, probs: np.ndarray, n_bins: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width confidence bin: count, mean confidence, accuracy (top label)."""
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y).astype(np.float64)
    # Bins are (lo, hi]; confidence 0 joins the first bin.
    bins = np.clip(np.ceil(confidence * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    count = np.bincount(bins, minlength=n_bins).astype(np.float64)
    conf_sum = np.bincount(bins, weights=confidence, minlength=n_bins)
    correct_sum = np.bincount(bins, weights=correct, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        return count, conf_sum / count, correct_sum / count


def expected_calibration_error(y_true: ArrayLike, probs: ArrayLike, n_bins: int = 15) -> float:
    """Top-label expected calibration error with `n_bins` equal-width bins.

    Confidence is the highest class probability and "correct" means the argmax equals
    the label; ECE = sum over bins of (bin share) * |accuracy - mean confidence|. This
    holds for binary models too: confidence is max(p, 1 - p), in [0.5, 1], not P(class 1).
    """
    y = _labels(y_true)
    p = _probs_2d(probs, y.size)
    count, confidence, accuracy = _calibration_bins(y, p, n_bins)
    filled = count > 0
    return float(np.sum(count[filled] * np.abs(accuracy[filled] - confidence[filled])) / y.size)


# ---------------------------------------------------------------------------------------
# Classification metrics at an operating point


NET_BENEFIT_THRESHOLDS = (0.05, 0.1, 0.2, 0.3, 0.5)
"""Threshold probabilities at which decision curve analysis is reported by default."""


def brier_score(y_true: ArrayLike, probs: ArrayLike) -> float:
    """Mean squared error of the probabilities. Binary: of P(class 1) against the 0/1
    outcome (scikit-learn's `brier_score_loss`); K > 2: the sum over classes per case,
    averaged (Brier 1950's original form, in [0, 2])."""
    y = _labels(y_true)
    p = _probs_2d(probs, y.size)
    if p.shape[1] == 2:
        return float(np.mean((p[:, 1] - (y == 1)) ** 2))
    return float(np.mean(((p - np.eye(p.shape[1])[y]) ** 2).sum(axis=1)))


def _logit(p: np.ndarray) -> np.ndarray:
    clipped = np.clip(p, 1e-12, 1 - 1e-12)
    return np.log(clipped) - np.log1p(-clipped)


def calibration_slope_intercept(y_true: ArrayLike, pos_probs: ArrayLike) -> dict[str, float | None]:
    """Logistic recalibration of P(class 1) (Cox 1958; Van Calster et al. 2019):
    `calibration_slope` is b in logit P(y=1) = a + b logit(p) (1 is ideal; below 1, the
    predictions are too extreme), `calibration_intercept` is a with b fixed at 1
    (calibration-in-the-large: 0 is ideal; below 0, risks are overestimated). Both by
    Newton's method on the log-likelihood; None without both outcomes, or when the
    outcomes are perfectly separated by the predictions (the slope is then unbounded)."""
    y = (_labels(y_true) == 1).astype(np.float64)
    x = _logit(np.asarray(pos_probs, dtype=np.float64).ravel())
    if y.size != x.size:
        raise ValueError(f"{y.size} labels for {x.size} probabilities")
    undefined = {"calibration_slope": None, "calibration_intercept": None}
    if y.min() == y.max():
        return undefined
    slope_fit = _logistic_newton(np.column_stack([np.ones_like(x), x]), y, np.zeros_like(x))
    intercept_fit = _logistic_newton(np.ones((x.size, 1)), y, x)
    if slope_fit is None or intercept_fit is None:
        return undefined
    return {"calibration_slope": float(slope_fit[1]), "calibration_intercept": float(intercept_fit[0])}


def _logistic_newton(design: np.ndarray, y: np.ndarray, offset: np.ndarray, steps: int = 100) -> np.ndarray | None:
    """Maximum-likelihood coefficients of logit P(y=1) = design @ beta + offset, or None
    when they diverge (separation)."""
    beta = np.zeros(design.shape[1])
    for _ in range(steps):
        mu = 1 / (1 + np.exp(-(design @ beta + offset)))
        weights = mu * (1 - mu)
        hessian = design.T @ (design * weights[:, None])
        try:
            step = np.linalg.solve(hessian, design.T @ (y - mu))
        except np.linalg.LinAlgError:
            return None
        beta = beta + step
        if not np.isfinite(beta).all() or np.abs(beta).max() > 1e6:
            return None
        if np.abs(step).max() < 1e-10:
            return beta
    return None


def net_benefit(y_true: ArrayLike, pos_probs: ArrayLike,
                thresholds: Sequence[float] = NET_BENEFIT_THRESHOLDS) -> list[dict[str, float]]:
    """Decision curve analysis (Vickers & Elkin 2006): at each threshold probability pt,
    treating those with P(class 1) >= pt gains TP/n - FP/n * pt / (1 - pt); treating all
    gains prevalence - (1 - prevalence) * pt / (1 - pt); treating none gains 0."""
    y = _labels(y_true) == 1
    p = np.asarray(pos_probs, dtype=np.float64).ravel()
    n, prevalence = y.size, float(y.mean())
    rows = []
    for pt in thresholds:
        if not 0 < pt < 1:
            raise ValueError(f"a net benefit threshold must lie strictly between 0 and 1, got {pt}")
        odds = pt / (1 - pt)
        treated = p >= pt
        tp, fp = int((treated & y).sum()), int((treated & ~y).sum())
        rows.append({"threshold": float(pt), "model": tp / n - fp / n * odds,
                     "treat_all": prevalence - (1 - prevalence) * odds})
    return rows


def classification_metrics(
    y_true: ArrayLike,
    probs: ArrayLike,
    threshold: float | None = None,
    class_names: Sequence[str] | None = None,
) -> dict:
    """Accuracy, balanced accuracy, sensitivity, specificity, PPV, NPV, F1 and more.

    Binary: the prediction is `P(class 1) >= threshold` (default 0.5) and sensitivity,
    specificity, PPV, NPV and F1 are those of class 1 as the positive class.
    K > 2: the prediction is the argmax (`threshold` must be None) and those five are
    macro averages of each class's one-vs-rest value, over the classes where the value
    is defined; multi-class sensitivity therefore equals balanced accuracy.

    Undefined values (zero denominator) are `None`. Returns keys accuracy,
    balanced_accuracy, sensitivity, specificity, ppv, npv, f1, threshold,
    confusion_matrix (rows = true class, columns = predicted, as scikit-learn) and
    per_class (name -> precision, recall, f1, support).
    """
    y = _labels(y_true)
    p = _probs_2d(probs, y.size)
    n_classes = p.shape[1]
    if y.max() >= n_classes:
        raise ValueError(f"y_true has label {y.max()} but probs has {n_classes} columns")
    names = [str(c) for c in range(n_classes)] if class_names is None else list(class_names)
    if len(names) != n_classes:
        raise ValueError(f"{len(names)} class names for {n_classes} probability columns")

    if n_classes == 2:
        threshold = 0.5 if threshold is None else float(threshold)
        pred = (p[:, 1] >= threshold).astype(np.int64)
    else:
        if threshold is not None:
            raise ValueError("a threshold applies to binary models only; multi-class uses argmax")
        pred = p.argmax(axis=1)

    cm = np.bincount(y * n_classes + pred, minlength=n_classes**2).reshape(n_classes, n_classes)
    tp = np.diag(cm)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    tn = y.size - tp - fp - fn

    precision = [_ratio(tp[k], tp[k] + fp[k]) for k in range(n_classes)]
    recall = [_ratio(tp[k], tp[k] + fn[k]) for k in range(n_classes)]
    specificity = [_ratio(tn[k], tn[k] + fp[k]) for k in range(n_classes)]
    npv = [_ratio(tn[k], tn[k] + fn[k]) for k in range(n_classes)]
    # 2TP / (2TP + FP + FN) is the harmonic mean of precision and recall, and is still
    # defined (0) when only one of them is.
    f1 = [_ratio(2 * tp[k], 2 * tp[k] + fp[k] + fn[k]) for k in range(n_classes)]

    if n_classes == 2:
        summary = {
            "sensitivity": recall[1],
            "specificity": specificity[1],
            "ppv": precision[1],
            "npv": npv[1],
            "f1": f1[1],
        }
    else:
        summary = {
            "sensitivity": _mean_defined(recall),
            "specificity": _mean_defined(specificity),
            "ppv": _mean_defined(precision),
            "npv": _mean_defined(npv),
            "f1": _mean_defined(f1),
        }
    return {
        "accuracy": float(tp.sum() / y.size),
        # Mean recall over the classes present in y_true, as balanced_accuracy_score.
        "balanced_accuracy": _mean_defined(recall),
        **summary,
        "threshold": threshold,
        "confusion_matrix": cm.tolist(),
        "per_class": {
            names[k]: {
                "precision": precision[k],
                "recall": recall[k],
                "f1": f1[k],
                "support": int(tp[k] + fn[k]),
            }
            for k in range(n_classes)
        },
    }


# ---------------------------------------------------------------------------------------
# Whole-split and val -> test evaluation


def evaluate_split(
    y_true: ArrayLike,
    logits: ArrayLike,
    class_names: Sequence[str],
    temperature: float | None = None,
    threshold: float | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    net_benefit_thresholds: Sequence[float] = NET_BENEFIT_THRESHOLDS,
) -> dict:
    """Every metric for one split, JSON-ready.

    With a `temperature`, AUROC, the classification metrics, the Brier score and the
    calibration slope and intercept use the calibrated probabilities (the threshold was
    chosen on those); `ece` is always before scaling, `ece_calibrated` after (None
    without a temperature). Binary models also get AUPRC, the challenge score
    min(sensitivity, PPV) at the threshold, the calibration slope and intercept and the
    net benefit at `net_benefit_thresholds` (None for K > 2).
    """
    y = _labels(y_true)
    z = _logits_2d(logits, y.size)
    raw = apply_temperature(z, 1.0)
    probs = raw if temperature is None else apply_temperature(z, temperature)
    auroc = auroc_with_ci(y, probs, n_boot=n_boot, seed=seed)
    metrics = classification_metrics(y, probs, threshold=threshold, class_names=class_names)
    binary = probs.shape[1] == 2
    return {
        "auroc": auroc["value"],
        "auroc_ci": [auroc["low"], auroc["high"]],
        "auprc": auprc(y, probs[:, 1]) if binary else None,
        **{k: metrics[k] for k in ("accuracy", "balanced_accuracy", "sensitivity",
                                   "specificity", "ppv", "npv", "f1")},
        "challenge_score": challenge_score(metrics["sensitivity"], metrics["ppv"]) if binary else None,
        "ece": expected_calibration_error(y, raw),
        "ece_calibrated": None if temperature is None else expected_calibration_error(y, probs),
        "brier": brier_score(y, probs),
        **(calibration_slope_intercept(y, probs[:, 1]) if binary
           else {"calibration_slope": None, "calibration_intercept": None}),
        "net_benefit": net_benefit(y, probs[:, 1], net_benefit_thresholds) if binary else None,
        "threshold": metrics["threshold"],
        "temperature": None if temperature is None else float(temperature),
        "confusion_matrix": metrics["confusion_matrix"],
        "per_class": metrics["per_class"],
        "n": int(y.size),
    }


def evaluate_model_outputs(
    val: tuple[ArrayLike, ArrayLike],
    test: tuple[ArrayLike, ArrayLike],
    class_names: Sequence[str],
    threshold_method: str = "youden",
    target_sensitivity: float | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    net_benefit_thresholds: Sequence[float] = NET_BENEFIT_THRESHOLDS,
) -> dict:
    """Fit temperature and (binary) threshold on val, then report val and test with both.

    `val` and `test` are `(y_true, logits)`. The threshold is chosen on the calibrated
    validation probabilities; for K > 2 there is none (argmax). Returns
    `{"val", "test", "temperature", "threshold"}`, plain JSON types only.
    """
    y_val, z_val = val
    temperature = fit_temperature(z_val, y_val)
    threshold = None
    if len(class_names) == 2:
        pos = apply_temperature(z_val, temperature)[:, 1]
        threshold = choose_threshold(y_val, pos, threshold_method, target_sensitivity)
    common = dict(class_names=class_names, temperature=temperature, threshold=threshold,
                  n_boot=n_boot, seed=seed, net_benefit_thresholds=net_benefit_thresholds)
    return {
        "val": evaluate_split(y_val, z_val, **common),
        "test": evaluate_split(test[0], test[1], **common),
        "temperature": temperature,
        "threshold": threshold,
    }


def conformal_quantile(y_true: ArrayLike, probs: ArrayLike, coverage: float) -> float:
    """Split-conformal threshold on calibration (validation) data.

    Score = 1 - probability of the true class. A new case's prediction set is every class
    whose probability is at least `1 - q`; with exchangeable data it holds the true class
    with probability >= `coverage` (Angelopoulos & Bates 2021, section 1).
    """
    y = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(probs, dtype=np.float64)
    if not 0.0 < coverage < 1.0:
        raise ValueError(f"coverage must be in (0, 1), got {coverage}")
    n = len(y)
    if n == 0:
        raise ValueError("conformal calibration needs at least one example")
    scores = 1.0 - p[np.arange(n), y]
    level = min(1.0, math.ceil((n + 1) * coverage) / n)
    return float(np.quantile(scores, level, method="higher"))


def prediction_sets(probs: ArrayLike, quantile: float) -> np.ndarray:
    """Boolean (N, K): class k is in example i's set when p_ik >= 1 - quantile. The most
    probable class is always in the set: an empty set tells a clinician nothing, and
    adding it only raises coverage."""
    p = np.asarray(probs, dtype=np.float64)
    return (p >= 1.0 - quantile) | (p == p.max(axis=1, keepdims=True))


def set_coverage(y_true: ArrayLike, probs: ArrayLike, quantile: float) -> dict[str, float]:
    """Empirical coverage and mean set size of conformal sets on held-out data."""
    sets = prediction_sets(probs, quantile)
    y = np.asarray(y_true, dtype=np.int64)
    return {"coverage": float(sets[np.arange(len(y)), y].mean()), "mean_set_size": float(sets.sum(axis=1).mean())}


# ---------------------------------------------------------------------------------------
# Out-of-distribution detection

OOD_TARGET = {"auroc": 0.95, "false_alarm": 0.05}
"""What the detector should reach on the far out-of-distribution sets: AUROC at least
0.95 against in-distribution test cases, at a threshold flagging at most 5% of them."""


def wilson_interval(hits: int, n: int, z: float = 1.959964) -> list[float | None]:
    """95% Wilson score interval of a proportion (sensible at 0 and n, unlike the normal one)."""
    if n == 0:
        return [None, None]
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [float(max(0.0, centre - half)), float(min(1.0, centre + half))]


def mean_sd(values: Sequence[float | None], interval: bool = False,
            bounds: tuple[float, float] | None = None) -> dict[str, Any]:
    """One figure over runs (seeds, folds): the mean and sample sd (ddof 1) of the defined
    values (None or NaN: a run without the figure), `n` of them, and `values` as given.
    The sd is None for fewer than two values: one run says nothing of the spread. With
    `interval`, `ci` is the mean's 95% t interval clipped to `bounds`, the range the
    figure can take (AUROC 1.0 in four folds of five otherwise reads as an interval past
    1); [None, None] without an sd."""
    defined = [float(v) for v in values if v is not None and v == v]
    n = len(defined)
    summary: dict[str, Any] = {"mean": float(np.mean(defined)) if defined else None,
                               "sd": float(np.std(defined, ddof=1)) if n > 1 else None, "n": n,
                               "values": list(values)}
    if interval:
        summary["ci"] = [None, None]
        if summary["sd"] is not None:
            from scipy.stats import t

            half = float(t.ppf(0.975, n - 1)) * summary["sd"] / math.sqrt(n)
            low, high = bounds or (-math.inf, math.inf)
            summary["ci"] = [max(low, summary["mean"] - half), min(high, summary["mean"] + half)]
    return summary


def ood_metrics(
    in_scores: ArrayLike,
    sets: dict[str, tuple[ArrayLike, str]],
    threshold: float,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict:
    """How well an OOD score separates in-distribution test cases from each OOD set.

    `in_scores` are the in-distribution test cases' scores, `sets` maps a set's name to
    (its scores, "far" or "near"); higher scores are less like the training data and a
    case is flagged when its score is above `threshold` (a non-finite score is flagged).
    Per set: AUROC (in-distribution test = negatives, the set = positives) with its
    bootstrap CI, and the detection rate (share flagged). Overall: the false-alarm rate
    (share of in-distribution test cases flagged) with its Wilson interval, and for the
    far and near sets pooled: AUROC, detection rate and the lowest per-set AUROC.
    `target_met`: every far set's AUROC and the false-alarm rate meet `OOD_TARGET`.
    """
    negatives = np.asarray(in_scores, dtype=np.float64)
    if negatives.ndim != 1 or negatives.size == 0:
        raise ValueError("in_scores must be a non-empty 1-D array")
    flagged = lambda scores: ~(scores <= threshold)  # noqa: E731
    false_alarms = int(flagged(negatives).sum())

    def separation(positives: np.ndarray) -> dict:
        scores = np.concatenate([negatives, positives])
        # Ranks only: an infinite or NaN score becomes the largest finite one, still flagged.
        finite = scores[np.isfinite(scores)]
        top = finite.max() + 1.0 if finite.size else 0.0
        scores = np.where(np.isfinite(scores), scores, top)
        y = np.r_[np.zeros(negatives.size, np.int64), np.ones(positives.size, np.int64)]
        auroc = auroc_with_ci(y, scores, n_boot=n_boot, seed=seed)
        detected = int(flagged(positives).sum())
        return {"auroc": auroc["value"], "auroc_ci": [auroc["low"], auroc["high"]],
                "detection_rate": detected / positives.size if positives.size else None,
                "n": int(positives.size)}

    per_set, pooled = {}, {"far": [], "near": []}
    for name, (scores, kind) in sets.items():
        if kind not in pooled:
            raise ValueError(f"OOD set {name!r} is of kind {kind!r}; use 'far' or 'near'")
        values = np.asarray(scores, dtype=np.float64).ravel()
        if values.size == 0:
            continue
        per_set[name] = {"kind": kind, **separation(values)}
        pooled[kind].append(values)
    summary = {}
    for kind, parts in pooled.items():
        if not parts:
            summary[kind] = None
            continue
        aurocs = [m["auroc"] for m in per_set.values() if m["kind"] == kind]
        summary[kind] = {**separation(np.concatenate(parts)), "min_auroc": float(min(aurocs)),
                         "sets": sorted(n for n, m in per_set.items() if m["kind"] == kind)}
    false_alarm = false_alarms / negatives.size
    far = summary["far"]
    return {
        "threshold": float(threshold),
        "false_alarm_rate": false_alarm,
        "false_alarm_ci": wilson_interval(false_alarms, negatives.size),
        "n_in_distribution": int(negatives.size),
        "sets": per_set,
        **summary,
        "target": dict(OOD_TARGET),
        "target_met": bool(far is not None and far["min_auroc"] >= OOD_TARGET["auroc"]
                           and false_alarm <= OOD_TARGET["false_alarm"]),
    }


# ---------------------------------------------------------------------------------------
# Plots: Figure + FigureCanvasAgg, so nothing touches pyplot's global state or backend.


def _save(fig: Figure, path: str | os.PathLike) -> str:
    FigureCanvasAgg(fig)
    fig.savefig(path, format="png", dpi=120, bbox_inches="tight")
    return str(path)


def _title(what: str, split: str, n: int) -> str:
    return f"{what}, {split} split (n = {n})"


def _roc_band(y: np.ndarray, scores: np.ndarray, n_boot: int, seed: int,
              grid: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """The 2.5th and 97.5th percentile TPR at each FPR of `grid` over `n_boot` bootstrap
    resamples of the cases (resamples with one class only are skipped); None if none is usable."""
    rng = np.random.default_rng(seed)
    curves = []
    for _ in range(n_boot):
        rows = rng.integers(0, y.size, y.size)
        if y[rows].min() == y[rows].max():
            continue
        fpr, tpr, _ = roc_curve(y[rows], scores[rows])
        curves.append(np.interp(grid, fpr, tpr))
    if not curves:
        return None
    return np.percentile(curves, 2.5, axis=0), np.percentile(curves, 97.5, axis=0)


def plot_roc(
    y_true: ArrayLike, probs: ArrayLike, class_names: Sequence[str], path: str | os.PathLike,
    baselines: dict[str, np.ndarray] | None = None, operating_point: tuple[float, float, float] | None = None,
    n_boot: int = 200, seed: int = 0, split: str = "test",
) -> str:
    """ROC curve of class 1 (binary) with its 95% bootstrap band and the operating point
    `(false positive rate, sensitivity, threshold)`, or one-vs-rest curve per class, AUROC
    in the legend; a binary model's same-run baselines (scores for class 1, NaN where
    missing) dashed beside it, each on the rows it scores."""
    y = _labels(y_true)
    p = _probs_2d(probs, y.size)
    columns = [1] if p.shape[1] == 2 else range(p.shape[1])
    fig = Figure(figsize=(5.5, 5))
    ax = fig.add_subplot()
    for k in columns:
        positive = y == k
        if positive.all() or not positive.any():
            continue  # undefined without both positives and negatives
        fpr, tpr, _ = roc_curve(positive, p[:, k])
        auc = auroc_with_ci(positive.astype(np.int64), p[:, k], n_boot=0)["value"]
        line, = ax.plot(fpr, tpr, lw=1.8, label=f"{'model' if p.shape[1] == 2 else class_names[k]} (AUROC {auc:.3f})")
        if p.shape[1] == 2 and n_boot:
            grid = np.linspace(0, 1, 101)
            band = _roc_band(positive.astype(np.int64), p[:, k], n_boot, seed, grid)
            if band is not None:
                ax.fill_between(grid, *band, color=line.get_color(), alpha=0.18, lw=0,
                                label=f"95% bootstrap band ({n_boot} resamples)")
    if operating_point is not None and p.shape[1] == 2:
        fpr, sensitivity, threshold = operating_point
        ax.plot([fpr], [sensitivity], marker="o", ms=8, color="black", ls="none",
                label=f"operating point, threshold {threshold:.3f}")
    for name, scores in (baselines or {}).items() if p.shape[1] == 2 else ():
        scored = np.isfinite(scores)
        positive = y[scored] == 1
        if positive.all() or not positive.any():
            continue
        fpr, tpr, _ = roc_curve(positive, scores[scored])
        auc = baseline_metrics(y[scored], scores[scored], n_boot=0)["auroc"]
        ax.plot(fpr, tpr, lw=1.1, ls=(0, (4, 2)), label=f"{name} (AUROC {auc:.3f}, n={int(scored.sum())})")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="False positive rate (1 - specificity)",
           ylabel="True positive rate (sensitivity)",
           title=_title("ROC curve" if p.shape[1] == 2 else "ROC curves (one vs rest)", split, y.size))
    ax.legend(loc="lower right", fontsize="small")
    return _save(fig, path)


def quantile_bins(y_true: ArrayLike, pos_probs: ArrayLike, n_bins: int = 10) -> list[dict[str, float]]:
    """Cases sorted by P(class 1) in `n_bins` bins of (nearly) equal count: per bin its
    mean prediction, observed frequency of class 1 with its Wilson 95% interval, and n."""
    y = _labels(y_true) == 1
    p = np.asarray(pos_probs, dtype=np.float64).ravel()
    order = np.argsort(p, kind="stable")
    bins = []
    for rows in np.array_split(order, min(n_bins, max(1, y.size))):
        if rows.size == 0:
            continue
        hits = int(y[rows].sum())
        low, high = wilson_interval(hits, int(rows.size))
        bins.append({"predicted": float(p[rows].mean()), "observed": hits / rows.size, "low": low, "high": high,
                     "n": int(rows.size)})
    return bins


def plot_reliability(
    y_true: ArrayLike,
    probs_before: ArrayLike,
    probs_after: ArrayLike | None,
    path: str | os.PathLike,
    n_bins: int = 10,
    split: str = "test",
) -> str:
    """Reliability diagram above a histogram of the predictions. Binary: predicted
    P(class 1) against the observed frequency of class 1 in quantile bins (equal counts),
    with Wilson 95% intervals, before and after temperature scaling. K > 2: top-label
    accuracy against confidence in equal-width bins."""
    y = _labels(y_true)
    fig = Figure(figsize=(5.5, 6.2))
    ax, histogram = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect calibration")
    binary = _probs_2d(probs_before, y.size).shape[1] == 2
    shown = None
    for label, probs, marker in (("before scaling", probs_before, "o"),
                                 ("after temperature scaling", probs_after, "s")):
        if probs is None:
            continue
        p = _probs_2d(probs, y.size)
        ece = expected_calibration_error(y, p, 15)
        if binary:
            bins = quantile_bins(y, p[:, 1], n_bins)
            x = np.array([b["predicted"] for b in bins])
            observed = np.array([b["observed"] for b in bins])
            # Wilson's interval holds the observed share; the clip only absorbs its rounding.
            errors = np.clip([[b["observed"] - b["low"] for b in bins], [b["high"] - b["observed"] for b in bins]],
                             0, None)
            ax.errorbar(x, observed, yerr=errors, marker=marker, lw=1.5, capsize=2,
                        label=f"{label} (ECE {ece:.3f})")
        else:
            count, confidence, accuracy = _calibration_bins(y, p, 15)
            filled = count > 0
            ax.plot(confidence[filled], accuracy[filled], marker=marker, lw=1.5, label=f"{label} (ECE {ece:.3f})")
        shown = p
    what = "Predicted P(positive class)" if binary else "Confidence (top-class probability)"
    ax.set(xlim=(0, 1), ylim=(0, 1.01), ylabel="Observed frequency" if binary else "Accuracy",
           title=_title("Reliability" + (f" ({n_bins} quantile bins, 95% CI)" if binary else ""), split, y.size))
    ax.legend(loc="upper left", fontsize="small")
    values = shown[:, 1] if binary else shown.max(axis=1)
    histogram.hist(values, bins=20, range=(0, 1), color="tab:grey")
    histogram.set(xlabel=what, ylabel="Cases")
    return _save(fig, path)


def plot_confusion_matrix(
    cm: ArrayLike, class_names: Sequence[str], path: str | os.PathLike, split: str = "test",
    threshold: float | None = None,
) -> str:
    """Counts and row percentages (of each true class), rows = true class, columns =
    predicted class."""
    counts = np.asarray(cm)
    k = counts.shape[0]
    rows = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        shares = np.where(rows > 0, counts / np.maximum(rows, 1), 0.0)
    fig = Figure(figsize=(1.3 * k + 3, 1.3 * k + 2.5))
    ax = fig.add_subplot()
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{int(counts[i, j])}\n({100 * shares[i, j]:.1f}%)", ha="center", va="center",
                    color="white" if shares[i, j] > 0.5 else "black")
    at = f" at threshold {threshold:.3f}" if threshold is not None else ""
    ax.set(xticks=range(k), yticks=range(k), xticklabels=class_names, yticklabels=class_names,
           xlabel="Predicted class", ylabel="True class",
           title=_title(f"Confusion matrix{at}", split, int(counts.sum())))
    return _save(fig, path)


def plot_decision_curve(
    y_true: ArrayLike, pos_probs: ArrayLike, path: str | os.PathLike,
    marked: Sequence[float] = NET_BENEFIT_THRESHOLDS, split: str = "test",
) -> str:
    """Net benefit against the threshold probability (decision curve analysis, Vickers &
    Elkin 2006): the model, treat all and treat none; the reported thresholds marked."""
    y = _labels(y_true)
    grid = np.linspace(0.01, 0.99, 99)
    rows = net_benefit(y, pos_probs, grid)
    model = np.array([r["model"] for r in rows])
    treat_all = np.array([r["treat_all"] for r in rows])
    fig = Figure(figsize=(6, 4.5))
    ax = fig.add_subplot()
    ax.plot(grid, model, lw=1.8, label="model")
    ax.plot(grid, treat_all, lw=1.2, color="tab:orange", label="treat all")
    ax.axhline(0, lw=1.2, color="black", label="treat none")
    for pt in marked:
        ax.axvline(pt, lw=0.8, ls=":", color="grey")
    prevalence = float((y == 1).mean())
    ax.set(xlim=(0, 1), ylim=(min(-0.05, float(model.min()) - 0.02), max(prevalence, float(model.max())) + 0.05),
           xlabel="Threshold probability (risk at which one would treat)", ylabel="Net benefit",
           title=_title("Decision curve", split, y.size))
    ax.legend(loc="upper right", fontsize="small")
    return _save(fig, path)


def plot_learning_curves(history: Sequence[dict], path: str | os.PathLike, selected_epoch: int | None = None) -> str:
    """Two panels: train/val loss; val AUROC and accuracy; the epoch whose weights were
    kept marked. Missing values are skipped."""
    fig = Figure(figsize=(10, 4))
    loss_ax, score_ax = fig.subplots(1, 2)
    panels = ((loss_ax, ("train_loss", "val_loss"), "Loss", "Loss (train and val splits)"),
              (score_ax, ("val_auroc", "val_accuracy"), "Score", "Val split: AUROC and accuracy"))
    labels = {"train_loss": "train loss", "val_loss": "val loss", "val_auroc": "val AUROC",
              "val_accuracy": "val accuracy"}
    for ax, keys, ylabel, title in panels:
        for key in keys:
            points = [(row["epoch"], row[key]) for row in history if row.get(key) is not None]
            if points:
                epochs, values = zip(*points)
                ax.plot(epochs, values, marker="o", ms=3, label=labels[key])
        if selected_epoch is not None:
            ax.axvline(selected_epoch, color="black", ls="--", lw=1, label=f"selected epoch {selected_epoch}")
        ax.set(xlabel="Epoch", ylabel=ylabel, title=title)
        if ax.has_data():
            ax.legend(fontsize="small")
    return _save(fig, path)


def plot_fold_learning_curves(folds: Sequence[dict], path: str | os.PathLike) -> str:
    """A cross-validation's learning curves: each fold's train and held-out loss, and its
    held-out AUROC, with the epoch kept for that fold marked on its curve."""
    fig = Figure(figsize=(10, 4))
    loss_ax, score_ax = fig.subplots(1, 2)
    colours = [f"C{i % 10}" for i in range(len(folds))]
    for fold, colour in zip(folds, colours):
        history, kept = fold.get("history") or [], fold.get("epoch")
        for ax, key, style in ((loss_ax, "train_loss", ":"), (loss_ax, "val_loss", "-"), (score_ax, "val_auroc", "-")):
            points = [(row["epoch"], row[key]) for row in history if row.get(key) is not None]
            if not points:
                continue
            epochs, values = zip(*points)
            label = f"fold {fold['fold']} (n={fold.get('n', '?')})" if key != "train_loss" else None
            ax.plot(epochs, values, ls=style, color=colour, lw=1, label=label)
            if kept is not None and key != "train_loss" and kept in epochs:
                ax.plot([kept], [values[epochs.index(kept)]], marker="o", color=colour, ms=6)
    loss_ax.set(xlabel="Epoch", ylabel="Loss", title="Loss per fold (dotted: train, solid: held-out fold)")
    score_ax.set(xlabel="Epoch", ylabel="AUROC", title="Held-out fold AUROC (dot: the epoch kept)")
    for ax in (loss_ax, score_ax):
        if ax.has_data():
            ax.legend(fontsize="small", ncol=2)
    return _save(fig, path)


def plot_ood_scores(
    in_scores: ArrayLike,
    sets: dict[str, tuple[ArrayLike, str]],
    threshold: float,
    path: str | os.PathLike,
) -> str:
    """One row of scores per set (in-distribution test first), the threshold as a line.
    The x axis is symlog: far sets (noise) score orders of magnitude above test cases."""
    rows = [("in-distribution test", np.asarray(in_scores, dtype=np.float64), "in")]
    rows += [(name, np.asarray(scores, dtype=np.float64).ravel(), kind) for name, (scores, kind) in sets.items()]
    colours = {"in": "tab:green", "near": "tab:orange", "far": "tab:red"}
    fig = Figure(figsize=(7.5, 0.45 * len(rows) + 1.6))
    ax = fig.add_subplot()
    jitter = np.random.default_rng(0)  # fixed, so the same report draws the same picture
    for index, (name, scores, kind) in enumerate(rows):
        shown = scores[np.isfinite(scores)]
        y = index + jitter.uniform(-0.25, 0.25, shown.size)
        ax.scatter(shown, y, s=6, alpha=0.5, color=colours[kind], linewidths=0)
    ax.axvline(threshold, color="black", ls="--", lw=1, label=f"threshold {threshold:.3g}")
    ax.set_xscale("symlog", linthresh=max(abs(threshold), 1e-3))
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([name if kind == "in" else f"{name} ({kind})" for name, _, kind in rows])
    ax.invert_yaxis()
    ax.set(xlabel="OOD score (higher = less like the training data)",
           title="Out-of-distribution scores: flagged right of the threshold")
    ax.legend(loc="lower right", fontsize="small")
    return _save(fig, path)


# ---------------------------------------------------------------------------------------
# Report


def write_report(
    out_dir: str | os.PathLike,
    metrics: dict,
    val: tuple[ArrayLike, ArrayLike],
    test: tuple[ArrayLike, ArrayLike],
    history: Sequence[dict],
    class_names: Sequence[str],
    baselines: dict[str, np.ndarray] | None = None,
    selected_epoch: int | None = None,
    net_benefit_thresholds: Sequence[float] = NET_BENEFIT_THRESHOLDS,
    n_boot: int = 200,
    seed: int = 0,
) -> dict[str, str]:
    """Write metrics.json and the plots into `out_dir` (created if missing).

    `metrics` is `evaluate_model_outputs`' result. The ROC (with its bootstrap band and
    the operating point), reliability, confusion and (binary) decision-curve plots show
    the test split: the temperature and threshold were fitted on val, so only test shows
    whether they carry over. `val` is taken for symmetry with `evaluate_model_outputs`
    and is not plotted. `baselines` (name -> test scores) join the ROC plot;
    `selected_epoch` is marked on the learning curves.
    Returns {"metrics", "roc", "reliability", "confusion_matrix", "learning_curves"[,
    "decision_curve"]} -> file path.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    y_test, z_test = _labels(test[0]), _logits_2d(test[1], len(test[0]))
    temperature = metrics.get("temperature")
    before = apply_temperature(z_test, 1.0)
    after = None if temperature is None else apply_temperature(z_test, temperature)
    shown = before if after is None else after
    threshold, test_metrics = metrics.get("threshold"), metrics["test"]
    operating_point = None
    if threshold is not None and test_metrics.get("specificity") is not None and test_metrics.get("sensitivity") is not None:
        operating_point = (1 - test_metrics["specificity"], test_metrics["sensitivity"], threshold)

    # Write then rename, so a reader never sees a half-written metrics.json.
    metrics_path = out / "metrics.json"
    tmp = out / ".metrics.json.tmp"
    tmp.write_text(json.dumps(metrics, indent=2, allow_nan=False))
    os.replace(tmp, metrics_path)

    files = {
        "metrics": str(metrics_path),
        "roc": plot_roc(y_test, shown, class_names, out / "roc.png", baselines, operating_point, n_boot, seed),
        "reliability": plot_reliability(y_test, before, after, out / "reliability.png"),
        "confusion_matrix": plot_confusion_matrix(test_metrics["confusion_matrix"], class_names,
                                                  out / "confusion_matrix.png", threshold=threshold),
        "learning_curves": plot_learning_curves(history, out / "learning_curves.png", selected_epoch),
    }
    if shown.shape[1] == 2:
        files["decision_curve"] = plot_decision_curve(y_test, shown[:, 1], out / "decision_curve.png",
                                                      net_benefit_thresholds)
    return files
