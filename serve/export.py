"""`medray models export NAME[@K] --format onnx|torchscript DEST`: a registry version as
a portable graph for runtimes without medray (ONNX Runtime, Triton, OpenVINO, LibTorch).

The graph is the whole prediction up to the probabilities: the preprocessing fitted on
the train split, as the modality builds it (`Modality.graph_input`: pixel scaling and
per-channel standardisation for images, per-channel standardisation for signals, median
imputation and standardisation for numeric health records), the network, and the
temperature fitted on val, so its one output is the calibrated class probabilities `/v1`
answers. Text, ICU stays and records with categorical features take preprocessing a
graph cannot hold (a tokenizer, irregular observations binned into hours, category
lookups); their graph starts at the model's input tensor, what `Preprocessor.transform`
returns, and `export.json` says so.

Beside the graph: `export.json` (input and output names, shapes and meaning, classes,
temperature, operating threshold, conformal quantile and coverage), the version's
`calibration.json` and model card, and `SHA256SUMS` over every file.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medray.cluster.errors import ConfigError
from medray.cluster.registry import Registry
from medray.serve.model import ServedModel

FORMATS = ("onnx", "torchscript")
GRAPH_FILES = {"onnx": "model.onnx", "torchscript": "model.pt"}
INPUT, OUTPUT = "input", "calibrated_probabilities"
ONNX_OPSET = 18


class CalibratedGraph(nn.Module):
    """Raw input -> the fitted preprocessing -> the network -> softmax(logits / T)."""

    def __init__(self, network: nn.Module, preprocess: nn.Module, temperature: float):
        super().__init__()
        self.network, self.preprocess, self.temperature = network, preprocess, float(temperature)

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.network(self.preprocess(raw)) / self.temperature, dim=1)


def raw_example(model: ServedModel, instances: list[Any]) -> np.ndarray:
    """`instances` (as `/v1` takes them) as the exported graph's input."""
    return model.kind.graph_rows(model.bundle.preprocessor, instances)


def export_version(registry: Registry, name: str, version: int, fmt: str, destination: Path) -> dict[str, Any]:
    """Write version `version` of `name` as `fmt` into the folder `destination` (made if
    missing; an existing graph there is replaced only once the new one is complete)."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}")
    model = ServedModel.from_registry(registry, name, version)
    info = registry.version_info(name, version)
    preprocess, spec = model.kind.graph_input(model.bundle.preprocessor)
    network = model.bundle.model.eval()
    graph = CalibratedGraph(network, preprocess, model.temperature).eval()
    example = torch.zeros(2, *[abs(d) if d > 0 else 1 for d in spec["shape"][1:]])

    destination.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=destination, prefix=".export-") as scratch:
        folder = Path(scratch)
        graph_file = folder / GRAPH_FILES[fmt]
        if fmt == "onnx":
            _traced(lambda: _to_onnx(graph, example, graph_file))
        else:
            _traced(lambda: torch.jit.save(torch.jit.trace(graph, example, check_trace=False), str(graph_file)))
        calibration = registry.read_file(name, version, "calibration.json", info)
        (folder / "calibration.json").write_bytes(calibration)
        if "model_card.md" in info["files"]:
            (folder / "model_card.md").write_bytes(registry.read_file(name, version, "model_card.md", info))
        conformal = json.loads(calibration).get("conformal") or {}
        manifest = {
            "model": name, "version": version, "format": fmt, "graph": graph_file.name,
            "family": model.bundle.family, "modality": model.modality, "dataset": model.bundle.dataset,
            "input": {"name": INPUT, **spec},
            "output": {"name": OUTPUT, "shape": [-1, len(model.bundle.classes)], "dtype": "float32",
                       "gives": "class probabilities after temperature scaling, in the order of classes"},
            "classes": model.bundle.classes, "temperature": model.temperature, "threshold": model.threshold,
            "conformal_quantile": conformal.get("quantile"), "coverage": conformal.get("target"),
        }
        (folder / "export.json").write_text(json.dumps(manifest, indent=2))
        sums = {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(folder.iterdir())}
        (folder / "SHA256SUMS").write_text("".join(f"{digest}  {file}\n" for file, digest in sums.items()))
        for path in folder.iterdir():  # each file replaced whole; SHA256SUMS last, so it never lists a half
            if path.name != "SHA256SUMS":
                os.replace(path, destination / path.name)
        os.replace(folder / "SHA256SUMS", destination / "SHA256SUMS")
    return {**manifest, "destination": str(destination), "sha256": sums}


class FeaturesAndLogits(nn.Module):
    """The network as a replica runs it: the preprocessed tensor in, (penultimate
    features, logits) out, what the OOD detector and the calibrated answers are built from."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    def forward(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.network.features_and_logits(inputs)


def onnx_session(model: ServedModel):
    """An ONNX Runtime session running `model`'s network (`serve.runtime: onnx`): one
    thread, as a replica's torch runs. Built from the weights in memory at load."""
    import onnxruntime

    pre = model.bundle.preprocessor
    example = torch.zeros(2, *pre.input_shape)
    with tempfile.TemporaryDirectory(prefix="medray-onnx-") as folder:
        path = Path(folder) / "network.onnx"
        _traced(lambda: torch.onnx.export(
            FeaturesAndLogits(model.bundle.model.eval()).eval(), (example,), str(path), input_names=[INPUT],
            output_names=["features", "logits"], dynamic_axes={INPUT: {0: "batch"}, "features": {0: "batch"},
                                                              "logits": {0: "batch"}},
            opset_version=ONNX_OPSET, dynamo=False))
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        return onnxruntime.InferenceSession(path.read_bytes(), options, providers=["CPUExecutionProvider"])


def _traced(export) -> None:
    """Run a tracing export: the fused attention kernel off (it has no ONNX form; the
    unfused path computes the same), no gradients, and the tracers' notes on shapes read
    as constants (attention's head size) and on GRUs traced at a batch of 2 silenced: the
    graphs are tested at other batch sizes."""
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", message="Exporting a model to ONNX with a batch_size other than 1")
            export()
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


def _to_onnx(graph: nn.Module, example: torch.Tensor, path: Path) -> None:
    # The TorchScript-based exporter. The dynamo one (`dynamo=True`) gives the same
    # numbers (measured, every family within 1e-7 of ServedModel) but takes 3-17 s a
    # model against 0.1-0.3 s, unrolling the recurrent presets, and needs onnxscript.
    torch.onnx.export(graph, (example,), str(path), input_names=[INPUT], output_names=[OUTPUT],
                      dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}}, opset_version=ONNX_OPSET,
                      dynamo=False)
