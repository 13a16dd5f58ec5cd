"""Typed configuration, validated once.

A config is a YAML file plus `key=value` overrides from the command line
(`optim.lr=3e-4 data.dataset=wdbc`). Everything is checked here, before any work
starts; an invalid value is reported with its key, the value given and what is allowed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from medray.cluster.errors import ConfigError

SECRET_ERROR = "secret_in_config"
"""The validation error of a value that holds a secret: its message never repeats the value."""


class Section(BaseModel):
    """Base for every config section: unknown keys are errors, not silently ignored.

    A number given where a string is expected is that string: YAML and the override
    parser read `data.positive_class=1` as the int 1, but Pima's classes are "0" and "1"
    (the same goes for class_groups' names and a run named 2024). Bools stay refused."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False, coerce_numbers_to_str=True)


class StorageConfig(Section):
    """Where datasets, runs and models live, and how S3 is talked to."""

    root: str | None = None
    """`file:///path`, a plain path, or `s3://bucket/prefix`. None: `--storage`, then
    `MEDRAY_STORAGE`, then `file://~/.medray`."""
    server_side_encryption: Literal["AES256", "aws:kms", "none"] = "AES256"
    """Requested on every S3 write medray causes, Ray Train's checkpoints and Ray Tune's state
    included; "none" only for servers that reject the header."""
    kms_key_id: str | None = None
    """KMS key for `aws:kms`; None uses the bucket's default key."""
    max_attempts: int = Field(5, ge=1, le=20)
    """Attempts per S3 request; transient errors are retried with exponential backoff."""
    connect_timeout_s: float = Field(5.0, gt=0, le=120)

    @field_validator("root")
    @classmethod
    def _root_scheme(cls, value: str | None) -> str | None:
        if value is not None and "://" in value:
            scheme = value.split("://", 1)[0]
            if scheme not in ("file", "s3"):
                raise ValueError(f"scheme '{scheme}://' is not supported; use file:// or s3://")
        return value


class TextSection(Section):
    """How clinical text becomes token ids: a tokenizer trained on the train split only
    (Hugging Face `tokenizers`), saved inside the fitted preprocessing so that every
    checkpoint and registry version rebuilds it offline, id for id."""

    tokenizer: Literal["wordpiece", "bpe", "words"] = "wordpiece"
    """WordPiece (BERT's subwords), byte-pair encoding, or whole words (scikit-learn's
    TF-IDF terms: words of 2+ letters or digits, the rest [UNK]; for the linear model)."""
    vocab_size: int = Field(8000, ge=100, le=200_000)
    """Tokens in the vocabulary, the special ones included."""
    lowercase: bool = True
    min_documents: int = Field(5, ge=1)
    """A word enters the vocabulary only if at least this many training documents hold
    it: a patient's name or record number in their own notes does not, so it cannot be
    read back from a stored tokenizer; rarer words are spelled with subword pieces."""
    max_tokens: int = Field(256, ge=8, le=8192)
    """Tokens per document the model reads. Longer documents are truncated, keeping the
    beginning: a report's or an abstract's subject is stated first, and one document is
    one forward pass, which calibration, the conformal sets and the referral rule assume.
    The share of training documents truncated is recorded with the preprocessing."""


class DataConfig(Section):
    """Which dataset a job reads and how its classes are used. How a dataset is split and
    sized is fixed when it is imported (`ImportOptions` in train/data/importers.py)."""

    dataset: str | None = None
    """`NAME` or `NAME@vN` on storage; the latest version when no version is given."""
    class_groups: dict[str, list[str]] | None = None
    """Merge the dataset's classes into new ones, in label order, e.g.
    `{no_disease: ["0"], disease: ["1", "2", "3", "4"]}`. Every class must be named once."""
    positive_class: str | None = None
    """For two classes: the one sensitivity is measured for (made label 1)."""
    text: TextSection = TextSection()
    """Tokenization, for text datasets (ignored by the other modalities)."""


IMPORT_FLAGS = {"data.val_fraction": "--val-fraction", "data.test_fraction": "--test-fraction",
                "data.seed": "--seed", "data.image_size": "--size"}
"""Keys training configs once took that only an import reads: named in the refusal."""


class ModelConfig(Section):
    """Which architecture; its sizes come from the dataset's manifest."""

    family: Literal["cnn", "rnn", "attention", "linear"] = "cnn"
    preset: str = "seed"
    options: dict[str, Any] = {}
    """Hyperparameters of the preset (see `train/models/`), e.g. `{dropout: 0.3}`; checked
    against the model registry when a job is planned, before any training starts."""


class OptimConfig(Section):
    """AdamW (or Adam) with a linear warm-up then a cosine decay, stepped every batch."""

    optimizer: Literal["adamw", "adam"] = "adamw"
    """adamw: weight decay decoupled from the gradient (Loshchilov & Hutter 2019), for
    the neural presets. adam: weight_decay is an L2 term in the loss, so training
    minimises the penalised objective itself: what a linear model over sparse features
    needs (its rare terms' weights are otherwise shrunk at every step they are absent;
    Medical Abstracts tfidf in a plain loop: test macro-F1 0.55-0.59 with adamw, 0.63
    with adam)."""
    lr: float = Field(1e-3, gt=0, le=1.0)
    weight_decay: float = Field(1e-4, ge=0, le=1.0)
    batch_size: int = Field(64, ge=1, le=65536)
    """Global batch size; each worker takes batch_size / num_workers."""
    epochs: int = Field(30, ge=1, le=10000)
    warmup_epochs: float = Field(1.0, ge=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    class_weights: bool = False
    """Weight the loss by inverse class frequency (for imbalanced data)."""
    grad_clip: float | None = Field(1.0, gt=0)


class TrainConfig(Section):
    """Seeding, checkpoints, early stopping and augmentation."""

    seed: int = 0
    patience: int = Field(10, ge=0)
    """Stop after this many epochs without improvement of `metric`; 0 never stops early."""
    metric: Literal["val_auroc", "val_accuracy", "val_loss"] = "val_auroc"
    """Chooses the best checkpoints and drives early stopping."""
    keep_checkpoints: int = Field(2, ge=1, le=100)
    augment: bool = False
    """Training-time augmentation: images get random shifts and flips, signals random
    gain, small time shifts and noise; tables none."""
    cache_data: bool | Literal["auto"] = "auto"
    """true: keep each worker's shard in memory after the first epoch (the per-epoch
    streaming setup costs more than a small dataset's epoch); false: stream it from
    storage every epoch; auto: cache when the shard and the validation split, as the
    model reads them, take at most `loop.CACHE_MEMORY_SHARE` of the memory the worker's
    node has free, shared among the node's workers, and stream otherwise."""
    name: str | None = None
    """Run name under `{root}/runs/`; default: config file name + time."""
    folds: int = Field(1, ge=1, le=20)
    """1: one model, trained on train and chosen on val. K >= 2: K-fold cross-validation
    over train + val (stratified; `tune/crossval.py`), one model per fold, which together
    answer as an ensemble calibrated on their out-of-fold predictions."""

    @property
    def metric_mode(self) -> Literal["min", "max"]:
        return "min" if self.metric == "val_loss" else "max"


class ScalingSection(Section):
    """Data-parallel workers and what each needs; mapped onto Ray Train's ScalingConfig."""

    num_workers: int = Field(1, ge=1, le=4096)
    cpus_per_worker: float = Field(1.0, gt=0)
    use_gpu: bool = False
    max_failures: int = Field(1, ge=-1)
    """Worker failures to recover from (from the latest checkpoint); -1 without limit."""
    mixed_precision: Literal["auto", "bf16", "off"] = "auto"
    """bf16 autocast: "auto" uses it on GPUs that support it."""
    check_resources: bool = True
    """Refuse up front a request the cluster cannot place (turn off on an autoscaling
    cluster that will add nodes)."""
    sync_batch_norm: bool = True
    """With more than one worker, BatchNorm layers train on the moments of the global
    batch, not each worker's share (PyTorch's SyncBatchNorm on GPU, medray's
    GlobalBatchNorm over gloo on CPU: `train/models/batch_norm.py`), so adding workers
    does not change what the model learns from a batch."""
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    """How Ray places the workers: PACK fills a node first (fast collectives on one GPU
    box), SPREAD puts them on different nodes where it can (survives a lost node)."""


class EvalConfig(Section):
    """Evaluation of the finished model."""

    threshold_method: Literal["youden", "target_sensitivity", "argmax", "challenge"] = "youden"
    target_sensitivity: float | None = Field(None, gt=0, le=1)
    bootstrap: int = Field(1000, ge=0, le=100000)
    """Resamples for the AUROC confidence interval."""
    subgroups: list[str] = Field([], max_length=20)
    """Attributes to break the test metrics down by (`train/subgroups.py`): a name (each
    of its values a subgroup, e.g. `sex`, `ICUType`) or a condition `NAME OP NUMBER`
    (`age >= 65`: the cases where it holds, and the rest). Tables and ICU statics have them."""
    net_benefit_thresholds: list[float] = Field([0.05, 0.1, 0.2, 0.3, 0.5], min_length=1, max_length=99)
    """Threshold probabilities for decision curve analysis (binary models), each in (0, 1):
    the risk at which a clinician would act, so the net benefit is read where it matters."""
    ood_method: Literal["mahalanobis", "energy"] = "mahalanobis"
    """Out-of-distribution score (train/ood.py): Mahalanobis distance on the penultimate
    features, or the energy of the logits."""
    ood_false_alarm: float = Field(0.05, gt=0, lt=1)
    """Share of in-distribution validation cases the OOD threshold is chosen to flag."""

    @model_validator(mode="after")
    def _thresholds_are_probabilities(self) -> "EvalConfig":
        if not all(0 < t < 1 for t in self.net_benefit_thresholds):
            raise ValueError("eval.net_benefit_thresholds: each must lie strictly between 0 and 1")
        return self

    @model_validator(mode="after")
    def _target_given(self) -> "EvalConfig":
        if self.threshold_method == "target_sensitivity" and self.target_sensitivity is None:
            raise ValueError("threshold_method target_sensitivity needs eval.target_sensitivity")
        return self


class TuneSection(Section):
    """Hyperparameter search with Ray Tune; the trial budget is `optim.epochs`."""

    num_samples: int = Field(8, ge=1, le=10000)
    searcher: Literal["optuna", "random"] = "optuna"
    """Optuna's TPE (model-based) or random sampling."""
    grace_period: int = Field(2, ge=1)
    """ASHA: epochs every trial runs before it can be stopped."""
    reduction_factor: int = Field(3, ge=2)
    """ASHA: only the top 1/reduction_factor of trials go on at each rung."""
    time_budget_s: float | None = Field(None, gt=0)
    max_concurrent_trials: int | None = Field(None, ge=1)
    """Default: as many trials as the cluster's CPUs (or GPUs) can hold at once."""
    folds: int = Field(1, ge=1, le=20)
    """1: each trial trains once and is judged on val. K >= 2: each trial trains its
    config on K folds of train + val (`tune/cv_trials.py`), one after another, and is
    judged by the mean of its folds' best validation metric; ASHA's rungs count folds, and
    the best trial that ran all K becomes the search's result as an ensemble of its K
    models, like `train.folds`."""
    space: dict[str, dict[str, Any]] | None = None
    """Overrides the family's space in tune/spaces.py: `{"optim.lr": {"loguniform": [1e-4, 1e-2]},
    "model.preset": {"choice": ["seed", "resnet"]}}` (also uniform, randint, quniform)."""


class GateRule(Section):
    """One promotion threshold on an evaluated metric, e.g. `{metric: val.auroc, min: 0.85}`."""

    metric: str
    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _one_bound(self) -> "GateRule":
        if (self.min is None) == (self.max is None):
            raise ValueError(f"gate rule for '{self.metric}' needs exactly one of min or max")
        return self


class PromoteSection(Section):
    """What a model must reach to enter the registry, and what serving gets with it."""

    model_name: str | None = None
    """Registry name; default: the dataset's name."""
    gate: list[GateRule] = [
        GateRule(metric="val.auroc", min=0.80),
        GateRule(metric="test.ece_calibrated", max=0.15),
    ]
    coverage: float = Field(0.9, gt=0, lt=1)
    """Split-conformal coverage of the prediction sets serving returns."""
    make_champion: bool = True
    """Point champion.json at a version that passed the gate."""


class AutoscalingSection(Section):
    """Ray Serve autoscaling of each model deployment."""

    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(2, ge=1)
    target_ongoing_requests: float = Field(4, gt=0)
    upscale_delay_s: float = Field(2.0, ge=0)
    downscale_delay_s: float = Field(30.0, ge=0)

    @model_validator(mode="after")
    def _bounds(self) -> "AutoscalingSection":
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) exceeds max_replicas ({self.max_replicas})")
        return self


class ServeSection(Section):
    """Serving the registry's champions with Ray Serve."""

    models: list[str] = []
    """Registry names to serve; empty: every model that has a champion."""
    host: str | None = None
    """Bind address; default 0.0.0.0 when MEDRAY_API_TOKEN is set, else 127.0.0.1 only."""
    port: int = Field(8000, ge=1, le=65535)
    max_batch_size: int = Field(32, ge=1, le=4096)
    batch_wait_timeout_s: float = Field(0.0, ge=0, le=10)
    """How long a batch waits for more requests once it has one. 0: it takes what has
    queued, and under load requests queue while the previous forward pass runs, so
    batches still fill; a wait only adds latency at low load (measured: README, Serving)."""
    max_ongoing_requests: int = Field(64, ge=1)
    max_instances: int = Field(64, ge=1)
    """Most instances one predict request may hold."""
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    replica_cpus: float = Field(0.5, gt=0)
    """CPUs each model replica reserves (its torch threads follow)."""
    runtime: Literal["torch", "onnx"] = "torch"
    """What runs a replica's forward pass: PyTorch, or ONNX Runtime on the network exported
    when the replica loads it (faster on CPU: see benchmarks/serve_throughput.py's `runtimes`)."""
    autoscaling: AutoscalingSection = AutoscalingSection()


class RayConfig(Section):
    """Where jobs run: a local Ray (default) or a cluster."""

    address: str | None = None
    """`auto`, `ray://host:10001` or None for a local Ray started on demand."""
    num_cpus: int | None = Field(None, ge=1)
    """CPUs of a local Ray (default: all)."""


class TrackingSection(Section):
    """Experiment tracking in MLflow (`train/tracking.py`): each training run, and each
    search with its trials as child runs, gets its parameters, per-epoch metrics, final
    metrics and report plots. Off unless `mlflow_uri` is set. Credentials come from
    MLflow's own variables (`MLFLOW_TRACKING_TOKEN`, or `MLFLOW_TRACKING_USERNAME` and
    `_PASSWORD`) on the driver and the workers, never from the config."""

    mlflow_uri: str | None = None
    """The tracking server, `http(s)://host:port` (the `mlflow-skinny` client is enough:
    `pip install 'medray[tracking]'`), or a store the full `mlflow` package writes itself
    (`file:///path`, `sqlite:///path.db`, a database URL). None: no tracking."""
    experiment: str | None = None
    """MLflow experiment the runs go to (created if missing); default: the dataset's name."""

    @field_validator("mlflow_uri")
    @classmethod
    def _tracking_scheme(cls, value: str | None) -> str | None:
        schemes = ("http", "https", "file", "sqlite", "postgresql", "mysql", "mssql", "databricks")
        if value is not None and value.split("://", 1)[0].split("+", 1)[0] not in schemes:
            raise ValueError("not a tracking URI MLflow takes; use " + ", ".join(f"{s}://" for s in schemes))
        if value is not None and urlsplit(value).password is not None:
            # The config is recorded with every run (result, MLflow params): a password in it would be too.
            raise PydanticCustomError(SECRET_ERROR, "the URI holds a password, which would be stored with every "
                                      "run's config; give it through MLFLOW_TRACKING_USERNAME and "
                                      "MLFLOW_TRACKING_PASSWORD, or the database's own variables (PGPASSWORD, ...)")
        return value


class MedrayConfig(Section):
    """The whole configuration; each section validates itself."""

    storage: StorageConfig = StorageConfig()
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    scaling: ScalingSection = ScalingSection()
    eval: EvalConfig = EvalConfig()
    tune: TuneSection = TuneSection()
    promote: PromoteSection = PromoteSection()
    serve: ServeSection = ServeSection()
    ray: RayConfig = RayConfig()
    tracking: TrackingSection = TrackingSection()


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """`["a.b=1", "c=x"]` -> `{"a": {"b": 1}, "c": "x"}`; values are read as YAML scalars."""
    dotted: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override '{item}' is not of the form key=value")
        try:
            dotted[key.strip()] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            dotted[key.strip()] = raw
    return nest(dotted)


def nest(dotted: dict[str, Any]) -> dict[str, Any]:
    """`{"optim.lr": 1e-3}` -> `{"optim": {"lr": 1e-3}}` (overrides, a search's draws)."""
    nested: dict[str, Any] = {}
    for key, value in dotted.items():
        *parents, leaf = key.split(".")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"'{key}': '{part}' is a value, not a section")
        node[leaf] = value
    return nested


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """`base` with `update` laid over it, section by section (neither is changed)."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The keys allowed at `loc`'s parent, to say what would have been accepted."""
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return sorted(model.model_fields)


def describe_validation_error(error: ValidationError, model: type[BaseModel]) -> str:
    """One line per problem: key, value given, what is allowed."""
    lines = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        if item["type"] == "extra_forbidden" and key in IMPORT_FLAGS:
            lines.append(f"config key '{key}' is not a training setting: it belongs to the import "
                         f"(`medray data import ... {IMPORT_FLAGS[key]}`), which fixes a dataset's splits "
                         "and image size once for every run")
        elif item["type"] == "extra_forbidden":
            allowed = ", ".join(_allowed_keys(model, item["loc"]))
            lines.append(f"unknown config key '{key}'; allowed here: {allowed}")
        elif item["type"] == SECRET_ERROR:  # the value is not repeated: it holds a secret
            lines.append(f"config key '{key}' is not allowed: {item['msg']}")
        else:
            message = item["msg"].removeprefix("Value error, ")
            lines.append(f"config key '{key}': value {item.get('input')!r} is not allowed: {message}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def validate_config(raw: dict[str, Any], model: type[BaseModel] = MedrayConfig) -> Any:
    try:
        return model.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(describe_validation_error(error, model)) from None


# The configs the package ships (package data of medray.train), named as in the repository:
# `train/configs/wdbc_attention.yaml` is the same file from any folder, from an installed
# wheel and in a job on a cluster, where only the package travels.
SHIPPED_CONFIGS = Path("train/configs")


def config_file(path: str | os.PathLike) -> Path:
    """`path` when it is a file; else, for `train/configs/NAME.yaml`, the package's copy."""
    given = Path(path)
    if given.is_file() or given.parent != SHIPPED_CONFIGS:
        return given
    from importlib.resources import files

    return Path(str(files("medray.train").joinpath("configs", given.name)))


def load_config(
    path: str | os.PathLike | BaseModel | None = None,
    overrides: list[str] | None = None,
    model: type[BaseModel] = MedrayConfig,
) -> Any:
    """Read YAML (optional), apply `key=value` overrides, validate once. `path` may also
    be a config already loaded (the Python API's callers pass one), overridden in turn."""
    raw: dict[str, Any] = {}
    if isinstance(path, BaseModel):
        raw = path.model_dump(mode="json")
    elif path is not None:
        config_path = config_file(path)
        if not config_path.is_file():
            raise ConfigError(f"config file '{path}' does not exist")
        try:
            loaded = yaml.safe_load(config_path.read_text())
        except yaml.YAMLError as error:
            raise ConfigError(f"config file '{config_path}' is not valid YAML: {error}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file '{config_path}' must hold a mapping of sections")
        raw = loaded or {}
    raw = merge(raw, parse_overrides(overrides or []))
    return validate_config(raw, model)
