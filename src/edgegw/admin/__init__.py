"""The admin port: Envoy's endpoints and output shapes, for what the gateway has so far.

Not on the hot path, so it uses asyncio streams and a plain request reader. Every shipped
config binds it to loopback: it can stop the server (POST /quitquitquit).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import re
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from .. import __version__, compiled, log
from ..config.model import address_string
from ..http.codec import REASONS, http2, http_date
from ..listener import bind_hint
from ..stats import render
from ..tls import transport as tls_transport
from . import dump, status
from .backend import AdminBackend, Doc

if TYPE_CHECKING:
    from ..config.model import Node
    from ..listener import Listener
    from ..upstream.cluster import ClusterManager

_log = log.get("admin")
HEAD_TIMEOUT = 10.0
"""A request must arrive whole within this (the shipped configs' request_headers_timeout);
a client that sends part of one and waits gets 408 instead of holding its connection."""
MAX_BODY = 1024 * 1024
IDLE_TIMEOUT = 3600.0
"""Between requests, as Envoy's connection idle_timeout."""

Handler = Callable[[dict[str, list[str]], str], Awaitable[tuple[int, str, bytes]]]


class Admin:
    def __init__(self, backend: AdminBackend, host: str, port: int, access_log_path: str,
                 unix_path: str = "") -> None:
        self.backend = backend
        self.host = host
        self.port = port
        self.unix_path = unix_path
        """A worker's admin socket, which only its supervisor talks to."""
        self.access_log_path = access_log_path
        self._srv: asyncio.AbstractServer | None = None
        self.history = status.History()
        self._sampler: asyncio.Task[None] | None = None
        self.routes: dict[str, tuple[str, Handler]] = {
            "/": ("this page", self.index),
            "/ready": ("print server state, return 200 if LIVE, otherwise return 503",
                       self.ready),
            "/stats": ("print server stats", self.stats),
            "/stats/prometheus": ("print server stats in prometheus format", self.prometheus),
            "/config_dump": ("dump current Envoy configs", self.config_dump),
            "/logging": ("query/change logging levels", self.logging),
            "/clusters": ("upstream cluster status", self.clusters),
            "/server_info": ("print server version/status information", self.server_info),
            "/listeners": ("print listener info", self.listeners),
            "/certs": ("print certs on machine", self.certs),
            "/status": ("status page for people (edgegw)", self.status_page),
            "/status.json": ("the status page's data (edgegw)", self.status_json),
            "/quitquitquit": ("exit the server", self.quit),
            "/healthcheck/fail": ("cause the server to fail health checks", self.hc_fail),
            "/healthcheck/ok": ("cause the server to pass health checks", self.hc_ok),
            "/drain_listeners": ("drain listeners", self.drain_listeners),
            "/edgegw/store": ("every stat, raw, for the worker supervisor (edgegw)",
                              self.raw_store),
        }
        if unix_path:
            self.routes["/edgegw/xds"] = ("what the control plane gave, for the other "
                                          "workers (edgegw)", self.xds)
            self.routes["/edgegw/crowdsec"] = ("CrowdSec decisions, for the other workers "
                                               "(edgegw)", self.crowdsec)
        try:
            if not unix_path and not ipaddress.ip_address(host).is_loopback:
                _log.warning("admin interface bound to %s:%d, which is not loopback: anyone who "
                             "can reach it can read the config and stop the server", host, port)
        except ValueError:
            pass

    async def start(self) -> None:
        if self.unix_path:
            self._srv = await asyncio.start_unix_server(self._client, self.unix_path)
            return
        try:
            self._srv = await asyncio.start_server(self._client, self.host, self.port,
                                                   reuse_address=True)
        except OSError as e:
            raise OSError(e.errno, f"the admin port cannot bind {self.host}:{self.port}: "
                                   f"{e.strerror}{bind_hint(e.errno, self.port)}") from None
        sock = self._srv.sockets[0].getsockname()
        self.port = sock[1]
        _log.info("admin address: %s:%d", self.host, self.port)
        self._sampler = asyncio.ensure_future(self._sample())

    async def _sample(self) -> None:
        """The status page's history: the counters every SAMPLE_S seconds."""
        while True:
            try:
                self.history.add(await self.backend.status_doc())
            except (TimeoutError, OSError, ValueError, KeyError) as e:
                _log.debug("status history: no sample this time (%s)", e)
            await asyncio.sleep(status.SAMPLE_S)

    async def stop(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
        if self._srv is not None:
            self._srv.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                first = await asyncio.wait_for(reader.readexactly(1), IDLE_TIMEOUT)
                try:
                    method, target, headers = await asyncio.wait_for(
                        self._request(first, reader), HEAD_TIMEOUT)
                except (TimeoutError, ValueError) as e:
                    code = 408 if isinstance(e, TimeoutError) else 400
                    writer.write(b"HTTP/1.1 %d %s\r\ncontent-length: 0\r\nconnection: close"
                                 b"\r\n\r\n" % (code, REASONS[code]))
                    break
                code, ctype, body = await self.handle(method, target)
                close = headers.get("connection", "").lower() == "close"
                writer.write(
                    b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n"
                    b"cache-control: no-cache, max-age=0\r\nx-content-type-options: nosniff\r\n"
                    b"date: %s\r\nserver: edgegw\r\n%s\r\n"
                    % (code, REASONS.get(code, b"Unknown"), ctype.encode(), len(body),
                       http_date(), b"connection: close\r\n" if close else b"")
                    + (b"" if method == "HEAD" else body))
                await writer.drain()
                self._access_log(method, target, code)
                if close:
                    break
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError,
                TimeoutError):
            pass
        except asyncio.CancelledError:
            # Stopping with a client connected: end quietly (Python 3.11's streams print a
            # traceback for a handler that ends cancelled).
            pass
        finally:
            writer.close()

    @staticmethod
    async def _request(first: bytes, reader: asyncio.StreamReader
                       ) -> tuple[str, str, dict[str, str]]:
        """One request's head from its first byte on (and its body, skipped); ValueError for
        a head the data plane would refuse too."""
        head = first + await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = (lines[0].split(" ", 2) + ["", ""])[:3]
        headers = {k.strip().lower(): v.strip() for k, _, v in
                   (ln.partition(":") for ln in lines[1:] if ln)}
        length = headers.get("content-length", "0") or "0"
        if not length.isdigit() or int(length) > MAX_BODY:
            raise ValueError(f"content-length {length!r}")
        if int(length):
            await reader.readexactly(int(length))
        return method, target, headers

    def _access_log(self, method: str, target: str, code: int) -> None:
        if not self.access_log_path:
            return
        try:
            with open(self.access_log_path, "a", encoding="utf-8") as f:
                f.write(f'[{time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())}Z] '
                        f'"{method} {target} HTTP/1.1" {code}\n')
        except OSError:
            pass

    async def handle(self, method: str, target: str) -> tuple[int, str, bytes]:
        url = urlsplit(target)
        entry = self.routes.get(url.path)
        if entry is None:
            return 404, "text/plain", b"invalid path. admin commands are:\n" + self._help()
        mutating = url.path in ("/quitquitquit", "/logging", "/healthcheck/fail",
                                "/healthcheck/ok", "/drain_listeners")
        if mutating and method != "POST":
            return 405, "text/plain", f"Method {method} not allowed, POST required.".encode()
        return await entry[1](parse_qs(url.query, keep_blank_values=True), method)

    def _help(self) -> bytes:
        return "".join(f"  {p}: {d}\n" for p, (d, _) in sorted(self.routes.items())).encode()

    async def index(self, q: dict[str, list[str]], method: str) -> tuple[int, str, bytes]:
        return 200, "text/plain", b"admin commands are:\n" + self._help()

    async def ready(self, q: dict[str, list[str]], method: str) -> tuple[int, str, bytes]:
        state = await self.backend.current_state()
        waiting = "".join(f"waiting for {w}\n" for w in await self.backend.waiting())
        return (200 if state == "LIVE" else 503), "text/plain", f"{state}\n{waiting}".encode()

    async def stats(self, q: dict[str, list[str]], method: str) -> tuple[int, str, bytes]:
        fmt = _arg(q, "format") or ""
        flt = _arg(q, "filter")
        used = "usedonly" in q
        if fmt not in ("", "text", "json", "prometheus"):
            return 400, "text/plain", b"usage: /stats?format=(json|prometheus|text)\n"
        store = await self.backend.stats_store()
        try:
            if fmt == "json":
                return 200, "application/json", render.as_json(store, flt, used).encode()
            if fmt == "prometheus":
                return 200, "text/plain; version=0.0.4", render.prometheus(
                    store, flt, used).encode()
            return 200, "text/plain", render.text(store, flt, used).encode()
        except re.error as e:
            return 400, "text/plain", f"Invalid re2 regex: {e}\n".encode()

    async def prometheus(self, q: dict[str, list[str]], method: str) -> tuple[int, str, bytes]:
        return await self.stats({**q, "format": ["prometheus"]}, method)

    async def config_dump(self, q: dict[str, list[str]], method: str) -> tuple[int, str, bytes]:
        configs = await self.backend.config_dump_doc()
        doc = dump.select(configs, _arg(q, "resource"), _arg(q, "mask"))
        return 200, "application/json", json.dumps(doc, indent=2).encode()

    async def logging(self, q: dict[str, list[str]], method: str) -> tuple[int, str, bytes]:
        levels: list[tuple[str | None, int]] = []
        try:
            for key, values in q.items():
                level = log.parse_level(values[0] if values else "")
                if key == "level":
                    levels.append((None, level))
                elif key in log.COMPONENTS:
                    levels.append((key, level))
                else:
                    raise ValueError(f"unknown logger '{key}'")
        except ValueError as e:
            return 404, "text/plain", f"error: {e}\n".encode() + self._loggers()
        await self.backend.set_log_levels(levels)
        return 200, "text/plain", self._loggers()

    def _loggers(self) -> bytes:
        lines = "".join(f"  {name}: {log.level_name(name)}\n" for name in log.COMPONENTS)
        return ("active loggers:\n" + lines).encode()

    async def status_page(self, q: dict[str, list[str]], method: str
                          ) -> tuple[int, str, bytes]:
        return 200, "text/html; charset=utf-8", status.PAGE.encode()

    async def status_json(self, q: dict[str, list[str]], method: str
                          ) -> tuple[int, str, bytes]:
        doc = await self.backend.status_doc()
        doc["history"] = self.history.series()
        doc["sample_s"] = status.SAMPLE_S
        return 200, "application/json", json.dumps(doc).encode()

    async def certs(self, q: dict[str, list[str]], method: str) -> tuple[int, str, bytes]:
        doc = await self.backend.certs_doc()
        return 200, "application/json", json.dumps(doc, indent=1).encode()

    async def clusters(self, q: dict[str, list[str]], method: str) -> tuple[int, str, bytes]:
        doc = await self.backend.clusters_doc()
        if _arg(q, "format") == "json":
            return 200, "application/json", json.dumps(doc, indent=1).encode()
        return 200, "text/plain", clusters_text(doc).encode()

    async def raw_store(self, q: dict[str, list[str]], method: str) -> tuple[int, str, bytes]:
        store = await self.backend.stats_store()
        return 200, "application/json", json.dumps(store.dump()).encode()

    async def xds(self, q: dict[str, list[str]], method: str) -> tuple[int, str, bytes]:
        after = _arg(q, "after") or "0"
        doc = await self.backend.xds_doc(int(after) if after.isdigit() else 0,
                                         _arg(q, "epoch") or "")
        if doc is None:
            return 404, "text/plain", b"this worker does not lead\n"
        return 200, "application/json", json.dumps(doc).encode()

    async def crowdsec(self, q: dict[str, list[str]], method: str) -> tuple[int, str, bytes]:
        after = _arg(q, "after") or "0"
        doc = await self.backend.crowdsec_doc(_arg(q, "url") or "",
                                              int(after) if after.isdigit() else 0,
                                              _arg(q, "epoch") or "")
        if doc is None:
            return 404, "text/plain", b"no bouncer leads here for that LAPI\n"
        return 200, "application/json", json.dumps(doc).encode()

    async def server_info(self, q: dict[str, list[str]], method: str) -> tuple[int, str, bytes]:
        doc = await self.backend.server_info_doc()
        return 200, "application/json", json.dumps(doc, indent=1).encode()

    async def listeners(self, q: dict[str, list[str]], method: str) -> tuple[int, str, bytes]:
        doc = await self.backend.listeners_doc()
        if _arg(q, "format") == "json":
            return 200, "application/json", json.dumps(doc, indent=1).encode()
        out = "".join(f"{lst['name']}::{_address(lst['local_address'])}\n"
                      for lst in doc["listener_statuses"])
        return 200, "text/plain", out.encode()

    async def hc_fail(self, q: dict[str, list[str]], method: str) -> tuple[int, str, bytes]:
        await self.backend.set_health_failed(True)
        return 200, "text/plain", b"OK\n"

    async def hc_ok(self, q: dict[str, list[str]], method: str) -> tuple[int, str, bytes]:
        await self.backend.set_health_failed(False)
        return 200, "text/plain", b"OK\n"

    async def drain_listeners(self, q: dict[str, list[str]], method: str
                              ) -> tuple[int, str, bytes]:
        await self.backend.drain_listeners("graceful" in q, "skip_exit" in q)
        return 200, "text/plain", b"OK\n"

    async def quit(self, q: dict[str, list[str]], method: str) -> tuple[int, str, bytes]:
        asyncio.get_running_loop().call_later(0.05, self.backend.request_stop)
        return 200, "text/plain", b"OK\n"


def _arg(q: dict[str, list[str]], name: str) -> str | None:
    """The first value of a query parameter."""
    return next(iter(q.get(name) or []), None)


def _address(a: dict[str, Any]) -> str:
    sa = a["socket_address"]
    return address_string(sa["address"], sa["port_value"])


def version() -> str:
    """edgegw's version and build, Envoy's way: how the request path runs, the HTTP/2 codec,
    the downstream TLS transport."""
    return (f"{__version__}/Python/RELEASE/{compiled.build()}+{http2.describe()}"
            f"+{tls_transport.describe()}")


def server_info(state: str, options: dict[str, Any], node: Node, started: float) -> Doc:
    """``/server_info``, as Envoy shapes it (the options that JSON can carry)."""
    uptime = f"{int(time.time() - started)}s"
    return {"version": f"edgegw/{version()}",
            "state": state,
            "hot_restart_version": "disabled",
            "command_line_options": {k: v for k, v in options.items()
                                     if isinstance(v, (str, int, float, bool, type(None)))},
            "node": {"id": node.id, "cluster": node.cluster},
            "uptime_current_epoch": uptime, "uptime_all_epochs": uptime, "pid": os.getpid()}


def listener_statuses(listeners: list[Listener]) -> Doc:
    """``/listeners?format=json``, as Envoy shapes it."""
    return {"listener_statuses": [
        {"name": lst.name, "local_address": {"socket_address": {
            "address": lst.address[0], "port_value": lst.address[1]}}} for lst in listeners]}


def clusters_doc(clusters: ClusterManager) -> Doc:
    """/clusters?format=json, as Envoy shapes it."""
    return {"cluster_statuses": [{
        "name": c.name, "observability_name": c.name,
        "host_statuses": [{
            "address": {"socket_address": {"address": h.address, "port_value": h.port}},
            "stats": [{"name": n, "value": str(v)} for n, v in h.counters()]
            + [{"type": "GAUGE", "name": n, "value": str(v)} for n, v in h.gauges()],
            "health_status": {"eds_health_status": "HEALTHY",
                              **({"failed_active_health_check": True}
                                 if h.failed_active_hc else {}),
                              **({"failed_outlier_check": True} if h.ejected else {})},
            "weight": h.weight, "hostname": h.hostname, "locality": {}}
            for h in c.hosts]} for c in clusters.clusters.values()]}


def clusters_text(doc: dict[str, Any]) -> str:
    """/clusters as text, from the JSON document (so that workers' documents can be added up
    first)."""
    out = []
    for c in doc["cluster_statuses"]:
        name = c["name"]
        out += [f"{name}::observability_name::{name}", f"{name}::added_via_api::false"]
        for h in c.get("host_statuses", []):
            sa = h["address"]["socket_address"]
            addr = sa["address"]
            label = address_string(addr, sa["port_value"])
            p = f"{name}::{label}::"
            out += [f"{p}{st['name']}::{st['value']}"
                    for st in sorted(h["stats"], key=lambda st: st["name"])]
            hs = h["health_status"]
            flags = ("/failed_active_hc" if hs.get("failed_active_health_check") else "") + \
                ("/failed_outlier_check" if hs.get("failed_outlier_check") else "")
            out += [f"{p}hostname::{h['hostname']}", f"{p}health_flags::{flags or 'healthy'}",
                    f"{p}weight::{h['weight']}"]
    return "\n".join(out) + "\n"
