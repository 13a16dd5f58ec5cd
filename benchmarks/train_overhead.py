"""What Ray Train costs per epoch over plain PyTorch, with the same model, data and threads.

    (a) plain            one process, medray's pure steps (`train.steps`), a checkpoint per epoch
    (b) ray_1worker      `train.job.run_training`, 1 worker x 1 CPU
    (c) ray_2workers     `train.job.run_training`, 2 workers x 1 CPU
    (d) torchrun_2procs  2 gloo processes doing DDP on the loop of (a), rank 0 checkpointing

(a) and (d) are `benchmarks/ddp_baseline.py`. Every variant runs in this one invocation,
`--rounds` times interleaved, with Ray started first (its start-up is reported on its
own), so machine drift hits all.
An epoch's wall time is the interval between consecutive epochs' `finished_at` (taken
after train+validation, so it also holds the previous epoch's report and checkpoint);
the first epoch is dropped. Setup is launch (process start, or the `run_training` call)
to the first epoch's start. `other_work_cores` (per round) says how many cores other work
on the machine kept busy during a variant's epochs: on a shared box, trust a ratio only
when it was about the same for both variants.
Prints JSON with medians and the ratios b/a and c/d.

    python benchmarks/train_overhead.py [--source NPZ] [--config YAML] [--epochs 6] [--quick]
        [--rounds 1] [--variants plain,ray_1worker,ray_2workers,torchrun_2procs]
        [--storage URI] [key=value ...]

The config is `--config` (default `train/configs/breastmnist_cnn.yaml`, else the seed CNN)
with a fixed number of epochs, no early stopping, no bootstrap and 1 CPU per worker,
then the overrides given. At 224x224 (`--upscaled 224`: BreastMNIST upscaled by
`train.data.medmnist.write_resized_medmnist`, with `--config train/configs/breastmnist_cnn_224.yaml`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
BASELINE = PROJECT / "benchmarks" / "ddp_baseline.py"
CONFIG_FILE = PROJECT / "train" / "configs" / "breastmnist_cnn.yaml"
DATASET = "breastmnist"


def overrides(epochs: int, extra: list[str], config_file: Path = CONFIG_FILE) -> list[str]:
    """Fixed epochs, no early stop, no bootstrap; 1 CPU (so 1 torch thread) per worker."""
    base = [] if config_file.is_file() else ["model.family=cnn", "model.preset=seed"]
    return [*base, f"data.dataset={DATASET}", f"optim.epochs={epochs}", "train.patience=0", "eval.bootstrap=0",
            "scaling.cpus_per_worker=1", *extra]


def load(extra: list[str], config_file: Path = CONFIG_FILE):
    from medray.cluster.config import load_config

    return load_config(config_file if config_file.is_file() else None, extra)


class CpuSampler:
    """Every half second: the machine's busy CPU time, and each live process of this
    process tree's own CPU time (sampled because Ray's workers exit unreaped, taking
    their counts with them)."""

    def __init__(self, period: float = 0.5):
        self.period, self.samples = period, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "CpuSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(self._sample())
            self._stop.wait(self.period)

    @staticmethod
    def _sample() -> tuple[float, float, dict[str, float]]:
        tick = os.sysconf("SC_CLK_TCK")
        with open("/proc/stat") as stat:
            fields = [int(v) for v in stat.readline().split()[1:]]
        busy = (sum(fields[:8]) - fields[3] - fields[4]) / tick  # all but idle and iowait
        parents, cpu = {}, {}
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/stat") as stat:
                    values = stat.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[pid], cpu[pid] = values[1], (int(values[11]) + int(values[12])) / tick
        me, mine = str(os.getpid()), {}
        for pid in cpu:
            ancestor, seen = pid, set()
            while ancestor in parents and ancestor not in seen and ancestor != me:
                seen.add(ancestor)
                ancestor = parents[ancestor]
            if ancestor == me:
                mine[pid] = cpu[pid]
        return time.time(), busy, mine

    def other_cores(self, start: float, end: float) -> float | None:
        """Cores kept busy by anything outside this process tree between two unix times."""
        first = min(self.samples, key=lambda sample: abs(sample[0] - start))
        last = min(self.samples, key=lambda sample: abs(sample[0] - end))
        if last[0] <= first[0]:
            return None
        mine = sum(seconds - first[2].get(pid, 0.0) for pid, seconds in last[2].items())
        return (last[1] - first[1] - mine) / (last[0] - first[0])


def summarise(runs: list[dict], sampler: CpuSampler) -> dict:
    """One variant over its rounds. An epoch's wall time is the interval between
    consecutive `finished_at` within a run; each run's first epoch is dropped."""
    walls, compute = [], []
    for run in runs:
        finished = [row["finished_at"] for row in run["history"]]
        walls += [b - a for a, b in zip(finished, finished[1:])]
        compute += [row["epoch_seconds"] for row in run["history"][1:]]
    median = statistics.median(walls)
    other = [sampler.other_cores(run["history"][0]["finished_at"], run["history"][-1]["finished_at"])
             for run in runs]
    summary = {
        "setup_seconds": statistics.median(run["setup_seconds"] for run in runs),
        # The first epoch also holds one-time costs (the Ray path's first read of its shard).
        "first_epoch_seconds": statistics.median(run["history"][0]["epoch_seconds"] for run in runs),
        "epoch_seconds_median": median,
        "epoch_seconds_all": walls,
        "examples_per_second": runs[0]["train_rows"] / median,
        # Train+validation alone, timed inside the loop; the rest of an epoch's wall time
        # is reporting and checkpointing.
        "compute_seconds_median": statistics.median(compute),
        "between_epochs_seconds_median": statistics.median(w - c for w, c in zip(walls, compute)),
        # Other sessions' work competes for the same cores and skews whichever variant it overlaps.
        "other_work_cores": [round(cores, 2) if cores is not None else None for cores in other],
    }
    for key in ("threads_per_process", "checkpoint_seconds_median", "run_training_seconds", "error_after_training"):
        values = [run[key] for run in runs if key in run]
        if values:
            summary[key] = values[0] if key in ("threads_per_process", "error_after_training") else \
                statistics.median(values)
    return summary


def run_baseline(storage_root: str, config_file: Path, config_overrides: list[str], processes: int) -> dict:
    """(a) with 1 process, (d) with torchrun and `processes` ranks; stdout goes to stderr."""
    with tempfile.TemporaryDirectory(prefix="medray-bench-") as scratch:
        out = Path(scratch) / "result.json"
        launcher = [sys.executable] if processes == 1 else \
            [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(PROJECT)}
        launched = time.time()
        config = ["--config", str(config_file)] if config_file.is_file() else []
        subprocess.run([*launcher, str(BASELINE), "--storage", storage_root, "--out", str(out), *config,
                        *config_overrides], check=True, cwd=PROJECT, env=env, stdout=sys.stderr)
        result = json.loads(out.read_text())
    return {"history": result["history"], "setup_seconds": result["first_epoch_started_at"] - launched,
            "train_rows": result["train_rows"], "threads_per_process": result["threads"],
            "checkpoint_seconds_median": statistics.median(row["checkpoint_seconds"] for row in result["history"])}


def latest_progress(storage, run_uri: str) -> dict:
    """`progress.json` of the run's highest-epoch checkpoint."""
    run_key = storage.key_of(run_uri)
    progresses = [storage.read_json(f"{run_key}/{name}/progress.json")
                  for name in storage.list_dir(run_key)
                  if name.startswith("checkpoint_") and storage.exists(f"{run_key}/{name}/progress.json")]
    return max(progresses, key=lambda progress: progress["epoch"])


def run_ray(storage, config_file: Path, config_overrides: list[str], workers: int, round_index: int,
            label: str = "") -> dict:
    from medray.train.data.dataset import read_manifest
    from medray.train.job import run_training

    config = load([*config_overrides, f"scaling.num_workers={workers}",
                   f"train.name=bench-ray-{workers}w{label}-{round_index}"], config_file)
    called = time.time()
    error = None
    try:
        run_uri = run_training(config, storage)["run"]
    except Exception as failure:
        # The epochs are what is timed here: a failure after them (in the final
        # evaluation) is reported with the numbers, not in their place. A failure
        # during training leaves fewer epochs in the history and stops below.
        error, run_uri = f"{type(failure).__name__}: {failure}", storage.uri(f"runs/{config.train.name}")
    total = time.time() - called
    history = latest_progress(storage, run_uri)["history"]
    if len(history) != config.optim.epochs:
        raise RuntimeError(f"the latest checkpoint holds {len(history)} epochs, expected {config.optim.epochs}")
    first_epoch_started = history[0]["finished_at"] - history[0]["epoch_seconds"]
    result = {"history": history, "setup_seconds": first_epoch_started - called, "run_training_seconds": total,
              "train_rows": read_manifest(storage, DATASET)["splits"]["train"]["rows"]}
    return {**result, "error_after_training": error} if error else result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default=str(PROJECT.parent / "shared" / "data" / "breastmnist.npz"),
                        help="MedMNIST .npz to import (default: ../shared/data/breastmnist.npz)")
    parser.add_argument("--config", default=str(CONFIG_FILE), help="training config (default: %(default)s)")
    parser.add_argument("--upscaled", type=int, help="import BreastMNIST upscaled to this side instead of --source")
    parser.add_argument("--variants", default="plain,ray_1worker,ray_2workers,torchrun_2procs",
                        help="which variants to run (the ratios need their pairs)")
    parser.add_argument("--epochs", type=int, default=6, help="epochs per variant (the first is dropped)")
    parser.add_argument("--quick", action="store_true", help="3 epochs: a smoke run")
    parser.add_argument("--rounds", type=int, default=1, help="times to run every variant, interleaved")
    parser.add_argument("--storage", help="storage root (default: a temporary folder)")
    parser.add_argument("overrides", nargs="*", help="more config overrides, key=value (e.g. model.preset=seed)")
    args = parser.parse_args()
    epochs = 3 if args.quick else args.epochs
    if epochs < 2:
        parser.error("--epochs must be at least 2: the first epoch is dropped")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    benchmark_started = time.perf_counter()
    load_before = os.getloadavg()

    import ray
    import torch

    from medray.cluster.storage import Storage
    from medray.train.data.importers import ImportRequest, import_dataset

    torch.set_num_threads(1)
    config_file = Path(args.config)
    config_overrides = overrides(epochs, args.overrides, config_file)
    # Ray's driver prints cluster warnings to stdout; stdout is kept for the JSON.
    with tempfile.TemporaryDirectory(prefix="medray-bench-") as scratch, contextlib.redirect_stdout(sys.stderr):
        storage = Storage(args.storage or f"file://{scratch}")
        source = args.source
        if args.upscaled:
            from medray.train.data.medmnist import write_resized_medmnist

            source = str(write_resized_medmnist(Path(args.source), Path(scratch), args.upscaled))
        import_dataset(storage, ImportRequest(kind="medmnist", source=source, name=DATASET))
        started = time.perf_counter()
        from medray.cluster.runtime import RAY_TUNING

        for key, value in RAY_TUNING.items():  # the settings `medray` starts Ray with
            os.environ.setdefault(key, value)
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        ray_init_seconds = time.perf_counter() - started

        every = {
            "plain": lambda i: run_baseline(storage.root, config_file, config_overrides, 1),
            "ray_1worker": lambda i: run_ray(storage, config_file, config_overrides, 1, i),
            "ray_2workers": lambda i: run_ray(storage, config_file, config_overrides, 2, i),
            "torchrun_2procs": lambda i: run_baseline(storage.root, config_file, config_overrides, 2),
        }
        variants = {name: every[name] for name in args.variants.split(",")}
        runs: dict[str, list[dict]] = {name: [] for name in variants}
        with CpuSampler() as sampler:
            for round_index in range(args.rounds):  # interleaved, so drift hits every variant
                for name, run in variants.items():
                    print(f"--- {name} (round {round_index + 1}/{args.rounds})", file=sys.stderr, flush=True)
                    runs[name].append(run(round_index))
        ray.shutdown()
    results = {name: summarise(variant_runs, sampler) for name, variant_runs in runs.items()}

    ratios = {name: results[ray]["epoch_seconds_median"] / results[base]["epoch_seconds_median"]
              for name, ray, base in (("ray_1worker_over_plain", "ray_1worker", "plain"),
                                      ("ray_2workers_over_torchrun", "ray_2workers", "torchrun_2procs"))
              if ray in results and base in results}
    print(json.dumps({
        "benchmark": "train_overhead",
        "variants": results,
        **ratios,
        "ray_init_seconds": ray_init_seconds,
        "config": load(config_overrides, config_file).model_dump(),
        "overrides": config_overrides,
        "source": source,
        "torch": torch.__version__,
        "ray": ray.__version__,
        # Ray Train's controller takes at most one report per worker per poll (default 2 s).
        "ray_train_health_check_interval_s": os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "default (2.0)"),
        "rounds": args.rounds,
        "cpu_count": os.cpu_count(),
        "load_average_1min": [load_before[0], os.getloadavg()[0]],
        "benchmark_seconds": time.perf_counter() - benchmark_started,
    }, indent=2))


if __name__ == "__main__":
    main()
