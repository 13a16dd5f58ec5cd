"""Ray Jobs: run medray commands on a cluster and follow them.

`medray submit train|tune|serve …` sends the same command line to the cluster's Jobs API
(the dashboard, port 8265, reached through an SSH tunnel or the private network) as
`python -m medray.cli …`, with a runtime environment that carries medray's code, the
config file the command names and the storage settings. Token authentication is Ray's
own: with RAY_AUTH_MODE=token and the token in RAY_AUTH_TOKEN (or ~/.ray/auth_token),
Ray's client sends it on every call.

What code a job runs. The cluster's image provides Python, Ray and medray's dependencies.
medray's own code travels with each job as one `py_modules` entry, a `medray` package
folder that Ray puts first on the job's PYTHONPATH on every node, so the job runs the
version that checked its config here:
- from a source checkout (a pyproject.toml of project medray beside the folders it maps
  to medray.*): the package as its wheel installs it, built from a copy of the
  sources and unpacked, once per content of those sources, under ~/.cache/medray/wheels/
  (or $MEDRAY_WHEEL_CACHE; safe to delete);
- from an installed medray: the installed `medray` folder, never the rest of site-packages.
The folder, not the wheel file: Ray installs a py_modules wheel with `pip install
--target`, which ignores what is installed and would fetch Ray, torch and the rest again
on every node. `medray submit --image-has-medray` ships no code: the job runs the medray
installed in the cluster's image, whatever its version.

Configs: a config file the command names that exists here travels with the job (the job's
working_dir holds that one file); `train/configs/NAME.yaml` that is no file here names a
config the package ships, and the job finds it in the package as this machine does.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
import zipfile
from pathlib import Path
from typing import Any

from medray.cluster.console import CONSOLE
from medray.cluster.errors import MedrayError, NotFoundError
from medray.cluster.runtime import FORWARDED_ENV, RAY_TUNING

# This file's package folder: cluster/ in a source checkout, medray/cluster/ when installed.
CLUSTER_FOLDER = Path(__file__).resolve().parent
WHEEL_CACHE_ENV = "MEDRAY_WHEEL_CACHE"
# Bytecode the client compiled is no use on the cluster's Python.
EXCLUDES = ["__pycache__", "*.pyc"]
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


# What the job runs ------------------------------------------------------------------
def source_checkout(cluster_folder: Path = CLUSTER_FOLDER) -> Path | None:
    """The repository root when medray runs from a source checkout, else None.

    A checkout is a pyproject.toml of project `medray` whose package-dir maps
    medray.cluster onto this very folder; an installed medray/cluster/ has none beside it."""
    root = cluster_folder.parent
    try:
        with (root / "pyproject.toml").open("rb") as file:
            pyproject = tomllib.load(file)
    except (FileNotFoundError, tomllib.TOMLDecodeError):
        return None
    mapped = _package_dir(pyproject).get("medray.cluster")
    if pyproject.get("project", {}).get("name") != "medray" or mapped is None:
        return None
    return root if (root / mapped).resolve() == cluster_folder.resolve() else None


def package_sources(root: Path) -> list[Path]:
    """What the wheel is built from, relative to `root`: pyproject.toml, the readme it
    names and every file in the folders its package-dir maps (bytecode aside)."""
    with (root / "pyproject.toml").open("rb") as file:
        pyproject = tomllib.load(file)
    readme = pyproject.get("project", {}).get("readme")
    readme = readme.get("file") if isinstance(readme, dict) else readme
    files = {Path("pyproject.toml")} | ({Path(readme)} if readme and (root / readme).is_file() else set())
    for folder in set(_package_dir(pyproject).values()):
        for path in (root / folder).rglob("*"):
            relative = path.relative_to(root)
            if path.is_file() and "__pycache__" not in relative.parts and path.suffix != ".pyc":
                files.add(relative)
    return sorted(files)


def source_digest(root: Path, files: list[Path]) -> str:
    """A hash of the files' names and contents: the wheel's cache key."""
    digest = hashlib.sha256()
    for relative in files:
        data = (root / relative).read_bytes()
        digest.update(f"{relative.as_posix()}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()[:16]


def build_wheel(root: Path, destination: Path) -> Path:
    """Build medray's wheel from the checkout at `root` into `destination`, with the build
    backend pyproject.toml names (PEP 517's build_wheel hook, as pip calls it, without
    pip's seconds of start-up), from this environment: nothing is downloaded.

    It builds a copy of the sources: setuptools leaves build/ and *.egg-info where it
    builds and reuses build/lib, so a file deleted from the checkout would stay in later
    wheels, and two builds at once would share it."""
    with (root / "pyproject.toml").open("rb") as file:
        backend = tomllib.load(file).get("build-system", {}).get("build-backend", "setuptools.build_meta")
    destination.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="medray-build-") as scratch:
        copy = Path(scratch) / "medray"
        for relative in package_sources(root):
            (copy / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / relative, copy / relative)
        hook = "import importlib, sys; importlib.import_module(sys.argv[1]).build_wheel(sys.argv[2])"
        built = subprocess.run([sys.executable, "-c", hook, backend, str(destination.resolve())], cwd=copy,
                               capture_output=True, text=True)
        if built.returncode != 0:
            output = (built.stderr or built.stdout).strip().splitlines()
            raise MedrayError(f"building medray's wheel from {root} failed (it needs {backend} in "
                              f"{sys.prefix}):\n" + "\n".join(output[-20:]))
    (wheel,) = destination.glob("medray-*.whl")
    return wheel


def built_package(root: Path, cache: Path) -> Path:
    """The `medray` package folder of the checkout at `root`, as its wheel installs it;
    built once per content of its sources, then found in `cache`."""
    target = cache / source_digest(root, package_sources(root))
    if (target / "medray").is_dir():
        return target / "medray"
    cache.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".building-", dir=cache))
    try:
        wheel = build_wheel(root, staging)
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(staging, [name for name in archive.namelist() if name.startswith("medray/")])
        wheel.unlink()
        try:
            staging.rename(target)  # atomic: a folder in the cache is always complete
        except OSError:
            if not (target / "medray").is_dir():
                raise
            # another submit built the same sources meanwhile: the same files
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target / "medray"


def code_to_ship() -> Path:
    """The `medray` package folder a job runs: built from this checkout, or the installed one."""
    root = source_checkout()
    if root is None:  # installed, this folder is medray/cluster/ inside the package's
        return CLUSTER_FOLDER.parent
    return built_package(root, Path(os.environ.get(WHEEL_CACHE_ENV) or "~/.cache/medray/wheels").expanduser())


def runtime_env(ship_code: bool = True, files: Path | None = None) -> dict[str, Any]:
    """medray's code (unless the image has it), the folder of files the command names, and
    the settings (never secrets) the job needs."""
    env: dict[str, Any] = {"env_vars": {**RAY_TUNING, **{k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}}}
    if ship_code:
        env["py_modules"] = [str(code_to_ship())]
    if files is not None:
        env["working_dir"] = str(files)
    if ship_code or files is not None:
        env["excludes"] = EXCLUDES
    return env


def ship_config(argv: list[str], config: str | None, folder: Path) -> tuple[list[str], Path | None]:
    """`argv` as the job runs it, and the folder to ship as its working_dir (None: nothing).

    A config that is a file here is copied into `folder` and named by its file name there
    (the job's working directory); a name that is no file here (a config the package
    ships) stays as given."""
    if config is None or not Path(config).is_file():
        return argv, None
    name = Path(config).name
    shutil.copyfile(config, folder / name)
    return [name if arg == config else arg for arg in argv], folder


def entrypoint(argv: list[str], python: str = "python") -> str:
    return f"{python} -m medray.cli {shlex.join(argv)}"


def submit(address: str | None, argv: list[str], wait: bool = True, python: str | None = None,
           config: str | None = None, ship_code: bool = True) -> dict[str, Any]:
    """Submit `medray ARGV` as a job; with `wait`, stream its log here until it ends.
    `config`: the config file `argv` names, if any; `ship_code`: see the module's docstring."""
    jobs = client(address)
    with tempfile.TemporaryDirectory(prefix="medray-job-files-") as folder:
        argv, files = ship_config(argv, config, Path(folder))
        command = entrypoint(argv, python or os.environ.get("MEDRAY_JOB_PYTHON", "python"))
        env = runtime_env(ship_code, files)
        # The job's files are uploaded here, before the folder goes.
        job_id = _submit_when_an_agent_is_up(jobs, entrypoint=command, runtime_env=env,
                                             metadata={"medray_command": " ".join(argv[:1])})
    result = {"job_id": job_id, "entrypoint": command, "status": str(jobs.get_job_status(job_id).value)}
    if wait:
        result["status"] = follow(jobs, job_id)
    return result


# The head hands a submission to its node's dashboard agent; when none has registered
# within Ray's own wait (10 s), it answers 500 "No available agent to submit job, please
# try again later". On a head that has just started (or one under load) the agent may
# still come, so that answer is retried for AGENT_WAIT_S more, any other refusal is not.
# An agent that never starts does not come: the usual cause is its listen port (52365
# unless `ray start --dashboard-agent-listen-port` says otherwise) held by another Ray on
# that machine, which the head's dashboard_agent.log names; waiting only delays that error.
AGENT_WAIT_S = 60.0


def _submit_when_an_agent_is_up(jobs, wait_s: float = AGENT_WAIT_S, **job: Any) -> str:
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return jobs.submit_job(**job)
        except Exception as error:
            if "No available agent" not in str(error) or time.monotonic() > deadline:
                raise MedrayError(f"the cluster refused the job: {_first_line(error)}") from None
        time.sleep(2.0)


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


def _package_dir(pyproject: dict[str, Any]) -> dict[str, str]:
    return pyproject.get("tool", {}).get("setuptools", {}).get("package-dir", {})
