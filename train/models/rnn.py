"""Recurrent networks for signals (ECG and other time series).

Input: float tensor (B, L, C), length then channels. Output: logits (B, num_classes).
Both presets accept any length L; `seq_len` records the length the model was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from train.models import apply_preset, check_fractions, check_num_classes, check_positive_ints

MODALITY = "signal"
SHAPE_FIELDS = ("seq_len", "in_channels")

PRESETS: dict[str, dict[str, object]] = {
    # The seed's Keras reference: LSTM 128 → Dense 64 → classifier, reading the hidden
    # state after the last time step.
    "seed": {"hidden_size": 128, "num_layers": 1, "dense_units": 64, "dropout": 0.0},
    # Bidirectional GRU whose outputs are mean- and max-pooled over time, so the whole
    # series (not just its end) reaches the classifier.
    "bigru": {
        "hidden_size": 64,
        "num_layers": 2,
        "input_proj_size": 0,
        "dense_units": 64,
        "dropout": 0.2,
    },
}


@dataclass
class RNNConfig:
    preset: str
    """Architecture: a key of PRESETS ("seed" or "bigru")."""
    seq_len: int
    """Series length the model was built for (the model accepts others; serving checks it)."""
    in_channels: int
    """Values per time step (leads of an ECG)."""
    num_classes: int
    """Number of logits."""
    hidden_size: int | None = None
    """Recurrent state size (per direction for bigru)."""
    num_layers: int | None = None
    """Stacked recurrent layers."""
    input_proj_size: int | None = None
    """bigru: width of a Linear+ReLU applied to each time step before the GRU; 0 feeds
    the raw channels."""
    dense_units: int | None = None
    """Width of the dense layer between the recurrent encoder and the classifier."""
    dropout: float | None = None
    """Dropout between stacked recurrent layers and before the dense layer and classifier."""

    def __post_init__(self) -> None:
        apply_preset(self, PRESETS)
        check_positive_ints(
            self, "seq_len", "in_channels", "hidden_size", "num_layers", "dense_units"
        )
        if self.input_proj_size == 0:  # allowed: it switches the projection off
            self.input_proj_size = 0  # a plain int, whatever zero came in
        else:
            check_positive_ints(self, "input_proj_size")
        check_num_classes(self)
        check_fractions(self, "dropout")


class RNN(nn.Module):
    """`encoder` (one feature vector per series, chosen by the preset) then `head`."""

    def __init__(self, config: RNNConfig) -> None:
        super().__init__()
        self.config = config
        encoder = _LastStepLSTM if config.preset == "seed" else _PooledBiGRU
        self.encoder = encoder(config)
        self.head = nn.Sequential(
            nn.Linear(self.encoder.out_features, config.dense_units),
            nn.ReLU(),
            nn.Dropout(config.dropout),
            nn.Linear(config.dense_units, config.num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


def _between_layers(config: RNNConfig) -> float:
    # torch warns when recurrent dropout is set on a single layer, where it does nothing.
    return config.dropout if config.num_layers > 1 else 0.0


class _LastStepLSTM(nn.Module):
    def __init__(self, config: RNNConfig) -> None:
        super().__init__()
        self.lstm = nn.LSTM(
            config.in_channels,
            config.hidden_size,
            num_layers=config.num_layers,
            dropout=_between_layers(config),
            batch_first=True,
        )
        self.out_features = config.hidden_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, (h_n, _) = self.lstm(x)
        return h_n[-1]  # top layer, after the last time step


class _PooledBiGRU(nn.Module):
    def __init__(self, config: RNNConfig) -> None:
        super().__init__()
        self.project: nn.Module = nn.Identity()
        gru_input = config.in_channels
        if config.input_proj_size:
            self.project = nn.Sequential(
                nn.Linear(config.in_channels, config.input_proj_size), nn.ReLU()
            )
            gru_input = config.input_proj_size
        self.gru = nn.GRU(
            gru_input,
            config.hidden_size,
            num_layers=config.num_layers,
            dropout=_between_layers(config),
            batch_first=True,
            bidirectional=True,
        )
        self.dropout = nn.Dropout(config.dropout)
        self.out_features = 4 * config.hidden_size  # (mean, max) x (forward, backward)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs, _ = self.gru(self.project(x))  # (B, L, 2H)
        pooled = torch.cat([outputs.mean(dim=1), outputs.amax(dim=1)], dim=-1)
        return self.dropout(pooled)
