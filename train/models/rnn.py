"""Recurrent networks for signals (ECG) and clinical time series (ICU records).

Input: a signal as float tensor (B, L, C), length then channels; a clinical time
series as (B, T, V, 3), time steps, variables, then OBSERVATION_CHANNELS (value, mask,
delta); or clinical text as (B, L) token ids padded with PAD_TOKEN_ID at the end.
Output: logits (B, num_classes). "seed" and "bigru" take all three, reading a time
series' V*3 numbers per step as that step's channels and a text's tokens through a
learned embedding (`embedding_dim` wide), padding masked: the LSTM reads the state after
the last real token, the GRU pools over real tokens only. "grud" takes time series only.
Every preset accepts any length; `seq_len` records the length the model was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from medray.train.models import (
    OBSERVATION_CHANNELS,
    PAD_TOKEN_ID,
    ModelConfigError,
    apply_preset,
    check_fractions,
    check_input_sizes,
    check_num_classes,
    check_positive_ints,
    input_shape_fields,
    penultimate,
    token_embedding,
)

PRESETS: dict[str, dict[str, object]] = {
    # The seed's Keras reference: LSTM 128 → Dense 64 → classifier, reading the hidden
    # state after the last time step.
    # Text: Embedding (embedding_dim, text only) → LSTM 128 → Dense 64, as the seed's
    # Keras code for token sequences.
    "seed": {"hidden_size": 128, "num_layers": 1, "dense_units": 64, "dropout": 0.0, "embedding_dim": 128},
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
        "embedding_dim": 128,
    },
    # GRU-D (Che et al. 2018): a GRU whose inputs decay from the last observation towards
    # the mean, and whose state decays, with the time since each variable was observed;
    # the mask is a further input. 64 hidden units keep it small (about 20,000 weights
    # for 40 variables) for PhysioNet 2012's 4,000 training stays; dropout 0.3 on the
    # final state and before the classifier, since a few thousand patients overfit fast.
    "grud": {"hidden_size": 64, "dense_units": 64, "dropout": 0.3},
}
PRESET_MODALITIES = {
    "seed": ("signal", "timeseries", "text"),
    "bigru": ("signal", "timeseries", "text"),
    "grud": ("timeseries",),
}
AXIS_FIELDS = {
    "length": "seq_len",
    "time": "seq_len",
    "variables": "num_variables",
    "channels": "in_channels",
    "tokens": "seq_len",
}
TEXT_ONLY = ("embedding_dim",)
"""Hyperparameters only a text input uses: None for the other modalities, whatever the
preset's default, so a stored config shows what shaped the model."""
SHAPE_FIELDS = input_shape_fields(PRESET_MODALITIES, AXIS_FIELDS)


@dataclass
class RNNConfig:
    preset: str
    """Architecture: a key of PRESETS ("seed", "bigru" or "grud")."""
    seq_len: int
    """Series length (tokens, for text) the model was built for (the model accepts others)."""
    num_classes: int
    """Number of logits."""
    in_channels: int | None = None
    """Values per time step (leads of an ECG), or per variable and step of a clinical time
    series (its 3 OBSERVATION_CHANNELS); None for text."""
    vocab_size: int | None = None
    """Text: token ids the embedding holds; None otherwise."""
    embedding_dim: int | None = None
    """Text: width of each token's learned embedding."""
    num_variables: int | None = None
    """Clinical time series: variables per step; None for a signal."""
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
    """Dropout between stacked recurrent layers (grud: on its last state) and before the
    dense layer and classifier."""

    def __post_init__(self) -> None:
        text = self.vocab_size is not None
        for name in TEXT_ONLY:
            if not text and getattr(self, name) is not None:
                raise ModelConfigError(f"RNNConfig.{name} is for text inputs (with a vocab_size) only")
        apply_preset(self, PRESETS)
        if not text:
            for name in TEXT_ONLY:
                setattr(self, name, None)
        check_input_sizes(self, PRESET_MODALITIES, SHAPE_FIELDS)
        check_positive_ints(self, "hidden_size", "num_layers", "dense_units", "embedding_dim", "vocab_size")
        if self.preset == "grud" and self.in_channels != len(OBSERVATION_CHANNELS):
            raise ModelConfigError(
                f"RNNConfig: preset 'grud' reads {len(OBSERVATION_CHANNELS)} channels per "
                f"variable ({', '.join(OBSERVATION_CHANNELS)}), got in_channels={self.in_channels}"
            )
        for name in ("input_proj_size", "conv_channels"):
            if getattr(self, name) == 0:  # allowed: it switches the layer off
                setattr(self, name, 0)  # a plain int, whatever zero came in
            else:
                check_positive_ints(self, name)
        check_positive_ints(self, "conv_kernel", "conv_layers", "conv_pool")
        if text and self.conv_channels:
            raise ModelConfigError("RNNConfig.conv_channels: the convolutional front-end is for signals; "
                                   "text inputs take conv_channels=0")
        if self.conv_kernel is not None and self.conv_kernel % 2 == 0:
            raise ModelConfigError(f"RNNConfig.conv_kernel must be odd, got {self.conv_kernel}")
        check_num_classes(self)
        check_fractions(self, "dropout")


class RNN(nn.Module):
    """`encoder` (one feature vector per series, chosen by the preset) then `head`."""

    def __init__(self, config: RNNConfig) -> None:
        super().__init__()
        self.config = config
        self.embedding = None if config.vocab_size is None else token_embedding(
            config.vocab_size, config.embedding_dim)
        encoders = {"seed": _LastStepLSTM, "bigru": _PooledBiGRU, "grud": GRUD}
        self.encoder = encoders[config.preset](config)
        self.head = nn.Sequential(
            nn.Linear(self.encoder.out_features, config.dense_units),
            nn.ReLU(),
            nn.Dropout(config.dropout),
            nn.Linear(config.dense_units, config.num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self._encode(x))

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(penultimate features (B, dense_units): the classifier's input, logits)."""
        return penultimate(self.head, self._encode(x))

    def embed_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Text: each token id's embedding, (B, L, embedding_dim)."""
        if self.embedding is None:
            raise ModelConfigError("embed_tokens: this model does not read text")
        return self.embedding(x.long())

    def logits_from_embeddings(self, embedded: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Text: the logits for token embeddings `embedded` of the ids `x` (which say where
        the padding is); forward(x) is logits_from_embeddings(embed_tokens(x), x)."""
        return self.head(self.encoder(embedded, x != PAD_TOKEN_ID))

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        if self.embedding is None:
            return self.encoder(x)
        return self.encoder(self.embed_tokens(x), x != PAD_TOKEN_ID)


def _step_width(config: RNNConfig) -> int:
    """Numbers per time step: a time series' (V, 3) per step is read flattened, a text's
    token as its embedding."""
    if config.vocab_size is not None:
        return config.embedding_dim
    return config.in_channels * (config.num_variables or 1)


def _packed(x: torch.Tensor, real: torch.Tensor) -> tuple[nn.utils.rnn.PackedSequence, torch.Tensor]:
    """(B, L, D) steps with `real` (B, L) True up to each row's length, packed so that a
    recurrence stops at each row's last real step; an all-padding row counts one step."""
    lengths = real.sum(dim=1).clamp_min(1)
    return nn.utils.rnn.pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False), lengths


def _between_layers(config: RNNConfig) -> float:
    # torch warns when recurrent dropout is set on a single layer, where it does nothing.
    return config.dropout if config.num_layers > 1 else 0.0


class _LastStepLSTM(nn.Module):
    def __init__(self, config: RNNConfig) -> None:
        super().__init__()
        self.lstm = nn.LSTM(
            _step_width(config),
            config.hidden_size,
            num_layers=config.num_layers,
            dropout=_between_layers(config),
            batch_first=True,
        )
        self.out_features = config.hidden_size

    def forward(self, x: torch.Tensor, real: torch.Tensor | None = None) -> torch.Tensor:
        if real is not None:  # text: the state after each document's last real token
            _, (h_n, _) = self.lstm(_packed(x, real)[0])
            return h_n[-1]
        _, (h_n, _) = self.lstm(x.flatten(2))  # (B, T, V, 3) -> (B, T, V*3); signals as they are
        return h_n[-1]  # top layer, after the last time step


class _PooledBiGRU(nn.Module):
    def __init__(self, config: RNNConfig) -> None:
        super().__init__()
        self.conv: nn.Module = nn.Identity()
        gru_input = _step_width(config)
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

    def forward(self, x: torch.Tensor, real: torch.Tensor | None = None) -> torch.Tensor:
        if real is not None:  # text: each direction runs over the real tokens only, pooled over them
            packed, lengths = _packed(self.project(x), real)
            outputs, _ = nn.utils.rnn.pad_packed_sequence(self.gru(packed)[0], batch_first=True,
                                                          total_length=x.shape[1])
            valid = (torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None].to(x.device))[..., None]
            mean = (outputs * valid).sum(dim=1) / lengths[:, None].to(outputs)
            peak = outputs.masked_fill(~valid, float("-inf")).amax(dim=1)
            return self.dropout(torch.cat([mean, peak], dim=-1))
        x = x.flatten(2)  # (B, T, V, 3) -> (B, T, V*3); signals as they are
        x = self.conv(x.transpose(1, 2)).transpose(1, 2)  # Conv1d wants (B, C, L)
        outputs, _ = self.gru(self.project(x))  # (B, L, 2H)
        pooled = torch.cat([outputs.mean(dim=1), outputs.amax(dim=1)], dim=-1)
        return self.dropout(pooled)


_VALUE, _MASK, _DELTA = (OBSERVATION_CHANNELS.index(name) for name in ("value", "mask", "delta"))


class GRUD(nn.Module):
    """GRU-D (Che et al. 2018, Sci. Rep. 8:6085) over a (B, T, V, 3) clinical time series.

    Per step t, with x the value channel, m the mask and delta the days since each
    variable's last observation:
        gamma_x = exp(-max(0, w_x * delta + b_x))            one weight per variable
        x_hat   = m * x + (1 - m) * (gamma_x * x_last + (1 - gamma_x) * x_mean)
        gamma_h = exp(-max(0, W_h delta + b_h))              (V -> hidden) matrix
        h       = GRUCell([x_hat, m], gamma_h * h)
    The value channel is forward-filled, so it is x where m = 1 and x_last where m = 0,
    and it is standardised on the train split, so x_mean = 0: x_hat = (m + (1 - m) *
    gamma_x) * x. A GRUCell over [x_hat, m] holds the paper's W (on x_hat), U (on the
    state) and V (on the mask) for each gate. One difference from the paper: torch's GRU
    applies the reset gate after the state's matrix, r * (U h + b), where the paper
    has U (r * h) (the cuDNN form, also tf.keras's default). The encoding is the
    state after the last step.
    """

    def __init__(self, config: RNNConfig) -> None:
        super().__init__()
        variables, hidden = config.num_variables, config.hidden_size
        # nn.Linear's init for a diagonal matrix (fan-in 1): decays start between none
        # and strong over the window's 2 days, and training sets each variable's rate.
        self.input_decay_weight = nn.Parameter(torch.empty(variables).uniform_(-1, 1))
        self.input_decay_bias = nn.Parameter(torch.empty(variables).uniform_(-1, 1))
        self.hidden_decay = nn.Linear(variables, hidden)
        self.cell = nn.GRUCell(2 * variables, hidden)
        self.dropout = nn.Dropout(config.dropout)
        self.out_features = hidden

    def decayed_inputs(self, x: torch.Tensor) -> torch.Tensor:
        """x_hat (B, T, V): each value decayed towards the mean (0) with the time since
        its variable was last observed; observed values pass unchanged."""
        value, mask, delta = x[..., _VALUE], x[..., _MASK], x[..., _DELTA]
        gamma = torch.exp(-torch.relu(delta * self.input_decay_weight + self.input_decay_bias))
        return (mask + (1 - mask) * gamma) * value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Everything but the recurrence is computed for all steps at once, so the loop
        # over T (48 hourly steps) is one GRUCell call per step.
        inputs = torch.cat([self.decayed_inputs(x), x[..., _MASK]], dim=-1)  # (B, T, 2V)
        gamma_h = torch.exp(-torch.relu(self.hidden_decay(x[..., _DELTA])))  # (B, T, H)
        h = x.new_zeros(x.shape[0], self.out_features)
        for t in range(x.shape[1]):
            h = self.cell(inputs[:, t], gamma_h[:, t] * h)
        return self.dropout(h)
