"""Where the project and the real datasets are, and `medray …` run as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]
SHARED_DATA = PROJECT.parent / "shared" / "data"


def medray(*args, env=None, check=True, timeout=300):
    """`python -m medray.cli ARGS` from the project root; with `check`, a failure raises
    with the command's stderr."""
    result = subprocess.run(
        [sys.executable, "-m", "medray.cli", *args], cwd=PROJECT, capture_output=True, text=True,
        env={**os.environ, **(env or {})}, timeout=timeout,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"medray {' '.join(args)} failed:\n{result.stderr}")
    return result
