"""Image archives imported by the Ray Data pipeline, from a local folder and from a prefix
on the local S3 server: the same dataset either way, patients kept to one split, bad
archives refused with nothing published, and an import killed mid-way leaving no version."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import boto3
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medray.cluster.storage import Storage
from medray.train.data.dataset import DataImportError, list_versions, read_manifest
from medray.train.data.importers import ImportOptions, ImportRequest, import_dataset
from medray.train.data.loading import read_split_arrays

PATIENTS = 8
IMAGES_PER_PATIENT = 4


def make_archive(root: Path, size=(30, 20)) -> pd.DataFrame:
    """Class folders of patient folders of PNGs, each image unique (its patient and index
    written into its first pixels); returns the labels table the CSV variant uses."""
    rng = np.random.default_rng(0)
    rows = []
    for patient in range(PATIENTS):
        label = "malignant" if patient % 2 else "benign"
        for i in range(IMAGES_PER_PATIENT):
            pixels = rng.integers(0, 256, size, dtype=np.uint8)
            key = f"{label}/MRN{1000 + patient}/Doe_{patient}_{i}.png"
            (root / key).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(root / key)
            rows.append({"path": key, "finding": label, "patient": f"MRN{1000 + patient}"})
    return pd.DataFrame(rows)


def upload(folder: Path, bucket: str, prefix: str) -> str:
    client = boto3.client("s3")
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(folder).as_posix()}")
    return f"s3://{bucket}/{prefix}"


def all_splits(storage: Storage, name: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {split: read_split_arrays(storage, name, split) for split in ("train", "val", "test")}


def patients_by_split(splits, archive: Path, table: pd.DataFrame, size: int) -> dict[str, set[str]]:
    """Which patients each split holds, found by matching decoded pixels to the files."""
    from medray.train.data.decode import decode_image

    owner = {decode_image((archive / key).read_bytes(), size, "L", resize="pad").tobytes(): patient
             for key, patient in zip(table["path"], table["patient"])}
    return {split: {owner[image.tobytes()] for image in images} for split, (images, _) in splits.items()}


@pytest.fixture
def archive(tmp_path):
    folder = tmp_path / "archive"
    table = make_archive(folder)
    return folder, table


def test_an_s3_prefix_imports_as_the_local_folder_does_and_keeps_patients_apart(
        archive, tmp_path, s3_bucket, ray_session):
    folder, table = archive
    storage = Storage(f"s3://{s3_bucket}/store")
    options = ImportOptions(image_size=16)
    local = import_dataset(storage, ImportRequest(kind="images", source=str(folder), name="local", group="folder",
                                                  options=options))
    remote = import_dataset(storage, ImportRequest(kind="images", source=upload(folder, s3_bucket, "scans/2024"),
                                                   name="remote", group="folder", options=options))
    assert remote["source"]["sha256"] == local["source"]["sha256"]
    assert remote["splits"]["test"]["class_counts"] == local["splits"]["test"]["class_counts"]
    local_splits, remote_splits = all_splits(storage, "local"), all_splits(storage, "remote")
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(remote_splits[split][0], local_splits[split][0])
        np.testing.assert_array_equal(remote_splits[split][1], local_splits[split][1])
    held = patients_by_split(remote_splits, folder, table, 16)
    assert sum(len(patients) for patients in held.values()) == PATIENTS  # each patient in one split
    # Not squashed: a 30x20 picture keeps its shape, padded with black at the sides.
    images = remote_splits["train"][0]
    assert images.shape[1:] == (16, 16) and (images[:, :, :2] == 0).all() and (images[:, :, 6:10] > 0).any()
    # Neither keys nor patient folders are stored anywhere.
    stored = b"".join(boto3.client("s3").get_object(Bucket=s3_bucket, Key=o["Key"])["Body"].read()
                      for o in boto3.client("s3").list_objects_v2(Bucket=s3_bucket, Prefix="store/")["Contents"])
    assert b"MRN10" not in stored and b"Doe_" not in stored and b"scans/2024" not in stored


def test_a_labels_csv_names_files_labels_and_patients(archive, tmp_path, s3_bucket, ray_session):
    folder, table = archive
    # A flat layout: the CSV alone says which class and patient each file is.
    flat = tmp_path / "flat"
    for key in table["path"]:
        (flat / "images").mkdir(parents=True, exist_ok=True)
        (flat / "images" / Path(key).name).write_bytes((folder / key).read_bytes())
    labels = table.assign(path=["images/" + Path(key).name for key in table["path"]])
    labels.to_csv(flat / "labels.csv", index=False)
    prefix = upload(flat, s3_bucket, "cxr")
    storage = Storage(f"file://{tmp_path / 'store'}")
    manifest = import_dataset(storage, ImportRequest(
        kind="images", source=prefix, name="cxr", labels=f"{prefix}/labels.csv", label_column="finding",
        group_column="patient", options=ImportOptions(image_size=16)))
    assert manifest["classes"] == ["benign", "malignant"]
    assert sum(manifest["splits"][s]["rows"] for s in ("train", "val", "test")) == len(table)
    assert manifest["quality"]["patient_groups"] is True
    splits = all_splits(storage, "cxr")
    owner_label = dict(zip(table["patient"], table["finding"]))
    held = patients_by_split(splits, folder, table, 16)
    assert sum(len(patients) for patients in held.values()) == PATIENTS
    for split, (_, label_ids) in splits.items():  # labels follow the CSV, not the layout
        assert sorted(manifest["classes"][i] for i in label_ids) == sorted(
            owner_label[p] for p in held[split] for _ in range(IMAGES_PER_PATIENT))


def test_patients_from_dicom_headers_never_span_two_splits(tmp_path, ray_session):
    from pydicom import dcmread
    from pydicom.data import get_testdata_file

    template = dcmread(get_testdata_file("CT_small.dcm"))
    rng = np.random.default_rng(1)
    owner = {}
    for n in range(24):
        patient, label = f"PID-{n % 6:04d}", ("normal", "abnormal")[n % 2]
        template.PatientID, template.PatientName = patient, f"Doe^{n}"
        pixels = rng.integers(0, 1000, (template.Rows, template.Columns)).astype(template.pixel_array.dtype)
        template.PixelData = pixels.tobytes()
        path = tmp_path / "dicoms" / label / f"{n:03d}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        template.save_as(path)
        owner[path] = patient
    storage = Storage(f"file://{tmp_path / 'store'}")
    import_dataset(storage, ImportRequest(kind="images", source=str(tmp_path / "dicoms"), name="ct",
                                          group="dicom:PatientID", options=ImportOptions(image_size=16)))
    from medray.train.data.decode import decode_image

    by_pixels = {decode_image(path.read_bytes(), 16, "L", resize="pad").tobytes(): p for path, p in owner.items()}
    held = {split: {by_pixels[image.tobytes()] for image in images}
            for split, (images, _) in all_splits(storage, "ct").items()}
    assert set.union(*held.values()) == set(owner.values())
    assert sum(len(patients) for patients in held.values()) == 6
    stored = b"".join(p.read_bytes() for p in (tmp_path / "store").rglob("*") if p.is_file())
    assert b"PID-0" not in stored and b"Doe" not in stored


def test_unreadable_files_stop_the_import_by_place_or_are_skipped_and_counted(archive, tmp_path, ray_session):
    folder, _ = archive
    (folder / "benign" / "MRN1000" / "Doe_truncated.png").write_bytes(
        (folder / "benign" / "MRN1000" / "Doe_0_0.png").read_bytes()[:60])
    storage = Storage(f"file://{tmp_path / 'store'}")
    request = ImportRequest(kind="images", source=str(folder), name="scans", options=ImportOptions(image_size=16))
    with pytest.raises(DataImportError, match=r"1 file\(s\) cannot be imported: file \d+ of 17 \(in key order\) "
                                              r"in class folder 'benign' is corrupt") as error:
        import_dataset(storage, request)
    assert "Doe" not in str(error.value) and "MRN" not in str(error.value)
    assert list_versions(storage, "scans") == []
    assert not list((tmp_path / "store").rglob("*.parquet"))  # the claimed folder holds no shard
    request.skip_unreadable = True
    manifest = import_dataset(storage, request)
    assert manifest["quality"]["unreadable_skipped"] == 1
    assert sum(manifest["splits"][s]["rows"] for s in ("train", "val", "test")) == PATIENTS * IMAGES_PER_PATIENT


@pytest.mark.parametrize("problem, message", [
    ("empty prefix", "holds no PNG, JPEG or DICOM files"),
    ("missing key", r"labels CSV row 3: its 'path' names no PNG, JPEG or DICOM file"),
    ("no bucket", "cannot list 's3://medray-no-such-bucket/x': the bucket does not exist"),
    ("no patient id", r"--group dicom:PatientID: 32 file\(s\) are not DICOMs with a PatientID"),
])
def test_a_bad_archive_is_refused_in_one_line_and_publishes_nothing(
        archive, tmp_path, s3_bucket, ray_session, problem, message):
    folder, table = archive
    storage = Storage(f"file://{tmp_path / 'store'}")
    request = ImportRequest(kind="images", source=str(folder), name="bad", options=ImportOptions(image_size=16))
    if problem == "empty prefix":
        request.source = f"s3://{s3_bucket}/nothing-here"
    elif problem == "missing key":
        table.loc[1, "path"] = "benign/MRN1000/absent.png"
        table.to_csv(tmp_path / "labels.csv", index=False)
        request.labels, request.label_column = str(tmp_path / "labels.csv"), "finding"
    elif problem == "no bucket":
        request.source = "s3://medray-no-such-bucket/x"
    else:
        request.group = "dicom:PatientID"
    with pytest.raises(DataImportError, match=message) as error:
        import_dataset(storage, request)
    assert "\n" not in str(error.value) and "MRN" not in str(error.value).replace("MRN1000/absent", "")
    assert list_versions(storage, "bad") == []


def test_an_import_killed_mid_way_leaves_no_version_and_a_rerun_succeeds(tmp_path, ray_session):
    folder = tmp_path / "archive"
    make_archive(folder, size=(300, 200))
    root = f"file://{tmp_path / 'store'}"
    command = [sys.executable, "-m", "medray.cli", "data", "import", "images", str(folder), "--name", "scans",
               "--size", "64", "--storage", root]
    env = {**os.environ, "MEDRAY_LOG_DIR": str(tmp_path / "logs")}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    claim = tmp_path / "store" / "datasets" / "scans" / "v1" / ".claim"
    deadline = time.monotonic() + 120
    while not claim.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert process.poll() is None, "the import ended before it could be interrupted"
    os.killpg(process.pid, signal.SIGKILL)  # the CLI and the Ray it started
    process.wait()
    storage = Storage(root)
    assert list_versions(storage, "scans") == []
    import_dataset(storage, ImportRequest(kind="images", source=str(folder), name="scans",
                                          options=ImportOptions(image_size=64)))
    assert list_versions(storage, "scans") == [2]  # the killed import's number is never reused
    assert read_manifest(storage, "scans")["splits"]["train"]["rows"] > 0


def test_two_workers_train_on_a_64x64_archive_imported_from_s3(tmp_path, s3_bucket, ray_session):
    """The hospital path end to end: a labels CSV and wide PNGs on S3, imported at 64x64
    (padded to keep the aspect ratio), trained by 2 Ray Train workers from storage on S3."""
    from medray.cluster.config import load_config
    from medray.train.checkpoint import load_bundle
    from medray.train.job import run_training
    from support.project import PROJECT

    rng = np.random.default_rng(1)
    folder, rows = tmp_path / "export", []
    for patient in range(16):
        finding = "malignant" if patient % 2 else "benign"
        for i in range(3):
            # A bright disc on malignant images: learnable in a few epochs at this size.
            pixels = rng.normal(90, 20, (72, 96))
            if finding == "malignant":
                yy, xx = np.mgrid[:72, :96]
                pixels[(yy - rng.integers(20, 52)) ** 2 + (xx - rng.integers(20, 76)) ** 2 < 150] += 110
            key = f"images/p{patient:02d}_{i}.png"
            (folder / key).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / key)
            rows.append({"path": key, "finding": finding, "patient": f"MRN{patient}"})
    pd.DataFrame(rows).to_csv(folder / "labels.csv", index=False)
    prefix = upload(folder, s3_bucket, "export")
    storage = Storage(f"s3://{s3_bucket}/store")
    manifest = import_dataset(storage, ImportRequest(
        kind="images", source=prefix, name="scans", labels=f"{prefix}/labels.csv", label_column="finding",
        group_column="patient", options=ImportOptions(image_size=64)))
    assert manifest["schema"]["shape"] == [64, 64] and manifest["schema"]["resize"] == "pad"

    config = load_config(PROJECT / "train" / "configs" / "breastmnist_cnn.yaml", [
        "data.dataset=scans", "scaling.num_workers=2", "optim.epochs=4", "optim.lr=0.01", "optim.batch_size=16",
        "train.patience=0", "eval.bootstrap=0", "train.name=scans-2w", "model.options.channels=[8,16]"])
    summary = run_training(config, storage)
    assert summary["epochs_run"] == 4
    test = summary["metrics"]["test"]
    assert test["n"] == manifest["splits"]["test"]["rows"]
    assert test["auroc"] >= 0.9, test  # the disc is plain to see: both workers learnt from their halves
    bundle = load_bundle(storage.download_dir(storage.key_of(summary["checkpoint"]), tmp_path / "checkpoint"))
    assert bundle.preprocessor.input_shape == [1, 64, 64] and bundle.dataset == "scans@v1"
