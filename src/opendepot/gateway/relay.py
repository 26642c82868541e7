"""The gateway's data path: admitted connections relayed by one thread beside the event loop.

Both ends of a connection are non-blocking sockets (the client's an `ssl.SSLSocket`, OpenSSL reading the
kernel socket itself; the builder's a unix socket, or an `ssl.SSLSocket` to a pod), all polled by the hub's
thread, so a TLS object is only ever used by that thread. Each direction reads what is ready into its own
buffer (several TLS records at once), sends it on as one write and shows it to its observer (the status tap);
it reads again only once that write is done, so a peer that stops reading stops the other end at one buffer's
worth — the gateway never holds more. The GIL is released while OpenSSL decrypts and the kernel copies.

The loop side only hands a relay to the hub and cuts it: `cut()` shuts both sockets down, which wakes the
hub, and the hub closes them and reports the end through `loop.call_soon_threadsafe`."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import os
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
# TLS's largest record: a pass whose first read returns less read a small message (see _Flow._read).
MAX_RECORD = 16 << 10
Observer = Callable[[memoryview], None]
# Called by the hub after each pass over a relay (final: the relay is closing). Answers in how many seconds it
# wants to be called again even if no traffic comes, or None.
PassHook = Callable[[bool], float | None]


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
        self.last_read = 0  # what the last pass read
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
            self.pending = data
            sent = self._send()
            # Seen once it is on its way (the peer works while the tap reads) but in this same step: the hub
            # runs one step at a time, so the builder's answer to a request is read only after the tap has
            # seen that request, even if the rest of it goes in a later pass.
            self.observe(data)
            self.uncounted += filled
            self.total += filled
            self.passes += 1
            if self.uncounted >= COUNT_EVERY:
                self.count()
            if not sent:
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
                self.wants = (self.src, select.EPOLLIN)
                break
            except ssl.SSLWantWriteError:
                self.wants = (self.src, select.EPOLLOUT)
                break
            except OSError:  # reset, or a TLS error: the end of this connection
                self.eof = True
                break
            if n == 0:
                self.eof = True
                break
            if filled == 0 and n < MAX_RECORD and self.last_read < MAX_RECORD:
                # Small messages back and forth (gRPC's, in a build's session): poll says when more
                # comes, where reading on would cost a failed call (a syscall and an exception) on most
                # passes. Not in a bulk transfer (the last pass was large): there short TLS records sit
                # between full ones (a 16 KiB HTTP/2 frame is 9 bytes more) and must not end a pass.
                self.wants = (self.src, select.EPOLLIN)
                filled = n
                break
            filled += n
        self.last_read = filled
        return filled

    def _send(self) -> bool:
        """True once all that was pending is sent."""
        while self.pending is not None:
            try:
                sent = self.dst.send(self.pending)
            except (ssl.SSLWantWriteError, BlockingIOError):
                self.wants = (self.dst, select.EPOLLOUT)
                return False
            except ssl.SSLWantReadError:
                self.wants = (self.dst, select.EPOLLIN)
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
    """One client connection relayed to its builder until either end closes or `cut()`; pumped by a hub."""

    def __init__(
        self,
        name: str,
        client: socket.socket,
        builder: socket.socket,
        *,
        up: tuple[Observer, Any] = (_ignore, None),
        down: tuple[Observer, Any] = (_ignore, None),
        after_pass: PassHook = lambda _final: None,
    ) -> None:
        """after_pass runs in the hub after each pass over both directions, their data sent on, when it asked
        to be called again, and once more as the relay closes."""
        self.name = name
        self._after_pass = after_pass
        self.due: float | None = None  # when after_pass wants to run again (monotonic), traffic or not
        self.client, self.builder = client, builder
        self._up = _Flow(client, builder, *up)
        self._down = _Flow(builder, client, *down)
        # The builder's direction first in each pass: its small frames (WINDOW_UPDATEs that let the client
        # send on) go out before the upload's next buffer is read and sent.
        self._flows = (self._down, self._up)
        self.fds = (client.fileno(), builder.fileno())
        self._lock = threading.Lock()  # cut() against the hub's close: never shut down a reused fd
        self._closed = False
        self.ended: asyncio.Future[None] | None = None
        self._finished: Callable[[], None] = lambda: None
        # The hub's bookkeeping: which flows may make progress now, what each fd is polled for, fds that hung
        # up (no longer polled: they would wake every poll).
        self.ready = [True, True]
        self.masks = {fd: 0 for fd in self.fds}
        self.hung: set[int] = set()
        self.context = contextvars.copy_context()

    def prepare(self, loop: asyncio.AbstractEventLoop, on_end: Callable[[], None]) -> None:
        """On the loop: on_end runs there (in the caller's context) once the connection is over."""
        self.ended = loop.create_future()
        context = contextvars.copy_context()

        def finished() -> None:
            assert self.ended is not None
            if not self.ended.done():
                self.ended.set_result(None)
            on_end()

        def report() -> None:
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
                loop.call_soon_threadsafe(finished, context=context)

        self._finished = report
        self.context = context

    @property
    def live(self) -> bool:
        """Not closed yet (the hub's own view: it closes relays)."""
        return not self._closed

    def cut(self) -> None:
        """Ends the relay from any thread: both sockets shut down, the hub sees it and closes them."""
        with self._lock:
            if self._closed:
                return
            for sock in (self.client, self.builder):
                # The plain socket's shutdown: SSLSocket's own would drop its TLS state under the hub.
                with contextlib.suppress(OSError):
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)

    def pump(self) -> dict[int, int] | None:
        """Moves what it can; returns the poll mask each of its (live) fds needs, or None once it is over."""
        try:
            return self._pump()
        finally:
            wait = self._after_pass(False)
            self.due = None if wait is None else time.monotonic() + wait

    def _pump(self) -> dict[int, int] | None:
        wanted = dict.fromkeys(self.fds, 0)
        for i, flow in enumerate(self._flows):
            if not self.ready[i] and flow.wants is not None and flow.wants[0].fileno() in self.hung:
                self.ready[i] = True
            if self.ready[i]:
                self.ready[i] = flow.step()
            if flow.ended:
                return None
            if flow.wants is not None:
                wanted[flow.wants[0].fileno()] |= flow.wants[1]
        return {fd: mask for fd, mask in wanted.items() if fd not in self.hung}

    def woken(self, fd: int, event: int) -> bool:
        """A poll event on one of its fds; True if that fd hung up (the hub stops polling it)."""
        for i, flow in enumerate(self._flows):
            if flow.wants is not None and flow.wants[0].fileno() == fd:
                self.ready[i] = True
        if event & (select.EPOLLHUP | select.EPOLLERR) and fd not in self.hung:
            self.hung.add(fd)
            return True
        return False

    def close(self) -> None:
        """In the hub, once over: counts, closes both ends, reports to the loop."""
        for flow in self._flows:
            flow.count()
        try:
            self._after_pass(True)
        except Exception:
            log.exception("gateway relay %s: its last pass hook failed", self.name)
        self.due = None
        with self._lock:
            self._closed = True
            self.client.close()
            self.builder.close()
        log.debug(
            "relay %s ended: %d bytes up, %d down in %d passes",
            self.name,
            self._up.total,
            self._down.total,
            self._up.passes + self._down.passes,
        )
        self._finished()


class RelayHub:
    """The thread that relays every admitted connection: one epoll over all their sockets. One thread, not one
    per connection: relays never take the GIL from each other mid-pass, and each TLS object is only ever used
    by this thread. OpenSSL and the kernel copies run with the GIL released, beside the event loop."""

    def __init__(self) -> None:
        # epoll, not poll: a wait costs what is ready, where poll scans every open connection's two sockets.
        self._poller = select.epoll()
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_read, False)
        os.set_blocking(self._wake_write, False)
        self._poller.register(self._wake_read, select.EPOLLIN)
        self._lock = threading.Lock()
        self._arriving: list[Relay] = []
        self._stopping = False
        self._relays: dict[int, Relay] = {}  # by each of its fds
        self._due: dict[Relay, float] = {}  # relays whose pass hook asked to run again by then
        self._thread: threading.Thread | None = None

    def add(self, relay: Relay) -> None:
        """From the loop: the hub starts relaying (its thread starts with the first relay)."""
        with self._lock:
            if self._stopping:
                relay.close()
                return
            self._arriving.append(relay)
            if self._thread is None:  # the first relay, or the thread failed: a fresh one
                self._thread = threading.Thread(target=self._run, name="gateway relay", daemon=True)
                self._thread.start()
        self._wake()

    def stop(self) -> None:
        """Ends the thread (relays still open are closed); blocking: call it off the loop."""
        with self._lock:
            self._stopping = True
            thread = self._thread
        self._wake()
        if thread is not None:
            thread.join(10)
        os.close(self._wake_read)
        os.close(self._wake_write)
        self._poller.close()

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_write, b"x")

    def _run(self) -> None:
        ready: set[Relay] = set()
        try:
            while True:
                for relay in list(ready):
                    self._pump(relay)
                # Only a pass, a wake-up or a new arrival makes a relay ready: no scan of every relay.
                ready = {relay for relay in ready if relay.live and (relay.ready[0] or relay.ready[1])}
                events = self._poller.poll(0 if ready else self._until_due())
                if self._due:
                    ready.update(self._now_due())
                for fd, event in events:
                    if fd == self._wake_read:
                        stopping, arrived = self._arrived()
                        if stopping:
                            return
                        ready.update(arrived)
                        continue
                    woken = self._relays.get(fd)
                    if woken is None:
                        continue
                    if woken.woken(fd, event):
                        self._poller.unregister(fd)
                    ready.add(woken)
        except Exception:
            log.exception("the gateway's relay thread failed; its connections are closed")
        finally:
            for relay in set(self._relays.values()):
                self._finish(relay)
            with self._lock:
                orphans, self._arriving = self._arriving, []
                self._thread = None  # the next add starts a fresh thread
            for relay in orphans:
                relay.close()

    def _arrived(self) -> tuple[bool, list[Relay]]:
        """Takes in new relays: (whether the hub is stopping, the relays taken in)."""
        with contextlib.suppress(BlockingIOError):
            os.read(self._wake_read, 4096)
        with self._lock:
            arriving, self._arriving = self._arriving, []
            stopping = self._stopping
        for relay in arriving:
            for fd in relay.fds:
                self._relays[fd] = relay
                self._poller.register(fd, 0)
        return stopping, arriving

    def _until_due(self) -> float | None:
        """Seconds until the earliest pass hook asked to run again (None: wait for traffic only)."""
        if not self._due:
            return None
        return max(0.0, min(self._due.values()) - time.monotonic())

    def _now_due(self) -> list[Relay]:
        now = time.monotonic()
        due = [relay for relay, at in self._due.items() if at <= now]
        for relay in due:
            del self._due[relay]
        return due

    def _pump(self, relay: Relay) -> None:
        try:
            masks = relay.context.run(relay.pump)  # the tap's and the relay's log lines name the build
        except Exception:
            log.exception("gateway relay %s failed", relay.name)
            masks = None
        if relay.due is None:
            self._due.pop(relay, None)
        else:
            self._due[relay] = relay.due
        if masks is None:
            self._finish(relay)
            return
        for fd, mask in masks.items():
            if relay.masks[fd] != mask:
                self._poller.modify(fd, mask)
                relay.masks[fd] = mask

    def _finish(self, relay: Relay) -> None:
        self._due.pop(relay, None)
        for fd in relay.fds:
            if self._relays.pop(fd, None) is not None and fd not in relay.hung:
                with contextlib.suppress(OSError, ValueError):
                    self._poller.unregister(fd)
        relay.close()
