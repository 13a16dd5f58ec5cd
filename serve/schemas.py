"""Request and response bodies of the `/v1` and `/v2` APIs, as they appear in their OpenAPI
document. (The bounded parser every request body goes through first is
`medray.cluster.bounded_json.parse_json_body`.)

Light on purpose (no torch): the ingress imports this module.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """`model`'s JSON schema with its nested models written in place: an OpenAPI request
    body given as `openapi_extra` cannot point into the schema's own `$defs`."""
    schema = model.model_json_schema()
    definitions = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return resolve(definitions[node["$ref"].rsplit("/", 1)[-1]])
            return {key: resolve(value) for key, value in node.items()}
        return [resolve(value) for value in node] if isinstance(node, list) else node

    return resolve(schema)


class PredictRequest(BaseModel):
    instances: list[Any] = Field(
        ..., description="Images: nested arrays (H, W) or (H, W, C) of 0-255 values, or base64 PNG/JPEG/DICOM "
                         "strings. Signals: arrays of length L, or (L, C). Health records: objects keyed by "
                         "feature name (null for an unknown value). ICU stays: {'static': {name: value}, "
                         "'observations': [{'time': 'HH:MM' or minutes, 'variable': name, 'value': number}]}. "
                         "Clinical text: {'text': '...'}. See GET /v1/models for each model's input.")
    explain: bool = Field(False, description="Add Grad-CAM (cnn), attention over features (attention) or "
                                             "per-time-step saliency (rnn); for ICU stays, saliency over "
                                             "(hour, variable); for text, gradient x input per token "
                                             "(and the readout's attention).")


class Prediction(BaseModel):
    probabilities: dict[str, float]
    calibrated_probabilities: dict[str, float] = Field(description="After temperature scaling fitted on val.")
    label: str = Field(description="The class at the model's operating threshold (chosen on val).")
    prediction_set: list[str] | None = Field(None, description="Split-conformal set at `coverage`.")
    coverage: float | None = None
    refer_to_clinician: bool | None = Field(
        None, description="True when the set holds more than one class, or the input is out of distribution.")
    out_of_distribution: bool | None = Field(
        None, description="True when the input is unlike the training data (its file's metadata differs from "
                          "the training set's, or the OOD score is above the threshold chosen on val); null "
                          "when the model version has no OOD detector.")
    ood_score: float | None = Field(None, description="Higher = less like the training data; null without a "
                                                      "detector.")
    ood_reasons: list[str] = Field([], description="What made the input out of distribution.")
    model: str
    version: int
    explanation: dict[str, Any] | None = None


class PredictResponse(BaseModel):
    predictions: list[Prediction]


class ModelInfo(BaseModel):
    name: str
    version: int
    modality: str
    family: str
    classes: list[str]
    dataset: str
    threshold: float | None
    coverage: float | None
    input: dict[str, Any]
    ood: dict[str, Any] | None = None
    card: dict[str, Any] | None = Field(None, description="From the model card: intended use, and the test "
                                                          "metrics registered at promotion.")


class ModelList(BaseModel):
    models: list[ModelInfo]


class InferTensor(BaseModel):
    name: str
    datatype: str = Field(description="BOOL, UINT8-64, INT8-64, FP16, FP32, FP64 or BYTES.")
    shape: list[int]
    data: list[Any] | None = Field(None, description="Row-major elements, flat or nested; or leave it out and "
                                                     "send the bytes after the JSON (binary tensor data extension).")
    parameters: dict[str, Any] | None = None


class InferRequest(BaseModel):
    """An Open Inference Protocol (KServe v2) infer request; see GET /v2/models/{name} for
    the inputs a model takes."""

    inputs: list[InferTensor]
    outputs: list[dict[str, Any]] | None = None
    parameters: dict[str, Any] | None = None


class InferResponse(BaseModel):
    model_name: str
    model_version: str
    outputs: list[InferTensor]


class InferError(BaseModel):
    error: str = Field(description="What is wrong and where; never the submitted values.")


class Problem(BaseModel):
    detail: str = Field(description="What is wrong and where; never the submitted values.")
