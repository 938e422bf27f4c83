"""Envoy's tcp_proxy: each downstream connection is paired with one upstream connection to a
host of the cluster, and bytes flow both ways with back-pressure (a side that cannot write
stops the other from reading). A half-close is passed on; a reset on either side resets the
other. With no transport socket on the filter chain this is TLS passthrough: the client's
ClientHello, peeked to choose the chain, is still in the socket and goes upstream unopened.

Reading the downstream pauses until the upstream is connected, as Envoy's does (what a first
read brought is kept and sent on connecting). Stats are Envoy's ``tcp.<stat_prefix>.*``.
"""

from __future__ import annotations

import asyncio
import collections.abc
import random
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import xxhash

from .. import log
from .. import proxy_protocol as pp
from ..accesslog import AccessLogger
from ..config import model as m
from ..http.stream_info import ResponseFlag, StreamInfo
from ..stats import Counter, StatSet, Store
from ..upstream.cluster import Cluster, ClusterManager
from ..upstream.connect import ConnectError, connect

if TYPE_CHECKING:
    from ..listener.tls_inspector import ClientHello

_log = log.get("connection")


class TcpStats(StatSet):
    """``tcp.<stat_prefix>.*``: Envoy's TCP proxy stats (a subset)."""

    downstream_cx_total: Counter
    downstream_cx_no_route: Counter
    downstream_cx_tx_bytes_total: Counter
    downstream_cx_rx_bytes_total: Counter
    downstream_flow_control_paused_reading_total: Counter
    downstream_flow_control_resumed_reading_total: Counter
    idle_timeout: Counter


class TcpProxyConfig:
    """The compiled settings of one tcp_proxy filter, shared by its connections."""

    def __init__(self, cfg: m.TcpProxy, clusters: ClusterManager, store: Store) -> None:
        self.stat_prefix = cfg.stat_prefix
        self.stats = TcpStats(store, f"tcp.{cfg.stat_prefix}.")
        self.clusters = clusters
        wc = cfg.weighted_clusters
        self.names = [c.name for c in wc.clusters] if wc else [cfg.cluster]
        self.weights = [c.weight for c in wc.clusters] if wc else [1]
        self.idle_timeout = 3600.0 if cfg.idle_timeout is None else cfg.idle_timeout
        self.attempts = cfg.max_connect_attempts or 1
        self.hash_source = bool(cfg.hash_policy)
        self.access_logs = [AccessLogger(a) for a in cfg.access_log]

    def cluster(self) -> Cluster | None:
        """The cluster for a new connection: the one named, or one drawn by weight."""
        name = self.names[0] if len(self.names) == 1 else random.choices(
            self.names, self.weights)[0]
        return self.clusters.get(name)

    def close(self) -> None:
        for a in self.access_logs:
            a.close()


def _reset(transport: asyncio.Transport) -> None:
    """Closes with a TCP RST, so that the peer learns of a reset as a reset."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                            b"\x01\x00\x00\x00\x00\x00\x00\x00")
        except OSError:
            pass
    transport.abort()


def _half_close(transport: asyncio.Transport) -> None:
    """Passes an end of input on: a FIN when the transport can send one and keep reading
    (plain TCP), else a close once the buffered bytes are out (TLS has no half-close)."""
    if transport.is_closing():
        return
    if transport.can_write_eof():
        transport.write_eof()
    else:
        transport.close()


class _Upstream(asyncio.Protocol):
    """The upstream side of a session: what it reads goes downstream."""

    def __init__(self, session: TcpSession) -> None:
        self.session = session
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.session.from_upstream(data)

    def eof_received(self) -> bool:
        return self.session.upstream_eof()

    def pause_writing(self) -> None:
        self.session.pause_downstream()

    def resume_writing(self) -> None:
        self.session.resume_downstream()

    def connection_lost(self, exc: Exception | None) -> None:
        self.session.upstream_lost(exc)


class TcpSession(asyncio.Protocol):
    """One downstream connection of a tcp_proxy filter chain (Envoy's TcpProxy::Filter); it
    is also what the access log formats for TCP."""

    def __init__(self, cfg: TcpProxyConfig, tls: bool, sni: str | None, buffer_limit: int,
                 on_close: Callable[[TcpSession], None] | None = None) -> None:
        self.cfg = cfg
        self.tls = tls
        self.sni = sni
        self.buffer_limit = buffer_limit
        self.on_close = on_close
        self.hello: ClientHello | None = None
        self.host_names: tuple[frozenset[str], frozenset[str]] | None = None
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.upstream = _Upstream(self)
        self.remote_ip = self.direct_remote_ip = ""
        self.remote_port = self.direct_remote_port = 0
        self.local_address = ""
        self.info = StreamInfo(self, None)
        """The session's record, from the accept on (its client is known at connection_made)."""
        self.last_activity = time.monotonic()
        self.connecting: asyncio.Task[None] | None = None
        self.idle_timer: asyncio.TimerHandle | None = None
        self.down_done = self.up_done = False
        """Each side has ended its input (EOF) or gone."""
        self.closed = False
        self.counted = False
        self.early: list[bytes] = []
        """What the client sent before the upstream was connected (reading is paused then,
        but a first read may already be under way)."""
        self.proxied: tuple[str, int] | None = None
        self.admit: collections.abc.Callable[[object], bool] | None = None
        """envoy.filters.network.rbac's check, asked as the connection is made (before the
        upstream is: a server-first backend never greets a refused client)."""
        """The client's address as a PROXY protocol header gave it, if one did."""
        self.tlvs: tuple[tuple[int, bytes], ...] = ()
        """Its TLVs that pass_through_tlvs keeps (for a PROXY header upstream)."""

    # --- the downstream connection ------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername") or ("", 0)
        self.direct_remote_ip, self.direct_remote_port = peer[0], peer[1]
        self.remote_ip, self.remote_port = self.proxied or (peer[0], peer[1])
        local = transport.get_extra_info("sockname") or ("", 0)
        self.local_address = m.address_string(local[0], local[1])
        self.info.remote_ip, self.info.remote_port = self.remote_ip, self.remote_port
        self.transport.set_write_buffer_limits(high=self.buffer_limit)
        if self.admit is not None and not self.admit(self):
            self.transport.abort()  # before a byte goes either way
            return
        self.cfg.stats.downstream_cx_total.value += 1
        self.transport.pause_reading()
        # (uvloop starts reading an accepted socket after connection_made: pause again then)
        asyncio.get_running_loop().call_soon(self._hold)
        self.connecting = asyncio.ensure_future(self._connect())

    def _hold(self) -> None:
        if self.upstream.transport is None and not self.transport.is_closing():
            self.transport.pause_reading()

    async def _connect(self) -> None:
        cluster = self.cfg.cluster()
        if cluster is None:
            self.cfg.stats.downstream_cx_no_route.value += 1
            self.info.add_flag(ResponseFlag.NR)
            self._close_downstream()
            return
        self.info.cluster = cluster
        key = xxhash.xxh64_intdigest(self.remote_ip.encode()) if self.cfg.hash_source else None
        stats = cluster.stats
        for attempt in range(self.cfg.attempts):
            host = cluster.choose(key, attempt)
            if host is None:
                stats.upstream_cx_none_healthy.value += 1
                self.info.add_flag(ResponseFlag.UH)
                self._close_downstream()
                return
            if cluster.connections >= cluster.limits.max_connections:
                stats.upstream_cx_overflow.value += 1
                self.info.add_flag(ResponseFlag.UO)
                self._close_downstream()
                return
            self.info.host = host
            cluster.connections += 1
            stats.upstream_cx_total.value += 1
            stats.upstream_cx_active.value += 1
            host.cx_total += 1
            host.cx_active += 1
            self.counted = True
            try:
                await connect(cluster, host, lambda: self.upstream, self._proxy_header(cluster))
            except asyncio.CancelledError:
                self._close_upstream()  # the client left while we were connecting
                self._uncount()
                self._maybe_finish()
                raise
            except ConnectError as e:
                self._uncount()
                stats.upstream_cx_connect_fail.value += 1
                if e.reason == "connection timeout":
                    stats.upstream_cx_connect_timeout.value += 1
                host.cx_connect_fail += 1
                cluster.report(host, 503)
                self.info.failure_reason = e.detail or e.reason
                continue
            break
        else:
            self.info.add_flag(ResponseFlag.UF)
            if self.cfg.attempts > 1:
                self.info.add_flag(ResponseFlag.URX)  # Envoy: the connect attempts ran out
            self._close_downstream()
            return
        if self.closed:
            self._close_upstream()
            return
        up = self.upstream.transport
        assert up is not None
        for data in self.early:
            self._forward(up, data)
        self.early.clear()
        if self.down_done:
            _half_close(up)  # the client said all it had to say before we were connected
        else:
            self.transport.resume_reading()
        if self.cfg.idle_timeout:
            self.idle_timer = asyncio.get_running_loop().call_later(self.cfg.idle_timeout,
                                                                    self._idle)

    def _proxy_header(self, cluster: Cluster) -> bytes:
        """The PROXY protocol header the cluster's transport socket sends first, if any: the
        client's address (from an incoming PROXY header if one came) and the one it
        reached; on v2, the incoming TLVs both ends pass through."""
        cfg = cluster.proxy_protocol
        if cfg is None:
            return b""
        local = self.transport.get_extra_info("sockname") or ("0.0.0.0", 0)
        return pp.upstream_header(cfg, (self.remote_ip, self.remote_port), (local[0], local[1]),
                                  self.tlvs)

    def data_received(self, data: bytes) -> None:
        self.last_activity = time.monotonic()
        up = self.upstream.transport
        if up is not None:
            self._forward(up, data)
        else:
            self.early.append(data)
            self._hold()

    def _forward(self, up: asyncio.Transport, data: bytes) -> None:
        """Bytes count as received once they go upstream (Envoy reads none before)."""
        self.info.bytes_received += len(data)
        self.cfg.stats.downstream_cx_rx_bytes_total.value += len(data)
        up.write(data)

    def eof_received(self) -> bool:
        self.down_done = True
        up = self.upstream.transport
        if up is not None:
            _half_close(up)
        if self.up_done:
            self._close_downstream()
        return True

    def pause_writing(self) -> None:
        if self.upstream.transport is not None:
            self.upstream.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.upstream.transport is not None and not self.upstream.transport.is_closing():
            self.upstream.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.down_done = True
        if self.connecting is not None and not self.connecting.done():
            self.connecting.cancel()
        up = self.upstream.transport
        if up is not None and not up.is_closing():
            if exc is not None:
                _reset(up)
            else:
                up.close()
        self.closed = True
        self._maybe_finish()

    # --- the upstream connection, through _Upstream -------------------------------------

    def from_upstream(self, data: bytes) -> None:
        self.last_activity = time.monotonic()
        self.info.bytes_sent += len(data)
        self.cfg.stats.downstream_cx_tx_bytes_total.value += len(data)
        self.transport.write(data)

    def upstream_eof(self) -> bool:
        self.up_done = True
        _half_close(self.transport)
        if self.down_done:
            self._close_upstream()
        return True

    def pause_downstream(self) -> None:
        self.cfg.stats.downstream_flow_control_paused_reading_total.value += 1
        self.transport.pause_reading()

    def resume_downstream(self) -> None:
        self.cfg.stats.downstream_flow_control_resumed_reading_total.value += 1
        if not self.transport.is_closing():
            self.transport.resume_reading()

    def upstream_lost(self, exc: Exception | None) -> None:
        self.up_done = True
        self._uncount()
        if not self.transport.is_closing():
            if exc is not None:
                _reset(self.transport)
            else:
                self.transport.close()
        self._maybe_finish()

    # --- the end -------------------------------------------------------------------------

    def _idle(self) -> None:
        self.idle_timer = None
        if self.closed:
            return
        left = self.last_activity + self.cfg.idle_timeout - time.monotonic()
        if left > 0:
            self.idle_timer = asyncio.get_running_loop().call_later(left, self._idle)
            return
        self.cfg.stats.idle_timeout.value += 1
        self._close_upstream()
        self._close_downstream()

    def _close_downstream(self) -> None:
        if not self.transport.is_closing():
            self.transport.close()

    def _close_upstream(self) -> None:
        up = self.upstream.transport
        if up is not None and not up.is_closing():
            up.close()

    def drain(self) -> None:
        """A draining listener leaves TCP sessions be until the drain time ends, as Envoy."""

    def abort(self) -> None:
        self._close_upstream()
        if not self.transport.is_closing():
            self.transport.abort()

    def _uncount(self) -> None:
        if self.counted and self.info.cluster is not None and self.info.host is not None:
            self.counted = False
            self.info.cluster.connections -= 1
            self.info.cluster.stats.upstream_cx_active.value -= 1
            self.info.cluster.stats.upstream_cx_destroy.value += 1
            self.info.host.cx_active -= 1

    def _maybe_finish(self) -> None:
        up = self.upstream.transport
        if not self.closed or (up is not None and self.counted):
            return
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None
        for a in self.cfg.access_logs:
            a.log(self.info)
        if self.on_close is not None:
            on_close, self.on_close = self.on_close, None
            on_close(self)
