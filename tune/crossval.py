"""K-fold cross-validation over train + val: one model per fold, the folds' models one
ensemble (`train.folds`, `medray train CONFIG --folds K`).

Medical validation splits are tiny (BreastMNIST 78 images, ECG200 15 series), so one
split decides which epoch is kept, the temperature, the threshold and the conformal
quantile by a handful of cases. With K folds every train and val row is held out once:
each fold's model is chosen on its own held-out fold, and the ensemble (the mean of the
members' probabilities, `train/models/ensemble.py`) is calibrated on the out-of-fold
predictions of all of them, K times the cases the val split has. The test split is never
part of a fold.

    fold_assignment        the fold of every row: stratified, equal documents (and rows of
                           a group) in one fold
    plan_folds             train + val read once, preprocessing fitted on both
    run_cross_validation   the folds as Ray Tune trials (as many at once as the cluster
                           holds: each a one-worker `fit` in its Tune function, or a
                           TorchTrainer when scaling.num_workers > 1), then the ensemble
                           stored, evaluated and recorded as the run's checkpoint
    cv_summary             each fold's metrics, their mean, sd and t interval

The preprocessing is fitted once on train + val, not per fold: the ensemble answers
requests through one input transform (one decode, one ONNX graph). Its statistics are
unsupervised (means, spreads, a vocabulary), so the held-out fold's inputs shape them
a little; the labels never do.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from medray.cluster.config import MedrayConfig
from medray.cluster.errors import ConfigError, MedrayError
from medray.cluster.storage import Storage
from medray.train.data.dataset import read_manifest
from medray.train.data.loading import features_and_labels, read_splits_table
from medray.train.data.preprocess import LabelMap, Preprocessor
from medray.train.job import DataPlan, finish_run, plan_training, run_name
from medray.train.modalities import modality

log = logging.getLogger(__name__)

FOLD_PREFIX = "fold_"
"""Each fold's folder under the run: `runs/{run}/fold_{k}/` (its checkpoints)."""
ENSEMBLE = "ensemble"
"""The ensemble checkpoint's folder under the run, which the run's result names."""
CV_SPLITS = ("train", "val")
"""The splits the folds are drawn from, in this order (the rows of `out_of_fold.npz`)."""
CV_METRICS = ("auroc", "accuracy", "balanced_accuracy", "brier", "log_loss")


def fold_assignment(labels: np.ndarray, folds: int, seed: int, groups: np.ndarray | None = None,
                    setting: str = "train.folds") -> np.ndarray:
    """Each row's fold in 0..folds-1: stratified by label (scikit-learn's StratifiedKFold,
    shuffled with `seed`); with `groups`, rows of a group share a fold (StratifiedGroupKFold).
    A class with fewer rows than folds cannot be in every fold: refused, naming it and the
    `setting` that asked for the folds."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    labels = np.asarray(labels)
    counts = np.bincount(labels)
    short = [int(c) for c in np.flatnonzero((counts > 0) & (counts < folds))]
    if short:
        raise ConfigError(f"{setting}={folds}: class index {short[0]} has only {counts[short[0]]} rows in "
                          f"train + val, fewer than the folds; use at most {int(counts[counts > 0].min())} folds")
    if groups is not None and len(np.unique(groups)) < folds:
        raise ConfigError(f"{setting}={folds}: only {len(np.unique(groups))} distinct groups in train + val")
    splitter = (StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed) if groups is not None
                else StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed))
    assignment = np.full(len(labels), -1, dtype=np.int64)
    for fold, (_, held) in enumerate(splitter.split(np.zeros(len(labels)), labels, groups)):
        assignment[held] = fold
    return assignment


@dataclasses.dataclass(frozen=True)
class FoldPlan:
    """train + val as the folds see them, prepared once in the driver."""

    data: DataPlan
    """The dataset, label map, and preprocessing fitted on train + val."""
    inputs: np.ndarray
    """Every train then val row, preprocessed (float32)."""
    targets: np.ndarray
    """Class indices, after the label map."""
    fold: np.ndarray
    table: Any
    """The same rows as stored (a pyarrow Table), for folds trained by a TorchTrainer."""

    def rows(self, fold: int, held_out: bool) -> np.ndarray:
        return np.flatnonzero((self.fold == fold) == held_out)

    def datasets(self, fold: int) -> dict[str, Any]:
        """The fold's train and val (held-out) rows as stored, as Ray Datasets."""
        import ray.data

        return {"train": ray.data.from_arrow(self.table.take(self.rows(fold, held_out=False))),
                "val": ray.data.from_arrow(self.table.take(self.rows(fold, held_out=True)))}


def _groups(manifest: dict[str, Any], features: Any) -> np.ndarray | None:
    """What must stay in one fold (`Modality.fold_groups`). A dataset split by patient at
    import does not keep the patient key (it is never stored), so its rows cannot be
    folded safely: refused."""
    options = manifest["source"].get("options") or {}
    if options.get("group") or options.get("grouped"):
        raise ConfigError(f"dataset '{manifest['name']}' was split by patient at import, and its rows do not keep "
                          "the patient key, so folds could put one patient on both sides; train it without "
                          "train.folds")
    return modality(manifest["modality"]).fold_groups(features)


def plan_folds(config: MedrayConfig, storage: Storage, setting: str = "train.folds") -> FoldPlan:
    """Read train + val, fit the preprocessing on them and draw the folds (as many as
    `setting` says, `train.folds` or a search's `tune.folds`; seed `train.seed`); every
    check that can fail does so here, before training."""
    if not config.data.dataset:
        raise ConfigError("no dataset chosen: set data.dataset=NAME (see `medray data list`)")
    manifest = read_manifest(storage, config.data.dataset)
    labels = LabelMap.build(manifest["classes"], config.data.class_groups, config.data.positive_class)
    table = read_splits_table(storage, manifest, CV_SPLITS)
    kind = modality(manifest["modality"])
    features, stored_labels = features_and_labels(table, manifest)
    targets = labels.apply(stored_labels)
    k = config.tune.folds if setting == "tune.folds" else config.train.folds
    fold = fold_assignment(targets, k, config.train.seed, _groups(manifest, features), setting)
    if config.eval.subgroups:
        from medray.train.subgroups import subgroup_masks

        attributes = kind.attributes(manifest["schema"], features)
        for spec in config.eval.subgroups:
            subgroup_masks(spec, attributes)
    preprocessor = Preprocessor.fit(manifest, features, config.data, targets)
    inputs = preprocessor.transform(features)
    return FoldPlan(DataPlan(manifest, labels, preprocessor), inputs, targets, fold, table)


# The folds as Tune trials ---------------------------------------------------------


def run_fold(params: dict[str, Any], *, base: dict[str, Any], root: str, run: str, folds: FoldPlan,
             direct: bool) -> None:
    """One fold's model, trained on the other folds and chosen on this one. `folds` comes
    through the object store (`tune.with_parameters`), put there once for every fold."""
    from medray.tune.spaces import apply_params
    from medray.tune.trial import train_trial

    launched_at = time.time()
    config, fold = apply_params(base, {}), int(params["fold"])
    storage = Storage(root, config.storage)
    worker_plan = fold_worker_plan(config, storage, folds, fold, launched_at)
    train_trial(worker_plan, storage, config.scaling, direct, feeds=lambda: fold_feeds(worker_plan, folds, fold),
                datasets=lambda: folds.datasets(fold), trainer_folder=fold_folder(run, fold, direct=False))


def fold_worker_plan(config: MedrayConfig, storage: Storage, folds: FoldPlan, fold: int, launched_at: float):
    """The `WorkerPlan` that trains `config` on every fold but `fold` and chooses its epoch on `fold`."""
    train, held = folds.rows(fold, held_out=False), folds.rows(fold, held_out=True)
    plan = plan_training(config, storage, data=folds.data)
    counts = np.bincount(folds.targets[train], minlength=len(folds.data.labels.classes))
    return dataclasses.replace(plan.worker_plan(progress=False, launched_at=launched_at),
                               train_rows=len(train), val_rows=len(held),
                               train_class_counts=tuple(int(c) for c in counts))


def fold_feeds(worker_plan, folds: FoldPlan, fold: int) -> tuple[Any, Any]:
    """(train, held-out) feeds of `fold` from the arrays in memory."""
    from medray.tune.trial import array_feeds

    train, held = folds.rows(fold, held_out=False), folds.rows(fold, held_out=True)
    return array_feeds(worker_plan, (folds.inputs[train], folds.targets[train]),
                       (folds.inputs[held], folds.targets[held]))


def _trainers(run: str) -> str:
    """Where the folds' TorchTrainers keep their checkpoints (Tune keeps its own trials' folders)."""
    return f"runs/{run}/trainers"


def fold_folder(run: str, fold: int, direct: bool) -> str:
    return f"runs/{run}/{FOLD_PREFIX}{fold}" if direct else f"{_trainers(run)}/{FOLD_PREFIX}{fold}"


def _fold_name(trial) -> str:
    return f"{FOLD_PREFIX}{trial.config['fold']}"


def _train_folds(config: MedrayConfig, storage: Storage, run: str, folds: FoldPlan) -> None:
    from ray import tune
    from ray.tune.search import BasicVariantGenerator

    from medray.tune.run import TrialLines, concurrency, run_config, trial_trainable
    from medray.tune.trial import trains_directly

    direct = trains_directly(config)
    metric, mode, k = config.train.metric, config.train.metric_mode, config.train.folds
    results = tune.Tuner(
        trial_trainable(run_fold, config, direct, base=config.model_dump(mode="json"), root=storage.root,
                        run=run, folds=folds),
        param_space={"fold": tune.grid_search(list(range(k)))},
        tune_config=tune.TuneConfig(
            metric=metric, mode=mode,
            # A BasicVariantGenerator holds the concurrency itself (`tune.run._searcher`).
            search_alg=BasicVariantGenerator(max_concurrent=concurrency(config)),
            trial_name_creator=_fold_name, trial_dirname_creator=_fold_name, reuse_actors=direct),
        run_config=run_config(config, storage, run, direct,
                              [TrialLines(metric, mode, config.optim.epochs, k, what="fold", name=_fold_name)]),
    ).fit()
    failed = [r for r in results if r.error]
    if failed:
        from medray.cluster.console import summarized

        raise MedrayError(f"{len(failed)} of {k} folds failed: {summarized(failed[0].error)}")


# The ensemble ----------------------------------------------------------------------


def run_cross_validation(config: MedrayConfig, storage: Storage, config_name: str | None = None,
                         tracker: Any = None) -> dict[str, Any]:
    """Train the folds, store their ensemble with its out-of-fold logits, evaluate it
    (calibrated on those, tested on test) and record the run; returns the run's summary
    with `cv`: each fold's metrics on its held-out rows and their mean, sd and interval.
    With a `tracker` (`train/tracking.py`), an MLflow run holds the ensemble's figures and
    report, and a child run per fold its epochs."""
    from medray.cluster.runtime import check_placement, ensure_ray
    from medray.train import tracking

    folds = plan_folds(config, storage)
    plan_training(config, storage, data=folds.data)  # a model config error ends here, before any fold trains
    run = run_name(config, config_name or config.model.family)
    ensure_ray(config.ray)
    check_placement(config.scaling)
    dataset = f"{folds.data.manifest['name']}@v{folds.data.manifest['version']}"
    log.info("cross-validating %s/%s on %s: %d folds of %d train + val rows; run %s", config.model.family,
             config.model.preset, dataset, config.train.folds, len(folds.targets), storage.uri(f"runs/{run}"))
    tracked = tracker.start_run(run, tracking.config_params(config, extra={"dataset": dataset}),
                                tags={"medray.run": storage.uri(f"runs/{run}")}) if tracker else None
    with tracking.ending(tracked):
        _train_folds(config, storage, run, folds)
        return _ensemble_run(config, storage, run, folds, tracker, tracked)


def _ensemble_run(config: MedrayConfig, storage: Storage, run: str, folds: FoldPlan, tracker: Any,
                  tracked: Any) -> dict[str, Any]:
    from medray.train import tracking
    from medray.tune.run import trial_record
    from medray.tune.trial import trains_directly

    k = config.train.folds

    direct = trains_directly(config)
    records = []
    for fold in range(k):
        record = trial_record(storage, fold_folder(run, fold, direct), config.train.metric, config.train.metric_mode)
        if record["checkpoint"] is None:
            raise MedrayError(f"fold {fold} reported no {config.train.metric}; nothing to keep")
        records.append(record)
    key, cv, members = ensemble_from_folds(storage, run, folds, records)
    if tracked is not None:
        for fold, member in enumerate(members):
            child = tracker.start_run(f"{FOLD_PREFIX}{fold}", tracking.param_values({"fold": fold}), parent=tracked)
            with tracking.ending(child):
                for epoch in member.progress.get("history", []):
                    tracking.log_epoch(child, epoch)
        tracking.log_final(tracked, {"cv": {name: cv[name] for name in CV_METRICS}})
    return finish_run(storage, run, key, key, config, tracking=tracked, extra={"cv": cv})


def ensemble_from_folds(storage: Storage, run: str, folds: FoldPlan,
                        records: list[dict[str, Any]]) -> tuple[str, dict[str, Any], list]:
    """Each fold's kept model (`records[k]["checkpoint"]`, with its `epochs_run`) loaded,
    their out-of-fold logits and `cv_summary`, stored as one ensemble under the run;
    returns its key, the summary and the members."""
    from medray.train.checkpoint import load_bundle

    members = []
    for record in records:
        with tempfile.TemporaryDirectory(prefix="medray-fold-") as local:
            members.append(load_bundle(storage.download_dir(storage.key_of(record["checkpoint"]), local)))
    oof = out_of_fold_logits(members, folds)
    cv = cv_summary(folds, oof, members, records, folds.data.labels.classes)
    return store_ensemble(storage, run, members, folds, oof, cv), cv, members


def out_of_fold_logits(members: list, folds: FoldPlan) -> np.ndarray:
    """Each row's logits from the member that did not train on it: (N, K)."""
    import torch

    logits = np.zeros((len(folds.targets), len(folds.data.labels.classes)), np.float32)
    for fold, member in enumerate(members):
        rows = folds.rows(fold, held_out=True)
        member.model.eval()
        with torch.no_grad():
            logits[rows] = torch.cat([member.model(chunk) for chunk in
                                      torch.from_numpy(folds.inputs[rows]).split(512)]).numpy()
    return logits


def cv_summary(folds: FoldPlan, oof: np.ndarray, members: list, records: list[dict],
               classes: list[str]) -> dict[str, Any]:
    """Each fold's metrics on its held-out rows (at the most probable class, before any
    calibration) and, over folds, the mean, sd and a 95% t interval. The folds' models
    share most of their training rows, so the interval is narrower than a test on new
    patients would be (Bengio & Grandvalet 2004): read it as the spread over folds."""
    from medray.train.evaluate import apply_temperature, evaluate_split, mean_sd

    per_fold = []
    for fold, (member, record) in enumerate(zip(members, records)):
        rows = folds.rows(fold, held_out=True)
        y, z = folds.targets[rows], oof[rows]
        figures = evaluate_split(y, z, classes, n_boot=0)
        probs = apply_temperature(z, 1.0)
        per_fold.append({
            "fold": fold, "n": int(len(rows)), "auroc": figures["auroc"], "accuracy": figures["accuracy"],
            "balanced_accuracy": figures["balanced_accuracy"], "brier": figures["brier"],
            "log_loss": float(-np.mean(np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, None)))),
            "epochs_run": record["epochs_run"], "best_epoch": member.progress.get("epoch"),
        })
    return {"folds": len(members), "rows": int(len(folds.targets)), "per_fold": per_fold,
            **{name: mean_sd([f[name] for f in per_fold], interval=True,
                             bounds=None if name == "log_loss" else (0.0, 1.0))
               for name in CV_METRICS}}


def store_ensemble(storage: Storage, run: str, members: list, folds: FoldPlan, oof: np.ndarray,
                   cv: dict[str, Any]) -> str:
    """The members as one checkpoint (`runs/{run}/ensemble/`) with the out-of-fold logits
    it is calibrated on; returns its key."""
    from medray.train.checkpoint import PROGRESS, save_checkpoint, save_out_of_fold
    from medray.train.models.ensemble import Ensemble

    first = members[0]
    # When the last fold's last epoch ended: the model card's "trained at".
    finished = [(m.progress.get("history") or [{}])[-1].get("finished_at") for m in members]
    progress = {"epoch": None, "metrics": {}, "history": [],
                "folds": [{"fold": f["fold"], "n": f["n"], "epoch": member.progress.get("epoch"),
                           "history": member.progress.get("history", [])}
                          for f, member in zip(cv["per_fold"], members)],
                "finished_at": max(filter(None, finished), default=None)}
    key = f"runs/{run}/{ENSEMBLE}"
    with tempfile.TemporaryDirectory(prefix="medray-ensemble-") as scratch:
        folder = save_checkpoint(Path(scratch), Ensemble([m.model for m in members]), first.family,
                                 folds.data.preprocessor, folds.data.labels, first.dataset, progress)
        save_out_of_fold(folder, oof, folds.fold)
        # progress.json last: a folder with it is a whole checkpoint (`tune.run.trial_record`).
        for path in sorted(folder.iterdir(), key=lambda p: (p.name == PROGRESS, p.name)):
            storage.put_file(f"{key}/{path.name}", path)
    return key
