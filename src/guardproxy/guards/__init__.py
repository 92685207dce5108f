"""One pure-ASGI middleware per checklist item; their order is decided in `guardproxy.app` only."""
