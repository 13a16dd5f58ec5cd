"""A local S3-protocol server (moto's, in a subprocess) on 127.0.0.1.

The one launcher for `medray demo`'s storage and the tests' S3 fixtures, so both exercise
the S3 path against the same server started the same way. moto is a dev extra
(`medray[dev]`); a machine without it gets one line saying so.

The server runs through `serve()` below rather than `python -m moto.server`: moto looks
each request's host up among its ~200 service packages by listing its own folder
(an `isdir` per package, every request), which was half of the CPU a GET cost it; the
list is read once instead, and werkzeug's per-request log line (sent to /dev/null here)
is not formatted. Measured with boto3 GETs of 10 KB objects: 3.6 ms of server CPU per GET
before, 1.8 ms after.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

from medray.cluster.errors import MedrayError
from medray.cluster.runtime import free_port


@dataclass
class LocalS3:
    process: subprocess.Popen
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @classmethod
    def start(cls, env: dict[str, str] | None = None, timeout_s: float = 30) -> "LocalS3":
        """Start the server and return once it accepts connections. `env`: extra
        variables for the server (e.g. INITIAL_NO_AUTH_ACTION_COUNT=0 turns moto's
        credential checks on)."""
        port = free_port()
        process = subprocess.Popen(
            [sys.executable, "-m", "medray.cluster.local_s3", "-H", "127.0.0.1", "-p", str(port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **(env or {})},
        )
        server = cls(process, port)
        deadline = time.monotonic() + timeout_s
        # Ends early when the process exits: moto not installed, or the port taken meanwhile.
        while process.poll() is None and time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                return server
            except OSError:
                time.sleep(0.1)
        server.stop()
        raise MedrayError("the local S3 server (moto) did not start; install medray[dev] or set MEDRAY_STORAGE")

    def client_env(self, key_id: str = "medray-local") -> dict[str, str]:
        """The AWS variables that point boto3 and pyarrow (and Ray's workers, which
        inherit them) at this server; moto takes any credentials."""
        return {"AWS_ENDPOINT_URL": self.url, "AWS_ACCESS_KEY_ID": key_id, "AWS_SECRET_ACCESS_KEY": key_id,
                "AWS_DEFAULT_REGION": "us-east-1"}

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> "LocalS3":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def serve(argv: list[str]) -> None:
    """moto's server (`moto.server.main(argv)`), its host lookup read once."""
    import logging

    import moto.backends
    from moto.server import main

    modules = tuple(moto.backends.list_of_moto_modules())
    moto.backends.list_of_moto_modules = lambda: modules
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    main(argv)


if __name__ == "__main__":
    serve(sys.argv[1:])
