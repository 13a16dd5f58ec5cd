"""ASHA + a model-based searcher vs random search run to the full budget, and where each
trial's time goes.

Both searches run the same number of trials on the same data (BreastMNIST by default),
side by side in this invocation; for each: the best validation AUROC reached, the
trial-epochs spent, the wall time, Tune's overhead (wall time against the sum of trial
times divided by the concurrency) and the mean split of a trial's wall time into
scheduling, worker start, data, epochs, checkpoints and teardown (`trial_timings` in
tune/run.py). `--workers 2` runs each trial as a TorchTrainer instead of in its Tune
function, to measure what that costs. Prints JSON with the ratios and the targets.

    python benchmarks/tune_efficiency.py [--samples 8] [--epochs 8] [--workers 1] [--source ../shared/data/breastmnist.npz]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("scheduling", "workers", "data", "startup", "epochs", "checkpoints", "teardown")


def one_search(storage, overrides: list[str], name: str) -> dict:
    from medray.cluster.config import load_config
    from medray.tune.run import _concurrency, run_search

    config = load_config(ROOT / "train/configs/breastmnist_cnn.yaml", [*overrides, f"train.name={name}"])
    started = time.perf_counter()
    summary = run_search(config, storage)
    wall = time.perf_counter() - started
    concurrency = _concurrency(config)
    trial_seconds = sum(t["seconds"] for t in summary["trials"])
    breakdown = {}
    for part in PARTS:
        values = [t["timings"][part] for t in summary["trials"] if t["timings"][part] is not None]
        breakdown[part] = statistics.fmean(values) if values else None
    breakdown["wall"] = statistics.fmean(t["seconds"] for t in summary["trials"])
    return {
        "best_val_auroc": summary["best"]["val_auroc"],
        "trial_epochs": summary["trial_epochs"],
        "stopped_by_asha": summary["stopped_by_asha"],
        "trials": len(summary["trials"]),
        "trials_train_directly": summary["trials_train_directly"],
        "wall_seconds": wall,
        "search_seconds": {**(summary["search_seconds"] or {}),
                           "after_last_trial": wall - sum((summary["search_seconds"] or {}).values())},
        "sum_trial_seconds": trial_seconds,
        "concurrency": concurrency,
        "overhead": wall / (trial_seconds / concurrency) if trial_seconds else None,
        "mean_trial_seconds": breakdown,
        "max_startup_seconds": max((t["timings"]["startup"] or 0.0) + (t["timings"]["scheduling"] or 0.0)
                                   for t in summary["trials"]),
        "per_trial": [{"trial": t["trial"], "epochs": t["epochs_run"], **t["timings"]} for t in summary["trials"]],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--workers", type=int, default=1, help="scaling.num_workers of every trial")
    parser.add_argument("--source", default=str(ROOT.parent / "shared/data/breastmnist.npz"))
    args = parser.parse_args()

    from medray.cluster.runtime import ensure_ray
    from medray.cluster.storage import Storage
    from medray.train.data.importers import ImportRequest, import_dataset

    common = [f"tune.num_samples={args.samples}", f"optim.epochs={args.epochs}", "train.patience=0",
              f"scaling.num_workers={args.workers}", "eval.bootstrap=0"]
    # Tune prints its trial tables to stdout, and Ray's log thread may print until exit:
    # everything goes to stderr for good, and the JSON alone to the real stdout.
    results_stream, sys.stdout = sys.stdout, sys.stderr
    with tempfile.TemporaryDirectory() as scratch:
        storage = Storage(scratch)
        import_dataset(storage, ImportRequest(kind="medmnist", source=args.source, name="breastmnist"))
        ensure_ray(dashboard=True)
        # Both searchers are seeded (train.seed), so the comparison repeats.
        asha = one_search(storage, [*common, "tune.searcher=optuna", "tune.grace_period=1",
                                    "tune.reduction_factor=3"], "asha")
        # grace period = the whole budget: ASHA never stops a trial, i.e. plain random search.
        full = one_search(storage, [*common, "tune.searcher=random", f"tune.grace_period={args.epochs}"], "full")
    epochs_ratio = asha["trial_epochs"] / full["trial_epochs"]
    wall_ratio = asha["wall_seconds"] / full["wall_seconds"]
    print(json.dumps({
        "benchmark": "tune_efficiency",
        "dataset": "breastmnist",
        "samples": args.samples,
        "epochs_budget": args.epochs,
        "workers_per_trial": args.workers,
        "asha_optuna": asha,
        "random_full_budget": full,
        "auroc_gap": full["best_val_auroc"] - asha["best_val_auroc"],
        "trial_epochs_ratio": epochs_ratio,
        "wall_ratio": wall_ratio,
        "wall_ratio_over_epochs_ratio": wall_ratio - epochs_ratio,
        "overhead_asha": asha["overhead"],
        "overhead_full": full["overhead"],
        "max_startup_seconds": max(asha["max_startup_seconds"], full["max_startup_seconds"]),
        "targets": {"auroc_gap_at_most": 0.01, "wall_ratio_over_epochs_ratio_at_most": 0.1,
                    "overhead_at_most": 1.1, "max_startup_seconds_at_most": 3.0},
    }, indent=2), file=results_stream, flush=True)


if __name__ == "__main__":
    main()
