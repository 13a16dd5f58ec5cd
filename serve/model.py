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

Every answer says whether the input is out of distribution (unlike the training data):
its file's metadata differs from the training set's (a DICOM's Modality, say), or the
version's detector (`medray.train.ood`, in calibration.json) scores it above its
threshold. Such an input is referred to a clinician whatever its prediction set; a
version stored without a detector answers `out_of_distribution: null`.
"""

from __future__ import annotations

import functools
import json
import logging
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
from medray.train.ood import OODDetector

SERVED_FILES = (*MODEL_FILES, CALIBRATION)
log = logging.getLogger(__name__)
__all__ = ["InputError", "Inputs", "ServedModel"]  # InputError lives in cluster.errors, below the modality modules


@dataclass(frozen=True)
class Inputs:
    """Decoded request instances: the model's input tensor (N, ...) and, per instance, the
    metadata fields of its file that differ from the training set's (none for arrays)."""

    tensor: torch.Tensor
    metadata_mismatch: tuple[tuple[str, ...], ...]

    def __len__(self) -> int:
        return len(self.tensor)


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
    ood: OODDetector | None = None
    """Out-of-distribution detector fitted at promotion; None for versions stored before it."""
    card: dict[str, Any] | None = None
    """What a person choosing the model reads first (`card_summary`); None when unknown."""
    session: Any = None
    """An ONNX Runtime session over the network (`serve.runtime: onnx`); None: PyTorch runs it.
    Explanations take gradients, so they always run in PyTorch."""

    # Loading ---------------------------------------------------------------------
    @classmethod
    def from_registry(cls, registry: Registry, name: str, version: int, runtime: str = "torch") -> "ServedModel":
        """Rebuild the version from its own files, each checked against its sha256;
        `runtime` "onnx" runs its forward pass in ONNX Runtime (see `with_runtime`)."""
        info = registry.version_info(name, version)
        with tempfile.TemporaryDirectory(prefix="medray-serve-") as folder:
            for filename in SERVED_FILES:
                (Path(folder) / filename).write_bytes(registry.read_file(name, version, filename, info))
            bundle = load_bundle(folder)
            calibration = json.loads((Path(folder) / CALIBRATION).read_text())
        conformal = calibration.get("conformal") or {}
        ood = OODDetector.from_dict(calibration["ood"]) if calibration.get("ood") else None
        card_text = registry.read_file(name, version, CARD, info).decode() if CARD in info["files"] else ""
        model = cls(name, version, bundle, float(calibration["temperature"]), calibration.get("threshold"),
                    conformal.get("quantile"), conformal.get("target"), ood, card_summary(info, card_text))
        return model.with_runtime(runtime)

    def with_runtime(self, runtime: str) -> "ServedModel":
        """This model with its forward pass in `runtime`: "torch", or "onnx" (ONNX Runtime on
        the network exported at load; measured 1.8x PyTorch's batched forward on one CPU
        thread for the image CNN). A network the exporter cannot take is served by PyTorch,
        with a warning."""
        if runtime == "torch":
            return self
        if runtime != "onnx":
            raise ValueError(f"unknown serving runtime {runtime!r}; choose torch or onnx")
        from medray.serve.export import onnx_session

        try:
            self.session = onnx_session(self)
        except Exception as error:  # an operator without an ONNX form: torch still serves it
            log.warning("model %s version %d: ONNX export failed (%s), serving it with PyTorch",
                        self.name, self.version, type(error).__name__)
        return self

    @property
    def modality(self) -> str:
        return self.bundle.preprocessor.modality

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "modality": self.modality,
                "classes": self.bundle.classes, "dataset": self.bundle.dataset, "family": self.bundle.family,
                "threshold": self.threshold, "coverage": self.coverage, "input": self.input_schema(),
                "ood": self.ood.summary() if self.ood is not None else None, "card": self.card}

    @functools.cached_property
    def kind(self) -> Modality:
        """The modality's methods, looked up once: every request goes through them."""
        return modality(self.modality)

    def input_schema(self) -> dict[str, Any]:
        return self.kind.input_schema(self.bundle.preprocessor)

    # Requests -> model inputs ---------------------------------------------------------
    def decode(self, instances: list[Any]) -> Inputs:
        """Validate and transform instances into the model's `Inputs` (N, ...)."""
        if not isinstance(instances, list) or not instances:
            raise InputError("instances: must be a non-empty list")
        return self._inputs(self.kind.decode(self.bundle.preprocessor, instances), instances)

    def decode_tensors(self, tensors: dict[str, np.ndarray]) -> Inputs:
        """An Open Inference Protocol request's tensors, as the instances `decode` takes."""
        return self.decode(self.kind.instances_from_tensors(self.bundle.preprocessor, tensors))

    @functools.cached_property
    def protocol_outputs(self) -> list[str]:
        """The Open Inference Protocol outputs this version gives, by name: fixed when it
        loads, so no request rebuilds `info()` to find them."""
        from medray.serve.inference_protocol import output_specs

        return [spec["name"] for spec in output_specs(self.info())]

    def protocol_metadata(self) -> dict[str, Any]:
        """`GET /v2/models/{name}`: the tensors this model takes and gives."""
        from medray.serve.inference_protocol import model_metadata

        return model_metadata(self.info(), self.kind.inference_inputs(self.bundle.preprocessor))

    def decode_file(self, data: bytes) -> Inputs:
        """An uploaded file (an image model's PNG, JPEG or DICOM) as a batch of one."""
        return self._inputs(self.kind.decode_file(self.bundle.preprocessor, data, self.name), [data])

    def _inputs(self, batch: Any, sent: list[Any]) -> Inputs:
        """The decoded `batch` preprocessed, with the metadata mismatches of what was `sent`."""
        pre = self.bundle.preprocessor
        tensor = torch.from_numpy(pre.transform(batch))
        return Inputs(tensor, tuple(map(tuple, self.kind.metadata_mismatches(pre, sent))))

    # Predictions ----------------------------------------------------------------------
    def predict(self, inputs: Inputs) -> list[dict[str, Any]]:
        """One answer per input; `InputError` naming `instances[i]` when the model gave
        no usable answer for input i (see `answers`)."""
        embeddings, logits = self._forward(inputs.tensor)
        return self.answers(logits, embeddings, inputs.metadata_mismatch)

    def predict_requests(self, requests: list[Inputs]) -> list[dict[str, Any]]:
        """Several requests' inputs in one forward pass, answered per request as
        {"predictions": [...]} or {"error": message}: an unusable answer for one request's
        instance refuses that request alone, its index counted within the request."""
        embeddings, logits = self._forward(torch.cat([r.tensor for r in requests]))
        out, start = [], 0
        for inputs in requests:
            rows = slice(start, start + len(inputs))
            try:
                out.append({"predictions": self.answers(logits[rows], embeddings[rows], inputs.metadata_mismatch)})
            except InputError as error:
                out.append({"error": str(error)})
            start += len(inputs)
        return out

    @torch.no_grad()
    def _forward(self, tensor: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """(penultimate features, logits) as float64, from one pass."""
        if self.session is not None:
            embeddings, logits = self.session.run(None, {"input": tensor.numpy()})
            return embeddings.astype(np.float64), logits.astype(np.float64)
        self.bundle.model.eval()
        embeddings, logits = self.bundle.model.features_and_logits(tensor)
        return embeddings.double().numpy(), logits.double().numpy()

    def out_of_distribution(self, embeddings: np.ndarray, logits: np.ndarray,
                            metadata_mismatch: tuple[tuple[str, ...], ...]) -> list[dict[str, Any]]:
        """Per row: `out_of_distribution` (True, False, or None when the version has no
        detector and the metadata says nothing), `ood_score` (None without a detector) and
        `ood_reasons` (what made it out of distribution; names of fields, never values)."""
        scores = self.ood.score(embeddings, logits) if self.ood is not None else None
        verdicts = []
        for i, mismatched in enumerate(metadata_mismatch):
            reasons = [f"file metadata {field} differs from the training set's" for field in mismatched]
            score = None
            if scores is not None:
                score = float(scores[i]) if np.isfinite(scores[i]) else None
                if not scores[i] <= self.ood.threshold:  # a score that is not finite is flagged too
                    reasons.append(f"{self.ood.method} score above the threshold {self.ood.threshold:.4g}")
            flagged = bool(reasons) if (scores is not None or reasons) else None
            verdicts.append({"out_of_distribution": flagged, "ood_score": score, "ood_reasons": reasons})
        return verdicts

    def answers(self, logits: np.ndarray, embeddings: np.ndarray | None = None,
                metadata_mismatch: tuple[tuple[str, ...], ...] | None = None) -> list[dict[str, Any]]:
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
        if embeddings is None and self.ood is not None and self.ood.method == "mahalanobis":
            raise ValueError("this model's OOD detector needs the penultimate features with the logits")
        ood = self.out_of_distribution(embeddings, logits, metadata_mismatch or ((),) * len(logits))
        out = []
        for i in range(len(logits)):
            answer = {
                "probabilities": dict(zip(classes, map(float, raw[i]))),
                "calibrated_probabilities": dict(zip(classes, map(float, calibrated[i]))),
                "label": classes[labels[i]],
                "model": self.name,
                "version": self.version,
                **ood[i],
            }
            if sets is not None:
                members = [c for c, keep in zip(classes, sets[i]) if keep]
                answer.update(prediction_set=members, coverage=self.coverage)
            if sets is not None or ood[i]["out_of_distribution"]:
                # The set covers the true class only for inputs like the training data.
                answer["refer_to_clinician"] = bool(ood[i]["out_of_distribution"] or len(answer["prediction_set"]) > 1)
            out.append(answer)
        return out

    # Explanations ---------------------------------------------------------------------
    def explain(self, inputs: Inputs) -> list[dict[str, Any]]:
        """Why, per instance, for the predicted class: the modality's explanation (Grad-CAM
        for images, attention over features for records, per-time-step saliency for signals)."""
        self.bundle.model.eval()
        return self.kind.explain(self.bundle.model, inputs.tensor, self.bundle.preprocessor)


CARD = "model_card.md"
HEADLINE = ("auroc", "auroc_ci", "accuracy", "sensitivity", "specificity", "ece_calibrated", "n")


def card_summary(info: dict[str, Any], card_text: str) -> dict[str, Any]:
    """The model card's intended use and the version's test metrics (as registered at
    promotion), for the model list and the web page. Figures over the test split only:
    aggregates, never a case."""
    test = (info.get("metrics") or {}).get("test") or {}
    return {"intended_use": markdown_section(card_text, "Intended use"),
            "test_metrics": {key: test[key] for key in HEADLINE if test.get(key) is not None},
            "registered_at": info.get("created_at")}


def markdown_section(text: str, heading: str) -> str | None:
    """The text under `## heading` up to the next heading, or None."""
    found, body = False, []
    for line in text.splitlines():
        if line.startswith("## "):
            if found:
                break
            found = line[3:].strip() == heading
        elif found:
            body.append(line)
    return "\n".join(body).strip() or None


def _is_distribution(p: np.ndarray) -> bool:
    return bool(np.isfinite(p).all() and (p >= 0).all() and (p <= 1).all() and abs(p.sum() - 1.0) < 1e-6)
