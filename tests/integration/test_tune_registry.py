"""A real search through Ray Tune with ASHA on S3 storage (a local S3-protocol server):
interrupted, resumed, promoted through the gate into the registry, rolled back."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from support.project import PROJECT
from support.project import medray

pytestmark = pytest.mark.integration

SEARCH = ["tune", "train/configs/wdbc_attention.yaml", "--samples", "4", "optim.epochs=3", "tune.grace_period=1",
          "tune.reduction_factor=2", "scaling.num_workers=1", "eval.bootstrap=50", "train.name=search1"]


def search_objects(s3, bucket):
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="root/runs/search1/")
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def trial_checkpoints(s3, bucket):
    return {key for key in search_objects(s3, bucket) if key.endswith("progress.json")}


def test_search_interrupt_resume_promote_rollback(s3_bucket):
    import boto3

    s3 = boto3.client("s3")
    env = {**os.environ, "MEDRAY_STORAGE": f"s3://{s3_bucket}/root"}
    medray("data", "import", "sklearn", "breast_cancer", "--name", "wdbc", env=env)

    # Start the search and interrupt it (Ctrl-C) once the first trials have checkpoints.
    process = subprocess.Popen([sys.executable, "-m", "medray.cli", *SEARCH], cwd=PROJECT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline and len(trial_checkpoints(s3, s3_bucket)) < 2 and process.poll() is None:
        time.sleep(1)
    assert process.poll() is None, "the search ended before it could be interrupted"
    os.killpg(process.pid, signal.SIGINT)
    process.wait(timeout=120)

    resumed = json.loads(medray("tune", "--resume", "search1", "--promote", "--json", env=env).stdout)
    assert len(resumed["trials"]) == 4 and resumed["trials_train_directly"]  # one worker: no TorchTrainer
    assert all(t["error"] is None and t["epochs_run"] >= 1 for t in resumed["trials"]), \
        [(t["config"]["model.preset"], t["epochs_run"], t["error"]) for t in resumed["trials"]]
    # Every trial's checkpoints are in its own folder, written through the encrypting filesystem.
    assert {key.split("/")[3] for key in trial_checkpoints(s3, s3_bucket)} == \
        {f"trial_{t['trial']}" for t in resumed["trials"]}
    assert all(s3.head_object(Bucket=s3_bucket, Key=key).get("ServerSideEncryption") == "AES256"
               for key in search_objects(s3, s3_bucket))
    assert resumed["trial_epochs"] == sum(t["epochs_run"] for t in resumed["trials"]) <= 4 * 3
    promotion = resumed["promotion"]
    assert promotion["promoted"] and promotion["version"] == 1 and promotion["champion"]

    listing = json.loads(medray("models", "list", "--json", env=env).stdout)["models"]
    assert listing == [{"name": "wdbc", "versions": [1], "champion": 1, "dataset": "wdbc@v1",
                        "test_auroc": promotion["metrics"]["test"]["auroc"]}]
    card = medray("models", "show", "wdbc", env=env).stdout
    assert "## Intended use" in card and "## Limitations" in card and "sha256" in card

    # A second version by hand-promoting the same best checkpoint, then rollback.
    from medray.cluster.config import load_config
    from medray.cluster.registry import Registry
    from medray.cluster.storage import Storage
    from medray.tune.promote import promote_checkpoint

    storage = Storage(f"s3://{s3_bucket}/root")
    best = storage.key_of(resumed["best"]["checkpoint"])
    strict = load_config(PROJECT / "train/configs/wdbc_attention.yaml",
                         ["promote.gate=[{metric: test.auroc, min: 1.01}]", "eval.bootstrap=20"])
    refused = promote_checkpoint(storage, best, strict)
    assert refused["promoted"] is False and refused["failed"] == ["test.auroc"]
    assert Registry(storage).versions("wdbc") == [1]  # a failed gate writes nothing

    medray("models", "promote", "wdbc", "1", env=env)
    second = promote_checkpoint(storage, best, load_config(PROJECT / "train/configs/wdbc_attention.yaml",
                                                           ["eval.bootstrap=20"]))
    assert second["version"] == 2
    medray("models", "rollback", "wdbc", env=env)
    assert json.loads(medray("models", "list", "--json", env=env).stdout)["models"][0]["champion"] == 1

    bad = medray("models", "promote", "wdbc", "9", env=env, check=False)
    assert bad.returncode == 2 and "has no version 9" in bad.stderr


def test_search_space_errors_before_any_trial(tmp_path):
    env = {"MEDRAY_STORAGE": str(tmp_path / "store")}
    medray("data", "import", "sklearn", "breast_cancer", "--name", "wdbc", env=env)
    bad_key = medray("tune", "train/configs/wdbc_attention.yaml", "tune.space={optim.lrate: {loguniform: [0.001, 0.01]}}",
                     env=env, check=False)
    assert bad_key.returncode == 2 and "tune.space names 'optim.lrate'" in bad_key.stderr
    bad_option = medray("tune", "train/configs/wdbc_attention.yaml",
                        "tune.space={model.options.depth: {choice: [2, 3]}}", env=env, check=False)
    assert bad_option.returncode == 2 and "depth" in bad_option.stderr
    too_big = medray("tune", "train/configs/wdbc_attention.yaml", "scaling.num_workers=16", env=env, check=False)
    assert too_big.returncode == 2 and "16 CPUs, but the cluster has" in too_big.stderr
    bad_gate = medray("tune", "train/configs/wdbc_attention.yaml", "promote.gate=[{metric: val.auroc}]",
                      env=env, check=False)
    assert bad_gate.returncode == 2 and "exactly one of min or max" in bad_gate.stderr
    assert "Traceback" not in bad_key.stderr + bad_option.stderr + too_big.stderr


def test_a_multi_worker_search_runs_each_trial_as_a_torch_trainer(ray_session, wdbc):
    from medray.tune.run import run_search
    from support.training import small_wdbc_config

    # One trial of one epoch: a TorchTrainer's start-up (tens of seconds here) is what this pays.
    config = small_wdbc_config("tune.num_samples=1", "optim.epochs=1", "scaling.num_workers=2", "train.name=search2")
    summary = run_search(config, wdbc)
    assert summary["trials_train_directly"] is False and len(summary["trials"]) == 1
    for trial in summary["trials"]:
        assert trial["error"] is None and trial["epochs_run"] == 1
        assert f"/runs/search2/trials/{trial['trial']}/checkpoint_" in trial["checkpoint"]
        assert trial["timings"]["workers"] > 0 and trial["timings"]["startup"] >= trial["timings"]["workers"]
