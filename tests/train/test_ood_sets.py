"""The out-of-distribution sets each modality builds (`Modality.ood_sets`) and the figures
evaluation reports on them (`medray.train.evaluate.ood_metrics`)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medray.train.data.decode import decode_image
from medray.train.data.preprocess import Preprocessor
from medray.train.evaluate import ood_metrics, plot_ood_scores, wilson_interval
from medray.train.modalities import MODALITIES, modality


def fitted(name: str, schema: dict, train) -> Preprocessor:
    return Preprocessor.fit({"modality": name, "schema": schema}, train)


def image_case(shape: tuple[int, ...]):
    rng = np.random.default_rng(1)
    stored = rng.integers(0, 256, size=(30, *shape)).astype(np.uint8)
    schema = {"column": "image", "shape": list(shape), "dtype": "uint8"}
    return fitted("image", schema, stored[:20]), stored[20:]


def signal_case(channels: int):
    rng = np.random.default_rng(2)
    shape = (96,) if channels == 1 else (96, channels)
    stored = rng.normal(0, 1, size=(30, *shape)).astype(np.float32)
    schema = {"column": "signal", "shape": list(shape), "dtype": "float32"}
    return fitted("signal", schema, stored[:20]), stored[20:]


TABLE_SCHEMA = {"features": [{"name": "age", "type": "numeric"}, {"name": "chol", "type": "numeric"},
                             {"name": "smoker", "type": "categorical", "categories": ["no", "yes"]}]}


def table_case(schema=TABLE_SCHEMA):
    rng = np.random.default_rng(3)
    frame = pd.DataFrame({"age": rng.uniform(30, 70, 40).round(), "chol": rng.uniform(150, 350, 40).round(),
                          "smoker": np.asarray(["no", "yes"], dtype=object)[rng.integers(0, 2, 40)]})
    frame = frame[[f["name"] for f in schema["features"]]]
    return fitted("tabular", schema, frame.iloc[:30]), frame.iloc[30:].reset_index(drop=True)


SERIES_SCHEMA = {"variables": [{"name": "HR", "range": [0, 300]}, {"name": "Lactate", "range": [0, 40]}],
                 "statics": [{"name": "Age", "column": "static_Age", "categories": None, "range": [15, 120]}],
                 "reference_scores": [], "window_minutes": 2880}


def series_case():
    rng = np.random.default_rng(4)

    def stay():
        count = int(rng.integers(1, 30))
        variable = rng.integers(0, 2, count).astype(np.int16)
        value = np.where(variable == 0, rng.uniform(50, 140, count), rng.uniform(0.5, 8, count))
        return np.sort(rng.uniform(0, 2880, count)).astype(np.float32), variable, value.astype(np.float32)

    stays = [stay() for _ in range(40)]
    frame = pd.DataFrame({name: pd.Series([s[k] for s in stays], dtype=object)
                          for k, name in enumerate(("obs_minutes", "obs_variable", "obs_value"))})
    frame["static_Age"] = rng.uniform(20, 90, 40).round()
    return fitted("timeseries", SERIES_SCHEMA, frame.iloc[:30]), frame.iloc[30:].reset_index(drop=True)


def text_case():
    rng = np.random.default_rng(5)
    words = np.asarray(["the", "patient", "chest", "pain", "tumour", "biopsy", "was", "normal"], dtype=object)
    frame = pd.DataFrame({"text": np.asarray([" ".join(rng.choice(words, 12)) for _ in range(40)], dtype=object)})
    return fitted("text", {"column": "text"}, frame.iloc[:30]), frame.iloc[30:].reset_index(drop=True)


CASES = {"image": lambda: image_case((28, 28)), "signal": lambda: signal_case(1), "tabular": table_case,
         "timeseries": series_case, "text": text_case}
SCHEMAS = {"tabular": TABLE_SCHEMA, "timeseries": SERIES_SCHEMA, "text": {"column": "text"}}
RANDOM_SET = {"tabular": "random_records", "timeseries": "random_observations", "text": "random_words"}
"""Each modality's set drawn at random (the others' is `noise`)."""


def same_features(a, b) -> bool:
    if isinstance(a, pd.DataFrame):  # a column may hold one array per row (ICU stays)
        def same(x: pd.Series, y: pd.Series) -> bool:
            if len(x) and isinstance(x.iloc[0], np.ndarray):
                return len(x) == len(y) and all(np.array_equal(u, v) for u, v in zip(x, y))
            return x.equals(y)
        return list(a.columns) == list(b.columns) and all(same(a[c], b[c]) for c in a.columns)
    return np.array_equal(a, b)
"""What `request_instance` reads of the manifest's schema (tensor modalities read none)."""


def test_every_modality_builds_ood_sets():
    assert set(CASES) == set(MODALITIES)


@pytest.mark.parametrize("name", list(CASES))
def test_sets_are_in_stored_form_and_taken_as_requests(name):
    """Each set is what `features_from_table` returns (so the bundle predicts on it), and
    its rows, sent as requests, pass serving's checks: they are inputs the model would get."""
    preprocessor, test = CASES[name]()
    kind = modality(name)
    sets = kind.ood_sets(preprocessor, test, np.random.default_rng(0))
    assert {ood.kind for ood in sets.values()} == {"far", "near"}
    for set_name, (features, _) in sets.items():
        if isinstance(test, pd.DataFrame):
            assert list(features.columns) == list(test.columns), set_name
            assert all(features[c].dtype == test[c].dtype for c in test.columns), set_name
        else:
            assert features.dtype == test.dtype and features.shape[1:] == test.shape[1:], set_name
        inputs = preprocessor.transform(features)
        assert inputs.shape[1:] == tuple(preprocessor.input_shape) and np.isfinite(inputs).all(), set_name
        rows = [kind.request_instance(features, row, SCHEMAS.get(name, {})) for row in range(min(len(features), 5))]
        kind.decode(preprocessor, rows)  # raises InputError if refused


@pytest.mark.parametrize("name", list(CASES))
def test_sets_are_the_same_under_the_same_seed(name):
    preprocessor, test = CASES[name]()
    kind = modality(name)
    first = kind.ood_sets(preprocessor, test, np.random.default_rng(7))
    again = kind.ood_sets(preprocessor, test, np.random.default_rng(7))
    other = kind.ood_sets(preprocessor, test, np.random.default_rng(8))
    assert list(first) == list(again)
    for set_name in first:
        assert same_features(first[set_name].features, again[set_name].features), set_name
    drawn = RANDOM_SET.get(name, "noise")
    assert not same_features(first[drawn].features, other[drawn].features)


def test_image_sets_hold_pydicoms_ct_and_the_test_images_turned():
    from pydicom.data import get_testdata_file

    preprocessor, test = image_case((28, 28))
    sets = modality("image").ood_sets(preprocessor, test, np.random.default_rng(0))
    assert {"pydicom_ct", "pydicom_mr", "pydicom_other", "handwritten_digits", "blank", "noise"} == \
        {n for n, s in sets.items() if s.kind == "far"}
    assert {"flipped_vertically", "rotated_90"} == {n for n, s in sets.items() if s.kind == "near"}
    with open(get_testdata_file("CT_small.dcm"), "rb") as handle:
        ct = decode_image(handle.read(), 28, "L")
    assert any(np.array_equal(ct, image) for image in sets["pydicom_ct"].features)
    assert len(sets["pydicom_ct"].features) >= 5 and len(sets["pydicom_mr"].features) >= 5
    np.testing.assert_array_equal(sets["flipped_vertically"].features, test[:, ::-1])
    np.testing.assert_array_equal(sets["rotated_90"].features[0], np.rot90(test[0]))
    blank = sets["blank"].features
    assert (blank == blank[:, :1, :1]).all() and len(np.unique(blank[:, 0, 0])) > 1


def test_colour_non_square_images_get_colour_sets_and_no_rotation():
    preprocessor, test = image_case((12, 16, 3))
    sets = modality("image").ood_sets(preprocessor, test, np.random.default_rng(0))
    assert "rotated_90" not in sets
    assert all(s.features.shape[1:] == (12, 16, 3) for s in sets.values())


def test_signal_sets_reverse_time_swap_leads_and_resample_another_ecg():
    preprocessor, test = signal_case(1)
    sets = modality("signal").ood_sets(preprocessor, test, np.random.default_rng(0))
    assert "leads_swapped" not in sets  # one lead: nothing to swap
    np.testing.assert_array_equal(sets["time_reversed"].features, test[:, ::-1])
    other = sets["other_ecg_resampled"].features
    # pydicom's 12-lead ECG: 10 s at 1 kHz -> 12 windows of 0.8 s, plus 1 window of a 1.2 s group.
    assert other.shape == (13 * 12, 96)
    flat = sets["flat"].features
    assert (flat == flat[:, :1]).all()

    preprocessor, test = signal_case(2)
    sets = modality("signal").ood_sets(preprocessor, test, np.random.default_rng(0))
    np.testing.assert_array_equal(sets["leads_swapped"].features, test[:, :, ::-1])
    assert sets["other_ecg_resampled"].features.shape == (13 * 6, 96, 2)


def test_table_sets_sit_at_and_past_the_training_range():
    preprocessor, test = table_case()
    sets = modality("tabular").ood_sets(preprocessor, test, np.random.default_rng(0))
    columns = {c["name"]: c for c in preprocessor.stats["columns"] if c["type"] == "numeric"}
    edge = sets["range_edge"].features
    for name, column in columns.items():
        assert edge[name].isin([column["min"], column["max"]]).all()
    beyond = sets["one_value_beyond_range"].features
    changed = (beyond[list(columns)] != test[list(columns)]).sum(axis=1)
    assert (changed == 1).all()
    for name, column in columns.items():
        moved = beyond[name] != test[name]
        assert ((beyond[name][moved] < column["min"]) | (beyond[name][moved] > column["max"])).all()
    assert sorted(sets["shuffled_columns"].features["age"]) == sorted(test["age"])
    mapped = sets["diabetes_mapped"].features
    from sklearn.datasets import load_diabetes

    diabetes = load_diabetes(as_frame=True, scaled=False).frame
    assert len(mapped) == 442 and mapped["chol"].tolist() == diabetes["s1"].tolist()
    assert mapped["smoker"].isna().all()


def test_a_table_without_the_mapped_features_gets_no_mapped_set():
    schema = {"features": [f for f in TABLE_SCHEMA["features"] if f["name"] != "chol"]}
    preprocessor, test = table_case(schema)
    assert "diabetes_mapped" not in modality("tabular").ood_sets(preprocessor, test, np.random.default_rng(0))


# Metrics ------------------------------------------------------------------------------


def test_ood_metrics_rates_and_aurocs():
    in_scores = np.arange(100.0)  # 95 of 100 at or below 94.5: 5% false alarms
    sets = {"apart": (np.arange(100.0, 150.0), "far"), "alike": (np.arange(100.0), "near"),
            "half": (np.r_[np.full(10, -1.0), np.full(10, 1000.0)], "far")}
    m = ood_metrics(in_scores, sets, threshold=94.5, n_boot=50)
    assert m["false_alarm_rate"] == pytest.approx(0.05)
    assert m["false_alarm_ci"] == pytest.approx([0.02154, 0.11175], abs=1e-4)
    assert m["sets"]["apart"]["auroc"] == 1.0 and m["sets"]["apart"]["detection_rate"] == 1.0
    assert m["sets"]["alike"]["auroc"] == pytest.approx(0.5) and m["sets"]["alike"]["detection_rate"] == 0.05
    assert m["sets"]["half"]["auroc"] == pytest.approx(0.5) and m["sets"]["half"]["detection_rate"] == 0.5
    assert m["far"]["n"] == 70 and m["far"]["detection_rate"] == pytest.approx(60 / 70)
    assert m["far"]["min_auroc"] == pytest.approx(0.5) and m["far"]["sets"] == ["apart", "half"]
    assert m["near"]["auroc"] == pytest.approx(0.5)
    assert m["target_met"] is False
    assert ood_metrics(in_scores, {"apart": sets["apart"]}, threshold=94.5, n_boot=0)["target_met"] is True
    # More than 5% false alarms misses the target whatever the AUROC.
    assert ood_metrics(in_scores, {"apart": sets["apart"]}, threshold=90.5, n_boot=0)["target_met"] is False


def test_a_score_the_detector_cannot_place_counts_as_flagged():
    m = ood_metrics(np.zeros(10), {"broken": (np.array([np.inf, np.nan]), "far")}, threshold=0.5, n_boot=0)
    assert m["sets"]["broken"]["detection_rate"] == 1.0 and m["sets"]["broken"]["auroc"] == 1.0
    assert m["near"] is None


def test_ood_metrics_refuse_an_unknown_kind():
    with pytest.raises(ValueError, match="far"):
        ood_metrics(np.zeros(3), {"x": (np.ones(3), "medium")}, threshold=0.5)


def test_wilson_interval_holds_the_rate_and_stays_in_0_1():
    assert wilson_interval(0, 20)[0] == 0.0 and 0 < wilson_interval(0, 20)[1] < 0.2
    assert wilson_interval(0, 0) == [None, None]


def test_the_score_plot_is_written(tmp_path):
    path = plot_ood_scores(np.arange(10.0), {"noise": (np.array([50.0, np.inf]), "far")}, 8.5, tmp_path / "o.png")
    assert (tmp_path / "o.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.endswith("o.png")
