"""The shared build page at `/shared/<secret>`: plain read-only HTML."""

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
