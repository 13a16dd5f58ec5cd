"""`medray data import text`: class names from the label file, duplicates and groups kept
inside one split, lengths in the quality report, and bad sources refused naming the row
or column, never a document."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from medray.train.data.dataset import DataImportError
from medray.train.data.text import TextOptions, import_text

CANARY = "Qzxjvw Patientname"


def _table(tmp_path, rows, header="label,note", name="notes.csv"):
    path = tmp_path / name
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return path


def _notes(n=40):
    return [f'{i % 2 + 1},"Document {i} about {"tumour" if i % 2 else "stenosis"} and more words."' for i in range(n)]


def test_class_names_come_from_the_label_file_and_splits_are_stratified(tmp_path):
    names = tmp_path / "names.csv"
    names.write_text("code,name\n1,cardiac\n2,oncology\n")
    dataset = import_text(_table(tmp_path, _notes()), TextOptions(text_column="note", label_names=names))
    assert dataset.classes == ["cardiac", "oncology"] and dataset.modality == "text"
    assert sum(s.rows for s in dataset.splits.values()) == 40
    for split in dataset.splits.values():
        assert 0 < split.labels.mean() < 1  # both classes in every split
    assert dataset.quality["length_words"]["min"] == 7 and dataset.quality["empty_documents_dropped"] == 0
    assert CANARY not in json.dumps(dataset.quality)


def test_duplicates_and_a_patients_notes_never_span_two_splits(tmp_path):
    rows = _notes(40) + ['1,"Same note twice."'] * 2 + ['2,"Same  note  twice."']
    dataset = import_text(_table(tmp_path, rows), TextOptions(text_column="note"))
    holding = [name for name, s in dataset.splits.items()
               if any(" ".join(t.split()) == "Same note twice." for t in s.features.column("text").to_pylist())]
    assert len(holding) == 1
    grouped = [f'{i % 2 + 1},p{i // 4},"Note {i} on {"tumour" if i % 2 else "stenosis"}."' for i in range(80)]
    dataset = import_text(_table(tmp_path, grouped, header="label,patient,note"),
                          TextOptions(text_column="note", group_column="patient"))
    where = {}
    for name, split in dataset.splits.items():
        assert split.features.column_names == ["text"]  # the patient column is not stored
        for text in split.features.column("text").to_pylist():
            where.setdefault(int(text.split()[1]) // 4, set()).add(name)
    assert all(len(splits) == 1 for splits in where.values())


def test_parquet_and_class_folders_are_read_too(tmp_path):
    table = pa.table({"text": [f"note {i} tumour" for i in range(20)], "label": ["a", "b"] * 10})
    pq.write_table(table, tmp_path / "notes.parquet")
    assert import_text(tmp_path / "notes.parquet", TextOptions()).classes == ["a", "b"]
    for name in ("cardiac", "oncology"):
        (tmp_path / "folder" / name).mkdir(parents=True)
        for i in range(10):
            (tmp_path / "folder" / name / f"{CANARY}_{i}.txt").write_text(f"{name} note {i}")
    dataset = import_text(tmp_path / "folder", TextOptions())
    assert dataset.classes == ["cardiac", "oncology"] and sum(s.rows for s in dataset.splits.values()) == 20
    (tmp_path / "folder" / "oncology" / f"{CANARY}_bad.txt").write_bytes(b"caf\xe9")
    with pytest.raises(DataImportError, match="file 11 of class 'oncology' is not UTF-8 text") as refused:
        import_text(tmp_path / "folder", TextOptions())
    assert CANARY not in str(refused.value)


@pytest.mark.parametrize("rows, options, problem", [
    (_notes(10) + [f'1,"{CANARY} caf\xe9"'], {}, "not UTF-8 text (line 12)"),
    (_notes(10), {"text_column": "text"}, "no column 'text'; its columns: label, note"),
    (_notes(10) + ['3,"one document only"'], {}, "class '3' has 1 document(s)"),
    (_notes(10) + [f'1,"{CANARY}",extra'], {}, "row 11 of the text table has 3 fields"),
])
def test_bad_sources_are_refused_naming_the_row_or_column_never_the_text(tmp_path, rows, options, problem):
    path = tmp_path / "notes.csv"
    body = ("label,note\n" + "\n".join(rows) + "\n").encode("utf-8")
    path.write_bytes(body.replace("\xe9".encode("utf-8"), b"\xe9"))
    with pytest.raises(DataImportError) as refused:
        import_text(path, TextOptions(**{"text_column": "note", **options}))
    assert problem in str(refused.value) and CANARY not in str(refused.value)


def test_a_label_missing_from_the_names_file_is_refused(tmp_path):
    names = tmp_path / "names.csv"
    names.write_text("code,name\n1,cardiac\n")
    with pytest.raises(DataImportError, match="label value.s. 2 are not in the label names file"):
        import_text(_table(tmp_path, _notes()), TextOptions(text_column="note", label_names=names))
