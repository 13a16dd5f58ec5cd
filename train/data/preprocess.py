"""Turning stored rows into model inputs, the same way in training and in serving.

Statistics are fitted on the train split only and saved with every checkpoint as plain
JSON (`Preprocessor.to_dict`), so a served model transforms a request exactly as it was
trained. They include each signal channel's and numeric column's training min and max,
from which `accepted_range` gives the values serving takes. What is fitted and how it
is applied is each modality's (`medray.train.modalities`); the saved format is this
module's. Labels go through a `LabelMap` (classes merged or reordered by the config).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medray.cluster.config import DataConfig
from medray.cluster.errors import ConfigError
from medray.train.modalities import modality

Batch = Mapping[str, Any]  # a Ray Data numpy batch, a pandas DataFrame, or a dict of arrays


@dataclass(frozen=True)
class LabelMap:
    """Dataset class indices -> training class indices, and the training class names."""

    source_classes: list[str]
    classes: list[str]
    index: list[int]
    """`index[dataset_label]` is the training label."""

    @classmethod
    def build(cls, source_classes: list[str], groups: dict[str, list[str]] | None = None,
              positive_class: str | None = None) -> "LabelMap":
        if groups:
            named = [c for members in groups.values() for c in members]
            unknown = sorted(set(named) - set(source_classes))
            if unknown:
                raise ConfigError(f"data.class_groups names class(es) {unknown} the dataset does not have "
                                  f"(its classes: {source_classes})")
            twice = sorted({c for c in named if named.count(c) > 1})
            left_out = [c for c in source_classes if c not in named]
            if twice or left_out:
                raise ConfigError(f"data.class_groups must name every class exactly once; "
                                  f"twice: {twice}, missing: {left_out}")
            classes = list(groups)
            owner = {c: i for i, members in enumerate(groups.values()) for c in members}
            index = [owner[c] for c in source_classes]
        else:
            classes, index = list(source_classes), list(range(len(source_classes)))
        if positive_class is not None:
            if len(classes) != 2 or positive_class not in classes:
                raise ConfigError(f"data.positive_class '{positive_class}' must be one of two classes {classes}")
            if classes[1] != positive_class:
                classes = classes[::-1]
                index = [1 - i for i in index]
        return cls(list(source_classes), classes, index)

    def apply(self, labels: np.ndarray) -> np.ndarray:
        return np.asarray(self.index, dtype=np.int64)[np.asarray(labels, dtype=np.int64)]

    def to_dict(self) -> dict[str, Any]:
        return {"source_classes": self.source_classes, "classes": self.classes, "index": self.index}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LabelMap":
        return cls(list(data["source_classes"]), list(data["classes"]), list(data["index"]))


@dataclass
class Preprocessor:
    """Fitted transform from a batch of stored rows to a float32 model input. It holds
    the fitted numbers; its modality (`medray.train.modalities`) holds the code."""

    modality: str
    """A name in `medray.train.modalities.MODALITIES`."""
    column: str | None
    """The tensor column for images/signals; None for tables."""
    input_shape: list[int]
    """Per-example shape the model takes: (C, H, W), (L, C) or (F,)."""
    stats: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def fit(cls, manifest: dict[str, Any], train_features: Any, data: DataConfig | None = None,
            train_labels: np.ndarray | None = None) -> "Preprocessor":
        """Fitted on the train split's features; `data` is the config's data section (its
        `text` tokenization; the defaults when None); `train_labels`, each row's class
        index after the label map, for the statistics a modality keeps by class."""
        column, input_shape, stats = modality(manifest["modality"]).fit(
            manifest["schema"], train_features, data if data is not None else DataConfig(), train_labels)
        return cls(manifest["modality"], column, input_shape, stats)

    def transform(self, batch: Batch | np.ndarray) -> np.ndarray:
        """Rows of `batch` -> float32 array of shape (N, *input_shape). Images and signals
        may also come as the bare array (N, *stored shape)."""
        if self.column is not None and isinstance(batch, Mapping):
            batch = batch[self.column]
        return modality(self.modality).transform(self, batch)

    def accepted_range(self, key: int | str) -> tuple[float, float]:
        """[low, high] of the raw values serving takes for signal channel `key` or
        numeric column `key` (any key for images: 0-255). Values outside are refused,
        never clamped: the model has not seen anything like them. A checkpoint saved
        before the training min/max were stored gets the widest range its float32
        normalisation can represent."""
        return modality(self.modality).accepted_range(self, key)

    @property
    def feature_names(self) -> list[str]:
        """Names of the model's input features (tables), for attention explanations."""
        return modality(self.modality).feature_names(self)

    @property
    def vocabulary(self) -> int | None:
        """How many token ids the model input indexes (text), else None."""
        return modality(self.modality).vocabulary(self)

    def to_dict(self) -> dict[str, Any]:
        return {"modality": self.modality, "column": self.column, "input_shape": self.input_shape,
                "stats": self.stats}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Preprocessor":
        return cls(data["modality"], data["column"], list(data["input_shape"]), dict(data["stats"]))
