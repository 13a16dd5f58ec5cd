"""IncumbentASHA, driven with small stand-in trials (no Ray started): ASHA's decisions,
except that the trial running the base config is never stopped."""

from types import SimpleNamespace

from ray.tune.schedulers import TrialScheduler

from medray.tune.run import IncumbentASHA

BASE = {"optim.lr": 1e-3, "model.preset": "seed"}


def scheduler(incumbent):
    # One bracket, rungs at 1 and 3 epochs: a trial below the rung's top third stops there.
    return IncumbentASHA(incumbent, time_attr="training_iteration", metric="val_auroc", mode="max", max_t=9,
                         grace_period=1, reduction_factor=3, brackets=1)


def trial(asha, trial_id, **config):
    made = SimpleNamespace(trial_id=trial_id, config={**BASE, **config})
    asha.on_trial_add(None, made)
    return made


def report(asha, made, epoch, auroc):
    return asha.on_trial_result(None, made, {"training_iteration": epoch, "val_auroc": auroc})


def test_the_incumbent_runs_on_where_asha_stops_it_and_others_are_still_judged():
    decisions = {}
    for kind in (BASE, None):  # None: plain ASHA, the same sequence of results
        asha = scheduler(kind)
        strong, incumbent = trial(asha, "strong", **{"optim.lr": 3e-3}), trial(asha, "base")
        weak = trial(asha, "weak", **{"optim.lr": 5e-4})
        decisions[kind is None] = [report(asha, strong, 1, 0.95), report(asha, incumbent, 1, 0.60),
                                   report(asha, weak, 1, 0.70), report(asha, strong, 3, 0.97),
                                   report(asha, incumbent, 3, 0.10)]
    CONTINUE, STOP = TrialScheduler.CONTINUE, TrialScheduler.STOP
    assert decisions[False] == [CONTINUE, CONTINUE, STOP, CONTINUE, CONTINUE]
    assert decisions[True] == [CONTINUE, STOP, STOP, CONTINUE, STOP]


def test_the_incumbents_results_still_set_the_rung():
    asha = scheduler(BASE)
    incumbent = trial(asha, "base")
    assert report(asha, incumbent, 1, 0.80) == TrialScheduler.CONTINUE
    # The rung now holds only the incumbent's 0.80: a trial below it stops, one above goes on.
    assert report(asha, trial(asha, "below", **{"optim.lr": 2e-3}), 1, 0.79) == TrialScheduler.STOP
    assert report(asha, trial(asha, "above", **{"optim.lr": 4e-3}), 1, 0.81) == TrialScheduler.CONTINUE


def test_a_trial_matching_only_part_of_the_base_config_is_not_the_incumbent():
    asha = scheduler(BASE)
    report(asha, trial(asha, "strong", **{"optim.lr": 3e-3}), 1, 0.95)
    near = trial(asha, "near", **{"model.preset": "resnet"})  # the base learning rate, another preset
    assert report(asha, near, 1, 0.60) == TrialScheduler.STOP


def test_without_an_incumbent_it_is_plain_asha():
    # A grid search draws no base point: every trial, whatever its config, is judged.
    asha = scheduler(None)
    report(asha, trial(asha, "strong"), 1, 0.95)
    assert report(asha, trial(asha, "base"), 1, 0.60) == TrialScheduler.STOP
