"""The baseline for bench/api.py: a trivial ASGI app that answers every POST with a fixed protobuf body,
run by opendepot's own supervisor, workers, event loop and Hypercorn configuration."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from opendepot.config import Config
from opendepot.server import serve_workers

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
    config = Config(
        data_dir=Path("."),
        listen=listen,
        tls_cert=None,
        tls_key=None,
        database_url="",
        regions=("r",),
        default_region="r",
        log_level="WARNING",
        workers=workers,
        public_url="",
        buildkitd="",
        registry="",
        registry_listen="127.0.0.1:0",
        registry_host="",
        registry_storage="",
        registry_gc_idle_seconds=0,
        oidc_issuers={},
        oidc_audiences=(),
        oidc_replay_window_seconds=0,
        login_timeout_seconds=0,
        buildkit_listen="127.0.0.1:0",
        buildkit_host="",
        lease_timeout=1.0,
        builder_idle_timeout=0.0,
        build_log_limit_mib=1,
        status_tap=False,
        usage_sample_seconds=60.0,
    )
    serve_workers(config, make_trivial)


if __name__ == "__main__":
    main()
