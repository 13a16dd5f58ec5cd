"""The ingress's token check as ASGI middleware around a small real app, and where the
token is read from; no Ray. (Against a running Serve: test_api_security.py.)"""

import asyncio

import pytest

from medray.cluster.errors import ConfigError
from medray.serve.deployments import BearerAuth, is_loopback, read_token

TOKEN = "0123456789abcdef-token"


class BodyReader:
    """An ASGI app that reads the whole body, as a route's parser would, and says so."""

    def __init__(self) -> None:
        self.received = 0

    async def __call__(self, scope, receive, send):
        if scope["type"] == "websocket":
            await send({"type": "websocket.accept"})
            return
        more = True
        while more:
            message = await receive()
            self.received += 1
            more = message.get("more_body", False)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"read"})


def call(path: str, headers: dict[str, str], kind: str = "http") -> tuple[list[dict], BodyReader]:
    inner = BodyReader()
    sent: list[dict] = []

    async def receive():
        return {"type": "http.request", "body": b"x" * 10, "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": kind, "path": path, "root_path": "",
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]}
    asyncio.run(BearerAuth(inner, TOKEN)(scope, receive, send))
    return sent, inner


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN},
                                     {"Authorization": f"Bearer {TOKEN[:-1]}"}, {"Authorization": f"Basic {TOKEN}"},
                                     {"Authorization": f"Bearer {TOKEN}{TOKEN}"}])
def test_a_missing_or_wrong_token_is_refused_before_the_body_is_read(headers):
    for path in ("/v1/models/x/predict-file", "/openapi.json", "/docs", "/healthz/", "/readyz/../v1/models"):
        sent, inner = call(path, headers)
        assert sent[0]["status"] == 401 and (b"www-authenticate", b"Bearer") in sent[0]["headers"]
        assert inner.received == 0  # not one message of the body was asked for


def test_the_token_opens_every_route_and_the_probes_need_none():
    for header in (f"Bearer {TOKEN}", f"bearer {TOKEN}"):  # the scheme is case-insensitive (RFC 9110)
        sent, inner = call("/v1/models/x/predict", {"Authorization": header})
        assert sent[0]["status"] == 200 and inner.received == 1
    for probe in ("/healthz", "/readyz"):
        sent, _ = call(probe, {})
        assert sent[0]["status"] == 200


def test_a_websocket_without_the_token_is_closed_unaccepted():
    sent, _ = call("/v1/anything", {}, kind="websocket")
    assert sent == [{"type": "websocket.close", "code": 1008}]


def test_where_the_token_is_read(tmp_path, monkeypatch):
    assert read_token({}) is None
    monkeypatch.setenv("MEDRAY_TEST_TOKEN", TOKEN)
    assert read_token({"token_env": "MEDRAY_TEST_TOKEN"}) == TOKEN
    (tmp_path / "mounted").write_text(TOKEN + "\n")  # a Kubernetes Secret mounted as a file
    assert read_token({"token_file": str(tmp_path / "mounted")}) == TOKEN
    with pytest.raises(ConfigError, match="one of token_env"):
        read_token({"token_env": "MEDRAY_TEST_TOKEN", "token_file": str(tmp_path / "mounted")})
    with pytest.raises(ConfigError, match="one of token_env"):
        read_token({"token": TOKEN})


def test_a_token_named_but_absent_stops_the_ingress_rather_than_opening_it(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDRAY_TEST_TOKEN", "  \n")
    with pytest.raises(ConfigError, match="environment variable MEDRAY_TEST_TOKEN is missing or empty"):
        read_token({"token_env": "MEDRAY_TEST_TOKEN"})
    monkeypatch.delenv("MEDRAY_TEST_TOKEN")
    with pytest.raises(ConfigError, match="environment variable MEDRAY_TEST_TOKEN is missing or empty"):
        read_token({"token_env": "MEDRAY_TEST_TOKEN"})
    (tmp_path / "empty").write_text("\n")
    for path in (tmp_path / "empty", tmp_path / "absent", tmp_path):
        with pytest.raises(ConfigError, match=f"file {path} is missing or empty"):
            read_token({"token_file": str(path)})


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("127.8.0.1", True), ("::1", True), ("[::1]", True),
                                            ("localhost", True), ("LOCALHOST", True), ("0.0.0.0", False),
                                            ("::", False), ("10.0.0.5", False), ("my-host", False), ("", False)])
def test_loopback(host, loopback):
    assert is_loopback(host) is loopback
