"""Serving throughput and latency, side by side, plus an autoscaling step.

    (a) serve_batched    medray's Serve app, 1 model replica, @serve.batch (max 32)
    (b) serve_unbatched  the same with max_batch_size 1
    (c) plain_fastapi    one process, FastAPI + PyTorch, no batching (benchmarks/plain_server.py)
    (d) ceiling          batched `model.forward` in a loop: no HTTP, no decoding of JSON

Each of (a)-(c) gets closed-loop clients at concurrency 1, 8 and 32 for `--seconds`, each
request one image as JSON; requests/s, p50 and p99 in ms. All model work uses one torch
thread. Then the autoscaling run: 1 client, a step to 32 for `--step-seconds`, then none;
it reports the replica count over time, the seconds to scale up, and non-2xx responses.
Prints JSON with the ratios a/d and a/c at concurrency 32.

    python benchmarks/serve_throughput.py [--storage URI] [--model breastmnist] [--seconds 6]

The model is the registry's champion (e.g. after `medray tune train/configs/breastmnist_cnn.yaml
--promote`); requests are real BreastMNIST test images from ../shared/data.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
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
                    response = await client.post(url, json=body)
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

    def replicas() -> int:
        from ray import serve

        app = serve.status().applications["medray"]
        return sum(count for state, count in app.deployments[f"model-{model}"].replica_states.items()
                   if str(getattr(state, "value", state)) == "RUNNING")

    async def run() -> dict:
        async def sample():
            while True:
                count = await asyncio.to_thread(replicas)  # off the loop the clients run on
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", default=os.environ.get("MEDRAY_STORAGE"), help="registry root (MEDRAY_STORAGE)")
    parser.add_argument("--model", default="breastmnist")
    parser.add_argument("--seconds", type=float, default=6.0, help="per concurrency level")
    parser.add_argument("--step-seconds", type=float, default=20.0, help="the autoscaling step's length")
    parser.add_argument("--images", default=str(PROJECT.parent / "shared" / "data" / "breastmnist.npz"))
    args = parser.parse_args()

    import numpy as np
    import ray
    from ray import serve

    from medray.cluster.config import load_config
    from medray.cluster.storage import Storage
    from medray.serve.app import deploy, down

    storage = Storage.from_cli(args.storage)
    image = np.load(args.images)["test_images"][0]
    body = {"instances": [image.tolist()]}
    port = 8470
    results: dict = {"model": args.model, "cpus": os.cpu_count(), "seconds_per_level": args.seconds}

    results["ceiling"] = ceiling(storage, args.model, image, args.seconds)

    plain = subprocess.Popen([sys.executable, str(PROJECT / "benchmarks" / "plain_server.py"), "--storage",
                              storage.root, "--model", args.model, "--port", str(port + 1)])
    try:
        wait_http(f"http://127.0.0.1:{port + 1}/healthz")
        results["plain_fastapi"] = measure(f"http://127.0.0.1:{port + 1}/v1/models/{args.model}/predict", body,
                                           args.seconds)
    finally:
        plain.terminate()
        plain.wait(timeout=30)

    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    fixed = [f"serve.port={port}", "serve.autoscaling.min_replicas=1", "serve.autoscaling.max_replicas=1",
             "serve.replica_cpus=1", "serve.max_ongoing_requests=64"]
    for variant, batch in (("serve_batched", 32), ("serve_unbatched", 1)):
        deployed = deploy(load_config(None, fixed + [f"serve.max_batch_size={batch}"]), storage, [args.model])
        results[variant] = measure(f"{deployed['url']}/v1/models/{args.model}/predict", body, args.seconds)
    results["autoscaling"] = autoscaling_run([f"serve.port={port}"], storage, args.model, body, args.step_seconds)
    down()
    serve.shutdown()
    ray.shutdown()

    at32 = {name: next(r for r in results[name] if r["concurrency"] == 32)["requests_per_s"]
            for name in ("serve_batched", "serve_unbatched", "plain_fastapi")}
    def ratio(a: float, b: float) -> float | None:
        return round(a / b, 3) if b else None  # None: the baseline answered nothing (see its "failed")

    results["ratios_at_32"] = {
        "batched_vs_ceiling": ratio(at32["serve_batched"], results["ceiling"]["instances_per_s"]),
        "batched_vs_plain_fastapi": ratio(at32["serve_batched"], at32["plain_fastapi"]),
        "batched_vs_unbatched": ratio(at32["serve_batched"], at32["serve_unbatched"]),
        "targets": {"batched_vs_ceiling": ">= 0.6", "batched_vs_plain_fastapi": ">= 2"},
    }
    results["median_p50_ms"] = {name: statistics.median(r["p50_ms"] for r in results[name])
                                for name in ("serve_batched", "serve_unbatched", "plain_fastapi")}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
