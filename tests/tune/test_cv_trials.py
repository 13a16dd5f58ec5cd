"""Cross-validated trials (`tune.folds`): what each fold keeps, what Tune is told after
each fold, and what a search with them refuses."""

import json

import pytest

from medray.cluster.config import load_config
from medray.cluster.errors import ConfigError
from medray.cluster.storage import Storage
from medray.train.checkpoint import PROGRESS
from medray.tune.cv_trials import CV_STATE, FoldRunner, check_cv_search, cv_trial_record, fold_report
from support.project import PROJECT


def _epoch(tmp_path, epoch, value):
    folder = tmp_path / f"local_{epoch}"
    folder.mkdir()
    (folder / "model.pt").write_bytes(b"weights of epoch %d" % epoch)
    (folder / PROGRESS).write_text(json.dumps({"epoch": epoch}))
    return {"epoch": epoch, "val_loss": value, "epoch_seconds": 0.5}, str(folder)


def test_a_fold_keeps_only_its_best_epoch(tmp_path):
    storage = Storage(f"file://{tmp_path / 'store'}")
    runner = FoldRunner(storage, "runs/s/trial_a/fold_0", "val_loss", "min", use_gpu=False)
    for epoch, value in enumerate([0.5, 0.3, 0.4, float("nan")]):
        runner.report(*_epoch(tmp_path, epoch, value))
    assert runner.best_value == 0.3 and runner.best_key == "runs/s/trial_a/fold_0/checkpoint_000001"
    assert storage.list_dir("runs/s/trial_a/fold_0") == ["checkpoint_000001"]  # epoch 0's was replaced
    assert storage.read_bytes(f"{runner.best_key}/model.pt") == b"weights of epoch 1"
    assert runner.last["epoch"] == 3 and runner.epoch_seconds == pytest.approx(2.0)


def test_tune_sees_the_running_mean_and_the_fold_just_finished():
    done = [{"fold": 0, "best_value": 0.9, "epochs_run": 4}, {"fold": 1, "best_value": 0.7, "epochs_run": 3}]
    report = fold_report("val_auroc", done)
    assert report["val_auroc"] == pytest.approx(0.8) and report["val_auroc_fold"] == 0.7
    assert (report["fold"], report["folds_done"], report["epochs_run"]) == (1, 2, 7)


def test_the_record_is_the_latest_tune_checkpoints(tmp_path):
    storage = Storage(f"file://{tmp_path}")
    folds = [{"fold": 0, "best_value": 0.2, "epochs_run": 5, "epoch_seconds": 1.0},
             {"fold": 1, "best_value": 0.4, "epochs_run": 2, "epoch_seconds": 0.5}]
    storage.write_json(f"runs/s/trial_a/checkpoint_000000/{CV_STATE}", {"folds": folds[:1]})
    storage.write_json(f"runs/s/trial_a/checkpoint_000001/{CV_STATE}", {"folds": folds})
    record = cv_trial_record(storage, "runs/s/trial_a")
    assert record["best_value"] == pytest.approx(0.3) and len(record["folds"]) == 2
    assert record["epochs_run"] == 7 and record["seconds"] == pytest.approx(1.5)
    assert cv_trial_record(storage, "runs/s/trial_none")["best_value"] is None


@pytest.mark.parametrize("override, refusal", [("train.folds=3", "train.folds"),
                                               ("scaling.num_workers=2", "scaling.num_workers=1")])
def test_a_cross_validated_search_refuses_what_it_cannot_run(override, refusal):
    config = load_config(PROJECT / "train/configs/wdbc_attention.yaml",
                         ["tune.folds=3", "scaling.num_workers=1", override])
    with pytest.raises(ConfigError, match=refusal):
        check_cv_search(config)


def test_a_resumed_trial_starts_after_the_folds_its_checkpoint_names(tmp_path):
    from ray.tune import Checkpoint

    from medray.tune.cv_trials import finished_folds

    done = [{"fold": 0, "best_value": 0.2, "epochs_run": 5}]
    (tmp_path / CV_STATE).write_text(json.dumps({"folds": done}))
    assert finished_folds(Checkpoint.from_directory(str(tmp_path))) == done
    assert finished_folds(None) == []
