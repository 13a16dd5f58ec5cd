"""`medray train` and `medray evaluate` as a user runs them."""

import json

import pytest

from support.project import medray

pytestmark = pytest.mark.integration


def test_train_then_evaluate_json(tmp_path):
    env = {"MEDRAY_STORAGE": str(tmp_path / "store")}
    medray("data", "import", "sklearn", "breast_cancer", "--name", "wdbc", env=env)
    result = medray("train", "train/configs/wdbc_attention.yaml", "optim.epochs=2", "scaling.num_workers=1",
                    "eval.bootstrap=20", "train.name=cli-run", "--json", env=env)
    summary = json.loads(result.stdout)
    assert summary["checkpoint"].startswith(f"file://{tmp_path}/store/runs/cli-run/checkpoint_")
    for split in ("val", "test"):
        for key in ("auroc", "accuracy", "sensitivity", "specificity", "ece"):
            assert key in summary["metrics"][split]
    assert "epoch   2/2" in result.stderr  # per-epoch progress on stderr, JSON alone on stdout

    # The same evaluation settings (eval.*) as the run: the config's.
    same = ["--config", "train/configs/wdbc_attention.yaml"]
    evaluated = json.loads(medray("evaluate", "cli-run", "--split", "test", *same, "--json", env=env).stdout)
    assert evaluated["metrics"]["auroc"] == pytest.approx(summary["metrics"]["test"]["auroc"])
    by_uri = json.loads(medray("evaluate", summary["checkpoint"], "--split", "val", *same, "--json", env=env).stdout)
    assert by_uri["metrics"]["accuracy"] == pytest.approx(summary["metrics"]["val"]["accuracy"])


def test_train_errors_are_one_line(tmp_path):
    env = {"MEDRAY_STORAGE": str(tmp_path / "store")}
    result = medray("train", "train/configs/wdbc_attention.yaml", "model.preset=huge", env=env, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "dataset 'wdbc' does not exist" in result.stderr or "preset" in result.stderr
    result = medray("evaluate", "no-such-run", env=env, check=False)
    assert result.returncode == 2 and "run 'no-such-run' has no result" in result.stderr
