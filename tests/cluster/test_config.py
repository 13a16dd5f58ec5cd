import pytest

from medray.cluster.config import MedrayConfig, OptimConfig, load_config, merge, parse_overrides, validate_config
from medray.cluster.errors import ConfigError


def test_overrides_nest_and_read_yaml_scalars():
    assert parse_overrides(["train.seed=7", "storage.root=s3://b/p", "train.patience=", "a.b.c=true"]) == {
        "train": {"seed": 7, "patience": None},
        "storage": {"root": "s3://b/p"},
        "a": {"b": {"c": True}},
    }


def test_yaml_then_overrides_win(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  seed: 3\n  patience: 4\nstorage:\n  server_side_encryption: none\n")
    config = load_config(path, ["train.seed=11"])
    assert isinstance(config, MedrayConfig)
    assert config.train.seed == 11
    assert config.train.patience == 4
    assert config.storage.server_side_encryption == "none"
    assert config.optim.lr == OptimConfig().lr


def test_invalid_value_names_key_value_and_what_is_allowed():
    with pytest.raises(ConfigError) as error:
        load_config(None, ["storage.server_side_encryption=rot13"])
    message = str(error.value)
    assert "storage.server_side_encryption" in message
    assert "'rot13'" in message
    assert "'AES256'" in message and "'aws:kms'" in message


def test_out_of_range_value_says_the_bound():
    with pytest.raises(ConfigError, match=r"optim.label_smoothing.*1.5.*less than 1"):
        load_config(None, ["optim.label_smoothing=1.5"])


def test_unknown_key_lists_allowed_keys():
    with pytest.raises(ConfigError) as error:
        load_config(None, ["data.datset=wdbc"])
    assert "unknown config key 'data.datset'" in str(error.value)
    assert "allowed here: class_groups, dataset, positive_class" in str(error.value)


@pytest.mark.parametrize("key, flag", [("val_fraction", "--val-fraction"), ("test_fraction", "--test-fraction"),
                                       ("image_size", "--size"), ("seed", "--seed")])
def test_an_import_option_in_a_training_config_says_where_it_belongs(key, flag):
    with pytest.raises(ConfigError) as error:
        load_config(None, ["data.dataset=wdbc", f"data.{key}=0.2"])
    assert str(error.value).splitlines()[1].strip() == (
        f"config key 'data.{key}' is not a training setting: it belongs to the import "
        f"(`medray data import ... {flag}`), which fixes a dataset's splits and image size once for every run")


def test_a_number_where_a_name_is_expected_is_that_name():
    config = load_config(None, ["data.positive_class=1", "data.class_groups={0: [0], 1: [1, 2]}",
                                "train.name=2024", "serve.models=[7]"])
    assert config.data.positive_class == "1"
    assert config.data.class_groups == {"0": ["0"], "1": ["1", "2"]}
    assert (config.train.name, config.serve.models) == ("2024", ["7"])
    assert config.optim.batch_size == 64 and load_config(None, ["optim.batch_size=32"]).optim.batch_size == 32
    with pytest.raises(ConfigError, match="data.positive_class.*True"):  # a bool is not a class name
        load_config(None, ["data.positive_class=true"])


def test_merge_lays_sections_over_each_other_and_nesting_refuses_a_value_as_section():
    base = {"optim": {"lr": 0.1, "epochs": 3}, "model": {"options": {"dims": [32]}}}
    assert merge(base, {"optim": {"lr": 0.2}, "model": {"options": {}}}) == {
        "optim": {"lr": 0.2, "epochs": 3}, "model": {"options": {"dims": [32]}}}
    assert base["optim"]["lr"] == 0.1  # not changed in place
    with pytest.raises(ConfigError, match="'optim.lr.x': 'lr' is a value, not a section"):
        parse_overrides(["optim.lr=1", "optim.lr.x=2"])


def test_unknown_scheme_and_bad_override_syntax():
    with pytest.raises(ConfigError, match="gs://"):
        validate_config({"storage": {"root": "gs://bucket"}})
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["data.seed"])


def test_missing_or_malformed_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)


def test_a_shipped_config_name_works_from_any_folder_and_a_local_file_comes_first(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no train/configs/ here: the package's copy
    shipped = load_config("train/configs/wdbc_attention.yaml")
    assert shipped.data.dataset == "wdbc" and shipped.model.family == "attention"
    (tmp_path / "train" / "configs").mkdir(parents=True)
    (tmp_path / "train" / "configs" / "wdbc_attention.yaml").write_text("data: {dataset: mine}\n")
    assert load_config("train/configs/wdbc_attention.yaml").data.dataset == "mine"
    with pytest.raises(ConfigError, match="config file 'train/configs/nope.yaml' does not exist"):
        load_config("train/configs/nope.yaml")
