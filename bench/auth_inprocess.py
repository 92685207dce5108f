"""bench/inprocess.py (the whole Python request path, no sockets) for the auth cases: exactly
repeatable instruction counts under callgrind, where wall-clock figures on a shared machine are not.

  python bench/auth_inprocess.py CASE [--requests N] > /dev/null
  valgrind --tool=callgrind --collect-atstart=no --toggle-collect=uv_run \\
      python bench/auth_inprocess.py CASE --requests 2000 > /dev/null     ("Collected" / requests)

CASE: plain (same routes, no auth, a bearer header sent anyway), off-route (auth configured, a
route without auth, same header), cached (a route requiring an RS256 token; the same token every
time, so every request but the first is answered from the verification cache).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import inprocess
from auth_cost import AUDIENCE, ISSUER, jwks, private_keys, token

ROUTES = [
    {"name": "api", "path": "/api/**"},
    {"name": "fwd", "path": "/fwd/**"},
]


def main() -> int:
    case = sys.argv.pop(1)
    keys = private_keys()
    key_file = Path(tempfile.mkdtemp(prefix="guardproxy-auth-")) / "jwks.json"
    key_file.write_text(json.dumps(jwks(keys)))
    routes = [dict(route) for route in ROUTES]
    if case in ("off-route", "cached"):
        provider = {"name": "idp", "issuer": ISSUER, "audiences": [AUDIENCE], "jwks_file": str(key_file)}
        os.environ["GUARDPROXY_AUTH"] = json.dumps({"jwt": {"providers": [provider]}})
        routes[0]["auth"] = {"providers": ["idp"], "scopes": ["read"], "claims_to_headers": {"sub": "X-Auth-Subject"}}
    elif case != "plain":
        raise SystemExit(f"unknown case {case!r}: plain, off-route or cached")
    os.environ["GUARDPROXY_ROUTES"] = json.dumps(routes)
    path = b"/api/x" if case == "cached" else b"/"
    authorization = b"Authorization: Bearer " + token(keys, "RS256").encode()
    inprocess.REQUEST = b"GET " + path + b" HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n" + authorization + b"\r\n\r\n"
    return inprocess.main()


if __name__ == "__main__":
    raise SystemExit(main())
