"""gzip, brotli and zstd compression of upstream responses (checklist item 25).

Chosen by the client's Accept-Encoding with its q-values (RFC 9110 §12.5.3), applied only where
it helps: compressible media types, bodies of at least `min_size` when the length is known, and
never to a response that is already encoded, asks for no-transform, is partial (206/Range) or
answers a HEAD. The rules other proxies broke, kept here:
- without a known length the first body chunk decides, and never a later one: below `min_size`
  the response goes out as it is (a 40-byte body must not become 55 bytes of gzip, nor a stream
  of small events a stream of larger ones), with its Content-Length when that chunk was the
  whole body; at least `min_size`, it is compressed from that chunk on. Deciding costs no wait:
  the server sends a response head together with its first chunk anyway;
- a stream is never held back: once compressed, every upstream chunk of a response of unknown
  length (server-sent events, chunked downloads) is flushed as it arrives;
- a compressed response loses Content-Length, and a strong ETag becomes weak (its bytes changed);
  a 304 answering a client that holds the weak twin of its strong ETag says the weak one too, so
  the client's cache recognises the stored response it refreshes (RFC 9111 §4.3.4);
- `Vary: Accept-Encoding` is merged into the upstream's Vary on every response that could have
  been compressed, so no cache hands a compressed body to a client that did not ask for one;
- large chunks are compressed in slices, yielding to the event loop between them.
"""

from __future__ import annotations

import asyncio
import re
import zlib
from collections.abc import Awaitable, Sequence
from enum import Enum
from typing import Final, Protocol

import brotli
from backports.zstd import ZstdCompressor

from guardproxy.asgi import Headers, Message, Scope, Send
from guardproxy.config import CompressionSettings
from guardproxy.context import RequestContext
from guardproxy.guards.chain import Guard
from guardproxy.http1.fields import merge_vary

# Bytes compressed between two yields to the event loop: ~1 ms of work at default levels.
_SLICE: Final = 64 * 1024
_MEDIA_TYPE_CACHE: Final = 64
# The response fields `eligible` decides on.
_DECIDING_FIELDS: Final = frozenset(
    {b"content-type", b"content-length", b"content-encoding", b"content-range", b"cache-control"}
)
_Q_VALUE: Final = re.compile(r"^\s*q\s*=\s*([01](?:\.\d{0,3})?)\s*$", re.IGNORECASE)


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


class Eligibility(Enum):
    NO = "no"
    # A known length of at least min_size: compressed.
    YES = "yes"
    # Server-sent events of a known length of at least min_size: compressed, flushed per chunk.
    STREAM = "stream"
    # Length unknown: the first body chunk decides; compressed, each chunk is flushed.
    FIRST_CHUNK_DECIDES = "first_chunk_decides"


# Module constants: an enum member looked up on its class costs ~0.3 µs on Python 3.11
# (Final, so the compiled build reads them from C statics, not the module's dict).
_NO: Final = Eligibility.NO
_YES: Final = Eligibility.YES
_STREAM: Final = Eligibility.STREAM
_FIRST_CHUNK_DECIDES: Final = Eligibility.FIRST_CHUNK_DECIDES


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
        validators = b""
        headers: Headers = scope["headers"]
        for name, value in headers:
            if name == b"accept-encoding":
                accept = value.decode("latin-1") if not accept else accept + "," + value.decode("latin-1")
            elif name == b"if-none-match":
                validators = value if not validators else validators + b"," + value
        return _CompressingSend(self, send, accept, validators)

    def eligible(self, status: int, headers: Headers) -> Eligibility:
        """Whether a response may be compressed, and how its body is to be treated."""
        if status < 200 or status in (204, 206, 304):
            return _NO
        content_type = b""
        length: int | None = None
        for name, value in headers:
            # Most fields: a length test (every deciding name is 12 to 16 bytes long), or one set
            # lookup, instead of five comparisons.
            if not 12 <= len(name) <= 16 or name not in _DECIDING_FIELDS:
                continue
            if name == b"content-type":
                content_type = value
            elif name == b"content-length":
                length = int(value)
            elif (
                (name == b"content-encoding" and value.strip().lower() != b"identity")
                or name == b"content-range"
                # find(), not `in`: bytes.__contains__ first tries the needle as an int and
                # formats the TypeError it clears, several times the cost of the search.
                or (name == b"cache-control" and value.lower().find(b"no-transform") >= 0)
            ):
                return _NO
        decision = self._media_types.get(content_type)
        if decision is None:
            decision = self._media_type_decision(content_type)
            if len(self._media_types) < _MEDIA_TYPE_CACHE:
                self._media_types[content_type] = decision
        compressible, event_stream = decision
        if not compressible:
            return _NO
        if length is None:
            return _FIRST_CHUNK_DECIDES
        if length < self.min_size:
            return _NO
        return _STREAM if event_stream else _YES

    def _media_type_decision(self, content_type: bytes) -> tuple[bool, bool]:
        media_type = content_type.split(b";", 1)[0].strip().lower().decode("latin-1")
        compressible = bool(media_type) and self._compressible.match(media_type) is not None
        return compressible, media_type == "text/event-stream"


class _CompressingSend:
    """Per-request state: decides at the response head (or, when the length is unknown, at the
    first body chunk), then transforms each body message."""

    __slots__ = ("_accept", "_coding", "_encoder", "_guard", "_held", "_send", "_stream", "_validators")

    def __init__(self, guard: CompressionGuard, send: Send, accept: str, validators: bytes) -> None:
        self._guard = guard
        self._send = send
        self._accept = accept
        self._validators = validators
        self._coding = ""
        self._encoder: Encoder | None = None
        self._stream = False
        # A response head of unknown length, held until its first body chunk decides.
        self._held: Message | None = None

    def __call__(self, message: Message) -> Awaitable[None]:
        # A plain function handing back the awaitable: a response left uncompressed (most of
        # them) costs no coroutine here per message.
        if message["type"] == "http.response.start":
            if self._start(message):
                return _nothing()  # held: the first body chunk sends it
        elif self._held is not None and message["type"] == "http.response.body":
            return self._decide(message)
        elif self._encoder is not None and message["type"] == "http.response.body":
            return self._body(message)
        return self._send(message)

    def _start(self, message: Message) -> bool:
        """Decide what the head allows; True when the head is held for the first chunk."""
        headers: Headers = message["headers"]
        status: int = message["status"]
        eligibility = self._guard.eligible(status, headers)
        if eligibility is _NO:
            if status == 304 and self._validators:
                _weaken_refreshed_etag(headers, self._validators)
            return False
        merge_vary(headers, b"accept-encoding")
        coding = negotiate(self._accept, self._guard.algorithms) if self._accept else None
        if coding is None:
            return False
        self._coding = coding
        self._encoder = self._guard.encoder(coding)
        self._stream = eligibility is not _YES
        if eligibility is _FIRST_CHUNK_DECIDES:
            self._held = message
            return True
        message["headers"] = _encoded_head(headers, coding)
        return False

    async def _decide(self, message: Message) -> None:
        """The first body chunk of a response of unknown length: below min_size the response
        goes out as it is (with its length, if that was all of it); otherwise it is compressed,
        streaming if more is to come."""
        start, self._held = self._held, None
        assert start is not None
        body: bytes = message.get("body", b"")
        more_body: bool = message.get("more_body", False)
        if len(body) < self._guard.min_size:
            self._encoder = None
            if not more_body:
                start["headers"].append((b"content-length", b"%d" % len(body)))
            await self._send(start)
            await self._send(message)
            return
        start["headers"] = _encoded_head(start["headers"], self._coding)
        if more_body:
            await self._send(start)
            await self._body(message)
            return
        # Complete in one chunk: compressed whole, so its length is known as well.
        data = await self._compressed(body, finish=True)
        start["headers"].append((b"content-length", b"%d" % len(data)))
        await self._send(start)
        await self._send({"type": "http.response.body", "body": data, "more_body": False})

    async def _body(self, message: Message) -> None:
        body: bytes = message.get("body", b"")
        more_body: bool = message.get("more_body", False)
        data = await self._compressed(body, finish=not more_body)
        if data or not more_body:
            await self._send({"type": "http.response.body", "body": data, "more_body": more_body})

    async def _compressed(self, body: bytes, *, finish: bool) -> bytes:
        encoder = self._encoder
        assert encoder is not None
        out = []
        for start in range(0, len(body), _SLICE):
            if start:
                await asyncio.sleep(0)  # let other requests run between slices of a large chunk
            out.append(encoder.compress(body[start : start + _SLICE], flush=False))
        if finish:
            out.append(encoder.finish())
        elif self._stream:
            out.append(encoder.compress(b"", flush=True))
        return b"".join(out)


def _encoded_head(headers: Headers, coding: str) -> Headers:
    kept: Headers = []
    for name, value in headers:
        if name in (b"content-length", b"content-encoding"):
            continue
        # The bytes change: a strong validator becomes weak (same representation, not bytes).
        kept.append((name, b"W/" + value if name == b"etag" and value.startswith(b'"') else value))
    kept.append((b"content-encoding", coding.encode("ascii")))
    return kept


def _weaken_refreshed_etag(headers: Headers, validators: bytes) -> None:
    """A 304 refreshes what the client stored. If the client asked with W/"x" (the validator a
    compressed 200 carried) and the upstream answers with "x", say W/"x": a cache matches the 304
    to its stored response by that validator (RFC 9111 §4.3.4)."""
    held = {token.strip() for token in validators.split(b",")}
    for index, (name, value) in enumerate(headers):
        if name == b"etag" and value.startswith(b'"') and b"W/" + value in held:
            headers[index] = (name, b"W/" + value)


async def _nothing() -> None:
    return None
