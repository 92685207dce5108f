"""Route patterns (compile_path_pattern) and first-match-wins route tables (RouteTable)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from guardproxy.routes import PatternError, Route, RoutePolicy, RouteTable, compile_path_pattern


def matches(pattern: str, path: str) -> bool:
    return compile_path_pattern(pattern).match(path) is not None


MATCHING = [
    ("/", "/"),
    ("/login", "/login"),
    ("/a/b/c", "/a/b/c"),
    ("/users/{id}", "/users/42"),
    ("/users/{id}/posts/{post_id}", "/users/1/posts/x"),
    ("/files/*.json", "/files/a.json"),
    ("/files/*.json", "/files/.json"),
    ("/files/*", "/files/"),
    ("/v*/items", "/v2/items"),
    ("/static/**", "/static"),
    ("/static/**", "/static/"),
    ("/static/**", "/static/a/b"),
    ("/**", "/"),
    ("/**", "/anything/at/all"),
    ("/a.b", "/a.b"),
    ("/a+b", "/a+b"),
    ("/(x)|[y]$^", "/(x)|[y]$^"),
]

NOT_MATCHING = [
    ("/", ""),
    ("/login", "/login/"),
    ("/login", "/login/x"),
    ("/login", "/LOGIN"),
    ("/login", "/login\n"),  # `$` would have allowed a trailing newline
    ("/login", "/x/login"),
    ("/users/{id}", "/users/"),  # a placeholder needs a non-empty segment
    ("/users/{id}", "/users"),
    ("/users/{id}", "/users/1/2"),  # ... and never crosses '/'
    ("/users/{id}", "/users/1\n/x"),
    ("/files/*.json", "/files/a/b.json"),
    ("/files/*.json", "/files/a.jsonx"),
    ("/static/**", "/staticx"),
    ("/static/**", "/static\n"),
    ("/static/**", "/stati"),
    ("/a.b", "/axb"),  # '.' is a literal, not "any character"
    ("/a+b", "/aab"),
    ("/a+b", "/ab"),
    ("/a?", "/a"),
    ("/[ab]", "/a"),
    ("/(x)|y", "/y"),
]


@pytest.mark.parametrize(("pattern", "path"), MATCHING)
def test_pattern_matches(pattern: str, path: str) -> None:
    assert matches(pattern, path)


@pytest.mark.parametrize(("pattern", "path"), NOT_MATCHING)
def test_pattern_does_not_match(pattern: str, path: str) -> None:
    assert not matches(pattern, path)


@pytest.mark.parametrize(
    "pattern",
    [
        "",
        "no-slash",
        "static/**",
        "/a/**/b",
        "/**/x",
        "/a**",
        "/**b",
        "/a/***",
        "/{bad",
        "/bad}",
        "/{}",
        "/{1id}",
        "/{id}.json",
        "/{a-b}",
        "/{{id}}",
    ],
)
def test_bad_patterns_are_refused(pattern: str) -> None:
    with pytest.raises(PatternError):
        compile_path_pattern(pattern)


LITERAL_SEGMENT = st.text(st.characters(exclude_characters="/*{}", exclude_categories=["Cs"]), max_size=12)


@given(segment=LITERAL_SEGMENT, path=st.text(max_size=14))
def test_literal_pattern_matches_only_itself(segment: str, path: str) -> None:
    pattern = "/" + segment
    assert matches(pattern, path) == (path == pattern)
    assert matches(pattern, pattern)


@given(value=st.text(st.characters(exclude_categories=["Cs"]), max_size=12))
def test_placeholder_matches_exactly_one_nonempty_segment(value: str) -> None:
    assert matches("/users/{id}", "/users/" + value) == (value != "" and "/" not in value)


# --- RouteTable ----------------------------------------------------------------------------------

DEFAULT = RoutePolicy(name="default", connect_timeout=5.0, read_timeout=60.0, total_timeout=None, max_body_bytes=1024)


def make_route(name: str, pattern: str, methods: set[str] | None = None) -> Route:
    return Route(
        pattern=compile_path_pattern(pattern),
        methods=frozenset(methods) if methods is not None else None,
        policy=RoutePolicy(name=name, connect_timeout=1.0, read_timeout=2.0, total_timeout=None, max_body_bytes=1024),
    )


TABLE = RouteTable(
    [
        make_route("login", "/login", {"POST"}),
        make_route("user", "/users/{id}"),
        make_route("users-any", "/users/**"),
        make_route("reads", "/data/**", {"GET", "HEAD"}),
        make_route("writes", "/data/**"),
    ],
    DEFAULT,
)


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("POST", "/login", "login"),
        ("GET", "/login", "default"),  # methods filter: GET is not in {POST}
        ("post", "/login", "default"),  # methods are case-sensitive tokens
        ("GET", "/users/7", "user"),  # first match wins over the broader users-any
        ("GET", "/users/7/posts", "users-any"),
        ("GET", "/users", "users-any"),
        ("HEAD", "/data/x", "reads"),
        ("DELETE", "/data/x", "writes"),
        ("GET", "/nothing/here", "default"),
        ("GET", "/login\n", "default"),
        ("GET", "", "default"),
    ],
)
def test_route_table_match(method: str, path: str, expected: str) -> None:
    assert TABLE.match(method, path).name == expected


def test_empty_table_always_gives_the_default() -> None:
    assert RouteTable([], DEFAULT).match("GET", "/anything") is DEFAULT


def test_policies_list_routes_in_order_then_the_default() -> None:
    assert [policy.name for policy in TABLE.policies] == ["login", "user", "users-any", "reads", "writes", "default"]
