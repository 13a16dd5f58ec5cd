"""Health-record tables: a CSV file with a target column, or a dataset shipped in scikit-learn.

Numeric columns become float64 (missing markers become nulls); categorical columns stay
text. An optional group column (e.g. a patient id) keeps each group inside one split and
is then dropped: identifiers are never copied into the dataset. Messages say "the table",
not its file name, which may carry a patient's name.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from medray.train.data.dataset import DataImportError, ImportedDataset, Split, sha256_file
from medray.train.data.splits import three_way_split


@dataclass
class TableOptions:
    """How to read one table; each field maps to a `medray data import csv` option."""

    target: str
    columns: list[str] | None = None
    """Column names for a file without a header row."""
    missing: list[str] = field(default_factory=lambda: ["", "?", "NA", "NaN", "nan"])
    """Cell texts that mean "missing"."""
    categorical: list[str] = field(default_factory=list)
    group: str | None = None
    """Rows sharing this column's value (e.g. a patient) stay in one split."""
    drop: list[str] = field(default_factory=list)
    """Columns left out of the dataset (identifiers, free text)."""
    classes: list[str] | None = None
    """Class names in label order; values outside it are refused. Default: sorted values."""
    sep: str = ","
    units: dict[str, str] = field(default_factory=dict)
    """Per feature column, its unit or coding ("mm Hg", "1 = yes, 0 = no"), shown to people
    filling a record (the serving schema, the web page's form)."""
    val_fraction: float = 0.15
    test_fraction: float = 0.2
    seed: int = 0


def _canonical(value: str) -> str:
    """'1.0' and '1' are the same class; non-numeric names are kept as written."""
    try:
        number = float(value)
    except ValueError:
        return value.strip()
    return str(int(number)) if number.is_integer() else repr(number)


def check_sep(sep: str) -> str:
    """One character that can separate fields (`\\t`, as typed in a shell, means a tab)."""
    sep = "\t" if sep == "\\t" else sep
    if len(sep) != 1 or sep in "\"\r\n" or sep.isalnum():
        raise DataImportError(
            f"--sep {sep!r} is not allowed: use one character such as ',', ';', '|' or '\\t' (not a letter, "
            "digit, quote or line break)"
        )
    return sep


def _read_csv(path: Path, options: TableOptions) -> pd.DataFrame:
    sep = check_sep(options.sep)
    if path.is_dir():
        raise DataImportError("the csv source is a folder; give the table's file")
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            first = next(csv.reader(handle, delimiter=sep), None)
        if first is None:
            raise DataImportError("the table is empty")
        if options.columns is not None and len(first) != len(options.columns):
            raise DataImportError(
                f"the table's line 1 has {len(first)} fields but {len(options.columns)} column names were given"
            )
        return pd.read_csv(
            path, sep=sep, header=None if options.columns else 0, names=options.columns, encoding="utf-8",
            dtype=str, keep_default_na=False, na_values=options.missing, skipinitialspace=True,
        )
    except UnicodeDecodeError:
        raise DataImportError("the table is not UTF-8 text; save it as UTF-8 CSV") from None
    except csv.Error as error:  # e.g. NUL bytes: a binary file
        raise DataImportError(f"the table is not a text table ({str(error).split(':')[0]})") from None
    except pd.errors.EmptyDataError:
        raise DataImportError("the table holds no rows") from None
    except pd.errors.ParserError as error:
        # pandas names the line and field counts, not cell values.
        raise DataImportError(f"the table is not well-formed: {str(error).strip()}") from None
    except ValueError as error:  # e.g. duplicate column names
        raise DataImportError(f"the table cannot be read as given: {str(error).strip()}") from None
    except OSError as error:
        raise DataImportError(f"the table cannot be read ({error.strerror or type(error).__name__})") from None


def _numeric(frame: pd.DataFrame, column: str, header_lines: int) -> pd.Series:
    values = pd.to_numeric(frame[column], errors="coerce")
    bad = values.isna() & frame[column].notna()
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        # The value itself is not shown: it may be a patient's record.
        raise DataImportError(
            f"the table's column '{column}', row {row + 1} (line {row + 1 + header_lines}): value is not a number; "
            "mark the column with --categorical, or leave it out with --drop"
        )
    return values.astype("float64")


def _labels(target: pd.Series, options: TableOptions, header_lines: int) -> tuple[np.ndarray, list[str]]:
    missing = target.isna().to_numpy()
    if missing.any():
        row = int(np.flatnonzero(missing)[0])
        raise DataImportError(
            f"the table's column '{options.target}', row {row + 1} (line {row + 1 + header_lines}): "
            "the target is missing"
        )
    texts = target.astype(str).map(_canonical)
    if options.classes is not None:
        classes = [_canonical(c) for c in options.classes]
        unknown = ~texts.isin(classes)
        if unknown.any():
            row = int(np.flatnonzero(unknown.to_numpy())[0])
            raise DataImportError(
                f"the table's column '{options.target}', row {row + 1} (line {row + 1 + header_lines}): "
                f"label is not one of the given classes {classes}"
            )
    else:
        found = texts.unique().tolist()
        numeric = all(_canonical(c) == c and c.lstrip("-").replace(".", "", 1).isdigit() for c in found)
        classes = sorted(found, key=float) if numeric else sorted(found)
    index = {name: i for i, name in enumerate(classes)}
    return texts.map(index).to_numpy(dtype=np.int64), classes


def tabular_dataset(
    features: pd.DataFrame,
    labels: np.ndarray,
    classes: list[str],
    categorical: list[str],
    splits: dict[str, np.ndarray],
    source: dict,
    license: str,
    description: str,
    units: dict[str, str] | None = None,
) -> ImportedDataset:
    """Build the dataset from a cleaned feature frame (numeric float64, categorical text);
    `units`: per feature, its unit or coding, kept in the schema."""
    schema = []
    for name in features.columns:
        if name in categorical:
            categories = sorted(features[name].dropna().astype(str).unique().tolist())
            schema.append({"name": name, "type": "categorical", "categories": categories})
        else:
            schema.append({"name": name, "type": "numeric"})
        if (units or {}).get(name):
            schema[-1]["unit"] = units[name]
    arrow = pa.Table.from_pandas(features, preserve_index=False)
    return ImportedDataset(
        modality="tabular",
        classes=classes,
        splits={name: Split(arrow.take(pa.array(rows)), labels[rows]) for name, rows in splits.items()},
        schema={"features": schema},
        source=source,
        license=license,
        description=description,
    )


def import_csv(source: Path, options: TableOptions) -> ImportedDataset:
    frame = _read_csv(source, options)
    header_lines = 0 if options.columns else 1
    named = [options.target, *options.categorical, *options.drop, *options.units,
             *([options.group] if options.group else [])]
    absent = [name for name in named if name not in frame.columns]
    if absent:
        raise DataImportError(
            f"the table has no column(s) {', '.join(repr(a) for a in absent)} (columns: {', '.join(frame.columns)})"
        )
    if frame.empty:
        raise DataImportError("the table holds no rows")
    labels, classes = _labels(frame[options.target], options, header_lines)
    groups = None
    if options.group:
        if frame[options.group].isna().any():
            raise DataImportError(f"the table's column '{options.group}': some rows have no group value")
        groups = frame[options.group].to_numpy(dtype=str)
    feature_names = [c for c in frame.columns if c not in {options.target, options.group, *options.drop}]
    if not feature_names:
        raise DataImportError("the table has no feature columns besides the target")
    features = pd.DataFrame({
        name: frame[name].astype("string").str.strip().astype(object).where(frame[name].notna(), None)
        if name in options.categorical else _numeric(frame, name, header_lines)
        for name in feature_names
    })
    splits = three_way_split(labels, options.val_fraction, options.test_fraction, options.seed, groups)
    option_record = {k: v for k, v in vars(options).items() if v not in (None, [], "")}
    return tabular_dataset(
        features, labels, classes, options.categorical, splits,
        source={"kind": "csv", "sha256": sha256_file(source), "options": option_record},
        license="as stated by the data owner (recorded at import with --license)",
        description=f"Table with target '{options.target}'",
        units=options.units,
    )


# Real datasets that ship inside scikit-learn (no download needed).
SKLEARN_DATASETS = {
    "breast_cancer": {
        "loader": "load_breast_cancer",
        "file": "breast_cancer.csv",
        "license": "CC BY 4.0 (UCI Wisconsin Diagnostic Breast Cancer; Street, Wolberg, Mangasarian 1993)",
        "description": "Wisconsin Diagnostic Breast Cancer: 30 features of fine-needle aspirates",
    },
}


def import_sklearn(name: str, val_fraction: float = 0.15, test_fraction: float = 0.2, seed: int = 0) -> ImportedDataset:
    if name not in SKLEARN_DATASETS:
        raise DataImportError(f"{name!r} is not a scikit-learn dataset medray knows ({', '.join(SKLEARN_DATASETS)})")
    info = SKLEARN_DATASETS[name]
    import sklearn.datasets

    bunch = getattr(sklearn.datasets, info["loader"])(as_frame=True)
    features = bunch.data.astype("float64")
    labels = bunch.target.to_numpy(dtype=np.int64)
    data_file = resources.files("sklearn.datasets") / "data" / info["file"]
    splits = three_way_split(labels, val_fraction, test_fraction, seed)
    return tabular_dataset(
        features, labels, [str(c) for c in bunch.target_names], [], splits,
        source={"kind": "sklearn", "uri": f"sklearn://{name}", "sha256": sha256_file(data_file),
                "options": {"val_fraction": val_fraction, "test_fraction": test_fraction, "seed": seed}},
        license=info["license"],
        description=info["description"],
    )


# Public tables medray knows by name: what their files lack (a header row), which column
# is the target, how they mark a missing value, where they are published, their terms.
KNOWN_TABLES = {
    "cleveland": {
        "file": "processed.cleveland.data",
        "url": "https://archive.ics.uci.edu/ml/machine-learning-databases/heart-disease/processed.cleveland.data",
        "columns": ["age", "sex", "cp", "trestbps", "chol", "fbs", "restecg", "thalach", "exang", "oldpeak", "slope",
                    "ca", "thal", "num"],
        "target": "num",
        "missing": ["?"],
        # As the UCI documentation (heart-disease.names) states them.
        "units": {"age": "years", "sex": "1 = male, 0 = female", "cp": "chest pain type 1-4 (4 = asymptomatic)",
                  "trestbps": "mm Hg at rest", "chol": "mg/dl", "fbs": "fasting glucose > 120 mg/dl: 1, else 0",
                  "restecg": "resting ECG 0-2", "thalach": "beats/min, maximum", "exang": "exercise angina: 1 = yes",
                  "oldpeak": "mm ST depression, exercise vs rest", "slope": "ST slope 1-3",
                  "ca": "major vessels coloured by fluoroscopy, 0-3",
                  "thal": "3 = normal, 6 = fixed defect, 7 = reversible defect"},
        "license": "CC BY 4.0 (UCI Heart Disease; Janosi, Steinbrunn, Pfisterer, Detrano 1988)",
    },
}
CLEVELAND_COLUMNS = KNOWN_TABLES["cleveland"]["columns"]


def write_synthetic_cleveland(path: Path, rows: int = 303, seed: int = 0) -> Path:
    """A stand-in for `processed.cleveland.data` in its format (no header, `?` for missing,
    the 13 features in their units and codes, `num` 0-4), for runs without the real file
    or a network, so every config written for Cleveland runs unchanged. Disease shifts the
    features the way the real cohort's do, with overlap. Not patient data."""
    rng = np.random.default_rng(seed)
    disease = rng.random(rows) < 0.46
    d = disease.astype(float)
    num = np.where(disease, rng.choice([1, 2, 3, 4], rows, p=[0.4, 0.25, 0.25, 0.1]), 0)
    columns = {
        "age": np.clip(rng.normal(52 + 4 * d, 9), 29, 77).round(),
        "sex": (rng.random(rows) < 0.55 + 0.25 * d).astype(float),
        "cp": np.where(rng.random(rows) < 0.3 + 0.45 * d, 4.0, rng.integers(1, 4, rows).astype(float)),
        "trestbps": np.clip(rng.normal(130 + 5 * d, 17), 94, 200).round(),
        "chol": np.clip(rng.normal(242 + 8 * d, 50), 126, 564).round(),
        "fbs": (rng.random(rows) < 0.15).astype(float),
        "restecg": rng.choice([0.0, 1.0, 2.0], rows, p=[0.5, 0.02, 0.48]),
        "thalach": np.clip(rng.normal(158 - 19 * d, 20), 71, 202).round(),
        "exang": (rng.random(rows) < 0.15 + 0.4 * d).astype(float),
        "oldpeak": np.clip(np.abs(rng.normal(0.6 + 1.0 * d, 1.0)), 0, 6.2).round(1),
        "slope": np.where(rng.random(rows) < 0.3 + 0.4 * d, 2.0, rng.choice([1.0, 3.0], rows, p=[0.85, 0.15])),
        "ca": np.clip(rng.poisson(0.3 + 1.0 * d), 0, 3).astype(float),
        "thal": np.where(rng.random(rows) < 0.2 + 0.55 * d, 7.0, rng.choice([3.0, 6.0], rows, p=[0.9, 0.1])),
    }
    cells = pd.DataFrame({name: values.astype(str) for name, values in columns.items()})
    for name in ("ca", "thal"):  # a few unknowns, as the real file has
        cells.loc[rng.choice(rows, 3, replace=False), name] = "?"
    cells["num"] = num.astype(str)
    path.parent.mkdir(parents=True, exist_ok=True)
    cells.to_csv(path, header=False, index=False)
    return path
