"""How well the out-of-distribution detector flags inputs unlike the training data, per
shipped model, for both scores side by side (Mahalanobis on penultimate features vs
energy of the logits).

Imports the real datasets from ../shared/data (BreastMNIST, ECG200, Cleveland) and
scikit-learn's WDBC, trains each config in train/configs/ with one worker, then
evaluates its best checkpoint once per OOD method: the detector is fitted on the train
split, thresholded on val at `eval.ood_false_alarm` (5%), and scored on the test split
and on each modality's OOD sets (`Modality.ood_sets`). Prints JSON: per model and
method, the false-alarm rate on test (Wilson 95% interval), per set AUROC and detection
rate, the far and near sets pooled, and whether the far target (AUROC >= 0.95 on every
far set at <= 5% false alarms on test) is met.

    python benchmarks/ood_quality.py [--data ../shared/data] [--configs breastmnist_cnn,...]
        [--storage URI] [key=value ...]

About 10 minutes on 2 CPU cores, most of it training BreastMNIST and ECG200.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
CONFIGS = PROJECT / "train" / "configs"
METHODS = ("mahalanobis", "energy")


def compact(ood: dict) -> dict:
    """The figures worth reading side by side (the full ones are in the run's report)."""
    rounded = lambda x: None if x is None else round(x, 4)  # noqa: E731
    pooled = {kind: None if ood[kind] is None else
              {"auroc": rounded(ood[kind]["auroc"]), "min_auroc": rounded(ood[kind]["min_auroc"]),
               "detection_rate": rounded(ood[kind]["detection_rate"])} for kind in ("far", "near")}
    return {
        "threshold": rounded(ood["threshold"]),
        "val_false_alarm": rounded(ood["detector"]["val_false_alarm"]),
        "false_alarm_rate": rounded(ood["false_alarm_rate"]),
        "false_alarm_ci": [rounded(x) for x in ood["false_alarm_ci"]],
        "n_test": ood["n_in_distribution"],
        **pooled,
        "far_target_met": ood["target_met"],
        "sets": {name: {"kind": s["kind"], "n": s["n"], "auroc": rounded(s["auroc"]),
                        "auroc_ci": [rounded(x) for x in s["auroc_ci"]],
                        "detection_rate": rounded(s["detection_rate"])} for name, s in ood["sets"].items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=PROJECT.parent / "shared" / "data")
    parser.add_argument("--configs", default=",".join(sorted(p.stem for p in CONFIGS.glob("*.yaml"))),
                        help="comma-separated config names in train/configs (default: all)")
    parser.add_argument("--storage", help="storage URI (default: a scratch folder)")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args()

    from medray.cluster.config import load_config
    from medray.cluster.storage import Storage
    from medray.quality import shared_data_request
    from medray.train.data.importers import import_dataset
    from medray.train.job import evaluate_stored_checkpoint, run_training

    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="medray-ood-bench-") as scratch:
        storage = Storage(args.storage or f"file://{scratch}/store")
        imported: set[str] = set()
        for stem in args.configs.split(","):
            common = [*args.overrides, "scaling.num_workers=1", f"train.name=ood-{stem}-{int(time.time())}"]
            config = load_config(CONFIGS / f"{stem}.yaml", [*common, f"eval.ood_method={METHODS[0]}"])
            if config.data.dataset not in imported:
                import_dataset(storage, shared_data_request(config.data.dataset, args.data, Path(scratch)))
                imported.add(config.data.dataset)
            started = time.monotonic()
            summary = run_training(config, storage)
            trained_s = time.monotonic() - started
            entry = {"dataset": summary["dataset"], "train_s": round(trained_s, 1),
                     "test_auroc": summary["metrics"]["test"]["auroc"],
                     "test_accuracy": summary["metrics"]["test"]["accuracy"],
                     METHODS[0]: compact(summary["metrics"]["ood"])}
            key = storage.key_of(summary["checkpoint"])
            for method in METHODS[1:]:
                other = load_config(CONFIGS / f"{stem}.yaml", [*common, f"eval.ood_method={method}"])
                report = evaluate_stored_checkpoint(storage, key, Path(scratch) / f"{stem}-{method}", other)
                entry[method] = compact(report["metrics"]["ood"])
            results[stem] = entry
            print(f"{stem}: " + ", ".join(
                f"{m} far AUROC {entry[m]['far']['min_auroc']} (lowest set), FA {entry[m]['false_alarm_rate']}"
                for m in METHODS), file=sys.stderr, flush=True)
    print(json.dumps({"target": {"far_auroc": 0.95, "false_alarm": 0.05}, "models": results}, indent=2))


if __name__ == "__main__":
    main()
