"""The one place that knows `file://` from `s3://`.

Everything durable lives under one root URI. Callers speak in keys relative to that
root (`datasets/ecg200/v1/manifest.json`); this module turns them into local paths or
S3 objects. Writes that others read are atomic: a local file appears by rename, an S3
object appears whole on PUT, and `exclusive=True` refuses to replace an existing one,
which is how a version number is claimed without a lock. `if_match=TAG` (a tag from
`read_with_tag`) replaces a file only if nobody changed it since it was read: a
compare-and-swap, for the few files that are updated in place.

Every key is checked: a `..`, `.` or empty segment is refused, so no key, whatever a
stored file says, reaches outside the root.

S3 is written through boto3 (server-side encryption and conditional PUT have no
pyarrow call). Ray Data, Ray Train and Ray Tune use `arrow_filesystem()`: on S3 it reads
through pyarrow's S3 filesystem but sends every write (checkpoints, Tune's state)
through boto3 with the same encryption headers, since pyarrow's S3 filesystem cannot
ask for server-side encryption.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

from medray.cluster.config import StorageConfig
from medray.cluster.errors import ConfigError, NotFoundError, StorageError

STORAGE_ENV = "MEDRAY_STORAGE"
DEFAULT_ROOT = "~/.medray"


class WriteConflictError(StorageError):
    """A conditional write found the file changed (or created) by another writer."""


class AlreadyExistsError(WriteConflictError):
    """An exclusive write found the key already taken."""


def check_key(key: str) -> str:
    """`key` without surrounding `/`, if every segment is a plain name."""
    key = key.strip("/")
    if key and (any(part in ("", ".", "..") for part in key.split("/")) or "\x00" in key):
        raise StorageError(f"storage key {key!r} is not allowed: no empty, '.' or '..' parts")
    return key


def resolve_root(cli_root: str | None = None, config: StorageConfig | None = None) -> str:
    """`--storage`, then the config, then `MEDRAY_STORAGE`, then `file://~/.medray`."""
    root = cli_root or (config.root if config else None) or os.environ.get(STORAGE_ENV)
    return normalize_root(root or DEFAULT_ROOT)


def normalize_root(root: str) -> str:
    """A canonical root URI: `file:///abs/path` or `s3://bucket/prefix` (no trailing /)."""
    if root.startswith("s3://"):
        parsed = urlparse(root)
        bucket = parsed.netloc
        if not 3 <= len(bucket) <= 63 or bucket != bucket.lower() or "_" in bucket:
            raise ConfigError(
                f"storage root '{root}': S3 bucket name '{bucket}' must be 3-63 lowercase "
                "letters, digits, dots or hyphens"
            )
        prefix = parsed.path.strip("/")
        return f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
    if "://" in root and not root.startswith("file://"):
        raise ConfigError(f"storage root '{root}' is not allowed: use file://PATH, a path, or s3://BUCKET/PREFIX")
    path = root.removeprefix("file://")
    return "file://" + str(Path(path).expanduser().resolve())


@dataclass(frozen=True)
class S3Endpoint:
    """Where S3 is, from the standard AWS variables (AWS_ENDPOINT_URL for MinIO/local)."""

    url: str | None
    region: str

    @classmethod
    def from_env(cls) -> "S3Endpoint":
        url = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        return cls(url=url, region=region)

    def describe(self) -> str:
        return self.url or f"AWS S3 ({self.region})"


class Storage:
    """One storage root. Keys are `/`-separated and relative to the root."""

    def __init__(self, root: str, config: StorageConfig | None = None):
        self.root = normalize_root(root)
        self.config = config or StorageConfig()
        if self.root.startswith("s3://"):
            self._backend: _Backend = _S3Backend(self.root, self.config)
        else:
            self._backend = _LocalBackend(Path(self.root.removeprefix("file://")))

    @classmethod
    def from_cli(cls, cli_root: str | None = None, config: StorageConfig | None = None) -> "Storage":
        return cls(resolve_root(cli_root, config), config)

    @property
    def is_s3(self) -> bool:
        return self.root.startswith("s3://")

    def uri(self, key: str = "") -> str:
        key = check_key(key)
        return f"{self.root}/{key}" if key else self.root

    def check(self) -> None:
        """Fail now, with one clear message, if the root cannot be used."""
        self._backend.check()

    # Reading -----------------------------------------------------------------
    def read_bytes(self, key: str) -> bytes:
        return self._backend.read_bytes(check_key(key))

    def object_reader(self) -> Callable[[str], bytes]:
        """`read(key) -> bytes` for reading many files once each (an image archive): on S3
        one lean signed GET per object (`s3_reads`), a plain read on disk; errors as
        `read_bytes` words them."""
        return self._backend.object_reader()

    def read_with_tag(self, key: str) -> tuple[bytes, str]:
        """The file and a tag for `write_bytes(..., if_match=tag)`; NotFoundError if absent."""
        return self._backend.read_with_tag(check_key(key))

    def read_json(self, key: str) -> Any:
        data = self.read_bytes(key)
        try:
            return json.loads(data)
        except json.JSONDecodeError as error:
            raise StorageError(f"{self.uri(key)} is not valid JSON: {error}") from None

    def exists(self, key: str) -> bool:
        return self._backend.exists(check_key(key))

    def list_dir(self, key: str = "") -> list[str]:
        """Names directly under `key` (files and sub-folders), sorted; [] if none."""
        return self._backend.list_dir(check_key(key))

    def download_file(self, key: str, local_path: str | os.PathLike) -> None:
        Path(local_path).write_bytes(self.read_bytes(key))

    # Writing -----------------------------------------------------------------
    def write_bytes(self, key: str, data: bytes, *, exclusive: bool = False, if_match: str | None = None) -> None:
        """Write atomically. `exclusive`: AlreadyExistsError if `key` exists. `if_match`:
        WriteConflictError unless the file is still the one `read_with_tag` tagged."""
        if exclusive and if_match is not None:
            raise ValueError("a write is either exclusive or conditional on a tag, not both")
        self._backend.write_bytes(check_key(key), data, exclusive=exclusive, if_match=if_match)

    def write_json(self, key: str, obj: Any, *, exclusive: bool = False, if_match: str | None = None) -> None:
        payload = json.dumps(obj, indent=2, sort_keys=False, default=str).encode() + b"\n"
        self.write_bytes(key, payload, exclusive=exclusive, if_match=if_match)

    def put_file(self, key: str, local_path: str | os.PathLike) -> None:
        """Upload a local file (multipart on S3 for large files)."""
        self._backend.put_file(check_key(key), Path(local_path))

    def delete(self, key: str) -> None:
        """Remove one file; a missing one is not an error."""
        self._backend.delete(check_key(key))

    def delete_prefix(self, key: str) -> None:
        """Remove everything under `key` (used to clean up a failed, unpublished write)."""
        key = check_key(key)
        if not key:
            raise StorageError("refusing to delete the whole storage root")
        self._backend.delete_prefix(key)

    # For Ray Data / Ray Train ------------------------------------------------
    def arrow_filesystem(self):
        """A `pyarrow.fs.FileSystem` and the root's path inside it. On S3 its writes ask
        for the configured server-side encryption, as every other write does."""
        return self._backend.arrow_filesystem(), self._backend.arrow_base()

    def download_dir(self, key: str, local_dir: str | os.PathLike) -> Path:
        """Copy everything under `key` into `local_dir` (e.g. a checkpoint)."""
        import pyarrow.fs as pafs

        filesystem, _ = self.arrow_filesystem()
        source = self.arrow_path(key)
        if filesystem.get_file_info(source).type != pafs.FileType.Directory:
            raise NotFoundError(f"{self.uri(key)} does not exist")
        Path(local_dir).mkdir(parents=True, exist_ok=True)
        pafs.copy_files(source, str(local_dir), source_filesystem=filesystem,
                        destination_filesystem=pafs.LocalFileSystem())
        return Path(local_dir)

    def key_of(self, uri_or_path: str) -> str:
        """The key of a URI or arrow path under this root (what Ray reports for checkpoints)."""
        for prefix in (self.root, self.arrow_path()):
            if uri_or_path == prefix or uri_or_path.startswith(prefix.rstrip("/") + "/"):
                return uri_or_path[len(prefix):].strip("/")
        raise NotFoundError(f"'{uri_or_path}' is not under the storage root {self.root}")

    def arrow_path(self, key: str = "") -> str:
        base = self._backend.arrow_base()
        key = check_key(key)
        return f"{base}/{key}" if key else base

    def __repr__(self) -> str:
        return f"Storage({self.root!r})"


class _Backend:
    def check(self) -> None: ...
    def read_bytes(self, key: str) -> bytes: ...
    def object_reader(self) -> Callable[[str], bytes]: ...
    def read_with_tag(self, key: str) -> tuple[bytes, str]: ...
    def exists(self, key: str) -> bool: ...
    def list_dir(self, key: str) -> list[str]: ...
    def write_bytes(self, key: str, data: bytes, *, exclusive: bool, if_match: str | None) -> None: ...
    def put_file(self, key: str, path: Path) -> None: ...
    def delete(self, key: str) -> None: ...
    def delete_prefix(self, key: str) -> None: ...
    def arrow_filesystem(self): ...
    def arrow_base(self) -> str: ...


class _LocalBackend(_Backend):
    def __init__(self, base: Path):
        self.base = base

    def _path(self, key: str) -> Path:
        return self.base / key if key else self.base

    def check(self) -> None:
        try:
            self.base.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise StorageError(f"cannot use local storage '{self.base}': {error.strerror}") from None
        if not os.access(self.base, os.W_OK):
            raise StorageError(f"local storage '{self.base}' is not writable")

    def read_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise NotFoundError(f"file://{self._path(key)} does not exist") from None

    def object_reader(self) -> Callable[[str], bytes]:
        return lambda key: self.read_bytes(check_key(key))

    def read_with_tag(self, key: str) -> tuple[bytes, str]:
        data = self.read_bytes(key)
        return data, hashlib.sha256(data).hexdigest()

    def exists(self, key: str) -> bool:
        return self._path(key).exists()

    def list_dir(self, key: str) -> list[str]:
        path = self._path(key)
        if not path.is_dir():
            return []
        # Temporary files of in-flight writes start with "." and are never listed.
        return sorted(p.name for p in path.iterdir() if not p.name.startswith("."))

    def _stage(self, final: Path) -> Path:
        final.parent.mkdir(parents=True, exist_ok=True)
        return final.parent / f".{final.name}.{uuid.uuid4().hex}.tmp"

    def _publish(self, staged: Path, final: Path, exclusive: bool) -> None:
        try:
            if exclusive:
                # link() fails if `final` exists: an atomic create-if-absent.
                os.link(staged, final)
            else:
                os.replace(staged, final)
        except FileExistsError:
            raise AlreadyExistsError(f"file://{final} already exists") from None
        finally:
            staged.unlink(missing_ok=True)

    def write_bytes(self, key: str, data: bytes, *, exclusive: bool, if_match: str | None = None) -> None:
        final = self._path(key)
        staged = self._stage(final)
        with open(staged, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if if_match is None:
            self._publish(staged, final, exclusive)
            return
        # Compare and swap: the check and the rename happen under one lock, which every
        # conditional writer of this file takes; the kernel drops it if a writer dies.
        with open(final.parent / f".{final.name}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                current = hashlib.sha256(final.read_bytes()).hexdigest() if final.exists() else None
                if current != if_match:
                    staged.unlink(missing_ok=True)
                    raise WriteConflictError(f"file://{final} was changed by another writer")
                self._publish(staged, final, exclusive=False)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def put_file(self, key: str, path: Path) -> None:
        final = self._path(key)
        staged = self._stage(final)
        shutil.copyfile(path, staged)
        self._publish(staged, final, exclusive=False)

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def delete_prefix(self, key: str) -> None:
        shutil.rmtree(self._path(key), ignore_errors=True)

    def arrow_filesystem(self):
        import pyarrow.fs as pafs

        return pafs.LocalFileSystem()

    def arrow_base(self) -> str:
        return str(self.base)


# botocore error codes, grouped by what the user has to do about them.
_CREDENTIAL_CODES = {
    "InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "ExpiredToken",
    "InvalidToken", "401", "403", "Forbidden", "UnrecognizedClientException",
}
_MISSING_BUCKET_CODES = {"NoSuchBucket"}
# "ConditionalRequestConflict": AWS's answer when two conditional writes of a key overlap.
_CONDITION_CODES = {"PreconditionFailed", "412", "ConditionalRequestConflict"}
_CLIENT_LOCK = threading.Lock()


class _S3Backend(_Backend):
    def __init__(self, root: str, config: StorageConfig):
        parsed = urlparse(root)
        self.bucket = parsed.netloc
        self.prefix = parsed.path.strip("/")
        self.config = config
        self.endpoint = S3Endpoint.from_env()
        self._client = None
        self._arrow = None

    def __getstate__(self) -> dict[str, Any]:
        # Travels to Ray workers inside `arrow_filesystem()`; each process makes its own client.
        return {**self.__dict__, "_client": None, "_arrow": None}

    @property
    def client(self):
        with _CLIENT_LOCK:  # pyarrow calls the filesystem from several threads
            if self._client is None:
                self._client = self._new_client()
        return self._client

    def _new_client(self):
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint.url,
            region_name=self.endpoint.region,
            config=Config(
                retries={"max_attempts": self.config.max_attempts, "mode": "standard"},
                connect_timeout=self.config.connect_timeout_s,
                read_timeout=60,
            ),
        )

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix and key else (self.prefix or key)

    def _uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def _translate(self, error: Exception, key: str = "") -> Exception:
        """Turn a boto error into one message that says what to fix."""
        from botocore.exceptions import (
            ClientError, ConnectTimeoutError, EndpointConnectionError, NoCredentialsError,
            PartialCredentialsError, ReadTimeoutError,
        )

        where = self.endpoint.describe()
        if isinstance(error, (NoCredentialsError, PartialCredentialsError)):
            return StorageError(
                "no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                "AWS_PROFILE, or run with an instance role"
            )
        if isinstance(error, (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError)):
            return StorageError(f"cannot reach the S3 endpoint {where} (check AWS_ENDPOINT_URL and the network)")
        if isinstance(error, ClientError):
            code = str(error.response.get("Error", {}).get("Code", ""))
            if code in _MISSING_BUCKET_CODES or (code in ("404", "NoSuchKey") and not key):
                return StorageError(f"S3 bucket '{self.bucket}' does not exist at {where}")
            if code in ("NoSuchKey", "404"):
                return NotFoundError(f"{self._uri(key)} does not exist")
            if code in _CREDENTIAL_CODES:
                return StorageError(
                    f"S3 at {where} refused the credentials for bucket '{self.bucket}' ({code}); "
                    "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or the instance role"
                )
            if code in _CONDITION_CODES:
                return AlreadyExistsError(f"{self._uri(key)} already exists")
            return StorageError(f"S3 request for {self._uri(key) if key else self.bucket} failed: {code}")
        return error

    def _call(self, fn, *args, key: str = "", **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as error:  # translated below, re-raised unchanged if not S3's
            translated = self._translate(error, key)
            if translated is error:
                raise
            raise translated from None

    def check(self) -> None:
        self._call(self.client.head_bucket, Bucket=self.bucket)

    def read_bytes(self, key: str) -> bytes:
        response = self._call(self.client.get_object, Bucket=self.bucket, Key=self._key(key), key=key)
        return response["Body"].read()

    def object_reader(self) -> Callable[[str], bytes]:
        from medray.cluster.s3_reads import SignedGet

        get = SignedGet(self.bucket, self.endpoint.url, self.endpoint.region, self.config.max_attempts,
                        self.config.connect_timeout_s)
        return lambda key: self._call(get, self._key(check_key(key)), key=key)

    def read_with_tag(self, key: str) -> tuple[bytes, str]:
        response = self._call(self.client.get_object, Bucket=self.bucket, Key=self._key(key), key=key)
        return response["Body"].read(), response["ETag"]

    def exists(self, key: str) -> bool:
        try:
            self._call(self.client.head_object, Bucket=self.bucket, Key=self._key(key), key=key)
            return True
        except NotFoundError:
            return False

    def list_dir(self, key: str) -> list[str]:
        prefix = self._key(key)
        prefix = f"{prefix}/" if prefix else ""
        names: set[str] = set()
        paginator = self.client.get_paginator("list_objects_v2")
        pages = paginator.paginate(Bucket=self.bucket, Prefix=prefix, Delimiter="/")
        try:
            for page in pages:
                names.update(p["Prefix"][len(prefix):].rstrip("/") for p in page.get("CommonPrefixes", []))
                names.update(o["Key"][len(prefix):] for o in page.get("Contents", []))
        except Exception as error:
            translated = self._translate(error, key)
            if translated is error:
                raise
            raise translated from None
        return sorted(name for name in names if name and not name.startswith("."))

    def encryption_args(self) -> dict[str, str]:
        sse = self.config.server_side_encryption
        if sse == "none":
            return {}
        args = {"ServerSideEncryption": sse}
        if sse == "aws:kms" and self.config.kms_key_id:
            args["SSEKMSKeyId"] = self.config.kms_key_id
        return args

    def write_bytes(self, key: str, data: bytes, *, exclusive: bool, if_match: str | None = None) -> None:
        extra = {"IfNoneMatch": "*"} if exclusive else {"IfMatch": if_match} if if_match is not None else {}
        try:
            self._call(
                self.client.put_object, Bucket=self.bucket, Key=self._key(key), Body=data,
                **self.encryption_args(), **extra, key=key,
            )
        except (AlreadyExistsError, NotFoundError):
            if if_match is None:
                raise
            # 412: changed since it was read; 404: deleted since.
            raise WriteConflictError(f"{self._uri(key)} was changed by another writer") from None

    def put_file(self, key: str, path: Path) -> None:
        self._call(
            self.client.upload_file, str(path), self.bucket, self._key(key),
            ExtraArgs=self.encryption_args(), key=key,
        )

    def delete(self, key: str) -> None:
        self._call(self.client.delete_object, Bucket=self.bucket, Key=self._key(key), key=key)

    def delete_prefix(self, key: str) -> None:
        self.delete_under(self.bucket, self._key(key).rstrip("/") + "/")

    def delete_under(self, bucket: str, prefix: str, keep: str | None = None) -> int:
        """Delete every object whose key starts with `prefix` (but `keep`); returns how many.
        Also what the arrow filesystem Ray writes through deletes with (cluster/arrow_s3.py)."""
        deleted = 0
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            objects = [{"Key": o["Key"]} for o in page.get("Contents", []) if o["Key"] != keep]
            if objects:
                self._call(self.client.delete_objects, Bucket=bucket, Delete={"Objects": objects})
                deleted += len(objects)
        return deleted

    def arrow_filesystem(self):
        if self._arrow is None:
            import pyarrow.fs as pafs

            from medray.cluster.arrow_s3 import EncryptingS3Handler

            options: dict[str, Any] = {
                "region": self.endpoint.region,
                "connect_timeout": self.config.connect_timeout_s,
                "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=self.config.max_attempts),
            }
            if self.endpoint.url:
                parsed = urlparse(self.endpoint.url)
                options["endpoint_override"] = parsed.netloc
                options["scheme"] = parsed.scheme or "https"
            self._arrow = pafs.PyFileSystem(EncryptingS3Handler(pafs.S3FileSystem(**options), self))
        return self._arrow

    def arrow_base(self) -> str:
        return f"{self.bucket}/{self.prefix}" if self.prefix else self.bucket

