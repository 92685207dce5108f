"""Serving: processes and listeners (`process`), the HTTP/1.1 protocol under the proxy listener
(`protocol` for connections, `exchange` for one request and its response), and what a listener
serves (`limits`)."""
