"""Experiment tracking in MLflow (`tracking.mlflow_uri`): thin functions over `MlflowClient`.

    connect       in planning: MLflow importable, its server answering, the experiment
                  there (created if missing); any problem is one line, before training
    start_run     a run with the config's parameters (a search's trial: a child run)
    log_epoch     one epoch's metrics at step = epoch (from rank 0 of a training run, from
                  the driver for a search's trials)
    log_final     the evaluated metrics and the report folder (plots, metrics.json)
    ending        ends a run FINISHED, FAILED (an error) or KILLED (Ctrl-C)

Only parameters, aggregate metrics and the report's plots go to MLflow, never a case.
Only `import mlflow` is used: the `mlflow-skinny` client (`medray[tracking]`) or the full
package both provide it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import json
import logging
import re
import time
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlsplit, urlunsplit

from medray.cluster.config import MedrayConfig, TrackingSection
from medray.cluster.errors import ConfigError

log = logging.getLogger(__name__)

TRACKED_SECTIONS = ("data", "model", "optim", "train", "scaling", "eval")
"""The config sections a run's parameters come from (storage, serving and Ray are where
it ran, not what it trained)."""
EPOCH_METRICS = ("train_loss", "val_loss", "val_auroc", "val_accuracy", "lr", "epoch_seconds")
TRIAL_TAG = "medray.trial"
"""Tags a search's child run with its trial ID: a resumed search finds the trial's run again."""
PARENT_TAG = "mlflow.parentRunId"
"""MLflow's own tag for a child run, which its UI nests under the parent."""
MAX_PARAM_LENGTH = 6000
BATCH = 100
"""Parameters or metrics per `log_batch` request (MLflow takes at most 100 parameters)."""
_KEY = re.compile(r"^[\w./\- ]+$")
"""What MLflow allows in a parameter or metric name."""
_NOT_IN_KEY = re.compile(r"[^\w./\- ]")


@dataclasses.dataclass(frozen=True)
class TrackedRun:
    """One MLflow run, by tracking URI and run ID: what a training run's workers are
    handed (in `WorkerPlan.tracking`) to log their epochs to."""

    uri: str
    run_id: str


@dataclasses.dataclass(frozen=True)
class Tracker:
    """An MLflow experiment that answered when the job was planned."""

    uri: str
    experiment_id: str

    def start_run(self, name: str, params: dict[str, str], parent: TrackedRun | None = None,
                  tags: dict[str, str] | None = None) -> TrackedRun:
        tags = {**(tags or {}), **({PARENT_TAG: parent.run_id} if parent else {})}
        run = TrackedRun(self.uri, client(self.uri).create_run(self.experiment_id, run_name=name,
                                                               tags=tags).info.run_id)
        _log_batch(run, params=params)
        return run

    def trial_run(self, parent: TrackedRun, trial_id: str, params: dict[str, str]) -> TrackedRun:
        """The child run of `parent` for a trial: the one it already has (a trial restarted
        or resumed, reopened as RUNNING), else a new one with the trial's drawn values."""
        found = client(self.uri).search_runs(
            [self.experiment_id], max_results=1,
            filter_string=f"tags.`{PARENT_TAG}` = '{parent.run_id}' and tags.`{TRIAL_TAG}` = '{trial_id}'")
        if not found:
            return self.start_run(trial_id, params, parent=parent, tags={TRIAL_TAG: trial_id})
        run = TrackedRun(self.uri, found[0].info.run_id)
        client(self.uri).update_run(run.run_id, status="RUNNING")
        return run


@functools.cache
def client(uri: str):
    """`MlflowClient` for `uri`, one per process; a missing MLflow is one line."""
    try:
        from mlflow import MlflowClient
    except ImportError:
        raise ConfigError("tracking.mlflow_uri is set but MLflow is not installed: "
                          "pip install 'medray[tracking]'") from None
    return MlflowClient(tracking_uri=uri)


def shown(uri: str) -> str:
    """`uri` without a user name or password, to print."""
    parts = urlsplit(uri)
    if not (parts.username or parts.password):
        return uri
    host = f"{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}"
    return urlunsplit(parts._replace(netloc=host))


def default_experiment(config: MedrayConfig) -> str:
    """`tracking.experiment`, else the dataset's name (without its version)."""
    return config.tracking.experiment or (config.data.dataset or "medray").split("@", 1)[0]


def connect(section: TrackingSection, experiment: str) -> Tracker | None:
    """The experiment `experiment` on `section.mlflow_uri` (created if missing), or None
    when tracking is off. Fails with one line when MLflow is missing or does not answer."""
    uri = section.mlflow_uri
    if uri is None:
        return None
    tracking = client(uri)
    if uri.startswith(("http://", "https://")):
        _check_answers(uri)
    from mlflow.exceptions import MlflowException

    try:
        found = tracking.get_experiment_by_name(experiment)
        if found is not None and found.lifecycle_stage == "deleted":
            raise ConfigError(f"MLflow experiment '{experiment}' at {shown(uri)} is deleted: restore it "
                              "or set tracking.experiment")
        try:
            experiment_id = found.experiment_id if found else tracking.create_experiment(experiment)
        except MlflowException as error:  # another job created it since
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            experiment_id = tracking.get_experiment_by_name(experiment).experiment_id
    except MlflowException as error:
        raise ConfigError(f"MLflow at {shown(uri)} refused experiment '{experiment}': "
                          f"{str(error).splitlines()[0]}") from None
    return Tracker(uri, experiment_id)


def _check_answers(uri: str) -> None:
    # MLflow's client retries a refused connection for about 4 minutes (7 retries with
    # backoff) before it gives up: one plain request says at once that nothing listens.
    import httpx

    try:
        httpx.get(uri, timeout=10)  # any HTTP answer, even 401 or 404, is a server
    except httpx.HTTPError as error:
        raise ConfigError(f"tracking.mlflow_uri: no MLflow server answers at {shown(uri)} ({error})") from None


def config_params(config: MedrayConfig, sections: tuple[str, ...] = TRACKED_SECTIONS,
                  extra: dict[str, Any] | None = None) -> dict[str, str]:
    """The config's settings as MLflow parameters, `optim.lr` -> "0.001", with `extra`
    (e.g. the resolved dataset `NAME@vN`) beside them."""
    dumped = config.model_dump(mode="json")
    params: dict[str, str] = {}
    for section in sections:
        _flatten_params(dumped[section], section, params)
    return {**params, **param_values(extra or {})}


def param_values(values: dict[str, Any]) -> dict[str, str]:
    """Values as MLflow parameters (text): a search trial's draws, `{"optim.lr": 0.003}`."""
    return {key: _param_value(value) for key, value in values.items()}


def _flatten_params(value: Any, key: str, into: dict[str, str]) -> None:
    # A mapping whose keys MLflow cannot name (class names in class_groups) stays one value.
    if isinstance(value, dict) and value and all(_KEY.match(str(k)) for k in value):
        for name, item in value.items():
            _flatten_params(item, f"{key}.{name}", into)
    else:
        into[key] = _param_value(value)


def _param_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text[:MAX_PARAM_LENGTH]


def numeric_metrics(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Every number in nested `metrics`, named by its path (`test.auroc`,
    `test.net_benefit.0.1`); lists (curves, intervals) and text are left out."""
    flat: dict[str, float] = {}
    for name, value in metrics.items():
        key = prefix + _NOT_IN_KEY.sub("_", str(name))
        if isinstance(value, dict):
            flat.update(numeric_metrics(value, f"{key}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[key] = float(value)
    return flat


_unanswered: set[str] = set()
"""Runs whose epoch logging failed in this process: not retried every epoch."""


def log_epoch(run: TrackedRun, metrics: dict[str, Any], step: str = "epoch") -> None:
    """One epoch's metrics (`EPOCH_METRICS`) at step = `metrics[step]`, the epoch (or a
    cross-validated trial's fold). A failure is a warning, not the end of training: the
    run's results are on storage whether MLflow has them or not."""
    if run.run_id in _unanswered:
        return
    values = {key: float(metrics[key]) for key in EPOCH_METRICS if metrics.get(key) is not None}
    try:
        _log_batch(run, metrics=values, step=int(metrics[step]))
    except Exception as error:  # MLflow's own errors and the connection's alike
        _unanswered.add(run.run_id)
        log.warning("MLflow run %s: epoch metrics not logged, and no more will be (%s)", run.run_id,
                    str(error).splitlines()[0])


def log_final(run: TrackedRun, metrics: dict[str, Any], report: Path | None = None) -> None:
    """The evaluated metrics (`numeric_metrics` of them) and the files of `report`
    (metrics.json and the plots) as the run's artifacts."""
    _log_batch(run, metrics=numeric_metrics(metrics))
    if report is not None:
        client(run.uri).log_artifacts(run.run_id, str(report))


def set_tags(run: TrackedRun, tags: dict[str, Any]) -> None:
    for key, value in tags.items():
        client(run.uri).set_tag(run.run_id, key, str(value))


def _log_batch(run: TrackedRun, params: dict[str, str] | None = None, metrics: dict[str, float] | None = None,
               step: int = 0) -> None:
    from mlflow.entities import Metric, Param

    now = int(time.time() * 1000)
    entities = [Param(k, v) for k, v in (params or {}).items()] + \
        [Metric(k, v, now, step) for k, v in (metrics or {}).items()]
    for start in range(0, len(entities), BATCH):
        chunk = entities[start:start + BATCH]
        client(run.uri).log_batch(run.run_id, params=[e for e in chunk if isinstance(e, Param)],
                                  metrics=[e for e in chunk if isinstance(e, Metric)])


def end_run(run: TrackedRun, status: str) -> None:
    # MLflow prints two lines with the run's address to stdout, which `--json` keeps for
    # the JSON alone (and a search would print them for every trial).
    with contextlib.redirect_stdout(io.StringIO()):
        client(run.uri).set_terminated(run.run_id, status)


@contextlib.contextmanager
def ending(run: TrackedRun | None) -> Iterator[None]:
    """Ends `run` (if any) when the block does: FINISHED, KILLED on Ctrl-C, FAILED on an error."""
    if run is None:
        yield
        return
    try:
        yield
    except KeyboardInterrupt:
        end_run(run, "KILLED")
        raise
    except BaseException:
        end_run(run, "FAILED")
        raise
    end_run(run, "FINISHED")
