"""The serving API as someone without the token meets it: a real Serve on a local Ray,
its proxy on 0.0.0.0 as `medray serve up` binds it when MEDRAY_API_TOKEN is set, models
from a registry on a local S3-protocol server. The token is checked before any body is
read, docs and model names sit behind it, the token never enters Serve's config, an
open ingress refuses to start beyond loopback, `serve update` from a shell without the
token keeps the auth, and a schemathesis run over the live OpenAPI document finds no
5xx and no echo of what it sent, with and without the token."""

import json
import re
import secrets
import socket
import stat
import time
from collections import Counter
from urllib.parse import unquote

import httpx
import pytest

from medray.cluster.config import load_config
from medray.cluster.errors import ConfigError
from support.serving import serve_overrides

pytestmark = pytest.mark.integration

PORT = 8312
TOKEN = "tok-" + secrets.token_hex(16)
AUTH = {"Authorization": f"Bearer {TOKEN}"}
OVERRIDES = serve_overrides(PORT)
PROTECTED = ["/v1/models", "/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"]


@pytest.fixture(scope="module")
def secured(ray_session, s3_endpoint, tmp_path_factory, real_inputs):
    import boto3

    from medray.serve import app as serve_app
    from medray.cluster.storage import Storage
    from medray.serve.app import deploy, down
    from support.serving import make_registry

    bucket = "medray-secured"
    boto3.client("s3").create_bucket(Bucket=bucket)
    storage = Storage(f"s3://{bucket}/root")
    make_registry(storage, tmp_path_factory.mktemp("models"), real_inputs)
    patch = pytest.MonkeyPatch()
    try:
        patch.setenv("MEDRAY_API_TOKEN", TOKEN)
        patch.setattr(serve_app, "TOKEN_FILE", tmp_path_factory.mktemp("home") / "serve-token")
        config = load_config(None, OVERRIDES)
        deployed = deploy(config, storage)
        with httpx.Client(base_url=deployed["url"], timeout=60) as client:
            yield {"storage": storage, "config": config, "client": client, "deployed": deployed,
                   "token_file": serve_app.TOKEN_FILE}
        down()
        assert not serve_app.TOKEN_FILE.exists()  # `serve down` leaves no token at rest
    finally:
        patch.undo()


def _multipart_head(length: int, token: bool = False) -> bytes:
    return (f"POST /v1/models/ultrasound/predict-file HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: multipart/form-data; boundary=b0undary\r\nContent-Length: {length}\r\n"
            + (f"Authorization: Bearer {TOKEN}\r\n" if token else "") + "\r\n").encode()


def _first_reply(head: bytes, part: bytes, wait: float) -> bytes:
    """What the server says to a request whose body stops after `part`, within `wait` s."""
    with socket.create_connection(("127.0.0.1", PORT), timeout=wait) as sock:
        sock.sendall(head + part)
        try:
            return sock.recv(4096)
        except socket.timeout:
            return b""


def test_the_token_is_checked_before_any_body_is_read(secured):
    client = secured["client"]
    assert secured["deployed"]["host"] == "0.0.0.0" and secured["deployed"]["auth"]
    # A declared body of 150 kB of which 1 kB is sent: answered at once, from the headers.
    part = b"--b0undary\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.png\"\r\n\r\n" + b"\0" * 1000
    started = time.monotonic()
    reply = _first_reply(_multipart_head(150_000), part, wait=10)
    assert reply.startswith(b"HTTP/1.1 401"), reply[:80]
    assert b"www-authenticate: bearer" in reply.lower()
    assert time.monotonic() - started < 5
    # The same request with the token is parsed, so it waits for the rest of the body.
    assert _first_reply(_multipart_head(150_000, token=True), part, wait=2) == b""
    # Neither the body limit nor the form parser speaks before the token check.
    assert client.post("/v1/models/ultrasound/predict-file").status_code == 401
    too_big = client.post("/v1/models/ultrasound/predict", content=b"[" * 300_000,
                          headers={"content-type": "application/json"})
    assert too_big.status_code == 401


def test_docs_and_model_names_need_the_token_and_probes_say_only_ready(secured):
    client = secured["client"]
    for path in PROTECTED:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {TOKEN[:-1]}"},
                        {"Authorization": f"Bearer {TOKEN}x"}, {"Authorization": TOKEN},
                        {"Authorization": f"Basic {TOKEN}"}):
            refused = client.get(path, headers=headers)
            assert refused.status_code == 401, (path, headers)
            assert refused.json() == {"detail": "missing or wrong bearer token"}
    assert client.get("/readyz").json() == {"status": "ready"}  # no model names, no versions
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/v1/models", headers={"Authorization": f"bearer {TOKEN}"}).status_code == 200
    document = client.get("/openapi.json", headers=AUTH).json()
    assert document["components"]["securitySchemes"] == {"bearer": {"type": "http", "scheme": "bearer"}}
    security = {(path, method): op.get("security") for path, ops in document["paths"].items()
                for method, op in ops.items()}
    assert security[("/readyz", "get")] == [] and security[("/healthz", "get")] == []
    assert security[("/v1/models/{name}/predict-file", "post")] == [{"bearer": []}]
    assert client.get("/docs", headers=AUTH).status_code == 200
    listing = client.get("/v1/models", headers=AUTH).json()["models"]
    assert sorted(m["name"] for m in listing) == ["ecg", "records", "ultrasound"]


def test_the_inference_protocol_needs_the_token_but_its_health_probes_do_not(secured, real_inputs):
    import tritonclient.http as triton
    from tritonclient.utils import InferenceServerException

    triton_client = triton.InferenceServerClient(secured["deployed"]["url"].removeprefix("http://"))
    assert triton_client.is_server_live() and triton_client.is_server_ready()  # probes: open
    image = triton.InferInput("image", [1, 28, 28], "UINT8")
    image.set_data_from_numpy(real_inputs["images"][:1])
    for call in (lambda: triton_client.infer("ultrasound", [image]),
                 lambda: triton_client.get_model_metadata("ultrasound"),
                 lambda: triton_client.infer("ultrasound", [image], headers={"Authorization": "Bearer wrong"})):
        with pytest.raises(InferenceServerException) as refused:
            call()
        assert refused.value.status() == "401" and refused.value.message() == "missing or wrong bearer token"
    assert not triton_client.is_model_ready("ultrasound")
    # Copies: tritonclient adds its Inference-Header-Content-Length to the dict it is given.
    assert triton_client.is_model_ready("ultrasound", headers=dict(AUTH))
    answer = triton_client.infer("ultrasound", [image], headers=dict(AUTH))
    assert answer.as_numpy("probabilities").shape == (1, 2)


def test_the_token_is_read_on_the_node_and_never_stored_in_serves_config(secured):
    from ray import serve
    from ray.serve.context import _get_global_client

    details = _get_global_client().get_serve_details()
    ingress = details["applications"]["medray"]["deployments"]["Ingress"]["deployment_config"]
    assert ingress["ray_actor_options"]["num_cpus"] == 0.1  # what Serve shows of the ingress...
    assert TOKEN not in json.dumps(details, default=str)  # ...and of everything else holds no token
    token_file = secured["token_file"]
    handle = serve.get_deployment_handle("Ingress", app_name="medray")
    assert handle.auth_settings.remote().result(timeout_s=30) == {"token_file": str(token_file)}
    assert token_file.read_text() == TOKEN
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600


def test_serve_update_from_a_shell_without_the_token_keeps_the_auth(secured, monkeypatch):
    from medray.serve.app import update

    monkeypatch.delenv("MEDRAY_API_TOKEN")  # what `medray serve update` runs, from such a shell
    updated = update(secured["config"], secured["storage"])
    assert updated["auth"] is True and updated["changed"] == {}
    client = secured["client"]
    assert client.get("/v1/models").status_code == 401
    assert client.get("/v1/models", headers=AUTH).status_code == 200


# Examples per operation, each sent with and without the token: about 20 s on 2 cores.
# (The probes take no input: Hypothesis stops once it has tried their one request.)
FUZZ_EXAMPLES = {"GET /healthz": 5, "GET /readyz": 5, "GET /v1/models": 10,
                 "POST /v1/models/{name}/predict": 120, "POST /v1/models/{name}/predict-file": 60,
                 "GET /v2/health/live": 3, "GET /v2/health/ready": 3, "GET /v2": 3, "GET /v2/models/{name}": 10,
                 "GET /v2/models/{name}/versions/{version}": 10, "GET /v2/models/{name}/ready": 5,
                 "GET /v2/models/{name}/versions/{version}/ready": 5, "POST /v2/models/{name}/infer": 100,
                 "POST /v2/models/{name}/versions/{version}/infer": 30}
PROBE_PATHS = ("/healthz", "/readyz", "/v2/health/live", "/v2/health/ready")


def _generated(case) -> set[str]:
    """Every value schemathesis made up for this request, as text."""
    found: set[str] = set()

    def walk(node):
        if isinstance(node, dict):
            for key, value in node.items():
                walk(key)
                walk(value)
        elif isinstance(node, (list, tuple)):
            for value in node:
                walk(value)
        elif isinstance(node, bytes):
            walk(node.decode("utf-8", "ignore"))
        elif isinstance(node, str):
            found.add(node)
        elif isinstance(node, (int, float)) and not isinstance(node, bool):
            found.update({str(node), json.dumps(node)})

    for part in (case.query, dict(case.headers or {}), case.body):
        walk(part)
    for value in case.path_parameters.values():  # schemathesis keeps them URL-encoded, as sent
        walk(unquote(str(value)))
    return found


def _echoed(text: str, value: str, own_words: str) -> bool:
    """Whether a response repeats a made-up value: one long enough not to turn up by
    chance, not a word of the server's own (schemathesis also sends the schema's
    words), and standing alone rather than inside a longer number or word."""
    if len(value.strip()) < 4 or value in own_words:
        return False
    for form in {value, json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1]}:
        if re.search(rf"(?<![\w.]){re.escape(form)}(?![\w.])", text):
            return True
    return False


def test_schemathesis_finds_no_5xx_and_no_echo_with_or_without_the_token(secured):
    import requests
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st

    url, client = secured["deployed"]["url"], secured["client"]
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json", headers=AUTH, timeout=30)
    operations = {op.label: op for op in (result.ok() for result in schema.get_all_operations())}
    assert sorted(operations) == sorted(FUZZ_EXAMPLES)  # every route the API documents
    own_words = json.dumps(schema.raw_schema) + client.get("/v1/models", headers=AUTH).text + \
        client.get("/v1/models").text  # the server's own refusal
    models = ["ecg", "records", "ultrasound"]
    session = requests.Session()
    statuses: dict[str, Counter] = {label: Counter() for label in operations}
    modes = [schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE]

    for label, operation in operations.items():
        takes_input = "{name}" in operation.path
        cases = st.one_of([operation.as_strategy(mode) for mode in (modes if takes_input else modes[:1])])
        if takes_input:  # half with a served model's name, or nearly every request stops at the 404
            cases = st.one_of(cases, st.one_of([operation.as_strategy(mode, path_parameters={"name": name})
                                                for mode in modes for name in models]))

        @settings(max_examples=FUZZ_EXAMPLES[label], deadline=None, database=None, derandomize=True,
                  phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
        @given(case=cases)
        def fuzz(case):
            made_up = _generated(case)
            for headers in (AUTH, {}):
                response = case.call(base_url=url, session=session, headers=headers, timeout=60)
                statuses[label][response.status_code] += 1
                assert response.status_code < 500, (label, response.status_code, response.content[:300])
                if not headers and operation.path not in PROBE_PATHS:
                    assert response.status_code == 401, (label, response.status_code)
                text = response.content.decode("utf-8", "replace")
                assert not [v for v in made_up if _echoed(text, v, own_words)], (label, text[:300])

        fuzz()
    print("STATUSES", statuses)
    # Enough requests reached the models, with and without decodable inputs.
    predict = statuses["POST /v1/models/{name}/predict"]
    assert predict[401] >= 100 and predict[422] >= 30 and predict[404] >= 5
    infer = statuses["POST /v2/models/{name}/infer"]
    assert infer[401] >= 80 and infer[400] >= 20 and infer[404] >= 5


def test_an_open_ingress_refuses_to_start_beyond_loopback(secured, tmp_path):
    from medray.serve.app import app_builder
    from medray.serve.deployments import token_to_require

    refusal = "refusing to serve without an API token while Serve's HTTP proxy listens on 0.0.0.0"
    with pytest.raises(ConfigError, match=refusal):
        app_builder({"storage": secured["storage"].root, "overrides": OVERRIDES})  # serve_config.yaml, no token named
    with pytest.raises(ConfigError, match=refusal):
        token_to_require({})  # what every ingress runs first, however it was deployed
    (tmp_path / "token").write_text(TOKEN)
    assert token_to_require({"token_file": str(tmp_path / "token")}) == TOKEN
