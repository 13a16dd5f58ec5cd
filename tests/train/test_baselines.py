"""The same-run classical baselines of the image, signal and tabular modalities, on
cases worked out by hand: 1-NN's score and accuracy, the records as a matrix, and the
logistic regression each fits on the train split."""

import numpy as np
import pandas as pd
import pytest

from medray.train.data.preprocess import LabelMap
from medray.train.evaluate import baseline_metrics
from medray.train.modalities import modality
from medray.train.modalities.signal import nearest_neighbour_baseline
from medray.train.modalities.tabular import baseline_matrix

LABELS = LabelMap.build(["normal", "abnormal"])


def test_one_nearest_neighbour_scores_the_distance_gap_and_predicts_the_nearest_class():
    train = np.array([[0.0, 0.0], [10.0, 10.0], [0.0, 1.0]])[:, :, None]  # (N, L, 1)
    test = np.array([[1.0, 1.0], [9.0, 9.0], [6.0, 6.0]])[:, :, None]
    b = nearest_neighbour_baseline(train, np.array([0, 1, 0]), test)
    # Nearest class 0 minus nearest class 1: (1 - sqrt(162)), (sqrt(145) - sqrt(2)), (sqrt(61) - sqrt(32)).
    assert b.scores == pytest.approx([1 - np.sqrt(162), np.sqrt(145) - np.sqrt(2), np.sqrt(61) - np.sqrt(32)])
    assert b.threshold == 0.0
    out = baseline_metrics(np.array([0, 1, 0]), b.scores, n_boot=0, threshold=b.threshold)
    assert out["accuracy"] == pytest.approx(2 / 3)  # the third series is nearer class 1
    assert "accuracy" not in baseline_metrics(np.array([0, 1, 0]), b.scores, n_boot=0)  # no threshold: none


def test_records_become_numbers_and_category_indicators_with_unknowns_missing():
    schema = {"features": [{"name": "age", "type": "numeric"},
                           {"name": "sex", "type": "categorical", "categories": ["f", "m"]}]}
    matrix = baseline_matrix(schema, pd.DataFrame({"age": [50.0, np.nan, 70.0], "sex": ["m", "f", None]}))
    np.testing.assert_array_equal(matrix, [[50.0, 0.0, 1.0], [np.nan, 1.0, 0.0], [70.0, np.nan, np.nan]])


@pytest.mark.parametrize("name", ["image", "signal", "tabular"])
def test_each_fits_logistic_regression_on_train_and_scores_every_test_row(name):
    rng = np.random.default_rng(0)
    y = np.array([0, 1] * 20)
    values = rng.normal(size=(40, 4, 4)) + 2.0 * y[:, None, None]  # class 1 brighter / higher
    if name == "tabular":
        schema = {"features": [{"name": f"x{i}", "type": "numeric"} for i in range(3)]}
        features = pd.DataFrame({f"x{i}": values[:, i, 0] for i in range(3)})
        train, test = (features.iloc[:30], y[:30]), (features.iloc[30:], y[30:])
    else:
        schema = {}
        train, test = (values[:30], y[:30]), (values[30:], y[30:])
    found = modality(name).baselines(schema, train, test, LABELS, seed=0)
    assert set(found) == ({"logistic_regression", "1nn_euclidean"} if name == "signal" else {"logistic_regression"})
    for baseline in found.values():
        out = baseline_metrics(y[30:], baseline.scores, n_boot=0, threshold=baseline.threshold)
        assert out["n"] == 10 and out["auroc"] == 1.0 and out["accuracy"] == 1.0
