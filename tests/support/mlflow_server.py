"""A real MLflow tracking server for the tracking tests: `mlflow server` from .mlflow-server/
(`make mlflow-server`; the full `mlflow` needs pyarrow<26, the project pins 26), a SQLite
backend store and proxied artifacts in a temporary folder, on a free port of 127.0.0.1.
Without that venv a test is skipped with the reason, except under CI (`CI=true`), where
the missing server fails it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.project import PROJECT

SERVER = PROJECT / ".mlflow-server" / "bin" / "mlflow"
START_TIMEOUT_S = 120


def server_binary() -> Path:
    """.mlflow-server/bin/mlflow, or skip (fail under CI) saying how to get it."""
    if SERVER.is_file():
        return SERVER
    reason = f"the tracking tests need an MLflow server in {SERVER.parent.parent.name}/ (`make mlflow-server`)"
    if os.environ.get("CI") == "true":
        pytest.fail(reason + " (CI=true: a skipped tracking test fails the suite)", pytrace=False)
    pytest.skip(reason)


@contextlib.contextmanager
def mlflow_server(folder: Path) -> Iterator[str]:
    """A running server keeping its runs in FOLDER/mlflow.db and artifacts in
    FOLDER/artifacts; yields its URI, stopped on exit."""
    import httpx

    from medray.cluster.runtime import free_port

    binary, port = server_binary(), free_port()
    log = (folder / "mlflow-server.log").open("w")
    process = subprocess.Popen(
        [str(binary), "server", "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
         "--artifacts-destination", str(folder / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{uri}/health", timeout=2).status_code == 200:
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"mlflow server did not start:\n{(folder / 'mlflow-server.log').read_text()}")
            time.sleep(0.25)
        yield uri
    finally:
        os.killpg(process.pid, signal.SIGTERM)  # its uvicorn workers with it
        process.wait(timeout=30)
        log.close()
