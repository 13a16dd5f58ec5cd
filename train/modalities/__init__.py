"""Modalities and the registry that finds them.

A modality is one kind of input data (images, signals, tabular records, clinical
time series, clinical text) and one module
here owns everything about it: how its stored columns come back from a dataset version,
how preprocessing is fitted on the train split and applied, augmentation, the input
schema a served model publishes, how a request (JSON or an uploaded file) is checked
and decoded, and how a prediction is explained. Training, evaluation and serving call
the `Modality` interface; nothing outside this package branches on a modality's name.
The same pattern as the model families (`medray.train.models.FAMILIES`).

    kind = modality(manifest["modality"])          # ConfigError naming the choices
    column, input_shape, stats = kind.fit(manifest["schema"], train_features)

The fitted numbers live in `medray.train.data.preprocess.Preprocessor` (saved with every
checkpoint as plain JSON); the methods here take it and never store anything.

Adding a modality: one module here with a `Modality` subclass, its line in
`MODALITIES`, a model family whose preset takes it, and its tests.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar, Literal, NamedTuple

import numpy as np
import pyarrow as pa

from medray.cluster.errors import ConfigError, InputError
from medray.train.data.dataset import reshape_batch, tensor_from_column

if TYPE_CHECKING:
    import torch

    from medray.cluster.config import DataConfig
    from medray.train.data.preprocess import Batch, LabelMap, Preprocessor

# --- Helpers the modality modules share -------------------------------------------
# These live above the modality imports below because the modality modules import them.

RANGE_MARGIN = 10.0
"""Serving takes values up to this many training spans beyond the training min and max:
wide enough for a patient more extreme than any in the train split, narrow enough that
a slip of orders of magnitude (or 1e300) is refused rather than extrapolated."""
FLOAT32_REACH = float(np.finfo(np.float32).max) / 2


def finite_extremes(values: np.ndarray) -> tuple[list[float | None], list[float | None]]:
    """Per column of (N, C) `values`: min and max of the finite entries (None if none)."""
    finite = np.isfinite(values)
    low = np.where(finite, values, np.inf).min(axis=0, initial=np.inf)
    high = np.where(finite, values, -np.inf).max(axis=0, initial=-np.inf)
    as_list = lambda xs: [float(x) if math.isfinite(x) else None for x in xs]  # noqa: E731
    return as_list(low), as_list(high)


def fitted_range(fitted: dict[str, Any]) -> tuple[float, float]:
    """The raw values serving takes for one fitted channel or column (`mean`, `std` and,
    when fitted, `min`, `max`). A checkpoint saved before the training min/max were
    stored gets the widest range its float32 normalisation can represent."""
    if fitted.get("min") is None or fitted.get("max") is None:
        reach = float(fitted["std"]) * FLOAT32_REACH
        mean = float(fitted["mean"])
        return max(mean - reach, -FLOAT32_REACH), min(mean + reach, FLOAT32_REACH)
    return _widened(float(fitted["min"]), float(fitted["max"]))


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
    return max(bottom, -FLOAT32_REACH), min(top, FLOAT32_REACH)


def numeric_array(field: str, item: Any, max_ndim: int) -> np.ndarray:
    """A rectangular nested list of JSON numbers (or a numeric array) as float64. Booleans are refused (Python
    counts them as ints, NumPy would quietly make them 1 and 0), so are ints past float64.
    Walks one level at a time, never deeper than `max_ndim`, so no input recurses."""
    problem = f"{field}: must be a rectangular, non-empty array of numbers"
    if isinstance(item, np.ndarray):  # a tensor already (the inference protocol's): rectangular by construction
        if item.dtype.kind not in "iuf" or not 1 <= item.ndim <= max_ndim or item.size == 0:
            raise InputError(problem)
        return item.astype(np.float64)
    if not isinstance(item, list):
        raise InputError(f"{field}: must be an array of numbers")
    shape, level = [], [item]
    while isinstance(level[0], list):
        width = len(level[0])
        if len(shape) == max_ndim or width == 0 or any(not isinstance(r, list) or len(r) != width for r in level):
            raise InputError(problem)
        shape.append(width)
        level = [x for row in level for x in row]
    if any(isinstance(x, bool) or not isinstance(x, (int, float)) for x in level):
        raise InputError(problem)
    try:
        return np.asarray(level, dtype=np.float64).reshape(shape)
    except OverflowError:  # an int past float64
        raise InputError(f"{field}: holds a number too large for the model") from None


def check_numbers(field: str, values: np.ndarray, low: float, high: float, what: str = "") -> None:
    """The one check of numeric request input, for every modality: finite, and within
    the [low, high] the preprocessing accepts (`Modality.accepted_range`). Messages name
    the field and `what` ("pixel values "), never the values."""
    if not np.isfinite(values).all():
        raise InputError(f"{field}: holds NaN or infinity")
    if (values < low).any() or (values > high).any():
        raise InputError(f"{field}: {what}must lie in [{low:g}, {high:g}]")


class OODSet(NamedTuple):
    """Inputs unlike the training data, built to measure the out-of-distribution detector."""

    features: Any
    """In the stored form `features_from_table` returns (what `ModelBundle` predicts on)."""
    kind: Literal["far", "near"]
    """far: not this kind of input at all (another modality, blank, noise): the detector
    should flag nearly all of it. near: this kind of input, changed or from elsewhere
    (a rotated image, a reversed ECG, another population): reported as it measures."""


class Baseline(NamedTuple):
    """A classical reference scored on the same test rows as the model (`Modality.baselines`)."""

    scores: np.ndarray
    """Two classes: per test row, higher predicting the training's class 1, NaN where it
    has none. K classes: (rows, K) probabilities in the training's class order."""
    description: str
    """What it is, in a line for the report."""
    threshold: float | None = None
    """Two classes: the score from which it predicts class 1 (0.5 for a probability), so
    its accuracy is reported too; None for a score with no operating point (SAPS-I)."""


def linear_baseline(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, what: str) -> Baseline:
    """scikit-learn's L2 logistic regression (C = 1) on standardised features, missing
    values imputed with the train split's medians, fitted on the train split: the plain
    linear reference for a table, a signal's samples or an image's pixels. Test scores:
    class 1's probability for two classes, every class's otherwise."""
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(SimpleImputer(strategy="median", keep_empty_features=True), StandardScaler(),
                          LogisticRegression(C=1.0, max_iter=5000))
    model.fit(train_x, train_y)
    probs = model.predict_proba(test_x)
    if probs.shape[1] == 2:
        return Baseline(probs[:, 1], f"L2 logistic regression (C = 1) on {what}", threshold=0.5)
    return Baseline(probs, f"L2 logistic regression (C = 1) on {what}")


def flat_baselines(train: tuple[Any, np.ndarray], test: tuple[Any, np.ndarray], labels: LabelMap,
                   what: str) -> dict[str, Baseline]:
    """A tensor modality's baselines: logistic regression on each example's values, flattened."""
    flat = lambda x: np.asarray(x, dtype=np.float64).reshape(len(x), -1)  # noqa: E731
    return {"logistic_regression": linear_baseline(flat(train[0]), labels.apply(train[1]), flat(test[0]), what)}


# --- The interface --------------------------------------------------------------------


class Modality(ABC):
    """Everything medray does that depends on the kind of input. One instance per
    modality, in MODALITIES; it holds no state (fitted numbers are the Preprocessor's)."""

    name: ClassVar[str]
    """The manifest's and the checkpoint's `modality`."""
    shape_axes: ClassVar[tuple[str, ...]]
    """What each axis of the model input's per-example shape means (no batch axis)."""

    # Stored data -----------------------------------------------------------------------
    @abstractmethod
    def features_from_table(self, features: pa.Table, schema: dict[str, Any]) -> Any:
        """One split's feature columns, read in this process, as preprocessing takes them."""

    @abstractmethod
    def shape_stream(self, dataset: Any, schema: dict[str, Any], cpus_per_task: float | None) -> Any:
        """A split's `ray.data.Dataset` with batches as preprocessing takes them."""

    @abstractmethod
    def constant_features(self, table: pa.Table) -> list[str] | dict[str, int]:
        """The quality report's `constant_features` for all splits' feature columns."""

    @abstractmethod
    def request_instance(self, features: Any, row: int, schema: dict[str, Any]) -> Any:
        """Row `row` of `features_from_table`'s result as a client sends it to `/predict`."""

    # Preprocessing ---------------------------------------------------------------------
    @abstractmethod
    def fit(self, schema: dict[str, Any], train_features: Any, data: DataConfig,
            train_labels: np.ndarray | None = None) -> tuple[str | None, list[int], dict[str, Any]]:
        """(column, input_shape, stats) fitted on the train split's features, with the
        config's data section (its `text` tokenization, for text) and, when known, each
        train row's class index (text: document frequencies by class)."""

    @abstractmethod
    def transform(self, preprocessor: Preprocessor, batch: Batch | np.ndarray) -> np.ndarray:
        """Rows of `batch` -> float32 array of shape (N, *input_shape)."""

    @abstractmethod
    def accepted_range(self, preprocessor: Preprocessor, key: int | str) -> tuple[float, float]:
        """[low, high] of the raw values serving takes for input `key`."""

    def feature_names(self, preprocessor: Preprocessor) -> list[str]:
        """Names of the model's input features, where they have names (tables)."""
        return []

    def vocabulary(self, preprocessor: Preprocessor) -> int | None:
        """How many token ids the model input's values index (text), else None."""
        return None

    # Training --------------------------------------------------------------------------
    def prepare_model(self, model: torch.nn.Module, preprocessor: Preprocessor) -> None:
        """Give a freshly built model what it takes from the training split itself
        before its first step (text: the document frequencies of a TF-IDF model); kept in
        its state_dict from then on. The default gives nothing."""

    def augment(self, inputs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """A batch of model inputs randomly varied for training (`train.augment`); the
        default leaves them as they are and draws nothing from `generator`."""
        return inputs

    # Evaluation ------------------------------------------------------------------------
    @abstractmethod
    def ood_sets(self, preprocessor: Preprocessor, test_features: Any,
                 rng: np.random.Generator) -> dict[str, OODSet]:
        """Named out-of-distribution sets for a model on this modality, built from the
        test split's features and data installed with medray's dependencies (nothing
        downloaded); the same sets for the same `rng` seed. Sets that do not apply to
        this model (leads swapped for a one-lead ECG) are left out."""

    def attributes(self, schema: dict[str, Any], features: Any) -> dict[str, np.ndarray]:
        """Per-case attributes a split's metrics can be broken down by (`eval.subgroups`),
        by name, one value per row of `features`; the default: none (pixels and samples
        carry no such thing)."""
        return {}

    def fold_groups(self, features: Any) -> np.ndarray | None:
        """A key per row of `features` that cross-validation keeps in one fold (rows the
        import kept in one split), or None: every row is its own."""
        return None

    def baselines(self, schema: dict[str, Any], train: tuple[Any, np.ndarray], test: tuple[Any, np.ndarray],
                  labels: LabelMap, seed: int) -> dict[str, Baseline]:
        """Classical references computed in the same run, on the same test rows: named
        scores for the test split from models fitted on `train` ((features, dataset
        labels) as `features_from_table` gives them) or from the source itself. The
        default: none."""
        return {}

    # Serving ---------------------------------------------------------------------------
    @abstractmethod
    def input_schema(self, preprocessor: Preprocessor) -> dict[str, Any]:
        """What a served model publishes about the input it takes (GET /v1/models)."""

    @abstractmethod
    def decode(self, preprocessor: Preprocessor, instances: list[Any]) -> Batch | np.ndarray:
        """A request's non-empty `instances`, checked, as a batch for `transform`; a
        problem raises `InputError` naming `instances[i]`."""

    def decode_file(self, preprocessor: Preprocessor, data: bytes, model: str) -> np.ndarray:
        """An uploaded file as a batch of one for `transform`."""
        raise InputError(f"file: model '{model}' takes {self.name} input, not image files")

    def metadata_mismatches(self, preprocessor: Preprocessor, instances: list[Any]) -> list[list[str]]:
        """Per instance (already decoded without error) or uploaded file (bytes), the
        names of the metadata fields it carries that differ from the training set's (a
        DICOM's Modality, say): out of distribution whatever the model's score. Names
        only, never the values. The default: none carry metadata."""
        return [[] for _ in instances]

    @abstractmethod
    def explain(self, model: torch.nn.Module, inputs: torch.Tensor,
                preprocessor: Preprocessor) -> list[dict[str, Any]]:
        """Why, per input, the model (in eval mode) predicts its class."""

    # The Open Inference Protocol and exported graphs ---------------------------------
    @abstractmethod
    def inference_inputs(self, preprocessor: Preprocessor) -> list[dict[str, Any]]:
        """The input tensors of an Open Inference Protocol request (name, datatype, shape
        with -1 for the batch axis), as GET /v2/models/{name} lists them."""

    @abstractmethod
    def instances_from_tensors(self, preprocessor: Preprocessor, tensors: dict[str, np.ndarray]) -> list[Any]:
        """An Open Inference Protocol request's tensors by name as the `instances` `decode`
        takes (so both protocols are checked alike); a problem raises `InputError` naming
        the input, never a value."""

    def graph_input(self, preprocessor: Preprocessor) -> tuple[torch.nn.Module, dict[str, Any]]:
        """The preprocessing an exported graph starts with (a module from its input to the
        model's) and what that input is (`shape`, `dtype`, `takes`). The default holds none:
        the graph takes the model's input tensor, as `transform` returns it."""
        from torch import nn

        return nn.Identity(), {"shape": [-1, *preprocessor.input_shape], "dtype": "float32",
                               "takes": f"the model's input tensor: medray's {self.name} preprocessing "
                                        "(Preprocessor.transform) of the request, which this graph does not hold"}

    def graph_rows(self, preprocessor: Preprocessor, instances: list[Any]) -> np.ndarray:
        """Request `instances` as an exported graph's input (what `graph_input` takes)."""
        return self.transform(preprocessor, self.decode(preprocessor, instances))


class TensorModality(Modality, ABC):
    """A modality stored as one fixed-size-list column holding each example's array
    (the manifest's schema: `column`, `shape`, `dtype`)."""

    def features_from_table(self, features: pa.Table, schema: dict[str, Any]) -> np.ndarray:
        return tensor_from_column(features.column(schema["column"]), schema["shape"], schema["dtype"])

    def shape_stream(self, dataset: Any, schema: dict[str, Any], cpus_per_task: float | None) -> Any:
        return dataset.map_batches(
            reshape_batch, batch_format="numpy", num_cpus=cpus_per_task,
            fn_kwargs={"column": schema["column"], "shape": schema["shape"], "dtype": schema["dtype"]},
        )

    def constant_features(self, table: pa.Table) -> dict[str, int]:
        # How many positions (pixels, time steps) never change.
        values = tensor_from_column(table.column(0), [-1], "float64")
        constant = np.nanmax(values, axis=0) == np.nanmin(values, axis=0)
        return {"constant_positions": int(constant.sum()), "positions": int(values.shape[1])}

    def request_instance(self, features: np.ndarray, row: int, schema: dict[str, Any]) -> list:
        return np.asarray(features[row]).tolist()


# --- Open Inference Protocol tensors: checks every modality's mapping shares ---------

def one_tensor(tensors: dict[str, np.ndarray], name: str) -> np.ndarray:
    """The request's only input, which must be called `name` and hold instances."""
    if set(tensors) != {name}:
        raise InputError(f"inputs: this model takes one input, '{name}'")
    tensor = tensors[name]
    if tensor.ndim == 0 or tensor.shape[0] == 0:
        raise InputError(f"{name}: holds no instances (its first dimension is 0)")
    return tensor


def numeric_rows(name: str, tensor: np.ndarray) -> list[np.ndarray]:
    """A numeric tensor's rows as float64 arrays (what `numeric_array` checks)."""
    if tensor.dtype == object or tensor.dtype == np.bool_:
        raise InputError(f"{name}: must be a numeric tensor")
    return list(tensor.astype(np.float64, copy=False))


def text_elements(name: str, tensor: np.ndarray) -> list[str]:
    """A BYTES tensor of shape (N,) as UTF-8 strings."""
    if tensor.dtype != object or tensor.ndim != 1:
        raise InputError(f"{name}: must be a BYTES tensor of shape (N,)")
    try:
        return [bytes(item).decode("utf-8") for item in tensor]
    except UnicodeDecodeError:
        raise InputError(f"{name}: elements must be UTF-8 text") from None


# The modality modules import the names above, so they come after them.
from medray.train.modalities import image, signal, tabular, text, timeseries  # noqa: E402

MODALITIES: dict[str, Modality] = {
    kind.name: kind for kind in (image.ImageModality(), signal.SignalModality(), tabular.TabularModality(),
                                 timeseries.TimeSeriesModality(), text.TextModality())
}


def modality(name: str) -> Modality:
    """The registered modality called `name`."""
    if name not in MODALITIES:
        raise ConfigError(f"unknown input modality {name!r}; choose one of: {', '.join(MODALITIES)}")
    return MODALITIES[name]


__all__ = ["MODALITIES", "Baseline", "Modality", "OODSet", "TensorModality", "modality", "numeric_rows", "one_tensor",
           "text_elements"]
