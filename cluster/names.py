"""The rules for names that become storage keys, folder names or parts of a URL.

Each rule is matched against the whole string (`fullmatch`): with `match` and a `$`
anchor, `"nl\\n"` passes, because `$` also matches before a trailing newline. No rule
lets a name start with `.`, so `.` and `..` are never a name.
"""

from __future__ import annotations

import re

DATASET = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
"""Datasets and registry models: `datasets/{name}/`, `models/{name}/`."""
DATASET_HINT = "use 1-64 lowercase letters, digits, '.', '_' or '-', starting with a letter or digit"
VERSION = re.compile(r"v?([0-9]+)")
"""The version after `@` in a reference: `vN` or `N`."""
RUN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
"""Training runs and searches (`train.name`, `--resume`): `runs/{name}/`."""
FILE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
"""One file inside a registry version or the sources folder: no folders, no `..`."""


def allowed(rule: re.Pattern[str], value: object) -> bool:
    return isinstance(value, str) and rule.fullmatch(value) is not None


def check(rule: re.Pattern[str], value: object, what: str, error: type[Exception], hint: str) -> str:
    """`value` if it follows `rule`; else `error` saying what is allowed. The value is
    shown with repr() so that a newline or control character in it stays on one line."""
    if not allowed(rule, value):
        raise error(f"{what} {value!r} is not allowed: {hint}")
    return value  # type: ignore[return-value]


def check_run_name(name: object, what: str = "run name") -> str:
    from medray.cluster.errors import ConfigError

    return check(RUN, name, what, ConfigError,
                 "use 1-100 letters, digits, '.', '_' or '-', starting with a letter or digit")


def check_versioned_name(name: object, what: str, error: type[Exception]) -> str:
    """A dataset's or registry model's name (`what`: "dataset name", "model name")."""
    return check(DATASET, name, what, error, DATASET_HINT)


def parse_versioned(ref: str, what: str, error: type[Exception]) -> tuple[str, int | None]:
    """`NAME`, `NAME@vN` or `NAME@N` (a dataset or a registry model) -> (name, version or
    None when no version is given). `what` ("dataset", "model") starts the messages."""
    name, at, version = ref.partition("@")
    match = VERSION.fullmatch(version)
    if at and not match:
        raise error(f"{what} reference {ref!r} is not NAME or NAME@vN")
    check_versioned_name(name, f"{what} name", error)
    return name, int(match.group(1)) if match else None
