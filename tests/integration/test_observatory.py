"""Mozilla's HTTP Observatory, run locally against guardproxy with only TLS, the redirect
listener and an allowed host configured: the default preset must score A+."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from tests.support.processes import free_port
from tests.support.tls import write_certificate

SCANNER = Path(__file__).resolve().parents[2] / ".venv-observatory" / "bin" / "httpobs-local-scan"


def test_default_preset_scores_a_plus(start_proxy, upstream, tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert SCANNER.exists(), "run ./scripts/test: it installs the Observatory scanner into .venv-observatory"
    ca_file, cert_file, key_file = write_certificate(tmp_path)
    https_port, http_port = free_port(), free_port()
    start_proxy(
        upstream.url,
        "--tls-cert", str(cert_file), "--tls-key", str(key_file),
        "--redirect-listen", f"127.0.0.1:{http_port}",
        "--allowed-host", "localhost",
        env={"GUARDPROXY_SERVER__HTTPS_PORT": str(https_port)},
        port=https_port,
    )  # fmt: skip
    result = subprocess.run(
        [str(SCANNER), "--http-port", str(http_port), "--https-port", str(https_port), "--format", "json", "localhost"],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "HTTPOBS_SCANNER_ALLOW_LOCALHOST": "yes", "REQUESTS_CA_BUNDLE": str(ca_file)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    failed = {name: test["result"] for name, test in report["tests"].items() if not test["pass"]}
    assert report["scan"]["grade"] == "A+", (report["scan"], failed)
    assert failed == {}
    assert report["scan"]["score"] >= 100
