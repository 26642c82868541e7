"""The gateway's relay thread alone: one small message's round trip through it, with and without many other
connections open (each build holds one or more for its whole session).

A TLS client sends 200 bytes and waits for them back, through a `RelayHub` to a unix-socket echo, as a
build's gRPC messages go through the gateway to its builder. With --baseline-src, a second relay runs that
code (e.g. `git archive <commit> src | tar -x -C /tmp/base`), and runs alternate between the two.

    ./dev bench relay [--runs N] [--idle 0,200] [--pings N] [--baseline-src DIR]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MESSAGE = 200


def serve_echo(path: str) -> None:
    """The builder's stand-in: echoes each connection on a unix socket."""
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen(1024)

    def echo(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    while True:
        conn, _ = listener.accept()
        threading.Thread(target=echo, args=(conn,), daemon=True).start()


def serve_relay(echo: str, cert: str, key: str) -> None:
    """A TLS listener whose connections a RelayHub relays to the echo (the code on sys.path's opendepot)."""
    import asyncio

    from opendepot.gateway.relay import Relay, RelayHub

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.num_tickets = 0
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1024)
    print(listener.getsockname()[1], flush=True)

    async def main() -> None:
        hub, loop = RelayHub(), asyncio.get_running_loop()
        listener.setblocking(False)
        while True:
            raw, _ = await loop.sock_accept(listener)
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            raw.setblocking(True)
            client = context.wrap_socket(raw, server_side=True)
            client.setblocking(False)
            builder = socket.socket(socket.AF_UNIX)
            builder.connect(echo)
            builder.setblocking(False)
            relay = Relay("bench", client, builder)
            relay.prepare(loop, lambda: None)
            hub.add(relay)

    asyncio.run(main())


def self_signed(directory: Path) -> tuple[str, str]:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    from opendepot.pki.authority import cert_pem, certificate_builder, common_name, key_pem

    key = ec.generate_private_key(ec.SECP256R1())
    name = common_name("bench")
    cert = certificate_builder(name, name, key, dt.timedelta(days=1)).sign(key, hashes.SHA256())
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_text(cert_pem(cert))
    key_path.write_text(key_pem(key))
    return str(cert_path), str(key_path)


def round_trips(port: int, idle: int, pings: int) -> list[float]:
    """Seconds per round trip of one connection, with `idle` other connections open through the relay."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE

    def connect() -> ssl.SSLSocket:
        raw = socket.create_connection(("127.0.0.1", port))
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return context.wrap_socket(raw)

    others = []
    try:
        for _ in range(idle):
            other = connect()
            other.sendall(b"x")
            other.recv(10)  # relayed: the hub holds it
            others.append(other)
        client, message, times = connect(), b"m" * MESSAGE, []
        with client:
            for i in range(pings + 200):
                start = time.perf_counter()
                client.sendall(message)
                got = 0
                while got < MESSAGE:
                    got += len(client.recv(65536))
                if i >= 200:  # after a warm-up
                    times.append(time.perf_counter() - start)
        return times
    finally:
        for other in others:
            other.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--idle", default="0,200", help="other connections open, comma-separated")
    parser.add_argument("--pings", type=int, default=3000)
    parser.add_argument("--baseline-src", type=Path)
    parser.add_argument("--serve", choices=["echo", "relay"], help=argparse.SUPPRESS)
    parser.add_argument("--echo", help=argparse.SUPPRESS)
    parser.add_argument("--cert", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve == "echo":
        serve_echo(args.echo)
        return
    if args.serve == "relay":
        serve_relay(args.echo, *args.cert)
        return

    idles = [int(n) for n in args.idle.split(",")]
    sides = {"relay": ROOT / "src"}
    if args.baseline_src:
        sides["@baseline"] = args.baseline_src.resolve()
    processes: list[subprocess.Popen[str]] = []
    with tempfile.TemporaryDirectory(prefix="opendepot-bench-relay-") as tmp:
        work = Path(tmp)
        cert, key = self_signed(work)
        echo = str(work / "echo.sock")
        me = [sys.executable, __file__]
        try:
            processes.append(subprocess.Popen([*me, "--serve", "echo", "--echo", echo], text=True))
            while not os.path.exists(echo):
                time.sleep(0.05)
            ports = {}
            for side, src in sides.items():
                relay = subprocess.Popen(
                    [*me, "--serve", "relay", "--echo", echo, "--cert", cert, key],
                    env={**os.environ, "PYTHONPATH": str(src)},
                    stdout=subprocess.PIPE,
                    text=True,
                )
                processes.append(relay)
                assert relay.stdout is not None
                ports[side] = int(relay.stdout.readline())
            p50s: dict[tuple[str, int], list[float]] = {(s, n): [] for s in sides for n in idles}
            p95s: dict[tuple[str, int], list[float]] = {(s, n): [] for s in sides for n in idles}
            for run in range(args.runs):
                order = list(sides) if run % 2 == 0 else list(reversed(sides))
                for idle in idles:
                    for side in order:
                        times = sorted(round_trips(ports[side], idle, args.pings))
                        p50s[side, idle].append(times[len(times) // 2] * 1e6)
                        p95s[side, idle].append(times[int(len(times) * 0.95)] * 1e6)
                print(
                    f"  run {run + 1}: "
                    + ", ".join(f"{s} idle {n} p50 {p50s[s, n][-1]:.0f} µs" for s in sides for n in idles)
                )
        finally:
            for process in processes:
                process.kill()
                process.wait()

    load = os.getloadavg()
    print(
        f"\nbench/relay.py: {os.cpu_count()} cores, load average {load[0]:.2f} at the end; {args.runs} runs "
        f"alternating, {args.pings} round trips of {MESSAGE} bytes each (TLS client -> relay -> unix echo)"
    )
    print("one round trip, median of each run's p50 (min / median / max of those), and of the p95s:")
    for idle in idles:
        for side in sides:
            v = p50s[side, idle]
            print(
                f"  {side:10} {idle:4} other connections open: p50 {min(v):5.0f} / "
                f"{statistics.median(v):5.0f} / {max(v):5.0f} µs   "
                f"p95 median {statistics.median(p95s[side, idle]):5.0f} µs"
            )
    if "@baseline" in sides:
        for idle in idles:
            pairs = [a / b for a, b in zip(p50s["relay", idle], p50s["@baseline", idle], strict=True)]
            ratio = statistics.median(p50s["relay", idle]) / statistics.median(p50s["@baseline", idle])
            print(
                f"  relay / @baseline p50, {idle} other connections: {ratio:.2f}x "
                f"(runs {min(pairs):.2f}-{max(pairs):.2f})"
            )


if __name__ == "__main__":
    main()
