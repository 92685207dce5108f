"""structlog set-up: JSON lines by default, one shape for every line: guardproxy's own events,
the access log, and the standard library's records (uvicorn's), all written through one
`LogSink` so that logging never blocks the event loop."""

from __future__ import annotations

import atexit
import logging
from typing import Any

import orjson
import structlog

from guardproxy.config import LoggingSettings
from guardproxy.observability.sink import LogSink

_sink: LogSink | None = None


def log_sink() -> LogSink:
    """The process's sink (created on first use, closed, and so flushed, at exit)."""
    global _sink  # noqa: PLW0603 - one sink per process, shared by every logger in it
    if _sink is None:
        _sink = LogSink()
        atexit.register(_sink.close)
    return _sink


def _as_bytes(_: Any, __: str, event: str | bytes) -> bytes:
    return event.encode("utf-8", "replace") if isinstance(event, str) else event


class _SinkHandler(logging.Handler):
    def __init__(self, sink: LogSink) -> None:
        super().__init__()
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.sink.write(_as_bytes(None, "", self.format(record)) + b"\n")
        except Exception:
            self.handleError(record)


def configure_logging(settings: LoggingSettings) -> LogSink:
    sink = log_sink()
    level = logging.getLevelNamesMapping()[settings.level.upper()]
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    console = structlog.dev.ConsoleRenderer(colors=False)
    renderer = structlog.processors.JSONRenderer(serializer=orjson.dumps) if settings.format == "json" else console
    # The standard library's formatter must produce str.
    stdlib_renderer = structlog.processors.JSONRenderer() if settings.format == "json" else console
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer, _as_bytes],  # type: ignore[list-item]
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.BytesLoggerFactory(sink),  # type: ignore[arg-type]
        cache_logger_on_first_use=True,
    )
    handler = _SinkHandler(sink)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                stdlib_renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    return sink
