"""Shared fixtures: real local S3 (moto's server in a subprocess), a real local Ray,
and the real datasets kept in ../shared/data."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[1]
SHARED_DATA = PROJECT.parent / "shared" / "data"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_moto(env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    """moto's S3-protocol server on 127.0.0.1, ready to answer."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **(env or {})},
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return process, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("moto server did not start")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "breastmnist.npz").is_file():
        pytest.fail(f"the real datasets are expected in {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def s3_endpoint():
    """A running S3 server; the AWS variables point every client at it."""
    process, url = start_moto()
    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                             "AWS_DEFAULT_REGION", "AWS_REGION")}
    os.environ.update(AWS_ENDPOINT_URL=url, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                      AWS_DEFAULT_REGION="us-east-1")
    os.environ.pop("AWS_REGION", None)
    yield url
    process.terminate()
    process.wait(timeout=10)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def s3_bucket(s3_endpoint) -> str:
    import boto3

    bucket = f"medray-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
    return bucket


@pytest.fixture
def s3_storage(s3_bucket):
    from medray.cluster.storage import Storage

    return Storage(f"s3://{s3_bucket}/root")


@pytest.fixture
def local_storage(tmp_path):
    from medray.cluster.storage import Storage

    return Storage(f"file://{tmp_path / 'store'}")


@pytest.fixture(params=["file", "s3"])
def storage(request, tmp_path):
    """Each test using this runs once on local storage and once on S3."""
    if request.param == "file":
        return request.getfixturevalue("local_storage")
    return request.getfixturevalue("s3_storage")


@pytest.fixture(scope="session")
def ray_session(s3_endpoint):
    """One small local Ray for the whole run (start-up costs seconds). Started after the
    S3 server so that its workers inherit the AWS variables, as a cluster's nodes would
    have their credentials."""
    import ray

    from medray.cluster.runtime import RAY_TUNING

    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    for key, value in RAY_TUNING.items():  # as `medray` itself starts Ray
        os.environ.setdefault(key, value)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()
