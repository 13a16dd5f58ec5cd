"""Training without Ray: every bad config stopped before training starts, checkpoints that
round-trip, the shipped configs plan, and evaluation of stored checkpoints. Ray Train
itself: tests/integration/test_ray_training.py."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from medray.cluster.config import load_config
from medray.cluster.errors import ConfigError, NotFoundError
from medray.train.checkpoint import load_bundle, save_checkpoint
from medray.train.data.importers import ImportRequest, import_dataset
from medray.train.data.loading import read_split_arrays
from medray.train.job import plan_training
from support.training import CONFIGS, small_wdbc_config


def test_checkpoint_round_trip_gives_identical_outputs(wdbc, tmp_path):
    plan = plan_training(small_wdbc_config(), wdbc)
    from medray.train.models import build_model_from_config

    torch.manual_seed(0)
    model = build_model_from_config("attention", plan.model_config)
    save_checkpoint(tmp_path / "ckpt", model, "attention", plan.preprocessor, plan.labels, plan.dataset_ref,
                    progress={"epoch": 0})
    bundle = load_bundle(tmp_path / "ckpt")
    features, _ = read_split_arrays(wdbc, "wdbc", "test")
    model.eval()
    with torch.no_grad():
        expected = model(torch.from_numpy(plan.preprocessor.transform(features)))
    torch.testing.assert_close(bundle.predict_logits(features), expected, rtol=0, atol=0)
    assert bundle.classes == ["benign", "malignant"] and bundle.dataset == "wdbc@v1"


@pytest.mark.parametrize("overrides, error, message", [
    (["model.family=transformer"], ConfigError, "model.family"),
    (["model.preset=huge"], ConfigError, "unknown attention preset 'huge'"),
    (["model.options={depth: 3}"], ConfigError, "unknown override 'depth'"),
    (["model.family=cnn"], ConfigError, "takes image inputs, not 'tabular'"),
    (["data.dataset=nothing"], NotFoundError, "dataset 'nothing' does not exist"),
    (["optim.lrate=0.1"], ConfigError, "unknown config key 'optim.lrate'"),
    (["data.positive_class=sick"], ConfigError, "positive_class 'sick'"),
])
def test_bad_configs_fail_before_training(wdbc, overrides, error, message):
    with pytest.raises(error, match=message):
        plan_training(small_wdbc_config(*overrides), wdbc)


def test_an_option_set_to_nothing_is_unset_so_another_preset_can_be_chosen(wdbc):
    # wdbc_attention.yaml sets model.options.dims, which the FT-Transformer does not take.
    with pytest.raises(ConfigError, match="unknown override 'dims'"):
        plan_training(small_wdbc_config("model.preset=ft_transformer"), wdbc)
    plan = plan_training(small_wdbc_config("model.preset=ft_transformer", "model.options.dims="), wdbc)
    assert plan.model_config["preset"] == "ft_transformer" and plan.model_config["d_token"] == 64


def test_a_cross_validation_with_a_bad_model_option_fails_before_any_fold_trains(wdbc):
    from medray.tune.crossval import run_cross_validation

    # Raised in the driver, before Ray starts: the folds would each fail with it otherwise.
    with pytest.raises(ConfigError, match="unknown override 'depth'"):
        run_cross_validation(small_wdbc_config("train.folds=2", "model.options.depth=3"), wdbc)


def test_every_shipped_config_loads_and_plans(local_storage, shared_data, tmp_path):
    """Each YAML in train/configs validates and plans against its real dataset."""
    from medray.train.data.medmnist import write_resized_medmnist
    from medray.train.data.tabular import CLEVELAND_COLUMNS

    sources = {
        "breastmnist": ImportRequest(kind="medmnist", source=str(shared_data / "breastmnist.npz"), name="breastmnist"),
        "ecg200": ImportRequest(kind="ucr", source=str(shared_data), dataset="ECG200", name="ecg200"),
        "cleveland": ImportRequest(kind="csv", source=str(shared_data / "processed.cleveland.data"),
                                   name="cleveland", target="num", columns=CLEVELAND_COLUMNS, missing=["?"]),
        "wdbc": ImportRequest(kind="sklearn", source="breast_cancer", name="wdbc"),
        "breastmnist224": ImportRequest(kind="medmnist", source=str(write_resized_medmnist(
            shared_data / "breastmnist.npz", tmp_path, 224, rows_per_split=12)),
                                        name="breastmnist224"),
        "p12": ImportRequest(kind="physionet2012", source=str(shared_data / "physionet2012" / "set-a.tar.gz"),
                             outcomes=str(shared_data / "physionet2012" / "Outcomes-a.txt"), name="p12"),
        "abstracts": ImportRequest(kind="text", source=str(shared_data / "medical_abstracts.csv"), name="abstracts",
                                   text_column="medical_abstract", label_column="condition_label",
                                   label_names=str(shared_data / "medical_abstracts_labels.csv")),
    }
    configs = sorted(CONFIGS.glob("*.yaml"))
    assert {c.stem for c in configs} >= {"breastmnist_cnn", "ecg200_rnn", "cleveland_attention", "wdbc_attention",
                                         "physionet2012_rnn", "physionet2012_attention", "medical_abstracts_rnn",
                                         "medical_abstracts_attention", "medical_abstracts_linear",
                                         "breastmnist_cnn_224"}
    imported = set()
    for path in configs:
        config = load_config(path)
        name = config.data.dataset
        if name not in imported:
            import_dataset(local_storage, sources[name])
            imported.add(name)
        plan = plan_training(config, local_storage)
        assert plan.model_config["num_classes"] == len(plan.labels.classes)
    large = plan_training(load_config(CONFIGS / "breastmnist_cnn_224.yaml"), local_storage)
    assert large.preprocessor.input_shape == [1, 224, 224] and large.model_config["stem"] == "strided"
    cleveland = plan_training(load_config(CONFIGS / "cleveland_attention.yaml"), local_storage)
    assert cleveland.labels.classes == ["no_disease", "disease"]
    icu = plan_training(load_config(CONFIGS / "physionet2012_rnn.yaml"), local_storage)
    assert icu.labels.classes == ["survived", "died"] and icu.preprocessor.input_shape == [48, 46, 3]
    notes = plan_training(load_config(CONFIGS / "medical_abstracts_rnn.yaml"), local_storage)
    assert notes.labels.classes[0] == "neoplasms" and notes.preprocessor.input_shape == [256]
    assert notes.model_config["vocab_size"] == notes.preprocessor.vocabulary <= 8000
    linear = plan_training(load_config(CONFIGS / "medical_abstracts_linear.yaml"), local_storage)
    frequencies = linear.preprocessor.stats["document_frequencies"]
    assert frequencies["documents"] == linear.manifest["splits"]["train"]["rows"]
    assert len(frequencies["tokens"]) == linear.model_config["vocab_size"] and frequencies["bigrams"]
    # Counted by class from the train labels (Naive Bayes ratios), and by character n-gram.
    by_class = np.asarray(frequencies["tokens_by_class"])
    assert by_class.shape == (5, len(frequencies["tokens"]))
    np.testing.assert_array_equal(by_class.sum(0), frequencies["tokens"])  # each document in one class
    assert sum(linear.train_class_counts()) == frequencies["documents"]
    assert all(df >= frequencies["min_documents"] for _, df in frequencies["char_ngrams"])


@pytest.mark.parametrize("name", ["breastmnist_cnn", "ecg200_rnn", "ecg200_cnn"])
def test_evaluation_of_image_and_signal_checkpoints(local_storage, shared_data, tmp_path, name):
    """The driver-side evaluation feeds bare arrays (not Ray batches) to the preprocessor."""
    from medray.train.job import evaluate_stored_checkpoint
    from medray.train.models import build_model_from_config

    config = load_config(CONFIGS / f"{name}.yaml", ["eval.bootstrap=20"])
    request = {  # by the dataset the config trains on
        "breastmnist": ImportRequest(kind="medmnist", source=str(shared_data / "breastmnist.npz"),
                                     name="breastmnist"),
        "ecg200": ImportRequest(kind="ucr", source=str(shared_data), dataset="ECG200", name="ecg200"),
    }[config.data.dataset]
    import_dataset(local_storage, request)
    plan = plan_training(config, local_storage)
    model = build_model_from_config(config.model.family, plan.model_config)
    root = Path(local_storage.root.removeprefix("file://"))
    save_checkpoint(root / "runs" / "r" / "ckpt", model, config.model.family, plan.preprocessor, plan.labels,
                    plan.dataset_ref, progress={"epoch": 0, "history": []})
    report = evaluate_stored_checkpoint(local_storage, "runs/r/ckpt", tmp_path / "report", config)
    assert report["metrics"]["test"]["n"] == plan.manifest["splits"]["test"]["rows"]
    assert (tmp_path / "report" / "roc.png").exists()
    # The OOD figures: on test and every set the modality builds, plotted beside the others.
    ood = json.loads((tmp_path / "report" / "metrics.json").read_text())["ood"]
    assert ood["n_in_distribution"] == plan.manifest["splits"]["test"]["rows"]
    assert {"noise", "time_reversed" if plan.preprocessor.modality == "signal" else "pydicom_ct"} <= set(ood["sets"])
    assert ood["detector"]["method"] == config.eval.ood_method and "ood_scores.png" in report["files"]
    detector = report["ood_detector"]  # fitted on train, thresholded on val
    assert detector.method == "mahalanobis" and detector.n_val == plan.manifest["splits"]["val"]["rows"]
    assert detector.val_false_alarm <= detector.false_alarm_target == 0.05
    assert detector.dim == model.features_and_logits(torch.zeros(1, *plan.preprocessor.input_shape))[0].shape[1]
