"""The one name rule and `NAME@vN` parser (cluster/names.py), as the registry and the
datasets use it."""

import pytest

from medray.cluster.names import parse_versioned
from medray.cluster.registry import RegistryError, check_model_name
from medray.train.data.dataset import parse_ref


@pytest.mark.parametrize("name", ["nl\n", "UPPER", "-dash", ".dot", "a" * 65, "a/b", ""])
def test_model_name_rule_matches_the_whole_name(name):
    with pytest.raises(RegistryError, match="model name"):
        check_model_name(name)
    assert check_model_name("breast-cancer_v2.1") == "breast-cancer_v2.1"


@pytest.mark.parametrize("ref, expected", [("ecg", ("ecg", None)), ("ecg@v3", ("ecg", 3)), ("ecg@12", ("ecg", 12))])
def test_one_reference_syntax_for_datasets_and_models(ref, expected):
    assert parse_versioned(ref, "model", RegistryError) == expected == parse_ref(ref)
