"""`opendepot build`: a build through any Depot-compatible server for people without the depot CLI.

The server creates the build and lends a BuildKit connection (issued client certificate, CA, endpoint);
`buildctl` from this machine then solves the Dockerfile over it, while a thread keeps the lease alive.
Progress is BuildKit's own (`--progress rawjson`), drawn with rich: one line per finished step, with its
time or CACHED, and the step's output beneath. The build is finished as success or failure, and the exit
status is buildctl's."""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from protobuf import Oneof
from rich.console import Console
from rich.markup import escape

from opendepot.client import Depot, DepotError, cli_v1
from opendepot.files import write_private

from .common import add_client_arguments, remote

HEARTBEAT_SECONDS = 5.0


def find_buildctl() -> str | None:
    beside = Path(sys.prefix) / "bin" / "buildctl"
    return str(beside) if beside.exists() else shutil.which("buildctl")


@dataclass
class Vertex:
    name: str
    started: str | None = None
    completed: str | None = None
    cached: bool = False
    error: str = ""
    printed: bool = False
    logs: list[str] = field(default_factory=list)


def _seconds(started: str | None, completed: str | None) -> float | None:
    if not started or not completed:
        return None
    try:
        return (datetime.fromisoformat(completed) - datetime.fromisoformat(started)).total_seconds()
    except ValueError:
        return None


class Progress:
    """Reads buildctl's rawjson status (one SolveStatus per line) and prints each step once it ends."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.vertices: dict[str, Vertex] = {}
        self.order: list[str] = []

    def feed(self, line: str) -> None:
        try:
            status = json.loads(line)
        except ValueError:
            self.console.print(escape(line.rstrip()), style="dim")
            return
        for v in status.get("vertexes") or []:
            vertex = self.vertices.get(v["digest"])
            if vertex is None:
                vertex = self.vertices[v["digest"]] = Vertex(v.get("name", ""))
                self.order.append(v["digest"])
            vertex.started = v.get("started") or vertex.started
            vertex.completed = v.get("completed") or vertex.completed
            vertex.cached = vertex.cached or bool(v.get("cached"))
            vertex.error = v.get("error") or vertex.error
        for log in status.get("logs") or []:
            vertex = self.vertices.get(log.get("vertex", ""))
            if vertex is not None:
                text = base64.b64decode(log.get("data") or "").decode("utf-8", "replace")
                vertex.logs += [t for t in text.splitlines() if t.strip()]
        for digest in self.order:
            vertex = self.vertices[digest]
            if not vertex.printed and (vertex.completed or vertex.error):
                self._print(vertex)

    def _print(self, vertex: Vertex) -> None:
        vertex.printed = True
        took = _seconds(vertex.started, vertex.completed)
        if vertex.error:
            mark, style = "✗", "bold red"
        elif vertex.cached:
            mark, style = "CACHED", "cyan"
        else:
            # Sub-millisecond steps can report completed a hair before started.
            mark, style = f"{max(took, 0.0):.1f}s" if took is not None else "done", "green"
        self.console.print(f"[{style}]{mark:>7}[/] {escape(vertex.name)}")
        for line in vertex.logs:
            self.console.print(f"        [dim]{escape(line)}[/]")
        if vertex.error:
            self.console.print(f"        [red]{escape(vertex.error)}[/]")

    def finish(self) -> None:
        for digest in self.order:
            vertex = self.vertices[digest]
            if not vertex.printed and vertex.started:
                self._print(vertex)


def _options(args: argparse.Namespace) -> cli_v1.BuildOptions:
    return cli_v1.BuildOptions(
        command=cli_v1.Command.BUILD,
        tags=list(args.tag or []),
        save=bool(args.save or args.save_tag),
        save_tags=list(args.save_tag or []),
        target_name=args.target,
    )


def _heartbeat(base_url: str, token: str, build_id: str, stop: threading.Event) -> None:
    with Depot(base_url, token) as depot:
        while not stop.wait(HEARTBEAT_SECONDS):
            # A missed beat is retried on the next; a lost lease shows up as buildctl's error.
            with contextlib.suppress(DepotError):
                depot.cli.v1.BuildService.report_build_health(
                    cli_v1.ReportBuildHealthRequest(build_id=build_id, platform=cli_v1.BuilderPlatform.AMD64)
                )


def _connection(
    depot: Depot, build_id: str, console: Console
) -> cli_v1.GetBuildKitConnectionResponse.ActiveConnection:
    request = cli_v1.GetBuildKitConnectionRequest(build_id=build_id, platform=cli_v1.BuilderPlatform.AMD64)
    with console.status("waiting for the builder"):
        while True:
            answer = depot.cli.v1.BuildService.get_build_kit_connection(request)
            connection = answer.connection
            if connection is not None and connection.field == "active":
                active: cli_v1.GetBuildKitConnectionResponse.ActiveConnection = connection.value
                return active
            wait = connection.value.wait_ms if connection is not None else 1000
            time.sleep(max(wait, 100) / 1000)


def buildctl_command(
    buildctl: str,
    active: cli_v1.GetBuildKitConnectionResponse.ActiveConnection,
    certs: Path,
    args: argparse.Namespace,
    push_names: list[str],
) -> list[str]:
    assert active.cert is not None and active.ca_cert is not None
    write_private(certs / "ca.pem", active.ca_cert.cert)
    write_private(certs / "cert.pem", active.cert.cert)
    write_private(certs / "key.pem", active.cert.key)
    context = Path(args.context).resolve()
    dockerfile = Path(args.file).resolve() if args.file else context / "Dockerfile"
    command = [
        buildctl, "--addr", active.endpoint, "--tlsservername", active.server_name,
        "--tlscacert", str(certs / "ca.pem"), "--tlscert", str(certs / "cert.pem"),
        "--tlskey", str(certs / "key.pem"),
        "build", "--frontend", "dockerfile.v0", "--local", f"context={context}",
        "--local", f"dockerfile={dockerfile.parent}", "--opt", f"filename={dockerfile.name}",
        "--progress", "rawjson",
    ]  # fmt: skip
    if args.target:
        command += ["--opt", f"target={args.target}"]
    for value in args.build_arg or []:
        command += ["--opt", f"build-arg:{value}"]
    if push_names:
        # buildctl reads --output as CSV: several names go in one quoted field.
        command += ["--output", f'type=image,"name={",".join(push_names)}",push=true']
    for output in args.output or []:
        command += ["--output", output]
    return command


def run_build(depot: Depot, args: argparse.Namespace) -> int:
    console = Console(stderr=True, highlight=False)
    buildctl = find_buildctl()
    if buildctl is None:
        console.print("opendepot: buildctl is not installed (./dev setup puts it in .venv/bin)")
        return 2
    if not Path(args.context).is_dir():
        console.print(f"opendepot: build context {args.context!r} is not a directory")
        return 2
    created = depot.cli.v1.BuildService.create_build(
        cli_v1.CreateBuildRequest(project_id=args.project or "", options=[_options(args)])
    )
    build_id, token = created.build_id, created.build_token
    console.print(f"[bold]build[/] {build_id} in project {created.project_id}  {created.build_url}")
    with (
        Depot(depot.base_url, token) as as_build,
        tempfile.TemporaryDirectory(prefix="opendepot-build-") as tmp,
    ):
        stop = threading.Event()
        beat = threading.Thread(target=_heartbeat, args=(depot.base_url, token, build_id, stop), daemon=True)
        beat.start()
        outcome: Oneof[Any, Any] = Oneof("error", cli_v1.FinishBuildRequest.BuildError(error="interrupted"))
        try:
            active = _connection(as_build, build_id, console)
            names = [t.tag for t in created.additional_tags] if (args.save or args.save_tag) else []
            env = dict(os.environ)
            if names:
                # buildctl answers buildkitd's credential requests from a Docker config: the build token.
                config = {"auths": {c.host: {"auth": c.token} for c in created.additional_credentials}}
                write_private(Path(tmp) / "config.json", json.dumps(config))
                env["DOCKER_CONFIG"] = tmp
            command = buildctl_command(buildctl, active, Path(tmp), args, names)
            code = _solve(command, env, console)
            if code == 0:
                outcome = Oneof("success", cli_v1.FinishBuildRequest.BuildSuccess())
                for name in names:
                    console.print(f"[bold]saved[/] {name}")
            else:
                outcome = Oneof(
                    "error", cli_v1.FinishBuildRequest.BuildError(error=f"buildctl exited with {code}")
                )
            return code
        finally:
            stop.set()
            try:
                as_build.cli.v1.BuildService.finish_build(
                    cli_v1.FinishBuildRequest(build_id=build_id, result=outcome)
                )
            except DepotError as exc:
                console.print(f"opendepot: could not finish build {build_id}: {exc.message}")


def _solve(command: list[str], env: dict[str, str], console: Console) -> int:
    progress = Progress(console)
    process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    stream: IO[str] | None = process.stderr
    assert stream is not None
    with console.status("building"):
        for line in stream:
            progress.feed(line)
    progress.finish()
    return process.wait()


def register(commands: Any) -> None:
    build = commands.add_parser(
        "build",
        help="build a Dockerfile through the server with buildctl (no depot CLI needed)",
        description="Creates a build on the server, drives its BuildKit with buildctl over the issued "
        "certificate, shows BuildKit's progress, and exits with buildctl's status.",
    )
    build.add_argument("context", help="the build context directory")
    build.add_argument("--project", help="project id (default: the token's own project)")
    build.add_argument("-f", "--file", help="the Dockerfile (default: CONTEXT/Dockerfile)")
    build.add_argument("--target", help="the stage to build")
    build.add_argument("--build-arg", action="append", metavar="NAME=VALUE")
    build.add_argument("-t", "--tag", action="append", help="image name, kept with the build's options")
    build.add_argument("--save", action="store_true", help="push the image to the project's registry")
    build.add_argument("--save-tag", action="append", help="an extra tag for --save (implies it)")
    build.add_argument("--output", action="append", help="a buildctl --output, e.g. type=local,dest=out")
    add_client_arguments(build)
    build.set_defaults(run=remote(run_build))
