"""benchmarks/select_config.py: how a candidate is read from the command line, and the
order the candidates are ranked in (accuracy first, then log loss)."""

import importlib.util

from support.project import PROJECT

spec = importlib.util.spec_from_file_location("select_config", PROJECT / "benchmarks" / "select_config.py")
select_config = importlib.util.module_from_spec(spec)
spec.loader.exec_module(select_config)


def test_a_candidates_list_value_stays_one_override():
    assert select_config.parse_candidate("two=model.options.dims=[64,32],optim.lr=0.001") == (
        "two", ["model.options.dims=[64,32]", "optim.lr=0.001"])
    assert select_config.parse_candidate("shipped=") == ("shipped", [])


def test_candidates_rank_by_accuracy_then_log_loss():
    def cv(accuracy, log_loss):
        return {"cv": {"accuracy": {"mean": accuracy}, "log_loss": {"mean": log_loss}}}

    results = {"a": cv(0.98, 0.06), "b": cv(0.99, 0.09), "c": cv(0.98, 0.05)}
    assert select_config.ranking(results) == ["b", "c", "a"]
