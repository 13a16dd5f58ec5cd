"""Real Ray Serve on a local Ray, models from a registry on a local S3-protocol server:
faithful answers over HTTP, every bad input a 4xx, a model swap and a killed replica under
steady load without a failed request, no request values in logs. (The token, and the API
as someone without it meets it: test_api_security.py.)"""

import os
import signal
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from medray.cluster.config import load_config
from medray.serve.model import ServedModel
from support.project import PROJECT
from support.serving import assert_same_answers, assert_triton_answers, serve_overrides

pytestmark = pytest.mark.integration

CANARY = 424242.125
PORT = 8311


OVERRIDES = serve_overrides(PORT)


@pytest.fixture(scope="module")
def served(ray_session, s3_endpoint, tmp_path_factory, real_inputs):
    import boto3

    from medray.cluster.storage import Storage
    from medray.serve.app import deploy, down
    from support.serving import make_registry

    bucket = "medray-serving"
    boto3.client("s3").create_bucket(Bucket=bucket)
    storage = Storage(f"s3://{bucket}/root")
    registry = make_registry(storage, tmp_path_factory.mktemp("models"), real_inputs)
    config = load_config(None, OVERRIDES)
    deployed = deploy(config, storage)
    client = httpx.Client(base_url=deployed["url"], timeout=60)
    yield {"storage": storage, "registry": registry, "config": config, "client": client, "deployed": deployed}
    client.close()
    down()


def _predict(client, name, instances, **kwargs):
    return client.post(f"/v1/models/{name}/predict", json={"instances": instances}, **kwargs)


def _infer_images(client, name, images, prefix=""):
    """POST {prefix}/v2/models/NAME/infer with `images` (N, H, W) as one UINT8 JSON tensor."""
    body = {"inputs": [{"name": "image", "datatype": "UINT8", "shape": list(images.shape),
                        "data": images.ravel().tolist()}]}
    return client.post(f"{prefix}/v2/models/{name}/infer", json=body)


def _assert_same_outputs(response, expected):
    """An OIP JSON answer equal to `expected`'s: the same version and outputs, floats within 1e-6."""
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["model_version"] == expected["model_version"]
    assert [o["name"] for o in answer["outputs"]] == [o["name"] for o in expected["outputs"]]
    for theirs, ours in zip(answer["outputs"], expected["outputs"]):
        if theirs["datatype"] in ("BYTES", "BOOL"):
            assert theirs["data"] == ours["data"]
        else:
            np.testing.assert_allclose(theirs["data"], ours["data"], atol=1e-6)


def test_served_answers_equal_the_offline_model(served, real_inputs):
    client, registry = served["client"], served["registry"]
    assert served["deployed"]["host"] == "127.0.0.1" and not served["deployed"]["auth"]
    assert client.get("/readyz").json() == {"status": "ready"}
    listing = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
    assert listing["ultrasound"]["input"]["height"] == 28 and listing["records"]["modality"] == "tabular"
    assert set(client.get("/openapi.json").json()["paths"]) >= {"/v1/models", "/v1/models/{name}/predict",
                                                                  "/v1/models/{name}/predict-file", "/readyz"}
    offline = ServedModel.from_registry(registry, "ultrasound", 1)
    images = [im.tolist() for im in real_inputs["images"][:4]]
    response = _predict(client, "ultrasound", images)
    assert response.status_code == 200
    assert_same_answers(response.json()["predictions"], offline.predict(offline.decode(images)))
    for answer in response.json()["predictions"]:
        assert answer["out_of_distribution"] is None and answer["ood_score"] is None  # null, not left out
        assert sum(answer["probabilities"].values()) == pytest.approx(1.0)
        assert answer["version"] == 1 and answer["prediction_set"]

    png = _png(real_inputs["images"][0])
    by_file = client.post("/v1/models/ultrasound/predict-file", files={"file": ("case.png", png, "image/png")})
    assert_same_answers(by_file.json()["predictions"], offline.predict(offline.decode(images[:1])))
    explained = client.post("/v1/models/ultrasound/predict", json={"instances": images[:1], "explain": True})
    assert np.array(explained.json()["predictions"][0]["explanation"]["map"]).shape == (28, 28)


def _png(image) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def test_bad_requests_get_4xx_naming_the_problem_and_the_replica_keeps_serving(served, real_inputs):
    client = served["client"]
    image = real_inputs["images"][0].tolist()
    before = _predict(client, "ultrasound", [image]).json()
    names = real_inputs["feature_names"]
    record = dict(zip(names, map(float, real_inputs["records"][0])))
    cases = [
        (_predict(client, "ultrasound", [[[CANARY] * 5] * 5]), 422, "image must have shape (28, 28), got (5, 5)"),
        (client.post("/v1/models/ultrasound/predict", content=b"{not json", headers={"content-type": "application/json"}),
         422, "body: must be JSON"),
        (client.post("/v1/models/ultrasound/predict", json={"instances": [image], "patient": "x"}), 422,
         "unknown field"),
        (_predict(client, "ultrasound", []), 422, "must hold 1 to 8 items"),
        (_predict(client, "ultrasound", [image] * 9), 422, "must hold 1 to 8 items"),
        (_predict(client, "ecg", [[CANARY] * 95]), 422, "signal must have shape (96,), got (95,)"),
        (_predict(client, "records", [{**record, "mean area": str(CANARY)}]), 422, "mean area: must be a number"),
        (_predict(client, "records", [{k: v for k, v in record.items() if k != "worst area"}]), 422,
         "missing feature(s) worst area"),
        (_predict(client, "nope" + str(CANARY), [image]), 404, "name: no such model is served"),
        (client.post("/v1/models/ultrasound/predict-file", files={"file": ("x.dcm", b"\0" * 128 + b"DICM" + b"\1" * 64)}),
         422, "file is not a readable DICOM image"),
        (client.post("/v1/models/ultrasound/predict-file", files={"file": ("x.png", str(CANARY).encode())}),
         422, "file is corrupt or not an image"),
        (client.post("/v1/models/ultrasound/predict-file"), 422, "file"),
        (_predict(client, "ultrasound", [np.zeros((28, 28)).tolist()] * 8 + [str(CANARY) * 30000]), 413,
         "request body exceeds 200000 bytes"),
    ]
    for response, status, text in cases:
        assert response.status_code == status, (text, response.status_code, response.text)
        assert text in response.json()["detail"], (text, response.json())
        assert str(CANARY) not in response.text
    assert_same_answers(_predict(client, "ultrasound", [image]).json()["predictions"],
                        before["predictions"])  # the same answer as before the bad ones


def test_model_swap_under_steady_load_drops_nothing(served, real_inputs, tmp_path):
    from medray.serve.app import model_handle, status, update
    from support.serving import register_second_ultrasound

    def replica_pid():
        return model_handle("ultrasound").pid.remote().result(timeout_s=30)

    pid = replica_pid()
    registry = served["registry"]
    image = real_inputs["images"][0].tolist()
    register_second_ultrasound(served["storage"], tmp_path)
    assert registry.champion("ultrasound")["version"] == 2

    results, stop = [], threading.Event()

    def load(protocol):  # /v1 through the ingress; /v2 straight to the model's own application
        with httpx.Client(base_url=served["deployed"]["url"], timeout=60) as own:
            while not stop.is_set():
                response = _predict(own, "ultrasound", [image]) if protocol == "v1" else \
                    _infer_images(own, "ultrasound", real_inputs["images"][:1])
                if response.status_code != 200:
                    results.append((response.status_code, response.text, protocol))
                    continue
                answer = response.json()
                version = answer["predictions"][0]["version"] if protocol == "v1" else int(answer["model_version"])
                results.append((200, version, protocol))

    workers = [threading.Thread(target=load, args=(protocol,)) for protocol in ("v1", "v2") * 2]
    for worker in workers:
        worker.start()
    time.sleep(1.0)
    updated = update(served["config"], served["storage"])
    time.sleep(1.0)
    stop.set()
    for worker in workers:
        worker.join(timeout=60)
    assert updated["changed"] == {"ultrasound": {"from": 1, "to": 2}}
    assert results and all(code == 200 for code, _, _ in results), [r for r in results if r[0] != 200][:3]
    for protocol in ("v1", "v2"):
        versions = [v for _, v, p in results if p == protocol]
        assert versions[0] == 1 and versions[-1] == 2, (protocol, versions[:3], versions[-3:])
    assert status()["deployments"]["model-ultrasound"]["version"] == 2
    assert replica_pid() == pid  # reconfigured in place: the same live replica, not a restart


def test_a_killed_replica_is_replaced_without_losing_a_request(served, real_inputs):
    from medray.serve.app import model_handle

    client = served["client"]
    signal_instance = real_inputs["signals"][0].tolist()
    expected = _predict(client, "ecg", [signal_instance]).json()
    handle = model_handle("ecg")
    pid = handle.pid.remote().result(timeout_s=30)

    answers, stop = [], threading.Event()

    def load():
        with httpx.Client(base_url=served["deployed"]["url"], timeout=60) as own:
            while not stop.is_set():
                for _attempt in range(60):  # a client retries what the server did not accept
                    try:
                        response = _predict(own, "ecg", [signal_instance])
                    except httpx.HTTPError:
                        response = None
                    if response is not None and response.status_code == 200:
                        answers.append(response.json())
                        break
                    time.sleep(0.5)
                else:
                    answers.append(None)

    worker = threading.Thread(target=load)
    worker.start()
    time.sleep(0.5)
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            if handle.pid.remote().result(timeout_s=5) != pid:
                break
        except Exception:
            time.sleep(0.5)
    time.sleep(1.0)
    stop.set()
    worker.join(timeout=120)
    assert handle.pid.remote().result(timeout_s=30) != pid  # a new replica
    assert answers and None not in answers
    for answer in answers:  # from the old process or the new one
        assert_same_answers(answer["predictions"], expected["predictions"])


def test_replicas_this_ray_cannot_place_are_refused_before_deploying(served, real_inputs):
    from medray.cluster.errors import ConfigError
    from medray.serve.app import deploy, status

    before = status()
    # Three models at one CPU each and the ingress on a 2-CPU Ray: Serve would wait for ever.
    with pytest.raises(ConfigError, match=r"^serving 3 model\(s\) needs 3\.1 CPUs for their first replicas "
                                          r"\(serve\.replica_cpus=1 each, 0\.1 for the ingress\) and this Ray has 2: "
                                          r"set serve\.replica_cpus=0\.63 \(or name fewer with --models\)$"):
        deploy(load_config(None, [*OVERRIDES, "serve.replica_cpus=1"]), served["storage"])
    assert status() == before  # nothing was redeployed
    assert _predict(served["client"], "ultrasound", [real_inputs["images"][0].tolist()]).status_code == 200


def test_cli_status_and_predict_client(served, real_inputs, tmp_path):
    import json
    import subprocess
    import sys

    import ray

    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    env.pop("MEDRAY_API_TOKEN", None)

    def medray(*args):
        return subprocess.run([sys.executable, "-m", "medray.cli", *args], cwd=PROJECT, env=env,
                              capture_output=True, text=True, timeout=180)

    current = medray("serve", "status", "--json")
    assert current.returncode == 0, current.stderr
    deployments = json.loads(current.stdout)["deployments"]
    assert deployments["model-ecg"]["status"] == "HEALTHY" and deployments["model-ecg"]["version"] == 1

    case = tmp_path / "case.png"
    case.write_bytes(_png(real_inputs["images"][0]))
    answer = medray("predict", "ultrasound", str(case), "--url", served["deployed"]["url"], "--json")
    assert answer.returncode == 0, answer.stderr
    (prediction,) = json.loads(answer.stdout)["predictions"]
    assert prediction["model"] == "ultrasound" and sum(prediction["probabilities"].values()) == pytest.approx(1)

    # A CT slice sent to the ultrasound model: out of distribution, referred, not answered.
    from pydicom.data import get_testdata_file

    ct = medray("predict", "ultrasound", get_testdata_file("CT_small.dcm"), "--url", served["deployed"]["url"],
                "--json")
    assert ct.returncode == 0, ct.stderr
    (referred,) = json.loads(ct.stdout)["predictions"]
    assert referred["out_of_distribution"] is True and referred["refer_to_clinician"] is True
    assert prediction["out_of_distribution"] is None  # this stand-in version stores no learned detector

    signal_file = tmp_path / "beat.npy"
    np.save(signal_file, real_inputs["signals"][0][:50])
    wrong = medray("predict", "ecg", str(signal_file), "--url", served["deployed"]["url"])
    assert wrong.returncode == 2 and "422" in wrong.stderr and "signal must have shape (96,), got (50,)" in wrong.stderr
    assert "Traceback" not in wrong.stderr


def test_tritonclient_speaks_the_open_inference_protocol_with_v1s_answers(served, real_inputs):
    """The protocol's reference client, not an imitation: health, metadata, readiness and
    infer for every modality, in binary (its default) and JSON, equal to `/v1`'s answers."""
    import tritonclient.http as triton
    from tritonclient.utils import InferenceServerException

    client = served["client"]
    triton_client = triton.InferenceServerClient(served["deployed"]["url"].removeprefix("http://"),
                                                 network_timeout=60)
    assert triton_client.is_server_live() and triton_client.is_server_ready()
    assert triton_client.get_server_metadata()["extensions"] == ["binary_tensor_data"]
    assert triton_client.is_model_ready("ultrasound") and triton_client.is_model_ready("ecg", "1")  # ecg stays at 1
    assert not triton_client.is_model_ready("ultrasound", "7") and not triton_client.is_model_ready("nope")
    metadata = triton_client.get_model_metadata("ultrasound")
    assert metadata["inputs"] == [{"name": "image", "datatype": "UINT8", "shape": [-1, 28, 28]}]

    images, signals, records = real_inputs["images"][:4], real_inputs["signals"][:4], real_inputs["records"][:4]
    names = real_inputs["feature_names"]
    cases = {"ultrasound": ([("image", images, "UINT8")], [im.tolist() for im in images]),
             "ecg": ([("signal", signals.astype(np.float32), "FP32")], [s.astype(np.float32).tolist() for s in signals]),
             "records": ([(n, records[:, i].copy(), "FP64") for i, n in enumerate(names)],
                         [dict(zip(names, map(float, row))) for row in records])}
    for name, (tensors, instances) in cases.items():
        expected = _predict(client, name, instances).json()["predictions"]
        for binary in (True, False):
            inputs = []
            for input_name, array, datatype in tensors:
                inputs.append(triton.InferInput(input_name, list(array.shape), datatype))
                inputs[-1].set_data_from_numpy(array, binary_data=binary)
            outputs = None if binary else [triton.InferRequestedOutput(o, binary_data=False)
                                           for o in ("probabilities", "calibrated_probabilities", "label")]
            version = str(expected[0]["version"]) if binary else ""  # the ultrasound model is at 2 after the swap test
            result = triton_client.infer(name, inputs, outputs=outputs, model_version=version)
            assert_triton_answers(result, expected)

    image = triton.InferInput("image", [1, 5, 5], "FP64")
    image.set_data_from_numpy(np.full((1, 5, 5), CANARY))
    refusals = [(lambda: triton_client.infer("ultrasound", [image]), "400", "image must have shape (28, 28)"),
                (lambda: triton_client.infer("nope", [image]), "404", "no such model"),
                (lambda: triton_client.infer("ultrasound", [image], model_version="7"), "404",
                 "version: this model serves version")]
    for call, status, message in refusals:
        with pytest.raises(InferenceServerException) as refused:
            call()
        assert refused.value.status() == status and message in refused.value.message(), str(refused.value)
        assert str(CANARY) not in str(refused.value)
    raw = client.post("/v2/models/ultrasound/infer", content=b'{"inputs": [{"name": "image"}]}')
    assert raw.status_code == 400 and raw.json() == {"error": "inputs[0].datatype: must be one of BYTES, BOOL, "
                                                              "UINT8, UINT16, UINT32, UINT64, INT8, INT16, INT32, "
                                                              "INT64, FP16, FP32, FP64"}
    gzipped = client.post("/v2/models/ultrasound/infer", content=b"\x1f\x8b", headers={"content-encoding": "gzip"})
    assert gzipped.status_code == 415 and "compressed" in gzipped.json()["error"]


def test_no_request_value_reaches_the_logs(served, real_inputs):
    client = served["client"]
    names = real_inputs["feature_names"]
    record = dict(zip(names, map(float, real_inputs["records"][0])))
    sent = [_predict(client, "records", [{**record, "mean radius": CANARY}]),
            _predict(client, "records", [{**record, "mean radius": str(CANARY)}]),
            _predict(client, "ecg", [[CANARY] * 96])]
    assert all(r.status_code in (200, 422) for r in sent)  # each reached its model
    time.sleep(2)  # let the log files flush
    import ray

    logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    leaked = [p.name for p in logs.rglob("*") if p.is_file() and str(CANARY).encode() in p.read_bytes()]
    assert not leaked



def test_a_serve_config_layout_answers_alike_and_the_protocol_does_not_need_the_ingress(served, real_inputs):
    """Last in this module: it deletes the ingress application."""
    from ray import serve

    from medray.serve.app import APP_NAME, app_builder

    client, images = served["client"], real_inputs["images"][:2]
    direct = _infer_images(client, "ultrasound", images).json()

    # What a Serve config file deploys: one application, every route through its ingress.
    serve.run(app_builder({"storage": served["storage"].root, "overrides": OVERRIDES}), name="config-layout",
              route_prefix="/config")
    _assert_same_outputs(_infer_images(client, "ultrasound", images, prefix="/config"), direct)
    listed = client.get("/config/v1/models").json()["models"]
    assert sorted(m["name"] for m in listed) == ["ecg", "records", "ultrasound"]
    # The web page under a route prefix links its files and calls the API under it too.
    page = client.get("/config/ui")
    assert page.status_code == 200 and 'data-root="/config"' in page.text
    assert 'href="/config/ui/medray.css"' in page.text and 'src="/config/ui/medray.js"' in page.text
    assert client.get("/config/ui/medray.js").status_code == 200
    assert 'data-root="/config"' in client.get("/config/ui/index.html").text  # the page by its file name too

    # One hop: with the ingress application gone, each model still answers the protocol.
    serve.delete(APP_NAME)
    assert client.get("/v1/models").status_code == 404
    _assert_same_outputs(_infer_images(client, "ultrasound", images), direct)
    assert client.get("/v2/models/ecg").json()["name"] == "ecg"
