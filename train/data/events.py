"""Clinical time series: ICU stays and EHR event exports -> a `timeseries` dataset.

Two sources, one path after parsing:

- `physionet2012`: the PhysioNet/CinC Challenge 2012 archive as distributed (`set-a.tar.gz`,
  or the folder it extracts to): one `Time,Parameter,Value` file per stay, times `HH:MM`
  since ICU admission, the 00:00 block first holding the static descriptors (RecordID,
  Age, Gender, Height, ICUType, Weight; -1 = unknown), then the 37 time-varying
  variables; plus the outcomes file (label In-hospital_death; SAPS-I and SOFA kept as
  reference scores, never model inputs).
- `events`: the long format EHR exports take (OMOP measurement, MIMIC chartevents): rows
  of (patient, time, variable, value) in a CSV or Parquet file, with a labels table keyed
  by the same patient column holding the target and, optionally, static descriptors and
  reference scores. A static there is categorical when it has at most 10 distinct values,
  all whole numbers (its sorted values are its categories); otherwise numeric.

Each parser turns its source into `Stays` (every observation of every stay in flat,
compact arrays); `build_dataset` checks and windows them and writes the stored form the
modality reads (`medray.train.modalities.timeseries`). No patient identifier (RecordID,
the events' patient value, a file name, which is a RecordID in the archive) is stored,
logged or named in an error: problems are named by position (the archive's member
number, a line, a row) and column, never by the value found there.
"""

from __future__ import annotations

import csv
import logging
import math
import re
import tarfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from tqdm import tqdm

from medray.cluster.console import CONSOLE
from medray.train.data.dataset import SPLITS, DataImportError, ImportedDataset, Split, sha256_files
from medray.train.data.splits import three_way_split
from medray.train.data.tabular import _canonical, check_sep

log = logging.getLogger(__name__)

# Physiologically possible values: generous physical limits of what a living patient's
# measurement can be (values beyond them are charting or unit errors), in the units the
# challenge documents (https://physionet.org/content/challenge-2012/1.0.0/: FiO2 as a
# fraction, Temp in °C, Weight in kg, Urine in mL per charting interval, labs in the
# units of its parameter list). Lab values are >= 0 with a top well beyond any reported
# survivor (ALT/AST in fulminant hepatitis reach about 10^4 IU/L).
PLAUSIBLE_RANGES: dict[str, tuple[float, float]] = {
    "ALP": (0, 10000), "ALT": (0, 30000), "AST": (0, 30000), "Albumin": (0, 10), "BUN": (0, 300),
    "Bilirubin": (0, 100), "Cholesterol": (0, 1500), "Creatinine": (0, 40), "DiasABP": (0, 300), "FiO2": (0.21, 1),
    "GCS": (3, 15), "Glucose": (0, 3000), "HCO3": (0, 80), "HCT": (0, 100), "HR": (0, 300), "K": (0, 30),
    "Lactate": (0, 50), "MAP": (0, 300), "MechVent": (0, 1), "Mg": (0, 20), "NIDiasABP": (0, 300),
    "NIMAP": (0, 300), "NISysABP": (0, 400), "Na": (0, 250), "PaCO2": (0, 200), "PaO2": (0, 800),
    "Platelets": (0, 3000), "RespRate": (0, 150), "SaO2": (0, 100), "SysABP": (0, 400), "Temp": (14, 46),
    "TroponinI": (0, 500), "TroponinT": (0, 100), "Urine": (0, 10000), "WBC": (0, 500), "Weight": (20, 350),
    "pH": (6.5, 8.0),
}
# PhysioNet's statics: adults only (the challenge admitted patients 16 and over); heights
# such as 1.8 or 13 are metres or typing errors, not centimetres.
STATIC_RANGES: dict[str, tuple[float, float]] = {
    "Age": (15, 120), "Gender": (0, 1), "Height": (100, 250), "ICUType": (1, 4), "Weight": (20, 350),
}

PHYSIONET_VARIABLES = tuple(sorted(PLAUSIBLE_RANGES))
PHYSIONET_STATICS = ("Age", "Gender", "Height", "ICUType", "Weight")
PHYSIONET_CATEGORIES = {"Gender": [0, 1], "ICUType": [1, 2, 3, 4]}
PHYSIONET_SCORES = ("SAPS-I", "SOFA")
PHYSIONET_LABEL = "In-hospital_death"
PHYSIONET_CLASSES = ["survived", "died"]
PHYSIONET_HEADER = "Time,Parameter,Value"
PHYSIONET_LICENSE = "ODC-BY 1.0 (PhysioNet/CinC Challenge 2012; Silva et al. 2012; cite Goldberger et al. 2000)"

# Bounds on what an archive may make the import read (checked before a member is read).
MAX_MEMBER_BYTES = 16 << 20
"""One stay's file: the busiest PhysioNet 2012 stay is about 24 KB."""
MAX_MEMBERS = 2_000_000
MAX_TOTAL_BYTES = 64 << 30

MAX_CATEGORIES = 10
"""An events static with at most this many distinct integer values is categorical."""
MAX_VARIABLES = np.iinfo(np.int16).max
EVENT_BATCH_BYTES = 16 << 20
OUT_OF_RANGE = ("drop", "refuse")
TIME_UNITS = {"minutes": 1.0, "hours": 60.0}
CLOCK = re.compile(r"(\d{1,6}):([0-5]\d)")
"""A time `HH:MM` since admission (hours may pass 99: stays run for weeks)."""
_CLOCK_PATTERN = r"^\s*(?P<h>\d{1,6}):(?P<m>[0-5]\d)\s*$"


@dataclass
class SeriesOptions:
    """How stays become a dataset; each field maps to a `medray data import` option."""

    window_hours: float = 48.0
    """Observations later than this after admission are dropped (and counted)."""
    out_of_range: str = "drop"
    """`drop`: implausible values are left out (a static becomes unknown) and counted;
    `refuse`: the import stops at the first, naming where it is."""
    val_fraction: float = 0.15
    test_fraction: float = 0.2
    seed: int = 0

    def record(self) -> dict[str, Any]:
        return {"window_hours": self.window_hours, "out_of_range": self.out_of_range,
                "val_fraction": self.val_fraction, "test_fraction": self.test_fraction, "seed": self.seed}


@dataclass
class Descriptor:
    """One static descriptor of every stay."""

    values: np.ndarray
    """float64 per stay; NaN = unknown."""
    range: tuple[float, float] | None = None
    categories: list[int] | None = None
    """Its categories when fixed by the source's documentation (PhysioNet's Gender, ICUType)."""


@dataclass
class Stays:
    """What a parser hands `build_dataset`: every observation of every stay in flat arrays,
    per-stay statics, reference scores and labels. Stays are in a canonical order (by the
    patient identifier, which goes no further), so the same patients give the same
    dataset whatever order the source lists them in."""

    stay: np.ndarray
    """Integer per observation: its stay's index."""
    minutes: np.ndarray
    """float64 per observation: minutes since admission."""
    variable: np.ndarray
    """Integer per observation: index into `variables`."""
    value: np.ndarray
    """float64 per observation."""
    variables: list[str]
    """Variable names, in index order (stored sorted by name)."""
    ranges: list[tuple[float, float] | None]
    """Each variable's plausible range (None: only finiteness is checked)."""
    statics: dict[str, Descriptor]
    scores: dict[str, np.ndarray]
    """Reference scores (higher = worse) per stay, float64, NaN = unavailable."""
    labels: np.ndarray
    classes: list[str]
    where: Callable[[int], str]
    """Observation index -> where its value is in the source (file, line or row, column)."""
    static_where: Callable[[str, int], str]
    """(static, stay) -> where that value is in the source."""
    derive_categories: bool = False
    """Statics without fixed categories become categorical by the `events` rule."""

    @property
    def count(self) -> int:
        return len(self.labels)


# The shared builder ----------------------------------------------------------------
def build_dataset(stays: Stays, options: SeriesOptions, source: dict[str, Any], license: str,
                  description: str) -> ImportedDataset:
    """Check, window and split `stays` into the stored form (module docstring): values must be
    finite; observations before admission or after the window are dropped; implausible
    values are dropped or refused (`options.out_of_range`); splits by stay, stratified and
    seeded, each in a seeded shuffled order."""
    check_options(options)
    window = options.window_hours * 60.0
    if len(stays.variables) > MAX_VARIABLES:
        raise DataImportError(f"the source has {len(stays.variables)} variables; at most {MAX_VARIABLES} are supported")
    not_finite = np.flatnonzero(~np.isfinite(stays.value))
    if not_finite.size:
        raise DataImportError(f"{stays.where(int(not_finite[0]))}: the value is not a finite number")
    before = stays.minutes < 0
    after = stays.minutes > window
    inside = ~before & ~after
    outside = inside & _outside(stays.value, stays.variable, stays.ranges)
    if options.out_of_range == "refuse" and outside.any():
        first = int(np.flatnonzero(outside)[0])
        name = stays.variables[stays.variable[first]]
        raise DataImportError(f"{stays.where(first)}: a {name} value outside its plausible range "
                              f"{list(stays.ranges[stays.variable[first]])}; with --out-of-range drop such values "
                              "are left out and counted")
    keep = inside & ~outside
    out_of_range = np.bincount(stays.variable[outside], minlength=len(stays.variables))
    statics, static_out = _checked_statics(stays, options.out_of_range)

    # Sorted by name; each stay's observations by time, ties in source order (stable sorts).
    names = sorted(stays.variables)
    position = {name: i for i, name in enumerate(names)}
    rename = np.asarray([position[n] for n in stays.variables], dtype=np.int64)
    ranges = dict(zip(stays.variables, stays.ranges))
    stay, minutes = stays.stay[keep], stays.minutes[keep]
    variable, value = rename[stays.variable[keep]], stays.value[keep]
    order = np.argsort(minutes, kind="stable")
    order = order[np.argsort(stay[order], kind="stable")]
    stay, minutes, variable, value = stay[order], minutes[order], variable[order], value[order]
    lengths = np.bincount(stay, minlength=stays.count)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    columns = _columns(stays, statics)

    rows = three_way_split(stays.labels, options.val_fraction, options.test_fraction, options.seed)
    rng = np.random.default_rng(options.seed)
    splits = {}
    for split in SPLITS:
        members = rng.permutation(rows[split])  # not in id order: nothing in the row order points back
        table = _observation_table(members, starts, lengths, minutes, variable.astype(np.int16), value)
        for column, values in columns.items():
            table = table.append_column(column, pa.array(values[members], pa.float64()))
        splits[split] = Split(table, stays.labels[members].astype(np.int64))

    schema = {
        "variables": [{"name": n, "range": _range_json(ranges[n])} for n in names],
        "statics": [{"name": name, "column": static_column(name), "categories": _categories(spec, stays),
                     "range": _range_json(spec.range)} for name, spec in statics.items()],
        "reference_scores": [{"name": name, "column": score_column(name), "higher_is": "worse"}
                             for name in stays.scores],
        "window_minutes": int(window) if float(window).is_integer() else window,
    }
    quality = {
        "patients": stays.count,
        "observations": int(len(value)),
        "dropped": {"out_of_range": int(outside.sum()), "after_window": int(after.sum()),
                    "before_admission": int(before.sum())},
        "variables": _variable_quality(names, stays.count, stay, variable,
                                       {n: int(out_of_range[i]) for i, n in enumerate(stays.variables)}),
        "statics": {name: {"missing": _share(np.isnan(spec.values).sum(), stays.count),
                           "out_of_range": static_out[name]} for name, spec in statics.items()},
    }
    log.info("%d stays, %d observations kept (%d out of range, %d after the window dropped)", stays.count,
             len(value), int(outside.sum()), int(after.sum()))
    return ImportedDataset(modality="timeseries", classes=list(stays.classes), splits=splits, schema=schema,
                           source=source, license=license, description=description, quality=quality)


def check_options(options: SeriesOptions) -> None:
    if options.out_of_range not in OUT_OF_RANGE:
        raise DataImportError(f"--out-of-range must be one of {', '.join(OUT_OF_RANGE)}; got {options.out_of_range!r}")
    if not (math.isfinite(options.window_hours) and 0 < options.window_hours <= 24 * 366):
        raise DataImportError(f"--window-hours must be more than 0 and at most a year; got {options.window_hours}")


def static_column(name: str) -> str:
    return f"static_{name}"


def score_column(name: str) -> str:
    return "score_" + re.sub(r"[^A-Za-z0-9]", "_", name)


def _outside(values: np.ndarray, variables: np.ndarray, ranges: list[tuple[float, float] | None]) -> np.ndarray:
    low = np.asarray([r[0] if r else -np.inf for r in ranges] or [0.0], dtype=np.float64)
    high = np.asarray([r[1] if r else np.inf for r in ranges] or [0.0], dtype=np.float64)
    return (values < low[variables]) | (values > high[variables])


def _checked_statics(stays: Stays, mode: str) -> tuple[dict[str, Descriptor], dict[str, int]]:
    """Statics with implausible values (outside the range, or not one of fixed categories)
    unknown, and how many each had; or the import refused at the first."""
    checked, counts = {}, {}
    for name, spec in stays.statics.items():
        values = spec.values
        known = ~np.isnan(values)
        bad = np.zeros(len(values), dtype=bool)
        if spec.range is not None:
            bad |= known & ((values < spec.range[0]) | (values > spec.range[1]))
        if spec.categories is not None:
            bad |= known & ~np.isin(values, spec.categories)
        if bad.any() and mode == "refuse":
            raise DataImportError(f"{stays.static_where(name, int(np.flatnonzero(bad)[0]))}: a {name} value outside "
                                  f"its plausible range {_range_json(spec.range) or spec.categories}; with "
                                  "--out-of-range drop it becomes unknown and is counted")
        checked[name] = Descriptor(np.where(bad, np.nan, values), spec.range, spec.categories)
        counts[name] = int(bad.sum())
    return checked, counts


def _categories(spec: Descriptor, stays: Stays) -> list[int] | None:
    if spec.categories is not None or not stays.derive_categories:
        return spec.categories
    known = np.unique(spec.values[~np.isnan(spec.values)])
    if 0 < len(known) <= MAX_CATEGORIES and np.all(known == np.round(known)):
        return [int(v) for v in known]
    return None


def _columns(stays: Stays, statics: dict[str, Descriptor]) -> dict[str, np.ndarray]:
    columns = {static_column(name): spec.values for name, spec in statics.items()}
    for name, values in stays.scores.items():
        column = score_column(name)
        if column in columns:
            raise DataImportError(f"reference scores {', '.join(stays.scores)} give the same column name {column}")
        columns[column] = values
    return columns


def _observation_table(rows: np.ndarray, starts: np.ndarray, lengths: np.ndarray, minutes: np.ndarray,
                       variable: np.ndarray, value: np.ndarray) -> pa.Table:
    """The three list columns for stays `rows` (in that order), from arrays sorted by stay."""
    counts = lengths[rows]
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    if offsets[-1] > np.iinfo(np.int32).max:
        raise DataImportError(f"a split holds {offsets[-1]} observations; at most 2^31 fit one list column")
    take = np.repeat(starts[rows] - offsets[:-1], counts) + np.arange(offsets[-1])
    arrow_offsets = pa.array(offsets.astype(np.int32))

    def lists(values: np.ndarray, dtype: pa.DataType) -> pa.ListArray:
        return pa.ListArray.from_arrays(arrow_offsets, pa.array(values[take], dtype))

    return pa.table({"obs_minutes": lists(minutes.astype(np.float32), pa.float32()),
                     "obs_variable": lists(variable, pa.int16()),
                     "obs_value": lists(value.astype(np.float32), pa.float32())})


def _variable_quality(names: list[str], count: int, stay: np.ndarray, variable: np.ndarray,
                      out_of_range: dict[str, int]) -> dict[str, Any]:
    """Per variable: the share of stays with any kept observation of it, the observations
    per stay among those stays (mean, median, max), and the values dropped as implausible."""
    pairs, per_pair = np.unique(stay.astype(np.int64) * len(names) + variable, return_counts=True)
    pair_variable = pairs % max(len(names), 1)
    order = np.argsort(pair_variable, kind="stable")
    bounds = np.searchsorted(pair_variable[order], np.arange(len(names) + 1))
    report = {}
    for index, name in enumerate(names):
        counts = per_pair[order[bounds[index]:bounds[index + 1]]]
        report[name] = {
            "patients_with_any": _share(len(counts), count),
            "observations_per_patient": {"mean": round(float(counts.mean()), 2), "median": float(np.median(counts)),
                                         "max": int(counts.max())} if len(counts) else
                                        {"mean": 0.0, "median": 0.0, "max": 0},
            "out_of_range": out_of_range[name],
        }
    return report


def _share(part: int, whole: int) -> float:
    return round(float(part) / max(whole, 1), 4)


def _range_json(bounds: tuple[float, float] | None) -> list[float] | None:
    return None if bounds is None else [bounds[0], bounds[1]]


# PhysioNet/CinC Challenge 2012 --------------------------------------------------------
def import_physionet2012(source: Path, outcomes: Path, options: SeriesOptions) -> ImportedDataset:
    """The archive (`set-a.tar.gz`) or its extracted folder of `*.txt`, with its outcomes file."""
    check_options(options)
    stays = read_physionet2012(source, outcomes)
    # A stay file's name is its RecordID: only the count of files is kept beside the checksum.
    files = [*(_record_files(source) if source.is_dir() else [source]), outcomes]
    return build_dataset(
        stays, options,
        source={"kind": "physionet2012", "sha256": sha256_files(files)["sha256"], "files": len(files),
                "options": options.record()},
        license=PHYSIONET_LICENSE,
        description=f"PhysioNet/CinC Challenge 2012: {stays.count} ICU stays, label in-hospital death",
    )


@dataclass
class _Record:
    """One stay's file, parsed: compact arrays, no text."""

    record_id: int
    statics: dict[str, tuple[float, int]]
    """name -> (value or NaN, line)."""
    minutes: np.ndarray
    variable: np.ndarray
    value: np.ndarray
    line: np.ndarray


_STATIC_NAMES = frozenset(PHYSIONET_STATICS)
_VARIABLE_INDEX = {name: i for i, name in enumerate(PHYSIONET_VARIABLES)}


def parse_record(data: bytes, place: str) -> _Record:
    """One `Time,Parameter,Value` file. The statics are the static parameters charted at
    00:00 (in some files interleaved with the first vital signs); Weight, also a time
    series, is the static one at its first 00:00 line and the time-varying one after.
    Age, Gender, Height and ICUType are statics wherever they are."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise DataImportError(f"{place} is not UTF-8 text") from None
    lines = text.splitlines()
    if not lines or lines[0].strip() != PHYSIONET_HEADER:
        raise DataImportError(f"{place}, line 1: the header is not '{PHYSIONET_HEADER}'")
    record_id = None
    statics: dict[str, tuple[float, int]] = {}
    minutes: list[int] = []
    variables: list[int] = []
    values: list[float] = []
    numbers: list[int] = []
    for number in range(2, len(lines) + 1):
        line = lines[number - 1]
        if not line.strip():
            continue
        fields = line.split(",")
        if len(fields) != 3:
            raise DataImportError(f"{place}, line {number}: {len(fields)} fields, not the 3 of '{PHYSIONET_HEADER}'")
        clock, parameter, raw = fields
        parameter = parameter.strip()
        match = CLOCK.fullmatch(clock.strip())
        if match is None:
            raise DataImportError(f"{place}, line {number}, column 'Time': not a time HH:MM since admission")
        minute = int(match[1]) * 60 + int(match[2])
        try:
            value = float(raw)
        except ValueError:
            raise DataImportError(f"{place}, line {number}, column 'Value': not a number") from None
        if not math.isfinite(value):
            raise DataImportError(f"{place}, line {number}, column 'Value': not a finite number")
        if parameter == "RecordID":
            if record_id is not None:
                raise DataImportError(f"{place}, line {number}: a second RecordID line")
            if not (value.is_integer() and value >= 0):
                raise DataImportError(f"{place}, line {number}, column 'Value': the RecordID is not a whole number")
            record_id = int(value)
        elif parameter in _STATIC_NAMES and (parameter != "Weight" or (minute == 0 and "Weight" not in statics)):
            if parameter in statics:
                raise DataImportError(f"{place}, line {number}, column 'Parameter': the static descriptor {parameter} is "
                                      "given a second time")
            statics[parameter] = (math.nan if value == -1 else value, number)  # -1: unknown
        elif parameter in _VARIABLE_INDEX:
            minutes.append(minute)
            variables.append(_VARIABLE_INDEX[parameter])
            values.append(value)
            numbers.append(number)
        else:
            raise DataImportError(f"{place}, line {number}, column 'Parameter': not one of the PhysioNet 2012 "
                                  "parameters")
    if record_id is None:
        raise DataImportError(f"{place} has no RecordID line")
    return _Record(record_id, statics, np.asarray(minutes, dtype=np.float64), np.asarray(variables, dtype=np.int16),
                   np.asarray(values, dtype=np.float64), np.asarray(numbers, dtype=np.int32))


def read_physionet2012(source: Path, outcomes: Path) -> Stays:
    """Each stay's file, streamed (from the archive member by member, never extracted),
    matched to its outcomes row by RecordID, which is then dropped."""
    records = _folder_records(source) if source.is_dir() else _archive_records(source)
    container = "file {} (in name order) of the folder" if source.is_dir() else "member {} of the archive"
    record_ids: list[int] = []
    members: list[int] = []
    parts: list[_Record] = []
    first_member: dict[int, int] = {}
    with tqdm(desc="reading ICU stays", unit=" stays", leave=False, file=CONSOLE.terminal_err) as bar:
        for number, data in records:
            place = container.format(number)
            record = parse_record(data, place)
            if record.record_id in first_member:
                earlier = container.format(first_member[record.record_id])
                raise DataImportError(f"{place}: its RecordID is also that of {earlier}")
            first_member[record.record_id] = number
            record_ids.append(record.record_id)
            members.append(number)
            parts.append(record)
            bar.update(1)
    if not parts:
        raise DataImportError(f"the {'folder' if source.is_dir() else 'archive'} holds no stay files (*.txt)")
    table = read_outcomes(outcomes)
    ids = np.asarray(record_ids, dtype=np.int64)
    missing = [i for i, rid in enumerate(record_ids) if rid not in table]
    if missing:
        raise DataImportError(f"{len(missing)} stay(s) have no row in the outcomes file; the first is "
                              f"{container.format(members[missing[0]])}")
    known = set(record_ids)
    unknown = [line for rid, (line, *_) in table.items() if rid not in known]
    if unknown:
        raise DataImportError(f"{len(unknown)} row(s) of the outcomes file name no stay of the "
                              f"{'folder' if source.is_dir() else 'archive'}; the first is line {min(unknown)}")
    order = np.argsort(ids, kind="stable")
    rank = np.empty(len(ids), dtype=np.int64)
    rank[order] = np.arange(len(ids))

    lengths = np.asarray([len(p.value) for p in parts], dtype=np.int64)
    stay = np.repeat(rank, lengths)
    line = np.concatenate([p.line for p in parts])
    member_of = np.asarray(members, dtype=np.int64)[order]
    statics = {}
    static_lines = {}
    for name in PHYSIONET_STATICS:
        entries = [p.statics.get(name, (math.nan, 0)) for p in parts]
        statics[name] = Descriptor(np.asarray([e[0] for e in entries], dtype=np.float64)[order],
                                   STATIC_RANGES[name], PHYSIONET_CATEGORIES.get(name))
        static_lines[name] = np.asarray([e[1] for e in entries], dtype=np.int64)[order]
    outcome = [table[rid] for rid in ids[order].tolist()]
    scores = {name: np.asarray([row[2 + k] for row in outcome], dtype=np.float64)
              for k, name in enumerate(PHYSIONET_SCORES)}
    labels = np.asarray([row[1] for row in outcome], dtype=np.int64)

    def where(index: int) -> str:
        return f"{container.format(member_of[stay[index]])}, line {line[index]}, column 'Value'"

    def static_where(name: str, index: int) -> str:
        return f"{container.format(member_of[index])}, line {static_lines[name][index]}, column 'Value' ({name})"

    stays = Stays(
        stay=stay, minutes=np.concatenate([p.minutes for p in parts]),
        variable=np.concatenate([p.variable for p in parts]).astype(np.int64),
        value=np.concatenate([p.value for p in parts]), variables=list(PHYSIONET_VARIABLES),
        ranges=[PLAUSIBLE_RANGES[n] for n in PHYSIONET_VARIABLES], statics=statics, scores=scores, labels=labels,
        classes=list(PHYSIONET_CLASSES), where=where, static_where=static_where,
    )
    log.info("read %d ICU stays with %d observations", stays.count, len(stays.value))
    return stays


def read_outcomes(path: Path) -> dict[int, tuple[int, int, float, float]]:
    """RecordID -> (line, label 0/1, SAPS-I, SOFA); -1 (not available) becomes NaN."""
    needed = ("RecordID", *PHYSIONET_SCORES, PHYSIONET_LABEL)
    table: dict[int, tuple[int, int, float, float]] = {}
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = [name.strip() for name in next(reader, [])]
            absent = [name for name in needed if name not in header]
            if absent:
                raise DataImportError(f"the outcomes file, line 1: no column(s) {', '.join(absent)} "
                                      f"(it needs {', '.join(needed)})")
            position = {name: header.index(name) for name in needed}
            for fields in reader:
                number = reader.line_num
                if not any(f.strip() for f in fields):
                    continue
                if len(fields) != len(header):
                    raise DataImportError(f"the outcomes file, line {number}: {len(fields)} fields, but the header "
                                          f"has {len(header)}")
                numbers = {}
                for name in needed:
                    try:
                        numbers[name] = float(fields[position[name]])
                    except ValueError:
                        raise DataImportError(
                            f"the outcomes file, line {number}, column '{name}': not a number") from None
                    if not math.isfinite(numbers[name]):
                        raise DataImportError(f"the outcomes file, line {number}, column '{name}': not a finite number")
                record_id = numbers["RecordID"]
                if not (record_id.is_integer() and record_id >= 0):
                    raise DataImportError(f"the outcomes file, line {number}, column 'RecordID': not a whole number")
                if numbers[PHYSIONET_LABEL] not in (0.0, 1.0):
                    raise DataImportError(f"the outcomes file, line {number}, column '{PHYSIONET_LABEL}': not 0 or 1")
                if int(record_id) in table:
                    raise DataImportError(f"the outcomes file, line {number}, column 'RecordID': the same RecordID as "
                                          f"line {table[int(record_id)][0]}")
                saps, sofa = (math.nan if numbers[n] == -1 else numbers[n] for n in PHYSIONET_SCORES)
                table[int(record_id)] = (number, int(numbers[PHYSIONET_LABEL]), saps, sofa)
    except UnicodeDecodeError:
        raise DataImportError("the outcomes file is not UTF-8 text") from None
    except csv.Error as error:
        raise DataImportError(f"the outcomes file is not a text table ({str(error).split(':')[0]})") from None
    except OSError as error:
        raise DataImportError(f"the outcomes file cannot be read ({error.strerror or type(error).__name__})") from None
    if not table:
        raise DataImportError("the outcomes file holds no rows")
    return table


def _is_record_name(name: str) -> bool:
    return name.endswith(".txt") and not name.startswith(".")


def _archive_records(path: Path) -> Iterator[tuple[int, bytes]]:
    """(member number, bytes) of each stay file, read one member at a time from the
    compressed stream. Directories and other names are skipped; links and devices are
    refused; the bounds are checked before a member is read."""
    total = 0
    number = 0
    try:
        with tarfile.open(path, "r|*") as archive:
            for number, member in enumerate(archive, start=1):
                if number > MAX_MEMBERS:
                    raise DataImportError(f"the archive has more than {MAX_MEMBERS} members")
                if member.isdir():
                    continue
                if member.issym() or member.islnk():
                    raise DataImportError(f"member {number} of the archive is a link; links are not followed")
                if not member.isfile():
                    raise DataImportError(f"member {number} of the archive is a device or special file")
                if member.size > MAX_MEMBER_BYTES:
                    raise DataImportError(f"member {number} of the archive is larger than the {MAX_MEMBER_BYTES}-byte "
                                          "limit for one stay")
                total += member.size
                if total > MAX_TOTAL_BYTES:
                    raise DataImportError(f"the archive holds more than {MAX_TOTAL_BYTES} bytes (at member {number})")
                if not _is_record_name(PurePosixPath(member.name).name):
                    continue
                handle = archive.extractfile(member)
                data = handle.read() if handle is not None else b""
                if len(data) != member.size:
                    raise tarfile.ReadError("short member")
                yield number, data
    except (tarfile.TarError, EOFError, zlib.error, OSError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else "truncated or corrupt"
        where = f"at or after member {number}" if number else "from its start"
        raise DataImportError(f"the archive cannot be read {where} ({reason}; a .tar, .tar.gz, .tar.bz2 or .tar.xz "
                              "is expected)") from None


def _record_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if _is_record_name(p.name))


def _folder_records(folder: Path) -> Iterator[tuple[int, bytes]]:
    """(position in name order, bytes) of each `*.txt` in the folder, under the archive's bounds."""
    files = _record_files(folder)
    if len(files) > MAX_MEMBERS:
        raise DataImportError(f"the folder holds more than {MAX_MEMBERS} files")
    total = 0
    for number, path in enumerate(files, start=1):
        place = f"file {number} (in name order) of the folder"
        if path.is_symlink():
            raise DataImportError(f"{place} is a link; links are not followed")
        if path.is_dir():
            continue
        if not path.is_file():
            raise DataImportError(f"{place} is a device or special file")
        size = path.stat().st_size
        if size > MAX_MEMBER_BYTES:
            raise DataImportError(f"{place} is larger than the {MAX_MEMBER_BYTES}-byte limit for one stay")
        total += size
        if total > MAX_TOTAL_BYTES:
            raise DataImportError(f"the folder holds more than {MAX_TOTAL_BYTES} bytes (at file {number})")
        try:
            yield number, path.read_bytes()
        except OSError as error:
            raise DataImportError(f"{place} cannot be read ({error.strerror or type(error).__name__})") from None


# Events: long (patient, time, variable, value) tables ---------------------------------
@dataclass
class EventOptions:
    """How to read an events table and its labels; each field maps to a `medray data import
    events` option. Column names, not values, are recorded in the manifest."""

    target: str
    patient_column: str = "patient"
    time_column: str = "time"
    variable_column: str = "variable"
    value_column: str = "value"
    time_unit: str = "minutes"
    """Unit of a numeric time; a time `HH:MM` is hours and minutes since admission."""
    static: list[str] = field(default_factory=list)
    """Columns of the labels table kept as static descriptors."""
    scores: list[str] = field(default_factory=list)
    """Columns of the labels table kept as reference scores (higher = worse), not model inputs."""
    classes: list[str] | None = None
    sep: str = ","

    def record(self) -> dict[str, Any]:
        return {key: value for key, value in vars(self).items() if value not in (None, [], "")}


def import_events(source: Path, labels: Path, columns: EventOptions, options: SeriesOptions) -> ImportedDataset:
    """An events table and its labels table. A static descriptor is categorical when it has
    at most `MAX_CATEGORIES` (10) distinct values, all whole numbers (its sorted values are
    its categories); otherwise numeric. Variables named as in `PLAUSIBLE_RANGES` get that
    range; others only need finite values."""
    check_options(options)
    stays = read_events(source, labels, columns)
    return build_dataset(
        stays, options,
        source={"kind": "events", "sha256": sha256_files([source, labels])["sha256"],
                "options": {**options.record(), **columns.record()}},
        license="as stated by the data owner (recorded at import with --license)",
        description=f"Clinical events: {stays.count} stays, {len(stays.variables)} variables, "
                    f"target '{columns.target}'",
    )


def read_events(source: Path, labels: Path, columns: EventOptions) -> Stays:
    """The labels table first (one row per stay, in patient order), then the events streamed
    in batches into compact arrays, patients and variables dictionary-encoded to integers."""
    if columns.time_unit not in TIME_UNITS:
        raise DataImportError(f"--time-unit must be one of {', '.join(TIME_UNITS)}; got {columns.time_unit!r}")
    sep = check_sep(columns.sep)
    table = _read_labels(labels, columns, sep)
    index: dict[str, int] = table.pop("index")
    factor = TIME_UNITS[columns.time_unit]
    names: dict[str, int] = {}
    chunks: dict[str, list[np.ndarray]] = {"stay": [], "minutes": [], "variable": [], "value": []}
    seen = np.zeros(len(index), dtype=bool)
    unknown: set[str] = set()
    first_unknown = None
    rows = 0
    is_csv = not _is_parquet(source)
    where_row = (lambda row: f"the events table, row {row + 1} (line {row + 2})") if is_csv else \
        (lambda row: f"the events table, row {row + 1}")
    wanted = [columns.patient_column, columns.time_column, columns.variable_column, columns.value_column]
    with tqdm(desc="reading events", unit=" rows", unit_scale=True, leave=False, file=CONSOLE.terminal_err) as bar:
        for batch in _event_batches(source, wanted, sep, is_csv, lambda: rows):
            patient = _text(batch.column(0), lambda r: where_row(rows + r), columns.patient_column)
            encoded = pc.dictionary_encode(patient)
            lookup = np.asarray([index.get(p, -1) for p in encoded.dictionary.to_pylist()], dtype=np.int32)
            stay = lookup[encoded.indices.to_numpy(zero_copy_only=False)] if len(lookup) else \
                np.empty(0, dtype=np.int32)
            if (stay < 0).any():
                unknown.update(p for p, k in zip(encoded.dictionary.to_pylist(), lookup) if k < 0)
                if first_unknown is None:
                    first_unknown = rows + int(np.flatnonzero(stay < 0)[0])
            seen[stay[stay >= 0]] = True
            variable = _text(batch.column(2), lambda r: where_row(rows + r), columns.variable_column)
            encoded = pc.dictionary_encode(variable)
            ids = [names.setdefault(name, len(names)) for name in encoded.dictionary.to_pylist()]
            if len(names) > MAX_VARIABLES:
                raise DataImportError(f"the events table names more than {MAX_VARIABLES} variables "
                                      f"(at {where_row(rows)} or after)")
            chunks["variable"].append(np.asarray(ids, dtype=np.int32)[encoded.indices.to_numpy(zero_copy_only=False)]
                                      if ids else np.empty(0, dtype=np.int32))
            minutes, bad = _times(batch.column(1), factor)
            if bad is not None:
                raise DataImportError(f"{where_row(rows + bad)}, column '{columns.time_column}': not a time (HH:MM, "
                                      f"or a number of {columns.time_unit} since admission)")
            value, bad = _numbers(batch.column(3))
            if bad is not None:
                raise DataImportError(
                    f"{where_row(rows + bad)}, column '{columns.value_column}': empty or not a number")
            chunks["stay"].append(stay)
            chunks["minutes"].append(minutes)
            chunks["value"].append(value)
            rows += batch.num_rows
            bar.update(batch.num_rows)
            bar.set_postfix(patients=int(seen.sum()), refresh=False)
    if rows == 0:
        raise DataImportError("the events table holds no rows")
    if unknown:
        raise DataImportError(f"{len(unknown)} patient(s) of the events table have no row in the labels table; the "
                              f"first is on {where_row(first_unknown)}")
    if not seen.all():
        missing = np.flatnonzero(~seen)
        raise DataImportError(f"{len(missing)} row(s) of the labels table name a patient with no events; the first "
                              f"is on {table['where'](int(table['row'][missing].min()))}")
    del index, unknown
    variables = list(names)
    value_where = (lambda i: f"{where_row(i)}, column '{columns.value_column}'")
    label_rows, label_where = table["row"], table["where"]

    def static_where(name: str, stay: int) -> str:
        return f"{label_where(int(label_rows[stay]))}, column '{name}'"

    stays = Stays(
        stay=np.concatenate(chunks["stay"]), minutes=np.concatenate(chunks["minutes"]),
        variable=np.concatenate(chunks["variable"]), value=np.concatenate(chunks["value"]),
        variables=variables, ranges=[PLAUSIBLE_RANGES.get(name) for name in variables],
        statics={name: Descriptor(table["statics"][name]) for name in columns.static},
        scores=table["scores"], labels=table["labels"], classes=table["classes"], where=value_where,
        static_where=static_where, derive_categories=True,
    )
    log.info("read %d events of %d stays", rows, stays.count)
    return stays


def _is_parquet(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(4) == b"PAR1"
    except OSError as error:
        raise DataImportError(f"the table cannot be read ({error.strerror or type(error).__name__})") from None


def _csv_header(path: Path, sep: str, what: str) -> list[str]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            header = next(csv.reader(handle, delimiter=sep), None)
    except UnicodeDecodeError:
        raise DataImportError(f"the {what} is not UTF-8 text") from None
    except csv.Error as error:
        raise DataImportError(f"the {what} is not a text table ({str(error).split(':')[0]})") from None
    if not header:
        raise DataImportError(f"the {what} is empty")
    return [name.strip() for name in header]


def _check_columns(found: list[str], wanted: list[str], what: str) -> None:
    absent = [name for name in dict.fromkeys(wanted) if name not in found]
    if absent:
        raise DataImportError(f"the {what} has no column(s) {', '.join(repr(a) for a in absent)} "
                              f"(columns: {', '.join(found)})")


def _event_batches(path: Path, wanted: list[str], sep: str, is_csv: bool,
                   rows_read: Callable[[], int]) -> Iterator[pa.RecordBatch]:
    """The four columns, in `wanted` order, batch by batch."""
    import pyarrow.csv as pacsv
    import pyarrow.dataset as pads

    if len(set(wanted)) != len(wanted):
        raise DataImportError("the patient, time, variable and value columns must be four different columns")
    try:
        if is_csv:
            _check_columns(_csv_header(path, sep, "events table"), wanted, "events table")
            reader = pacsv.open_csv(
                path, read_options=pacsv.ReadOptions(block_size=EVENT_BATCH_BYTES),
                parse_options=pacsv.ParseOptions(delimiter=sep),
                convert_options=pacsv.ConvertOptions(include_columns=wanted,
                                                     column_types={name: pa.string() for name in wanted}))
            batches = iter(reader)
        else:
            dataset = pads.dataset(path, format="parquet")
            _check_columns(dataset.schema.names, wanted, "events table")
            batches = iter(dataset.to_batches(columns=wanted, batch_size=1 << 20))
        for batch in batches:
            yield batch.select(wanted) if batch.schema.names != wanted else batch
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as error:
        kind = "CSV" if is_csv else "Parquet"
        # pyarrow's message quotes the offending row: not shown.
        raise DataImportError(f"the events table is not readable {kind} after row {rows_read()} "
                              f"({type(error).__name__})") from None


def _text(column: pa.Array | pa.ChunkedArray, where: Callable[[int], str], name: str) -> pa.Array:
    """A patient or variable column as strings, none empty."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    text = column if pa.types.is_string(column.type) else pc.cast(column, pa.string())
    empty = pc.fill_null(pc.equal(pc.utf8_trim_whitespace(text), ""), True)
    if pc.any(empty).as_py():
        first = int(np.flatnonzero(empty.to_numpy(zero_copy_only=False))[0])
        raise DataImportError(f"{where(first)}, column '{name}': empty")
    return text


def _numbers(column: pa.Array) -> tuple[np.ndarray, int | None]:
    """float64 values and the first row that is empty or not a number (None: none)."""
    if pa.types.is_integer(column.type) or pa.types.is_floating(column.type) or pa.types.is_decimal(column.type):
        values = pc.cast(column, pa.float64())
        nulls = values.is_null().to_numpy(zero_copy_only=False)
        return values.to_numpy(zero_copy_only=False), (int(np.flatnonzero(nulls)[0]) if nulls.any() else None)
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        return np.empty(0), 0
    try:
        values = pc.cast(column, pa.float64())
        if not values.null_count:
            return values.to_numpy(zero_copy_only=False), None
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    text = pd.Series(column.to_numpy(zero_copy_only=False), dtype=object)
    parsed = pd.to_numeric(text.str.strip(), errors="coerce")
    literal_nan = text.str.strip().str.lower().isin(["nan", "+nan", "-nan"]).to_numpy()
    bad = (parsed.isna().to_numpy() & ~literal_nan) | text.isna().to_numpy()
    values = parsed.to_numpy(dtype=np.float64)
    return values, (int(np.flatnonzero(bad)[0]) if bad.any() else None)


def _times(column: pa.Array, factor: float) -> tuple[np.ndarray, int | None]:
    """Minutes since admission: HH:MM text, or a number in the time unit (`factor` minutes each)."""
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        values, bad = _numbers(column)
        if bad is None and not np.isfinite(values).all():
            bad = int(np.flatnonzero(~np.isfinite(values))[0])
        return values * factor, bad
    clock = pc.extract_regex(column, _CLOCK_PATTERN)
    is_clock = clock.is_valid().to_numpy(zero_copy_only=False)
    minutes = np.full(len(column), np.nan)
    if is_clock.any():
        hours = pc.cast(pc.struct_field(clock, [0]), pa.float64()).to_numpy(zero_copy_only=False)
        within = pc.cast(pc.struct_field(clock, [1]), pa.float64()).to_numpy(zero_copy_only=False)
        minutes = np.where(is_clock, hours * 60 + within, np.nan)
    if not is_clock.all():
        rest = np.flatnonzero(~is_clock)
        numbers, bad = _numbers(column.take(pa.array(rest)))
        if bad is not None:
            return minutes, int(rest[bad])
        minutes[rest] = numbers * factor
    not_finite = ~np.isfinite(minutes)
    return minutes, (int(np.flatnonzero(not_finite)[0]) if not_finite.any() else None)


def _read_labels(path: Path, columns: EventOptions, sep: str) -> dict[str, Any]:
    """The labels table, sorted by patient: {"index": patient -> stay, "row": table row per
    stay, "where": row -> its place, "labels", "classes", "statics": name -> float64,
    "scores": name -> float64}."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    patient, target = columns.patient_column, columns.target
    wanted = [patient, target, *columns.static, *columns.scores]
    if len(set(wanted)) != len(wanted):
        raise DataImportError("--static and --scores must name distinct columns of the labels table, other than the "
                              "patient and --target columns")
    is_csv = not _is_parquet(path)
    try:
        if is_csv:
            _check_columns(_csv_header(path, sep, "labels table"), wanted, "labels table")
            table = pacsv.read_csv(path, parse_options=pacsv.ParseOptions(delimiter=sep),
                                   convert_options=pacsv.ConvertOptions(
                                       include_columns=wanted, strings_can_be_null=True,
                                       column_types={name: pa.string() for name in wanted}))
        else:
            _check_columns(pq.read_schema(path).names, wanted, "labels table")
            table = pq.read_table(path, columns=wanted)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as error:
        raise DataImportError(f"the labels table is not readable {'CSV' if is_csv else 'Parquet'} "
                              f"({type(error).__name__})") from None
    if table.num_rows == 0:
        raise DataImportError("the labels table holds no rows")
    where_row = (lambda row: f"the labels table, row {row + 1} (line {row + 2})") if is_csv else \
        (lambda row: f"the labels table, row {row + 1}")
    ids = _text(table.column(patient), where_row, patient).to_pylist()
    first_row: dict[str, int] = {}
    for row, value in enumerate(ids):
        if value in first_row:
            raise DataImportError(
                f"{where_row(row)}, column '{patient}': the same patient as row {first_row[value] + 1}")
        first_row[value] = row
    order = np.asarray(sorted(range(len(ids)), key=ids.__getitem__), dtype=np.int64)
    labels, classes = _labels(table.column(target).combine_chunks(), columns, where_row)

    def numeric(name: str) -> np.ndarray:
        # Empty cells and missing markers are unknown (NaN); other text, and infinities, are refused.
        column = table.column(name).combine_chunks()
        known = column.is_valid().to_numpy(zero_copy_only=False)
        if _is_numeric(column.type):
            values = pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False)
            bad = known & np.isinf(values)
        else:
            text = pd.Series(pc.cast(column, pa.string()).to_numpy(zero_copy_only=False), dtype=object)
            values = pd.to_numeric(text.str.strip(), errors="coerce").to_numpy(dtype=np.float64)
            bad = known & ~np.isfinite(values)
        if bad.any():
            raise DataImportError(f"{where_row(int(np.flatnonzero(bad)[0]))}, column '{name}': not a finite number")
        return np.where(known, values, np.nan)[order]

    return {"index": {ids[row]: stay for stay, row in enumerate(order.tolist())}, "row": order, "where": where_row,
            "labels": labels[order], "classes": classes,
            "statics": {name: numeric(name) for name in columns.static},
            "scores": {name: numeric(name) for name in columns.scores}}


def _is_numeric(kind: pa.DataType) -> bool:
    return pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind)


def _labels(column: pa.Array, columns: EventOptions, where_row: Callable[[int], str]) -> tuple[np.ndarray, list[str]]:
    """Label indices and class names: `--classes` in order (other labels refused), else the
    sorted label values (numerically when all are numbers; '1.0' and '1' are one class)."""
    cells = column.to_pylist()
    missing = [row for row, cell in enumerate(cells) if cell is None or str(cell).strip() == ""]
    if missing:
        raise DataImportError(f"{where_row(missing[0])}, column '{columns.target}': the target is missing")
    texts = [_canonical(str(cell)) for cell in cells]
    if columns.classes is not None:
        classes = [_canonical(c) for c in columns.classes]
        unknown = [row for row, text in enumerate(texts) if text not in classes]
        if unknown:
            raise DataImportError(f"{where_row(unknown[0])}, column '{columns.target}': label is not one of the given "
                                  f"classes {classes}")
    else:
        found = sorted(set(texts))
        numeric = all(_canonical(c) == c and c.lstrip("-").replace(".", "", 1).isdigit() for c in found)
        classes = sorted(found, key=float) if numeric else found
    index = {name: i for i, name in enumerate(classes)}
    return np.asarray([index[text] for text in texts], dtype=np.int64), classes
