"""The Ray Serve layer: a FastAPI ingress and one autoscaling deployment per model.

`ModelReplica` holds one `ServedModel` (serve/model.py) and batches predictions with
`@serve.batch`. Which registry version it serves comes in its `user_config`, so a new
champion reaches live replicas through `reconfigure()` (serve/app.py pins the code
version so that Serve does not restart them instead): the new version is loaded beside
the old one and swapped in one assignment, and requests already holding the old one
finish with it.

Two ways to lay the deployments out (serve/app.py builds both):
- `medray serve up`: each model is the ingress of its own application
  (`ModelApplication`, at `/v2/models/NAME`), so an Open Inference Protocol request
  crosses Serve's proxy and one model replica, nothing else; the `Ingress` application at `/`
  answers `/v1`, the model list, the probes and the docs, calling the model
  applications by handle (two hops, as `/v1` always did).
- a Serve config file (`app_builder`): one application, the ingress with `ModelServer`
  deployments bound into it (Serve takes one FastAPI deployment per application); every
  route, `/v2` too, goes through the ingress.
Both answer the same routes with the same code (`v2_infer_answer`, `v2_metadata_answer`).

Every HTTP entry (the ingress, a model application) checks the token (in ASGI middleware,
from the headers alone, before any route or body parser runs) and the body size, turns
every request problem into a 4xx that names the field, and never logs or echoes request
bodies. Their settings name where the token lies on the node, `{"token_env": NAME}` or
`{"token_file": PATH}`, never the token itself: Serve shows deployment arguments and
runtime environments in its config and dashboard. Without a token they refuse to start
unless Serve's HTTP proxy listens on loopback only.
"""

# No `from __future__ import annotations` here: FastAPI reads the route parameters'
# annotations at runtime, and Serve's ingress wrapping cannot resolve them from strings.
import asyncio
import hmac
import ipaddress
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI, File, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from medray.cluster.bounded_json import parse_json_body
from medray.cluster.errors import ConfigError, InputError
from medray.serve import inference_protocol as v2
from medray.serve import web
from medray.serve.schemas import (InferError, InferRequest, InferResponse, ModelList, PredictRequest, PredictResponse,
                                  Problem, inline_schema)

log = logging.getLogger("ray.serve")
TOKEN_VARIABLE = "MEDRAY_API_TOKEN"
PROBES = frozenset({"/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"})
"""Routes open without the token: they answer ready or not, and nothing else."""
OPEN_PATHS = PROBES | web.OPEN_PATHS
"""Every route open without the token: the probes and the web page's static files."""
V2 = "/v2"
"""The Open Inference Protocol's routes, whose errors are `{"error": ...}` as it defines them."""


model_api = FastAPI(title="medray model", docs_url=None, redoc_url=None, openapi_url=None)
"""A model application's routes, under its route prefix `/v2/models/NAME`. No docs of its
own: the ingress's OpenAPI document describes these paths, one place for the API."""


app = FastAPI(
    title="medray",
    version="1",
    description="Predictions from the model registry's champions. Send `Authorization: Bearer <token>` "
                "on every route but the probes when the server was started with a token.",
)


@app.exception_handler(RequestValidationError)
@model_api.exception_handler(RequestValidationError)
async def _validation_problem(request: Request, error: RequestValidationError) -> JSONResponse:
    # FastAPI's default answer echoes the submitted input; name only where and what.
    problems = ["/".join(str(part) for part in e.get("loc", ())) + f": {e.get('msg', 'invalid')}"
                for e in error.errors()]
    return JSONResponse(_problem_body(request.scope, "; ".join(problems)), status_code=422)


def _problem_body(scope, detail: str) -> dict[str, str]:
    """A problem as the route's protocol words it: `/v1`'s `detail`, the OIP's `error`.
    A model application's routes are all the OIP's: its root path is /v2/models/NAME."""
    speaks_v2 = any(path == V2 or path.startswith(V2 + "/") for path in (_route_path(scope), scope.get("root_path", "")))
    return {"error": detail} if speaks_v2 else {"detail": detail}


class BodyLimit:
    """ASGI middleware: refuse a body over `limit` bytes with 413, before parsing it."""

    def __init__(self, asgi, limit: int) -> None:
        self.asgi, self.limit = asgi, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.asgi(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await _send_problem(send, scope, 413, f"request body exceeds {self.limit} bytes")
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise _TooLarge
            return message

        try:
            return await self.asgi(scope, limited_receive, send)
        except _TooLarge:
            return await _send_problem(send, scope, 413, f"request body exceeds {self.limit} bytes")


class _TooLarge(Exception):
    pass


class PrefixAsRoot:
    """ASGI middleware: a request for the route prefix itself (GET /v2/models/NAME, the
    protocol's metadata) is routed as `/`. Starlette would answer it with a redirect to
    the prefix plus a slash, which the protocol's clients do not follow."""

    def __init__(self, asgi) -> None:
        self.asgi = asgi

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and _route_path(scope) == "":
            scope = {**scope, "path": scope["path"] + "/", "raw_path": scope.get("raw_path", b"") + b"/"}
        return await self.asgi(scope, receive, send)


model_api.add_middleware(PrefixAsRoot)


class BearerAuth:
    """ASGI middleware: every route but the probes and the web page's static files needs
    `Authorization: Bearer <token>`.

    It decides from the request's headers alone and answers 401 without calling `receive`,
    so no byte of an unauthenticated body is read, let alone parsed; the docs and the
    OpenAPI document are behind it too."""

    def __init__(self, asgi, token: str) -> None:
        self.asgi, self.token = asgi, token.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket") or _route_path(scope) in OPEN_PATHS or self._admits(scope):
            return await self.asgi(scope, receive, send)
        if scope["type"] == "websocket":
            return await send({"type": "websocket.close", "code": 1008})
        return await _send_problem(send, scope, 401, "missing or wrong bearer token",
                                   [(b"www-authenticate", b"Bearer")])

    def _admits(self, scope) -> bool:
        offered = next((value for key, value in scope.get("headers") or [] if key == b"authorization"), b"")
        scheme, _, credential = offered.partition(b" ")
        # compare_digest: the time taken does not tell how much of a guess was right.
        return scheme.lower() == b"bearer" and hmac.compare_digest(credential.strip(), self.token)


def _route_path(scope) -> str:
    """The path the app routes on (Starlette's rule): the request path less root_path."""
    path, root = scope.get("path", ""), scope.get("root_path", "")
    return path[len(root):] if root and path.startswith(root) else path


async def _send_problem(send, scope, status: int, detail: str, headers: list[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps(_problem_body(scope, detail)).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})


def read_token(auth: dict[str, str]) -> str | None:
    """The API token from where `auth` names it on this node; None when it names nowhere.

    A named place that is missing or empty is an error, not an open API: the operator
    asked for a token, so the ingress must not start without one."""
    if set(auth) - {"token_env", "token_file"} or len(auth) > 1:
        raise ConfigError("the ingress's auth setting takes one of token_env: NAME or token_file: PATH")
    if "token_env" in auth:
        where, token = f"environment variable {auth['token_env']}", os.environ.get(auth["token_env"], "")
    elif "token_file" in auth:
        where = f"file {auth['token_file']}"
        try:
            token = Path(auth["token_file"]).read_text()
        except (OSError, UnicodeDecodeError):
            token = ""
    else:
        return None
    if not token.strip():  # a Secret mounted as a file often ends in a newline; the token does not
        raise ConfigError(f"the API token's {where} is missing or empty on this node")
    return token.strip()


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def proxy_options():
    """Serve's HTTP options (the `host` and `port` its proxies listen on) as the running
    controller has them, which may differ from what a later `serve.start` asked for."""
    from ray.serve.context import _get_global_client

    return _get_global_client().http_config


def refuse_open_beyond_loopback(token: str | None, host: str) -> None:
    if token is None and not is_loopback(host):
        raise ConfigError(f"refusing to serve without an API token while Serve's HTTP proxy listens on {host}: "
                          f"set {TOKEN_VARIABLE} (or name a token_env / token_file), or bind the proxy to 127.0.0.1")


def token_to_require(auth: dict[str, str]) -> str | None:
    """What the ingress starts with: the token `auth` names, read on this node, or None for
    an open API, which it refuses unless Serve's proxy listens on loopback only. Every way
    of deploying (`serve up`, a Serve config, `app_builder`) builds the ingress, so this is
    the check none of them can skip."""
    token = read_token(auth)
    refuse_open_beyond_loopback(token, proxy_options().host)
    return token


def _problem(status: int, detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status)


def _v2_error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _no_such_model() -> JSONResponse:
    # The path's name is the caller's text: not repeated back.
    return _problem(404, "name: no such model is served; GET /v1/models lists them")


def guard(api: FastAPI, settings: dict[str, Any]) -> str | None:
    """Put the token check and the body limit in front of `api`'s routes; returns the token
    (None: an open API, refused unless the proxy listens on loopback only)."""
    token = token_to_require(dict(settings.get("auth") or {}))
    api.add_middleware(BodyLimit, limit=int(settings["max_body_bytes"]))
    if token is not None:  # added last, so outermost: a 401 comes before any body limit or parser
        api.add_middleware(BearerAuth, token=token)
    return token


class RequestMetrics:
    """Request counts and latency per model and status, as Prometheus metrics. The labels
    are the model's name and the HTTP status, never anything from the request."""

    def __init__(self) -> None:
        from ray.serve.metrics import Counter, Histogram

        self.requests = Counter("medray_requests_total", description="Predict requests by model and status.",
                                tag_keys=("model", "status"))
        self.latency = Histogram("medray_request_latency_ms", description="Predict latency by model (ms).",
                                 boundaries=[1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000],
                                 tag_keys=("model",))

    def record(self, model: str, status: int, started: float) -> None:
        self.requests.inc(tags={"model": model, "status": str(status)})
        self.latency.observe((time.perf_counter() - started) * 1000, tags={"model": model})


def v2_metadata_answer(metadata: dict[str, Any], version: str | None) -> dict[str, Any] | JSONResponse:
    """A served model's protocol metadata, or 404 when `version` is not the one it serves."""
    if version is not None and [version] != metadata["versions"]:
        return _v2_error(404, f"version: this model serves version {metadata['versions'][0]}")
    return metadata


def v2_ready_answer(name: str, metadata: dict[str, Any] | Response) -> dict[str, Any] | Response:
    return metadata if isinstance(metadata, Response) else {"name": name, "ready": True}


async def v2_infer_answer(request: Request, version: str | None, max_instances: int, infer,
                          metrics: RequestMetrics, name: str) -> Response:
    """An Open Inference Protocol infer request answered: the body checked and parsed
    (serve/inference_protocol.py), the tensors handed to `infer(inputs, version)` (a model
    replica's `infer`, called directly or by handle), the answer encoded as asked."""
    started = time.perf_counter()
    if version is not None and not version.isdigit():
        return _v2_error(404, "version: must be a version number")
    if request.headers.get("content-encoding", "identity").lower() != "identity":
        # A compressed body's size is not its cost: refused before reading it.
        return _v2_error(415, "content-encoding: compressed request bodies are not accepted")
    try:
        parsed = v2.parse_infer_request(await request.body(), request.headers.get(v2.HEADER_LENGTH))
    except InputError as error:
        return _v2_error(400, str(error))
    if any(t.ndim == 0 or not 1 <= t.shape[0] <= max_instances for t in parsed.inputs.values()):
        return _v2_error(400, f"inputs: each input's first dimension (instances) must be 1 to {max_instances}")
    result = await infer(parsed.inputs, None if version is None else int(version))
    status = 404 if "missing" in result else 400 if "error" in result else 200
    metrics.record(name, status, started)
    if status != 200:
        return _v2_error(status, result.get("missing") or result["error"])
    model_outputs = result["outputs"]
    wanted = list(parsed.outputs) if parsed.outputs is not None else model_outputs
    unknown = sum(output not in model_outputs for output in wanted)
    if unknown:
        return _v2_error(400, f"outputs: {unknown} output(s) the model does not give; "
                              f"it gives: {', '.join(model_outputs)}")
    body, headers = v2.encode_response(result["model"], result["version"], parsed,
                                       v2.output_tensors(result["predictions"], wanted))
    return Response(content=body, headers=headers)


def _openapi_with_bearer() -> dict[str, Any]:
    """The OpenAPI document, saying which operations need the bearer token."""
    if app.openapi_schema is None:
        schema = FastAPI.openapi(app)
        schema.setdefault("components", {})["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        for path, operations in schema["paths"].items():
            for operation in operations.values():
                operation["security"] = [] if path in PROBES else [{"bearer": []}]
        app.openapi_schema = schema
    return app.openapi_schema


class ModelReplica:
    """One model's replica: its version loaded, requests decoded and batched. Deployed as
    `ModelServer` behind the ingress, or as `ModelApplication`, its own application."""

    def __init__(self) -> None:
        self.model = None
        self.loaded: tuple[str, str, int, str] | None = None

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        import torch

        from medray.cluster.registry import Registry
        from medray.cluster.storage import Storage
        from medray.serve.model import ServedModel

        torch.set_num_threads(max(1, int(user_config.get("threads", 1))))
        wanted = (user_config["storage"], user_config["name"], int(user_config["version"]),
                  user_config.get("runtime", "torch"))
        if wanted != self.loaded:
            model = ServedModel.from_registry(Registry(Storage(wanted[0])), *wanted[1:])
            self.model, self.loaded = model, wanted  # one assignment: requests see old or new, whole
            log.info("serving model %s version %d", wanted[1], wanted[2])
        self.predict_batch.set_max_batch_size(int(user_config["max_batch_size"]))
        self.predict_batch.set_batch_wait_timeout_s(float(user_config["batch_wait_timeout_s"]))

    def info(self) -> dict[str, Any]:
        return self.model.info()

    def protocol_metadata(self) -> dict[str, Any]:
        return self.model.protocol_metadata()

    def pid(self) -> int:
        return os.getpid()

    async def predict(self, instances: list[Any], explain: bool = False) -> dict[str, Any]:
        """{"predictions": [...]} or {"error": message} for a request the model cannot take."""
        model = self.model  # this request is answered by one version, even across a swap
        try:
            inputs = model.decode(instances)
            if explain:
                answers = model.predict(inputs)
                for answer, why in zip(answers, model.explain(inputs)):
                    answer["explanation"] = why
                return {"predictions": answers}
        except InputError as error:
            return {"error": str(error)}
        return await self.predict_batch((model, inputs))

    async def infer(self, tensors: dict[str, Any], version: int | None = None) -> dict[str, Any]:
        """An Open Inference Protocol request's tensors, answered as `predict` answers
        (with the model and version that answered), or {"error"}, or {"missing"} when
        `version` is not the one served."""
        model = self.model
        if version is not None and version != model.version:
            return {"missing": f"version: this model serves version {model.version}"}
        try:
            inputs = model.decode_tensors(tensors)
        except InputError as error:
            return {"error": str(error)}
        return {**await self.predict_batch((model, inputs)), "model": model.name, "version": model.version,
                "outputs": model.protocol_outputs}

    async def predict_file(self, data: bytes) -> dict[str, Any]:
        model = self.model
        try:
            inputs = model.decode_file(data)
        except InputError as error:
            return {"error": str(error)}
        return await self.predict_batch((model, inputs))

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.0)  # both set by reconfigure()
    async def predict_batch(self, requests: list[tuple[Any, Any]]) -> list[dict[str, Any]]:
        """Many requests, one forward pass per model version among them; each request is
        answered (or refused, when the model gave no usable answer for it) on its own."""
        answers: list[dict[str, Any] | None] = [None] * len(requests)
        for model in {id(m): m for m, _ in requests}.values():
            chosen = [i for i, (m, _) in enumerate(requests) if m is model]
            for i, answer in zip(chosen, model.predict_requests([requests[i][1] for i in chosen])):
                answers[i] = answer
        return answers


ModelServer = serve.deployment(ModelReplica, name="ModelServer")
"""A model behind the ingress, which calls it by handle (a Serve config file's layout:
Serve takes one FastAPI deployment per application, the ingress)."""


@serve.deployment
@serve.ingress(model_api)
class ModelApplication(ModelReplica):
    """A model as its own application's ingress, at /v2/models/NAME: the Open Inference
    Protocol's per-model routes answered in this replica, the request's only hop after
    Serve's proxy. `settings` (max_instances, max_body_bytes, auth) as the ingress has them."""

    def __init__(self, settings: dict[str, Any]) -> None:
        super().__init__()
        self.max_instances = int(settings["max_instances"])
        guard(model_api, settings)
        self.metrics = RequestMetrics()

    @model_api.get("/")
    async def v2_model(self):
        return v2_metadata_answer(self.protocol_metadata(), None)

    @model_api.get("/ready")
    async def v2_model_ready(self):
        return v2_ready_answer(self.model.name, v2_metadata_answer(self.protocol_metadata(), None))

    @model_api.get("/versions/{version}")
    async def v2_model_version(self, version: str):
        return v2_metadata_answer(self.protocol_metadata(), version)

    @model_api.get("/versions/{version}/ready")
    async def v2_model_version_ready(self, version: str):
        return v2_ready_answer(self.model.name, v2_metadata_answer(self.protocol_metadata(), version))

    @model_api.post("/infer")
    async def v2_infer(self, request: Request):
        return await v2_infer_answer(request, None, self.max_instances, self.infer, self.metrics, self.model.name)

    @model_api.post("/versions/{version}/infer")
    async def v2_infer_version(self, version: str, request: Request):
        return await v2_infer_answer(request, version, self.max_instances, self.infer, self.metrics, self.model.name)


@model_api.exception_handler(StarletteHTTPException)
async def _v2_http_problem(request: Request, error: StarletteHTTPException) -> JSONResponse:
    return _v2_error(error.status_code, "path: no such route of the model; see /docs" if error.status_code == 404
                     else str(error.detail))


PROBLEMS = {401: {"model": Problem}, 404: {"model": Problem}, 413: {"model": Problem}, 422: {"model": Problem}}
V2_ERRORS = {status: {"model": InferError} for status in (400, 401, 404, 413, 415, 503)}
V2_INFER = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": inline_schema(InferRequest)},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}
"""The infer body as the OpenAPI document shows it: JSON, or JSON then binary tensor data
(with Inference-Header-Content-Length); parsed by serve/inference_protocol.py."""


@serve.deployment
@serve.ingress(app)
class Ingress:
    def __init__(self, models: dict[str, Any], settings: dict[str, Any]) -> None:
        """`models`: name -> the model's deployment, bound into this application (a handle)
        or the name of the application whose ingress it is (looked up here)."""
        self.models = {name: serve.get_deployment_handle(f"model-{name}", app_name=where) if isinstance(where, str)
                       else where for name, where in models.items()}
        self.settings = settings
        self.auth = dict(settings.get("auth") or {})
        if guard(app, settings) is not None:
            app.openapi = _openapi_with_bearer
        self.metrics = RequestMetrics()

    def auth_settings(self) -> dict[str, str]:
        """Where this ingress reads its token (a name or a path, never the token), for
        `medray serve update` to redeploy with the same."""
        return dict(self.auth)

    @app.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", responses={503: {"model": Problem}})
    async def readyz(self):
        # Open to anyone who can reach the port, so it names no model and no version.
        try:
            await asyncio.wait_for(asyncio.gather(*(h.info.remote() for h in self.models.values())), 5)
        except Exception:  # a model still loading or being replaced: not ready yet
            return _problem(503, "not every model is loaded yet")
        return {"status": "ready"}

    @app.get("/v1/models", response_model=ModelList, responses=PROBLEMS)
    async def list_models(self):
        infos = await asyncio.gather(*(h.info.remote() for h in self.models.values()))
        return {"models": infos}

    # exclude_unset, not exclude_none: a field the answer leaves out stays out, and
    # `out_of_distribution: null` (a version with no OOD detector) still says so.
    @app.post("/v1/models/{name}/predict", response_model=PredictResponse, response_model_exclude_unset=True,
              responses=PROBLEMS,
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": PredictRequest.model_json_schema()}}}})
    async def predict(self, name: str, request: Request):
        handle = self.models.get(name)
        if handle is None:
            return _no_such_model()
        try:
            body = parse_json_body(await request.body())
        except InputError as error:  # not JSON, not UTF-8, nested too deep, an integer too long
            return _problem(422, str(error))
        if not isinstance(body, dict) or not isinstance(body.get("instances"), list):
            return _problem(422, "instances: required, a list")
        extra = sorted(set(body) - {"instances", "explain"})
        if extra:
            return _problem(422, f"body: {len(extra)} unknown field(s); allowed: instances, explain")
        explain = body.get("explain", False)
        if not isinstance(explain, bool):
            return _problem(422, "explain: must be true or false")
        count, most = len(body["instances"]), int(self.settings["max_instances"])
        if not 1 <= count <= most:
            return _problem(422, f"instances: must hold 1 to {most} items, got {count}")
        return await self._answer(name, handle.predict.remote(body["instances"], explain))

    @app.post("/v1/models/{name}/predict-file", response_model=PredictResponse, response_model_exclude_unset=True,
              responses=PROBLEMS)
    async def predict_file(self, name: str, file: UploadFile = File(...)):
        handle = self.models.get(name)
        if handle is None:
            return _no_such_model()
        return await self._answer(name, handle.predict_file.remote(await file.read()))

    # The web page (serve/web.py): static files that call the routes above. ------------
    @app.get(web.PAGE, include_in_schema=False)
    @app.get(web.PAGE + "/", include_in_schema=False)
    async def page(self, request: Request):
        return web.asset("index.html", request.scope.get("root_path", ""))

    @app.get(web.PAGE + "/{name}", include_in_schema=False)
    async def page_file(self, name: str, request: Request):
        # The name is the caller's text: not repeated back.
        return web.asset(name, request.scope.get("root_path", "")) or _problem(404, "path: the page has no such file")

    # The Open Inference Protocol (KServe v2); serve/inference_protocol.py maps it. -----
    @app.get("/v2/health/live", responses=V2_ERRORS)
    async def v2_live(self) -> dict[str, bool]:
        return {"live": True}

    @app.get("/v2/health/ready", responses=V2_ERRORS)
    async def v2_ready(self):
        ready = await self.readyz()
        return {"ready": True} if isinstance(ready, dict) else _v2_error(503, "not every model is loaded yet")

    @app.get("/v2", responses=V2_ERRORS)
    async def v2_server(self) -> dict[str, Any]:
        return {"name": "medray", "version": app.version, "extensions": [v2.BINARY_EXTENSION]}

    @app.get("/v2/models/{name}", responses=V2_ERRORS)
    async def v2_model(self, name: str):
        return await self._v2_info(name, None)

    @app.get("/v2/models/{name}/versions/{version}", responses=V2_ERRORS)
    async def v2_model_version(self, name: str, version: str):
        return await self._v2_info(name, version)

    @app.get("/v2/models/{name}/ready", responses=V2_ERRORS)
    async def v2_model_ready(self, name: str):
        return v2_ready_answer(name, await self._v2_info(name, None))

    @app.get("/v2/models/{name}/versions/{version}/ready", responses=V2_ERRORS)
    async def v2_model_version_ready(self, name: str, version: str):
        return v2_ready_answer(name, await self._v2_info(name, version))

    @app.post("/v2/models/{name}/infer", response_model=InferResponse, responses=V2_ERRORS,
              openapi_extra=V2_INFER)
    async def v2_infer(self, name: str, request: Request):
        return await self._v2_infer(name, None, request)

    @app.post("/v2/models/{name}/versions/{version}/infer", response_model=InferResponse,
              responses=V2_ERRORS, openapi_extra=V2_INFER)
    async def v2_infer_version(self, name: str, version: str, request: Request):
        return await self._v2_infer(name, version, request)

    async def _v2_info(self, name: str, version: str | None) -> dict[str, Any] | Response:
        """The served model's protocol metadata, or the protocol's error: no such model or
        version, or not loaded yet."""
        handle = self.models.get(name)
        if handle is None:
            return _v2_error(404, "name: no such model is served; GET /v1/models lists them")
        try:
            metadata = await asyncio.wait_for(handle.protocol_metadata.remote(), 5)
        except Exception:  # loading or being replaced
            return _v2_error(503, "the model is not loaded yet")
        return v2_metadata_answer(metadata, version)

    async def _v2_infer(self, name: str, version: str | None, request: Request) -> Response:
        handle = self.models.get(name)
        if handle is None:
            return _v2_error(404, "name: no such model is served; GET /v1/models lists them")
        return await v2_infer_answer(request, version, int(self.settings["max_instances"]), handle.infer.remote,
                                     self.metrics, name)

    async def _answer(self, name: str, pending) -> JSONResponse | dict:
        started = time.perf_counter()
        result = await pending
        self.metrics.record(name, 422 if "error" in result else 200, started)
        if "error" in result:
            return _problem(422, result["error"])
        return result
