"""What an imported dataset is, how it is checked, and how a version is published.

Every importer turns its source into an `ImportedDataset` held in memory; from there
one path validates it, computes the quality report, writes Parquet and publishes a
new version: payload files first, `manifest.json` last and exclusively, so a reader
never sees a half-written version and two imports never claim the same number.

Storage tree: `{root}/datasets/{name}/v{N}/manifest.json` and
`{root}/datasets/{name}/v{N}/{train,val,test}/part-*.parquet`.
"""

from __future__ import annotations

import hashlib
import logging
import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from medray.cluster import names
from medray.cluster.errors import MedrayError, NotFoundError
from medray.cluster.storage import Storage
from medray.cluster.versions import publish_version, publish_written_version, published_numbers

log = logging.getLogger(__name__)
T = TypeVar("T")

SPLITS = ("train", "val", "test")
LABEL_COLUMN = "label"
ROWS_PER_FILE = 50_000
MANIFEST_FORMAT = 1
MANIFEST_FILE = "manifest.json"
# What `_write_payload` names a Parquet file; a manifest listing anything else is refused.
_PAYLOAD_PATH = re.compile(r"(train|val|test)/part-\d{5}-[0-9a-f]{12}\.parquet")


class DataImportError(MedrayError):
    """A source that cannot become a dataset; the message names file, column or row."""


@dataclass
class Split:
    """One split in memory: feature columns and integer labels (indices into classes)."""

    features: pa.Table
    labels: np.ndarray

    @property
    def rows(self) -> int:
        return len(self.labels)


@dataclass
class ImportedDataset:
    """An importer's result, before it is validated and published."""

    modality: str
    """A name in `medray.train.modalities.MODALITIES`."""
    classes: list[str]
    splits: dict[str, Split]
    schema: dict[str, Any]
    """Feature schema: `{"column", "shape", "dtype"}` for image/signal,
    `{"features": [{"name", "type", "categories"?}]}` for tabular, `{"variables", "statics",
    "reference_scores", "window_minutes"}` for timeseries (`events.py`)."""
    source: dict[str, Any]
    """Where it came from: `kind`, `uri`, `sha256` (or per-file `files`), `options`. What
    of it is stored is decided by `importers.provenance`: never a local path or file name."""
    license: str
    description: str = ""
    notes: list[str] = field(default_factory=list)
    quality: dict[str, Any] = field(default_factory=dict)
    """What the importer measured beyond the shared report (e.g. each clinical variable's
    coverage, the values dropped): merged into the manifest's quality section."""


def describe_source(source: dict[str, Any]) -> str:
    """A manifest's source in one line: the user's label, a public URL, the sha256 (the
    manifest holds no local path or file name to show)."""
    parts = [f"'{source['label']}'" if source.get("label") else None, source.get("uri"),
             f"sha256 {source.get('sha256')}"]
    return ", ".join(part for part in parts if part)


def check_name(name: str) -> str:
    return names.check_versioned_name(name, "dataset name", MedrayError)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_files(paths: list[Path], root: Path | None = None) -> dict[str, Any]:
    """`{"sha256": combined, "files": {name: sha256}}` for a source made of several files;
    names are relative to `root` when given."""
    files = {str(path.relative_to(root) if root else path.name): sha256_file(path) for path in sorted(paths)}
    combined = hashlib.sha256("".join(f"{n}:{h}\n" for n, h in files.items()).encode()).hexdigest()
    return {"sha256": combined, "files": files}


def tensor_column(values: np.ndarray) -> pa.FixedSizeListArray:
    """(N, *shape) array -> one fixed-size-list column; the shape lives in the manifest."""
    flat = np.ascontiguousarray(values).reshape(len(values), int(np.prod(values.shape[1:])))
    return pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), flat.shape[1])


def reshape_batch(batch: dict[str, np.ndarray], column: str, shape: list[int], dtype: str) -> dict[str, np.ndarray]:
    """Ray hands fixed-size-list cells over as an object array of rows; stack and reshape.

    Ray Data runs this in its own worker processes, which import this module to unpickle
    it: it lives here, not with the modalities, so that they do not import torch too
    (seconds per process, on a node whose CPUs are busy training)."""
    values = batch[column]
    if values.dtype == object:
        values = np.stack(values) if len(values) else np.empty((0, int(np.prod(shape))), dtype=dtype)
    batch[column] = values.astype(dtype, copy=False).reshape(len(values), *shape)
    return batch


def tensor_from_column(column: pa.ChunkedArray | pa.Array, shape: list[int], dtype: str) -> np.ndarray:
    """Inverse of `tensor_column`, without a Python loop over rows."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    flat = column.flatten().to_numpy(zero_copy_only=False)
    return flat.astype(dtype, copy=False).reshape(len(column), *shape)


# Validation ------------------------------------------------------------------
def validate(dataset: ImportedDataset) -> None:
    """Refuse a dataset no model could learn from or be tested on, naming the problem."""
    missing = [name for name in SPLITS if name not in dataset.splits]
    if missing:
        raise DataImportError(f"split(s) {', '.join(missing)} missing from the import")
    if len(dataset.classes) < 2:
        raise DataImportError(f"at least two classes are needed; found {dataset.classes}")
    for name in SPLITS:
        split = dataset.splits[name]
        if split.rows == 0:
            raise DataImportError(f"the {name} split is empty")
        if split.features.num_rows != split.rows:
            raise DataImportError(
                f"the {name} split has {split.features.num_rows} feature rows but {split.rows} labels"
            )
        bad = np.flatnonzero((split.labels < 0) | (split.labels >= len(dataset.classes)))
        if bad.size:
            raise DataImportError(
                f"the {name} split has a label outside the {len(dataset.classes)} known classes at row {int(bad[0])}"
            )
    train_classes = set(np.unique(dataset.splits["train"].labels).tolist())
    if len(train_classes) < 2:
        raise DataImportError("the train split holds a single class; a classifier needs at least two")


# Quality report ----------------------------------------------------------------
def row_digests(table: pa.Table) -> np.ndarray:
    """A 64-bit digest per row, for exact-duplicate detection across splits."""
    digests = np.zeros(table.num_rows, dtype=np.uint64)
    for column in table.columns:
        column = column.combine_chunks()
        if pa.types.is_fixed_size_list(column.type):
            width = column.type.list_size
            values = np.ascontiguousarray(column.flatten().to_numpy(zero_copy_only=False).reshape(-1, width))
            row_bytes = values.view(np.uint8).reshape(len(values), -1)
            column_digest = _blake_digests(row.tobytes() for row in row_bytes)
        elif _is_variable_list(column.type):
            column_digest = _list_digests(column)
        else:
            column_digest = pd.util.hash_array(column.to_numpy(zero_copy_only=False))
        digests = digests * np.uint64(1_000_003) ^ column_digest
    return digests


def _is_variable_list(kind: pa.DataType) -> bool:
    return pa.types.is_list(kind) or pa.types.is_large_list(kind)


def _blake_digests(rows) -> np.ndarray:
    return np.frombuffer(b"".join(hashlib.blake2b(row, digest_size=8).digest() for row in rows), dtype=np.uint64)


def _list_digests(column: pa.ListArray | pa.LargeListArray) -> np.ndarray:
    """Per row of a variable-length list column: a digest of its length and its contents."""
    offsets = column.offsets.to_numpy()  # into column.values, also for a sliced array
    values = column.values.to_numpy(zero_copy_only=False)
    if values.dtype == object:  # e.g. strings: hash each element first
        values = pd.util.hash_array(values)
    values = np.ascontiguousarray(values)
    return _blake_digests(int(end - start).to_bytes(8, "little") + values[start:end].tobytes()
                          for start, end in zip(offsets[:-1].tolist(), offsets[1:].tolist()))


def _missing_per_column(dataset: ImportedDataset) -> dict[str, int]:
    counts: dict[str, int] = {}
    for split in dataset.splits.values():
        for name, column in zip(split.features.column_names, split.features.columns):
            missing = column.null_count
            if pa.types.is_fixed_size_list(column.type) or _is_variable_list(column.type):
                values = column.combine_chunks().flatten().to_numpy(zero_copy_only=False)
                missing = int(np.isnan(values).sum()) if values.dtype.kind == "f" else 0
            elif pa.types.is_floating(column.type):
                missing += int(np.isnan(column.to_numpy(zero_copy_only=False)).sum()) - column.null_count
            counts[name] = counts.get(name, 0) + int(missing)
    return counts


def _constant_features(dataset: ImportedDataset) -> list[str] | dict[str, int]:
    # Imported here: the modality modules read tensor columns with this module's helpers.
    from medray.train.modalities import modality

    table = pa.concat_tables(split.features for split in dataset.splits.values())
    return modality(dataset.modality).constant_features(table)


def duplicates_across_splits(digests: dict[str, np.ndarray]) -> dict[str, int]:
    """Rows of val and test whose content digest a train row has, and val-test pairs."""
    train_digests = set(digests["train"].tolist())
    duplicates = {f"train_{name}": int(sum(d in train_digests for d in digests[name].tolist()))
                  for name in ("val", "test")}
    duplicates["val_test"] = int(len(set(digests["val"].tolist()) & set(digests["test"].tolist())))
    return duplicates


def class_balance(labels: dict[str, np.ndarray], classes: list[str]) -> dict[str, dict[str, float]]:
    """Each split's share of rows per class."""
    balance = {}
    for name, split_labels in labels.items():
        counts = np.bincount(split_labels, minlength=len(classes))
        balance[name] = {cls: round(float(n) / max(len(split_labels), 1), 4) for cls, n in zip(classes, counts)}
    return balance


def quality_report(dataset: ImportedDataset) -> dict[str, Any]:
    duplicates = duplicates_across_splits({name: row_digests(split.features)
                                           for name, split in dataset.splits.items()})
    balance = class_balance({name: split.labels for name, split in dataset.splits.items()}, dataset.classes)
    missing = _missing_per_column(dataset)
    return {
        "missing_values": missing,
        "missing_values_total": int(sum(missing.values())),
        "class_balance": balance,
        "duplicates_across_splits": duplicates,
        "constant_features": _constant_features(dataset),
        **dataset.quality,
    }


# Publishing ----------------------------------------------------------------------
def dataset_key(name: str, version: int | None = None) -> str:
    return f"datasets/{name}" if version is None else f"datasets/{name}/v{version}"


def list_versions(storage: Storage, name: str) -> list[int]:
    """Published versions (those whose manifest exists), ascending."""
    return published_numbers(storage, dataset_key(name), MANIFEST_FILE, folder_prefix="v")


def list_datasets(storage: Storage) -> dict[str, list[int]]:
    found = {}
    for name in storage.list_dir("datasets"):
        versions = list_versions(storage, name)
        if versions:
            found[name] = versions
    return found


def parse_ref(ref: str) -> tuple[str, int | None]:
    """`NAME` or `NAME@vN` (also `NAME@N`) -> (name, version or None for latest)."""
    return names.parse_versioned(ref, "dataset", MedrayError)


def read_manifest(storage: Storage, ref: str) -> dict[str, Any]:
    """The manifest of `NAME[@vN]`; the latest version when none is given."""
    name, version = parse_ref(ref)
    versions = list_versions(storage, name)
    if not versions:
        known = ", ".join(sorted(list_datasets(storage))) or "none"
        raise NotFoundError(f"dataset '{name}' does not exist in {storage.root} (datasets: {known})")
    if version is None:
        version = versions[-1]
    elif version not in versions:
        raise NotFoundError(f"dataset '{name}' has no version v{version} (versions: {', '.join(f'v{v}' for v in versions)})")
    manifest = storage.read_json(f"{dataset_key(name, version)}/{MANIFEST_FILE}")
    _check_payload_paths(manifest, f"{name}@v{version}")
    return manifest


def _check_payload_paths(manifest: Any, ref: str) -> None:
    """Readers join each listed path to the version's folder: only payload names may pass."""
    try:
        entries = [entry["path"] for split in SPLITS for entry in manifest["splits"][split]["files"]]
    except (KeyError, TypeError):
        raise MedrayError(f"dataset {ref}: manifest.json does not list its files per split") from None
    for path in entries:
        if not (isinstance(path, str) and _PAYLOAD_PATH.fullmatch(path)):
            raise MedrayError(f"dataset {ref}: manifest.json lists a file path {path!r} that is not allowed")


def _split_table(split: Split) -> pa.Table:
    return split.features.append_column(LABEL_COLUMN, pa.array(split.labels.astype(np.int64)))


def _write_payload(dataset: ImportedDataset, staging: Path) -> dict[str, list[dict[str, Any]]]:
    """Parquet files for every split, in a local staging folder, with their checksums."""
    token = uuid.uuid4().hex[:12]
    files: dict[str, list[dict[str, Any]]] = {}
    for name in SPLITS:
        table = _split_table(dataset.splits[name])
        files[name] = []
        for index, start in enumerate(range(0, table.num_rows, ROWS_PER_FILE)):
            chunk = table.slice(start, ROWS_PER_FILE)
            relative = f"{name}/part-{index:05d}-{token}.parquet"
            local = staging / relative
            local.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(chunk, local, compression="zstd")
            files[name].append({"path": relative, "rows": chunk.num_rows, "sha256": sha256_file(local)})
    return files


def build_manifest(name: str, version: int, dataset: ImportedDataset, files: dict[str, list[dict]]) -> dict:
    splits = {}
    for split_name in SPLITS:
        split = dataset.splits[split_name]
        counts = np.bincount(split.labels, minlength=len(dataset.classes))
        splits[split_name] = {
            "rows": split.rows,
            "class_counts": {cls: int(n) for cls, n in zip(dataset.classes, counts)},
            "files": files[split_name],
        }
    return manifest_document(name, version, modality=dataset.modality, classes=dataset.classes,
                             schema=dataset.schema, splits=splits, source=dataset.source, license=dataset.license,
                             description=dataset.description, quality=quality_report(dataset), notes=dataset.notes)


def manifest_document(name: str, version: int, *, modality: str, classes: list[str], schema: dict[str, Any],
                      splits: dict[str, dict[str, Any]], source: dict[str, Any], license: str, description: str,
                      quality: dict[str, Any], notes: list[str]) -> dict[str, Any]:
    """A version's manifest: `splits` maps each split to its rows, class counts and files."""
    return {
        "format": MANIFEST_FORMAT,
        "name": name,
        "version": version,
        "modality": modality,
        "description": description,
        "classes": list(classes),
        "label_column": LABEL_COLUMN,
        "schema": schema,
        "splits": splits,
        "source": source,
        "license": license,
        "quality": quality,
        "notes": notes,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def publish(storage: Storage, name: str, dataset: ImportedDataset, staging: Path) -> dict[str, Any]:
    """Validate, write the payload, then publish it as the next version (cluster/versions.py)."""
    check_name(name)
    validate(dataset)
    files = _write_payload(dataset, staging)
    storage.check()
    payload = {entry["path"]: staging / entry["path"] for entries in files.values() for entry in entries}
    _, manifest = publish_version(storage, dataset_key(name), payload, MANIFEST_FILE,
                                  lambda version: build_manifest(name, version, dataset, files),
                                  f"dataset '{name}'", MedrayError, folder_prefix="v")
    return manifest


def publish_written(storage: Storage, name: str, write: Callable[[str], T],
                    manifest: Callable[[int, T], dict[str, Any]]) -> dict[str, Any]:
    """Publish a version whose payload `write(prefix)` puts under its claimed folder itself
    (e.g. from Ray tasks); `manifest(version, what write returned)` is written last."""
    check_name(name)
    storage.check()
    _, document = publish_written_version(storage, dataset_key(name), write, MANIFEST_FILE, manifest,
                                          f"dataset '{name}'", MedrayError, folder_prefix="v")
    return document
