"""medray: train, tune and serve medical AI models on a Ray cluster.

The Python API, the few calls a notebook needs (medray/api.py; each is the code path of
a `medray` command and returns what that command prints with --json):

    import medray

    store = "file:///tmp/medray-store"
    medray.import_dataset("sklearn", "breast_cancer", name="wdbc", storage=store)
    summary = medray.run_training("train/configs/wdbc_attention.yaml", ["optim.epochs=5"], storage=store)
    medray.promote(summary["run"], "train/configs/wdbc_attention.yaml", storage=store)
    model = medray.load_model("wdbc", storage=store)   # the champion, as Serve runs it, without Ray

Each name is imported on first use (PEP 562), so `import medray` (and any
`import medray.cluster.…`) stays light: no torch and no Ray until a call needs them.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("medray")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

# Each public name and the module that holds it.
_PUBLIC = {
    "import_dataset": "medray.api",
    "datasets": "medray.api",
    "describe_dataset": "medray.api",
    "run_training": "medray.api",
    "evaluate": "medray.api",
    "run_search": "medray.api",
    "promote": "medray.api",
    "models": "medray.api",
    "load_model": "medray.api",
    "export_model": "medray.api",
    "open_storage": "medray.api",
    "load_config": "medray.cluster.config",
    "MedrayConfig": "medray.cluster.config",
    "Storage": "medray.cluster.storage",
    "ServedModel": "medray.serve.model",
}

__all__ = list(_PUBLIC)


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'medray' has no attribute '{name}'")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
