"""What a search says about its trials: where each trial's time went, and the table."""

import pytest

from medray.tune.run import TrialClock, trial_table, trial_timings

LAST_REPORT = {"launched_at": 100.0, "worker_started_at": 100.4, "data_seconds": 0.2, "startup_seconds": 0.9,
               "checkpoint_seconds": 0.3, "reported_at": 112.0}


def test_the_breakdown_comes_from_the_last_report_and_the_drivers_clock():
    clock = TrialClock()
    clock.started["a1"], clock.ended["a1"] = 99.5, 112.25
    timings = trial_timings(LAST_REPORT, 10.5, clock, "a1")
    assert timings == pytest.approx({"scheduling": 0.5, "workers": 0.4, "data": 0.2, "startup": 0.9,
                                     "epochs": 10.5, "checkpoints": 0.3, "teardown": 0.25})


def test_what_was_not_measured_is_none_not_zero():
    # A trial that finished before a resume: this driver never saw it start or end.
    timings = trial_timings(LAST_REPORT, 10.5, TrialClock(), "a1")
    assert timings["scheduling"] is None and timings["teardown"] is None and timings["startup"] == 0.9
    assert trial_timings({}, 0.0, None, "a1")["workers"] is None


def test_the_table_shows_each_trials_start_up():
    trial = {"trial": "a1", "epochs_run": 3, "val_auroc": 0.9876, "stopped_by_asha": True,
             "stopped_by_patience": False, "error": None, "config": {"optim.lr": 0.00123},
             "timings": {"startup": 1.26}}
    unmeasured = {**trial, "trial": "b2", "stopped_by_asha": False, "timings": {"startup": None}}
    table = trial_table({"metric": "val_auroc", "trials": [trial, unmeasured], "best": trial,
                         "stopped_by_asha": 1, "trial_epochs": 6})
    header, first, second = table.splitlines()[:3]
    assert header.split() == ["trial", "epochs", "val_auroc", "stopped", "start-up", "lr"]
    assert first.split() == ["a1", "3", "0.9876", "ASHA", "1.3", "s", "0.00123"]
    assert second.split() == ["b2", "3", "0.9876", "-", "n/a", "0.00123"]
