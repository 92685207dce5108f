"""Rate limits (checklist items on abuse and fairness): GCRA rules keyed by client address,
route or a header, enforced or dry-run, with draft-ietf-httpapi-ratelimit-headers fields.

A request no rule concerns costs a dictionary lookup. One that several rules count is decided
against all of them at once, in one store call: refused if any enforcing rule refuses, and then
no rule's budget is spent. Refusals are 429 problems with Retry-After, and never reach the
upstream. The client address is the one ClientAddressGuard resolved, so a spoofed
X-Forwarded-For from an untrusted peer buys no fresh budget.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import structlog

from guardproxy import problems
from guardproxy.answer import Answer
from guardproxy.asgi import Headers, Scope
from guardproxy.context import RequestContext
from guardproxy.guards.chain import Guard
from guardproxy.outcomes import Outcome
from guardproxy.ratelimit.failsoft import FailSoftStore
from guardproxy.ratelimit.gcra import verdict
from guardproxy.ratelimit.memory import MemoryStore
from guardproxy.ratelimit.rules import Rule, RuleSet, rules_by_route

log = structlog.get_logger(component="guardproxy.rate_limit")

# Decision labels for metrics: a small fixed set.
ALLOWED, LIMITED, DRY_RUN_LIMITED = "allowed", "limited", "dry_run_limited"


class RateLimitGuard(Guard):
    def __init__(
        self,
        *,
        rules: Sequence[Rule],
        route_names: Sequence[str],
        key_prefix: str,
        local: MemoryStore,
        shared: FailSoftStore | None,
        count_decision: Callable[[str, str], None],
    ) -> None:
        self._rules_by_route = rules_by_route(rules, route_names)
        self.key_prefix = key_prefix
        self.local = local
        self.shared = shared
        self._count_decision = count_decision

    async def on_request_async(self, scope: Scope, context: RequestContext) -> Answer | None:
        route = context.route.name
        route_rules = self._rules_by_route.get(route)
        if route_rules is None:
            return None
        rule_set = route_rules.applicable(route, scope["method"], scope["path"])
        if rule_set is None:
            return None
        keys = [rule.key(self.key_prefix, scope, context) for rule in rule_set.rules]
        if self.shared is None:
            backlogs = self.local.check(keys, rule_set.rates, rule_set.enforce)
        else:
            decision = await self.shared.check(keys, rule_set.rates, rule_set.enforce)
            if decision.backlogs is None:
                return self._store_fallback(scope, context, decision.source)
            backlogs = decision.backlogs
        return self._decide(scope, context, rule_set, backlogs)

    def _decide(self, scope: Scope, context: RequestContext, rule_set: RuleSet, backlogs: list[int]) -> Answer | None:
        status_items = []
        retry_after, refused_by = 0, []
        count = self._count_decision
        for rule, backlog in zip(rule_set.rules, backlogs, strict=True):
            outcome = verdict(backlog, rule.rate)
            if not rule.enforce:
                if outcome.admitted:
                    count(rule.name, ALLOWED)
                else:
                    count(rule.name, DRY_RUN_LIMITED)
                    log.warning(
                        "rate limit would refuse (dry-run)",
                        rule=rule.name,
                        route=context.route.name,
                        request_id=context.request_id,
                    )
                continue  # dry-run rules are not advertised: clients must not act on them
            status_items.append(rule.status_item(outcome.remaining, outcome.reset_seconds))
            if outcome.admitted:
                count(rule.name, ALLOWED)
            else:
                count(rule.name, LIMITED)
                refused_by.append(rule.name)
                retry_after = max(retry_after, outcome.retry_after_seconds)
        if status_items:
            context.rate_limit_headers = [
                (b"ratelimit-policy", rule_set.policy),
                (b"ratelimit", b", ".join(status_items)),
            ]
        if not refused_by:
            return None
        context.outcome = Outcome.RATE_LIMITED
        return Answer.problem(
            scope,
            problems.RATE_LIMITED,
            f"Rate limit {', '.join(refused_by)} exceeded; retry in {retry_after} s.",
            [(b"retry-after", b"%d" % retry_after)],
        )

    def _store_fallback(self, scope: Scope, context: RequestContext, source: str) -> Answer | None:
        if source == "allow":
            return None
        # `deny`: the operator chose to refuse while the shared budget cannot be read.
        assert self.shared is not None
        context.outcome = Outcome.RATE_LIMITED
        retry_after = max(1, math.ceil(self.shared.breaker_cooldown))
        return Answer.problem(
            scope,
            problems.RATE_LIMITED,
            f"The rate limit cannot be checked right now; retry in {retry_after} s.",
            [(b"retry-after", b"%d" % retry_after)],
        )

    def on_response_start(self, context: RequestContext, headers: Headers) -> None:
        # Added as field lines of their own: an upstream's own RateLimit items combine with ours
        # into one list (RFC 9651 lists may span field lines).
        headers.extend(context.rate_limit_headers)
