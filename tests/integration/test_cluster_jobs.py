"""A real multi-node Ray cluster on this machine (`ray start --head` plus a worker node with
its own resources): jobs submitted through the Jobs API spread training over both nodes,
survive the worker node being killed (resumed from the latest checkpoint), and can be
listed, inspected and stopped; medray installed from its wheel into a fresh venv works
from any folder and submits a job that ships only the installed package."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medray.cluster.runtime import free_port
from support.project import PROJECT

pytestmark = pytest.mark.integration

RAY = [sys.executable, "-m", "ray.scripts.scripts"]


def _env(tmp_path: Path) -> dict[str, str]:
    # `python` in a job's entrypoint must be this interpreter, as it is on a real cluster's image.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25", "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
           "MEDRAY_STORAGE": f"file://{tmp_path / 'store'}",
           # What `medray submit` builds from this checkout stays in the test's folder.
           "MEDRAY_WHEEL_CACHE": str(tmp_path / "wheels"),
           # Ray's token authentication, on for every node and client as on a real cluster.
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    for key in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
        env.pop(key, None)
    return env


def _agent_port() -> list[str]:
    """A node's dashboard agent listens on 52365 unless told otherwise; any other Ray on the
    machine may hold that port, and a head whose agent cannot bind it answers every job
    submission "No available agent to submit job" (its dashboard_agent.log says why)."""
    return [f"--dashboard-agent-listen-port={free_port()}"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Head (2 CPUs, dashboard with the Jobs API) and one worker node (1 CPU)."""
    tmp_path = tmp_path_factory.mktemp("cluster")
    env = _env(tmp_path)
    gcs_port, dashboard_port = free_port(), free_port()
    # The head reports lost nodes within seconds rather than Ray's default ~30 s.
    system = json.dumps({"health_check_period_ms": 1000, "health_check_failure_threshold": 3})
    # --block: each node is one process group this test starts and stops itself (`ray stop`
    # would stop every Ray on the machine, the test session's own included).
    head = subprocess.Popen(RAY + ["start", "--head", f"--port={gcs_port}", "--num-cpus=2", *_agent_port(),
                                   "--include-dashboard=true",
                                   "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}", "--block",
                                   "--disable-usage-stats", f"--system-config={system}"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    state = {"env": env, "gcs": f"127.0.0.1:{gcs_port}", "address": f"http://127.0.0.1:{dashboard_port}",
             "storage": env["MEDRAY_STORAGE"], "worker": None}

    def start_worker():
        state["worker"] = subprocess.Popen(
            RAY + ["start", f"--address={state['gcs']}", "--num-cpus=1", '--resources={"worker_node": 1}', "--block",
                   *_agent_port(),
                   "--disable-usage-stats"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        _wait_for_nodes(state, 2)

    try:
        _wait_for_jobs_api(state["address"])
        start_worker()
        medray(state, "data", "import", "sklearn", "breast_cancer", "--name", "wdbc")
        yield state
    finally:
        # SIGTERM to `ray start` alone: it stops its node's processes (a second each, then
        # SIGKILL). A head that has run jobs still spends ~30 s in its exit handlers after
        # that, so it gets 10 s before the whole group is killed.
        nodes = [node for node in (state["worker"], head) if node is not None]
        for node in nodes:
            node.terminate()  # a no-op for a node that has already exited
        deadline = time.monotonic() + 10
        for node in nodes:
            try:
                node.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.pid, signal.SIGKILL)  # whatever the node left behind
            node.wait(timeout=30)


def medray(cluster, *args, check=True):
    result = subprocess.run([sys.executable, "-m", "medray.cli", *args], cwd=PROJECT, env=cluster["env"],
                            capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"medray {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return result


def _wait_for_jobs_api(address: str) -> None:
    import httpx

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{address}/api/version", timeout=2).status_code in (200, 401):  # 401: token auth on
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError("the Jobs API did not come up")


def _wait_for_nodes(state, count: int) -> None:
    code = ("import ray; ray.init(address='%s', logging_level='ERROR'); "
            "print(sum(1 for n in ray.nodes() if n['Alive']))" % state["gcs"])
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        alive = subprocess.run([sys.executable, "-c", code], env=state["env"], capture_output=True, text=True)
        if alive.returncode == 0 and alive.stdout.strip().splitlines()[-1:] == [str(count)]:
            return
        time.sleep(1)
    raise AssertionError(f"the cluster did not reach {count} live nodes")


def _history(cluster, run: str) -> list[dict]:
    root = Path(cluster["storage"].removeprefix("file://")) / "runs" / run
    latest = max(root.glob("checkpoint_*/progress.json"), key=lambda p: json.loads(p.read_text())["epoch"])
    return json.loads(latest.read_text())["history"]


TRAIN = ["train/configs/wdbc_attention.yaml", "scaling.num_workers=2", "scaling.placement_strategy=SPREAD",
         "scaling.max_failures=3", "train.patience=0", "eval.bootstrap=50", "train.cache_data=true"]


def test_training_spreads_over_two_nodes_and_survives_losing_one(cluster):
    epochs = 30
    submitted = medray(cluster, "submit", "train", *TRAIN, f"optim.epochs={epochs}", "train.name=lost-node",
                       "--address", cluster["address"], "--no-wait", "--json")
    job = json.loads(submitted.stdout)["job_id"]
    runs = Path(cluster["storage"].removeprefix("file://")) / "runs" / "lost-node"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and len(list(runs.glob("checkpoint_*/progress.json"))) < 3:
        time.sleep(0.2)
    assert list(runs.glob("checkpoint_*/progress.json")), "no checkpoint before the deadline"
    os.killpg(cluster["worker"].pid, signal.SIGKILL)  # the worker node and every process on it

    deadline = time.monotonic() + 400
    while time.monotonic() < deadline:
        status = json.loads(medray(cluster, "jobs", "status", job, "--address", cluster["address"], "--json").stdout)
        if status["status"] in ("SUCCEEDED", "FAILED", "STOPPED"):
            break
        time.sleep(2)
    logs = medray(cluster, "jobs", "logs", job, "--address", cluster["address"]).stdout
    assert status["status"] == "SUCCEEDED", logs[-3000:]
    history = _history(cluster, "lost-node")
    assert [h["epoch"] for h in history] == list(range(epochs))  # no epoch redone from the start
    assert history[0]["worker_nodes"] == 2  # SPREAD: one worker on each node
    assert history[-1]["worker_nodes"] == 1  # restarted on the head alone after the loss
    assert "(resumed)" in logs
    assert json.loads((runs / "medray_result.json").read_text())["metrics"]["test"]["auroc"] > 0.9


def test_jobs_list_status_logs_and_stop(cluster):
    address = cluster["address"]
    submitted = medray(cluster, "submit", "train", *TRAIN, "optim.epochs=500", "train.name=to-stop",
                       "--address", address, "--no-wait", "--json")
    job = json.loads(submitted.stdout)["job_id"]
    listed = json.loads(medray(cluster, "jobs", "list", "--address", address, "--json").stdout)
    assert job in [row["job_id"] for row in listed] and len(listed) >= 2
    stopped = json.loads(medray(cluster, "jobs", "stop", job, "--address", address, "--json").stdout)
    assert stopped["status"] == "STOPPED"
    assert json.loads(medray(cluster, "jobs", "status", job, "--address", address, "--json").stdout)["status"] == \
        "STOPPED"
    assert "medray.cli train" in medray(cluster, "jobs", "status", job, "--address", address).stdout + \
        json.dumps(listed)
    missing = medray(cluster, "jobs", "logs", "raysubmit_nope", "--address", address, check=False)
    assert missing.returncode == 2 and "no job 'raysubmit_nope'" in missing.stderr
    unreachable = medray(cluster, "jobs", "list", "--address", f"http://127.0.0.1:{free_port()}", check=False)
    assert unreachable.returncode == 2 and "cannot reach the Ray Jobs API" in unreachable.stderr


def test_a_wheel_install_works_from_any_folder_and_ships_only_its_package(cluster, tmp_path):
    import sysconfig

    from medray.cluster.jobs import build_wheel

    # A fresh venv with medray from the wheel; the dependencies through a .pth line naming
    # this venv's site-packages. A path line does not run that folder's own .pth files, so
    # the editable install there stays off: `medray` can only be the wheel's.
    wheel = build_wheel(PROJECT, tmp_path / "dist")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
                    "--quiet", str(wheel)], check=True, capture_output=True)
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "medray-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    # An empty folder but for a train.py and a serve.py that refuse to be imported.
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    for name in ("train.py", "serve.py"):
        (folder / name).write_text('raise SystemExit("shadow")\n')
    store = tmp_path / "wheel-store"
    env = {**{k: v for k, v in cluster["env"].items() if k != "PYTHONPATH"}, "MEDRAY_STORAGE": f"file://{store}"}

    def run(*argv: str | Path) -> str:
        result = subprocess.run(argv, cwd=folder, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, f"{argv[1:]} failed:\n{result.stderr[-3000:]}"
        return result.stdout

    # The import line of an installed medray, and what a job from this install carries:
    # the installed medray folder, none of the rest of site-packages.
    imported = json.loads(run(python, "-c", "import json, medray, medray.train.evaluate, medray.serve.model; "
                                            "from medray.cluster.jobs import runtime_env; "
                                            "print(json.dumps([medray.__file__, runtime_env()]))"))
    assert Path(imported[0]) == site / "medray" / "__init__.py"
    shipped = imported[1]
    assert shipped["py_modules"] == [str(site / "medray")] and "working_dir" not in shipped
    size = sum(f.stat().st_size for f in (site / "medray").rglob("*") if f.is_file())
    assert 100_000 < size < 50_000_000, size
    assert "submit" in run(venv / "bin" / "medray", "--help")
    run(venv / "bin" / "medray", "data", "import", "sklearn", "breast_cancer", "--name", "wdbc")

    # The config is the one the package ships (no train/configs/ here), found on the cluster too.
    submitted = json.loads(run(venv / "bin" / "medray", "submit", "train", "train/configs/wdbc_attention.yaml",
                               "optim.epochs=2", "train.patience=0", "eval.bootstrap=20", "scaling.num_workers=1",
                               "train.name=from-wheel", "--address", cluster["address"], "--json"))
    assert submitted["status"] == "SUCCEEDED" and submitted["entrypoint"].startswith("python -m medray.cli train")
    summary = json.loads((store / "runs" / "from-wheel" / "medray_result.json").read_text())
    assert summary["run"].endswith("/wheel-store/runs/from-wheel") and summary["metrics"]["test"]["auroc"] > 0.8  # 0.96
