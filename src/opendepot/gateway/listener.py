"""The BuildKit gateway: the only network door to the builders.

A TLS listener requiring client certificates. The TLS server name picks the project (its CA verifies the
client, its server certificate answers); the client certificate's URI SAN names the build and platform. A
connection is accepted only while that build holds a live lease on that platform, and is then forwarded
byte for byte to the project's buildkitd unix socket. Connections are cut when the lease ends."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from opendepot.logs import current_build
from opendepot.metrics import metrics
from opendepot.pki.authority import Authority, identity_of, project_of_server_name

from .recorder import MemoryWatch, StepRecorder
from .tap import StatusTap

log = logging.getLogger("opendepot.gateway")

Opener = Callable[[str, str], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]
LeaseCheck = Callable[[str, str, str], Awaitable[bool]]
# (project, build, platform) -> the builder's memory cgroup as the build sees it, or None.
MemoryWatcher = Callable[[str, str, str], Awaitable[MemoryWatch | None]]
CHUNK = 256 * 1024


class Gateway:
    def __init__(
        self,
        authority: Authority,
        open_builder: Opener,
        lease_is_live: LeaseCheck,
        recorder: StepRecorder | None,
        memory_watch: MemoryWatcher | None = None,
    ) -> None:
        self.recorder = recorder
        self.memory_watch = memory_watch
        self.authority = authority
        self.open_builder = open_builder
        self.lease_is_live = lease_is_live
        self._contexts: dict[str, ssl.SSLContext] = {}
        self._connections: dict[tuple[str, str], set[asyncio.StreamWriter]] = {}
        self._projects: dict[tuple[str, str], str] = {}
        self._context_project: dict[int, str] = {}
        self._server: asyncio.Server | None = None

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
        self._server = await asyncio.start_server(
            self._handle, host, port, ssl=self._base_context(fallback), ssl_handshake_timeout=10
        )
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writers in list(self._connections.values()):
            for writer in list(writers):
                writer.close()

    def keep_only(self, live: set[tuple[str, str]]) -> None:
        """Cuts every connection whose (build, platform) lease is no longer live."""
        for key in [k for k in self._connections if k not in live]:
            self._cut(key, "lease ended")

    def connected_builds(self) -> set[tuple[str, str]]:
        """The (build, platform) pairs with a connection open through this gateway."""
        return {key for key, writers in self._connections.items() if writers}

    def cut_builds(self, ended: set[tuple[str, str]]) -> None:
        """Cuts the connections of these builds only (a connection opened meanwhile for another stays)."""
        for key in ended & set(self._connections):
            self._cut(key, "lease ended")

    def cut_project(self, project_id: str, platform: str) -> None:
        for key in [k for k, p in self._projects.items() if p == project_id and k[1] == platform]:
            self._cut(key, "builder stopped")

    def _cut(self, key: tuple[str, str], why: str) -> None:
        writers = self._connections.pop(key, set())
        self._projects.pop(key, None)
        if self.recorder is not None:
            self.recorder.unwatch_memory(*key)
        for writer in writers:
            writer.close()
        if writers:
            log.info(
                "cut %d connection(s) of build %s/%s: %s",
                len(writers),
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

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sslobj = writer.get_extra_info("ssl_object")
        der = sslobj.getpeercert(binary_form=True) if sslobj else None
        identity = identity_of(der) if der else None
        # The context SNI chose (and whose CA verified the client) says which project this is.
        sni_project = self._context_project.get(id(sslobj.context)) if sslobj else None
        if identity is None or identity.project_id != sni_project:
            writer.close()
            return
        if not await self.lease_is_live(identity.project_id, identity.build_id, identity.platform):
            log.info(
                "refused build %s/%s: no live lease",
                identity.build_id,
                identity.platform,
                extra={"build_id": identity.build_id},
            )
            writer.close()
            return
        try:
            builder_reader, builder_writer = await self.open_builder(identity.project_id, identity.platform)
        except OSError:
            writer.close()
            return
        key = (identity.build_id, identity.platform)
        current_build.set(identity.build_id)  # this connection's task: every log line names the build
        self._connections.setdefault(key, set()).add(writer)
        measured = metrics()
        measured.gateway_connections.inc()
        measured.gateway_open.inc()
        self._projects[key] = identity.project_id
        try:
            # The tap reads the Status stream on its way to the client; the bytes pass unchanged.
            up: Callable[[bytes], None] = _ignore
            down: Callable[[bytes], None] = _ignore
            if self.recorder is not None:
                build_id, recorder = identity.build_id, self.recorder
                await self._watch_memory(recorder, identity.project_id, build_id, identity.platform)
                tap = StatusTap(
                    lambda raw: recorder.status(build_id, raw), lambda: recorder.flush_soon(build_id)
                )
                up, down = tap.from_client, tap.from_server
            await asyncio.gather(
                _pipe(reader, builder_writer, up, measured.gateway_bytes.labels("to_builder")),
                _pipe(builder_reader, writer, down, measured.gateway_bytes.labels("to_client")),
            )
        finally:
            measured.gateway_open.dec()
            self._connections.get(key, set()).discard(writer)
            for w in (writer, builder_writer):
                w.close()


def _ignore(_data: bytes) -> None:
    return None


async def _pipe(
    source: asyncio.StreamReader,
    sink: asyncio.StreamWriter,
    observe: Callable[[bytes], None],
    counted: Any,
) -> None:
    with contextlib.suppress(ConnectionError, OSError, asyncio.IncompleteReadError):
        while data := await source.read(CHUNK):
            sink.write(data)
            observe(data)
            counted.inc(len(data))
            await sink.drain()
    with contextlib.suppress(OSError, RuntimeError):
        if sink.can_write_eof():
            sink.write_eof()
