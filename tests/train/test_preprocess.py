import numpy as np
import pandas as pd
import pytest

from medray.cluster.errors import ConfigError
from medray.train.data.preprocess import LabelMap, Preprocessor


def test_label_map_merges_and_orders_classes():
    labels = LabelMap.build(["0", "1", "2", "3", "4"], {"no_disease": ["0"], "disease": ["1", "2", "3", "4"]})
    assert labels.classes == ["no_disease", "disease"]
    np.testing.assert_array_equal(labels.apply(np.array([0, 1, 4, 0, 2])), [0, 1, 1, 0, 1])


def test_positive_class_becomes_label_one():
    labels = LabelMap.build(["malignant", "benign"], positive_class="malignant")
    assert labels.classes == ["benign", "malignant"]
    np.testing.assert_array_equal(labels.apply(np.array([0, 1, 1])), [1, 0, 0])
    assert LabelMap.from_dict(labels.to_dict()) == labels


@pytest.mark.parametrize("groups, positive, message", [
    ({"a": ["0"], "b": ["1"]}, None, "missing: \\['2'\\]"),
    ({"a": ["0", "1"], "b": ["1", "2"]}, None, "twice: \\['1'\\]"),
    ({"a": ["0", "9"], "b": ["1", "2"]}, None, "does not have"),
    (None, "2", "must be one of two classes"),
])
def test_label_map_errors(groups, positive, message):
    with pytest.raises(ConfigError, match=message):
        LabelMap.build(["0", "1", "2"], groups, positive)


def test_image_preprocessing_standardises_with_train_statistics():
    manifest = {"modality": "image", "schema": {"column": "image", "shape": [4, 4], "dtype": "uint8"}}
    train = np.stack([np.full((4, 4), 0, np.uint8), np.full((4, 4), 255, np.uint8)])
    pre = Preprocessor.fit(manifest, train)
    assert pre.input_shape == [1, 4, 4]
    assert pre.stats["mean"] == pytest.approx([0.5]) and pre.stats["std"] == pytest.approx([0.5])
    out = pre.transform({"image": train})
    assert out.shape == (2, 1, 4, 4) and out.dtype == np.float32
    np.testing.assert_allclose(out[:, 0, 0, 0], [-1.0, 1.0], atol=1e-6)
    np.testing.assert_array_equal(pre.transform(train), out)  # the bare array, as evaluation passes it


def test_signal_preprocessing_is_time_major_and_fills_gaps():
    manifest = {"modality": "signal", "schema": {"column": "signal", "shape": [3], "dtype": "float64"}}
    train = np.array([[1.0, 2.0, 3.0], [3.0, 4.0, 5.0]])
    pre = Preprocessor.fit(manifest, train)
    assert pre.input_shape == [3, 1]
    out = pre.transform({"signal": np.array([[3.0, np.nan, 3.0]])})
    np.testing.assert_allclose(out[0, :, 0], [0.0, 0.0, 0.0], atol=1e-6)


def test_tabular_preprocessing_imputes_scales_and_one_hot_encodes():
    manifest = {"modality": "tabular", "schema": {"features": [
        {"name": "age", "type": "numeric"},
        {"name": "smoker", "type": "categorical", "categories": ["no", "yes"]},
    ]}}
    train = pd.DataFrame({"age": [40.0, 60.0, np.nan], "smoker": ["no", "yes", None]})
    pre = Preprocessor.fit(manifest, train)
    assert pre.feature_names == ["age", "smoker=no", "smoker=yes"]
    # median 50 fills the gap; mean 50, std sqrt(200/3)
    out = pre.transform(train)
    std = np.sqrt(200 / 3)
    np.testing.assert_allclose(out, [[-10 / std, 1, 0], [10 / std, 0, 1], [0, 0, 0]], atol=1e-5)
    restored = Preprocessor.from_dict(pre.to_dict())
    np.testing.assert_array_equal(restored.transform(train), out)
