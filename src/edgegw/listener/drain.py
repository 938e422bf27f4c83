"""Envoy's drain sequence, as ``/drain_listeners`` starts it, by ``--drain-strategy``.

The HTTP connections open when it starts, and those a graceful drain still accepts, are asked
to close: an HTTP/2 one gets a GOAWAY, an HTTP/1.1 one closes after its next response (an
idle one is not cut, as a request may be on its way). ``immediate`` asks them all at once and every response closes its
connection. ``gradual`` (Envoy's default) asks each at a random moment of the drain time (of
what remains of it, for one accepted later), and a response closes its connection with a
probability that grows from 0 to 1 over the drain time, so that clients move away a few at a
time (Envoy 1.40 was seen to do both: an idle connection served on without
``connection: close`` just after a gradual drain began, closed at once by an immediate one).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from typing import Protocol


class Drainable(Protocol):
    def drain(self, close_idle: bool = True) -> None: ...


class DrainManager:
    def __init__(self, drain_time: float, strategy: str = "gradual") -> None:
        self.drain_time = drain_time
        self.strategy = strategy
        self.started: float | None = None
        self.health_failed = False
        """POST /healthcheck/fail: every response closes its connection, as in Envoy, so
        that clients move to the nodes a balancer still sends them to."""

    @property
    def draining(self) -> bool:
        return self.started is not None

    def start(self, connections: Sequence[Drainable]) -> None:
        self.started = time.monotonic()
        for conn in connections:
            self.accepted(conn)

    def accepted(self, conn: Drainable) -> None:
        """Tells a connection to drain, now or at its moment of the drain time left."""
        if self.started is None:
            return
        left = self.started + self.drain_time - time.monotonic()
        if self.strategy == "immediate" or left <= 0:
            conn.drain(close_idle=False)
        else:
            asyncio.get_running_loop().call_later(random.random() * left, conn.drain, False)

    def drain_close(self) -> bool:
        """Whether the response being sent closes its connection."""
        if self.health_failed:
            return True
        if self.started is None:
            return False
        elapsed = time.monotonic() - self.started
        if self.strategy == "immediate" or elapsed >= self.drain_time:
            return True
        return random.random() * self.drain_time < elapsed
