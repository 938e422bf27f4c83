"""The running gateway: builds the runtime from a bootstrap and owns its lifecycle.

Runtime objects are built from the immutable config model in one place, so that a later reload
is "build new objects, swap one reference". Signals: SIGTERM and SIGINT drain and stop the
server (a second one stops it at once), SIGUSR1 reopens access logs.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import time
from typing import Any

from . import log
from .admin import Admin
from .config import Bootstrap
from .listener import Listener
from .stats import Store
from .tls.certs import cert_details, days_left, parse_chain
from .tls.sds import SecretManager
from .upstream.cluster import ClusterManager

_log = log.get("main")


class Server:
    def __init__(self, boot: Bootstrap, options: dict[str, Any] | None = None,
                 raw_config: dict[str, Any] | None = None) -> None:
        self.boot = boot
        self.raw_config = raw_config if raw_config is not None else boot.model_dump(
            exclude_defaults=True)
        self.options = options or {}
        self.store = Store()
        self._state = "PRE_INITIALIZING"
        self.health_failed = False
        """Set by POST /healthcheck/fail: the server reports DRAINING until /healthcheck/ok."""
        self.started = time.time()
        self.store.gauge("server.live").value = 0
        self.secrets = SecretManager(boot, self.store)
        self.clusters = ClusterManager(boot.static_resources.clusters, self.store, self.secrets)
        self.listeners = [Listener(lc, self.clusters, self.store, self.secrets)
                          for lc in boot.static_resources.listeners]
        self.admin: Admin | None = None
        if boot.admin.address is not None:
            sa = boot.admin.address.socket_address
            self.admin = Admin(self, sa.address, sa.port_value, boot.admin.access_log_path)
        self._stopped: asyncio.Event | None = None
        self._drained: asyncio.Event | None = None

    async def start(self) -> None:
        self._stopped = asyncio.Event()
        self._state = "INITIALIZING"
        if self.admin is not None:
            await self.admin.start()
        _log.info("loading %d cluster(s)", len(self.clusters.clusters))
        await self.clusters.start()
        _log.info("loading %d listener(s)", len(self.listeners))
        for lst in self.listeners:
            lst.start()
            _log.info("listener '%s' on %s:%d", lst.name, *lst.address)
        # Config and runtime objects live as long as the server: keep the cyclic GC off them.
        gc.freeze()
        self.secrets.start()
        self._state = "LIVE"
        self.store.gauge("server.concurrency").value = 1
        _log.info("all dependencies initialized. starting workers")

    @property
    def state(self) -> str:
        return "DRAINING" if self.health_failed and self._state == "LIVE" else self._state

    def update_server_gauges(self) -> None:
        """The server.* gauges Envoy keeps, refreshed when the admin port is read."""
        g = self.store.gauge
        g("server.live").value = int(self.state == "LIVE")
        g("server.state").value = {"LIVE": 0, "DRAINING": 1, "PRE_INITIALIZING": 2,
                                   "INITIALIZING": 3}[self._state]
        g("server.uptime").value = int(time.time() - self.started)
        with open("/proc/self/statm") as f:
            g("server.memory_allocated").value = int(f.read().split()[1]) * os.sysconf(
                "SC_PAGE_SIZE")
        self.update_cert_gauge()
        for c in self.clusters.clusters.values():
            c.update_breakers()

    def _tls_objects(self) -> list[Any]:
        out: list[Any] = [c.tls for lst in self.listeners for c in lst.all_chains if c.tls]
        out += [c.tls for c in self.clusters.clusters.values() if c.tls]
        return out

    def certificates(self) -> list[dict[str, Any]]:
        """Admin /certs: one entry per certificate of each TLS context, as Envoy lists them."""
        out = []
        for tls in self._tls_objects():
            ca = ([cert_details(c, tls.ca_path) for c in parse_chain(tls.ca_pem, "ca")]
                  if tls.ca_pem else [])
            for pair, path in tls.pairs() or [(None, "")]:
                chain = [cert_details(c, path) for c in pair.chain] if pair else []
                out.append({"ca_cert": ca, "cert_chain": chain})
        return out

    def update_cert_gauge(self) -> None:
        """``server.days_until_first_cert_expiring``: the fewest days left on any certificate
        the gateway presents."""
        days = [days_left(c) for tls in self._tls_objects() for pair, _ in tls.pairs()
                for c in pair.chain]
        self.store.gauge("server.days_until_first_cert_expiring").value = min(days) if days else 0

    def reopen_logs(self) -> None:
        """SIGUSR1: reopen access log files (after logrotate moved them), as Envoy does."""
        for lst in self.listeners:
            for chain in lst.all_chains:
                for logger in chain.hcm.access_logs:
                    logger.reopen()
        _log.info("reopening access logs")

    def request_stop(self) -> None:
        """Drain, then stop (SIGTERM, SIGINT, POST /quitquitquit); asked twice, stop now."""
        if self._stopped is None:
            return
        if self._stopped.is_set() and self._drained is not None:
            _log.info("asked again: not waiting for the drain")
            self._drained.set()
        self._stopped.set()

    def open_connections(self) -> int:
        return sum(len(lst.open) for lst in self.listeners)

    async def drain(self, limit: float) -> None:
        """Stops accepting, closes idle keep-alive connections and lets busy ones finish their
        request (answered with ``connection: close``), for at most ``limit`` seconds."""
        self._state = "DRAINING"
        self._drained = asyncio.Event()
        for lst in self.listeners:
            lst.drain()
        deadline = time.monotonic() + limit
        if self.open_connections():
            _log.info("draining %d open connection(s), for at most %.0fs",
                      self.open_connections(), limit)
        while self.open_connections() and time.monotonic() < deadline \
                and not self._drained.is_set():
            try:
                await asyncio.wait_for(self._drained.wait(), 0.05)
            except TimeoutError:
                pass
        if self.open_connections():
            _log.warning("drain time over: closing %d connection(s) still open",
                         self.open_connections())

    async def run(self) -> None:
        await self.start()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGUSR1, self.reopen_logs)
        assert self._stopped is not None
        await self._stopped.wait()
        _log.info("shutting down")
        await self.drain(float(self.options.get("drain_time_s") or 600))
        await self.stop()

    async def stop(self) -> None:
        self._state = "DRAINING"
        for lst in self.listeners:
            lst.stop()
        self.clusters.stop()
        self.secrets.stop()
        if self.admin is not None:
            await self.admin.stop()
        _log.info("exiting")
