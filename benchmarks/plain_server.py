"""Baseline (c) of `serve_throughput.py`: one process, FastAPI + PyTorch, no Ray, no
batching. The same `ServedModel` (decode, predict) as a medray replica, so the difference
is what Serve's batching and replicas buy.

    python benchmarks/plain_server.py --storage URI --model NAME --port PORT
"""

# (No `from __future__ import annotations`: FastAPI resolves the routes' annotations at runtime.)

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import torch
    import uvicorn
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    from medray.cluster.registry import Registry
    from medray.cluster.storage import Storage
    from medray.serve.model import InputError, ServedModel

    torch.set_num_threads(args.threads)
    registry = Registry(Storage(args.storage))
    _, version = registry.resolve(args.model)
    model = ServedModel.from_registry(registry, args.model, version)
    app = FastAPI()

    @app.post("/v1/models/{name}/predict")
    async def predict(name: str, request: Request):
        body = await request.json()
        try:
            inputs = model.decode(body["instances"])
        except InputError as error:
            return JSONResponse({"detail": str(error)}, status_code=422)
        return {"predictions": model.predict(inputs)}

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
