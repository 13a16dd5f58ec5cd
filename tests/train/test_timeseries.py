"""The clinical time-series modality: the grid, masks and GRU-D's delta worked out by
hand for a tiny patient, the per-variable aggregates of the classical baselines, and
patient requests (each problem named by its field, never its value)."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from medray.cluster.errors import InputError
from medray.train.data.preprocess import LabelMap, Preprocessor
from medray.train.modalities import modality
from medray.train.modalities.timeseries import (
    aggregate_features,
    grid,
    model_variables,
    observation_saliency,
    timeseries_baselines,
)

KIND = modality("timeseries")
SCHEMA = {
    "variables": [{"name": "HR", "range": [0, 300]}, {"name": "Temp", "range": [14, 46]}],
    "statics": [{"name": "Age", "column": "static_Age", "categories": None},
                {"name": "ICUType", "column": "static_ICUType", "categories": [1, 2]}],
    "reference_scores": [{"name": "SAPS-I", "column": "score_SAPS_I", "higher_is": "worse"}],
    "window_minutes": 240,
}


def patients(*rows):
    """Stored columns for patients given as (observations [(minutes, variable, value)], age, icu type)."""
    def lists(k, dtype):
        column = np.empty(len(rows), dtype=object)
        column[:] = [np.asarray([o[k] for o in obs], dtype=dtype) for obs, *_ in rows]
        return column
    return pd.DataFrame({
        "obs_minutes": lists(0, np.float32), "obs_variable": lists(1, np.int16), "obs_value": lists(2, np.float32),
        "static_Age": np.asarray([r[1] for r in rows], dtype=np.float64),
        "static_ICUType": np.asarray([r[2] for r in rows], dtype=np.float64),
        "score_SAPS_I": np.asarray([r[3] if len(r) > 3 else np.nan for r in rows], dtype=np.float64)})


STATS = {"variables": [{"name": "HR", "mean": 80.0, "std": 10.0, "range": [0, 300]},
                       {"name": "Temp", "mean": 37.0, "std": 1.0, "range": [14, 46]}],
         "statics": [{"name": "Age", "column": "static_Age", "categories": None, "mean": 60.0, "std": 10.0},
                     {"name": "ICUType", "column": "static_ICUType", "categories": [1, 2]}],
         "window_minutes": 240, "step_minutes": 60, "steps": 4}


def test_the_grid_masks_and_delta_of_a_tiny_patient_worked_out_by_hand():
    # HR 90 and 100 in hour 0 (mean 95), Temp 38 in hour 2; age 70, ICU type 2.
    rows = patients(([(10, 0, 90), (30, 0, 100), (130, 1, 38)], 70.0, 2.0))
    out = grid(STATS, rows)[0]
    assert out.shape == (4, 5, 3) and model_variables(STATS) == ["HR", "Temp", "Age", "ICUType=1", "ICUType=2"]
    value, mask, delta = out[..., 0], out[..., 1], out[..., 2]
    # Hour 0's HR is the mean of its two, standardised, then carried forward; Temp is the
    # training mean (0) until hour 2. Statics are observations at step 0: age (70-60)/10,
    # ICU type as indicators (0 for type 1, 1 for type 2).
    np.testing.assert_allclose(value, [[1.5, 0, 1, 0, 1], [1.5, 0, 1, 0, 1], [1.5, 1, 1, 0, 1], [1.5, 1, 1, 0, 1]])
    np.testing.assert_array_equal(mask, [[1, 0, 1, 1, 1], [0, 0, 0, 0, 0], [0, 1, 0, 0, 0], [0, 0, 0, 0, 0]])
    # GRU-D's delta in days: 0 at step 0; one step (1/24) after an observed step, else one
    # step more than the step before.
    hour = 1 / 24
    np.testing.assert_allclose(delta[:, 0], [0, hour, 2 * hour, 3 * hour], rtol=1e-6)
    np.testing.assert_allclose(delta[:, 1], [0, hour, 2 * hour, hour], rtol=1e-6)


def test_saliency_of_carried_values_is_credited_to_the_observation_they_came_from():
    # One variable observed at steps 0 and 2 of 4; saliency 1 at each step.
    mask = np.array([[[1.0], [0.0], [1.0], [0.0]]])
    cells = np.array([[[0.1], [0.2], [0.3], [0.4]]])
    credited = observation_saliency(cells, mask)
    # Step 0's observation carries into step 1 (0.1 + 0.2), step 2's into step 3 (0.3 + 0.4).
    np.testing.assert_allclose(credited[0, :, 0], [0.3 / 0.7, 0, 1, 0])
    assert observation_saliency(cells, np.zeros_like(mask)).max() == 0  # nothing observed: nothing named


def test_observations_outside_the_window_and_unknown_statics_leave_no_trace():
    rows = patients(([(-5, 0, 200), (241, 0, 200), (240, 0, 80)], np.nan, np.nan))
    out = grid(STATS, rows)[0]
    # 240 min is the window's last minute: in the last step, at the mean (80 -> 0).
    assert out[..., 1].sum() == 1 and out[3, 0, 1] == 1 and out[3, 0, 0] == 0
    assert not out[:, 2:, 1].any()  # no static known


def test_a_right_skewed_lab_value_is_standardised_after_log1p():
    values = [1, 1, 2, 2, 3, 3, 4, 5, 8, 1000]  # a long tail: troponin, ALT, urine output
    rows = patients(([(i, 0, v) for i, v in enumerate(values)] + [(0, 1, 37), (1, 1, 38)], 50.0, 1.0))
    fitted = Preprocessor.fit({"modality": "timeseries", "schema": SCHEMA}, rows)
    hr, temp = fitted.stats["variables"]
    assert hr["log"] and not temp["log"]
    assert hr["mean"] == pytest.approx(np.log1p(values).mean()) and (hr["min"], hr["max"]) == (1, 1000)


def test_per_variable_aggregates_over_the_window():
    rows = patients(([(50, 0, 90), (10, 0, 70), (100, 0, 80), (300, 0, 500)], 70.0, 2.0), ([], np.nan, 1.0))
    features, names = aggregate_features(SCHEMA, rows)
    column = {name: features[:, i] for i, name in enumerate(names)}
    # Patient 0's HR in time order: 70, 90, 80 (minute 300 lies after the window).
    assert [column[f"HR.{a}"][0] for a in ("first", "last", "min", "max", "mean", "count")] == [70, 80, 70, 90, 80, 3]
    assert column["HR.count"][1] == 0 and math.isnan(column["HR.mean"][1]) and column["Temp.count"][0] == 0
    assert column["Age"][0] == 70 and math.isnan(column["Age"][1])
    assert column["ICUType=2"].tolist() == [1, 0] and column["ICUType=1"].tolist() == [0, 1]


def test_reference_scores_predict_the_datasets_class_1_whichever_class_training_calls_positive():
    rng = np.random.default_rng(0)
    train = patients(*[([(10, 0, 60 + 40 * (i % 2) + rng.normal())], 60.0, 1.0) for i in range(200)])
    test = patients(([(10, 0, 60)], 60.0, 1.0, 3.0), ([(10, 0, 100)], 60.0, 1.0, 12.0), ([], 60.0, 1.0))
    labels = np.arange(200) % 2
    kept = timeseries_baselines(SCHEMA, (train, labels), (test, None), LabelMap.build(["lived", "died"]), 0)
    flipped = timeseries_baselines(SCHEMA, (train, labels), (test, None),
                                   LabelMap.build(["lived", "died"], positive_class="lived"), 0)
    np.testing.assert_array_equal(kept["SAPS-I"].scores[:2], [3, 12])
    np.testing.assert_array_equal(flipped["SAPS-I"].scores[:2], [-3, -12])
    assert math.isnan(kept["SAPS-I"].scores[2])
    # HR separates the classes in train: the fitted baselines rank patient 1 above patient 0.
    for name in ("logistic_regression", "hist_gradient_boosting"):
        assert kept[name].scores[1] > kept[name].scores[0] and flipped[name].scores[1] < flipped[name].scores[0]


# Requests ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fitted():
    rows = patients(([(10, 0, 80), (20, 1, 37.0)], 40.0, 1.0), ([(30, 0, 100), (40, 1, 38.5)], 80.0, 2.0))
    return Preprocessor.fit({"modality": "timeseries", "schema": SCHEMA}, rows), rows


def test_a_patient_request_in_clock_time_or_minutes_decodes_to_the_stored_patient(fitted):
    preprocessor, rows = fitted
    request = {"static": {"Age": 40, "ICUType": 1},
               "observations": [{"time": "00:20", "variable": "Temp", "value": 37.0},
                                {"time": 10, "variable": "HR", "value": 80}]}
    np.testing.assert_array_equal(preprocessor.transform(KIND.decode(preprocessor, [request])),
                                  preprocessor.transform(rows)[:1])
    # A static left out or null is unknown, as a missing static in training.
    unknown = KIND.decode(preprocessor, [{"observations": []}, {"static": {"Age": None}, "observations": []}])
    assert np.isnan(unknown["static_Age"]).all() and np.isnan(unknown["static_ICUType"]).all()


SECRET = 987654.25  # a value no error may echo


@pytest.mark.parametrize("patient, message", [
    ({"observations": [{"time": "00:10", "variable": "HRX", "value": 80}]},
     r"^instances\[0\]\.observations\[0\]\.variable: not a variable the model takes \(HR, Temp\)$"),
    ({"observations": [{"time": "49:00", "variable": "HR", "value": 80}]},
     r"^instances\[0\]\.observations\[0\]\.time: must lie within the model's window, 0 to 240 minutes"),
    ({"observations": [{"time": SECRET, "variable": "HR", "value": 80}]}, r"\.time: must lie within"),
    ({"observations": [{"time": "ten past", "variable": "HR", "value": 80}]}, r"\.time: must be 'HH:MM'"),
    ({"observations": [{"time": 5, "variable": "HR", "value": SECRET}]},
     r"^instances\[0\]\.observations\[0\]\.value: must lie in \[0, 300\]$"),
    ({"observations": [{"time": 5, "variable": "HR", "value": -3}]}, r"\.value: must lie in \[0, 300\]"),
    ({"observations": [{"time": 5, "variable": "HR", "value": "87"}]}, r"\.value: must be a number$"),
    ({"observations": [{"time": 5, "variable": "HR", "value": True}]}, r"\.value: must be a number$"),
    ({"observations": [{"time": 5, "variable": "HR", "value": 80, "note": "x"}]}, r"exactly 'time', 'variable'"),
    ({"static": {"ICUType": 7}, "observations": []}, r"^instances\[0\]\.static\.ICUType: must be one of 1, 2 or null$"),
    ({"static": {"Age": SECRET}, "observations": []}, r"^instances\[0\]\.static\.Age: must lie in"),
    ({"static": {"Name": "Jane Doe"}, "observations": []}, r"^instances\[0\]\.static: 1 descriptor\(s\) the model"),
    ({"static": {}, "observations": {}}, r"^instances\[0\]\.observations: must be an array$"),
    ("a patient", r"^instances\[0\]: must be an object"),
])
def test_a_bad_patient_is_refused_naming_the_field_never_the_value(fitted, patient, message):
    preprocessor, _ = fitted
    with pytest.raises(InputError, match=message) as refused:
        KIND.decode(preprocessor, [patient])
    for secret in (str(SECRET), "HRX", "Jane Doe", "ten past", "Name"):
        assert secret not in str(refused.value)


def test_a_stored_patient_sent_back_as_json_transforms_identically(fitted):
    preprocessor, rows = fitted
    instances = [KIND.request_instance(rows, row, SCHEMA) for row in range(2)]
    json.dumps(instances, allow_nan=False)
    np.testing.assert_array_equal(preprocessor.transform(KIND.decode(preprocessor, instances)),
                                  preprocessor.transform(rows))


def test_the_input_schema_lists_variables_statics_and_window(fitted):
    schema = KIND.input_schema(fitted[0])
    assert schema["window_minutes"] == 240 and [v["name"] for v in schema["variables"]] == ["HR", "Temp"]
    assert schema["variables"][0]["range"] == [0.0, 300.0]
    assert schema["statics"][1] == {"name": "ICUType", "categories": [1, 2]}


def test_the_ood_sets_keep_the_stored_form(fitted):
    preprocessor, rows = fitted
    sets = KIND.ood_sets(preprocessor, rows, np.random.default_rng(0))
    assert {name: s.kind for name, s in sets.items()} == {
        "time_reversed": "near", "values_on_other_variables": "near", "random_observations": "far",
        "no_observations": "far"}
    for ood in sets.values():
        assert preprocessor.transform(ood.features).shape == (2, *preprocessor.input_shape)
    reversed_minutes = sets["time_reversed"].features["obs_minutes"][0]
    np.testing.assert_array_equal(reversed_minutes, [220, 230])
