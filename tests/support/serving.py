"""Registry contents for the serving tests: real architectures with seeded weights on
real data's preprocessing statistics (no training needed to check that serving is
faithful). Used by the serving tests and the `served_registry` fixture."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from medray.cluster.registry import Registry
from medray.serve.model import SERVED_FILES
from medray.train.checkpoint import save_checkpoint
from medray.train.data.preprocess import LabelMap, Preprocessor
from medray.train.models import InputSpec, build_model

def serve_overrides(port: int) -> list[str]:
    """A small deployment for the serving tests: one replica a model at a quarter CPU,
    small request limits, on `port` (each test module its own)."""
    return [f"serve.port={port}", "serve.autoscaling.max_replicas=1", "serve.replica_cpus=0.25",
            "serve.max_instances=8", "serve.max_body_bytes=200000"]


CALIBRATION = {"temperature": 1.5, "threshold": 0.4, "conformal": {"target": 0.9, "quantile": 0.6}}


def tabular_preprocessor(names: list[str], features: np.ndarray, units: dict[str, str] | None = None,
                         extremes: bool = False) -> Preprocessor:
    """As a checkpoint saved before training stored the min and max (it accepts anything
    float32 can normalise), or with them (`extremes`), as training fits it now; `units`
    as an import records them."""
    columns = [{"name": n, "type": "numeric", "median": float(np.median(features[:, i])),
                "mean": float(features[:, i].mean()), "std": float(features[:, i].std()),
                **({"min": float(features[:, i].min()), "max": float(features[:, i].max())} if extremes else {}),
                **({"unit": units[n]} if n in (units or {}) else {})} for i, n in enumerate(names)]
    return Preprocessor("tabular", None, [len(names)], {"columns": columns})


def register(storage, tmp_path: Path, name: str, family: str, preset: str, preprocessor: Preprocessor,
             classes: list[str], seed: int, calibration: dict | None = None, card: str | None = None,
             metadata: dict | None = None) -> int:
    """One champion version; `card` (the model card's text) and `metadata` as promotion
    registers them."""
    torch.manual_seed(seed)
    spec = InputSpec(preprocessor.modality, tuple(preprocessor.input_shape), vocabulary=preprocessor.vocabulary)
    model = build_model(family, preset, spec, len(classes))
    folder = tmp_path / f"{name}-{seed}"
    save_checkpoint(folder, model, family, preprocessor, LabelMap(classes, classes, list(range(len(classes)))),
                    f"{name}@v1", progress={"epoch": 0})
    (folder / "calibration.json").write_text(json.dumps(calibration or CALIBRATION))
    files = {f: folder / f for f in SERVED_FILES}
    if card is not None:
        (folder / "model_card.md").write_text(card)
        files["model_card.md"] = folder / "model_card.md"
    registry = Registry(storage)
    version = registry.register(name, files, {"modality": preprocessor.modality, "classes": classes,
                                              **(metadata or {})})
    registry.promote(name, version)
    return version


IMAGE = Preprocessor("image", "image", [1, 28, 28], {"mean": [0.33], "std": [0.2], "dicom": {"Modality": ["US"]}})
"""BreastMNIST's statistics, with the DICOM Modality its import records (ultrasound)."""
SIGNAL = Preprocessor("signal", "signal", [96, 1], {"mean": [0.0], "std": [1.0]})


def make_registry(storage, folder: Path, real_inputs) -> Registry:
    """Three champions: an image CNN, a signal GRU and a health-record attention model."""
    register(storage, folder, "ultrasound", "cnn", "resnet", IMAGE, ["benign", "malignant"], seed=1)
    register(storage, folder, "ecg", "rnn", "bigru", SIGNAL, ["normal", "infarction"], seed=2)
    register(storage, folder, "records", "attention", "seed",
             tabular_preprocessor(real_inputs["feature_names"], real_inputs["all_records"]), ["benign", "malignant"],
             seed=3)
    return Registry(storage)


def register_second_ultrasound(storage, folder: Path) -> int:
    """Version 2 of the image model (other weights), made champion."""
    return register(storage, folder, "ultrasound", "cnn", "resnet", IMAGE, ["benign", "malignant"], seed=11)


EXACT = ("label", "prediction_set", "refer_to_clinician", "coverage", "model", "version")
"""Answer fields that are decisions or identities: equal across processes, or it is a bug."""


def assert_same_answers(got: list[dict], expected: list[dict], tolerance: float = 1e-6) -> None:
    """Answers from two processes agree: decisions exactly, probabilities within
    `tolerance` (a replica runs one torch thread, another process more, and CPU kernels
    then sum in another order, which moves the 8th or 9th decimal)."""
    assert len(got) == len(expected)
    for mine, theirs in zip(got, expected):
        assert set(mine) == set(theirs)
        assert {k: mine[k] for k in EXACT if k in mine} == {k: theirs[k] for k in EXACT if k in theirs}
        for key in ("probabilities", "calibrated_probabilities"):
            assert mine[key].keys() == theirs[key].keys()
            assert np.allclose(list(mine[key].values()), [theirs[key][c] for c in mine[key]], rtol=0,
                               atol=tolerance), key


def assert_triton_answers(result, expected: list[dict], tolerance: float = 1e-6) -> None:
    """A tritonclient `InferResult` says what the `/v1` answers `expected` say:
    probabilities within `tolerance`, the same labels and version."""
    classes = list(expected[0]["probabilities"])
    for key in ("probabilities", "calibrated_probabilities"):
        np.testing.assert_allclose(result.as_numpy(key), [[a[key][c] for c in classes] for a in expected],
                                   rtol=0, atol=tolerance)
    # BYTES come back as bytes from binary data, as str from JSON.
    labels = [label if isinstance(label, str) else label.decode() for label in result.as_numpy("label")]
    assert labels == [a["label"] for a in expected]
    assert result.get_response()["model_version"] == str(expected[0]["version"])


def triton_infer_bytes(url: str, model: str, input_name: str, items: list[bytes]):
    """`model`'s answer, through tritonclient, to one BYTES input of `items`."""
    import tritonclient.http as triton

    tensor = triton.InferInput(input_name, [len(items)], "BYTES")
    tensor.set_data_from_numpy(np.array(items, dtype=object))
    return triton.InferenceServerClient(url.removeprefix("http://"), network_timeout=60).infer(model, [tensor])
