"""Hostile input against a real `opendepot serve` with two API workers: nothing a caller sends may crash a
worker, exhaust its memory, or get a 5xx, an `internal` code or a traceback in the log.

Figures this file asserts (issue 14):
- a 28 KB JSON body nested 14,000 deep (which segfaulted a worker in the protobuf JSON decoder) is a 400,
  with and without a token, in every JSON content type, and both workers live on;
- 10 MiB of gzip bombs (each 10 KiB expanding to 100 MiB) raise no worker's RSS by more than 64 MiB;
- 10,000 random requests across every RPC path: 0 5xx, 0 `internal`/`unknown`, 0 tracebacks, same workers."""

from __future__ import annotations

import base64
import gzip
import json
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from opendepot.api.rpc.services import method_paths
from tests.support.server import Server

from .processes import alive, api_workers, rss_bytes

DEEP = b'{"projectId":' + b"[" * 14000 + b"]" * 14000 + b"}"
# An empty gzip member, then the deep document: the guard once expanded only the first member.
DEEP_BEHIND = gzip.compress(b"") + gzip.compress(DEEP)
RSS_GROWTH_LIMIT = 64 * 1024 * 1024
HOSTILE_REQUESTS = int(os.environ.get("OPENDEPOT_HOSTILE_REQUESTS", "10000"))
PATHS = sorted(method_paths())


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data_dir = tmp_path_factory.mktemp("hostile") / "data"
    srv = Server(data_dir=data_dir, database_url=None, extra_args=["--workers", "2"]).start(timeout=120)
    try:
        yield srv
    finally:
        srv.stop()


def workers_of(server: Server) -> list[int]:
    assert server.process is not None
    workers = api_workers(server.process.pid)
    assert len(workers) == 2, workers
    return workers


def envelope(payload: bytes, flags: int = 0) -> bytes:
    return bytes([flags]) + len(payload).to_bytes(4, "big") + payload


def end_stream_code(body: bytes) -> str | None:
    """The error code in a Connect streaming response's end message, if any."""
    offset = 0
    while offset + 5 <= len(body):
        flags, length = body[offset], int.from_bytes(body[offset + 1 : offset + 5], "big")
        payload = body[offset + 5 : offset + 5 + length]
        offset += 5 + length
        if flags & 0x02:
            error = json.loads(payload or b"{}").get("error")
            return None if error is None else str(error.get("code"))
    return None


def test_deeply_nested_json_is_refused_and_no_worker_dies(server: Server) -> None:
    _org, token = server.new_organization()
    before = workers_of(server)
    cases = [
        ("/depot.core.v1.ProjectService/GetProject", "application/json", DEEP, None),
        ("/depot.core.v1.ProjectService/GetProject", "application/json", DEEP, token),
        ("/depot.core.v1.ProjectService/GetProject", "application/json", gzip.compress(DEEP), token),
        ("/depot.cli.v1beta1.LoginService/FinishLogin", "application/connect+json", envelope(DEEP), None),
        ("/depot.cli.v1.BuildService/ReportStatusStream", "application/connect+json", envelope(DEEP), token),
        ("/depot.core.v1.ProjectService/GetProject", "application/connect+json", envelope(DEEP), token),
        ("/depot.core.v1.ProjectService/GetProject", "application/json", DEEP_BEHIND, token),
        (
            "/depot.cli.v1beta1.LoginService/FinishLogin",
            "application/connect+json",
            envelope(DEEP_BEHIND, 1),
            None,
        ),
        (
            "/depot.cli.v1.BuildService/ReportStatusStream",
            "application/connect+json",
            envelope(DEEP_BEHIND, 1),
            token,
        ),
    ]
    with httpx.Client(timeout=30) as client:
        for _round in range(3):
            for path, content_type, body, bearer in cases:
                headers = {"content-type": content_type}
                if bearer:
                    headers["authorization"] = f"Bearer {bearer}"
                if body[:2] == b"\x1f\x8b":
                    headers["content-encoding"] = "gzip"
                if body[:1] == b"\x01":  # a compressed stream message
                    headers["connect-content-encoding"] = "gzip"
                r = client.post(server.url + path, content=body, headers=headers)
                assert r.status_code < 500, (path, r.status_code, r.content[:200])
                if r.status_code == 415:  # a unary method spoken to as a stream: refused by type
                    continue
                code = r.json()["code"] if r.status_code != 200 else end_stream_code(r.content)
                refused = ("invalid_argument", "unauthenticated", "resource_exhausted")
                assert code in refused, (path, r.status_code, r.content[:200])
        ok = client.post(
            server.url + "/depot.core.v1.ProjectService/ListProjects",
            content=b"{}",
            headers={"content-type": "application/json", "authorization": f"Bearer {token}"},
        )
        assert ok.status_code == 200
    after = workers_of(server)
    assert after == before and all(alive(p) for p in after)
    assert "Segmentation fault" not in server.log_text()


def test_gzip_bombs_do_not_grow_the_workers(server: Server) -> None:
    _org, token = server.new_organization()
    bomb = gzip.compress(b"\0" * (100 * 1024 * 1024), compresslevel=9)  # ~100 KiB on the wire
    small_bomb = gzip.compress(b"\0" * (10 * 1024 * 1024), compresslevel=9)  # ~10 KiB: under the login bound
    assert len(small_bomb) < 16 * 1024
    workers = workers_of(server)
    rss_before = {p: rss_bytes(p) for p in workers}
    sent = 0
    with httpx.Client(timeout=30) as client:
        while sent < 10 * 1024 * 1024:
            for bearer in (None, token):
                headers = {"content-type": "application/proto", "content-encoding": "gzip"}
                if bearer:
                    headers["authorization"] = f"Bearer {bearer}"
                r = client.post(
                    server.url + "/depot.core.v1.ProjectService/ListProjects", content=bomb, headers=headers
                )
                assert r.status_code in (401, 429), (r.status_code, r.content[:200])
                sent += len(bomb)
            # The public login RPCs expand at most their 16 KiB bound for a caller without a token.
            for path, content_type, body in (
                ("/depot.cli.v1beta1.LoginService/StartLogin", "application/proto", bomb),
                (
                    "/depot.cli.v1beta1.LoginService/FinishLogin",
                    "application/connect+proto",
                    envelope(bomb, 1),
                ),
                # Behind an empty first member (the guard once expanded only that one).
                (
                    "/depot.cli.v1beta1.LoginService/StartLogin",
                    "application/proto",
                    gzip.compress(b"") + bomb,
                ),
                (
                    "/depot.cli.v1beta1.LoginService/FinishLogin",
                    "application/connect+proto",
                    envelope(gzip.compress(b"") + small_bomb, 1),
                ),
            ):
                headers = {"content-type": content_type}
                if content_type == "application/proto":
                    headers["content-encoding"] = "gzip"
                else:
                    headers["connect-content-encoding"] = "gzip"
                r = client.post(server.url + path, content=body, headers=headers)
                code = r.json()["code"] if r.status_code != 200 else end_stream_code(r.content)
                assert code == "resource_exhausted", (path, r.status_code, r.content[:200])
                sent += len(body)
    rss_after = {p: rss_bytes(p) for p in workers}
    growth = {p: rss_after[p] - rss_before[p] for p in workers}
    print(f"gzip bombs: {sent} bytes sent; RSS before {rss_before}, after {rss_after}")
    assert all(g < RSS_GROWTH_LIMIT for g in growth.values()), growth
    assert workers_of(server) == workers


CONTENT_TYPES = [
    "application/proto",
    "application/json",
    "application/json; charset=utf-8",
    "application/connect+proto",
    "application/connect+json",
    "application/grpc",
    "application/grpc+proto",
    "application/grpc+json",
    "application/grpc-web+proto",
    "application/grpc-web-text",
    "text/plain",
    "",
]


def forged_page_token(rng: random.Random) -> str:
    payloads = [
        {"l": "projects", "k": ["9999-12-31T23:59:59", "x\0y"]},
        {"l": "projects", "k": ["0001-01-01T00:00:00+23:59", "a"]},
        {"l": "builds", "k": ["9999-12-31T23:59:59-23:00", "a"]},
        {"l": "images", "k": ["2020-01-01T00:00:00", 5]},
        {"l": "project-usage", "k": ["2020-01-01T00:00:00", "\0"]},
        {"l": "builds", "k": [123, None]},
        {"l": ["x"], "k": "ab"},
        {"k": ["2020-01-01T00:00:00+14:00", "a" * 200]},
        [[[[[[[]]]]]]],
        "just a string",
    ]
    raw = json.dumps(rng.choice(payloads)).encode()
    choice = rng.randrange(4)
    if choice == 0:
        return base64.urlsafe_b64encode(raw).decode()
    if choice == 1:
        return rng.randbytes(40).hex()
    if choice == 2:
        return "%%%" + "\u00ff" * 10
    return base64.urlsafe_b64encode(b"[" * 300 + b"]" * 300).decode()


def random_json(rng: random.Random, project_id: str) -> bytes:
    fields = {
        "projectId": rng.choice([project_id, "", "\0", "x" * 300, "../../etc", 5, None, []]),
        "pageSize": rng.choice([-1, 0, 1, 2**31 - 1, "lots", 1.5]),
        "pageToken": forged_page_token(rng),
        "buildId": rng.choice(["", "nope", "\0\0", {"a": 1}]),
        "platform": rng.choice(["BUILDER_PLATFORM_ARM64", "NOT_AN_ENUM", 99, -1]),
        "status": rng.choice([7, "STATUS_BOGUS", 2**40]),
        "hardware": rng.choice(["HARDWARE_32X64", "HARDWARE_NONE", 1e300]),
        "name": rng.choice(["\ud800", "ok", "\u202e" * 3]),
    }
    chosen = dict(rng.sample(sorted(fields.items()), rng.randrange(1, len(fields) + 1)))
    return json.dumps(chosen).encode()


def hostile_request(rng: random.Random, path: str, tokens: list[str], project_id: str) -> httpx.Request:
    content_type = rng.choice(CONTENT_TYPES)
    headers: list[tuple[str, bytes | str]] = []
    if content_type:
        headers.append(("content-type", content_type))
    bearer = rng.choice([None, "junk", "Bearer", "Bearer " + "x" * 9000, *[f"Bearer {t}" for t in tokens]])
    if bearer:
        headers.append(("authorization", bearer))
    shape = rng.randrange(10)
    body: bytes
    if shape == 0:
        body = rng.randbytes(rng.randrange(0, 4096))
    elif shape == 1:
        body = DEEP
    elif shape == 2:
        body = b"\0" * (5 * 1024 * 1024) if rng.random() < 0.02 else rng.randbytes(70_000)
    elif shape == 3:
        headers.append(("content-encoding", rng.choice(["gzip", "br", "zstd", "deflate"])))
        body = gzip.compress(b"{" * 2000 + b"}" * 2000) if rng.random() < 0.5 else rng.randbytes(100)
    elif shape == 4:
        headers.append(("x-opendepot-test", b"\xff\xfe\x80bad"))
        body = random_json(rng, project_id)
    elif shape == 5:
        payload = random_json(rng, project_id)
        flags = rng.choice([0, 0, 1, 2, 0x80])
        body = envelope(payload, flags)
        if rng.random() < 0.3:
            body = body[: rng.randrange(len(body) + 1)]
    elif shape == 6:
        body = envelope(rng.randbytes(10), 0)[:5] + b"\xff" * 4  # a header claiming a 4 GiB message
        body = b"\x00\xff\xff\xff\xff" + rng.randbytes(64)
    else:
        body = random_json(rng, project_id)
    if rng.random() < 0.05:
        headers.append(("connect-timeout-ms", rng.choice(["-1", "abc", "99999999999999999999"])))
    if rng.random() < 0.03:
        headers.append(("grpc-timeout", rng.choice(["1n", "zzz", "99999999999H"])))
    method = "GET" if rng.random() < 0.03 else "POST"
    query = "?encoding=json&message=" + "[" * 500 if method == "GET" else ""
    raw = [(k.encode(), v if isinstance(v, bytes) else v.encode()) for k, v in headers]
    return httpx.Request(method, path + query, headers=raw, content=body)


def bad_outcome(response: httpx.Response) -> str | None:
    if response.status_code == 501 and response.json().get("code") == "unimplemented":
        return None  # Connect's own status for `unimplemented` (depot push), not a server fault
    if response.status_code >= 500:
        return f"HTTP {response.status_code}"
    if response.headers.get("grpc-status") in ("2", "13"):
        return f"grpc-status {response.headers['grpc-status']}"
    if response.headers.get("content-type", "").startswith("application/connect+"):
        code = end_stream_code(response.content)
        if code in ("internal", "unknown"):
            return f"end-stream {code}"
    elif response.headers.get("content-type", "").startswith("application/json"):
        try:
            code = json.loads(response.content).get("code")
        except (ValueError, AttributeError):
            code = None
        if code in ("internal", "unknown"):
            return f"code {code}"
    return None


def test_ten_thousand_hostile_requests(server: Server) -> None:
    _org, token = server.new_organization()
    with httpx.Client(timeout=30) as client:
        r = client.post(
            server.url + "/depot.core.v1.ProjectService/CreateProject",
            json={"name": "hostile"},
            headers={"authorization": f"Bearer {token}"},
        )
        assert r.status_code == 200, r.text
        project_id = r.json()["project"]["projectId"]
    workers = workers_of(server)
    outcomes: Counter[str] = Counter()
    bad: list[str] = []
    lock = threading.Lock()
    threads = 4
    per_thread = HOSTILE_REQUESTS // threads
    started = time.monotonic()

    def run(seed: int) -> None:
        rng = random.Random(seed)
        http2 = seed % 2 == 1  # half the traffic over h2c (prior knowledge), half over HTTP/1.1
        with httpx.Client(base_url=server.url, timeout=60, http1=not http2, http2=http2) as client:
            for i in range(per_thread):
                path = PATHS[(seed * per_thread + i) % len(PATHS)]
                request = hostile_request(rng, path, [token], project_id)
                request = client.build_request(
                    request.method, str(request.url), headers=request.headers, content=request.content
                )
                try:
                    response = client.send(request)
                    verdict = bad_outcome(response)
                    key = str(response.status_code)
                except httpx.TransportError as exc:
                    verdict, key = None, f"transport:{type(exc).__name__}"
                    if os.environ.get("OPENDEPOT_HOSTILE_DEBUG"):
                        print("transport", http2, path, request.headers, len(request.content), exc)
                with lock:
                    outcomes[key] += 1
                    if verdict:
                        bad.append(f"{path} {request.headers.get('content-type')}: {verdict}")

    pool = [threading.Thread(target=run, args=(seed,)) for seed in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    elapsed = time.monotonic() - started
    print(f"hostile run: {sum(outcomes.values())} requests in {elapsed:.1f}s: {dict(outcomes)}")
    assert sum(outcomes.values()) >= HOSTILE_REQUESTS - threads
    assert not bad, sorted(set(bad))[:40]
    transport = sum(n for k, n in outcomes.items() if k.startswith("transport"))
    assert transport <= sum(outcomes.values()) // 100, outcomes
    assert workers_of(server) == workers
    log = server.log_text()
    assert "Traceback" not in log and "unexpected error" not in log, log[-3000:]
    assert elapsed < 600


@pytest.mark.parametrize("http2", [False, True], ids=["http1.1", "h2c"])
def test_well_formed_requests_still_work(server: Server, http2: bool) -> None:
    """The guard passes a valid body through whole, in every form (the CLI speaks h2c, binary protobuf)."""
    _org, token = server.new_organization()
    with httpx.Client(base_url=server.url, timeout=30, http1=not http2, http2=http2) as client:
        auth = {"authorization": f"Bearer {token}"}
        created = client.post(
            "/depot.core.v1.ProjectService/CreateProject", json={"name": "passes"}, headers=auth
        )
        assert created.status_code == 200, created.text
        project = created.json()["project"]["projectId"]
        zipped = client.post(
            "/depot.core.v1.ProjectService/GetProject",
            content=gzip.compress(json.dumps({"projectId": project}).encode()),
            headers={**auth, "content-type": "application/json", "content-encoding": "gzip"},
        )
        assert zipped.status_code == 200 and zipped.json()["project"]["name"] == "passes", zipped.text
        streamed = client.post(
            "/depot.core.v1.ProjectService/GetProject",
            content=envelope(json.dumps({"projectId": project}).encode()),
            headers={**auth, "content-type": "application/connect+json"},
        )
        assert streamed.status_code in (200, 415), streamed.text


def test_log_lines_of_refusals_are_one_line(server: Server) -> None:
    with httpx.Client(timeout=30) as client:
        client.post(
            server.url + "/depot.core.v1.ProjectService/ListProjects",
            content=b"{}",
            headers=[(b"content-type", b"application/json"), (b"x-bad", b"\xff")],
        )
    lines = [line for line in server.log_text().splitlines() if "not valid UTF-8" in line]
    assert lines and all(json.loads(line)["code"] == "invalid_argument" for line in lines)


def test_data_dir_database_and_logs_are_private(server: Server) -> None:
    mode = Path(server.data_dir).stat().st_mode & 0o777
    assert mode == 0o700, oct(mode)
    files = [p for p in Path(server.data_dir).rglob("*") if p.is_file()]
    assert any(p.name == "opendepot.db" for p in files) and any(p.parent.name == "logs" for p in files)
    readable = {str(p): oct(p.stat().st_mode & 0o777) for p in files if p.stat().st_mode & 0o077}
    assert not readable, readable
