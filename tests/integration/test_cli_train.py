"""`medray train` and `medray evaluate` as a user runs them."""

import json

import pytest

from support.project import medray

pytestmark = pytest.mark.integration


def test_train_then_evaluate_json(tmp_path):
    env = {"MEDRAY_STORAGE": str(tmp_path / "store")}
    medray("data", "import", "sklearn", "breast_cancer", "--name", "wdbc", env=env)
    result = medray("train", "train/configs/wdbc_attention.yaml", "optim.epochs=2", "scaling.num_workers=1",
                    "eval.bootstrap=20", "eval.threshold_method=target_sensitivity", "eval.target_sensitivity=0.95",
                    "train.name=cli-run", "--json", env=env)
    summary = json.loads(result.stdout)
    assert summary["checkpoint"].startswith(f"file://{tmp_path}/store/runs/cli-run/checkpoint_")
    for split in ("val", "test"):
        for key in ("auroc", "accuracy", "sensitivity", "specificity", "ece"):
            assert key in summary["metrics"][split]
    assert "epoch   2/2" in result.stderr  # per-epoch progress on stderr, JSON alone on stdout

    # A run re-evaluates with its own settings (threshold method, target sensitivity,
    # bootstrap, seed) by default: the same threshold and metrics as the run reported.
    evaluated = json.loads(medray("evaluate", "cli-run", "--split", "test", "--json", env=env).stdout)
    assert evaluated["settings"]["eval"]["threshold_method"] == "target_sensitivity"
    assert evaluated["settings"]["eval"]["bootstrap"] == 20
    assert evaluated["threshold"] == pytest.approx(summary["metrics"]["threshold"])
    for key in ("auroc", "sensitivity", "specificity", "brier", "calibration_slope"):
        assert evaluated["metrics"][key] == pytest.approx(summary["metrics"]["test"][key])
    assert evaluated["metrics"]["auroc_ci"] == pytest.approx(summary["metrics"]["test"]["auroc_ci"])
    # Told otherwise (an override, or a config), it uses what it is told.
    youden = json.loads(medray("evaluate", "cli-run", "eval.threshold_method=youden", "--json", env=env).stdout)
    assert youden["settings"]["eval"]["threshold_method"] == "youden" and youden["settings"]["eval"]["bootstrap"] == 20
    same = ["--config", "train/configs/wdbc_attention.yaml"]
    by_uri = json.loads(medray("evaluate", summary["checkpoint"], "--split", "val", *same, "--json", env=env).stdout)
    assert by_uri["settings"]["eval"]["threshold_method"] == "argmax"  # the config file's
    assert by_uri["metrics"]["auroc"] == pytest.approx(summary["metrics"]["val"]["auroc"])


def test_train_errors_are_one_line(tmp_path):
    env = {"MEDRAY_STORAGE": str(tmp_path / "store")}
    result = medray("train", "train/configs/wdbc_attention.yaml", "model.preset=huge", env=env, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "dataset 'wdbc' does not exist" in result.stderr or "preset" in result.stderr
    result = medray("evaluate", "no-such-run", env=env, check=False)
    assert result.returncode == 2 and "run 'no-such-run' has no result" in result.stderr
