"""Images: stored as uint8 (N, H, W) or (N, H, W, C); the model takes (C, H, W).

Preprocessing scales pixels to [0, 1] and standardises each channel with the train
split's mean and std. Training augments with flips and small shifts. A request sends
nested arrays of 0-255 values or base64 PNG, JPEG or DICOM files (uploads too), which go
through the bounded decoder import uses (`train/data/decode.py`). Explanations are
Grad-CAM maps.
"""

from __future__ import annotations

import base64
import binascii
import functools
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from medray.cluster.errors import InputError
from medray.train.data.decode import DecodeLimits, ImageRefused, decode_image, dicom_metadata, metadata_differences
from medray.train.modalities import (
    Baseline,
    OODSet,
    TensorModality,
    check_numbers,
    flat_baselines,
    numeric_array,
    numeric_rows,
    one_tensor,
)

if TYPE_CHECKING:
    from medray.cluster.config import DataConfig
    from medray.train.data.preprocess import Batch, LabelMap, Preprocessor

PIXEL_RANGE = (0.0, 255.0)
"""Images are stored as uint8: their range is the dtype's, not fitted."""


class ImageModality(TensorModality):
    name = "image"
    shape_axes = ("channels", "height", "width")

    def fit(self, schema: dict[str, Any], train_features: Any, data: DataConfig,
            train_labels: np.ndarray | None = None) -> tuple[str | None, list[int], dict[str, Any]]:
        images = _channels_first(np.asarray(train_features), schema["shape"])
        mean, std = _channel_moments(images)
        # What the training set's DICOMs were (recorded at import), for `metadata_mismatches`.
        dicom = {"dicom": schema["dicom"]} if schema.get("dicom") else {}
        resize = {"resize": schema["resize"]} if schema.get("resize") else {}  # how a served file is squared
        return schema["column"], list(images.shape[1:]), {"mean": mean, "std": std, **dicom, **resize}

    def transform(self, preprocessor: Preprocessor, batch: Batch | np.ndarray) -> np.ndarray:
        images = _channels_first(np.asarray(batch), preprocessor.input_shape)
        mean = np.asarray(preprocessor.stats["mean"], dtype=np.float32)[None, :, None, None]
        std = np.asarray(preprocessor.stats["std"], dtype=np.float32)[None, :, None, None]
        return ((images.astype(np.float32) / 255.0 - mean) / std).astype(np.float32)

    def accepted_range(self, preprocessor: Preprocessor, key: int | str) -> tuple[float, float]:
        return PIXEL_RANGE

    def augment(self, inputs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return augment_images(inputs, generator)

    def ood_sets(self, preprocessor: Preprocessor, test_features: Any,
                 rng: np.random.Generator) -> dict[str, OODSet]:
        return image_ood_sets(preprocessor, np.asarray(test_features), rng)

    def baselines(self, schema: dict[str, Any], train: tuple[Any, np.ndarray], test: tuple[Any, np.ndarray],
                  labels: LabelMap, seed: int) -> dict[str, Baseline]:
        return flat_baselines(train, test, labels, "the pixels")

    def input_schema(self, preprocessor: Preprocessor) -> dict[str, Any]:
        channels, height, width = preprocessor.input_shape
        return {"type": "image", "height": height, "width": width, "channels": channels,
                "pixel_range": [0, 255],
                "accepts": ["nested array (H, W) or (H, W, C)", "base64 PNG, JPEG or DICOM string"]}

    def decode(self, preprocessor: Preprocessor, instances: list[Any]) -> np.ndarray:
        return np.stack([_instance(preprocessor, index, item) for index, item in enumerate(instances)])

    def decode_file(self, preprocessor: Preprocessor, data: bytes, model: str) -> np.ndarray:
        return _encoded_image(preprocessor, "file", data)[None]

    def metadata_mismatches(self, preprocessor: Preprocessor, instances: list[Any]) -> list[list[str]]:
        training = preprocessor.stats.get("dicom")
        if not training:  # no record of the training set's DICOMs: nothing to compare
            return [[] for _ in instances]
        return [metadata_differences(training, dicom_metadata(_file_bytes(item))) for item in instances]

    def explain(self, model: nn.Module, inputs: torch.Tensor, preprocessor: Preprocessor) -> list[dict[str, Any]]:
        # The map is over the image as the model saw it (resized, squared), which for a
        # DICOM or a padded upload is not the file's own picture: the answer carries that
        # view too, so an overlay lines up pixel for pixel.
        return [{"type": "grad_cam", "map": m.round(4).tolist(), "model_input_png": seen}
                for m, seen in zip(grad_cam(model, inputs), model_input_pngs(inputs, preprocessor))]

    def inference_inputs(self, preprocessor: Preprocessor) -> list[dict[str, Any]]:
        return [{"name": "image", "datatype": "UINT8", "shape": [-1, *_pixel_shape(preprocessor)]}]

    def instances_from_tensors(self, preprocessor: Preprocessor, tensors: dict[str, np.ndarray]) -> list[Any]:
        tensor = one_tensor(tensors, "image")
        if tensor.dtype == object:  # BYTES: encoded files, as /v1's base64 strings
            if tensor.ndim != 1:
                raise InputError("image: BYTES files must have shape (N,)")
            return [base64.b64encode(bytes(file)).decode("ascii") for file in tensor]
        return numeric_rows("image", tensor)

    def graph_input(self, preprocessor: Preprocessor) -> tuple[nn.Module, dict[str, Any]]:
        return PixelInput(preprocessor), {"shape": [-1, *_pixel_shape(preprocessor)], "dtype": "float32",
                                          "takes": "pixel values 0-255"}

    def graph_rows(self, preprocessor: Preprocessor, instances: list[Any]) -> np.ndarray:
        pixels = self.decode(preprocessor, instances).astype(np.float32)  # checked, (N, C, H, W)
        return pixels[:, 0] if pixels.shape[1] == 1 else pixels.transpose(0, 2, 3, 1)


def _pixel_shape(preprocessor: Preprocessor) -> list[int]:
    """An image as clients hold it: (H, W) for one channel, else (H, W, C)."""
    channels, height, width = preprocessor.input_shape
    return [height, width] + ([channels] if channels > 1 else [])


class PixelInput(nn.Module):
    """An exported graph's preprocessing: pixels 0-255, (N, H, W) or (N, H, W, C), as
    `transform` makes them, (N, C, H, W) standardised with the train split's statistics."""

    def __init__(self, preprocessor: Preprocessor):
        super().__init__()
        self.channels = preprocessor.input_shape[0]
        self.register_buffer("mean", torch.tensor(preprocessor.stats["mean"], dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(preprocessor.stats["std"], dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        images = pixels.unsqueeze(1) if self.channels == 1 else pixels.permute(0, 3, 1, 2)
        return (images / 255.0 - self.mean) / self.std


def decode_limits(preprocessor: Preprocessor) -> DecodeLimits:
    """What an image file may cost to decode, from the model's input size."""
    _, height, width = preprocessor.input_shape
    return DecodeLimits.for_input(height, width)


def augment_images(images: torch.Tensor, generator: torch.Generator, max_shift: int = 2) -> torch.Tensor:
    """Random horizontal flips and shifts of up to `max_shift` pixels (B, C, H, W)."""
    batch = images.shape[0]
    flip = torch.rand(batch, generator=generator) < 0.5
    images = torch.where(flip[:, None, None, None], images.flip(-1), images)
    padded = nn.functional.pad(images, (max_shift,) * 4, mode="replicate")
    height, width = images.shape[-2:]
    shifts = torch.randint(0, 2 * max_shift + 1, (batch, 2), generator=generator)
    return torch.stack([
        padded[i, :, dy:dy + height, dx:dx + width] for i, (dy, dx) in enumerate(shifts.tolist())
    ])


def grad_cam(model: nn.Module, inputs: torch.Tensor, classes: torch.Tensor | None = None) -> np.ndarray:
    """Grad-CAM (Selvaraju et al. 2017) for each image's predicted class (or `classes`),
    upsampled to the input size and scaled to [0, 1]: (N, H, W). An ensemble's is the
    mean of its members' maps for the class the ensemble predicts."""
    from medray.train.models.ensemble import members_of

    members = members_of(model)
    if members:
        with torch.no_grad():
            chosen = model(inputs).argmax(dim=1)
        return _peak_scaled(torch.from_numpy(np.mean([grad_cam(m, inputs, chosen) for m in members], axis=0)))
    captured: dict[str, torch.Tensor] = {}

    def keep(_module, _inputs, output):
        output.retain_grad()
        captured["maps"] = output

    hook = model.grad_cam_layer().register_forward_hook(keep)
    try:
        with torch.enable_grad():
            logits = model(inputs)
            target = logits.argmax(dim=1) if classes is None else classes
            logits.gather(1, target[:, None]).sum().backward()
    finally:
        hook.remove()
    maps, grads = captured["maps"], captured["maps"].grad
    weights = grads.mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((weights * maps).sum(dim=1, keepdim=True))
    cam = torch.nn.functional.interpolate(cam, size=inputs.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    return _peak_scaled(cam.detach())


def _peak_scaled(maps: torch.Tensor) -> np.ndarray:
    peak = maps.flatten(1).max(dim=1).values.clamp_min(1e-12)[:, None, None]
    return (maps / peak).numpy()


def model_input_pngs(inputs: torch.Tensor, preprocessor: Preprocessor) -> list[str]:
    """Each standardised input (N, C, H, W) back as the 0-255 picture the model took, a
    base64 PNG: `transform` inverted with the same train-split mean and std."""
    import io

    from PIL import Image

    mean = np.asarray(preprocessor.stats["mean"], dtype=np.float64)[None, :, None, None]
    std = np.asarray(preprocessor.stats["std"], dtype=np.float64)[None, :, None, None]
    pixels = np.clip(np.rint((inputs.detach().double().numpy() * std + mean) * 255.0), 0, 255).astype(np.uint8)
    encoded = []
    for picture in pixels:
        buffer = io.BytesIO()
        Image.fromarray(picture[0] if len(picture) == 1 else picture.transpose(1, 2, 0)).save(buffer, format="PNG")
        encoded.append(base64.b64encode(buffer.getvalue()).decode("ascii"))
    return encoded


def _instance(preprocessor: Preprocessor, index: int, item: Any) -> np.ndarray:
    """One request instance (nested array or base64 file) as (C, H, W) pixels."""
    field = f"instances[{index}]"
    if isinstance(item, str):
        try:
            data = base64.b64decode(item, validate=True)
        except (binascii.Error, ValueError):
            raise InputError(f"{field}: a string must be a base64-encoded PNG, JPEG or DICOM file") from None
        return _encoded_image(preprocessor, field, data)
    channels, height, width = preprocessor.input_shape
    array = numeric_array(field, item, max_ndim=3)
    given = tuple(array.shape)
    if array.ndim == 2 and channels == 1:
        array = array[None]
    elif array.ndim == 3 and array.shape[-1] == channels and array.shape[0] != channels:
        array = np.transpose(array, (2, 0, 1))
    if array.shape != (channels, height, width):
        wanted = f"({height}, {width})" if channels == 1 else f"({height}, {width}, {channels})"
        raise InputError(f"{field}: image must have shape {wanted}, got {given}")
    low, high = PIXEL_RANGE
    check_numbers(field, array, low, high, "pixel values ")
    return array


def _file_bytes(item: Any) -> bytes | None:
    """An uploaded file, or a base64 instance's file (decode already checked it); else None."""
    if isinstance(item, (bytes, bytearray)):
        return bytes(item)
    return base64.b64decode(item, validate=True) if isinstance(item, str) else None


def _encoded_image(preprocessor: Preprocessor, field: str, data: bytes) -> np.ndarray:
    channels, height, width = preprocessor.input_shape
    if width != height:
        raise InputError(f"{field}: this model takes {height}x{width} arrays, not image files")
    try:
        image = decode_image(data, height, "L" if channels == 1 else "RGB", decode_limits(preprocessor),
                             preprocessor.stats.get("resize", "stretch"))
    except ImageRefused as refused:
        raise InputError(f"{field} {refused}") from None
    return image[None] if channels == 1 else np.transpose(image, (2, 0, 1))


def _channel_moments(images: np.ndarray, rows_per_step: int = 1024) -> tuple[list[float], list[float]]:
    """Per channel mean and std of (N, C, H, W) uint8 pixels scaled to [0, 1], summed a
    block of rows at a time: 20,000 images of 224x224 as float64 at once would be 8 GB."""
    total = np.zeros(images.shape[1])
    squares = np.zeros(images.shape[1])
    for start in range(0, len(images), rows_per_step):
        block = images[start:start + rows_per_step].astype(np.float64) / 255.0
        total += block.sum(axis=(0, 2, 3))
        squares += np.square(block).sum(axis=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
    return mean.tolist(), np.maximum(std, 1e-6).tolist()


def _channels_first(images: np.ndarray, shape: list[int]) -> np.ndarray:
    """(N, H, W) or (N, H, W, C) -> (N, C, H, W); `shape` is the stored or model shape."""
    if images.ndim == 3:
        return images[:, None, :, :]
    if images.ndim == 4 and images.shape[-1] in (1, 3) and images.shape[1] not in (1, 3):
        return np.transpose(images, (0, 3, 1, 2))
    return images


# Out-of-distribution sets ------------------------------------------------------------


def image_ood_sets(preprocessor: Preprocessor, test_images: np.ndarray,
                   rng: np.random.Generator) -> dict[str, OODSet]:
    """Images unlike the training set's, in its stored form ((N, H, W) or (N, H, W, C) uint8).

    far: pydicom's bundled test images by DICOM Modality (CT, MR, the rest: CR, US, NM,
    secondary captures...; identical pixel data in several transfer syntaxes counted
    once), scikit-learn's handwritten digits, blank frames of one grey level, uniform
    noise. near: the test images upside down and rotated by 90 degrees (not mirrored
    left-right: training augments with that flip, so it is in distribution by design).
    """
    stored = test_images.shape[1:]
    count = len(test_images)
    sets = {name: OODSet(images, "far") for name, images in _pydicom_images(stored).items()}
    sets["handwritten_digits"] = OODSet(_digit_images(stored, rng, max(count, 1)), "far")
    levels = rng.integers(0, 256, size=(count,) + (1,) * len(stored))
    sets["blank"] = OODSet(np.broadcast_to(levels, (count, *stored)).astype(np.uint8), "far")
    sets["noise"] = OODSet(rng.integers(0, 256, size=(count, *stored)).astype(np.uint8), "far")
    sets["flipped_vertically"] = OODSet(np.ascontiguousarray(test_images[:, ::-1]), "near")
    if stored[0] == stored[1]:  # a rotated non-square image no longer has the model's shape
        sets["rotated_90"] = OODSet(np.ascontiguousarray(np.rot90(test_images, k=1, axes=(1, 2))), "near")
    return sets


def _as_stored(image: np.ndarray, stored: tuple[int, ...]) -> np.ndarray:
    """A decoded (S, S) grey or (S, S, 3) RGB uint8 image resized to `stored`."""
    from PIL import Image

    height, width = stored[:2]
    mode = "L" if len(stored) == 2 else "RGB"
    picture = Image.fromarray(image).convert(mode)
    if picture.size != (width, height):
        picture = picture.resize((width, height), Image.Resampling.BILINEAR)
    array = np.asarray(picture, dtype=np.uint8)
    if len(stored) == 3 and stored[2] != 3:  # a channel count other than grey or RGB
        array = np.repeat(np.asarray(picture.convert("L"))[:, :, None], stored[2], axis=2)
    return array


@functools.lru_cache(maxsize=4)
def _pydicom_images_cached(stored: tuple[int, ...]) -> dict[str, np.ndarray]:
    from pydicom.data import get_testdata_files

    groups: dict[str, list[np.ndarray]] = {}
    seen: set[bytes] = set()
    size = max(stored[:2])
    for path in sorted(get_testdata_files()):  # the files installed with pydicom; nothing downloaded
        try:
            with open(path, "rb") as handle:
                data = handle.read()
        except OSError:  # a folder among them
            continue
        try:
            decoded = decode_image(data, size, "L" if len(stored) == 2 else "RGB")
        except ImageRefused:  # not an image, compressed with a codec not installed, no pixels, ...
            continue
        image = _as_stored(decoded, stored)
        pixels = image.tobytes()
        if pixels in seen:
            continue
        seen.add(pixels)
        kind = dicom_metadata(data).get("Modality", "")  # {} for a PNG or JPEG, or a header it cannot read
        group = f"pydicom_{kind.lower()}" if kind in ("CT", "MR") else "pydicom_other"
        groups.setdefault(group, []).append(image)
    return {name: np.stack(images) for name, images in sorted(groups.items())}


def _pydicom_images(stored: tuple[int, ...]) -> dict[str, np.ndarray]:
    """pydicom's test images that decode, in stored form, per group (decoded once per shape)."""
    return {name: images.copy() for name, images in _pydicom_images_cached(tuple(stored)).items()}


def _digit_images(stored: tuple[int, ...], rng: np.random.Generator, count: int) -> np.ndarray:
    """`count` of scikit-learn's 1,797 handwritten digits (8x8, 0-16) as 0-255 images of `stored`."""
    from sklearn.datasets import load_digits

    digits = load_digits().images
    chosen = digits[rng.permutation(len(digits))[:count]]
    return np.stack([_as_stored((d * (255.0 / 16.0)).round().astype(np.uint8), stored) for d in chosen])
