"""`medray train CONFIG --folds K` as a user runs it: K Ray Tune trials, one model per
fold, their ensemble calibrated out of fold, promoted as one registry version and
answering through `ServedModel` (PyTorch and ONNX Runtime) with explanations."""

import json

import numpy as np
import pytest
import torch

from medray import api
from medray.cluster.storage import Storage
from medray.train.checkpoint import load_bundle, load_out_of_fold
from medray.train.data.dataset import read_manifest
from medray.train.data.loading import features_and_labels, read_split_arrays, read_splits_table
from support.project import medray

pytestmark = pytest.mark.integration

FOLDS = 2


@pytest.fixture(scope="module")
def cross_validated(tmp_path_factory):
    root = tmp_path_factory.mktemp("cv") / "store"
    env = {"MEDRAY_STORAGE": str(root)}
    medray("data", "import", "sklearn", "breast_cancer", "--name", "wdbc", env=env)
    result = medray("train", "train/configs/wdbc_attention.yaml", "--folds", str(FOLDS), "optim.epochs=2",
                    "train.patience=0", "eval.bootstrap=20", "train.name=cv-run", "--json", env=env, timeout=600)
    return Storage(f"file://{root}"), json.loads(result.stdout), result.stderr


def test_each_fold_holds_out_its_rows_once_and_the_ensemble_is_calibrated_on_them(cross_validated, tmp_path):
    storage, summary, stderr = cross_validated
    train_val = sum(len(read_split_arrays(storage, "wdbc", split)[1]) for split in ("train", "val"))
    cv = summary["cv"]
    assert cv["folds"] == FOLDS and cv["rows"] == train_val
    assert sum(f["n"] for f in cv["per_fold"]) == train_val
    assert all(f["epochs_run"] == 2 for f in cv["per_fold"])
    aurocs = [f["auroc"] for f in cv["per_fold"]]
    assert cv["auroc"]["mean"] == pytest.approx(np.mean(aurocs))
    assert cv["auroc"]["ci"][0] <= cv["auroc"]["mean"] <= cv["auroc"]["ci"][1]
    assert f"fold {FOLDS}/{FOLDS}" in stderr  # one progress line per fold
    # The run's "val" is every train + val row, out of fold; test stays the test split.
    assert summary["metrics"]["calibration_set"] == "out_of_fold"
    assert summary["metrics"]["val"]["n"] == train_val
    assert summary["metrics"]["test"]["n"] == len(read_split_arrays(storage, "wdbc", "test")[1])
    assert summary["checkpoint"].endswith("/runs/cv-run/ensemble")

    folder = storage.download_dir(storage.key_of(summary["checkpoint"]), tmp_path / "ensemble")
    bundle, (oof, fold) = load_bundle(folder), load_out_of_fold(folder)
    assert len(bundle.model.members) == FOLDS
    assert np.bincount(fold).tolist() == [f["n"] for f in cv["per_fold"]]
    # Each row's out-of-fold logits come from the one member that never trained on it.
    manifest = read_manifest(storage, "wdbc")
    features, _ = features_and_labels(read_splits_table(storage, manifest, ("train", "val")), manifest)
    inputs = torch.from_numpy(bundle.preprocessor.transform(features))
    with torch.no_grad():
        for k, member in enumerate(bundle.model.members):
            own = member.eval()(inputs[fold == k]).numpy()
            np.testing.assert_allclose(own, oof[fold == k], atol=1e-5)
    assert (folder / "progress.json").exists()
    assert "learning_curves.png" in " ".join(summary["report"].values())


def test_the_ensemble_is_promoted_as_one_version_and_answers_as_one_model(cross_validated):
    storage, summary, _ = cross_validated
    outcome = api.promote("cv-run", "train/configs/wdbc_attention.yaml", ["promote.gate=[]"], storage=storage)
    assert outcome["promoted"] and outcome["version"] == 1
    # Promotion fits the conformal quantile on the out-of-fold rows, as the run did.
    assert outcome["metrics"]["val"]["n"] == summary["cv"]["rows"]
    model = api.load_model("wdbc@1", storage=storage)
    members = model.bundle.model.members
    assert len(members) == FOLDS
    # Its OOD threshold is set on the rows its first member held out, in that member's features.
    assert model.ood.threshold_set == "fold_0" and model.ood.n_val == summary["cv"]["per_fold"][0]["n"]
    assert model.ood.columns == (0, model.ood.dim)
    features, _ = read_split_arrays(storage, "wdbc", "test")
    inputs = model.decode(features.head(4).to_dict(orient="records"))
    answers = model.predict(inputs)
    with torch.no_grad():
        expected = torch.stack([torch.softmax(m(inputs.tensor), dim=1) for m in members]).mean(dim=0).numpy()
    for answer, row in zip(answers, expected):
        assert [answer["probabilities"][c] for c in model.bundle.classes] == pytest.approx(row.tolist(), abs=1e-6)
        assert answer["prediction_set"]
    explanations = model.explain(inputs)
    assert all(e["type"] == "attention" and sum(e["features"].values()) == pytest.approx(1, abs=1e-4)
               for e in explanations)
    on_onnx = model.with_runtime("onnx").predict(inputs)
    for a, b in zip(answers, on_onnx):
        assert b["probabilities"]["malignant"] == pytest.approx(a["probabilities"]["malignant"], abs=1e-4)
