"""Model families and the registry that builds them.

Three families, one module each: `cnn` (images), `rnn` (signals, clinical time series
and clinical text), `attention` (tabular records, one token per feature; clinical time
series, one token per time step; clinical text, one token per word piece), and beside
them `linear`, the classical reference as a medray model (TF-IDF logistic regression for
text), which a small dataset's neural models must be judged against. Each module has a
config dataclass, an `nn.Module` built from that config alone, `PRESETS`: named architectures, each a dict of the hyperparameters it
uses with their defaults, `PRESET_MODALITIES`: the input modalities each preset takes,
and `AXIS_FIELDS`: the config field that receives each axis of an input's shape. The
seed's reference architecture is the preset called "seed" in every family.

    spec = InputSpec("image", (1, 28, 28))
    config = model_config_for("cnn", "resnet", spec, num_classes=2, overrides={"dropout": 0.1})
    model = build_model("cnn", "resnet", spec, num_classes=2, overrides={"dropout": 0.1})
    # a checkpoint stores family, dataclasses.asdict(config) and the state_dict;
    # build_model_from_config(family, config_dict) rebuilds the same module.

Every model maps a float tensor to logits of shape (B, num_classes); the loss or the
caller applies softmax. `model.features_and_logits(x)` gives the classifier's input (the
penultimate features, (B, D)) with the same logits, in one pass, in every family.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Mapping
from dataclasses import dataclass
from numbers import Real
from typing import Any

import torch
from torch import nn

from medray.cluster.errors import ConfigError
from medray.train.modalities import modality


class ModelConfigError(ConfigError, ValueError):
    """A model family, preset, input shape or hyperparameter that is not allowed."""


# --- Checks shared by the family configs -------------------------------------------
# These live above the family imports below because the family modules import them.


def apply_preset(config: Any, presets: Mapping[str, Mapping[str, Any]]) -> None:
    """Fill the hyperparameters `config` leaves as None from its preset's defaults.

    A hyperparameter is any key of any preset. The ones the chosen preset does not use
    must stay None, so a stored config shows exactly what shaped the model.
    """
    kind = type(config).__name__
    if config.preset not in presets:
        raise ModelConfigError(
            f"{kind}: unknown preset {config.preset!r}; choose one of: {', '.join(presets)}"
        )
    used = presets[config.preset]
    for name in sorted(set().union(*presets.values())):
        value = getattr(config, name)
        if name in used:
            if value is None:
                setattr(config, name, used[name])
        elif value is not None:
            raise ModelConfigError(
                f"{kind}.{name} is not used by preset {config.preset!r}; "
                f"it takes: {', '.join(used)}"
            )


def check_positive_ints(config: Any, *names: str) -> None:
    """Each named field, unless None, must be an integer >= 1 (stored as a plain int)."""
    for name in names:
        value = getattr(config, name)
        if value is None:
            continue
        try:
            # operator.index accepts numpy integers (from a search space) and rejects floats.
            number = operator.index(value)
        except TypeError:
            number = 0
        if isinstance(value, bool) or number < 1:
            raise ModelConfigError(
                f"{type(config).__name__}.{name} must be a positive integer, got {value!r}"
            )
        setattr(config, name, int(number))


def check_positive_int_tuple(config: Any, name: str) -> None:
    """The named field, unless None, must hold one or more integers >= 1 (stored as a tuple;
    JSON hands tuples back as lists)."""
    value = getattr(config, name)
    if value is None:
        return
    try:
        numbers = tuple(operator.index(v) for v in value if not isinstance(v, bool))
        ok = len(numbers) == len(value) > 0 and min(numbers) >= 1
    except TypeError:
        ok = False
    if not ok:
        raise ModelConfigError(
            f"{type(config).__name__}.{name} must be one or more positive integers, got {value!r}"
        )
    setattr(config, name, tuple(int(n) for n in numbers))


def check_fractions(config: Any, *names: str) -> None:
    """Each named field, unless None, must be a dropout-like rate in [0, 1)."""
    for name in names:
        value = getattr(config, name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, Real) or not 0 <= value < 1:
            raise ModelConfigError(
                f"{type(config).__name__}.{name} must be a number in [0, 1), got {value!r}"
            )
        setattr(config, name, float(value))


def check_num_classes(config: Any) -> None:
    check_positive_ints(config, "num_classes")
    if config.num_classes < 2:
        raise ModelConfigError(
            f"{type(config).__name__}.num_classes must be at least 2, got {config.num_classes}"
        )


def input_shape_fields(
    preset_modalities: Mapping[str, tuple[str, ...]], axis_fields: Mapping[str, str]
) -> dict[str, tuple[str, ...]]:
    """Per modality any preset takes: the config field receiving each axis of its input
    shape, in the order of the modality's `shape_axes` (so the modality, not the family,
    says what its shape holds)."""
    taken = dict.fromkeys(name for names in preset_modalities.values() for name in names)
    return {name: tuple(axis_fields[axis] for axis in modality(name).shape_axes) for name in taken}


def check_input_sizes(
    config: Any,
    preset_modalities: Mapping[str, tuple[str, ...]],
    shape_fields: Mapping[str, tuple[str, ...]],
) -> None:
    """The input size fields `config` sets must be exactly those of one modality its
    preset takes (the others None, so a stored config shows what the input was), each a
    positive integer."""
    every = sorted(set().union(*shape_fields.values()))
    given = {name for name in every if getattr(config, name) is not None}
    check_positive_ints(config, *sorted(given))
    takes = preset_modalities[config.preset]
    if not any(given == set(shape_fields[name]) for name in takes):
        expected = " or ".join(f"{name} ({', '.join(shape_fields[name])})" for name in takes)
        raise ModelConfigError(
            f"{type(config).__name__}: preset {config.preset!r} takes {expected} as input "
            f"sizes, got {', '.join(n for n in every if n in given) or 'none'}"
        )


OBSERVATION_CHANNELS = ("value", "mask", "delta")
"""The channels of a clinical time series input (time, variables, channels), in the order
`medray.train.modalities.timeseries` builds them: the standardised value forward-filled
from the last observation, the observation mask, and the days since the variable's last
observation (GRU-D's delta). The presets that read them by meaning (grud,
time_transformer) index them by these names."""


PAD_TOKEN_ID = 0
"""The token id that pads a text input (B, L) at the end of each row (the text modality's
[PAD], `medray.train.modalities.text.PAD_ID`): every text preset masks it, so a
document gives the same logits whatever padding follows it."""

UNK_TOKEN_ID = 1
"""The token id of a word outside the vocabulary (the text modality's [UNK],
`medray.train.modalities.text.UNK_ID`): the ids below it and it are no word."""

TOKEN_EMBEDDING_INIT = 0.05
"""Token embeddings start uniform in +-0.05 (Keras' `Embedding` default, the seed's). torch's
N(0, 1) default made each word piece's vector large next to the 0.02-scale bigram and
position terms added to it and next to what a few epochs of Adam move it: on Medical
Abstracts bag_of_ngrams reached test macro-F1 0.593 with it and 0.628 without (seed 0)."""


def token_embedding(vocab_size: int, dim: int) -> nn.Embedding:
    """The embedding of every text preset: `vocab_size` word pieces, PAD_TOKEN_ID a zero row
    that gets no gradient, TOKEN_EMBEDDING_INIT scale."""
    embedding = nn.Embedding(vocab_size, dim, padding_idx=PAD_TOKEN_ID)
    with torch.no_grad():
        embedding.weight.uniform_(-TOKEN_EMBEDDING_INIT, TOKEN_EMBEDDING_INIT)
        embedding.weight[PAD_TOKEN_ID].zero_()
    return embedding


BIGRAM_HASH_MULTIPLIER = 1_000_003
"""Bigram (a, b) of token ids goes to bucket (a * BIGRAM_HASH_MULTIPLIER + b) mod buckets."""


def bigram_buckets(first: torch.Tensor, second: torch.Tensor, buckets: int) -> torch.Tensor:
    """The hash bucket of each bigram (first, second) of token ids: the same in the
    bag_of_ngrams and tfidf presets and in every process (integer arithmetic only)."""
    return (first.long() * BIGRAM_HASH_MULTIPLIER + second.long()) % buckets


def penultimate(head: nn.Sequential, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(input of `head`'s last layer, `head`'s output): the features the classifier reads,
    which out-of-distribution detection (`medray.train.ood`) measures, and the logits."""
    features = head[:-1](x)
    return features, head[-1](features)


# The family modules import the names above, so they come after them.
from medray.train.models import attention, cnn, linear, rnn  # noqa: E402

# --- Inputs and the registry ----------------------------------------------------------

@dataclass(frozen=True)
class InputSpec:
    """What one example looks like after preprocessing (without the batch axis)."""

    modality: str
    """A name in `medray.train.modalities.MODALITIES`."""
    shape: tuple[int, ...]
    """One size per axis of the modality's `shape_axes`: image (C, H, W); signal (L, C),
    length then channels; tabular (F,) numeric features; timeseries (T, V, 3), time steps,
    variables, then OBSERVATION_CHANNELS; text (L,) token ids."""
    vocabulary: int | None = None
    """How many token ids the input's values index: required (>= 2) for a modality whose
    shape has a "tokens" axis (text), None for every other."""

    def __post_init__(self) -> None:
        try:
            axes = modality(self.modality).shape_axes
        except ConfigError as unknown:
            raise ModelConfigError(str(unknown)) from None
        try:
            shape = tuple(operator.index(n) for n in self.shape if not isinstance(n, bool))
            ok = len(shape) == len(self.shape) == len(axes) and min(shape) >= 1
        except TypeError:
            ok = False
        if not ok:
            raise ModelConfigError(
                f"{self.modality} input shape must be ({', '.join(axes)}) "
                f"as positive integers, got {self.shape!r}"
            )
        object.__setattr__(self, "shape", tuple(int(n) for n in shape))
        takes_tokens = "tokens" in axes
        if takes_tokens != (self.vocabulary is not None) or (takes_tokens and (
                isinstance(self.vocabulary, bool) or not isinstance(self.vocabulary, int) or self.vocabulary < 2)):
            raise ModelConfigError(
                f"{self.modality} input needs "
                f"{'a vocabulary of at least 2 token ids' if takes_tokens else 'no vocabulary'}, "
                f"got vocabulary={self.vocabulary!r}"
            )


@dataclass(frozen=True)
class Family:
    """What the registry needs to know about one model family."""

    config_cls: type
    model_cls: type[nn.Module]
    presets: Mapping[str, Mapping[str, Any]]
    preset_modalities: Mapping[str, tuple[str, ...]]
    """The input modalities each preset takes."""
    shape_fields: Mapping[str, tuple[str, ...]]
    """Per modality a preset takes: the config field that receives each axis of
    InputSpec.shape, in order."""


FAMILIES: dict[str, Family] = {
    name: Family(config_cls, model_cls, module.PRESETS, module.PRESET_MODALITIES, module.SHAPE_FIELDS)
    for name, module, config_cls, model_cls in (
        ("cnn", cnn, cnn.CNNConfig, cnn.CNN),
        ("rnn", rnn, rnn.RNNConfig, rnn.RNN),
        ("attention", attention, attention.AttentionConfig, attention.AttentionNet),
        ("linear", linear, linear.LinearConfig, linear.LinearModel),
    )
}


def _family(family: str) -> Family:
    if family not in FAMILIES:
        raise ModelConfigError(
            f"unknown model family {family!r}; choose one of: {', '.join(FAMILIES)}"
        )
    return FAMILIES[family]


def _presets_taking(modality_name: str) -> str:
    """Every preset that takes `modality_name`, as `family (preset, ...); ...`."""
    takers = []
    for name, family in FAMILIES.items():
        presets = [p for p, names in family.preset_modalities.items() if modality_name in names]
        if presets:
            takers.append(f"{name} ({', '.join(presets)})")
    return "; ".join(takers) or "no registered preset"


def model_config_for(
    family: str,
    preset: str,
    input_spec: InputSpec,
    num_classes: int,
    overrides: Mapping[str, Any] | None = None,
) -> Any:
    """The config dataclass for `preset` of `family`, sized for `input_spec`.

    `overrides` may set any hyperparameter the preset uses (the keys of its PRESETS
    entry); input sizes and num_classes come from the arguments, never from overrides.
    """
    spec = _family(family)
    if preset not in spec.presets:
        raise ModelConfigError(
            f"unknown {family} preset {preset!r}; choose one of: {', '.join(spec.presets)}"
        )
    takes = spec.preset_modalities[preset]
    if input_spec.modality not in takes:
        raise ModelConfigError(
            f"model family {family!r} preset {preset!r} takes {' or '.join(takes)} inputs, "
            f"not {input_spec.modality!r}; for {input_spec.modality} use: "
            f"{_presets_taking(input_spec.modality)}"
        )
    # An option set to None (`model.options.dims=` on the command line) is unset: the preset decides.
    overrides = {key: value for key, value in (overrides or {}).items() if value is not None}
    allowed = spec.presets[preset]
    unknown = sorted(set(overrides) - set(allowed))
    if unknown:
        raise ModelConfigError(
            f"unknown override {', '.join(map(repr, unknown))} for {family} preset {preset!r}; "
            f"allowed: {', '.join(allowed)}"
        )
    sizes = dict(zip(spec.shape_fields[input_spec.modality], input_spec.shape))
    if input_spec.vocabulary is not None:
        sizes["vocab_size"] = input_spec.vocabulary
    return spec.config_cls(preset=preset, num_classes=num_classes, **sizes, **overrides)


def build_model(
    family: str,
    preset: str,
    input_spec: InputSpec,
    num_classes: int,
    overrides: Mapping[str, Any] | None = None,
) -> nn.Module:
    """A freshly initialised model (seed torch first for reproducible weights)."""
    config = model_config_for(family, preset, input_spec, num_classes, overrides)
    return FAMILIES[family].model_cls(config)


def build_model_from_config(family: str, config: Mapping[str, Any]) -> nn.Module:
    """Rebuild a model from `dataclasses.asdict(config)`, e.g. as read from a checkpoint.

    Lists (what JSON makes of tuples) are accepted where the config holds tuples.
    """
    spec = _family(family)
    fields = dataclasses.fields(spec.config_cls)
    names = [f.name for f in fields]
    unknown = sorted(set(config) - set(names))
    if unknown:
        raise ModelConfigError(
            f"{spec.config_cls.__name__} has no field {', '.join(map(repr, unknown))}; "
            f"fields: {', '.join(names)}"
        )
    missing = [
        f.name
        for f in fields
        if f.name not in config
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ModelConfigError(
            f"{spec.config_cls.__name__} is missing {', '.join(map(repr, missing))}"
        )
    return spec.model_cls(spec.config_cls(**config))


__all__ = [
    "FAMILIES",
    "Family",
    "InputSpec",
    "ModelConfigError",
    "build_model",
    "build_model_from_config",
    "model_config_for",
]
