"""The dashboard's ASGI entry: it answers its own paths and hands everything else (the RPCs, /healthz, the
registry endpoints, the login page) to the API router.

Every page reads through the domain services with the signed-in principal, so the RPCs' access rules hold
here too: another organization's project or build is `permission_denied` (403), an unknown one 404."""

from __future__ import annotations

import asyncio
import csv
import io
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from jinja2 import Environment, PackageLoader, select_autoescape

from opendepot.api.deps import Deps
from opendepot.api.http.asgi import Receive, Scope, Send
from opendepot.auth import Principal
from opendepot.builds import service as builds
from opendepot.builds.models import Build
from opendepot.errors import DomainError, InvalidArgument, NotFound, PermissionDenied, Unauthenticated
from opendepot.logins import service as logins
from opendepot.pagination import page_request
from opendepot.projects import service as projects
from opendepot.projects.policy import HARDWARE_SIZES, CachePolicyInput
from opendepot.registry import service as registry
from opendepot.tokens import service as tokens
from opendepot.usage import service as usage

from . import presentation as present
from . import sessions
from .live import stream_build
from .web import Request, Response, html, json_response, redirect, sign_in_url

log = logging.getLogger(__name__)

SESSION_COOKIE = "opendepot_session"
PRE_SIGN_IN_COOKIE = "opendepot_signin"
STATIC_DIR = Path(str(resources.files("opendepot.dashboard") / "static"))
VENDOR_DIR = Path(str(resources.files("opendepot.dashboard") / "node_modules"))
# The third-party browser files served, by the name the pages use: installed by `./dev setup` (npm).
VENDOR_FILES = {"chart.umd.min.js": VENDOR_DIR / "chart.js" / "dist" / "chart.umd.min.js"}
CONTENT_TYPES = {".css": "text/css", ".js": "text/javascript", ".svg": "image/svg+xml", ".png": "image/png"}
BUILDS_PAGE = 25
CHART_BUILDS = 40
# The two fields of each provider's trust policy, in the form's order (see projects.policy).
TRUST_POLICY_FIELDS = {
    "github": ("repository_owner", "repository"),
    "buildkite": ("organization_slug", "pipeline_slug"),
    "circleci": ("organization_uuid", "project_uuid"),
    "gitlab": ("namespace_path", "project_path"),
}
STATUSES = ("running", "success", "failed", "canceled", "error")
# Paths the dashboard owns; everything else goes to the API router.
_LOGIN = re.compile(r"^/login/[A-Za-z0-9_-]{1,64}$")
_OWNED = re.compile(
    r"^/(?:$|sign-in$|sign-out$|projects(?:/|$)|usage(?:\.csv)?$|tokens(?:/|$)|static/|shared/)"
)

Handler = Callable[["Page"], Awaitable[Response | None]]


@dataclass
class Page:
    """One request on its way through a handler."""

    request: Request
    send: Send
    principal: Principal | None = None
    csrf: str = ""


class Dashboard:
    def __init__(self, deps: Deps, api: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.d = deps
        self.api = api
        public = urlsplit(deps.public_url)
        self._public_origin = f"{public.scheme}://{public.netloc}" if public.scheme and public.netloc else ""
        self.templates = Environment(
            loader=PackageLoader("opendepot.dashboard", "templates"),
            autoescape=select_autoescape(default=True),
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.templates.globals.update(hardware_sizes=HARDWARE_SIZES, regions=deps.project_settings.regions)
        self.templates.filters.update(
            bytes=present.human_bytes, when=present.when, duration=present.human_duration
        )
        self.routes: list[tuple[str, re.Pattern[str], Handler, bool]] = []
        for method, pattern, handler, signed_in in self._table():
            self.routes.append((method, re.compile(f"^{pattern}$"), handler, signed_in))

    def _table(self) -> list[tuple[str, str, Handler, bool]]:
        p, b = r"(?P<project>[^/]+)", r"(?P<build>[^/]+)"
        return [
            ("GET", "/", self.home, True),
            ("GET", "/sign-in", self.sign_in_form, False),
            ("POST", "/sign-in", self.sign_in, False),
            ("POST", "/sign-out", self.sign_out, True),
            ("GET", "/projects", self.projects, True),
            ("POST", "/projects", self.create_project, True),
            ("GET", f"/projects/{p}", self.project, True),
            ("POST", f"/projects/{p}/settings", self.update_project, True),
            ("POST", f"/projects/{p}/reset", self.reset_project, True),
            ("GET", f"/projects/{p}/delete", self.confirm_delete_project, True),
            ("POST", f"/projects/{p}/delete", self.delete_project, True),
            ("POST", f"/projects/{p}/tokens", self.create_token, True),
            ("POST", f"/projects/{p}/trust-policies", self.add_trust_policy, True),
            (
                "POST",
                f"/projects/{p}/trust-policies/(?P<policy>[^/]+)/delete",
                self.remove_trust_policy,
                True,
            ),
            ("POST", f"/projects/{p}/tokens/(?P<token>[^/]+)/delete", self.delete_token, True),
            ("GET", f"/projects/{p}/images", self.images, True),
            ("POST", f"/projects/{p}/images/delete", self.delete_image, True),
            ("GET", f"/projects/{p}/builds/{b}", self.build, True),
            ("GET", f"/projects/{p}/builds/{b}/log", self.build_log, True),
            ("GET", f"/projects/{p}/builds/{b}/search", self.build_search, True),
            ("GET", f"/projects/{p}/builds/{b}/events", self.build_events, True),
            ("POST", f"/projects/{p}/builds/{b}/share", self.share_build, True),
            ("POST", f"/projects/{p}/builds/{b}/unshare", self.unshare_build, True),
            ("GET", r"/login/(?P<login>[A-Za-z0-9_-]{1,64})", self.login_approval, True),
            ("POST", r"/login/(?P<login>[A-Za-z0-9_-]{1,64})", self.approve_login, True),
            ("GET", "/usage", self.usage, True),
            ("GET", "/usage.csv", self.usage_csv, True),
            ("GET", "/tokens", self.tokens_page, True),
            ("POST", "/tokens/(?P<token>[^/]+)/delete", self.revoke_user_token, True),
            ("GET", r"/shared/(?P<secret>[A-Za-z0-9_-]{1,100})", self.shared, False),
            ("GET", r"/shared/(?P<secret>[A-Za-z0-9_-]{1,100})/log", self.shared_log, False),
            ("GET", r"/shared/(?P<secret>[A-Za-z0-9_-]{1,100})/search", self.shared_search, False),
            ("GET", r"/shared/(?P<secret>[A-Za-z0-9_-]{1,100})/events", self.shared_events, False),
            ("GET", r"/static/(?P<name>[a-z0-9_-][a-z0-9._-]{0,63})", self.static, False),
        ]

    # -- dispatch ---------------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.api(scope, receive, send)
            return
        request = Request(scope, receive, public_origin=self._public_origin)
        # `depot login` approval: in the dashboard for a signed-in browser, else the API's token form.
        signed_in_login = scope["path"].startswith("/login/") and bool(request.cookie(SESSION_COOKIE))
        if not (_OWNED.match(scope["path"]) or signed_in_login):
            await self.api(scope, receive, send)
            return
        response = await self._dispatch(request, send)
        if response is not None:
            await response.send(send)

    async def _dispatch(self, request: Request, send: Send) -> Response | None:
        if request.has_nul():
            # No id, name or search has one, and PostgreSQL's text refuses it (an internal error).
            return self._render(
                Page(request, send), "error.html", 400, title="Invalid input", message="a NUL character"
            )
        allowed = False
        for method, pattern, handler, signed_in in self.routes:
            match = pattern.match(request.path)
            if match is None:
                continue
            allowed = True
            if method != request.method and not (method == "GET" and request.method == "HEAD"):
                continue
            request.params = match.groupdict()
            page = Page(request, send)
            try:
                if signed_in:
                    refusal = await self._authorize(page)
                    if refusal is not None:
                        return refusal
                return await handler(page)
            except DomainError as exc:
                return self._error(page, exc)
            except Exception:
                log.exception("dashboard: %s %s failed", request.method, request.path)
                return self._render(page, "error.html", 500, title="Something went wrong", message="")
        if allowed:
            return self._render(Page(request, send), "error.html", 405, title="Not allowed", message="")
        return self._render(Page(request, send), "error.html", 404, title="Not found", message="")

    async def _authorize(self, page: Page) -> Response | None:
        request = page.request
        cookie = request.cookie(SESSION_COOKIE)
        found = await self.d.store.read(lambda s: sessions.signed_in(s, cookie)) if cookie else None
        if found is None:
            if request.method == "GET":
                return redirect(sign_in_url(request.path))
            return self._render(page, "error.html", 403, title="Signed out", message="Sign in again.")
        page.principal, page.csrf = found.principal, found.csrf_token
        if request.method == "POST":
            form = await request.form()
            if form is None:
                return self._render(page, "error.html", 413, title="Too large", message="")
            if any("\x00" in key or "\x00" in value for key, value in form.items()):
                return self._render(page, "error.html", 400, title="Invalid input", message="a NUL character")
            if not request.same_origin() or not sessions.csrf_matches(found, form.get("csrf", "")):
                return self._render(
                    page, "error.html", 403, title="Refused", message="The form's CSRF token did not match."
                )
            page.request.scope["dashboard.form"] = form
        return None

    def _error(self, page: Page, exc: DomainError) -> Response:
        status = 400
        if isinstance(exc, NotFound):
            status = 404
        elif isinstance(exc, PermissionDenied | Unauthenticated):
            status = 403
        elif not isinstance(exc, InvalidArgument):
            status = 409
        title = {400: "Invalid input", 403: "Not allowed", 404: "Not found", 409: "Not possible"}[status]
        return self._render(page, "error.html", status, title=title, message=exc.message)

    def _render(self, page: Page, template: str, status: int = 200, **context: Any) -> Response:
        body = self.templates.get_template(template).render(
            signed_in=page.principal is not None,
            principal=page.principal,
            csrf=page.csrf,
            path=page.request.path,
            **context,
        )
        return html(body, status)

    @staticmethod
    def _form(page: Page) -> dict[str, str]:
        form: dict[str, str] = page.request.scope.get("dashboard.form") or {}
        return form

    @staticmethod
    def _who(page: Page) -> Principal:
        assert page.principal is not None
        return page.principal

    # -- sign in ----------------------------------------------------------------------------------------

    async def home(self, page: Page) -> Response:
        return redirect("/projects")

    async def sign_in_form(self, page: Page, message: str = "", status: int = 200) -> Response:
        pre = page.request.cookie(PRE_SIGN_IN_COOKIE) or sessions.new_pre_sign_in()
        response = self._render(
            page,
            "sign_in.html",
            status,
            message=message,
            pre=pre,
            next=_safe_next(page.request.query("next")),
        )
        response.set_cookie(PRE_SIGN_IN_COOKIE, pre, secure=page.request.secure, max_age=3600)
        return response

    async def sign_in(self, page: Page) -> Response:
        request = page.request
        form = await request.form() or {}
        pre = request.cookie(PRE_SIGN_IN_COOKIE)
        # The sign-in form has its own CSRF pair (cookie and field): no one signs a browser in elsewhere.
        if not request.same_origin() or not pre or form.get("csrf") != pre:
            return await self.sign_in_form(page, "The form expired; try again.", 403)
        secret = form.get("token", "").strip()
        try:
            principal = await self.d.authn.from_secret(secret) if secret else None
            if principal is None:
                return await self.sign_in_form(page, "Paste an organization or user token.", 400)
            opened = await self.d.store.run(lambda s: sessions.open_session(s, principal))
        except (Unauthenticated, PermissionDenied) as exc:
            return await self.sign_in_form(page, exc.message, 403)
        response = redirect(_safe_next(form.get("next", "")) or "/projects")
        response.set_cookie(SESSION_COOKIE, opened.cookie_secret, secure=request.secure)
        response.set_cookie(PRE_SIGN_IN_COOKIE, "", secure=request.secure, max_age=0)
        return response

    async def sign_out(self, page: Page) -> Response:
        cookie = page.request.cookie(SESSION_COOKIE)
        await self.d.store.run(lambda s: sessions.close_session(s, cookie))
        response = redirect("/sign-in")
        response.set_cookie(SESSION_COOKIE, "", secure=page.request.secure, max_age=0)
        return response

    # -- projects ---------------------------------------------------------------------------------------

    async def projects(self, page: Page) -> Response:
        who = self._who(page)

        def read(s: Any) -> tuple[Any, ...]:
            rows, _ = projects.list_projects(s, who, page_request("projects", 1000, None), None)
            ids = [p.id for p in rows]
            return rows, builds.latest_builds(s, who, ids), usage.cache_sizes(s, who, ids)

        rows, latest, sizes = await self.d.store.read(read)
        last = {pid: present.build_rows([summary])[0] for pid, summary in latest.items()}
        return self._render(page, "projects.html", projects=rows, last=last, sizes=sizes)

    async def create_project(self, page: Page) -> Response:
        form, who = self._form(page), self._who(page)
        cache = _cache_input(form)
        project = await self.d.store.run(
            lambda s: projects.create_project(
                s,
                who,
                self.d.project_settings,
                name=form.get("name", ""),
                organization_id=None,
                region_id=form.get("region", ""),
                cache_policy=cache,
                hardware=form.get("hardware") or None,
            )
        )
        return redirect(f"/projects/{project.id}")

    async def project(self, page: Page) -> Response:
        who, project_id = self._who(page), page.request.params["project"]
        status = page.request.query("status") or None
        if status is not None and status not in STATUSES:
            raise InvalidArgument("status", f"must be one of {', '.join(STATUSES)}")
        token = page.request.query("page") or None

        def read(s: Any) -> dict[str, Any]:
            project = projects.load_managed_project(s, who, project_id, "manage projects")
            listed, next_page = builds.list_builds_by_status(
                s, who, project.id, status, page_request("builds", BUILDS_PAGE, token)
            )
            recent, _ = builds.list_builds_by_status(
                s, who, project.id, None, page_request("builds", CHART_BUILDS, None)
            )
            return {
                "project": project,
                "cache": projects.cache_of(project),
                "builds": present.build_rows(listed),
                "next_page": next_page,
                "chart": _chart_data(present.build_rows(recent)),
                "tokens": tokens.list_project_tokens(s, who, project.id),
                "policies": projects.list_trust_policies(s, who, project.id),
            }

        context = await self.d.store.read(read)
        return self._render(page, "project.html", status_filter=status, statuses=STATUSES, **context)

    async def update_project(self, page: Page) -> Response:
        form, who, project_id = self._form(page), self._who(page), page.request.params["project"]
        await self.d.store.run(
            lambda s: projects.update_project(
                s,
                who,
                self.d.project_settings,
                project_id,
                name=form.get("name") or None,
                region_id=None,
                cache_policy=_cache_input(form),
                hardware=form.get("hardware") or None,
            )
        )
        return redirect(f"/projects/{project_id}")

    async def reset_project(self, page: Page) -> Response:
        who, project_id = self._who(page), page.request.params["project"]
        target = await self.d.lifecycle.reset_cache(who, project_id)
        return redirect(f"/projects/{target.project.id}?reset=1")

    async def confirm_delete_project(self, page: Page) -> Response:
        who, project_id = self._who(page), page.request.params["project"]
        project = await self.d.store.read(
            lambda s: projects.load_managed_project(s, who, project_id, "delete projects")
        )
        return self._render(page, "confirm_delete.html", project=project, message="")

    async def delete_project(self, page: Page) -> Response:
        form, who, project_id = self._form(page), self._who(page), page.request.params["project"]
        project = await self.d.store.read(
            lambda s: projects.load_managed_project(s, who, project_id, "delete projects")
        )
        if form.get("confirm_name", "") != project.name:
            return self._render(
                page,
                "confirm_delete.html",
                400,
                project=project,
                message="Type the project's name to delete it.",
            )
        await self.d.lifecycle.delete(who, project_id)
        return redirect("/projects")

    async def create_token(self, page: Page) -> Response:
        form, who, project_id = self._form(page), self._who(page), page.request.params["project"]
        token, secret = await self.d.store.run(
            lambda s: tokens.create_project_token(s, who, project_id, form.get("description", ""))
        )
        # The secret is shown on this response only; it is not kept.
        return self._render(page, "token_created.html", token=token, secret=secret, project_id=project_id)

    async def delete_token(self, page: Page) -> Response:
        who, params = self._who(page), page.request.params
        await self.d.store.run(lambda s: tokens.delete_token(s, who, params["token"]))
        back = self._form(page).get("back", "")
        return redirect(back if back in ("/tokens",) else f"/projects/{params['project']}")

    async def add_trust_policy(self, page: Page) -> Response:
        form, who, project_id = self._form(page), self._who(page), page.request.params["project"]
        provider = form.get("provider", "")
        names = TRUST_POLICY_FIELDS.get(provider)
        if names is None:
            raise InvalidArgument("provider", f"must be one of {', '.join(TRUST_POLICY_FIELDS)}")
        fields = {names[0]: form.get("first", ""), names[1]: form.get("second", "")}
        await self.d.store.run(lambda s: projects.add_trust_policy(s, who, project_id, provider, fields))
        return redirect(f"/projects/{project_id}#trust-h")

    async def remove_trust_policy(self, page: Page) -> Response:
        who, params = self._who(page), page.request.params
        await self.d.store.run(
            lambda s: projects.remove_trust_policy(s, who, params["project"], params["policy"])
        )
        return redirect(f"/projects/{params['project']}#trust-h")

    # -- images -----------------------------------------------------------------------------------------

    async def images(self, page: Page) -> Response:
        who, project_id = self._who(page), page.request.params["project"]
        token = page.request.query("page") or None

        def read(s: Any) -> tuple[Any, ...]:
            project = projects.load_project(s, who, project_id)
            rows, next_page = registry.list_images(s, who, project.id, page_request("images", 100, token))
            return project, rows, next_page

        project, rows, next_page = await self.d.store.read(read)
        host = self.d.registry.host if self.d.registry is not None else ""
        return self._render(
            page, "images.html", project=project, images=rows, next_page=next_page, registry_host=host
        )

    async def delete_image(self, page: Page) -> Response:
        form, who, project_id = self._form(page), self._who(page), page.request.params["project"]
        if self.d.registry is None:
            raise registry_unavailable()
        await self.d.registry.delete(who, project_id, [form.get("tag", "")])
        return redirect(f"/projects/{project_id}/images")

    # -- builds -----------------------------------------------------------------------------------------

    async def _build(self, page: Page) -> Build:
        who, params = self._who(page), page.request.params
        view = await self.d.store.read(
            lambda s: builds.view_build(s, who, params["project"], params["build"])
        )
        return view.build

    async def build(self, page: Page) -> Response:
        who, params = self._who(page), page.request.params
        view = await self.d.store.read(
            lambda s: builds.view_build(s, who, params["project"], params["build"])
        )
        base = f"/projects/{view.build.project_id}/builds/{view.build.id}"
        return self._render_build(page, view, base, shared=False)

    def _render_build(self, page: Page, view: builds.BuildView, base: str, *, shared: bool) -> Response:
        build = view.build
        platforms = present.platforms_of(build)
        rows = present.step_rows(build, view.steps, platforms[0] if len(platforms) == 1 else "")
        failing = next((r for r in rows if r.state == "error"), None)
        return self._render(
            page,
            "build.html",
            build=build,
            steps=rows,
            failing=failing,
            platforms=sorted({r.platform for r in rows if r.platform}),
            duration=present.human_duration(present.build_duration(build)),
            cursor=view.log_cursor,
            base=base,
            shared=shared,
            live=build.finished_at is None,
            share_link=page.request.scope.get("dashboard.share_link", ""),
        )

    async def build_log(self, page: Page) -> Response:
        return await self._log(page, await self._build(page))

    async def _log(self, page: Page, build: Build) -> Response:
        step_id = _int(page.request.query("step"), "step")
        after = _int(page.request.query("after", "0"), "after")
        until_raw = page.request.query("until")
        until = _int(until_raw, "until") if until_raw else None
        limit = _int(page.request.query("limit", "10000"), "limit")
        _step, lines = await self.d.store.read(
            lambda s: builds.step_log_window(s, build, step_id, after, until, limit)
        )
        return json_response({"lines": lines, "more": len(lines) >= limit})

    async def build_search(self, page: Page) -> Response:
        return await self._search(page, await self._build(page))

    async def _search(self, page: Page, build: Build) -> Response:
        needle = page.request.query("q")
        hits = await self.d.store.read(lambda s: builds.search_log(s, build, needle))
        return json_response(
            {
                "hits": [[h.step_id, h.line_number, h.text[:500]] for h in hits],
                "limited": len(hits) >= builds.MAX_SEARCH_HITS,
            }
        )

    async def build_events(self, page: Page) -> None:
        build = await self._build(page)
        await self._events(page, build)

    async def _events(self, page: Page, build: Build) -> None:
        request = page.request
        # EventSource sends the id of the last event it saw when it reconnects: the last log line it got.
        resume = request.header("last-event-id") or request.query("after", "0")
        after = _int(resume, "after")
        base = request.path.removesuffix("/events")

        def steps_html(build: Build, records: list[builds.StepRecord]) -> str:
            platforms = present.platforms_of(build)
            rows = present.step_rows(build, records, platforms[0] if len(platforms) == 1 else "")
            return self.templates.get_template("_steps.html").render(steps=rows, base=base)

        await stream_build(self.d.store, build.id, after, steps_html, request.receive, page.send, base)

    async def share_build(self, page: Page) -> Response:
        who, params = self._who(page), page.request.params
        view = await self.d.store.read(
            lambda s: builds.view_build(s, who, params["project"], params["build"])
        )
        secret = await self.d.store.run(lambda s: builds.share_build(s, who, view.build.id))
        page.request.scope["dashboard.share_link"] = f"{self.d.public_url}/shared/{secret}"
        base = f"/projects/{view.build.project_id}/builds/{view.build.id}"
        view = await self.d.store.read(
            lambda s: builds.view_build(s, who, params["project"], params["build"])
        )
        return self._render_build(page, view, base, shared=False)

    async def unshare_build(self, page: Page) -> Response:
        who, params = self._who(page), page.request.params
        view = await self.d.store.read(
            lambda s: builds.view_build(s, who, params["project"], params["build"])
        )
        await self.d.store.run(lambda s: builds.stop_sharing(s, who, view.build.id))
        return redirect(f"/projects/{view.build.project_id}/builds/{view.build.id}?unshared=1")

    # -- shared build (no session: the link's secret is the permission) ---------------------------------

    async def _shared_build(self, page: Page) -> Build:
        secret = page.request.params["secret"]
        build = await self.d.store.read(lambda s: builds.shared_build(s, secret))
        if build is None:
            raise NotFound("This link is unknown or no longer shared.")
        return build

    async def shared(self, page: Page) -> Response:
        build = await self._shared_build(page)
        view = await self.d.store.read(lambda s: builds.view_of(s, build))
        response = self._render_build(page, view, page.request.path, shared=True)
        response.headers.append((b"referrer-policy", b"no-referrer"))
        return response

    async def shared_log(self, page: Page) -> Response:
        return await self._log(page, await self._shared_build(page))

    async def shared_search(self, page: Page) -> Response:
        return await self._search(page, await self._shared_build(page))

    async def shared_events(self, page: Page) -> None:
        await self._events(page, await self._shared_build(page))

    # -- depot login approval ---------------------------------------------------------------------------

    async def login_approval(self, page: Page) -> Response:
        # The URL names the request by its approval id (never the secret FinishLogin redeems).
        login_id = page.request.params["login"]
        login = await self.d.store.read(lambda s: logins.awaiting_approval(s, login_id))
        return self._render(page, "login_approval.html", login_id=login_id, login=login, approved=False)

    async def approve_login(self, page: Page) -> Response:
        who, login_id = self._who(page), page.request.params["login"]
        form: dict[str, str] = page.request.scope.get("dashboard.form") or {}
        confirmed = form.get("confirm", "")
        await self.d.store.run(lambda s: logins.approve_with_token(s, login_id, who, confirmed))
        return self._render(page, "login_approval.html", login_id=login_id, approved=True)

    # -- usage and tokens -------------------------------------------------------------------------------

    async def _usage(self, page: Page) -> tuple[usage.Period, usage.OrganizationUsage]:
        who = self._who(page)
        now = datetime.now(UTC)
        start = _date(page.request.query("from"), "from") or (now - timedelta(days=30)).replace(
            hour=0, minute=0, second=0, microsecond=0
        )
        end = _date(page.request.query("to"), "to") or (now + timedelta(days=1)).replace(
            hour=0, minute=0, second=0, microsecond=0
        )
        period = usage.period(start, end)
        figures = await self.d.store.read(lambda s: usage.organization_usage(s, who, period))
        return period, figures

    async def _daily(self, page: Page, period: usage.Period) -> dict[str, list[Any]]:
        who = self._who(page)
        days = await self.d.store.read(lambda s: usage.daily_usage(s, who, period))
        return {
            "labels": [d.day.isoformat() for d in days],
            "builds": [d.builds for d in days],
            "minutes": [round(d.build_minutes, 2) for d in days],
            "billed": [round(d.minutes_billed, 2) for d in days],
            "saved": [round(d.minutes_saved, 2) for d in days],
        }

    async def usage(self, page: Page) -> Response:
        period, figures = await self._usage(page)
        chart = {
            "labels": [f.project_name for f in figures.projects],
            "minutes": [round(f.build_duration_seconds / 60, 2) for f in figures.projects],
            "billed": [round(f.minutes_billed, 2) for f in figures.projects],
            "saved": [round(f.minutes_saved, 2) for f in figures.projects],
        }
        totals = {
            "builds": sum(f.build_count for f in figures.projects),
            "minutes": sum(f.build_duration_seconds for f in figures.projects) / 60,
            "billed": sum(f.minutes_billed for f in figures.projects),
            "saved": sum(f.minutes_saved for f in figures.projects),
        }
        daily = await self._daily(page, period)
        return self._render(
            page,
            "usage.html",
            daily=daily,
            period=period,
            start=period.start.date().isoformat(),
            end=period.end.date().isoformat(),
            figures=figures,
            totals=totals,
            chart=chart,
        )

    async def usage_csv(self, page: Page) -> Response:
        period, figures = await self._usage(page)
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(
            [
                "project_id",
                "project",
                "builds",
                "build_minutes",
                "minutes_billed",
                "minutes_saved",
                "cache_bytes",
            ]
        )
        for f in figures.projects:
            writer.writerow(
                [
                    f.project_id,
                    f.project_name,
                    f.build_count,
                    f"{f.build_duration_seconds / 60:.2f}",
                    f"{f.minutes_billed:.2f}",
                    f"{f.minutes_saved:.2f}",
                    f.layer_cache_bytes,
                ]
            )
        name = f"opendepot-usage-{period.start.date()}-{period.end.date()}.csv"
        return Response(
            200,
            out.getvalue().encode(),
            "text/csv; charset=utf-8",
            [
                (b"content-disposition", f'attachment; filename="{name}"'.encode()),
                (b"cache-control", b"no-store"),
            ],
        )

    async def tokens_page(self, page: Page) -> Response:
        who = self._who(page)

        def read(s: Any) -> tuple[Any, Any]:
            rows, _ = projects.list_projects(s, who, page_request("projects", 1000, None), None)
            project_tokens = [(p, t) for p in rows for t in tokens.list_project_tokens(s, who, p.id)]
            return project_tokens, tokens.list_organization_tokens(s, who.organization_id)

        project_tokens, org_tokens = await self.d.store.read(read)
        return self._render(page, "tokens.html", project_tokens=project_tokens, org_tokens=org_tokens)

    async def revoke_user_token(self, page: Page) -> Response:
        who, token_id = self._who(page), page.request.params["token"]
        await self.d.store.run(lambda s: tokens.delete_token(s, who, token_id))
        return redirect("/tokens")

    # -- static files -----------------------------------------------------------------------------------

    async def static(self, page: Page) -> Response:
        name = page.request.params["name"]
        path = VENDOR_FILES.get(name) or STATIC_DIR / name
        if path.parent not in (STATIC_DIR, *(p.parent for p in VENDOR_FILES.values())) or not path.is_file():
            if name in VENDOR_FILES:
                log.warning("%s is missing: run ./dev setup (it installs the dashboard's npm packages)", path)
            raise NotFound(f"no static file {name!r}")
        body = await asyncio.to_thread(path.read_bytes)
        kind = CONTENT_TYPES.get(path.suffix, "application/octet-stream")
        return Response(200, body, kind, [(b"cache-control", b"public, max-age=3600")])


def registry_unavailable() -> DomainError:
    from opendepot.registry.operations import no_registry

    return no_registry()


def _safe_next(value: str) -> str:
    """Only a path on this server (no scheme, no //host)."""
    safe_path = _OWNED.match(value) or _LOGIN.match(value)
    if value.startswith("/") and not value.startswith("//") and "\\" not in value and safe_path:
        return quote(value, safe="/?=&-_.")
    return ""


# ASCII digits only: str.isdigit() also takes "²" or "①", which int() refuses (a 500, even to share-link
# visitors). Eighteen digits keep the value inside a signed 64-bit column.
_WHOLE_NUMBER = re.compile(r"[0-9]{1,18}")


def _int(value: str, field: str) -> int:
    if not _WHOLE_NUMBER.fullmatch(value):
        raise InvalidArgument(field, "must be a whole number")
    return int(value)


def _date(value: str, field: str) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.strptime(value, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError as exc:
        raise InvalidArgument(field, "must be a date, YYYY-MM-DD") from exc


def _cache_input(form: dict[str, str]) -> CachePolicyInput | None:
    gb, days = form.get("cache_gb", "").strip(), form.get("cache_days", "").strip()
    if not gb and not days:
        return None
    return CachePolicyInput(
        keep_bytes=None,
        keep_gb=_int(gb, "cache_gb") if gb else 0,
        keep_days=_int(days, "cache_days") if days else 0,
    )


def _chart_data(rows: list[present.BuildRow]) -> dict[str, list[Any]]:
    oldest_first = list(reversed(rows))
    return {
        "labels": [r.id for r in oldest_first],
        "duration": [r.duration_seconds for r in oldest_first],
        "hit_rate": [round(r.cached / r.total * 100, 1) if r.total else 0 for r in oldest_first],
    }
