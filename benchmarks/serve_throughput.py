"""Serving throughput and latency, side by side, plus an autoscaling step.

    (a) serve_batched    medray's Serve app, 1 model replica, @serve.batch (max 32), `/v1` JSON
    (a2) serve_v2_json   the same app, the Open Inference Protocol with JSON tensors (one hop:
                         proxy, then the model's replica; `/v1` also crosses the ingress)
    (a3) serve_v2_binary the same app, OIP with the binary tensor extension (tritonclient's default)
    (a4) serve_batched_onnx  (a) with `serve.runtime=onnx`: ONNX Runtime runs the replica's forward
    (a5) serve_v2_binary_onnx  (a3) with `serve.runtime=onnx`
    (b) serve_unbatched  (a) with max_batch_size 1
    (c) plain_fastapi    one process, FastAPI + PyTorch, no batching (benchmarks/plain_server.py)
    (d) ceiling          batched `model.forward` in a loop: no HTTP, no decoding of JSON
    (e) serve_noop       a Serve deployment answering a fixed body to the same request: the
                         proxy and one replica, Serve's own HTTP cost and the most (a) can reach
    (f) serve_noop_two_hops  the same answer through an ingress deployment and a handle call to
                         a second one, as `/v1` is laid out: what the second hop costs

Each of (a)-(c) and (e) gets closed-loop clients at concurrency 1, 8 and 32 for `--seconds`,
each request one image; requests/s, p50 and p99 in ms. All model work uses one torch
thread. Then the autoscaling run: 1 client, a step to 32 for `--step-seconds`, then none;
it reports the replica count over time, the seconds to scale up, and non-2xx responses.
Also the forward pass alone in PyTorch and in ONNX Runtime on the exported graph
(`medray models export`), batch 32, one thread each. Prints JSON with the ratios at
concurrency 32 and the p50 at concurrency 1 against the no-op deployment.

    python benchmarks/serve_throughput.py [--storage URI] [--model breastmnist] [--seconds 6]

The model is the registry's champion (e.g. after `medray tune train/configs/breastmnist_cnn.yaml
--promote`); requests are real BreastMNIST test images from ../shared/data.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))] if ordered else float("nan")


async def closed_loop(url: str, body: dict, concurrency: int, seconds: float) -> dict:
    """`body`: what each request sends, as httpx's `post` keywords (json=, or content= and headers=)."""
    import httpx

    latencies: list[float] = []
    failures = 0
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        async def worker():
            nonlocal failures
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                try:
                    response = await client.post(url, **body)
                    ok = response.status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    latencies.append((time.perf_counter() - started) * 1000)
                else:
                    failures += 1

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    return {"concurrency": concurrency, "requests_per_s": round(len(latencies) / elapsed, 1),
            "p50_ms": round(percentile(latencies, 50), 1), "p99_ms": round(percentile(latencies, 99), 1),
            "failed": failures}


def measure(url: str, body: dict, seconds: float) -> list[dict]:
    asyncio.run(closed_loop(url, body, 4, 1.0))  # warm-up
    return [asyncio.run(closed_loop(url, body, c, seconds)) for c in (1, 8, 32)]


def ceiling(storage, model_name: str, image, seconds: float) -> dict:
    import torch

    from medray.cluster.registry import Registry
    from medray.serve.model import ServedModel

    torch.set_num_threads(1)
    registry = Registry(storage)
    model = ServedModel.from_registry(registry, *registry.resolve(model_name))
    batch = model.decode([image.tolist()] * 32)
    model.predict(batch)
    done, began = 0, time.perf_counter()
    while time.perf_counter() - began < seconds:
        model.predict(batch)
        done += 32
    return {"instances_per_s": round(done / (time.perf_counter() - began), 1), "batch": 32}


def wait_http(url: str, seconds: float = 60) -> None:
    import httpx

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} did not come up")


def autoscaling_run(config_overrides: list[str], storage, model: str, body: dict, step_seconds: float) -> dict:
    from medray.cluster.config import load_config
    from medray.serve.app import deploy

    config = load_config(None, config_overrides + [
        "serve.autoscaling.min_replicas=1", "serve.autoscaling.max_replicas=3",
        "serve.autoscaling.target_ongoing_requests=2", "serve.autoscaling.upscale_delay_s=1",
        "serve.autoscaling.downscale_delay_s=5", "serve.replica_cpus=0.5", "serve.max_batch_size=8"])
    deployed = deploy(config, storage, [model])
    url = f"{deployed['url']}/v1/models/{model}/predict"
    timeline: list[tuple[float, int]] = []
    began = time.perf_counter()

    async def run() -> dict:
        async def sample():
            while True:
                count = await asyncio.to_thread(running_replicas, model)  # off the loop the clients run on
                timeline.append((round(time.perf_counter() - began, 1), count))
                await asyncio.sleep(0.5)

        sampler = asyncio.create_task(sample())
        low = await closed_loop(url, body, 1, 3.0)
        step_started = time.perf_counter() - began
        high = await closed_loop(url, body, 32, step_seconds)
        step_ended = time.perf_counter() - began
        deadline = time.perf_counter() + 60
        while time.perf_counter() < deadline and (not timeline or timeline[-1][1] > 1):
            await asyncio.sleep(1)
        sampler.cancel()
        return {"low": low, "high": high, "step_started_s": round(step_started, 1),
                "step_ended_s": round(step_ended, 1)}

    loads = asyncio.run(run())
    peak = max(count for _, count in timeline)
    scaled_up = next((t for t, count in timeline if t >= loads["step_started_s"] and count > 1), None)
    back_down = next((t for t, count in timeline if t >= loads["step_ended_s"] and count == 1), None)
    return {"replicas_before": timeline[0][1], "replicas_peak": peak,
            "seconds_to_scale_up": None if scaled_up is None else round(scaled_up - loads["step_started_s"], 1),
            "seconds_to_scale_down_after_load": None if back_down is None else
            round(back_down - loads["step_ended_s"], 1),
            "non_2xx": loads["low"]["failed"] + loads["high"]["failed"],
            "load": {"1_client": loads["low"], "32_clients": loads["high"]},
            "replica_timeline": timeline}


def noop_app(answer: bytes):
    """(e): one deployment, its own ingress, answering `answer` to any POST after reading the body."""
    from ray import serve
    from starlette.responses import Response

    @serve.deployment(ray_actor_options={"num_cpus": 1}, max_ongoing_requests=64)
    class NoOp:
        async def __call__(self, request) -> Response:
            await request.body()
            return Response(answer, media_type="application/json")

    return NoOp.bind()


def noop_two_hops_app(answer: bytes):
    """(f): an ingress passing the body to a second deployment by handle, which answers `answer`."""
    from ray import serve
    from starlette.responses import Response

    @serve.deployment(ray_actor_options={"num_cpus": 1}, max_ongoing_requests=64)
    class NoOpModel:
        async def predict(self, body: bytes) -> bytes:
            return answer

    @serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=256)
    class NoOpIngress:
        def __init__(self, model) -> None:
            self.model = model

        async def __call__(self, request) -> Response:
            return Response(await self.model.predict.remote(await request.body()), media_type="application/json")

    return NoOpIngress.bind(NoOpModel.bind())


def v2_bodies(image) -> dict[str, dict]:
    """One image as an OIP request: JSON tensors, and the binary extension as tritonclient sends it."""
    import tritonclient.http as triton

    pixels = image[None]
    json_body = {"inputs": [{"name": "image", "datatype": "UINT8", "shape": list(pixels.shape),
                             "data": pixels.ravel().tolist()}]}
    tensor = triton.InferInput("image", list(pixels.shape), "UINT8")
    tensor.set_data_from_numpy(pixels)
    content, header_length = triton.InferenceServerClient.generate_request_body([tensor])
    return {"serve_v2_json": {"json": json_body},
            "serve_v2_binary": {"content": content, "headers": {"Inference-Header-Content-Length": str(header_length),
                                                                "Content-Type": "application/octet-stream"}}}


def runtimes(storage, model_name: str, image, seconds: float) -> dict:
    """The forward pass alone, batch 32, one thread: the replica's PyTorch path against
    ONNX Runtime on the exported graph (which also holds the preprocessing and softmax)."""
    import tempfile

    import numpy as np
    import onnxruntime
    import torch

    from medray.cluster.registry import Registry
    from medray.serve.export import export_version, raw_example
    from medray.serve.model import ServedModel

    torch.set_num_threads(1)
    registry = Registry(storage)
    name, version = registry.resolve(model_name)
    model = ServedModel.from_registry(registry, name, version)
    instances = [image.tolist()] * 32
    tensor = model.decode(instances).tensor
    raw = raw_example(model, instances)

    def rate(step) -> float:
        step()
        done, began = 0, time.perf_counter()
        while time.perf_counter() - began < seconds:
            step()
            done += 32
        return round(done / (time.perf_counter() - began), 1)

    with tempfile.TemporaryDirectory() as folder:
        export_version(registry, name, version, "onnx", Path(folder))
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        session = onnxruntime.InferenceSession(str(Path(folder) / "model.onnx"), options)
        onnx_rate = rate(lambda: session.run(None, {"input": raw}))
        agree = float(np.abs(session.run(None, {"input": raw})[0] - np.array(
            [list(a["calibrated_probabilities"].values()) for a in model.predict(model.decode(instances))])).max())
    torch_rate = rate(lambda: model._forward(tensor))
    return {"torch_instances_per_s": torch_rate, "onnxruntime_instances_per_s": onnx_rate,
            "onnxruntime_vs_torch": round(onnx_rate / torch_rate, 3), "max_abs_difference": agree, "batch": 32}


def scale_to_zero_run(config_overrides: list[str], storage, model: str, body: dict, wait_seconds: float = 90) -> dict:
    """`min_replicas: 0`: how long after the last request the deployment reaches zero
    replicas, and what the first request after that takes (held until a replica is up)."""
    import httpx

    from medray.cluster.config import load_config
    from medray.serve.app import deploy

    config = load_config(None, config_overrides + [
        "serve.autoscaling.min_replicas=0", "serve.autoscaling.max_replicas=1",
        "serve.autoscaling.downscale_delay_s=2", "serve.autoscaling.upscale_delay_s=0", "serve.replica_cpus=0.5"])
    deployed = deploy(config, storage, [model])
    url = f"{deployed['url']}/v1/models/{model}/predict"
    warm = httpx.post(url, timeout=120, **body).status_code
    idle_since = time.perf_counter()
    seconds_to_zero = None
    while time.perf_counter() - idle_since < wait_seconds:
        if live_replicas(model) == 0:
            seconds_to_zero = round(time.perf_counter() - idle_since, 1)
            break
        time.sleep(0.5)
    started = time.perf_counter()
    cold = httpx.post(url, timeout=120, **body).status_code
    return {"warm_status": warm, "seconds_to_zero_replicas": seconds_to_zero,
            "cold_start_seconds": round(time.perf_counter() - started, 2) if seconds_to_zero is not None else None,
            "cold_request_status": cold, "waited_seconds": wait_seconds}


def replica_states(model: str) -> dict[str, int]:
    from ray import serve

    from medray.serve.app import model_app_name

    app = serve.status().applications[model_app_name(model)]
    return {str(getattr(state, "value", state)): count
            for state, count in app.deployments[f"model-{model}"].replica_states.items()}


def running_replicas(model: str) -> int:
    return replica_states(model).get("RUNNING", 0)


def live_replicas(model: str) -> int:
    """Replicas running or on their way (starting, updating, recovering): zero only when
    the deployment has really scaled to zero, not while a replica is being reconfigured."""
    return sum(count for state, count in replica_states(model).items() if state != "STOPPING")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", default=os.environ.get("MEDRAY_STORAGE"), help="registry root (MEDRAY_STORAGE)")
    parser.add_argument("--model", default="breastmnist")
    parser.add_argument("--seconds", type=float, default=6.0, help="per concurrency level")
    parser.add_argument("--step-seconds", type=float, default=60.0, help="the autoscaling step's length")
    parser.add_argument("--images", default=str(PROJECT.parent / "shared" / "data" / "breastmnist.npz"))
    args = parser.parse_args()

    import contextlib

    import numpy as np

    from medray.cluster.errors import MedrayError
    from medray.cluster.registry import Registry
    from medray.cluster.storage import Storage

    storage = Storage.from_cli(args.storage)
    try:
        Registry(storage).resolve(args.model)
    except MedrayError as error:  # say what to do, in one line, before starting anything
        sys.exit(f"serve_throughput: {error}; train and promote one first, e.g. "
                 "`medray tune train/configs/breastmnist_cnn.yaml --promote`")
    image = np.load(args.images)["test_images"][0]
    # Ray and Serve print to stdout (a raylet's notes, deploy messages): stdout is kept for the JSON.
    with contextlib.redirect_stdout(sys.stderr):
        results = run(args, storage, image)
    print(json.dumps(results, indent=2))


def run(args, storage, image) -> dict:
    import ray
    from ray import serve

    from medray.cluster.config import load_config
    from medray.serve.app import deploy, down

    body = {"json": {"instances": [image.tolist()]}}
    port = 8470
    results: dict = {"model": args.model, "cpus": os.cpu_count(), "seconds_per_level": args.seconds}

    results["ceiling"] = ceiling(storage, args.model, image, args.seconds)
    results["runtimes"] = runtimes(storage, args.model, image, args.seconds)

    plain = subprocess.Popen([sys.executable, str(PROJECT / "benchmarks" / "plain_server.py"), "--storage",
                              storage.root, "--model", args.model, "--port", str(port + 1)], stdout=sys.stderr)
    try:
        wait_http(f"http://127.0.0.1:{port + 1}/healthz")
        results["plain_fastapi"] = measure(f"http://127.0.0.1:{port + 1}/v1/models/{args.model}/predict", body,
                                           args.seconds)
    finally:
        plain.terminate()
        plain.wait(timeout=30)

    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    # Serve's throughput mode is not medray's default (see README); RAY_SERVE_THROUGHPUT_OPTIMIZED=1
    # in the shell measures it.
    results["serve_throughput_optimized"] = os.environ.get("RAY_SERVE_THROUGHPUT_OPTIMIZED", "0")
    fixed = [f"serve.port={port}", "serve.autoscaling.min_replicas=1", "serve.autoscaling.max_replicas=1",
             "serve.replica_cpus=1", "serve.max_ongoing_requests=64"]
    for variant, batch, runtime in (("serve_batched", 32, "torch"), ("serve_batched_onnx", 32, "onnx"),
                                    ("serve_unbatched", 1, "torch")):
        deployed = deploy(load_config(None, fixed + [f"serve.max_batch_size={batch}", f"serve.runtime={runtime}"]),
                          storage, [args.model])
        results[variant] = measure(f"{deployed['url']}/v1/models/{args.model}/predict", body, args.seconds)
        if variant == "serve_batched":
            answer = __import__("httpx").post(f"{deployed['url']}/v1/models/{args.model}/predict", **body,
                                              timeout=60).content
            for name, v2_body in v2_bodies(image).items():
                results[name] = measure(f"{deployed['url']}/v2/models/{args.model}/infer", v2_body, args.seconds)
        if variant == "serve_batched_onnx":
            results["serve_v2_binary_onnx"] = measure(f"{deployed['url']}/v2/models/{args.model}/infer",
                                                      v2_bodies(image)["serve_v2_binary"], args.seconds)
    down()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(noop_app(answer), name="noop", route_prefix="/noop")
    results["serve_noop"] = measure(f"http://127.0.0.1:{port}/noop", body, args.seconds)
    serve.delete("noop")
    serve.run(noop_two_hops_app(answer), name="noop2", route_prefix="/noop2")
    results["serve_noop_two_hops"] = measure(f"http://127.0.0.1:{port}/noop2", body, args.seconds)
    serve.delete("noop2")
    results["autoscaling"] = autoscaling_run([f"serve.port={port}"], storage, args.model, body, args.step_seconds)
    results["scale_to_zero"] = scale_to_zero_run([f"serve.port={port}"], storage, args.model, body)
    down()
    serve.shutdown()
    ray.shutdown()

    medray_paths = ("serve_batched", "serve_v2_json", "serve_v2_binary", "serve_batched_onnx", "serve_v2_binary_onnx")
    paths = medray_paths + ("serve_unbatched", "plain_fastapi", "serve_noop", "serve_noop_two_hops")
    at32 = {name: next(r for r in results[name] if r["concurrency"] == 32)["requests_per_s"] for name in paths}
    at1 = {name: next(r for r in results[name] if r["concurrency"] == 1)["p50_ms"] for name in paths}
    best = max(medray_paths, key=lambda name: at32[name])

    def ratio(a: float, b: float) -> float | None:
        return round(a / b, 3) if b else None  # None: the baseline answered nothing (see its "failed")

    results["best_medray_path"] = best
    results["ratios_at_32"] = {
        "best_vs_serve_noop": ratio(at32[best], at32["serve_noop"]),
        "best_vs_plain_fastapi": ratio(at32[best], at32["plain_fastapi"]),
        "batched_vs_ceiling": ratio(at32["serve_batched"], results["ceiling"]["instances_per_s"]),
        "batched_vs_unbatched": ratio(at32["serve_batched"], at32["serve_unbatched"]),
        "targets": {"best_vs_serve_noop": ">= 0.8"},
    }
    # Where the gap to the no-op goes: the 2 cores' time per request beyond the no-op's,
    # beside what the batched forward pass alone costs an image (same run, same cores).
    results["cost_at_32_ms"] = {
        "best_minus_serve_noop_per_request": round(1000 / at32[best] - 1000 / at32["serve_noop"], 2),
        "forward_per_image_torch": round(1000 / results["runtimes"]["torch_instances_per_s"], 2),
        "forward_per_image_onnxruntime": round(1000 / results["runtimes"]["onnxruntime_instances_per_s"], 2),
    }
    results["p50_ms_at_1"] = {**at1, "best_minus_serve_noop": round(min(at1[n] for n in medray_paths) - at1["serve_noop"], 1),
                              "target_best_minus_serve_noop": "<= 3"}
    return results


if __name__ == "__main__":
    main()
