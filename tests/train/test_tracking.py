"""The tracking section and what medray hands MLflow: parameters from the config, the
final metrics flattened, and one line when MLflow is asked for but not installed."""

import subprocess
import sys

import pytest

from medray.cluster.config import load_config
from medray.cluster.errors import ConfigError
from medray.train.tracking import config_params, default_experiment, numeric_metrics, shown
from support.project import PROJECT


def test_tracking_is_off_by_default_and_takes_only_tracking_uris():
    assert load_config().tracking.mlflow_uri is None
    for uri in ("http://127.0.0.1:5000", "https://mlflow.example.org", "sqlite:///runs.db", "file:///tmp/mlruns",
                "postgresql+psycopg2://db/mlflow", "databricks"):
        assert load_config(None, [f"tracking.mlflow_uri={uri}"]).tracking.mlflow_uri == uri
    with pytest.raises(ConfigError, match="tracking.mlflow_uri.*not a tracking URI MLflow takes"):
        load_config(None, ["tracking.mlflow_uri=s3://bucket/mlruns"])


@pytest.mark.parametrize("uri", ["https://alice:s3cret-pw@mlflow.example.org", "postgresql://bob:s3cret-pw@db/mlflow"])
def test_a_password_in_the_tracking_uri_is_refused_without_repeating_it(uri):
    with pytest.raises(ConfigError, match="tracking.mlflow_uri.*holds a password.*MLFLOW_TRACKING_PASSWORD") as error:
        load_config(None, [f"tracking.mlflow_uri={uri}"])
    assert "s3cret-pw" not in str(error.value)
    # A user name alone is no secret (MLflow's variables or a token supply the password).
    assert load_config(None, ["tracking.mlflow_uri=https://alice@mlflow.example.org"]).tracking.mlflow_uri


def test_params_are_the_training_settings_flattened():
    config = load_config(PROJECT / "train/configs/wdbc_attention.yaml",
                         ["model.options={dropout: 0.2}", "data.class_groups={benign: ['0'], 'not benign!': ['1']}"])
    params = config_params(config, extra={"dataset": "wdbc@v1"})
    assert params["optim.lr"] == str(config.optim.lr) and params["model.options.dropout"] == "0.2"
    assert params["train.patience"] == str(config.train.patience) and params["dataset"] == "wdbc@v1"
    # A mapping keyed by names MLflow cannot take (class names) stays one value.
    assert params["data.class_groups"] == '{"benign": ["0"], "not benign!": ["1"]}'
    assert not any(key.split(".")[0] in ("storage", "serve", "ray", "tracking", "tune") for key in params)
    assert default_experiment(config) == "wdbc"
    assert default_experiment(load_config(None, ["data.dataset=cleveland@v2"])) == "cleveland"
    assert default_experiment(load_config(None, ["tracking.experiment=mine"])) == "mine"


def test_final_metrics_are_every_number_by_its_path():
    metrics = {"test": {"auroc": 0.91, "auroc_ci": [0.88, 0.94], "n": 114, "net_benefit": {"0.1": 0.2},
                        "calibrated": True, "per class": {"a+b": 0.5}}, "threshold": 0.4, "method": "youden"}
    assert numeric_metrics(metrics) == {"test.auroc": 0.91, "test.n": 114.0, "test.net_benefit.0.1": 0.2,
                                        "test.per class.a_b": 0.5, "threshold": 0.4}


def test_a_printed_uri_has_no_password():
    assert shown("https://alice:secret@mlflow.example.org:8443/x") == "https://mlflow.example.org:8443/x"
    assert shown("https://alice@mlflow.example.org/x") == "https://mlflow.example.org/x"
    assert shown("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


def test_without_mlflow_asking_for_it_is_one_line(tmp_path):
    """`medray train` with tracking on where `import mlflow` fails: exit 2, one line
    saying what to install, before any data is read."""
    blocked = ("import sys; sys.modules['mlflow'] = None; from medray.cli import main; "  # None: import fails
               "sys.exit(main(['train', 'train/configs/wdbc_attention.yaml', 'tracking.mlflow_uri=http://127.0.0.1:9']))")
    result = subprocess.run([sys.executable, "-c", blocked], cwd=PROJECT, capture_output=True, text=True, timeout=120,
                            env={"PATH": "/usr/bin:/bin", "MEDRAY_STORAGE": str(tmp_path / "store")})
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert [line for line in result.stderr.splitlines() if line.startswith("medray: error:")] == [
        "medray: error: tracking.mlflow_uri is set but MLflow is not installed: pip install 'medray[tracking]'"]
