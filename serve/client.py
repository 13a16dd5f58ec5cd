"""`medray predict NAME FILE`: a small client for the serving API."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from medray.cluster.errors import MedrayError, NotFoundError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".dcm", ".dicom"}
TEXT_SUFFIXES = {".txt", ".text"}


def request_for(path: Path, explain: bool = False) -> tuple[str, dict[str, Any]]:
    """(route suffix, httpx keyword arguments) for one file. A text file is uploaded as
    text/plain, or sent as a JSON instance when an explanation is asked for (uploads
    carry none). The file's name is never sent: it may name the patient."""
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES or not suffix:
        return "predict-file", {"files": {"file": ("upload", path.read_bytes(), "application/octet-stream")}}
    if suffix in TEXT_SUFFIXES:
        if not explain:
            return "predict-file", {"files": {"file": ("upload.txt", path.read_bytes(), "text/plain")}}
        try:
            text = path.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError as error:
            raise MedrayError(f"{path} is not UTF-8 text (invalid byte at offset {error.start})") from None
        return "predict", {"json": {"instances": [{"text": text}]}}
    if suffix == ".json":
        try:
            body = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise MedrayError(f"{path} is not valid JSON (line {error.lineno})") from None
        return "predict", {"json": body if isinstance(body, dict) else {"instances": body}}
    if suffix == ".npy":
        import numpy as np

        array = np.load(path, allow_pickle=False)
        return "predict", {"json": {"instances": [array.tolist()]}}
    raise MedrayError(f"{path}: use an image (PNG, JPEG, DICOM), a .txt document, a .json body or a .npy array")


def predict_file(url: str, name: str, file: str, explain: bool = False, token: str | None = None,
                 timeout: float = 60.0) -> dict[str, Any]:
    import httpx

    path = Path(file)
    if not path.is_file():
        raise NotFoundError(f"{file} does not exist")
    route, kwargs = request_for(path, explain)
    if explain and "json" in kwargs:
        kwargs["json"]["explain"] = True
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        response = httpx.post(f"{url.rstrip('/')}/v1/models/{name}/{route}", headers=headers, timeout=timeout,
                              **kwargs)
    except httpx.HTTPError as error:
        raise MedrayError(f"could not reach {url} ({type(error).__name__}); is `medray serve up` running?") from None
    if response.status_code != 200:
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        raise MedrayError(f"the server answered {response.status_code}: {detail}")
    return response.json()
