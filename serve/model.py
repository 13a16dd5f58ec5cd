"""One registry version as a predictor: JSON instances in, clinical answers out.

Pure PyTorch and NumPy, no Ray: the Serve deployment (`serve/deployments.py`) is a thin
layer over `ServedModel`, and the tests and the throughput baseline call it directly.

Request problems raise `InputError`, whose message names the field and the problem and
never the submitted value (which may be patient data).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import tempfile
from dataclasses import dataclass
from numbers import Real
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cluster.registry import Registry
from train.checkpoint import ModelBundle, load_bundle
from train.data.dataset import DataImportError
from train.data.images import decode_image
from train.evaluate import apply_temperature, prediction_sets

SERVED_FILES = ("weights.pt", "model.json", "data.json", "calibration.json")


class InputError(ValueError):
    """A request the model cannot take; the API answers 422 with this message."""


@dataclass
class ServedModel:
    name: str
    version: int
    bundle: ModelBundle
    temperature: float
    threshold: float | None
    """Operating threshold on the calibrated P(positive class), chosen on val (binary)."""
    conformal_quantile: float | None
    coverage: float | None

    # Loading ---------------------------------------------------------------------
    @classmethod
    def from_registry(cls, registry: Registry, name: str, version: int) -> "ServedModel":
        """Rebuild the version from its own files, each checked against its sha256."""
        info = registry.version_info(name, version)
        with tempfile.TemporaryDirectory(prefix="medray-serve-") as folder:
            for filename in SERVED_FILES:
                (Path(folder) / filename).write_bytes(registry.read_file(name, version, filename, info))
            bundle = load_bundle(folder)
            calibration = json.loads((Path(folder) / "calibration.json").read_text())
        conformal = calibration.get("conformal") or {}
        return cls(name, version, bundle, float(calibration["temperature"]), calibration.get("threshold"),
                   conformal.get("quantile"), conformal.get("target"))

    @property
    def modality(self) -> str:
        return self.bundle.preprocessor.modality

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "modality": self.modality,
                "classes": self.bundle.classes, "dataset": self.bundle.dataset, "family": self.bundle.family,
                "threshold": self.threshold, "coverage": self.coverage, "input": self.input_schema()}

    def input_schema(self) -> dict[str, Any]:
        pre = self.bundle.preprocessor
        if self.modality == "image":
            channels, height, width = pre.input_shape
            return {"type": "image", "height": height, "width": width, "channels": channels,
                    "pixel_range": [0, 255],
                    "accepts": ["nested array (H, W) or (H, W, C)", "base64 PNG, JPEG or DICOM string"]}
        if self.modality == "signal":
            length, channels = pre.input_shape
            return {"type": "signal", "length": length, "channels": channels,
                    "accepts": ["array of length L (one channel) or (L, C)"]}
        return {"type": "record", "features": [
            {"name": c["name"], "type": c["type"], **({"categories": c["categories"]} if "categories" in c else {})}
            for c in pre.stats["columns"]], "accepts": ["object keyed by feature name; null is imputed"]}

    # Requests -> model inputs ---------------------------------------------------------
    def decode(self, instances: list[Any]) -> torch.Tensor:
        """Validate and transform instances into the model's input tensor (N, ...)."""
        if not isinstance(instances, list) or not instances:
            raise InputError("instances: must be a non-empty list")
        pre = self.bundle.preprocessor
        if self.modality == "tabular":
            columns = self._records(instances)
            return torch.from_numpy(pre.transform(columns))
        if self.modality == "image":
            arrays = np.stack([self._image(i, item) for i, item in enumerate(instances)])
        else:
            arrays = np.stack([self._signal(i, item) for i, item in enumerate(instances)])
        return torch.from_numpy(pre.transform(arrays))

    def decode_file(self, data: bytes) -> torch.Tensor:
        """An uploaded image file (PNG, JPEG or DICOM) as a batch of one."""
        if self.modality != "image":
            raise InputError(f"file: model '{self.name}' takes {self.modality} input, not image files")
        return torch.from_numpy(self.bundle.preprocessor.transform(self._encoded_image("file", data)[None]))

    def _image(self, index: int, item: Any) -> np.ndarray:
        field = f"instances[{index}]"
        if isinstance(item, str):
            try:
                data = base64.b64decode(item, validate=True)
            except (binascii.Error, ValueError):
                raise InputError(f"{field}: a string must be a base64-encoded PNG, JPEG or DICOM file") from None
            return self._encoded_image(field, data)
        channels, height, width = self.bundle.preprocessor.input_shape
        array = _numeric_array(field, item)
        given = tuple(array.shape)
        if array.ndim == 2 and channels == 1:
            array = array[None]
        elif array.ndim == 3 and array.shape[-1] == channels and array.shape[0] != channels:
            array = np.transpose(array, (2, 0, 1))
        if array.shape != (channels, height, width):
            wanted = f"({height}, {width})" if channels == 1 else f"({height}, {width}, {channels})"
            raise InputError(f"{field}: image must have shape {wanted}, got {given}")
        if array.min() < 0 or array.max() > 255:
            raise InputError(f"{field}: pixel values must lie in [0, 255]")
        return array

    def _encoded_image(self, field: str, data: bytes) -> np.ndarray:
        channels, height, width = self.bundle.preprocessor.input_shape
        try:
            image = decode_image(data, height, "L" if channels == 1 else "RGB", name=field)
        except DataImportError as error:
            raise InputError(str(error)) from None
        if width != height:
            raise InputError(f"{field}: this model takes {height}x{width} arrays, not image files")
        return image[None] if channels == 1 else np.transpose(image, (2, 0, 1))

    def _signal(self, index: int, item: Any) -> np.ndarray:
        field = f"instances[{index}]"
        length, channels = self.bundle.preprocessor.input_shape
        array = _numeric_array(field, item)
        given = tuple(array.shape)
        if array.ndim == 1 and channels == 1:
            array = array[:, None]
        if array.shape != (length, channels):
            wanted = f"({length},)" if channels == 1 else f"({length}, {channels})"
            raise InputError(f"{field}: signal must have shape {wanted}, got {given}")
        return array

    def _records(self, instances: list[Any]) -> dict[str, np.ndarray]:
        columns = self.bundle.preprocessor.stats["columns"]
        names = [c["name"] for c in columns]
        values: dict[str, list[Any]] = {name: [] for name in names}
        for index, record in enumerate(instances):
            field = f"instances[{index}]"
            if not isinstance(record, dict):
                raise InputError(f"{field}: must be an object keyed by feature name")
            missing = [name for name in names if name not in record]
            if missing:
                raise InputError(f"{field}: missing feature(s) {', '.join(missing)} (send null for an unknown value)")
            extra = len(set(record) - set(names))
            if extra:  # unknown keys are not named back: they are the caller's text
                raise InputError(f"{field}: {extra} feature(s) the model does not take; "
                                 f"it takes exactly: {', '.join(names)}")
            for column in columns:
                values[column["name"]].append(_feature(f"{field}.{column['name']}", column, record[column["name"]]))
        return {name: np.asarray(v, dtype=object if c["type"] == "categorical" else np.float64)
                for (name, v), c in zip(values.items(), columns)}

    # Predictions ----------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, inputs: torch.Tensor) -> list[dict[str, Any]]:
        self.bundle.model.eval()
        logits = self.bundle.model(inputs).double().numpy()
        return self.answers(logits)

    def answers(self, logits: np.ndarray) -> list[dict[str, Any]]:
        classes = self.bundle.classes
        raw = apply_temperature(logits, 1.0)
        calibrated = apply_temperature(logits, self.temperature)
        if self.threshold is not None and len(classes) == 2:
            labels = (calibrated[:, 1] >= self.threshold).astype(int)
        else:
            labels = calibrated.argmax(axis=1)
        sets = prediction_sets(calibrated, self.conformal_quantile) if self.conformal_quantile is not None else None
        out = []
        for i in range(len(logits)):
            answer = {
                "probabilities": dict(zip(classes, map(float, raw[i]))),
                "calibrated_probabilities": dict(zip(classes, map(float, calibrated[i]))),
                "label": classes[labels[i]],
                "model": self.name,
                "version": self.version,
            }
            if sets is not None:
                members = [c for c, keep in zip(classes, sets[i]) if keep]
                answer.update(prediction_set=members, coverage=self.coverage, refer_to_clinician=len(members) > 1)
            out.append(answer)
        return out

    # Explanations ---------------------------------------------------------------------
    def explain(self, inputs: torch.Tensor) -> list[dict[str, Any]]:
        """Why, per instance, for the predicted class: Grad-CAM (cnn), attention over
        features (attention), per-time-step saliency (rnn)."""
        model = self.bundle.model
        model.eval()
        if self.bundle.family == "attention":
            with torch.no_grad():
                weights = model.attention_weights(inputs).double().numpy()
            names = self.bundle.preprocessor.feature_names
            return [{"type": "attention", "features": dict(zip(names, map(float, row)))} for row in weights]
        if self.bundle.family == "cnn":
            return [{"type": "grad_cam", "map": m.round(4).tolist()} for m in grad_cam(model, inputs)]
        return [{"type": "saliency", "per_time_step": s.round(4).tolist()} for s in saliency(model, inputs)]


def grad_cam(model: torch.nn.Module, inputs: torch.Tensor) -> np.ndarray:
    """Grad-CAM (Selvaraju et al. 2017) for each image's predicted class, upsampled to the
    input size and scaled to [0, 1]: (N, H, W)."""
    captured: dict[str, torch.Tensor] = {}

    def keep(_module, _inputs, output):
        output.retain_grad()
        captured["maps"] = output

    hook = model.grad_cam_layer().register_forward_hook(keep)
    try:
        with torch.enable_grad():
            logits = model(inputs)
            chosen = logits.gather(1, logits.argmax(dim=1, keepdim=True)).sum()
            chosen.backward()
    finally:
        hook.remove()
    maps, grads = captured["maps"], captured["maps"].grad
    weights = grads.mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((weights * maps).sum(dim=1, keepdim=True))
    cam = torch.nn.functional.interpolate(cam, size=inputs.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    peak = cam.flatten(1).max(dim=1).values.clamp_min(1e-12)[:, None, None]
    return (cam / peak).detach().numpy()


def saliency(model: torch.nn.Module, inputs: torch.Tensor) -> np.ndarray:
    """|d logit(predicted class) / d input| summed over channels, scaled to [0, 1]: (N, L)."""
    x = inputs.clone().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        logits.gather(1, logits.argmax(dim=1, keepdim=True)).sum().backward()
    grads = x.grad.abs().sum(dim=-1)
    return (grads / grads.max(dim=1, keepdim=True).values.clamp_min(1e-12)).detach().numpy()


def _numeric_array(field: str, item: Any) -> np.ndarray:
    if not isinstance(item, list):
        raise InputError(f"{field}: must be an array of numbers")
    try:
        array = np.asarray(item)  # JSON numbers only: strings, booleans and nulls are refused
    except (ValueError, TypeError):
        raise InputError(f"{field}: must be a rectangular array of numbers") from None
    if array.dtype.kind not in "iuf" or array.size == 0:
        raise InputError(f"{field}: must be a rectangular, non-empty array of numbers")
    array = array.astype(np.float64)
    if not np.isfinite(array).all():
        raise InputError(f"{field}: holds NaN or infinity")
    return array


def _feature(field: str, column: dict[str, Any], value: Any) -> Any:
    if column["type"] == "categorical":
        if value is None:
            return None
        if str(value) not in column["categories"]:
            raise InputError(f"{field}: not one of the categories {', '.join(column['categories'])}")
        return str(value)
    if value is None:
        return math.nan  # imputed with the training median, as in training
    if isinstance(value, bool) or not isinstance(value, Real):
        raise InputError(f"{field}: must be a number or null")
    if not math.isfinite(value):
        raise InputError(f"{field}: must be finite")
    return float(value)
