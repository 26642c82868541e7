"""The BuildKit gateway: the only network door to the builders.

A TLS listener requiring client certificates. The TLS server name picks the project (its CA verifies the
client, its server certificate answers); the client certificate's URI SAN names the build and platform. A
connection is accepted only while that build holds a live lease on that platform, and is then forwarded
byte for byte to the project's builder. Connections are cut when the lease ends.

Accepting, the handshake (a non-blocking `ssl.SSLSocket` driven by the loop, bounded in time) and the
admission run on the event loop; admitted connections, at most `max_relays` at once, are relayed by one
thread beside the loop (relay.py)."""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
import ssl
import time
from collections import Counter
from collections.abc import Awaitable, Callable

from opendepot.logs import current_build
from opendepot.metrics import metrics
from opendepot.pki.authority import Authority, ClientIdentity, identity_of

from .contexts import listener_context, project_context
from .process import Handshaken, RelayProcess, RemoteRelay
from .recorder import MemoryWatch, StepRecorder
from .relay import Observer, PassHook, Relay, RelayHub
from .tap import StatusTap

log = logging.getLogger("opendepot.gateway")

# (project, platform) -> a connected non-blocking socket to the builder's BuildKit API.
Connector = Callable[[str, str], Awaitable[socket.socket]]
# (project, build, platform) -> the hardware of the build's live lease there, or None: no live lease.
LeaseCheck = Callable[[str, str, str], Awaitable[str | None]]
# (project, build, platform, its lease's hardware) -> the builder's memory cgroup as the build sees, or None.
MemoryWatcher = Callable[[str, str, str, str], Awaitable[MemoryWatch | None]]
HANDSHAKE_TIMEOUT = 10.0  # seconds a client has to finish its TLS handshake
# Relayed connections at once; past it a connection is refused with a log line.
MAX_RELAYS = 512
# Of those, one project's: a tenant holding many connections open cannot take every place from the others
# (a build opens a few per platform; this leaves room for dozens of concurrent builds in one project).
MAX_RELAYS_PER_PROJECT = 128
# Connections between accept and admission (the TLS handshake, up to HANDSHAKE_TIMEOUT), at once and from one
# client address. Anyone can connect: without a bound, connections that never finish a handshake held a
# descriptor each in the supervisor (and in the relay process) until its descriptors ran out.
MAX_HANDSHAKES = 256
MAX_HANDSHAKES_PER_ADDRESS = 32
# At most one log line per this many seconds about connections turned away before their handshake.
REFUSAL_LOG_SECONDS = 10.0
BACKLOG = 512


class Gateway:
    def __init__(
        self,
        authority: Authority,
        connect_builder: Connector,
        live_lease: LeaseCheck,
        recorder: StepRecorder | None,
        memory_watch: MemoryWatcher | None = None,
        max_relays: int = MAX_RELAYS,
        max_relays_per_project: int = MAX_RELAYS_PER_PROJECT,
        separate_process: bool = False,
        max_handshakes: int = MAX_HANDSHAKES,
        max_handshakes_per_address: int = MAX_HANDSHAKES_PER_ADDRESS,
    ) -> None:
        self.separate_process = separate_process
        self.max_relays = max_relays
        self.max_relays_per_project = max_relays_per_project
        self.max_handshakes = max_handshakes
        self.max_handshakes_per_address = max_handshakes_per_address
        self._handshaking: Counter[str] = Counter()
        self._turned_away = 0
        self._turned_away_logged = 0.0
        self.recorder = recorder
        self.memory_watch = memory_watch
        self.authority = authority
        self.connect_builder = connect_builder
        self.live_lease = live_lease
        self._contexts: dict[str, ssl.SSLContext] = {}
        self._projects: dict[tuple[str, str], str] = {}
        self._context_project: dict[int, str] = {}
        self._listener: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._admitting: set[asyncio.Task[None]] = set()
        self._relays: set[Relay | RemoteRelay] = set()
        self._connections: dict[tuple[str, str], set[Relay | RemoteRelay]] = {}
        self._hub = RelayHub()
        # With separate_process, the TLS and the relaying run in a child process (process.py).
        self.process: RelayProcess | None = None
        self._base: ssl.SSLContext | None = None

    def _project_context(self, project_id: str) -> ssl.SSLContext | None:
        context = self._contexts.get(project_id)
        if context is None:
            # The project's CA from the store (once per project and process): any node's API may have made it.
            directory = self.authority.existing_project(project_id)
            if directory is None:
                return None
            context = project_context(directory)
            self._contexts[project_id] = context
            self._context_project[id(context)] = project_id
        return context

    async def start(self, host: str, port: int) -> int:
        # The listener needs some certificate before SNI picks the real one; it never completes a handshake.
        fallback = self.authority.ensure_placeholder()
        self._base = listener_context(fallback, self._project_context)
        if self.separate_process:
            self.process = RelayProcess(fallback, self.authority.existing_project, HANDSHAKE_TIMEOUT)
            self.process.start()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        listener = socket.create_server((host, port), family=family, backlog=BACKLOG)
        listener.setblocking(False)
        self._listener = listener
        self._accepting = asyncio.get_running_loop().create_task(self._accept(listener))
        return int(listener.getsockname()[1])

    async def _accept(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                raw, address = await loop.sock_accept(listener)
            except OSError as error:  # out of file descriptors, say: keep serving the others
                log.warning("gateway could not accept a connection: %s", error)
                await asyncio.sleep(0.1)
                continue
            host = str(address[0]) if isinstance(address, tuple) else ""
            if not self._room_to_handshake(host):
                raw.close()
                continue
            self._handshaking[host] += 1
            task = loop.create_task(self._admitted_or_closed(raw))
            self._admitting.add(task)
            task.add_done_callback(functools.partial(self._admitted, host))

    def _room_to_handshake(self, host: str) -> bool:
        """Whether a new connection from host may start its handshake (else it is closed at once)."""
        if (
            len(self._admitting) < self.max_handshakes
            and self._handshaking[host] < self.max_handshakes_per_address
        ):
            return True
        metrics().gateway_turned_away.inc()
        self._turned_away += 1
        now = time.monotonic()
        if now - self._turned_away_logged >= REFUSAL_LOG_SECONDS:
            log.warning(
                "gateway: %d connection(s) closed before their handshake: %d handshake(s) in progress "
                "(limit %d), %d from %s (limit %d per address)",
                self._turned_away,
                len(self._admitting),
                self.max_handshakes,
                self._handshaking[host],
                host,
                self.max_handshakes_per_address,
            )
            self._turned_away, self._turned_away_logged = 0, now
        return False

    def _admitted(self, host: str, task: asyncio.Task[None]) -> None:
        self._admitting.discard(task)
        self._handshaking[host] -= 1
        if self._handshaking[host] <= 0:
            del self._handshaking[host]

    async def close(self) -> None:
        if self._accepting is not None:
            self._accepting.cancel()
        if self._listener is not None:
            self._listener.close()
        for task in list(self._admitting):
            task.cancel()
        relays = list(self._relays)
        for relay in relays:
            relay.cut()
        ending = [relay.ended for relay in relays if relay.ended is not None]
        if ending:
            await asyncio.wait(ending, timeout=5)
        if self.process is not None:
            await self.process.stop()
        await asyncio.to_thread(self._hub.stop)

    def keep_only(self, live: set[tuple[str, str]]) -> None:
        """Cuts every connection whose (build, platform) lease is no longer live."""
        for key in [k for k in self._connections if k not in live]:
            self._cut(key, "lease ended")

    def connected_builds(self) -> set[tuple[str, str]]:
        """The (build, platform) pairs with a connection open through this gateway."""
        return {key for key, transports in self._connections.items() if transports}

    def cut_builds(self, ended: set[tuple[str, str]]) -> None:
        """Cuts the connections of these builds only (a connection opened meanwhile for another stays)."""
        for key in ended & set(self._connections):
            self._cut(key, "lease ended")

    def cut_project(self, project_id: str, platform: str) -> None:
        for key in [k for k, p in self._projects.items() if p == project_id and k[1] == platform]:
            self._cut(key, "builder stopped")

    def _cut(self, key: tuple[str, str], why: str) -> None:
        relays = self._connections.pop(key, set())
        self._projects.pop(key, None)
        if self.recorder is not None:
            self.recorder.unwatch_memory(*key)
        for relay in relays:
            relay.cut()
        if relays:
            log.info(
                "cut %d connection(s) of build %s/%s: %s",
                len(relays),
                key[0],
                key[1],
                why,
                extra={"build_id": key[0]},
            )

    async def _watch_memory(
        self, recorder: StepRecorder, project_id: str, build_id: str, platform: str, hardware: str
    ) -> None:
        if self.memory_watch is not None and not recorder.watching_memory(build_id, platform):
            watch = await self.memory_watch(project_id, build_id, platform, hardware)
            if watch is not None:
                recorder.watch_memory(build_id, platform, watch)

    async def _admitted_or_closed(self, raw: socket.socket) -> None:
        tls: ssl.SSLSocket | None = None
        relayed = False
        try:
            raw.setblocking(False)
            if raw.family in (socket.AF_INET, socket.AF_INET6):
                raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # gRPC's small messages: no delay
            if self.process is not None:
                await self._admitted_by_process(self.process, raw)
                return
            assert self._base is not None
            tls = self._base.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
            try:
                await asyncio.wait_for(_handshake(tls), HANDSHAKE_TIMEOUT)
            except (OSError, TimeoutError) as error:  # ssl.SSLError is an OSError
                log.debug("gateway handshake failed: %s", error)
                return
            der = tls.getpeercert(binary_form=True)
            # The context SNI chose (and whose CA verified the client) says which project this is.
            relayed = await self._admit(tls, der, self._context_project.get(id(tls.context)))
        except Exception:
            log.exception("gateway connection failed before it was relayed")
        finally:
            # Refused, failed, or the gateway is closing: no connection is left open and unrelayed.
            if not relayed and self.process is None:
                (tls or raw).close()

    async def _admitted_by_process(self, process: RelayProcess, raw: socket.socket) -> None:
        """The child does the handshake; the admission is the same; the child relays or closes."""
        client = await process.handshake(raw)  # the process owns raw from now on
        if client is None:
            return
        relayed = False
        try:
            relayed = await self._admit(client, client.der, client.project_id)
        finally:
            if not relayed:
                process.refuse(client.key)

    async def _admit(
        self, client: ssl.SSLSocket | Handshaken, der: bytes | None, sni_project: str | None
    ) -> bool:
        """Relays the connection if its certificate names a build with a live lease; True if it does."""
        identity = identity_of(der) if der else None
        if identity is None or identity.project_id != sni_project:
            return False
        hardware = await self.live_lease(identity.project_id, identity.build_id, identity.platform)
        if hardware is None:
            _refused(logging.INFO, identity, "no live lease")
            return False
        if self._over_a_limit(identity):
            return False
        key = (identity.build_id, identity.platform)
        current_build.set(identity.build_id)  # the relay's passes and its end run in this context
        measured = metrics()
        loop = asyncio.get_running_loop()
        on_status: Callable[[bytes], None] | None = None
        on_status_end: Callable[[], None] | None = None
        if self.recorder is not None:
            build_id, recorder = identity.build_id, self.recorder
            await self._watch_memory(recorder, identity.project_id, build_id, identity.platform, hardware)

            def on_status(raw: bytes) -> None:
                recorder.status(build_id, raw)

            def on_status_end() -> None:
                recorder.flush_soon(build_id)

        try:
            builder = await self.connect_builder(identity.project_id, identity.platform)
        except OSError as error:
            _refused(logging.INFO, identity, f"cannot reach its builder: {error}")
            return False
        name = f"{identity.build_id}/{identity.platform}"
        relay: Relay | RemoteRelay
        if isinstance(client, Handshaken):
            assert self.process is not None
            if isinstance(builder, ssl.SSLSocket):  # its TLS state cannot move to the child
                builder.close()
                _refused(logging.ERROR, identity, "a TLS builder link cannot be relayed by the relay process")
                return False
            relay = self.process.relay(client, name, builder, on_status, on_status_end)
        else:
            relay = self._local_relay(client, name, builder, on_status, on_status_end)
        self._connections.setdefault(key, set()).add(relay)
        self._projects[key] = identity.project_id
        self._relays.add(relay)
        measured.gateway_connections.inc()
        measured.gateway_open.inc()

        def ended() -> None:
            measured.gateway_open.dec()
            self._relays.discard(relay)
            self._connections.get(key, set()).discard(relay)

        relay.prepare(loop, ended)
        if isinstance(relay, Relay):
            self._hub.add(relay)
        return True

    def _over_a_limit(self, identity: ClientIdentity) -> bool:
        """The relay caps, global and per project: True (with a log line) if this one is past one."""
        if len(self._relays) >= self.max_relays:
            _refused(
                logging.WARNING,
                identity,
                f"the gateway relays {len(self._relays)} connections already, its limit",
            )
            return True
        projects_relays = sum(
            len(relays)
            for key, relays in self._connections.items()
            if self._projects.get(key) == identity.project_id
        )
        if projects_relays >= self.max_relays_per_project:
            why = f"its project relays {projects_relays} connections already, the limit per project"
            _refused(logging.WARNING, identity, why)
            return True
        return False

    def _local_relay(
        self,
        client: ssl.SSLSocket,
        name: str,
        builder: socket.socket,
        on_status: Callable[[bytes], None] | None,
        on_status_end: Callable[[], None] | None,
    ) -> Relay:
        """Relayed by this process's hub thread. The tap reads the Status stream on its way to the client
        (the bytes pass unchanged) in that thread and hands what it read to the loop, where the recorder
        lives."""
        measured = metrics()
        loop = asyncio.get_running_loop()
        up: Observer = _ignore
        down: Observer = _ignore
        after_pass: PassHook = _no_pass_hook
        if on_status is not None and on_status_end is not None:
            status_seen, status_ended = on_status, on_status_end

            def status(raw: bytes) -> None:
                loop.call_soon_threadsafe(status_seen, raw)

            def status_end() -> None:
                loop.call_soon_threadsafe(status_ended)

            tap = StatusTap(status, status_end)
            up, down = tap.from_client, tap.from_server

            def after_pass(final: bool) -> float | None:
                if final:  # in the hub, as the relay closes: the tap's held bytes go back
                    tap.close()
                return None

        return Relay(
            name,
            client,
            builder,
            up=(up, measured.gateway_bytes.labels("to_builder")),
            down=(down, measured.gateway_bytes.labels("to_client")),
            after_pass=after_pass,
        )


def _refused(level: int, identity: ClientIdentity, why: str) -> None:
    log.log(
        level,
        "refused build %s/%s: %s",
        identity.build_id,
        identity.platform,
        why,
        extra={"build_id": identity.build_id},
    )


def _ignore(_data: memoryview) -> None:
    return None


def _no_pass_hook(_final: bool) -> float | None:
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
