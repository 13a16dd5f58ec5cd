"""The Open Inference Protocol mapping without a server: request bodies as tritonclient
(the protocol's reference client) encodes them, in JSON and in the binary extension, give
the answers `/v1` gives; responses decode in tritonclient to the same numbers; every
malformed body is an `InputError` naming the field and never a value."""

import json
import struct

import numpy as np
import pytest
import tritonclient.http as triton

from medray.serve import inference_protocol as v2
from medray.serve.model import InputError, ServedModel

CANARY = 987654.321


@pytest.fixture
def models(local_storage, served_registry):
    registry = served_registry(local_storage)
    return {name: ServedModel.from_registry(registry, name, 1) for name in ("ultrasound", "ecg", "records")}


def body_of(inputs, outputs=None):
    """What tritonclient sends: the body and its Inference-Header-Content-Length (None
    when all of it is JSON)."""
    body, json_size = triton.InferenceServerClient.generate_request_body(inputs, outputs=outputs)
    return body, None if json_size is None else str(json_size)


def tensor(name, array, datatype, binary=True):
    item = triton.InferInput(name, list(array.shape), datatype)
    item.set_data_from_numpy(array, binary_data=binary)
    return item


def answer_via_v2(model, inputs, outputs=None):
    """Request -> tensors -> /v1 instances -> answers -> response, decoded by tritonclient."""
    request = v2.parse_infer_request(*body_of(inputs, outputs))
    answers = model.predict(model.decode_tensors(request.inputs))
    names = list(request.outputs) if request.outputs else [o["name"] for o in model.protocol_metadata()["outputs"]]
    body, headers = v2.encode_response(model.name, model.version, request, v2.output_tensors(answers, names))
    length = headers.get(v2.HEADER_LENGTH)
    return answers, triton.InferResult.from_response_body(body, header_length=None if length is None else int(length))


@pytest.mark.parametrize("binary", [True, False])
def test_every_modality_answers_as_v1_does(models, real_inputs, binary):
    images, signals, records = real_inputs["images"], real_inputs["signals"], real_inputs["records"]
    names = real_inputs["feature_names"]
    cases = [
        (models["ultrasound"], [tensor("image", images, "UINT8", binary)], [im.tolist() for im in images]),
        (models["ecg"], [tensor("signal", signals.astype(np.float32), "FP32", binary)],
         [s.astype(np.float32).tolist() for s in signals]),
        (models["records"], [tensor(n, records[:, i].copy(), "FP64", binary) for i, n in enumerate(names)],
         [dict(zip(names, map(float, row))) for row in records]),
    ]
    for model, inputs, instances in cases:
        expected = model.predict(model.decode(instances))
        answers, result = answer_via_v2(model, inputs)
        assert answers == expected
        classes = model.bundle.classes
        np.testing.assert_allclose(result.as_numpy("probabilities"),
                                   [[a["probabilities"][c] for c in classes] for a in expected], rtol=0, atol=1e-12)
        np.testing.assert_allclose(result.as_numpy("calibrated_probabilities"),
                                   [[a["calibrated_probabilities"][c] for c in classes] for a in expected],
                                   rtol=0, atol=1e-12)
        assert [label.decode() for label in result.as_numpy("label")] == [a["label"] for a in expected]
        sets = result.as_numpy("prediction_set")
        assert sets.dtype == np.bool_ and sets.shape == (len(expected), len(classes))
        assert [[c for c, keep in zip(classes, row) if keep] for row in sets] == [a["prediction_set"] for a in expected]
        assert result.as_numpy("refer_to_clinician").tolist() == [a["refer_to_clinician"] for a in expected]
        assert result.get_response()["model_name"] == model.name and result.get_response()["model_version"] == "1"


def test_an_image_sent_as_a_file_and_chosen_outputs(models, real_inputs):
    import io

    from PIL import Image

    model = models["ultrasound"]
    buffer = io.BytesIO()
    Image.fromarray(real_inputs["images"][0]).save(buffer, format="PNG")
    files = np.array([buffer.getvalue()], dtype=object)
    outputs = [triton.InferRequestedOutput("label", binary_data=False), triton.InferRequestedOutput("probabilities")]
    answers, result = answer_via_v2(model, [tensor("image", files, "BYTES")], outputs)
    assert answers == model.predict(model.decode([real_inputs["images"][0].tolist()]))
    assert [o["name"] for o in result.get_response()["outputs"]] == ["label", "probabilities"]
    assert "data" in result.get_output("label") and "data" not in result.get_output("probabilities")


def test_the_metadata_names_what_each_model_takes_and_gives(models, real_inputs):
    image = models["ultrasound"].protocol_metadata()
    assert image["inputs"] == [{"name": "image", "datatype": "UINT8", "shape": [-1, 28, 28]}]
    assert image["versions"] == ["1"] and image["parameters"]["classes"] == ["benign", "malignant"]
    assert [o["name"] for o in image["outputs"]] == ["probabilities", "calibrated_probabilities", "label",
                                                     "prediction_set", "refer_to_clinician"]
    assert models["ecg"].protocol_metadata()["inputs"] == [{"name": "signal", "datatype": "FP32", "shape": [-1, 96]}]
    records = models["records"].protocol_metadata()["inputs"]
    assert [i["name"] for i in records] == real_inputs["feature_names"] and records[0]["datatype"] == "FP64"


def test_unknown_numbers_in_a_record_are_nan_and_are_imputed(models, real_inputs):
    model, names = models["records"], real_inputs["feature_names"]
    row = real_inputs["records"][0].copy()
    row[3] = np.nan
    inputs = [tensor(n, row[i:i + 1].copy(), "FP64") for i, n in enumerate(names)]
    instance = {n: (None if i == 3 else float(v)) for i, (n, v) in enumerate(zip(names, row))}
    answers, _ = answer_via_v2(model, inputs)
    assert answers == model.predict(model.decode([instance]))


def _json_body(inputs, **extra) -> bytes:
    return json.dumps({"inputs": inputs, **extra}).encode()


def test_malformed_bodies_are_refused_naming_the_field_never_a_value(models):
    canary = str(CANARY).encode()
    image = {"name": "image", "datatype": "FP64", "shape": [1, 2], "data": [CANARY, CANARY]}
    binary_header = json.dumps({"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 2],
                                            "parameters": {"binary_data_size": 8}}]}).encode()
    cases = [
        (b"{", None, "body: must be JSON"),
        (_json_body([]), None, "inputs: required, a list of 1 to"),
        (_json_body([{**image, "datatype": "COMPLEX"}]), None, "inputs[0].datatype: must be one of"),
        (_json_body([{**image, "shape": [1, -2]}]), None, "inputs[0].shape: must be a list"),
        (_json_body([{**image, "shape": [1, 3]}]), None, "inputs[0].data: holds 2 elements, the shape [1, 3] needs 3"),
        (_json_body([{**image, "shape": [1 << 20, 1 << 20]}]), None, "more than"),
        (_json_body([{**image, "datatype": "UINT8"}]), None, "inputs[0].data: uint8 elements must be integers"),
        (_json_body([{**image, "datatype": "INT8", "data": [1000, 1]}]), None, "outside the int8 range"),
        (_json_body([{**image, "datatype": "BYTES"}]), None, "BYTES elements must be strings"),
        (_json_body([image, image]), None, "inputs[1]: a second input of the same name"),
        (_json_body([image], outputs=[{"label": 1}]), None, "outputs[0]: must be an object with a name"),
        (binary_header + struct.pack("<2f", CANARY, CANARY), "0", "inference-header-content-length: must be"),
        (binary_header + struct.pack("<2f", CANARY, CANARY), "7", "body: must be JSON"),
        (binary_header + struct.pack("<2f", CANARY, CANARY), "99999", "inference-header-content-length: must be"),
        (binary_header + struct.pack("<1f", CANARY), str(len(binary_header)), "binary_data_size: must be a size"),
        (binary_header + struct.pack("<3f", CANARY, CANARY, CANARY), str(len(binary_header)),
         "4 bytes of binary data that no input claims"),
    ]
    for body, header, message in cases:
        with pytest.raises(InputError) as refused:
            v2.parse_infer_request(body, header)
        assert message in str(refused.value), (message, str(refused.value))
        assert canary not in str(refused.value).encode()
    def strings(count, elements):  # a BYTES input of `count` elements, `elements` its 9 binary bytes
        header = json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [count],
                                         "parameters": {"binary_data_size": 9}}]}).encode()
        return header + elements, str(len(header))

    for body, message in [(strings(2, struct.pack("<I", 99) + b"abcde"), "runs past the binary data"),
                          (strings(1, struct.pack("<I", 1) + b"abcde"), "binary data left over"),
                          (strings(3, struct.pack("<I", 1) + b"a" + struct.pack("<I", 0)), "ends before its 3")]:
        with pytest.raises(InputError, match=message):
            v2.parse_infer_request(*body)


def test_tensors_the_model_does_not_take_are_refused_by_name(models, real_inputs):
    image, names = models["ultrasound"], real_inputs["feature_names"]
    cases = [
        ({"pixels": np.zeros((1, 28, 28))}, "this model takes one input, 'image'"),
        ({"image": np.zeros((0, 28, 28))}, "holds no instances"),
        ({"image": np.zeros((1, 28, 28), dtype=bool)}, "must be a numeric tensor"),
        ({"image": np.full((1, 5, 5), CANARY)}, r"image must have shape \(28, 28\), got \(5, 5\)"),
    ]
    for tensors, message in cases:
        with pytest.raises(InputError, match=message):
            image.decode_tensors(tensors)
    records = models["records"]
    full = {n: np.ones(2) for n in names}
    with pytest.raises(InputError, match="missing feature"):
        records.decode_tensors({n: v for n, v in full.items() if n != names[0]})
    with pytest.raises(InputError) as extra:
        records.decode_tensors({**full, f"mrn {CANARY}": np.ones(2)})
    assert "1 input(s) the model does not take" in str(extra.value) and str(CANARY) not in str(extra.value)
    with pytest.raises(InputError, match="holds 3 rows where the other features hold 2"):
        records.decode_tensors({**full, names[-1]: np.ones(3)})
