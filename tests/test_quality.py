"""The quality table covers every shipped config, and a level is met or not by the mean
over seeds (`mean_sd`, tested in tests/train/test_evaluate.py)."""

import pytest

from medray.cluster.config import load_config
from medray.quality import QUALITY, Level, level_met, mean_sd_text
from medray.train.evaluate import mean_sd
from support.project import PROJECT

CONFIGS = sorted((PROJECT / "train" / "configs").glob("*.yaml"))


def test_every_shipped_config_has_its_entry_and_dataset():
    assert sorted(QUALITY) == [p.stem for p in CONFIGS]
    for path in CONFIGS:
        assert QUALITY[path.stem].dataset == load_config(path, []).data.dataset
        for level in QUALITY[path.stem].levels:  # a levelled metric is one the benchmark records
            assert level.metric in QUALITY[path.stem].metrics


def test_a_summary_reads_as_mean_plus_or_minus_sd():
    assert mean_sd_text(mean_sd([0.90, 0.92, 0.95, 0.91, 0.93])) == "0.922 ± 0.019"
    assert mean_sd_text(mean_sd([0.8])) == "0.800 ± n/a" and mean_sd_text(mean_sd([None])) == "n/a"


def test_a_level_is_met_by_the_mean_not_by_the_best_seed():
    model = {"accuracy": mean_sd([0.86, 0.90, 0.87]), "macro_f1": mean_sd([0.62, 0.63])}
    assert level_met(Level("accuracy", 0.88), model, {}) is False  # one seed above, the mean 0.877 below
    assert level_met(Level("accuracy", 0.87), model, {}) is True
    baselines = {"tfidf": {"macro_f1": mean_sd([0.628, 0.628])}}
    assert level_met(Level("macro_f1", baseline="tfidf"), model, baselines) is False  # 0.625 < 0.628
    assert level_met(Level("macro_f1", baseline="other"), model, baselines) is None
    assert level_met(Level("auroc", 0.9), model, {}) is None
    assert level_met(Level("brier", 0.1), {"brier": mean_sd([0.08, 0.09])}, {}) is True  # lower is better
