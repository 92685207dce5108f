"""Idempotency-Key at the edge (draft-ietf-httpapi-idempotency-key-header, checklist item 39).

  keys.py         the header's syntax, whose key it is (scope), and the request's fingerprint
  records.py      the state machine: what a stored entry is, and what a request meets
  store.py        the store interface and the in-memory store (one process)
  redis_store.py  the shared store: one Lua script per step, atomic lock + fingerprint
  ledger.py       a store held to a time budget, with a circuit breaker and error counts

The guard that puts them on the wire is guardproxy.guards.idempotency.
"""
