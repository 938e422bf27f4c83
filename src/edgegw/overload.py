"""Envoy's overload manager, as far as edgegw has it: the
``global_downstream_max_connections`` resource monitor, one limit on the connections that all
listeners hold at once. Past it, a new connection is closed as soon as it is accepted and
counted in its listener's ``downstream_global_cx_overflow``; connections already open are
served as before.

Workers are processes here (Envoy's are threads sharing one counter), so under
``--concurrency N`` each worker holds an even share of the limit (edgegw's difference).
"""

from __future__ import annotations

from collections.abc import Callable

from . import log

_log = log.get("main")


class ConnectionLimit:
    def __init__(self, count: Callable[[], int], workers: int = 1) -> None:
        self.count = count
        """The connections this process holds now, on the listeners the limit covers."""
        self.workers = max(1, workers)
        self.limit: int | None = None

    def configure(self, total: int | None) -> None:
        """The bootstrap's limit (None: no monitor); a reload may change it."""
        self.limit = None if total is None else max(1, total // self.workers)
        if total is not None and self.workers > 1:
            _log.info("global_downstream_max_connections %d: %d per worker (%d workers)",
                      total, self.limit, self.workers)

    def admit(self) -> bool:
        return self.limit is None or self.count() < self.limit
