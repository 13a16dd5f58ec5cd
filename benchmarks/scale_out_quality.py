"""Does adding workers keep the model's quality? Test AUROC with 1, 2 and 4 data-parallel
workers, over seeds, for shipped configs, with the global batch and learning rate the
config states (each worker trains on batch_size / workers; BatchNorm layers use the
global batch's moments, `scaling.sync_batch_norm`).

Needs the configs' datasets imported (README, "Importing data"). Prints JSON: per config
and worker count, test AUROC and accuracy per seed, their mean and sd, and the gap of
each mean to one worker's. On a 2-core machine 4 workers each get half a core.

    python benchmarks/scale_out_quality.py [--configs breastmnist_cnn,ecg200_rnn] \
        [--workers 1,2,4] [--seeds 0,1,2] [--storage URI] [key=value ...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from medray.train.evaluate import mean_sd

ROOT = Path(__file__).resolve().parents[1]


def train(config: Path, seed: int, workers: int, cpus: int, storage: str | None, extra: list[str]) -> dict:
    command = [sys.executable, "-m", "medray.cli", "train", str(config), "--json", f"train.seed={seed}",
               f"scaling.num_workers={workers}", f"scaling.cpus_per_worker={cpus / workers:g}", *extra]
    if storage:
        command[4:4] = ["--storage", storage]
    result = subprocess.run(command, capture_output=True, text=True, env=os.environ)
    if result.returncode:
        raise SystemExit(f"{config.name} seed {seed}, {workers} workers failed:\n{result.stderr[-3000:]}")
    metrics = json.loads(result.stdout)["metrics"]["test"]
    return {"seed": seed, "auroc": metrics["auroc"], "accuracy": metrics["accuracy"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="breastmnist_cnn,ecg200_rnn")
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 2, help="CPUs shared by the workers")
    parser.add_argument("--storage")
    parser.add_argument("overrides", nargs="*", help="key=value applied to every run")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    report = {}
    for name in args.configs.split(","):
        config = ROOT / "train" / "configs" / f"{name}.yaml"
        by_workers = {}
        for workers in (int(w) for w in args.workers.split(",")):
            runs = []
            for seed in seeds:
                print(f"{name}: {workers} worker(s), seed {seed} ...", file=sys.stderr, flush=True)
                runs.append(train(config, seed, workers, args.cpus, args.storage, args.overrides))
            by_workers[str(workers)] = {"runs": runs, "auroc": mean_sd([r["auroc"] for r in runs]),
                                        "accuracy": mean_sd([r["accuracy"] for r in runs])}
        first = by_workers[min(by_workers, key=int)]["auroc"]["mean"]
        for entry in by_workers.values():
            entry["auroc_gap_to_fewest_workers"] = round(entry["auroc"]["mean"] - first, 4)
        report[name] = by_workers
    print(json.dumps({"benchmark": "scale_out_quality", "seeds": seeds, "overrides": args.overrides,
                      "configs": report, "target": "every auroc_gap_to_fewest_workers >= -0.01"}, indent=2))


if __name__ == "__main__":
    main()
