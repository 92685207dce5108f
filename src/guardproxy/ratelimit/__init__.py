"""Rate limiting: GCRA decisions, kept in process memory or shared through Redis.

  gcra.py         the algorithm: rates, and what a backlog means for one more request
  rules.py        configured rules compiled: which requests they match, what they key on
  memory.py       the in-process store (the default, and the fallback when Redis fails)
  redis_store.py  the shared store: one Lua script, one EVALSHA per batch of concurrent checks
  redis_url.py    the accepted forms of rate_limit.redis_url
  failsoft.py     the time budget, circuit breaker and fallback around the shared store
The guard that applies them is guardproxy.guards.rate_limit.
"""
