"""Active health checking: each host of a cluster is probed on a timer (Envoy's HealthChecker).

Envoy's rules, kept here:
- Hosts start as failed (``/failed_active_hc``); the cluster waits for the first round of
  checks before it serves, and a host's first success makes it healthy at once.
- A healthy host needs ``unhealthy_threshold`` network failures (refused, reset, timed out) in
  a row to be marked unhealthy, but an HTTP answer outside ``expected_statuses`` (200 by
  default) marks it unhealthy at once unless it is in ``retriable_statuses``. An unhealthy host
  needs ``healthy_threshold`` successes in a row to come back.
- Until the cluster has carried traffic, checks run every ``no_traffic_interval`` (60 s by
  default); then every ``interval``, with the ``*_edge_interval`` while a change is pending and
  ``unhealthy_interval`` while unhealthy; jitter is added as configured.
- HTTP checks send ``user-agent: Envoy/HC`` and Host = ``host`` or the cluster's name, over
  the cluster's transport (TLS with its SNI when it has one), reusing the connection.
"""

from __future__ import annotations

import asyncio
import random
from typing import TYPE_CHECKING, Protocol

import httptools

from .. import log
from ..config import model as m
from ..http.router.header_parser import header_ops
from ..stats import Counter, Gauge, StatSet, Store

if TYPE_CHECKING:
    from ..tls.context import ClientTls
    from .cluster_stats import ClusterStats
    from .host import Host
    from .outlier import OutlierDetector

_log = log.get("hc")


class HealthCheckStats(StatSet):
    """``cluster.<name>.health_check.*``."""

    attempt: Counter
    success: Counter
    failure: Counter
    passive_failure: Counter
    network_failure: Counter
    verify_cluster: Counter
    healthy: Gauge
    degraded: Gauge


class _Failure(Exception):
    def __init__(self, active: bool, why: str) -> None:
        super().__init__(why)
        self.active = active
        """An HTTP answer with a bad status (marks unhealthy at once) vs. a network failure."""


class _Response:
    """Just enough of an HTTP/1.1 response to judge it: status, keep-alive, completeness."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.done = False

    def on_message_complete(self) -> None:
        self.done = True


class Checked(Protocol):
    """The cluster as its health checker sees it (``Cluster`` is one)."""

    name: str
    hosts: list[Host]
    tls: ClientTls | None
    stats: ClusterStats
    outlier: OutlierDetector | None

    def health_changed(self) -> None: ...


class HealthChecker:
    def __init__(self, cluster: Checked, cfg: m.HealthCheck, store: Store) -> None:
        self.cluster = cluster
        self.cfg = cfg
        self.stats = HealthCheckStats(store, f"cluster.{cluster.name}.health_check.")
        self.sessions: dict[Host, Session] = {}
        http = cfg.http_health_check
        self.request = b""
        if http is not None:
            headers = [(b"host", (http.host or cluster.name).encode("latin-1")),
                       (b"user-agent", b"Envoy/HC")]
            header_ops(http.request_headers_to_add, http.request_headers_to_remove).apply(headers)
            self.request = (f"{http.method} {http.path} HTTP/1.1\r\n".encode("latin-1")
                            + b"".join(k + b": " + v + b"\r\n" for k, v in headers) + b"\r\n")
            self.expected = [(r.start, r.end) for r in http.expected_statuses] or [(200, 201)]
            self.retriable = [(r.start, r.end) for r in http.retriable_statuses]
        tcp = cfg.tcp_health_check
        self.send = bytes.fromhex(tcp.send.text or "") if tcp and tcp.send else b""
        self.receive = [bytes.fromhex(p.text or "") for p in tcp.receive] if tcp else []

    async def start(self) -> None:
        """Starts a session per host and waits for the first round (Envoy's cluster warming)."""
        self.sync_hosts()
        firsts = [s.first_done.wait() for s in self.sessions.values()]
        if firsts:
            await asyncio.wait_for(asyncio.gather(*firsts),
                                   self.cfg.timeout + self.cfg.initial_jitter + 1.0)

    def sync_hosts(self) -> None:
        """Adds sessions for new hosts and stops those of hosts that left."""
        hosts = set(self.cluster.hosts)
        for host in list(self.sessions):
            if host not in hosts:
                self.sessions.pop(host).stop()
        for host in self.cluster.hosts:
            if host not in self.sessions:
                host.failed_active_hc = True
                self.sessions[host] = Session(self, host)
        self.stats.healthy.value = sum(not h.failed_active_hc for h in self.cluster.hosts)

    def stop(self) -> None:
        for s in self.sessions.values():
            s.stop()
        self.sessions.clear()


class Session:
    """The checks of one host."""

    def __init__(self, checker: HealthChecker, host: Host) -> None:
        self.checker = checker
        self.host = host
        self.first = True
        self.first_done = asyncio.Event()
        self.healthy_in_a_row = 0
        self.unhealthy_in_a_row = 0
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.task = asyncio.ensure_future(self._run())

    def stop(self) -> None:
        self.task.cancel()
        self._close()

    def _close(self) -> None:
        if self.writer is not None:
            self.writer.transport.abort()
        self.reader = self.writer = None

    async def _run(self) -> None:
        cfg = self.checker.cfg
        if cfg.initial_jitter:
            await asyncio.sleep(random.uniform(0, cfg.initial_jitter))
        while True:
            pending = self._check_once_result(await self._check())
            self.first_done.set()
            await asyncio.sleep(self._interval(pending))

    async def _check(self) -> _Failure | None:
        checker = self.checker
        checker.stats.attempt.value += 1
        try:
            await asyncio.wait_for(self._probe(), checker.cfg.timeout)
        except _Failure as f:
            self._close()
            return f
        except TimeoutError:
            self._close()
            return _Failure(False, "timeout")
        except (OSError, EOFError, httptools.HttpParserError) as e:
            self._close()
            return _Failure(False, str(e) or type(e).__name__)
        return None

    async def _probe(self) -> None:
        checker = self.checker
        host = self.host
        if self.writer is None or self.writer.is_closing():
            tls = checker.cluster.tls
            self.reader, self.writer = await asyncio.open_connection(
                host.address, host.port, ssl=tls.ctx if tls else None,
                server_hostname=(tls.sni or "") if tls else None)
        reader, writer = self.reader, self.writer
        assert reader is not None and writer is not None
        if checker.cfg.tcp_health_check is not None:
            if checker.send:
                writer.write(checker.send)
            got = b""
            for want in checker.receive:
                while want not in got:
                    data = await reader.read(65536)
                    if not data:
                        raise EOFError("connection closed before the expected bytes")
                    got += data
                got = got[got.index(want) + len(want):]
            self._close()  # a TCP check opens a fresh connection each time
            return
        writer.write(checker.request)
        resp = _Response()
        while not resp.done:
            data = await reader.read(65536)
            if not data:
                if resp.parser.get_status_code() and not resp.done:
                    resp.parser.feed_data(b"")  # a response that ends at close
                raise EOFError("connection closed before a complete response")
            resp.parser.feed_data(data)
        status = resp.parser.get_status_code()
        if not (checker.cfg.reuse_connection and resp.parser.should_keep_alive()):
            self._close()
        if not any(a <= status < b for a, b in checker.expected):
            retriable = any(a <= status < b for a, b in checker.retriable)
            raise _Failure(not retriable, f"status {status}")

    def _check_once_result(self, failure: _Failure | None) -> bool:
        """Applies a result to the host; True while a change of state is pending."""
        checker = self.checker
        cfg = checker.cfg
        host = self.host
        cluster = checker.cluster
        first, self.first = self.first, False
        if failure is None:
            checker.stats.success.value += 1
            self.unhealthy_in_a_row = 0
            if host.failed_active_hc:
                self.healthy_in_a_row += 1
                if first or self.healthy_in_a_row >= cfg.healthy_threshold:
                    host.failed_active_hc = False
                    self.healthy_in_a_row = 0
                    if not first:
                        _log.info("cluster '%s': host %s is healthy", cluster.name, host.label)
                    self._changed()
                    return False
                return True
            if host.ejected and cluster.outlier is not None and \
                    cluster.outlier.cfg.successful_active_health_check_uneject_host:
                cluster.outlier.uneject(host)
            return False
        checker.stats.failure.value += 1
        if not failure.active:
            checker.stats.network_failure.value += 1
        self.healthy_in_a_row = 0
        if cfg.always_log_health_check_failures or not host.failed_active_hc:
            _log.warning("cluster '%s': health check of %s failed: %s", cluster.name,
                         host.label, failure)
        if host.failed_active_hc:
            if first:
                self._changed()
            return False
        self.unhealthy_in_a_row += 1
        if failure.active or self.unhealthy_in_a_row >= cfg.unhealthy_threshold:
            host.failed_active_hc = True
            self.unhealthy_in_a_row = 0
            _log.warning("cluster '%s': host %s is unhealthy", cluster.name, host.label)
            self._changed()
            return False
        return True

    def _changed(self) -> None:
        checker = self.checker
        checker.stats.healthy.value = sum(not h.failed_active_hc for h in checker.cluster.hosts)
        checker.cluster.health_changed()

    def _interval(self, pending: bool) -> float:
        cfg = self.checker.cfg
        unhealthy = self.host.failed_active_hc
        if not self.checker.cluster.stats.upstream_cx_total.value:
            base = (cfg.no_traffic_healthy_interval
                    if not unhealthy and cfg.no_traffic_healthy_interval else
                    cfg.no_traffic_interval)
        elif unhealthy:
            base = cfg.unhealthy_interval or cfg.interval
            if pending:
                base = cfg.unhealthy_edge_interval or base
        else:
            base = (cfg.healthy_edge_interval or cfg.interval) if pending else cfg.interval
        if cfg.interval_jitter_percent:
            base += random.uniform(0, base * cfg.interval_jitter_percent / 100)
        if cfg.interval_jitter:
            base += random.uniform(0, cfg.interval_jitter)
        return base
