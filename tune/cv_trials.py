"""Cross-validated trials of a search (`tune.folds=K`).

One validation split of 15 series (ECG200) or 78 images (BreastMNIST) cannot rank
configs: a search judged on it picks whichever trial got lucky on those cases. With
`tune.folds=K` every trial trains its config on the K folds of train + val that
`medray train --folds K` uses (`tune/crossval.py`, the same folds for every trial), one
fold after another in its Tune function, and reports after each fold the mean of the
folds' best validation metric so far. So Tune sees one result per fold: ASHA's rungs
count folds (a trial's first fold is its grace period), and a trial stopped at a rung has
spent its folds, not a full cross-validation.

The search's result is the best trial that ran all K folds: its K models become one
ensemble (`runs/{search}/ensemble/`), calibrated on their out-of-fold predictions, which
is what `medray tune --promote` evaluates and registers.

Each fold keeps its best epoch on storage (`{trial}/fold_{k}/checkpoint_{epoch}`); the
trial's Tune checkpoint after each fold names the finished folds' (`cv_state.json`), so a
resumed search continues an interrupted trial from its next fold. A fold cut off part-way
trains again from its first epoch.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from medray.cluster.config import MedrayConfig
from medray.cluster.errors import ConfigError, MedrayError
from medray.cluster.storage import Storage
from medray.tune.crossval import FOLD_PREFIX, FoldPlan, ensemble_from_folds, fold_feeds, fold_worker_plan

log = logging.getLogger(__name__)

CV_STATE = "cv_state.json"
"""In each of a cross-validated trial's Tune checkpoints: its finished folds."""
STARTUP_KEYS = ("launched_at", "worker_started_at", "data_seconds", "startup_seconds")
"""What a trial's first epoch reported about its start-up (`medray.train.loop.fit`), passed on to Tune."""


def check_cv_search(config: MedrayConfig) -> None:
    """What `tune.folds` cannot be combined with, refused before the search starts."""
    if config.train.folds > 1:
        raise ConfigError("train.folds cross-validates one training run; a search cross-validates each trial "
                          "with tune.folds (set train.folds=1)")
    if config.scaling.num_workers > 1:
        raise ConfigError("tune.folds trains each trial's folds in the trial's own process: set "
                          "scaling.num_workers=1 (trials still run side by side across the cluster)")


class FoldRunner:
    """`medray.train.loop.Runner` for one fold of a cross-validated trial: this process.
    Nothing goes to Tune per epoch (the trial reports once per fold); an epoch that
    improves the fold's metric is kept on storage under `folder`, replacing the one kept
    before it."""

    rank, world = 0, 1

    def __init__(self, storage: Storage, folder: str, metric: str, mode: str, use_gpu: bool) -> None:
        import torch

        self.storage, self.folder, self.metric, self.mode = storage, folder, metric, mode
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        self.best_value: float | None = None
        self.best_key: str | None = None
        self.first: dict[str, Any] = {}
        self.last: dict[str, Any] = {}
        self.epoch_seconds = 0.0

    def latest_checkpoint(self) -> Any:
        return None  # a fold cut off part-way starts again

    def prepare_model(self, model):
        return model.to(self.device)

    def report(self, metrics: dict[str, Any], checkpoint_directory: str | None) -> None:
        from medray.train.checkpoint import PROGRESS
        from medray.train.loop import improved

        self.first, self.last = self.first or metrics, metrics
        self.epoch_seconds += metrics.get("epoch_seconds") or 0.0
        if checkpoint_directory is None or not improved(metrics.get(self.metric), self.best_value, self.mode):
            return
        key = f"{self.folder}/checkpoint_{int(metrics['epoch']):06d}"
        # progress.json last: a folder with it is a whole checkpoint (`tune.run.trial_record`).
        for path in sorted(Path(checkpoint_directory).iterdir(), key=lambda p: (p.name == PROGRESS, p.name)):
            self.storage.put_file(f"{key}/{path.name}", path)
        if self.best_key:
            self.storage.delete_prefix(self.best_key)
        self.best_value, self.best_key = float(metrics[self.metric]), key

    def worker_nodes(self) -> int:
        return 1


def run_cv_trial(params: dict[str, Any], *, base: dict[str, Any], root: str, search: str, folds: FoldPlan,
                 direct: bool) -> None:
    """One trial: the base config with this trial's values, trained on each fold in turn,
    its running mean reported after each. `folds` comes through the object store, put
    there once for every trial."""
    import ray.tune

    from medray.train.loop import fit
    from medray.tune.spaces import apply_params
    from medray.tune.trial import trial_key

    launched_at = time.time()
    config = apply_params(base, params)
    storage = Storage(root, config.storage)
    metric, mode = config.train.metric, config.train.metric_mode
    trial = trial_key(search, ray.tune.get_context().get_trial_id(), direct=True)
    done = finished_folds(ray.tune.get_checkpoint())
    startup: dict[str, Any] = {}  # this run of the trial's first fold, as its reports say
    for fold in range(len(done), config.tune.folds):
        folder = f"{trial}/{FOLD_PREFIX}{fold}"
        storage.delete_prefix(folder)  # what a fold cut off part-way left
        runner = FoldRunner(storage, folder, metric, mode, config.scaling.use_gpu)
        worker_plan = fold_worker_plan(config, storage, folds, fold, launched_at)
        fit(worker_plan, runner, lambda: fold_feeds(worker_plan, folds, fold))
        if runner.best_key is None:
            raise MedrayError(f"fold {fold} reported no {metric}; nothing to keep")
        done.append({"fold": fold, "best_value": runner.best_value, "checkpoint": storage.uri(runner.best_key),
                     "epochs_run": int(runner.last["epoch"]) + 1,
                     "stopped_by_patience": bool(runner.last.get("stopped_early")),
                     "epoch_seconds": runner.epoch_seconds})
        startup = startup or {key: runner.first.get(key) for key in STARTUP_KEYS}
        with tempfile.TemporaryDirectory(prefix="medray-cv-trial-") as directory:
            (Path(directory) / CV_STATE).write_text(json.dumps({"folds": done}))
            ray.tune.report({**fold_report(metric, done), **startup, "reported_at": time.time()},
                            checkpoint=ray.tune.Checkpoint.from_directory(directory))


def fold_report(metric: str, done: list[dict[str, Any]]) -> dict[str, Any]:
    """What a cross-validated trial tells Tune after a fold: `metric` is the running mean
    over its finished folds (what ASHA and the searcher compare), `fold` the one just
    finished, `{metric}_fold` that fold's own value."""
    values = [f["best_value"] for f in done]
    return {metric: float(np.mean(values)), f"{metric}_fold": values[-1], "fold": done[-1]["fold"],
            "folds_done": len(done), "epochs_run": sum(f["epochs_run"] for f in done)}


def finished_folds(checkpoint: Any) -> list[dict[str, Any]]:
    """The folds a trial's Tune checkpoint says are finished ([] without one)."""
    if checkpoint is None:
        return []
    with checkpoint.as_directory() as directory:
        return json.loads((Path(directory) / CV_STATE).read_text())["folds"]


def cv_trial_record(storage: Storage, folder: str) -> dict[str, Any]:
    """What a cross-validated trial's latest Tune checkpoint says: its finished folds,
    their mean metric, epochs trained and seconds spent in epochs (the counterpart of
    `tune.run.trial_record`)."""
    latest = max((name for name in storage.list_dir(folder)
                  if name.startswith("checkpoint_") and storage.exists(f"{folder}/{name}/{CV_STATE}")),
                 default=None)
    done = storage.read_json(f"{folder}/{latest}/{CV_STATE}")["folds"] if latest else []
    return {"folds": done, "best_value": float(np.mean([f["best_value"] for f in done])) if done else None,
            "epochs_run": sum(f["epochs_run"] for f in done),
            "seconds": float(sum(f["epoch_seconds"] for f in done)),
            "stopped_by_patience": False,
            "checkpoint": None}


def best_trial_ensemble(storage: Storage, search: str, folds: FoldPlan, best: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The `best` trial's K fold models as one ensemble under the search
    (`runs/{search}/ensemble/`), with their out-of-fold logits; returns its key and the
    cross-validation summary (`tune.crossval.cv_summary`)."""
    key, cv, members = ensemble_from_folds(storage, search, folds, best["folds"])
    log.info("search %s: trial %s's %d fold models stored as one ensemble, %s", search, best["trial"],
             len(members), storage.uri(key))
    return key, cv
