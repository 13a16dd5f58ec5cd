"""The demo's synthetic stand-ins look like the real datasets to every config written for
them: the same class names, shapes and feature names, so a shipped config plans (label
map, positive class, class groups, model) on the stand-in unchanged."""

import pytest

from medray.cluster.config import load_config
from medray.demo.run import CONFIGS, MODELS, demo_requests, synthetic_request
from medray.cluster.storage import Storage
from medray.train.data.importers import import_dataset
from medray.train.job import plan_training


@pytest.fixture(scope="module")
def imported(tmp_path_factory, shared_data):
    """Each stand-in and its real dataset, imported side by side into one local store."""
    storage = Storage(str(tmp_path_factory.mktemp("store")))
    scratch = tmp_path_factory.mktemp("synthetic")
    real_requests, synthetic = demo_requests(shared_data, scratch, allow_download=False)
    assert synthetic == []  # every real file is in ../shared/data
    real = {r.name: import_dataset(storage, r) for r in real_requests}
    fake = {m.dataset: import_dataset(storage, synthetic_request(m.dataset, scratch)) for m in MODELS}
    return storage, real, fake


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.dataset)
def test_stand_in_matches_the_real_dataset(imported, model):
    _, real, fake = imported
    stand_in, original = fake[model.dataset], real[model.dataset]
    assert stand_in["name"] == f"{model.dataset}_synthetic"
    assert stand_in["classes"] == original["classes"]
    assert stand_in["modality"] == original["modality"]
    assert stand_in["schema"].get("shape") == original["schema"].get("shape")
    assert [f["name"] for f in stand_in["schema"].get("features", [])] == \
        [f["name"] for f in original["schema"].get("features", [])]
    assert "synthetic" in stand_in["license"] and "synthetic" not in original["license"]
    # Both classes occur in every split, so metrics and the gate are defined.
    for split in ("train", "val", "test"):
        assert all(n > 0 for n in stand_in["splits"][split]["class_counts"].values()), split


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.dataset)
def test_shipped_config_plans_on_the_stand_in_unchanged(imported, model):
    storage, real, fake = imported
    config = load_config(CONFIGS / model.config, [f"data.dataset={fake[model.dataset]['name']}"])
    plan = plan_training(config, storage)
    real_plan = plan_training(load_config(CONFIGS / model.config, [f"data.dataset={model.dataset}"]), storage)
    assert plan.labels.classes == real_plan.labels.classes  # merged and ordered as for the real data
    assert plan.labels.classes[1] == config.data.positive_class
    assert plan.preprocessor.input_shape == real_plan.preprocessor.input_shape
    assert plan.model_config == real_plan.model_config  # the same network is built


def test_without_sources_or_network_every_demo_dataset_is_a_stand_in(tmp_path):
    requests, synthetic = demo_requests(tmp_path / "empty", tmp_path / "scratch", allow_download=False)
    assert sorted(synthetic) == sorted(m.dataset for m in MODELS)
    assert {r.name for r in requests} == {"wdbc"} | {f"{m.dataset}_synthetic" for m in MODELS}


def test_the_table_names_stand_ins_and_sets_only_real_results_beside_published_ones():
    from medray.demo.report import results_table

    row = {"model": "image:breastmnist_cnn", "test_auroc": 0.9, "test_auroc_ci": [0.85, 0.95],
           "test_accuracy": 0.88, "promotion": "v1", "published": "AUC 0.901 (MedMNIST v2)"}
    table = results_table([{**row, "dataset": "breastmnist", "synthetic": False},
                           {**row, "dataset": "breastmnist_synthetic", "synthetic": True}]).splitlines()
    assert "SYNTHETIC" not in table[1] and table[1].endswith("AUC 0.901 (MedMNIST v2)")
    assert table[2].startswith("breastmnist_synthetic (SYNTHETIC)") and "MedMNIST" not in table[2]
    assert len({line.index("image:") for line in table[1:]}) == 1  # columns stay aligned
