"""The numeric range serving accepts: fitted on the train split, stored with the
preprocessing, and for checkpoints saved before it was stored, what float32 allows."""

import json

import numpy as np
import pytest

from medray.train.data.preprocess import Preprocessor


def test_fit_stores_training_extremes_and_they_survive_the_checkpoint_json():
    manifest = {"modality": "tabular", "schema": {"features": [
        {"name": "age", "type": "numeric"}, {"name": "empty", "type": "numeric"},
        {"name": "sex", "type": "categorical", "categories": ["f", "m"]}]}}
    pre = Preprocessor.fit(manifest, {"age": np.array([20.0, np.nan, 90.0, 45.0]),
                                      "empty": np.array([np.nan] * 4), "sex": np.array(["f", "m", "f", "m"])})
    age, empty = pre.stats["columns"][:2]
    assert (age["min"], age["max"]) == (20.0, 90.0)
    assert (empty["min"], empty["max"]) == (None, None)
    again = Preprocessor.from_dict(json.loads(json.dumps(pre.to_dict(), allow_nan=False)))
    # 70 years of span, ten spans each side, rounded outward to tens.
    assert again.accepted_range("age") == (-680.0, 790.0)
    low, high = again.accepted_range("empty")  # nothing fitted: only float32's limit
    assert low < -1e30 and high > 1e30


def test_signal_channels_get_their_own_range():
    train = np.zeros((3, 5, 2))
    train[:, :, 0] = [[0.0, 0.5, 1.0, 0.2, 0.1]] * 3
    train[:, :, 1] = [[100.0, 300.0, 200.0, np.nan, 150.0]] * 3
    pre = Preprocessor.fit({"modality": "signal", "schema": {"column": "signal"}}, train)
    assert (pre.stats["min"], pre.stats["max"]) == ([0.0, 100.0], [1.0, 300.0])
    assert pre.accepted_range(0) == (-10.0, 11.0)
    assert pre.accepted_range(1) == (-1900.0, 2300.0)


@pytest.mark.parametrize("mean, std", [(0.0, 1.0), (5.0, 1e6)])
def test_an_old_checkpoint_takes_what_float32_normalisation_can_represent(mean, std):
    old = Preprocessor("signal", "signal", [96, 1], {"mean": [mean], "std": [std]})  # no min/max stored
    low, high = old.accepted_range(0)
    float32_max = float(np.finfo(np.float32).max)
    assert -float32_max < low < mean < high < float32_max
    for edge in (low, high):
        assert np.isfinite(old.transform(np.full((1, 96), edge))).all()
    assert Preprocessor("image", "image", [1, 4, 4], {"mean": [0.5], "std": [0.2]}).accepted_range(0) == (0.0, 255.0)
