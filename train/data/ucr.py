"""UCR time-series archive: `{DATASET}_TRAIN.txt` / `{DATASET}_TEST.txt`.

Each line is one series: the class label first, then the samples, separated by
whitespace or commas. The archive's train/test split is kept; validation is carved
from train, stratified and seeded.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa

from medray.cluster import names
from medray.train.data.dataset import DataImportError, ImportedDataset, Split, sha256_files, tensor_column
from medray.train.data.sources import cached_or_download, sources_dir
from medray.train.data.splits import holdout_split

UCR_URL = "https://www.timeseriesclassification.com/aeon-toolkit/{dataset}.zip"
_SEPARATOR = re.compile(r"[\s,]+")
# Archive names ("ECG200", "NonInvasiveFetalECGThorax1"); a name becomes part of a URL and
# of file paths in the sources folder, so nothing that could be a path passes.
_DATASET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")

# Readable class names where the archive documents them; other datasets keep the labels.
UCR_CLASS_NAMES = {
    "ECG200": {"-1": "myocardial_infarction", "1": "normal"},
}


def check_dataset_name(name: str, what: str = "UCR dataset name") -> str:
    return names.check(_DATASET_NAME, name, what, DataImportError, "use 1-64 letters, digits, '_' or '-'")


def _find_files(folder: Path, dataset: str | None) -> tuple[str, Path, Path]:
    if dataset is None:
        found = sorted(p.name[: -len("_TRAIN.txt")] for p in folder.glob("*_TRAIN.txt"))
        if len(found) != 1:
            raise DataImportError(
                f"'{folder}' holds {len(found)} UCR datasets ({', '.join(found) or 'none'}); name one with --dataset"
            )
        dataset = found[0]
    train, test = folder / f"{dataset}_TRAIN.txt", folder / f"{dataset}_TEST.txt"
    for path in (train, test):
        if not path.is_file():
            raise DataImportError(f"'{path}' does not exist (a UCR dataset needs _TRAIN.txt and _TEST.txt)")
    return dataset, train, test


def _download(dataset: str) -> Path:
    folder = sources_dir()
    if (folder / f"{dataset}_TRAIN.txt").is_file() and (folder / f"{dataset}_TEST.txt").is_file():
        return folder
    archive = cached_or_download(f"{dataset}.zip", UCR_URL.format(dataset=dataset))
    try:
        with zipfile.ZipFile(archive) as bundle:
            for member in bundle.namelist():
                name = Path(member).name
                if name in (f"{dataset}_TRAIN.txt", f"{dataset}_TEST.txt"):
                    (folder / name).write_bytes(bundle.read(member))
    except zipfile.BadZipFile:
        raise DataImportError(f"'{archive}' is not a valid zip archive; delete it and retry") from None
    return folder


def _label_text(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def read_ucr_file(path: Path) -> tuple[np.ndarray, list[str]]:
    """(series (N, L) float64, label texts) from one UCR text file."""
    rows: list[list[float]] = []
    labels: list[str] = []
    try:
        lines = path.read_text().splitlines()
    except UnicodeDecodeError:
        raise DataImportError(f"'{path}' is not a UCR text file (not readable as text)") from None
    for number, line in enumerate(lines, start=1):
        tokens = [t for t in _SEPARATOR.split(line.strip()) if t]
        if not tokens:
            continue
        try:
            values = [float(token) for token in tokens]
        except ValueError:
            bad = next(i for i, t in enumerate(tokens) if not _is_number(t))
            what = "the label" if bad == 0 else f"sample {bad}"
            raise DataImportError(f"'{path}' line {number}: {what} is not a number") from None
        if rows and len(values) - 1 != len(rows[0]):
            raise DataImportError(
                f"'{path}' line {number}: {len(values) - 1} samples, but earlier lines have {len(rows[0])}"
            )
        if len(values) < 2:
            raise DataImportError(f"'{path}' line {number}: a label with no samples")
        labels.append(_label_text(values[0]))
        rows.append(values[1:])
    if not rows:
        raise DataImportError(f"'{path}' holds no series")
    return np.asarray(rows, dtype=np.float64), labels


def _is_number(token: str) -> bool:
    try:
        float(token)
        return True
    except ValueError:
        return False


def import_ucr(source: str, dataset: str | None = None, val_fraction: float = 0.15, seed: int = 0) -> ImportedDataset:
    if dataset is not None:
        check_dataset_name(dataset, "--dataset")
    folder = Path(source).expanduser()
    if folder.is_dir():
        uri_base = None  # a local folder is not recorded: its path or file names may identify patients
    elif folder.exists():
        raise DataImportError(f"'{source}' is a file; give the folder holding {{DATASET}}_TRAIN.txt and _TEST.txt")
    else:
        dataset = dataset or check_dataset_name(source, "source (neither a folder nor a UCR dataset name)")
        folder, uri_base = _download(dataset), UCR_URL.format(dataset=dataset)
    dataset, train_path, test_path = _find_files(folder, dataset)
    train_x, train_labels = read_ucr_file(train_path)
    test_x, test_labels = read_ucr_file(test_path)
    if train_x.shape[1] != test_x.shape[1]:
        raise DataImportError(
            f"'{test_path}': series have {test_x.shape[1]} samples but the train file's have {train_x.shape[1]}"
        )
    label_values = sorted(set(train_labels), key=float)
    unknown = [(i, label) for i, label in enumerate(test_labels) if label not in set(label_values)]
    if unknown:
        raise DataImportError(
            f"'{test_path}' row {unknown[0][0] + 1}: label {unknown[0][1]} does not occur in the train file"
        )
    index = {label: i for i, label in enumerate(label_values)}
    train_y = np.asarray([index[label] for label in train_labels], dtype=np.int64)
    test_y = np.asarray([index[label] for label in test_labels], dtype=np.int64)
    keep, val = holdout_split(train_y, val_fraction, seed, what="validation")
    names = UCR_CLASS_NAMES.get(dataset, {})
    classes = [names.get(label, label) for label in label_values]

    def split(x: np.ndarray, y: np.ndarray) -> Split:
        return Split(pa.table({"signal": tensor_column(x)}), y)

    return ImportedDataset(
        modality="signal",
        classes=classes,
        splits={"train": split(train_x[keep], train_y[keep]), "val": split(train_x[val], train_y[val]),
                "test": split(test_x, test_y)},
        schema={"column": "signal", "shape": [int(train_x.shape[1])], "dtype": "float64",
                "source_labels": label_values},
        source={
            "kind": "ucr", "uri": uri_base, "dataset": dataset,
            **sha256_files([train_path, test_path]),
            "options": {"val_fraction": val_fraction, "seed": seed},
        },
        license="UCR archive: free for research use with citation (Dau et al. 2019)",
        description=f"UCR time-series classification: {dataset}" if uri_base else "UCR-format time series",
    )


# What a stand-in needs to look like each dataset: series length, file sizes, label values.
UCR_SHAPES = {
    "ECG200": {"length": 96, "train": 100, "test": 100, "labels": ["-1", "1"]},
}


def write_synthetic_ucr(dataset: str, folder: Path, seed: int = 0) -> Path:
    """Stand-in `{dataset}_TRAIN.txt` / `_TEST.txt` in the archive's format, for runs
    without the real files or a network: the same length, sizes and label values, so the
    dataset's class names and every config written for it apply unchanged. Each class is
    a beat of its own shape (a later, wider second wave per label) with jitter, gain and
    noise enough that some series are ambiguous. Not medical data."""
    shape = UCR_SHAPES[dataset]
    rng = np.random.default_rng(seed)
    t = np.arange(shape["length"]) / shape["length"]
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("TRAIN", "TEST"):
        n = shape[split.lower()]
        which = rng.integers(0, len(shape["labels"]), n)
        shift = rng.normal(0, 0.03, (n, 1))
        spike = np.exp(-((t - 0.3 - shift) ** 2) / (2 * 0.02 ** 2))
        wave = np.exp(-((t - 0.6 - 0.03 * which[:, None] - shift) ** 2) / (2 * (0.06 + 0.01 * which[:, None]) ** 2))
        series = rng.uniform(0.7, 1.3, (n, 1)) * (2.5 * spike + (1.0 - 0.25 * which[:, None]) * wave)
        series += rng.normal(0, 0.35, series.shape)
        labels = np.asarray([float(shape["labels"][k]) for k in which])
        np.savetxt(folder / f"{dataset}_{split}.txt", np.column_stack([labels, series]), fmt="%.5f")
    return folder
