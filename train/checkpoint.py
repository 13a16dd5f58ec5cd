"""A checkpoint is a folder a model rebuilds itself from, with no other input.

    weights.pt        the state_dict (loaded with weights_only=True: no arbitrary unpickling)
    model.json        family + the model config dataclass
    data.json         dataset reference, preprocessing statistics, label map (class names)
    train_state.pt    optimiser/scheduler state, epoch, history: to resume training
    progress.json     epoch, metrics and history so far, readable without torch
    out_of_fold.npz   a cross-validated ensemble's out-of-fold logits (`OUT_OF_FOLD`)

An ensemble (`train/models/ensemble.py`) is stored as one model: `model.json` holds its
members' shared config and their count, `weights.pt` every member's weights.

A registry version holds the first three (`MODEL_FILES`) and `calibration.json`, which
promotion fits on val (with the out-of-distribution detector, `"ood"`, when it has one).
Only this module spells these names.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medray.train.data.preprocess import LabelMap, Preprocessor
from medray.train.models import build_model_from_config
from medray.train.models.ensemble import Ensemble

WEIGHTS = "weights.pt"
MODEL = "model.json"
DATA = "data.json"
TRAIN_STATE = "train_state.pt"
PROGRESS = "progress.json"
MODEL_FILES = (WEIGHTS, MODEL, DATA)
"""What rebuilds the model for prediction, without training state."""
MAX_ENSEMBLE_MEMBERS = 20
"""The most members a stored ensemble may claim (`train.folds` allows as many)."""
OUT_OF_FOLD = "out_of_fold.npz"
"""A cross-validated ensemble's logits for every train and val row from the member that
did not train on it (`logits`, rows in stored order, train then val) and each row's fold
(`fold`): the held-out predictions its temperature, threshold and conformal quantile are
fitted on. Labels are not repeated here; they are read from the dataset."""
CALIBRATION = "calibration.json"
"""Temperature, threshold and conformal quantile, written beside MODEL_FILES by promotion."""


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside a DistributedDataParallel wrapper."""
    return model.module if hasattr(model, "module") else model


@dataclasses.dataclass
class ModelBundle:
    """Everything needed to turn stored rows into predictions."""

    model: nn.Module
    family: str
    model_config: dict[str, Any]
    preprocessor: Preprocessor
    labels: LabelMap
    dataset: str
    """`NAME@vN` the model was trained on."""
    progress: dict[str, Any]

    @property
    def classes(self) -> list[str]:
        return self.labels.classes

    def predict_logits(self, batch: Any, batch_size: int = 512) -> torch.Tensor:
        """Logits (N, K) of stored rows: `predict_embeddings`' second half."""
        return torch.from_numpy(self.predict_embeddings(batch, batch_size)[1])

    @torch.no_grad()
    def predict_embeddings(self, batch: Any, batch_size: int = 512) -> tuple[np.ndarray, np.ndarray]:
        """(penultimate features (N, D), logits (N, K)) of stored rows, preprocessed, from
        one pass; what out-of-distribution detection is fitted on."""
        self.model.eval()
        inputs = torch.from_numpy(self.preprocessor.transform(batch))
        pairs = [self.model.features_and_logits(chunk) for chunk in inputs.split(batch_size)]
        if not pairs:
            width = self.model.features_and_logits(torch.zeros(1, *inputs.shape[1:]))[0].shape[1]
            return np.empty((0, width), np.float32), np.empty((0, len(self.classes)), np.float32)
        return (torch.cat([f for f, _ in pairs]).numpy(), torch.cat([z for _, z in pairs]).numpy())


def save_checkpoint(
    directory: str | Path,
    model: nn.Module,
    family: str,
    preprocessor: Preprocessor,
    labels: LabelMap,
    dataset: str,
    progress: dict[str, Any],
    train_state: dict[str, Any] | None = None,
) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    bare = unwrap(model)
    torch.save({k: v.detach().cpu() for k, v in bare.state_dict().items()}, directory / WEIGHTS)
    members = {"members": len(bare.members)} if isinstance(bare, Ensemble) else {}
    (directory / MODEL).write_text(json.dumps(
        {"family": family, "config": dataclasses.asdict(bare.config), **members}, indent=2))
    (directory / DATA).write_text(json.dumps(
        {"dataset": dataset, "preprocessing": preprocessor.to_dict(), "labels": labels.to_dict()}, indent=2))
    (directory / PROGRESS).write_text(json.dumps(progress, indent=2, default=float))
    if train_state is not None:
        torch.save(train_state, directory / TRAIN_STATE)
    return directory


def load_bundle(directory: str | Path) -> ModelBundle:
    directory = Path(directory)
    model_info = json.loads((directory / MODEL).read_text())
    data_info = json.loads((directory / DATA).read_text())
    model = build_model_from_config(model_info["family"], model_info["config"])
    members = model_info.get("members")
    if members is not None:
        if not isinstance(members, int) or not 2 <= members <= MAX_ENSEMBLE_MEMBERS:
            raise ValueError(f"{MODEL}: 'members' must be an integer from 2 to {MAX_ENSEMBLE_MEMBERS}")
        model = Ensemble([model] + [build_model_from_config(model_info["family"], model_info["config"])
                                    for _ in range(members - 1)])
    model.load_state_dict(load_weights(directory))
    model.eval()
    progress_file = directory / PROGRESS
    return ModelBundle(
        model=model,
        family=model_info["family"],
        model_config=model_info["config"],
        preprocessor=Preprocessor.from_dict(data_info["preprocessing"]),
        labels=LabelMap.from_dict(data_info["labels"]),
        dataset=data_info["dataset"],
        progress=json.loads(progress_file.read_text()) if progress_file.exists() else {},
    )


def save_out_of_fold(directory: str | Path, logits: np.ndarray, fold: np.ndarray) -> Path:
    path = Path(directory) / OUT_OF_FOLD
    np.savez(path, logits=np.asarray(logits, np.float32), fold=np.asarray(fold, np.int16))
    return path


def load_out_of_fold(directory: str | Path) -> tuple[np.ndarray, np.ndarray] | None:
    """(logits, fold) of a cross-validated ensemble; None for any other checkpoint."""
    path = Path(directory) / OUT_OF_FOLD
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as stored:
        logits, fold = stored["logits"], stored["fold"]
    if len(logits) != len(fold):
        raise ValueError(f"{OUT_OF_FOLD} holds {len(logits)} rows of logits but {len(fold)} folds")
    return logits, fold


def load_weights(directory: str | Path) -> dict[str, torch.Tensor]:
    """The saved state_dict, on the CPU; weights_only: a checkpoint cannot run code."""
    return torch.load(Path(directory) / WEIGHTS, map_location="cpu", weights_only=True)


def load_train_state(directory: str | Path) -> dict[str, Any] | None:
    path = Path(directory) / TRAIN_STATE
    return torch.load(path, map_location="cpu", weights_only=True) if path.exists() else None
