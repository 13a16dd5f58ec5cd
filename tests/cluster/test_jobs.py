"""What `medray submit` ships, without Ray: the source-checkout test, the package built
once per content of the sources, the config file that travels with a job."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from medray.cluster import jobs
from medray.cluster.errors import MedrayError
from support.project import PROJECT

PYPROJECT = textwrap.dedent("""
    [build-system]
    requires = ["setuptools>=77"]
    build-backend = "setuptools.build_meta"

    [project]
    name = "medray"
    version = "0.1.0"
    readme = "README.md"

    [tool.setuptools]
    package-dir = { "medray" = "medray", "medray.cluster" = "cluster" }
    packages = ["medray", "medray.cluster"]
    """)


def tiny_checkout(root: Path) -> Path:
    """A checkout laid out as medray's is (package-dir folders beside pyproject.toml)."""
    files = {"pyproject.toml": PYPROJECT, "README.md": "tiny\n", "medray/__init__.py": "",
             "cluster/__init__.py": "", "cluster/jobs.py": "VERSION = 1\n", "cluster/old.py": "OLD = True\n"}
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_a_source_checkout_is_told_from_an_installed_package(tmp_path):
    assert jobs.source_checkout() == PROJECT  # these tests run from the repository
    assert jobs.source_checkout(tiny_checkout(tmp_path / "repo") / "cluster") == tmp_path / "repo"

    installed = tmp_path / "site-packages" / "medray" / "cluster"  # a wheel's layout: nothing beside it
    installed.mkdir(parents=True)
    assert jobs.source_checkout(installed) is None

    other = tmp_path / "other"
    (other / "cluster").mkdir(parents=True)
    (other / "pyproject.toml").write_text(PYPROJECT.replace('name = "medray"', 'name = "someone-else"'))
    assert jobs.source_checkout(other / "cluster") is None  # another project's folder named cluster/
    (other / "pyproject.toml").write_text(PYPROJECT.replace('"medray.cluster" = "cluster"', '"medray.cluster" = "src"'))
    assert jobs.source_checkout(other / "cluster") is None  # medray.cluster maps elsewhere


def test_package_sources_are_the_mapped_folders_without_bytecode(tmp_path):
    root = tiny_checkout(tmp_path)
    (root / "cluster" / "__pycache__").mkdir()
    (root / "cluster" / "__pycache__" / "jobs.cpython-311.pyc").write_bytes(b"\0")
    (root / "tests").mkdir()
    (root / "tests" / "test_x.py").write_text("")  # not a mapped folder
    assert [p.as_posix() for p in jobs.package_sources(root)] == [
        "README.md", "cluster/__init__.py", "cluster/jobs.py", "cluster/old.py", "medray/__init__.py",
        "pyproject.toml"]


def test_the_package_is_built_once_per_content_of_its_sources(tmp_path, monkeypatch):
    root, cache = tiny_checkout(tmp_path / "repo"), tmp_path / "cache"
    first = jobs.built_package(root, cache)
    assert first.name == "medray" and (first / "cluster" / "jobs.py").read_text() == "VERSION = 1\n"
    assert sorted(p.name for p in first.iterdir()) == ["__init__.py", "cluster"]  # no dist-info, no wheel
    assert not (root / "build").exists() and not list(root.glob("*.egg-info"))  # the checkout stays clean

    def no_build(*args):
        raise AssertionError("rebuilt sources that did not change")

    with monkeypatch.context() as patch:
        patch.setattr(jobs, "build_wheel", no_build)
        assert jobs.built_package(root, cache) == first

    (root / "cluster" / "jobs.py").write_text("VERSION = 2\n")
    (root / "cluster" / "old.py").unlink()
    second = jobs.built_package(root, cache)
    assert second != first and (second / "cluster" / "jobs.py").read_text() == "VERSION = 2\n"
    assert not (second / "cluster" / "old.py").exists()  # a deleted file is gone from the new build
    assert (first / "cluster" / "jobs.py").read_text() == "VERSION = 1\n"  # the old build is left as it was
    assert sorted(p.name for p in cache.iterdir()) == sorted([first.parent.name, second.parent.name])


def test_a_local_config_travels_with_the_job_and_a_shipped_name_stays(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "exp.yaml").write_text("optim: {epochs: 3}\n")
    folder = tmp_path / "job-files"
    folder.mkdir()
    argv, files = jobs.ship_config(["train", "mine/exp.yaml", "optim.lr=0.1", "--json"], "mine/exp.yaml", folder)
    assert argv == ["train", "exp.yaml", "optim.lr=0.1", "--json"] and files == folder
    assert [p.name for p in folder.iterdir()] == ["exp.yaml"]  # the working_dir holds that one file
    assert (folder / "exp.yaml").read_text() == "optim: {epochs: 3}\n"

    shipped = ["train", "train/configs/wdbc_attention.yaml", "--json"]  # no such file here: the package's
    assert jobs.ship_config(shipped, shipped[1], folder) == (shipped, None)
    assert jobs.ship_config(["serve", "up"], None, folder) == (["serve", "up"], None)


def test_the_runtime_env_ships_code_unless_the_image_has_it(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDRAY_STORAGE", "s3://bucket/prefix")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "never-forwarded")
    monkeypatch.setattr(jobs, "code_to_ship", lambda: tmp_path / "medray")
    env = jobs.runtime_env(files=tmp_path / "files")
    assert env["py_modules"] == [str(tmp_path / "medray")] and env["working_dir"] == str(tmp_path / "files")
    assert env["env_vars"]["MEDRAY_STORAGE"] == "s3://bucket/prefix" and "AWS_SECRET_ACCESS_KEY" not in env["env_vars"]
    bare = jobs.runtime_env(ship_code=False)
    assert "py_modules" not in bare and "working_dir" not in bare and bare["env_vars"] == env["env_vars"]


@pytest.mark.parametrize("argv, expected", [
    (["train", "exp.yaml", "--json"], "python -m medray.cli train exp.yaml --json"),
    (["serve", "up", "--config", "my serve.yaml"], "python -m medray.cli serve up --config 'my serve.yaml'"),
])
def test_entrypoint(argv, expected):
    assert jobs.entrypoint(argv) == expected


class _Jobs:
    """A Jobs API client that refuses the first `refusals` submissions with `message`."""

    def __init__(self, refusals: int, message: str):
        self.refusals, self.message, self.calls = refusals, message, 0

    def submit_job(self, **job):
        self.calls += 1
        if self.calls <= self.refusals:
            raise RuntimeError(f"Request failed with status code 500: {self.message}")
        return "raysubmit_1"


def test_a_head_without_its_agent_yet_is_waited_for(monkeypatch):
    monkeypatch.setattr(jobs.time, "sleep", lambda s: None)
    client = _Jobs(2, "No available agent to submit job, please try again later..")
    assert jobs._submit_when_an_agent_is_up(client, entrypoint="x") == "raysubmit_1"
    assert client.calls == 3


def test_any_other_refusal_is_one_clear_error_at_once(monkeypatch):
    monkeypatch.setattr(jobs.time, "sleep", lambda s: None)
    client = _Jobs(5, "runtime_env: working_dir too large")
    with pytest.raises(MedrayError, match="the cluster refused the job: .*working_dir too large"):
        jobs._submit_when_an_agent_is_up(client, entrypoint="x")
    assert client.calls == 1
    forever = _Jobs(10**6, "No available agent to submit job")
    with pytest.raises(MedrayError, match="No available agent"):
        jobs._submit_when_an_agent_is_up(forever, wait_s=0.0, entrypoint="x")
