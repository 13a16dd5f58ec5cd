"""ASHA + a model-based searcher vs random search run to the full budget.

Both searches run the same number of trials on the same data (BreastMNIST by default);
for each: the best validation AUROC reached, the trial-epochs spent, and Tune's
bookkeeping overhead (wall time against the sum of trial times divided by the
concurrency). Prints JSON. Targets: ASHA within 0.01 AUROC of the full-budget best with
at most 40% of its trial-epochs; overhead at most 1.2x.

    python benchmarks/tune_efficiency.py [--samples 8] [--epochs 8] [--source ../shared/data/breastmnist.npz]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def one_search(storage, overrides: list[str], name: str) -> dict:
    from medray.cluster.config import load_config
    from medray.tune.run import _concurrency, run_search

    config = load_config(ROOT / "train/configs/breastmnist_cnn.yaml", [*overrides, f"train.name={name}"])
    started = time.perf_counter()
    summary = run_search(config, storage)
    wall = time.perf_counter() - started
    concurrency = _concurrency(config)
    trial_seconds = sum(t["seconds"] for t in summary["trials"])
    return {
        "best_val_auroc": summary["best"]["val_auroc"],
        "trial_epochs": summary["trial_epochs"],
        "stopped_by_asha": summary["stopped_by_asha"],
        "trials": len(summary["trials"]),
        "wall_seconds": wall,
        "sum_trial_seconds": trial_seconds,
        "concurrency": concurrency,
        "overhead": wall / (trial_seconds / concurrency) if trial_seconds else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--source", default=str(ROOT.parent / "shared/data/breastmnist.npz"))
    args = parser.parse_args()

    from medray.cluster.runtime import ensure_ray
    from medray.cluster.storage import Storage
    from medray.train.data.importers import ImportRequest, import_dataset

    common = [f"tune.num_samples={args.samples}", f"optim.epochs={args.epochs}", "train.patience=0",
              "scaling.num_workers=1", "eval.bootstrap=0"]
    # Tune prints its trial tables to stdout, and Ray's log thread may print until exit:
    # everything goes to stderr for good, and the JSON alone to the real stdout.
    results_stream, sys.stdout = sys.stdout, sys.stderr
    with tempfile.TemporaryDirectory() as scratch:
        storage = Storage(scratch)
        import_dataset(storage, ImportRequest(kind="medmnist", source=args.source, name="breastmnist"))
        ensure_ray(dashboard=True)
        asha = one_search(storage, [*common, "tune.searcher=optuna", "tune.grace_period=1",
                                    "tune.reduction_factor=3"], "asha")
        # grace period = the whole budget: ASHA never stops a trial, i.e. plain random search.
        full = one_search(storage, [*common, "tune.searcher=random", f"tune.grace_period={args.epochs}"], "full")
    print(json.dumps({
        "benchmark": "tune_efficiency",
        "dataset": "breastmnist",
        "samples": args.samples,
        "epochs_budget": args.epochs,
        "asha_optuna": asha,
        "random_full_budget": full,
        "auroc_gap": full["best_val_auroc"] - asha["best_val_auroc"],
        "trial_epochs_ratio": asha["trial_epochs"] / full["trial_epochs"],
        "overhead_asha": asha["overhead"],
        "overhead_full": full["overhead"],
        "targets": {"auroc_gap_at_most": 0.01, "trial_epochs_ratio_at_most": 0.4, "overhead_at_most": 1.2},
    }, indent=2), file=results_stream, flush=True)


if __name__ == "__main__":
    main()
