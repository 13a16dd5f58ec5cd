"""Latency of opening and reading one dataset split through Ray Data.

(a) medray's `read_split` (Ray Data's V1 Parquet reader over the manifest's files) vs
(b) Ray 2.60's default `read_parquet` (datasource V2, footer-reading actor pool), on
the same files, in the same run. Prints JSON with medians and the ratio b/a.

    python benchmarks/dataset_read.py [--storage URI] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", help="storage root (default: a temporary folder)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    import ray

    from medray.cluster.storage import Storage
    from medray.train.data.importers import ImportRequest, import_dataset
    from medray.train.data.loading import read_split, split_paths

    with tempfile.TemporaryDirectory() as scratch:
        storage = Storage(args.storage or scratch)
        manifest = import_dataset(storage, ImportRequest(kind="sklearn", source="breast_cancer", name="bench-wdbc"))
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        filesystem, _ = storage.arrow_filesystem()
        paths = split_paths(storage, manifest, "train")

        def medray_read():
            return read_split(storage, manifest, "train").to_pandas()

        def default_read():
            return ray.data.read_parquet(paths, filesystem=filesystem).to_pandas()

        timings: dict[str, list[float]] = {"medray_read_split": [], "ray_default_read_parquet": []}
        for fn in (medray_read, default_read):  # warm-up: worker start, imports
            fn()
        for _ in range(args.repeats):
            for name, fn in (("medray_read_split", medray_read), ("ray_default_read_parquet", default_read)):
                start = time.perf_counter()
                rows = len(fn())
                timings[name].append(time.perf_counter() - start)
        ray.shutdown()

    medians = {name: statistics.median(values) for name, values in timings.items()}
    print(json.dumps({
        "benchmark": "dataset_read",
        "rows": rows,
        "repeats": args.repeats,
        "median_seconds": medians,
        "all_seconds": timings,
        "ratio_default_over_medray": medians["ray_default_read_parquet"] / medians["medray_read_split"],
    }, indent=2))


if __name__ == "__main__":
    main()
