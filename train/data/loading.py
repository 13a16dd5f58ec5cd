"""Reading a published dataset version back: as a Ray Data stream or as arrays.

Only the files the manifest lists are read, so stray files of an interrupted import
are never picked up. The modality says what the feature columns come back as (images
and signals: arrays in the manifest's shape; tables: plain columns).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from medray.cluster.storage import Storage
from medray.train.data.dataset import LABEL_COLUMN, SPLITS, dataset_key, read_manifest
from medray.train.modalities import modality


def split_paths(storage: Storage, manifest: dict[str, Any], split: str) -> list[str]:
    if split not in SPLITS:
        raise ValueError(f"split '{split}' is not one of {', '.join(SPLITS)}")
    prefix = dataset_key(manifest["name"], manifest["version"])
    return [storage.arrow_path(f"{prefix}/{entry['path']}") for entry in manifest["splits"][split]["files"]]


def read_split(storage: Storage, ref: str | dict[str, Any], split: str, cpus_per_task: float | None = None,
               as_stored: bool = False):
    """`NAME[@vN]` (or its manifest) -> a `ray.data.Dataset` of one split.

    `cpus_per_task` sets the CPUs each read task asks Ray for (Ray's default: 1).
    `as_stored`: the rows as the Parquet files hold them (an image or signal as one
    fixed-size list), for a reader that converts each batch itself with the modality's
    `features_from_table` (zero-copy for tensors), as training does: reshaping in a Ray
    Data task instead costs an extra task per block and an Arrow round trip of every
    pixel, ten times the read itself at 224x224 (benchmarks/stream_epoch.py)."""
    import ray.data

    manifest = ref if isinstance(ref, dict) else read_manifest(storage, ref)
    filesystem, _ = storage.arrow_filesystem()
    # Ray 2.60's default Parquet reader (datasource V2) plans each read with a pool of
    # footer-reading actors: about 2 s per read on a small node, for nothing here, as the
    # manifest already lists every file. The V1 reader opens the listed files directly
    # (benchmarks/dataset_read.py measures both). The flag is read when the dataset is
    # created, so it is switched only around this call.
    context = ray.data.DataContext.get_current()
    default_reader = context.use_datasource_v2
    context.use_datasource_v2 = False
    try:
        dataset = ray.data.read_parquet(split_paths(storage, manifest, split), filesystem=filesystem,
                                        num_cpus=cpus_per_task)
    finally:
        context.use_datasource_v2 = default_reader
    if as_stored:
        return dataset
    return modality(manifest["modality"]).shape_stream(dataset, manifest["schema"], cpus_per_task)


def read_split_arrays(storage: Storage, ref: str | dict[str, Any], split: str) -> tuple[Any, np.ndarray]:
    """One split in this process, without Ray: (features, labels). Features are an array
    in the manifest's shape for image/signal data and a pandas DataFrame for tables."""
    manifest = ref if isinstance(ref, dict) else read_manifest(storage, ref)
    return features_and_labels(read_splits_table(storage, manifest, (split,)), manifest)


def read_splits_table(storage: Storage, manifest: dict[str, Any], splits: Sequence[str]):
    """The rows of `splits`, as stored, one after another in that order: a pyarrow Table."""
    filesystem, _ = storage.arrow_filesystem()
    paths = [path for split in splits for path in split_paths(storage, manifest, split)]
    return pq.ParquetDataset(paths, filesystem=filesystem).read()


def features_and_labels(table, manifest: dict[str, Any]) -> tuple[Any, np.ndarray]:
    """A table of stored rows as (the modality's features, stored class indices)."""
    labels = table.column(LABEL_COLUMN).to_numpy()
    features = table.drop_columns([LABEL_COLUMN])
    return modality(manifest["modality"]).features_from_table(features, manifest["schema"]), labels
