"""What the admin endpoints read and command, whoever serves them.

One ``Server`` answers for itself; under ``--concurrency N`` the supervisor answers for all of
its workers (asking each through its private admin socket and putting the answers together).
The admin port renders and validates; the backend only provides documents in Envoy's shapes
and carries out commands, so the endpoints exist once.
"""

from __future__ import annotations

from typing import Any, Protocol

from ..stats import Store

Doc = dict[str, Any]


class AdminBackend(Protocol):
    async def current_state(self) -> str:
        """LIVE, DRAINING, PRE_INITIALIZING or INITIALIZING."""

    async def waiting(self) -> list[str]:
        """What a sites file asks for that is not served yet (HTTPS before any certificate):
        /ready says INITIALIZING and names it (edgegw-only)."""

    async def stats_store(self) -> Store:
        """Every stat, the server.* gauges brought up to date."""

    async def clusters_doc(self) -> Doc:
        """``/clusters?format=json``."""

    async def config_dump_doc(self) -> list[Doc]:
        """``/config_dump``'s ``configs``, before ``?resource=`` and ``?mask=``."""

    async def certs_doc(self) -> Doc:
        """``/certs``, with the certificate updates that were refused (edgegw-only)."""

    async def listeners_doc(self) -> Doc:
        """``/listeners?format=json``."""

    async def status_doc(self) -> Doc:
        """``/status.json``, the status page's data (edgegw-only)."""

    async def server_info_doc(self) -> Doc:
        """``/server_info``."""

    async def set_log_levels(self, levels: list[tuple[str | None, int]]) -> None:
        """(component or None for all, level) pairs, already checked."""

    async def set_health_failed(self, failed: bool) -> None: ...

    async def drain_listeners(self, graceful: bool = False, skip_exit: bool = False
                              ) -> None: ...

    async def xds_doc(self, after: int, epoch: str) -> Doc | None:
        """What a leading worker's followers are given (``xds/follow.py``), once newer than
        generation ``after`` of ``epoch``; None where there is none."""

    async def crowdsec_doc(self, url: str, after: int, epoch: str) -> Doc | None:
        """What a leading worker's bouncer gives the other workers' (``crowdsec.py``); None
        where there is none."""

    def request_stop(self) -> None: ...
