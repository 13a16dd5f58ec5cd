"""What Ray Train costs per epoch over plain PyTorch, with the same model, data and threads.

    (a) plain     one process, medray's pure steps (`train.steps`), a checkpoint per epoch
    (b) ray_1w    `train.job.run_training`, 1 worker x 1 CPU
    (c) ray_2w    `train.job.run_training`, 2 workers x 1 CPU
    (d) torchrun  2 gloo processes doing DDP on the same loop as (a), rank 0 checkpointing

(a) and (d) are `benchmarks/ddp_baseline.py`. Every variant runs in this one invocation,
with Ray started first (its start-up is reported on its own), so machine drift hits all.
An epoch's wall time is the interval between consecutive epochs' `finished_at` (taken
after train+validation, so it also holds the previous epoch's report and checkpoint);
the first epoch is dropped. Setup is launch (process start, or the `run_training` call)
to the first epoch's start. Prints JSON with medians and the ratios b/a and c/d.

    python benchmarks/train_overhead.py [--source NPZ] [--epochs 6] [--quick] [--storage URI]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
BASELINE = PROJECT / "benchmarks" / "ddp_baseline.py"
CONFIG_FILE = PROJECT / "train" / "configs" / "breastmnist_cnn.yaml"
DATASET = "breastmnist"


def overrides(epochs: int) -> list[str]:
    """Fixed epochs, no early stop, no bootstrap; 1 CPU (so 1 torch thread) per worker."""
    base = [] if CONFIG_FILE.is_file() else ["model.family=cnn", "model.preset=seed"]
    return [*base, f"data.dataset={DATASET}", f"optim.epochs={epochs}", "train.patience=0", "eval.bootstrap=0",
            "scaling.cpus_per_worker=1"]


def load(extra: list[str]):
    from cluster.config import load_config

    return load_config(CONFIG_FILE if CONFIG_FILE.is_file() else None, extra)


def summarise(history: list[dict], setup_seconds: float, train_rows: int) -> dict:
    """Per-epoch wall times from consecutive `finished_at`, first epoch dropped."""
    finished = [row["finished_at"] for row in history]
    walls = [b - a for a, b in zip(finished, finished[1:])]
    compute = [row["epoch_seconds"] for row in history[1:]]
    median = statistics.median(walls)
    return {
        "setup_seconds": setup_seconds,
        "epoch_seconds_median": median,
        "epoch_seconds_all": walls,
        "examples_per_second": train_rows / median,
        # Train+validation alone, timed inside the loop; the rest of an epoch's wall time
        # is reporting and checkpointing.
        "compute_seconds_median": statistics.median(compute),
        "between_epochs_seconds_median": statistics.median(w - c for w, c in zip(walls, compute)),
        "epochs": len(history),
    }


def run_baseline(storage_root: str, config_overrides: list[str], processes: int) -> dict:
    """(a) with 1 process, (d) with torchrun and `processes` ranks; stdout goes to stderr."""
    with tempfile.TemporaryDirectory(prefix="medray-bench-") as scratch:
        out = Path(scratch) / "result.json"
        launcher = [sys.executable] if processes == 1 else \
            [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(PROJECT)}
        launched = time.time()
        config_file = ["--config", str(CONFIG_FILE)] if CONFIG_FILE.is_file() else []
        subprocess.run([*launcher, str(BASELINE), "--storage", storage_root, "--out", str(out), *config_file,
                        *config_overrides], check=True, cwd=PROJECT, env=env, stdout=sys.stderr)
        result = json.loads(out.read_text())
    summary = summarise(result["history"], result["first_epoch_started_at"] - launched, result["train_rows"])
    summary["checkpoint_seconds_median"] = statistics.median(row["checkpoint_seconds"] for row in result["history"])
    summary["threads_per_process"] = result["threads"]
    return summary


def latest_progress(storage, run_uri: str) -> dict:
    """`progress.json` of the run's highest-epoch checkpoint."""
    run_key = storage.key_of(run_uri)
    progresses = [storage.read_json(f"{run_key}/{name}/progress.json")
                  for name in storage.list_dir(run_key)
                  if name.startswith("checkpoint_") and storage.exists(f"{run_key}/{name}/progress.json")]
    return max(progresses, key=lambda progress: progress["epoch"])


def run_ray(storage, config_overrides: list[str], workers: int) -> dict:
    from train.data.dataset import read_manifest
    from train.job import run_training

    config = load([*config_overrides, f"scaling.num_workers={workers}", f"train.name=bench-ray-{workers}w"])
    called = time.time()
    error = None
    try:
        run_uri = run_training(config, storage)["run"]
    except Exception as failure:  # noqa: BLE001
        # The epochs are what is timed here: a failure after them (in the final
        # evaluation) is reported with the numbers, not in their place. A failure
        # during training leaves fewer epochs in the history and stops below.
        error, run_uri = f"{type(failure).__name__}: {failure}", storage.uri(f"runs/{config.train.name}")
    total = time.time() - called
    history = latest_progress(storage, run_uri)["history"]
    if len(history) != config.optim.epochs:
        raise RuntimeError(f"the latest checkpoint holds {len(history)} epochs, expected {config.optim.epochs}")
    first_epoch_started = history[0]["finished_at"] - history[0]["epoch_seconds"]
    train_rows = read_manifest(storage, DATASET)["splits"]["train"]["rows"]
    result = {**summarise(history, first_epoch_started - called, train_rows), "run_training_seconds": total}
    return {**result, "error_after_training": error} if error else result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default=str(PROJECT.parent / "shared" / "data" / "breastmnist.npz"),
                        help="MedMNIST .npz to import (default: ../shared/data/breastmnist.npz)")
    parser.add_argument("--epochs", type=int, default=6, help="epochs per variant (the first is dropped)")
    parser.add_argument("--quick", action="store_true", help="3 epochs: a smoke run")
    parser.add_argument("--storage", help="storage root (default: a temporary folder)")
    args = parser.parse_args()
    epochs = 3 if args.quick else args.epochs
    if epochs < 2:
        parser.error("--epochs must be at least 2: the first epoch is dropped")
    benchmark_started = time.perf_counter()
    load_before = os.getloadavg()

    import ray
    import torch

    from cluster.storage import Storage
    from train.data.importers import ImportRequest, import_dataset

    torch.set_num_threads(1)
    config_overrides = overrides(epochs)
    with tempfile.TemporaryDirectory(prefix="medray-bench-") as scratch:
        storage = Storage(args.storage or f"file://{scratch}")
        import_dataset(storage, ImportRequest(kind="medmnist", source=args.source, name=DATASET))
        started = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        ray_init_seconds = time.perf_counter() - started

        variants = {
            "plain": lambda: run_baseline(storage.root, config_overrides, 1),
            "ray_1worker": lambda: run_ray(storage, config_overrides, 1),
            "ray_2workers": lambda: run_ray(storage, config_overrides, 2),
            "torchrun_2procs": lambda: run_baseline(storage.root, config_overrides, 2),
        }
        results = {}
        for name, run in variants.items():
            print(f"--- {name}", file=sys.stderr, flush=True)
            results[name] = run()
        ray.shutdown()

    print(json.dumps({
        "benchmark": "train_overhead",
        "variants": results,
        "ray_1worker_over_plain": results["ray_1worker"]["epoch_seconds_median"]
        / results["plain"]["epoch_seconds_median"],
        "ray_2workers_over_torchrun": results["ray_2workers"]["epoch_seconds_median"]
        / results["torchrun_2procs"]["epoch_seconds_median"],
        "ray_init_seconds": ray_init_seconds,
        "config": load(config_overrides).model_dump(),
        "overrides": config_overrides,
        "source": args.source,
        "torch": torch.__version__,
        "ray": ray.__version__,
        "cpu_count": os.cpu_count(),
        # Other work on the machine skews every variant; 1-minute load before and after.
        "load_average_1min": [load_before[0], os.getloadavg()[0]],
        "benchmark_seconds": time.perf_counter() - benchmark_started,
    }, indent=2))


if __name__ == "__main__":
    main()
