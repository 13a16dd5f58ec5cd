"""How a search's trials run: what Tune reserves for them, where their checkpoints go,
and what data the search shares (no Ray: the sharing decision is made before any put)."""

import pytest

from medray.cluster.config import MedrayConfig
from medray.train.job import plan_data
from medray.tune import trial
from support.training import small_wdbc_config


def test_a_one_worker_trial_holds_its_own_cpu_or_gpu_and_a_trainer_trial_nothing():
    one = MedrayConfig.model_validate({"scaling": {"num_workers": 1, "cpus_per_worker": 2}})
    gpu = MedrayConfig.model_validate({"scaling": {"num_workers": 1, "use_gpu": True}})
    two = MedrayConfig.model_validate({"scaling": {"num_workers": 2}})
    assert [trial.trains_directly(c) for c in (one, gpu, two)] == [True, True, False]
    assert trial.trial_resources(one, True) == {"CPU": 2.0}
    assert trial.trial_resources(gpu, True) == {"CPU": 1.0, "GPU": 1}
    assert trial.trial_resources(two, False) == {"memory": 1}  # its TorchTrainer's workers hold the CPUs


def test_checkpoints_go_where_each_kind_of_trial_keeps_them():
    assert trial.trial_key("s1", "ab12", direct=True) == "runs/s1/trial_ab12"  # Tune's trial folder
    assert trial.trial_key("s1", "ab12", direct=False) == "runs/s1/trials/ab12"  # the TorchTrainer's run


def test_the_shared_size_is_known_from_the_manifest_before_reading(wdbc):
    data = plan_data(small_wdbc_config(), wdbc)
    for split in ("train", "val"):
        inputs, targets = data.split_arrays(wdbc, split)
        assert data.preprocessed_bytes(split) == inputs.nbytes + targets.nbytes
        assert inputs.shape == (data.manifest["splits"][split]["rows"], 30)


@pytest.mark.parametrize("direct, limit", [(False, 1 << 30), (True, 1000)])
def test_nothing_is_shared_for_trainer_trials_or_over_the_limit(wdbc, monkeypatch, direct, limit):
    monkeypatch.setattr(trial, "SHARE_LIMIT_BYTES", limit)  # WDBC's train + val: about 59 kB
    shared = trial.search_data(plan_data(small_wdbc_config(), wdbc), wdbc, direct)
    assert shared.splits is None and shared.data.manifest["name"] == "wdbc"
