"""The Ray Serve layer: a FastAPI ingress and one autoscaling deployment per model.

`ModelServer` holds one `ServedModel` (serve/model.py) and batches predictions with
`@serve.batch`. Which registry version it serves comes in its `user_config`, so a new
champion reaches live replicas through `reconfigure()`: the new version is loaded
beside the old one and swapped in one assignment, and requests already holding the old
one finish with it. The ingress checks the token and the body size, turns every request
problem into a 4xx that names the field, and never logs or echoes request bodies.
"""

# No `from __future__ import annotations` here: FastAPI reads the route parameters'
# annotations at runtime, and Serve's ingress wrapping cannot resolve them from strings.
import asyncio
import hmac
import json
import logging
import os
import time
from typing import Any

from fastapi import FastAPI, File, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray import serve

from serve.schemas import ModelList, PredictRequest, PredictResponse, Problem

log = logging.getLogger("ray.serve")
TOKEN_VARIABLE = "MEDRAY_API_TOKEN"


@serve.deployment
class ModelServer:
    def __init__(self) -> None:
        self.model = None
        self.loaded: tuple[str, str, int] | None = None

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        import torch

        from cluster.registry import Registry
        from cluster.storage import Storage
        from serve.model import ServedModel

        torch.set_num_threads(max(1, int(user_config.get("threads", 1))))
        wanted = (user_config["storage"], user_config["name"], int(user_config["version"]))
        if wanted != self.loaded:
            model = ServedModel.from_registry(Registry(Storage(wanted[0])), wanted[1], wanted[2])
            self.model, self.loaded = model, wanted  # one assignment: requests see old or new, whole
            log.info("serving model %s version %d", wanted[1], wanted[2])
        self.predict_batch.set_max_batch_size(int(user_config["max_batch_size"]))
        self.predict_batch.set_batch_wait_timeout_s(float(user_config["batch_wait_timeout_s"]))

    def info(self) -> dict[str, Any]:
        return self.model.info()

    def pid(self) -> int:
        return os.getpid()

    async def predict(self, instances: list[Any], explain: bool = False) -> dict[str, Any]:
        """{"predictions": [...]} or {"error": message} for a request the model cannot take."""
        from serve.model import InputError

        model = self.model  # this request is answered by one version, even across a swap
        try:
            inputs = model.decode(instances)
        except InputError as error:
            return {"error": str(error)}
        if explain:
            answers = model.predict(inputs)
            for answer, why in zip(answers, model.explain(inputs)):
                answer["explanation"] = why
            return {"predictions": answers}
        return {"predictions": await self.predict_batch((model, inputs))}

    async def predict_file(self, data: bytes) -> dict[str, Any]:
        from serve.model import InputError

        model = self.model
        try:
            inputs = model.decode_file(data)
        except InputError as error:
            return {"error": str(error)}
        return {"predictions": await self.predict_batch((model, inputs))}

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def predict_batch(self, requests: list[tuple[Any, Any]]) -> list[list[dict[str, Any]]]:
        """Many requests, one forward pass per model version among them."""
        import torch

        answers: list[list[dict[str, Any]] | None] = [None] * len(requests)
        for model in {id(m): m for m, _ in requests}.values():
            chosen = [i for i, (m, _) in enumerate(requests) if m is model]
            batch = torch.cat([requests[i][1] for i in chosen])
            flat = model.predict(batch)
            start = 0
            for i in chosen:
                count = len(requests[i][1])
                answers[i] = flat[start:start + count]
                start += count
        return answers


app = FastAPI(
    title="medray",
    version="1",
    description="Predictions from the model registry's champions. Send `Authorization: Bearer <token>` "
                "when the server was started with MEDRAY_API_TOKEN.",
)


@app.exception_handler(RequestValidationError)
async def _validation_problem(_request: Request, error: RequestValidationError) -> JSONResponse:
    # FastAPI's default answer echoes the submitted input; name only where and what.
    problems = ["/".join(str(part) for part in e.get("loc", ())) + f": {e.get('msg', 'invalid')}"
                for e in error.errors()]
    return JSONResponse({"detail": "; ".join(problems)}, status_code=422)


class BodyLimit:
    """ASGI middleware: refuse a body over `limit` bytes with 413, before parsing it."""

    def __init__(self, asgi, limit: int) -> None:
        self.asgi, self.limit = asgi, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.asgi(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await _send_problem(send, 413, f"request body exceeds {self.limit} bytes")
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
            return await _send_problem(send, 413, f"request body exceeds {self.limit} bytes")


class _TooLarge(Exception):
    pass


async def _send_problem(send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _problem(status: int, detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status)


PROBLEMS = {401: {"model": Problem}, 404: {"model": Problem}, 413: {"model": Problem}, 422: {"model": Problem}}


@serve.deployment
@serve.ingress(app)
class Ingress:
    def __init__(self, models: dict[str, Any], settings: dict[str, Any]) -> None:
        from ray.serve.metrics import Counter, Histogram

        self.models, self.settings = models, settings
        self.token = os.environ.get(TOKEN_VARIABLE) or None
        app.add_middleware(BodyLimit, limit=int(settings["max_body_bytes"]))
        self.requests = Counter("medray_requests_total", description="Predict requests by model and status.",
                                tag_keys=("model", "status"))
        self.latency = Histogram("medray_request_latency_ms", description="Predict latency by model (ms).",
                                 boundaries=[1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000],
                                 tag_keys=("model",))

    def _refused(self, request: Request) -> JSONResponse | None:
        if self.token is None:
            return None
        offered = request.headers.get("authorization", "")
        if not hmac.compare_digest(offered.encode(), f"Bearer {self.token}".encode()):
            return JSONResponse({"detail": "missing or wrong bearer token"}, status_code=401,
                                headers={"WWW-Authenticate": "Bearer"})
        return None

    @app.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", responses={503: {"model": Problem}})
    async def readyz(self):
        try:
            infos = await asyncio.wait_for(asyncio.gather(*(h.info.remote() for h in self.models.values())), 5)
        except Exception:  # a model still loading or being replaced: not ready yet
            return _problem(503, "not every model is loaded yet")
        return {"status": "ready", "models": {i["name"]: i["version"] for i in infos}}

    @app.get("/v1/models", response_model=ModelList, responses=PROBLEMS)
    async def list_models(self, request: Request):
        if refused := self._refused(request):
            return refused
        infos = await asyncio.gather(*(h.info.remote() for h in self.models.values()))
        return {"models": infos}

    @app.post("/v1/models/{name}/predict", response_model=PredictResponse, response_model_exclude_none=True,
              responses=PROBLEMS,
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": PredictRequest.model_json_schema()}}}})
    async def predict(self, name: str, request: Request):
        if refused := self._refused(request):
            return refused
        handle = self.models.get(name)
        if handle is None:
            return _problem(404, f"no model named '{name}' is served; GET /v1/models lists them")
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _problem(422, "body: must be JSON")
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

    @app.post("/v1/models/{name}/predict-file", response_model=PredictResponse, response_model_exclude_none=True,
              responses=PROBLEMS)
    async def predict_file(self, name: str, request: Request, file: UploadFile = File(...)):
        if refused := self._refused(request):
            return refused
        handle = self.models.get(name)
        if handle is None:
            return _problem(404, f"no model named '{name}' is served; GET /v1/models lists them")
        return await self._answer(name, handle.predict_file.remote(await file.read()))

    async def _answer(self, name: str, pending) -> JSONResponse | dict:
        started = time.perf_counter()
        result = await pending
        status = "422" if "error" in result else "200"
        self.requests.inc(tags={"model": name, "status": status})
        self.latency.observe((time.perf_counter() - started) * 1000, tags={"model": name})
        if "error" in result:
            return _problem(422, result["error"])
        return result
