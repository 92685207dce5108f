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


class StructlogFile:
    """The sink as structlog's BytesLogger takes its file: structlog keeps a lock per file in a
    weak dictionary, and the sink, a native class in the compiled build, cannot be weakly
    referenced."""

    def __init__(self, sink: LogSink) -> None:
        self.write = sink.write
        self.flush = sink.flush


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


# uvicorn's lines about the process rather than one listener. Every uvicorn.Server logs them, and
# a worker runs one Server per listener (proxy, admin, redirect) on one event loop, so each came
# out two or three times.
_STARTED = "Started server process [%d]"
_SHUTTING_DOWN = "Shutting down"
_FINISHED = "Finished server process [%d]"


class _OncePerProcess(logging.Filter):
    """Lets uvicorn's process lines through once per process: "Started" when the first listener
    starts, "Shutting down" when the first stops accepting, "Finished" when the last is done (as
    many Finished lines as Started ones have been seen). A new filter, so a fresh count, comes with
    every configure_logging call, and each worker makes that call itself."""

    def __init__(self) -> None:
        super().__init__()
        self.started = 0
        self.finished = 0
        self.shutting_down = False

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name != "uvicorn.error":
            return True
        if record.msg == _STARTED:
            self.started += 1
            return self.started == 1
        if record.msg == _SHUTTING_DOWN:
            first, self.shutting_down = not self.shutting_down, True
            return first
        if record.msg == _FINISHED:
            self.finished += 1
            return self.finished == self.started
        return True


def _logger_as_component(_: Any, __: str, event_dict: structlog.types.EventDict) -> structlog.types.EventDict:
    """A standard-library record names its source in `component`, first, as guardproxy's own lines do."""
    record: logging.LogRecord | None = event_dict.get("_record")
    name = record.name if record is not None else event_dict.pop("logger", None)
    return {"component": name, **event_dict} if name is not None else event_dict


def _valid_utf8(value: Any) -> Any:
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    if isinstance(value, dict):
        return {_valid_utf8(key): _valid_utf8(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_valid_utf8(item) for item in value]
    return value


def _dumps(value: Any, **_: Any) -> str:
    """The same compact serialisation as guardproxy's own lines, as str for the standard library."""
    try:
        return orjson.dumps(value).decode("utf-8")
    except TypeError:
        # orjson refuses a str that is not valid UTF-8 (a lone surrogate, as in a file name decoded
        # with surrogateescape) and objects it does not know: the line is kept, with U+FFFD and
        # str() in their place, rather than lost to logging's error handler.
        return orjson.dumps(_valid_utf8(value), default=str).decode("utf-8")


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
    stdlib_renderer = structlog.processors.JSONRenderer(serializer=_dumps) if settings.format == "json" else console
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer, _as_bytes],  # type: ignore[list-item]
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.BytesLoggerFactory(StructlogFile(sink)),  # type: ignore[arg-type]
        cache_logger_on_first_use=True,
    )
    handler = _SinkHandler(sink)
    handler.addFilter(_OncePerProcess())
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, _logger_as_component],
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
