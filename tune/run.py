"""Hyperparameter search: Ray Tune runs one function trainable per trial (`tune/trial.py`).

A one-worker trial trains in its function; a multi-worker trial launches a TorchTrainer
(Ray Train V2) whose workers report through `TuneReportCallback`. Either way every epoch
reaches Tune, so ASHA can stop a trial early. A cross-validated trial (`tune.folds`,
`tune/cv_trials.py`) reports once per fold instead, and ASHA's rungs count folds.
Everything lands under `{root}/runs/{search}/`: Tune's state (what `--resume`
restores), each trial's checkpoints (`trial_key`), and `search.json` (the base config,
the space and how the trials run) written before the first trial.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ray.tune import Callback
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from medray.cluster.config import MedrayConfig, validate_config
from medray.cluster.errors import ConfigError, MedrayError, NotFoundError
from medray.cluster.names import check_run_name
from medray.cluster.storage import Storage
from medray.tune.crossval import plan_folds
from medray.tune.cv_trials import best_trial_ensemble, check_cv_search, cv_trial_record, run_cv_trial
from medray.tune.spaces import apply_params, base_point, check_space, space_for, to_tune
from medray.tune.trial import TRIAL_PREFIX, trains_directly, trial_key

if TYPE_CHECKING:
    from medray.train.job import DataPlan
    from medray.tune.crossval import FoldPlan
    from medray.train.tracking import TrackedRun, Tracker

log = logging.getLogger(__name__)

SEARCH_FILE = "search.json"


def search_name(config: MedrayConfig, config_name: str | None) -> str:
    from medray.train.job import run_name

    return run_name(config, f"tune-{config_name or config.model.family}")


def _check_models(base: dict[str, Any], data: DataPlan, space: dict[str, dict[str, Any]]) -> None:
    """Every preset x option value the space can draw builds a model for this dataset,
    so a bad combination fails here, once, rather than in every trial that draws it."""
    from medray.train.models import InputSpec, model_config_for

    config = validate_config(base)
    spec = InputSpec(data.manifest["modality"], tuple(data.preprocessor.input_shape), data.preprocessor.vocabulary)

    def values(spec: dict[str, Any]) -> list:
        (kind, args), = spec.items()
        return list(args) if kind in ("choice", "grid") else list(args[:2])

    presets = values(space["model.preset"]) if "model.preset" in space else [config.model.preset]
    option_draws = [{key: value} for key, spec in space.items() if key.startswith("model.options.")
                    for value in values(spec)] or [{}]
    for preset in presets:
        for draw in option_draws:
            trial = apply_params(base, {"model.preset": preset, **draw})
            model_config_for(trial.model.family, trial.model.preset, spec, len(data.labels.classes),
                             trial.model.options)


def concurrency(config: MedrayConfig) -> int:
    import ray

    if config.tune.max_concurrent_trials:
        return config.tune.max_concurrent_trials
    total = ray.cluster_resources()
    per_trial_cpu = config.scaling.num_workers * config.scaling.cpus_per_worker
    fit = int(total.get("CPU", 0) // per_trial_cpu)
    if config.scaling.use_gpu:
        fit = min(fit, int(total.get("GPU", 0) // config.scaling.num_workers))
    return max(1, fit)


def _trial_name(trial) -> str:
    return f"{TRIAL_PREFIX}{trial.trial_id}"


class IncumbentASHA(ASHAScheduler):
    """ASHA that never stops the incumbent: the trial running the base config itself.

    Rungs compare trials early in their budget, but with warm-up + cosine schedules
    (and augmentation) a good config often climbs late: ASHA stopped the shipped
    BreastMNIST config at epoch 10 with validation AUROC 0.89, which reaches 0.97 by
    epoch 36. Running the incumbent to its full budget costs one trial and means a
    search never ends below the config it started from on the validation metric.
    Its results still count in the rungs that judge the other trials."""

    def __init__(self, incumbent: dict[str, Any] | None = None, **asha: Any) -> None:
        super().__init__(**asha)
        self.incumbent = dict(incumbent or {})

    def on_trial_result(self, tune_controller, trial, result):
        decision = super().on_trial_result(tune_controller, trial, result)
        if self.incumbent and all(trial.config.get(k) == v for k, v in self.incumbent.items()):
            return TrialScheduler.CONTINUE
        return decision


class TrialClock(Callback):
    """When Tune started and ended each trial (driver clock), for the start-up breakdown;
    made when the search starts (`created`)."""

    def __init__(self) -> None:
        self.created = time.time()
        self.started: dict[str, float] = {}
        self.ended: dict[str, float] = {}

    def on_trial_start(self, iteration, trials, trial, **info):
        self.started[trial.trial_id] = time.time()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.ended[trial.trial_id] = time.time()

    on_trial_error = on_trial_complete

    def spans(self) -> dict[str, float] | None:
        """Seconds from this clock's making to the first trial's start, and from then to
        the last trial's end; None when no trial ran under it."""
        if not (self.started and self.ended):
            return None
        first = min(self.started.values())
        return {"before_first_trial": first - self.created, "trials": max(self.ended.values()) - first}


class TrialLines(Callback):
    """One line per finished trial (in the driver): its epochs, best value, and why it
    ended. `what` the trials are called and `name` each one's (a cross-validation's
    trials are folds, named by their number). `step` is what each report counts, epochs
    or, for cross-validated trials, folds, whose reports are a running mean: the line
    then shows the last, the mean over all the trial's folds."""

    def __init__(self, metric: str, mode: str, budget: int, trials: int, what: str = "trial",
                 name: Callable[[Any], str] = lambda trial: trial.trial_id, step: str = "epoch") -> None:
        self.metric, self.mode, self.budget, self.trials = metric, mode, budget, trials
        self.what, self.name, self.step = what, name, step
        self.best: dict[str, float] = {}
        self.finished = 0

    def on_trial_result(self, iteration, trials, trial, result, **info):
        value = result.get(self.metric)
        if isinstance(value, (int, float)) and value == value:
            best = self.best.get(trial.trial_id)
            if self.step == "fold" or best is None or (value > best if self.mode == "max" else value < best):
                self.best[trial.trial_id] = value

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._line(trial, None)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._line(trial, "failed (see the log)")

    def _line(self, trial, failure: str | None) -> None:
        self.finished += 1
        result = trial.last_result or {}
        steps = int(result.get(self.step, -1)) + 1
        ended = failure or ("stopped early (patience)" if result.get("stopped_early") else
                            "stopped by ASHA" if 0 < steps < self.budget else "full budget")
        best = self.best.get(trial.trial_id)
        startup = result.get("startup_seconds")
        log.info("%s %d/%d %s: %d %s%s, best %s %s, %s, start-up %s", self.what, self.finished, self.trials,
                 self.name(trial), steps, self.step, "" if steps == 1 else "s", self.metric,
                 "n/a" if best is None else f"{best:.4f}", ended, "n/a" if startup is None else f"{startup:.1f} s")


class TrialRuns(Callback):
    """Each trial as a child run of the search's MLflow run (`tracking.mlflow_uri`): its
    drawn values as parameters and every epoch's metrics, logged here in the driver, which
    sees every trial's reports however the trial trains. A trial ASHA (or patience) stops
    ends FINISHED like one that ran its budget, with fewer epochs in its history; a failed
    trial ends FAILED, and reopens if Tune retries it or a resumed search runs it again."""

    def __init__(self, tracker: Tracker, parent: TrackedRun, step: str = "epoch") -> None:
        self.tracker, self.parent, self.step = tracker, parent, step
        self.runs: dict[str, TrackedRun] = {}

    def _run(self, trial) -> TrackedRun:
        from medray.train.tracking import param_values

        if trial.trial_id not in self.runs:
            self.runs[trial.trial_id] = self.tracker.trial_run(self.parent, trial.trial_id,
                                                               param_values(trial.config))
        return self.runs[trial.trial_id]

    def on_trial_start(self, iteration, trials, trial, **info):
        self._run(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        from medray.train.tracking import log_epoch

        log_epoch(self._run(trial), result, step=self.step)

    def on_trial_complete(self, iteration, trials, trial, **info):
        from medray.train.tracking import end_run

        end_run(self._run(trial), "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info):
        from medray.train.tracking import end_run

        end_run(self._run(trial), "FAILED")


def _searcher(config: MedrayConfig, start: dict[str, Any] | None, grid: bool):
    """The search algorithm: seeded, evaluating `start` (the base config's own point) first,
    holding at most `concurrency(config)` trials at a time.

    The limit is set here rather than through `TuneConfig.max_concurrent_trials`, which
    Tune applies only to a `Searcher`: for random search (a `BasicVariantGenerator`) it
    logs a warning and starts every trial at once, all waiting on the same CPUs."""
    limit = concurrency(config)
    if config.tune.searcher == "optuna":
        from ray.tune.search import ConcurrencyLimiter
        from ray.tune.search.optuna import OptunaSearch

        if grid:
            raise ConfigError("a grid in tune.space needs tune.searcher=random (Optuna proposes its own values)")
        return ConcurrencyLimiter(OptunaSearch(metric=config.train.metric, mode=config.train.metric_mode,
                                               seed=config.train.seed,
                                               points_to_evaluate=[start] if start else None),
                                  max_concurrent=limit)
    from ray.tune.search import BasicVariantGenerator

    return BasicVariantGenerator(random_state=config.train.seed,  # seeded random sampling
                                 points_to_evaluate=[start] if start else None, max_concurrent=limit)


def trial_trainable(function: Callable[..., None], config: MedrayConfig, direct: bool, **shared: Any):
    """`function(params, **shared, direct=direct)` as Tune runs each trial, holding
    `trial_resources`; with_parameters puts `shared` in the object store once for all trials."""
    from ray import tune

    from medray.tune.trial import trial_resources

    return tune.with_resources(tune.with_parameters(function, **shared, direct=direct),
                               trial_resources(config, direct))


def run_config(config: MedrayConfig, storage: Storage, name: str, direct: bool, callbacks: list[Callback],
               latest_only: bool = False):
    """Tune's run under `runs/{name}/`, a search's or a cross-validation's. The checkpoint
    and retry settings are what a TorchTrainer's own say (`build_trainer`), for the trials
    that train in their function; a TorchTrainer retries its workers itself, so Tune does
    not retry its trial. `latest_only`: each trial keeps only its latest checkpoint (a
    cross-validated trial's, which holds all it has done)."""
    from ray import tune

    filesystem, _ = storage.arrow_filesystem()
    kept = tune.CheckpointConfig(num_to_keep=1) if latest_only else tune.CheckpointConfig(
        num_to_keep=config.train.keep_checkpoints, checkpoint_score_attribute=config.train.metric,
        checkpoint_score_order=config.train.metric_mode)
    return tune.RunConfig(
        name=name, storage_path=storage.arrow_path("runs"), storage_filesystem=filesystem,
        checkpoint_config=kept,
        failure_config=tune.FailureConfig(max_failures=config.scaling.max_failures if direct else 0),
        callbacks=callbacks)


def _tuner(config: MedrayConfig, storage: Storage, search: str, base: dict[str, Any],
           space: dict[str, dict[str, Any]], data: DataPlan, folds: FoldPlan | None, restore: bool, direct: bool,
           clock: TrialClock, trial_runs: TrialRuns | None):
    """The search's Tuner. With `folds` (`tune.folds`) each trial is cross-validated
    (`tune/cv_trials.py`) and reports once per fold, so ASHA's budget is the folds."""
    from ray import tune

    from medray.tune.trial import run_trial, search_data

    metric, mode = config.train.metric, config.train.metric_mode
    if folds is not None:
        trainable = trial_trainable(run_cv_trial, config, direct, base=base, root=storage.root, search=search,
                                    folds=folds)
        budget, grace, step = config.tune.folds, 1, "fold"
    else:
        trainable = trial_trainable(run_trial, config, direct, base=base, root=storage.root, search=search,
                                    shared=search_data(data, storage, direct))
        budget, grace, step = config.optim.epochs, min(config.tune.grace_period, config.optim.epochs), "epoch"
    if restore:  # with the callbacks the search started with (Tune pickled them)
        filesystem, _ = storage.arrow_filesystem()
        return tune.Tuner.restore(storage.arrow_path(f"runs/{search}"), trainable, resume_unfinished=True,
                                  resume_errored=True, storage_filesystem=filesystem)
    grid = any("grid" in spec for spec in space.values())  # a grid enumerates its own points
    start = None if grid else base_point(space, base)
    searcher = _searcher(config, start, grid)
    return tune.Tuner(
        trainable,
        param_space=to_tune(space),
        tune_config=tune.TuneConfig(
            metric=metric, mode=mode, num_samples=config.tune.num_samples, search_alg=searcher,
            scheduler=IncumbentASHA(start, time_attr="training_iteration", max_t=budget, grace_period=grace,
                                      reduction_factor=config.tune.reduction_factor),
            time_budget_s=config.tune.time_budget_s,
            trial_name_creator=_trial_name, trial_dirname_creator=_trial_name,
            # A one-worker trial's process (torch imported, CPU held) runs the next trial.
            reuse_actors=direct,
        ),
        run_config=run_config(config, storage, search, direct,
                              [clock, TrialLines(metric, mode, budget, config.tune.num_samples, step=step),
                               *([trial_runs] if trial_runs else [])], latest_only=folds is not None),
    )


def run_search(config: MedrayConfig, storage: Storage, config_name: str | None = None,
               resume: str | None = None) -> dict[str, Any]:
    """Run (or resume) a search; returns the trial table and the best trial."""
    from medray.cluster.runtime import check_placement, ensure_ray
    from medray.train import tracking
    from medray.train.job import plan_data

    saved: dict[str, Any] = {}  # search.json of a resumed search
    if resume:
        # Resuming unpickles Tune's state from runs/NAME/: the name must stay inside runs/.
        check_run_name(resume, "--resume")
        key = f"runs/{resume}/{SEARCH_FILE}"
        if not storage.exists(key):
            raise NotFoundError(f"no search named '{resume}' in {storage.uri('runs')}")
        saved = storage.read_json(key)
        search, base, space = resume, saved["base"], saved["space"]
        direct = saved.get("trials_train_directly", False)  # searches saved before this ran TorchTrainers
        config = apply_params(base, {})
    else:
        search = search_name(config, config_name)
        base = config.model_dump(mode="json")
        base["train"]["name"] = None
        space = space_for(config)
        check_space(space, base)
        direct = trains_directly(config)
    cross_validated = config.tune.folds > 1
    if cross_validated:
        check_cv_search(config)
    tracker = tracking.connect(config.tracking, tracking.default_experiment(config))
    # The data are fitted once, for the checks below and for every trial (a space
    # cannot vary them: `tune.spaces.SEARCHABLE`); cross-validated trials share the folds too.
    folds = plan_folds(config, storage, setting="tune.folds") if cross_validated else None
    data = folds.data if folds else plan_data(config, storage)
    if not resume:
        _check_models(base, data, space)
    ensure_ray(config.ray, dashboard=True)
    check_placement(config.scaling)
    parent = _search_run(tracker, config, storage, search, space, saved.get("mlflow_run_id"))
    if not resume:
        storage.write_json(f"runs/{search}/{SEARCH_FILE}", {"base": base, "space": space,
                                                            "trials_train_directly": direct,
                                                            "created_at": datetime.now(timezone.utc).isoformat(),
                                                            **({"mlflow_run_id": parent.run_id} if parent else {})})
    log.info("search %s: %d trials of %s, budget %d epochs each%s, %s, results in %s", search,
             config.tune.num_samples, config.model.family, config.optim.epochs,
             f" on each of {config.tune.folds} folds" if cross_validated else "",
             "each trial in its Tune function" if direct else "a TorchTrainer per trial",
             storage.uri(f"runs/{search}"))
    clock = TrialClock()
    with tracking.ending(parent):
        trial_runs = TrialRuns(tracker, parent, step="fold" if folds else "epoch") if parent else None
        results = _tuner(config, storage, search, base, space, data, folds, restore=bool(resume), direct=direct,
                         clock=clock, trial_runs=trial_runs).fit()
        summary = summarize(results, config, storage, search, space, direct, clock, folds)
        if parent:
            _log_search(parent, summary)
    return summary


def _search_run(tracker: Tracker | None, config: MedrayConfig, storage: Storage, search: str,
                space: dict[str, dict[str, Any]], run_id: str | None) -> TrackedRun | None:
    """The search's MLflow run, parent of its trials' runs: the one search.json names (a
    resumed search), else a new one with the base config and the space as parameters."""
    from medray.train.tracking import TRACKED_SECTIONS, TrackedRun, client, config_params

    if tracker is None:
        return None
    if run_id:
        client(tracker.uri).update_run(run_id, status="RUNNING")
        return TrackedRun(tracker.uri, run_id)
    params = config_params(config, (*TRACKED_SECTIONS, "tune"), extra={f"space.{k}": v for k, v in space.items()})
    return tracker.start_run(search, params, tags={"medray.run": storage.uri(f"runs/{search}")})


def _log_search(parent: TrackedRun, summary: dict[str, Any]) -> None:
    """The search's outcome on its run: the best trial's value (`best.val_auroc`) and ID,
    the trial-epochs spent, and summary.json as an artifact."""
    from medray.train.tracking import client, log_final, set_tags

    metric, best = summary["metric"], summary["best"]
    log_final(parent, {f"best.{metric}": best[metric], "trial_epochs": summary["trial_epochs"],
                       "stopped_by_asha": summary["stopped_by_asha"], "trials": len(summary["trials"])})
    set_tags(parent, {"medray.best_trial": best["trial"]})
    client(parent.uri).log_dict(parent.run_id, summary, "summary.json")


def summarize(results, config: MedrayConfig, storage: Storage, search: str,
              space: dict[str, dict[str, Any]], direct: bool, clock: TrialClock | None = None,
              folds: FoldPlan | None = None) -> dict[str, Any]:
    """The trial table and the best trial, written to the search's summary.json. With
    `folds`, a trial's value is its mean over folds, only a trial that ran all of them can
    be best, and its fold models are stored as the ensemble the best trial's checkpoint
    names (`cv` in the summary: its folds' figures)."""
    metric, k = config.train.metric, config.tune.folds
    trials = []
    for result in results:
        trial_id = result.path.rstrip("/").rsplit("/", 1)[-1].removeprefix(TRIAL_PREFIX)
        folder = trial_key(search, trial_id, direct)
        record = cv_trial_record(storage, folder) if folds else \
            trial_record(storage, folder, metric, config.train.metric_mode)
        patience_stop = record["stopped_by_patience"]
        spent, budget = (len(record["folds"]), k) if folds else (record["epochs_run"], config.optim.epochs)
        trials.append({
            "trial": trial_id,
            "config": {key: result.config.get(key) for key in space},
            "epochs_run": record["epochs_run"],
            **({"folds_run": len(record["folds"]), "folds": record["folds"]} if folds else {}),
            metric: record["best_value"],
            "stopped_by_asha": 0 < spent < budget and not patience_stop and result.error is None,
            "stopped_by_patience": patience_stop,
            "seconds": _trial_seconds(result) or record["seconds"],
            "error": str(result.error).splitlines()[0] if result.error else None,
            "checkpoint": record["checkpoint"],
            "timings": trial_timings(result.metrics or {}, record["seconds"], clock, trial_id),
        })
    finished = [t for t in trials if t[metric] is not None and (not folds or t["folds_run"] == k)]
    if not finished:
        raise MedrayError(f"no trial of search '{search}' reported {metric}" + (f" on all {k} folds" if folds else ""))
    best = (max if config.train.metric_mode == "max" else min)(finished, key=lambda t: t[metric])
    cv = None
    if folds:
        key, cv = best_trial_ensemble(storage, search, folds, best)
        best["checkpoint"] = storage.uri(key)
    summary = {
        "search": search,
        "runs": storage.uri(f"runs/{search}"),
        "trials_train_directly": direct,
        "metric": metric,
        "trials": trials,
        "best": best,
        "trial_epochs": sum(t["epochs_run"] for t in trials),
        "stopped_by_asha": sum(t["stopped_by_asha"] for t in trials),
        # Wall time before Tune started the first trial (preparing and sharing the data,
        # starting Tune), and from then until the last trial ended.
        "search_seconds": clock.spans() if clock else None,
        **({"folds": k, "cv": cv} if folds else {}),
    }
    storage.write_json(f"runs/{search}/summary.json", summary)
    return summary


def trial_record(storage: Storage, folder: str, metric: str, mode: str) -> dict[str, Any]:
    """What one trial's kept checkpoints say: epochs trained, its best value and checkpoint.

    Read from the checkpoints rather than from Tune's results: across an interrupt and
    resume, Tune may never have received the last epochs a trial checkpointed (and a
    resumed trial that had already finished reports nothing new)."""
    from medray.train.checkpoint import PROGRESS

    checkpoints = []
    for name in storage.list_dir(folder):
        if name.startswith("checkpoint_") and storage.exists(f"{folder}/{name}/{PROGRESS}"):
            checkpoints.append((f"{folder}/{name}", storage.read_json(f"{folder}/{name}/{PROGRESS}")))
    if not checkpoints:
        return {"epochs_run": 0, "best_value": None, "checkpoint": None, "seconds": 0.0,
                "stopped_by_patience": False}
    latest = max(checkpoints, key=lambda c: c[1]["epoch"])[1]
    scored = [(key, progress["metrics"][metric]) for key, progress in checkpoints
              if _is_number(progress["metrics"].get(metric))]
    best_key, best_value = (max if mode == "max" else min)(scored, key=lambda c: c[1]) if scored else (None, None)
    return {
        "epochs_run": len(latest["history"]),
        "best_value": best_value,
        "checkpoint": storage.uri(best_key) if best_key else None,
        "seconds": float(sum(h.get("epoch_seconds") or 0.0 for h in latest["history"])),  # epochs alone
        "stopped_by_patience": bool(latest["metrics"].get("stopped_early")),
    }


def trial_timings(last: dict[str, Any], epoch_seconds: float, clock: TrialClock | None,
                  trial_id: str) -> dict[str, float | None]:
    """Where a trial's wall time went, in seconds, from its last report and the driver's clock:
    scheduling (Tune started the trial -> its function ran), workers (-> the training
    process was up: a TorchTrainer's controller and worker group), data (reading and
    preprocessing), startup (function -> first epoch, all of the above but scheduling),
    epochs, checkpoints (saving and handing over, but the last hand-over) and teardown
    (the last report -> Tune saw the trial end). None where it was not measured (a trial
    finished before a resume, or one that never reported)."""
    started = clock.started.get(trial_id) if clock else None
    ended = clock.ended.get(trial_id) if clock else None
    launched = last.get("launched_at")
    worker = last.get("worker_started_at")
    reported = last.get("reported_at")

    def between(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else max(0.0, b - a)

    return {"scheduling": between(started, launched), "workers": between(launched, worker),
            "data": last.get("data_seconds"), "startup": last.get("startup_seconds"), "epochs": epoch_seconds,
            "checkpoints": last.get("checkpoint_seconds"), "teardown": between(reported, ended)}


def _trial_seconds(result) -> float | None:
    """The trial's own wall time as Tune measured it (start-up of its TorchTrainer included)."""
    frame = result.metrics_dataframe
    if frame is None or frame.empty or "time_total_s" not in frame:
        return None
    return float(frame["time_total_s"].iloc[-1])


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and value == value


def trial_table(summary: dict[str, Any]) -> str:
    metric = summary["metric"]
    keys = list(summary["trials"][0]["config"]) if summary["trials"] else []
    folds = "folds" in summary  # cross-validated trials: how many folds each ran
    header = f"{'trial':<12}{'epochs':>7}" + (f"{'folds':>6}" if folds else "") + \
        f"  {metric:>10}  {'stopped':<10}{'start-up':>9}" + "".join(f" {k.split('.')[-1]:>14}" for k in keys)
    lines = [header]
    for t in summary["trials"]:
        stopped = "ASHA" if t["stopped_by_asha"] else "patience" if t["stopped_by_patience"] else \
            "error" if t["error"] else "-"
        value = "n/a" if t[metric] is None else f"{t[metric]:.4f}"
        startup = (t.get("timings") or {}).get("startup")
        startup = "n/a" if startup is None else f"{startup:.1f} s"
        cells = "".join(f" {_cell(t['config'].get(k)):>14}" for k in keys)
        ran = f"{t['folds_run']:>6}" if folds else ""
        lines.append(f"{t['trial']:<12}{t['epochs_run']:>7}{ran}  {value:>10}  {stopped:<10}{startup:>9}{cells}")
    over = f" over {summary['folds']} folds" if folds else ""
    lines.append(f"best: {summary['best']['trial']} ({metric} {summary['best'][metric]:.4f}{over}); "
                 f"{summary['stopped_by_asha']} of {len(summary['trials'])} trials stopped early by ASHA; "
                 f"{summary['trial_epochs']} trial-epochs in all")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)

