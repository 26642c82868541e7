"""Prometheus metrics, served on the API's `/metrics`.

API workers are separate processes, so prometheus_client runs in its multiprocess mode: every process
(supervisor and workers) writes its samples to files in one directory, which `/metrics` in any worker
aggregates. prometheus_client picks its mode when it is first imported, so nothing imports it before the
supervisor has pointed PROMETHEUS_MULTIPROC_DIR at a fresh directory (`prepare`; workers inherit it): the
metrics are made on first use (`metrics()`).

- RPCs: by method and code, with latency histograms (the interceptor).
- Builds by status, builders by state and backend, live leases, pending acquires: gauges the supervisor sets
  from the store now and then (`StoreGauges`).
- Gateway: bytes by direction, connections opened and open now.
- Registry pushes (the registry's notifications)."""

from __future__ import annotations

import functools
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ENV = "PROMETHEUS_MULTIPROC_DIR"


def prepare(directory: Path) -> None:
    """In the supervisor, before the workers start and before prometheus_client is imported anywhere."""
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True, mode=0o700)
    os.environ[ENV] = str(directory)


@dataclass(frozen=True)
class Metrics:
    rpc_requests: Any
    rpc_seconds: Any
    builds: Any
    builders: Any
    leases: Any
    pending_acquires: Any
    gateway_bytes: Any
    gateway_connections: Any
    gateway_open: Any
    gateway_relay_restarts: Any
    gateway_turned_away: Any
    registry_pushes: Any


@functools.cache
def metrics() -> Metrics:
    from prometheus_client import Counter, Gauge, Histogram

    return Metrics(
        rpc_requests=Counter("opendepot_rpc_requests", "RPCs handled", ["method", "code"]),
        rpc_seconds=Histogram(
            "opendepot_rpc_duration_seconds",
            "RPC latency",
            ["method"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        ),
        builds=Gauge("opendepot_builds", "builds by status", ["status"], multiprocess_mode="mostrecent"),
        builders=Gauge(
            "opendepot_builders",
            "builders by state and backend",
            ["state", "backend"],
            multiprocess_mode="mostrecent",
        ),
        leases=Gauge("opendepot_leases", "live machine leases", multiprocess_mode="mostrecent"),
        pending_acquires=Gauge(
            "opendepot_pending_acquires",
            "live leases whose builder is not running yet",
            multiprocess_mode="mostrecent",
        ),
        gateway_bytes=Counter("opendepot_gateway_bytes", "bytes through the BuildKit gateway", ["direction"]),
        gateway_connections=Counter("opendepot_gateway_connections", "connections accepted by the gateway"),
        gateway_open=Gauge(
            "opendepot_gateway_open_connections", "gateway connections open now", multiprocess_mode="livesum"
        ),
        gateway_relay_restarts=Counter(
            "opendepot_gateway_relay_restarts", "times the gateway's relay process died and was started again"
        ),
        gateway_turned_away=Counter(
            "opendepot_gateway_turned_away",
            "connections the gateway closed before their handshake: too many handshakes at once",
        ),
        registry_pushes=Counter("opendepot_registry_pushes", "manifests pushed to the registry"),
    )


def exposition() -> tuple[bytes, str]:
    """The text format of every process's samples (multiprocess), or this process's alone."""
    from prometheus_client import (
        CONTENT_TYPE_LATEST,
        REGISTRY,
        CollectorRegistry,
        generate_latest,
        multiprocess,
    )

    metrics()  # registered even before their first sample
    if os.environ.get(ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
