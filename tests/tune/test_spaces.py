"""Search spaces against the shipped configs: every draw is a valid config and model."""

from pathlib import Path

import pytest

from medray.cluster.config import load_config
from medray.cluster.errors import ConfigError
from medray.train.models import InputSpec, model_config_for
from medray.tune.spaces import SPACES, apply_params, base_point, check_space

CONFIGS = sorted((Path(__file__).parents[2] / "train" / "configs").glob("*.yaml"))
SHAPES = {"cnn": ("image", (1, 28, 28)), "rnn": ("signal", (96, 1)), "attention": ("tabular", (13,)),
          "linear": ("text", (64,), 500)}


def _draws(spec):
    (kind, args), = spec.items()
    return list(args) if kind in ("choice", "grid") else list(args[:2])


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_draw_of_the_family_space_builds_a_model(path):
    config = load_config(path)
    base = config.model_dump(mode="json")
    space = SPACES[config.model.family]
    check_space(space, base)
    spec = InputSpec(*SHAPES[config.model.family])
    for key, domain in space.items():
        for value in _draws(domain):
            for preset in _draws(space.get("model.preset", {"choice": [config.model.preset]})):
                trial = apply_params(base, {"model.preset": preset, key: value})
                model_config_for(trial.model.family, trial.model.preset, spec, 2, trial.model.options)


def test_switching_preset_drops_the_base_presets_options_but_keeps_drawn_ones():
    base = load_config(Path(__file__).parents[2] / "train/configs/wdbc_attention.yaml").model_dump(mode="json")
    shipped = base["model"]["options"]
    assert set(shipped) == {"dims"}  # the seed preset's option, which the FT-Transformer does not take
    same = apply_params(base, {"model.preset": "seed", "optim.lr": 0.01})
    assert same.model.options == shipped and same.optim.lr == 0.01
    other = apply_params(base, {"model.preset": "ft_transformer", "model.options.depth": 2})
    assert other.model.preset == "ft_transformer" and other.model.options == {"depth": 2}
    assert base["model"]["options"] == shipped  # the base itself is untouched


def test_malformed_space_is_refused_with_the_key_named():
    base = load_config(Path(__file__).parents[2] / "train/configs/wdbc_attention.yaml").model_dump(mode="json")
    with pytest.raises(ConfigError, match=r"tune.space\['optim.lr'\]: loguniform needs \[low, high\]"):
        check_space({"optim.lr": {"loguniform": [0.1, 0.01]}}, base)
    with pytest.raises(ConfigError, match="tune.space names 'optim.lrate'"):
        check_space({"optim.lrate": {"choice": [1]}}, base)


@pytest.mark.parametrize("key", ["data.positive_class", "scaling.num_workers", "eval.bootstrap"])
def test_a_space_cannot_vary_the_data_or_how_trials_run(key):
    base = load_config(Path(__file__).parents[2] / "train/configs/wdbc_attention.yaml").model_dump(mode="json")
    with pytest.raises(ConfigError, match=rf"tune.space\['{key}'\]: a search varies only model.\*, optim.\*, train.\* keys"):
        check_space({key: {"choice": [1, 2]}}, base)


def test_base_point_takes_the_configs_own_values_that_the_space_can_draw():
    base = load_config(Path(__file__).parents[2] / "train/configs/breastmnist_cnn.yaml").model_dump(mode="json")
    point = base_point(SPACES["cnn"], base)
    # The config leaves dropout to the resnet preset, whose default is then the base value.
    from medray.train.models import FAMILIES

    assert point == {"model.preset": "resnet", "optim.lr": 0.001, "optim.weight_decay": 0.0001,
                     "optim.batch_size": 32, "train.augment": True,
                     "model.options.dropout": FAMILIES["cnn"].presets["resnet"]["dropout"]}
    assert base_point({"optim.lr": {"uniform": [0.01, 0.1]}}, base) is None  # 0.001 cannot be drawn
    assert base_point({"optim.batch_size": {"choice": [8, 16]}}, base) is None


@pytest.mark.parametrize("searcher", ["random", "optuna"])
def test_the_searcher_holds_no_more_trials_than_the_concurrency_limit(searcher):
    from ray import tune

    from medray.tune.run import _searcher

    config = load_config(Path(__file__).parents[2] / "train/configs/wdbc_attention.yaml",
                         [f"tune.searcher={searcher}", "tune.max_concurrent_trials=2"])
    search = _searcher(config, None, False)
    space = {"optim.lr": tune.loguniform(1e-4, 1e-2)}
    if searcher == "random":  # a SearchGenerator: it hands out whole trials
        search.add_configurations({"search": {"run": lambda _: None, "config": space, "num_samples": 4}})
        first, second, third = (search.next_trial() for _ in range(3))
        assert first and second and third is None
        search.on_trial_complete(first.trial_id)
        assert search.next_trial() is not None
    else:  # a Searcher: it suggests configs for trial ids
        assert search.set_search_properties("val_auroc", "max", space)
        assert search.suggest("a") and search.suggest("b") and search.suggest("c") is None
        search.on_trial_complete("a", {"val_auroc": 0.5, "training_iteration": 1})
        assert search.suggest("c") is not None
