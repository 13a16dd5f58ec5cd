"""`medray models export`: the ONNX graph (run by onnxruntime, which medray does not
use to serve) and the TorchScript one give ServedModel's calibrated probabilities on 16
real test inputs, for each model family and each way a graph starts (raw input with the
fitted preprocessing inside it, or the model's preprocessed tensor); the export carries
the version's calibration, classes and checksums that hold."""

import hashlib
import json
import subprocess
import sys

import numpy as np
import onnxruntime
import pandas as pd
import pytest
import torch

from medray.cluster.errors import ConfigError
from medray.cluster.registry import Registry
from medray.serve.export import export_version, raw_example
from medray.serve.model import ServedModel
from medray.train.data.preprocess import Preprocessor
from support.project import PROJECT
from support.serving import SIGNAL, register

ROWS = 16


@pytest.fixture
def registry(local_storage, served_registry):
    return served_registry(local_storage)


@pytest.fixture
def cases(shared_data, real_inputs):
    """Instances as /v1 takes them: 16 real test cases of each served model."""
    from sklearn.datasets import load_breast_cancer

    images = np.load(shared_data / "breastmnist.npz")["test_images"][:ROWS]
    signals = np.loadtxt(shared_data / "ECG200_TEST.txt")[:ROWS, 1:]
    records = load_breast_cancer().data[-ROWS:]
    names = real_inputs["feature_names"]
    return {"ultrasound": [im.tolist() for im in images], "ecg": [s.tolist() for s in signals],
            "records": [dict(zip(names, map(float, row))) for row in records]}


def run_graph(fmt: str, folder, inputs: np.ndarray) -> np.ndarray:
    if fmt == "onnx":
        return onnxruntime.InferenceSession(str(folder / "model.onnx")).run(None, {"input": inputs})[0]
    with torch.no_grad():
        return torch.jit.load(str(folder / "model.pt"))(torch.from_numpy(inputs)).numpy()


def calibrated(model: ServedModel, instances) -> np.ndarray:
    return np.array([list(a["calibrated_probabilities"].values()) for a in model.predict(model.decode(instances))])


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_each_family_exports_with_its_preprocessing_and_temperature(registry, cases, tmp_path, fmt):
    for name, family in (("ultrasound", "cnn"), ("ecg", "rnn"), ("records", "attention")):
        model = ServedModel.from_registry(registry, name, 1)
        folder = tmp_path / f"{name}-{fmt}"
        exported = export_version(registry, name, 1, fmt, folder)
        assert exported["family"] == family and exported["input"]["takes"] != "the model's input tensor"
        raw = raw_example(model, cases[name])
        assert raw.shape[0] == ROWS and list(raw.shape[1:]) == exported["input"]["shape"][1:]
        expected = calibrated(model, cases[name])
        np.testing.assert_allclose(run_graph(fmt, folder, raw), expected, rtol=0, atol=1e-5)
        np.testing.assert_allclose(run_graph(fmt, folder, raw[:1]), expected[:1], rtol=0, atol=1e-5)  # any batch
        assert exported["classes"] == model.bundle.classes and exported["temperature"] == model.temperature
        assert exported["conformal_quantile"] == model.conformal_quantile
        sums = dict(reversed(line.split("  ")) for line in (folder / "SHA256SUMS").read_text().splitlines())
        assert set(sums) == {exported["graph"], "export.json", "calibration.json"}
        assert all(hashlib.sha256((folder / f).read_bytes()).hexdigest() == d for f, d in sums.items())
        assert json.loads((folder / "export.json").read_text())["output"]["name"] == "calibrated_probabilities"
    # The temperature is in the graph: its output is not the uncalibrated probabilities.
    model = ServedModel.from_registry(registry, "ecg", 1)
    uncalibrated = np.array([list(a["probabilities"].values()) for a in model.predict(model.decode(cases["ecg"]))])
    assert model.temperature == 1.5
    assert np.abs(run_graph(fmt, tmp_path / f"ecg-{fmt}", raw_example(model, cases["ecg"])) - uncalibrated).max() > 1e-3


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_an_inception_time_signal_model_exports_and_answers_as_served(local_storage, cases, tmp_path, fmt):
    """The CNN family's 1-D preset (Conv1d, a same-padded max-pool, residual sums)."""
    register(local_storage, tmp_path, "ecg_cnn", "cnn", "inception_time", SIGNAL, ["normal", "infarction"], seed=5)
    registry = Registry(local_storage)
    model = ServedModel.from_registry(registry, "ecg_cnn", 1)
    exported = export_version(registry, "ecg_cnn", 1, fmt, tmp_path / "ecg_cnn")
    assert exported["family"] == "cnn"
    raw = raw_example(model, cases["ecg"])
    np.testing.assert_allclose(run_graph(fmt, tmp_path / "ecg_cnn", raw), calibrated(model, cases["ecg"]),
                               rtol=0, atol=1e-5)


def test_records_with_a_category_export_from_the_preprocessed_tensor(local_storage, tmp_path):
    rng = np.random.default_rng(0)
    table = pd.DataFrame({"age": rng.normal(60, 10, 64), "smoker": rng.choice(["no", "yes"], 64)})
    schema = {"features": [{"name": "age", "type": "numeric"},
                           {"name": "smoker", "type": "categorical", "categories": ["no", "yes"]}]}
    preprocessor = Preprocessor.fit({"modality": "tabular", "schema": schema}, table)
    register(local_storage, tmp_path, "smokers", "attention", "seed", preprocessor, ["low", "high"], seed=4)
    registry = Registry(local_storage)
    model = ServedModel.from_registry(registry, "smokers", 1)
    instances = [{"age": float(a), "smoker": s} for a, s in zip(table["age"][:ROWS], table["smoker"][:ROWS])]
    exported = export_version(registry, "smokers", 1, "onnx", tmp_path / "smokers")
    assert exported["input"]["takes"].startswith("the model's input tensor")
    inputs = raw_example(model, instances)
    assert inputs.shape == (ROWS, 3)  # age standardised, then smoker one-hot
    np.testing.assert_allclose(run_graph("onnx", tmp_path / "smokers", inputs), calibrated(model, instances),
                               rtol=0, atol=1e-5)


def test_the_cli_exports_a_champion_and_refuses_an_unknown_format(registry, tmp_path):
    def medray(*args):
        return subprocess.run([sys.executable, "-m", "medray.cli", "models", "export", *args,
                               "--storage", registry.storage.root], cwd=PROJECT, capture_output=True, text=True,
                              timeout=300)

    done = medray("ecg", str(tmp_path / "ecg"), "--format", "torchscript", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["version"] == 1 and (tmp_path / "ecg" / "model.pt").is_file()
    wrong = medray("ecg@7", str(tmp_path / "nowhere"))
    assert wrong.returncode != 0 and "Traceback" not in wrong.stderr and "7" in wrong.stderr
    assert not (tmp_path / "nowhere").exists()
    with pytest.raises(ConfigError, match="--format must be one of onnx, torchscript"):
        export_version(registry, "ecg", 1, "pickle", tmp_path / "x")


def test_an_onnx_runtime_replica_answers_as_the_pytorch_one(registry, cases):
    for name in ("ultrasound", "ecg", "records"):
        torch_model = ServedModel.from_registry(registry, name, 1)
        onnx_model = ServedModel.from_registry(registry, name, 1, runtime="onnx")
        assert onnx_model.session is not None and torch_model.session is None
        expected = torch_model.predict(torch_model.decode(cases[name]))
        got = onnx_model.predict(onnx_model.decode(cases[name]))
        assert [a["label"] for a in got] == [a["label"] for a in expected]
        assert [a["prediction_set"] for a in got] == [a["prediction_set"] for a in expected]
        for key in ("probabilities", "calibrated_probabilities"):
            np.testing.assert_allclose([list(a[key].values()) for a in got],
                                       [list(a[key].values()) for a in expected], rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="unknown serving runtime 'tvm'"):
        ServedModel.from_registry(registry, "ecg", 1, runtime="tvm")
