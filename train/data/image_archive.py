"""Image archives at hospital scale: a folder or an `s3://` prefix of PNG, JPEG or DICOM
files, imported by a Ray Data pipeline in bounded memory.

The archive is laid out in one of two ways: one sub-folder per class, or any layout with
a labels CSV listing each file's path (relative to the prefix), label and, optionally,
patient (the CheXpert / MIMIC-CXR convention). The pipeline:

1. the driver lists the objects (keys and sizes only) and reads the labels CSV;
2. patients, when asked for, are read: the folder (`--group folder`), a labels-CSV column
   (`--group-column`), or each DICOM's PatientID (`--group dicom:PatientID`, read from the
   headers in Ray Data tasks); every value is hashed with a salt drawn for this import and
   never kept, so no identifier is stored, in clear or as a digest a dictionary could undo;
3. the driver assigns the splits (stratified, seeded, a patient in one split only);
4. Ray Data tasks each take one shard's list of keys, read the bytes, decode them with the
   bounded decoder serving uses (`decode.py`), resize and write one Parquet file straight
   into the version folder claimed for this import; what comes back to the driver is the
   shard's checksum, counts, per-image content digests and pixel extremes;
5. the quality report comes from those partial results, and the manifest is written last.

So the driver holds keys and a few bytes per image, never the pixels; each task holds one
shard (`SHARD_BYTES` of pixels). A shard's task reads, decodes and writes its images
itself: decoded pixels never cross the object store, and shard names and checksums are
the ones every dataset version has. No key or file name is stored or put in an error
(file names often carry a patient's name, and errors reach logs): a file is named by its
place, "file 3 of 120 (in key order) in class folder 'malignant'" or "the file on labels
CSV row 12", which finds it without repeating its name.
"""

from __future__ import annotations

import hashlib
import io
import logging
import secrets
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from medray.cluster.console import CONSOLE
from medray.cluster.errors import MedrayError
from medray.cluster.storage import Storage
from medray.train.data.dataset import (LABEL_COLUMN, ROWS_PER_FILE, SPLITS, DataImportError, class_balance,
                                       duplicates_across_splits, manifest_document, publish_written, row_digests,
                                       tensor_column)
from medray.train.data.decode import (RESIZE_MODES, DecodeLimits, ImageRefused, decode_image, dicom_metadata,
                                      summarize_dicom_metadata)
from medray.train.data.sources import list_files, source_filesystem, source_reader
from medray.train.data.splits import three_way_split

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
DICOM_SUFFIXES = {".dcm", ".dicom"}
SHARD_BYTES = 32 * 2**20
"""Decoded pixels per Parquet shard (and per task): 660 images of 224x224x1, 8,000 of 64x64."""
NAMED_UNREADABLE = 3
"""Keys an import stopped by unreadable files names (the error only; never stored)."""
DICOM_HEADER_BYTES = 64 * 1024
"""Read first when only a DICOM's PatientID is wanted; the whole file if its header is longer."""
GROUP_DICOM = "dicom:PatientID"


@dataclass(frozen=True)
class ArchiveOptions:
    """What `medray data import images` was asked for (validated once, carried to the tasks)."""

    size: int = 64
    channels: Literal[1, 3] = 1
    resize: str = "pad"
    """One of `decode.RESIZE_MODES`: how an image that is not square is made square."""
    labels: str | None = None
    """A CSV (local path or s3:// URI) naming each file; else one sub-folder per class."""
    path_column: str = "path"
    label_column: str = "label"
    group: str | None = None
    """`folder` (one folder per patient), `dicom:PatientID`, or None."""
    group_column: str | None = None
    """The labels CSV's patient column."""
    skip_unreadable: bool = False
    val_fraction: float = 0.15
    test_fraction: float = 0.2
    seed: int = 0

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise DataImportError(f"--channels must be 1 (grey) or 3 (RGB), got {self.channels}")
        if self.resize not in RESIZE_MODES:
            raise DataImportError(f"--resize must be one of {', '.join(RESIZE_MODES)}, got {self.resize!r}")
        if self.group not in (None, "folder", GROUP_DICOM):
            raise DataImportError(f"--group must be 'folder' or '{GROUP_DICOM}', got {self.group!r} "
                                  "(a labels-CSV column is --group-column)")
        if self.group and self.group_column:
            raise DataImportError("give --group or --group-column, not both")
        if self.group_column and not self.labels:
            raise DataImportError("--group-column names a column of the labels CSV: give --labels too")

    @property
    def mode(self) -> str:
        return "L" if self.channels == 1 else "RGB"

    @property
    def image_shape(self) -> list[int]:
        return [self.size, self.size] if self.channels == 1 else [self.size, self.size, 3]

    @property
    def rows_per_shard(self) -> int:
        return int(max(1, min(ROWS_PER_FILE, SHARD_BYTES // int(np.prod(self.image_shape)))))


@dataclass
class Listing:
    """The archive's images, in a fixed order (sorted keys); held by the driver."""

    keys: list[str]
    """Relative to the source root; never stored."""
    labels: np.ndarray
    classes: list[str]
    groups: np.ndarray | None = None
    """Salted digests of each image's patient, or None."""
    notes: list[str] = field(default_factory=list)
    csv_rows: list[int] | None = None
    """Labels CSV: the row (1 = header) naming each image; else None (class folders)."""
    sizes: np.ndarray | None = None
    """Each file's size in bytes, from the listing: a file over the decoder's limit is
    refused before a byte of it is read."""

    def place(self, position: int) -> str:
        """Where image `position` is, for an error, without its name."""
        if self.csv_rows is not None:
            return f"the file on labels CSV row {self.csv_rows[position]}"
        label = int(self.labels[position])
        in_class = np.flatnonzero(self.labels == label)
        rank = int(np.searchsorted(in_class, position))
        return (f"file {rank + 1} of {len(in_class)} (in key order) in class folder "
                f"'{self.classes[label]}'")


# The source --------------------------------------------------------------------------


def _is_image_name(relative: str) -> bool:
    path = PurePosixPath(relative)
    if any(part.startswith(".") for part in path.parts):
        return False
    return path.suffix.lower() in IMAGE_SUFFIXES | DICOM_SUFFIXES or not path.suffix


def list_archive(source: str, options: ArchiveOptions, salt: bytes, labels_csv: Path | None) -> Listing:
    sizes = list_files(source, _is_image_name, "PNG, JPEG or DICOM files")
    keys = list(sizes)
    listing = _class_folders(keys, options, salt) if labels_csv is None else _labelled(keys, labels_csv, options, salt)
    listing.sizes = np.asarray([sizes[key] for key in listing.keys], dtype=np.int64)
    return listing


def _salted(values: list[str], salt: bytes) -> np.ndarray:
    return np.asarray([hashlib.blake2b(value.encode(), key=salt, digest_size=16).hexdigest() for value in values])


def _class_folders(keys: list[str], options: ArchiveOptions, salt: bytes) -> Listing:
    by_class: dict[str, list[str]] = {}
    for key in keys:
        parts = key.split("/")
        if len(parts) > 1:  # files at the top level belong to no class
            by_class.setdefault(parts[0], []).append(key)
    if len(by_class) < 2:
        raise DataImportError(f"the source needs one sub-folder per class (at least two) or --labels CSV; "
                              f"found {len(by_class)} class folder(s)")
    classes = sorted(by_class)
    ordered = [key for name in classes for key in by_class[name]]
    labels = np.asarray([i for i, name in enumerate(classes) for _ in by_class[name]], dtype=np.int64)
    listing = Listing(ordered, labels, classes)
    if options.group == "folder":
        unfiled = [i for i, key in enumerate(ordered) if len(key.split("/")) < 3]
        if unfiled:
            raise DataImportError(f"--group folder needs one folder per patient inside each class folder; "
                                  f"{len(unfiled)} file(s) are not in one, e.g. {listing.place(unfiled[0])}")
        listing.groups = _salted(["/".join(key.split("/")[:2]) for key in ordered], salt)
    return listing


def _labelled(keys: list[str], labels_csv: Path, options: ArchiveOptions, salt: bytes) -> Listing:
    try:
        table = pd.read_csv(labels_csv, dtype=str, keep_default_na=False)
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise DataImportError(f"the labels CSV cannot be read as CSV ({type(error).__name__})") from None
    wanted = [options.path_column, options.label_column] + ([options.group_column] if options.group_column else [])
    missing = [column for column in wanted if column not in table.columns]
    if missing:
        raise DataImportError(f"the labels CSV has no column {', '.join(repr(m) for m in missing)} "
                              f"(columns: {', '.join(map(repr, table.columns[:20]))})")
    present = set(keys)
    paths = [str(PurePosixPath(p.strip().removeprefix("./"))).lstrip("/") for p in table[options.path_column]]
    first_row: dict[str, int] = {}
    for row, (path, label) in enumerate(zip(paths, table[options.label_column]), start=2):
        if path not in present:
            raise DataImportError(f"labels CSV row {row}: its {options.path_column!r} names no PNG, JPEG or "
                                  "DICOM file under the source (paths are relative to it)")
        if not label.strip():
            raise DataImportError(f"labels CSV row {row}: the label is empty")
        if path in first_row:
            raise DataImportError(f"labels CSV row {row} names the same file as row {first_row[path]}")
        first_row[path] = row
    values = [label.strip() for label in table[options.label_column]]
    classes = sorted(set(values))
    if len(classes) < 2:
        raise DataImportError(f"the labels CSV's '{options.label_column}' holds {len(classes)} class; "
                              "at least two are needed")
    order = np.argsort(paths, kind="stable")
    ordered = [paths[i] for i in order]
    index = {name: i for i, name in enumerate(classes)}
    labels = np.asarray([index[values[i]] for i in order], dtype=np.int64)
    groups = None
    if options.group_column:
        patients = [table[options.group_column].iloc[i].strip() for i in order]
        if not all(patients):
            raise DataImportError(f"labels CSV: the patient column '{options.group_column}' is empty on some rows")
        groups = _salted(patients, salt)
    elif options.group == "folder":
        groups = _salted([str(PurePosixPath(key).parent) for key in ordered], salt)
    notes = [f"{len(keys) - len(ordered)} image(s) under the source are not in the labels CSV and were left out"] \
        if len(keys) > len(ordered) else []
    return Listing(ordered, labels, classes, groups, notes, csv_rows=[int(i) + 2 for i in order])


# Ray Data tasks ----------------------------------------------------------------------


def _read(filesystem, base: str, key: str, limit: int | None = None) -> bytes:
    with filesystem.open_input_stream(f"{base}/{key}") as stream:
        return stream.read(limit) if limit else stream.read()


def patient_ids_batch(batch: pd.DataFrame, source: str, salt: bytes) -> pd.DataFrame:
    """Ray Data task: each DICOM's salted PatientID digest ('' where it has none)."""
    import pydicom

    filesystem, base = source_filesystem(source)
    digests = []
    for key in batch["key"]:
        value = None
        for limit in (DICOM_HEADER_BYTES, None):
            try:
                header = pydicom.dcmread(io.BytesIO(_read(filesystem, base, key, limit)), stop_before_pixels=True,
                                         specific_tags=["PatientID"], force=False)
                value = str(header.get("PatientID", "") or "").strip()
                break
            except Exception:  # a header longer than the first read, or not a DICOM at all
                value = None
        digests.append(_salted([value], salt)[0] if value else "")
    return pd.DataFrame({"position": batch["position"], "group": digests})


def write_shard(batch: pd.DataFrame, source: str, root: str, prefix: str, options: ArchiveOptions,
                token: str) -> pd.DataFrame:
    """Ray Data task: one shard's images read, decoded, written as one Parquet file under
    the claimed `prefix`; returns the shard's partial results, one row."""
    shard = batch.iloc[0]
    split, index = str(shard["split"]), int(shard["shard"])
    keys, labels, positions = list(shard["keys"]), np.asarray(shard["labels"]), np.asarray(shard["positions"])
    sizes = np.asarray(shard["sizes"])
    read = source_reader(source)
    limits = DecodeLimits.for_input(options.size, options.size)
    pixels, kept, unreadable, reasons, file_digests, dicom = [], [], [], [], [], []
    for k, key in enumerate(keys):
        if sizes[k] > limits.max_bytes:
            unreadable.append(int(positions[k]))
            reasons.append(f"is larger than the {limits.max_bytes}-byte limit")
            continue
        try:
            data = read(key)
            image = decode_image(data, options.size, options.mode, limits, options.resize)
        except ImageRefused as refused:
            unreadable.append(int(positions[k]))
            reasons.append(str(refused))  # what is wrong, never what the file holds
            continue
        except (OSError, MedrayError):  # gone since the listing, or a key storage refuses
            unreadable.append(int(positions[k]))
            reasons.append("cannot be read")
            continue
        pixels.append(image)
        kept.append(k)
        file_digests.append(hashlib.sha256(data).digest())
        metadata = dicom_metadata(data)
        if metadata:
            dicom.append(metadata)
    shape = options.image_shape
    images = np.stack(pixels) if pixels else np.zeros((0, *shape), dtype=np.uint8)
    kept_labels = labels[kept].astype(np.int64)
    table = pa.table({"image": tensor_column(images) if len(images) else
                      pa.FixedSizeListArray.from_arrays(pa.array([], pa.uint8()), int(np.prod(shape))),
                      LABEL_COLUMN: pa.array(kept_labels)})
    relative = f"{split}/part-{index:05d}-{token}.parquet"
    out = pa.BufferOutputStream()
    pq.write_table(table, out, compression="zstd")
    payload = out.getvalue().to_pybytes()
    if len(images):
        Storage(root).write_bytes(f"{prefix}/{relative}", payload)
    flat = images.reshape(len(images), -1)
    return pd.DataFrame([{
        "split": split, "path": relative, "rows": len(images), "sha256": hashlib.sha256(payload).hexdigest(),
        "labels": kept_labels.tobytes(), "unreadable": np.asarray(unreadable, dtype=np.int64).tobytes(),
        "digests": row_digests(table.drop_columns([LABEL_COLUMN])).tobytes(),
        "file_digests": b"".join(file_digests), "positions": positions[kept].astype(np.int64).tobytes(),
        "low": (flat.min(axis=0) if len(flat) else np.full(flat.shape[1], 255, np.uint8)).tobytes(),
        "high": (flat.max(axis=0) if len(flat) else np.zeros(flat.shape[1], np.uint8)).tobytes(),
        "dicom": dicom, "reasons": reasons[:NAMED_UNREADABLE],
    }])


# The import --------------------------------------------------------------------------


def _dicom_groups(source: str, listing: Listing, salt: bytes) -> np.ndarray:
    import ray.data

    items = pd.DataFrame({"key": listing.keys, "position": np.arange(len(listing.keys))})
    dataset = ray.data.from_items(items.to_dict("records"), override_num_blocks=max(1, len(items) // 256)).map_batches(
        patient_ids_batch, batch_size=256, batch_format="pandas", fn_kwargs={"source": source, "salt": salt})
    groups = np.full(len(listing.keys), "", dtype=object)
    with tqdm(total=len(listing.keys), desc="reading DICOM PatientIDs", unit="img", leave=False,
              file=CONSOLE.terminal_err) as bar:
        for batch in dataset.iter_batches(batch_format="pandas", batch_size=None):
            groups[batch["position"].to_numpy()] = batch["group"].to_numpy()
            bar.update(len(batch))
    missing = np.flatnonzero(groups == "")
    if missing.size:
        raise DataImportError(f"--group {GROUP_DICOM}: {missing.size} file(s) are not DICOMs with a PatientID, "
                              f"e.g. {listing.place(int(missing[0]))}")
    return groups.astype(str)


def _shards(listing: Listing, splits: dict[str, np.ndarray], rows_per_shard: int) -> list[dict[str, Any]]:
    """One item per Parquet file to write: its split, and its images' keys, labels and positions."""
    rows: list[dict[str, Any]] = []
    for split in SPLITS:
        positions = splits[split]
        for start in range(0, len(positions), rows_per_shard):
            chunk = positions[start:start + rows_per_shard]
            rows.append({"shard": len(rows), "split": split, "positions": chunk.tolist(),
                         "keys": [listing.keys[i] for i in chunk], "labels": listing.labels[chunk].tolist(),
                         "sizes": listing.sizes[chunk].tolist()})
    return rows


def import_image_archive(storage: Storage, name: str, source: str, options: ArchiveOptions,
                         labels_csv: Path | None, describe_source: Callable[[dict], dict],
                         license: str | None = None) -> dict[str, Any]:
    """List, split, decode and write `source` as the next version of dataset `name`;
    returns its manifest. `describe_source(source_dict)` turns the source record into what
    the manifest keeps (no local path, no file name)."""
    import ray.data

    from medray.cluster.runtime import ensure_ray

    salt = secrets.token_bytes(16)  # this import's alone, never stored
    listing = list_archive(source, options, salt, labels_csv)
    ensure_ray()
    if options.group == GROUP_DICOM:
        listing.groups = _dicom_groups(source, listing, salt)
    # Patients numbered in key order: the salt changes every import, the split must not.
    groups = None if listing.groups is None else pd.factorize(listing.groups)[0]
    splits = three_way_split(listing.labels, options.val_fraction, options.test_fraction, options.seed, groups)
    shards = _shards(listing, splits, options.rows_per_shard)
    token = secrets.token_hex(6)

    def write(prefix: str) -> pd.DataFrame:
        dataset = ray.data.from_items(shards, override_num_blocks=len(shards)).map_batches(
            write_shard, batch_size=1, batch_format="pandas",
            fn_kwargs={"source": source, "root": storage.root, "prefix": prefix, "options": options,
                       "token": token})
        results, unreadable, count = [], [], 0
        with tqdm(total=len(listing.keys), desc="importing images", unit="img", file=CONSOLE.terminal_err) as bar:
            for row in dataset.iter_rows():
                results.append(row)
                skipped = np.frombuffer(row["unreadable"], np.int64)
                count += len(skipped)
                unreadable += [(int(i), reason) for i, reason in zip(skipped, row["reasons"])]
                bar.update(int(row["rows"]) + len(skipped))
        # Only once every task is done: a task still writing would leave its shard behind.
        if count and not options.skip_unreadable:
            places = "; ".join(f"{listing.place(i)} {reason}" for i, reason in sorted(unreadable)[:NAMED_UNREADABLE])
            raise DataImportError(f"{count} file(s) cannot be imported: {places}; nothing was published. "
                                  "--skip-unreadable imports the rest and records how many were skipped")
        return pd.DataFrame(results)

    def manifest(version: int, results: pd.DataFrame) -> dict[str, Any]:
        document = _manifest(name, version, listing, options, results, labels_csv is not None, describe_source)
        return {**document, "license": license} if license else document

    return publish_written(storage, name, write, manifest)


def _manifest(name: str, version: int, listing: Listing, options: ArchiveOptions, results: pd.DataFrame,
              labelled: bool, describe_source) -> dict[str, Any]:
    unpack = lambda column, dtype: {split: np.concatenate(  # noqa: E731
        [np.frombuffer(v, dtype=dtype) for v in results.loc[results["split"] == split, column]] or
        [np.zeros(0, dtype)]) for split in SPLITS}
    labels, digests = unpack("labels", np.int64), unpack("digests", np.uint64)
    skipped = int(sum(len(np.frombuffer(v, dtype=np.int64)) for v in results["unreadable"]))
    for split in SPLITS:
        if not len(labels[split]):
            raise DataImportError(f"the {split} split is empty after leaving out unreadable files")
    if len(np.unique(labels["train"])) < 2:
        raise DataImportError("the train split holds a single class; a classifier needs at least two")
    splits = {}
    for split in SPLITS:
        entries = results[(results["split"] == split) & (results["rows"] > 0)].sort_values("path")
        counts = np.bincount(labels[split], minlength=len(listing.classes))
        splits[split] = {"rows": int(len(labels[split])),
                         "class_counts": {c: int(n) for c, n in zip(listing.classes, counts)},
                         "files": [{"path": e["path"], "rows": int(e["rows"]), "sha256": e["sha256"]}
                                   for _, e in entries.iterrows()]}
    low = np.min(np.stack([np.frombuffer(v, np.uint8) for v in results["low"]]), axis=0)
    high = np.max(np.stack([np.frombuffer(v, np.uint8) for v in results["high"]]), axis=0)
    # The source's checksum: each file's content in listing order (keys stay out of it).
    kept_positions = np.concatenate([np.frombuffer(v, np.int64) for v in results["positions"]])
    file_digests = np.concatenate([np.frombuffer(v, np.uint8).reshape(-1, 32) for v in results["file_digests"]])
    file_digests = file_digests[np.argsort(kept_positions)]
    dicom = summarize_dicom_metadata([m for found in results["dicom"] for m in found])
    quality = {
        "missing_values": {"image": 0}, "missing_values_total": 0,
        "class_balance": class_balance(labels, listing.classes),
        "duplicates_across_splits": duplicates_across_splits(digests),
        "constant_features": {"constant_positions": int((low == high).sum()), "positions": int(low.size)},
        "unreadable_skipped": skipped,
        "patient_groups": bool(listing.groups is not None),
    }
    rows = sum(splits[s]["rows"] for s in SPLITS)
    source = describe_source({
        "kind": "images", "sha256": hashlib.sha256(file_digests.tobytes()).hexdigest(), "files": rows,
        "dicom_files": int(sum(len(found) for found in results["dicom"])),
        "options": {"size": options.size, "channels": options.channels, "resize": options.resize,
                    "labels_csv": labelled, "group": options.group or ("column" if options.group_column else None),
                    "skip_unreadable": options.skip_unreadable, "val_fraction": options.val_fraction,
                    "test_fraction": options.test_fraction, "seed": options.seed},
    })
    notes = listing.notes + ([f"{skipped} unreadable file(s) skipped (--skip-unreadable)"] if skipped else [])
    schema = {"column": "image", "shape": options.image_shape, "dtype": "uint8", "resize": options.resize,
              **({"dicom": dicom} if dicom else {})}
    return manifest_document(
        name, version, modality="image", classes=listing.classes, schema=schema, splits=splits, source=source,
        license="as stated by the data owner (recorded at import with --license)",
        description=f"Image archive: {rows} images in {len(listing.classes)} classes", quality=quality, notes=notes)
