"""Run and search names become folders under `runs/`; resuming unpickles what is there."""

import pytest

from medray.cluster.config import MedrayConfig
from medray.cluster.errors import ConfigError
from medray.train.job import run_name
from medray.tune.run import run_search, search_name

BAD_NAMES = ["nl\n", "../outside", "a/b", ".hidden", "x" * 101]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_resume_name_is_checked_before_anything_is_read(local_storage, name):
    # A search state a traversing name would reach, outside runs/.
    local_storage.write_json("outside/search.json", {"base": MedrayConfig().model_dump(mode="json"), "space": {}})
    with pytest.raises(ConfigError, match="--resume"):
        run_search(MedrayConfig(), local_storage, resume=name)


@pytest.mark.parametrize("name", BAD_NAMES)
def test_run_and_search_names_match_the_whole_rule(name):
    config = MedrayConfig(train={"name": name})
    with pytest.raises(ConfigError, match="train.name"):
        run_name(config, "stem")
    with pytest.raises(ConfigError, match="train.name"):
        search_name(config, "stem")
    assert run_name(MedrayConfig(train={"name": "ecg200-rnn_v1.2"}), "stem") == "ecg200-rnn_v1.2"
