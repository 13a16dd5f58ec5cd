"""ServedModel without Ray: faithful to the offline model, strict about input, and
never repeating submitted values in its errors."""

import base64
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from medray.serve.model import InputError, ServedModel
from medray.train.checkpoint import load_bundle

CANARY = 987654.321


@pytest.fixture
def models(local_storage, served_registry):
    registry = served_registry(local_storage)
    return {name: ServedModel.from_registry(registry, name, 1) for name in ("ultrasound", "ecg", "records")}


def offline_probs(model: ServedModel, batch) -> np.ndarray:
    """What the checkpoint gives through the training code path (no serving code)."""
    with torch.no_grad():
        return torch.softmax(model.bundle.predict_logits(batch), dim=1).double().numpy()


def probs_of(answers, key="probabilities"):
    return np.array([list(a[key].values()) for a in answers])


def test_predictions_equal_the_offline_model(models, real_inputs):
    images, signals, records = real_inputs["images"], real_inputs["signals"], real_inputs["records"]
    names = real_inputs["feature_names"]
    image_model = models["ultrasound"]
    answers = image_model.predict(image_model.decode([im.tolist() for im in images]))
    np.testing.assert_allclose(probs_of(answers), offline_probs(image_model, images), rtol=1e-5, atol=1e-6)

    signal_model = models["ecg"]
    answers = signal_model.predict(signal_model.decode([s.tolist() for s in signals]))
    np.testing.assert_allclose(probs_of(answers), offline_probs(signal_model, signals), rtol=1e-5, atol=1e-6)

    table_model = models["records"]
    instances = [dict(zip(names, map(float, row))) for row in records]
    answers = table_model.predict(table_model.decode(instances))
    columns = {n: records[:, i] for i, n in enumerate(names)}
    np.testing.assert_allclose(probs_of(answers), offline_probs(table_model, columns), rtol=1e-5, atol=1e-6)


def test_an_answer_is_calibrated_thresholded_and_carries_a_conformal_set(models, real_inputs):
    model = models["ultrasound"]
    image = real_inputs["images"][0]
    (answer,) = model.predict(model.decode([image.tolist()]))
    logits = model.bundle.predict_logits(image[None]).double().numpy()[0]
    calibrated = np.exp(logits / 1.5) / np.exp(logits / 1.5).sum()
    assert sum(answer["probabilities"].values()) == pytest.approx(1.0)
    assert list(answer["calibrated_probabilities"].values()) == pytest.approx(calibrated.tolist())
    assert answer["label"] == ("malignant" if calibrated[1] >= 0.4 else "benign")
    expected_set = [c for c, p in zip(["benign", "malignant"], calibrated) if p >= 0.4 or p == calibrated.max()]
    assert answer["prediction_set"] == expected_set
    assert answer["refer_to_clinician"] == (len(expected_set) > 1)
    assert (answer["model"], answer["version"], answer["coverage"]) == ("ultrasound", 1, 0.9)


def test_encoded_images_and_the_array_give_the_same_answer(models, real_inputs):
    model = models["ultrasound"]
    image = real_inputs["images"][1]
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    png = buffer.getvalue()
    from_array = model.predict(model.decode([image.tolist()]))
    from_base64 = model.predict(model.decode([base64.b64encode(png).decode()]))
    from_file = model.predict(model.decode_file(png))
    assert from_array == from_base64 == from_file


def test_explanations_per_family(models, real_inputs):
    cam = models["ultrasound"].explain(models["ultrasound"].decode([real_inputs["images"][0].tolist()]))[0]
    grid = np.array(cam["map"])
    assert cam["type"] == "grad_cam" and grid.shape == (28, 28) and grid.min() >= 0 and grid.max() == pytest.approx(1)
    # The picture the map lies over is the image sent (standardising it and back loses
    # at most float32 rounding, never a pixel level).
    seen = np.asarray(Image.open(io.BytesIO(base64.b64decode(cam["model_input_png"]))))
    assert seen.shape == (28, 28) and np.array_equal(seen, real_inputs["images"][0])
    saliency = models["ecg"].explain(models["ecg"].decode([real_inputs["signals"][0].tolist()]))[0]
    assert saliency["type"] == "saliency" and len(saliency["per_time_step"]) == 96
    names = real_inputs["feature_names"]
    attention = models["records"].explain(models["records"].decode([dict(zip(names, real_inputs["records"][0]))]))[0]
    assert attention["type"] == "attention" and list(attention["features"]) == names
    assert sum(attention["features"].values()) == pytest.approx(1.0)


def _record(names, row, **changes):
    record = dict(zip(names, map(float, row)))
    record.update(changes)
    return record


@pytest.mark.parametrize("case, message", [
    ("image_shape", r"instances\[0\]: image must have shape \(28, 28\), got \(27, 28\)"),
    ("image_nan", r"instances\[0\]: holds NaN or infinity"),
    ("image_range", r"instances\[0\]: pixel values must lie in \[0, 255\]"),
    ("image_text", r"instances\[0\]: must be a rectangular, non-empty array of numbers"),
    ("image_base64", r"instances\[0\]: a string must be a base64-encoded PNG, JPEG or DICOM file"),
    ("image_corrupt", r"instances\[0\] is corrupt or not an image"),
    ("empty", r"instances: must be a non-empty list"),
    ("signal_shape", r"instances\[0\]: signal must have shape \(96,\), got \(95,\)"),
    ("signal_inf", r"instances\[0\]: holds NaN or infinity"),
    ("record_missing", r"instances\[0\]: missing feature\(s\) mean radius"),
    ("record_extra", r"instances\[0\]: 1 feature\(s\) the model does not take"),
    ("record_text", r"instances\[0\].mean texture: must be a number or null"),
    ("record_type", r"instances\[1\]: must be an object keyed by feature name"),
])
def test_bad_input_names_the_field_and_never_the_value(models, real_inputs, case, message):
    names, row = real_inputs["feature_names"], real_inputs["records"][0]
    image = real_inputs["images"][0].astype(float)
    canary_image = image.copy()
    canary_image[0, 0] = CANARY
    inputs = {
        "image_shape": ("ultrasound", [np.full((27, 28), CANARY).tolist()]),
        "image_nan": ("ultrasound", [[[float("nan")] * 28] * 28]),
        "image_range": ("ultrasound", [canary_image.tolist()]),
        "image_text": ("ultrasound", [[[str(CANARY), 1]]]),
        "image_base64": ("ultrasound", [f"not base64 {CANARY}!"]),
        "image_corrupt": ("ultrasound", [base64.b64encode(str(CANARY).encode() * 20).decode()]),
        "empty": ("ultrasound", []),
        "signal_shape": ("ecg", [[CANARY] * 95]),
        "signal_inf": ("ecg", [[float("inf")] + [CANARY] * 95]),
        "record_missing": ("records", [{k: v for k, v in _record(names, row).items() if k != "mean radius"}]),
        "record_extra": ("records", [_record(names, row, **{f"x{CANARY}": CANARY})]),
        "record_text": ("records", [_record(names, row, **{"mean texture": str(CANARY)})]),
        "record_type": ("records", [_record(names, row), [CANARY]]),
    }
    name, instances = inputs[case]
    with pytest.raises(InputError, match=message) as error:
        models[name].decode(instances)
    assert str(CANARY) not in str(error.value) and "987654" not in str(error.value)


def test_a_null_feature_is_imputed_with_the_training_median(models, real_inputs):
    names, row = real_inputs["feature_names"], real_inputs["records"][0]
    model = models["records"]
    median = model.bundle.preprocessor.stats["columns"][0]["median"]
    with_null = model.predict(model.decode([_record(names, row, **{"mean radius": None})]))
    with_median = model.predict(model.decode([_record(names, row, **{"mean radius": median})]))
    assert with_null == with_median


def test_a_tampered_version_is_not_served(local_storage, served_registry):
    from medray.cluster.registry import RegistryError

    registry = served_registry(local_storage)
    local_storage.write_bytes("models/ecg/versions/1/weights.pt", b"tampered")
    with pytest.raises(RegistryError, match="does not match its recorded sha256"):
        ServedModel.from_registry(registry, "ecg", 1)


def test_checkpoint_files_alone_rebuild_the_served_model(local_storage, served_registry, tmp_path, real_inputs):
    registry = served_registry(local_storage)
    folder = registry.download("ultrasound", 1, tmp_path / "download")
    bundle = load_bundle(folder)
    served = ServedModel.from_registry(registry, "ultrasound", 1)
    images = real_inputs["images"][:2]
    assert torch.equal(bundle.predict_logits(images), served.bundle.predict_logits(images))


# Out of distribution ---------------------------------------------------------------
def test_a_version_without_a_detector_answers_null(models, real_inputs):
    model = models["ultrasound"]
    assert model.ood is None and model.info()["ood"] is None
    (answer,) = model.predict(model.decode([real_inputs["images"][0].tolist()]))
    assert (answer["out_of_distribution"], answer["ood_score"], answer["ood_reasons"]) == (None, None, [])
    assert answer["refer_to_clinician"] == (len(answer["prediction_set"]) > 1)


def test_the_detector_scores_every_answer_and_refers_what_it_flags(models, real_inputs):
    from medray.train.ood import fit_detector

    model = models["ultrasound"]
    images = real_inputs["images"]
    embeddings, logits = model.bundle.predict_embeddings(images)
    model.ood = fit_detector(embeddings, np.zeros(len(images), int), embeddings, logits, false_alarm=0.2)
    answers = model.predict(model.decode([im.tolist() for im in images]))
    np.testing.assert_allclose([a["ood_score"] for a in answers], model.ood.score(embeddings, logits), rtol=1e-4)
    flagged = model.ood.flags(embeddings, logits)
    assert [a["out_of_distribution"] for a in answers] == flagged.tolist()
    for answer in answers:
        if answer["out_of_distribution"]:
            assert answer["refer_to_clinician"] is True and answer["ood_reasons"][0].startswith("mahalanobis score")
    noise = np.random.default_rng(0).integers(0, 256, (28, 28)).tolist()
    (far,) = model.predict(model.decode([noise]))
    assert far["out_of_distribution"] is True and far["refer_to_clinician"] is True
    assert far["ood_score"] > model.ood.threshold


def test_a_dicom_of_another_modality_is_out_of_distribution(models, real_inputs):
    from pydicom.data import get_testdata_file

    model = models["ultrasound"]
    assert model.bundle.preprocessor.stats["dicom"] == {"Modality": ["US"]}  # as BreastMNIST's import records
    with open(get_testdata_file("CT_small.dcm"), "rb") as handle:
        ct = handle.read()
    (answer,) = model.predict(model.decode_file(ct))
    assert answer["out_of_distribution"] is True and answer["refer_to_clinician"] is True
    assert answer["ood_reasons"] == ["file metadata Modality differs from the training set's"]
    assert "CT" not in json.dumps(answer["ood_reasons"])  # field names, never the values
    (same,) = model.predict(model.decode([base64.b64encode(ct).decode()]))
    assert same["ood_reasons"] == answer["ood_reasons"]
    buffer = io.BytesIO()
    Image.fromarray(real_inputs["images"][0]).save(buffer, format="PNG")
    (png,) = model.predict(model.decode_file(buffer.getvalue()))  # no metadata: nothing to compare
    assert png["out_of_distribution"] is None


def test_the_card_summary_holds_the_intended_use_and_the_registered_test_metrics():
    from medray.serve.model import card_summary

    card = "# Model card: m\n\n## Intended use\nDecision support for X.\nNot alone.\n\n## Data\n- rows: 3\n"
    info = {"created_at": "2026-12-07T12:00:00+00:00",
            "metrics": {"test": {"auroc": 0.91, "auroc_ci": [0.8, 0.97], "ppv": 0.5, "ece": None, "n": 40}}}
    assert card_summary(info, card) == {"intended_use": "Decision support for X.\nNot alone.",
                                        "test_metrics": {"auroc": 0.91, "auroc_ci": [0.8, 0.97], "n": 40},
                                        "registered_at": "2026-12-07T12:00:00+00:00"}
    assert card_summary({}, "") == {"intended_use": None, "test_metrics": {}, "registered_at": None}
