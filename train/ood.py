"""Out-of-distribution detection: is this input like what the model was trained on?

Conformal prediction sets cover the true class only for inputs from the training
distribution; a CT slice sent to an ultrasound model gets a confident, wrong answer. A
detector scores every input (higher = less like training) and flags it above a
threshold chosen on the validation split so that a stated share of in-distribution
cases (`false_alarm_target`) is flagged. Serving refers every flagged input to a
clinician, whatever the prediction set says.

Two scores, both from one forward pass (`ModelBundle.predict_embeddings`):

- "mahalanobis" (Lee et al. 2018): squared Mahalanobis distance of the penultimate
  features to the nearest class mean, with one covariance shared by the classes. The
  covariance is Ledoit-Wolf shrunk: a training split of a few hundred rows does not
  determine a 512-wide covariance, and the unshrunk inverse would be noise.
- "energy" (Liu et al. 2020): -logsumexp(logits); needs nothing fitted but the threshold.

Pure NumPy, no Ray; the fitted numbers travel as plain JSON (`to_dict`).

    detector = fit_detector(train_emb, train_y, val_emb, val_logits)
    flagged = detector.flags(emb, logits)            # score > threshold
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

METHODS = ("mahalanobis", "energy")


@dataclass(frozen=True, eq=False)  # arrays do not compare with ==
class OODDetector:
    method: str
    """"mahalanobis" (penultimate features) or "energy" (logits)."""
    threshold: float
    """score > threshold => out of distribution."""
    false_alarm_target: float
    """Share of in-distribution validation cases the threshold is chosen to flag at most."""
    val_false_alarm: float
    """Share of the validation cases actually flagged at the threshold."""
    n_val: int
    """Validation cases the threshold was chosen on."""
    means: np.ndarray | None = field(default=None, repr=False)
    """mahalanobis: per-class means of the training features (K, D)."""
    precision: np.ndarray | None = field(default=None, repr=False)
    """mahalanobis: inverse of the shrunk shared covariance (D, D)."""
    columns: tuple[int, int] | None = None
    """mahalanobis: the [start, stop) columns of the embeddings it reads; None: all. A
    cross-validated ensemble's detector reads its first member's features."""
    threshold_set: str = "val"
    """The cases the threshold was chosen on: "val", or "fold_0" (the rows an ensemble's
    first member held out: in no part of its training)."""

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"OOD method must be one of: {', '.join(METHODS)}; got {self.method!r}")
        if self.method == "mahalanobis" and (self.means is None or self.precision is None):
            raise ValueError("a mahalanobis detector needs its class means and precision matrix")
        if self.columns is not None and (self.method != "mahalanobis" or not 0 <= self.columns[0] < self.columns[1]
                                         or self.columns[1] - self.columns[0] != self.means.shape[1]):
            raise ValueError(f"OOD columns {list(self.columns)} do not match a mahalanobis detector of "
                             f"{self.dim} features")

    def score(self, embeddings: np.ndarray, logits: np.ndarray) -> np.ndarray:
        """One score per row (N,); higher = less like the training data."""
        if self.method == "energy":
            return energy_score(logits)
        embeddings = np.asarray(embeddings, dtype=np.float64)
        if self.columns is not None:
            embeddings = embeddings[:, self.columns[0]:self.columns[1]]
        return mahalanobis_score(embeddings, self.means, self.precision, self._mean_terms)

    @cached_property
    def _mean_terms(self) -> np.ndarray | None:
        """m_k^T P m_k per class: fixed once fitted, so computed once, not per request."""
        return None if self.means is None else mahalanobis_mean_terms(self.means, self.precision)

    def flags(self, embeddings: np.ndarray, logits: np.ndarray) -> np.ndarray:
        """Whether each row is out of distribution (N,) bool. A non-finite score is
        flagged: an input the detector cannot place is not like the training data."""
        scores = self.score(embeddings, logits)
        return ~(scores <= self.threshold)

    @property
    def dim(self) -> int | None:
        return None if self.means is None else int(self.means.shape[1])

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"method": self.method, "threshold": float(self.threshold),
                               "false_alarm_target": float(self.false_alarm_target),
                               "val_false_alarm": float(self.val_false_alarm), "n_val": int(self.n_val),
                               "threshold_set": self.threshold_set}
        if self.columns is not None:
            out["columns"] = list(self.columns)
        if self.method == "mahalanobis":
            # float32 precision is plenty for a distance compared with a threshold, and
            # halves what a 512-wide precision matrix costs in calibration.json.
            out["means"] = self.means.astype(np.float32).tolist()
            out["precision"] = self.precision.astype(np.float32).tolist()
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "OODDetector":
        arrays = {k: np.asarray(d[k], dtype=np.float64) for k in ("means", "precision") if d.get(k) is not None}
        return cls(method=d["method"], threshold=float(d["threshold"]),
                   false_alarm_target=float(d["false_alarm_target"]),
                   val_false_alarm=float(d.get("val_false_alarm", math.nan)), n_val=int(d.get("n_val", 0)),
                   columns=tuple(int(c) for c in d["columns"]) if d.get("columns") else None,
                   threshold_set=str(d.get("threshold_set", "val")), **arrays)

    def summary(self) -> dict[str, Any]:
        """What the report, model card and registry metadata show (no fitted arrays)."""
        return {"method": self.method, "threshold": float(self.threshold),
                "false_alarm_target": float(self.false_alarm_target),
                "val_false_alarm": float(self.val_false_alarm), "n_val": int(self.n_val),
                "threshold_set": self.threshold_set,
                **({"features": self.dim} if self.dim is not None else {}),
                **({"columns": list(self.columns)} if self.columns is not None else {})}


def energy_score(logits: np.ndarray) -> np.ndarray:
    """-logsumexp(logits) per row: low (very negative) where the model is sure of a class."""
    z = np.asarray(logits, dtype=np.float64)
    top = z.max(axis=1, keepdims=True)
    with np.errstate(all="ignore"):
        return -(top[:, 0] + np.log(np.exp(z - top).sum(axis=1)))


def mahalanobis_mean_terms(means: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """m_k^T P m_k per class (K,)."""
    return np.einsum("kd,kd->k", means @ precision, means)


def mahalanobis_score(x: np.ndarray, means: np.ndarray, precision: np.ndarray,
                      mean_terms: np.ndarray | None = None) -> np.ndarray:
    """min over classes k of (x - mu_k)^T P (x - mu_k), per row (N,); `mean_terms` is
    `mahalanobis_mean_terms(means, precision)` when the caller keeps it."""
    # (x-m)^T P (x-m) = x^T P x - 2 x^T P m + m^T P m, for all classes at once.
    if mean_terms is None:
        mean_terms = mahalanobis_mean_terms(means, precision)
    xp = x @ precision
    quad_x = np.einsum("nd,nd->n", xp, x)
    cross = xp @ means.T
    return (quad_x[:, None] - 2 * cross + mean_terms[None, :]).min(axis=1)


def ledoit_wolf(centred: np.ndarray) -> np.ndarray:
    """Ledoit-Wolf (2004) shrinkage of the covariance of centred rows (N, D) towards
    mu * I: the weight that minimises the expected Frobenius error, estimated from the data."""
    n, d = centred.shape
    sample = centred.T @ centred / n
    mu = np.trace(sample) / d
    target = mu * np.eye(d)
    delta = ((sample - target) ** 2).sum()
    # mean over rows of ||x x^T - S||_F^2, over n: how noisy the sample covariance is.
    beta = (((centred ** 2).sum(axis=1) ** 2).sum() / n - (sample ** 2).sum()) / n
    shrink = 1.0 if delta <= 0 else min(max(beta / delta, 0.0), 1.0)
    return shrink * target + (1 - shrink) * sample


def threshold_for(val_scores: np.ndarray, false_alarm: float) -> float:
    """The conformal rank: the ceil((n + 1)(1 - a))-th smallest val score, so that a new
    in-distribution case scores above it with probability at most `a` (exchangeability)."""
    scores = np.sort(np.asarray(val_scores, dtype=np.float64))
    scores = scores[np.isfinite(scores)]
    if not len(scores):
        raise ValueError("no finite validation score to choose an OOD threshold from")
    rank = math.ceil((len(scores) + 1) * (1 - false_alarm))
    return float(scores[min(rank, len(scores)) - 1])


def fit_detector(train_embeddings: np.ndarray, train_labels: np.ndarray, val_embeddings: np.ndarray,
                 val_logits: np.ndarray, false_alarm: float = 0.05, method: str = "mahalanobis",
                 columns: tuple[int, int] | None = None, threshold_set: str = "val") -> OODDetector:
    """A detector fitted on the train split and thresholded on the val split to flag at
    most `false_alarm` of in-distribution cases; with `columns`, on those embedding
    columns alone (mahalanobis)."""
    if not 0 < false_alarm < 1:
        raise ValueError(f"false_alarm must lie in (0, 1), got {false_alarm}")
    if method not in METHODS:
        raise ValueError(f"OOD method must be one of: {', '.join(METHODS)}; got {method!r}")
    fitted: dict[str, Any] = {}
    if method == "mahalanobis":
        x = np.asarray(train_embeddings, dtype=np.float64)
        if columns is not None:
            x = x[:, columns[0]:columns[1]]
            fitted["columns"] = tuple(columns)
        y = np.asarray(train_labels)
        classes = np.unique(y)
        means = np.stack([x[y == k].mean(axis=0) for k in classes])
        centred = x - means[np.searchsorted(classes, y)]
        covariance = ledoit_wolf(centred)
        # The shrinkage keeps the smallest eigenvalue at about its weight times the mean
        # variance; the jitter covers features that are exactly constant (dead ReLUs).
        covariance += 1e-6 * max(np.trace(covariance) / len(covariance), 1e-12) * np.eye(len(covariance))
        fitted.update(means=means, precision=np.linalg.inv(covariance))
    probe = OODDetector(method, math.inf, false_alarm, math.nan, 0, **fitted)
    val_scores = probe.score(val_embeddings, val_logits)
    threshold = threshold_for(val_scores, false_alarm)
    flagged = float(np.mean(~(val_scores <= threshold)))
    return OODDetector(method, threshold, false_alarm, flagged, int(len(val_scores)), threshold_set=threshold_set,
                       **fitted)


__all__ = ["METHODS", "OODDetector", "energy_score", "fit_detector", "mahalanobis_score", "threshold_for"]
