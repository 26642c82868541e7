"""The gateway's TLS and relaying in a process of its own, so they share no GIL with the supervisor's loops.

Measured in the supervisor (py-spy on the context bench): about a third of the relay thread's samples were
spent waiting for the GIL while the supervisor's loop ran the reconciler, the lease watch and the step
recorder. So the supervisor keeps what needs the store and the builders — accepting, the admission (lease,
caps, memory watch), the connection to the builder, the step recorder, cutting — and a child process
(`python -m opendepot.gateway.process`) does the rest: the TLS handshake, the relay hub and the status tap.

The supervisor hands each accepted socket to the child (SCM_RIGHTS) and keeps its own descriptor of it; the
child answers with the client's certificate and the project its TLS server name chose; the supervisor then
hands over the builder's socket (or refuses). The tap's Status messages come back to the supervisor's loop,
where the one recorder writes them: a build's status still has one writer. Cutting a connection is a
`shutdown()` on the supervisor's own descriptors (the socket is shared); the child sees the hang-up and
reports the end. If the child dies, every connection it held is cut (their builds fail as on a dropped
connection) and a new child starts: at once if the last one lived a minute, else after a wait that grows with
each quick death in a row (1 s up to 30 s, as for the API workers): a child that keeps dying costs neither a
busy loop nor a flood of logs. It is not replaced by a relay in the supervisor: whatever kills the child (a
hostile peer's TLS, memory) would then kill the supervisor. Meanwhile the gateway refuses new connections; the
API keeps serving.

Channels (socket pairs, their fds named on the child's command line): `control` (supervisor to child, one
message per packet, with the descriptors), `events` (child to supervisor, length-prefixed), `names` (the
child's SNI callback asks the supervisor for a project's certificate directory, synchronously, once per
project)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import pickle
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from opendepot.logs import configure_logging, current_build
from opendepot.metrics import metrics
from opendepot.processes import RestartBackoff

from .contexts import listener_context, project_context
from .relay import Observer, PassHook, Relay, RelayHub
from .tap import StatusTap

log = logging.getLogger("opendepot.gateway")

HANDSHAKE_TIMEOUT = 10.0
PACKET = 64 << 10
# The longest the tap's status messages wait in the child to go to the supervisor in one batch: the step
# recorder writes every 0.2 s anyway, so the steps a running build shows are as fresh as before.
STATUS_BATCH_SECONDS = 0.1
# ... and the most it holds for one connection (a build printing logs fast): one relay buffer's worth.
STATUS_BATCH_BYTES = 256 << 10


def _frame(message: tuple[Any, ...]) -> bytes:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return len(data).to_bytes(4, "big") + data


class _Stream:
    """Length-prefixed messages read from a non-blocking stream socket."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[Any, ...]]:
        self._buffer += data
        messages = []
        while len(self._buffer) >= 4:
            length = int.from_bytes(self._buffer[:4], "big")
            if len(self._buffer) < 4 + length:
                break
            messages.append(pickle.loads(bytes(self._buffer[4 : 4 + length])))  # noqa: S301 - our own child
            del self._buffer[: 4 + length]
        return messages


# ---- The supervisor's side ------------------------------------------------------------------------------


@dataclasses.dataclass
class Handshaken:
    """A client connection whose TLS handshake the child finished: its certificate and its SNI project."""

    key: int
    raw: socket.socket
    der: bytes | None
    project_id: str | None


class RemoteRelay:
    """A connection relayed by the child, as the gateway sees it (the same face as relay.Relay)."""

    def __init__(
        self,
        name: str,
        key: int,
        client: socket.socket,
        builder: socket.socket,
        on_status: Callable[[bytes], None] | None,
        on_status_end: Callable[[], None] | None,
    ) -> None:
        self.name = name
        self.key = key
        self.client, self.builder = client, builder
        self.on_status, self.on_status_end = on_status, on_status_end
        self.ended: asyncio.Future[None] | None = None
        self._on_end: Callable[[], None] = lambda: None
        self._closed = False

    def prepare(self, loop: asyncio.AbstractEventLoop, on_end: Callable[[], None]) -> None:
        self.ended = loop.create_future()
        self._on_end = on_end

    def cut(self) -> None:
        """Both sockets shut down (shared with the child, which sees the hang-up and reports the end)."""
        if self._closed:
            return
        for sock in (self.client, self.builder):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def finish(self) -> None:
        """The child is done with it (or died): our descriptors close, the gateway hears of the end."""
        if self._closed:
            return
        self.cut()
        self._closed = True
        self.client.close()
        self.builder.close()
        if self.ended is not None and not self.ended.done():
            self.ended.set_result(None)
        self._on_end()


class RelayProcess:
    """Starts and watches the child; passes connections to it and its events to the gateway."""

    def __init__(
        self,
        placeholder: Path,
        project_files: Callable[[str], Path | None],
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
    ) -> None:
        self.placeholder = placeholder
        self.backoff = RestartBackoff()
        self.handshake_timeout = handshake_timeout
        self.project_files = project_files
        self.process: subprocess.Popen[bytes] | None = None
        self._control: socket.socket | None = None
        self._events: socket.socket | None = None
        self._names: socket.socket | None = None
        self._stream = _Stream()
        self._handshakes: dict[int, tuple[socket.socket, asyncio.Future[Handshaken | None]]] = {}
        self._relays: dict[int, RemoteRelay] = {}
        self._next = 0
        self._stopping = False
        self._restarting: asyncio.Task[None] | None = None
        self.restarts = 0

    def start(self) -> None:
        """On the loop: the child starts (a fork and exec: a few milliseconds, once)."""
        loop = asyncio.get_running_loop()
        control, child_control = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        events, child_events = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        names, child_names = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        level = logging.getLevelName(logging.getLogger("opendepot").getEffectiveLevel())
        children = (child_control, child_events, child_names)
        try:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "opendepot.gateway.process",
                    str(self.placeholder),
                    level,
                    str(self.handshake_timeout),
                    *(str(s.fileno()) for s in children),
                ],
                pass_fds=tuple(s.fileno() for s in children),
            )
        finally:
            for sock in children:
                sock.close()
        self.backoff.started()
        control.settimeout(5)  # the child reads its control channel all the time; never wait forever
        events.setblocking(False)
        names.setblocking(False)
        self._control, self._events, self._names = control, events, names
        self._stream = _Stream()
        loop.add_reader(events.fileno(), self._read_events)
        loop.add_reader(names.fileno(), self._answer_name)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    async def handshake(self, raw: socket.socket) -> Handshaken | None:
        """The child's TLS handshake on this accepted socket; None if it failed (the socket is closed)."""
        key = self._next
        self._next += 1
        waiter: asyncio.Future[Handshaken | None] = asyncio.get_running_loop().create_future()
        self._handshakes[key] = (raw, waiter)
        if not self._send(("conn", key), raw.fileno()):
            self._handshakes.pop(key, None)
            raw.close()
            return None
        try:
            return await asyncio.wait_for(asyncio.shield(waiter), self.handshake_timeout + 5)
        except TimeoutError:
            self.refuse(key)
            return None

    def refuse(self, key: int) -> None:
        raw, _waiter = self._handshakes.pop(key, (None, None))
        self._send(("refuse", key))
        if raw is not None:
            raw.close()

    def relay(
        self,
        client: Handshaken,
        name: str,
        builder: socket.socket,
        on_status: Callable[[bytes], None] | None,
        on_status_end: Callable[[], None] | None,
    ) -> RemoteRelay:
        """The child relays client <-> builder from now on (tapping Status when on_status is given)."""
        self._handshakes.pop(client.key, None)
        relay = RemoteRelay(name, client.key, client.raw, builder, on_status, on_status_end)
        self._relays[client.key] = relay
        if not self._send(("relay", client.key, name, on_status is not None), builder.fileno()):
            asyncio.get_running_loop().call_soon(self._ended, client.key)
        return relay

    def _send(self, message: tuple[Any, ...], fd: int | None = None) -> bool:
        if self._control is None:
            return False
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        try:
            if fd is None:
                self._control.send(data)
            else:
                socket.send_fds(self._control, [data], [fd])
        except OSError as error:
            log.warning("could not reach the gateway's relay process: %s", error)
            return False
        return True

    def _read_events(self) -> None:
        assert self._events is not None
        while True:
            try:
                data = self._events.recv(PACKET)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self._died()
                return
            for message in self._stream.feed(data):
                self._event(message)

    def _event(self, message: tuple[Any, ...]) -> None:
        kind, key = message[0], message[1]
        if kind == "hello":
            raw, waiter = self._handshakes.get(key, (None, None))
            if raw is not None and waiter is not None and not waiter.done():
                waiter.set_result(Handshaken(key, raw, message[2], message[3]))
        elif kind == "failed":
            raw, waiter = self._handshakes.pop(key, (None, None))
            if raw is not None:
                raw.close()
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        elif kind == "status":
            relay = self._relays.get(key)
            if relay is not None and relay.on_status is not None and relay.on_status_end is not None:
                for raw in message[2]:  # in the order seen; None where a Status stream ended
                    try:
                        if raw is None:
                            relay.on_status_end()
                        else:
                            relay.on_status(raw)
                    except Exception:  # one bad message (undecodable): not the rest of this read's events
                        log.warning("gateway: a status message not recorded", exc_info=True)
        elif kind == "ended":
            self._ended(key)

    def _ended(self, key: int) -> None:
        relay = self._relays.pop(key, None)
        if relay is not None:
            relay.finish()

    def _answer_name(self) -> None:
        assert self._names is not None
        while True:
            try:
                asked = self._names.recv(256)
            except BlockingIOError:
                return
            except OSError:
                asked = b""
            if not asked:  # the child is gone: _read_events restarts it
                return
            try:
                directory = self.project_files(asked.decode(errors="replace"))
            except Exception:  # a name that is no project id, or the store failed: no such project
                log.exception("gateway: looking up a project's certificates failed")
                directory = None
            with contextlib.suppress(OSError):
                self._names.send(str(directory).encode() if directory is not None else b"-")

    def _close_channels(self) -> None:
        loop = asyncio.get_running_loop()
        for sock in (self._events, self._names):
            if sock is not None:
                loop.remove_reader(sock.fileno())
                sock.close()
        if self._control is not None:
            self._control.close()
        self._control = self._events = self._names = None

    def _died(self) -> None:
        """The child exited (or closed its channel): its connections are cut, and a new one starts."""
        self._close_channels()
        lost = len(self._relays) + len(self._handshakes)
        self._drop_all()
        if self._stopping:
            return
        metrics().gateway_relay_restarts.inc()
        self._restarting = asyncio.get_running_loop().create_task(self._restart(lost))

    def _drop_all(self) -> None:
        handshakes, self._handshakes = self._handshakes, {}
        for raw, waiter in handshakes.values():
            raw.close()
            if not waiter.done():
                waiter.set_result(None)
        for key in list(self._relays):
            self._ended(key)

    async def _restart(self, lost: int) -> None:
        code: int | None = None
        if self.process is not None:
            # The channel closes before the kernel reaps the child: wait for it, so the log names the
            # real exit status rather than None.
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.to_thread(self.process.wait, 5)
            if self.process.poll() is None:
                self.process.kill()
                await asyncio.to_thread(self.process.wait)
            code = self.process.returncode
        wait = self.backoff.wait()
        log.log(
            logging.ERROR if self.backoff.keeps_dying() else logging.WARNING,
            "the gateway's relay process ended (exit status %s); %d connection(s) cut; "
            "starting a new one in %.0f s (%d quick death(s) in a row)",
            code,
            lost,
            wait,
            self.backoff.quick_deaths,
        )
        await asyncio.sleep(wait)  # meanwhile handshake() refuses: there is no control channel
        if not self._stopping:
            self.restarts += 1
            self.start()

    async def stop(self) -> None:
        """The child ends (its control channel closes); connections still open are cut."""
        self._stopping = True
        if self._restarting is not None:
            self._restarting.cancel()
        if self._control is not None:
            self._close_channels()
        self._drop_all()
        if self.process is not None:
            try:
                await asyncio.to_thread(self.process.wait, 5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                await asyncio.to_thread(self.process.wait)


# ---- The child ------------------------------------------------------------------------------------------


class StatusBatch:
    """What the tap saw on one connection goes to the supervisor in batches, after the relay pass that saw it
    has sent its data on: at most STATUS_BATCH_SECONDS after the batch's first status, at once when it holds
    STATUS_BATCH_BYTES, when a Status stream ends (its steps are written then) or when the connection closes.
    A build's ~20 status messages cost one or two sends, and wake-ups of the supervisor, not one each."""

    def __init__(
        self, send: Callable[[list[bytes | None]], None], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._send = send
        self._clock = clock
        self._items: list[bytes | None] = []  # in the order seen; None where a Status stream ended
        self._first = 0.0
        self._bytes = 0
        self._ended = False  # a Status stream's end is in the batch

    def status(self, raw: bytes) -> None:
        if not self._items:
            self._first = self._clock()
        self._items.append(raw)
        self._bytes += len(raw)

    def end(self) -> None:
        if not self._items:
            self._first = self._clock()
        self._items.append(None)
        self._ended = True

    def after_pass(self, final: bool) -> float | None:
        """The relay's pass hook: sends the batch if it is due; else in how many seconds it will be."""
        if not self._items:
            return None
        wait = self._first + STATUS_BATCH_SECONDS - self._clock()
        if final or wait <= 0 or self._bytes >= STATUS_BATCH_BYTES or self._ended:
            items, self._items, self._bytes, self._ended = self._items, [], 0, False
            self._send(items)
            return None
        return wait


class _Events:
    """The child's messages to the supervisor, from the loop and from the relay thread alike."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._lock = threading.Lock()

    def send(self, *message: Any) -> None:
        data = _frame(message)
        with self._lock, contextlib.suppress(OSError):  # the supervisor is gone: the control EOF ends us
            self.sock.sendall(data)


class _Child:
    def __init__(
        self, placeholder: Path, handshake_timeout: float, control: int, events: int, names: int
    ) -> None:
        self.handshake_timeout = handshake_timeout
        self.control = socket.socket(fileno=control)
        self.events = _Events(socket.socket(fileno=events))
        self.events.sock.setblocking(True)
        self.names = socket.socket(fileno=names)
        self.names.setblocking(True)
        self.names.settimeout(10)
        self.hub = RelayHub()
        self.waiting: dict[int, ssl.SSLSocket] = {}
        self.relays: dict[int, Relay] = {}
        self.handshakes: set[asyncio.Task[None]] = set()
        self._contexts: dict[str, ssl.SSLContext] = {}
        self._context_project: dict[int, str] = {}
        self.base = listener_context(placeholder, self._project_context)
        self.done: asyncio.Future[None] | None = None

    def _project_context(self, project_id: str) -> ssl.SSLContext | None:
        context = self._contexts.get(project_id)
        if context is not None:
            return context
        try:  # the supervisor's authority answers (and materializes the files): once per project
            self.names.send(project_id.encode())
            answer = self.names.recv(4096).decode()
        except OSError:
            return None
        if answer in ("", "-"):
            return None
        context = project_context(Path(answer))
        self._contexts[project_id] = context
        self._context_project[id(context)] = project_id
        return context

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self.done = loop.create_future()
        self.control.setblocking(False)
        loop.add_reader(self.control.fileno(), self._read_control)
        try:
            await self.done
        finally:
            loop.remove_reader(self.control.fileno())
            for task in self.handshakes:
                task.cancel()
            for relay in list(self.relays.values()):
                relay.cut()
            await asyncio.to_thread(self.hub.stop)

    def _read_control(self) -> None:
        while True:
            try:
                data, fds, _flags, _address = socket.recv_fds(self.control, PACKET, 1)
            except BlockingIOError:
                return
            except OSError:
                data, fds = b"", []
            if not data:
                assert self.done is not None
                if not self.done.done():
                    self.done.set_result(None)
                return
            message = pickle.loads(data)  # noqa: S301 - from our own supervisor
            try:
                self._command(message, fds[0] if fds else None)
            except Exception:
                log.exception("gateway relay process: %s failed", message[0])

    def _command(self, message: tuple[Any, ...], fd: int | None) -> None:
        kind, key = message[0], message[1]
        if kind == "conn" and fd is not None:
            task = asyncio.get_running_loop().create_task(self._handshake(key, socket.socket(fileno=fd)))
            self.handshakes.add(task)
            task.add_done_callback(self.handshakes.discard)
        elif kind == "refuse":
            client = self.waiting.pop(key, None)
            if client is not None:
                client.close()
        elif kind == "relay" and fd is not None:
            builder = socket.socket(fileno=fd)
            client = self.waiting.pop(key, None)
            if client is None:
                builder.close()
                self.events.send("ended", key)
                return
            self._relay(key, message[2], message[3], client, builder)

    async def _handshake(self, key: int, raw: socket.socket) -> None:
        raw.setblocking(False)
        tls = self.base.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
        try:
            await asyncio.wait_for(_handshake(tls), self.handshake_timeout)
        except (OSError, TimeoutError, ValueError) as error:  # ssl.SSLError is an OSError
            log.debug("gateway handshake failed: %s", error)
            tls.close()
            self.events.send("failed", key)
            return
        der = tls.getpeercert(binary_form=True)
        self.waiting[key] = tls
        self.events.send("hello", key, der, self._context_project.get(id(tls.context)))

    def _relay(
        self, key: int, name: str, tapped: bool, client: ssl.SSLSocket, builder: socket.socket
    ) -> None:
        current_build.set(name.partition("/")[0])
        up: Observer = _ignore
        down: Observer = _ignore
        after_pass: PassHook = _nothing
        if tapped:
            events = self.events

            batch = StatusBatch(lambda items: events.send("status", key, items))
            tap = StatusTap(batch.status, batch.end)
            up, down = tap.from_client, tap.from_server

            def after_pass(final: bool) -> float | None:
                wait = batch.after_pass(final)
                if final:  # in the hub, as the relay closes: the tap's held bytes go back
                    tap.close()
                return wait

        measured = metrics()
        relay = Relay(
            name,
            client,
            builder,
            up=(up, measured.gateway_bytes.labels("to_builder")),
            down=(down, measured.gateway_bytes.labels("to_client")),
            after_pass=after_pass,
        )
        self.relays[key] = relay

        def ended() -> None:
            self.relays.pop(key, None)
            self.events.send("ended", key)

        relay.prepare(asyncio.get_running_loop(), ended)
        self.hub.add(relay)


def _ignore(_data: memoryview) -> None:
    return None


def _nothing(_final: bool) -> None:
    return None


async def _handshake(tls: ssl.SSLSocket) -> None:
    """A non-blocking server-side handshake, driven by the loop's readiness callbacks."""
    loop = asyncio.get_running_loop()
    fd = tls.fileno()
    while True:
        try:
            tls.do_handshake()
            return
        except ssl.SSLWantReadError:
            await _ready(fd, loop.add_reader, loop.remove_reader)
        except ssl.SSLWantWriteError:
            await _ready(fd, loop.add_writer, loop.remove_writer)


async def _ready(fd: int, add: Callable[..., object], remove: Callable[[int], object]) -> None:
    waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def wake() -> None:
        if not waiter.done():
            waiter.set_result(None)

    add(fd, wake)
    try:
        await waiter
    finally:
        remove(fd)


def main() -> None:
    placeholder, level, timeout, control, events, names = sys.argv[1:7]
    configure_logging(level)
    # The supervisor ends it (closing the control channel); a Ctrl-C on the terminal is the supervisor's.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    asyncio.run(_Child(Path(placeholder), float(timeout), int(control), int(events), int(names)).run())


if __name__ == "__main__":
    main()
