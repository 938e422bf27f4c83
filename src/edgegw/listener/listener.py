"""Listeners: bind, accept, peek the ClientHello, pick the filter chain, hand over to TLS.

Accepting is done on the raw socket so that the filter chain (and so the certificate) can be
chosen from the ClientHello before the handshake, as Envoy's tls_inspector does; the socket is
then given to the event loop's own TLS layer with that chain's SSLContext.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import log
from .. import proxy_protocol as pp
from ..accesslog import AccessLogger
from ..config import model as m
from ..config.subscription import Warms
from ..crowdsec import Bouncer, RequestCheck
from ..http.conn_manager import DownstreamConnection
from ..http.settings import HttpConnectionManager
from ..overload import ConnectionLimit
from ..stats import Store
from ..tasks import Tasks
from ..tcp.proxy import TcpProxyConfig, TcpSession
from ..tls import transport as tls_transport
from ..tls.cert_dir import directory_of, strict_sni_host
from ..tls.context import ServerTls, SslStats
from ..tls.sds import SecretManager
from ..upstream.cluster import ClusterManager
from .drain import DrainManager
from .filter_chain import FilterChainIndex
from .listener_stats import ListenerStats
from .network_rbac import NetworkRbac
from .tls_inspector import MAX_HELLO, ClientHello, NeedMore, TlsInspectorStats, TooLarge

ACCEPT_BACKOFF = 0.1
ACCEPT_LOG_INTERVAL = 1.0
_log = log.get("connection")
HANDSHAKE_TIMEOUT = 10.0
PROTOCOL_VERSION_ALERT = bytes([21, 3, 1, 0, 2, 2, 70])
"""An alert record (TLS 1.0 framing, which every client reads): fatal, protocol_version."""


def _unwatch(loop: Any, fd: int) -> None:
    """``loop.remove_reader(fd)``, its result unused: uvloop's is None where asyncio's
    types say bool, which compiled code would check."""
    loop.remove_reader(fd)


@dataclass
class Chain:
    """One filter chain: its TLS (None: plain bytes, or passthrough) and its one network
    filter, the HTTP connection manager or the TCP proxy."""

    name: str
    hcm: HttpConnectionManager | None
    tcp: TcpProxyConfig | None
    tls: ServerTls | None
    strict_host: bool = False
    """edgegw-only: requests must be for a name of the certificate SNI chose."""
    rbac: NetworkRbac | None = None
    """envoy.filters.network.rbac before the HCM or TCP proxy, if configured."""

    @property
    def access_logs(self) -> list[AccessLogger]:
        return (self.hcm or self.tcp).access_logs  # type: ignore[union-attr]

    def start(self) -> None:
        if self.hcm is not None:
            self.hcm.start()

    def close(self) -> None:
        (self.hcm or self.tcp).close()  # type: ignore[union-attr]
        if self.tls is not None:
            self.tls.close()


Session = DownstreamConnection | TcpSession
"""What a listener holds for each connection it accepted."""


def stat_address(sa: m.SocketAddress) -> str:
    """Envoy's listener stat name part: ``127.0.0.1_8443``, ``[::]_443``."""
    addr = f"[{sa.address}]" if ":" in sa.address else sa.address
    return f"{addr}_{sa.port_value}"


class Listener:
    def __init__(self, cfg: m.Listener, clusters: ClusterManager, store: Store,
                 secrets: SecretManager | None = None, bouncer: Bouncer | None = None) -> None:
        self.cfg = cfg
        self.bouncer = bouncer
        """CrowdSec's decisions (edgegw-only): bans refused at accept, all checked per
        request."""
        self.clusters = clusters
        """The config's clusters it routes to: that config retires with its last listener."""
        sa = cfg.address.socket_address
        self.address = (sa.address, sa.port_value)
        self.name = cfg.name or f"{sa.address}:{sa.port_value}"
        prefix = f"listener.{stat_address(sa)}."
        self.stats = ListenerStats(store, prefix)
        self.inspector = TlsInspectorStats(store, "tls_inspector.")

        tls_chains = [fc for fc in [*cfg.filter_chains, *([cfg.default_filter_chain]
                                                          if cfg.default_filter_chain else [])]
                      if fc.transport_socket]
        self.ssl = SslStats(store, prefix + "ssl.") if tls_chains else None
        updates = store.counter(prefix + "server_ssl_socket_factory.ssl_context_update_by_sds") \
            if tls_chains else None

        def build(fc: m.FilterChain) -> Chain:
            tls = (ServerTls(fc.transport_socket.typed_config, secrets, updates,
                             directory_of(fc)) if fc.transport_socket else None)
            typed = fc.terminal
            rbac = NetworkRbac(fc.network_rbac, store) if fc.network_rbac else None
            if isinstance(typed, m.TcpProxy):
                return Chain(fc.name, None, TcpProxyConfig(typed, clusters, store), tls,
                             rbac=rbac)
            own = fc.metadata.ours("basic_auth_users") if fc.metadata else None
            hcm = HttpConnectionManager(typed, clusters, store, close_websockets=bool(
                fc.metadata and fc.metadata.ours("websocket_close_on_idle") is True),
                basic_auth_users=None if own is None else m.DataSource.model_validate(own),
                secrets=secrets)
            if bouncer is not None:
                hcm.filters.insert(0, ("edgegw.crowdsec", RequestCheck(bouncer), False))
            return Chain(fc.name, hcm, None, tls, strict_sni_host(fc), rbac)

        self.chains = [build(fc) for fc in cfg.filter_chains]
        default = build(cfg.default_filter_chain) if cfg.default_filter_chain else None
        self.index: FilterChainIndex[Chain] = FilterChainIndex(
            [(fc.filter_chain_match, c) for fc, c in zip(cfg.filter_chains, self.chains,
                                                          strict=True)], default)
        all_chains = self.chains + ([default] if default else [])
        self.all_chains = all_chains
        self.peek = any(isinstance(f.config, m.TlsInspector) for f in cfg.listener_filters) \
            or self.index.needs_inspection or any(c.tls for c in all_chains)
        """The ClientHello is inspected (peeked) before a chain is chosen."""
        self.proxy_protocol = pp.ProxyProtocolFilter(cfg.proxy_protocol, store) \
            if cfg.proxy_protocol is not None else None
        self.sock: socket.socket | None = None
        self.family = int(socket.AF_INET)
        """The socket's address family, as accepted sockets are made with it."""
        self.loop: asyncio.AbstractEventLoop | None = None
        self.open: set[Session] = set()
        self.serving = Tasks()
        """Accepted sockets on their way to a connection (TLS handshake under way)."""
        self.reuse_port = False
        self.accept_failures = 0
        self.accept_logged = 0.0
        self.peeking = 0
        """Connections accepted whose ClientHello is still awaited."""
        self.limit: ConnectionLimit | None = None
        """The overload manager's global connection limit, set by the server."""
        self.drainer: DrainManager | None = None
        """The server's drain sequence (/drain_listeners), set by the server."""

    @property
    def active(self) -> int:
        """The connections held here that count against the global limit."""
        if self.cfg.ignore_global_conn_limit:
            return 0
        return self.peeking + self.stats.downstream_cx_active.value

    def bind(self) -> None:
        sock = _bound(self.name, self.address, self.reuse_port)
        sock.listen(self.cfg.tcp_backlog_size or somaxconn())
        sock.setblocking(False)
        self.sock = sock
        self.family = int(sock.family)
        self.address = sock.getsockname()[:2]

    def start(self) -> None:
        if self.sock is None:
            self.bind()
        assert self.sock is not None
        self.loop = asyncio.get_running_loop()
        self.loop.add_reader(self.sock.fileno(), self._accept)
        for c in self.all_chains:
            c.start()

    def subscriptions(self) -> list[Warms]:
        """What it warms on: its connection managers' RDS, its chains' SDS secrets."""
        return [*(c.hcm.rds for c in self.all_chains if c.hcm is not None and c.hcm.rds),
                *(s for c in self.all_chains if c.tls for s in c.tls.sources.from_control_plane())]

    def warm(self) -> bool:
        return all(s.ready.is_set() for s in self.subscriptions())

    def server_names(self, chain: Chain) -> list[str]:
        """The server names a chain is matched by (for the status page)."""
        for fc, c in zip(self.cfg.filter_chains, self.chains, strict=True):
            if c is chain:
                return list(fc.filter_chain_match.server_names)
        return []

    @property
    def key(self) -> tuple[str, int]:
        """The configured address: what a reloaded config's listener is matched by."""
        sa = self.cfg.address.socket_address
        return sa.address, sa.port_value

    def adopt(self, old: Listener, drain_if_changed: bool = False) -> None:
        """Takes over a listener of the previous config at the same address: its socket (no
        connection is refused during a reload) and its open connections, whose next requests
        use this config's filter chain; one that no chain here matches is drained. With
        ``drain_if_changed`` (an LDS update, as Envoy applies it), the connections of a
        listener whose config changed stay on the old one and drain instead."""
        if old.sock is not None and old.loop is not None:
            _unwatch(old.loop, old.sock.fileno())
        self.sock, old.sock = old.sock, None
        self.family = old.family
        if drain_if_changed and old.cfg != self.cfg:
            for proto in list(old.open):  # (an idle one too: it may still bring a request)
                if not isinstance(proto, TcpSession):
                    proto.drain(close_idle=False)
            return
        for proto in list(old.open):
            if isinstance(proto, TcpSession):
                continue  # bytes already flow to its upstream: it ends on the old config
            hello = proto.hello
            chain = self.index.find(hello.server_name, "tls" if hello.tls else "raw_buffer",
                                    hello.alpn) if hello is not None else None
            if chain is None or chain.hcm is None or (chain.tls is not None) != proto.tls:
                proto.drain()
                continue
            old.open.discard(proto)
            proto.hcm = chain.hcm
            proto.on_close = self._closed
            self.open.add(proto)

    def drain(self) -> None:
        """Stops accepting; open connections answer with ``connection: close`` and idle ones
        close now (Envoy's drain for HTTP/1.1)."""
        self.stop_accepting()
        for proto in list(self.open):
            proto.drain()

    def http_connections(self) -> list[DownstreamConnection]:
        return [p for p in self.open if isinstance(p, DownstreamConnection)]

    def stop_accepting(self) -> None:
        """Closes the listening socket; the connections it accepted go on."""
        if self.sock is not None and self.loop is not None:
            _unwatch(self.loop, self.sock.fileno())
            self.sock.close()
            self.sock = None

    def stop(self) -> None:
        self.stop_accepting()
        for c in self.all_chains:
            c.close()

    def _accept(self) -> None:
        assert self.sock is not None
        for _ in range(self.cfg.max_connections_to_accept_per_socket_event or 64):
            try:
                # socket.accept() without its wrapping: it converts family and type to enums
                # and makes the socket blocking again, per connection
                fd, _addr = self.sock._accept()  # type: ignore[attr-defined]
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                self._accept_failed(e)
                return
            conn = socket.socket(self.family, socket.SOCK_STREAM, 0, fd)
            if self.bouncer is not None and self.proxy_protocol is None \
                    and self.bouncer.banned(_addr[0]):
                _reset(conn)  # (before TLS: a banned address costs no handshake)
                continue
            if self.limit is not None and not self.cfg.ignore_global_conn_limit \
                    and not self.limit.admit():
                self.stats.downstream_global_cx_overflow.value += 1
                conn.close()
                continue
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.stats.downstream_cx_total.value += 1
            if self.peek or self.proxy_protocol is not None:
                _Peek(self, conn)
            else:
                self.dispatch(conn, ClientHello(tls=False))

    def _accept_failed(self, e: OSError) -> None:
        """Out of file descriptors (or memory): stop accepting for a moment instead of
        spinning on the same error, keep serving the connections already open, and log once
        a second with a count."""
        self.accept_failures += 1
        now = time.monotonic()
        if now - self.accept_logged >= ACCEPT_LOG_INTERVAL:
            _log.warning("listener %s: accept failed %d time(s) in the last %.0f s: %s",
                         self.name, self.accept_failures, ACCEPT_LOG_INTERVAL,
                         e.strerror or e)
            self.accept_failures = 0
            self.accept_logged = now
        if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM) \
                and self.sock is not None and self.loop is not None:
            _unwatch(self.loop, self.sock.fileno())
            self.loop.call_later(ACCEPT_BACKOFF, self._resume_accepting)

    def _resume_accepting(self) -> None:
        if self.sock is not None and self.loop is not None:
            self.loop.add_reader(self.sock.fileno(), self._accept)

    def dispatch(self, conn: socket.socket, hello: ClientHello,
                 proxied: tuple[str, int] | None = None,
                 tlvs: tuple[tuple[int, bytes], ...] = ()) -> None:
        """Hands a new connection to its filter chain; ``proxied`` is the client's address
        from a PROXY header, ``tlvs`` what of it is passed through."""
        if proxied is not None and self.bouncer is not None and self.bouncer.banned(proxied[0]):
            _reset(conn)
            return
        transport = "tls" if hello.tls else "raw_buffer"
        chain = self.index.find(hello.server_name, transport, hello.alpn)
        if chain is None:
            self.stats.no_filter_chain_match.value += 1
            _log.debug("listener %s: no filter chain matches server name %r", self.name,
                       hello.server_name)
            _reset(conn)
            return
        self._serve(conn, chain, hello, proxied, tlvs)

    def _serve(self, conn: socket.socket, chain: Chain, hello: ClientHello,
               proxied: tuple[str, int] | None, tlvs: tuple[tuple[int, bytes], ...]) -> None:
        """Makes the connection's session and starts its transport: TLS by OpenSSL on the
        socket where the build has it, else the loop's own layer."""
        assert self.loop is not None
        cert = chain.tls.cert_for(hello.server_name) if chain.tls else None
        ctx = cert.ctx if cert is not None else None
        if cert is not None and not hello.offers(*cert.versions):
            self._refuse_version(conn, hello)
            return
        self.stats.downstream_cx_active.value += 1
        limit = self.cfg.per_connection_buffer_limit_bytes
        proto: Session
        if chain.tcp is not None:
            proto = TcpSession(chain.tcp, ctx is not None, hello.server_name, limit,
                               self._closed)
            proto.tlvs = tlvs
        else:
            assert chain.hcm is not None
            proto = DownstreamConnection(chain.hcm, ctx is not None, hello.server_name, limit,
                                         self._closed)
            if self.drainer is not None:
                proto.drain_decision = self.drainer.drain_close
            if cert is not None and chain.strict_host:
                proto.host_names = cert.host_names
        proto.hello = hello
        proto.admit = chain.rbac.allows if chain.rbac is not None else None
        proto.proxied = proxied
        if ctx is not None and tls_transport.available():
            try:
                tls_transport.accept(self.loop, conn, ctx, proto, HANDSHAKE_TIMEOUT,
                                     lambda exc: self._started(proto, conn, ctx, exc))
            except ssl.SSLError as e:
                self._started(proto, conn, ctx, e)
        else:
            self.serving.start(self._connect(proto, conn, ctx))

    async def _connect(self, proto: Session, conn: socket.socket,
                       ctx: ssl.SSLContext | None) -> None:
        """The connection on the loop's own transport (and TLS layer)."""
        assert self.loop is not None
        try:
            await self.loop.connect_accepted_socket(
                lambda: proto, conn, ssl=ctx,
                ssl_handshake_timeout=HANDSHAKE_TIMEOUT if ctx else None)
        except (TimeoutError, OSError, ssl.SSLError, ConnectionError) as e:
            self._started(proto, conn, ctx, e)
            return
        self._started(proto, conn, ctx, None)

    def _started(self, proto: Session, conn: socket.socket, ctx: ssl.SSLContext | None,
                 exc: BaseException | None) -> None:
        """After the handshake (or at once without TLS): the connection is counted and held,
        or its failure counted."""
        if exc is not None:
            self.stats.downstream_cx_active.value -= 1
            self.stats.downstream_cx_destroy.value += 1
            if self.ssl is not None:
                self.ssl.connection_error.value += 1
            _log.debug("listener %s: TLS handshake failed: %s", self.name, exc)
            conn.close()
            return
        if ctx is not None and self.ssl is not None:
            self.ssl.handshake.value += 1
            transport = proto.transport
            sslobj = transport.get_extra_info("ssl_object") if transport is not None else None
            if sslobj is None or not sslobj.getpeercert(True):
                self.ssl.no_certificate.value += 1
            if sslobj is not None and sslobj.session_reused:
                self.ssl.session_reused.value += 1
        if not proto.closed:
            self.open.add(proto)
            if self.drainer is not None and isinstance(proto, DownstreamConnection):
                self.drainer.accepted(proto)

    def _refuse_version(self, conn: socket.socket, hello: ClientHello) -> None:
        """A hello whose versions we do not speak gets the fatal protocol_version alert that
        OpenSSL would send, here because the loop's TLS layer drops a failed handshake's
        alert unsent; scanners and old clients then learn why."""
        if self.ssl is not None:
            self.ssl.connection_error.value += 1
        self.stats.downstream_cx_destroy.value += 1
        _log.debug("listener %s: TLS handshake failed: client offers no version we speak "
                   "(%s)", self.name, ", ".join(f"{v:#06x}" for v in hello.versions)
                   or f"{hello.legacy_version:#06x}")
        try:
            conn.send(PROTOCOL_VERSION_ALERT)
        except OSError:
            pass
        conn.close()

    def _closed(self, proto: Session) -> None:
        self.stats.downstream_cx_active.value -= 1
        self.stats.downstream_cx_destroy.value += 1
        self.open.discard(proto)


def somaxconn() -> int:
    """Envoy's default listen backlog on Linux: net.core.somaxconn."""
    try:
        return int(Path("/proc/sys/net/core/somaxconn").read_text())
    except (OSError, ValueError):
        return 4096


def _bound(name: str, address: tuple[str, int], reuse_port: bool) -> socket.socket:
    """A socket bound to a listener's address; the error names the listener and address."""
    host, port = address
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise OSError(e.errno, f"listener '{name}' cannot bind {m.address_string(host, port)}: "
                               f"{e.strerror}{bind_hint(e.errno, port)}") from None
    return sock


def bind_hint(err: int | None, port: int) -> str:
    """What to do about the two bind errors people meet at the edge."""
    if err == errno.EACCES and port < 1024:
        return ("; a port below 1024 needs root or the CAP_NET_BIND_SERVICE capability "
                "(in Docker, listen on 8443 and publish \"443:8443\"; natively, "
                "setcap cap_net_bind_service=+ep on the Python binary)")
    if err == errno.EADDRINUSE:
        return "; another program (another gateway, nginx, Caddy?) is listening there"
    return ""


def check_addresses_free(listeners: list[m.Listener]) -> None:
    """Raises the bind error a listener would get. Workers bind with SO_REUSEPORT, which lets
    a second gateway of the same user share a port unnoticed; a socket without it cannot join
    a port someone listens on, so the supervisor tries that first."""
    for cfg in listeners:
        sa = cfg.address.socket_address
        if sa.port_value:
            _bound(cfg.name or m.address_string(sa.address, sa.port_value),
                   (sa.address, sa.port_value), reuse_port=False).close()


class _Peek:
    """Runs the listener filters on a new socket before its filter chain is chosen: the
    PROXY protocol header (read, and consumed), then the ClientHello (peeked: it stays in the
    socket for the TLS layer, or for the backend of a passthrough)."""

    def __init__(self, listener: Listener, conn: socket.socket) -> None:
        self.listener = listener
        self.conn = conn
        self.fd = conn.fileno()
        loop = listener.loop
        assert loop is not None
        self.loop = loop
        self.timer: asyncio.TimerHandle | None = None
        listener.peeking += 1
        self.lowat = False
        self.finished = False
        self.proxy = listener.proxy_protocol
        """The PROXY header is still to be read (None: read, or none configured)."""
        self.proxied: tuple[str, int] | None = None
        self.tlvs: tuple[tuple[int, bytes], ...] = ()
        self._readable()  # the hello is usually there already: then no timer and no reader
        if not self.finished:
            self.timer = loop.call_later(listener.cfg.listener_filters_timeout, self._timeout)
            loop.add_reader(self.fd, self._readable)

    def _wait_for_more(self, have: int) -> None:
        """Level-triggered readiness would fire again at once for the bytes already peeked:
        the kernel wakes us only when more arrive (no polling, so a thousand stalled clients
        cost nothing while they wait)."""
        self.conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, have + 1)
        self.lowat = True

    def _readable(self) -> None:
        try:
            data = self.conn.recv(MAX_HELLO + pp.V2_MAX, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop()
            return
        if not data:
            self._drop()
            return
        if self.proxy is not None:
            used = self._proxy_header(data)
            if used is None:
                return
            data = data[used:]
            if not self.listener.peek:
                self._done()
                self.listener.dispatch(self.conn, ClientHello(tls=False), self.proxied,
                                       self.tlvs)
                return
            if not data:
                self._wait_for_more(0)
                return
        try:
            hello = self.listener.inspector.inspect(data)
        except NeedMore:
            self._wait_for_more(len(data))
            return
        except TooLarge:
            self._drop()
            return
        self._done()
        self.listener.dispatch(self.conn, hello, self.proxied, self.tlvs)

    def _proxy_header(self, data: bytes) -> int | None:
        """Reads the PROXY header: the bytes it took (0 when there is none and that is
        allowed), or None when waiting for more or when the connection was dropped."""
        f = self.proxy
        assert f is not None
        try:
            header = f.decide(data)
        except pp.NeedMore:
            self._wait_for_more(len(data))
            return None
        except pp.Refused as e:
            _log.debug("listener %s: %s", self.listener.name, e)
            self._drop()
            return None
        self.proxy = None
        if header is None:
            return 0
        taken = b""
        while len(taken) < header.length:  # consume it: the rest is the client's
            taken += self.conn.recv(header.length - len(taken))
        if self.lowat:
            self.conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)
            self.lowat = False
        self.proxied = header.source
        self.tlvs = f.passed_tlvs(header)
        return header.length

    def _timeout(self) -> None:
        # Envoy closes a connection whose listener filters time out (continue_on_listener_
        # filters_timeout is false by default).
        self.listener.stats.downstream_pre_cx_timeout.value += 1
        self._drop()

    def _done(self) -> None:
        self.finished = True
        if self.timer is not None:
            _unwatch(self.loop, self.fd)
            self.timer.cancel()
        self.listener.peeking -= 1
        if self.lowat:
            try:
                self.conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)
            except OSError:
                pass

    def _drop(self) -> None:
        self._done()
        self.conn.close()


def _reset(conn: socket.socket) -> None:
    """Closes with RST, as Envoy does when no filter chain matches."""
    try:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    except OSError:
        pass
    conn.close()
