"""Tabular records: one column per feature, numeric or categorical (the manifest's
schema: `features`, each with `name`, `type` and, when categorical, `categories`).

Preprocessing fills a missing number with the train split's median and standardises it
with the filled column's mean and std; a category becomes a one-hot block (a missing or
unknown one: all zeros). The model takes (F,) numbers. A request sends an object keyed
by feature name, null for an unknown value. Training has no augmentation for records.
Explanations are the attention model's weights over the features.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import torch
from torch import nn

from medray.cluster.errors import InputError
from medray.train.modalities import Modality, check_numbers, finite_extremes, fitted_range

if TYPE_CHECKING:
    from medray.train.data.preprocess import Batch, Preprocessor


class TabularModality(Modality):
    name = "tabular"
    shape_axes = ("features",)

    # Stored data -----------------------------------------------------------------------
    def features_from_table(self, features: pa.Table, schema: dict[str, Any]) -> pd.DataFrame:
        return features.to_pandas()

    def shape_stream(self, dataset: Any, schema: dict[str, Any], cpus_per_task: float | None) -> Any:
        return dataset  # plain columns arrive as preprocessing takes them

    def constant_features(self, table: pa.Table) -> list[str]:
        return [name for name, column in zip(table.column_names, table.columns)
                if len(column.drop_null().unique()) <= 1]

    def request_instance(self, features: pd.DataFrame, row: int, schema: dict[str, Any]) -> dict[str, Any]:
        values = features.iloc[row]
        # A missing number (NaN) or category (None) is unknown: sent as null.
        return {f["name"]: None if pd.isna(values[f["name"]]) else
                str(values[f["name"]]) if f["type"] == "categorical" else float(values[f["name"]])
                for f in schema["features"]}

    # Preprocessing ---------------------------------------------------------------------
    def fit(self, schema: dict[str, Any], train_features: Any) -> tuple[str | None, list[int], dict[str, Any]]:
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
                (low,), (high,) = finite_extremes(numbers[:, None])
                columns.append({"name": feature["name"], "type": "numeric", "median": median,
                                "mean": float(filled.mean()), "std": float(max(filled.std(), 1e-6)),
                                "min": low, "max": high})
                width += 1
        return None, [width], {"columns": columns}

    def transform(self, preprocessor: Preprocessor, batch: Batch | np.ndarray) -> np.ndarray:
        parts = []
        for column in preprocessor.stats["columns"]:
            values = batch[column["name"]]
            if column["type"] == "categorical":
                texts = np.asarray(values, dtype=object)
                parts.append(np.stack([texts == c for c in column["categories"]], axis=1).astype(np.float32))
            else:
                numbers = np.asarray(values, dtype=np.float64)
                numbers = np.where(np.isnan(numbers), column["median"], numbers)
                parts.append(((numbers - column["mean"]) / column["std"]).astype(np.float32)[:, None])
        return np.concatenate(parts, axis=1)

    def accepted_range(self, preprocessor: Preprocessor, key: int | str) -> tuple[float, float]:
        """For numeric column `key`."""
        return fitted_range(next(c for c in preprocessor.stats["columns"] if c["name"] == key))

    def feature_names(self, preprocessor: Preprocessor) -> list[str]:
        names = []
        for column in preprocessor.stats["columns"]:
            if column["type"] == "categorical":
                names += [f"{column['name']}={c}" for c in column["categories"]]
            else:
                names.append(column["name"])
        return names

    # Serving ---------------------------------------------------------------------------
    def input_schema(self, preprocessor: Preprocessor) -> dict[str, Any]:
        return {"type": "record", "features": [
            {"name": c["name"], "type": c["type"],
             **({"categories": c["categories"]} if "categories" in c
                else {"range": list(self.accepted_range(preprocessor, c["name"]))})}
            for c in preprocessor.stats["columns"]], "accepts": ["object keyed by feature name; null is imputed"]}

    def decode(self, preprocessor: Preprocessor, instances: list[Any]) -> dict[str, np.ndarray]:
        columns = preprocessor.stats["columns"]
        names = [c["name"] for c in columns]
        values: dict[str, list[Any]] = {name: [] for name in names}
        for index, record in enumerate(instances):
            field = f"instances[{index}]"
            if not isinstance(record, dict):
                raise InputError(f"{field}: must be an object keyed by feature name")
            missing = [name for name in names if name not in record]
            if missing:
                raise InputError(f"{field}: missing feature(s) {', '.join(missing)} (send null for an unknown value)")
            extra = len(set(record) - set(names))
            if extra:  # unknown keys are not named back: they are the caller's text
                raise InputError(f"{field}: {extra} feature(s) the model does not take; "
                                 f"it takes exactly: {', '.join(names)}")
            for column in columns:
                values[column["name"]].append(_feature(f"{field}.{column['name']}", column, record[column["name"]]))
        return {name: np.asarray(v, dtype=object if c["type"] == "categorical" else np.float64)
                for (name, v), c in zip(values.items(), columns)}

    def explain(self, model: nn.Module, inputs: torch.Tensor, preprocessor: Preprocessor) -> list[dict[str, Any]]:
        with torch.no_grad():
            weights = model.attention_weights(inputs).double().numpy()
        names = self.feature_names(preprocessor)
        return [{"type": "attention", "features": dict(zip(names, map(float, row)))} for row in weights]


def _feature(field: str, column: dict[str, Any], value: Any) -> Any:
    """One feature of a request record, checked, as `transform` takes it."""
    if column["type"] == "categorical":
        if value is None:
            return None
        # Only scalars are compared: str() of a deep list recurses, of a huge int raises.
        scalar = isinstance(value, str) or (isinstance(value, (int, float)) and not isinstance(value, bool)
                                            and abs(value) < 1e300)
        if not scalar or str(value) not in column["categories"]:
            raise InputError(f"{field}: not one of the categories {', '.join(column['categories'])}")
        return str(value)
    if value is None:
        return math.nan  # imputed with the training median, as in training
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{field}: must be a number or null")
    try:
        number = float(value)
    except OverflowError:  # an int past float64
        raise InputError(f"{field}: is too large") from None
    low, high = fitted_range(column)
    check_numbers(field, np.asarray([number]), low, high)
    return number
