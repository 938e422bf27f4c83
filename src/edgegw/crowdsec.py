"""A CrowdSec bouncer *(edgegw-only)*: the decisions of a CrowdSec Local API, enforced.

The bouncer follows the LAPI's decision stream (``GET /v1/decisions/stream``, the API key in
``X-Api-Key``: everything at the first pull, then what was added and deleted since) every
``poll_interval``. Decisions on an address or a range (IPv4 and IPv6; other scopes, such as a
country, are left to the LAPI's other bouncers) are held in a set keyed by prefix length:
a lookup costs one dictionary probe per prefix length in use.

- A ban refuses the connection as it is accepted, before TLS (a banned address costs no
  handshake): the peer's address, or the one a PROXY header gives.
- Any decision refuses each request of its client (the address the connection manager
  settled on, so XFF rules apply) with a 403 page that says why: ``captcha`` decisions
  land here, as edgegw shows no captcha.
- A LAPI that cannot be reached keeps the last decisions in force, and says so (log, /status,
  ``edgegw.crowdsec.lapi_up``).
- Under ``--concurrency N`` the LAPI sees one bouncer: worker 0 follows the stream (the LAPI
  keeps one position per API key) and the other workers ask it (``/edgegw/crowdsec`` on its
  private admin socket) for what changed.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import secrets
import socket
import time
import urllib.parse
import urllib.request
from typing import TYPE_CHECKING, Any

from . import __version__, log
from .config import model as m
from .stats import Store

if TYPE_CHECKING:
    from .http.filter import FilterCallbacks

_log = log.get("main")

KEEP = 64
"""Changes the leader keeps for its followers; one further behind gets the whole set."""
PAGE = ("<!doctype html><html><head><meta charset=utf-8><title>Access denied</title></head>"
        "<body><h1>Access denied</h1><p>Your address ({ip}) is refused by this site's "
        "security policy (CrowdSec: {kind}).</p></body></html>")

_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))
"""The LAPI is asked directly, whatever HTTP_PROXY says (it is the home lab's own)."""

Decision = tuple[str, str]
"""(an address or a range, its type: ``ban``, ``captcha`` …)"""


_UNIT = {"ban": 1, "captcha": 1 << 21}
_OTHER = 1 << 42
_FIELD = (1 << 21) - 1
"""A network's decisions are one int: how many bans, captchas and others, 21 bits each."""


class Decisions:
    """Addresses and ranges with their decision types, IPv4 and IPv6: per prefix length, a
    dictionary of int to int (no object per decision for the collector to walk; about 100
    bytes a decision)."""

    def __init__(self) -> None:
        self.v4: dict[int, dict[int, int]] = {}
        self.v6: dict[int, dict[int, int]] = {}
        """prefix length → network (its leading bits) → its decisions' counts."""
        self.other_kinds: dict[tuple[int, int, int], str] = {}
        """The name of a decision type other than ban and captcha, by (version, length,
        network)."""
        self.count = 0

    def _locate(self, value: str) -> tuple[int, dict[int, dict[int, int]], int, int] | None:
        """(IP version, its table, prefix length, leading bits), or None for no address."""
        try:
            net = ipaddress.ip_network(value, strict=False)
        except ValueError:
            return None
        if isinstance(net, ipaddress.IPv6Network) and net.network_address.ipv4_mapped \
                and net.prefixlen >= 96:
            net = ipaddress.ip_network((net.network_address.ipv4_mapped, net.prefixlen - 96))
        table = self.v4 if net.version == 4 else self.v6
        return net.version, table, net.prefixlen, int(net.network_address) >> (
            net.max_prefixlen - net.prefixlen)

    def add(self, value: str, kind: str) -> None:
        where = self._locate(value)
        if where is None:
            return
        version, table, plen, key = where
        unit = _UNIT.get(kind, _OTHER)
        nets = table.setdefault(plen, {})
        nets[key] = nets.get(key, 0) + unit
        if unit == _OTHER:
            self.other_kinds[(version, plen, key)] = kind
        self.count += 1

    def remove(self, value: str, kind: str) -> None:
        where = self._locate(value)
        if where is None:
            return
        version, table, plen, key = where
        unit = _UNIT.get(kind, _OTHER)
        nets = table.get(plen, {})
        counts = nets.get(key, 0)
        if not (counts // unit) & _FIELD:
            return
        self.count -= 1
        if counts == unit:
            del nets[key]
            self.other_kinds.pop((version, plen, key), None)
            if not nets:
                del table[plen]
        else:
            nets[key] = counts - unit

    def lookup(self, ip: str) -> str | None:
        """The decision on this address (``ban`` first, if several), or None."""
        try:
            if ":" not in ip:
                table, width, version = self.v4, 32, 4
                value = int.from_bytes(socket.inet_pton(socket.AF_INET, ip), "big")
            elif ip.startswith("::ffff:") and "." in ip:  # an IPv4 client on a dual-stack socket
                table, width, version = self.v4, 32, 4
                value = int.from_bytes(socket.inet_pton(socket.AF_INET, ip[7:]), "big")
            else:
                table, width, version = self.v6, 128, 6
                value = int.from_bytes(socket.inet_pton(socket.AF_INET6, ip), "big")
        except OSError:
            return None
        found: str | None = None
        for plen, nets in table.items():
            key = value >> (width - plen)
            counts = nets.get(key)
            if counts:
                if counts & _FIELD:
                    return "ban"
                found = found or ("captcha" if (counts >> 21) & _FIELD
                                  else self.other_kinds.get((version, plen, key), "other"))
        return found

    def all(self) -> list[Decision]:
        out: list[Decision] = []
        for table, version, width in ((self.v4, 4, 32), (self.v6, 6, 128)):
            for plen, nets in table.items():
                for key, counts in nets.items():
                    net = str(ipaddress.ip_network((key << (width - plen), plen)))
                    for kind, shift in (("ban", 0), ("captcha", 21), ("", 42)):
                        name = kind or self.other_kinds.get((version, plen, key), "other")
                        out.extend((net, name) for _ in range((counts >> shift) & _FIELD))
        return out


def _decisions(items: list[dict[str, Any]] | None) -> list[Decision]:
    """The stream's decisions on addresses and ranges."""
    return [(d["value"], str(d.get("type") or "ban").lower()) for d in items or []
            if str(d.get("scope", "")).lower() in ("ip", "range") and isinstance(
                d.get("value"), str)]


class Bouncer:
    """One LAPI's decisions, kept current (leading) or taken from the leading worker."""

    def __init__(self, cfg: m.CrowdSec, store: Store, leader_socket: str | None) -> None:
        self.cfg = cfg
        self.leader_socket = leader_socket
        self.decisions = Decisions()
        self.task: asyncio.Task[None] | None = None
        self.started = False
        """The first full pull has been made (until then, a pull asks for everything)."""
        self.up = False
        self.last_pull = 0.0
        self.last_error = ""
        self.epoch = secrets.token_hex(8)
        self.generation = 0
        self.changes: list[tuple[int, list[Decision], list[Decision]]] = []
        p = "edgegw.crowdsec."
        self.gauge = store.gauge(p + "decisions")
        self.lapi_up = store.gauge(p + "lapi_up")
        self.errors = store.counter(p + "lapi_errors")
        self.refused_connections = store.counter(p + "refused_connections")
        self.refused_requests = store.counter(p + "refused_requests")

    # --- enforcing -----------------------------------------------------------------------

    def banned(self, ip: str) -> bool:
        """At accept: a ban on this address refuses its connection."""
        if self.decisions.count and self.decisions.lookup(ip) == "ban":
            self.refused_connections.value += 1
            return True
        return False

    def decision(self, ip: str) -> str | None:
        return self.decisions.lookup(ip) if self.decisions.count else None

    # --- following -----------------------------------------------------------------------

    def start(self) -> None:
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._run())

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            self.task = None

    async def _run(self) -> None:
        while True:
            try:
                if self.leader_socket is None:
                    await self._pull()
                else:
                    await self._follow()
                if not self.up:
                    _log.info("crowdsec: decisions from %s (%d in force)", self.cfg.url,
                              self.decisions.count)
                self.up, self.last_error = True, ""
            except (TimeoutError, OSError, ValueError) as e:
                self.errors.value += 1
                why = str(e) or type(e).__name__
                if self.up or not self.last_error:
                    _log.error("crowdsec: cannot reach %s (%s); the %d decisions already "
                               "pulled stay in force", self.cfg.url if self.leader_socket is None
                               else "the leading worker", why, self.decisions.count)
                self.up, self.last_error = False, why
            self.lapi_up.value = int(self.up)
            await asyncio.sleep(self.cfg.poll_interval)

    async def _pull(self) -> None:
        with open(self.cfg.api_key_file) as f:
            key = f.read().strip()
        url = (self.cfg.url.rstrip("/") + "/v1/decisions/stream?startup="
               + ("false" if self.started else "true"))
        request = urllib.request.Request(url, headers={
            "X-Api-Key": key, "User-Agent": f"edgegw-bouncer/{__version__}"})

        def fetch() -> Any:
            with _DIRECT.open(request, timeout=30) as r:
                return json.load(r)

        doc = await asyncio.to_thread(fetch)
        if not isinstance(doc, dict):
            raise ValueError("the LAPI's answer is not a JSON object")
        full = not self.started
        self._apply(_decisions(doc.get("new")), _decisions(doc.get("deleted")), full)
        self.started = True
        self.last_pull = time.time()

    def _apply(self, new: list[Decision], deleted: list[Decision], full: bool) -> None:
        if full:
            self.decisions = Decisions()
        for value, kind in deleted:
            self.decisions.remove(value, kind)
        for value, kind in new:
            self.decisions.add(value, kind)
        self.gauge.value = self.decisions.count
        if new or deleted or full:
            self.generation += 1
            # (a whole set is not kept as a change: a follower behind it gets the set)
            self.changes = [] if full else [*self.changes[-KEEP + 1:],
                                            (self.generation, new, deleted)]

    def doc(self, after: int, epoch: str) -> dict[str, Any]:
        """What a following worker is given: the changes since generation ``after``, or
        everything."""
        if epoch == self.epoch and after == self.generation:
            return {"epoch": self.epoch, "generation": after, "new": [], "deleted": []}
        if epoch == self.epoch and self.changes and self.changes[0][0] <= after + 1:
            later = [c for c in self.changes if c[0] > after]
            return {"epoch": self.epoch, "generation": self.generation,
                    "new": [d for c in later for d in c[1]],
                    "deleted": [d for c in later for d in c[2]]}
        return {"epoch": self.epoch, "generation": self.generation, "full": True,
                "new": self.decisions.all(), "deleted": []}

    async def _follow(self) -> None:
        assert self.leader_socket is not None
        reader, writer = await asyncio.wait_for(
            asyncio.open_unix_connection(self.leader_socket, limit=2**26), 5)
        query = urllib.parse.urlencode({"url": self.cfg.url, "after": self.generation,
                                        "epoch": self.epoch})
        try:
            writer.write(f"GET /edgegw/crowdsec?{query} HTTP/1.1\r\nhost: worker\r\n"
                         "connection: close\r\n\r\n".encode())
            raw = await asyncio.wait_for(reader.read(), 30)
        finally:
            writer.close()
        head, _, body = raw.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise ValueError(head.split(b"\r\n", 1)[0].decode("latin-1") or "no answer")
        doc = json.loads(body)
        full = bool(doc.get("full"))
        self._apply([(d[0], d[1]) for d in doc["new"]],
                    [(d[0], d[1]) for d in doc["deleted"]], full)
        self.epoch, self.generation = doc["epoch"], doc["generation"]
        self.last_pull = time.time()

    def status(self) -> dict[str, Any]:
        return {"url": self.cfg.url, "up": self.up, "decisions": self.decisions.count,
                "last_pull": self.last_pull, "last_error": self.last_error}


class Bouncers:
    """The bouncers of this process, one per LAPI config, kept across reloads."""

    def __init__(self, store: Store, leader_socket: str | None) -> None:
        self.store = store
        self.leader_socket = leader_socket
        self.by_config: dict[m.CrowdSec, Bouncer] = {}

    def get(self, cfg: m.CrowdSec | None) -> Bouncer | None:
        if cfg is None:
            return None
        b = self.by_config.get(cfg)
        if b is None:
            b = self.by_config[cfg] = Bouncer(cfg, self.store, self.leader_socket)
        return b

    def keep(self, wanted: list[m.CrowdSec]) -> None:
        """Starts the bouncers ``wanted`` and stops the others (a reload dropped them)."""
        for cfg, b in list(self.by_config.items()):
            if cfg in wanted:
                b.start()
            else:
                b.stop()
                del self.by_config[cfg]

    def stop(self) -> None:
        self.keep([])

    def doc(self, url: str, after: int, epoch: str) -> dict[str, Any] | None:
        b = next((b for cfg, b in self.by_config.items() if cfg.url == url), None)
        return b.doc(after, epoch) if b is not None and self.leader_socket is None else None

    def status(self) -> list[dict[str, Any]]:
        return [b.status() for b in self.by_config.values()]


class RequestCheck:
    """The per-request check, run before the chain's HTTP filters: a client with a decision
    gets a 403 page naming it."""

    def __init__(self, bouncer: Bouncer) -> None:
        self.bouncer = bouncer

    def decode_headers(self, cb: FilterCallbacks, route_cfg: object) -> bool:
        ip = cb.info.remote_ip
        kind = self.bouncer.decision(ip)
        if kind is None:
            return True
        self.bouncer.refused_requests.value += 1
        cb.send_local_reply(403, PAGE.format(ip=ip, kind=kind).encode(), "crowdsec_" + kind,
                            content_type=b"text/html; charset=UTF-8")
        return False
