"""The baseline for bench/api.py: a trivial ASGI app that answers every POST with a fixed protobuf body,
run by opendepot's own supervisor, workers, event loop and Hypercorn configuration."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from opendepot.server.config import Config, add_arguments, resolve
from opendepot.server.supervisor import serve_workers

BODY = b"\n\x0c\n\nbenchmark0"


async def trivial(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    headers = [(b"content-type", b"application/proto"), (b"content-length", str(len(BODY)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": BODY})


def make_trivial(_config: Config) -> tuple[Any, Any]:
    return trivial, lambda: None


def main() -> None:
    listen, workers = sys.argv[1], int(sys.argv[2])
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--listen", listen, "--workers", str(workers), "--log-level", "WARNING"])
    config = resolve(
        args, {"OPENDEPOT_DATA_DIR": ".", "OPENDEPOT_REGISTRY": "off", "OPENDEPOT_DATABASE_URL": "x"}
    )
    serve_workers(config, make_trivial)


if __name__ == "__main__":
    main()
