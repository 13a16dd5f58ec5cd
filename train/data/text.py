"""Clinical text: labelled documents (notes, reports, letters, abstracts) as a dataset.

Sources: a CSV or Parquet table with a text column and a label column (names by option;
class names from an optional two-column mapping file), or a folder (local or an s3://
prefix, read in place) of UTF-8 `.txt` files in one sub-folder per class. An optional group column (a patient) keeps each group's
documents in one split; without one, exact duplicates (after whitespace normalisation)
are kept together, so a document never sits in train and test at once. The group column
is dropped after splitting and rows are shuffled: nothing stored says whose a note was.

Messages name the row (or the file's position in its class folder) and the column, never
a document's text, a group value or a file name, any of which may identify a patient.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pyarrow as pa

from medray.train.data.dataset import DataImportError, ImportedDataset, Split, sha256_file
from medray.train.data.sources import list_files, source_reader
from medray.train.data.splits import three_way_split
from medray.train.modalities.text import normalised_document

MAX_SOURCE_BYTES = 2 * 1024**3
"""A table or folder read into memory at once; larger collections belong in shards."""
MAX_DOCUMENT_CHARS = 200_000
"""Per document: a long discharge summary is about 30,000 characters."""
_WORD = re.compile(r"\w+")


@dataclass
class TextOptions:
    """How to read one text source; each field maps to a `medray data import text` option."""

    text_column: str = "text"
    label_column: str = "label"
    label_names: Path | None = None
    """A CSV mapping each label value (first column) to its class name (second column)."""
    group_column: str | None = None
    sep: str = ","
    val_fraction: float = 0.15
    test_fraction: float = 0.2
    seed: int = 0


def import_text(source: Path | str, options: TextOptions) -> ImportedDataset:
    """Read, check and split a table (a local file) or a class folder (a local folder or
    an s3:// prefix, given as a string) of documents; nothing is written."""
    if isinstance(source, str) or source.is_dir():
        texts, labels, classes, groups = _read_folder(str(source))
        digest = {"files": len(texts)}
    else:
        if source.stat().st_size > MAX_SOURCE_BYTES:
            raise DataImportError(f"the text table is larger than {MAX_SOURCE_BYTES:,} bytes")
        texts, values, groups = _read_table(source, options)
        labels, classes = _labels(values, options.label_names)
        digest = {"sha256": sha256_file(source)}
    kept = np.asarray([bool(t.strip()) for t in texts])
    empty = int((~kept).sum())
    texts = [t for t, k in zip(texts, kept) if k]
    labels = labels[kept]
    groups = None if groups is None else [g for g, k in zip(groups, kept) if k]
    if not texts:
        raise DataImportError("the text source holds no non-empty document")
    counts = np.bincount(labels, minlength=len(classes))
    for name, count in zip(classes, counts):
        if count < 2:
            raise DataImportError(f"class '{name}' has {int(count)} document(s); each class needs at least 2 "
                                  f"to be split")
    normalised = [normalised_document(t) for t in texts]
    keys = groups if groups is not None else normalised  # duplicates stay together
    _, group_ids = np.unique(np.asarray([hashlib.sha256(k.encode()).hexdigest() for k in keys]),
                             return_inverse=True)
    if len(np.unique(group_ids)) < len(texts) or groups is not None:
        rows = three_way_split(labels, options.val_fraction, options.test_fraction, options.seed, group_ids)
    else:
        rows = three_way_split(labels, options.val_fraction, options.test_fraction, options.seed)
    rng = np.random.default_rng(options.seed)
    splits, duplicates = {}, {}
    for name, indices in rows.items():
        indices = rng.permutation(indices)  # row order says nothing about the source's order
        splits[name] = Split(pa.table({"text": pa.array([texts[i] for i in indices], pa.large_string())}),
                             labels[indices].astype(np.int64))
        duplicates[name] = int(len(indices) - len({normalised[i] for i in indices}))
    quality = {
        "documents_per_class": {name: {c: int(n) for c, n in zip(classes, np.bincount(s.labels, minlength=len(
            classes)))} for name, s in splits.items()},
        "length_characters": _distribution([len(t) for t in texts]),
        "length_words": _distribution([len(_WORD.findall(t)) for t in texts]),
        "empty_documents_dropped": empty,
        "duplicate_documents_within_splits": duplicates,
    }
    source_record = {"kind": "text", **digest,
                     "options": {"text_column": options.text_column, "label_column": options.label_column,
                                 "grouped": options.group_column is not None}}
    return ImportedDataset(modality="text", classes=classes, splits=splits,
                           schema={"column": "text", "max_document_chars": MAX_DOCUMENT_CHARS},
                           source=source_record, license="as given by the source's owner",
                           description="labelled clinical documents", quality=quality)


def _distribution(values: list[int]) -> dict[str, float]:
    array = np.asarray(values, dtype=np.float64)
    return {"min": float(array.min()), "p5": float(np.percentile(array, 5)), "median": float(np.median(array)),
            "p95": float(np.percentile(array, 95)), "max": float(array.max())}


def _checked(text: str, where: str) -> str:
    if len(text) > MAX_DOCUMENT_CHARS:
        raise DataImportError(f"{where}: the document is longer than {MAX_DOCUMENT_CHARS:,} characters")
    return text


def _decoded(data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[:error.start].count(b"\n") + 1
        raise DataImportError(f"{what} is not UTF-8 text (line {line})") from None


def _read_table(source: Path, options: TextOptions) -> tuple[list[str], list[str], list[str] | None]:
    wanted = [options.text_column, options.label_column] + ([options.group_column] if options.group_column else [])
    if source.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(source)
        _check_columns(table.column_names, wanted)
        columns = [[None if v is None else str(v) for v in table.column(c).to_pylist()] for c in wanted]
    else:
        text = _decoded(source.read_bytes(), "the text table")
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=options.sep)
        try:
            header = next(reader)
        except StopIteration:
            raise DataImportError("the text table is empty") from None
        _check_columns(header, wanted)
        positions = [header.index(c) for c in wanted]
        rows = []
        try:
            for row in reader:
                if row:
                    if len(row) != len(header):
                        raise DataImportError(f"row {reader.line_num - 1} of the text table has {len(row)} fields, "
                                              f"the header {len(header)}")
                    rows.append([row[p] for p in positions])
        except csv.Error as error:
            raise DataImportError(f"the text table cannot be read as CSV near row {reader.line_num - 1} "
                                  f"({type(error).__name__})") from None
        columns = [list(c) for c in zip(*rows)] if rows else [[] for _ in wanted]
    if not columns[0]:
        raise DataImportError("the text table has no rows")
    texts = []
    for row, (text, label) in enumerate(zip(columns[0], columns[1]), start=1):  # rows after the header
        if label is None or not label.strip():
            raise DataImportError(f"row {row}: the label column '{options.label_column}' is empty")
        texts.append(_checked(text or "", f"row {row}"))
    return texts, [v.strip() for v in columns[1]], columns[2] if options.group_column else None


def _check_columns(present: list[str], wanted: list[str]) -> None:
    missing = [c for c in wanted if c not in present]
    if missing:
        raise DataImportError(f"the text table has no column {', '.join(map(repr, missing))}; "
                              f"its columns: {', '.join(present)}")


def _labels(values: list[str], label_names: Path | None) -> tuple[np.ndarray, list[str]]:
    """Label values -> (indices, class names): in the mapping file's order, else sorted."""
    if label_names is None:
        classes = sorted(set(values))
        lookup = {v: i for i, v in enumerate(classes)}
    else:
        rows = [r for r in csv.reader(io.StringIO(_decoded(label_names.read_bytes(), "the label names file")))
                if r][1:]
        if not rows or any(len(r) < 2 for r in rows):
            raise DataImportError("the label names file needs a header and two columns: label value, class name")
        keys = [r[0].strip() for r in rows]
        if len(set(keys)) < len(keys):
            raise DataImportError("the label names file lists a label value twice")
        lookup = {k: i for i, k in enumerate(keys)}
        classes = [r[1].strip() for r in rows]
        unknown = sorted(set(values) - set(lookup))
        if unknown:
            raise DataImportError(f"label value(s) {', '.join(unknown[:5])} are not in the label names file")
    return np.asarray([lookup[v] for v in values], dtype=np.int64), classes


def _is_class_document(relative: str) -> bool:
    parts = PurePosixPath(relative).parts
    return (len(parts) == 2 and parts[1].endswith(".txt")
            and not any(part.startswith(".") for part in parts))


def _read_folder(source: str) -> tuple[list[str], np.ndarray, list[str], None]:
    """Class sub-folders of `.txt` files; every size is checked from the listing before
    any file is read."""
    sizes = list_files(source, _is_class_document, "class sub-folders of .txt files")
    classes = sorted({key.split("/", 1)[0] for key in sizes})
    if sum(sizes.values()) > MAX_SOURCE_BYTES:
        raise DataImportError(f"the text folder holds more than {MAX_SOURCE_BYTES:,} bytes")
    read = source_reader(source)
    texts, labels, position = [], [], {name: 0 for name in classes}
    for key, size in sizes.items():  # sorted: class by class, files in name order
        name = key.split("/", 1)[0]
        position[name] += 1
        where = f"file {position[name]} of class '{name}'"
        if size > 4 * MAX_DOCUMENT_CHARS:
            raise DataImportError(f"{where}: larger than {4 * MAX_DOCUMENT_CHARS:,} bytes")
        texts.append(_checked(_decoded(read(key), where), where))
        labels.append(classes.index(name))
    return texts, np.asarray(labels, dtype=np.int64), classes, None


def text_options_from(request: Any) -> TextOptions:
    """The importer's options from an `ImportRequest`."""
    return TextOptions(text_column=request.text_column, label_column=request.label_column,
                       group_column=request.group, sep=request.sep,
                       val_fraction=request.options.val_fraction, test_fraction=request.options.test_fraction,
                       seed=request.options.seed)
