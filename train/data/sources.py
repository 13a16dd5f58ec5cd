"""Getting source files onto local disk: a path, an s3:// object, or a public URL; and
listing and reading a folder or an s3:// prefix of many files in place.

Downloads land in one sources folder (`MEDRAY_DATA_SOURCES`, default
`~/.cache/medray/sources`) and are looked up there first, so a folder of source files
prepared offline is used exactly as a finished download would be.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from medray.cluster import names
from medray.cluster.console import CONSOLE

from medray.train.data.dataset import DataImportError

log = logging.getLogger(__name__)

SOURCES_ENV = "MEDRAY_DATA_SOURCES"
DOWNLOAD_TIMEOUT_S = 60


def sources_dir() -> Path:
    return Path(os.environ.get(SOURCES_ENV) or "~/.cache/medray/sources").expanduser()


def download(url: str, destination: Path) -> Path:
    """Fetch `url` to `destination` (atomically: a partial download is never left there)."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(f".{destination.name}.{uuid.uuid4().hex}.part")
    log.info("downloading %s", url)
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "medray"})
        with urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_S) as response, open(partial, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=destination.name, leave=False,
                      file=CONSOLE.terminal_err) as bar:
                while block := response.read(1 << 20):
                    out.write(block)
                    bar.update(len(block))
        partial.replace(destination)
    except (urllib.error.URLError, TimeoutError, OSError) as error:
        partial.unlink(missing_ok=True)
        reason = getattr(error, "reason", None) or error
        raise DataImportError(
            f"could not download {url} ({reason}); without network, put the file at {destination}"
        ) from None
    return destination


def _file_name(name: str, what: str) -> str:
    """A name that stays inside the folder it is joined to (no `..`, no `/`)."""
    return names.check(names.FILE, name, what, DataImportError,
                       "it must be 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit")


def _local_name(name: str, origin: str) -> str:
    """A file name for a source fetched from `origin`: its own name if that is a plain one,
    else one made from the origin (same origin, same name: the cache still works)."""
    if names.allowed(names.FILE, name):
        return name
    suffix = Path(name).suffix
    suffix = suffix if re.fullmatch(r"\.[A-Za-z0-9]{1,10}", suffix) else ""
    return f"source-{hashlib.sha256(origin.encode()).hexdigest()[:16]}{suffix}"


def cached_or_download(filename: str, url: str) -> Path:
    """The file from the sources folder, downloading it there first if it is missing."""
    cached = sources_dir() / _file_name(filename, "the download's file name")
    if cached.is_file():
        log.info("using %s", cached)
        return cached
    return download(url, cached)


def local_source(source: str, staging: Path) -> Path:
    """A local path for `source`: itself, an s3:// object copied to staging, or a URL download."""
    if source.startswith("s3://"):
        from medray.cluster.storage import Storage

        bucket_root, _, key = source.removeprefix("s3://").partition("/")
        if not key:
            raise DataImportError(f"source '{source}' names a bucket, not an object")
        local = staging / "source" / _local_name(Path(key).name, source)
        local.parent.mkdir(parents=True, exist_ok=True)
        Storage(f"s3://{bucket_root}").download_file(key, local)
        return local
    if source.startswith(("http://", "https://")):
        return cached_or_download(_local_name(Path(source.split("?", 1)[0]).name, source), source)
    path = Path(source).expanduser()
    if not path.exists():
        raise DataImportError(f"source '{source}' does not exist")
    return path



# Folders and prefixes of many files, read in place ----------------------------------


def source_filesystem(source: str):
    """(pyarrow filesystem, base path) of a local folder or an s3:// prefix."""
    import pyarrow.fs as pafs

    from medray.cluster.storage import Storage

    if source.startswith("s3://"):
        return Storage(source.rstrip("/")).arrow_filesystem()
    folder = Path(source).expanduser()
    if not folder.is_dir():
        raise DataImportError(f"'{source}' is not a folder or an s3:// prefix")
    return pafs.LocalFileSystem(), str(folder.resolve())


def is_folder(source: str) -> bool:
    """A local folder, or an s3:// prefix that holds objects (rather than one object)."""
    if source.startswith("s3://"):
        if source.endswith("/"):
            return True
        import pyarrow.fs as pafs

        from medray.cluster.storage import Storage

        filesystem, base = Storage(source).arrow_filesystem()
        try:
            return filesystem.get_file_info(base.rstrip("/")).type == pafs.FileType.Directory
        except OSError:
            return False  # fetching it as an object names the problem
    return "://" not in source and Path(source).expanduser().is_dir()


def list_files(source: str, accept: Callable[[str], bool], what: str) -> dict[str, int]:
    """Every key under the source that `accept`s, relative, sorted, with its size in bytes
    (from the listing: sizes are checked before anything is read); `what` names the files
    in the error when there are none."""
    import pyarrow.fs as pafs

    filesystem, base = source_filesystem(source)
    try:
        if source.startswith("s3://"):  # an empty listing would hide a missing bucket
            bucket = filesystem.get_file_info(base.strip("/").split("/")[0])
            if bucket.type == pafs.FileType.NotFound:
                raise DataImportError(f"cannot list '{source}': the bucket does not exist")
        infos = filesystem.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    except OSError as error:
        raise DataImportError(f"cannot list '{source}': {_listing_failure(error)}") from None
    base = base.rstrip("/")
    sizes = {info.path[len(base) + 1:]: info.size for info in infos
             if info.type == pafs.FileType.File and info.path.startswith(base + "/")}
    files = {key: sizes[key] for key in sorted(sizes) if accept(key)}
    if not files:
        raise DataImportError(f"'{source}' holds no {what}")
    return files


def _listing_failure(error: OSError) -> str:
    text = str(error)
    if "NoSuchBucket" in text or "does not exist" in text.lower():
        return "the bucket does not exist"
    if "AccessDenied" in text or "403" in text:
        return "access is refused"
    return text.splitlines()[0][:200]


def source_reader(source: str) -> Callable[[str], bytes]:
    """Whole files of a folder or prefix by relative key: one signed GET per object on S3
    (pyarrow's stream makes two requests, boto3's costs three times the CPU), a plain read
    on disk."""
    if source.startswith("s3://"):
        from medray.cluster.storage import Storage

        return Storage(source.rstrip("/")).object_reader()
    base = Path(source).expanduser().resolve()
    return lambda key: (base / key).read_bytes()
