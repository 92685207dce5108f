"""TLS termination on the proxy listener, and the plain-HTTP listener that only redirects."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.support.processes import free_port, wait_until
from tests.support.tls import write_certificate


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return write_certificate(tmp_path_factory.mktemp("tls-listener"))


def tls_args(certificate: tuple[Path, Path, Path]) -> list[str]:
    _, cert_file, key_file = certificate
    return ["--tls-cert", str(cert_file), "--tls-key", str(key_file)]


def test_https_listener_with_hsts_and_forwarded_proto(start_proxy, upstream, certificate) -> None:  # type: ignore[no-untyped-def]
    gp = start_proxy(upstream.url, *tls_args(certificate))
    with httpx.Client(verify=ssl.create_default_context(cafile=str(certificate[0]))) as client:
        response = client.get(f"https://localhost:{gp.port}/echo")
    assert response.status_code == 200
    assert response.headers["strict-transport-security"] == "max-age=31536000"
    seen = dict((name, value) for name, value in response.json()["headers"])
    assert seen["x-forwarded-proto"] == "https"


def test_plain_http_to_the_tls_listener_is_refused(start_proxy, upstream, certificate) -> None:  # type: ignore[no-untyped-def]
    gp = start_proxy(upstream.url, *tls_args(certificate))
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{gp.port}/echo")
    # ...and the listener still serves TLS afterwards.
    with httpx.Client(verify=ssl.create_default_context(cafile=str(certificate[0]))) as client:
        assert client.get(f"https://localhost:{gp.port}/echo").status_code == 200


def test_redirect_listener_sends_everything_to_https(start_proxy, upstream, certificate) -> None:  # type: ignore[no-untyped-def]
    redirect_port = free_port()
    gp = start_proxy(
        upstream.url,
        *tls_args(certificate),
        "--redirect-listen", f"127.0.0.1:{redirect_port}",
        "--allowed-host", "localhost",
        env={"GUARDPROXY_SERVER__HTTPS_PORT": "8443"},
    )  # fmt: skip
    base = f"http://127.0.0.1:{redirect_port}"
    get = httpx.get(f"{base}/a/b?c=1%202", headers={"Host": "localhost:80"})
    assert get.status_code == 308
    assert get.headers["location"] == "https://localhost:8443/a/b?c=1%202"
    assert get.headers["content-security-policy"].startswith("default-src 'none'")
    assert "strict-transport-security" not in get.headers  # never over plain HTTP
    assert httpx.post(f"{base}/submit", headers={"Host": "localhost"}).status_code == 308
    foreign = httpx.get(f"{base}/", headers={"Host": "evil.example"})
    assert foreign.status_code == 421
    assert "location" not in foreign.headers
    # The redirect listener's requests are in the access log too.
    request_id = get.headers["x-request-id"]
    wait_until(lambda: f'"request_id":"{request_id}"' in gp.log_text(), timeout=3)
    assert '"outcome":"https_redirect"' in gp.log_text()


def run_check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "guardproxy", "check-config", "--upstream", "http://127.0.0.1:9", *args],
        capture_output=True, text=True, timeout=20, check=False, env=dict(os.environ),
    )  # fmt: skip


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tls-cert", "{cert}"], "tls_cert and tls_key go together"),
        (["--tls-cert", "{key}", "--tls-key", "{key}"], "cannot load tls_cert/tls_key"),
        (["--tls-cert", "/nonexistent.pem", "--tls-key", "{key}"], "cannot load tls_cert/tls_key"),
        (["--redirect-listen", "127.0.0.1:8081"], "redirect_listen needs tls_cert"),
        (["--tls-cert", "{cert}", "--tls-key", "{key}", "--redirect-listen", "127.0.0.1:8081"], "hosts.canonical"),
    ],
)
def test_tls_configuration_mistakes_stop_the_start(certificate, args: list[str], message: str) -> None:  # type: ignore[no-untyped-def]
    _, cert_file, key_file = certificate
    result = run_check(*(arg.format(cert=cert_file, key=key_file) for arg in args))
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
