"""Duties that run once among all `opendepot serve` nodes sharing one store: the builder reconciler (with
the lease reaper and usage sampling), pruning of builder objects, the metrics gauges and registry GC.

Each node runs `SingularLease`, a loop that takes or renews one lease row (nodes/queries.py) every
RENEW_SECONDS for TTL_SECONDS. Only the holder runs the duties (`Gated` wraps their loops). When the holder
dies, its lease expires and another node takes it within TTL_SECONDS + RENEW_SECONDS. A node that cannot
renew in time stops acting as the holder before its lease can have expired, so two nodes never both act.
Every node keeps its API and its gateway: any node's gateway reaches any builder (builder sockets are under
the shared data dir; pods by their cluster address)."""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta

from opendepot.clock import utcnow
from opendepot.nodes import queries
from opendepot.store import Store

from .loops import Loop

log = logging.getLogger("opendepot.singular")

LEASE_NAME = "singular-duties"
TTL_SECONDS = 10.0
RENEW_SECONDS = 2.0
# Stop acting this long before the lease could have expired (clock drift between nodes, a slow renewal).
SAFETY_SECONDS = 2.0


def node_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class SingularLease:
    name = "singular-lease"
    interval = RENEW_SECONDS

    def __init__(
        self,
        store: Store,
        on_gain: Callable[[], Awaitable[None]],
        on_loss: Callable[[], Awaitable[None]],
        holder: str | None = None,
    ) -> None:
        self.store = store
        self.holder = holder or node_name()
        self.on_gain = on_gain
        self.on_loss = on_loss
        self._valid_until = 0.0
        self._acting = False

    def holding(self) -> bool:
        return self._acting and time.monotonic() < self._valid_until - SAFETY_SECONDS

    async def run_once(self) -> None:
        asked = time.monotonic()
        ttl = timedelta(seconds=TTL_SECONDS)
        held = await self.store.run(lambda s: queries.try_hold(s, LEASE_NAME, self.holder, utcnow(), ttl))
        if held:
            self._valid_until = asked + TTL_SECONDS
            if not self._acting:
                log.info("node %s now runs the singular duties", self.holder)
                await self.on_gain()
                self._acting = True
        elif self._acting:
            log.warning("node %s lost the singular duties to another node", self.holder)
            self._acting = False
            await self.on_loss()

    async def release(self) -> None:
        if self._acting:
            self._acting = False
            await self.store.run(lambda s: queries.release(s, LEASE_NAME, self.holder, utcnow()))


class Gated:
    """A loop that runs only on the node holding the singular lease."""

    def __init__(self, inner: Loop, lease: SingularLease) -> None:
        self.inner = inner
        self.lease = lease

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def interval(self) -> float:
        return self.inner.interval

    async def run_once(self) -> None:
        if self.lease.holding():
            await self.inner.run_once()
