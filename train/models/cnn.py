"""Convolutional networks: for images the seed's reference CNN and a small ResNet, for
signals InceptionTime.

Input: an image (B, C, H, W) or a signal (B, L, C), length then channels as the signal
modality hands it. Output: logits (B, num_classes).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

from medray.train.models import (
    ModelConfigError,
    apply_preset,
    check_fractions,
    check_input_sizes,
    check_num_classes,
    check_positive_int_tuple,
    check_positive_ints,
    input_shape_fields,
    penultimate,
)

PRESETS: dict[str, dict[str, object]] = {
    # The seed's Keras reference: Conv 32→64→128 (3x3, ReLU, 2x2 max-pool), Dense 512,
    # Dropout 0.5, then the classifier.
    "seed": {"channels": (32, 64, 128), "dense_units": 512, "max_spatial": 4, "dropout": 0.5},
    # A small ResNet (He et al. 2016) sized for 28x28 and up: BasicBlocks, BatchNorm,
    # global average pooling.
    "resnet": {"channels": (32, 64, 128), "blocks_per_stage": 2, "stem": "auto", "dropout": 0.2},
    # InceptionTime (Ismail Fawaz et al. 2020), the network of that paper as published:
    # six Inception modules of four 32-filter branches (a 1x1 bottleneck to 32 channels,
    # then convolutions of 39, 19 and 9 steps; and a 3-step max-pool with a 1x1 conv),
    # BatchNorm and ReLU over their 128 channels, a residual shortcut around every three
    # modules (and around a last, shorter run), global average pooling. Odd kernels (the
    # paper's 40, 20, 10 less one) keep "same" padding symmetric, so a step's output is
    # centred on that step.
    "inception_time": {"filters": 32, "kernel_sizes": (39, 19, 9), "bottleneck": 32, "depth": 6,
                       "dropout": 0.0},
}
PRESET_MODALITIES = {"seed": ("image",), "resnet": ("image",), "inception_time": ("signal",)}
AXIS_FIELDS = {"channels": "in_channels", "height": "height", "width": "width", "length": "length"}
SHAPE_FIELDS = input_shape_fields(PRESET_MODALITIES, AXIS_FIELDS)

# The smallest side that the stage-1 feature map should keep: a 28x28 image (MedMNIST)
# is not downsampled by the stem, and larger images only when this is still met.
_STEM_MIN_SIDE = 28


@dataclass
class CNNConfig:
    preset: str
    """Architecture: a key of PRESETS ("seed", "resnet" or "inception_time")."""
    in_channels: int
    """Image channels (1 for greyscale, 3 for RGB), or a signal's channels (leads)."""
    num_classes: int
    """Number of logits."""
    height: int | None = None
    """Image height in pixels (images only)."""
    width: int | None = None
    """Image width in pixels (images only)."""
    length: int | None = None
    """Time steps of a signal (signals only). InceptionTime takes any length; this records
    the one it was trained on."""
    channels: tuple[int, ...] | None = None
    """Conv width per stage. seed: one conv and a 2x2 max-pool each; resnet: BasicBlocks,
    every stage after the first halving the resolution."""
    dense_units: int | None = None
    """seed: width of the dense layer between the convs and the classifier."""
    max_spatial: int | None = None
    """seed: largest side of the feature map flattened into the dense layer; a larger map
    is average-pooled down to it, so big images do not blow up the dense layer."""
    blocks_per_stage: int | None = None
    """resnet: BasicBlocks per stage."""
    stem: str | None = None
    """resnet: "plain" (3x3 conv, full resolution), "strided" (3x3 conv stride 2 and a
    max-pool: a quarter of the resolution), or "auto" (stored resolved): "strided" when
    the image stays at least 28 pixels a side after it."""
    filters: int | None = None
    """inception_time: filters per branch; a module outputs four branches' worth."""
    kernel_sizes: tuple[int, ...] | None = None
    """inception_time: the convolution branches' kernel sizes (odd), one branch each."""
    bottleneck: int | None = None
    """inception_time: channels of the 1x1 convolution before the long kernels (applied
    when the module's input has more than one channel, as in the paper)."""
    depth: int | None = None
    """inception_time: Inception modules; a residual shortcut spans every three."""
    dropout: float | None = None
    """Dropout before the classifier."""

    def __post_init__(self) -> None:
        apply_preset(self, PRESETS)
        check_input_sizes(self, PRESET_MODALITIES, SHAPE_FIELDS)
        check_positive_ints(
            self, "in_channels", "dense_units", "max_spatial", "blocks_per_stage", "filters", "bottleneck", "depth"
        )
        check_positive_int_tuple(self, "channels")
        check_positive_int_tuple(self, "kernel_sizes")
        check_num_classes(self)
        check_fractions(self, "dropout")
        if self.kernel_sizes is not None and any(k % 2 == 0 for k in self.kernel_sizes):
            raise ModelConfigError(f"CNNConfig.kernel_sizes must be odd, got {list(self.kernel_sizes)}")
        if self.preset == "inception_time":
            return
        smallest = min(self.height, self.width)
        if self.preset == "seed" and smallest < 2 ** len(self.channels):
            raise ModelConfigError(
                f"the seed CNN halves the image {len(self.channels)} times, so it needs at "
                f"least {2 ** len(self.channels)} pixels a side; got {self.height}x{self.width}"
            )
        if self.stem == "auto":
            self.stem = "strided" if smallest // 4 >= _STEM_MIN_SIDE else "plain"
        if self.stem not in (None, "plain", "strided"):
            raise ModelConfigError(
                f"CNNConfig.stem must be one of: auto, plain, strided; got {self.stem!r}"
            )


class CNN(nn.Module):
    """`features` (convolutions) then `head` (classifier), both chosen by the preset."""

    def __init__(self, config: CNNConfig) -> None:
        super().__init__()
        self.config = config
        build = {"seed": _seed_layers, "resnet": _resnet_layers, "inception_time": _inception_time_layers}
        self.features, self.head, self._cam_layer_name = build[config.preset](config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(penultimate features (B, D): the classifier's input, logits (B, num_classes))."""
        return penultimate(self.head, self.features(x))

    def grad_cam_layer(self) -> nn.Module:
        """The module whose output is the last convolutional feature map (after its
        activation, before any pooling): hook it for Grad-CAM (images)."""
        return self.get_submodule(self._cam_layer_name)


def _seed_layers(config: CNNConfig) -> tuple[nn.Module, nn.Module, str]:
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    in_channels, height, width = config.in_channels, config.height, config.width
    for i, out_channels in enumerate(config.channels, start=1):
        layers[f"conv{i}"] = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        layers[f"relu{i}"] = nn.ReLU()
        layers[f"pool{i}"] = nn.MaxPool2d(2)
        in_channels, height, width = out_channels, height // 2, width // 2
    if max(height, width) > config.max_spatial:
        height, width = min(height, config.max_spatial), min(width, config.max_spatial)
        layers["shrink"] = nn.AdaptiveAvgPool2d((height, width))
    head = nn.Sequential(
        nn.Flatten(),
        nn.Linear(in_channels * height * width, config.dense_units),
        nn.ReLU(),
        nn.Dropout(config.dropout),
        nn.Linear(config.dense_units, config.num_classes),
    )
    return nn.Sequential(layers), head, f"features.relu{len(config.channels)}"


class BasicBlock(nn.Module):
    """Two 3x3 convs with BatchNorm and an identity (or 1x1 projection) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


def _resnet_layers(config: CNNConfig) -> tuple[nn.Module, nn.Module, str]:
    width = config.channels[0]
    stride = 2 if config.stem == "strided" else 1
    stem: list[nn.Module] = [
        nn.Conv2d(config.in_channels, width, 3, stride, padding=1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(),
    ]
    if config.stem == "strided":
        stem.append(nn.MaxPool2d(3, stride=2, padding=1))
    layers: OrderedDict[str, nn.Module] = OrderedDict(stem=nn.Sequential(*stem))
    in_channels = width
    for i, out_channels in enumerate(config.channels, start=1):
        blocks = [
            # The first stage keeps the stem's resolution; each later one halves it.
            BasicBlock(in_channels if b == 0 else out_channels, out_channels,
                       stride=2 if (b == 0 and i > 1) else 1)
            for b in range(config.blocks_per_stage)
        ]
        layers[f"stage{i}"] = nn.Sequential(*blocks)
        in_channels = out_channels
    head = nn.Sequential(
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(config.dropout),
        nn.Linear(in_channels, config.num_classes),
    )
    last = f"features.stage{len(config.channels)}.{config.blocks_per_stage - 1}"
    return nn.Sequential(layers), head, last


class ChannelsFirst(nn.Module):
    """(B, L, C), the signal modality's layout, to (B, C, L), Conv1d's."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(1, 2)


class InceptionModule(nn.Module):
    """Parallel convolutions of several lengths over one input, concatenated, then
    BatchNorm and ReLU: each module sees shapes a few steps and a few dozen steps long."""

    def __init__(self, in_channels: int, config: CNNConfig) -> None:
        super().__init__()
        # The paper skips the bottleneck on a one-channel input (nothing to mix).
        self.bottleneck: nn.Module = nn.Identity()
        branch_in = in_channels
        if in_channels > 1:
            self.bottleneck = nn.Conv1d(in_channels, config.bottleneck, 1, bias=False)
            branch_in = config.bottleneck
        self.convs = nn.ModuleList(
            nn.Conv1d(branch_in, config.filters, k, padding=k // 2, bias=False) for k in config.kernel_sizes
        )
        self.pool = nn.MaxPool1d(3, stride=1, padding=1)
        self.pool_conv = nn.Conv1d(in_channels, config.filters, 1, bias=False)
        self.out_channels = config.filters * (len(config.kernel_sizes) + 1)
        self.bn = nn.BatchNorm1d(self.out_channels)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        narrowed = self.bottleneck(x)
        branches = [conv(narrowed) for conv in self.convs] + [self.pool_conv(self.pool(x))]
        return self.relu(self.bn(torch.cat(branches, dim=1)))


class InceptionBlock(nn.Module):
    """Up to three Inception modules with a residual shortcut (a 1x1 conv and BatchNorm)
    from the block's input to its output."""

    def __init__(self, in_channels: int, modules: int, config: CNNConfig) -> None:
        super().__init__()
        layers, channels = [], in_channels
        for _ in range(modules):
            layers.append(InceptionModule(channels, config))
            channels = layers[-1].out_channels
        self.inception = nn.Sequential(*layers)
        self.shortcut = nn.Sequential(nn.Conv1d(in_channels, channels, 1, bias=False), nn.BatchNorm1d(channels))
        self.relu = nn.ReLU()
        self.out_channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.inception(x) + self.shortcut(x))


def _inception_time_layers(config: CNNConfig) -> tuple[nn.Module, nn.Module, str]:
    layers: OrderedDict[str, nn.Module] = OrderedDict(channels_first=ChannelsFirst())
    channels = config.in_channels
    for block, first in enumerate(range(0, config.depth, 3), start=1):
        layers[f"block{block}"] = InceptionBlock(channels, min(3, config.depth - first), config)
        channels = layers[f"block{block}"].out_channels
    head = nn.Sequential(
        nn.AdaptiveAvgPool1d(1),
        nn.Flatten(),
        nn.Dropout(config.dropout),
        nn.Linear(channels, config.num_classes),
    )
    return nn.Sequential(layers), head, f"features.block{block}"
