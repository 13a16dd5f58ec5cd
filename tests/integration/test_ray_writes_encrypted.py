"""What Ray Train and Ray Tune write through `Storage.arrow_filesystem()` is encrypted.

pyarrow's own S3 filesystem cannot ask for server-side encryption; this runs a real
search shaped like medray's (a Tune function trial that launches its own Ray Train
trainer, which keeps one checkpoint of two) on the local S3 server, whose bucket has no
default encryption, and reads every object's `ServerSideEncryption` back.
"""

import sys

import boto3
import pytest

from medray.cluster.storage import Storage

pytestmark = pytest.mark.integration


def _trial(params, *, root):
    import ray.tune
    from ray.train import Checkpoint, CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    storage = Storage(root)
    filesystem, _ = storage.arrow_filesystem()

    def loop():
        import os
        import tempfile

        import ray.train

        for epoch in range(2):
            with tempfile.TemporaryDirectory() as folder:
                with open(os.path.join(folder, "weights.pt"), "wb") as handle:
                    handle.write(bytes([epoch]) * 2048)
                ray.train.report({"epoch": epoch}, checkpoint=Checkpoint.from_directory(folder))

    DataParallelTrainer(
        loop, scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1}),
        run_config=RunConfig(name=ray.tune.get_context().get_trial_id(),
                             storage_path=storage.arrow_path("runs/search/trials"), storage_filesystem=filesystem,
                             checkpoint_config=CheckpointConfig(num_to_keep=1)),
    ).fit()
    ray.tune.report({"done": 1})


def test_checkpoints_and_tune_state_are_encrypted(ray_session, s3_bucket):
    from ray import cloudpickle, tune

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray's workers cannot import tests/

    storage = Storage(f"s3://{s3_bucket}/root")
    filesystem, _ = storage.arrow_filesystem()
    trainable = tune.with_resources(tune.with_parameters(_trial, root=storage.root), {"memory": 1})
    results = tune.Tuner(trainable, run_config=tune.RunConfig(
        name="search", storage_path=storage.arrow_path("runs"), storage_filesystem=filesystem)).fit()
    assert not results.errors

    s3 = boto3.client("s3")
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=s3_bucket, Prefix="root/runs/")
            for o in page.get("Contents", [])]
    weights = [key for key in keys if key.endswith("/weights.pt")]
    assert len(weights) == 1, weights  # Train kept one checkpoint of two (its delete went through too)
    assert any(key.endswith("tuner.pkl") for key in keys) and any("experiment_state" in key for key in keys)
    unencrypted = [key for key in keys if s3.head_object(Bucket=s3_bucket, Key=key).get("ServerSideEncryption")
                   != "AES256"]
    assert unencrypted == []
    assert storage.read_bytes(weights[0].removeprefix("root/")) == bytes([1]) * 2048  # the later one
