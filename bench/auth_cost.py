"""What edge authentication costs: per request through a real guardproxy, and per token in-process.

In-process (timeit): the uncached verification of one token (RS256 2048-bit, PS256, ES256,
EdDSA) through guardproxy's TokenVerifier (PyJWT + cryptography), and the guard's whole
decision for a cached token (digest, lookup, identity headers).

Through processes (wrk, interleaved rounds, CPU µs per request from /proc like
cpu_per_request.py): a static nginx upstream; guardproxy without auth; the same with auth
configured (same routes), on a route without auth, on a route with a (cached) RS256 bearer token (and, as
its control, the same request to guardproxy without auth: a bearer token is ~700 header bytes
to parse and pass on whoever checks it), and on a
forward-auth route whose auth service is the nginx upstream (answers 200), with and without
the positive-answer cache.

Usage: python bench/auth_cost.py [--rounds 5] [--duration 4] [--connections 64] [--skip-wrk]
       [--only WORD ...]   (e.g. --only header --only cached: the bearer case and its control)
Needs: wrk and nginx on PATH, Linux (/proc).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import tempfile
import time
import timeit
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from guardproxy.context import RequestContext
from guardproxy.guards.auth.guard import AuthGuard
from guardproxy.guards.auth.jwks import parse_jwks
from guardproxy.guards.auth.jwt_provider import TokenVerifier, token_header
from guardproxy.guards.auth.policy import AuthPolicy
from guardproxy.routes import RoutePolicy
from procstat import cpu_seconds
from run import free_port, start_guardproxy, start_nginx, tools_present, wait_for

ISSUER, AUDIENCE = "https://idp.bench/realms/bench", "bench-api"


def private_keys() -> dict[str, object]:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return {
        "RS256": rsa_key,
        "PS256": rsa_key,
        "ES256": ec.generate_private_key(ec.SECP256R1()),
        "EdDSA": ed25519.Ed25519PrivateKey.generate(),
    }


def jwks(keys: dict[str, object]) -> dict[str, object]:
    entries = []
    for alg, key in keys.items():
        entry = json.loads(jwt.get_algorithm_by_name(alg).to_jwk(key.public_key()))  # type: ignore[attr-defined]
        entries.append({**entry, "kid": alg, "alg": alg})
    return {"keys": entries}


def token(keys: dict[str, object], alg: str, sub: str = "bench-user") -> str:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "iat": now, "exp": now + 3600, "scope": "read"}
    return jwt.encode(claims, keys[alg], algorithm=alg, headers={"kid": alg})  # type: ignore[arg-type]


def inprocess(keys: dict[str, object]) -> None:
    key_set = parse_jwks(json.dumps(jwks(keys)).encode(), list(keys))
    verifier = TokenVerifier(
        name="idp",
        issuer=ISSUER,
        audiences=[AUDIENCE],
        algorithms=list(keys),
        leeway=30,
        required_claims=[],
        keys=key_set,
    )
    # The minimum of many short batches: on a shared, loaded machine the longer a batch runs
    # the more likely it is to share its core, and the minimum is the cost without that.
    print("uncached verification per token (timeit, minimum of 50 batches):")
    for alg in keys:
        signed = token(keys, alg)
        header = token_header(signed)
        assert header is not None
        number = 100
        best = min(timeit.repeat(partial(verifier.verify, signed, header), number=number, repeat=50)) / number
        print(f"  {alg:<6} {best * 1e6:7.1f} µs")

    policy = AuthPolicy(
        mode="required",
        verifiers=(verifier,),
        api_keys=False,
        forward=False,
        scopes=frozenset({"read"}),
        claims=(),
        claim_headers=(("sub", b"x-auth-subject"),),
        forward_credentials=True,
    )
    guard = AuthGuard(
        policies={"api": policy},
        verifiers=[verifier],
        token_header_name="Authorization",  # noqa: S106 - a header name
        token_cookie=None,
        token_query=None,
        api_keys=None,
        api_key_header="X-API-Key",
        api_key_name_header=None,
        forward=None,
        strip_headers=["x-auth-subject"],
        realm="bench",
        cache_size=10_000,
        count=lambda *_: None,
    )
    route = RoutePolicy("api", 5.0, 60.0, None, 1024)
    signed = token(keys, "RS256").encode()
    base = [(b"host", b"api"), (b"user-agent", b"wrk"), (b"accept", b"*/*"), (b"authorization", b"Bearer " + signed)]

    def decide() -> None:
        scope = {"method": "GET", "headers": list(base), "query_string": b""}
        assert guard.on_request(scope, RequestContext(route=route, client_host="127.0.0.1")) is None

    decide()
    number = 1000
    best = min(timeit.repeat(decide, number=number, repeat=50)) / number
    print(f"guard decision for a cached RS256 token (incl. building scope and context): {best * 1e6:.1f} µs")


@dataclass
class Case:
    name: str
    url: str
    pid: int
    headers: list[str] = field(default_factory=list)
    user_us: list[float] = field(default_factory=list)
    sys_us: list[float] = field(default_factory=list)
    rps: list[float] = field(default_factory=list)


def wrk(case: Case, duration: float, connections: int) -> None:
    header_args = [arg for header in case.headers for arg in ("-H", header)]
    user_before, sys_before = cpu_seconds(case.pid)
    output = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{int(duration)}s", *header_args, case.url],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    user_after, sys_after = cpu_seconds(case.pid)
    if "Non-2xx" in output:
        raise RuntimeError(f"{case.name}: error responses during the run:\n{output}")
    requests = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    case.rps.append(float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)))  # type: ignore[union-attr]
    case.user_us.append((user_after - user_before) * 1e6 / requests)
    case.sys_us.append((sys_after - sys_before) * 1e6 / requests)


CONFIG = """
auth:
  jwt:
    providers:
      - {{name: idp, issuer: "{issuer}", audiences: [{audience}], jwks_file: {jwks_file}}}
  forward:
    url: {upstream}/check
    cache_ttl: {cache_ttl}
routes:
  - name: api
    path: /api/**
    auth: {{providers: [idp], scopes: [read], claims_to_headers: {{sub: X-Auth-Subject}}}}
  - name: fwd
    path: /fwd/**
    auth: {{providers: [forward]}}
"""


PLAIN_CONFIG = """
routes:
  - {name: api, path: /api/**}
  - {name: fwd, path: /fwd/**}
"""


def through_processes(keys: dict[str, object], options: argparse.Namespace) -> None:
    upstream_port = free_port()
    upstream = f"http://127.0.0.1:{upstream_port}"
    processes: list[subprocess.Popen[bytes]] = []
    cases: list[Case] = []
    with tempfile.TemporaryDirectory(prefix="guardproxy-auth-") as tmp:
        workdir = Path(tmp)
        workdir.chmod(0o755)
        (workdir / "json60k.json").write_bytes(b"[]")
        (workdir / "jwks.json").write_text(json.dumps(jwks(keys)))
        signed = token(keys, "RS256")
        try:
            processes.append(start_nginx("nginx-upstream.conf", workdir, "upstream", upstream_port=upstream_port))

            def start(name: str, config: str | None) -> tuple[str, int]:
                env = {}
                if config is not None:
                    path = workdir / f"{name}.yaml"
                    path.write_text(config)
                    env["GUARDPROXY_CONFIG"] = str(path)
                port = free_port()
                process = start_guardproxy(upstream, port, free_port(), env, workdir / f"{name}.log")
                processes.append(process)
                return f"http://127.0.0.1:{port}", process.pid

            # The same routes without auth: route matching costs the same in both.
            plain_url, plain_pid = start("no-auth", PLAIN_CONFIG)
            formats = {"issuer": ISSUER, "audience": AUDIENCE, "jwks_file": workdir / "jwks.json", "upstream": upstream}
            auth_url, auth_pid = start("auth", CONFIG.format(**formats, cache_ttl=0))
            cached_url, cached_pid = start("auth-fwd-cache", CONFIG.format(**formats, cache_ttl=30))
            authorization = f"Authorization: Bearer {signed}"
            cases = [
                Case("no auth configured", f"{plain_url}/", plain_pid),
                # The same request bytes as the bearer case: what the big header costs by itself.
                Case("no auth, same header", f"{plain_url}/api/x", plain_pid, [authorization]),
                Case("auth on, route without", f"{auth_url}/", auth_pid),
                Case("auth on, route without, same header", f"{auth_url}/", auth_pid, [authorization]),
                Case("RS256 bearer (cached)", f"{auth_url}/api/x", auth_pid, [authorization]),
                Case("forward auth", f"{auth_url}/fwd/x", auth_pid, ["Authorization: Bearer opaque"]),
                Case("forward auth, cached", f"{cached_url}/fwd/x", cached_pid, ["Authorization: Bearer opaque"]),
            ]
            if options.only:
                cases = [case for case in cases if any(word in case.name for word in options.only)]
            wait_for(upstream)
            for url in (plain_url, auth_url, cached_url):
                wait_for(url + "/", timeout=60)
            for case in cases:
                wrk(case, 1, options.connections)  # warm-up: pools, caches
                case.user_us.clear(), case.sys_us.clear(), case.rps.clear()
            for _ in range(options.rounds):
                for case in cases:
                    wrk(case, options.duration, options.connections)
        finally:
            for process in processes:
                process.terminate()
            for process in processes:
                process.wait(timeout=30)
    print(f"wrk -t1 -c{options.connections} -d{options.duration:g}s, {options.rounds} interleaved rounds, median")
    print(f"{'case':<38}{'user µs':>10}{'sys µs':>10}{'total µs':>10}{'req/s':>10}")
    for case in cases:
        total = statistics.median(u + s for u, s in zip(case.user_us, case.sys_us, strict=True))
        print(
            f"{case.name:<38}{statistics.median(case.user_us):>10.1f}{statistics.median(case.sys_us):>10.1f}"
            f"{total:>10.1f}{statistics.median(case.rps):>10.0f}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--skip-wrk", action="store_true", help="only the in-process figures")
    parser.add_argument("--only", action="append", default=[], help="measure only cases whose name has this word")
    options = parser.parse_args()
    keys = private_keys()
    inprocess(keys)
    if options.skip_wrk:
        return 0
    if not tools_present():
        return 2
    through_processes(keys, options)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
