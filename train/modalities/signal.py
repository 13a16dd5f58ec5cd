"""Signals (time series, e.g. ECG leads): stored as (N, L) or (N, L, C); the model takes
(L, C), length then channels.

Preprocessing standardises each channel with the train split's mean and std and fills
gaps (NaN) with 0, the channel's mean. Serving takes per-channel values within the range
the training min and max allow (`fitted_range`). Training augments with amplitude
scaling, time shifts and noise. Explanations are per-time-step saliency.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from medray.cluster.errors import InputError
from medray.train.modalities import (
    Baseline,
    OODSet,
    TensorModality,
    check_numbers,
    finite_extremes,
    flat_baselines,
    fitted_range,
    numeric_array,
    numeric_rows,
    one_tensor,
)

if TYPE_CHECKING:
    from medray.cluster.config import DataConfig
    from medray.train.data.preprocess import Batch, LabelMap, Preprocessor


class SignalModality(TensorModality):
    name = "signal"
    shape_axes = ("length", "channels")

    def fit(self, schema: dict[str, Any], train_features: Any, data: DataConfig,
            train_labels: np.ndarray | None = None) -> tuple[str | None, list[int], dict[str, Any]]:
        signals = _time_major(np.asarray(train_features, dtype=np.float64))
        mean = np.nanmean(signals, axis=(0, 1)).tolist()
        std = np.maximum(np.nanstd(signals, axis=(0, 1)), 1e-6).tolist()
        low, high = finite_extremes(signals.reshape(-1, signals.shape[-1]))
        return schema["column"], list(signals.shape[1:]), {"mean": mean, "std": std, "min": low, "max": high}

    def transform(self, preprocessor: Preprocessor, batch: Batch | np.ndarray) -> np.ndarray:
        stats = preprocessor.stats
        signals = _time_major(np.asarray(batch, dtype=np.float32))
        normalised = (signals - np.asarray(stats["mean"], np.float32)) / np.asarray(stats["std"], np.float32)
        return np.nan_to_num(normalised, nan=0.0).astype(np.float32)

    def accepted_range(self, preprocessor: Preprocessor, key: int | str) -> tuple[float, float]:
        return _channel_range(preprocessor, key)

    def augment(self, inputs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return augment_signals(inputs, generator)

    def ood_sets(self, preprocessor: Preprocessor, test_features: Any,
                 rng: np.random.Generator) -> dict[str, OODSet]:
        return signal_ood_sets(preprocessor, np.asarray(test_features), rng)

    def baselines(self, schema: dict[str, Any], train: tuple[Any, np.ndarray], test: tuple[Any, np.ndarray],
                  labels: LabelMap, seed: int) -> dict[str, Baseline]:
        found = flat_baselines(train, test, labels, "the samples")
        if len(labels.classes) == 2:
            found["1nn_euclidean"] = nearest_neighbour_baseline(
                np.asarray(train[0], dtype=np.float64), labels.apply(train[1]), np.asarray(test[0], dtype=np.float64))
        return found

    def input_schema(self, preprocessor: Preprocessor) -> dict[str, Any]:
        length, channels = preprocessor.input_shape
        return {"type": "signal", "length": length, "channels": channels,
                "value_ranges": [list(_channel_range(preprocessor, c)) for c in range(channels)],
                "accepts": ["array of length L (one channel) or (L, C)"]}

    def decode(self, preprocessor: Preprocessor, instances: list[Any]) -> np.ndarray:
        return np.stack([_instance(preprocessor, index, item) for index, item in enumerate(instances)])

    def explain(self, model: nn.Module, inputs: torch.Tensor, preprocessor: Preprocessor) -> list[dict[str, Any]]:
        return [{"type": "saliency", "per_time_step": s.round(4).tolist()} for s in saliency(model, inputs)]

    def inference_inputs(self, preprocessor: Preprocessor) -> list[dict[str, Any]]:
        return [{"name": "signal", "datatype": "FP32", "shape": [-1, *_series_shape(preprocessor)]}]

    def instances_from_tensors(self, preprocessor: Preprocessor, tensors: dict[str, np.ndarray]) -> list[Any]:
        return numeric_rows("signal", one_tensor(tensors, "signal"))

    def graph_input(self, preprocessor: Preprocessor) -> tuple[nn.Module, dict[str, Any]]:
        return SeriesInput(preprocessor), {"shape": [-1, *_series_shape(preprocessor)], "dtype": "float32",
                                           "takes": "raw signal values"}

    def graph_rows(self, preprocessor: Preprocessor, instances: list[Any]) -> np.ndarray:
        values = self.decode(preprocessor, instances).astype(np.float32)  # checked, (N, L, C)
        return values[:, :, 0] if values.shape[2] == 1 else values


def _series_shape(preprocessor: Preprocessor) -> list[int]:
    """A signal as clients hold it: (L,) for one channel, else (L, C)."""
    length, channels = preprocessor.input_shape
    return [length] + ([channels] if channels > 1 else [])


class SeriesInput(nn.Module):
    """An exported graph's preprocessing: raw values, (N, L) or (N, L, C), standardised
    per channel with the train split's statistics, as `transform` does."""

    def __init__(self, preprocessor: Preprocessor):
        super().__init__()
        self.channels = preprocessor.input_shape[1]
        self.register_buffer("mean", torch.tensor(preprocessor.stats["mean"], dtype=torch.float32))
        self.register_buffer("std", torch.tensor(preprocessor.stats["std"], dtype=torch.float32))

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        signals = values.unsqueeze(-1) if self.channels == 1 else values
        normalised = (signals - self.mean) / self.std
        return torch.where(torch.isnan(normalised), torch.zeros_like(normalised), normalised)


def augment_signals(
    signals: torch.Tensor,
    generator: torch.Generator,
    max_scale: float = 0.1,
    max_shift: int = 3,
    noise_std: float = 0.05,
) -> torch.Tensor:
    """Random amplitude scaling by up to ±`max_scale`, time shifts of up to `max_shift`
    steps (edges repeated) and gaussian noise of `noise_std` (inputs are standardised,
    so that is a fraction of the signal's spread), per series of (B, L, C)."""
    batch, length, channels = signals.shape
    # One gain per series (all leads together): amplitude varies with electrode contact.
    gain = 1 + max_scale * (2 * torch.rand(batch, 1, 1, generator=generator) - 1)
    signals = signals * gain.to(signals.dtype)
    if max_shift:
        padded = nn.functional.pad(signals.transpose(1, 2), (max_shift, max_shift), mode="replicate")
        starts = torch.randint(0, 2 * max_shift + 1, (batch,), generator=generator)
        steps = starts[:, None] + torch.arange(length)  # (B, L) indices into the padded series
        signals = torch.gather(padded, 2, steps[:, None, :].expand(batch, channels, length)).transpose(1, 2)
    noise = torch.randn(signals.shape, generator=generator).to(signals.dtype)
    return signals + noise_std * noise


def saliency(model: nn.Module, inputs: torch.Tensor) -> np.ndarray:
    """|d logit(predicted class) / d input| summed over channels, scaled to [0, 1]: (N, L)."""
    x = inputs.clone().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        logits.gather(1, logits.argmax(dim=1, keepdim=True)).sum().backward()
    grads = x.grad.abs().sum(dim=-1)
    return (grads / grads.max(dim=1, keepdim=True).values.clamp_min(1e-12)).detach().numpy()


def _channel_range(preprocessor: Preprocessor, channel: int) -> tuple[float, float]:
    """The raw values serving takes for `channel` (a checkpoint saved before min/max
    were fitted has only mean and std)."""
    stats = preprocessor.stats
    return fitted_range({name: stats[name][channel] if name in stats else None
                         for name in ("mean", "std", "min", "max")})


def _instance(preprocessor: Preprocessor, index: int, item: Any) -> np.ndarray:
    """One request instance as (L, C) values, each channel within its accepted range."""
    field = f"instances[{index}]"
    length, channels = preprocessor.input_shape
    array = numeric_array(field, item, max_ndim=2)
    given = tuple(array.shape)
    if array.ndim == 1 and channels == 1:
        array = array[:, None]
    if array.shape != (length, channels):
        wanted = f"({length},)" if channels == 1 else f"({length}, {channels})"
        raise InputError(f"{field}: signal must have shape {wanted}, got {given}")
    for channel in range(channels):
        low, high = _channel_range(preprocessor, channel)
        what = "values " if channels == 1 else f"channel {channel} values "
        check_numbers(field, array[:, channel], low, high, what)
    return array


def _time_major(signals: np.ndarray) -> np.ndarray:
    """(N, L) -> (N, L, 1); (N, L, C) stays."""
    return signals[:, :, None] if signals.ndim == 2 else signals


# Out-of-distribution sets ------------------------------------------------------------

OTHER_ECG_WINDOW_S = 0.8
"""Seconds of pydicom's 12-lead ECG cut into each series: about one heartbeat, as a UCR
ECG series (ECG200: one beat in 96 samples) holds."""


def signal_ood_sets(preprocessor: Preprocessor, test_signals: np.ndarray,
                    rng: np.random.Generator) -> dict[str, OODSet]:
    """Series unlike the training set's, in its stored form ((N, L) or (N, L, C), its dtype).

    near: the test series time-reversed; their leads in reverse order (models of two or
    more leads only); another ECG recording resampled to the model's length: pydicom's
    bundled 12-lead `waveform_ecg.dcm` (1 kHz) cut into 0.8 s windows, each lead a
    series, z-normalised as UCR series are, then given each channel's training mean and
    std (no second UCR dataset is installed). far: flat lines at a level within each
    channel's training range (a lead off), gaussian noise of each channel's training
    mean and std (an unconnected amplifier).
    """
    series = _time_major(test_signals.astype(np.float64))
    count, length, channels = series.shape
    stats = preprocessor.stats
    mean, std = np.asarray(stats["mean"], np.float64), np.asarray(stats["std"], np.float64)
    low, high = (np.asarray([v if v is not None else m + sign * 4 * s
                             for v, m, s in zip(stats.get(key, [None] * channels), mean, std)])
                 for key, sign in (("min", -1), ("max", 1)))
    stored = lambda x: (x[:, :, 0] if test_signals.ndim == 2 else x).astype(test_signals.dtype)  # noqa: E731
    sets = {"time_reversed": OODSet(stored(series[:, ::-1].copy()), "near")}
    if channels > 1:
        sets["leads_swapped"] = OODSet(stored(series[:, :, ::-1].copy()), "near")
    other = _other_ecg_series(length, channels)
    if len(other):
        sets["other_ecg_resampled"] = OODSet(stored(np.clip(other * std + mean, low, high)), "near")
    levels = rng.uniform(low, high, size=(count, 1, channels))
    sets["flat"] = OODSet(stored(np.broadcast_to(levels, (count, length, channels)).copy()), "far")
    noise = rng.normal(mean, std, size=(count, length, channels))
    sets["noise"] = OODSet(stored(np.clip(noise, low, high)), "far")
    return sets


@functools.lru_cache(maxsize=4)
def _other_ecg_cached(length: int, channels: int) -> np.ndarray:
    import warnings

    import pydicom
    from pydicom.data import get_testdata_files
    from scipy.signal import resample

    paths = get_testdata_files("waveform_ecg.dcm")  # installed with pydicom; nothing downloaded
    if not paths:
        return np.empty((0, length, channels))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        recording = pydicom.dcmread(paths[0])
        groups = [(np.asarray(recording.waveform_array(i), np.float64),
                   float(recording.WaveformSequence[i].SamplingFrequency))
                  for i in range(len(recording.WaveformSequence))]
    windows = []
    for samples, frequency in groups:  # samples: (time, leads)
        step = int(round(OTHER_ECG_WINDOW_S * frequency))
        for start in range(0, len(samples) - step + 1, step):
            window = resample(samples[start:start + step], length, axis=0)  # FFT: no aliasing
            leads = window.shape[1]
            # One lead per series for a one-channel model, else `channels` leads in turn.
            for first in range(0, leads - channels + 1, channels):
                windows.append(window[:, first:first + channels])
    if not windows:  # a model of more leads than the recording has
        return np.empty((0, length, channels))
    other = np.stack(windows)
    centred = other - other.mean(axis=1, keepdims=True)
    return centred / np.maximum(centred.std(axis=1, keepdims=True), 1e-12)


def _other_ecg_series(length: int, channels: int) -> np.ndarray:
    """pydicom's 12-lead ECG as z-normalised (N, length, channels) series (empty if absent)."""
    return _other_ecg_cached(length, channels).copy()


# Evaluation --------------------------------------------------------------------------------


def nearest_neighbour_baseline(train_signals: np.ndarray, train_labels: np.ndarray,
                               test_signals: np.ndarray) -> Baseline:
    """1-NN with Euclidean distance on the raw samples, the UCR archive's reference
    classifier (two classes). Score: the distance to the nearest class-0 series minus the
    distance to the nearest class-1 one, so it predicts class 1 from 0 on, as 1-NN does,
    and ranks the test series for AUROC."""
    train_flat = train_signals.reshape(len(train_signals), -1)
    test_flat = test_signals.reshape(len(test_signals), -1)
    distances = np.sqrt(((test_flat[:, None, :] - train_flat[None, :, :]) ** 2).sum(axis=2))
    nearest = [distances[:, train_labels == k].min(axis=1) for k in (0, 1)]
    return Baseline(nearest[0] - nearest[1], "1-NN, Euclidean distance on the raw samples (UCR's reference)",
                    threshold=0.0)
