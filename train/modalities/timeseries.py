"""Clinical time series: a patient's stay as irregular observations of named variables
(vital signs, labs, scores), each charted at its own rate and many never, plus static
descriptors (age, sex, height, ICU type): the shape of ICU charts and EHR exports.

Stored (`medray.train.data.events`), one row per patient: the raw observations as three
lists (`obs_minutes` since admission, `obs_variable` indexing `schema["variables"]`,
`obs_value`), one float column per static descriptor (`static_*`, NaN when unknown) and
per reference score (`score_*`, e.g. SAPS-I; never a model input). The raw lists stay in
the dataset, so a model that reads observations directly can be added beside the grid.

Preprocessing, fitted on the train split: each variable's mean and std over its train
observations (after log1p for a right-skewed one, `SKEW_TO_LOG`); each numeric static's
too; a categorical static becomes one indicator per category. The model input per
patient is (T, V, 3): T steps of `step_minutes` over the window (hourly over 48 h), V
model variables (the time-varying ones, then the statics, which are observations at
step 0 as the source records them), and per variable and step: the standardised value, forward-filled from the last observation (0, the training
mean, before the first); the observation mask; and delta, the time since the variable's
last observation before this step in days, as GRU-D (Che et al. 2018) defines it:
delta_0 = 0, delta_t = step + delta_{t-1} if unobserved at t-1, else step. Several
observations in one step are averaged.

Serving takes a patient as `{"static": {...}, "observations": [{"time": "HH:MM" or
minutes, "variable": "HR", "value": 87}, ...]}`. Explanations are gradient x input
saliency over (time step, variable), its largest part credited to the observations the
values came from, and the attention over time of attention models.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import torch
from torch import nn

from medray.cluster.bounded_json import parse_json_body
from medray.cluster.errors import InputError
from medray.train.data.events import CLOCK
from medray.train.modalities import (Baseline, Modality, OODSet, check_numbers, finite_extremes, fitted_range, one_tensor,
                                     text_elements)

if TYPE_CHECKING:
    from medray.cluster.config import DataConfig
    from medray.train.data.preprocess import Batch, LabelMap, Preprocessor

OBSERVATION_COLUMNS = ("obs_minutes", "obs_variable", "obs_value")
STEP_MINUTES = 60
"""The grid's resolution: hourly, as GRU-D and most PhysioNet 2012 models use."""
MAX_OBSERVATIONS = 50_000
"""Per patient in a request: PhysioNet 2012's busiest stay has about 1,400 in 48 h."""
HIDDEN_SHARE = 0.3
"""Observed cells hidden per training batch by `train.augment`."""
TOP_EXPLANATIONS = 10
"""(time step, variable) cells listed per explanation, most salient first."""


class TimeSeriesModality(Modality):
    name = "timeseries"
    shape_axes = ("time", "variables", "channels")

    # Stored data -----------------------------------------------------------------------
    def features_from_table(self, features: pa.Table, schema: dict[str, Any]) -> pd.DataFrame:
        """One row per patient: each observation column holds the patient's array."""
        batch: dict[str, np.ndarray] = {}
        for name in OBSERVATION_COLUMNS:
            column = features.column(name).combine_chunks()
            values = column.values.to_numpy(zero_copy_only=False)
            offsets = column.offsets.to_numpy()
            batch[name] = _object_array(np.split(values, offsets[1:-1]) if len(column) else [])
        for column in _static_columns(schema) + [s["column"] for s in schema.get("reference_scores", [])]:
            batch[column] = features.column(column).to_numpy(zero_copy_only=False).astype(np.float64)
        return pd.DataFrame(batch)

    def shape_stream(self, dataset: Any, schema: dict[str, Any], cpus_per_task: float | None) -> Any:
        return dataset  # list columns arrive as object arrays of per-patient arrays: transform takes those

    def constant_features(self, table: pa.Table) -> dict[str, int]:
        # Variables never observed or always at one value, over all splits.
        variables = table.column("obs_variable").combine_chunks().values.to_numpy(zero_copy_only=False)
        values = table.column("obs_value").combine_chunks().values.to_numpy(zero_copy_only=False)
        seen = np.unique(variables)
        if not len(seen):
            return {"constant_variables": 0, "observed_variables": 0}
        order = np.argsort(variables, kind="stable")
        groups = np.split(values[order], np.searchsorted(variables[order], seen)[1:])
        return {"constant_variables": int(sum(g.min() == g.max() for g in groups)),
                "observed_variables": int(len(seen))}

    def request_instance(self, features: pd.DataFrame, row: int, schema: dict[str, Any]) -> dict:
        names = [v["name"] for v in schema["variables"]]
        static = {}
        for spec in schema["statics"]:
            value = float(features[spec["column"]].iloc[row])
            static[spec["name"]] = None if math.isnan(value) else value
        observations = [{"time": float(t), "variable": names[int(v)], "value": float(x)}
                        for t, v, x in zip(*(features[c].iloc[row] for c in OBSERVATION_COLUMNS))]
        return {"static": static, "observations": observations}

    # Preprocessing ---------------------------------------------------------------------
    def fit(self, schema: dict[str, Any], train_features: Any, data: DataConfig,
            train_labels: np.ndarray | None = None) -> tuple[str | None, list[int], dict[str, Any]]:
        variables = _concatenated(train_features["obs_variable"], np.int64)
        values = _concatenated(train_features["obs_value"], np.float64)
        fitted_variables = []
        for index, spec in enumerate(schema["variables"]):
            observed = values[variables == index]
            logged = _skewed(observed)
            fitted_variables.append({"name": spec["name"], "range": spec.get("range"), "log": logged,
                                     **_moments(np.log1p(observed) if logged else observed),
                                     **dict(zip(("min", "max"), _extremes(observed)))})
        statics = []
        for spec in schema["statics"]:
            column = np.asarray(train_features[spec["column"]], dtype=np.float64)
            entry = {"name": spec["name"], "column": spec["column"], "categories": spec.get("categories"),
                     "range": spec.get("range")}
            if not entry["categories"]:
                entry.update(_moments(column[~np.isnan(column)]))
            statics.append(entry)
        steps = int(math.ceil(schema["window_minutes"] / STEP_MINUTES))
        stats = {"variables": fitted_variables, "statics": statics, "window_minutes": schema["window_minutes"],
                 "step_minutes": STEP_MINUTES, "steps": steps}
        return None, [steps, len(model_variables(stats)), 3], stats

    def transform(self, preprocessor: Preprocessor, batch: Batch | np.ndarray) -> np.ndarray:
        return grid(preprocessor.stats, batch)

    def accepted_range(self, preprocessor: Preprocessor, key: int | str) -> tuple[float, float]:
        """For a variable's or a numeric static's name: the physiological range the
        import checked, else the widened training range."""
        stats = preprocessor.stats
        entry = next(e for e in stats["variables"] + stats["statics"] if e["name"] == key)
        return _accepted(entry)

    def feature_names(self, preprocessor: Preprocessor) -> list[str]:
        return model_variables(preprocessor.stats)

    # Training --------------------------------------------------------------------------
    def augment(self, inputs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return hide_observations(inputs, generator)

    # Evaluation ------------------------------------------------------------------------
    def ood_sets(self, preprocessor: Preprocessor, test_features: Any,
                 rng: np.random.Generator) -> dict[str, OODSet]:
        return timeseries_ood_sets(preprocessor.stats, test_features, rng)

    def baselines(self, schema: dict[str, Any], train: tuple[Any, np.ndarray], test: tuple[Any, np.ndarray],
                  labels: LabelMap, seed: int) -> dict[str, Baseline]:
        return timeseries_baselines(schema, train, test, labels, seed)

    def attributes(self, schema: dict[str, Any], features: Any) -> dict[str, np.ndarray]:
        """The static descriptors (age, ICU type, ...) by name."""
        return {spec["name"]: np.asarray(features[spec["column"]]) for spec in schema["statics"]}

    # Serving ---------------------------------------------------------------------------
    def input_schema(self, preprocessor: Preprocessor) -> dict[str, Any]:
        stats = preprocessor.stats
        statics = [{"name": s["name"], **({"categories": s["categories"]} if s["categories"]
                                          else {"range": list(_accepted(s))})} for s in stats["statics"]]
        return {"type": "patient_timeseries", "window_minutes": stats["window_minutes"],
                "variables": [{"name": v["name"], "range": list(_accepted(v))} for v in stats["variables"]],
                "statics": statics,
                "accepts": ['{"static": {name: value or null}, "observations": [{"time": "HH:MM" or minutes, '
                            '"variable": name, "value": number}]}']}

    def decode(self, preprocessor: Preprocessor, instances: list[Any]) -> pd.DataFrame:
        stats = preprocessor.stats
        patients = [_patient(stats, f"instances[{i}]", item) for i, item in enumerate(instances)]
        batch = {name: _object_array([p[0][k] for p in patients]) for k, name in enumerate(OBSERVATION_COLUMNS)}
        for spec in stats["statics"]:
            batch[spec["column"]] = np.asarray([p[1][spec["name"]] for p in patients], dtype=np.float64)
        return pd.DataFrame(batch)

    def metadata_mismatches(self, preprocessor: Preprocessor, instances: list[Any]) -> list[list[str]]:
        """A stay with no observation of any time-varying variable has nothing to predict
        from: out of distribution whatever the detector makes of its all-mean input."""
        return [[] if item.get("observations") else ["observations"] for item in instances]

    def inference_inputs(self, preprocessor: Preprocessor) -> list[dict[str, Any]]:
        return [{"name": "stay", "datatype": "BYTES", "shape": [-1]}]

    def instances_from_tensors(self, preprocessor: Preprocessor, tensors: dict[str, np.ndarray]) -> list[Any]:
        # Each element one stay as /v1 takes it, a JSON document parsed with the body's bounds.
        return [parse_json_body(text.encode("utf-8")) for text in text_elements("stay", one_tensor(tensors, "stay"))]

    def explain(self, model: nn.Module, inputs: torch.Tensor, preprocessor: Preprocessor) -> list[dict[str, Any]]:
        names = model_variables(preprocessor.stats)
        step = preprocessor.stats["step_minutes"]
        cells = saliency(model, inputs)
        attention = None
        if hasattr(model, "attention_weights") and inputs.ndim == 4:
            with torch.no_grad():
                attention = model.attention_weights(inputs).double().numpy()
        by_observation = observation_saliency(cells, inputs[..., 1].detach().numpy())
        out = []
        for index, (cell, observed) in enumerate(zip(cells, by_observation)):
            top = np.argsort(observed, axis=None)[::-1][:TOP_EXPLANATIONS]
            entry = {"type": "saliency", "step_minutes": step, "variables": names,
                     "per_step_and_variable": cell.round(4).tolist(),
                     "top": [{"hour": float(t * step / 60), "variable": names[v],
                              "weight": round(float(observed[t, v]), 4)}
                             for t, v in zip(*np.unravel_index(top, observed.shape)) if observed[t, v] > 0]}
            if attention is not None:
                entry["attention_over_steps"] = attention[index].round(4).tolist()
            out.append(entry)
        return out


# The grid -----------------------------------------------------------------------------


def model_variables(stats: dict[str, Any]) -> list[str]:
    """The V names of the model input's variable axis: the time-varying variables, then
    each numeric static, then one indicator per category of each categorical static."""
    names = [v["name"] for v in stats["variables"]]
    for spec in stats["statics"]:
        if spec["categories"]:
            names += [f"{spec['name']}={_category_text(c)}" for c in spec["categories"]]
        else:
            names.append(spec["name"])
    return names


def grid(stats: dict[str, Any], batch: Batch) -> np.ndarray:
    """Patients (a batch of the stored columns) -> float32 (N, T, V, 3): see the module
    docstring. Vectorised over all observations of the batch at once."""
    minutes = [np.asarray(x, dtype=np.float64) for x in batch["obs_minutes"]]
    count, steps = len(minutes), stats["steps"]
    variables = stats["variables"]
    width = len(model_variables(stats))
    lengths = np.asarray([len(x) for x in minutes], dtype=np.int64)
    time = np.concatenate(minutes) if count else np.empty(0)
    variable = _concatenated(batch["obs_variable"], np.int64)
    value = _concatenated(batch["obs_value"], np.float64)
    patient = np.repeat(np.arange(count), lengths)
    inside = (time >= 0) & (time <= stats["window_minutes"]) & np.isfinite(value)
    patient, time, variable, value = patient[inside], time[inside], variable[inside], value[inside]
    mean = np.asarray([v["mean"] for v in variables], dtype=np.float64)
    std = np.asarray([v["std"] for v in variables], dtype=np.float64)
    logged = np.asarray([bool(v.get("log")) for v in variables] or [False])[variable]
    value = np.where(logged, np.log1p(np.maximum(value, 0.0)), value)
    standardised = (value - mean[variable]) / std[variable]
    # The window's last minute (48:00) belongs to the last step.
    step = np.minimum((time // stats["step_minutes"]).astype(np.int64), steps - 1)
    # Statics are observations at step 0, in the variable columns after the time series.
    static_patient, static_variable, static_value = _static_observations(stats, batch, count, len(variables))
    patient = np.concatenate([patient, static_patient])
    step = np.concatenate([step, np.zeros(len(static_patient), dtype=np.int64)])
    variable = np.concatenate([variable, static_variable])
    standardised = np.concatenate([standardised, static_value])

    cell = (patient * steps + step) * width + variable
    size = count * steps * width
    counts = np.bincount(cell, minlength=size).reshape(count, steps, width)
    sums = np.bincount(cell, weights=standardised, minlength=size).astype(np.float64).reshape(count, steps, width)
    observed = counts > 0
    means = np.divide(sums, counts, out=np.zeros_like(sums), where=observed)
    # Forward fill: the index of each cell's latest observed step (-1: none yet).
    step_index = np.arange(steps)[None, :, None]
    last = np.maximum.accumulate(np.where(observed, step_index, -1), axis=1)
    filled = np.where(last >= 0, np.take_along_axis(means, np.maximum(last, 0), axis=1), 0.0)
    # Delta: steps since the last observation strictly before t (since the start if none).
    before = np.concatenate([np.full((count, 1, width), -1), last[:, :-1]], axis=1)
    delta = (step_index - np.maximum(before, 0)) * (stats["step_minutes"] / 1440.0)
    return np.stack([filled, observed, delta], axis=-1).astype(np.float32)


def hide_observations(inputs: torch.Tensor, generator: torch.Generator, share: float = HIDDEN_SHARE) -> torch.Tensor:
    """A batch of grids (B, T, V, 3) with `share` of the observed cells hidden at random,
    the forward fill and delta recomputed as if those were never charted: the same
    patient as a ward that measures less often would record them."""
    value, mask = inputs[..., 0], inputs[..., 1]
    keep = torch.rand(mask.shape, generator=generator).to(mask.device) >= share
    mask = mask * keep.to(mask.dtype)
    steps = inputs.shape[1]
    step_index = torch.arange(steps, device=inputs.device).view(1, steps, 1).expand_as(mask)
    last = torch.where(mask > 0, step_index, torch.full_like(step_index, -1)).cummax(dim=1).values
    # Where the cell is observed its channel-0 value is the observation (the mean of its step).
    filled = torch.where(last >= 0, value.gather(1, last.clamp_min(0)), torch.zeros_like(value))
    before = torch.cat([torch.full_like(last[:, :1], -1), last[:, :-1]], dim=1)
    # One step in days: delta at step 1 is one step, whatever was observed at step 0.
    step = inputs[:1, 1:2, :1, 2] if steps > 1 else inputs.new_zeros(1, 1, 1)
    delta = (step_index - before.clamp_min(0)).to(inputs.dtype) * step
    return torch.stack([filled, mask, delta], dim=-1)


def _static_observations(stats: dict[str, Any], batch: Batch, count: int,
                         first: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(patient, model variable, model value) of every known static descriptor."""
    patients, columns, values = [], [], []
    column = first
    for spec in stats["statics"]:
        raw = np.asarray(batch[spec["column"]], dtype=np.float64).reshape(count)
        known = np.flatnonzero(~np.isnan(raw))
        if spec["categories"]:
            for category in spec["categories"]:
                # A known category sets every indicator of its static: 1 for its own, 0 the rest.
                patients.append(known)
                columns.append(np.full(len(known), column))
                values.append((raw[known] == category).astype(np.float64))
                column += 1
        else:
            patients.append(known)
            columns.append(np.full(len(known), column))
            values.append((raw[known] - spec["mean"]) / spec["std"])
            column += 1
    if not patients:
        return (np.empty(0, np.int64),) * 2 + (np.empty(0),)
    return (np.concatenate(patients).astype(np.int64), np.concatenate(columns).astype(np.int64),
            np.concatenate(values))


def observation_saliency(cells: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Saliency (N, T, V) credited to the observations it comes from: a value carried
    forward from step t until the variable's next observation reads as t's observation,
    so what a clinician sees named is a charted measurement ("HR at hour 6"), not a
    filled-in hour. Scaled to [0, 1] per patient; cells never observed get 0."""
    steps = cells.shape[1]
    last = np.maximum.accumulate(np.where(mask > 0, np.arange(steps)[None, :, None], -1), axis=1)
    credited = np.zeros_like(cells)
    patient, step, variable = np.nonzero(last >= 0)
    np.add.at(credited, (patient, last[patient, step, variable], variable), cells[patient, step, variable])
    peak = credited.reshape(len(cells), -1).max(axis=1, initial=0.0)
    return credited / np.maximum(peak, 1e-12)[:, None, None]


def saliency(model: nn.Module, inputs: torch.Tensor) -> np.ndarray:
    """|gradient x input| of the predicted class's logit, summed over the three channels
    and scaled to [0, 1] per patient: (N, T, V)."""
    x = inputs.clone().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        logits.gather(1, logits.argmax(dim=1, keepdim=True)).sum().backward()
    cells = (x.grad * x).abs().sum(dim=-1)
    peak = cells.flatten(1).max(dim=1).values.clamp_min(1e-12)
    return (cells / peak[:, None, None]).detach().double().numpy()


# Requests ---------------------------------------------------------------------------


def _patient(stats: dict[str, Any], field: str, item: Any) -> tuple[tuple[np.ndarray, ...], dict[str, float]]:
    """One request patient as ((minutes, variable indices, values), {static: value or NaN})."""
    if not isinstance(item, dict):
        raise InputError(f"{field}: must be an object with 'static' and 'observations'")
    extra = len(set(item) - {"static", "observations"})
    if extra:
        raise InputError(f"{field}: {extra} key(s) other than 'static' and 'observations'")
    statics = _statics(stats, f"{field}.static", item.get("static") or {})
    observations = item.get("observations", [])
    if not isinstance(observations, list):
        raise InputError(f"{field}.observations: must be an array")
    if len(observations) > MAX_OBSERVATIONS:
        raise InputError(f"{field}.observations: more than {MAX_OBSERVATIONS} observations")
    index = {v["name"]: i for i, v in enumerate(stats["variables"])}
    minutes = np.empty(len(observations))
    variables = np.empty(len(observations), dtype=np.int16)
    values = np.empty(len(observations))
    for row, observation in enumerate(observations):
        where = f"{field}.observations[{row}]"
        if not isinstance(observation, dict) or set(observation) != {"time", "variable", "value"}:
            raise InputError(f"{where}: must be an object with exactly 'time', 'variable' and 'value'")
        name = observation["variable"]
        if not isinstance(name, str) or name not in index:
            # The caller's text is not named back; the model's variables are.
            raise InputError(f"{where}.variable: not a variable the model takes "
                             f"({', '.join(v['name'] for v in stats['variables'])})")
        minutes[row] = _minutes(f"{where}.time", observation["time"], stats["window_minutes"])
        spec = stats["variables"][index[name]]
        values[row] = _number(f"{where}.value", observation["value"], _accepted(spec))
        variables[row] = index[name]
    order = np.argsort(minutes, kind="stable")
    return (minutes[order].astype(np.float32), variables[order], values[order].astype(np.float32)), statics


def _statics(stats: dict[str, Any], field: str, given: Any) -> dict[str, float]:
    if not isinstance(given, dict):
        raise InputError(f"{field}: must be an object keyed by static descriptor")
    names = [s["name"] for s in stats["statics"]]
    extra = len(set(given) - set(names))
    if extra:
        raise InputError(f"{field}: {extra} descriptor(s) the model does not take; it takes: {', '.join(names)}")
    out = {}
    for spec in stats["statics"]:
        value = given.get(spec["name"])
        where = f"{field}.{spec['name']}"
        if value is None:
            out[spec["name"]] = math.nan  # unknown, as a missing static in training
        elif spec["categories"]:
            ok = not isinstance(value, bool) and isinstance(value, (int, float)) and value in spec["categories"]
            if not ok:
                raise InputError(f"{where}: must be one of {', '.join(map(_category_text, spec['categories']))} "
                                 "or null")
            out[spec["name"]] = float(value)
        else:
            out[spec["name"]] = _number(where, value, _accepted(spec))
    return out


def _minutes(field: str, value: Any, window: float) -> float:
    """'HH:MM' or a number of minutes since admission, inside [0, window]."""
    if isinstance(value, str):
        match = CLOCK.fullmatch(value)
        if not match:
            raise InputError(f"{field}: must be 'HH:MM' or a number of minutes")
        minutes = float(int(match.group(1)) * 60 + int(match.group(2)))
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        minutes = float(value) if abs(value) < 1e300 else math.inf
    else:
        raise InputError(f"{field}: must be 'HH:MM' or a number of minutes")
    if not 0 <= minutes <= window:
        raise InputError(f"{field}: must lie within the model's window, 0 to {window:g} minutes after admission")
    return minutes


def _number(field: str, value: Any, accepted: tuple[float, float]) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{field}: must be a number")
    try:
        number = float(value)
    except OverflowError:
        raise InputError(f"{field}: is too large") from None
    check_numbers(field, np.asarray([number]), *accepted)
    return number


def _accepted(entry: dict[str, Any]) -> tuple[float, float]:
    """A variable's or numeric static's accepted values: the physiological range the
    import refused or dropped values outside of, else the widened training range."""
    if entry.get("range"):
        low, high = entry["range"]
        return float(low), float(high)
    return fitted_range(entry)


# Helpers ---------------------------------------------------------------------------


def _moments(values: np.ndarray) -> dict[str, Any]:
    """mean, std (at least 1e-6) and the training min and max of one variable's values
    (0 and 1 for a variable never observed in train: it stays at the mean)."""
    finite = values[np.isfinite(values)]
    if not finite.size:
        return {"mean": 0.0, "std": 1.0, "min": None, "max": None}
    low, high = _extremes(finite)
    return {"mean": float(finite.mean()), "std": float(max(finite.std(), 1e-6)), "min": low, "max": high}


def _extremes(values: np.ndarray) -> tuple[float | None, float | None]:
    (low,), (high,) = finite_extremes(values[:, None]) if values.size else ([None], [None])
    return low, high


SKEW_TO_LOG = 2.0
"""A non-negative variable whose train values are skewed beyond this (lab values such as
ALT, troponin, urine output: a long right tail over orders of magnitude) is standardised
after log1p, when that makes it less skewed: a few extreme patients no longer squash
everyone else's values to one point near the mean."""


def _skewed(values: np.ndarray) -> bool:
    from scipy.stats import skew

    finite = values[np.isfinite(values)]
    if finite.size < 3 or finite.min() < 0 or finite.min() == finite.max():
        return False
    raw = float(skew(finite))
    return raw > SKEW_TO_LOG and abs(float(skew(np.log1p(finite)))) < abs(raw)


def _static_columns(schema: dict[str, Any]) -> list[str]:
    return [s["column"] for s in schema["statics"]]


def _category_text(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _object_array(rows: list[np.ndarray]) -> np.ndarray:
    out = np.empty(len(rows), dtype=object)
    out[:] = rows
    return out


def _concatenated(rows: Any, dtype: Any) -> np.ndarray:
    arrays = [np.asarray(r, dtype=dtype) for r in rows]
    return np.concatenate(arrays) if arrays else np.empty(0, dtype=dtype)


# Out-of-distribution sets ------------------------------------------------------------


def timeseries_ood_sets(stats: dict[str, Any], test: pd.DataFrame,
                        rng: np.random.Generator) -> dict[str, OODSet]:
    """Patients unlike the training set's, in the stored form (`features_from_table`'s).

    near: the test patients with time reversed (a stay's end read as its start); each
    test patient's values moved to other variables (every variable's values redrawn
    inside its own accepted range at the same times: plausible numbers, implausible
    patients). far: random observations (variables, times and values uniform over their
    ranges, statics unknown); stays with no observation at all.
    """
    window = stats["window_minutes"]
    count = len(test["obs_minutes"])
    variables = stats["variables"]
    ranges = np.asarray([_finite_range(v) for v in variables])
    statics = {s["column"]: test[s["column"]] for s in stats["statics"]}

    def patients(rows: list[tuple[np.ndarray, np.ndarray, np.ndarray]], static: dict[str, np.ndarray]) -> pd.DataFrame:
        batch = {name: _object_array([r[k] for r in rows]) for k, name in enumerate(OBSERVATION_COLUMNS)}
        return pd.DataFrame({**batch, **{column: np.asarray(values) for column, values in static.items()}})

    reversed_rows, redrawn_rows, random_rows = [], [], []
    for minutes, variable, value in zip(*(test[c] for c in OBSERVATION_COLUMNS)):
        order = np.argsort(window - minutes, kind="stable")
        reversed_rows.append(((window - minutes)[order].astype(np.float32), variable[order], value[order]))
        other = rng.integers(0, len(variables), len(variable)).astype(np.int16)
        low, high = ranges[other, 0], ranges[other, 1]
        redrawn_rows.append((minutes, other, rng.uniform(low, high).astype(np.float32)))
        size = len(minutes)
        chosen = rng.integers(0, len(variables), size).astype(np.int16)
        times = np.sort(rng.uniform(0, window, size)).astype(np.float32)
        random_rows.append((times, chosen, rng.uniform(ranges[chosen, 0], ranges[chosen, 1]).astype(np.float32)))
    unknown = {column: np.full(count, np.nan) for column in statics}
    empty = [(np.empty(0, np.float32), np.empty(0, np.int16), np.empty(0, np.float32))] * count
    return {
        "time_reversed": OODSet(patients(reversed_rows, statics), "near"),
        "values_on_other_variables": OODSet(patients(redrawn_rows, statics), "near"),
        "random_observations": OODSet(patients(random_rows, unknown), "far"),
        "no_observations": OODSet(patients(empty, unknown), "far"),
    }


def _finite_range(entry: dict[str, Any]) -> tuple[float, float]:
    """Where a variable's values plausibly lie, for drawing them: its training range,
    else its accepted range, else around its mean."""
    if entry.get("min") is not None and entry.get("max") is not None:
        return float(entry["min"]), float(entry["max"])
    if entry.get("range"):
        return tuple(map(float, entry["range"]))
    return entry["mean"] - 3 * entry["std"], entry["mean"] + 3 * entry["std"]


# Same-run baselines ------------------------------------------------------------------

AGGREGATES = ("first", "last", "min", "max", "mean", "count")
"""Per variable over the window: the classical features of PhysioNet 2012 baselines."""


def aggregate_features(schema: dict[str, Any], features: Batch) -> tuple[np.ndarray, list[str]]:
    """(N, F) float64 per-variable aggregates over the window (NaN where a variable was
    never observed; count 0), then each static (a categorical one as indicators, NaN
    when unknown), with their names."""
    count = len(features["obs_minutes"])
    lengths = [len(x) for x in features["obs_minutes"]]
    frame = pd.DataFrame({
        "patient": np.repeat(np.arange(count), lengths),
        "minutes": _concatenated(features["obs_minutes"], np.float64),
        "variable": _concatenated(features["obs_variable"], np.int64),
        "value": _concatenated(features["obs_value"], np.float64),
    })
    frame = frame[(frame["minutes"] >= 0) & (frame["minutes"] <= schema["window_minutes"])]
    frame = frame.sort_values(["patient", "variable", "minutes"], kind="stable")
    table = frame.groupby(["patient", "variable"])["value"].agg(list(AGGREGATES)).unstack("variable")
    variables = len(schema["variables"])
    columns, names = [], []
    for aggregate in AGGREGATES:
        block = np.full((count, variables), 0.0 if aggregate == "count" else np.nan)
        if len(table):
            present = table[aggregate]
            block[np.ix_(present.index.to_numpy(), present.columns.to_numpy())] = present.to_numpy(dtype=np.float64)
            if aggregate == "count":
                block = np.nan_to_num(block, nan=0.0)
        columns.append(block)
        names += [f"{v['name']}.{aggregate}" for v in schema["variables"]]
    for spec in schema["statics"]:
        raw = np.asarray(features[spec["column"]], dtype=np.float64)
        if spec.get("categories"):
            for category in spec["categories"]:
                columns.append(np.where(np.isnan(raw), np.nan, raw == category)[:, None])
                names.append(f"{spec['name']}={_category_text(category)}")
        else:
            columns.append(raw[:, None])
            names.append(spec["name"])
    return np.concatenate(columns, axis=1), names


def timeseries_baselines(schema: dict[str, Any], train: tuple[Any, np.ndarray], test: tuple[Any, np.ndarray],
                         labels: LabelMap, seed: int) -> dict[str, Baseline]:
    """Classical references for a binary task, scored on the test patients: the source's
    own severity scores (`schema["reference_scores"]`, e.g. SAPS-I and SOFA; higher
    predicts the dataset's class 1), and scikit-learn logistic regression (L2, its
    strength chosen by 5-fold cross-validation on train) and HistGradientBoosting
    (early-stopped on a part of train) on `aggregate_features`, fitted on the train split
    alone (the model's validation split stays untouched, as it chose the model's epoch)."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if len(labels.classes) != 2:
        return {}
    (train_features, train_labels), (test_features, _) = train, test
    out: dict[str, Baseline] = {}
    # Dataset class 1 is training class labels.index[1]: a score for it, or against it.
    sign = 1.0 if labels.index[1] == 1 else -1.0
    for spec in schema.get("reference_scores", []):
        out[spec["name"]] = Baseline(sign * np.asarray(test_features[spec["column"]], dtype=np.float64),
                                     f"{spec['name']} from the source (higher predicts "
                                     f"{labels.source_classes[1]}); patients without it left out")
    x_train, _ = aggregate_features(schema, train_features)
    x_test, _ = aggregate_features(schema, test_features)
    seen = ~np.isnan(x_train).all(axis=0)  # a variable never observed in train tells nothing
    x_train, x_test = x_train[:, seen], x_test[:, seen]
    y_train = labels.apply(train_labels)
    logistic = make_pipeline(SimpleImputer(strategy="median", add_indicator=True), StandardScaler(),
                             LogisticRegressionCV(Cs=np.logspace(-3, 1, 5), cv=5, scoring="roc_auc",
                                                  l1_ratios=(0.0,), use_legacy_attributes=False, max_iter=1000))
    logistic.fit(x_train, y_train)
    out["logistic_regression"] = Baseline(
        logistic.predict_proba(x_test)[:, 1],
        f"L2 logistic regression on {len(AGGREGATES)} aggregates per variable and the statics")
    boosting = HistGradientBoostingClassifier(learning_rate=0.05, max_iter=500, early_stopping=True,
                                              validation_fraction=0.15, n_iter_no_change=30, random_state=seed)
    boosting.fit(x_train, y_train)
    out["hist_gradient_boosting"] = Baseline(
        boosting.predict_proba(x_test)[:, 1], "HistGradientBoosting on the same aggregates")
    return out
