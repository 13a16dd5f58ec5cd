"""Turning stored rows into model inputs, the same way in training and in serving.

Statistics are fitted on the train split only and saved with every checkpoint as plain
JSON (`Preprocessor.to_dict`), so a served model transforms a request exactly as it was
trained. They include each signal channel's and numeric column's training min and max,
from which `accepted_range` gives the values serving takes. Labels go through a
`LabelMap` (classes merged or reordered by the config).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medray.cluster.errors import ConfigError

Batch = Mapping[str, Any]  # a Ray Data numpy batch, a pandas DataFrame, or a dict of arrays

RANGE_MARGIN = 10.0
"""Serving takes values up to this many training spans beyond the training min and max:
wide enough for a patient more extreme than any in the train split, narrow enough that
a slip of orders of magnitude (or 1e300) is refused rather than extrapolated."""
PIXEL_RANGE = (0.0, 255.0)
"""Images are stored as uint8: their range is the dtype's, not fitted."""
_FLOAT32_REACH = float(np.finfo(np.float32).max) / 2


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
    """Fitted transform from a batch of stored rows to a float32 model input."""

    modality: str
    column: str | None
    """The tensor column for images/signals; None for tables."""
    input_shape: list[int]
    """Per-example shape the model takes: (C, H, W), (L, C) or (F,)."""
    stats: dict[str, Any] = field(default_factory=dict)

    # Fitting ---------------------------------------------------------------------
    @classmethod
    def fit(cls, manifest: dict[str, Any], train_features: Any) -> "Preprocessor":
        modality, schema = manifest["modality"], manifest["schema"]
        if modality == "image":
            images = _channels_first(np.asarray(train_features), schema["shape"]).astype(np.float64) / 255.0
            mean = images.mean(axis=(0, 2, 3)).tolist()
            std = np.maximum(images.std(axis=(0, 2, 3)), 1e-6).tolist()
            return cls("image", schema["column"], list(images.shape[1:]), {"mean": mean, "std": std})
        if modality == "signal":
            signals = _time_major(np.asarray(train_features, dtype=np.float64))
            mean = np.nanmean(signals, axis=(0, 1)).tolist()
            std = np.maximum(np.nanstd(signals, axis=(0, 1)), 1e-6).tolist()
            low, high = _finite_extremes(signals.reshape(-1, signals.shape[-1]))
            return cls("signal", schema["column"], list(signals.shape[1:]),
                       {"mean": mean, "std": std, "min": low, "max": high})
        columns = []
        width = 0
        for feature in schema["features"]:
            values = train_features[feature["name"]]
            if feature["type"] == "categorical":
                columns.append({"name": feature["name"], "type": "categorical",
                                "categories": list(feature["categories"])})
                width += len(feature["categories"])
            else:
                numbers = np.asarray(values, dtype=np.float64)
                finite = numbers[~np.isnan(numbers)]
                median = float(np.median(finite)) if finite.size else 0.0
                filled = np.where(np.isnan(numbers), median, numbers)
                (low,), (high,) = _finite_extremes(numbers[:, None])
                columns.append({"name": feature["name"], "type": "numeric", "median": median,
                                "mean": float(filled.mean()), "std": float(max(filled.std(), 1e-6)),
                                "min": low, "max": high})
                width += 1
        return cls("tabular", None, [width], {"columns": columns})

    # Applying --------------------------------------------------------------------
    def transform(self, batch: Batch | np.ndarray) -> np.ndarray:
        """Rows of `batch` -> float32 array of shape (N, *input_shape). Images and signals
        may also come as the bare array (N, *stored shape)."""
        if self.column is not None and isinstance(batch, Mapping):
            batch = batch[self.column]
        if self.modality == "image":
            images = _channels_first(np.asarray(batch), self.input_shape)
            mean = np.asarray(self.stats["mean"], dtype=np.float32)[None, :, None, None]
            std = np.asarray(self.stats["std"], dtype=np.float32)[None, :, None, None]
            return ((images.astype(np.float32) / 255.0 - mean) / std).astype(np.float32)
        if self.modality == "signal":
            signals = _time_major(np.asarray(batch, dtype=np.float32))
            normalised = (signals - np.asarray(self.stats["mean"], np.float32)) / np.asarray(self.stats["std"], np.float32)
            return np.nan_to_num(normalised, nan=0.0).astype(np.float32)
        parts = []
        for column in self.stats["columns"]:
            values = batch[column["name"]]
            if column["type"] == "categorical":
                texts = np.asarray(values, dtype=object)
                parts.append(np.stack([texts == c for c in column["categories"]], axis=1).astype(np.float32))
            else:
                numbers = np.asarray(values, dtype=np.float64)
                numbers = np.where(np.isnan(numbers), column["median"], numbers)
                parts.append(((numbers - column["mean"]) / column["std"]).astype(np.float32)[:, None])
        return np.concatenate(parts, axis=1)

    def accepted_range(self, key: int | str) -> tuple[float, float]:
        """[low, high] of the raw values serving takes for signal channel `key` or
        numeric column `key` (any key for images: 0-255). Values outside are refused,
        never clamped: the model has not seen anything like them. A checkpoint saved
        before the training min/max were stored gets the widest range its float32
        normalisation can represent."""
        if self.modality == "image":
            return PIXEL_RANGE
        if self.modality == "signal":
            fitted = {name: self.stats[name][key] if name in self.stats else None
                      for name in ("mean", "std", "min", "max")}
        else:
            fitted = next(c for c in self.stats["columns"] if c["name"] == key)
        if fitted.get("min") is None or fitted.get("max") is None:
            reach = float(fitted["std"]) * _FLOAT32_REACH
            mean = float(fitted["mean"])
            return max(mean - reach, -_FLOAT32_REACH), min(mean + reach, _FLOAT32_REACH)
        return _widened(float(fitted["min"]), float(fitted["max"]))

    @property
    def feature_names(self) -> list[str]:
        """Names of the model's input features (tables), for attention explanations."""
        if self.modality != "tabular":
            return []
        names = []
        for column in self.stats["columns"]:
            if column["type"] == "categorical":
                names += [f"{column['name']}={c}" for c in column["categories"]]
            else:
                names.append(column["name"])
        return names

    def to_dict(self) -> dict[str, Any]:
        return {"modality": self.modality, "column": self.column, "input_shape": self.input_shape,
                "stats": self.stats}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Preprocessor":
        return cls(data["modality"], data["column"], list(data["input_shape"]), dict(data["stats"]))


def _finite_extremes(values: np.ndarray) -> tuple[list[float | None], list[float | None]]:
    """Per column of (N, C) `values`: min and max of the finite entries (None if none)."""
    finite = np.isfinite(values)
    low = np.where(finite, values, np.inf).min(axis=0, initial=np.inf)
    high = np.where(finite, values, -np.inf).max(axis=0, initial=-np.inf)
    as_list = lambda xs: [float(x) if math.isfinite(x) else None for x in xs]  # noqa: E731
    return as_list(low), as_list(high)


def _widened(low: float, high: float) -> tuple[float, float]:
    """[low, high] widened by RANGE_MARGIN spans on each side, then rounded outward to
    the span's order of magnitude: published bounds do not give back the exact training
    extremes, each of which is one patient's value."""
    span = high - low if high > low else max(abs(high), 1.0)
    exponent = math.floor(math.log10(span))
    unit = 10.0 ** exponent
    digits = max(0, -exponent)
    bottom = round(math.floor((low - RANGE_MARGIN * span) / unit) * unit, digits)
    top = round(math.ceil((high + RANGE_MARGIN * span) / unit) * unit, digits)
    return max(bottom, -_FLOAT32_REACH), min(top, _FLOAT32_REACH)


def _channels_first(images: np.ndarray, shape: list[int]) -> np.ndarray:
    """(N, H, W) or (N, H, W, C) -> (N, C, H, W); `shape` is the stored or model shape."""
    if images.ndim == 3:
        return images[:, None, :, :]
    if images.ndim == 4 and images.shape[-1] in (1, 3) and images.shape[1] not in (1, 3):
        return np.transpose(images, (0, 3, 1, 2))
    return images


def _time_major(signals: np.ndarray) -> np.ndarray:
    """(N, L) -> (N, L, 1); (N, L, C) stays."""
    return signals[:, :, None] if signals.ndim == 2 else signals
