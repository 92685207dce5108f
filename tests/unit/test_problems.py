"""RFC 9457 problem bodies (problems.py) and the answers built from them (answer.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from guardproxy import problems
from guardproxy.answer import Answer
from guardproxy.asgi import Message
from guardproxy.context import CONTEXT_KEY, RequestContext
from guardproxy.routes import RoutePolicy

ALL_PROBLEMS = [value for value in vars(problems).values() if isinstance(value, problems.ProblemType)]


def test_every_problem_type_has_a_distinct_urn_and_an_error_status() -> None:
    assert len(ALL_PROBLEMS) >= 8
    assert len({problem.uri for problem in ALL_PROBLEMS}) == len(ALL_PROBLEMS)
    for problem in ALL_PROBLEMS:
        assert problem.uri == "urn:guardproxy:problem:" + problem.slug
        assert 400 <= problem.status <= 599


@pytest.mark.parametrize("problem", ALL_PROBLEMS, ids=lambda problem: problem.slug)
def test_render_problem_has_the_four_standard_members(problem: problems.ProblemType) -> None:
    body = json.loads(problems.render_problem(problem, "Something specific."))
    assert body == {
        "type": problem.uri,
        "title": problem.title,
        "status": problem.status,
        "detail": "Something specific.",
    }


def test_render_problem_adds_request_id_and_instance_when_given() -> None:
    body = json.loads(problems.render_problem(problems.BAD_REQUEST, "d", request_id="rid-1", instance="/a/b"))
    assert body["request_id"] == "rid-1"
    assert body["instance"] == "/a/b"


@pytest.mark.parametrize("request_id", [None, ""])
def test_render_problem_omits_a_missing_request_id(request_id: str | None) -> None:
    body = json.loads(problems.render_problem(problems.BAD_REQUEST, "d", request_id=request_id))
    assert "request_id" not in body
    assert "instance" not in body


@given(
    detail=st.text(st.characters(exclude_categories=["Cs"])),
    instance=st.text(st.characters(exclude_categories=["Cs"])),
)
def test_render_problem_is_valid_json_whatever_the_text(detail: str, instance: str) -> None:
    # Quotes, backslashes, control characters and `</script>` must all come back unchanged.
    body = json.loads(problems.render_problem(problems.UPSTREAM_TIMEOUT, detail, instance=instance))
    assert (body["detail"], body["instance"]) == (detail, instance)


def test_hostile_path_is_escaped_not_spliced_into_the_json() -> None:
    instance = '/x","status":200,"type":"about:blank'
    raw = problems.render_problem(problems.BAD_REQUEST, "d", instance=instance)
    body = json.loads(raw)
    assert body["status"] == 400
    assert body["instance"] == instance
    assert raw.count(b'"status"') == 1


@pytest.mark.parametrize("body", [b"", b"{}", b'{"detail":"caf\xc3\xa9"}', b"x" * 10_000])
def test_problem_head(body: bytes) -> None:
    head = problems.problem_head(body)
    assert head == [
        (b"content-type", b"application/problem+json"),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
    ]


def test_problem_head_appends_extra_headers_after_the_fixed_ones() -> None:
    head = problems.problem_head(b"{}", [(b"retry-after", b"1"), (b"allow", b"GET")])
    assert head[3:] == [(b"retry-after", b"1"), (b"allow", b"GET")]
    assert [name for name, _ in head].count(b"content-type") == 1


# --- Answer.problem ------------------------------------------------------------------------------


def scope_with(request_id: str | None, path: str = "/orders/7", query: bytes = b"token=s3cret") -> dict[str, Any]:
    scope: dict[str, Any] = {"type": "http", "method": "GET", "path": path, "query_string": query, "headers": []}
    if request_id is not None:
        context = RequestContext(route=RoutePolicy("default", 5.0, 60.0, None, 1024), client_host="192.0.2.1")
        context.request_id = request_id
        scope[CONTEXT_KEY] = context
    return scope


def test_answer_problem_carries_request_id_and_path_but_not_the_query() -> None:
    answer = Answer.problem(scope_with("rid-42"), problems.UPSTREAM_BUSY, "Try again shortly.")
    body = json.loads(answer.body)
    assert answer.status == 503
    assert body["request_id"] == "rid-42"
    assert body["instance"] == "/orders/7"
    assert b"s3cret" not in answer.body
    assert b"token" not in answer.body
    assert dict(answer.headers)[b"content-length"] == str(len(answer.body)).encode()


@pytest.mark.parametrize("request_id", [None, ""])
def test_answer_problem_without_a_request_id(request_id: str | None) -> None:
    body = json.loads(Answer.problem(scope_with(request_id), problems.BAD_REQUEST, "d").body)
    assert "request_id" not in body
    assert body["status"] == 400


def test_answer_problem_without_a_path() -> None:
    scope = scope_with("rid")
    del scope["path"]
    body = json.loads(Answer.problem(scope, problems.INTERNAL_ERROR, "d").body)
    assert "instance" not in body


def test_answer_problem_passes_extra_headers() -> None:
    answer = Answer.problem(scope_with("rid"), problems.UPSTREAM_BUSY, "d", [(b"retry-after", b"2")])
    assert (b"retry-after", b"2") in answer.headers
    assert (b"cache-control", b"no-store") in answer.headers


async def test_answer_send_emits_start_then_the_whole_body() -> None:
    answer = Answer.problem(scope_with("rid"), problems.REQUEST_TIMEOUT, "d")
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    await answer.send(send)
    assert sent == [
        {"type": "http.response.start", "status": 408, "headers": list(answer.headers)},
        {"type": "http.response.body", "body": answer.body},
    ]
    assert sent[0]["headers"] is not answer.headers  # the server may mutate what it is sent
