"""The pyarrow filesystem Ray is given for S3: pyarrow reads, boto3 writes with encryption.

Ray Train and Ray Tune write checkpoints and their own state through the
`storage_filesystem` they are handed, and pyarrow's S3 filesystem has no way to ask for
server-side encryption. This handler (wrapped in `pyarrow.fs.PyFileSystem`) keeps
pyarrow's filesystem for everything that only reads, and sends every call that
creates, copies or deletes objects through the storage's boto3 client with its
encryption headers. Deletes are included because pyarrow's own delete re-creates the
parent's empty "directory" object, and would do so unencrypted.
"""

from __future__ import annotations

import tempfile
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

# Uploads are staged in memory up to this size, then on local disk; boto3 sends large
# ones in parts.
SPOOL_BYTES = 16 * 1024 * 1024


def _split(path: str) -> tuple[str, str]:
    bucket, _, key = path.strip("/").partition("/")
    return bucket, key


class _Upload:
    """The file object behind `open_output_stream`: the object is PUT whole on close,
    so a reader never sees part of it and a failed writer leaves nothing."""

    def __init__(self, handler: "EncryptingS3Handler", bucket: str, key: str):
        self.handler, self.bucket, self.key = handler, bucket, key
        self.spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)
        self.closed = False

    def write(self, data) -> int:
        return self.spool.write(data)

    def tell(self) -> int:
        return self.spool.tell()

    def flush(self) -> None:
        pass

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return False

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.spool.seek(0)
            self.handler.upload(self.spool, self.bucket, self.key)
        finally:
            self.spool.close()


class EncryptingS3Handler(pafs.FileSystemHandler):
    def __init__(self, native: pafs.S3FileSystem, backend: Any):
        self.native = native
        self.backend = backend
        """The storage's `_S3Backend`: its client, error messages and encryption headers."""

    def __eq__(self, other: object) -> bool:
        if isinstance(other, EncryptingS3Handler):
            return self.native.equals(other.native) and \
                self.backend.encryption_args() == other.backend.encryption_args()
        return NotImplemented

    def __ne__(self, other: object) -> bool:
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal

    def get_type_name(self) -> str:
        return "medray-s3"

    # Reading: pyarrow's own S3 filesystem ------------------------------------------
    def normalize_path(self, path: str) -> str:
        return self.native.normalize_path(path)

    def get_file_info(self, paths):
        return self.native.get_file_info(paths)

    def get_file_info_selector(self, selector):
        return self.native.get_file_info(selector)

    def open_input_stream(self, path: str):
        return self.native.open_input_stream(path)

    def open_input_file(self, path: str):
        return self.native.open_input_file(path)

    # Writing: boto3 with the encryption headers --------------------------------------
    def _call(self, fn, *args, key: str = "", **kwargs):
        return self.backend._call(fn, *args, key=key, **kwargs)

    def upload(self, fileobj, bucket: str, key: str) -> None:
        client = self.backend.client
        self._call(client.upload_fileobj, fileobj, bucket, key, ExtraArgs=self.backend.encryption_args())

    def open_output_stream(self, path: str, metadata=None):
        bucket, key = _split(path)
        if not key:
            raise IsADirectoryError(f"cannot write to the bucket itself: {path}")
        return pa.PythonFile(_Upload(self, bucket, key), mode="w")

    def open_append_stream(self, path: str, metadata=None):
        raise NotImplementedError("S3 objects cannot be appended to")

    def create_dir(self, path: str, recursive: bool) -> None:
        bucket, key = _split(path)
        if not key:
            return
        kind = self.native.get_file_info(path).type
        if kind == pafs.FileType.Directory:
            return
        if kind == pafs.FileType.File:
            raise FileExistsError(f"{path} is a file")
        # An empty "key/" object, as pyarrow makes one, so that an empty directory exists.
        self._call(self.backend.client.put_object, Bucket=bucket, Key=f"{key.rstrip('/')}/", Body=b"",
                   **self.backend.encryption_args())

    def delete_dir(self, path: str) -> None:
        bucket, key = _split(path)
        if not key:
            raise PermissionError("refusing to delete a whole bucket")
        if self.native.get_file_info(path).type != pafs.FileType.Directory:
            raise FileNotFoundError(f"{path} is not a directory")
        self.backend.delete_under(bucket, f"{key.rstrip('/')}/")

    def delete_dir_contents(self, path: str, missing_dir_ok: bool = False) -> None:
        bucket, key = _split(path)
        if not key:
            raise PermissionError("refusing to empty a whole bucket")
        if self.native.get_file_info(path).type != pafs.FileType.Directory:
            if missing_dir_ok:
                return
            raise FileNotFoundError(f"{path} is not a directory")
        prefix = f"{key.rstrip('/')}/"
        self.backend.delete_under(bucket, prefix, keep=prefix)

    def delete_root_dir_contents(self) -> None:
        raise PermissionError("refusing to empty the root of S3")

    def delete_file(self, path: str) -> None:
        bucket, key = _split(path)
        if self.native.get_file_info(path).type != pafs.FileType.File:
            raise FileNotFoundError(f"{path} is not a file")
        self._call(self.backend.client.delete_object, Bucket=bucket, Key=key)

    def copy_file(self, src: str, dest: str) -> None:
        source_bucket, source_key = _split(src)
        bucket, key = _split(dest)
        # The copy is a new object: it gets the headers, not the source's encryption.
        self._call(self.backend.client.copy, {"Bucket": source_bucket, "Key": source_key}, bucket, key,
                   ExtraArgs=self.backend.encryption_args())

    def move(self, src: str, dest: str) -> None:
        # As pyarrow's S3 filesystem: files only (a directory would be a copy of every object).
        if self.native.get_file_info(src).type != pafs.FileType.File:
            raise NotImplementedError(f"only files can be moved on S3, not {src}")
        self.copy_file(src, dest)
        self.delete_file(src)
