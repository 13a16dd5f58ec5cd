"""The Python API: what the `medray` commands do, as calls for a notebook or a script.

Each call is its command's code path: the CLI (medray/cli/) parses arguments, calls the
function here and prints what it returns, which is the object `--json` prints. Calls
take plain arguments: a config as a YAML path or a loaded `MedrayConfig`, plus
`key=value` overrides; a storage root as a string (`file://…`, a path, `s3://…`) or a
`Storage`, else $MEDRAY_STORAGE, else ~/.medray. torch and Ray are imported by the
calls that need them, not before.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medray.cluster.errors import MedrayError

if TYPE_CHECKING:
    from medray.cluster.config import MedrayConfig
    from medray.cluster.storage import Storage
    from medray.serve.model import ServedModel


def open_storage(storage: str | Storage | None = None, config: MedrayConfig | None = None) -> Storage:
    """A `Storage` is used as given; otherwise the root given, else $MEDRAY_STORAGE, else
    ~/.medray. The config's storage settings (encryption, KMS key, retries) apply
    whichever gives the root."""
    from medray.cluster.storage import Storage

    if isinstance(storage, Storage):
        return storage
    return Storage.from_cli(storage, config.storage if config is not None else None)


def _config(config: str | os.PathLike | MedrayConfig | None, overrides: Sequence[str]) -> MedrayConfig:
    from medray.cluster.config import load_config

    return load_config(config, list(overrides))


def _config_name(config: str | os.PathLike | MedrayConfig | None) -> str | None:
    """A YAML file's stem names the runs made from it when train.name does not."""
    return Path(config).stem if isinstance(config, (str, os.PathLike)) else None


# Datasets ---------------------------------------------------------------------------
def import_dataset(kind: str, source: str, name: str, *, storage: str | Storage | None = None,
                   dataset: str | None = None, target: str | None = None, columns: list[str] | None = None,
                   missing: list[str] | None = None, categorical: Sequence[str] = (), group: str | None = None,
                   drop: Sequence[str] = (), classes: list[str] | None = None, sep: str = ",",
                   units: Mapping[str, str] | None = None, grayscale: bool = True, license: str | None = None,
                   source_label: str | None = None,
                   val_fraction: float | None = None, test_fraction: float | None = None, seed: int | None = None,
                   image_size: int | None = None, outcomes: str | None = None, labels: str | None = None,
                   patient_column: str = "patient", time_column: str = "time", variable_column: str = "variable",
                   value_column: str = "value", time_unit: str = "minutes", static: Sequence[str] = (),
                   scores: Sequence[str] = (), window_hours: float = 48.0,
                   out_of_range: str = "drop", text_column: str = "text", label_column: str = "label",
                   label_names: str | None = None, path_column: str = "path", group_column: str | None = None,
                   channels: int | None = None, resize: str = "pad",
                   skip_unreadable: bool = False) -> dict[str, Any]:
    """`medray data import`: validate the source and publish it as the dataset's next
    version; returns its manifest. The options are `medray data import --help`'s."""
    from medray.cluster.config import validate_config
    from medray.train.data import importers

    options = validate_config(
        {k: v for k, v in {"val_fraction": val_fraction, "test_fraction": test_fraction, "seed": seed,
                           "image_size": image_size}.items() if v is not None},
        importers.ImportOptions,
    )
    request = importers.ImportRequest(
        kind=kind, source=source, name=name, dataset=dataset, target=target, columns=columns, missing=missing,
        categorical=list(categorical), group=group, drop=list(drop), classes=classes, sep=sep,
        units=dict(units or {}), grayscale=grayscale,
        license=license, source_label=source_label, options=options, outcomes=outcomes, labels=labels,
        patient_column=patient_column, time_column=time_column, variable_column=variable_column,
        value_column=value_column, time_unit=time_unit, static=list(static), scores=list(scores),
        window_hours=window_hours, out_of_range=out_of_range, text_column=text_column, label_column=label_column,
        label_names=label_names, path_column=path_column, group_column=group_column, channels=channels,
        resize=resize, skip_unreadable=skip_unreadable)
    return importers.import_dataset(open_storage(storage), request)


def datasets(storage: str | Storage | None = None) -> dict[str, Any]:
    """`medray data list`: every dataset with its versions, and its latest version's
    modality, classes and rows per split."""
    from medray.train.data.dataset import list_datasets, read_manifest

    store = open_storage(storage)
    store.check()
    rows = []
    for name, versions in list_datasets(store).items():
        latest = read_manifest(store, f"{name}@v{versions[-1]}")
        rows.append({
            "name": name, "versions": versions, "latest": versions[-1], "modality": latest["modality"],
            "classes": latest["classes"],
            "rows": {split: info["rows"] for split, info in latest["splits"].items()},
        })
    return {"storage": store.root, "datasets": rows}


def describe_dataset(ref: str, storage: str | Storage | None = None) -> dict[str, Any]:
    """`medray data describe`: the manifest of `NAME` (its latest version) or `NAME@vN`."""
    from medray.train.data.dataset import read_manifest

    return read_manifest(open_storage(storage), ref)


# Training and evaluation --------------------------------------------------------------
def run_training(config: str | os.PathLike | MedrayConfig, overrides: Sequence[str] = (), *,
                 storage: str | Storage | None = None) -> dict[str, Any]:
    """`medray train`: train with Ray Train (a local Ray unless ray.address or
    RAY_ADDRESS names a cluster), evaluate the best checkpoint; returns the summary."""
    from medray.train.job import run_training as train

    loaded = _config(config, overrides)
    if loaded.train.folds > 1:  # K folds as Tune trials, their models one ensemble
        from medray.train import tracking
        from medray.tune.crossval import run_cross_validation

        tracker = tracking.connect(loaded.tracking, tracking.default_experiment(loaded))
        return run_cross_validation(loaded, open_storage(storage, loaded), _config_name(config), tracker)
    return train(loaded, open_storage(storage, loaded), _config_name(config))


def evaluate(checkpoint: str, config: str | os.PathLike | MedrayConfig | None = None, overrides: Sequence[str] = (),
             *, split: str = "test", storage: str | Storage | None = None) -> dict[str, Any]:
    """`medray evaluate`: the metrics of a run's best checkpoint (a run name) or of a
    checkpoint URI on one split. Evaluated as the run was (its threshold method, target
    sensitivity, bootstrap, OOD settings and seed, recorded with its result) unless a
    `config` is given; `overrides` apply on top either way. The answer's `settings` say
    which were used."""
    from medray.cluster.config import MedrayConfig, validate_config
    from medray.train.job import evaluate_checkpoint, run_settings

    loaded = _config(config, overrides)
    store = open_storage(storage, loaded)
    recorded = run_settings(store, checkpoint) if config is None else None
    if recorded:
        raw = MedrayConfig().model_dump(mode="json")
        raw["eval"], raw["train"]["seed"] = recorded["eval"], recorded["seed"]
        loaded = _config(validate_config(raw, MedrayConfig), overrides)
    return evaluate_checkpoint(store, checkpoint, loaded, split)


# Search, promotion, the registry ------------------------------------------------------
def run_search(config: str | os.PathLike | MedrayConfig | None = None, overrides: Sequence[str] = (), *,
               storage: str | Storage | None = None, samples: int | None = None, promote: bool = False,
               resume: str | None = None) -> dict[str, Any]:
    """`medray tune`: a Ray Tune search (ASHA + Optuna) over the config's tune: space, or
    the interrupted search `resume` continued; returns the trial table and the best
    trial. With `tune.folds=K` each trial is cross-validated and the best one's checkpoint
    is the ensemble of its K fold models (`cv` in the result). `promote`: the best trial
    then goes through the gate (`promotion` in the result)."""
    from medray.tune.run import run_search as search

    if config is None and not resume:
        raise MedrayError("give a config to start a search, or the name of one to resume (--resume NAME)")
    loaded = _config(config, [*overrides, *([f"tune.num_samples={samples}"] if samples else [])])
    store = open_storage(storage, loaded)
    summary = search(loaded, store, _config_name(config), resume=resume)
    if promote:
        summary["promotion"] = _promote_best_trial(store, summary)
    return summary


def _promote_best_trial(storage: Storage, summary: dict[str, Any]) -> dict[str, Any]:
    from medray.tune.promote import promote_checkpoint
    from medray.tune.spaces import apply_params

    best = summary["best"]
    if not best["checkpoint"]:
        raise MedrayError(f"the best trial {best['trial']} left no checkpoint to promote")
    # The trial's own config: the search's base with the values it drew.
    saved = storage.read_json(f"runs/{summary['search']}/search.json")
    best_config = apply_params(saved["base"], best["config"])
    return promote_checkpoint(storage, storage.key_of(best["checkpoint"]), best_config,
                              source={"search": summary["search"], "trial": best["trial"]})


def promote(checkpoint: str, config: str | os.PathLike | MedrayConfig | None = None, overrides: Sequence[str] = (),
            *, storage: str | Storage | None = None, source: dict[str, Any] | None = None) -> dict[str, Any]:
    """Evaluate a run's best checkpoint (a run name) or a checkpoint URI, check it
    against the config's promote.gate and, if it passes, register it as the model's
    next version (and champion, unless promote.make_champion=false); returns what
    happened. `source`: where the checkpoint came from, for the model card (default:
    the run, when a run name is given). (`medray models promote NAME K` instead points
    the champion at a version by hand.)"""
    from medray.train.job import resolve_checkpoint
    from medray.tune.promote import promote_checkpoint

    loaded = _config(config, overrides)
    store = open_storage(storage, loaded)
    if source is None and "/" not in checkpoint:  # a run name, as resolve_checkpoint reads it
        source = {"run": checkpoint}
    return promote_checkpoint(store, resolve_checkpoint(store, checkpoint), loaded, source=source)


def models(storage: str | Storage | None = None) -> dict[str, Any]:
    """`medray models list`: each registered model, its versions, its champion, and the
    dataset and test AUROC of the champion (else the latest version)."""
    from medray.cluster.registry import Registry

    store = open_storage(storage)
    store.check()
    registry = Registry(store)
    rows = []
    for name in registry.models():
        champion = registry.champion(name)
        versions = registry.versions(name)
        info = registry.version_info(name, champion["version"] if champion else versions[-1])
        rows.append({"name": name, "versions": versions, "champion": champion["version"] if champion else None,
                     "dataset": info.get("dataset"), "test_auroc": info.get("metrics", {}).get("test", {}).get("auroc")})
    return {"storage": store.root, "models": rows}


def load_model(ref: str, storage: str | Storage | None = None) -> ServedModel:
    """The registry version `NAME@K` (or `NAME`'s champion) as Serve runs it, here, without
    Ray: `model.predict(model.decode(instances))` answers as the served API does."""
    from medray.cluster.registry import Registry
    from medray.serve.model import ServedModel

    registry = Registry(open_storage(storage))
    name, version = registry.resolve(ref)
    return ServedModel.from_registry(registry, name, version)


def export_model(ref: str, fmt: str, destination: str | os.PathLike,
                 storage: str | Storage | None = None) -> dict[str, Any]:
    """Write the registry version `NAME@K` (or `NAME`'s champion) as an ONNX or TorchScript
    graph that outputs calibrated probabilities, with its calibration, model card and
    checksums, into the folder `destination` (see `medray.serve.export`)."""
    from medray.cluster.registry import Registry
    from medray.serve.export import export_version

    registry = Registry(open_storage(storage))
    name, version = registry.resolve(ref)
    return export_version(registry, name, version, fmt, Path(destination))
