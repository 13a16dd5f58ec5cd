"""One entry point for every import kind: source -> validated, versioned dataset on storage.

What the manifest says about the source is decided here, once for every kind: its
sha256, the options, the label the user gave (`--source-label`) and, for the public
datasets medray downloads, their URL. Never a local path, an s3:// key or a file or
folder name: those often carry a patient's name or record number.
"""

from __future__ import annotations

import logging
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field

from medray.cluster.config import Section
from medray.cluster.storage import Storage
from medray.train.data.dataset import DataImportError, ImportedDataset, check_name, publish

log = logging.getLogger(__name__)

IMPORT_KINDS = ("medmnist", "ucr", "csv", "sklearn", "images", "physionet2012", "events", "text")


class ImportOptions(Section):
    """How an import splits and sizes its rows: fixed once per dataset version, so every
    run on it sees the same rows (`medray data import` flags; validated like a config)."""

    val_fraction: float = Field(0.15, ge=0.0, lt=0.9)
    """Share of rows carved for validation when the source has no validation split."""
    test_fraction: float = Field(0.2, ge=0.0, lt=0.9)
    """Share of rows held out for testing when the source has no test split."""
    seed: int = 0
    """Seeds every split, so re-importing the same source gives the same rows."""
    image_size: int = Field(64, ge=8, le=1024)
    """Side length images are resized to by the `images` importer."""


@dataclass
class ImportRequest:
    """Everything `medray data import` was asked to do."""

    kind: str
    source: str
    name: str
    dataset: str | None = None
    """Which dataset inside a multi-dataset source (UCR folder)."""
    target: str | None = None
    """The label column (csv; events: of the labels table)."""
    columns: list[str] | None = None
    missing: list[str] | None = None
    categorical: list[str] = field(default_factory=list)
    group: str | None = None
    drop: list[str] = field(default_factory=list)
    classes: list[str] | None = None
    sep: str = ","
    units: dict[str, str] = field(default_factory=dict)
    """csv: per feature column, its unit or coding."""
    grayscale: bool = True
    license: str | None = None
    source_label: str | None = None
    """The user's name for the source, stored instead of its path or file name."""
    options: ImportOptions = field(default_factory=ImportOptions)
    # Clinical time series (physionet2012, events): see `medray.train.data.events`.
    outcomes: str | None = None
    """physionet2012: the outcomes file (RecordID, SAPS-I, SOFA, ..., In-hospital_death)."""
    labels: str | None = None
    """events: the labels table (CSV or Parquet), one row per patient."""
    patient_column: str = "patient"
    time_column: str = "time"
    variable_column: str = "variable"
    value_column: str = "value"
    time_unit: str = "minutes"
    """events: the unit of a numeric time (`minutes` or `hours`); `HH:MM` text is read as such."""
    static: list[str] = field(default_factory=list)
    """events: labels-table columns kept as static descriptors."""
    scores: list[str] = field(default_factory=list)
    """events: labels-table columns kept as reference scores (not model inputs)."""
    window_hours: float = 48.0
    """Observations later than this after admission are dropped (and counted)."""
    out_of_range: str = "drop"
    """Physiologically impossible values: `drop` (and count) or `refuse` the import."""
    # Clinical text: see `medray.train.data.text` (`group` is the patient column).
    text_column: str = "text"
    label_column: str = "label"
    label_names: str | None = None
    """text: a CSV mapping each label value to its class name."""
    # Image archives: see `medray.train.data.image_archive` (`labels` is its labels CSV,
    # `label_column` its label column, `group` "folder" or "dicom:PatientID").
    path_column: str = "path"
    group_column: str | None = None
    channels: int | None = None
    """1 or 3; None: from `grayscale`."""
    resize: str = "pad"
    skip_unreadable: bool = False


# A label is one line of ordinary text.
_LABEL = re.compile(r"[^\x00-\x1f\x7f]{1,200}")
# The source fields that say nothing about where a local file was or what it was called.
_KEPT_FIELDS = ("kind", "sha256", "options", "flag", "files", "dicom_files")


def public_uri(uri: object) -> bool:
    """A download URL of a public dataset medray knows (no patient data in it)."""
    from medray.train.data.medmnist import MEDMNIST_URL
    from medray.train.data.ucr import UCR_URL

    prefixes = (MEDMNIST_URL.split("{", 1)[0], UCR_URL.split("{", 1)[0], "sklearn://")
    return isinstance(uri, str) and uri.startswith(prefixes)


def provenance(source: dict[str, Any], label: str | None) -> dict[str, Any]:
    """The stored record of an importer's `source`: see the module docstring."""
    record = {key: source[key] for key in _KEPT_FIELDS if key in source}
    if isinstance(record.get("files"), dict):  # per-file checksums are keyed by file name
        record["files"] = len(record["files"])
    if public_uri(source.get("uri")):
        record["uri"] = source["uri"]
        if "dataset" in source:
            record["dataset"] = source["dataset"]
    if label is not None:
        record["label"] = label
    return record


def check_label(label: str | None) -> str | None:
    if label is not None and not _LABEL.fullmatch(label):
        raise DataImportError("--source-label must be 1-200 characters of text on one line")
    return label


def read_source(request: ImportRequest, staging: Path) -> ImportedDataset:
    """Parse and check the source in memory; nothing is written to storage here."""
    options = request.options
    if request.kind == "medmnist":
        from medray.train.data.medmnist import import_medmnist

        size = options.image_size if "image_size" in options.model_fields_set else None
        return import_medmnist(_local(request.source, staging), size)
    if request.kind == "ucr":
        from medray.train.data.ucr import import_ucr

        return import_ucr(request.source, request.dataset, options.val_fraction, options.seed)
    if request.kind == "csv":
        from medray.train.data.sources import local_source
        from medray.train.data.tabular import TableOptions, import_csv

        if not request.target:
            raise DataImportError("a csv import needs --target COLUMN (the label column)")
        table = TableOptions(
            target=request.target, columns=request.columns, categorical=request.categorical,
            group=request.group, drop=request.drop, classes=request.classes, sep=request.sep, units=request.units,
            val_fraction=options.val_fraction, test_fraction=options.test_fraction, seed=options.seed,
        )
        if request.missing is not None:
            table.missing = request.missing
        path = local_source(request.source, staging)
        return import_csv(path, table)
    if request.kind == "sklearn":
        from medray.train.data.tabular import import_sklearn

        return import_sklearn(request.source, options.val_fraction, options.test_fraction, options.seed)
    if request.kind in ("physionet2012", "events"):
        return _read_time_series(request, staging)
    if request.kind == "text":
        from medray.train.data.sources import is_folder, local_source
        from medray.train.data.text import import_text, text_options_from

        options = text_options_from(request)
        if request.label_names:
            options.label_names = local_source(request.label_names, staging / "label-names")
        if is_folder(request.source):  # class sub-folders, read in place
            return import_text(request.source, options)
        return import_text(local_source(request.source, staging / "text"), options)
    raise DataImportError(f"unknown import kind '{request.kind}'; use one of {', '.join(IMPORT_KINDS)}")


def _read_time_series(request: ImportRequest, staging: Path) -> ImportedDataset:
    from medray.train.data.events import EventOptions, SeriesOptions, import_events, import_physionet2012
    from medray.train.data.sources import local_source

    options = request.options
    series = SeriesOptions(window_hours=request.window_hours, out_of_range=request.out_of_range,
                           val_fraction=options.val_fraction, test_fraction=options.test_fraction, seed=options.seed)
    if request.kind == "physionet2012":
        if not request.outcomes:
            raise DataImportError("a physionet2012 import needs --outcomes FILE (the archive's Outcomes-a.txt)")
        # Each file fetched into its own folder: two s3:// objects may share a name.
        return import_physionet2012(local_source(request.source, staging / "archive"),
                                    local_source(request.outcomes, staging / "outcomes"), series)
    if not request.labels or not request.target:
        raise DataImportError("an events import needs --labels FILE and --target COLUMN (the labels table's label)")
    columns = EventOptions(
        target=request.target, patient_column=request.patient_column, time_column=request.time_column,
        variable_column=request.variable_column, value_column=request.value_column, time_unit=request.time_unit,
        static=list(request.static), scores=list(request.scores), classes=request.classes, sep=request.sep,
    )
    return import_events(local_source(request.source, staging / "events"),
                         local_source(request.labels, staging / "labels"), columns, series)


def _local(source: str, staging: Path) -> str:
    """s3:// and http(s):// sources are fetched first; names and paths pass through."""
    if "://" in source:
        from medray.train.data.sources import local_source

        return str(local_source(source, staging))
    return source


def import_dataset(storage: Storage, request: ImportRequest) -> dict[str, Any]:
    """Read, validate and publish; returns the new version's manifest."""
    check_name(request.name)
    check_label(request.source_label)
    storage.check()  # an unusable storage fails before minutes of parsing
    if request.kind == "images":
        return _import_images(storage, request)
    with tempfile.TemporaryDirectory(prefix="medray-import-") as scratch:
        staging = Path(scratch)
        log.info("reading the %s source%s", request.kind,
                 f" '{request.source_label}'" if request.source_label else "")
        dataset = read_source(request, staging)
        dataset.source = provenance(dataset.source, request.source_label)
        if request.license:
            dataset.license = request.license
        log.info("validating and writing %s", request.name)
        return publish(storage, request.name, dataset, staging / "payload")


def _import_images(storage: Storage, request: ImportRequest) -> dict[str, Any]:
    """Image folders and s3:// prefixes: written shard by shard by Ray Data tasks, never
    held whole in this process (`medray.train.data.image_archive`)."""
    from medray.train.data.image_archive import ArchiveOptions, import_image_archive
    from medray.train.data.sources import local_source

    options = request.options
    archive = ArchiveOptions(
        size=options.image_size, channels=request.channels or (1 if request.grayscale else 3),
        resize=request.resize, labels=request.labels, path_column=request.path_column,
        label_column=request.label_column, group=request.group, group_column=request.group_column,
        skip_unreadable=request.skip_unreadable, val_fraction=options.val_fraction,
        test_fraction=options.test_fraction, seed=options.seed)
    with tempfile.TemporaryDirectory(prefix="medray-import-") as scratch:
        labels_csv = local_source(request.labels, Path(scratch) / "labels") if request.labels else None
        return import_image_archive(storage, request.name, request.source, archive, labels_csv,
                                    lambda source: provenance(source, request.source_label), request.license)
