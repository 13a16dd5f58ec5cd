"""Streaming a 224x224 dataset from S3 every epoch against caching it in memory, 1 worker.

BreastMNIST upscaled to 224x224 (`write_resized_medmnist`, the 780 images with their
official splits) is imported into the local S3 server (moto, on 127.0.0.1), then
`train/configs/breastmnist_cnn_224.yaml` trains on it through Ray Train with one worker,
`--rounds` times interleaved:
  (a) streaming  `train.cache_data=false`: each epoch reads the worker's shard (and the
                 validation split) from S3 through Ray Data again, decoding on the way;
  (b) cached     `train.cache_data=true`: read once before the first epoch, then in memory;
  (c) streaming from local disk (file:// storage, the same dataset): what streaming costs
      when the store is not a server on the same two cores. The S3 server's own CPU time
      per epoch is reported for (a) and (b): here moto, a Python process, serves every
      byte from the cores the worker trains on, which a real S3 does not.
Epoch wall times as `benchmarks/train_overhead.py` takes them (consecutive epochs'
`finished_at`, the first epoch dropped). Prints JSON: epoch images/s (train rows / median
epoch) of each, the ratios a/b (target at least 0.8) and c/b, and each summary.

    python benchmarks/stream_epoch.py [--epochs 4] [--rounds 2] [--size 224] [key=value ...]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from train_overhead import DATASET, PROJECT, CpuSampler, overrides, run_ray, summarise

CONFIG_FILE = PROJECT / "train" / "configs" / "breastmnist_cnn_224.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4, help="epochs per run (the first is dropped)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved (a, b) rounds")
    parser.add_argument("--size", type=int, default=224, help="side BreastMNIST is upscaled to")
    parser.add_argument("--shared", default=str(PROJECT.parent / "shared" / "data"))
    parser.add_argument("--variants", default="streaming,cached,streaming_local_disk")
    parser.add_argument("overrides", nargs="*", help="more config overrides, key=value")
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: the first epoch is dropped")

    import boto3
    import psutil
    import ray

    from medray.cluster.local_s3 import LocalS3
    from medray.cluster.runtime import RAY_TUNING
    from medray.cluster.storage import Storage
    from medray.train.data.importers import ImportRequest, import_dataset
    from medray.train.data.medmnist import write_resized_medmnist

    started = time.perf_counter()
    config_overrides = overrides(args.epochs, args.overrides, CONFIG_FILE)
    with tempfile.TemporaryDirectory(prefix="medray-bench-") as scratch, LocalS3.start() as server, \
            contextlib.redirect_stdout(sys.stderr):  # Ray's driver prints to stdout; it is kept for the JSON
        os.environ.update(server.client_env("bench"))
        os.environ.pop("AWS_REGION", None)
        boto3.client("s3").create_bucket(Bucket="bench")
        stores = {"s3": Storage("s3://bench/store"), "disk": Storage(f"file://{scratch}/store")}
        source = write_resized_medmnist(Path(args.shared) / "breastmnist.npz", Path(scratch), args.size)
        for store in stores.values():
            manifest = import_dataset(store, ImportRequest(kind="medmnist", source=str(source), name=DATASET))
        s3_server = psutil.Process(server.process.pid)
        for key, value in RAY_TUNING.items():  # the settings `medray` starts Ray with
            os.environ.setdefault(key, value)
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        every = {"streaming": ("s3", "train.cache_data=false"), "cached": ("s3", "train.cache_data=true"),
                 "streaming_local_disk": ("disk", "train.cache_data=false")}
        variants = {name: every[name] for name in args.variants.split(",")}
        runs: dict[str, list[dict]] = {name: [] for name in variants}
        server_cpu: dict[str, list[float]] = {name: [] for name in variants}
        with CpuSampler() as sampler:
            for round_index in range(args.rounds):
                for name, (store, setting) in variants.items():
                    print(f"--- {name} (round {round_index + 1}/{args.rounds})", file=sys.stderr, flush=True)
                    before = sum(s3_server.cpu_times()[:2])
                    runs[name].append(run_ray(stores[store], CONFIG_FILE, [*config_overrides, setting], 1,
                                              round_index, label=f"-{name}"))
                    server_cpu[name].append((sum(s3_server.cpu_times()[:2]) - before) / args.epochs)
        ray.shutdown()
    results = {name: summarise(variant_runs, sampler) for name, variant_runs in runs.items()}
    rate = {name: r["examples_per_second"] for name, r in results.items()}
    print(json.dumps({
        "benchmark": "stream_epoch",
        "image_side": args.size,
        "train_rows": manifest["splits"]["train"]["rows"],
        "train_pixel_bytes": manifest["splits"]["train"]["rows"] * args.size ** 2,
        "epoch_images_per_s": {name: round(value, 1) for name, value in rate.items()},
        **{f"{name}_over_cached": round(rate[name] / rate["cached"], 3)
           for name in ("streaming", "streaming_local_disk") if name in rate and "cached" in rate},
        "s3_server_cpu_seconds_per_epoch": {name: [round(v, 2) for v in values] for name, values in server_cpu.items()},
        "target": "streaming_over_cached >= 0.8",
        "variants": results,
        "overrides": config_overrides,
        "rounds": args.rounds,
        "benchmark_seconds": round(time.perf_counter() - started, 1),
    }, indent=2))


if __name__ == "__main__":
    main()
