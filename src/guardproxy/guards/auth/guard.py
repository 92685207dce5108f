"""Edge authentication (checklist item 49): bearer JWTs, API keys and forward auth, per route.

The decision is synchronous whenever it can be: a token seen before is a digest and a dict
lookup (VerificationCache), a new one a signature check (~50 µs for RS256). Only two cases wait,
in `on_request_async`: a token whose `kid` no key set names yet (the key set is fetched, at most
once per `min_refresh_interval`, and concurrent requests share the fetch), and forward auth.

Answers (RFC 6750 §3): no credentials on a required route is a 401 whose challenge has no
`error`; a bad token is a 401 with `error="invalid_token"`; missing scopes (or a claim matcher
that fails) a 403 with `error="insufficient_scope"`; a provider that has never had keys a 503
(fail closed: the request might be valid). CORS preflights are never authenticated: browsers
send them without credentials (Fetch standard §4.8). Identity headers the upstream may trust are
removed from every client request, on every route, before the verified ones are added.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final
from urllib.parse import unquote_to_bytes

from guardproxy import problems
from guardproxy.answer import Answer
from guardproxy.asgi import Headers, Scope
from guardproxy.context import RequestContext
from guardproxy.guards.auth.api_keys import ApiKeyStore
from guardproxy.guards.auth.forward import ForwardAuth
from guardproxy.guards.auth.jwt_provider import (
    DESCRIPTIONS,
    MALFORMED,
    MISSING,
    NO_KEYS,
    VALID,
    TokenHeader,
    TokenVerifier,
    VerificationCache,
    Verified,
    token_header,
)
from guardproxy.guards.auth.policy import INSUFFICIENT_SCOPE, AuthPolicy, decide
from guardproxy.guards.chain import Guard
from guardproxy.outcomes import Outcome

# Results besides the JWT ones (jwt_provider and policy), for metrics.
BAD_KEY: Final = "bad_key"
# Provider labels that are not JWT provider names.
API_KEYS_LABEL: Final = "api_keys"
FORWARD_LABEL: Final = "forward"
NO_PROVIDER_LABEL: Final = "none"
# The scope key under which a decision that must wait is handed to on_request_async.
_PENDING: Final = "guardproxy.auth.pending"


@dataclass(frozen=True, slots=True)
class _TokenPending:
    token: str
    header: TokenHeader
    digest: bytes


class _ForwardPending:
    __slots__ = ()


_FORWARD_PENDING: Final = _ForwardPending()


def _is_preflight(scope: Scope) -> bool:
    if scope["method"] != "OPTIONS":
        return False
    headers: Headers = scope["headers"]
    names = {name for name, _ in headers}
    return b"origin" in names and b"access-control-request-method" in names


class AuthGuard(Guard):
    def __init__(
        self,
        *,
        policies: Mapping[str, AuthPolicy],
        verifiers: Sequence[TokenVerifier],
        token_header_name: str,
        token_cookie: str | None,
        token_query: str | None,
        api_keys: ApiKeyStore | None,
        api_key_header: str,
        api_key_name_header: str | None,
        forward: ForwardAuth | None,
        strip_headers: Iterable[str],
        realm: str,
        cache_size: int,
        count: Callable[[str, str], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        # Routes with mode off are not in the table: they cost one failed lookup.
        self._policies = {name: policy for name, policy in policies.items() if policy.mode != "off"}
        self.verifiers = tuple(verifiers)
        self._token_header = token_header_name.lower().encode("latin-1")
        self._bearer = self._token_header == b"authorization"
        self._token_cookie = token_cookie.encode("latin-1") if token_cookie else None
        self._token_query = token_query.encode("latin-1") if token_query else None
        self._api_keys = api_keys
        self._api_key_header = api_key_header.lower().encode("latin-1")
        self._api_key_header_shown = api_key_header  # as configured, for challenges and details
        self._api_key_name_header = api_key_name_header.lower().encode("latin-1") if api_key_name_header else None
        self._forward = forward
        self._strip = frozenset(name.lower().encode("latin-1") for name in strip_headers)
        self._credential_headers = frozenset({b"authorization", self._token_header, self._api_key_header})
        self._realm = realm
        self._cache = VerificationCache(cache_size)
        self._count = count
        self._clock = clock

    async def start(self) -> None:
        remotes = [verifier.remote.start() for verifier in self.verifiers if verifier.remote is not None]
        await asyncio.gather(*remotes)
        if self._forward is not None:
            await self._forward.start()

    async def aclose(self) -> None:
        for verifier in self.verifiers:
            if verifier.remote is not None:
                await verifier.remote.aclose()
        if self._forward is not None:
            await self._forward.aclose()

    def readiness_checks(self) -> Mapping[str, Callable[[], dict[str, object]]]:
        # JWKS state is news on /readyz, not unreadiness: routes without auth keep working, and
        # protected ones fail closed with 503 on their own.
        return {"auth": self.report}

    def report(self) -> dict[str, object]:
        """For /readyz: each remote key set, and whether all have keys."""
        providers = {v.name: v.remote.report() for v in self.verifiers if v.remote is not None}
        return {"ok": all(report["ok"] for report in providers.values()), "providers": providers}

    # The synchronous decision: everything but an unknown kid's fetch and forward auth.

    def on_request(self, scope: Scope, context: RequestContext) -> Answer | None:
        strip = self._strip
        if strip:
            headers: Headers = scope["headers"]
            for name, _ in headers:
                if name in strip:
                    scope["headers"] = [field for field in headers if field[0] not in strip]
                    break
        policy = self._policies.get(context.route.name)
        if policy is None or _is_preflight(scope):
            return None
        if policy.verifiers:
            token = self._token(scope)
            if token is not None:
                return self._check_token(scope, context, policy, token)
        if policy.api_keys:
            fields: Headers = scope["headers"]
            for name, value in fields:
                if name == self._api_key_header:
                    return self._check_api_key(scope, context, policy, bytes(value))
        if policy.forward:
            scope[_PENDING] = _FORWARD_PENDING
            return None
        if policy.mode == "optional":
            return None
        return self._unauthorized(scope, context, policy, NO_PROVIDER_LABEL, MISSING)

    def _check_api_key(self, scope: Scope, context: RequestContext, policy: AuthPolicy, key: bytes) -> Answer | None:
        assert self._api_keys is not None
        key_name = self._api_keys.lookup(key)
        if key_name is None:
            return self._unauthorized(scope, context, policy, API_KEYS_LABEL, BAD_KEY)
        self._count(API_KEYS_LABEL, VALID)
        context.subject = context.api_key_name = key_name
        extra = [(self._api_key_name_header, key_name.encode())] if self._api_key_name_header else []
        self._rewrite(scope, policy, extra)
        return None

    async def on_request_async(self, scope: Scope, context: RequestContext) -> Answer | None:
        pending = scope.pop(_PENDING, None)
        if pending is None:
            return None
        policy = self._policies[context.route.name]
        if isinstance(pending, _TokenPending):
            header = pending.header
            remotes = [v.remote for v in policy.verifiers if v.remote is not None and v.may_refresh_for(header)]
            await asyncio.gather(*(remote.refresh() for remote in remotes))
            return self._verify(scope, context, policy, token=pending.token, header=header, digest=pending.digest)
        assert self._forward is not None
        result, verdict = await self._forward.check(scope, context)
        self._count(FORWARD_LABEL, result)
        if isinstance(verdict, Answer):
            context.outcome = Outcome.UNAUTHORIZED if verdict.status == 401 else Outcome.FORBIDDEN
            if verdict.status == 503:
                context.outcome = Outcome.AUTH_UNAVAILABLE
            return verdict
        context.subject = verdict.subject
        self._rewrite(scope, policy, verdict.headers)
        return None

    def _token(self, scope: Scope) -> bytes | None:
        headers: Headers = scope["headers"]
        for name, value in headers:
            if name == self._token_header:
                if not self._bearer:
                    return bytes(value).strip()
                scheme, _, credentials = bytes(value).strip().partition(b" ")
                # RFC 9110 §11.1: the scheme is case-insensitive. Another scheme (Basic) is
                # not ours: the request has no bearer token.
                if scheme.lower() == b"bearer" and credentials.strip():
                    return credentials.strip()
        if self._token_cookie is not None:
            for name, value in headers:
                if name == b"cookie":
                    for pair in bytes(value).split(b";"):
                        cookie, sep, token = pair.strip().partition(b"=")
                        if sep and cookie == self._token_cookie and token:
                            return token.strip(b'"')
        if self._token_query is not None and scope["query_string"]:
            for pair in scope["query_string"].split(b"&"):
                name, sep, token = pair.partition(b"=")
                if sep and name == self._token_query and token:
                    return unquote_to_bytes(token)
        return None

    def _check_token(self, scope: Scope, context: RequestContext, policy: AuthPolicy, raw: bytes) -> Answer | None:
        digest = hashlib.sha256(raw).digest()
        cached = self._cache.get(digest, self._clock())
        if cached is not None:
            for verifier in policy.verifiers:
                # Still valid only with the key set it was verified with (a rotation that
                # dropped the key must not leave its tokens accepted from the cache).
                if verifier.name == cached.provider and cached.keys is verifier.keys:
                    return self._accept(scope, context, policy, cached)
        token = raw.decode("latin-1")
        header = token_header(token)
        if header is None:
            return self._unauthorized(scope, context, policy, policy.verifiers[0].name, MALFORMED)
        if any(verifier.may_refresh_for(header) for verifier in policy.verifiers) and not self._known(policy, header):
            scope[_PENDING] = _TokenPending(token, header, digest)
            return None
        return self._verify(scope, context, policy, token=token, header=header, digest=digest)

    @staticmethod
    def _known(policy: AuthPolicy, header: TokenHeader) -> bool:
        for verifier in policy.verifiers:
            keys = verifier.keys
            if keys is not None and header.alg in verifier.algorithms and keys.find(header.kid, header.alg):
                return True
        return False

    def _choose(self, policy: AuthPolicy, header: TokenHeader) -> TokenVerifier:
        """The provider whose keys can verify this token; else one without keys yet (so the
        answer is 503, not 401: its keys might have verified it); else the route's first."""
        keyless = None
        for verifier in policy.verifiers:
            keys = verifier.keys
            if keys is None:
                keyless = keyless or verifier
            elif header.alg in verifier.algorithms and keys.find(header.kid, header.alg) is not None:
                return verifier
        return keyless or policy.verifiers[0]

    def _verify(
        self,
        scope: Scope,
        context: RequestContext,
        policy: AuthPolicy,
        *,
        token: str,
        header: TokenHeader,
        digest: bytes,
    ) -> Answer | None:
        verifier = self._choose(policy, header)
        result = verifier.verify(token, header)
        if isinstance(result, Verified):
            self._cache.put(digest, result)
            return self._accept(scope, context, policy, result)
        if result == NO_KEYS:
            self._count(verifier.name, NO_KEYS)
            context.outcome = Outcome.AUTH_UNAVAILABLE
            return Answer.problem(
                scope,
                problems.AUTH_UNAVAILABLE,
                "The keys to verify this token are not available yet.",
                [(b"retry-after", b"5")],
            )
        return self._unauthorized(scope, context, policy, verifier.name, result)

    def _accept(self, scope: Scope, context: RequestContext, policy: AuthPolicy, verified: Verified) -> Answer | None:
        decision = verified.decisions.get(id(policy))
        if decision is None:
            # id(): the policies live as long as this guard, which owns them.
            decision = verified.decisions[id(policy)] = decide(policy, verified)
        refusal, extra = decision
        if refusal is not None:
            return self._forbidden(scope, context, policy, verified.provider, refusal)
        self._count(verified.provider, VALID)
        context.subject = verified.subject
        context.claims = verified.claims
        self._rewrite(scope, policy, extra)
        return None

    def _rewrite(self, scope: Scope, policy: AuthPolicy, extra: Sequence[tuple[bytes, bytes]]) -> None:
        if policy.forward_credentials:
            if extra:
                scope["headers"].extend(extra)  # this request's own list (see on_request)
            return
        headers = [field for field in scope["headers"] if field[0] not in self._credential_headers]
        scope["headers"] = [*headers, *extra]

    def _challenges(self, policy: AuthPolicy, error: str | None, description: str, scope_list: str = "") -> Headers:
        challenges: Headers = []
        if policy.verifiers:
            challenge = f'Bearer realm="{self._realm}"'
            if error is not None:
                challenge += f', error="{error}", error_description="{description}"'
            if scope_list:
                challenge += f', scope="{scope_list}"'
            challenges.append((b"www-authenticate", challenge.encode("ascii")))
        if policy.api_keys:
            header = self._api_key_header_shown
            challenges.append((b"www-authenticate", f'APIKey realm="{self._realm}", header="{header}"'.encode()))
        return challenges

    def _unauthorized(
        self, scope: Scope, context: RequestContext, policy: AuthPolicy, provider: str, result: str
    ) -> Answer:
        self._count(provider, result)
        context.outcome = Outcome.UNAUTHORIZED
        if result == MISSING:
            detail = "Credentials are required: " + (
                "a bearer token" if policy.verifiers else f"the {self._api_key_header_shown} header"
            )
            return Answer.problem(scope, problems.UNAUTHORIZED, detail + ".", self._challenges(policy, None, ""))
        if result == BAD_KEY:
            return Answer.problem(
                scope, problems.UNAUTHORIZED, "The API key is not valid.", self._challenges(policy, None, "")
            )
        description = DESCRIPTIONS.get(result, DESCRIPTIONS["invalid"])
        return Answer.problem(
            scope,
            problems.UNAUTHORIZED,
            description + ".",
            self._challenges(policy, "invalid_token", description),
        )

    def _forbidden(
        self, scope: Scope, context: RequestContext, policy: AuthPolicy, provider: str, result: str
    ) -> Answer:
        self._count(provider, result)
        context.outcome = Outcome.FORBIDDEN
        if result == INSUFFICIENT_SCOPE:
            description = "The token lacks a required scope"
            problem = problems.INSUFFICIENT_SCOPE
        else:
            description = "The token does not grant access to this resource"
            problem = problems.ACCESS_DENIED
        scope_list = " ".join(sorted(policy.scopes))
        return Answer.problem(
            scope, problem, description + ".", self._challenges(policy, "insufficient_scope", description, scope_list)
        )
