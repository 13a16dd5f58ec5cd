"""Numbered, immutable versions on storage: how a dataset or a registry model is published.

A version lives in its own folder under a parent (`datasets/{name}/v{N}/`,
`models/{name}/versions/{N}/`). A writer first claims the next number with a
create-only `.claim` in that folder, so no two writers ever put files in one folder (a
loser would otherwise delete or overwrite the winner's files); then it uploads its
files, and writes the version's index file (the manifest) last and create-only, so a
version is never half-visible and never rewritten. A claimed number is never reused,
even if its writer died before publishing: readers list only folders whose index exists.
"""

from __future__ import annotations

import logging
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, TypeVar

from medray.cluster.storage import AlreadyExistsError, Storage

log = logging.getLogger(__name__)
T = TypeVar("T")

CLAIM_FILE = ".claim"
CLAIM_ATTEMPTS = 20
"""Numbers a writer tries before giving up: each failed claim means another writer took one."""


def claimed_numbers(storage: Storage, parent: str, folder_prefix: str = "") -> list[int]:
    """Every number with a folder under `parent` (claimed, published or not), ascending."""
    pattern = re.compile(re.escape(folder_prefix) + r"([0-9]+)")
    return sorted(int(match.group(1)) for entry in storage.list_dir(parent)
                  if (match := pattern.fullmatch(entry)))


def published_numbers(storage: Storage, parent: str, index_file: str, folder_prefix: str = "") -> list[int]:
    """The numbers whose index file exists (what readers may open), ascending."""
    return [number for number in claimed_numbers(storage, parent, folder_prefix)
            if storage.exists(f"{parent}/{folder_prefix}{number}/{index_file}")]


def publish_version(
    storage: Storage,
    parent: str,
    files: dict[str, Path],
    index_file: str,
    index: Callable[[int], dict[str, Any]],
    what: str,
    error: type[Exception],
    folder_prefix: str = "",
) -> tuple[int, dict[str, Any]]:
    """Publish `files` (relative key -> local path) as the next version under `parent`.

    `index(number)` builds the index document, written last as `index_file`; returns
    the number and that document. A failure after the claim removes this writer's
    uploads (the claim made the folder this writer's alone) and propagates; running
    out of numbers raises `error` naming `what` (e.g. "model 'ecg'")."""
    def upload(prefix: str) -> None:
        log.info("writing %d file(s) to %s", len(files), storage.uri(prefix))
        for relative, path in files.items():
            storage.put_file(f"{prefix}/{relative}", path)

    return publish_written_version(storage, parent, upload, index_file, lambda number, _: index(number),
                                   what, error, folder_prefix)


def publish_written_version(
    storage: Storage,
    parent: str,
    write: Callable[[str], T],
    index_file: str,
    index: Callable[[int, T], dict[str, Any]],
    what: str,
    error: type[Exception],
    folder_prefix: str = "",
) -> tuple[int, dict[str, Any]]:
    """Claim the next version under `parent`, let `write(prefix)` put its files under that
    key (from as many processes as it likes: the folder is this writer's alone), then
    write `index(number, what write returned)` last as `index_file`. A failure, or an
    interrupt, after the claim removes everything written under the prefix but the claim."""
    for _attempt in range(CLAIM_ATTEMPTS):
        number = max(claimed_numbers(storage, parent, folder_prefix), default=0) + 1
        prefix = f"{parent}/{folder_prefix}{number}"
        try:
            storage.write_json(f"{prefix}/{CLAIM_FILE}",
                               {"claimed_at": datetime.now(timezone.utc).isoformat(timespec="seconds")},
                               exclusive=True)
        except AlreadyExistsError:
            continue  # another writer holds this number; take the next
        try:
            written = write(prefix)
            document = index(number, written)
            storage.write_json(f"{prefix}/{index_file}", document, exclusive=True)
            return number, document
        except BaseException:
            _remove_written(storage, prefix)
            raise
    raise error(f"could not claim a new version of {what}: too many concurrent writers")


def _remove_written(storage: Storage, prefix: str) -> None:
    """Everything under a claimed, unpublished `prefix` but its claim (never reused)."""
    try:
        entries = storage.list_dir(prefix)  # hidden names, the claim among them, are not listed
    except Exception:
        log.warning("could not list unpublished files under %s", storage.uri(prefix))
        return
    for entry in entries:
        try:
            storage.delete_prefix(f"{prefix}/{entry}")  # a folder of files (a dataset's split)
        except Exception:
            log.warning("could not remove unpublished files under %s", storage.uri(f"{prefix}/{entry}"))
        _remove(storage, [f"{prefix}/{entry}"])


def _remove(storage: Storage, keys: list[str]) -> None:
    for key in keys:
        try:
            storage.delete(key)
        except Exception:  # best effort: the version stays unpublished either way
            log.warning("could not remove unpublished file %s", storage.uri(key))
