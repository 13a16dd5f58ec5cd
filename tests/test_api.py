"""The Python API (`import medray`): light to import, every name real, and the same
results as the CLI's --json."""

import json
import subprocess
import sys

import pytest

import medray
from support.project import PROJECT


def run_python(*args: str) -> subprocess.CompletedProcess:
    """This Python with `args`, from / (not the repository root): the installed package."""
    return subprocess.run([sys.executable, *args], cwd="/", capture_output=True, text=True, timeout=120)


def test_import_medray_and_the_cli_parser_load_neither_torch_nor_ray():
    result = run_python("-c", "import sys, medray, medray.cluster.storage, medray.cli\n"
                              "medray.cli.build_parser().format_help()\n"
                              "print(sorted(m for m in ('torch', 'ray') if m in sys.modules))")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_version_from_the_command_line():
    result = run_python("-m", "medray.cli", "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"medray {medray.__version__}"
    assert medray.__version__ != "0+unknown"  # the installed package's metadata was found


def test_every_public_name_resolves_to_its_implementation():
    import medray.api
    from medray.cluster.storage import Storage
    from medray.serve.model import ServedModel

    assert set(medray.__all__) <= set(dir(medray))
    for name in medray.__all__:
        assert getattr(medray, name) is not None
    assert medray.load_model is medray.api.load_model and medray.run_search is medray.api.run_search
    assert medray.Storage is Storage and medray.ServedModel is ServedModel
    with pytest.raises(AttributeError, match="no attribute 'trian'"):
        medray.trian


def test_a_loaded_config_takes_overrides_on_top():
    base = medray.load_config(PROJECT / "train" / "configs" / "wdbc_attention.yaml", ["optim.lr=0.5"])
    config = medray.load_config(base, ["optim.epochs=3"])
    assert (config.optim.lr, config.optim.epochs) == (0.5, 3)
    assert config.model == base.model and base.optim.epochs != 3  # the base is left as it was


def test_import_then_list_on_local_storage_as_the_cli_lists(tmp_path):
    root = f"file://{tmp_path / 'store'}"
    manifest = medray.import_dataset("sklearn", "breast_cancer", name="wdbc", storage=root, seed=3)
    assert (manifest["name"], manifest["version"], manifest["modality"]) == ("wdbc", 1, "tabular")
    assert sum(manifest["splits"][s]["rows"] for s in ("train", "val", "test")) == 569  # Wisconsin's rows

    listing = medray.datasets(medray.Storage(root))
    assert listing["storage"] == root
    (row,) = listing["datasets"]
    assert (row["name"], row["versions"], row["classes"]) == ("wdbc", [1], manifest["classes"])
    assert medray.describe_dataset("wdbc@v1", root) == manifest

    cli = run_python("-m", "medray.cli", "data", "list", "--json", "--storage", root)
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout) == listing
