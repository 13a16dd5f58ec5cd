"""The host-binding rule: an API without a token is served on loopback only. Plain unit
tests of the rule (Serve's running proxy is stood in for; no Ray is started)."""

from types import SimpleNamespace

import pytest

from medray.cluster.config import MedrayConfig
from medray.cluster.errors import ConfigError
from medray.serve import deployments
from medray.serve.app import bind_host
from medray.serve.deployments import is_loopback, refuse_open_beyond_loopback, token_to_require

REFUSAL = "refusing to serve without an API token while Serve's HTTP proxy listens on"


@pytest.mark.parametrize("host, loopback", [
    ("127.0.0.1", True), ("127.8.9.10", True), ("localhost", True), ("LocalHost", True), ("::1", True),
    ("[::1]", True), ("0.0.0.0", False), ("::", False), ("10.0.0.5", False), ("192.168.1.2", False),
    ("localhost.example.org", False), ("", False),
])
def test_what_counts_as_loopback(host, loopback):
    assert is_loopback(host) is loopback


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.5", "serve.internal"])
def test_an_open_api_is_refused_beyond_loopback_and_a_token_opens_it(host):
    with pytest.raises(ConfigError, match=f"{REFUSAL} {host}: set MEDRAY_API_TOKEN"):
        refuse_open_beyond_loopback(None, host)
    refuse_open_beyond_loopback("a-token", host)
    refuse_open_beyond_loopback(None, "127.0.0.1")


def test_the_bind_address_follows_the_token_unless_serve_host_is_set():
    default = MedrayConfig()
    assert (bind_host(default, None), bind_host(default, "t")) == ("127.0.0.1", "0.0.0.0")
    wide = MedrayConfig(serve={"host": "0.0.0.0"})
    assert bind_host(wide, "t") == "0.0.0.0"
    with pytest.raises(ConfigError, match=f"{REFUSAL} 0.0.0.0"):
        bind_host(wide, None)
    assert bind_host(MedrayConfig(serve={"host": "127.0.0.2"}), None) == "127.0.0.2"


def test_every_ingress_checks_the_running_proxys_host(monkeypatch, tmp_path):
    proxy = SimpleNamespace(host="0.0.0.0")
    monkeypatch.setattr(deployments, "proxy_options", lambda: proxy)
    with pytest.raises(ConfigError, match=f"{REFUSAL} 0.0.0.0"):
        token_to_require({})
    (tmp_path / "token").write_text("s3cret\n")  # a mounted Secret's trailing newline is not the token's
    assert token_to_require({"token_file": str(tmp_path / "token")}) == "s3cret"
    monkeypatch.setenv("NODE_TOKEN", "from-env")
    assert token_to_require({"token_env": "NODE_TOKEN"}) == "from-env"
    proxy.host = "127.0.0.1"
    assert token_to_require({}) is None
    monkeypatch.setenv("NODE_TOKEN", "  ")
    with pytest.raises(ConfigError, match="environment variable NODE_TOKEN is missing or empty"):
        token_to_require({"token_env": "NODE_TOKEN"})  # a token asked for is never an open API
