"""`medray data …` as a user runs it, against a local S3-protocol server."""

import json
import os
import subprocess
import sys

import pytest

from conftest import PROJECT
from train.data.tabular import CLEVELAND_COLUMNS

pytestmark = pytest.mark.integration


def medray(*args, env=None, check=True):
    result = subprocess.run(
        [sys.executable, "-m", "cluster.cli", *args], cwd=PROJECT, capture_output=True, text=True,
        env={**os.environ, **(env or {})}, timeout=300,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"medray {' '.join(args)} failed:\n{result.stderr}")
    return result


@pytest.fixture
def s3_env(s3_bucket):
    return {"MEDRAY_STORAGE": f"s3://{s3_bucket}/root"}


def listing(env):
    return json.loads(medray("data", "list", "--json", env=env).stdout)


def test_done_when_on_s3(s3_env, shared_data, s3_bucket):
    medray("data", "import", "medmnist", str(shared_data / "breastmnist.npz"), "--name", "breastmnist", env=s3_env)
    described = json.loads(medray("data", "describe", "breastmnist", "--json", env=s3_env).stdout)
    assert [described["splits"][s]["rows"] for s in ("train", "val", "test")] == [546, 78, 156]
    assert len(described["classes"]) == 2

    ecg = json.loads(medray("data", "import", "ucr", str(shared_data), "--dataset", "ECG200", "--name", "ecg200",
                            "--json", env=s3_env).stdout)
    assert sum(ecg["splits"][s]["rows"] for s in ("train", "val", "test")) == 200
    assert ecg["splits"]["test"]["rows"] == 100 and ecg["schema"]["shape"] == [96]

    cleveland = json.loads(medray(
        "data", "import", "csv", str(shared_data / "processed.cleveland.data"), "--name", "cleveland",
        "--target", "num", "--columns", ",".join(CLEVELAND_COLUMNS), "--missing", "?", "--json", env=s3_env,
    ).stdout)
    assert sum(cleveland["splits"][s]["rows"] for s in ("train", "val", "test")) == 303
    assert cleveland["quality"]["missing_values_total"] == 6

    wdbc = json.loads(medray("data", "import", "sklearn", "breast_cancer", "--name", "wdbc", "--json",
                             env=s3_env).stdout)
    assert sum(wdbc["splits"][s]["rows"] for s in ("train", "val", "test")) == 569

    # A second import is v2; v1's objects are untouched.
    import boto3

    s3 = boto3.client("s3")

    def objects(prefix):
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=s3_bucket, Prefix=prefix)
        return {o["Key"]: o["ETag"] for page in pages for o in page.get("Contents", [])}

    v1 = objects("root/datasets/breastmnist/v1/")
    medray("data", "import", "medmnist", str(shared_data / "breastmnist.npz"), "--name", "breastmnist", env=s3_env)
    assert objects("root/datasets/breastmnist/v1/") == v1
    before = listing(s3_env)
    assert {d["name"]: d["versions"] for d in before["datasets"]} == {
        "breastmnist": [1, 2], "cleveland": [1], "ecg200": [1], "wdbc": [1]}

    # Human-readable output too.
    text = medray("data", "describe", "breastmnist@v1", env=s3_env).stdout
    assert "breastmnist v1" in text and "train 546" in text


def test_truncated_npz_is_refused_and_nothing_becomes_visible(s3_env, shared_data, tmp_path):
    medray("data", "import", "sklearn", "breast_cancer", "--name", "wdbc", env=s3_env)
    before = listing(s3_env)
    data = (shared_data / "breastmnist.npz").read_bytes()
    (tmp_path / "breastmnist.npz").write_bytes(data[: len(data) // 3])
    result = medray("data", "import", "medmnist", str(tmp_path / "breastmnist.npz"), "--name", "breastmnist",
                    env=s3_env, check=False)
    assert result.returncode == 2
    assert "corrupt or truncated" in result.stderr and "Traceback" not in result.stderr
    assert listing(s3_env) == before


@pytest.mark.parametrize("env, message", [
    ({"MEDRAY_STORAGE": "s3://medray-no-such-bucket/root"}, "bucket 'medray-no-such-bucket' does not exist"),
    ({"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "MEDRAY_STORAGE": "s3://medray-x/root"}, "cannot reach the S3 endpoint"),
])
def test_storage_problems_are_one_line(s3_endpoint, env, message):
    result = medray("data", "import", "sklearn", "breast_cancer", "--name", "wdbc", env=env, check=False)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_bad_options_and_unknown_dataset(tmp_path):
    env = {"MEDRAY_STORAGE": str(tmp_path / "store")}
    result = medray("data", "import", "sklearn", "breast_cancer", "--name", "w", "--val-fraction", "1.5",
                    env=env, check=False)
    assert result.returncode == 2 and "val_fraction" in result.stderr and "1.5" in result.stderr
    result = medray("data", "describe", "nothing", env=env, check=False)
    assert result.returncode == 2 and "dataset 'nothing' does not exist" in result.stderr
    medray("data", "import", "sklearn", "breast_cancer", "--name", "w", env=env)
    result = medray("data", "describe", "w@v7", env=env, check=False)
    assert "has no version v7 (versions: v1)" in result.stderr

