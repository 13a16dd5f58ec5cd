"""The model registry: immutable versions and a movable champion pointer, on storage.

    {root}/models/{name}/versions/{K}/...         weights, configs, metrics, plots, model card
    {root}/models/{name}/versions/{K}/version.json  checksums of every file; written last
    {root}/models/{name}/champion.json             {"version": K, "history": [...]}

A version is published as every numbered version is (`cluster/versions.py`): the number
K claimed with a create-only `versions/K/.claim`, then the files, then `version.json`
last and create-only, so a version is never half-visible and never rewritten.

Promote and rollback only rewrite `champion.json`, and only if it is still the file they
read (If-Match on S3, a compare-and-swap under a lock on disk); on a conflict they read it
again and retry, so concurrent promotions never lose history.

File names in `version.json` are checked before they are read or written anywhere, and
loading checks every file's sha256 against it, so tampered or truncated weights are refused.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from medray.cluster import names
from medray.cluster.errors import MedrayError, NotFoundError
from medray.cluster.storage import Storage, WriteConflictError
from medray.cluster.versions import publish_version, published_numbers

VERSION_FILE = "version.json"
CHAMPION_FILE = "champion.json"
CHAMPION_ATTEMPTS = 20


class RegistryError(MedrayError):
    """A registry operation that cannot be done as asked."""


def check_model_name(name: str) -> str:
    return names.check_versioned_name(name, "model name", RegistryError)


def check_file_name(name: str, model: str, version: int | None = None) -> str:
    """A registry file is one plain name: it becomes a storage key and a local path."""
    where = f"model '{model}'" + (f" version {version}" if version is not None else "")
    return names.check(names.FILE, name, f"{where}: file name", RegistryError,
                       "use 1-128 letters, digits, '.', '_' or '-', no folders")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Registry:
    def __init__(self, storage: Storage):
        self.storage = storage

    def _key(self, name: str, version: int | None = None) -> str:
        base = f"models/{check_model_name(name)}"
        return base if version is None else f"{base}/versions/{version}"

    # Reading ---------------------------------------------------------------------
    def models(self) -> list[str]:
        return [name for name in self.storage.list_dir("models") if self.versions(name)]

    def versions(self, name: str) -> list[int]:
        return published_numbers(self.storage, f"{self._key(name)}/versions", VERSION_FILE)

    def version_info(self, name: str, version: int) -> dict[str, Any]:
        key = f"{self._key(name, version)}/{VERSION_FILE}"
        if not self.storage.exists(key):
            known = ", ".join(map(str, self.versions(name))) or "none"
            raise NotFoundError(f"model '{name}' has no version {version} (versions: {known})")
        info = self.storage.read_json(key)
        files = info.get("files") if isinstance(info, dict) else None
        if not isinstance(files, dict):
            raise RegistryError(f"model '{name}' version {version}: {VERSION_FILE} lists no files")
        for filename, digest in files.items():
            check_file_name(filename, name, version)
            if not (isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest)):
                raise RegistryError(f"model '{name}' version {version}: '{filename}' has no valid sha256")
        return info

    def champion(self, name: str) -> dict[str, Any] | None:
        key = f"{self._key(name)}/{CHAMPION_FILE}"
        if not self.storage.exists(key):
            return None
        pointer = self.storage.read_json(key)
        if pointer["version"] not in self.versions(name):
            raise RegistryError(
                f"model '{name}': champion.json points to version {pointer['version']}, which does not exist; "
                f"repair it with `medray models promote {name} K`"
            )
        return pointer

    def resolve(self, ref: str) -> tuple[str, int]:
        """`NAME@K`, or `NAME` for its champion."""
        name, version = names.parse_versioned(ref, "model", RegistryError)
        if version is not None:
            self.version_info(name, version)
            return name, version
        pointer = self.champion(name)
        if pointer is None:
            if not self.versions(name):
                raise NotFoundError(f"model '{name}' is not in the registry at {self.storage.uri('models')}")
            raise RegistryError(f"model '{name}' has no champion; promote one with `medray models promote {name} K`")
        return name, pointer["version"]

    def read_file(self, name: str, version: int, filename: str, info: dict[str, Any] | None = None) -> bytes:
        """One file of a version, checked against the sha256 recorded when it was written."""
        info = info or self.version_info(name, version)
        check_file_name(filename, name, version)
        expected = info["files"].get(filename)
        if expected is None:
            raise NotFoundError(f"model '{name}' version {version} has no file '{filename}'")
        data = self.storage.read_bytes(f"{self._key(name, version)}/{filename}")
        if _sha256(data) != expected:
            raise RegistryError(
                f"model '{name}' version {version}: '{filename}' does not match its recorded sha256 "
                "(tampered or corrupted); refusing to load it"
            )
        return data

    def download(self, name: str, version: int, local_dir: str | Path) -> Path:
        """Every file of a version into `local_dir`, each checksum verified."""
        info = self.version_info(name, version)  # every file name checked
        local = Path(local_dir)
        local.mkdir(parents=True, exist_ok=True)
        for filename in info["files"]:
            target = local / filename
            if target.resolve().parent != local.resolve():  # a plain name stays in; say so if not
                raise RegistryError(f"model '{name}' version {version}: '{filename}' would be written outside "
                                    f"{local}")
            target.write_bytes(self.read_file(name, version, filename, info))
        return local

    # Writing ---------------------------------------------------------------------
    def register(self, name: str, files: dict[str, Path], metadata: dict[str, Any]) -> int:
        """Publish a new immutable version from local files; returns its number."""
        check_model_name(name)
        for filename in files:
            check_file_name(filename, name)
        if VERSION_FILE in files:
            raise RegistryError(f"model '{name}': '{VERSION_FILE}' is the registry's own file")
        digests = {filename: _sha256(Path(path).read_bytes()) for filename, path in files.items()}
        version, _ = publish_version(
            self.storage, f"{self._key(name)}/versions", files, VERSION_FILE,
            lambda version: {"name": name, "version": version, "created_at": _now(), "files": digests, **metadata},
            f"model '{name}'", RegistryError,
        )
        return version

    def _update_champion(self, name: str, change: Callable[[dict[str, Any] | None], dict[str, Any]]) -> dict:
        """Rewrite champion.json as `change(current)` says, only if nobody rewrote it meanwhile."""
        key = f"{self._key(name)}/{CHAMPION_FILE}"
        for attempt in range(CHAMPION_ATTEMPTS):
            try:
                data, tag = self.storage.read_with_tag(key)
                current = json.loads(data)
            except NotFoundError:
                current, tag = None, None
            pointer = change(current)
            try:
                if tag is None:
                    self.storage.write_json(key, pointer, exclusive=True)
                else:
                    self.storage.write_json(key, pointer, if_match=tag)
                return pointer
            except WriteConflictError:
                time.sleep(random.uniform(0, 0.02 * (attempt + 1)))  # spread the retries out
        raise RegistryError(f"model '{name}': champion.json kept changing under other writers; try again")

    def promote(self, name: str, version: int, reason: str = "promoted") -> dict[str, Any]:
        """Point the champion at `version` (which must exist); the old pointer is kept for rollback."""
        self.version_info(name, version)

        def change(current: dict[str, Any] | None) -> dict[str, Any]:
            history = list(current.get("history", [])) if current else []
            if current:
                history.append({"version": current["version"], "since": current["since"]})
            return {"name": name, "version": version, "since": _now(), "reason": reason, "history": history}

        return self._update_champion(name, change)

    def rollback(self, name: str) -> dict[str, Any]:
        """Point the champion back at the version it replaced."""
        existing = set(self.versions(name))

        def change(current: dict[str, Any] | None) -> dict[str, Any]:
            if current is None:
                raise RegistryError(f"model '{name}' has no champion to roll back")
            history = list(current.get("history", []))
            while history and history[-1]["version"] not in existing:
                history.pop()
            if not history:
                raise RegistryError(f"model '{name}' has no earlier champion to roll back to")
            previous = history.pop()
            return {"name": name, "version": previous["version"], "since": _now(),
                    "reason": f"rolled back from version {current['version']}", "history": history}

        return self._update_champion(name, change)
