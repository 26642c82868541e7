"""The dashboard's build page for a big build vs a small one, against a real `opendepot serve`:

- server time for the page's HTML (GET /projects/<p>/builds/<b>, signed in) and for the first log window;
- in Debian's chromium (Playwright): time to the first contentful paint (the step list is in the HTML), time
  until the step's whole log is loaded in the viewer, and the time of a scroll interaction in the log (from
  setting scrollTop to the second animation frame after it, so the virtualized lines are painted).

The big build has 2,000 steps and 100,000 log lines (all in its last step, the one the page opens); the small
one 10 steps and 100 lines. Several runs, alternating; min/median/max and the ratio big / small.
Goals: interaction < 100 ms, first render < 1 s.

    .venv/bin/python bench/dashboard.py [--runs N]
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import insert

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import opendepot.migrations.schema  # noqa: E402, F401  (every table, for the foreign keys)
from opendepot.builds.models import Build, LogLine, Step  # noqa: E402
from opendepot.projects.models import Project  # noqa: E402
from opendepot.store import Store  # noqa: E402
from opendepot.store.engine import sqlite_url  # noqa: E402
from tests.support.server import Server  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
SCROLL = """async () => {
  const log = document.getElementById("log");
  const times = [];
  for (let i = 0; i < 30; i++) {
    const t0 = performance.now();
    log.scrollTop = ((i * 7919) % 1000) / 1000 * (log.scrollHeight - log.clientHeight);
    await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
    times.push(performance.now() - t0);
  }
  return times;
}"""


def populate(
    store: Store, organization_id: str, steps: int, lines: int, build_id: str, project_id: str
) -> None:
    now = datetime.now(UTC) - timedelta(minutes=10)
    with store.transaction() as s:
        if s.get(Project, project_id) is None:
            s.add(
                Project(
                    id=project_id,
                    organization_id=organization_id,
                    name="bench",
                    region_id="us-east-1",
                    hardware="16x32",
                    cache_keep_bytes=50 << 30,
                    cache_keep_days=14,
                    created_at=now,
                )
            )
            s.flush()
        s.add(
            Build(
                id=build_id,
                project_id=project_id,
                organization_id=organization_id,
                status="success",
                options=[],
                created_at=now,
                started_at=now,
                finished_at=now + timedelta(seconds=steps * 0.1 + 1),
            )
        )
        s.flush()
        s.execute(
            insert(Step),
            [
                {
                    "build_id": build_id,
                    "project_id": project_id,
                    "digest": f"sha256:{build_id}{n:054d}",
                    "name": f"[{n + 1}/{steps}] RUN echo step {n}",
                    "started_at": now + timedelta(seconds=n * 0.1),
                    "started_known": True,
                    "completed_at": now + timedelta(seconds=n * 0.1 + 0.08),
                    "cached": n % 3 == 0,
                    "has_logs": n == steps - 1,
                }
                for n in range(steps)
            ],
        )
        last = f"sha256:{build_id}{steps - 1:054d}"
        for start in range(0, lines, 10_000):
            s.execute(
                insert(LogLine),
                [
                    {
                        "build_id": build_id,
                        "digest": last,
                        "stream": 1,
                        "logged_at": now,
                        "text": f"line {i + 1}: compiling module_{i % 997} with -O2 and a few more words",
                    }
                    for i in range(start, min(lines, start + 10_000))
                ],
            )


def sign_in(client: httpx.Client, url: str, token: str) -> None:
    form = client.get(f"{url}/sign-in")
    match = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert match, form.text
    done = client.post(f"{url}/sign-in", data={"csrf": match[1], "token": token, "next": ""})
    assert done.status_code == 303, done.text


def server_times(client: httpx.Client, url: str, step_id: int, runs: int) -> tuple[list[float], list[float]]:
    pages, logs = [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        page = client.get(url)
        pages.append((time.perf_counter() - t0) * 1000)
        assert page.status_code == 200, page.status_code
        t0 = time.perf_counter()
        window = client.get(f"{url}/log?step={step_id}&after=0&limit=10000")
        logs.append((time.perf_counter() - t0) * 1000)
        assert window.status_code == 200
    return pages, logs


def browser_times(browser: Any, server: Server, token: str, url: str, expected_lines: int) -> dict[str, Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.goto(f"{server.url}/sign-in")
    page.fill("#token", token)
    page.click("form[action='/sign-in'] button")
    page.wait_for_url(f"{server.url}/projects")
    page.goto(url)
    paint = page.evaluate(
        "() => (performance.getEntriesByName('first-contentful-paint')[0] || {startTime: -1}).startTime"
    )
    page.locator(".log-line").first.wait_for(timeout=60_000)
    first_lines = float(page.evaluate("() => performance.now()"))
    try:
        page.wait_for_function(
            f"() => parseFloat(document.querySelector('.log-spacer').style.height) === {expected_lines * 20}",
            timeout=60_000,
        )
    except Exception:
        page.screenshot(path="/tmp/bench-dashboard-failure.png")
        print(page.evaluate("() => document.querySelector('.log-spacer').style.height"), file=sys.stderr)
        raise
    # Milliseconds since navigation started, read as soon as the viewer holds every line.
    loaded = float(page.evaluate("() => performance.now()"))
    scroll = page.evaluate(SCROLL)
    rendered = page.locator(".log-line").count()
    context.close()
    return {
        "paint": float(paint),
        "first_lines": first_lines,
        "loaded": loaded,
        "scroll": scroll,
        "dom_lines": rendered,
    }


def stats(values: list[float]) -> str:
    return f"min {min(values):.1f} / median {statistics.median(values):.1f} / max {max(values):.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        server = Server(data_dir=Path(tmp) / "data", database_url=None).start()
        try:
            org_id, token = server.new_organization("bench")
            store = Store(sqlite_url(server.data_dir))
            populate(store, org_id, 10, 100, "smallbuild", "benchproj1")
            populate(store, org_id, 2000, 100_000, "largebuild", "benchproj1")
            with store.transaction() as s:
                small_step = max(st.id for st in s.query(Step).filter(Step.build_id == "smallbuild"))
                large_step = max(st.id for st in s.query(Step).filter(Step.build_id == "largebuild"))
            store.dispose()
            small = f"{server.url}/projects/benchproj1/builds/smallbuild"
            large = f"{server.url}/projects/benchproj1/builds/largebuild"
            results: dict[str, dict[str, list[float]]] = {
                name: {"page": [], "log": [], "paint": [], "first_lines": [], "loaded": [], "scroll": []}
                for name in ("small", "large")
            }
            with httpx.Client(timeout=60) as client:
                sign_in(client, server.url, token)
                client.get(small)
                client.get(large)  # warm both
                for _ in range(args.runs):
                    for name, url, step in (("small", small, small_step), ("large", large, large_step)):
                        pages, logs = server_times(client, url, step, 1)
                        results[name]["page"] += pages
                        results[name]["log"] += logs
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(
                    executable_path=CHROMIUM, headless=True, args=["--no-sandbox"]
                )
                for _ in range(max(3, args.runs // 2)):
                    for name, url, lines in (("small", small, 100), ("large", large, 100_000)):
                        got = browser_times(browser, server, token, url, lines)
                        if got["paint"] >= 0:  # no paint entry yet is no figure
                            results[name]["paint"].append(got["paint"])
                        results[name]["loaded"].append(got["loaded"])
                        results[name]["first_lines"].append(got["first_lines"])
                        results[name]["scroll"] += got["scroll"]
                        results[name].setdefault("dom", []).append(got["dom_lines"])
                browser.close()
        finally:
            server.stop()
    print(
        "build page: 10 steps / 100 lines (small) vs 2,000 steps / 100,000 lines (large); "
        "shared 2-CPU machine"
    )
    labels = {
        "page": "server: page HTML",
        "log": "server: first log window (10,000 lines)",
        "paint": "chromium: first contentful paint (step list)",
        "first_lines": "chromium: first log lines on screen (since navigation start)",
        "loaded": "chromium: whole log in the viewer (since navigation start)",
        "scroll": "chromium: log scroll interaction (to painted frame)",
    }
    for key, label in labels.items():
        small_values, large_values = results["small"][key], results["large"][key]
        ratio = statistics.median(large_values) / max(statistics.median(small_values), 0.001)
        print(
            f"{label}\n  small {stats(small_values)}\n  large {stats(large_values)}\n"
            f"  ratio large/small (median) {ratio:.2f}"
        )
    print(f"log lines in the DOM while scrolling the large log: {max(results['large']['dom'])}")


if __name__ == "__main__":
    main()
