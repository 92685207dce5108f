"""One pure-ASGI middleware per checklist item; their order is decided in `guardproxy.runtime` (build_guards) only."""
