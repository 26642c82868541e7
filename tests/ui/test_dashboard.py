"""The dashboard in a real browser: sign in, projects, a live build whose log lines appear while it runs,
CACHED steps on a rebuild, a failed build's error, log search and line permalinks, sharing, images, tokens,
usage, and the refusals (CSRF, another organization, project tokens)."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from tests.e2e.test_builds import build
from tests.e2e.test_login import Login
from tests.support.builds import builds_possible, busybox_context
from tests.support.clients import DEPOT_CLI, depot, sdk_one
from tests.support.server import Server

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page

pytestmark = pytest.mark.skipif(builds_possible() is not None, reason=str(builds_possible()))

TICKS = "for i in 1 2 3 4 5 6 7 8 9 10; do echo tick-$i; sleep 1; done"


def sign_in(context: BrowserContext, server: Server, token: str) -> Page:
    page = context.new_page()
    page.goto(f"{server.url}/projects")
    assert "/sign-in" in page.url
    page.fill("#token", token)
    page.click("form[action='/sign-in'] button")
    page.wait_for_url(f"{server.url}/projects")
    return page


@pytest.fixture(scope="module")
def org(ui_server: Server) -> tuple[str, str]:
    return ui_server.new_organization("ui-org")


@pytest.fixture(scope="module")
def signed_in(browser: Browser, ui_server: Server, org: tuple[str, str]) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = sign_in(context, ui_server, org[1])
    yield page
    context.close()


@pytest.fixture(scope="module")
def project(signed_in: Page, ui_server: Server, artifacts: Path) -> str:
    page = signed_in
    page.goto(f"{ui_server.url}/projects")
    page.fill("input[name=name]", "ui-web")
    page.select_option("select[name=hardware]", "8x16")
    page.click("text=Create project")
    page.wait_for_url(re.compile(r".*/projects/[a-z0-9]{10}$"))
    project_id = page.url.rsplit("/", 1)[1]
    page.goto(f"{ui_server.url}/projects")
    row = page.locator("tr", has_text="ui-web")
    assert "8x16" in row.inner_text()
    page.screenshot(path=artifacts / "projects.png", full_page=True)
    return project_id


def wait_for_running_build(page: Page, server: Server, project: str, known: set[str]) -> str:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        page.goto(f"{server.url}/projects/{project}")
        for link in page.locator("td a.mono").all():
            build_id = link.inner_text().strip()
            if build_id not in known:
                return build_id
        time.sleep(0.5)
    raise AssertionError("the build never showed up on the project page")


@pytest.fixture(scope="module")
def live_build(
    signed_in: Page,
    ui_server: Server,
    org: tuple[str, str],
    project: str,
    tmp_path_factory: pytest.TempPathFactory,
    artifacts: Path,
) -> str:
    """A build whose RUN step prints a line a second for 10 s, watched in the browser while it runs."""
    page = signed_in
    context_dir = busybox_context(tmp_path_factory.mktemp("live") / "ctx", TICKS)
    running = subprocess.Popen(
        [str(DEPOT_CLI), "build", "--project", project, "--progress", "plain", str(context_dir)],
        env={
            "DEPOT_API_URL": ui_server.url,
            "DEPOT_TOKEN": org[1],
            "DEPOT_NO_UPDATE_NOTIFIER": "1",
            "DEPOT_ERROR_TELEMETRY": "0",
            "HOME": "/root",
            "PATH": "/usr/bin:/bin",
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        build_id = wait_for_running_build(page, ui_server, project, set())
        page.goto(f"{ui_server.url}/projects/{project}/builds/{build_id}")
        status = page.locator("#build-status")
        # Lines arrive while the build still runs.
        page.locator(".log-line", has_text="tick-3").wait_for(timeout=30_000)
        assert status.inner_text() == "running"
        seen_while_running = page.locator(".log-line", has_text="tick-").count()
        page.screenshot(path=artifacts / "build-live.png", full_page=True)
        page.locator("#build-status.success").wait_for(timeout=60_000)
        # The header's duration is the final one, not the one when the page opened.
        assert re.fullmatch(r"[1-5][0-9]s", page.locator("#build-duration").inner_text())
        output, _ = running.communicate(timeout=60)
        assert running.returncode == 0, output
    finally:
        if running.poll() is None:
            running.kill()
    assert 3 <= seen_while_running < 10
    # Every line exactly once, in order, numbered 1..10 in the step's log.
    ticks = [t for t in page.locator(".log-line span").all_inner_texts() if t.startswith("tick-")]
    assert ticks == [f"tick-{i}" for i in range(1, 11)]
    page.screenshot(path=artifacts / "build.png", full_page=True)
    return build_id


def test_sign_in_refuses_bad_and_project_tokens(
    browser: Browser, ui_server: Server, org: tuple[str, str], project: str
) -> None:
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"{ui_server.url}/sign-in")
    page.fill("#token", "odo_not-a-real-token")
    page.click("form[action='/sign-in'] button")
    assert "invalid token" in page.locator(".error").inner_text()
    assert page.url.startswith(f"{ui_server.url}/sign-in")
    made = sdk_one(
        ui_server.url,
        "core.v1.ProjectService",
        "createToken",
        {"projectId": project, "description": "ci"},
        org[1],
    )
    project_secret = made["ok"]["secret"]
    page.fill("#token", project_secret)
    page.click("form[action='/sign-in'] button")
    assert "cannot sign in" in page.locator(".error").inner_text()
    assert page.context.cookies() == [] or all(
        c["name"] != "opendepot_session" for c in page.context.cookies()
    )
    context.close()


def test_live_build_then_cached_rebuild(
    signed_in: Page,
    ui_server: Server,
    org: tuple[str, str],
    project: str,
    live_build: str,
    tmp_path: Path,
    artifacts: Path,
) -> None:
    page = signed_in
    context_dir = busybox_context(tmp_path / "ctx", TICKS)
    code, output = build(ui_server, org[1], project, context_dir)
    assert code == 0, output
    page.goto(f"{ui_server.url}/projects/{project}")
    newest = page.locator("td a.mono").first.inner_text().strip()
    assert newest != live_build
    # Who started it: the organization token the depot CLI built with.
    assert "organization token " in page.locator("tr", has_text=newest).inner_text()
    page.goto(f"{ui_server.url}/projects/{project}/builds/{newest}")
    cached = page.locator(".step.cached", has_text="RUN")
    assert cached.count() == 1
    assert "tick-" in cached.inner_text()
    page.goto(f"{ui_server.url}/projects/{project}")
    assert page.locator("#duration-chart").is_visible()
    page.screenshot(path=artifacts / "project.png", full_page=True)


def test_failed_build_shows_its_error(
    signed_in: Page, ui_server: Server, org: tuple[str, str], project: str, tmp_path: Path, artifacts: Path
) -> None:
    page = signed_in
    context_dir = busybox_context(tmp_path / "ctx", "echo about-to-fail; exit 3")
    code, output = build(ui_server, org[1], project, context_dir)
    assert code != 0, output
    page.goto(f"{ui_server.url}/projects/{project}?status=failed")
    failed = page.locator("td a.mono").first.inner_text().strip()
    page.goto(f"{ui_server.url}/projects/{project}/builds/{failed}")
    assert page.locator("#build-status").inner_text() == "failed"
    failing = page.locator("section.failing")
    assert "exit code: 3" in failing.inner_text()
    page.screenshot(path=artifacts / "build-failed.png", full_page=True)
    # The failing step is opened: its log is on screen.
    page.locator(".log-line", has_text="about-to-fail").wait_for()


def test_search_and_line_permalink(signed_in: Page, ui_server: Server, project: str, live_build: str) -> None:
    page = signed_in
    url = f"{ui_server.url}/projects/{project}/builds/{live_build}"
    page.goto(url)
    page.fill("#search-q", "TICK-7")
    page.click("#search button")
    hit = page.locator("#search-results a", has_text="tick-7")
    hit.wait_for()
    assert "line 7" in hit.inner_text()
    hit.click()
    target = page.locator(".log-line.target")
    target.wait_for()
    assert target.inner_text().split() == ["7", "tick-7"]
    permalink = target.locator("a").get_attribute("href")
    assert permalink is not None and permalink.endswith("-L7")
    # The permalink opens the same line in a fresh page.
    page.goto("about:blank")
    page.goto(url + permalink)
    page.locator(".log-line.target", has_text="tick-7").wait_for()


def test_share_and_open_signed_out(
    signed_in: Page, browser: Browser, ui_server: Server, project: str, live_build: str, artifacts: Path
) -> None:
    page = signed_in
    page.goto(f"{ui_server.url}/projects/{project}/builds/{live_build}")
    page.click("text=Share")
    link = page.locator("#share-link").input_value()
    assert "/shared/" in link
    stranger = browser.new_context()
    shared = stranger.new_page()
    shared.goto(link)
    assert "Build" in shared.locator("h1").inner_text()
    shared.locator(".log-line", has_text="tick-10").wait_for()
    assert shared.locator("text=Sign out").count() == 0
    shared.screenshot(path=artifacts / "shared.png", full_page=True)
    page.click("text=Stop sharing")
    assert httpx.get(link).status_code == 404
    stranger.close()


def test_csrf_and_other_organizations_are_refused(
    browser: Browser, signed_in: Page, ui_server: Server, project: str, live_build: str
) -> None:
    page = signed_in
    # A change without the session's CSRF token is refused, with the cookie sent.
    forged = page.request.post(f"{ui_server.url}/projects", form={"name": "forged", "csrf": "wrong"})
    assert forged.status == 403
    page.goto(f"{ui_server.url}/projects")
    assert page.locator("text=forged").count() == 0
    # Another organization's session cannot read or change this one's project.
    _other_org, other_token = ui_server.new_organization("ui-other")
    other = browser.new_context()
    other_page = sign_in(other, ui_server, other_token)
    response = other_page.goto(f"{ui_server.url}/projects/{project}/builds/{live_build}")
    assert response is not None and response.status == 403
    response = other_page.goto(f"{ui_server.url}/projects/{project}")
    assert response is not None and response.status == 403
    csrf = other_page.locator("form[action='/sign-out'] input[name=csrf]").input_value()
    deleted = other_page.request.post(f"{ui_server.url}/projects/{project}/reset", form={"csrf": csrf})
    assert deleted.status == 403
    log = other_page.request.get(f"{ui_server.url}/projects/{project}/builds/{live_build}/log?step=1")
    assert log.status == 403
    other.close()


def test_tokens_create_and_revoke(signed_in: Page, ui_server: Server, project: str, artifacts: Path) -> None:
    page = signed_in
    page.goto(f"{ui_server.url}/projects/{project}")
    page.fill("form[action$='/tokens'] input[name=description]", "ci deploys")
    page.click("text=Create token")
    secret = page.locator("#secret").input_value()
    assert secret.startswith("odp_")
    assert depot(ui_server.url, secret, "projects", "list").returncode == 0
    page.goto(f"{ui_server.url}/tokens")
    page.screenshot(path=artifacts / "tokens.png", full_page=True)
    row = page.locator("tr", has_text="ci deploys")
    row.locator("button", has_text="Revoke").click()
    page.wait_for_url(f"{ui_server.url}/tokens")
    assert page.locator("tr", has_text="ci deploys").count() == 0
    refused = depot(ui_server.url, secret, "projects", "list")
    assert refused.returncode != 0 and "unauthenticated" in refused.stderr.lower()


def test_images_list_and_delete_a_tag(
    signed_in: Page, ui_server: Server, org: tuple[str, str], project: str, tmp_path: Path, artifacts: Path
) -> None:
    page = signed_in
    context_dir = busybox_context(tmp_path / "ctx", "echo image > /built")
    code, output = build(ui_server, org[1], project, context_dir, "--save", "--save-tag", "ui-tag")
    assert code == 0, output
    deadline = time.monotonic() + 30
    while True:
        page.goto(f"{ui_server.url}/projects/{project}/images")
        if page.locator("tr", has_text="ui-tag").count():
            break
        assert time.monotonic() < deadline, "the saved image never showed up"
        time.sleep(0.5)
    row = page.locator("tr", has_text="ui-tag")
    assert (
        f"docker pull {ui_server.registry_host}/{project}:ui-tag" in row.locator("input.pull").input_value()
    )
    page.screenshot(path=artifacts / "images.png", full_page=True)
    row.locator("button", has_text="Delete").click()
    page.wait_for_url(f"{ui_server.url}/projects/{project}/images")
    assert page.locator("tr", has_text="ui-tag").count() == 0


def test_usage_page_and_csv(
    signed_in: Page, ui_server: Server, project: str, live_build: str, artifacts: Path
) -> None:
    page = signed_in
    page.goto(f"{ui_server.url}/usage")
    assert page.locator("tr", has_text="ui-web").count() == 1
    assert page.locator("#usage-chart").is_visible() and page.locator("#daily-chart").is_visible()
    daily = json.loads(page.locator("#daily-chart-data").inner_text())
    assert sum(daily["builds"]) >= 1 and len(daily["labels"]) >= 30
    page.screenshot(path=artifacts / "usage.png", full_page=True)
    with page.expect_download() as download:
        page.click("text=Download CSV")
    csv_text = Path(download.value.path()).read_text()
    header, *rows = csv_text.strip().splitlines()
    assert header.startswith("project_id,project,builds")
    assert any(r.startswith(f"{project},ui-web,") for r in rows)


def test_phone_width_and_no_outside_requests(
    browser: Browser, ui_server: Server, org: tuple[str, str], project: str, live_build: str, artifacts: Path
) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844})
    page = sign_in(context, ui_server, org[1])
    requested: list[str] = []
    page.on("request", lambda r: requested.append(r.url))
    violations: list[str] = []
    page.on("console", lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None)
    page.goto(f"{ui_server.url}/projects/{project}/builds/{live_build}")
    page.locator(".log-line", has_text="tick-1").first.wait_for()
    assert page.evaluate("document.documentElement.scrollWidth") <= 390 + 1
    page.screenshot(path=artifacts / "build-phone.png", full_page=True)
    page.goto(f"{ui_server.url}/projects/{project}")
    assert all(u.startswith(ui_server.url) or u.startswith("data:") for u in requested), requested
    assert violations == []
    context.close()


def test_the_url_the_depot_cli_prints_opens_the_build(
    signed_in: Page, ui_server: Server, org: tuple[str, str], project: str, tmp_path: Path
) -> None:
    code, output = build(ui_server, org[1], project, busybox_context(tmp_path / "ctx", "echo summary"))
    assert code == 0, output
    match = re.search(rf"({re.escape(ui_server.url)}/projects/{project}/builds/([a-z0-9]{{10}}))", output)
    assert match, output
    response = signed_in.goto(match[1])
    assert response is not None and response.status == 200
    assert match[2] in signed_in.locator("h1").inner_text()
    assert signed_in.locator(".step", has_text="echo summary").count() == 1


def test_depot_login_is_approved_in_the_dashboard(
    signed_in: Page, ui_server: Server, tmp_path: Path, artifacts: Path
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    login = Login(ui_server, home)
    try:
        page = signed_in
        page.goto(login.url)
        page.screenshot(path=artifacts / "login-approval.png", full_page=True)
        page.check("input[name='confirm']")  # the approver confirms the request's code, origin and time
        page.click("form[action^='/login/'] button")
        assert "Login approved" in page.locator("h1").inner_text()
        code, output = login.finish()
        assert code == 0, output
    finally:
        if login.process.poll() is None:
            login.process.kill()
    # The CLI saved a user token of this organization: it works.
    user_token = login.saved_token()
    listed = depot(ui_server.url, user_token, "projects", "list")
    assert listed.returncode == 0, listed.stderr
    # The Tokens page lists it among the organization's tokens; revoking it there locks the CLI out at once.
    page.goto(f"{ui_server.url}/tokens")
    user_rows = page.locator("table[aria-labelledby='ot-h'] tbody tr", has_text="user")
    assert user_rows.count() == 1
    page.screenshot(path=artifacts / "tokens.png", full_page=True)
    user_rows.locator("button").click()
    page.wait_for_url(re.compile(r".*/tokens$"))
    assert page.locator("table[aria-labelledby='ot-h'] tbody tr", has_text="user").count() == 0
    refused = depot(ui_server.url, user_token, "projects", "list")
    assert refused.returncode != 0 and "unauthenticated" in refused.stderr + refused.stdout


def test_trust_policies_add_refuse_bad_input_and_remove(
    signed_in: Page, ui_server: Server, project: str
) -> None:
    page = signed_in
    page.goto(f"{ui_server.url}/projects/{project}")
    form = page.locator("form[action$='/trust-policies']")
    form.locator("select[name=provider]").select_option("github")
    form.locator("input[name=first]").fill("acme")
    form.locator("input[name=second]").fill("acme/web")
    form.locator("button").click()
    policy = page.locator(".policies li", has_text="repository=acme/web")
    assert policy.count() == 1
    # Bad input is a 400 naming the field, and nothing is added.
    form = page.locator("form[action$='/trust-policies']")
    form.locator("input[name=first]").fill("acme")
    form.locator("input[name=second]").fill("other/web")
    with page.expect_response(lambda r: r.url.endswith("/trust-policies")) as answer:
        form.locator("button").click()
    assert answer.value.status == 400
    assert "github.repository" in page.locator(".error").inner_text()
    page.goto(f"{ui_server.url}/projects/{project}")
    assert page.locator(".policies li", has_text="github:").count() == 1
    page.locator(".policies li", has_text="acme/web").locator("button").click()
    page.wait_for_url(re.compile(rf".*/projects/{project}#trust-h$"))
    assert page.locator(".policies li", has_text="acme/web").count() == 0


def sse_lines(body: str) -> list[tuple[int, str]]:
    """(line id, text) of every log line in an event stream's `log` events."""
    found: list[tuple[int, str]] = []
    for block in body.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if fields.get("event") == "log":
            found += [(int(i), text) for i, _step, text in json.loads(fields["data"])]
    return found


def test_event_stream_resumes_after_last_event_id(
    signed_in: Page, ui_server: Server, project: str, live_build: str
) -> None:
    url = f"{ui_server.url}/projects/{project}/builds/{live_build}/events?after=0"
    whole = signed_in.request.get(url)
    assert whole.status == 200 and whole.headers["content-type"].startswith("text/event-stream")
    lines = sse_lines(whole.text())
    ticks = [text for _id, text in lines if text.startswith("tick-")]
    assert ticks == [f"tick-{i}" for i in range(1, 11)]
    end = whole.text().split("event: end\ndata: ", 1)[1].split("\n", 1)[0]
    assert json.loads(end)["status"] == "success"
    # A reconnect names the last line it got: the stream goes on right after it, nothing lost or repeated.
    cut = next(i for i, (_id, text) in enumerate(lines) if text == "tick-4")
    resumed = signed_in.request.get(url, headers={"Last-Event-ID": str(lines[cut][0])})
    assert sse_lines(resumed.text()) == lines[cut + 1 :]


def test_settings_reset_and_delete_with_confirmation(signed_in: Page, ui_server: Server) -> None:
    page = signed_in
    page.goto(f"{ui_server.url}/projects")
    page.fill("form[action='/projects'] input[name=name]", "ui-doomed")
    page.click("text=Create project")
    page.wait_for_url(re.compile(r".*/projects/[a-z0-9]{10}$"))
    doomed = page.url.rsplit("/", 1)[1]
    settings = page.locator("form[action$='/settings']")
    settings.locator("input[name=name]").fill("ui-renamed")
    settings.locator("select[name=hardware]").select_option("4x4")
    settings.locator("input[name=cache_gb]").fill("7")
    settings.locator("input[name=cache_days]").fill("3")
    settings.locator("button").click()
    assert "4x4 · cache 7.0 GiB, 3 days" in page.locator("main p.muted").first.inner_text()
    page.click("text=Reset cache")
    page.wait_for_url(re.compile(rf".*/projects/{doomed}\?reset=1$"))
    page.click("text=Delete project…")
    page.fill("#confirm_name", "not-its-name")
    page.click("form[action$='/delete'] button")
    assert "Type the project's name" in page.locator(".error").inner_text()
    page.fill("#confirm_name", "ui-renamed")
    page.click("form[action$='/delete'] button")
    page.wait_for_url(f"{ui_server.url}/projects")
    assert page.locator("tr", has_text="ui-renamed").count() == 0
    response = page.goto(f"{ui_server.url}/projects/{doomed}")
    assert response is not None and response.status == 404
