"""Training through Ray Train for real: 2 CPU workers, checkpoints on storage, a worker
killed mid-run, more workers than the cluster has."""

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from medray.cluster.errors import ConfigError
from medray.train.job import evaluate_checkpoint, run_training
from support.training import small_wdbc_config


def _train_workers() -> list[int]:
    import psutil

    return [p.pid for p in psutil.process_iter(["cmdline"])
            if any("RayTrainWorker" in part for part in (p.info["cmdline"] or []))]


def test_a_killed_worker_resumes_and_the_run_reports_metrics_checkpoint_and_plots(wdbc, ray_session):
    """Two workers, one killed mid-run: the run resumes from its latest checkpoint and
    ends as any two-worker run must, with metrics, plots and a checkpoint that alone
    rebuilds the model. (One run for both: each Ray Train start-up costs tens of seconds.)"""
    # Uncached data: each epoch streams its shard from storage again, and the restarted
    # workers must stream the data anew. Enough epochs that the kill lands mid-run
    # however fast the epochs are (read ahead, they take well under a second here).
    epochs = 20
    config = small_wdbc_config(f"optim.epochs={epochs}", "scaling.num_workers=2", "scaling.max_failures=2",
                               "train.name=killed", "train.keep_checkpoints=1", "train.cache_data=false")
    run_dir = Path(wdbc.root.removeprefix("file://")) / "runs" / "killed"
    killed: list[int] = []

    def kill_after_two_checkpoints():
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not killed:
            done = [p for p in run_dir.glob("checkpoint_*/progress.json")]
            epochs = [json.loads(p.read_text())["epoch"] for p in done if p.stat().st_size]
            workers = _train_workers()
            if epochs and max(epochs) >= 2 and workers:
                # Ray Train's controller collects reports every 0.25 s (RAY_TUNING); a
                # checkpoint is the one to resume from once it has been collected.
                time.sleep(1)
                workers = _train_workers()
                if not workers:  # the run is over: the assertion below says so
                    return
                os.kill(workers[-1], signal.SIGKILL)
                killed.append(max(epochs))
            time.sleep(0.2)

    killer = threading.Thread(target=kill_after_two_checkpoints, daemon=True)
    killer.start()
    summary = run_training(config, wdbc)
    killer.join(timeout=5)
    assert killed, "the run finished before a worker could be killed"
    final = json.loads((run_dir / "report" / "metrics.json").read_text())
    assert final["test"]["auroc"] is not None
    latest = max(run_dir.glob("checkpoint_*/progress.json"), key=lambda p: json.loads(p.read_text())["epoch"])
    progress = json.loads(latest.read_text())
    assert progress["epoch"] == epochs - 1
    resumed_from = progress["metrics"]["resumed_from_epoch"]
    assert resumed_from is not None and resumed_from >= 2  # not from epoch 1
    assert [row["epoch"] for row in progress["history"]] == list(range(epochs))
    assert summary["epochs_run"] == epochs

    test = summary["metrics"]["test"]
    for key in ("auroc", "accuracy", "sensitivity", "specificity", "ece", "ece_calibrated", "auroc_ci"):
        assert key in test
    assert 0.9 <= test["auroc"] <= 1.0  # WDBC is easy; a few epochs already separate it
    for plot in ("roc.png", "reliability.png", "confusion_matrix.png", "learning_curves.png"):
        assert (run_dir / "report" / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert final["test"]["auroc"] == test["auroc"]

    # Workers validated on every val row (not an equal split that drops the remainder):
    # the AUROC reported for the best checkpoint is the full-val evaluation's.
    best_key = wdbc.key_of(summary["checkpoint"])
    reported = json.loads(wdbc.read_bytes(f"{best_key}/progress.json"))["metrics"]
    val_rows = sum(json.loads(wdbc.read_bytes("datasets/wdbc/v1/manifest.json"))["splits"]["val"]["class_counts"].values())
    assert val_rows % 2 == 1
    assert reported["val_auroc"] == pytest.approx(summary["metrics"]["val"]["auroc"])

    # The checkpoint alone rebuilds the model; re-evaluation gives the same numbers.
    again = evaluate_checkpoint(wdbc, "killed", small_wdbc_config(), "test")
    assert again["metrics"]["auroc"] == pytest.approx(test["auroc"])
    assert again["metrics"]["accuracy"] == pytest.approx(test["accuracy"])


def test_more_workers_than_the_cluster_has_is_refused(wdbc, ray_session):
    with pytest.raises(ConfigError, match="asks for 8 workers x 1 CPU = 8 CPUs, but the cluster has 2"):
        run_training(small_wdbc_config("scaling.num_workers=8"), wdbc)
