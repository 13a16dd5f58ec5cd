import json
import os
import pickle

import boto3
import pytest

from medray.cluster.config import StorageConfig
from medray.cluster.errors import ConfigError, NotFoundError, StorageError
from medray.cluster.local_s3 import LocalS3
from medray.cluster.storage import AlreadyExistsError, Storage, WriteConflictError, normalize_root, resolve_root


def test_root_resolution_order(monkeypatch, tmp_path):
    monkeypatch.setenv("MEDRAY_STORAGE", "s3://from-env/p")
    assert resolve_root("s3://from-cli/x") == "s3://from-cli/x"
    assert resolve_root(None) == "s3://from-env/p"
    monkeypatch.delenv("MEDRAY_STORAGE")
    assert resolve_root(None).startswith("file://") and resolve_root(None).endswith(".medray")
    assert normalize_root(str(tmp_path)) == f"file://{tmp_path}"
    assert normalize_root("s3://bucket/a/b/") == "s3://bucket/a/b"


@pytest.mark.parametrize("root", ["s3://ab/x", "s3://Upper/x", "s3://has_underscore", "gs://bucket/x"])
def test_bad_roots_are_refused(root):
    with pytest.raises(ConfigError):
        normalize_root(root)


def test_round_trip_list_and_delete(storage):
    storage.write_json("a/b/manifest.json", {"x": 1})
    storage.write_bytes("a/c.bin", b"\x00\x01")
    assert storage.read_json("a/b/manifest.json") == {"x": 1}
    assert storage.read_bytes("a/c.bin") == b"\x00\x01"
    assert storage.list_dir("a") == ["b", "c.bin"]
    assert storage.list_dir("nothing/here") == []
    assert storage.exists("a/c.bin") and not storage.exists("a/zzz")
    storage.delete("a/c.bin")
    assert not storage.exists("a/c.bin")
    storage.delete_prefix("a")
    assert storage.list_dir("a") == []
    with pytest.raises(NotFoundError, match="a/b/manifest.json"):
        storage.read_bytes("a/b/manifest.json")


def test_exclusive_write_claims_a_key_once(storage):
    storage.write_json("v1/manifest.json", {"first": True}, exclusive=True)
    with pytest.raises(AlreadyExistsError):
        storage.write_json("v1/manifest.json", {"first": False}, exclusive=True)
    assert storage.read_json("v1/manifest.json") == {"first": True}


def test_local_writes_leave_no_temporary_files(local_storage):
    for i in range(3):
        local_storage.write_bytes("d/f.bin", bytes([i]))
    folder = local_storage.root.removeprefix("file://") + "/d"
    assert os.listdir(folder) == ["f.bin"]


def test_arrow_filesystem_reads_what_storage_wrote(storage):
    storage.write_bytes("x/data.bin", b"hello")
    fs, _ = storage.arrow_filesystem()
    with fs.open_input_stream(storage.arrow_path("x/data.bin")) as handle:
        assert handle.read() == b"hello"


def test_s3_writes_request_server_side_encryption(s3_storage, s3_bucket):
    s3_storage.write_bytes("enc.bin", b"1")
    head = boto3.client("s3").head_object(Bucket=s3_bucket, Key="root/enc.bin")
    assert head["ServerSideEncryption"] == "AES256"
    plain = Storage(s3_storage.root, StorageConfig(server_side_encryption="none"))
    plain.write_bytes("plain.bin", b"1")
    assert "ServerSideEncryption" not in boto3.client("s3").head_object(Bucket=s3_bucket, Key="root/plain.bin")


def test_missing_bucket_is_one_clear_message(s3_endpoint):
    with pytest.raises(StorageError, match="bucket 'no-such-bucket' does not exist"):
        Storage("s3://no-such-bucket/root").check()


def test_unreachable_endpoint_is_one_clear_message(monkeypatch, s3_endpoint):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    storage = Storage("s3://some-bucket/root", StorageConfig(max_attempts=2, connect_timeout_s=1))
    with pytest.raises(StorageError, match="cannot reach the S3 endpoint http://127.0.0.1:9"):
        storage.check()


def test_bad_credentials_are_one_clear_message(monkeypatch, s3_endpoint):
    # A second server with authentication on: unknown keys are refused as on AWS.
    with LocalS3.start({"INITIAL_NO_AUTH_ACTION_COUNT": "0"}) as server:
        monkeypatch.setenv("AWS_ENDPOINT_URL", server.url)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONGWRONGWRONG1")
        with pytest.raises(StorageError, match="refused the credentials"):
            Storage("s3://some-bucket/root").check()


def test_missing_credentials_are_one_clear_message(monkeypatch, s3_endpoint, tmp_path):
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(StorageError, match="no AWS credentials"):
        Storage("s3://some-bucket/root").check()


def test_refuses_to_delete_the_root(local_storage):
    with pytest.raises(StorageError):
        local_storage.delete_prefix("")


@pytest.mark.parametrize("key", ["../escape.txt", "a/../../escape.txt", "a//b", "./a", "a/./b"])
def test_keys_that_could_leave_the_root_are_refused(storage, key, tmp_path):
    for call in (lambda: storage.write_bytes(key, b"x"), lambda: storage.read_bytes(key),
                 lambda: storage.exists(key), lambda: storage.put_file(key, __file__),
                 lambda: storage.delete(key), lambda: storage.arrow_path(key)):
        with pytest.raises(StorageError, match="is not allowed"):
            call()
    assert not (tmp_path / "escape.txt").exists()


def test_conditional_write_replaces_only_what_was_read(storage):
    storage.write_json("m/champion.json", {"v": 1})
    data, tag = storage.read_with_tag("m/champion.json")
    assert json.loads(data) == {"v": 1}
    storage.write_json("m/champion.json", {"v": 2}, if_match=tag)
    with pytest.raises(WriteConflictError):  # the tag is of a file that is gone now
        storage.write_json("m/champion.json", {"v": 3}, if_match=tag)
    assert storage.read_json("m/champion.json") == {"v": 2}
    _, tag = storage.read_with_tag("m/champion.json")
    storage.delete("m/champion.json")
    with pytest.raises(WriteConflictError):  # deleted since it was read
        storage.write_json("m/champion.json", {"v": 4}, if_match=tag)
    assert not storage.exists("m/champion.json")
    assert storage.list_dir("m") == []  # the lock file of the local backend is never listed


def objects_encryption(bucket, prefix):
    s3 = boto3.client("s3")
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            for o in page.get("Contents", [])]
    return {key: (head.get("ServerSideEncryption"), head.get("SSEKMSKeyId"))
            for key in keys for head in [s3.head_object(Bucket=bucket, Key=key)]}


def test_arrow_filesystem_writes_ask_for_the_configured_encryption(s3_bucket, tmp_path):
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq
    import pyarrow as pa

    storage = Storage(f"s3://{s3_bucket}/root", StorageConfig(server_side_encryption="aws:kms", kms_key_id="k-1"))
    # Ray ships the filesystem to its workers: it must survive pickling and still encrypt.
    fs = pickle.loads(pickle.dumps(storage.arrow_filesystem()[0]))
    fs.create_dir(storage.arrow_path("run/empty"))
    with fs.open_output_stream(storage.arrow_path("run/a.bin")) as out:
        out.write(b"a" * 100)
    pq.write_table(pa.table({"x": [1, 2, 3]}), storage.arrow_path("run/t.parquet"), filesystem=fs)
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "weights.pt").write_bytes(b"w" * 1000)
    pafs.copy_files(str(tmp_path / "ckpt"), storage.arrow_path("run/ckpt"),
                    source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
    fs.copy_file(storage.arrow_path("run/a.bin"), storage.arrow_path("run/copy.bin"))
    fs.move(storage.arrow_path("run/copy.bin"), storage.arrow_path("run/moved.bin"))
    assert pq.read_table(storage.arrow_path("run/t.parquet"), filesystem=fs).column("x").to_pylist() == [1, 2, 3]
    assert storage.read_bytes("run/ckpt/weights.pt") == b"w" * 1000
    found = objects_encryption(s3_bucket, "root/run/")
    assert set(found) == {"root/run/empty/", "root/run/a.bin", "root/run/t.parquet", "root/run/ckpt/weights.pt",
                          "root/run/moved.bin"}
    assert set(found.values()) == {("aws:kms", "k-1")}
    fs.delete_dir(storage.arrow_path("run/ckpt"))
    fs.delete_file(storage.arrow_path("run/moved.bin"))
    assert set(objects_encryption(s3_bucket, "root/run/")) == {"root/run/empty/", "root/run/a.bin",
                                                               "root/run/t.parquet"}


@pytest.mark.parametrize("key", ["images/a b+c~d.png", "images/ünïcode/x%20y.dcm", "top.png"])
def test_object_reader_reads_what_storage_wrote(storage, key):
    storage.write_bytes(key, b"\x89PNG" + key.encode())
    read = storage.object_reader()
    assert read(key) == b"\x89PNG" + key.encode()
    with pytest.raises(NotFoundError, match="does not exist"):
        read("images/absent.png")


def test_object_reader_names_a_missing_bucket_and_an_unreachable_endpoint(monkeypatch, s3_endpoint):
    with pytest.raises(StorageError, match="bucket 'no-such-bucket' does not exist"):
        Storage("s3://no-such-bucket/root").object_reader()("x.png")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    read = Storage("s3://some-bucket/root", StorageConfig(max_attempts=2, connect_timeout_s=1)).object_reader()
    with pytest.raises(StorageError, match="cannot reach the S3 endpoint http://127.0.0.1:9"):
        read("x.png")


def test_object_reader_signs_requests_a_checking_server_accepts(monkeypatch, s3_endpoint):
    # Authentication on after the five set-up calls: the server checks each GET's
    # signature against the user's secret, as AWS does.
    with LocalS3.start({"INITIAL_NO_AUTH_ACTION_COUNT": "5"}) as server:
        iam = boto3.client("iam", endpoint_url=server.url)
        iam.create_user(UserName="reader")
        secret = iam.create_access_key(UserName="reader")["AccessKey"]
        iam.put_user_policy(UserName="reader", PolicyName="s3", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
        s3 = boto3.client("s3", endpoint_url=server.url)
        s3.create_bucket(Bucket="signed")
        s3.put_object(Bucket="signed", Key="root/scan 1.png", Body=b"pixels")
        monkeypatch.setenv("AWS_ENDPOINT_URL", server.url)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", secret["AccessKeyId"])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret["SecretAccessKey"])
        assert Storage("s3://signed/root").object_reader()("scan 1.png") == b"pixels"
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
        with pytest.raises(StorageError, match="refused the credentials"):
            Storage("s3://signed/root").object_reader()("scan 1.png")
