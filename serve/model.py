"""One registry version as a predictor: JSON instances in, clinical answers out.

Pure PyTorch and NumPy, no Ray: the Serve deployment (`serve/deployments.py`) is a thin
layer over `ServedModel`, and the tests and the throughput baseline call it directly.

Request problems raise `InputError`, whose message names the field and the problem and
never the submitted value (which may be patient data). Every number a request carries
goes through one check (`_check_numbers`): finite, and inside the range the checkpoint's
preprocessing accepts (`Preprocessor.accepted_range`, fitted on the train split); values
outside are refused, not clamped. Image files go through the bounded decoder import
uses (`train/data/decode.py`). The model's outputs are checked too: an answer whose
logits or probabilities are not finite probabilities is refused, never labelled.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medray.cluster.registry import Registry
from medray.serve.schemas import InputError
from medray.train.checkpoint import ModelBundle, load_bundle
from medray.train.data.decode import DecodeLimits, ImageRefused, decode_image
from medray.train.evaluate import apply_temperature, prediction_sets

SERVED_FILES = ("weights.pt", "model.json", "data.json", "calibration.json")
__all__ = ["InputError", "ServedModel"]  # InputError lives in serve.schemas, for the torch-free ingress


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
                    "value_ranges": [list(pre.accepted_range(c)) for c in range(channels)],
                    "accepts": ["array of length L (one channel) or (L, C)"]}
        return {"type": "record", "features": [
            {"name": c["name"], "type": c["type"], **({"categories": c["categories"]} if "categories" in c
                                                      else {"range": list(pre.accepted_range(c["name"]))})}
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

    @property
    def decode_limits(self) -> DecodeLimits:
        """What an image file may cost to decode, from the model's input size."""
        _, height, width = self.bundle.preprocessor.input_shape
        return DecodeLimits.for_input(height, width)

    def _image(self, index: int, item: Any) -> np.ndarray:
        field = f"instances[{index}]"
        if isinstance(item, str):
            try:
                data = base64.b64decode(item, validate=True)
            except (binascii.Error, ValueError):
                raise InputError(f"{field}: a string must be a base64-encoded PNG, JPEG or DICOM file") from None
            return self._encoded_image(field, data)
        pre = self.bundle.preprocessor
        channels, height, width = pre.input_shape
        array = _numeric_array(field, item, max_ndim=3)
        given = tuple(array.shape)
        if array.ndim == 2 and channels == 1:
            array = array[None]
        elif array.ndim == 3 and array.shape[-1] == channels and array.shape[0] != channels:
            array = np.transpose(array, (2, 0, 1))
        if array.shape != (channels, height, width):
            wanted = f"({height}, {width})" if channels == 1 else f"({height}, {width}, {channels})"
            raise InputError(f"{field}: image must have shape {wanted}, got {given}")
        low, high = pre.accepted_range(0)
        _check_numbers(field, array, low, high, "pixel values ")
        return array

    def _encoded_image(self, field: str, data: bytes) -> np.ndarray:
        channels, height, width = self.bundle.preprocessor.input_shape
        if width != height:
            raise InputError(f"{field}: this model takes {height}x{width} arrays, not image files")
        try:
            image = decode_image(data, height, "L" if channels == 1 else "RGB", self.decode_limits)
        except ImageRefused as refused:
            raise InputError(f"{field} {refused}") from None
        return image[None] if channels == 1 else np.transpose(image, (2, 0, 1))

    def _signal(self, index: int, item: Any) -> np.ndarray:
        field = f"instances[{index}]"
        pre = self.bundle.preprocessor
        length, channels = pre.input_shape
        array = _numeric_array(field, item, max_ndim=2)
        given = tuple(array.shape)
        if array.ndim == 1 and channels == 1:
            array = array[:, None]
        if array.shape != (length, channels):
            wanted = f"({length},)" if channels == 1 else f"({length}, {channels})"
            raise InputError(f"{field}: signal must have shape {wanted}, got {given}")
        for channel in range(channels):
            low, high = pre.accepted_range(channel)
            what = "values " if channels == 1 else f"channel {channel} values "
            _check_numbers(field, array[:, channel], low, high, what)
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
                values[column["name"]].append(self._feature(f"{field}.{column['name']}", column,
                                                            record[column["name"]]))
        return {name: np.asarray(v, dtype=object if c["type"] == "categorical" else np.float64)
                for (name, v), c in zip(values.items(), columns)}

    def _feature(self, field: str, column: dict[str, Any], value: Any) -> Any:
        if column["type"] == "categorical":
            if value is None:
                return None
            # Only scalars are compared: str() of a deep list recurses, of a huge int raises.
            scalar = isinstance(value, str) or (isinstance(value, (int, float)) and not isinstance(value, bool)
                                                and abs(value) < 1e300)
            if not scalar or str(value) not in column["categories"]:
                raise InputError(f"{field}: not one of the categories {', '.join(column['categories'])}")
            return str(value)
        if value is None:
            return math.nan  # imputed with the training median, as in training
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(f"{field}: must be a number or null")
        try:
            number = float(value)
        except OverflowError:  # an int past float64
            raise InputError(f"{field}: is too large") from None
        low, high = self.bundle.preprocessor.accepted_range(column["name"])
        _check_numbers(field, np.asarray([number]), low, high)
        return number

    # Predictions ----------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, inputs: torch.Tensor) -> list[dict[str, Any]]:
        """One answer per input; `InputError` naming `instances[i]` when the model gave
        no usable answer for input i (see `answers`)."""
        self.bundle.model.eval()
        logits = self.bundle.model(inputs).double().numpy()
        return self.answers(logits)

    def predict_requests(self, requests: list[torch.Tensor]) -> list[dict[str, Any]]:
        """Several requests' inputs in one forward pass, answered per request as
        {"predictions": [...]} or {"error": message}: an unusable answer for one request's
        instance refuses that request alone, its index counted within the request."""
        self.bundle.model.eval()
        with torch.no_grad():
            logits = self.bundle.model(torch.cat(requests)).double().numpy()
        out, start = [], 0
        for inputs in requests:
            try:
                out.append({"predictions": self.answers(logits[start:start + len(inputs)])})
            except InputError as error:
                out.append({"error": str(error)})
            start += len(inputs)
        return out

    def answers(self, logits: np.ndarray) -> list[dict[str, Any]]:
        """Answers from logits (N, K). A row with a non-finite logit, or probabilities
        that are not finite, in [0, 1] and summing to 1, raises `InputError` naming it:
        a 422 rather than a label, since NaN compares false with every threshold and
        would quietly become the first class. Valid input to a sound model never gets
        here; it takes a broken checkpoint or an input the range checks missed."""
        classes = self.bundle.classes
        logits = np.asarray(logits, dtype=np.float64)
        with np.errstate(all="ignore"):
            raw = apply_temperature(logits, 1.0)
            calibrated = apply_temperature(logits, self.temperature)
        for i in range(len(logits)):
            if not (_is_distribution(raw[i]) and _is_distribution(calibrated[i]) and np.isfinite(logits[i]).all()):
                raise InputError(f"instances[{i}]: the model gave no usable answer for this input "
                                 "(non-finite output); it is refused rather than labelled")
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


def _numeric_array(field: str, item: Any, max_ndim: int) -> np.ndarray:
    """A rectangular nested list of JSON numbers as float64. Booleans are refused (Python
    counts them as ints, NumPy would quietly make them 1 and 0), so are ints past float64.
    Walks one level at a time, never deeper than `max_ndim`, so no input recurses."""
    problem = f"{field}: must be a rectangular, non-empty array of numbers"
    if not isinstance(item, list):
        raise InputError(f"{field}: must be an array of numbers")
    shape, level = [], [item]
    while isinstance(level[0], list):
        width = len(level[0])
        if len(shape) == max_ndim or width == 0 or any(not isinstance(r, list) or len(r) != width for r in level):
            raise InputError(problem)
        shape.append(width)
        level = [x for row in level for x in row]
    if any(isinstance(x, bool) or not isinstance(x, (int, float)) for x in level):
        raise InputError(problem)
    try:
        return np.asarray(level, dtype=np.float64).reshape(shape)
    except OverflowError:  # an int past float64
        raise InputError(f"{field}: holds a number too large for the model") from None


def _check_numbers(field: str, values: np.ndarray, low: float, high: float, what: str = "") -> None:
    """The one check of numeric input, for every modality: finite, and within the
    [low, high] the preprocessing accepts. Messages name the field and `what` ("pixel
    values "), never the values."""
    if not np.isfinite(values).all():
        raise InputError(f"{field}: holds NaN or infinity")
    if (values < low).any() or (values > high).any():
        raise InputError(f"{field}: {what}must lie in [{low:g}, {high:g}]")


def _is_distribution(p: np.ndarray) -> bool:
    return bool(np.isfinite(p).all() and (p >= 0).all() and (p <= 1).all() and abs(p.sum() - 1.0) < 1e-6)
