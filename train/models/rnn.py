"""Recurrent networks for signals (ECG and other time series).

Input: float tensor (B, L, C), length then channels. Output: logits (B, num_classes).
Both presets accept any length L; `seq_len` records the length the model was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from medray.train.models import (
    ModelConfigError,
    apply_preset,
    check_fractions,
    check_num_classes,
    check_positive_ints,
    penultimate,
)

MODALITY = "signal"
SHAPE_FIELDS = ("seq_len", "in_channels")

PRESETS: dict[str, dict[str, object]] = {
    # The seed's Keras reference: LSTM 128 → Dense 64 → classifier, reading the hidden
    # state after the last time step.
    "seed": {"hidden_size": 128, "num_layers": 1, "dense_units": 64, "dropout": 0.0},
    # Bidirectional GRU whose outputs are mean- and max-pooled over time, so the whole
    # series (not just its end) reaches the classifier.
    # conv_channels > 0 adds a convolutional front-end (off by default, so checkpoints
    # stored before it existed rebuild unchanged).
    "bigru": {
        "hidden_size": 64,
        "num_layers": 2,
        "input_proj_size": 0,
        "conv_channels": 0,
        "conv_kernel": 7,
        "conv_layers": 1,
        "conv_pool": 1,
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
    conv_channels: int | None = None
    """bigru: width of a Conv1d+BatchNorm+ReLU over time, applied before the GRU (and
    before input_proj_size); 0 switches it off."""
    conv_kernel: int | None = None
    """bigru: the convolution's length in time steps (odd, so the series keeps its length)."""
    conv_layers: int | None = None
    """bigru: how many such convolutions are stacked (each conv_channels wide)."""
    conv_pool: int | None = None
    """bigru: max-pool the convolution's output over this many steps, so the GRU runs
    over a series that many times shorter; 1 keeps every step."""
    dense_units: int | None = None
    """Width of the dense layer between the recurrent encoder and the classifier."""
    dropout: float | None = None
    """Dropout between stacked recurrent layers and before the dense layer and classifier."""

    def __post_init__(self) -> None:
        apply_preset(self, PRESETS)
        check_positive_ints(
            self, "seq_len", "in_channels", "hidden_size", "num_layers", "dense_units"
        )
        for name in ("input_proj_size", "conv_channels"):
            if getattr(self, name) == 0:  # allowed: it switches the layer off
                setattr(self, name, 0)  # a plain int, whatever zero came in
            else:
                check_positive_ints(self, name)
        check_positive_ints(self, "conv_kernel", "conv_layers", "conv_pool")
        if self.conv_kernel is not None and self.conv_kernel % 2 == 0:
            raise ModelConfigError(f"RNNConfig.conv_kernel must be odd, got {self.conv_kernel}")
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

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(penultimate features (B, dense_units): the classifier's input, logits)."""
        return penultimate(self.head, self.encoder(x))


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
        self.conv: nn.Module = nn.Identity()
        gru_input = config.in_channels
        if config.conv_channels:
            # Local shape (slopes, peak widths), so the GRU reads features rather than
            # single amplitudes: on ECG200 one layer ends a long flat start of training
            # and a second one helps further (measured in train/configs/ecg200_rnn.yaml).
            # Pooling shortens what the GRU, the slow part on CPU, runs over.
            layers: list[nn.Module] = []
            for index in range(config.conv_layers):
                layers += [
                    nn.Conv1d(gru_input if index == 0 else config.conv_channels, config.conv_channels,
                              config.conv_kernel, padding=config.conv_kernel // 2),
                    nn.BatchNorm1d(config.conv_channels),
                    nn.ReLU(),
                ]
            if config.conv_pool > 1:
                layers.append(nn.MaxPool1d(config.conv_pool))
            self.conv = nn.Sequential(*layers)
            gru_input = config.conv_channels
        self.project: nn.Module = nn.Identity()
        if config.input_proj_size:
            self.project = nn.Sequential(
                nn.Linear(gru_input, config.input_proj_size), nn.ReLU()
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
        x = self.conv(x.transpose(1, 2)).transpose(1, 2)  # Conv1d wants (B, C, L)
        outputs, _ = self.gru(self.project(x))  # (B, L, 2H)
        pooled = torch.cat([outputs.mean(dim=1), outputs.amax(dim=1)], dim=-1)
        return self.dropout(pooled)
