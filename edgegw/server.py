"""The running gateway: builds the runtime from a bootstrap and owns its lifecycle.

Runtime objects are built from the immutable config model in one place, so that a later reload
is "build new objects, swap one reference". Signals: SIGTERM and SIGINT stop the server.
"""

from __future__ import annotations

import asyncio
import gc
import signal
import time
from typing import Any

from . import log
from .admin import Admin
from .config import Bootstrap
from .listener import Listener
from .stats import Store
from .upstream.cluster import ClusterManager

_log = log.get("main")


class Server:
    def __init__(self, boot: Bootstrap, options: dict[str, Any] | None = None) -> None:
        self.boot = boot
        self.options = options or {}
        self.store = Store()
        self.state = "PRE_INITIALIZING"
        self.started = time.time()
        self.store.gauge("server.live").value = 0
        self.clusters = ClusterManager(boot.static_resources.clusters, self.store)
        self.listeners = [Listener(lc, self.clusters, self.store)
                          for lc in boot.static_resources.listeners]
        self.admin: Admin | None = None
        if boot.admin.address is not None:
            sa = boot.admin.address.socket_address
            self.admin = Admin(self, sa.address, sa.port_value, boot.admin.access_log_path)
        self._stopped: asyncio.Event | None = None

    async def start(self) -> None:
        self._stopped = asyncio.Event()
        self.state = "INITIALIZING"
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
        self.state = "LIVE"
        self.store.gauge("server.live").value = 1
        self.store.gauge("server.concurrency").value = 1
        _log.info("all dependencies initialized. starting workers")

    def request_stop(self) -> None:
        if self._stopped is not None:
            self._stopped.set()

    async def run(self) -> None:
        await self.start()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        assert self._stopped is not None
        await self._stopped.wait()
        _log.info("shutting down")
        await self.stop()

    async def stop(self) -> None:
        self.state = "DRAINING"
        for lst in self.listeners:
            lst.stop()
        self.clusters.stop()
        if self.admin is not None:
            await self.admin.stop()
        _log.info("exiting")
