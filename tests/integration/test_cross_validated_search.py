"""`medray tune CONFIG tune.folds=K --promote` as a user runs it: every trial
cross-validated on the same folds, ASHA's rungs in folds, the best full trial's fold
models stored as one ensemble calibrated out of fold, and that ensemble promoted."""

import json

import numpy as np
import pytest

from medray.cluster.registry import Registry
from medray.cluster.storage import Storage
from medray.train.checkpoint import PROGRESS, load_bundle, load_out_of_fold
from medray.train.data.loading import read_split_arrays
from support.project import medray

pytestmark = pytest.mark.integration

FOLDS = 3


def test_a_cross_validated_search_promotes_its_best_trials_ensemble(tmp_path):
    root = tmp_path / "store"
    env = {"MEDRAY_STORAGE": str(root)}
    medray("data", "import", "sklearn", "breast_cancer", "--name", "wdbc", env=env)
    result = medray("tune", "train/configs/wdbc_attention.yaml", "--samples", "4", f"tune.folds={FOLDS}",
                    "optim.epochs=2", "train.patience=0", "tune.reduction_factor=2", "scaling.num_workers=1",
                    "eval.bootstrap=20", "train.name=cvsearch", "--promote", "--json", env=env, timeout=600)
    summary, storage = json.loads(result.stdout), Storage(f"file://{root}")
    train_val = sum(len(read_split_arrays(storage, "wdbc", split)[1]) for split in ("train", "val"))

    trials = summary["trials"]
    assert len(trials) == 4 and summary["folds"] == FOLDS
    for trial in trials:
        assert 1 <= trial["folds_run"] <= FOLDS and [f["fold"] for f in trial["folds"]] == list(range(trial["folds_run"]))
        assert trial["val_loss"] == pytest.approx(np.mean([f["best_value"] for f in trial["folds"]]))
        assert trial["stopped_by_asha"] == (trial["folds_run"] < FOLDS)
        assert trial["epochs_run"] == 2 * trial["folds_run"]
    full = [t for t in trials if t["folds_run"] == FOLDS]
    best = summary["best"]
    assert best["trial"] == min(full, key=lambda t: t["val_loss"])["trial"]
    assert summary["trial_epochs"] == sum(t["epochs_run"] for t in trials)
    assert f"{FOLDS} folds, best val_loss" in result.stderr  # a line per finished trial

    # Each fold kept its best epoch, the one its held-out loss names.
    for fold in best["folds"]:
        progress = storage.read_json(f"{storage.key_of(fold['checkpoint'])}/{PROGRESS}")
        assert progress["metrics"]["val_loss"] == pytest.approx(fold["best_value"])
        assert fold["best_value"] == pytest.approx(min(h["val_loss"] for h in progress["history"]))

    # The best trial's fold models are one ensemble, calibrated on their out-of-fold predictions.
    assert best["checkpoint"].endswith("/runs/cvsearch/ensemble")
    folder = storage.download_dir(storage.key_of(best["checkpoint"]), tmp_path / "ensemble")
    bundle, (oof, fold) = load_bundle(folder), load_out_of_fold(folder)
    assert len(bundle.model.members) == FOLDS and len(oof) == train_val
    cv = summary["cv"]
    assert np.bincount(fold).tolist() == [f["n"] for f in cv["per_fold"]] and cv["rows"] == train_val
    assert cv["auroc"]["mean"] == pytest.approx(np.mean([f["auroc"] for f in cv["per_fold"]]))

    promotion = summary["promotion"]
    assert promotion["promoted"] and promotion["version"] == 1
    assert promotion["metrics"]["val"]["n"] == train_val  # out of fold, not the val split
    version = Registry(storage).version_info("wdbc", 1)
    assert version["source"]["search"] == "cvsearch" and version["source"]["trial"] == best["trial"]


def test_an_interrupted_cross_validated_trial_resumes_at_its_next_fold(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from support.project import PROJECT

    root = tmp_path / "store"
    env = {**os.environ, "MEDRAY_STORAGE": str(root)}
    medray("data", "import", "sklearn", "breast_cancer", "--name", "wdbc", env=env)
    search = ["tune", "train/configs/wdbc_attention.yaml", "--samples", "2", f"tune.folds={FOLDS}",
              "optim.epochs=4", "train.patience=0", "scaling.num_workers=1", "eval.bootstrap=20",
              "train.name=cvresume"]
    process = subprocess.Popen([sys.executable, "-m", "medray.cli", *search], cwd=PROJECT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    runs = root / "runs" / "cvresume"
    deadline = time.monotonic() + 300
    states = []
    while time.monotonic() < deadline and not states and process.poll() is None:
        states = sorted(runs.glob("trial_*/checkpoint_*/cv_state.json"))
        time.sleep(0.2)
    assert process.poll() is None, "the search ended before it could be interrupted"
    os.killpg(process.pid, signal.SIGINT)
    process.wait(timeout=120)
    [state] = states[:1]
    trial = state.parents[1].name.removeprefix("trial_")
    first_fold = json.loads(state.read_text())["folds"][0]
    assert first_fold["fold"] == 0

    resumed = json.loads(medray("tune", "--resume", "cvresume", "--json", env=env, timeout=600).stdout)
    [again] = [t for t in resumed["trials"] if t["trial"] == trial]
    assert again["folds"][0] == first_fold  # fold 0 was not trained again (its epoch_seconds would differ)
    assert again["folds_run"] == FOLDS or again["stopped_by_asha"]
    assert all(t["error"] is None for t in resumed["trials"])
    assert resumed["best"]["checkpoint"].endswith("/runs/cvresume/ensemble")
