"""Many small GETs, cheaply: a SigV4-signed request over a urllib3 connection pool.

An image archive is tens of thousands to millions of small objects read once each. Through
boto3 every GET pays botocore's per-request machinery (endpoint rules, event hooks,
response parsing): about 2 ms of CPU, three times the PNG's decode. Signing with botocore's
own S3 signer and sending the request on a pooled connection costs about 0.7 ms (both
measured against the local S3 server). Listing, writes and everything else keep using
boto3. Failures are raised as botocore's own exceptions, so `Storage` words them as it
words boto3's (`_S3Backend.object_reader`).
"""

from __future__ import annotations

from urllib.parse import quote

_RETRIED = (500, 502, 503, 504)


class SignedGet:
    """`get(object_key) -> bytes` for the objects of one bucket; thread-safe."""

    def __init__(self, bucket: str, endpoint_url: str | None, region: str, max_attempts: int,
                 connect_timeout_s: float):
        import boto3
        import urllib3

        self.region = region
        # Path style on a custom endpoint (MinIO, Ceph, moto all take it); AWS's own
        # virtual-hosted name otherwise, the style it asks for.
        self._base = (f"{endpoint_url.rstrip('/')}/{quote(bucket)}" if endpoint_url
                      else f"https://{bucket}.s3.{region}.amazonaws.com")
        # botocore refreshes these (under its own lock) as they near expiry.
        self._credentials = boto3.session.Session().get_credentials()
        self._pool = urllib3.PoolManager(
            maxsize=8, timeout=urllib3.Timeout(connect=connect_timeout_s, read=60),
            retries=urllib3.Retry(total=max_attempts - 1, backoff_factor=0.2, status_forcelist=_RETRIED,
                                  allowed_methods={"GET"}, raise_on_status=False))

    def _signed_headers(self, url: str) -> dict[str, str]:
        from botocore.auth import S3SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.exceptions import NoCredentialsError

        if self._credentials is None:
            raise NoCredentialsError()
        request = AWSRequest(method="GET", url=url)
        S3SigV4Auth(self._credentials.get_frozen_credentials(), "s3", self.region).add_auth(request)
        return dict(request.headers.items())

    def __call__(self, object_key: str) -> bytes:
        import urllib3
        from botocore.exceptions import ClientError, EndpointConnectionError

        url = f"{self._base}/{quote(object_key, safe='/~')}"
        try:
            response = self._pool.request("GET", url, headers=self._signed_headers(url))
        except urllib3.exceptions.HTTPError:
            raise EndpointConnectionError(endpoint_url=self._base) from None
        if response.status == 200:
            return response.data
        code = _error_code(response.data) or str(response.status)
        raise ClientError({"Error": {"Code": code}}, "GetObject")


def _error_code(body: bytes) -> str:
    """The `<Code>` of an S3 error document ('' if there is none); nothing else of it is kept."""
    start = body.find(b"<Code>")
    end = body.find(b"</Code>", start)
    if start < 0 or end < 0 or end - start > 80:
        return ""
    return body[start + len(b"<Code>"):end].decode("ascii", "replace")
