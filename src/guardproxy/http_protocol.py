"""guardproxy's HTTP/1.1 server protocol: uvicorn's httptools protocol with stricter framing.

httptools (llhttp) already refuses Content-Length together with Transfer-Encoding, duplicate or
signed Content-Length, bad chunk sizes, bare CR/LF, NUL and obs-fold (RFC 9112 §6.1, §6.3). What
this subclass adds is what a proxy needs on top:
- every malformed request gets an RFC 9457 problem (uvicorn answers in plain text) and the
  connection is closed, because its framing can no longer be trusted;
- a request whose transfer coding is not exactly `chunked` is refused before it reaches any guard
  (llhttp accepts `gzip, chunked`; decoded chunks under a dropped gzip coding would reach the
  upstream corrupted);
- a request asking for a protocol upgrade is served as a plain request and then the connection is
  closed, since llhttp stops parsing that connection after the upgrade request.
"""

from __future__ import annotations

import httptools
import structlog
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from guardproxy import problems
from guardproxy.guards.request_id import new_request_id

log = structlog.get_logger(component="guardproxy.server")


class _RequestRefused(Exception):
    """Raised inside a parser callback to stop parsing a request that has been answered."""


class GuardHttpToolsProtocol(HttpToolsProtocol):
    _refused = False

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass
        except httptools.HttpParserError as exc:
            if not self._refused:
                self._refuse(problems.BAD_REQUEST, _parser_detail(exc))

    def on_headers_complete(self) -> None:
        for name, value in self.headers:
            if name == b"transfer-encoding" and value.strip().lower() != b"chunked":
                if b"chunked" in value.lower():
                    self._refuse(problems.NOT_IMPLEMENTED, "Only the 'chunked' transfer coding is supported.")
                else:
                    self._refuse(problems.BAD_REQUEST, "Invalid Transfer-Encoding.")
                raise _RequestRefused
        super().on_headers_complete()
        if self.parser.should_upgrade() and self.cycle is not None:
            self.cycle.keep_alive = False

    def _refuse(self, problem: problems.ProblemType, detail: str) -> None:
        """Answer a request that never reached the application, then close the connection."""
        self._refused = True
        request_id = new_request_id()
        log.warning(
            "malformed request refused", request_id=request_id, status=problem.status, detail=detail,
            client=self.client[0] if self.client else None,
        )
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # The broken bytes belong to a request the application is already handling (a bad
            # chunk in its body): tell it the client is gone so nothing incomplete goes upstream.
            cycle.disconnected = True
            cycle.message_event.set()
            if cycle.response_started:
                # Its response has begun; ours would interleave with it. Closing is all that's left.
                self.transport.close()
                return
        body = problems.render_problem(problem, detail, request_id=request_id)
        head = problems.problem_head(body, [(b"x-request-id", request_id.encode()), (b"connection", b"close")])
        self.transport.write(
            b"".join([STATUS_LINE[problem.status], *(b"%s: %s\r\n" % field for field in head), b"\r\n", body])
        )
        self.transport.close()


def _parser_detail(exc: httptools.HttpParserError) -> str:
    # llhttp's reasons are fixed strings about the request's own bytes ("Invalid character in
    # Content-Length"): safe and useful to the client that sent them.
    reason = str(exc).strip()
    if isinstance(exc, httptools.HttpParserCallbackError) or not reason:
        return "The request is not valid HTTP/1.1."
    return f"The request is not valid HTTP/1.1: {reason}."
