"""train/subgroups.py: subgroups named by attribute and condition, their figures against
scikit-learn and hand counts, the worst subgroup, and the gate on it."""

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from medray.cluster.config import GateRule
from medray.cluster.errors import ConfigError
from medray.train.evaluate import wilson_interval
from medray.train.modalities import modality
from medray.train.subgroups import evaluate_subgroups, subgroup_masks
from medray.tune.promote import check_gate

AGES = np.array([70.0, 40.0, 66.0, np.nan, 65.0, 30.0])
SEX = np.array(["F", "M", "F", "M", None, "F"], dtype=object)


def test_a_condition_splits_the_known_cases_in_two_and_unknowns_join_neither():
    masks = subgroup_masks("age >= 65", {"age": AGES})
    assert list(masks) == ["age >= 65", "age < 65"]
    assert masks["age >= 65"].tolist() == [True, False, True, False, True, False]
    assert masks["age < 65"].tolist() == [False, True, False, False, False, True]


def test_a_name_alone_makes_one_subgroup_per_value():
    masks = subgroup_masks("sex", {"sex": SEX})
    assert list(masks) == ["sex = F", "sex = M"]
    assert masks["sex = F"].sum() == 3 and masks["sex = M"].sum() == 2
    assert list(subgroup_masks("ICUType", {"ICUType": np.array([1.0, 2.0, 2.0])})) == ["ICUType = 1", "ICUType = 2"]


@pytest.mark.parametrize("spec, attributes, message", [
    ("weight", {"age": AGES}, "'weight' is not an attribute of the cases; they have: age"),
    ("age", {"age": np.arange(30.0)}, "'age' has 30 distinct values .* give a condition such as 'age >= NUMBER'"),
    ("sex >= 1", {"sex": SEX}, "'sex' is not numeric"),
    ("x", {}, "they have: none"),
])
def test_subgroups_that_cannot_be_formed_are_config_errors(spec, attributes, message):
    with pytest.raises(ConfigError, match=message):
        subgroup_masks(spec, attributes)


def test_each_subgroups_figures_equal_those_computed_on_its_cases_alone():
    rng = np.random.default_rng(0)
    n = 400
    age = rng.uniform(20, 90, n)
    y = (rng.random(n) < 0.4).astype(int)
    p1 = np.clip(0.3 * y + rng.uniform(0, 0.7, n), 0, 1)
    probs = np.column_stack([1 - p1, p1])
    result = evaluate_subgroups(["age >= 65"], {"age": age}, y, probs, threshold=0.5, n_boot=100, seed=1)
    older = next(g for g in result["groups"] if g["subgroup"] == "age >= 65")
    rows = age >= 65
    assert older["n"] == rows.sum() and older["positives"] == y[rows].sum()
    assert older["auroc"] == pytest.approx(roc_auc_score(y[rows], p1[rows]))
    assert older["auroc_ci"][0] <= older["auroc"] <= older["auroc_ci"][1]
    hits = int(((p1 >= 0.5) & (y == 1) & rows).sum())
    assert older["sensitivity"] == pytest.approx(hits / (y[rows] == 1).sum())
    assert older["sensitivity_ci"] == wilson_interval(hits, int((y[rows] == 1).sum()))
    assert older["brier"] == pytest.approx(np.mean((p1[rows] - y[rows]) ** 2))
    assert result["worst"]["auroc"] == min(g["auroc"] for g in result["groups"])
    # The gate can ask a minimum of the worst subgroup.
    verdict, = check_gate({"subgroups": result}, [GateRule(metric="subgroups.worst.auroc", min=0.99)])
    assert verdict["value"] == result["worst"]["auroc"] and not verdict["passed"]


def test_a_subgroup_with_one_class_reports_what_is_defined():
    result = evaluate_subgroups(["sex"], {"sex": np.array(["F", "F", "M", "M"], dtype=object)},
                                np.array([1, 1, 0, 1]), np.array([[0.2, 0.8], [0.6, 0.4], [0.7, 0.3], [0.1, 0.9]]),
                                threshold=0.5, n_boot=0)
    women = result["groups"][0]
    assert women["subgroup"] == "sex = F" and women["auroc"] is None and women["specificity"] is None
    assert women["sensitivity"] == 0.5 and women["accuracy"] == 0.5


def test_tables_and_icu_stays_name_their_attributes():
    schema = {"features": [{"name": "age", "type": "numeric"}, {"name": "sex", "type": "categorical"}]}
    frame = pd.DataFrame({"age": [50.0, 70.0], "sex": ["F", "M"]})
    assert list(modality("tabular").attributes(schema, frame)) == ["age", "sex"]
    stays = pd.DataFrame({"static_Age": [70.0, 40.0], "static_ICUType": [1.0, 2.0]})
    statics = {"statics": [{"name": "Age", "column": "static_Age"}, {"name": "ICUType", "column": "static_ICUType"}]}
    assert modality("timeseries").attributes(statics, stays)["ICUType"].tolist() == [1.0, 2.0]
    assert modality("image").attributes({}, np.zeros((2, 4, 4))) == {}
