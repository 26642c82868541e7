"""The gateway's data path: one admitted connection relayed by a thread of its own.

Both ends are non-blocking sockets (the client's an `ssl.SSLSocket`, OpenSSL reading the kernel socket itself;
the builder's a unix socket, or an `ssl.SSLSocket` to a pod) polled by one thread, so one TLS object is only
ever used by one thread. Each direction reads what is ready into its own buffer (several TLS records at
once), shows it to its observer (the status tap) and sends it on as one write; it reads again only once that
write is done, so a peer that stops reading stops the other end at one buffer's worth — the gateway never
holds more. The GIL is released while OpenSSL decrypts and while the kernel copies.

The loop side only starts a relay and cuts it: `cut()` shuts both sockets down, which wakes the thread, and
the thread closes them and reports its end through `loop.call_soon_threadsafe`."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("opendepot.gateway")

# Per direction: what one pass may read before it is sent on (several 16 KiB TLS records, few writes).
BUFFER = 256 << 10
# The byte counters are shared between processes (a file write per update): counted in batches.
COUNT_EVERY = 4 << 20
Observer = Callable[[memoryview], None]


def _ignore(_data: memoryview) -> None:
    return None


class _Flow:
    """One direction: reads src, sends to dst. `wants` is the poll event (on which socket) it waits for."""

    def __init__(self, src: socket.socket, dst: socket.socket, observe: Observer, counted: Any) -> None:
        self.src, self.dst = src, dst
        self.observe = observe
        self.counted = counted
        self.uncounted = 0
        self.total = 0
        self.passes = 0
        self.buffer = memoryview(bytearray(BUFFER))
        self.pending: memoryview | None = None
        self.eof = False
        self.ended = False
        self.wants: tuple[socket.socket, int] | None = None

    def step(self) -> bool:
        """Sends what is pending, then reads and sends one buffer's worth. True if more may be ready now
        (the buffer filled up), False once it waits on `wants` or has ended."""
        self.wants = None
        if self.pending is not None and not self._send():
            return False
        if self.eof:
            self.ended = True
            return False
        filled = self._read()
        if filled:
            data = self.buffer[:filled]
            # Seen before it is sent: the builder cannot answer a request the tap has not read yet.
            self.observe(data)
            self.uncounted += filled
            self.total += filled
            self.passes += 1
            if self.uncounted >= COUNT_EVERY:
                self.count()
            self.pending = data
            if not self._send():
                return False
        if self.eof and self.pending is None:
            self.ended = True
            return False
        return filled == BUFFER

    def _read(self) -> int:
        filled = 0
        while filled < BUFFER:
            try:
                n = self.src.recv_into(self.buffer[filled:])
            except (ssl.SSLWantReadError, BlockingIOError):
                self.wants = (self.src, select.POLLIN)
                break
            except ssl.SSLWantWriteError:
                self.wants = (self.src, select.POLLOUT)
                break
            except OSError:  # reset, or a TLS error: the end of this connection
                self.eof = True
                break
            if n == 0:
                self.eof = True
                break
            filled += n
        return filled

    def _send(self) -> bool:
        """True once all that was pending is sent."""
        while self.pending is not None:
            try:
                sent = self.dst.send(self.pending)
            except (ssl.SSLWantWriteError, BlockingIOError):
                self.wants = (self.dst, select.POLLOUT)
                return False
            except ssl.SSLWantReadError:
                self.wants = (self.dst, select.POLLIN)
                return False
            except OSError:
                self.ended = True
                return False
            self.pending = self.pending[sent:] if sent < len(self.pending) else None
        return True

    def count(self) -> None:
        if self.counted is not None and self.uncounted:
            self.counted.inc(self.uncounted)
        self.uncounted = 0


class Relay:
    """One client connection relayed to its builder until either end closes or `cut()`."""

    def __init__(
        self,
        name: str,
        client: socket.socket,
        builder: socket.socket,
        *,
        up: tuple[Observer, Any] = (_ignore, None),
        down: tuple[Observer, Any] = (_ignore, None),
    ) -> None:
        self.name = name
        self.client, self.builder = client, builder
        self._up = _Flow(client, builder, *up)
        self._down = _Flow(builder, client, *down)
        self._lock = threading.Lock()  # cut() against the thread's close: never shut down a reused fd
        self._closed = False
        self._thread: threading.Thread | None = None
        self.ended: asyncio.Future[None] | None = None

    def start(self, loop: asyncio.AbstractEventLoop, on_end: Callable[[], None] = lambda: None) -> None:
        """Starts the thread; on_end runs on loop (in the caller's context) once the connection is over."""
        self.ended = loop.create_future()
        context = contextvars.copy_context()

        def finished() -> None:
            assert self.ended is not None
            if not self.ended.done():
                self.ended.set_result(None)
            on_end()

        def run() -> None:
            try:
                context.run(self._run)
            finally:
                self._close()
                with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
                    loop.call_soon_threadsafe(finished, context=context)

        self._thread = threading.Thread(target=run, name=f"gateway {self.name}", daemon=True)
        self._thread.start()

    def cut(self) -> None:
        """Ends the relay from any thread: both sockets shut down, the thread sees it and closes them."""
        with self._lock:
            if self._closed:
                return
            for sock in (self.client, self.builder):
                # The plain socket's shutdown: SSLSocket's own would drop its TLS state under the thread.
                with contextlib.suppress(OSError):
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)

    def _close(self) -> None:
        with self._lock:
            self._closed = True
            self.client.close()
            self.builder.close()

    def _run(self) -> None:
        flows = (self._up, self._down)
        poller = select.poll()
        fds = (self.client.fileno(), self.builder.fileno())
        masks = {fd: 0 for fd in fds}
        for fd in fds:
            poller.register(fd, 0)
        # Sockets the kernel reported hung up or failed: no longer polled (they would wake every poll); the
        # flows waiting on them are retried, and their next read or write sees the end.
        hung: set[int] = set()
        ready = [True, True]
        try:
            while True:
                wanted = dict.fromkeys(fds, 0)
                for i, flow in enumerate(flows):
                    if not ready[i] and flow.wants is not None and flow.wants[0].fileno() in hung:
                        ready[i] = True
                    if ready[i]:
                        ready[i] = flow.step()
                    if flow.ended:
                        return
                    if flow.wants is not None:
                        wanted[flow.wants[0].fileno()] |= flow.wants[1]
                for fd, mask in wanted.items():
                    if mask != masks[fd] and fd not in hung:
                        poller.modify(fd, mask)
                        masks[fd] = mask
                for fd, event in poller.poll(0 if ready[0] or ready[1] else None):
                    if event & (select.POLLHUP | select.POLLERR | select.POLLNVAL) and fd not in hung:
                        hung.add(fd)
                        poller.unregister(fd)
                    for i, flow in enumerate(flows):
                        if flow.wants is not None and flow.wants[0].fileno() == fd:
                            ready[i] = True
        except Exception:
            log.exception("gateway relay %s failed", self.name)
        finally:
            for flow in flows:
                flow.count()
            log.debug(
                "relay %s ended: %d bytes up, %d down in %d passes, %.3f s CPU",
                self.name,
                self._up.total,
                self._down.total,
                self._up.passes + self._down.passes,
                time.thread_time(),
            )
