"""Ray Jobs: run medray commands on a cluster and follow them.

`medray submit train|tune|serve …` sends the same command line to the cluster's Jobs API
(the dashboard, port 8265, reached through an SSH tunnel or the private network) with a
runtime environment that ships this project's code and the storage settings. Token
authentication is Ray's own: with RAY_AUTH_MODE=token and the token in RAY_AUTH_TOKEN (or
~/.ray/auth_token), Ray's client sends it on every call.
"""

from __future__ import annotations

import os
import shlex
import time
from pathlib import Path
from typing import Any

from medray.cluster.console import CONSOLE
from medray.cluster.errors import MedrayError, NotFoundError
from medray.cluster.runtime import FORWARDED_ENV, RAY_TUNING

PROJECT = Path(__file__).resolve().parents[1]
# What the cluster does not need from a checkout (the cluster has its own environment).
EXCLUDES = [".venv", ".git", "**/__pycache__", "*.egg-info", "tests", "benchmarks", ".ci", "*.png", "runs"]
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def client(address: str | None):
    from ray.job_submission import JobSubmissionClient

    address = address or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS")
    if not address:
        raise MedrayError("give the cluster's Jobs API with --address http://HOST:8265 (or set RAY_ADDRESS); "
                          "for a cluster from `ray up`, `ray dashboard ray-cluster.yaml` tunnels it to localhost")
    try:
        return JobSubmissionClient(address)
    except Exception as error:  # connection refused, wrong token, not a Ray dashboard
        raise MedrayError(f"cannot reach the Ray Jobs API at {address}: {_first_line(error)}") from None


def runtime_env() -> dict[str, Any]:
    """This project's code and the settings (never secrets) the job needs."""
    env = {**RAY_TUNING, **{k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}}
    return {"working_dir": str(PROJECT), "excludes": EXCLUDES, "env_vars": env}


def entrypoint(argv: list[str], python: str = "python") -> str:
    return f"{python} -m cluster.cli {shlex.join(argv)}"


def submit(address: str | None, argv: list[str], wait: bool = True, python: str | None = None) -> dict[str, Any]:
    """Submit `medray ARGV` as a job; with `wait`, stream its log here until it ends."""
    jobs = client(address)
    command = entrypoint(argv, python or os.environ.get("MEDRAY_JOB_PYTHON", "python"))
    try:
        job_id = jobs.submit_job(entrypoint=command, runtime_env=runtime_env(),
                                 metadata={"medray_command": " ".join(argv[:1])})
    except Exception as error:
        raise MedrayError(f"the cluster refused the job: {_first_line(error)}") from None
    result = {"job_id": job_id, "entrypoint": command, "status": str(jobs.get_job_status(job_id).value)}
    if wait:
        result["status"] = follow(jobs, job_id)
    return result


def follow(jobs, job_id: str, poll_s: float = 1.0) -> str:
    """Print the job's new log lines to the terminal's stderr until it ends; returns its final status."""
    printed = 0
    while True:
        status = str(jobs.get_job_status(job_id).value)
        logs = jobs.get_job_logs(job_id)
        if len(logs) > printed:
            CONSOLE.terminal_err.write(logs[printed:])  # the job's own output: the user asked to follow it
            CONSOLE.terminal_err.flush()
            printed = len(logs)
        if status in TERMINAL:
            return status
        time.sleep(poll_s)


def list_jobs(address: str | None) -> list[dict[str, Any]]:
    jobs = client(address)
    rows = []
    for job in jobs.list_jobs():
        rows.append({"job_id": job.submission_id or job.job_id, "status": str(job.status.value),
                     "entrypoint": job.entrypoint, "start_time": job.start_time, "end_time": job.end_time})
    return sorted(rows, key=lambda r: r["start_time"] or 0)


def job_status(address: str | None, job_id: str) -> dict[str, Any]:
    jobs = client(address)
    info = _info(jobs, job_id)
    return {"job_id": job_id, "status": str(info.status.value), "message": info.message,
            "entrypoint": info.entrypoint, "start_time": info.start_time, "end_time": info.end_time}


def job_logs(address: str | None, job_id: str) -> str:
    jobs = client(address)
    _info(jobs, job_id)
    return jobs.get_job_logs(job_id)


def stop_job(address: str | None, job_id: str, wait_s: float = 60) -> dict[str, Any]:
    jobs = client(address)
    _info(jobs, job_id)
    jobs.stop_job(job_id)
    deadline = time.monotonic() + wait_s
    status = str(jobs.get_job_status(job_id).value)
    while status not in TERMINAL and time.monotonic() < deadline:
        time.sleep(0.5)
        status = str(jobs.get_job_status(job_id).value)
    return {"job_id": job_id, "status": status}


def _info(jobs, job_id: str):
    try:
        return jobs.get_job_info(job_id)
    except RuntimeError:
        raise NotFoundError(f"no job '{job_id}' on this cluster; `medray jobs list` shows them") from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
