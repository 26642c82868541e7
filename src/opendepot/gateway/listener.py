"""The BuildKit gateway: the only network door to the builders.

A TLS listener requiring client certificates. The TLS server name picks the project (its CA verifies the
client, its server certificate answers); the client certificate's URI SAN names the build and platform. A
connection is accepted only while that build holds a live lease on that platform, and is then forwarded
byte for byte to the project's buildkitd unix socket. Connections are cut when the lease ends."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast

from opendepot.logs import current_build
from opendepot.metrics import metrics
from opendepot.pki.authority import Authority, identity_of, project_of_server_name

from .recorder import MemoryWatch, StepRecorder
from .tap import StatusTap

log = logging.getLogger("opendepot.gateway")

# (project, platform, protocol factory) -> a transport to the builder's BuildKit API driven by that protocol.
Connector = Callable[[str, str, Callable[[], asyncio.BaseProtocol]], Awaitable[asyncio.Transport]]
LeaseCheck = Callable[[str, str, str], Awaitable[bool]]
# (project, build, platform) -> the builder's memory cgroup as the build sees it, or None.
MemoryWatcher = Callable[[str, str, str], Awaitable[MemoryWatch | None]]
# The byte counters are shared between processes (a file write per update): counted in batches.
COUNT_EVERY = 4 << 20
# Each end reads into a buffer of its own: the TLS layer decrypts straight into it, and the other end's
# transport is given a view of it (no copy), so a read takes all that is ready up to this size.
READ_BUFFER = 128 << 10
Observer = Callable[[bytes | memoryview], None]


class Gateway:
    def __init__(
        self,
        authority: Authority,
        connect_builder: Connector,
        lease_is_live: LeaseCheck,
        recorder: StepRecorder | None,
        memory_watch: MemoryWatcher | None = None,
    ) -> None:
        self.recorder = recorder
        self.memory_watch = memory_watch
        self.authority = authority
        self.connect_builder = connect_builder
        self.lease_is_live = lease_is_live
        self._contexts: dict[str, ssl.SSLContext] = {}
        self._connections: dict[tuple[str, str], set[asyncio.BaseTransport]] = {}
        self._projects: dict[tuple[str, str], str] = {}
        self._context_project: dict[int, str] = {}
        self._server: asyncio.Server | None = None
        self._admitting: set[asyncio.Task[None]] = set()

    def _project_context(self, project_id: str) -> ssl.SSLContext | None:
        context = self._contexts.get(project_id)
        if context is None:
            # The project's CA from the store (once per project and process): any node's API may have made it.
            directory = self.authority.existing_project(project_id)
            if directory is None:
                return None
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.load_cert_chain(directory / "server.pem", directory / "server-key.pem")
            context.load_verify_locations(directory / "ca.pem")
            context.verify_mode = ssl.CERT_REQUIRED
            context.set_alpn_protocols(["h2"])  # gRPC clients insist on h2
            # Let the client's cipher order win: Go leads with AES-128-GCM where the CPU has AES, cheaper
            # for large build contexts than the AES-256-GCM that OpenSSL's server order would pick.
            context.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
            self._contexts[project_id] = context
            self._context_project[id(context)] = project_id
        return context

    def _base_context(self, fallback: Path) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(fallback / "server.pem", fallback / "server-key.pem")
        context.verify_mode = ssl.CERT_REQUIRED
        context.set_alpn_protocols(["h2"])

        def pick(sslobj: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> int | None:
            project_id = project_of_server_name(name)
            project_context = self._project_context(project_id) if project_id else None
            if project_context is None:
                return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
            sslobj.context = project_context
            return None

        context.sni_callback = pick
        return context

    async def start(self, host: str, port: int) -> int:
        # The listener needs some certificate before SNI picks the real one; it never completes a handshake.
        fallback = self.authority.ensure_placeholder()
        self._server = await asyncio.get_running_loop().create_server(
            self._accepted, host, port, ssl=self._base_context(fallback), ssl_handshake_timeout=10
        )
        return int(self._server.sockets[0].getsockname()[1])

    def _accepted(self) -> _Side:
        """A client side waits (reading paused, anything already received kept) until _admit has checked it
        and connected its builder."""
        return _Side(self._start_admit)

    def _start_admit(self, client: _Side) -> None:
        task = asyncio.get_running_loop().create_task(self._admitted_or_closed(client))
        self._admitting.add(task)
        task.add_done_callback(self._admitting.discard)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._admitting):
            task.cancel()
        for transports in list(self._connections.values()):
            for transport in list(transports):
                transport.close()

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
        transports = self._connections.pop(key, set())
        self._projects.pop(key, None)
        if self.recorder is not None:
            self.recorder.unwatch_memory(*key)
        for transport in transports:
            transport.close()
        if transports:
            log.info(
                "cut %d connection(s) of build %s/%s: %s",
                len(transports),
                key[0],
                key[1],
                why,
                extra={"build_id": key[0]},
            )

    async def _watch_memory(
        self, recorder: StepRecorder, project_id: str, build_id: str, platform: str
    ) -> None:
        if self.memory_watch is not None and not recorder.watching_memory(build_id, platform):
            watch = await self.memory_watch(project_id, build_id, platform)
            if watch is not None:
                recorder.watch_memory(build_id, platform, watch)

    async def _admitted_or_closed(self, client: _Side) -> None:
        try:
            await self._admit(client)
        except Exception:
            log.exception("gateway connection failed before it was relayed")
            client.close()
        except BaseException:
            client.close()  # the gateway is closing: no connection is left open and paused
            raise

    async def _admit(self, client: _Side) -> None:
        transport = client.transport
        assert transport is not None
        sslobj = transport.get_extra_info("ssl_object")
        der = sslobj.getpeercert(binary_form=True) if sslobj else None
        identity = identity_of(der) if der else None
        # The context SNI chose (and whose CA verified the client) says which project this is.
        sni_project = self._context_project.get(id(sslobj.context)) if sslobj else None
        if identity is None or identity.project_id != sni_project:
            transport.close()
            return
        if not await self.lease_is_live(identity.project_id, identity.build_id, identity.platform):
            log.info(
                "refused build %s/%s: no live lease",
                identity.build_id,
                identity.platform,
                extra={"build_id": identity.build_id},
            )
            transport.close()
            return
        key = (identity.build_id, identity.platform)
        current_build.set(identity.build_id)  # this connection's callbacks run in this context: logs name it
        measured = metrics()
        # The tap reads the Status stream on its way to the client; the bytes pass unchanged.
        up: Observer = _ignore
        down: Observer = _ignore
        if self.recorder is not None:
            build_id, recorder = identity.build_id, self.recorder
            await self._watch_memory(recorder, identity.project_id, build_id, identity.platform)
            tap = StatusTap(lambda raw: recorder.status(build_id, raw), lambda: recorder.flush_soon(build_id))
            up, down = tap.from_client, tap.from_server
        if transport.is_closing():  # the client gave up (or the build ended) while we waited
            return
        builder = _Side(None)
        try:
            await self.connect_builder(identity.project_id, identity.platform, lambda: builder)
        except OSError:
            transport.close()
            return
        if transport.is_closing():
            builder.close()
            return
        self._connections.setdefault(key, set()).add(transport)
        self._projects[key] = identity.project_id
        measured.gateway_connections.inc()
        measured.gateway_open.inc()

        def ended() -> None:
            measured.gateway_open.dec()
            self._connections.get(key, set()).discard(transport)

        # A context each (a context cannot be entered twice at once), both naming the build.
        to_client, to_builder = contextvars.copy_context(), contextvars.copy_context()
        builder.relay_to(client, down, measured.gateway_bytes.labels("to_client"), to_client, None)
        client.relay_to(builder, up, measured.gateway_bytes.labels("to_builder"), to_builder, ended)


def _ignore(_data: bytes | memoryview) -> None:
    return None


class _Side(asyncio.BufferedProtocol):
    """One end of a relayed connection. What it receives is written to the other end's transport as it
    came (and shown to the tap); when the other end's write buffer is full, this end stops reading until it
    has drained, so a slow reader never makes the gateway buffer more than the transports' limits. Either
    end closing closes the other."""

    def __init__(self, on_connected: Callable[[_Side], None] | None) -> None:
        self._on_connected = on_connected
        self.transport: asyncio.Transport | None = None
        self._peer: _Side | None = None
        self._buffer = memoryview(bytearray(READ_BUFFER))
        self._early: list[bytes] = []  # received before the peer was connected
        self._early_eof = False
        self._observe: Observer = _ignore
        self._counted: Any = None
        self._uncounted = 0
        self._context: contextvars.Context | None = None
        self._on_lost: Callable[[], None] | None = None
        self._lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TLS transports do not derive from asyncio.Transport, but have its methods.
        self.transport = cast(asyncio.Transport, transport)
        if self._on_connected is not None:
            self.transport.pause_reading()
            self._on_connected(self)

    def relay_to(
        self,
        peer: _Side,
        observe: Observer,
        counted: Any,
        context: contextvars.Context,
        on_lost: Callable[[], None] | None,
    ) -> None:
        self._peer, self._observe, self._counted, self._context = peer, observe, counted, context
        self._on_lost = on_lost
        early, self._early = self._early, []
        for data in early:
            self._relay(data)
        if self._early_eof:
            self.eof_received()
        if self._lost:
            self.connection_lost(None)
        elif self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._buffer

    def buffer_updated(self, nbytes: int) -> None:
        if self._peer is None:
            self._early.append(bytes(self._buffer[:nbytes]))
        else:
            self._relay(self._buffer[:nbytes])

    def _relay(self, data: bytes | memoryview) -> None:
        peer = self._peer
        assert peer is not None and self._context is not None
        kept = False
        if peer.transport is not None:
            peer.transport.write(data)
            # What the transport could not send at once it may hold as a view of our buffer: a fresh one.
            kept = peer.transport.get_write_buffer_size() > 0
        self._context.run(self._observe, data)
        if kept:
            self._buffer = memoryview(bytearray(READ_BUFFER))
        self._uncounted += len(data)
        if self._uncounted >= COUNT_EVERY:
            self._count()

    def _count(self) -> None:
        if self._counted is not None and self._uncounted:
            self._counted.inc(self._uncounted)
        self._uncounted = 0

    def eof_received(self) -> bool:
        peer = self._peer
        if peer is None:
            self._early_eof = True
        elif peer.transport is not None and peer.transport.can_write_eof():
            try:
                peer.transport.write_eof()
            except (OSError, RuntimeError):
                peer.close()
        return True  # half-closed: what the other end still sends is relayed (TLS ends close instead)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        if self._peer is None and self._on_connected is not None:
            return  # not relaying yet: relay_to (or nothing, if the client was refused) finishes this
        self._count()
        if self._peer is not None:
            self._peer.close()
        if self._on_lost is not None:
            on_lost, self._on_lost = self._on_lost, None
            on_lost()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def pause_writing(self) -> None:
        if self._peer is not None and self._peer.transport is not None:
            self._peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self._peer is not None and self._peer.transport is not None:
            self._peer.transport.resume_reading()
