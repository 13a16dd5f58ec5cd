import pytest

from medray.cluster.config import DataConfig, MedrayConfig, load_config, parse_overrides, validate_config
from medray.cluster.errors import ConfigError


def test_overrides_nest_and_read_yaml_scalars():
    assert parse_overrides(["data.seed=7", "storage.root=s3://b/p", "data.val_fraction=0.25", "a.b.c=true"]) == {
        "data": {"seed": 7, "val_fraction": 0.25},
        "storage": {"root": "s3://b/p"},
        "a": {"b": {"c": True}},
    }


def test_yaml_then_overrides_win(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  seed: 3\n  image_size: 32\nstorage:\n  server_side_encryption: none\n")
    config = load_config(path, ["data.seed=11"])
    assert isinstance(config, MedrayConfig)
    assert config.data.seed == 11
    assert config.data.image_size == 32
    assert config.storage.server_side_encryption == "none"
    assert config.data.val_fraction == DataConfig().val_fraction


def test_invalid_value_names_key_value_and_what_is_allowed():
    with pytest.raises(ConfigError) as error:
        load_config(None, ["storage.server_side_encryption=rot13"])
    message = str(error.value)
    assert "storage.server_side_encryption" in message
    assert "'rot13'" in message
    assert "'AES256'" in message and "'aws:kms'" in message


def test_out_of_range_value_says_the_bound():
    with pytest.raises(ConfigError, match=r"data.val_fraction.*1.5.*less than 0.9"):
        load_config(None, ["data.val_fraction=1.5"])


def test_unknown_key_lists_allowed_keys():
    with pytest.raises(ConfigError) as error:
        load_config(None, ["data.sede=1"])
    assert "unknown config key 'data.sede'" in str(error.value)
    assert "seed" in str(error.value) and "val_fraction" in str(error.value)


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
