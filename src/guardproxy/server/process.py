"""Process wiring: listeners, workers and signals.

Each worker process runs two uvicorn servers on one event loop: the proxy listener and the admin
listener. Sockets are bound once, in the parent, so every worker accepts on the same ports and a
bad address fails the start before any worker exists.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import multiprocessing
import os
import signal
import socket
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from functools import partial
from multiprocessing.process import BaseProcess
from typing import Any

import structlog
import uvicorn

from guardproxy.admin import build_admin_app
from guardproxy.asgi import ASGIApp, Receive, Scope, Send
from guardproxy.buildinfo import build_kind
from guardproxy.config import Address, ServerSettings, Settings
from guardproxy.config.source import ConfigSource
from guardproxy.observability.logging import configure_logging, log_sink
from guardproxy.observability.metrics import ProxyMetrics
from guardproxy.observability.multiprocess import MetricsDirectory, MetricsDirectoryError
from guardproxy.runtime import CurrentRuntime, Runtime
from guardproxy.server.limits import Lifecycle
from guardproxy.server.protocol import ProxyHttpProtocol
from guardproxy.server.reload import Reloader, reloaded_settings

log = structlog.get_logger(component="guardproxy.server")

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# SIGHUP stays blocked from the start until a handler is in place (children inherit the mask):
# a reload signal that arrives while a worker is still starting waits instead of killing it.
_RELOAD_SIGNALS = {signal.SIGHUP}
_GC_YOUNG_THRESHOLD = 20_000


class StartupError(Exception):
    """A start-up failure already phrased for the operator (e.g. a port in use)."""


class _Listener(uvicorn.Server):
    # guardproxy handles signals once for both listeners; uvicorn's own handling would make the
    # second server overwrite the first one's handlers.
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def _served_by_the_protocol(scope: Scope, receive: Receive, send: Send) -> None:
    raise AssertionError("ProxyHttpProtocol runs the current runtime's application")


def bind(address: Address, setting: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    try:
        sock = socket.create_server((address.host, address.port), family=family, backlog=2048)
    except OSError as exc:
        raise StartupError(f"{setting}: cannot listen on {address}: {exc.strerror}") from None
    sock.set_inheritable(True)
    return sock


@dataclass(frozen=True)
class Listeners:
    """The sockets one worker serves, bound once in the parent so every worker shares them."""

    proxy: socket.socket
    admin: socket.socket
    redirect: socket.socket | None = None

    @classmethod
    def bind(cls, settings: ServerSettings, admin: Address) -> Listeners:
        return cls(
            proxy=bind(settings.listen, "server.listen"),
            admin=bind(admin, "admin.listen"),
            redirect=bind(settings.redirect_listen, "server.redirect_listen") if settings.redirect_listen else None,
        )


# Forward-secret AEAD suites only for TLS 1.2 (TLS 1.3 suites are all of that kind already).
_TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


def _uvicorn_config(settings: Settings, http: Any, *, tls: bool = False, app: ASGIApp | None = None) -> uvicorn.Config:
    """uvicorn's settings for one listener. The proxy listeners run guardproxy's own protocol,
    which takes its application from the current runtime, so uvicorn's `app` is unused there."""
    server = settings.server
    return uvicorn.Config(
        app or _served_by_the_protocol,
        http=http,
        ssl_certfile=server.tls_cert if tls else None,
        ssl_keyfile=server.tls_key if tls else None,
        ssl_ciphers=_TLS12_CIPHERS,
        ws="none",
        lifespan="off",
        # Client addresses and X-Forwarded-* are guardproxy's business (trusted proxies only);
        # uvicorn's own rewriting would trust 127.0.0.1 blindly.
        proxy_headers=False,
        server_header=False,
        date_header=False,
        access_log=False,
        log_config=None,
        timeout_keep_alive=settings.server.keep_alive_timeout,  # type: ignore[arg-type]
        timeout_graceful_shutdown=settings.server.shutdown_timeout,  # type: ignore[arg-type]
    )


async def serve(settings: Settings, listeners: Listeners, source: ConfigSource | None = None) -> None:
    """Run one worker until SIGTERM or SIGINT, then drain; SIGHUP reloads the configuration."""
    loop = asyncio.get_running_loop()
    lifecycle = Lifecycle()
    metrics = ProxyMetrics.for_this_process() if settings.metrics.enabled else None
    if metrics is not None:
        sink = log_sink()
        metrics.watch_log_lines_dropped(lambda: sink.dropped)
    current = CurrentRuntime(Runtime(settings, lifecycle=lifecycle, metrics=metrics))
    tls = settings.server.tls_cert is not None
    proxy = _Listener(
        _uvicorn_config(settings, partial(ProxyHttpProtocol, site=current.proxy_site, lifecycle=lifecycle), tls=tls)
    )
    admin = _Listener(_uvicorn_config(settings, "httptools", app=build_admin_app(current.readiness, metrics)))
    redirect = None
    if listeners.redirect is not None:
        redirect = _Listener(
            _uvicorn_config(settings, partial(ProxyHttpProtocol, site=current.redirect_site, lifecycle=lifecycle))
        )

    def stop_accepting() -> None:
        # uvicorn closes the listener, closes idle connections, lets busy ones finish their
        # response (within shutdown_timeout) and then returns from serve().
        proxy.should_exit = True
        if redirect is not None:
            redirect.should_exit = True

    def stop() -> None:
        if lifecycle.draining:
            stop_accepting()  # a second signal: no more waiting for load balancers
            return
        # Readiness flips at once, so load balancers stop sending while the listener still
        # accepts what they already routed here; responses now say Connection: close.
        lifecycle.draining = True
        drain_delay = current.runtime.settings.server.drain_delay  # reloadable
        log.info("draining", drain_delay=drain_delay, shutdown_timeout=settings.server.shutdown_timeout)
        loop.call_later(drain_delay, stop_accepting)

    for sig in _STOP_SIGNALS:
        loop.add_signal_handler(sig, stop)
    reloader = Reloader(
        source or ConfigSource(),
        current,
        lifecycle=lifecycle,
        metrics=metrics,
        tls_context=lambda: getattr(proxy.config, "ssl", None),
    )
    _handle_reloads(loop, reloader)
    _tune_gc()
    await current.runtime.start()
    log.info("worker serving", pid=os.getpid(), config_hash=(current.runtime.readiness.config or {}).get("hash"))
    if metrics is not None:
        metrics.start_flushing()
    admin_task = asyncio.create_task(admin.serve(sockets=[listeners.admin]))
    redirect_task = None
    if redirect is not None and listeners.redirect is not None:
        redirect_task = asyncio.create_task(redirect.serve(sockets=[listeners.redirect]))
    try:
        await proxy.serve(sockets=[listeners.proxy])
    finally:
        if redirect_task is not None:
            await redirect_task
        await reloader.aclose()
        await current.runtime.aclose()
        await log_sink().aclose()  # the lines still buffered, while the loop can wait for a slow consumer
        if metrics is not None:
            metrics.stop_flushing()
        admin.should_exit = True
        await admin_task


def _handle_reloads(loop: asyncio.AbstractEventLoop, reloader: Reloader) -> None:
    loop.add_signal_handler(signal.SIGHUP, reloader.request)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _RELOAD_SIGNALS)  # a SIGHUP that waited arrives now


def _tune_gc() -> None:
    # Every request allocates a few hundred short-lived objects, nearly all freed by reference
    # counting. Moving start-up objects out of the collector's sight and collecting the young
    # generation less often measured ~4 % more throughput (bench/).
    gc.freeze()
    gc.set_threshold(_GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


def _run_worker(settings: Settings, listeners: Listeners, source: ConfigSource | None = None) -> None:
    configure_logging(settings.logging)
    _event_loop_runner()(serve(settings, listeners, source))


def _event_loop_runner() -> Callable[[Coroutine[Any, Any, None]], None]:
    try:
        import uvloop  # noqa: PLC0415 - optional: not available on every platform
    except ImportError:  # pragma: no cover
        return asyncio.run
    return uvloop.run


def run(settings: Settings, source: ConfigSource | None = None) -> int:
    """Bind the listeners and serve until told to stop; returns the process exit code. `source`
    is where `settings` came from, read again at every SIGHUP."""
    signal.pthread_sigmask(signal.SIG_BLOCK, _RELOAD_SIGNALS)
    configure_logging(settings.logging)
    listeners = Listeners.bind(settings.server, settings.admin.listen)
    try:
        metrics_dir = (
            MetricsDirectory.prepare(settings.metrics.multiprocess_dir, workers=settings.server.workers)
            if settings.metrics.enabled
            else None
        )
    except MetricsDirectoryError as exc:
        raise StartupError(str(exc)) from None
    log.info(
        "guardproxy starting",
        build=build_kind(),
        listen=str(settings.server.listen),
        admin_listen=str(settings.admin.listen),
        upstream=settings.upstream.url,
        workers=settings.server.workers,
        tls=settings.server.tls_cert is not None,
        redirect_listen=str(settings.server.redirect_listen) if settings.server.redirect_listen else None,
    )
    limits = settings.rate_limit
    if settings.server.workers > 1 and limits.redis_url is None and (limits.per_client_ip or limits.rules):
        log.warning(
            "rate limits are kept per worker without rate_limit.redis_url: each of the workers admits "
            "the full rate, so a client may get up to that many times its budget",
            workers=settings.server.workers,
        )
    try:
        if settings.server.workers == 1:
            _run_worker(settings, listeners, source)
            return 0
        return _supervise(settings, listeners, metrics_dir, source or ConfigSource())
    finally:
        if metrics_dir is not None:
            metrics_dir.remove()


def _signal_workers(workers: list[BaseProcess], signum: int) -> None:
    for process in workers:
        if process.is_alive() and process.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signum)


def _supervise(
    settings: Settings, listeners: Listeners, metrics_dir: MetricsDirectory | None, source: ConfigSource
) -> int:
    """Keep `workers` processes running; on SIGTERM/SIGINT pass the signal on and wait for them;
    on SIGHUP pass it on too: each worker re-reads the configuration itself."""
    context = multiprocessing.get_context("spawn")
    stopping = False
    reloads = 0

    def request_stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    def request_reload(signum: int, _frame: object) -> None:
        nonlocal reloads
        reloads += 1

    for sig in _STOP_SIGNALS:
        signal.signal(sig, request_stop)
    signal.signal(signal.SIGHUP, request_reload)

    def start_worker() -> BaseProcess:
        # Started with SIGHUP blocked (the mask is inherited), which the worker lifts once it
        # handles it; the supervisor's own SIGHUP waits meanwhile.
        signal.pthread_sigmask(signal.SIG_BLOCK, _RELOAD_SIGNALS)
        try:
            process = context.Process(target=_run_worker, args=(settings, listeners, source), name="guardproxy-worker")
            process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _RELOAD_SIGNALS)
        return process

    workers = [start_worker() for _ in range(settings.server.workers)]
    stop_timeout = settings.server.drain_delay + settings.server.shutdown_timeout + 10
    while not stopping:
        time.sleep(0.2)
        if reloads:
            reloads = 0
            # Workers started from now on start from the configuration as it reads now.
            settings = reloaded_settings(settings, source)
            _signal_workers(workers, signal.SIGHUP)
        for index, process in enumerate(workers):
            if not process.is_alive() and not stopping:
                log.error("worker exited unexpectedly; restarting", pid=process.pid, exitcode=process.exitcode)
                if metrics_dir is not None and process.pid is not None:
                    metrics_dir.mark_dead(process.pid)
                workers[index] = start_worker()
    for process in workers:
        if process.is_alive():
            process.terminate()  # SIGTERM: every worker stops on its own
    for process in workers:
        process.join(stop_timeout)
        if process.is_alive():
            log.error("worker did not stop in time; killing it", pid=process.pid)
            process.kill()
            process.join()
        if metrics_dir is not None and process.pid is not None:
            metrics_dir.mark_dead(process.pid)
    log.info("guardproxy stopped")
    return 0
