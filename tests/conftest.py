"""Shared fixtures: real local S3 (moto's server, started by cluster/local_s3.py), a
real local Ray, the real datasets kept in ../shared/data, and registries of champions to
serve. Helpers that are not fixtures live in tests/support/."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np
import pytest

from medray.cluster.local_s3 import LocalS3
from support.project import SHARED_DATA

INTEGRATION = Path(__file__).resolve().parent / "integration"


def pytest_collection_modifyitems(items):
    """Everything under tests/integration/ starts Ray or a local S3 server: marked so, so
    `make test-fast` (-m "not integration") leaves it out."""
    for item in items:
        if INTEGRATION in Path(item.fspath).resolve().parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "breastmnist.npz").is_file():
        pytest.fail(f"the real datasets are expected in {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def s3_endpoint():
    """A running S3 server; the AWS variables point every client at it."""
    server = LocalS3.start()
    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                             "AWS_DEFAULT_REGION", "AWS_REGION")}
    os.environ.update(server.client_env("testing"))
    os.environ.pop("AWS_REGION", None)  # it would win over AWS_DEFAULT_REGION
    yield server.url
    server.stop()
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


@pytest.fixture
def wdbc(local_storage):
    """Local storage holding scikit-learn's WDBC as dataset `wdbc`, with a validation
    fraction that leaves an odd number of val rows (91), which two workers cannot split
    equally."""
    from medray.train.data.importers import ImportOptions, ImportRequest, import_dataset

    import_dataset(local_storage, ImportRequest(kind="sklearn", source="breast_cancer", name="wdbc",
                                                options=ImportOptions(val_fraction=0.16)))
    return local_storage


@pytest.fixture(scope="module")
def ray_session(s3_endpoint):
    """One small local Ray per test module that asks for it (start-up costs seconds), shut
    down with the module: each module starts from an empty Ray (no Serve app, actor or
    placement group left by another), and none idles beside the nodes
    test_cluster_jobs.py starts itself (those bind free dashboard-agent ports, so another
    Ray on the machine does not stop them taking jobs). Started after the S3 server so
    that its workers inherit the AWS variables, as a cluster's nodes would have their
    credentials."""
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


@pytest.fixture(scope="session")
def real_inputs(shared_data):
    """A few real test cases of each modality, in the form a client sends them."""
    from sklearn.datasets import load_breast_cancer

    images = np.load(shared_data / "breastmnist.npz")["test_images"][:6]
    ecg = np.loadtxt(shared_data / "ECG200_TEST.txt")[:6, 1:]
    cancer = load_breast_cancer()
    return {"images": images, "signals": ecg, "records": cancer.data[:6], "feature_names": list(cancer.feature_names),
            "all_records": cancer.data}


@pytest.fixture
def served_registry(tmp_path, real_inputs):
    """A factory: the three champions, registered into the given storage."""
    from support.serving import make_registry

    return lambda storage: make_registry(storage, tmp_path, real_inputs)
