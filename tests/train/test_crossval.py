"""Cross-validation's pure parts: the folds, the ensemble module, its checkpoint and
explanations (the fold statistics are `mean_sd`, tests/train/test_evaluate.py)."""

import json

import numpy as np
import pytest
import torch

from medray.cluster.errors import ConfigError, MedrayError
from medray.train.checkpoint import MODEL, load_bundle, load_out_of_fold, save_checkpoint, save_out_of_fold
from medray.tune.crossval import fold_assignment
from medray.train.data.preprocess import LabelMap, Preprocessor
from medray.train.job import calibration_outputs
from medray.train.modalities.image import grad_cam
from medray.train.models import InputSpec, build_model
from medray.train.models.ensemble import Ensemble, mean_log_probability


def test_folds_are_stratified_seeded_and_cover_every_row():
    labels = np.array([0] * 70 + [1] * 30)
    folds = fold_assignment(labels, 5, seed=3)
    assert sorted(np.unique(folds)) == [0, 1, 2, 3, 4]
    for fold in range(5):
        assert np.bincount(labels[folds == fold]).tolist() == [14, 6]  # 70/5 and 30/5 exactly
    assert np.array_equal(folds, fold_assignment(labels, 5, seed=3))
    assert not np.array_equal(folds, fold_assignment(labels, 5, seed=4))


def test_rows_of_one_group_share_a_fold():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(40), 3)  # 40 patients, three rows each
    labels = np.repeat(rng.integers(0, 2, 40), 3)
    folds = fold_assignment(labels, 4, seed=0, groups=groups)
    for group in range(40):
        assert len(set(folds[groups == group])) == 1
    assert sorted(np.unique(folds)) == [0, 1, 2, 3]


def test_a_class_smaller_than_the_folds_is_refused_naming_the_limit():
    labels = np.array([0] * 20 + [1] * 3)
    with pytest.raises(ConfigError, match="class index 1 has only 3 rows .* use at most 3 folds"):
        fold_assignment(labels, 5, seed=0)


def _members(n=3, seed=0):
    spec = InputSpec("tabular", (6,))
    torch.manual_seed(seed)
    return [build_model("attention", "seed", spec, num_classes=2) for _ in range(n)]


def test_the_ensemble_answers_the_mean_of_its_members_probabilities():
    members = _members()
    ensemble = Ensemble(members).eval()
    x = torch.randn(8, 6)
    with torch.no_grad():
        expected = torch.stack([torch.softmax(m.eval()(x), dim=1) for m in members]).mean(dim=0)
        logits = ensemble(x)
        features, same_logits = ensemble.features_and_logits(x)
    assert torch.allclose(torch.softmax(logits, dim=1), expected, atol=1e-6)
    assert torch.allclose(logits, same_logits, atol=1e-6)
    assert features.shape[1] == 3 * members[0].features_and_logits(x)[0].shape[1]
    weights = ensemble.attention_weights(x)
    assert torch.allclose(weights, torch.stack([m.attention_weights(x) for m in members]).mean(dim=0))
    assert torch.allclose(weights.sum(dim=1), torch.ones(8), atol=1e-5)


def test_mean_log_probability_is_stable_for_confident_members():
    big = torch.tensor([[1000.0, -1000.0]])
    out = mean_log_probability([big, -big])
    assert torch.isfinite(out).all()
    assert torch.allclose(out.exp(), torch.tensor([[0.5, 0.5]]), atol=1e-6)


def test_an_ensemble_checkpoint_rebuilds_the_same_model(tmp_path):
    members = _members()
    ensemble = Ensemble(members).eval()
    labels = LabelMap.build(["benign", "malignant"])
    preprocessor = Preprocessor("tabular", {"columns": []}, (6,))
    save_checkpoint(tmp_path, ensemble, "attention", preprocessor, labels, "wdbc@v1", {"epoch": None})
    save_out_of_fold(tmp_path, np.ones((5, 2)), np.array([0, 1, 2, 0, 1]))
    assert json.loads((tmp_path / MODEL).read_text())["members"] == 3
    bundle = load_bundle(tmp_path)
    x = torch.randn(4, 6)
    with torch.no_grad():
        assert torch.allclose(bundle.model(x), ensemble(x), atol=1e-6)
    logits, fold = load_out_of_fold(tmp_path)
    assert logits.shape == (5, 2) and fold.tolist() == [0, 1, 2, 0, 1]


@pytest.mark.parametrize("members", [1, 10**9, "3"])
def test_a_checkpoint_claiming_an_impossible_ensemble_is_refused(tmp_path, members):
    save_checkpoint(tmp_path, _members(1)[0], "attention", Preprocessor("tabular", {"columns": []}, (6,)),
                    LabelMap.build(["a", "b"]), "x@v1", {})
    info = json.loads((tmp_path / MODEL).read_text())
    (tmp_path / MODEL).write_text(json.dumps({**info, "members": members}))
    with pytest.raises(ValueError, match="'members' must be an integer from 2 to 20"):
        load_bundle(tmp_path)


def test_an_ensembles_grad_cam_averages_its_members_maps_for_its_own_class():
    spec = InputSpec("image", (1, 28, 28))
    torch.manual_seed(0)
    members = [build_model("cnn", "resnet", spec, num_classes=2, overrides={"channels": [4, 8]}).eval()
               for _ in range(2)]
    ensemble = Ensemble(members).eval()
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        chosen = ensemble(x).argmax(dim=1)
    maps = grad_cam(ensemble, x)
    mean = np.mean([grad_cam(m, x, chosen) for m in members], axis=0)
    expected = mean / mean.reshape(3, -1).max(axis=1)[:, None, None]
    assert maps.shape == (3, 28, 28)
    np.testing.assert_allclose(maps, expected, atol=1e-6)


def test_out_of_fold_logits_must_cover_train_and_val():
    outputs = {"train": (np.zeros(6, int), None), "val": (np.ones(2, int), None)}
    labels, logits = calibration_outputs(outputs, np.zeros((8, 2)))
    assert labels.tolist() == [0] * 6 + [1] * 2 and logits.shape == (8, 2)
    with pytest.raises(MedrayError, match="cover 7 rows, but train \\+ val have 8"):
        calibration_outputs(outputs, np.zeros((7, 2)))


def test_equal_documents_share_a_fold_as_they_share_a_split():
    import pandas as pd

    from medray.train.modalities import modality

    groups = modality("text").fold_groups(pd.DataFrame({"text": ["chest  pain\n", "chest pain", "fever"]}))
    assert groups[0] == groups[1] != groups[2]
    assert modality("tabular").fold_groups(pd.DataFrame({"x": [1.0]})) is None
