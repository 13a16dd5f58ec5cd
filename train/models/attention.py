"""Attention networks for tabular health records (each numeric feature a token) and for
clinical time series (each time step a token).

Input: "seed" and "ft_transformer": float tensor (B, F) of preprocessed features;
"time_transformer": (B, T, V, 3), time steps, variables, then OBSERVATION_CHANNELS
(value, mask, delta); "text_transformer" and "bag_of_ngrams": (B, L) token ids padded
with PAD_TOKEN_ID at the end (masked). Output: logits (B, num_classes).
`AttentionNet.attention_weights(x)` gives an importance per token, (B, F) per feature,
(B, T) per time step or (B, L) per text token (0 on padding), whose rows sum to 1, for
explanations; call it in eval mode, since attention dropout perturbs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Real

import torch
from torch import nn

from medray.train.models import (
    OBSERVATION_CHANNELS,
    PAD_TOKEN_ID,
    ModelConfigError,
    apply_preset,
    bigram_buckets,
    check_fractions,
    check_input_sizes,
    check_num_classes,
    check_positive_int_tuple,
    check_positive_ints,
    input_shape_fields,
    token_embedding,
)

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
    # The FT-Transformer's blocks over time: one token per hourly step (a linear map of
    # its variables' value, mask and delta, plus a learned embedding of the step index),
    # a CLS token, and steps where nothing was observed left out of attention. Two
    # 4-head layers, since a 48-step stay of a few thousand patients needs less depth
    # than a table's feature interactions; attention dropout 0.1 because the CLS token
    # reads few observed steps of a sparse chart and dropping them costs more than on a
    # table's always-present features.
    "time_transformer": {
        "d_token": 64,
        "n_layers": 2,
        "n_heads": 4,
        "ffn_factor": 4 / 3,
        "attention_dropout": 0.1,
        "ffn_dropout": 0.1,
        "residual_dropout": 0.0,
    },
    # The same blocks over a document's word pieces: learned token and position
    # embeddings, a CLS token read by the head, padding left out of attention. Small
    # (2 layers, 128 wide) for a few thousand documents trained from scratch on CPUs.
    "text_transformer": {
        "d_token": 128,
        "n_layers": 2,
        "n_heads": 4,
        "ffn_factor": 2.0,
        "attention_dropout": 0.1,
        "ffn_dropout": 0.1,
        "residual_dropout": 0.1,
    },
    # fastText (Joulin et al. 2017) with attention pooling: each token's embedding plus
    # a hashed embedding of the bigram it starts, pooled by one learned attention query
    # over the real tokens, then the linear classifier. On small text data bags of
    # n-grams are what a linear TF-IDF model shows to work; the attention lets a few
    # telling phrases outweigh a long abstract's common words.
    "bag_of_ngrams": {"d_token": 64, "ngram_buckets": 2**16, "dropout": 0.3},
}
PRESET_MODALITIES = {
    "seed": ("tabular",),
    "ft_transformer": ("tabular",),
    "time_transformer": ("timeseries",),
    "text_transformer": ("text",),
    "bag_of_ngrams": ("text",),
}
AXIS_FIELDS = {
    "features": "num_features",
    "time": "seq_len",
    "variables": "num_variables",
    "channels": "in_channels",
    "tokens": "seq_len",
}
SHAPE_FIELDS = input_shape_fields(PRESET_MODALITIES, AXIS_FIELDS)


@dataclass
class AttentionConfig:
    preset: str
    """Architecture: a key of PRESETS ("seed", "ft_transformer" or "time_transformer")."""
    num_classes: int
    """Number of logits."""
    num_features: int | None = None
    """Tabular: numeric input features after preprocessing (one token each)."""
    seq_len: int | None = None
    """Time series: steps the model was built for (one token each, and one learned time
    embedding each; shorter series are accepted)."""
    num_variables: int | None = None
    """Time series: variables per step."""
    in_channels: int | None = None
    """Time series: numbers per variable and step (its 3 OBSERVATION_CHANNELS)."""
    vocab_size: int | None = None
    """Text: token ids the embedding holds (seq_len is then the tokens per document)."""
    ngram_buckets: int | None = None
    """bag_of_ngrams: hash buckets of the bigram embeddings."""
    dims: tuple[int, ...] | None = None
    """seed: token width of each attention stage; the first is the feature embedding, each
    later one a Dense+ReLU applied to every token."""
    dropout: float | None = None
    """seed: dropout on attention weights and on the attention output; bag_of_ngrams: on
    the pooled document vector."""
    d_token: int | None = None
    """ft_transformer, time_transformer: token width."""
    n_layers: int | None = None
    """ft_transformer, time_transformer: Transformer blocks."""
    n_heads: int | None = None
    """Attention heads; must divide every token width."""
    ffn_factor: float | None = None
    """ft_transformer, time_transformer: feed-forward hidden width as a multiple of d_token."""
    attention_dropout: float | None = None
    """ft_transformer, time_transformer: dropout on attention weights."""
    ffn_dropout: float | None = None
    """ft_transformer, time_transformer: dropout inside the feed-forward layer."""
    residual_dropout: float | None = None
    """ft_transformer, time_transformer: dropout on each block's output before it is
    added back."""

    def __post_init__(self) -> None:
        apply_preset(self, PRESETS)
        check_input_sizes(self, PRESET_MODALITIES, SHAPE_FIELDS)
        check_positive_ints(self, "d_token", "n_layers", "n_heads", "vocab_size", "ngram_buckets")
        if (self.vocab_size is None) != (self.preset not in ("text_transformer", "bag_of_ngrams")):
            raise ModelConfigError(f"AttentionConfig: preset {self.preset!r} "
                                   f"{'needs' if self.vocab_size is None else 'takes no'} vocab_size")
        if self.in_channels is not None and self.in_channels != len(OBSERVATION_CHANNELS):
            raise ModelConfigError(
                f"AttentionConfig: preset {self.preset!r} reads {len(OBSERVATION_CHANNELS)} "
                f"channels per variable ({', '.join(OBSERVATION_CHANNELS)}), "
                f"got in_channels={self.in_channels}"
            )
        check_positive_int_tuple(self, "dims")
        check_num_classes(self)
        check_fractions(self, "dropout", "attention_dropout", "ffn_dropout", "residual_dropout")
        widths = self.dims if self.preset == "seed" else (self.d_token,)
        if self.n_heads is not None and any(width % self.n_heads for width in widths):
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
        encoders = {
            "seed": _SeedEncoder,
            "ft_transformer": _FTTransformerEncoder,
            "time_transformer": _TimeTransformerEncoder,
            "text_transformer": _TextTransformerEncoder,
            "bag_of_ngrams": _BagOfNgramsEncoder,
        }
        self.encoder = encoders[config.preset](config)
        self.head = nn.Linear(self.encoder.out_features, config.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features, _ = self.encoder(x)
        return self.head(features)

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(penultimate features (B, D): the encoder's output, the classifier's input, logits)."""
        features, _ = self.encoder(x)
        return features, self.head(features)

    def attention_weights(self, x: torch.Tensor) -> torch.Tensor:
        """Per-token importance, (B, F) per feature or (B, T) per time step, each row
        non-negative and summing to 1.

        seed: attention each feature token receives in the last attention layer,
        averaged over heads and over the tokens attending (these are then mean-pooled
        into the prediction). ft_transformer: the last layer's attention from the CLS
        token (which alone feeds the head) to each feature, averaged over heads and
        renormalised without the CLS token's attention to itself. time_transformer: the
        same over time steps; steps left out of attention (nothing observed) get 0.
        """
        _, importance = self.encoder(x)
        return importance

    def embed_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Text: each token id's embedding, (B, L, d_token)."""
        if not hasattr(self.encoder, "embed"):
            raise ModelConfigError(f"embed_tokens: preset {self.config.preset!r} does not read text")
        return self.encoder.embed(x)

    def logits_from_embeddings(self, embedded: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Text: the logits for token embeddings `embedded` of the ids `x` (which say where
        the padding is); forward(x) is logits_from_embeddings(embed_tokens(x), x)."""
        features, _ = self.encoder.from_embeddings(embedded, x)
        return self.head(features)


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

    def forward(
        self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`key_padding_mask` (B, tokens), True where a token is left out as a key: no
        other token reads it, and its weight in `weights` (B, tokens, tokens) is 0."""
        h = self.attention_norm(x)
        attended, weights = self.attention(
            h, h, h, key_padding_mask=key_padding_mask, need_weights=True
        )
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


_MASK = OBSERVATION_CHANNELS.index("mask")


class _TimeTransformerEncoder(nn.Module):
    """One token per time step, a CLS token (last, as in the FT encoder), FT blocks."""

    def __init__(self, config: AttentionConfig) -> None:
        super().__init__()
        d = config.d_token
        self.tokenizer = nn.Linear(config.num_variables * config.in_channels, d)
        bound = d**-0.5
        self.time_embedding = nn.Parameter(torch.empty(config.seq_len, d).uniform_(-bound, bound))
        self.cls = nn.Parameter(torch.empty(d).uniform_(-bound, bound))
        self.blocks = nn.ModuleList(_FTBlock(config, first=i == 0) for i in range(config.n_layers))
        self.readout = nn.Sequential(nn.LayerNorm(d), nn.ReLU())
        self.out_features = d

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch, steps = x.shape[:2]
        if steps > len(self.time_embedding):
            raise ValueError(
                f"time_transformer was built for at most {len(self.time_embedding)} steps, got {steps}"
            )
        tokens = self.tokenizer(x.flatten(2)) + self.time_embedding[:steps]  # (B, T, d)
        h = torch.cat([tokens, self.cls.expand(batch, 1, -1)], dim=1)
        # A step where no variable was observed carries only forward-filled values and
        # grown deltas, which its neighbours already show: it is left out of attention.
        # Step 0 never is: it holds the statics, and it keeps every patient (one with
        # nothing known at all included) a step to attend to besides the CLS token.
        empty = x[..., _MASK].sum(dim=-1) == 0
        empty[:, 0] = False
        padding = torch.cat([empty, empty.new_zeros(batch, 1)], dim=1)  # the CLS token: never
        for block in self.blocks:
            h, weights = block(h, padding)
        from_cls = weights[:, -1, :-1]
        return self.readout(h[:, -1]), from_cls / from_cls.sum(dim=-1, keepdim=True)


def _check_length(length: int, built: int, preset: str) -> None:
    if length > built:
        raise ValueError(f"{preset} was built for at most {built} tokens, got {length}")


class _TextTransformerEncoder(nn.Module):
    """One token per word piece plus its position, a CLS token (last), FT blocks; padding
    is left out of attention (the first position never is, so an empty document still
    has a token besides the CLS)."""

    def __init__(self, config: AttentionConfig) -> None:
        super().__init__()
        d = config.d_token
        self.embedding = token_embedding(config.vocab_size, d)
        bound = d**-0.5
        self.position = nn.Parameter(torch.empty(config.seq_len, d).uniform_(-bound, bound))
        self.cls = nn.Parameter(torch.empty(d).uniform_(-bound, bound))
        self.blocks = nn.ModuleList(_FTBlock(config, first=i == 0) for i in range(config.n_layers))
        self.readout = nn.Sequential(nn.LayerNorm(d), nn.ReLU())
        self.out_features = d

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.embedding(x.long())

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.from_embeddings(self.embed(x), x)

    def from_embeddings(self, embedded: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch, length = x.shape
        _check_length(length, len(self.position), "text_transformer")
        h = torch.cat([embedded + self.position[:length], self.cls.expand(batch, 1, -1)], dim=1)
        padding = x == PAD_TOKEN_ID
        padding[:, 0] = False
        padding = torch.cat([padding, padding.new_zeros(batch, 1)], dim=1)
        for block in self.blocks:
            h, weights = block(h, padding)
        from_cls = weights[:, -1, :-1].masked_fill(x == PAD_TOKEN_ID, 0.0)
        total = from_cls.sum(dim=-1, keepdim=True)
        uniform = (x != PAD_TOKEN_ID).to(from_cls)  # a document whose CLS attends only to itself
        share = torch.where(total > 0, from_cls / total.clamp_min(1e-12),
                            uniform / uniform.sum(dim=-1, keepdim=True).clamp_min(1.0))
        return self.readout(h[:, -1]), share


class _BagOfNgramsEncoder(nn.Module):
    """fastText's bag of unigrams and hashed bigrams, pooled by attention over real tokens."""

    def __init__(self, config: AttentionConfig) -> None:
        super().__init__()
        d = config.d_token
        self.embedding = token_embedding(config.vocab_size, d)
        self.bigrams = nn.Embedding(config.ngram_buckets, d)
        nn.init.normal_(self.bigrams.weight, std=0.02)
        self.buckets = config.ngram_buckets
        self.score = nn.Linear(d, 1)
        self.dropout = nn.Dropout(config.dropout)
        self.out_features = d

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.embedding(x.long())

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.from_embeddings(self.embed(x), x)

    def from_embeddings(self, embedded: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ids = x.long()
        real = ids != PAD_TOKEN_ID
        following = torch.cat([ids[:, 1:], ids.new_full((ids.shape[0], 1), PAD_TOKEN_ID)], dim=1)
        bigram = real & (following != PAD_TOKEN_ID)
        buckets = bigram_buckets(ids, following, self.buckets)
        tokens = embedded + self.bigrams(buckets) * bigram[..., None]
        attended = real.clone()
        attended[:, 0] = True  # an empty document pools its one (padding) token
        scores = self.score(torch.tanh(tokens)).squeeze(-1).masked_fill(~attended, float("-inf"))
        weights = torch.softmax(scores, dim=1)
        pooled = (weights[..., None] * tokens).sum(dim=1)
        return self.dropout(pooled), weights
