"""gzip, brotli and zstd compression of upstream responses (checklist item 25).

Chosen by the client's Accept-Encoding with its q-values (RFC 9110 §12.5.3), applied only where
it helps: compressible media types, bodies of at least `min_size` when the length is known, and
never to a response that is already encoded, asks for no-transform, is partial (206/Range) or
answers a HEAD. The rules other proxies broke, kept here:
- a stream is never held back: without a known length (server-sent events, chunked downloads)
  every upstream chunk is compressed and flushed as it arrives;
- a compressed response loses Content-Length, and a strong ETag becomes weak (its bytes changed);
- `Vary: Accept-Encoding` is merged into the upstream's Vary on every response that could have
  been compressed, so no cache hands a compressed body to a client that did not ask for one;
- large chunks are compressed in slices, yielding to the event loop between them.
"""

from __future__ import annotations

import asyncio
import re
import zlib
from collections.abc import Awaitable, Sequence
from typing import Protocol

import brotli
from backports.zstd import ZstdCompressor

from guardproxy.asgi import Headers, Message, Scope, Send
from guardproxy.config import CompressionSettings
from guardproxy.context import RequestContext
from guardproxy.guards.chain import Guard
from guardproxy.http1.fields import merge_vary

# Bytes compressed between two yields to the event loop: ~1 ms of work at default levels.
_SLICE = 64 * 1024
_MEDIA_TYPE_CACHE = 64
# The response fields `eligible` decides on.
_DECIDING_FIELDS = frozenset(
    {b"content-type", b"content-length", b"content-encoding", b"content-range", b"cache-control"}
)
_Q_VALUE = re.compile(r"^\s*q\s*=\s*([01](?:\.\d{0,3})?)\s*$", re.IGNORECASE)


class Encoder(Protocol):
    def compress(self, data: bytes, *, flush: bool) -> bytes: ...

    def finish(self) -> bytes: ...


class GzipEncoder:
    def __init__(self, level: int) -> None:
        self._compressor = zlib.compressobj(level, zlib.DEFLATED, 16 + zlib.MAX_WBITS)

    def compress(self, data: bytes, *, flush: bool) -> bytes:
        out = self._compressor.compress(data)
        return out + self._compressor.flush(zlib.Z_SYNC_FLUSH) if flush else out

    def finish(self) -> bytes:
        return self._compressor.flush(zlib.Z_FINISH)


class BrotliEncoder:
    def __init__(self, quality: int) -> None:
        self._compressor = brotli.Compressor(quality=quality)

    def compress(self, data: bytes, *, flush: bool) -> bytes:
        out: bytes = self._compressor.process(data)
        return out + self._compressor.flush() if flush else out

    def finish(self) -> bytes:
        return self._compressor.finish()  # type: ignore[no-any-return]


class ZstdEncoder:
    def __init__(self, level: int) -> None:
        self._compressor = ZstdCompressor(level=level)

    def compress(self, data: bytes, *, flush: bool) -> bytes:
        if flush:
            return self._compressor.compress(data, mode=ZstdCompressor.FLUSH_BLOCK)
        return self._compressor.compress(data)

    def finish(self) -> bytes:
        return self._compressor.flush(ZstdCompressor.FLUSH_FRAME)


def negotiate(accept_encoding: str, preference: Sequence[str]) -> str | None:
    """The coding to use, or None for identity. Among the codings the client accepts with the
    highest q-value, the server's preference decides; `*` stands for every coding not named."""
    weights: dict[str, float] = {}
    for item in accept_encoding.split(","):
        coding, _, params = item.partition(";")
        coding = coding.strip().lower()
        if not coding:
            continue
        q = 1.0
        if params:
            match = _Q_VALUE.match(params)
            if match is None:
                continue  # a malformed weight: ignore the entry rather than guess
            q = min(float(match.group(1)), 1.0)
        weights["gzip" if coding == "x-gzip" else coding] = q
    best: str | None = None
    best_q = 0.0
    for coding in preference:
        q = weights.get(coding, weights.get("*", 0.0))
        if q > best_q:
            best, best_q = coding, q
    return best


def media_type_matcher(patterns: Sequence[str]) -> re.Pattern[str]:
    """One regex for patterns such as `text/*` or `application/*+json`."""
    alternatives = ["[^/;]+".join(re.escape(part) for part in pattern.lower().split("*")) for pattern in patterns]
    return re.compile("(?:" + "|".join(alternatives) + r")\Z")


class CompressionGuard(Guard):
    def __init__(
        self,
        *,
        algorithms: Sequence[str],
        min_size: int,
        media_types: Sequence[str],
        gzip_level: int,
        brotli_quality: int,
        zstd_level: int,
    ) -> None:
        self.algorithms = tuple(algorithms)
        self.min_size = min_size
        self._compressible = media_type_matcher(media_types)
        # Content-Type value -> (compressible, is an event stream). Upstreams send a handful of
        # distinct values, so each is parsed and matched once; the cap keeps a hostile upstream
        # from growing it without bound.
        self._media_types: dict[bytes, tuple[bool, bool]] = {}
        self._levels = {"gzip": gzip_level, "br": brotli_quality, "zstd": zstd_level}

    @classmethod
    def from_settings(cls, settings: CompressionSettings) -> CompressionGuard:
        return cls(
            algorithms=settings.algorithms,
            min_size=settings.min_size,
            media_types=settings.media_types,
            gzip_level=settings.gzip_level,
            brotli_quality=settings.brotli_quality,
            zstd_level=settings.zstd_level,
        )

    def encoder(self, coding: str) -> Encoder:
        if coding == "br":
            return BrotliEncoder(self._levels["br"])
        if coding == "zstd":
            return ZstdEncoder(self._levels["zstd"])
        return GzipEncoder(self._levels["gzip"])

    def wrap_send(self, scope: Scope, context: RequestContext, send: Send) -> Send:
        if scope["method"] == "HEAD":
            return send
        accept = ""
        for name, value in scope["headers"]:
            if name == b"accept-encoding":
                accept = value.decode("latin-1") if not accept else accept + "," + value.decode("latin-1")
        return _CompressingSend(self, send, accept)

    def eligible(self, status: int, headers: Headers) -> tuple[bool, bool]:
        """Whether a response may be compressed, and whether it is a stream (length unknown)."""
        if status < 200 or status in (204, 206, 304):
            return False, False
        content_type = b""
        length: int | None = None
        for name, value in headers:
            if name not in _DECIDING_FIELDS:
                continue  # most fields: one set lookup instead of five comparisons
            if name == b"content-type":
                content_type = value
            elif name == b"content-length":
                length = int(value)
            elif (
                (name == b"content-encoding" and value.strip().lower() != b"identity")
                or name == b"content-range"
                or (name == b"cache-control" and b"no-transform" in value.lower())
            ):
                return False, False
        decision = self._media_types.get(content_type)
        if decision is None:
            decision = self._media_type_decision(content_type)
            if len(self._media_types) < _MEDIA_TYPE_CACHE:
                self._media_types[content_type] = decision
        compressible, event_stream = decision
        if not compressible:
            return False, False
        if length is not None and length < self.min_size:
            return False, False
        return True, length is None or event_stream

    def _media_type_decision(self, content_type: bytes) -> tuple[bool, bool]:
        media_type = content_type.split(b";", 1)[0].strip().lower().decode("latin-1")
        compressible = bool(media_type) and self._compressible.match(media_type) is not None
        return compressible, media_type == "text/event-stream"


class _CompressingSend:
    """Per-request state: decides at the response head, then transforms each body message."""

    __slots__ = ("_accept", "_encoder", "_guard", "_send", "_stream")

    def __init__(self, guard: CompressionGuard, send: Send, accept: str) -> None:
        self._guard = guard
        self._send = send
        self._accept = accept
        self._encoder: Encoder | None = None
        self._stream = False

    def __call__(self, message: Message) -> Awaitable[None]:
        # A plain function handing back the awaitable: a response left uncompressed (most of
        # them) costs no coroutine here per message.
        if message["type"] == "http.response.start":
            self._start(message)
        elif self._encoder is not None and message["type"] == "http.response.body":
            return self._body(message)
        return self._send(message)

    def _start(self, message: Message) -> None:
        headers: Headers = message["headers"]
        eligible, stream = self._guard.eligible(message["status"], headers)
        if not eligible:
            return
        merge_vary(headers, b"accept-encoding")
        coding = negotiate(self._accept, self._guard.algorithms) if self._accept else None
        if coding is None:
            return
        kept: Headers = []
        for name, value in headers:
            if name in (b"content-length", b"content-encoding"):
                continue
            # The bytes change: a strong validator becomes weak (same representation, not bytes).
            kept.append((name, b"W/" + value if name == b"etag" and value.startswith(b'"') else value))
        kept.append((b"content-encoding", coding.encode("ascii")))
        message["headers"] = kept
        self._encoder = self._guard.encoder(coding)
        self._stream = stream

    async def _body(self, message: Message) -> None:
        assert self._encoder is not None
        body: bytes = message.get("body", b"")
        more_body: bool = message.get("more_body", False)
        out = []
        for start in range(0, len(body), _SLICE):
            if start:
                await asyncio.sleep(0)  # let other requests run between slices of a large chunk
            out.append(self._encoder.compress(body[start : start + _SLICE], flush=False))
        if not more_body:
            out.append(self._encoder.finish())
        elif self._stream:
            out.append(self._encoder.compress(b"", flush=True))
        data = b"".join(out)
        if data or not more_body:
            await self._send({"type": "http.response.body", "body": data, "more_body": more_body})
