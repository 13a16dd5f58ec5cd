"""Clinical time series: a real 50-stay subset of PhysioNet 2012 set-a (as an archive and as
a folder), a hand-made events table, and every kind of bad input, each named by position
and column, never by the value found there or by a RecordID or patient id; nothing published."""

import csv
import gzip
import io
import json
import math
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from medray.cli.data import describe_text
from medray.cluster.storage import Storage
from medray.train.data import events
from medray.train.data.dataset import (DataImportError, ImportedDataset, Split, list_datasets, list_versions,
                                       quality_report)
from medray.train.data.importers import ImportRequest, import_dataset
from medray.train.data.loading import split_paths

SUBSET = 50
STATIC_NAMES = {"RecordID", "Age", "Gender", "Height", "ICUType", "Weight"}
OBSERVATIONS = ("obs_minutes", "obs_variable", "obs_value")


# The real subset, and an independent reading of its text files --------------------------
def read_stay(data: bytes) -> tuple[dict[str, float], list[tuple[int, str, float]]]:
    """(statics as written, [(minute, parameter, value)] in file order) of one stay's file,
    by the format's documentation: the descriptors charted at 00:00 are the statics (a
    Weight only its first time there; later it is the time series)."""
    rows = list(csv.reader(io.StringIO(data.decode())))
    assert rows[0] == ["Time", "Parameter", "Value"]
    statics, observations = {}, []
    for time, parameter, value in rows[1:]:
        hours, minutes = time.split(":")
        minute = int(hours) * 60 + int(minutes)
        if parameter in STATIC_NAMES and (parameter != "Weight" or (minute == 0 and "Weight" not in statics)):
            statics[parameter] = float(value)
        else:
            observations.append((minute, parameter, float(value)))
    return statics, observations


def expected_row(data: bytes) -> dict:
    """What the stored row of this stay must hold (defaults: window 48 h, implausible values dropped)."""
    statics, observations = read_stay(data)
    kept = [o for o in observations if o[0] <= 2880 and events.PLAUSIBLE_RANGES[o[1]][0] <= o[2]
            <= events.PLAUSIBLE_RANGES[o[1]][1]]
    kept.sort(key=lambda o: o[0])  # Python's sort is stable: ties keep the file's order
    names = sorted(events.PLAUSIBLE_RANGES)
    row = {"obs_minutes": np.asarray([o[0] for o in kept], np.float32),
           "obs_variable": np.asarray([names.index(o[1]) for o in kept], np.int16),
           "obs_value": np.asarray([o[2] for o in kept], np.float32)}
    for name in ("Age", "Gender", "Height", "ICUType", "Weight"):
        value = statics.get(name, -1.0)
        low, high = events.STATIC_RANGES[name]
        row[f"static_{name}"] = value if value != -1 and low <= value <= high else math.nan
    return row


@pytest.fixture(scope="module")
def subset(shared_data, tmp_path_factory):
    """The archive's first 50 stays: their (member name, bytes), RecordIDs, and the outcomes
    file's header and rows for them, written as a new archive and outcomes file."""
    folder = tmp_path_factory.mktemp("p12")
    records = []
    with tarfile.open(shared_data / "physionet2012" / "set-a.tar.gz", "r|*") as archive:
        for member in archive:
            if member.isfile():
                records.append((member.name, archive.extractfile(member).read()))
                if len(records) == SUBSET:
                    break
    ids = [int(read_stay(data)[0]["RecordID"]) for _, data in records]
    lines = (shared_data / "physionet2012" / "Outcomes-a.txt").read_text().splitlines()
    outcomes = {int(line.split(",")[0]): line for line in lines[1:]}
    rows = [outcomes[i] for i in sorted(ids)]
    write_tar(folder / "subset.tar.gz", records)
    write_outcomes(folder / "outcomes.txt", lines[0], rows)
    return {"folder": folder, "records": records, "ids": ids, "header": lines[0], "rows": rows}


def write_tar(path: Path, records, extra=()) -> Path:
    """A .tar.gz holding a `set-a/` folder entry (member 1), then the records in order."""
    with tarfile.open(path, "w:gz") as archive:
        folder = tarfile.TarInfo("set-a")
        folder.type = tarfile.DIRTYPE
        archive.addfile(folder)
        for name, data in records:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        for info in extra:
            archive.addfile(info)
    return path


def write_outcomes(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def physionet(storage, source, outcomes, **fields):
    return import_dataset(storage, ImportRequest(kind="physionet2012", source=str(source), outcomes=str(outcomes),
                                                 name="p12", **fields))


def stored_rows(storage: Storage, manifest: dict) -> dict[str, pa.Table]:
    root = Path(storage.root.removeprefix("file://"))
    return {split: pa.concat_tables(pq.read_table(root / storage.key_of(path)) for path in
                                    split_paths(storage, manifest, split)) for split in ("train", "val", "test")}


@pytest.fixture(scope="module")
def imported(subset, tmp_path_factory):
    storage = Storage(str(tmp_path_factory.mktemp("store")))
    manifest = physionet(storage, subset["folder"] / "subset.tar.gz", subset["folder"] / "outcomes.txt")
    return storage, manifest, stored_rows(storage, manifest)


def assert_same_rows(table: pa.Table, other: pa.Table) -> None:
    """The same columns and cells, in the same order (NaN equal to NaN)."""
    assert table.schema == other.schema
    for name in table.column_names:
        mine, theirs = table.column(name).combine_chunks(), other.column(name).combine_chunks()
        if pa.types.is_list(mine.type):
            np.testing.assert_array_equal(mine.offsets, theirs.offsets, err_msg=name)
            mine, theirs = mine.flatten(), theirs.flatten()
        np.testing.assert_array_equal(mine.to_numpy(zero_copy_only=False), theirs.to_numpy(zero_copy_only=False),
                                      err_msg=name)


def signature(row: dict) -> bytes:
    return b"".join(np.asarray(row[c]).tobytes() for c in OBSERVATIONS) + np.float64(row["static_Age"]).tobytes()


def test_a_real_subset_is_split_by_stay_stratified_and_parsed_as_its_files_say(subset, imported):
    _, manifest, tables = imported
    assert manifest["modality"] == "timeseries" and manifest["classes"] == ["survived", "died"]
    # 50 stays: 10 held out for test (20%), 8 of the other 40 for validation (15% of all).
    assert {s: manifest["splits"][s]["rows"] for s in tables} == {"train": 32, "val": 8, "test": 10}
    died = {int(line.split(",")[0]): int(line.split(",")[-1]) for line in subset["rows"]}
    share = sum(died.values()) / SUBSET
    for split, info in manifest["splits"].items():
        assert abs(info["class_counts"]["died"] - share * info["rows"]) <= 1
    assert sum(info["class_counts"]["died"] for info in manifest["splits"].values()) == sum(died.values())

    # Every stored row is one stay read independently from its text file, in a shuffled order.
    by_signature = {}
    for (_, data), record_id in zip(subset["records"], subset["ids"]):
        by_signature[signature(expected_row(data))] = (record_id, expected_row(data))
    found = {}
    for split, table in tables.items():
        for position, row in enumerate(table.to_pylist()):
            row = {k: np.asarray(v, np.float32 if k != "obs_variable" else np.int16) if k in OBSERVATIONS else v
                   for k, v in row.items()}
            record_id, expected = by_signature[signature(row)]
            for column in ("static_Age", "static_Gender", "static_Height", "static_ICUType", "static_Weight"):
                assert row[column] == pytest.approx(expected[column], nan_ok=True), column
            outcome = next(line.split(",") for line in subset["rows"] if int(line.split(",")[0]) == record_id)
            assert row["label"] == int(outcome[5])
            for column, text in (("score_SAPS_I", outcome[1]), ("score_SOFA", outcome[2])):
                assert row[column] == pytest.approx(math.nan if text == "-1" else float(text), nan_ok=True)
            found.setdefault(split, []).append(record_id)
    assert sorted(i for ids in found.values() for i in ids) == sorted(subset["ids"])
    assert found["train"] != sorted(found["train"])  # not in RecordID order

    # Statics as the schema describes them; one stay's heights etc. checked against its text.
    statics = {s["name"]: s for s in manifest["schema"]["statics"]}
    assert statics["Gender"]["categories"] == [0, 1] and statics["ICUType"]["categories"] == [1, 2, 3, 4]
    assert statics["Age"] == {"name": "Age", "column": "static_Age", "categories": None, "range": [15, 120]}
    assert [s["column"] for s in manifest["schema"]["reference_scores"]] == ["score_SAPS_I", "score_SOFA"]
    assert manifest["schema"]["window_minutes"] == 2880 and len(manifest["schema"]["variables"]) == 37


def test_no_record_id_is_stored_anywhere(subset, imported):
    storage, manifest, tables = imported
    text = json.dumps(manifest)
    assert not [i for i in subset["ids"] if str(i) in text]
    ids = set(float(i) for i in subset["ids"])
    for table in tables.values():
        assert not any("record" in name.lower() for name in table.column_names)
        for column in table.columns:
            values = column.combine_chunks()
            if pa.types.is_list(values.type):
                values = values.flatten()
            assert not ids & set(np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.float64).tolist())


def test_the_quality_section_counts_by_hand(subset, imported):
    _, manifest, _ = imported
    quality = manifest["quality"]
    per_stay = [read_stay(data)[1] for _, data in subset["records"]]
    for name in ("HR", "Lactate", "Weight"):
        low, high = events.PLAUSIBLE_RANGES[name]
        counts = [sum(1 for m, p, v in obs if p == name and low <= v <= high and m <= 2880) for obs in per_stay]
        with_any = [c for c in counts if c]
        implausible = sum(1 for obs in per_stay for m, p, v in obs if p == name and not low <= v <= high)
        assert quality["variables"][name] == {
            "patients_with_any": round(len(with_any) / SUBSET, 4),
            "observations_per_patient": {"mean": round(float(np.mean(with_any)), 2),
                                         "median": float(np.median(with_any)), "max": max(with_any)},
            "out_of_range": implausible,
        }, name
    heights = [read_stay(data)[0].get("Height", -1) for _, data in subset["records"]]
    unknown = sum(1 for h in heights if h == -1 or not 100 <= h <= 250)
    assert quality["statics"]["Height"]["missing"] == round(unknown / SUBSET, 4)
    assert quality["patients"] == SUBSET
    kept = sum(len(expected_row(data)["obs_value"]) for _, data in subset["records"])
    assert quality["observations"] == kept
    assert quality["missing_values"]["static_Height"] == unknown
    assert quality["duplicates_across_splits"] == {"train_val": 0, "train_test": 0, "val_test": 0}
    text = describe_text(manifest)
    assert "variables: 37 time-varying" in text and "48 h" in text and "SAPS-I" in text
    assert f"observations: {kept} kept" in text


def test_the_folder_form_gives_the_same_dataset(subset, imported, tmp_path):
    _, manifest, tables = imported
    folder = tmp_path / "set-a"
    folder.mkdir()
    for name, data in reversed(subset["records"]):  # written in another order than the archive's
        (folder / Path(name).name).write_bytes(data)
    (folder / "notes").mkdir()  # a folder among the files is skipped
    storage = Storage(str(tmp_path / "store"))
    again = physionet(storage, folder, subset["folder"] / "outcomes.txt")
    for key in ("schema", "classes", "splits", "quality"):
        if key == "splits":
            assert {s: again[key][s]["rows"] for s in tables} == {s: manifest[key][s]["rows"] for s in tables}
        else:
            assert again[key] == manifest[key], key
    for split, table in stored_rows(storage, again).items():
        assert_same_rows(table, tables[split])
    assert again["source"]["files"] == SUBSET + 1 and again["source"]["kind"] == "physionet2012"


# The events kind -------------------------------------------------------------------------
PATIENTS = [f"MRN{1000 + k}" for k in range(20)]


def events_rows():
    """(patient, time, variable, value) rows: each patient an HR and a Temp; patient 3 two
    observations at 30 minutes (file order kept) written both as HH:MM and as minutes; one
    HR after the 48 h window, one implausible HR, one before admission; a variable without
    a plausible range (Pain)."""
    rows = []
    for k, patient in enumerate(PATIENTS):
        rows += [(patient, "01:30" if k == 3 else str(60 + k), "HR", str(70 + k)),
                 (patient, "30" if k == 3 else "00:10", "HR" if k == 3 else "Temp", "90" if k == 3 else "37.5")]
    rows += [(PATIENTS[3], "00:30", "Temp", "37.5"), (PATIENTS[3], "2881", "HR", "100"),
             (PATIENTS[4], "120", "HR", "400"), (PATIENTS[5], "-15", "HR", "88"), (PATIENTS[6], "3", "Pain", "7")]
    return rows


def write_events(folder: Path, rows=None, labels=None) -> tuple[Path, Path]:
    rows = events_rows() if rows is None else rows
    labels = ([(p, "dead" if k % 3 == 0 else "alive", str(30 + k), str(k % 2), str(k % 7 if k != 2 else ""))
               for k, p in enumerate(PATIENTS)] if labels is None else labels)
    events_path, labels_path = folder / "events.csv", folder / "labels.csv"
    events_path.write_text("patient,time,variable,value\n" + "".join(",".join(r) + "\n" for r in rows))
    labels_path.write_text("patient,outcome,age,sex,sofa\n" + "".join(",".join(r) + "\n" for r in labels))
    return events_path, labels_path


def import_events(storage, events_path, labels_path, **fields):
    fields = {"target": "outcome", "static": ["age", "sex"], "scores": ["sofa"], "classes": ["alive", "dead"],
              **fields}
    return import_dataset(storage, ImportRequest(kind="events", source=str(events_path), labels=str(labels_path),
                                                 name="ev", **fields))


def row_of(tables, age):
    for table in tables.values():
        for row in table.to_pylist():
            if row["static_age"] == age:
                return row
    raise AssertionError(f"no row with age {age}")


@pytest.mark.parametrize("form", ["csv", "parquet in hours"])
def test_the_events_kind_on_a_hand_made_table(local_storage, tmp_path, form):
    events_path, labels_path = write_events(tmp_path)
    fields = {}
    if form != "csv":  # the same rows as Parquet, times as numbers of hours
        rows = events_rows()
        minutes = [int(t.split(":")[0]) * 60 + int(t.split(":")[1]) if ":" in t else float(t) for _, t, _, _ in rows]
        pq.write_table(pa.table({"pid": [r[0] for r in rows], "hours": [m / 60 for m in minutes],
                                 "item": [r[2] for r in rows], "num": [float(r[3]) for r in rows]}),
                       tmp_path / "events.parquet")
        events_path = tmp_path / "events.parquet"
        fields = {"time_unit": "hours", "patient_column": "pid", "time_column": "hours", "variable_column": "item",
                  "value_column": "num"}
        # The labels table is keyed by the same column name as the events.
        labels_path.write_text(labels_path.read_text().replace("patient,", "pid,", 1))
    manifest = import_events(local_storage, events_path, labels_path, **fields)
    schema = manifest["schema"]
    assert schema["variables"] == [{"name": "HR", "range": [0, 300]}, {"name": "Pain", "range": None},
                                   {"name": "Temp", "range": [14, 46]}]
    assert schema["statics"] == [{"name": "age", "column": "static_age", "categories": None, "range": None},
                                 {"name": "sex", "column": "static_sex", "categories": [0, 1], "range": None}]
    assert schema["reference_scores"] == [{"name": "sofa", "column": "score_sofa", "higher_is": "worse"}]
    assert manifest["classes"] == ["alive", "dead"]
    assert sum(info["rows"] for info in manifest["splits"].values()) == 20
    tables = stored_rows(local_storage, manifest)
    three = row_of(tables, 33.0)  # patient 3: HR 90 and Temp 37.5 at 30 min (file order), HR 73 at 90 min
    assert three["obs_minutes"] == pytest.approx([30, 30, 90])
    assert three["obs_variable"] == [0, 2, 0] and three["obs_value"] == pytest.approx([90, 37.5, 73])
    assert three["label"] == 1 and three["static_sex"] == 1 and three["score_sofa"] == 3
    four = row_of(tables, 34.0)  # the HR of 400 is dropped
    assert four["obs_value"] == pytest.approx([37.5, 74]) and four["obs_minutes"] == pytest.approx([10, 64])
    assert math.isnan(row_of(tables, 32.0)["score_sofa"])  # an empty score cell is unknown
    assert row_of(tables, 35.0)["obs_minutes"] == pytest.approx([10, 65])  # before admission: dropped
    quality = manifest["quality"]
    assert quality["dropped"] == {"out_of_range": 1, "after_window": 1, "before_admission": 1}
    assert quality["variables"]["HR"]["out_of_range"] == 1 and quality["observations"] == 20 * 2 + 2
    assert quality["variables"]["Pain"]["patients_with_any"] == 0.05
    assert manifest["source"]["options"]["target"] == "outcome"
    stored = json.dumps(manifest) + "".join(str(t.to_pylist()) for t in tables.values())
    assert "MRN" not in stored and str(tmp_path) not in stored


# Bad input: refused, named by place, nothing published -------------------------------------
def replace_line(records, index, old, new):
    name, data = records[index]
    text = data.decode()
    assert old in text
    records = list(records)
    records[index] = (name, text.replace(old, new, 1).encode())
    return records


def record_lines(records, index):
    return records[index][1].decode().splitlines()


def line_at(records, index, number):
    return record_lines(records, index)[number - 1]


def mutated(kind, records):
    """(records, outcomes mutation, expected message, offending text) for each kind of bad stay."""
    third = record_lines(records, 2)
    if kind == "no RecordID":
        return (replace_line(records, 2, third[1] + "\n", ""), None, r"^member 4 of the archive has no RecordID line$",
                None)
    if kind == "bad time":
        return (replace_line(records, 2, "\n" + third[8], "\n" + "7:6x" + third[8][5:]), None,
                r"member 4 of the archive, line 9, column 'Time': not a time", "7:6x")
    if kind == "not a number":
        time, parameter, _ = third[8].split(",")
        return (replace_line(records, 2, "\n" + third[8], f"\n{time},{parameter},12.3abc"), None,
                r"member 4 of the archive, line 9, column 'Value': not a number", "12.3abc")
    if kind == "not finite":
        time, parameter, _ = third[8].split(",")
        return (replace_line(records, 2, "\n" + third[8], f"\n{time},{parameter},inf"), None,
                r"member 4 of the archive, line 9, column 'Value': not a finite number", "inf")
    if kind == "header":
        return (replace_line(records, 2, "Time,Parameter,Value", "Time,Param,Value"), None,
                r"member 4 of the archive, line 1: the header is not 'Time,Parameter,Value'", None)
    if kind == "RecordID twice":
        return (records[:5] + [("set-a/copy.txt", records[1][1])] + records[5:], None,
                r"member 7 of the archive: its RecordID is also that of member 3", None)
    if kind == "outcomes missing a stay":
        return records, lambda rows: rows[:7] + rows[8:], r"^1 stay\(s\) have no row in the outcomes file; the first " \
            r"is member \d+ of the archive$", None
    if kind == "outcomes with unknown stays":
        return (records, lambda rows: rows + ["987654,5,1,5,-1,0", "987655,5,1,5,-1,1"],
                r"^2 row\(s\) of the outcomes file name no stay of the archive; the first is line 52$", "98765")
    if kind == "outcomes label":
        return (records, lambda rows: rows[:4] + [",".join(rows[4].split(",")[:5] + ["7"])] + rows[5:],
                r"^the outcomes file, line 6, column 'In-hospital_death': not 0 or 1$", None)
    if kind == "outcomes not a number":
        return (records, lambda rows: rows[:4] + [",".join(rows[4].split(",")[:2] + ["x7y"] + rows[4].split(",")[3:])]
                + rows[5:], r"^the outcomes file, line 6, column 'SOFA': not a number$", "x7y")
    if kind == "implausible, refused":
        time, _, _ = third[8].split(",")
        return (replace_line(records, 2, "\n" + third[8], f"\n{time},HR,777.5"), None,
                r"^member 4 of the archive, line 9, column 'Value': a HR value outside its plausible range \[0, 300\]",
                "777")
    raise AssertionError(kind)


BAD_STAYS = ["no RecordID", "bad time", "not a number", "not finite", "header", "RecordID twice",
             "outcomes missing a stay", "outcomes with unknown stays", "outcomes label", "outcomes not a number",
             "implausible, refused"]


def assert_refused(storage, call, message, *absent):
    with pytest.raises(DataImportError, match=message) as refused:
        call()
    text = str(refused.value)
    for value in absent:
        assert value not in text, value
    assert list_datasets(storage) == {} and list_versions(storage, "p12") == [] and list_versions(storage, "ev") == []
    return text


@pytest.mark.parametrize("kind", BAD_STAYS)
def test_bad_stays_are_refused_by_place(subset, local_storage, tmp_path, kind):
    records, change_outcomes, message, offending = mutated(kind, subset["records"])
    archive = write_tar(tmp_path / "bad.tar.gz", records)
    rows = change_outcomes(subset["rows"]) if change_outcomes else subset["rows"]
    outcomes = write_outcomes(tmp_path / "outcomes.txt", subset["header"], rows)
    fields = {"out_of_range": "refuse"} if kind == "implausible, refused" else {}
    absent = [str(i) for i in subset["ids"]] + ([offending] if offending else [])
    text = assert_refused(local_storage, lambda: physionet(local_storage, archive, outcomes, **fields), message,
                          *absent)
    assert str(tmp_path) not in text


@pytest.mark.parametrize("damage", ["truncated", "corrupt", "not an archive"])
def test_a_damaged_archive_is_refused(subset, local_storage, tmp_path, damage):
    data = (subset["folder"] / "subset.tar.gz").read_bytes()
    if damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "corrupt":
        data = data[:2000] + bytes(b ^ 0x5A for b in data[2000:2600]) + data[2600:]
    else:
        data = b"RecordID,132539\n" * 10
    (tmp_path / "bad.tar.gz").write_bytes(data)
    assert_refused(local_storage, lambda: physionet(local_storage, tmp_path / "bad.tar.gz",
                                                    subset["folder"] / "outcomes.txt"),
                   r"^the archive cannot be read (at or after member \d+|from its start) \(truncated or corrupt;",
                   *[str(i) for i in subset["ids"]])


def special(name, kind):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = "set-a/other.txt" if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE) else ""
    return info


@pytest.mark.parametrize("kind, message", [
    (tarfile.SYMTYPE, "is a link"), (tarfile.LNKTYPE, "is a link"), (tarfile.CHRTYPE, "is a device or special file"),
    (tarfile.FIFOTYPE, "is a device or special file")])
def test_links_and_devices_in_the_archive_are_refused(subset, local_storage, tmp_path, kind, message):
    archive = write_tar(tmp_path / "bad.tar.gz", subset["records"][:3], extra=[special("set-a/999.txt", kind)])
    assert_refused(local_storage, lambda: physionet(local_storage, archive, subset["folder"] / "outcomes.txt"),
                   f"^member 5 of the archive {message}")


@pytest.mark.parametrize("limit, value, message", [
    ("MAX_MEMBER_BYTES", 1000, r"^member 2 of the archive is larger than the 1000-byte limit for one stay$"),
    ("MAX_MEMBERS", 10, r"^the archive has more than 10 members$"),
    ("MAX_TOTAL_BYTES", 30_000, r"^the archive holds more than 30000 bytes \(at member \d+\)$"),
])
def test_archive_bounds_stop_the_import_before_reading(subset, local_storage, monkeypatch, limit, value, message):
    monkeypatch.setattr(events, limit, value)
    read = []
    original = events.parse_record
    monkeypatch.setattr(events, "parse_record", lambda data, place: read.append(place) or original(data, place))
    assert_refused(local_storage, lambda: physionet(local_storage, subset["folder"] / "subset.tar.gz",
                                                    subset["folder"] / "outcomes.txt"), message)
    if limit == "MAX_MEMBER_BYTES":
        assert read == []  # the oversized member was never parsed


def test_a_link_in_the_folder_is_refused(subset, local_storage, tmp_path):
    folder = tmp_path / "set-a"
    folder.mkdir()
    for name, data in subset["records"][:3]:
        (folder / Path(name).name).write_bytes(data)
    (folder / "999999.txt").symlink_to(folder / Path(subset["records"][0][0]).name)
    assert_refused(local_storage, lambda: physionet(local_storage, folder, subset["folder"] / "outcomes.txt"),
                   r"^file 4 \(in name order\) of the folder is a link", "999999")


def implausible_counts(records) -> tuple[int, int]:
    """Implausible HR values and heights in these stays, by the test's own reading."""
    per_stay = [read_stay(data) for _, data in records]
    low, high = events.PLAUSIBLE_RANGES["HR"]
    hr = sum(1 for _, obs in per_stay for m, p, v in obs if p == "HR" and not low <= v <= high)
    height = sum(1 for statics, _ in per_stay if statics.get("Height", -1) != -1
                 and not 100 <= statics["Height"] <= 250)
    return hr, height


def test_implausible_values_are_dropped_by_default_and_counted(subset, local_storage, tmp_path):
    records, _, _, _ = mutated("implausible, refused", subset["records"])  # an HR of 777.5
    height = next(line for line in record_lines(records, 5) if line.startswith("00:00,Height,"))
    records = replace_line(records, 5, height, "00:00,Height,1.8")  # metres, not centimetres
    manifest = physionet(local_storage, write_tar(tmp_path / "a.tar.gz", records), subset["folder"] / "outcomes.txt")
    hr, heights = implausible_counts(records)
    assert (hr, heights) > implausible_counts(subset["records"])
    assert manifest["quality"]["variables"]["HR"]["out_of_range"] == hr
    assert manifest["quality"]["statics"]["Height"]["out_of_range"] == heights
    assert manifest["quality"]["dropped"]["out_of_range"] == sum(
        v["out_of_range"] for v in manifest["quality"]["variables"].values())


def bad_event_rows(kind):
    rows = events_rows()
    if kind == "time":
        rows[6] = (rows[6][0], "1h30", rows[6][2], rows[6][3])
        return rows, None, r"^the events table, row 7 \(line 8\), column 'time': not a time", "1h30"
    if kind == "value":
        rows[6] = (rows[6][0], rows[6][1], rows[6][2], "high")
        return rows, None, r"^the events table, row 7 \(line 8\), column 'value': empty or not a number$", "high"
    if kind == "not finite":
        rows[6] = (rows[6][0], rows[6][1], rows[6][2], "inf")
        return rows, None, r"^the events table, row 7 \(line 8\), column 'value': the value is not a finite number$", \
            "inf"
    if kind == "implausible, refused":
        return rows, None, r"^the events table, row 43 \(line 44\), column 'value': a HR value outside its " \
                           r"plausible range \[0, 300\]", "400"
    if kind == "patient without labels":
        rows.insert(9, ("MRN9999", "10", "HR", "80"))
        return rows, None, r"^1 patient\(s\) of the events table have no row in the labels table; the first is on " \
                           r"the events table, row 10 \(line 11\)$", "MRN"
    labels = [(p, "dead" if k % 3 == 0 else "alive", str(30 + k), str(k % 2), "1") for k, p in enumerate(PATIENTS)]
    if kind == "labels without events":
        labels.insert(4, ("MRN8888", "alive", "50", "1", "1"))
        labels.insert(6, ("MRN7777", "alive", "50", "1", "1"))
        return rows, labels, r"^2 row\(s\) of the labels table name a patient with no events; the first is on " \
                             r"the labels table, row 5 \(line 6\)$", "MRN"
    if kind == "patient twice in labels":
        labels.insert(7, labels[2])
        return rows, labels, r"^the labels table, row 8 \(line 9\), column 'patient': the same patient as row 3$", \
            "MRN"
    if kind == "static not a number":
        labels[3] = (labels[3][0], labels[3][1], "fortyfour", labels[3][3], labels[3][4])
        return rows, labels, r"^the labels table, row 4 \(line 5\), column 'age': not a finite number$", "forty"
    if kind == "unknown class":
        labels[3] = (labels[3][0], "maybe", *labels[3][2:])
        return rows, labels, r"^the labels table, row 4 \(line 5\), column 'outcome': label is not one of the given " \
                             r"classes", "maybe"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["time", "value", "not finite", "implausible, refused", "patient without labels",
                                  "labels without events", "patient twice in labels", "static not a number",
                                  "unknown class"])
def test_bad_events_are_refused_by_place(local_storage, tmp_path, kind):
    rows, labels, message, offending = bad_event_rows(kind)
    events_path, labels_path = write_events(tmp_path, rows, labels)
    fields = {"out_of_range": "refuse"} if kind == "implausible, refused" else {}
    text = assert_refused(local_storage, lambda: import_events(local_storage, events_path, labels_path, **fields),
                          message, offending, "MRN")
    assert str(tmp_path) not in text


def test_a_missing_column_and_bad_options_are_named(local_storage, tmp_path):
    events_path, labels_path = write_events(tmp_path)
    assert_refused(local_storage, lambda: import_events(local_storage, events_path, labels_path, time_column="when"),
                   r"^the events table has no column\(s\) 'when' \(columns: patient, time, variable, value\)$")
    assert_refused(local_storage, lambda: import_events(local_storage, events_path, labels_path, static=["weight"]),
                   r"^the labels table has no column\(s\) 'weight'")
    assert_refused(local_storage, lambda: import_events(local_storage, events_path, labels_path, window_hours=0),
                   r"^--window-hours must be more than 0")
    assert_refused(local_storage, lambda: import_events(local_storage, events_path, labels_path,
                                                        out_of_range="clip"), r"^--out-of-range must be one of")
    assert_refused(local_storage, lambda: import_dataset(local_storage, ImportRequest(
        kind="physionet2012", source=str(events_path), name="p12")), r"needs --outcomes")


# The shared quality report on variable-length lists ----------------------------------------
def lists(rows, kind):
    return pa.array(rows, pa.list_(kind))


def test_row_digests_find_duplicate_stays_across_splits_in_sliced_list_columns():
    def split(minutes, values, labels, start=0):
        table = pa.table({"obs_minutes": lists(minutes, pa.float32()),
                          "obs_variable": lists([[0] * len(m) for m in minutes], pa.int16()),
                          "obs_value": lists(values, pa.float32()), "static_Age": pa.array([50.0] * len(minutes))})
        table = table.slice(start, len(labels))  # list offsets then no longer start at 0
        return Split(table, np.asarray(labels))

    train = split([[1, 2], [3], [4, float("nan")]], [[80, 81], [82], [1, 2]], [0, 1, 0])
    val = split([[9, 9, 9], [1, 2], [1]], [[7, 7, 7], [80, 81], [2]], [0, 1], start=1)  # row 0 repeats train's 0
    test = split([[1], [2, 3]], [[80], [81, 82]], [0, 1])  # the same numbers as train's row 0 and 1, regrouped
    dataset = ImportedDataset("timeseries", ["a", "b"], {"train": train, "val": val, "test": test},
                              {"variables": [], "statics": [], "reference_scores": [], "window_minutes": 60},
                              {}, "", quality={"patients": 7})
    report = quality_report(dataset)
    assert report["duplicates_across_splits"] == {"train_val": 1, "train_test": 0, "val_test": 0}
    assert report["missing_values"]["obs_minutes"] == 1 and report["patients"] == 7


def test_a_gzip_stream_that_is_not_tar_is_refused(local_storage, tmp_path, subset):
    (tmp_path / "x.tar.gz").write_bytes(gzip.compress(b"Time,Parameter,Value\n" * 100))
    assert_refused(local_storage, lambda: physionet(local_storage, tmp_path / "x.tar.gz",
                                                    subset["folder"] / "outcomes.txt"),
                   r"^the archive cannot be read from its start \(truncated or corrupt")
