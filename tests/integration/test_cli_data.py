"""`medray data …` as a user runs it, against a local S3-protocol server."""

import json

import pytest

from medray.train.data.tabular import CLEVELAND_COLUMNS
from support.project import medray

pytestmark = pytest.mark.integration


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



@pytest.mark.parametrize("case, expected", [
    ("sep", "--sep '||' is not allowed: use one character"),
    ("folder", "the csv source is a folder"),
    ("undecodable", "the table is not UTF-8 text"),
])
def test_csv_mistakes_end_with_one_line_and_status_2(tmp_path, case, expected):
    table = tmp_path / "patients_John_Doe_MRN1234.csv"
    rows = b"a,b,y\n" + b"1,2,0\n3,4,1\n" * 2000
    # The bad byte lies beyond the first block the reader decodes: the whole file is checked.
    table.write_bytes(rows + b"5,\xff\xfe,0\n" if case == "undecodable" else rows)
    source = str(tmp_path) if case == "folder" else str(table)
    extra = ["--sep", "||"] if case == "sep" else []
    result = medray("data", "import", "csv", source, "--name", "t", "--target", "y", *extra,
                    env={"MEDRAY_STORAGE": str(tmp_path / "store")}, check=False)
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("medray: error:")]
    assert len(errors) == 1 and expected in errors[0], result.stderr
    assert "Traceback" not in result.stderr and "John_Doe" not in result.stderr


def test_import_records_the_source_label_and_no_file_name(tmp_path):
    folder = tmp_path / "patients_John_Doe_MRN1234"
    folder.mkdir()
    (folder / "patients_John_Doe_MRN1234.csv").write_text("a,y\n" + "".join(f"{i},{i % 2}\n" for i in range(40)))
    env = {"MEDRAY_STORAGE": str(tmp_path / "store")}
    manifest = json.loads(medray("data", "import", "csv", str(folder / "patients_John_Doe_MRN1234.csv"), "--name",
                                 "t", "--target", "y", "--source-label", "ward 3 export", "--json", env=env).stdout)
    assert manifest["source"]["label"] == "ward 3 export" and len(manifest["source"]["sha256"]) == 64
    stored = b"".join(p.read_bytes() for p in (tmp_path / "store").rglob("*") if p.is_file())
    assert b"John_Doe" not in stored and b"MRN1234" not in stored and str(tmp_path).encode() not in stored


def test_storage_settings_of_the_config_apply_with_storage_on_the_command_line(s3_bucket, tmp_path):
    import boto3

    from medray.api import open_storage
    from medray.cli import build_parser
    from medray.cluster.config import load_config

    (tmp_path / "c.yaml").write_text("storage:\n  server_side_encryption: aws:kms\n  kms_key_id: key-7\n"
                                     "  max_attempts: 9\n")
    args = build_parser().parse_args(["train", str(tmp_path / "c.yaml"), "--storage", f"s3://{s3_bucket}/cli"])
    storage = open_storage(args.storage, load_config(args.config, args.overrides))  # as `medray train` opens it
    assert storage.root == f"s3://{s3_bucket}/cli" and storage.config.max_attempts == 9
    storage.write_bytes("x.bin", b"x")
    head = boto3.client("s3").head_object(Bucket=s3_bucket, Key="cli/x.bin")
    assert (head["ServerSideEncryption"], head["SSEKMSKeyId"]) == ("aws:kms", "key-7")
