"""The out-of-distribution detector: values checked against known cases, not just shapes."""

import json

import numpy as np
import pytest
from scipy import stats

from medray.train.ood import OODDetector, energy_score, fit_detector, mahalanobis_score, threshold_for

DIM = 8


def gaussian_classes(rng, n_per_class):
    """Two classes, N(+-2 e_0, I): the Mahalanobis score of an in-distribution case is
    close to a chi-square with DIM degrees of freedom (the nearer mean is almost always its own)."""
    means = np.zeros((2, DIM))
    means[0, 0], means[1, 0] = -2.0, 2.0
    labels = np.repeat([0, 1], n_per_class)
    return means[labels] + rng.standard_normal((len(labels), DIM)), labels


def test_mahalanobis_recovers_the_gaussian_case_and_flags_the_stated_share():
    rng = np.random.default_rng(0)
    train_x, train_y = gaussian_classes(rng, 2000)
    val_x, _ = gaussian_classes(rng, 1000)
    test_x, _ = gaussian_classes(rng, 2000)
    no_logits = np.zeros((len(val_x), 2))
    detector = fit_detector(train_x, train_y, val_x, no_logits, false_alarm=0.05)
    np.testing.assert_allclose(detector.means[:, 0], [-2.0, 2.0], atol=0.06)
    np.testing.assert_allclose(detector.precision, np.eye(DIM), atol=0.08)
    # The threshold is the 95% point of chi-square(DIM), up to sampling error.
    assert detector.threshold == pytest.approx(stats.chi2.ppf(0.95, DIM), rel=0.07)
    assert detector.val_false_alarm <= 0.05 and detector.n_val == 2000
    flagged = detector.flags(test_x, np.zeros((len(test_x), 2))).mean()
    assert abs(flagged - 0.05) < 3 * np.sqrt(0.05 * 0.95 / len(test_x))  # within 3 standard errors
    far = rng.standard_normal((200, DIM)) + 8.0
    assert detector.flags(far, np.zeros((200, 2))).all()


def test_mahalanobis_uses_the_shared_covariance():
    means, precision = np.zeros((1, 2)), np.diag([1.0, 1 / 4.0])  # variance 4 along the second axis
    points = np.array([[2.0, 0.0], [0.0, 2.0], [0.0, 4.0]])
    np.testing.assert_allclose(mahalanobis_score(points, means, precision), [4.0, 1.0, 4.0])


def test_energy_is_minus_logsumexp():
    logits = np.array([[0.0, 0.0], [10.0, -10.0], [1000.0, 1000.0]])
    np.testing.assert_allclose(energy_score(logits), [-np.log(2), -10 - np.log1p(np.exp(-20)), -1000 - np.log(2)])
    rng = np.random.default_rng(1)
    confident = np.column_stack([rng.normal(8, 1, 500), np.zeros(500)])
    detector = fit_detector(None, None, None, confident, false_alarm=0.1, method="energy")
    assert detector.flags(None, np.zeros((3, 2))).all()  # flat logits: the model knows none of its classes


def test_threshold_is_the_conformal_rank():
    scores = np.arange(1.0, 20.0)  # 19 scores: rank ceil(20 * 0.95) = 19, the largest
    assert threshold_for(scores, 0.05) == 19.0
    assert threshold_for(scores, 0.10) == 18.0  # rank ceil(20 * 0.9) = 18
    assert threshold_for(np.array([3.0, np.nan, 1.0]), 0.5) == 3.0  # ceil(3 * 0.5) = 2nd of the finite ones


def test_a_non_finite_score_is_flagged():
    detector = OODDetector("energy", 0.0, 0.05, 0.05, 10)
    assert detector.flags(None, np.array([[np.nan, 0.0], [5.0, 5.0]])).tolist() == [True, False]


def test_round_trip_through_json_keeps_the_scores():
    rng = np.random.default_rng(2)
    train_x, train_y = gaussian_classes(rng, 100)
    val_x, _ = gaussian_classes(rng, 50)
    detector = fit_detector(train_x, train_y, val_x, np.zeros((100, 2)))
    again = OODDetector.from_dict(json.loads(json.dumps(detector.to_dict())))
    assert again.summary() == detector.summary()
    probe = rng.standard_normal((20, DIM)) * 3
    # float32 storage: scores agree to float32 precision.
    np.testing.assert_allclose(again.score(probe, None), detector.score(probe, None), rtol=1e-5)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="false_alarm"):
        fit_detector(None, None, None, np.zeros((3, 2)), false_alarm=0.0, method="energy")
    with pytest.raises(ValueError, match="OOD method"):
        fit_detector(None, None, None, np.zeros((3, 2)), method="knn")
    with pytest.raises(ValueError, match="class means"):
        OODDetector("mahalanobis", 1.0, 0.05, 0.05, 10)


def test_a_detector_on_some_columns_scores_as_one_fitted_on_those_columns_alone():
    # An ensemble's detector reads its first member's block of the concatenated features.
    rng = np.random.default_rng(3)
    train_x, train_y = gaussian_classes(rng, 200)
    val_x, _ = gaussian_classes(rng, 100)
    noise = lambda x: np.hstack([x, rng.standard_normal((len(x), 5)) * 100])  # a second member's block
    alone = fit_detector(train_x, train_y, val_x, None)
    block = fit_detector(noise(train_x), train_y, noise(val_x), None, columns=(0, DIM), threshold_set="fold_0")
    assert block.threshold == pytest.approx(alone.threshold) and block.dim == DIM
    probe = rng.standard_normal((10, DIM))
    np.testing.assert_allclose(block.score(noise(probe), None), alone.score(probe, None))
    again = OODDetector.from_dict(json.loads(json.dumps(block.to_dict())))
    assert again.columns == (0, DIM) and again.threshold_set == "fold_0"
    assert again.summary() == block.summary() and block.summary()["columns"] == [0, DIM]
    with pytest.raises(ValueError, match="do not match"):
        OODDetector("mahalanobis", 1.0, 0.05, 0.05, 10, means=block.means, precision=block.precision, columns=(0, 3))
