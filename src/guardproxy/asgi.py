"""The ASGI types guardproxy's own middleware and endpoints are written against."""

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
# What guardproxy's scopes and response heads carry (ASGI allows any iterable of pairs; guardproxy's
# own protocol only ever serves its own chains, which build lists of tuples). Iterating a value
# typed Headers, the compiled build goes by index and unpacks each tuple directly: taken from a
# scope or message (typed Any), it makes an iterator per field, two allocations and three calls.
Headers = list[tuple[bytes, bytes]]
