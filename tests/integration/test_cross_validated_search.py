"""`medray tune CONFIG tune.folds=K --promote` as a user runs it: every trial
cross-validated on the same folds, ASHA's rungs in folds, an interrupted trial resumed at
its next fold, the best full trial's fold models stored as one ensemble calibrated out of
fold, and that ensemble promoted."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from medray.cluster.registry import Registry
from medray.cluster.storage import Storage
from medray.train.checkpoint import PROGRESS, load_bundle, load_out_of_fold
from medray.train.data.loading import read_split_arrays
from support.project import PROJECT, medray

pytestmark = pytest.mark.integration

FOLDS = 2
SEARCH = ["tune", "train/configs/wdbc_attention.yaml", "--samples", "3", f"tune.folds={FOLDS}", "optim.epochs=3",
          "train.patience=0", "tune.reduction_factor=2", "scaling.num_workers=1", "eval.bootstrap=20",
          "train.name=cvsearch"]


def interrupted_after_a_fold(env: dict[str, str], runs) -> dict:
    """Start the search, Ctrl-C it once a trial has finished a fold; that trial's state."""
    process = subprocess.Popen([sys.executable, "-m", "medray.cli", *SEARCH], cwd=PROJECT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline, seen = time.monotonic() + 300, None
    while time.monotonic() < deadline and seen is None and process.poll() is None:
        for state in sorted(runs.glob("trial_*/checkpoint_*/cv_state.json")):
            try:  # read at once: Tune keeps only a trial's latest checkpoint and deletes the one before
                seen = (state.parents[1].name.removeprefix("trial_"), json.loads(state.read_text())["folds"][0])
                break
            except FileNotFoundError:
                continue
        time.sleep(0.2)
    assert process.poll() is None, "the search ended before it could be interrupted"
    os.killpg(process.pid, signal.SIGINT)
    process.wait(timeout=120)
    assert seen is not None, "no trial finished a fold in time"
    return {"trial": seen[0], "first_fold": seen[1]}


def test_a_cross_validated_search_resumes_and_promotes_its_best_trials_ensemble(tmp_path):
    root = tmp_path / "store"
    env = {**os.environ, "MEDRAY_STORAGE": str(root)}
    medray("data", "import", "sklearn", "breast_cancer", "--name", "wdbc", env=env)
    interrupted = interrupted_after_a_fold(env, root / "runs" / "cvsearch")
    result = medray("tune", "--resume", "cvsearch", "--promote", "--json", env=env, timeout=600)
    summary, storage = json.loads(result.stdout), Storage(f"file://{root}")
    train_val = sum(len(read_split_arrays(storage, "wdbc", split)[1]) for split in ("train", "val"))

    trials = summary["trials"]
    assert len(trials) == 3 and summary["folds"] == FOLDS
    for trial in trials:
        assert trial["error"] is None
        assert 1 <= trial["folds_run"] <= FOLDS and [f["fold"] for f in trial["folds"]] == list(range(trial["folds_run"]))
        assert trial["val_loss"] == pytest.approx(np.mean([f["best_value"] for f in trial["folds"]]))
        assert trial["stopped_by_asha"] == (trial["folds_run"] < FOLDS)
        assert trial["epochs_run"] == 3 * trial["folds_run"]
    # The interrupted trial went on from its next fold: fold 0 was not trained again
    # (a retrained fold would differ in its epoch_seconds at least).
    [again] = [t for t in trials if t["trial"] == interrupted["trial"]]
    assert again["folds"][0] == interrupted["first_fold"]
    full = [t for t in trials if t["folds_run"] == FOLDS]
    best = summary["best"]
    assert best["trial"] == min(full, key=lambda t: t["val_loss"])["trial"]
    assert summary["trial_epochs"] == sum(t["epochs_run"] for t in trials)
    assert re.search(r"trial \d/3 \w+: \d folds?, best val_loss", result.stderr)  # a line per trial, in folds

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

