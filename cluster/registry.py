"""The model registry: immutable versions and a movable champion pointer, on storage.

    {root}/models/{name}/versions/{K}/...         weights, configs, metrics, plots, model card
    {root}/models/{name}/versions/{K}/version.json  checksums of every file; written last
    {root}/models/{name}/champion.json             {"version": K, "history": [...]}

A version is published like a dataset version: its files first, `version.json` last and
create-only, so it is never half-visible and never rewritten. Promote and rollback only
rewrite `champion.json` (one atomic PUT / rename). Loading checks every file's sha256
against `version.json`, so tampered or truncated weights are refused.
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cluster.errors import MedrayError, NotFoundError
from cluster.storage import AlreadyExistsError, Storage

VERSION_FILE = "version.json"
CHAMPION_FILE = "champion.json"
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")


class RegistryError(MedrayError):
    """A registry operation that cannot be done as asked."""


def check_model_name(name: str) -> str:
    if not _NAME.match(name or ""):
        raise RegistryError(f"model name '{name}' is not allowed: use 1-64 lowercase letters, digits, '.', '_', '-'")
    return name


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def parse_model_ref(ref: str) -> tuple[str, int | None]:
    """`NAME` or `NAME@K` -> (name, version or None for the champion)."""
    name, _, version = ref.partition("@")
    if version and not re.fullmatch(r"v?\d+", version):
        raise RegistryError(f"model reference '{ref}' is not NAME or NAME@K")
    return check_model_name(name), int(version.lstrip("v")) if version else None


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
        found = []
        for entry in self.storage.list_dir(f"{self._key(name)}/versions"):
            if entry.isdigit() and self.storage.exists(f"{self._key(name, int(entry))}/{VERSION_FILE}"):
                found.append(int(entry))
        return sorted(found)

    def version_info(self, name: str, version: int) -> dict[str, Any]:
        key = f"{self._key(name, version)}/{VERSION_FILE}"
        if not self.storage.exists(key):
            known = ", ".join(map(str, self.versions(name))) or "none"
            raise NotFoundError(f"model '{name}' has no version {version} (versions: {known})")
        return self.storage.read_json(key)

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
        name, version = parse_model_ref(ref)
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
        info = self.version_info(name, version)
        local = Path(local_dir)
        local.mkdir(parents=True, exist_ok=True)
        for filename in info["files"]:
            (local / filename).write_bytes(self.read_file(name, version, filename, info))
        return local

    # Writing ---------------------------------------------------------------------
    def register(self, name: str, files: dict[str, Path], metadata: dict[str, Any]) -> int:
        """Publish a new immutable version from local files; returns its number."""
        check_model_name(name)
        digests = {filename: _sha256(Path(path).read_bytes()) for filename, path in files.items()}
        for _attempt in range(5):
            version = (self.versions(name) or [0])[-1] + 1
            prefix = self._key(name, version)
            uploaded = []
            try:
                for filename, path in files.items():
                    self.storage.put_file(f"{prefix}/{filename}", path)
                    uploaded.append(f"{prefix}/{filename}")
                self.storage.write_json(
                    f"{prefix}/{VERSION_FILE}",
                    {"name": name, "version": version, "created_at": _now(), "files": digests, **metadata},
                    exclusive=True,
                )
                return version
            except AlreadyExistsError:
                for key in uploaded:
                    self.storage.delete(key)
            except BaseException:
                for key in uploaded:
                    self.storage.delete(key)
                raise
        raise RegistryError(f"could not claim a new version of model '{name}': too many concurrent writers")

    def promote(self, name: str, version: int, reason: str = "promoted") -> dict[str, Any]:
        """Point the champion at `version` (which must exist); the old pointer is kept for rollback."""
        self.version_info(name, version)
        key = f"{self._key(name)}/{CHAMPION_FILE}"
        current = self.storage.read_json(key) if self.storage.exists(key) else None
        history = list(current.get("history", [])) if current else []
        if current:
            history.append({"version": current["version"], "since": current["since"]})
        pointer = {"name": name, "version": version, "since": _now(), "reason": reason, "history": history}
        self.storage.write_json(key, pointer)
        return pointer

    def rollback(self, name: str) -> dict[str, Any]:
        """Point the champion back at the version it replaced."""
        key = f"{self._key(name)}/{CHAMPION_FILE}"
        if not self.storage.exists(key):
            raise RegistryError(f"model '{name}' has no champion to roll back")
        current = self.storage.read_json(key)
        history = list(current.get("history", []))
        existing = set(self.versions(name))
        while history and history[-1]["version"] not in existing:
            history.pop()
        if not history:
            raise RegistryError(f"model '{name}' has no earlier champion to roll back to")
        previous = history.pop()
        pointer = {"name": name, "version": previous["version"], "since": _now(),
                   "reason": f"rolled back from version {current['version']}", "history": history}
        self.storage.write_json(key, pointer)
        return pointer
