"""An https:// upstream: certificates are verified by default, against a CA file if given."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.processes import free_port, port_open, wait_until
from tests.support.tls import write_certificate


@pytest.fixture(scope="module")
def tls_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """The upstream test app served over TLS with a certificate from a throwaway CA."""
    ca_file, cert_file, key_file = write_certificate(tmp_path_factory.mktemp("tls"), "localhost", "127.0.0.1")
    port = free_port()
    script = textwrap.dedent(
        f"""
        import sys, uvicorn
        sys.path.insert(0, {str(Path(__file__).resolve().parents[1] / "support")!r})
        from upstream_app import app
        uvicorn.run(app, host="127.0.0.1", port={port}, log_level="warning",
                    ssl_certfile={str(cert_file)!r}, ssl_keyfile={str(key_file)!r})
        """
    )
    process = subprocess.Popen([sys.executable, "-c", script])
    try:
        wait_until(lambda: port_open(port))
        yield f"https://localhost:{port}", ca_file
    finally:
        process.kill()
        process.wait()


def test_verified_against_the_given_ca(start_proxy, tls_upstream) -> None:  # type: ignore[no-untyped-def]
    url, ca_file = tls_upstream
    gp = start_proxy(url, env={"GUARDPROXY_UPSTREAM__CA_FILE": str(ca_file)})
    response = httpx.get(f"{gp.url}/echo")
    assert response.status_code == 200
    assert response.json()["method"] == "GET"


def test_unknown_certificate_authority_is_refused(start_proxy, tls_upstream) -> None:  # type: ignore[no-untyped-def]
    url, _ = tls_upstream
    gp = start_proxy(url)
    response = httpx.get(f"{gp.url}/echo")
    assert response.status_code == 502
    assert response.headers["content-type"] == "application/problem+json"
    assert "certificate" not in response.text.lower()


def test_hostname_mismatch_is_refused(start_proxy, tls_upstream) -> None:  # type: ignore[no-untyped-def]
    url, ca_file = tls_upstream
    mismatched = url.replace("localhost", "127.0.0.2")  # the certificate names localhost and 127.0.0.1 only
    gp = start_proxy(mismatched, env={"GUARDPROXY_UPSTREAM__CA_FILE": str(ca_file)})
    assert httpx.get(f"{gp.url}/echo").status_code == 502


def test_verification_can_be_switched_off_explicitly(start_proxy, tls_upstream) -> None:  # type: ignore[no-untyped-def]
    url, _ = tls_upstream
    gp = start_proxy(url, env={"GUARDPROXY_UPSTREAM__VERIFY_TLS": "false"})
    assert httpx.get(f"{gp.url}/echo").status_code == 200


def test_readiness_probe_uses_the_same_tls_settings(start_proxy, tls_upstream) -> None:  # type: ignore[no-untyped-def]
    url, ca_file = tls_upstream
    trusted = start_proxy(url, env={"GUARDPROXY_UPSTREAM__CA_FILE": str(ca_file)}, wait_ready=True)
    assert httpx.get(f"{trusted.admin_url}/readyz").status_code == 200
    untrusted = start_proxy(url)
    wait_until(lambda: httpx.get(f"{untrusted.admin_url}/readyz").status_code == 503, timeout=5)
