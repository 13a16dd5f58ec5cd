"""The promotion gate: which rules a model's metrics pass, and what it refuses to judge."""

import pytest

from medray.cluster.config import GateRule
from medray.cluster.errors import ConfigError
from medray.tune.promote import check_gate

METRICS = {
    "val": {"auroc": 0.91, "ece": 0.04, "sensitivity": None, "per_class": {"a": {"f1": 0.9}}, "n": 120},
    "test": {"auroc": 0.80, "ece_calibrated": 0.15, "calibrated": True},
}


def test_each_rule_gets_its_value_and_verdict_in_order():
    rules = [GateRule(metric="val.auroc", min=0.9), GateRule(metric="test.auroc", min=0.85),
             GateRule(metric="test.ece_calibrated", max=0.15), GateRule(metric="val.ece", max=0.03)]
    assert check_gate(METRICS, rules) == [
        {"metric": "val.auroc", "value": 0.91, "min": 0.9, "max": None, "passed": True},
        {"metric": "test.auroc", "value": 0.80, "min": 0.85, "max": None, "passed": False},
        {"metric": "test.ece_calibrated", "value": 0.15, "min": None, "max": 0.15, "passed": True},  # bound included
        {"metric": "val.ece", "value": 0.04, "min": None, "max": 0.03, "passed": False},
    ]


def test_an_undefined_value_fails_its_rule_either_way():
    verdicts = check_gate(METRICS, [GateRule(metric="val.sensitivity", min=0.0),
                                    GateRule(metric="val.sensitivity", max=1.0)])
    assert [v["passed"] for v in verdicts] == [False, False]


@pytest.mark.parametrize("metric", ["val.aurocc", "train.auroc", "auroc", "val.per_class", "test.calibrated"])
def test_a_metric_that_is_not_a_computed_number_is_a_config_error_listing_those_that_are(metric):
    with pytest.raises(ConfigError) as error:
        check_gate(METRICS, [GateRule(metric=metric, min=0.5)])
    assert str(error.value) == (f"gate metric '{metric}' is not computed; choose one of: "
                                "val.auroc, val.ece, val.n, test.auroc, test.ece_calibrated")
