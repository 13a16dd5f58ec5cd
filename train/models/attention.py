"""Attention networks for tabular health records: each numeric feature is a token.

Input: float tensor (B, F) of preprocessed features. Output: logits (B, num_classes).
`AttentionNet.attention_weights(x)` gives a per-feature importance (B, F) whose rows
sum to 1, for explanations; call it in eval mode, since attention dropout perturbs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Real

import torch
from torch import nn

from medray.train.models import (
    ModelConfigError,
    apply_preset,
    check_fractions,
    check_num_classes,
    check_positive_int_tuple,
    check_positive_ints,
)

MODALITY = "tabular"
SHAPE_FIELDS = ("num_features",)

PRESETS: dict[str, dict[str, object]] = {
    # The seed's Keras reference: Dense 128 → self-attention → Dense 64 → self-attention
    # → classifier, here with features as tokens. The seed does not fix a head count;
    # 4 heads give 32- and 16-wide heads.
    "seed": {"dims": (128, 64), "n_heads": 4, "dropout": 0.0},
    # FT-Transformer (Gorishniy et al. 2021): feature tokenizer, CLS token, pre-norm
    # Transformer blocks with ReGLU feed-forward. Dropouts are the paper's defaults;
    # d_token is smaller than its 192 because our tables have only hundreds of rows.
    "ft_transformer": {
        "d_token": 64,
        "n_layers": 3,
        "n_heads": 8,
        "ffn_factor": 4 / 3,
        "attention_dropout": 0.2,
        "ffn_dropout": 0.1,
        "residual_dropout": 0.0,
    },
}


@dataclass
class AttentionConfig:
    preset: str
    """Architecture: a key of PRESETS ("seed" or "ft_transformer")."""
    num_features: int
    """Numeric input features after preprocessing (one token each)."""
    num_classes: int
    """Number of logits."""
    dims: tuple[int, ...] | None = None
    """seed: token width of each attention stage; the first is the feature embedding, each
    later one a Dense+ReLU applied to every token."""
    dropout: float | None = None
    """seed: dropout on attention weights and on the attention output."""
    d_token: int | None = None
    """ft_transformer: token width."""
    n_layers: int | None = None
    """ft_transformer: Transformer blocks."""
    n_heads: int | None = None
    """Attention heads; must divide every token width."""
    ffn_factor: float | None = None
    """ft_transformer: feed-forward hidden width as a multiple of d_token."""
    attention_dropout: float | None = None
    """ft_transformer: dropout on attention weights."""
    ffn_dropout: float | None = None
    """ft_transformer: dropout inside the feed-forward layer."""
    residual_dropout: float | None = None
    """ft_transformer: dropout on each block's output before it is added back."""

    def __post_init__(self) -> None:
        apply_preset(self, PRESETS)
        check_positive_ints(self, "num_features", "d_token", "n_layers", "n_heads")
        check_positive_int_tuple(self, "dims")
        check_num_classes(self)
        check_fractions(self, "dropout", "attention_dropout", "ffn_dropout", "residual_dropout")
        widths = self.dims if self.preset == "seed" else (self.d_token,)
        if any(width % self.n_heads for width in widths):
            raise ModelConfigError(
                f"AttentionConfig.n_heads={self.n_heads} must divide every token width {widths}"
            )
        if self.ffn_factor is not None:
            factor = self.ffn_factor
            is_number = isinstance(factor, Real) and not isinstance(factor, bool)
            if not is_number or self.d_token * factor < 1:
                raise ModelConfigError(
                    f"AttentionConfig.ffn_factor must make the feed-forward layer at least 1 "
                    f"wide (d_token * ffn_factor >= 1), got {factor!r}"
                )
            self.ffn_factor = float(factor)


class AttentionNet(nn.Module):
    """`encoder` (tokens → one vector per record, plus attention per feature) then `head`."""

    def __init__(self, config: AttentionConfig) -> None:
        super().__init__()
        self.config = config
        encoder = _SeedEncoder if config.preset == "seed" else _FTTransformerEncoder
        self.encoder = encoder(config)
        self.head = nn.Linear(self.encoder.out_features, config.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features, _ = self.encoder(x)
        return self.head(features)

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(penultimate features (B, D): the encoder's output, the classifier's input, logits)."""
        features, _ = self.encoder(x)
        return features, self.head(features)

    def attention_weights(self, x: torch.Tensor) -> torch.Tensor:
        """Per-feature importance (B, F), each row non-negative and summing to 1.

        seed: attention each feature token receives in the last attention layer,
        averaged over heads and over the tokens attending (these are then mean-pooled
        into the prediction). ft_transformer: the last layer's attention from the CLS
        token (which alone feeds the head) to each feature, averaged over heads and
        renormalised without the CLS token's attention to itself.
        """
        _, importance = self.encoder(x)
        return importance


class FeatureTokenizer(nn.Module):
    """One token per numeric feature: value * weight_j + bias_j, learned per feature j."""

    def __init__(self, num_features: int, dim: int) -> None:
        super().__init__()
        bound = dim**-0.5  # the FT-Transformer's init
        self.weight = nn.Parameter(torch.empty(num_features, dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(num_features, dim).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.unsqueeze(-1) * self.weight + self.bias  # (B, F) -> (B, F, dim)


class _SeedStage(nn.Module):
    """Map each token to `dim`, then self-attention with a residual and LayerNorm."""

    def __init__(self, embed: nn.Module, dim: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.embed = embed
        self.attention = nn.MultiheadAttention(dim, n_heads, dropout=dropout, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.embed(tokens)
        attended, weights = self.attention(h, h, h, need_weights=True)  # weights: (B, T, T)
        return self.norm(h + self.dropout(attended)), weights


class _SeedEncoder(nn.Module):
    def __init__(self, config: AttentionConfig) -> None:
        super().__init__()
        dims = config.dims
        embeds = [FeatureTokenizer(config.num_features, dims[0])] + [
            nn.Sequential(nn.Linear(a, b), nn.ReLU()) for a, b in zip(dims, dims[1:])
        ]
        self.stages = nn.ModuleList(
            _SeedStage(embed, dim, config.n_heads, config.dropout)
            for embed, dim in zip(embeds, dims)
        )
        self.out_features = dims[-1]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = x
        for stage in self.stages:
            tokens, weights = stage(tokens)
        # Row q of `weights` is how token q spreads its attention; the mean over q is the
        # share each feature gets, and still sums to 1.
        return tokens.mean(dim=1), weights.mean(dim=1)


class _ReGLU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = x.chunk(2, dim=-1)
        return value * torch.relu(gate)


class _FTBlock(nn.Module):
    """Pre-norm Transformer block: x + attention(norm(x)), then x + ffn(norm(x))."""

    def __init__(self, config: AttentionConfig, first: bool) -> None:
        super().__init__()
        d, hidden = config.d_token, int(config.d_token * config.ffn_factor)
        # As in the paper, the first block has no attention norm: its input is the
        # tokenizer's output, not a residual stream.
        self.attention_norm: nn.Module = nn.Identity() if first else nn.LayerNorm(d)
        self.attention = nn.MultiheadAttention(
            d, config.n_heads, dropout=config.attention_dropout, batch_first=True
        )
        self.ffn_norm = nn.LayerNorm(d)
        self.ffn = nn.Sequential(
            nn.Linear(d, 2 * hidden),
            _ReGLU(),
            nn.Dropout(config.ffn_dropout),
            nn.Linear(hidden, d),
        )
        self.residual_dropout = nn.Dropout(config.residual_dropout)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.attention_norm(x)
        attended, weights = self.attention(h, h, h, need_weights=True)
        x = x + self.residual_dropout(attended)
        x = x + self.residual_dropout(self.ffn(self.ffn_norm(x)))
        return x, weights


class _FTTransformerEncoder(nn.Module):
    def __init__(self, config: AttentionConfig) -> None:
        super().__init__()
        d = config.d_token
        self.tokenizer = FeatureTokenizer(config.num_features, d)
        self.cls = nn.Parameter(torch.empty(d).uniform_(-(d**-0.5), d**-0.5))
        self.blocks = nn.ModuleList(_FTBlock(config, first=i == 0) for i in range(config.n_layers))
        self.readout = nn.Sequential(nn.LayerNorm(d), nn.ReLU())
        self.out_features = d

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.tokenizer(x)
        # The CLS token goes last, as in the reference implementation (rtdl).
        h = torch.cat([tokens, self.cls.expand(len(x), 1, -1)], dim=1)
        for block in self.blocks:
            h, weights = block(h)
        from_cls = weights[:, -1, :-1]
        return self.readout(h[:, -1]), from_cls / from_cls.sum(dim=-1, keepdim=True)
