"""The latency of one small gloo all-reduce between 2 processes, inside Ray Train
workers and under torchrun, side by side: what bounds a data-parallel step that is mostly
collectives (GlobalBatchNorm's moments, two per BatchNorm layer a step).

    python benchmarks/allreduce_latency.py [--count 3000] [--elements 64]

Prints JSON: microseconds per all-reduce for each and the ratio Ray / torchrun.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WARM_UP = 200


def time_all_reduce(count: int, elements: int) -> float:
    """Microseconds per all-reduce of `elements` floats, in an initialised process group."""
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    tensor = torch.zeros(elements)
    for _ in range(WARM_UP):
        dist.all_reduce(tensor)
    started = time.perf_counter()
    for _ in range(count):
        dist.all_reduce(tensor)
    return (time.perf_counter() - started) / count * 1e6


def under_torchrun(count: int, elements: int) -> float:
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "us.json"
        subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        __file__, "--rank-of-torchrun", str(out), "--count", str(count), "--elements", str(elements)],
                       check=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=sys.stderr)
        return json.loads(out.read_text())["us"]


def in_ray_train(count: int, elements: int) -> float:
    import ray
    import ray.train
    from ray.train import ScalingConfig
    from ray.train.torch import TorchTrainer

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory() as folder:
            out = Path(folder) / "us.json"  # one machine: rank 0 writes, the driver reads

            def loop() -> None:
                us = time_all_reduce(count, elements)
                if ray.train.get_context().get_world_rank() == 0:
                    out.write_text(json.dumps({"us": us}))

            TorchTrainer(loop, scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
                         run_config=ray.train.RunConfig(storage_path=folder)).fit()
            return json.loads(out.read_text())["us"]
    finally:
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--elements", type=int, default=64)
    parser.add_argument("--rank-of-torchrun", help=argparse.SUPPRESS)  # set when torchrun starts this file
    args = parser.parse_args()
    if args.rank_of_torchrun:
        import torch.distributed as dist

        dist.init_process_group("gloo")
        us = time_all_reduce(args.count, args.elements)
        if dist.get_rank() == 0:
            Path(args.rank_of_torchrun).write_text(json.dumps({"us": us}))
        dist.barrier()
        dist.destroy_process_group()
        return
    torchrun = under_torchrun(args.count, args.elements)
    ray_train = in_ray_train(args.count, args.elements)
    print(json.dumps({"benchmark": "allreduce_latency", "elements": args.elements, "count": args.count,
                      "torchrun_us": round(torchrun, 1), "ray_train_us": round(ray_train, 1),
                      "ray_over_torchrun": round(ray_train / torchrun, 3), "cpu_count": os.cpu_count()}, indent=2))


if __name__ == "__main__":
    main()
