"""The quality table covers every shipped config, and its summary over seeds is the
mean with the sample sd (ddof 1), a level met or not by that mean."""

import statistics

import pytest

from medray.cluster.config import load_config
from medray.quality import QUALITY, Level, level_met, mean_sd_text, summarize
from support.project import PROJECT

CONFIGS = sorted((PROJECT / "train" / "configs").glob("*.yaml"))


def test_every_shipped_config_has_its_entry_and_dataset():
    assert sorted(QUALITY) == [p.stem for p in CONFIGS]
    for path in CONFIGS:
        assert QUALITY[path.stem].dataset == load_config(path, []).data.dataset
        for level in QUALITY[path.stem].levels:  # a levelled metric is one the benchmark records
            assert level.metric in QUALITY[path.stem].metrics


def test_summary_is_the_mean_and_the_sample_sd_of_the_seeds():
    values = [0.90, 0.92, 0.95, 0.91, 0.93]
    summary = summarize(values)
    assert summary["mean"] == pytest.approx(0.922)
    assert summary["sd"] == pytest.approx(statistics.stdev(values)) == pytest.approx(0.019235, abs=1e-6)
    assert summary["values"] == values
    assert mean_sd_text(summary) == "0.922 ± 0.019"
    assert summarize([0.8]) == {"mean": 0.8, "sd": 0.0, "values": [0.8]}
    assert summarize([None, None])["mean"] is None and mean_sd_text(summarize([None])) == "n/a"
    assert summarize([0.5, None, 0.7])["mean"] == pytest.approx(0.6)  # a seed without the figure is left out


def test_a_level_is_met_by_the_mean_not_by_the_best_seed():
    model = {"accuracy": summarize([0.86, 0.90, 0.87]), "macro_f1": summarize([0.62, 0.63])}
    assert level_met(Level("accuracy", 0.88), model, {}) is False  # one seed above, the mean 0.877 below
    assert level_met(Level("accuracy", 0.87), model, {}) is True
    baselines = {"tfidf": {"macro_f1": summarize([0.628, 0.628])}}
    assert level_met(Level("macro_f1", baseline="tfidf"), model, baselines) is False  # 0.625 < 0.628
    assert level_met(Level("macro_f1", baseline="other"), model, baselines) is None
    assert level_met(Level("auroc", 0.9), model, {}) is None
    assert level_met(Level("brier", 0.1), {"brier": summarize([0.08, 0.09])}, {}) is True  # lower is better
