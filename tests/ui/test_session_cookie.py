"""The session cookie over HTTP: HttpOnly and SameSite=Strict always, Secure when the server runs TLS; signing
out ends the session on the server, not only in the browser."""

from __future__ import annotations

import re
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.server import Server
from tests.support.tls import make_server_cert


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    root = tmp_path_factory.mktemp("tls-ui")
    ca, cert, key = make_server_cert(root / "certs")
    srv = Server(data_dir=root / "data", database_url=None, tls=(cert, key)).start()
    try:
        yield srv, ca
    finally:
        srv.stop()


def sign_in(client: httpx.Client, url: str, token: str) -> httpx.Response:
    form = client.get(f"{url}/sign-in")
    match = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert match, form.text
    return client.post(f"{url}/sign-in", data={"csrf": match[1], "token": token, "next": "/projects"})


def test_session_cookie_is_secure_under_tls_and_sign_out_ends_it(tls_server: tuple[Server, Path]) -> None:
    srv, ca = tls_server
    with httpx.Client(verify=ssl.create_default_context(cafile=str(ca)), timeout=30) as client:
        signed = sign_in(client, srv.url, srv.admin_token)
        assert signed.status_code == 303 and signed.headers["location"] == "/projects"
        cookie = next(v for k, v in signed.headers.multi_items() if k == "set-cookie" and "session=" in v)
        assert {"HttpOnly", "SameSite=Strict", "Secure"} <= {part.strip() for part in cookie.split(";")}
        stolen = cookie.split(";", 1)[0]
        page = client.get(f"{srv.url}/projects")
        assert page.status_code == 200 and "Sign out" in page.text
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert csrf
        # A change without the CSRF token is refused even with the cookie.
        assert client.post(f"{srv.url}/sign-out", data={}).status_code == 403
        assert client.post(f"{srv.url}/sign-out", data={"csrf": csrf[1]}).status_code == 303
    # The old cookie no longer opens anything: the session is gone from the store.
    with httpx.Client(verify=ssl.create_default_context(cafile=str(ca)), timeout=30) as other:
        again = other.get(f"{srv.url}/projects", headers={"cookie": stolen})
        assert again.status_code == 303 and again.headers["location"].startswith("/sign-in")


def test_bad_input_is_answered_not_crashed(ui_server: Server) -> None:
    srv = ui_server
    with httpx.Client(timeout=30) as client:
        sign_in(client, srv.url, srv.admin_token)
        for path, status in (
            ("/projects/not*an*id", 404),
            ("/projects/bbbbbbbbbb", 404),
            ("/projects/bbbbbbbbbb/builds/cccccccccc/log?step=x", 404),
            ("/usage?from=yesterday", 400),
            ("/usage?from=2026-02-01&to=2026-01-01", 400),
            ("/static/../../etc/passwd", 404),
            ("/no-such-page", 404),
        ):
            assert client.get(f"{srv.url}{path}").status_code == status, path
        assert client.post(f"{srv.url}/projects", content=b"x" * (128 * 1024)).status_code == 413


def test_whole_numbers_are_ascii_digits_signed_in_or_shared(ui_server: Server) -> None:
    """A superscript "²" passes str.isdigit() and int() refuses it: each of these was a 500 and a traceback,
    on a shared link to anyone who has it."""
    srv = ui_server
    _org, token = srv.new_organization()

    def rpc(path: str, body: dict[str, str]) -> dict[str, Any]:
        answer = httpx.post(
            f"{srv.url}/{path}", json=body, headers={"authorization": f"Bearer {token}"}, timeout=30
        )
        assert answer.status_code == 200, answer.text
        return dict(answer.json())

    project = rpc("depot.core.v1.ProjectService/CreateProject", {"name": "digits"})["project"]["projectId"]
    build_id = rpc("depot.build.v1.BuildService/CreateBuild", {"projectId": project})["buildId"]
    build_url = f"{srv.url}/projects/{project}/builds/{build_id}"
    tracebacks = srv.log_text().count("Traceback")

    def refused_everywhere(client: httpx.Client, url: str) -> None:
        for query in ("log?step=%C2%B2", "log?step=1&after=%C2%B9", "log?step=1&limit=%E2%91%A0"):
            assert client.get(f"{url}/{query}").status_code == 400, (url, query)
        assert client.get(f"{url}/events?after=%C2%B2").status_code == 400, url
        # A header is latin-1 on the wire: 0xB2 is "²".
        assert client.get(f"{url}/events", headers={b"last-event-id": b"\xb2"}).status_code == 400, url

    with httpx.Client(timeout=30) as client:
        sign_in(client, srv.url, token)
        csrf = re.search(r'name="csrf" value="([^"]+)"', client.get(f"{srv.url}/projects").text)
        assert csrf
        for field in ("cache_gb", "cache_days"):
            settings = {"csrf": csrf[1], "cache_gb": "1", "cache_days": "1", field: "\u00b2"}
            answer = client.post(f"{srv.url}/projects/{project}/settings", data=settings)
            assert (answer.status_code, field in answer.text) == (400, True), field
        refused_everywhere(client, build_url)
        shared = client.post(f"{build_url}/share", data={"csrf": csrf[1]})
        link = re.search(r'id="share-link"[^>]*value="([^"]+)"', shared.text)
        assert link, shared.text
    with httpx.Client(timeout=30) as anonymous:
        refused_everywhere(anonymous, link[1])
    assert srv.log_text().count("Traceback") == tracebacks


def test_a_nul_in_a_path_query_or_form_is_invalid_input_on_either_store(server: Server) -> None:
    """PostgreSQL's text refuses a NUL: each of these was an internal error (a 500 page and a traceback)."""
    with httpx.Client(timeout=30) as client:
        # Before signing in: the API's login approval page looked the id up.
        anonymous = client.get(f"{server.url}/login/%00")
        assert anonymous.status_code == 404 and anonymous.json()["code"] == "not_found"
        sign_in(client, server.url, server.admin_token)
        page = client.get(f"{server.url}/projects")
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert page.status_code == 200 and csrf
        for path in (
            "/projects/%00",
            "/projects/bbbbbbbbbb/builds/%00/log",
            "/projects/bbbbbbbbbb/builds/cccccccccc/search?q=a%00",
            "/projects?cursor=%00",
        ):
            answer = client.get(f"{server.url}{path}")
            assert (answer.status_code, "Invalid input" in answer.text) == (400, True), path
        for path, form in (
            ("/projects", {"name": "a\x00b"}),
            ("/projects/%00/delete", {}),
            ("/tokens/%00/delete", {}),
            ("/projects/bbbbbbbbbb/images/delete", {"digest": "sha256:\x00"}),
        ):
            answer = client.post(f"{server.url}{path}", data={"csrf": csrf[1], **form})
            assert (answer.status_code, "Invalid input" in answer.text) == (400, True), path
        # The pages still answer.
        assert client.get(f"{server.url}/projects").status_code == 200


def test_behind_a_proxy_that_ends_tls_the_public_origin_signs_in(tmp_path: Path) -> None:
    """The browser's Origin is the proxy's https:// one while this server sees plain HTTP: with the public
    URL set to it, sign-in works and the cookies are Secure; any other origin is still refused."""
    srv = Server(data_dir=tmp_path / "data", database_url=None)
    public = f"https://127.0.0.1:{srv.port}"  # as a TLS proxy on this address would pass the Host through
    srv.extra_args = ["--public-url", public]
    srv.start()
    try:
        with httpx.Client(timeout=30) as client:
            form = client.get(f"{srv.url}/sign-in")
            pre = next(v for k, v in form.headers.multi_items() if k == "set-cookie")
            assert "Secure" in {part.strip() for part in pre.split(";")}
            csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
            assert csrf
            data = {"csrf": csrf[1], "token": srv.admin_token, "next": "/projects"}
            # httpx sends no Secure cookie over plain HTTP; the browser, on the proxy's HTTPS, does.
            cookie = {"cookie": pre.split(";", 1)[0]}
            refused = client.post(
                f"{srv.url}/sign-in", data=data, headers={**cookie, "origin": "https://elsewhere.example"}
            )
            assert refused.status_code == 403
            signed = client.post(f"{srv.url}/sign-in", data=data, headers={**cookie, "origin": public})
            assert signed.status_code == 303 and signed.headers["location"] == "/projects"
            session = next(
                v for k, v in signed.headers.multi_items() if k == "set-cookie" and "session=" in v
            )
            assert "Secure" in {part.strip() for part in session.split(";")}
    finally:
        srv.stop()
