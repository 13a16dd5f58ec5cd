"""Each importer on small hand-made sources, and every kind of bad input."""

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medray.train.data.dataset import DataImportError, list_datasets, read_manifest, sha256_file
from medray.train.data.importers import ImportOptions, ImportRequest, import_dataset
from medray.train.data.loading import read_split_arrays


def write_npz(path, sizes=(20, 6, 8), shape=(8, 8), label_shape="flat", seed=0, **overrides):
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in zip(("train", "val", "test"), sizes):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
        labels = np.arange(n) % 2
        arrays[f"{split}_labels"] = labels[:, None] if label_shape == "column" else labels
    arrays.update(overrides)
    np.savez(path, **arrays)
    return arrays


def run(storage, **fields):
    return import_dataset(storage, ImportRequest(**fields))


# medmnist ------------------------------------------------------------------------
@pytest.mark.parametrize("label_shape", ["flat", "column"])
def test_medmnist_keeps_official_splits_and_pixels(local_storage, tmp_path, label_shape):
    arrays = write_npz(tmp_path / "toy.npz", label_shape=label_shape)
    manifest = run(local_storage, kind="medmnist", source=str(tmp_path / "toy.npz"), name="toy")
    assert manifest["modality"] == "image"
    assert manifest["schema"]["shape"] == [8, 8]
    assert {s: manifest["splits"][s]["rows"] for s in ("train", "val", "test")} == {"train": 20, "val": 6, "test": 8}
    assert manifest["classes"] == ["0", "1"]
    images, labels = read_split_arrays(local_storage, "toy", "val")
    np.testing.assert_array_equal(images, arrays["val_images"])
    np.testing.assert_array_equal(labels, arrays["val_labels"].reshape(-1))


def test_medmnist_known_flag_gets_class_names_and_license(local_storage, tmp_path):
    write_npz(tmp_path / "breastmnist.npz")
    manifest = run(local_storage, kind="medmnist", source=str(tmp_path / "breastmnist.npz"), name="b")
    assert manifest["classes"] == ["malignant", "normal_benign"]
    assert manifest["license"] == "CC BY 4.0"


def test_medmnist_sizes_fetch_the_published_file_and_a_file_must_be_the_size_asked(local_storage, tmp_path,
                                                                                    monkeypatch):
    # A flag name at --size 224 is MedMNIST+'s `breastmnist_224.npz`, found in the sources
    # folder as a finished download would be (no network here).
    monkeypatch.setenv("MEDRAY_DATA_SOURCES", str(tmp_path / "sources"))
    (tmp_path / "sources").mkdir()
    write_npz(tmp_path / "sources" / "breastmnist_224.npz", shape=(224, 224))
    manifest = run(local_storage, kind="medmnist", source="breastmnist", name="b224",
                   options=ImportOptions(image_size=224))
    assert manifest["schema"]["shape"] == [224, 224] and manifest["classes"] == ["malignant", "normal_benign"]
    assert manifest["source"]["uri"] == "https://zenodo.org/records/10519652/files/breastmnist_224.npz?download=1"
    write_npz(tmp_path / "toy.npz")
    with pytest.raises(DataImportError, match="holds 8x8 images, not --size 64"):
        run(local_storage, kind="medmnist", source=str(tmp_path / "toy.npz"), name="t",
            options=ImportOptions(image_size=64))
    with pytest.raises(DataImportError, match="sizes 28, 64, 128, 224, not 100"):
        run(local_storage, kind="medmnist", source="breastmnist", name="t", options=ImportOptions(image_size=100))
    assert list(list_datasets(local_storage)) == ["b224"]


def test_medmnist_rgb_images(local_storage, tmp_path):
    arrays = write_npz(tmp_path / "rgb.npz", shape=(8, 8, 3))
    run(local_storage, kind="medmnist", source=str(tmp_path / "rgb.npz"), name="rgb")
    images, _ = read_split_arrays(local_storage, "rgb", "test")
    np.testing.assert_array_equal(images, arrays["test_images"])


@pytest.mark.parametrize("overrides, message", [
    ({"val_images": np.zeros((6, 8), np.uint8)}, r"val_images has shape \(6, 8\)"),
    ({"train_labels": np.zeros(19, np.int64)}, "train has 20 images but 19 labels"),
    ({"test_labels": np.zeros((8, 3), np.int64)}, "multi-label"),
    ({"test_images": np.zeros((0, 8, 8), np.uint8), "test_labels": np.zeros(0, np.int64)}, "the test split is empty"),
    ({"val_labels": np.array([0, 1, 0, 1, 0, 7])}, "val_labels row 5 holds label 7"),
    ({"train_images": np.full((20, 8, 8), 300, np.int64)}, "8-bit"),
])
def test_medmnist_bad_arrays_are_refused_and_nothing_is_published(local_storage, tmp_path, overrides, message):
    write_npz(tmp_path / "bad.npz", **overrides)
    with pytest.raises(DataImportError, match=message):
        run(local_storage, kind="medmnist", source=str(tmp_path / "bad.npz"), name="bad")
    assert list_datasets(local_storage) == {}


def test_medmnist_missing_key_and_truncated_file(local_storage, tmp_path):
    np.savez(tmp_path / "nokey.npz", train_images=np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(DataImportError, match="has no array 'train_labels'"):
        run(local_storage, kind="medmnist", source=str(tmp_path / "nokey.npz"), name="x")
    write_npz(tmp_path / "full.npz")
    data = (tmp_path / "full.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataImportError, match="cut.npz' is corrupt or truncated"):
        run(local_storage, kind="medmnist", source=str(tmp_path / "cut.npz"), name="x")
    with pytest.raises(DataImportError, match="neither an .npz file nor a known MedMNIST flag"):
        run(local_storage, kind="medmnist", source="notaflag", name="x")


# ucr -----------------------------------------------------------------------------
def write_ucr(folder, name="TOY", train_rows=None, test_rows=None, sep=" "):
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True, exist_ok=True)

    def rows(n):
        return [[(-1 if i % 3 == 0 else 1), *rng.normal(size=12).round(6)] for i in range(n)]

    train_rows = train_rows if train_rows is not None else rows(30)
    test_rows = test_rows if test_rows is not None else rows(12)
    for suffix, data in (("TRAIN", train_rows), ("TEST", test_rows)):
        text = "\n".join(sep.join(str(v) for v in row) for row in data) + "\n"
        (folder / f"{name}_{suffix}.txt").write_text(text)
    return train_rows, test_rows


@pytest.mark.parametrize("sep", ["  ", ","])
def test_ucr_reads_both_separators_and_carves_validation(local_storage, tmp_path, sep):
    _, test = write_ucr(tmp_path / "ucr", sep=sep)
    test = np.asarray(test, dtype=float)
    manifest = run(local_storage, kind="ucr", source=str(tmp_path / "ucr"), name="toy", dataset="TOY")
    rows = {s: manifest["splits"][s]["rows"] for s in ("train", "val", "test")}
    assert rows["train"] + rows["val"] == 30 and rows["test"] == 12 and rows["val"] >= 4
    assert manifest["classes"] == ["-1", "1"]
    assert manifest["schema"]["shape"] == [12]
    signals, labels = read_split_arrays(local_storage, "toy", "test")
    np.testing.assert_array_equal(signals, test[:, 1:])
    np.testing.assert_array_equal(labels, (test[:, 0] == 1).astype(int))
    # Validation is stratified: both classes present in it.
    _, val_labels = read_split_arrays(local_storage, "toy", "val")
    assert set(val_labels.tolist()) == {0, 1}


def test_ucr_split_is_seeded(local_storage, tmp_path):
    write_ucr(tmp_path / "ucr")
    first = run(local_storage, kind="ucr", source=str(tmp_path / "ucr"), name="a")
    second = run(local_storage, kind="ucr", source=str(tmp_path / "ucr"), name="a")
    assert first["version"] == 1 and second["version"] == 2
    a, _ = read_split_arrays(local_storage, "a@v1", "val")
    b, _ = read_split_arrays(local_storage, "a@v2", "val")
    np.testing.assert_array_equal(a, b)


def test_ucr_bad_inputs(local_storage, tmp_path):
    folder = tmp_path / "u1"
    write_ucr(folder)
    text = (folder / "TOY_TRAIN.txt").read_text().splitlines()
    text[4] = text[4] + " abc"
    (folder / "TOY_TRAIN.txt").write_text("\n".join(text))
    with pytest.raises(DataImportError, match="TOY_TRAIN.txt' line 5: sample 13 is not a number"):
        run(local_storage, kind="ucr", source=str(folder), name="u")

    folder = tmp_path / "u2"
    write_ucr(folder, test_rows=[[2, *range(12)]])
    with pytest.raises(DataImportError, match="row 1: label 2 does not occur in the train file"):
        run(local_storage, kind="ucr", source=str(folder), name="u")

    folder = tmp_path / "u3"
    write_ucr(folder, train_rows=[[1, 1, 2, 3], [-1, 1, 2]])
    with pytest.raises(DataImportError, match="line 2: 2 samples, but earlier lines have 3"):
        run(local_storage, kind="ucr", source=str(folder), name="u")

    with pytest.raises(DataImportError, match="holds 0 UCR datasets"):
        run(local_storage, kind="ucr", source=str(tmp_path), name="u")
    assert list_datasets(local_storage) == {}


# csv -----------------------------------------------------------------------------
def clinical_table(n=60):
    rng = np.random.default_rng(2)
    return pd.DataFrame({
        "patient": [f"p{i // 2}" for i in range(n)],  # two visits per patient
        "age": rng.integers(30, 80, n),
        "chol": rng.normal(200, 30, n).round(1),
        "smoker": np.where(rng.random(n) > 0.5, "yes", "no"),
        "outcome": np.where(np.arange(n) % 3 == 0, "disease", "healthy"),
    })


def test_csv_with_header_categorical_missing_and_groups(local_storage, tmp_path):
    frame = clinical_table()
    frame = frame.astype({"chol": object})
    frame.loc[[3, 10], "chol"] = "?"
    frame.to_csv(tmp_path / "t.csv", index=False)
    manifest = run(
        local_storage, kind="csv", source=str(tmp_path / "t.csv"), name="t", target="outcome",
        categorical=["smoker"], group="patient", missing=["?"],
    )
    assert manifest["classes"] == ["disease", "healthy"]
    assert manifest["quality"]["missing_values"]["chol"] == 2
    assert [f["name"] for f in manifest["schema"]["features"]] == ["age", "chol", "smoker"]
    assert manifest["schema"]["features"][2] == {"name": "smoker", "type": "categorical", "categories": ["no", "yes"]}
    # The identifier itself is not stored; whole patients (two rows each) per split.
    for split in ("train", "val", "test"):
        features, _ = read_split_arrays(local_storage, "t", split)
        assert "patient" not in features.columns
        assert len(features) == manifest["splits"][split]["rows"]
    sizes = [manifest["splits"][s]["rows"] for s in ("train", "val", "test")]
    assert sum(sizes) == 60 and all(size % 2 == 0 for size in sizes)  # whole patients only


def test_csv_units_reach_the_serving_schema_with_the_typical_training_range(local_storage, tmp_path):
    from medray.train.data.preprocess import Preprocessor
    from medray.train.modalities import modality

    clinical_table().to_csv(tmp_path / "t.csv", index=False)
    manifest = run(local_storage, kind="csv", source=str(tmp_path / "t.csv"), name="t", target="outcome",
                   categorical=["smoker"], drop=["patient"], units={"chol": "mg/dl", "age": "years"})
    assert [f.get("unit") for f in manifest["schema"]["features"]] == ["years", "mg/dl", None]
    train, _ = read_split_arrays(local_storage, "t", "train")
    schema = modality("tabular").input_schema(Preprocessor.fit(manifest, train))
    age = schema["features"][0]
    assert age["unit"] == "years" and "unit" not in schema["features"][2]
    # The train split's mean +- 2 sd to 3 significant digits: aggregates, not one patient's age.
    ages = train["age"].to_numpy(dtype=float)
    assert age["typical"] == [float(f"{ages.mean() - 2 * ages.std():.3g}"), float(f"{ages.mean() + 2 * ages.std():.3g}")]
    assert age["range"][0] <= age["typical"][0] < age["typical"][1] <= age["range"][1]
    with pytest.raises(DataImportError, match="no column\\(s\\) 'weight'"):
        run(local_storage, kind="csv", source=str(tmp_path / "t.csv"), name="u", target="outcome",
            units={"weight": "kg"})


def test_csv_groups_never_span_splits(tmp_path):
    from medray.train.data.splits import three_way_split

    labels = np.array([0, 1] * 50)
    groups = np.repeat(np.arange(25), 4)
    splits = three_way_split(labels, 0.15, 0.2, seed=3, groups=groups)
    owners = [set(groups[rows]) for rows in splits.values()]
    assert not (owners[0] & owners[1]) and not (owners[0] & owners[2]) and not (owners[1] & owners[2])
    assert sum(len(rows) for rows in splits.values()) == 100


def test_csv_headerless_numeric_classes(local_storage, tmp_path):
    (tmp_path / "h.data").write_text("".join(f"{i},{i * 2.5},{i % 3}.0\n" for i in range(40)))
    manifest = run(local_storage, kind="csv", source=str(tmp_path / "h.data"), name="h",
                   columns=["a", "b", "y"], target="y")
    assert manifest["classes"] == ["0", "1", "2"]
    assert sum(manifest["splits"][s]["rows"] for s in ("train", "val", "test")) == 40


@pytest.mark.parametrize("content, options, message", [
    ("a,b,y\n1,2,0\n1,x,1\n", {"target": "y"}, r"column 'b', row 2 \(line 3\): value is not a number"),
    ("a,b,y\n1,2,0\n", {"target": "label"}, "has no column\\(s\\) 'label'"),
    ("a,b,y\n1,2,0\n1,2,\n", {"target": "y"}, r"row 2 \(line 3\): the target is missing"),
    ("a,b,y\n1,2,0\n1,2,5\n", {"target": "y", "classes": ["0", "1"]}, "row 2.*not one of the given classes"),
    ("", {"target": "y"}, "is empty"),
    ("1,2\n", {"target": "y", "columns": ["a", "b", "y"]}, "line 1 has 2 fields but 3 column names"),
])
def test_csv_bad_inputs(local_storage, tmp_path, content, options, message):
    (tmp_path / "bad.csv").write_text(content)
    with pytest.raises(DataImportError, match=message):
        run(local_storage, kind="csv", source=str(tmp_path / "bad.csv"), name="bad", **options)
    assert list_datasets(local_storage) == {}


def test_error_messages_never_echo_record_values(local_storage, tmp_path):
    (tmp_path / "p.csv").write_text("name,age,y\nJane Doe,41,0\nJohn Roe,SECRET-VALUE,1\n")
    with pytest.raises(DataImportError) as error:
        run(local_storage, kind="csv", source=str(tmp_path / "p.csv"), name="p", target="y", drop=["name"])
    assert "SECRET-VALUE" not in str(error.value) and "age" in str(error.value)


def test_split_too_small_for_stratification(local_storage, tmp_path):
    (tmp_path / "tiny.csv").write_text("a,y\n1,0\n2,0\n3,0\n4,1\n")
    with pytest.raises(DataImportError, match="stratified"):
        run(local_storage, kind="csv", source=str(tmp_path / "tiny.csv"), name="tiny", target="y")


# sklearn -------------------------------------------------------------------------
def test_sklearn_breast_cancer(local_storage):
    from sklearn.datasets import load_breast_cancer

    manifest = run(local_storage, kind="sklearn", source="breast_cancer", name="wdbc")
    assert sum(manifest["splits"][s]["rows"] for s in ("train", "val", "test")) == 569
    assert manifest["classes"] == ["malignant", "benign"]
    bunch = load_breast_cancer(as_frame=True)
    features, labels = read_split_arrays(local_storage, "wdbc", "test")
    assert list(features.columns) == list(bunch.data.columns)
    merged = features.merge(bunch.frame, on=list(bunch.data.columns), how="left")
    np.testing.assert_array_equal(merged["target"].to_numpy(), labels)
    with pytest.raises(DataImportError, match="not a scikit-learn dataset"):
        run(local_storage, kind="sklearn", source="iris_flowers", name="x")


# images --------------------------------------------------------------------------
def write_dicom(path, pixels, patient_name="Doe^Jane", patient_id="PID-12345"):
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.PatientName, ds.PatientID = patient_name, patient_id
    ds.Modality = "US"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def image_folder(root, per_class=10, with_dicom=True):
    rng = np.random.default_rng(4)
    for class_index, name in enumerate(("benign", "malignant")):
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (20, 20), dtype=np.uint8)
            pixels[:, :10] = 255 * class_index  # the class shows as a dark or bright left half
            if with_dicom and i % 3 == 0:
                write_dicom(folder / f"Doe_Jane_{i}.dcm", pixels.astype(np.uint16) * 16)
            else:
                Image.fromarray(pixels).save(folder / f"img{i}.png" if i % 2 else folder / f"img{i}.jpg")
    return root


def test_images_png_jpeg_dicom_without_patient_tags(local_storage, tmp_path, ray_session):
    folder = image_folder(tmp_path / "imgs")
    manifest = run(local_storage, kind="images", source=str(folder), name="imgs", options=ImportOptions(image_size=16))
    assert manifest["classes"] == ["benign", "malignant"]
    assert manifest["schema"]["shape"] == [16, 16]
    assert manifest["source"]["dicom_files"] == 8
    # What kind of images the DICOMs were, for serving to compare; no identifying tag.
    assert manifest["schema"]["dicom"] == {"files": 8, "Modality": ["US"], "PhotometricInterpretation": ["MONOCHROME"]}
    assert sum(manifest["splits"][s]["rows"] for s in ("train", "val", "test")) == 20
    images, labels = read_split_arrays(local_storage, "imgs", "train")
    assert images.shape[1:] == (16, 16) and images.dtype == np.uint8
    # The class signal (a bright or dark left half) survives resizing and DICOM windowing.
    assert images[labels == 1][:, :, :7].mean() > images[labels == 0][:, :, :7].mean() + 150
    stored = b"".join(p.read_bytes() for p in (tmp_path / "store").rglob("*") if p.is_file())
    for secret in (b"Doe", b"Jane", b"PID-12345"):
        assert secret not in stored


def test_images_resize_matches_pillow(local_storage, tmp_path, ray_session):
    folder = image_folder(tmp_path / "imgs", with_dicom=False)
    run(local_storage, kind="images", source=str(folder), name="imgs", options=ImportOptions(image_size=8))
    first = sorted((folder / "benign").glob("*"))[0]
    expected = np.asarray(Image.open(first).convert("L").resize((8, 8), Image.Resampling.BILINEAR))
    images = np.concatenate([read_split_arrays(local_storage, "imgs", s)[0] for s in ("train", "val", "test")])
    assert any(np.array_equal(image, expected) for image in images)


def test_images_corrupt_file_is_named(local_storage, tmp_path, ray_session):
    folder = image_folder(tmp_path / "imgs", with_dicom=False)
    (folder / "benign" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage")
    # Named by place, never by file name (file names often carry patient names).
    with pytest.raises(DataImportError, match=r"file 1 of 11 \(in key order\) in class folder 'benign' is corrupt"):
        run(local_storage, kind="images", source=str(folder), name="imgs")
    (folder / "benign" / "broken.png").unlink()
    (folder / "benign" / "bad.dcm").write_bytes(b"not dicom at all")
    with pytest.raises(DataImportError, match=r"file 1 of 11 \(in key order\) in class folder 'benign' is corrupt "
                                              r"or not an image \(only PNG, JPEG and DICOM"):
        run(local_storage, kind="images", source=str(folder), name="imgs")
    assert list_datasets(local_storage) == {}


# versions and quality ------------------------------------------------------------
def test_reimport_makes_a_new_version_and_leaves_the_old_one(local_storage, tmp_path):
    write_npz(tmp_path / "toy.npz")
    run(local_storage, kind="medmnist", source=str(tmp_path / "toy.npz"), name="toy")
    v1_files = {p: p.read_bytes() for p in (tmp_path / "store" / "datasets" / "toy" / "v1").rglob("*") if p.is_file()}
    write_npz(tmp_path / "toy.npz", seed=9)
    manifest = run(local_storage, kind="medmnist", source=str(tmp_path / "toy.npz"), name="toy")
    assert manifest["version"] == 2
    assert {p: p.read_bytes() for p in v1_files} == v1_files
    assert read_manifest(local_storage, "toy")["version"] == 2
    assert read_manifest(local_storage, "toy@v1")["version"] == 1


def test_quality_report_finds_duplicates_constants_and_balance(local_storage, tmp_path):
    rows = "".join(f"{i % 7},5,{i % 2}\n" for i in range(60))  # few distinct rows: duplicates everywhere
    (tmp_path / "q.csv").write_text("a,const,y\n" + rows)
    manifest = run(local_storage, kind="csv", source=str(tmp_path / "q.csv"), name="q", target="y")
    quality = manifest["quality"]
    assert quality["constant_features"] == ["const"]
    assert quality["duplicates_across_splits"]["train_test"] == manifest["splits"]["test"]["rows"]
    assert quality["class_balance"]["train"]["0"] == pytest.approx(0.5, abs=0.05)


def test_failed_upload_publishes_nothing(local_storage, tmp_path, monkeypatch):
    write_npz(tmp_path / "toy.npz")
    calls = {"n": 0}
    original = local_storage.put_file

    def flaky(key, path):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full")
        original(key, path)

    monkeypatch.setattr(local_storage, "put_file", flaky)
    with pytest.raises(OSError):
        run(local_storage, kind="medmnist", source=str(tmp_path / "toy.npz"), name="toy")
    assert list_datasets(local_storage) == {}
    leftovers = [p for p in (tmp_path / "store").rglob("*.parquet")]
    assert leftovers == []


def test_a_claimed_but_unpublished_version_is_skipped(local_storage, tmp_path):
    # An import that died after claiming v2 (the registry's claim, cluster/versions.py).
    write_npz(tmp_path / "toy.npz")
    run(local_storage, kind="medmnist", source=str(tmp_path / "toy.npz"), name="toy")
    local_storage.write_json("datasets/toy/v2/.claim", {"claimed_at": "x"}, exclusive=True)
    manifest = run(local_storage, kind="medmnist", source=str(tmp_path / "toy.npz"), name="toy")
    assert manifest["version"] == 3 and list_datasets(local_storage) == {"toy": [1, 3]}
    assert read_manifest(local_storage, "toy")["version"] == 3


def test_bad_dataset_names_are_refused(local_storage):
    from medray.cluster.errors import MedrayError

    with pytest.raises(MedrayError, match="dataset name '../etc'"):
        run(local_storage, kind="sklearn", source="breast_cancer", name="../etc")


# what is stored about the source ----------------------------------------------------
IDENTIFYING = "patients_John_Doe_MRN1234"


def identifying_source(kind, tmp_path):
    """A source of each kind whose folder and file names carry a patient's name."""
    folder = tmp_path / IDENTIFYING
    folder.mkdir()
    if kind == "medmnist":
        write_npz(folder / f"{IDENTIFYING}.npz")
        return {"source": str(folder / f"{IDENTIFYING}.npz")}, folder / f"{IDENTIFYING}.npz"
    if kind == "ucr":
        write_ucr(folder, name=IDENTIFYING)
        return {"source": str(folder), "dataset": IDENTIFYING}, None
    if kind == "csv":
        clinical_table().to_csv(folder / f"{IDENTIFYING}.csv", index=False)
        return ({"source": str(folder / f"{IDENTIFYING}.csv"), "target": "outcome", "drop": ["patient"],
                 "categorical": ["smoker"]}, folder / f"{IDENTIFYING}.csv")
    image_folder(folder / "scans")
    for path in sorted((folder / "scans").rglob("img*")):
        path.rename(path.with_name(f"{IDENTIFYING}_{path.name}"))
    return {"source": str(folder / "scans"), "options": ImportOptions(image_size=8)}, None


def model_card_for(manifest):
    from medray.cluster.config import MedrayConfig
    from medray.tune.promote import model_card

    split = {"auroc": 0.9, "auroc_ci": [0.8, 0.95], "per_class": {}}
    metrics = {"test": split, "val": split, "threshold": 0.5, "temperature": 1.0, "classes": manifest["classes"]}
    conformal = {"target": 0.9, "quantile": 0.5, "test_coverage": 0.9, "test_mean_set_size": 1.1}
    return model_card("m", MedrayConfig(), manifest, metrics, [], conformal, {"checkpoint": "runs/r/c"})


@pytest.mark.parametrize("kind", ["medmnist", "ucr", "csv", "images"])
def test_no_source_path_or_file_name_is_stored(local_storage, tmp_path, kind, request):
    if kind == "images":
        request.getfixturevalue("ray_session")  # image imports run Ray Data tasks
    fields, single_file = identifying_source(kind, tmp_path)
    manifest = run(local_storage, kind=kind, name="d", source_label="cohort A (2024)", **fields)
    assert manifest["source"]["label"] == "cohort A (2024)"
    assert "uri" not in manifest["source"]
    if single_file is not None:
        assert manifest["source"]["sha256"] == sha256_file(single_file)
    card = model_card_for(manifest)
    assert "cohort A (2024)" in card and manifest["source"]["sha256"] in card
    stored = b"".join(p.read_bytes() for p in (tmp_path / "store").rglob("*") if p.is_file())
    for text in (json.dumps(manifest), card, stored.decode("latin-1")):
        assert "John_Doe" not in text and "MRN1234" not in text and str(tmp_path) not in text


def test_a_public_download_keeps_its_url(local_storage, tmp_path, monkeypatch):
    from medray.train.data.medmnist import MEDMNIST_URL

    monkeypatch.setenv("MEDRAY_DATA_SOURCES", str(tmp_path / "sources"))
    (tmp_path / "sources").mkdir()
    write_npz(tmp_path / "sources" / "breastmnist.npz")  # where a finished download lands
    manifest = run(local_storage, kind="medmnist", source="breastmnist", name="b", source_label="MedMNIST v2")
    assert manifest["source"]["uri"] == MEDMNIST_URL.format(filename="breastmnist.npz")
    assert manifest["source"]["flag"] == "breastmnist" and manifest["source"]["label"] == "MedMNIST v2"


@pytest.mark.parametrize("label", ["two\nlines", "", "x" * 201])
def test_a_source_label_is_one_line_of_text(local_storage, label):
    with pytest.raises(DataImportError, match="--source-label"):
        run(local_storage, kind="sklearn", source="breast_cancer", name="w", source_label=label)


# names that become paths or URLs ------------------------------------------------------
@pytest.mark.parametrize("name", ["nl\n", "../etc", "UPPER", ".hidden", "a" * 65, "a/b", ""])
def test_dataset_name_rule_matches_the_whole_name(local_storage, name):
    from medray.cluster.errors import MedrayError

    with pytest.raises(MedrayError, match="dataset name"):
        run(local_storage, kind="sklearn", source="breast_cancer", name=name)
    with pytest.raises(MedrayError, match="dataset name"):
        read_manifest(local_storage, f"{name}@v1")
    assert list_datasets(local_storage) == {}


@pytest.mark.parametrize("fields", [{"source": "../x"}, {"source": "ECG200", "dataset": "../x"},
                                    {"source": "a/b"}, {"source": "nl\n"}])
def test_ucr_names_are_checked_before_any_url_or_path_is_built(local_storage, tmp_path, monkeypatch, fields):
    sources = tmp_path / "sources" / "inner"
    sources.mkdir(parents=True)
    monkeypatch.setenv("MEDRAY_DATA_SOURCES", str(sources))
    # What a traversing name would reach: a UCR pair just outside the sources folder.
    write_ucr(tmp_path / "sources", name="x")
    monkeypatch.chdir(tmp_path / "sources" / "inner")
    with pytest.raises(DataImportError, match="is not allowed"):
        run(local_storage, kind="ucr", name="u", **fields)
    assert list_datasets(local_storage) == {} and list(sources.iterdir()) == []


def test_odd_download_names_stay_inside_the_sources_folder(tmp_path, monkeypatch):
    import functools
    import http.server
    import threading

    from medray.train.data import sources

    served = tmp_path / "served"
    (served / "sub").mkdir(parents=True)
    (served / "my table.csv").write_text("a,y\n1,0\n")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("MEDRAY_DATA_SOURCES", str(tmp_path / "cache"))
    base = f"http://127.0.0.1:{server.server_port}"
    try:
        table = sources.local_source(f"{base}/my%20table.csv?sig=1", tmp_path)
        listing = sources.local_source(f"{base}/sub/..", tmp_path)  # a name of ".."
    finally:
        server.shutdown()
        server.server_close()
    assert table.parent == listing.parent == tmp_path / "cache" and table != listing
    assert table.suffix == ".csv" and table.read_text() == "a,y\n1,0\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "served"]
    with pytest.raises(DataImportError, match="is not allowed"):
        sources.cached_or_download("../escape.zip", f"{base}/x.zip")


def test_manifest_paths_outside_the_version_are_refused(local_storage):
    from medray.cluster.errors import MedrayError

    run(local_storage, kind="sklearn", source="breast_cancer", name="w")
    manifest = local_storage.read_json("datasets/w/v1/manifest.json")
    manifest["splits"]["train"]["files"][0]["path"] = "../../../models/m/versions/1/weights.pt"
    local_storage.write_json("datasets/w/v1/manifest.json", manifest)
    with pytest.raises(MedrayError, match="file path .* is not allowed"):
        read_manifest(local_storage, "w")
