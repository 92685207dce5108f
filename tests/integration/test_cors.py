"""CORS over real sockets, and in a real browser: what a page on an allowed origin can read, and
that a page anywhere else can read nothing."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.support.browser import page_server, run_page
from tests.support.raw import raw_upstream, read_request_head

APP = "https://app.example.com"


def preflight(url: str, origin: str, method: str = "PUT", headers: str = "content-type") -> httpx.Response:
    return httpx.options(
        url,
        headers={"Origin": origin, "Access-Control-Request-Method": method, "Access-Control-Request-Headers": headers},
    )


@pytest.fixture
def cors_proxy(start_proxy, upstream):  # type: ignore[no-untyped-def]
    return start_proxy(upstream.url, "--cors-origin", APP, "--cors-origin", "https://*.example.org")


def test_allowed_origin_is_echoed_with_vary_and_exposed_headers(cors_proxy) -> None:  # type: ignore[no-untyped-def]
    response = httpx.get(f"{cors_proxy.url}/echo", headers={"Origin": APP})
    assert response.headers["access-control-allow-origin"] == APP
    assert "x-request-id" in response.headers["access-control-expose-headers"].lower()
    assert "access-control-allow-credentials" not in response.headers
    assert response.headers.get_list("vary")[-1].lower().endswith("origin")


@pytest.mark.parametrize(
    "origin",
    ["null", "https://example.org", "https://evilexample.org", "https://app.example.com.evil.io", "http://app.example.com",
     "https://evil.com"],
)  # fmt: skip
def test_foreign_origins_get_no_grant(cors_proxy, origin: str) -> None:  # type: ignore[no-untyped-def]
    response = httpx.get(f"{cors_proxy.url}/echo", headers={"Origin": origin})
    assert response.status_code == 200  # CORS is enforced by browsers; the response just grants nothing
    assert not [name for name in response.headers if name.startswith("access-control-")]
    assert "origin" in response.headers["vary"].lower()
    refused = preflight(f"{cors_proxy.url}/echo", origin)
    assert refused.status_code == 403
    assert not [name for name in refused.headers if name.startswith("access-control-")]


def test_preflight_is_answered_and_never_forwarded(start_proxy) -> None:  # type: ignore[no-untyped-def]
    def handler(conn, _):  # type: ignore[no-untyped-def]
        if head := read_request_head(conn):
            upstream.received.append(head)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")

    with raw_upstream(handler) as upstream:
        gp = start_proxy(upstream.url, "--cors-origin", APP)
        response = preflight(f"{gp.url}/items/1", APP, "PUT", "Content-Type, X-Request-ID")
        assert response.status_code == 204
        assert response.headers["access-control-allow-origin"] == APP
        assert "PUT" in response.headers["access-control-allow-methods"]
        assert response.headers["access-control-allow-headers"] == "content-type, x-request-id"
        assert response.headers["access-control-max-age"] == "600"
        assert preflight(f"{gp.url}/items/1", APP, "PUT", "X-Secret").status_code == 403
        assert preflight(f"{gp.url}/items/1", APP, "CONNECT").status_code == 403
        # A plain OPTIONS (no Access-Control-Request-Method) is not a preflight: it goes upstream.
        assert httpx.options(f"{gp.url}/items/1", headers={"Origin": APP}).status_code == 200
    assert [head.split(b" ")[0] for head in upstream.received] == [b"OPTIONS"]


def test_upstream_cors_headers_are_replaced(start_proxy) -> None:  # type: ignore[no-untyped-def]
    """An upstream sending `*` with credentials, or reflecting any origin, is overruled."""

    def handler(conn, _):  # type: ignore[no-untyped-def]
        while head := read_request_head(conn):
            origin = next(
                (line.split(b": ", 1)[1] for line in head.split(b"\r\n") if line.lower().startswith(b"origin:")), b"*"
            )
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nAccess-Control-Allow-Origin: " + origin + b"\r\n"
                b"Access-Control-Allow-Credentials: true\r\nAccess-Control-Allow-Origin: *\r\n"
                b"Vary: Accept-Encoding\r\nContent-Length: 2\r\n\r\nok"
            )

    with raw_upstream(handler) as upstream:
        gp = start_proxy(upstream.url, "--cors-origin", APP)
        foreign = httpx.get(gp.url, headers={"Origin": "https://evil.com"})
        assert not [name for name in foreign.headers if name.startswith("access-control-")]
        assert foreign.headers.get_list("vary") == ["Accept-Encoding, origin"]
        allowed = httpx.get(gp.url, headers={"Origin": APP})
        assert allowed.headers.get_list("access-control-allow-origin") == [APP]
        assert "access-control-allow-credentials" not in allowed.headers


def test_without_cors_configuration_the_upstream_decides(start_proxy) -> None:  # type: ignore[no-untyped-def]
    def handler(conn, _):  # type: ignore[no-untyped-def]
        while read_request_head(conn):
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nAccess-Control-Allow-Origin: https://partner.test\r\nContent-Length: 0\r\n\r\n"
            )

    with raw_upstream(handler) as upstream:
        gp = start_proxy(upstream.url)
        response = httpx.get(gp.url, headers={"Origin": "https://partner.test"})
    assert response.headers["access-control-allow-origin"] == "https://partner.test"


def test_per_route_cors_with_credentials(start_proxy, upstream, tmp_path) -> None:  # type: ignore[no-untyped-def]
    config = tmp_path / "guardproxy.yaml"
    config.write_text(
        "cors: {origins: ['https://public.test']}\n"
        "routes:\n  - name: account\n    path: /echo/account/**\n"
        "    cors: {origins: ['https://app.test'], allow_credentials: true}\n"
    )
    gp = start_proxy(upstream.url, "--config", str(config))
    account = httpx.get(f"{gp.url}/echo/account/me", headers={"Origin": "https://app.test"})
    assert account.headers["access-control-allow-origin"] == "https://app.test"
    assert account.headers["access-control-allow-credentials"] == "true"
    other = httpx.get(f"{gp.url}/echo/other", headers={"Origin": "https://app.test"})
    assert "access-control-allow-origin" not in other.headers
    public = httpx.get(f"{gp.url}/echo/other", headers={"Origin": "https://public.test"})
    assert public.headers["access-control-allow-origin"] == "https://public.test"


PAGE = """<!doctype html><meta charset="utf-8"><pre id="out">running</pre>
<script>
const target = new URLSearchParams(location.search).get("target");
const results = {};
async function attempt(name, run) {
  try { results[name] = await run(); } catch (error) { results[name] = "blocked"; }
}
(async () => {
  await attempt("get", async () => {
    const response = await fetch(target + "/echo?from=page");
    return {status: response.status, method: (await response.json()).method};
  });
  await attempt("put", async () => {
    const response = await fetch(target + "/echo", {
      method: "PUT", headers: {"Content-Type": "application/json"}, body: JSON.stringify({hello: "world"}),
    });
    const body = await response.json();
    return {status: response.status, method: body.method, size: body.body_size,
            requestId: response.headers.get("X-Request-ID")};
  });
  document.getElementById("out").textContent = JSON.stringify(results);
})();
</script>"""


def test_real_browser_on_an_allowed_origin_reads_and_a_foreign_one_cannot(start_proxy, upstream) -> None:  # type: ignore[no-untyped-def]
    with page_server(PAGE) as page_port:
        allowed_origin = f"http://127.0.0.1:{page_port}"
        gp = start_proxy(upstream.url, "--cors-origin", allowed_origin)
        target = f"http://127.0.0.1:{gp.port}"

        allowed = json.loads(run_page(f"{allowed_origin}/?target={target}"))
        assert allowed["get"] == {"status": 200, "method": "GET"}
        assert allowed["put"]["status"] == 200
        assert allowed["put"]["method"] == "PUT"  # the preflight passed and the body arrived
        assert allowed["put"]["size"] == len('{"hello":"world"}')
        assert len(allowed["put"]["requestId"]) == 32  # an exposed header is readable

        # The same page from another origin (localhost is not 127.0.0.1 to a browser).
        foreign = json.loads(run_page(f"http://localhost:{page_port}/?target={target}"))
        assert foreign == {"get": "blocked", "put": "blocked"}
