"""The path guard (guards/paths.py): the first screen lets a plain path through untouched, and
every path that could mean "go up" to someone is refused, whichever character brought it in."""

from __future__ import annotations

import pytest

from guardproxy.guards.paths import PathGuard
from guardproxy.outcomes import Outcome
from tests.support.factories import make_context, make_scope


def judge(raw_path: bytes) -> tuple[int | None, Outcome]:
    scope = make_scope("GET", raw_path.decode("latin-1"))
    scope["raw_path"] = raw_path
    context = make_context()
    answer = PathGuard().on_request(scope, context)
    return (answer.status if answer else None), context.outcome


@pytest.mark.parametrize(
    "raw_path",
    [
        b"/a/../b",
        b"/..",
        b"/a/./b",
        b"/a\\b",  # a backslash alone, with no dot and no escape, still reaches the full check
        b"/a/%2e%2e/b",
        b"/a/%2E%2e%2Fb",
        b"/a/.%2e/b",
        b"/a/%5c..%5cb",
        b"/a%00b",  # an encoded NUL
        b"/a/%252e%252e/b",  # percent-encoding inside percent-encoding
    ],
)
def test_paths_that_could_go_up_are_refused(raw_path: bytes) -> None:
    assert judge(raw_path) == (400, Outcome.BAD_PATH)


@pytest.mark.parametrize("raw_path", [b"/", b"/v1/items/42", b"/files/report.v2.json", b"/a%20b", b"/a/...b"])
def test_plain_paths_pass(raw_path: bytes) -> None:
    assert judge(raw_path) == (None, Outcome.OK)
