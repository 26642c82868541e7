"""The supervisor: runs the API in `--workers` processes beside the background services.

Each worker binds the port with SO_REUSEPORT, so the kernel spreads connections evenly (a shared accept
socket lets one busy worker take them all). The port is checked free first, so a busy port fails loudly.
Each worker is Hypercorn serving one ASGI app: HTTP/1.1 and h2c on the cleartext port, h2 by ALPN on TLS."""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import gc
import logging
import multiprocessing
import signal
import time
from collections.abc import Callable, Coroutine
from multiprocessing.synchronize import Event as EventType
from typing import Any

from hypercorn.asyncio.run import worker_serve
from hypercorn.config import Config as HypercornConfig
from hypercorn.config import Sockets
from hypercorn.utils import wrap_app

from opendepot.logs import configure_logging
from opendepot.processes import RestartBackoff, die_with_parent

from .background import builder_services
from .config import Config
from .hypercorn import hypercorn_config

log = logging.getLogger("opendepot.server")

# An app factory runs in each worker: it returns the ASGI app and what to close when the worker stops.
AppFactory = Callable[[Config], tuple[Any, Callable[[], None]]]


async def _run_worker(
    config: Config,
    make_app: AppFactory,
    sockets: Sockets,
    stop: EventType | None,
    stopped: asyncio.Event | None = None,
) -> None:
    app, close = make_app(config)
    settle_garbage_collector()
    if stopped is None:
        stopped = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stopped.set)

    async def shutdown_trigger() -> None:
        while not stopped.is_set():
            if stop is not None and stop.is_set():
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopped.wait(), timeout=0.25)

    try:
        hc = hypercorn_config(config)
        asgi = wrap_app(app, hc.wsgi_max_body_size, "asgi")
        await worker_serve(asgi, hc, sockets=sockets, shutdown_trigger=shutdown_trigger)
    finally:
        close()


# Young objects between collections of the youngest generation (CPython's default: 700). An RPC allocates
# thousands of short-lived containers; most are freed by reference counting before a collection sees them,
# so a larger first generation means far fewer collections that each find little left to walk.
GC_YOUNG_THRESHOLD = 20_000


def settle_garbage_collector() -> None:
    """Once the app is built: everything made so far (modules, the app, SQLAlchemy's mappers, the codec's
    descriptors, ~120k objects) lives as long as the process, so it is frozen out of the collector's walks.
    Unfrozen, every full collection walked it all (~100 ms of a loaded worker, a stall every few hundred
    RPCs) and the collector took ~1 ms per RPC on average."""
    gc.collect()
    gc.freeze()
    _young, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


def _run(coroutine: Coroutine[Any, Any, None]) -> None:
    """uvloop where it is installed (it is a dependency on Linux): markedly less overhead per request."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(coroutine)
        return
    uvloop.run(coroutine)


def _worker_main(config: Config, make_app: AppFactory, stop: EventType) -> None:
    die_with_parent()
    faulthandler.enable()  # a crash in native code leaves the Python stack in the log
    configure_logging(config.server.log_level)
    hc = hypercorn_config(config)
    hc.workers = config.server.workers  # makes Hypercorn set SO_REUSEPORT
    _run(_run_worker(config, make_app, hc.create_sockets(), stop))


def _check_port_free(hc: HypercornConfig) -> None:
    """Binding without SO_REUSEPORT fails if anything holds the port, even a group that set it."""
    hc.workers = 1
    sockets = hc.create_sockets()
    for sock in [*sockets.secure_sockets, *sockets.insecure_sockets]:
        sock.close()


def serve_workers(config: Config, make_app: AppFactory, *, builders: bool = False) -> None:
    """Runs make_app's app in config.server.workers processes (in this process when there is one). With
    builders, this process also runs the machine manager and the BuildKit gateway."""
    _run(_supervise(config, make_app, builders))


async def _supervise(config: Config, make_app: AppFactory, builders: bool) -> None:
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopped.set)
    async with contextlib.AsyncExitStack() as stack:
        if builders:
            await stack.enter_async_context(builder_services(config))
        hc = hypercorn_config(config)
        if config.server.workers == 1:
            await _run_worker(config, make_app, hc.create_sockets(), None, stopped)
            return
        _check_port_free(hc)
        ctx = multiprocessing.get_context("spawn")
        stop = ctx.Event()
        pool = _WorkerPool(ctx, config, make_app, stop)
        for index in range(config.server.workers):
            pool.start(index)
        # A worker that dies on its own (a native fault) is replaced, with backoff if it keeps dying; the
        # builders, the gateway and the registry in this process carry on meanwhile.
        while not stopped.is_set():
            pool.replace_dead()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopped.wait(), timeout=0.25)
        stop.set()
        for w in pool.workers:
            await asyncio.to_thread(w.join, 15)
            if w.is_alive():
                w.kill()
                await asyncio.to_thread(w.join)


class _WorkerPool:
    def __init__(self, ctx: Any, config: Config, make_app: AppFactory, stop: EventType) -> None:
        self._ctx = ctx
        self._config = config
        self._make_app = make_app
        self._stop = stop
        self.workers: list[Any] = []
        self._backoffs: list[RestartBackoff] = []
        self._due: dict[int, float] = {}

    def start(self, index: int) -> None:
        process = self._ctx.Process(target=_worker_main, args=(self._config, self._make_app, self._stop))
        process.start()
        if index == len(self.workers):
            self.workers.append(process)
            self._backoffs.append(RestartBackoff())
        else:
            self.workers[index] = process
        self._backoffs[index].started()

    def replace_dead(self) -> None:
        now = time.monotonic()
        for index, worker in enumerate(self.workers):
            if worker.is_alive() or self._stop.is_set():
                continue
            if index not in self._due:
                worker.join(0)
                delay = self._backoffs[index].wait()
                self._due[index] = now + delay
                log.error(
                    "API worker %d (pid %s) exited with %s; restarting it in %.0f s",
                    index,
                    worker.pid,
                    _exit_reason(worker.exitcode),
                    delay,
                )
            if now >= self._due[index]:
                del self._due[index]
                self.start(index)
                log.warning("API worker %d restarted (pid %s)", index, self.workers[index].pid)


def _exit_reason(code: int | None) -> str:
    if code is not None and code < 0:
        with contextlib.suppress(ValueError):
            return f"signal {signal.Signals(-code).name}"
    return f"code {code}"
