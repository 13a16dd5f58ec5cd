"""The Open Inference Protocol (KServe v2, as Triton, MLServer and Seldon speak it) over
medray's models: request bodies to tensors, and answers back to output tensors.

Light on purpose (NumPy, no torch): the ingress parses and answers; in the replica the
model's modality maps the tensors to the instances `/v1` takes
(`Modality.instances_from_tensors`), so a v2 request is checked and predicted by exactly
the code `/v1` runs and gets the same answers.

Tensors arrive as JSON (`data`, flat or nested, row-major) or in the binary tensor data
extension: the body is the JSON header (`Inference-Header-Content-Length` bytes) and then
each input's bytes in order, `parameters.binary_data_size` each (BYTES elements as a
4-byte little-endian length and the bytes). Every size is checked against the shape and
the body before anything is allocated; every problem is an `InputError` naming the input
by position and the protocol field, never a value (the values may be patient data).

What each modality takes (`Modality.inference_inputs`, also in `GET /v2/models/{name}`):
    image               `image`: UINT8/INT*/FP* (N, H, W) or (N, H, W, C) pixels 0-255,
                        or BYTES (N,) each a PNG, JPEG or DICOM file
    signal              `signal`: numeric (N, L) or (N, L, C)
    tabular             one input per feature, named as the feature, (N,) or (N, 1):
                        numeric (NaN: unknown) or BYTES for a categorical one (empty: unknown)
    text                `text`: BYTES (N,) UTF-8 notes
    patient_timeseries  `stay`: BYTES (N,) each a JSON stay as `/v1` takes it
Outputs: `probabilities` and `calibrated_probabilities` FP64 (N, K) in the order of the
metadata's `classes`, `label` BYTES (N,), and where the version has them
`prediction_set` BOOL (N, K), `refer_to_clinician` BOOL (N,), `out_of_distribution`
BOOL (N,) and `ood_score` FP64 (N,; NaN when undefined).
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from medray.cluster.errors import InputError
from medray.cluster.bounded_json import parse_json_body

DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_), "UINT8": np.dtype("<u1"), "UINT16": np.dtype("<u2"), "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"), "INT8": np.dtype("<i1"), "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"), "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
}
"""Fixed-size datatypes and their little-endian layout in the binary extension; BYTES aside."""
MAX_DIMENSIONS = 8
MAX_ELEMENTS = 1 << 26
"""Elements one input may declare; the body limit bounds the real size before this does."""
MAX_INPUTS = 1024
BINARY_EXTENSION = "binary_tensor_data"
HEADER_LENGTH = "inference-header-content-length"


@dataclass(frozen=True)
class InferRequest:
    """A checked v2 infer request: its inputs by name, which outputs to return (None: all)
    and which of them in binary."""

    id: str | None
    inputs: dict[str, np.ndarray]
    outputs: tuple[str, ...] | None
    binary_outputs: frozenset[str]
    binary_by_default: bool

    def wants_binary(self, output: str) -> bool:
        return output in self.binary_outputs or (self.binary_by_default and self.outputs is None)


# Requests ------------------------------------------------------------------------------

def parse_infer_request(body: bytes, header_length: str | None) -> InferRequest:
    """The request `body` (with the `Inference-Header-Content-Length` header's value,
    when the client sent binary data) as tensors, or `InputError`."""
    binary = b""
    if header_length is not None:
        if not header_length.isdigit() or not 0 < int(header_length) <= len(body):
            raise InputError(f"{HEADER_LENGTH}: must be a length within the body ({len(body)} bytes)")
        body, binary = body[:int(header_length)], body[int(header_length):]
    request = parse_json_body(body)
    if not isinstance(request, dict):
        raise InputError("body: must be a JSON object")
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or not 1 <= len(inputs) <= MAX_INPUTS:
        raise InputError(f"inputs: required, a list of 1 to {MAX_INPUTS} tensors")
    tensors: dict[str, np.ndarray] = {}
    offset = 0
    for index, spec in enumerate(inputs):
        name, array, offset = _input(index, spec, binary, offset)
        if name in tensors:
            raise InputError(f"inputs[{index}]: a second input of the same name")
        tensors[name] = array
    if offset != len(binary):
        raise InputError(f"body: {len(binary) - offset} bytes of binary data that no input claims")
    parameters = _parameters("parameters", request.get("parameters"))
    outputs, binary_outputs = _outputs(request.get("outputs"))
    request_id = request.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InputError("id: must be a string")
    return InferRequest(request_id, tensors, outputs, binary_outputs, parameters.get("binary_data_output") is True)


def _parameters(field: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InputError(f"{field}: must be an object")
    return value


def _input(index: int, spec: Any, binary: bytes, offset: int) -> tuple[str, np.ndarray, int]:
    field = f"inputs[{index}]"
    if not isinstance(spec, dict):
        raise InputError(f"{field}: must be an object with name, datatype, shape and data")
    name, datatype, shape = spec.get("name"), spec.get("datatype"), spec.get("shape")
    if not isinstance(name, str) or not name:
        raise InputError(f"{field}.name: required, a string")
    if datatype != "BYTES" and datatype not in DATATYPES:
        raise InputError(f"{field}.datatype: must be one of BYTES, {', '.join(DATATYPES)}")
    if (not isinstance(shape, list) or not 1 <= len(shape) <= MAX_DIMENSIONS
            or any(isinstance(d, bool) or not isinstance(d, int) or d < 0 for d in shape)):
        raise InputError(f"{field}.shape: must be a list of 1 to {MAX_DIMENSIONS} non-negative integers")
    elements = math.prod(shape)
    if elements > MAX_ELEMENTS:
        raise InputError(f"{field}.shape: more than {MAX_ELEMENTS:,} elements")
    size = _parameters(f"{field}.parameters", spec.get("parameters")).get("binary_data_size")
    if size is not None:
        if "data" in spec:
            raise InputError(f"{field}: has both data and parameters.binary_data_size")
        if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= len(binary) - offset:
            raise InputError(f"{field}.parameters.binary_data_size: must be a size within the binary data")
        chunk = binary[offset:offset + size]
        array = _bytes_elements(field, chunk, elements) if datatype == "BYTES" else \
            _fixed_from_binary(field, chunk, DATATYPES[datatype], elements)
        return name, array.reshape(shape), offset + size
    if "data" not in spec:
        raise InputError(f"{field}: needs data or parameters.binary_data_size")
    values = _flatten(f"{field}.data", spec["data"])
    if len(values) != elements:
        raise InputError(f"{field}.data: holds {len(values)} elements, the shape {shape} needs {elements}")
    array = _bytes_from_json(field, values) if datatype == "BYTES" else \
        _fixed_from_json(field, values, DATATYPES[datatype])
    return name, array.reshape(shape), offset


def _flatten(field: str, data: Any) -> list[Any]:
    """Nested lists, row-major, to one list (the depth is bounded by the JSON parser)."""
    if not isinstance(data, list):
        raise InputError(f"{field}: must be a list")
    flat, stack = [], [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def _fixed_from_binary(field: str, chunk: bytes, dtype: np.dtype, elements: int) -> np.ndarray:
    if len(chunk) != elements * dtype.itemsize:
        raise InputError(f"{field}.parameters.binary_data_size: the shape needs {elements * dtype.itemsize} bytes")
    array = np.frombuffer(chunk, dtype=dtype)
    if dtype == np.bool_ and (array.view(np.uint8) > 1).any():
        raise InputError(f"{field}: BOOL elements must be 0 or 1")
    return array


def _fixed_from_json(field: str, values: list[Any], dtype: np.dtype) -> np.ndarray:
    if dtype == np.bool_:
        if any(not isinstance(v, bool) for v in values):
            raise InputError(f"{field}.data: BOOL elements must be true or false")
        return np.asarray(values, dtype=dtype)
    integer = dtype.kind in "iu"
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and not isinstance(v, int))
           for v in values):
        raise InputError(f"{field}.data: {dtype.name} elements must be {'integers' if integer else 'numbers'}")
    if integer:
        limits = np.iinfo(dtype)
        if values and (min(values) < limits.min or max(values) > limits.max):
            raise InputError(f"{field}.data: elements outside the {dtype.name} range")
        return np.asarray(values, dtype=dtype)
    try:
        with np.errstate(over="ignore"):
            return np.asarray(values, dtype=dtype)
    except OverflowError:
        raise InputError(f"{field}.data: holds a number too large for {dtype.name}") from None


def _bytes_elements(field: str, chunk: bytes, elements: int) -> np.ndarray:
    """BYTES in the binary layout: each element's 4-byte little-endian length, then it."""
    out, position = [], 0
    for _ in range(elements):
        if position + 4 > len(chunk):
            raise InputError(f"{field}: the binary data ends before its {elements} BYTES elements")
        (length,) = struct.unpack_from("<I", chunk, position)
        position += 4
        if position + length > len(chunk):
            raise InputError(f"{field}: a BYTES element runs past the binary data")
        out.append(chunk[position:position + length])
        position += length
    if position != len(chunk):
        raise InputError(f"{field}: binary data left over after its {elements} BYTES elements")
    return _object_array(out)


def _bytes_from_json(field: str, values: list[Any]) -> np.ndarray:
    if any(not isinstance(v, str) for v in values):
        raise InputError(f"{field}.data: BYTES elements must be strings")
    return _object_array([v.encode("utf-8") for v in values])


def _object_array(items: list[Any]) -> np.ndarray:
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array


def _outputs(outputs: Any) -> tuple[tuple[str, ...] | None, frozenset[str]]:
    if outputs is None:
        return None, frozenset()
    if not isinstance(outputs, list) or not outputs:
        raise InputError("outputs: must be a non-empty list")
    names, binary = [], set()
    for index, spec in enumerate(outputs):
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise InputError(f"outputs[{index}]: must be an object with a name")
        names.append(spec["name"])
        if _parameters(f"outputs[{index}].parameters", spec.get("parameters")).get("binary_data") is True:
            binary.add(spec["name"])
    return tuple(names), frozenset(binary)


# Metadata -------------------------------------------------------------------------------

def model_metadata(info: dict[str, Any], inputs: list[dict[str, Any]]) -> dict[str, Any]:
    """`GET /v2/models/{name}` for a served model's `info()` and its modality's
    `inference_inputs`."""
    return {"name": info["name"], "versions": [str(info["version"])], "platform": "medray_pytorch",
            "inputs": inputs, "outputs": output_specs(info), "parameters": {"classes": info["classes"]}}


def output_specs(info: dict[str, Any]) -> list[dict[str, Any]]:
    classes = len(info["classes"])
    outputs = [{"name": "probabilities", "datatype": "FP64", "shape": [-1, classes]},
               {"name": "calibrated_probabilities", "datatype": "FP64", "shape": [-1, classes]},
               {"name": "label", "datatype": "BYTES", "shape": [-1]}]
    if info.get("coverage") is not None:
        outputs.append({"name": "prediction_set", "datatype": "BOOL", "shape": [-1, classes]})
    if info.get("coverage") is not None or info.get("ood") is not None:
        outputs.append({"name": "refer_to_clinician", "datatype": "BOOL", "shape": [-1]})
    if info.get("ood") is not None:
        outputs += [{"name": "out_of_distribution", "datatype": "BOOL", "shape": [-1]},
                    {"name": "ood_score", "datatype": "FP64", "shape": [-1]}]
    return outputs


# Answers -> the response -----------------------------------------------------------------

def output_tensors(answers: list[dict[str, Any]], names: list[str]) -> dict[str, np.ndarray]:
    """The `/v1` answers of one request as the output tensors `names` (see `output_specs`)."""
    classes = list(answers[0]["probabilities"])
    columns = {
        "probabilities": lambda: np.array([[a["probabilities"][c] for c in classes] for a in answers]),
        "calibrated_probabilities": lambda: np.array(
            [[a["calibrated_probabilities"][c] for c in classes] for a in answers]),
        "label": lambda: _object_array([a["label"].encode("utf-8") for a in answers]),
        "prediction_set": lambda: np.array([[c in a["prediction_set"] for c in classes] for a in answers]),
        "refer_to_clinician": lambda: np.array([bool(a.get("refer_to_clinician", False)) for a in answers]),
        "out_of_distribution": lambda: np.array([bool(a["out_of_distribution"]) for a in answers]),
        "ood_score": lambda: np.array([math.nan if a["ood_score"] is None else a["ood_score"] for a in answers]),
    }
    return {name: columns[name]() for name in names}


def encode_response(model: str, version: int, request: InferRequest, tensors: dict[str, np.ndarray]
                    ) -> tuple[bytes, dict[str, str]]:
    """The response body and headers: JSON, with the outputs asked for in binary after it."""
    outputs, chunks = [], []
    for name, tensor in tensors.items():
        datatype = "BYTES" if tensor.dtype == object else next(k for k, v in DATATYPES.items() if v == tensor.dtype)
        spec: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(tensor.shape)}
        if request.wants_binary(name):
            chunk = b"".join(struct.pack("<I", len(v)) + v for v in tensor.ravel()) if datatype == "BYTES" else \
                np.ascontiguousarray(tensor, dtype=DATATYPES[datatype]).tobytes()
            spec["parameters"] = {"binary_data_size": len(chunk)}
            chunks.append(chunk)
        else:
            flat = tensor.ravel()
            spec["data"] = [v.decode("utf-8") for v in flat] if datatype == "BYTES" else \
                [None if isinstance(v, float) and math.isnan(v) else v for v in flat.tolist()]
        outputs.append(spec)
    response: dict[str, Any] = {"model_name": model, "model_version": str(version), "outputs": outputs}
    if request.id is not None:
        response["id"] = request.id
    header = json.dumps(response, separators=(",", ":"), allow_nan=False).encode()
    if not chunks:
        return header, {"content-type": "application/json"}
    return header + b"".join(chunks), {"content-type": "application/octet-stream",
                                       HEADER_LENGTH: str(len(header))}
