"""Plain read-only HTML pages (until a dashboard exists): a shared build."""

from __future__ import annotations

import html
from collections.abc import Sequence

from opendepot.builds.models import Build, Step


def _duration(step: Step) -> str:
    if step.started_at is None or step.completed_at is None:
        return "running"
    return f"{(step.completed_at - step.started_at).total_seconds():.1f} s"


def shared_build_page(build: Build, steps: Sequence[Step]) -> str:
    rows = "\n".join(
        f"<tr><td>{html.escape(s.name or s.digest)}</td><td>{'cached' if s.cached else ''}</td>"
        f"<td>{_duration(s)}</td><td>{html.escape(s.error or '')}</td></tr>"
        for s in steps
    )
    title = f"Build {html.escape(build.id)}"
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title></head><body>"
        f"<h1>{title}</h1><p>Status: {html.escape(build.status)}. Created {build.created_at.isoformat()}.</p>"
        f"<table><thead><tr><th>Step</th><th>Cache</th><th>Time</th><th>Error</th></tr></thead>"
        f"<tbody>{rows}</tbody></table></body></html>"
    )


def login_page(login_id: str, message: str = "", done: bool = False) -> str:
    """The approval page a `depot login` prints. Approving takes an organization token: the login then
    receives a user token of that organization."""
    safe_id = html.escape(login_id)
    head = "<!doctype html><html><head><meta charset='utf-8'><title>Approve depot login</title></head><body>"
    if done:
        return f"{head}<h1>Login approved</h1><p>{html.escape(message)}</p></body></html>"
    note = f"<p><strong>{html.escape(message)}</strong></p>" if message else ""
    return (
        f"{head}<h1>Approve depot login</h1>{note}"
        "<p>A <code>depot login</code> is waiting for approval. Paste an organization token to give it a "
        "user token of that organization, or run <code>opendepot login approve "
        f"{safe_id}</code> on the server.</p>"
        f"<form method='post' action='/login/{safe_id}'>"
        "<label>Organization token <input type='password' name='token' autocomplete='off' size='60'></label> "
        "<button type='submit'>Approve</button></form></body></html>"
    )
