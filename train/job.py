"""A training job from config to evaluated checkpoint.

    plan_training   resolve the dataset, label map, preprocessing and model; every check
                    that can fail does so here, before any worker starts
    run_training    fit with Ray Train, then evaluate the best checkpoint on val + test
    evaluate_checkpoint   re-evaluate a stored checkpoint on a split
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np

from medray.cluster.config import MedrayConfig, OptimConfig, TrainConfig
from medray.cluster.errors import ConfigError, MedrayError, NotFoundError
from medray.cluster.names import check_run_name
from medray.cluster.storage import Storage
from medray.train.data.dataset import read_manifest
from medray.train.data.loading import read_split, read_split_arrays
from medray.train.data.preprocess import LabelMap, Preprocessor
from medray.train.models import InputSpec, model_config_for
from medray.train.tracking import TrackedRun

log = logging.getLogger(__name__)

RESULT_FILE = "medray_result.json"


@dataclasses.dataclass(frozen=True)
class WorkerPlan:
    """What every Ray Train worker needs, typed; it is pickled to each worker process."""

    family: str
    model_config: dict[str, Any]
    """`dataclasses.asdict` of the family's model config (what `build_model_from_config` takes)."""
    preprocessor: Preprocessor
    labels: LabelMap
    dataset: str
    """`NAME@vN`, recorded in every checkpoint."""
    optim: OptimConfig
    train: TrainConfig
    mixed_precision: Literal["auto", "bf16", "off"]
    sync_batch_norm: bool
    threads_per_worker: float
    train_rows: int
    val_rows: int
    row_bytes: int
    """One preprocessed example with its label, as a worker holds it in memory."""
    train_class_counts: tuple[int, ...]
    """Per training class, for `optim.class_weights`."""
    schema: dict[str, Any]
    """The dataset's stored schema: how a batch of stored rows becomes features
    (`Modality.features_from_table`)."""
    progress: bool = True
    """Rank 0 announces each epoch (a search reports per trial instead)."""
    launched_at: float | None = None
    """Wall time the run (or trial) was launched: each report's `startup_seconds` counts from it."""
    tracking: TrackedRun | None = None
    """The MLflow run rank 0 logs each epoch's metrics to (`tracking.mlflow_uri`)."""

    def batch_size_per_worker(self, world: int) -> int:
        """Each of `world` workers' share of `optim.batch_size` (DDP sums their gradients)."""
        return max(1, self.optim.batch_size // world)

    def seed_of(self, rank: int) -> int:
        """Worker `rank`'s seed for shuffling and augmentation (the initial weights come
        from `train.seed` alone, the same on every worker)."""
        return self.train.seed * 1000 + rank


@dataclasses.dataclass(frozen=True)
class DataPlan:
    """The dataset side of a plan: its manifest, label map and preprocessing fitted on
    train. It depends only on the `data` section, so a search fits it once for all trials."""

    manifest: dict[str, Any]
    labels: LabelMap
    preprocessor: Preprocessor

    def split_arrays(self, storage: Storage, split: str) -> tuple[np.ndarray, np.ndarray]:
        """One split read and preprocessed in this process: (float32 inputs, class indices)."""
        features, labels = read_split_arrays(storage, self.manifest, split)
        return self.preprocessor.transform(features), self.labels.apply(labels)

    def preprocessed_bytes(self, split: str) -> int:
        """What `split_arrays(split)` will hold, from the manifest alone (before reading)."""
        return self.manifest["splits"][split]["rows"] * (int(np.prod(self.preprocessor.input_shape)) * 4 + 8)


@dataclasses.dataclass
class TrainingPlan:
    config: MedrayConfig
    manifest: dict[str, Any]
    labels: LabelMap
    preprocessor: Preprocessor
    model_config: dict[str, Any]
    run_name: str

    @property
    def dataset_ref(self) -> str:
        return f"{self.manifest['name']}@v{self.manifest['version']}"

    def train_class_counts(self) -> list[int]:
        counts = [0] * len(self.labels.classes)
        for source_index, count in enumerate(self.manifest["splits"]["train"]["class_counts"].values()):
            counts[self.labels.index[source_index]] += count
        return counts

    def worker_plan(self, progress: bool = True, launched_at: float | None = None,
                    tracking: TrackedRun | None = None) -> WorkerPlan:
        """What this run's workers are handed (each gets a pickled copy)."""
        config = self.config
        return WorkerPlan(
            family=config.model.family, model_config=self.model_config, preprocessor=self.preprocessor,
            labels=self.labels, dataset=self.dataset_ref, optim=config.optim, train=config.train,
            mixed_precision=config.scaling.mixed_precision, sync_batch_norm=config.scaling.sync_batch_norm,
            threads_per_worker=config.scaling.cpus_per_worker, train_rows=self.manifest["splits"]["train"]["rows"],
            val_rows=self.manifest["splits"].get("val", {}).get("rows", 0),
            row_bytes=int(np.prod(self.preprocessor.input_shape)) * 4 + 8,
            train_class_counts=tuple(self.train_class_counts()), schema=self.manifest["schema"], progress=progress,
            launched_at=launched_at, tracking=tracking,
        )


def run_name(config: MedrayConfig, stem: str) -> str:
    """`train.name` if set (checked), else `{stem}-{UTC time}`: a folder under `runs/`."""
    if config.train.name:
        return check_run_name(config.train.name, "train.name")
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{stem}-{stamp}"


def plan_data(config: MedrayConfig, storage: Storage) -> DataPlan:
    """The dataset, its label map and preprocessing; a bad dataset or class setting fails here."""
    if not config.data.dataset:
        raise ConfigError("no dataset chosen: set data.dataset=NAME (see `medray data list`)")
    manifest = read_manifest(storage, config.data.dataset)
    labels = LabelMap.build(manifest["classes"], config.data.class_groups, config.data.positive_class)
    train_features, train_labels = read_split_arrays(storage, manifest, "train")
    if config.eval.subgroups:  # a subgroup the cases cannot have fails now, not after training
        from medray.train.modalities import modality
        from medray.train.subgroups import subgroup_masks

        attributes = modality(manifest["modality"]).attributes(manifest["schema"], train_features)
        for spec in config.eval.subgroups:
            subgroup_masks(spec, attributes)
    return DataPlan(manifest, labels, Preprocessor.fit(manifest, train_features, config.data,
                                                       labels.apply(train_labels)))


def plan_training(config: MedrayConfig, storage: Storage, config_name: str | None = None,
                  data: DataPlan | None = None) -> TrainingPlan:
    """Resolve everything the run needs; a bad dataset, model or class setting fails here.
    `data`, when given, is `plan_data` of this config, already fitted (a search's trials)."""
    data = data or plan_data(config, storage)
    spec = InputSpec(data.manifest["modality"], tuple(data.preprocessor.input_shape), data.preprocessor.vocabulary)
    model_config = model_config_for(config.model.family, config.model.preset, spec, len(data.labels.classes),
                                    config.model.options)
    return TrainingPlan(config, data.manifest, data.labels, data.preprocessor, dataclasses.asdict(model_config),
                        run_name(config, config_name or config.model.family))


def run_training(config: MedrayConfig, storage: Storage, config_name: str | None = None) -> dict[str, Any]:
    """Train with Ray Train, then evaluate the best checkpoint; returns the result summary.
    (`train.folds` > 1 is a cross-validated ensemble, `tune/crossval.py`, which
    `medray.api.run_training` runs instead.)"""
    from medray.cluster.runtime import check_placement, ensure_ray
    from medray.train import tracking
    from medray.train.loop import build_trainer

    tracker = tracking.connect(config.tracking, tracking.default_experiment(config))
    plan = plan_training(config, storage, config_name)
    ensure_ray(config.ray)
    check_placement(config.scaling)
    filesystem, _ = storage.arrow_filesystem()
    datasets = training_datasets(storage, plan)
    log.info("training %s/%s on %s with %d worker(s); run %s", config.model.family, config.model.preset,
             plan.dataset_ref, config.scaling.num_workers, storage.uri(f"runs/{plan.run_name}"))
    run = tracker.start_run(plan.run_name, tracking.config_params(config, extra={"dataset": plan.dataset_ref}),
                            tags={"medray.run": storage.uri(f"runs/{plan.run_name}")}) if tracker else None
    with tracking.ending(run):
        trainer = build_trainer(plan.worker_plan(launched_at=time.time(), tracking=run), datasets, plan.run_name,
                                storage.arrow_path("runs"), filesystem, config.scaling)
        result = trainer.fit()
        if result.error:
            from medray.cluster.console import summarized

            raise MedrayError(f"training failed: {summarized(result.error)}")
        best = _best_checkpoint(result, config.train.metric, config.train.metric_mode)
        return finish_run(storage, plan.run_name, storage.key_of(best.path),
                          storage.key_of(result.checkpoint.path), config, tracking=run)


def training_datasets(storage: Storage, plan: TrainingPlan) -> dict[str, Any]:
    # Ray Train holds its workers' CPUs; read tasks that asked for a CPU would wait for
    # one beside them (on a 2-core node, forever). Reading is light, so ask for none.
    return {split: read_split(storage, plan.manifest, split, cpus_per_task=0, as_stored=True)
            for split in ("train", "val")}


def _best_checkpoint(result, metric: str, mode: str):
    scored = [(c, m.get(metric)) for c, m in (result.best_checkpoints or []) if m.get(metric) == m.get(metric)]
    if not scored:
        return result.checkpoint
    pick = max if mode == "max" else min
    return pick(scored, key=lambda item: item[1])[0]


def finish_run(storage: Storage, run_name: str, best_key: str, latest_key: str, config: MedrayConfig,
               tracking: TrackedRun | None = None, extra: dict[str, Any] | None = None) -> dict:
    """Evaluate the best checkpoint, write metrics + plots under the run, record the result
    (with `extra`, e.g. a cross-validation's `cv`), and give `tracking`, the run's MLflow
    run, the final metrics and the report's files."""
    from medray.train.checkpoint import PROGRESS

    with tempfile.TemporaryDirectory(prefix="medray-eval-") as scratch:
        history = json.loads(storage.read_bytes(f"{latest_key}/{PROGRESS}")).get("history", [])
        report = evaluate_stored_checkpoint(storage, best_key, Path(scratch) / "report", config, history)
        for name in sorted(p.name for p in (Path(scratch) / "report").iterdir()):
            storage.put_file(f"runs/{run_name}/report/{name}", Path(scratch) / "report" / name)
        summary = {**_summary(storage, run_name, best_key, config, history, report), **(extra or {})}
        storage.write_json(f"runs/{run_name}/{RESULT_FILE}", summary)
        if tracking is not None:
            from medray.train.tracking import log_final

            log_final(tracking, {**summary["metrics"], "epochs_run": summary["epochs_run"],
                                 "best_epoch": summary["best_epoch"]}, Path(scratch) / "report")
    return summary


def _summary(storage: Storage, run_name: str, best_key: str, config: MedrayConfig, history: list[dict],
             report: dict[str, Any]) -> dict[str, Any]:
    return {
        "run": storage.uri(f"runs/{run_name}"),
        "checkpoint": storage.uri(best_key),
        "epochs_run": len(history),
        "best_epoch": report["best_epoch"],
        "dataset": report["dataset"],
        "metrics": {"val": report["metrics"]["val"], "test": report["metrics"]["test"],
                    "calibration_set": report["metrics"]["calibration_set"],
                    "temperature": report["metrics"]["temperature"], "threshold": report["metrics"]["threshold"],
                    "ood": report["metrics"]["ood"], "baselines": report["metrics"]["baselines"],
                    **({"subgroups": report["metrics"]["subgroups"]} if "subgroups" in report["metrics"] else {})},
        "report": {name: storage.uri(f"runs/{run_name}/report/{name}") for name in report["files"]},
        # What `medray evaluate RUN` re-evaluates with, unless told otherwise.
        "settings": {"eval": config.eval.model_dump(mode="json"), "seed": config.train.seed},
    }


def evaluate_stored_checkpoint(storage: Storage, checkpoint_key: str, out_dir: Path, config: MedrayConfig,
                               history: list[dict] | None = None, baselines: bool = True) -> dict[str, Any]:
    """Evaluate a checkpoint on val (threshold, temperature) and test; write the report to out_dir.

    The out-of-distribution detector is fitted on the train split's features and
    thresholded on val (`eval.ood_method`, `eval.ood_false_alarm`): `report["ood_detector"]`;
    its figures on test and the modality's OOD sets are `report["metrics"]["ood"]` (`evaluate_ood`).
    The modality's same-run baselines (`Modality.baselines`), scored on the same test
    rows, are `report["metrics"]["baselines"]` (left empty with `baselines=False`, for a
    caller that does not report them: fitting them costs seconds)."""
    from medray.train.checkpoint import load_bundle, load_out_of_fold
    from medray.train.evaluate import (baseline_metrics, evaluate_model_outputs, plot_fold_learning_curves,
                                       plot_ood_scores, write_report)
    from medray.train.modalities import modality

    with tempfile.TemporaryDirectory(prefix="medray-ckpt-") as local:
        folder = storage.download_dir(checkpoint_key, local)
        bundle, out_of_fold = load_bundle(folder), load_out_of_fold(folder)
    manifest = read_manifest(storage, bundle.dataset)
    outputs, embeddings, features, labels = {}, {}, {}, {}
    for split in ("train", "val", "test"):
        features[split], labels[split] = read_split_arrays(storage, manifest, split)
        embeddings[split], logits = bundle.predict_embeddings(features[split])
        outputs[split] = (bundle.labels.apply(labels[split]), logits)
    calibration = outputs["val"]
    if out_of_fold is not None:  # a cross-validated ensemble is calibrated on its held-out predictions
        calibration = calibration_outputs(outputs, out_of_fold[0])
    ood_detector = ood_detector_for(config, bundle, embeddings, outputs,
                                    None if out_of_fold is None else out_of_fold[1])
    outputs["val"] = calibration
    metrics = evaluate_model_outputs(
        outputs["val"], outputs["test"], bundle.classes, threshold_method=config.eval.threshold_method,
        target_sensitivity=config.eval.target_sensitivity, n_boot=config.eval.bootstrap, seed=config.train.seed,
        net_benefit_thresholds=config.eval.net_benefit_thresholds,
    )
    if config.eval.subgroups:
        from medray.train.evaluate import apply_temperature
        from medray.train.subgroups import evaluate_subgroups

        metrics["subgroups"] = evaluate_subgroups(
            config.eval.subgroups, modality(manifest["modality"]).attributes(manifest["schema"], features["test"]),
            outputs["test"][0], apply_temperature(outputs["test"][1], metrics["temperature"]), metrics["threshold"],
            n_boot=config.eval.bootstrap, seed=config.train.seed)
    metrics["ood"], ood_scores = evaluate_ood(bundle, ood_detector, features["test"], embeddings["test"],
                                              outputs["test"][1], n_boot=config.eval.bootstrap, seed=config.train.seed)
    scored = modality(manifest["modality"]).baselines(
        manifest["schema"], (features["train"], labels["train"]), (features["test"], labels["test"]),
        bundle.labels, seed=config.train.seed) if baselines else {}
    metrics["baselines"] = {name: {**baseline_metrics(outputs["test"][0], b.scores, n_boot=config.eval.bootstrap,
                                                      seed=config.train.seed, threshold=b.threshold),
                                   "description": b.description}
                            for name, b in scored.items()}
    history = history if history is not None else bundle.progress.get("history", [])
    files = write_report(out_dir, metrics, outputs["val"], outputs["test"], history, bundle.classes,
                         {name: b.scores for name, b in scored.items()}, selected_epoch=bundle.progress.get("epoch"),
                         net_benefit_thresholds=config.eval.net_benefit_thresholds, seed=config.train.seed)
    files["ood_scores"] = plot_ood_scores(*ood_scores, ood_detector.threshold, Path(out_dir) / "ood_scores.png")
    if bundle.progress.get("folds"):  # an ensemble's curves are its members'
        files["learning_curves"] = plot_fold_learning_curves(bundle.progress["folds"],
                                                             Path(out_dir) / "learning_curves.png")
    metrics["calibration_set"] = "out_of_fold" if out_of_fold is not None else "val"
    return {"metrics": metrics, "files": sorted(Path(p).name for p in files.values()),
            "dataset": bundle.dataset, "best_epoch": bundle.progress.get("epoch"),
            "outputs": {split: outputs[split] for split in ("val", "test")}, "classes": bundle.classes,
            "ood_detector": ood_detector}


def ood_detector_for(config: MedrayConfig, bundle: Any, embeddings: dict[str, np.ndarray],
                     outputs: dict[str, tuple[np.ndarray, np.ndarray]], folds: np.ndarray | None):
    """The checkpoint's out-of-distribution detector: fitted on train, thresholded on val.

    A cross-validated ensemble's val rows were in the training of all but one member, so
    its concatenated features sit closer to the training data there than on a new case,
    and a threshold set on them flags too many new cases (9.6% against 5% on WDBC). Its
    Mahalanobis detector therefore reads its first member's features alone, fitted on the
    rows that member trained on and thresholded on the fold it held out, which no part of
    the detector saw: the split-conformal guarantee holds again, on more cases than val.
    The energy score reads the ensemble's logits, which have no such held-out rows: it is
    thresholded on val, as for one model. `folds`: an ensemble's fold of each train then
    val row (`out_of_fold.npz`, its row count checked by `calibration_outputs`)."""
    from medray.train.models.ensemble import members_of
    from medray.train.ood import fit_detector

    settings = {"false_alarm": config.eval.ood_false_alarm, "method": config.eval.ood_method}
    members = members_of(bundle.model)
    if folds is None or members is None or config.eval.ood_method != "mahalanobis":
        return fit_detector(embeddings["train"], outputs["train"][0], embeddings["val"], outputs["val"][1],
                            **settings)
    pooled = np.concatenate([embeddings["train"], embeddings["val"]])
    labels = np.concatenate([outputs["train"][0], outputs["val"][0]])
    held = folds == 0
    width = pooled.shape[1] // len(members)
    # The Mahalanobis score reads no logits.
    return fit_detector(pooled[~held], labels[~held], pooled[held], None, columns=(0, width),
                        threshold_set="fold_0", **settings)


def calibration_outputs(outputs: dict[str, tuple[np.ndarray, np.ndarray]], oof_logits: np.ndarray):
    """(labels, logits) of every train then val row, the logits out-of-fold: what a
    cross-validated ensemble's temperature, threshold and conformal quantile are fitted on
    (`tune/crossval.py`), in place of the val split alone."""
    labels = np.concatenate([outputs["train"][0], outputs["val"][0]])
    if len(oof_logits) != len(labels):
        raise MedrayError(f"the ensemble's out-of-fold logits cover {len(oof_logits)} rows, but train + val "
                          f"have {len(labels)}: it was not trained on this dataset version")
    return labels, oof_logits


def evaluate_ood(bundle: Any, detector: Any, test_features: Any, test_embeddings: np.ndarray,
                 test_logits: np.ndarray, n_boot: int = 1000, seed: int = 0) -> tuple[dict[str, Any], tuple]:
    """The detector on the in-distribution test split and on the modality's
    out-of-distribution sets (`Modality.ood_sets`, drawn with `seed`): `ood_metrics`'
    figures with the detector's summary, and (test scores, {set: (scores, kind)}) to plot."""
    from medray.train.evaluate import ood_metrics
    from medray.train.modalities import modality

    sets = modality(bundle.preprocessor.modality).ood_sets(bundle.preprocessor, test_features,
                                                           np.random.default_rng(seed))
    in_scores = detector.score(test_embeddings, test_logits)
    scored = {name: (detector.score(*bundle.predict_embeddings(ood.features)), ood.kind)
              for name, ood in sets.items()}
    figures = ood_metrics(in_scores, scored, detector.threshold, n_boot=n_boot, seed=seed)
    return {"detector": detector.summary(), **figures}, (in_scores, scored)


def resolve_checkpoint(storage: Storage, reference: str) -> str:
    """A checkpoint key from a run name (its best checkpoint) or a checkpoint URI/path."""
    if "/" not in reference:
        key = f"runs/{reference}/{RESULT_FILE}"
        if not storage.exists(key):
            raise NotFoundError(f"run '{reference}' has no result in {storage.uri('runs')}")
        return storage.key_of(storage.read_json(key)["checkpoint"])
    return storage.key_of(reference)


def run_settings(storage: Storage, reference: str) -> dict[str, Any] | None:
    """The evaluation settings a run was evaluated with (`{"eval": ..., "seed": ...}`),
    when `reference` names a run that recorded them; None for a checkpoint URI or an
    older run."""
    if "/" in reference:
        return None
    key = f"runs/{reference}/{RESULT_FILE}"
    return storage.read_json(key).get("settings") if storage.exists(key) else None


def evaluate_checkpoint(storage: Storage, reference: str, config: MedrayConfig, split: str = "test") -> dict:
    """`medray evaluate`: metrics of a stored checkpoint on one split (val fits the
    calibration), with `config`'s evaluation settings, which the answer repeats."""
    if split not in ("val", "test"):
        raise ConfigError(f"split '{split}' is not allowed; use val or test")
    key = resolve_checkpoint(storage, reference)
    with tempfile.TemporaryDirectory(prefix="medray-eval-") as scratch:
        report = evaluate_stored_checkpoint(storage, key, Path(scratch), config, baselines=False)
    return {"checkpoint": storage.uri(key), "split": split, "dataset": report["dataset"],
            "metrics": report["metrics"][split], "temperature": report["metrics"]["temperature"],
            "threshold": report["metrics"]["threshold"], "ood": report["metrics"]["ood"],
            "settings": {"eval": config.eval.model_dump(mode="json"), "seed": config.train.seed}}

