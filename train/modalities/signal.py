"""Signals (time series, e.g. ECG leads): stored as (N, L) or (N, L, C); the model takes
(L, C), length then channels.

Preprocessing standardises each channel with the train split's mean and std and fills
gaps (NaN) with 0, the channel's mean. Serving takes per-channel values within the range
the training min and max allow (`fitted_range`). Training augments with amplitude
scaling, time shifts and noise. Explanations are per-time-step saliency.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from medray.cluster.errors import InputError
from medray.train.modalities import TensorModality, check_numbers, finite_extremes, fitted_range, numeric_array

if TYPE_CHECKING:
    from medray.train.data.preprocess import Batch, Preprocessor


class SignalModality(TensorModality):
    name = "signal"
    shape_axes = ("length", "channels")

    def fit(self, schema: dict[str, Any], train_features: Any) -> tuple[str | None, list[int], dict[str, Any]]:
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

    def input_schema(self, preprocessor: Preprocessor) -> dict[str, Any]:
        length, channels = preprocessor.input_shape
        return {"type": "signal", "length": length, "channels": channels,
                "value_ranges": [list(_channel_range(preprocessor, c)) for c in range(channels)],
                "accepts": ["array of length L (one channel) or (L, C)"]}

    def decode(self, preprocessor: Preprocessor, instances: list[Any]) -> np.ndarray:
        return np.stack([_instance(preprocessor, index, item) for index, item in enumerate(instances)])

    def explain(self, model: nn.Module, inputs: torch.Tensor, preprocessor: Preprocessor) -> list[dict[str, Any]]:
        return [{"type": "saliency", "per_time_step": s.round(4).tolist()} for s in saliency(model, inputs)]


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
