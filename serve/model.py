"""One registry version as a predictor: JSON instances in, clinical answers out.

Pure PyTorch and NumPy, no Ray: the Serve deployment (`serve/deployments.py`) is a thin
layer over `ServedModel`, and the tests and the throughput baseline call it directly.

What a request may hold, how it is decoded and how an answer is explained are the
model's modality's (`medray.train.modalities`). Request problems raise `InputError`, whose
message names the field and the problem and never the submitted value (which may be
patient data). Every number a request carries goes through one check
(`modalities.check_numbers`): finite, and inside the range the checkpoint's
preprocessing accepts (`Preprocessor.accepted_range`, fitted on the train split); values
outside are refused, not clamped. The model's outputs are checked too: an answer whose
logits or probabilities are not finite probabilities is refused, never labelled.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medray.cluster.errors import InputError
from medray.cluster.registry import Registry
from medray.train.checkpoint import CALIBRATION, MODEL_FILES, ModelBundle, load_bundle
from medray.train.evaluate import apply_temperature, prediction_sets
from medray.train.modalities import Modality, modality

SERVED_FILES = (*MODEL_FILES, CALIBRATION)
__all__ = ["InputError", "ServedModel"]  # InputError lives in cluster.errors, below the modality modules


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
            calibration = json.loads((Path(folder) / CALIBRATION).read_text())
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

    @property
    def kind(self) -> Modality:
        return modality(self.modality)

    def input_schema(self) -> dict[str, Any]:
        return self.kind.input_schema(self.bundle.preprocessor)

    # Requests -> model inputs ---------------------------------------------------------
    def decode(self, instances: list[Any]) -> torch.Tensor:
        """Validate and transform instances into the model's input tensor (N, ...)."""
        if not isinstance(instances, list) or not instances:
            raise InputError("instances: must be a non-empty list")
        pre = self.bundle.preprocessor
        return torch.from_numpy(pre.transform(self.kind.decode(pre, instances)))

    def decode_file(self, data: bytes) -> torch.Tensor:
        """An uploaded file (an image model's PNG, JPEG or DICOM) as a batch of one."""
        pre = self.bundle.preprocessor
        return torch.from_numpy(pre.transform(self.kind.decode_file(pre, data, self.name)))

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
        """Why, per instance, for the predicted class: the modality's explanation (Grad-CAM
        for images, attention over features for records, per-time-step saliency for signals)."""
        self.bundle.model.eval()
        return self.kind.explain(self.bundle.model, inputs, self.bundle.preprocessor)


def _is_distribution(p: np.ndarray) -> bool:
    return bool(np.isfinite(p).all() and (p >= 0).all() and (p <= 1).all() and abs(p.sum() - 1.0) < 1e-6)
