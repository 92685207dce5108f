"""The HTTP/1.1 rules both sides of the proxy share, kept free of I/O where possible (h11's
style), so each is unit-testable byte by byte: header-field hygiene (`fields`), message framing
and status lines (`framing`), and flow control on an asyncio transport (`flow`).

The server side (`server/`) and the upstream side (`proxy/`) both use them; neither
implements its own copy."""
