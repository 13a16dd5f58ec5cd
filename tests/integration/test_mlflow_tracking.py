"""Experiment tracking against a real MLflow server (SQLite backend store, artifacts
served through the server): a training run with its epochs, final metrics and plots; a
search as a parent run with one child run per trial; a server that does not answer,
refused before training."""

import json
from pathlib import Path

import pytest

from medray.cluster.runtime import free_port
from support.mlflow_server import mlflow_server
from support.project import medray
from support.training import small_wdbc_config

pytestmark = pytest.mark.integration

TOLERANCE = 1e-9


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory):
    # Asked for first by the tests: without a server they skip before Ray starts.
    with mlflow_server(tmp_path_factory.mktemp("mlflow")) as uri:
        yield uri


def _runs(client, experiment: str, filter_string: str) -> list:
    return client.search_runs([client.get_experiment_by_name(experiment).experiment_id],
                              filter_string=filter_string)


def _history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_a_training_run_holds_its_params_epochs_final_metrics_and_plots(mlflow_uri, wdbc, ray_session, tmp_path):
    from mlflow import MlflowClient

    from medray.train.job import run_training

    config = small_wdbc_config("optim.epochs=2", "scaling.num_workers=1", "train.name=tracked",
                               f"tracking.mlflow_uri={mlflow_uri}")
    summary = run_training(config, wdbc)

    client = MlflowClient(mlflow_uri)
    [run] = _runs(client, "wdbc", "attributes.run_name = 'tracked'")  # experiment: the dataset's name
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["dataset"] == "wdbc@v1" and params["model.family"] == "attention"
    assert float(params["optim.lr"]) == config.optim.lr and params["model.preset"] == config.model.preset
    assert params["optim.epochs"] == "2" and "storage.root" not in params and "tracking.mlflow_uri" not in params

    # One value per epoch, the run's own history's (rank 0 logged them as it went).
    run_dir = Path(wdbc.root.removeprefix("file://")) / "runs" / "tracked"
    progress = max((json.loads(p.read_text()) for p in run_dir.glob("checkpoint_*/progress.json")),
                   key=lambda p: p["epoch"])
    for key in ("val_auroc", "val_loss", "train_loss"):
        logged = _history(client, run.info.run_id, key)
        assert [step for step, _ in logged] == [0, 1]
        assert [value for _, value in logged] == pytest.approx([row[key] for row in progress["history"]],
                                                               abs=TOLERANCE)

    # The final evaluation's figures, as the summary has them.
    metrics = run.data.metrics
    for key in ("auroc", "accuracy", "sensitivity", "specificity", "ece", "brier"):
        assert metrics[f"test.{key}"] == pytest.approx(summary["metrics"]["test"][key], abs=TOLERANCE)
    assert metrics["val.auroc"] == pytest.approx(summary["metrics"]["val"]["auroc"], abs=TOLERANCE)
    assert metrics["epochs_run"] == 2

    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"metrics.json", "roc.png", "reliability.png", "confusion_matrix.png", "learning_curves.png"} <= artifacts
    roc = Path(client.download_artifacts(run.info.run_id, "roc.png", str(tmp_path)))
    assert roc.read_bytes() == (run_dir / "report" / "roc.png").read_bytes()


def test_a_search_is_a_parent_run_with_a_child_run_per_trial(mlflow_uri, wdbc, ray_session):
    from mlflow import MlflowClient

    from medray.tune.run import SEARCH_FILE, run_search

    config = small_wdbc_config("tune.num_samples=2", "optim.epochs=2", "scaling.num_workers=1",
                               "tune.searcher=random", "train.name=tracked-search",
                               f"tracking.mlflow_uri={mlflow_uri}", "tracking.experiment=searches")
    summary = run_search(config, wdbc)

    client = MlflowClient(mlflow_uri)
    [parent] = _runs(client, "searches", "attributes.run_name = 'tracked-search'")
    assert parent.info.status == "FINISHED"
    assert wdbc.read_json(f"runs/tracked-search/{SEARCH_FILE}")["mlflow_run_id"] == parent.info.run_id  # for --resume
    assert parent.data.tags["medray.best_trial"] == summary["best"]["trial"]
    metric = summary["metric"]  # the config's train.metric
    assert parent.data.metrics[f"best.{metric}"] == pytest.approx(summary["best"][metric], abs=TOLERANCE)
    assert any(key.startswith("space.") for key in parent.data.params)

    children = _runs(client, "searches", f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    trials = {t["trial"]: t for t in summary["trials"]}
    assert sorted(c.info.run_name for c in children) == sorted(trials)
    for child in children:
        trial = trials[child.info.run_name]
        assert child.info.status == "FINISHED" and child.data.tags["medray.trial"] == trial["trial"]
        for key, value in trial["config"].items():  # the trial's drawn values
            assert child.data.params[key] == (value if isinstance(value, str) else json.dumps(value))
        for key in ("val_auroc", metric):
            assert [step for step, _ in _history(client, child.info.run_id, key)] == list(range(trial["epochs_run"]))
        # The trial's best value is one of its epochs'.
        assert min(abs(value - trial[metric]) for _, value in _history(client, child.info.run_id, metric)) <= TOLERANCE

    # Resumed (here with every trial already done), the search goes on in the same parent run.
    run_search(config, wdbc, resume="tracked-search")
    [again] = _runs(client, "searches", "attributes.run_name = 'tracked-search'")
    assert again.info.run_id == parent.info.run_id and again.info.status == "FINISHED"
    assert len(_runs(client, "searches", f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")) == 2


def test_a_cross_validated_trial_logs_its_running_mean_once_per_fold(mlflow_uri, wdbc, ray_session):
    from mlflow import MlflowClient

    from medray.tune.run import run_search

    config = small_wdbc_config("tune.num_samples=1", "tune.folds=2", "optim.epochs=1", "scaling.num_workers=1",
                               "tune.searcher=random", "train.name=tracked-cv-search",
                               f"tracking.mlflow_uri={mlflow_uri}", "tracking.experiment=cv-searches")
    summary = run_search(config, wdbc)
    client = MlflowClient(mlflow_uri)
    [parent] = _runs(client, "cv-searches", "attributes.run_name = 'tracked-cv-search'")
    [child] = _runs(client, "cv-searches", f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    [trial], metric = summary["trials"], summary["metric"]
    history = _history(client, child.info.run_id, metric)
    assert [step for step, _ in history] == [0, 1]  # one step per fold
    assert history[0][1] == pytest.approx(trial["folds"][0]["best_value"], abs=TOLERANCE)
    assert history[1][1] == pytest.approx(trial[metric], abs=TOLERANCE)  # the mean over both folds


def test_a_server_that_does_not_answer_is_refused_before_training(tmp_path):
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    env = {"MEDRAY_STORAGE": str(tmp_path / "store")}
    result = medray("train", "train/configs/wdbc_attention.yaml", f"tracking.mlflow_uri={uri}", env=env,
                    check=False, timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    [line] = [line for line in result.stderr.splitlines() if line.startswith("medray: error:")]
    assert f"no MLflow server answers at {uri}" in line
    assert not (tmp_path / "store" / "runs").exists()
