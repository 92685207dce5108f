"""Real headless Chromium for browser-behaviour tests (CORS): a page served from one origin runs
fetches against guardproxy, and the test reads what the page could see."""

from __future__ import annotations

import contextlib
import html
import re
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@contextlib.contextmanager
def page_server(body: str) -> Iterator[int]:
    """Serve one HTML page on a free loopback port (any path)."""
    page = body.encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def run_page(url: str, timeout: float = 60) -> str:
    """Load `url` in headless Chromium, let its scripts finish, and return the text of #out."""
    assert CHROMIUM is not None, "chromium is not installed (./scripts/test installs Debian's chromium)"
    with tempfile.TemporaryDirectory(prefix="guardproxy-chromium-") as profile:
        result = subprocess.run(
            [
                CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--disable-quic", "--no-first-run",
                f"--user-data-dir={profile}", "--virtual-time-budget=15000", "--dump-dom", url,
            ],
            capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip
    match = re.search(r'<pre id="out">(.*?)</pre>', result.stdout, re.DOTALL)
    assert match is not None, f"no result in the page:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    return html.unescape(match.group(1))
