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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import torch
from torch import nn

from medray.cluster.errors import InputError
from medray.train.modalities import (
    Baseline,
    Modality,
    OODSet,
    check_numbers,
    finite_extremes,
    fitted_range,
    linear_baseline,
    text_elements,
)

if TYPE_CHECKING:
    from medray.cluster.config import DataConfig
    from medray.train.data.preprocess import Batch, LabelMap, Preprocessor


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
    def fit(self, schema: dict[str, Any], train_features: Any, data: DataConfig,
            train_labels: np.ndarray | None = None) -> tuple[str | None, list[int], dict[str, Any]]:
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
                                "min": low, "max": high, **({"unit": feature["unit"]} if feature.get("unit") else {})})
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

    # Evaluation ------------------------------------------------------------------------
    def ood_sets(self, preprocessor: Preprocessor, test_features: Any,
                 rng: np.random.Generator) -> dict[str, OODSet]:
        return tabular_ood_sets(preprocessor, pd.DataFrame(test_features), rng)

    def attributes(self, schema: dict[str, Any], features: Any) -> dict[str, np.ndarray]:
        return {f["name"]: np.asarray(features[f["name"]]) for f in schema["features"]}

    def baselines(self, schema: dict[str, Any], train: tuple[Any, np.ndarray], test: tuple[Any, np.ndarray],
                  labels: LabelMap, seed: int) -> dict[str, Baseline]:
        return {"logistic_regression": linear_baseline(
            baseline_matrix(schema, train[0]), labels.apply(train[1]), baseline_matrix(schema, test[0]),
            "the features (categories as indicators)")}

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
                else {"range": list(self.accepted_range(preprocessor, c["name"])), "typical": _typical(c)}),
             **({"unit": c["unit"]} if c.get("unit") else {})}
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

    def inference_inputs(self, preprocessor: Preprocessor) -> list[dict[str, Any]]:
        # One tensor per feature (the layout of KServe's and MLServer's pandas codecs).
        return [{"name": c["name"], "datatype": "BYTES" if c["type"] == "categorical" else "FP64", "shape": [-1]}
                for c in preprocessor.stats["columns"]]

    def instances_from_tensors(self, preprocessor: Preprocessor, tensors: dict[str, np.ndarray]) -> list[Any]:
        columns = preprocessor.stats["columns"]
        names = [c["name"] for c in columns]
        missing = [n for n in names if n not in tensors]
        if missing:
            raise InputError(f"inputs: missing feature(s) {', '.join(missing)}")
        if len(tensors) != len(names):  # unknown names are the caller's text: counted, not named
            raise InputError(f"inputs: {len(tensors) - len(names)} input(s) the model does not take; "
                             f"it takes one per feature: {', '.join(names)}")
        values, rows = {}, None
        for column in columns:
            name, tensor = column["name"], tensors[column["name"]]
            if tensor.ndim == 2 and tensor.shape[1] == 1:
                tensor = tensor[:, 0]
            if tensor.ndim != 1 or len(tensor) == 0:
                raise InputError(f"{name}: must have shape (N,) or (N, 1), N at least 1")
            if rows is not None and len(tensor) != rows:
                raise InputError(f"{name}: holds {len(tensor)} rows where the other features hold {rows}")
            rows = len(tensor)
            if column["type"] == "categorical":  # an empty string is unknown, as null is in /v1
                values[name] = [text or None for text in text_elements(name, tensor)]
            elif tensor.dtype == object or tensor.dtype == np.bool_:
                raise InputError(f"{name}: a numeric feature is a numeric tensor")
            else:  # NaN is unknown (null in /v1); an infinity stays, for decode to refuse
                values[name] = [None if math.isnan(v) else v for v in tensor.astype(np.float64).tolist()]
        return [{name: values[name][row] for name in names} for row in range(rows)]

    def graph_input(self, preprocessor: Preprocessor) -> tuple[nn.Module, dict[str, Any]]:
        columns = preprocessor.stats["columns"]
        if any(c["type"] == "categorical" for c in columns):  # category lookups stay outside the graph
            return super().graph_input(preprocessor)
        return RecordInput(preprocessor), {"shape": [-1, len(columns)], "dtype": "float32",
                                           "features": [c["name"] for c in columns],
                                           "takes": "raw feature values in this order, NaN for unknown"}

    def graph_rows(self, preprocessor: Preprocessor, instances: list[Any]) -> np.ndarray:
        columns = preprocessor.stats["columns"]
        if any(c["type"] == "categorical" for c in columns):
            return super().graph_rows(preprocessor, instances)
        decoded = self.decode(preprocessor, instances)
        return np.stack([decoded[c["name"]] for c in columns], axis=1).astype(np.float32)


class RecordInput(nn.Module):
    """An exported graph's preprocessing for numeric records: (N, F) raw values in the
    model's feature order, NaN imputed with the train split's median, then standardised."""

    def __init__(self, preprocessor: Preprocessor):
        super().__init__()
        columns = preprocessor.stats["columns"]
        for key in ("median", "mean", "std"):
            self.register_buffer(key, torch.tensor([c[key] for c in columns], dtype=torch.float64))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        values = features.double()
        values = torch.where(torch.isnan(values), self.median.expand_as(values), values)
        return ((values - self.mean) / self.std).float()


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


# Out-of-distribution sets ------------------------------------------------------------


@dataclass(frozen=True)
class MappedTable:
    """Another table installed with medray's dependencies whose columns mean the same as
    some of a model's features: its records, mapped onto those features, come from
    another population. Features it lacks are unknown (imputed, as a null in a request)."""

    name: str
    columns: dict[str, str]
    """Model feature name -> the table's column of the same quantity in the same unit."""

    def load(self) -> pd.DataFrame:
        from sklearn import datasets

        # Only scikit-learn's bundled tables: nothing is downloaded.
        return getattr(datasets, f"load_{self.name}")(as_frame=True, scaled=False).frame


MAPPED_TABLES = (
    # Efron et al. 2004 (442 diabetes patients): age in years and total serum cholesterol
    # (`s1`, mg/dL) are Cleveland's `age` and `chol`. Its sex code is undocumented and its
    # `bp` is mean arterial pressure, not resting systolic (`trestbps`): neither is mapped.
    MappedTable("diabetes", {"age": "age", "chol": "s1"}),
)


def tabular_ood_sets(preprocessor: Preprocessor, test: pd.DataFrame,
                     rng: np.random.Generator) -> dict[str, OODSet]:
    """Records unlike the training set's, as a DataFrame of the test split's columns.

    far: every number at its training minimum or maximum (side drawn per value), and
    random records (numbers uniform over the training range); categories drawn at random
    in both. near: test records with one number (drawn per record) one training span
    beyond its range, still inside what serving takes; the test records with each
    column shuffled on its own (every value plausible, the combinations not); other
    tables' records mapped onto the features they share (`MAPPED_TABLES`, where every
    mapped feature is one of the model's numbers).
    """
    columns = preprocessor.stats["columns"]
    count = len(test)
    numeric = [c for c in columns if c["type"] == "numeric"]
    ranges = {c["name"]: _training_range(c, test[c["name"]]) for c in numeric}

    def drawn(pick_number) -> pd.DataFrame:
        frame = {}
        for column in columns:
            if column["type"] == "categorical":
                frame[column["name"]] = np.asarray(column["categories"], dtype=object)[
                    rng.integers(0, len(column["categories"]), count)]
            else:
                frame[column["name"]] = pick_number(*ranges[column["name"]]).astype(np.float64)
        return pd.DataFrame(frame, columns=list(test.columns))

    sets = {
        "range_edge": OODSet(drawn(lambda low, high: np.where(rng.random(count) < 0.5, low, high)), "far"),
        "random_records": OODSet(drawn(lambda low, high: rng.uniform(low, high, count)), "far"),
    }
    if numeric and count:
        beyond = test.copy()
        chosen = rng.integers(0, len(numeric), count)
        above = rng.random(count) < 0.5
        for index, column in enumerate(numeric):
            low, high = ranges[column["name"]]
            span = max(high - low, 1e-6)
            rows = chosen == index
            values = beyond[column["name"]].to_numpy(dtype=np.float64, copy=True)
            values[rows] = np.where(above[rows], high + span, low - span)
            beyond[column["name"]] = values
        sets["one_value_beyond_range"] = OODSet(beyond, "near")
    shuffled = pd.DataFrame({name: test[name].to_numpy()[rng.permutation(count)] for name in test.columns},
                            columns=list(test.columns))
    sets["shuffled_columns"] = OODSet(shuffled, "near")
    numeric_names = {c["name"] for c in numeric}
    for table in MAPPED_TABLES:
        if set(table.columns) <= numeric_names:
            sets[f"{table.name}_mapped"] = OODSet(_mapped(table, columns, list(test.columns)), "near")
    # The test split's column dtypes (pandas' text dtype for categories), as stored records come back.
    return {name: OODSet(ood.features.astype(test.dtypes.to_dict()), ood.kind) for name, ood in sets.items()}


def _typical(column: dict[str, Any]) -> list[float]:
    """A numeric column's train-split mean +- 2 sd, to 3 significant digits, for people
    filling a record: aggregates of the split, never one patient's value (as the min and
    max are), inside the accepted range."""
    low, high = fitted_range(column)
    if column.get("min") is not None and column["min"] >= 0:  # a measure that is never negative
        low = max(low, 0.0)
    mean, sd = float(column["mean"]), float(column["std"])
    return [max(low, float(f"{mean - 2 * sd:.3g}")), min(high, float(f"{mean + 2 * sd:.3g}"))]


def _training_range(column: dict[str, Any], test_values: pd.Series) -> tuple[float, float]:
    """The training min and max of a numeric column (a checkpoint saved before they were
    fitted: the test split's)."""
    if column.get("min") is not None and column.get("max") is not None:
        return float(column["min"]), float(column["max"])
    values = test_values.to_numpy(dtype=np.float64)
    values = values[np.isfinite(values)]
    return (float(values.min()), float(values.max())) if values.size else (0.0, 1.0)


def _mapped(table: MappedTable, columns: list[dict[str, Any]], order: list[str]) -> pd.DataFrame:
    source = table.load()
    frame = {}
    for column in columns:
        if column["name"] in table.columns:
            frame[column["name"]] = source[table.columns[column["name"]]].to_numpy(dtype=np.float64)
        elif column["type"] == "categorical":
            frame[column["name"]] = np.full(len(source), None, dtype=object)
        else:
            frame[column["name"]] = np.full(len(source), np.nan)
    return pd.DataFrame(frame, columns=order)


# Evaluation --------------------------------------------------------------------------------


def baseline_matrix(schema: dict[str, Any], features: pd.DataFrame) -> np.ndarray:
    """The records as a float matrix for a classical model: numbers as they are, each
    category of the schema as an indicator; NaN where a value is unknown."""
    columns = []
    for feature in schema["features"]:
        values = features[feature["name"]]
        if feature["type"] == "categorical":
            known = values.notna().to_numpy()
            for category in feature["categories"]:
                columns.append(np.where(known, (values.astype(str) == str(category)).to_numpy(), np.nan))
        else:
            columns.append(pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64))
    return np.column_stack(columns)
