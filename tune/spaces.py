"""Search spaces over the training config, one per model family.

Keys are dotted config keys (the same as `key=value` overrides). Following the tuning
playbook, each parameter is labelled:
  scientific: what the search is about (architecture, learning rate);
  nuisance:   must be tuned for a fair comparison of the scientific ones;
  fixed:      held constant on purpose (stated, not searched).
"""

from __future__ import annotations

from typing import Any

from medray.cluster.config import MedrayConfig, merge, nest, validate_config
from medray.cluster.errors import ConfigError

# Each entry: dotted key -> (kind, arguments). Kept as data so a YAML `tune.space` uses
# the same form and both are validated by one function.
SPACES: dict[str, dict[str, dict[str, Any]]] = {
    "cnn": {
        "model.preset": {"choice": ["seed", "resnet"]},          # scientific
        "optim.lr": {"loguniform": [3e-4, 3e-3]},                # scientific
        "optim.weight_decay": {"loguniform": [1e-5, 1e-2]},      # nuisance
        "optim.batch_size": {"choice": [32, 64]},                # nuisance
        "model.options.dropout": {"uniform": [0.0, 0.5]},        # nuisance
        "train.augment": {"choice": [True, False]},              # nuisance
        # fixed: optim.epochs (the ASHA budget), warm-up, seed
    },
    "rnn": {
        "model.preset": {"choice": ["seed", "bigru"]},           # scientific
        "optim.lr": {"loguniform": [3e-4, 1e-2]},                # scientific
        "model.options.hidden_size": {"choice": [32, 64, 128]},  # scientific (width)
        "optim.weight_decay": {"loguniform": [1e-5, 1e-2]},      # nuisance
        "optim.batch_size": {"choice": [16, 32]},                # nuisance
        "model.options.dropout": {"uniform": [0.0, 0.4]},        # nuisance
        # fixed: optim.epochs, num_layers (preset default), seed
    },
    "attention": {
        "model.preset": {"choice": ["seed", "ft_transformer"]},  # scientific
        "optim.lr": {"loguniform": [1e-4, 3e-3]},                # scientific
        "optim.weight_decay": {"loguniform": [1e-5, 1e-1]},      # nuisance
        "optim.batch_size": {"choice": [16, 32, 64]},            # nuisance
        "optim.label_smoothing": {"uniform": [0.0, 0.1]},        # nuisance
        # fixed: optim.epochs, token width and depth (preset defaults), seed
    },
    "linear": {
        "model.preset": {"choice": ["tfidf", "nb_tfidf"]},       # scientific
        "optim.weight_decay": {"loguniform": [1e-4, 3e-3]},      # scientific (L2 strength)
        "optim.lr": {"loguniform": [0.01, 0.2]},                 # nuisance
        # fixed: optim.optimizer (adam: L2 in the loss), epochs, buckets, seed
    },
}

KINDS = ("choice", "grid", "uniform", "loguniform", "randint", "quniform")
SEARCHABLE = ("model.", "optim.", "train.")
"""The sections a search varies. The data and its preprocessing are fixed, so every trial
is judged on the same task and the search prepares them once (`tune/trial.py`); so are
the scaling (how a trial runs) and everything after training."""


def space_for(config: MedrayConfig) -> dict[str, dict[str, Any]]:
    return dict(config.tune.space) if config.tune.space else dict(SPACES[config.model.family])


def to_tune(space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Our space -> Ray Tune domains, keyed by the dotted config key."""
    from ray import tune

    domains = {}
    for key, spec in space.items():
        (kind, args), = spec.items()
        if kind == "choice":
            domains[key] = tune.choice(list(args))
        elif kind == "grid":  # every value, in order (each repeated tune.num_samples times)
            domains[key] = tune.grid_search(list(args))
        else:
            domains[key] = getattr(tune, kind)(*args)
    return domains


def base_point(space: dict[str, dict[str, Any]], base: dict[str, Any]) -> dict[str, Any] | None:
    """The base config's own value of every searched key (a model option it leaves unset
    takes its preset's default), to be searched first: a search then never ends below
    the config it started from on the validation metric. None when some value lies
    outside the space, which then cannot draw the base config."""
    from medray.train.models import FAMILIES

    model = base["model"]
    preset_defaults = FAMILIES[model["family"]].presets.get(model["preset"], {})
    point = {}
    for key, spec in space.items():
        node: Any = base
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is None and key.startswith("model.options."):
            node = preset_defaults.get(key.removeprefix("model.options."))
        (kind, args), = spec.items()
        if node is None or isinstance(node, bool) != isinstance(args[0], bool):
            return None
        if not (node in args if kind in ("choice", "grid") else args[0] <= node <= args[1]):
            return None
        point[key] = node
    return point


def apply_params(base: dict[str, Any], params: dict[str, Any]) -> MedrayConfig:
    """The base config (as a dict) with one trial's sampled values, validated."""
    preset = params.get("model.preset")
    if preset is not None and preset != base.get("model", {}).get("preset"):
        # The base config's model.options tune its own preset (e.g. the seed attention's
        # `dims`); a trial on another preset starts from that preset's defaults plus
        # whatever options the trial itself drew.
        base = {**base, "model": {**base["model"], "options": {}}}
    return validate_config(merge(base, nest(params)))


def check_space(space: dict[str, dict[str, Any]], base: dict[str, Any]) -> None:
    """Fail before any trial starts if a key does not exist or a range is malformed."""
    for key, spec in space.items():
        if not key.startswith(SEARCHABLE):
            raise ConfigError(f"tune.space['{key}']: a search varies only {', '.join(p + '*' for p in SEARCHABLE)} "
                              f"keys; set '{key}' in the config instead (it is the same for every trial)")
        if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in KINDS:
            raise ConfigError(f"tune.space['{key}'] must be one of {', '.join(KINDS)} with its arguments, "
                              f"e.g. {{loguniform: [1e-4, 1e-2]}}")
        (kind, args), = spec.items()
        if kind in ("choice", "grid"):
            if not isinstance(args, list) or not args:
                raise ConfigError(f"tune.space['{key}']: {kind} needs a non-empty list")
            samples = args
        else:
            if not isinstance(args, list) or len(args) not in (2, 3) or not args[0] < args[1]:
                raise ConfigError(f"tune.space['{key}']: {kind} needs [low, high] with low < high")
            samples = args[:2]
        for value in samples:
            try:
                apply_params(base, {key: value})
            except ConfigError as error:
                raise ConfigError(f"tune.space names '{key}', which the config does not accept: {error}") from None
