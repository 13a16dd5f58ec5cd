"""Request and response bodies of the `/v1` API, as they appear in its OpenAPI document."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class PredictRequest(BaseModel):
    instances: list[Any] = Field(
        ..., description="Images: nested arrays (H, W) or (H, W, C) of 0-255 values, or base64 PNG/JPEG/DICOM "
                         "strings. Signals: arrays of length L, or (L, C). Health records: objects keyed by "
                         "feature name (null for an unknown value). See GET /v1/models for each model's input.")
    explain: bool = Field(False, description="Add Grad-CAM (cnn), attention over features (attention) or "
                                             "per-time-step saliency (rnn).")


class Prediction(BaseModel):
    probabilities: dict[str, float]
    calibrated_probabilities: dict[str, float] = Field(description="After temperature scaling fitted on val.")
    label: str = Field(description="The class at the model's operating threshold (chosen on val).")
    prediction_set: list[str] | None = Field(None, description="Split-conformal set at `coverage`.")
    coverage: float | None = None
    refer_to_clinician: bool | None = Field(None, description="True when the set holds more than one class.")
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


class ModelList(BaseModel):
    models: list[ModelInfo]


class Problem(BaseModel):
    detail: str = Field(description="What is wrong and where; never the submitted values.")
