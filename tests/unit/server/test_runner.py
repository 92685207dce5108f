"""server/runner.py: one task per connection runs its exchanges in turn, and ends with it."""

from __future__ import annotations

import asyncio

from tests.support.factories import make_chain
from tests.support.mock_transport import GatedResponse, MockResponse, MockTransport
from tests.support.wire import Wire

GET = b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n"


async def turns(count: int = 10) -> None:
    for _ in range(count):
        await asyncio.sleep(0)


async def test_keep_alive_requests_run_on_the_connections_one_task() -> None:
    chain, _ = make_chain()
    wire = Wire(chain)
    tasks = []
    for _ in range(3):
        wire.feed(GET)
        await wire.settle()
        tasks.append(set(wire.state.tasks))
    assert [len(response.body) for response in wire.responses()] == [11, 11, 11]
    assert len(tasks[0]) == 1
    assert tasks[0] == tasks[1] == tasks[2]  # the same task, waiting between requests


async def test_the_task_ends_when_an_idle_connection_closes() -> None:
    chain, _ = make_chain()
    wire = Wire(chain)
    wire.feed(GET)
    await wire.settle()
    assert wire.state.tasks
    wire.transport.close()
    await turns()
    assert not wire.state.tasks
    assert not wire.protocol.runner.busy


async def test_the_task_ends_after_the_exchange_whose_client_left() -> None:
    gate = asyncio.Event()
    chain, _ = make_chain(transport=MockTransport(lambda request: GatedResponse(headers=[], chunks=(b"x",), gate=gate)))
    wire = Wire(chain)
    wire.feed(GET)
    await turns()
    assert wire.protocol.runner.busy
    wire.transport.close()  # the client leaves while the upstream is still answering
    gate.set()
    await turns(20)
    assert not wire.state.tasks  # nothing waits for a next request on a closed connection


async def test_a_runner_cancelled_while_waiting_closes_its_connection() -> None:
    # uvicorn cancels the server's tasks when graceful shutdown runs out of time.
    chain, _ = make_chain()
    wire = Wire(chain)
    wire.feed(GET)
    await wire.settle()
    (task,) = wire.state.tasks
    task.cancel()
    await turns()
    assert task.cancelled()
    assert wire.transport.closed
    assert not wire.state.tasks


async def test_an_exchange_handed_over_as_the_runner_is_cancelled_is_not_left_hanging() -> None:
    chain, _ = make_chain()
    wire = Wire(chain)
    wire.feed(GET)
    await wire.settle()
    (task,) = wire.state.tasks
    task.cancel()  # the cancel lands first: the next request finds the task on its way out
    wire.feed(GET)
    await turns()
    assert task.cancelled()
    # The second request gets no answer, but its connection is closed: the client knows.
    assert len(wire.responses()) == 1
    assert wire.transport.closed
    assert not wire.state.tasks


async def test_a_connection_handed_to_a_tunnel_ends_its_waiting_runner() -> None:
    chain, _ = make_chain()
    wire = Wire(chain)
    wire.feed(GET)
    await wire.settle()
    wire.protocol.release_transport()
    await turns()
    assert not wire.state.tasks
    assert not wire.transport.closed  # the tunnel owns it now


async def test_pipelined_requests_share_the_task_and_keep_their_order() -> None:
    upstream = MockTransport(
        lambda request: MockResponse(headers=[(b"content-length", b"1")], chunks=(request.target[-1:],))
    )
    chain, _ = make_chain(transport=upstream)
    wire = Wire(chain)
    wire.feed(b"".join(b"GET /%d HTTP/1.1\r\nHost: x\r\n\r\n" % index for index in range(1, 5)))
    for _ in range(6):
        await wire.settle()
    assert [response.body for response in wire.responses()] == [b"1", b"2", b"3", b"4"]
    assert len(wire.state.tasks) == 1
