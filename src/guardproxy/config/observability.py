"""Settings of logs and metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import (
    field_validator,
)

from guardproxy.config.base import Section


class LoggingSettings(Section):
    level: Literal["debug", "info", "warning", "error", "critical"] = "info"
    format: Literal["json", "console"] = "json"
    # One JSON line per request (and an audit line per security refusal).
    access_log: bool = True
    # Query parameters whose values never reach a log line (compared case-insensitively).
    redact_query_params: list[str] = [
        "token",
        "access_token",
        "refresh_token",
        "id_token",
        "password",
        "passwd",
        "secret",
        "client_secret",
        "api_key",
        "apikey",
        "key",
        "signature",
        "sig",
        "code",
        "session",
    ]

    @field_validator("level", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value


class MetricsSettings(Section):
    enabled: bool = True
    # With server.workers > 1: where workers share their metrics (prometheus-client multiprocess
    # mode). None: PROMETHEUS_MULTIPROC_DIR if set, else a private temporary directory.
    multiprocess_dir: Path | None = None
