"""WebSocket settings (config/websocket.py): defaults, per-route inheritance, and errors that
name the setting."""

from __future__ import annotations

from typing import Any

import pytest

from guardproxy.config import ConfigError, load_settings

UPSTREAM = {"url": "http://127.0.0.1:8000"}


def load(**sections: Any) -> Any:
    return load_settings({"upstream": UPSTREAM, **sections})


def test_defaults_tunnel_websocket_with_a_5_minute_idle_timeout() -> None:
    websocket = load().websocket
    assert websocket.enabled is True
    assert websocket.idle_timeout == 300.0
    assert websocket.max_lifetime is None
    assert websocket.allow_missing_origin is True
    assert websocket.allowed_origins is None
    assert websocket.protocols == ["websocket"]


def test_a_route_inherits_what_it_does_not_set() -> None:
    settings = load(
        websocket={"idle_timeout": 120, "max_tunnels": 50},
        routes=[
            {"name": "live", "path": "/live/**", "websocket": {"max_tunnels": 5, "protocols": ["WebSocket", "h2c"]}}
        ],
    )
    route = settings.effective_websocket(settings.routes[0])
    assert (route.idle_timeout, route.max_tunnels, route.protocols) == (120.0, 5, ["websocket", "h2c"])
    assert settings.effective_websocket(None).max_tunnels == 50


def test_origins_from_the_environment_are_a_comma_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GUARDPROXY_WEBSOCKET__ALLOWED_ORIGINS", "https://a.example, https://*.b.example")
    assert load().websocket.allowed_origins == ["https://a.example", "https://*.b.example"]


@pytest.mark.parametrize(
    ("sections", "setting"),
    [
        ({"websocket": {"allowed_origins": ["app.example.com"]}}, "websocket.allowed_origins"),
        ({"websocket": {"allowed_origins": ["https://*example.com"]}}, "websocket.allowed_origins"),
        ({"websocket": {"protocols": ["web socket"]}}, "websocket.protocols"),
        ({"websocket": {"idle_timeout": 0}}, "websocket.idle_timeout"),
        ({"websocket": {"max_lifetime": -1}}, "websocket.max_lifetime"),
        ({"websocket": {"max_tunnels": 0}}, "websocket.max_tunnels"),
        ({"websocket": {"idle": 5}}, "websocket.idle"),
        (
            {"routes": [{"name": "r", "path": "/r", "websocket": {"allowed_origins": ["nope"]}}]},
            "routes.0.websocket.allowed_origins",
        ),
        ({"routes": [{"name": "r", "path": "/r", "websocket": {"max_tunnels": -3}}]}, "routes.0.websocket.max_tunnels"),
    ],
    ids=[
        "origin-without-scheme",
        "bad-pattern",
        "not-a-token",
        "zero-idle",
        "negative-lifetime",
        "no-tunnels",
        "unknown-key",
        "route-origin",
        "route-budget",
    ],
)
def test_bad_settings_are_refused_by_their_dotted_name(sections: dict[str, Any], setting: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load(**sections)
    assert any(problem.startswith(f"{setting}:") for problem in refused.value.problems), refused.value.problems
