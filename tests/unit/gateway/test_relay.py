"""The gateway's data path: the relay thread for admitted connections, and the listener that admits them.

Relays are driven over socket pairs; the listener over real TLS with certificates the project's CA issued,
its builder a socket pair end this test holds."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
import os
import signal
import socket
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from opendepot.gateway import listener
from opendepot.gateway.listener import Gateway
from opendepot.gateway.process import STATUS_BATCH_BYTES, STATUS_BATCH_SECONDS, StatusBatch
from opendepot.gateway.relay import BUFFER, Relay, RelayHub
from opendepot.pki.authority import Authority, ClientIdentity, server_name
from opendepot.sealed.vault import Vault

from .test_tap import FIRST, SECOND, THIRD, recorded

PROJECT = "bcdfghjklm"
OTHER_PROJECT = "bcdfghjkln"


def pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair()
    a.setblocking(False)
    return a, b


def test_bytes_pass_both_ways_unchanged_and_the_observers_see_them() -> None:
    async def scenario() -> None:
        client_near, client_far = pair()
        builder_near, builder_far = pair()
        seen_up: list[bytes] = []
        seen_down: list[bytes] = []
        relay = Relay(
            "b/amd64",
            client_near,
            builder_near,
            up=(lambda data: seen_up.append(bytes(data)), None),
            down=(lambda data: seen_down.append(bytes(data)), None),
        )
        hub = started(relay)
        payload = os.urandom(3 * BUFFER + 12345)

        def exchange() -> bytes:
            sender = threading.Thread(target=client_far.sendall, args=(payload,))
            sender.start()
            received = bytearray()
            while len(received) < len(payload):
                received += builder_far.recv(1 << 20)
            sender.join()
            builder_far.sendall(b"answer")
            assert client_far.recv(100) == b"answer"
            return bytes(received)

        assert await asyncio.to_thread(exchange) == payload

        def all_seen() -> bool:
            return sum(map(len, seen_up)) >= len(payload) and sum(map(len, seen_down)) >= len(b"answer")

        # The observers see each read once it is on its way to the peer: the peer may have it a moment before.
        await asyncio.to_thread(until, all_seen)
        assert b"".join(seen_up) == payload and b"".join(seen_down) == b"answer"
        client_far.close()  # the client goes: the builder's end is closed too
        assert await asyncio.to_thread(builder_far.recv, 10) == b""
        assert relay.ended is not None
        await asyncio.wait_for(relay.ended, 5)
        await asyncio.to_thread(hub.stop)

    asyncio.run(scenario())


def test_the_pass_hook_runs_once_that_pass_has_sent_its_data_on() -> None:
    """The process child reports what the tap saw from this hook: the client has its bytes before the
    supervisor is told (and woken)."""

    async def scenario() -> None:
        client_near, client_far = pair()
        builder_near, builder_far = pair()
        client_far.setblocking(False)
        events: list[tuple[str, bytes]] = []

        def after_pass(_final: bool) -> None:
            try:
                events.append(("after", client_far.recv(100)))
            except BlockingIOError:
                events.append(("after", b""))

        relay = Relay(
            "b/amd64",
            client_near,
            builder_near,
            down=(lambda data: events.append(("seen", bytes(data))), None),
            after_pass=after_pass,
        )
        hub = started(relay)
        builder_far.sendall(b"status")

        def tapped() -> bool:
            return ("seen", b"status") in events and events[-1][0] == "after"

        await asyncio.to_thread(until, tapped)
        seen = events.index(("seen", b"status"))
        assert events[seen + 1] == ("after", b"status")  # the next hook call: the bytes were there
        client_far.close()
        await asyncio.to_thread(hub.stop)

    asyncio.run(scenario())


def test_the_observer_sees_each_read_once_it_is_on_its_way_to_the_peer() -> None:
    """The tap reads while the builder already works on the request (the tap's HPACK decoding of a request's
    headers is off the round trip)."""

    async def scenario() -> None:
        client_near, client_far = pair()
        builder_near, builder_far = pair()
        builder_far.setblocking(False)
        at_the_builder: list[bytes] = []

        def observe(_data: memoryview) -> None:
            try:
                at_the_builder.append(builder_far.recv(100))
            except BlockingIOError:
                at_the_builder.append(b"")

        relay = Relay("b/amd64", client_near, builder_near, up=(observe, None))
        hub = started(relay)
        client_far.sendall(b"request")
        await asyncio.to_thread(until, lambda: bool(at_the_builder))
        assert at_the_builder == [b"request"]
        client_far.close()
        await asyncio.to_thread(hub.stop)
        builder_far.close()

    asyncio.run(scenario())


def test_a_pass_hook_that_asks_to_run_again_is_called_without_traffic_and_once_at_the_close() -> None:
    """The child holds the tap's status messages for a batch: the hub calls it back when it asked to, though
    nothing more comes, and a last time when the relay closes."""

    async def scenario() -> None:
        client_near, client_far = pair()
        builder_near, builder_far = pair()
        calls: list[tuple[float, bool]] = []

        def after_pass(final: bool) -> float | None:
            calls.append((time.monotonic(), final))
            return 0.2 if len(calls) == 1 else None  # the first pass asks to be called again in 0.2 s

        relay = Relay("b/amd64", client_near, builder_near, after_pass=after_pass)
        hub = started(relay)
        await asyncio.to_thread(until, lambda: len(calls) >= 2)
        await asyncio.sleep(0.3)
        assert len(calls) == 2  # called back once, then nothing: it asked for nothing more
        assert calls[1][0] - calls[0][0] >= 0.19 and not calls[1][1]
        client_far.close()
        assert relay.ended is not None
        await asyncio.wait_for(relay.ended, 5)
        assert calls[-1][1] and len(calls) >= 3  # the close's call says so
        await asyncio.to_thread(hub.stop)
        builder_far.close()

    asyncio.run(scenario())


class CountingSocket(socket.socket):
    """A socket that counts its reads."""

    reads = 0

    def recv_into(self, *args: Any, **kwargs: Any) -> int:
        self.reads += 1
        return super().recv_into(*args, **kwargs)


def counting_pair() -> tuple[CountingSocket, socket.socket]:
    a, b = socket.socketpair()
    near = CountingSocket(a.family, a.type, a.proto, fileno=a.detach())
    near.setblocking(False)
    return near, b


def test_a_short_read_waits_for_poll_instead_of_reading_again() -> None:
    """gRPC's small messages each come in one read: reading again until the socket says "empty" cost a
    failed call (a syscall and an exception) on every pass, a fifth of the relay's time per message."""

    async def scenario() -> None:
        client_near, client_far = counting_pair()
        builder_near, builder_far = counting_pair()
        hub = started(Relay("b/amd64", client_near, builder_near))
        exchanges = 50

        def ping_pong() -> None:
            for i in range(exchanges):
                client_far.sendall(b"ping %d" % i)
                assert builder_far.recv(100) == b"ping %d" % i
                builder_far.sendall(b"pong %d" % i)
                assert client_far.recv(100) == b"pong %d" % i

        await asyncio.to_thread(ping_pong)
        # One read per message each way (two, were each read followed by one that finds nothing).
        assert client_near.reads <= exchanges + 2 and builder_near.reads <= exchanges + 2
        client_far.close()
        await asyncio.to_thread(hub.stop)

    asyncio.run(scenario())


def started(*relays: Relay, on_end: Callable[[], None] = lambda: None) -> RelayHub:
    hub = RelayHub()
    for relay in relays:
        relay.prepare(asyncio.get_running_loop(), on_end)
        hub.add(relay)
    return hub


def test_a_cut_relay_is_closed_and_the_others_go_on_until_the_hub_stops() -> None:
    async def scenario() -> None:
        client_near, client_far = pair()
        builder_near, builder_far = pair()
        other_client, other_client_far = pair()
        other_builder, other_builder_far = pair()
        relay = Relay("b/amd64", client_near, builder_near)
        other = Relay("c/amd64", other_client, other_builder)
        ended: list[bool] = []
        hub = started(relay, other, on_end=lambda: ended.append(True))
        assert hub.alive()
        relay.cut()
        assert relay.ended is not None
        await asyncio.wait_for(relay.ended, 5)
        assert ended == [True]
        assert client_near.fileno() == -1 and builder_near.fileno() == -1
        assert client_far.recv(10) == b"" and builder_far.recv(10) == b""
        relay.cut()  # again, after the end: nothing to do, no error
        other_client_far.sendall(b"still")
        assert await asyncio.to_thread(other_builder_far.recv, 10) == b"still"
        await asyncio.to_thread(
            hub.stop
        )  # the gateway closing: what is still open is closed, the thread ends
        assert not hub.alive()
        assert other.ended is not None
        await asyncio.wait_for(other.ended, 5)
        assert other_client_far.recv(10) == b"" and other_builder_far.recv(10) == b""

    asyncio.run(scenario())


class FailingOnce:
    """The hub's poll, failing the first time it is called (a bug in the hub's loop)."""

    def __init__(self, poller: Any) -> None:
        self.poller = poller
        self.failed = False

    def poll(self, timeout: float | None) -> Any:
        if not self.failed:
            self.failed = True
            raise RuntimeError("a bug")
        return self.poller.poll(timeout)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.poller, name)


def test_a_failed_hub_closes_its_connections_and_the_next_one_gets_a_fresh_thread(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        client_near, client_far = pair()
        builder_near, builder_far = pair()
        hub = RelayHub()
        hub._poller = FailingOnce(hub._poller)  # type: ignore[assignment]
        relay = Relay("b/amd64", client_near, builder_near)
        with caplog.at_level(logging.ERROR, logger="opendepot.gateway"):
            relay.prepare(asyncio.get_running_loop(), lambda: None)
            hub.add(relay)
            assert relay.ended is not None
            await asyncio.wait_for(relay.ended, 5)
        assert "relay thread failed" in caplog.text
        assert client_far.recv(10) == b"" and builder_far.recv(10) == b""
        client_near, client_far = pair()
        builder_near, builder_far = pair()
        again = Relay("c/amd64", client_near, builder_near)
        again.prepare(asyncio.get_running_loop(), lambda: None)
        hub.add(again)
        client_far.sendall(b"works")
        assert await asyncio.to_thread(builder_far.recv, 10) == b"works"
        await asyncio.to_thread(hub.stop)
        assert not hub.alive()

    asyncio.run(scenario())


def test_a_client_that_stops_reading_holds_the_builder_back() -> None:
    """The gateway reads from the builder only what it could pass on: one buffer beyond the sockets' own."""

    async def scenario() -> None:
        client_near, client_far = pair()
        builder_near, builder_far = pair()
        for sock in (client_near, client_far, builder_near, builder_far):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 << 10)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
        relay = Relay("b/amd64", client_near, builder_near)
        hub = started(relay)
        builder_far.setblocking(False)
        chunk = b"x" * (64 << 10)

        def flood() -> int:
            """Writes until the gateway has taken nothing for half a second (or 64 MiB: unbounded)."""
            written, idle_since = 0, time.monotonic()
            while written < 64 << 20 and time.monotonic() - idle_since < 0.5:
                try:
                    written += builder_far.send(chunk)
                    idle_since = time.monotonic()
                except BlockingIOError:
                    time.sleep(0.01)
            return written

        written = await asyncio.to_thread(flood)
        # Socket buffers (the kernel may double what was asked, per end) and one relay buffer.
        assert written <= 4 * (128 << 10) * 2 + BUFFER
        # The client reads again: everything arrives and the gateway takes more from the builder.
        client_far.setblocking(False)
        received = 0
        deadline = time.monotonic() + 5
        while received < written and time.monotonic() < deadline:
            try:
                received += len(client_far.recv(1 << 20))
            except BlockingIOError:
                await asyncio.sleep(0.01)
        assert received == written
        relay.cut()
        assert relay.ended is not None
        await asyncio.wait_for(relay.ended, 5)
        await asyncio.to_thread(hub.stop)

    asyncio.run(scenario())


class Harness:
    """A gateway on 127.0.0.1 whose builders are socket pair ends held here."""

    def __init__(
        self,
        tmp_path: Path,
        vault: Vault,
        max_relays: int = 8,
        max_relays_per_project: int = 8,
        separate_process: bool = False,
        recorder: Any = None,
        max_handshakes: int = 256,
        max_handshakes_per_address: int = 32,
    ) -> None:
        self.authority = Authority(tmp_path / "pki", vault)
        self.authority.ensure_project(PROJECT)
        self.authority.ensure_project(OTHER_PROJECT)
        self.tmp_path = tmp_path
        self.live = True
        self.builders: list[socket.socket] = []
        self.gateway = Gateway(
            self.authority,
            self.connect,
            self.lease,
            recorder,
            max_relays=max_relays,
            max_relays_per_project=max_relays_per_project,
            separate_process=separate_process,
            max_handshakes=max_handshakes,
            max_handshakes_per_address=max_handshakes_per_address,
        )
        self.port = 0

    async def connect(self, project_id: str, platform: str) -> socket.socket:
        near, far = pair()
        self.builders.append(far)
        return near

    async def lease(self, project_id: str, build_id: str, platform: str) -> str | None:
        return "4x8" if self.live else None

    def client_context(self, build_id: str, project: str = PROJECT) -> ssl.SSLContext:
        issued = self.authority.issue_client(
            ClientIdentity(project, build_id, "amd64"), dt.timedelta(hours=1)
        )
        directory = self.tmp_path / f"client-{build_id}"
        directory.mkdir(exist_ok=True)
        (directory / "cert.pem").write_text(issued.cert_pem)
        (directory / "key.pem").write_text(issued.key_pem)
        context = ssl.create_default_context(cadata=issued.ca_pem)
        context.load_cert_chain(directory / "cert.pem", directory / "key.pem")
        return context

    def dial(self, build_id: str, project: str = PROJECT, source: str = "127.0.0.1") -> ssl.SSLSocket:
        raw = socket.create_connection(("127.0.0.1", self.port), timeout=10, source_address=(source, 0))
        context = self.client_context(build_id, project)
        return context.wrap_socket(raw, server_hostname=server_name(project))


OnLoop = Callable[..., Any]


@pytest.fixture(params=[False, True], ids=["in-process", "relay-process"])
def separate_process(request: pytest.FixtureRequest) -> bool:
    """Every gateway case runs with the relay hub in the supervisor and with the relay process."""
    return bool(request.param)


def run_with_gateway(harness: Harness, body: Callable[[OnLoop], None]) -> None:
    """Runs body in a thread while the gateway serves; body calls the gateway through on_loop(fn, *args)."""

    async def scenario() -> None:
        loop = asyncio.get_running_loop()

        def on_loop(fn: Callable[..., Any], *args: Any) -> Any:
            async def call() -> Any:
                return fn(*args)

            return asyncio.run_coroutine_threadsafe(call(), loop).result(10)

        harness.port = await harness.gateway.start("127.0.0.1", 0)
        try:
            await asyncio.to_thread(body, on_loop)
        finally:
            await harness.gateway.close()

    asyncio.run(scenario())


def closed(sock: socket.socket) -> bool:
    """Whether the other side has closed the connection (an end of stream, or a reset)."""
    try:
        return sock.recv(10) == b""
    except OSError:
        return True


def until(condition: Callable[[], bool], seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_an_admitted_build_is_relayed_over_tls_and_cut_when_its_lease_ends(
    tmp_path: Path, vault: Vault, separate_process: bool
) -> None:
    harness = Harness(tmp_path, vault, separate_process=separate_process)

    def body(on_loop: OnLoop) -> None:
        client = harness.dial("bcdfghjkl0")
        payload = os.urandom(5 << 20)
        sender = threading.Thread(target=client.sendall, args=(payload,))
        sender.start()
        until(lambda: bool(harness.builders))
        builder = harness.builders[0]
        received = bytearray()
        while len(received) < len(payload):
            received += builder.recv(1 << 20)
        sender.join()
        assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()
        builder.sendall(b"status")
        assert client.recv(100) == b"status"
        assert on_loop(harness.gateway.connected_builds) == {("bcdfghjkl0", "amd64")}
        on_loop(harness.gateway.cut_builds, {("bcdfghjkl0", "amd64")})
        assert closed(builder) and closed(client)
        until(lambda: not on_loop(harness.gateway.connected_builds) and not harness.gateway._relays)

    run_with_gateway(harness, body)


def test_no_live_lease_or_a_foreign_certificate_is_refused(
    tmp_path: Path, vault: Vault, separate_process: bool
) -> None:
    harness = Harness(tmp_path, vault, separate_process=separate_process)

    def body(on_loop: OnLoop) -> None:
        harness.live = False
        assert closed(harness.dial("bcdfghjkl0"))
        harness.live = True
        # A certificate from another project's CA, presented under this project's name: no handshake.
        other = Harness(tmp_path / "other", vault)
        other.authority.ensure_project("bcdfghjkln")
        issued = other.authority.issue_client(
            ClientIdentity("bcdfghjkln", "bcdfghjkl1", "amd64"), dt.timedelta(hours=1)
        )
        (tmp_path / "foreign.pem").write_text(issued.cert_pem + issued.key_pem)
        context = harness.client_context("bcdfghjkl1")
        context.load_cert_chain(tmp_path / "foreign.pem")
        raw = socket.create_connection(("127.0.0.1", harness.port), timeout=10)
        with pytest.raises((ssl.SSLError, OSError)):
            tls = context.wrap_socket(raw, server_hostname=server_name(PROJECT))
            tls.recv(10)  # TLS 1.3: the server's verdict on the certificate arrives after the handshake
        assert harness.builders == []

    run_with_gateway(harness, body)


def test_a_stalled_handshake_holds_no_thread_and_is_dropped(
    tmp_path: Path, vault: Vault, monkeypatch: pytest.MonkeyPatch, separate_process: bool
) -> None:
    monkeypatch.setattr(listener, "HANDSHAKE_TIMEOUT", 1.0)
    harness = Harness(tmp_path, vault, separate_process=separate_process)

    def body(on_loop: OnLoop) -> None:
        threads = threading.active_count()
        stalled = [socket.create_connection(("127.0.0.1", harness.port), timeout=10) for _ in range(20)]
        stalled[0].sendall(b"\x16\x03\x01\x00")  # the start of a ClientHello, and nothing more
        time.sleep(0.2)
        assert threading.active_count() == threads
        # Meanwhile a real client is served.
        client = harness.dial("bcdfghjkl0")
        until(lambda: bool(harness.builders))
        client.sendall(b"hello")
        assert harness.builders[0].recv(10) == b"hello"
        started = time.monotonic()
        assert all(closed(sock) for sock in stalled)
        assert time.monotonic() - started < 5

    run_with_gateway(harness, body)


def test_handshakes_in_progress_are_bounded_in_all_and_per_client_address(
    tmp_path: Path, vault: Vault, caplog: pytest.LogCaptureFixture, separate_process: bool
) -> None:
    """Anyone may connect: connections that never finish a handshake must not use up the descriptors."""
    harness = Harness(
        tmp_path, vault, separate_process=separate_process, max_handshakes=4, max_handshakes_per_address=2
    )

    def stall(source: str) -> socket.socket:
        return socket.create_connection(("127.0.0.1", harness.port), timeout=10, source_address=(source, 0))

    def closed_at_once(sock: socket.socket) -> bool:
        """Closed by the gateway within 2 s: long before a stalled handshake's own timeout (10 s)."""
        sock.settimeout(2)
        try:
            return sock.recv(10) == b""
        except TimeoutError:
            return False
        except OSError:
            return True

    def body(on_loop: OnLoop) -> None:
        held = [stall("127.0.0.1"), stall("127.0.0.1")]
        until(lambda: on_loop(lambda: sum(harness.gateway._handshaking.values())) == 2)
        with caplog.at_level(logging.WARNING, logger="opendepot.gateway"):
            assert closed_at_once(stall("127.0.0.1"))  # this address has its two
        assert (
            "closed before their handshake" in caplog.text
            and "127.0.0.1 (limit 2 per address)" in caplog.text
        )
        client = harness.dial("bcdfghjkl0", source="127.0.0.2")  # another address still gets in
        until(lambda: bool(harness.builders))
        client.sendall(b"in")
        assert harness.builders[0].recv(10) == b"in"
        held += [stall("127.0.0.3"), stall("127.0.0.3")]
        until(lambda: on_loop(lambda: len(harness.gateway._admitting)) == 4)
        assert closed_at_once(stall("127.0.0.4"))  # four in progress in all
        for sock in held:
            sock.close()  # they end: places are free again
        until(lambda: on_loop(lambda: len(harness.gateway._admitting)) == 0)
        again = harness.dial("bcdfghjkl1")
        until(lambda: len(harness.builders) == 2)
        again.sendall(b"again")
        assert harness.builders[1].recv(10) == b"again"
        assert on_loop(lambda: dict(harness.gateway._handshaking)) == {}
        client.close()
        again.close()

    run_with_gateway(harness, body)


def test_connections_past_the_limit_are_refused_with_a_log_line(
    tmp_path: Path, vault: Vault, caplog: pytest.LogCaptureFixture, separate_process: bool
) -> None:
    harness = Harness(tmp_path, vault, max_relays=2, separate_process=separate_process)

    def body(on_loop: OnLoop) -> None:
        first, second = harness.dial("bcdfghjkl0"), harness.dial("bcdfghjkl1")
        until(lambda: len(harness.builders) == 2)
        with caplog.at_level(logging.WARNING, logger="opendepot.gateway"):
            assert closed(harness.dial("bcdfghjkl2"))
        assert "relays 2 connections already, its limit" in caplog.text
        assert len(harness.builders) == 2
        first.close()  # one ends: a place is free again
        until(lambda: len(harness.gateway._relays) == 1)
        third = harness.dial("bcdfghjkl3")
        until(lambda: len(harness.builders) == 3)
        third.sendall(b"in")
        assert harness.builders[2].recv(10) == b"in"
        second.close()

    run_with_gateway(harness, body)


def test_one_project_cannot_take_every_place(
    tmp_path: Path, vault: Vault, caplog: pytest.LogCaptureFixture, separate_process: bool
) -> None:
    harness = Harness(
        tmp_path, vault, max_relays=8, max_relays_per_project=2, separate_process=separate_process
    )

    def body(on_loop: OnLoop) -> None:
        held = [harness.dial("bcdfghjkl0"), harness.dial("bcdfghjkl1")]
        until(lambda: len(harness.builders) == 2)
        with caplog.at_level(logging.WARNING, logger="opendepot.gateway"):
            assert closed(harness.dial("bcdfghjkl2"))
        assert "its project relays 2 connections already, the limit per project" in caplog.text
        other = harness.dial("bcdfghjkl3", OTHER_PROJECT)  # another tenant still gets in
        until(lambda: len(harness.builders) == 3)
        other.sendall(b"in")
        assert harness.builders[2].recv(10) == b"in"
        for sock in [*held, other]:
            sock.close()

    run_with_gateway(harness, body)


def test_the_project_context_sni_picks_sets_the_cipher_order_and_tickets_too(
    tmp_path: Path, vault: Vault, separate_process: bool
) -> None:
    """OpenSSL takes a connection's options and ticket count from the listener's context, not from the
    project's that SNI switches to: both must say it (they did not, and every handshake paid for two
    unused tickets, and Go's clients got AES-256 where they lead with AES-128)."""
    harness = Harness(tmp_path, vault, separate_process=separate_process)

    def body(on_loop: OnLoop) -> None:
        # TLS 1.2, where a client's cipher order can be set from Python: the client's first choice wins.
        context = harness.client_context("bcdfghjkl0")
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        context.set_ciphers("ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384")
        raw = socket.create_connection(("127.0.0.1", harness.port), timeout=10)
        with context.wrap_socket(raw, server_hostname=server_name(PROJECT)) as client:
            cipher = client.cipher()
            assert cipher is not None and cipher[0] == "ECDHE-ECDSA-AES128-GCM-SHA256", cipher
        # TLS 1.3: tickets come after the handshake, so they would be read before the builder's bytes.
        client = harness.dial("bcdfghjkl1")
        until(lambda: len(harness.builders) == 2)
        harness.builders[1].sendall(b"hello")
        assert client.recv(10) == b"hello"
        assert client.version() == "TLSv1.3"
        assert client.session is not None and not client.session.has_ticket
        client.close()

    run_with_gateway(harness, body)


def test_when_the_relay_process_dies_its_connections_end_and_a_new_one_serves(
    tmp_path: Path, vault: Vault, caplog: pytest.LogCaptureFixture
) -> None:
    harness = Harness(tmp_path, vault, separate_process=True)

    def body(on_loop: OnLoop) -> None:
        process = harness.gateway.process
        assert process is not None and process.process is not None
        first = process.process.pid
        client = harness.dial("bcdfghjkl0")
        client.sendall(b"before")
        until(lambda: bool(harness.builders))
        assert harness.builders[0].recv(10) == b"before"
        with caplog.at_level(logging.WARNING, logger="opendepot.gateway"):
            os.kill(first, signal.SIGKILL)
            # The build in flight sees its connection end (as on any dropped connection), both sides.
            assert closed(harness.builders[0]) and closed(client)
            until(lambda: not harness.gateway._relays and not on_loop(harness.gateway.connected_builds))
            until(lambda: process.process is not None and process.process.pid != first and process.alive())
        assert "relay process ended (exit status -9); 1 connection(s) cut" in caplog.text
        again = harness.dial("bcdfghjkl1")
        again.sendall(b"after")
        until(lambda: len(harness.builders) == 2)
        assert harness.builders[1].recv(10) == b"after"

    run_with_gateway(harness, body)


def test_a_relay_process_that_keeps_dying_is_started_again_after_longer_waits(
    tmp_path: Path, vault: Vault, caplog: pytest.LogCaptureFixture
) -> None:
    """A second quick death waits 2 s, not 1 (a child that keeps dying is no busy loop); meanwhile the gateway
    refuses connections, and afterwards a new child serves."""
    harness = Harness(tmp_path, vault, separate_process=True)
    restarts = REGISTRY.get_sample_value("opendepot_gateway_relay_restarts_total") or 0.0

    def body(on_loop: OnLoop) -> None:
        process = harness.gateway.process
        assert process is not None and process.process is not None

        def kill_the_child() -> float:
            """Seconds until a new child runs."""
            assert process.process is not None
            pid = process.process.pid
            os.kill(pid, signal.SIGKILL)
            until(lambda: not process.alive())
            died = time.monotonic()
            with pytest.raises(OSError):  # no child to shake hands: the connection is closed at once
                harness.dial("bcdfghjkl0")
            until(lambda: process.process is not None and process.process.pid != pid and process.alive())
            return time.monotonic() - died

        with caplog.at_level(logging.WARNING, logger="opendepot.gateway"):
            kill_the_child()
            assert kill_the_child() >= 1.9
        assert "starting a new one in 1 s (1 quick death(s) in a row)" in caplog.text
        assert "starting a new one in 2 s (2 quick death(s) in a row)" in caplog.text
        assert REGISTRY.get_sample_value("opendepot_gateway_relay_restarts_total") == restarts + 2
        client = harness.dial("bcdfghjkl1")
        client.sendall(b"after")
        until(lambda: bool(harness.builders))
        assert harness.builders[0].recv(10) == b"after"
        client.close()

    run_with_gateway(harness, body)


class CountingRecorder:
    """The step recorder's face to the gateway, counting what reaches it (a seam: no store here)."""

    def __init__(self) -> None:
        self.statuses: list[tuple[str, bytes]] = []
        self.flushes: list[str] = []

    def status(self, build_id: str, raw: bytes) -> None:
        self.statuses.append((build_id, raw))

    def flush_soon(self, build_id: str) -> None:
        self.flushes.append(build_id)

    def unwatch_memory(self, build_id: str, platform: str) -> None:
        return None


def test_the_relay_process_taps_status_and_the_supervisor_records_it_once(
    tmp_path: Path, vault: Vault, separate_process: bool
) -> None:
    recorder = CountingRecorder()
    harness = Harness(tmp_path, vault, separate_process=separate_process, recorder=recorder)
    client_bytes, server_bytes = recorded()

    def body(on_loop: OnLoop) -> None:
        client = harness.dial("bcdfghjkl0")
        client.sendall(client_bytes)
        until(lambda: bool(harness.builders))
        builder = harness.builders[0]
        received = bytearray()
        while len(received) < len(client_bytes):
            received += builder.recv(1 << 16)
        assert bytes(received) == client_bytes  # unchanged
        builder.sendall(server_bytes)
        answered = bytearray()
        while len(answered) < len(server_bytes):
            answered += client.recv(1 << 16)
        assert bytes(answered) == server_bytes
        until(lambda: len(recorder.flushes) == 1)
        client.close()
        until(lambda: not harness.gateway._relays)

    run_with_gateway(harness, body)
    assert recorder.statuses == [("bcdfghjkl0", message) for message in (FIRST, SECOND, THIRD)]
    assert recorder.flushes == ["bcdfghjkl0"]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_status_batch_is_held_a_moment_then_sent_in_the_order_seen() -> None:
    sent: list[list[bytes | None]] = []
    clock = Clock()
    batch = StatusBatch(sent.append, clock)
    assert batch.after_pass(False) is None  # nothing held: no call back wanted
    batch.status(b"one")
    clock.now += 0.03
    batch.status(b"two")
    assert batch.after_pass(False) == pytest.approx(STATUS_BATCH_SECONDS - 0.03)
    assert sent == []
    clock.now += STATUS_BATCH_SECONDS
    assert batch.after_pass(False) is None
    assert sent == [[b"one", b"two"]]


def test_a_status_end_a_full_batch_or_the_close_sends_at_once() -> None:
    sent: list[list[bytes | None]] = []
    batch = StatusBatch(sent.append, Clock())
    batch.status(b"last")
    batch.end()  # the solve's steps are written as its Status stream ends
    batch.status(b"next stream")
    assert batch.after_pass(False) is None
    assert sent == [[b"last", None, b"next stream"]]
    big = bytes(STATUS_BATCH_BYTES // 2)
    batch.status(big)
    assert batch.after_pass(False) is not None
    batch.status(big)  # a build printing fast: the batch holds at most STATUS_BATCH_BYTES
    assert batch.after_pass(False) is None and sent[-1] == [big, big]
    batch.status(b"tail")
    assert batch.after_pass(True) is None and sent[-1] == [b"tail"]  # the connection closes
