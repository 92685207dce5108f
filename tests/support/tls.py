"""Throwaway certificates for TLS tests, from a CA that exists only for the test run."""

from __future__ import annotations

from pathlib import Path

import trustme


def write_certificate(directory: Path, *names: str) -> tuple[Path, Path, Path]:
    """Write a CA, a certificate for `names` and its key into `directory`; return their paths."""
    ca = trustme.CA()
    cert = ca.issue_cert(*(names or ("localhost",)))
    ca_file, cert_file, key_file = directory / "ca.pem", directory / "cert.pem", directory / "key.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    return ca_file, cert_file, key_file
