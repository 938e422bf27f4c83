"""The running gateway: builds the runtime from a bootstrap and owns its lifecycle.

Runtime objects are built from the immutable config model in one place, so that a later reload
is "build new objects, swap one reference". Signals: SIGTERM and SIGINT drain and stop the
server (a second one stops it at once), SIGHUP reloads the config, SIGUSR1 reopens access
logs.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import time
from collections.abc import Callable
from typing import Any

from . import compiled, log
from .admin import Admin, clusters_doc, dump, listener_statuses, server_info, status
from .config import Bootstrap, ConfigError
from .config.checks import config_sources
from .config.dynamic import files as dynamic_files
from .config.source import FileSignature, file_signature
from .config.subscription import warmed
from .crowdsec import Bouncers
from .listener import Listener
from .listener.drain import DrainManager
from .overload import ConnectionLimit
from .stats import Store
from .tasks import Tasks
from .tls.acme import AcmeClient, clients_for
from .tls.certs import cert_details, days_left, parse_chain
from .tls.sds import SecretManager
from .tls.tickets import TicketKeys, shared_master
from .upstream.cluster import ClusterManager
from .xds.listeners_clusters import DynamicConfig
from .xds.mux import XdsMux

_log = log.get("main")
_config_log = log.get("config")

CONFIG_POLL = 0.5
"""Seconds between looks at the config files for changes."""


def _uses_xds(boot: Bootstrap) -> bool:
    """Whether anything comes from a control plane."""
    dyn = boot.dynamic_resources
    return (dyn is not None and dyn.ads_config is not None) or any(
        source.xds for _, source in config_sources(boot))


def _server_names(boot: Bootstrap) -> set[str]:
    """The names TLS filter chains are chosen by: a site added or dropped by a reload."""
    return {n for lst in boot.static_resources.listeners for fc in lst.filter_chains
            for n in (fc.filter_chain_match.server_names if fc.filter_chain_match else [])}


class Server:
    def __init__(self, boot: Bootstrap, options: dict[str, Any] | None = None,
                 raw_config: dict[str, Any] | None = None,
                 loader: Callable[..., tuple[Bootstrap, dict[str, Any]]] | None = None) -> None:
        self.boot = boot
        self.notes = list(boot.notes)
        """The warnings of the config as last read (a reload logs only new ones)."""
        self.raw_config = raw_config if raw_config is not None else boot.model_dump(
            exclude_defaults=True)
        self.options = options or {}
        self.store = Store()
        self._state = "PRE_INITIALIZING"
        self.health_failed = False
        """Set by POST /healthcheck/fail: the server reports DRAINING until /healthcheck/ok."""
        self.drainer = DrainManager(float(self.options.get("drain_time_s") or 600),
                                    self.options.get("drain_strategy") or "gradual")
        """The drain sequence /drain_listeners starts (the listeners' connections ask it)."""
        self.started = time.time()
        self.loaded_at = self.started
        """When the config now served was loaded (its last_updated in /config_dump)."""
        self.store.gauge("server.live").value = 0
        self.worker: int | None = self.options.get("worker")
        """This process's number under a supervisor (--concurrency N), else None."""
        self.config_seen: dict[str, FileSignature] = dict(boot.files_seen)
        """The config files as they were when the config now served was read."""
        self.retired_listeners: list[Listener] = []
        """Listeners of previous configs whose connections are still finishing."""
        self.retired: list[tuple[ClusterManager, SecretManager]] = []
        """Previous configs' clusters and secrets, until no listener uses them."""
        self.warming: dict[tuple[str, int], tuple[Listener, asyncio.Task[None]]] = {}
        """Listeners of an LDS update waiting for their RDS or SDS (by address)."""
        self.limit = ConnectionLimit(self.active_downstream, int(
            self.options.get("concurrency") or 1) if self.worker is not None else 1)
        self.limit.configure(boot.overload_manager.max_connections)
        self.xds: XdsMux | None = None
        """The streams to the control plane, when the config has one."""
        if _uses_xds(boot):
            dyn = boot.dynamic_resources
            socket_path = self.options.get("admin_socket") or ""
            self.xds = XdsMux(  # (one stream per node: worker 0 leads, the others follow it)
                boot.node, dyn.ads_config if dyn else None, self._cluster, self.store,
                leading=self.worker == 0, leader_socket=os.path.join(
                    os.path.dirname(socket_path), "worker-0.sock")
                if self.worker and socket_path else None)
        self.tickets = TicketKeys(shared_master(self.options.get("admin_socket")))
        """Session tickets: one key for every worker (see tls/tickets.py)."""
        admin_socket = self.options.get("admin_socket") or ""
        self.crowdsec = Bouncers(self.store, os.path.join(
            os.path.dirname(admin_socket), "worker-0.sock") if self.worker and admin_socket
            else None)
        """CrowdSec bouncers (edgegw-only): worker 0 (or the only process) follows the LAPI."""
        self.secrets, self.clusters, self.listeners = self._build(boot)
        self.loader = loader
        """Reads and checks the config again (the command line's files): what reloads use."""
        self.dynamic: DynamicConfig | None = None
        """Listeners and clusters from the control plane (LDS, CDS)."""
        if self.xds is not None and loader is not None and boot.dynamic_resources:
            self.dynamic = DynamicConfig(boot.dynamic_resources, self.xds, self.store,
                                         loader, self._apply_xds)
        self.background = Tasks()
        """Retiring old configs, the config file watch, SIGHUP reloads."""
        self._reload_lock: asyncio.Lock | None = None
        self.admin: Admin | None = None
        if self.options.get("admin_socket"):
            self.admin = Admin(self, "", 0, "", unix_path=self.options["admin_socket"])
        elif boot.admin.address is not None:
            sa = boot.admin.address.socket_address
            self.admin = Admin(self, sa.address, sa.port_value, boot.admin.access_log_path)
        self._stopped: asyncio.Event | None = None
        self._drained: asyncio.Event | None = None
        self.acme: list[AcmeClient] = []
        """Built-in ACME, run by one process only: the single one, or worker 0."""

    def _build(self, boot: Bootstrap, previous: Server | None = None
               ) -> tuple[SecretManager, ClusterManager, list[Listener]]:
        """The runtime objects of one config: what a reload builds anew and swaps in
        (unchanged secrets and clusters are carried over from the ``previous`` ones)."""
        secrets = SecretManager(boot, self.store, self.xds,
                                previous.secrets if previous is not None else None)
        secrets.tickets = self.tickets
        try:
            clusters = ClusterManager(boot.static_resources.clusters, self.store, secrets,
                                      previous.clusters if previous is not None else None,
                                      self.xds)
            listeners = [Listener(lc, clusters, self.store, secrets,
                                  self.crowdsec.get(lc.crowdsec))
                         for lc in boot.static_resources.listeners]
        except BaseException:
            secrets.stop()  # (gives back what it took over from the previous manager)
            raise
        secrets.previous = None  # (everything is subscribed: the old manager may go)
        for lst in listeners:
            lst.reuse_port = self.worker is not None
            lst.limit = self.limit
            lst.drainer = self.drainer
        return secrets, clusters, listeners

    def _cluster(self, name: str) -> Any:
        """The cluster of that name in the config now served (the control plane's)."""
        return self.clusters.get(name)

    async def reload(self, why: str) -> bool:
        """Loads the config again and swaps it in if it is valid (edgegw-only; Envoy's own
        way is xDS). New requests use the new config, requests in flight finish on the old
        one, listening sockets stay open; an invalid config changes nothing and is reported
        with the errors --mode validate prints."""
        loader = self.loader
        if loader is None:
            _config_log.warning("config reload (%s): no config file to reload", why)
            return False
        if self._reload_lock is None:
            self._reload_lock = asyncio.Lock()
        async with self._reload_lock:
            return await self._reload(loader, why)

    async def _reload(self, loader: Any, why: str) -> bool:
        counter = self.store.counter
        counter("edgegw.config_reload.attempt").value += 1
        try:
            boot, raw = loader(self.dynamic.resources if self.dynamic else None)
        except ConfigError as e:
            self.config_seen = self._config_files_now()  # not again until it changes again
            return self._rejected(why, *e.problems)
        self.config_seen = dict(boot.files_seen)
        for note in boot.notes:  # (a site left out, or still without a certificate)
            if note not in self.notes:
                _config_log.warning("config reload (%s): %s", why, note)
        self.notes = list(boot.notes)
        if raw == self.raw_config and boot.dynamic == self.boot.dynamic:
            _config_log.info("config reload (%s): the config is unchanged", why)
            return True
        if boot.admin.model_dump() != self.boot.admin.model_dump():
            _config_log.warning("config reload (%s): admin changes take effect after a restart",
                                why)
        if (boot.dynamic_resources, boot.node) != (self.boot.dynamic_resources, self.boot.node):
            _config_log.warning("config reload (%s): node and dynamic_resources changes take "
                                "effect after a restart", why)
        return await self._swap(boot, raw, why)

    async def _apply_xds(self, built: tuple[Bootstrap, dict[str, Any]], why: str) -> bool:
        """Serves the config an LDS or CDS update made (checked already)."""
        if self._reload_lock is None:
            self._reload_lock = asyncio.Lock()
        async with self._reload_lock:
            boot, raw = built
            counter = self.store.counter
            counter("edgegw.config_reload.attempt").value += 1
            return await self._swap(boot, raw, why, from_control_plane=True)

    async def _swap(self, boot: Bootstrap, raw: dict[str, Any], why: str,
                    from_control_plane: bool = False) -> bool:
        """Builds the runtime of ``boot``, warms it, and swaps it in for new requests. The
        connections of a listener that changed move to the new config on a reload
        (edgegw's), and drain on the old one on an LDS update (Envoy's). On an LDS or CDS
        update, each listener warms on its own, as in Envoy: one whose routes or
        certificates have not come yet leaves the one it replaces serving, and the rest of
        the update serves meanwhile."""
        counter = self.store.counter
        try:
            secrets, clusters, listeners = self._build(boot, self)
        except (OSError, ValueError) as e:
            return self._rejected(why, e)
        old_keys = {lst.key: lst for lst in self.listeners}
        try:
            await clusters.start()
            await warmed([s for n, c in clusters.clusters.items() if n not in clusters.kept
                          for s in c.subscriptions()])
            if not from_control_plane:
                await warmed([s for lst in listeners for s in lst.subscriptions()])
            ready = [lst for lst in listeners if not from_control_plane or lst.warm()]
            for lst in ready:  # (after warming: a warming listener refuses connections)
                if lst.key not in old_keys or lst.key[1] == 0:
                    lst.bind()
        except (OSError, asyncio.CancelledError) as e:
            for lst in listeners:  # (closes the sockets bound above, ends RDS watches)
                lst.stop()
            clusters.stop(keep=[self.clusters])
            secrets.stop()
            if isinstance(e, asyncio.CancelledError):
                raise
            return self._rejected(why, e)
        for lst, task in self.warming.values():  # (this update supersedes theirs)
            task.cancel()
            lst.stop()
        self.warming.clear()
        active, leaving = [], []
        for lst in listeners:
            old = old_keys.pop(lst.key, None)
            if lst not in ready:
                self.warming[lst.key] = (lst, self.background.start(self._warm_listener(lst)))
                if old is not None:  # (serves on until the new one is warm)
                    active.append(old)
                continue
            if old is not None:
                if lst.sock is None:
                    lst.adopt(old, drain_if_changed=from_control_plane)
                leaving.append(old)
            lst.start()
            active.append(lst)
        for old in old_keys.values():  # (removed)
            old.drain()
            leaving.append(old)
        self.retired_listeners += leaving
        self.retired.append((self.clusters, self.secrets))
        before = _server_names(self.boot)
        self.boot, self.raw_config = boot, raw
        self.loaded_at = time.time()
        self.secrets, self.clusters, self.listeners = secrets, clusters, active
        self.limit.configure(boot.overload_manager.max_connections)
        secrets.start()
        self._follow_acme(boot)
        self.background.start(self._retire(leaving))
        counter("edgegw.config_reload.success").value += 1
        now = _server_names(boot)
        names = "".join([*(f", now serving {n}" for n in sorted(now - before)),
                         *(f", no longer serving {n}" for n in sorted(before - now))])
        warming = f", {len(self.warming)} warming" if self.warming else ""
        _config_log.info("config reload (%s): now serving the new config (%d listener(s)%s, "
                         "%d cluster(s)%s)", why, len(listeners), warming,
                         len(clusters.clusters), names)
        return True

    async def _warm_listener(self, lst: Listener) -> None:
        """Serves a listener of an LDS update once its RDS and SDS have come, in place of
        the one at its address (whose connections drain)."""
        await warmed(lst.subscriptions())  # (cancelled by a newer update, which stops it)
        old = next((o for o in self.listeners if o.key == lst.key), None)
        try:
            if old is None or lst.key[1] == 0:
                lst.bind()
        except OSError as e:
            lst.stop()
            del self.warming[lst.key]
            _config_log.error("listener '%s' warmed but cannot serve: %s", lst.name, e)
            return
        del self.warming[lst.key]
        if old is not None and lst.sock is None:
            lst.adopt(old, drain_if_changed=True)
        lst.start()
        self.listeners = [lst if o is old else o for o in self.listeners] if old is not None \
            else [*self.listeners, lst]
        _config_log.info("listener '%s' warmed: now serving", lst.name)
        if old is not None:  # (its connections drain: adopt said so)
            self.retired_listeners.append(old)
            await self._retire([old])

    def _follow_acme(self, boot: Bootstrap) -> None:
        """(Re)starts the ACME clients when their settings are new or changed, and the
        CrowdSec bouncers the listeners use."""
        self.crowdsec.keep([lst.crowdsec for lst in boot.static_resources.listeners
                            if lst.crowdsec is not None])
        if self.worker not in (None, 0):
            return
        wanted = [lst.acme for lst in boot.static_resources.listeners if lst.acme is not None]
        if [c.cfg for c in self.acme] == wanted:
            return
        for c in self.acme:
            c.stop()
        self.acme = clients_for(boot.static_resources.listeners, self.store)
        for c in self.acme:
            c.start()

    async def _retire(self, listeners: list[Listener]) -> None:
        """Stops listeners that left service once their last connection is gone (requests in
        flight finish on them), or after the drain time; then what their configs ran, once
        no listener uses it."""
        deadline = time.monotonic() + float(self.options.get("drain_time_s") or 600)
        while any(lst.open for lst in listeners) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        for lst in listeners:
            for proto in list(lst.open):
                proto.abort()
            lst.stop()
            self.retired_listeners.remove(lst)
        used = [self.clusters, *(lst.clusters for lst in [
            *self.listeners, *self.retired_listeners, *(w for w, _ in self.warming.values())])]
        for clusters, secrets in list(self.retired):
            if not any(clusters is u for u in used):
                self.retired.remove((clusters, secrets))
                clusters.stop(keep=[self.clusters, *(c for c, _ in self.retired)])
                secrets.stop()

    async def _rotate_tickets(self) -> None:
        """At each period's start, every server context takes the period's ticket key (each
        worker does it at the same moment, from the same master secret)."""
        while True:
            await asyncio.sleep(self.tickets.next_rotation() + 0.5)
            for lst in [*self.listeners, *self.retired_listeners]:
                for chain in lst.all_chains:
                    if chain.tls is not None:
                        chain.tls.rotate_tickets()

    async def start(self) -> None:
        self._stopped = asyncio.Event()
        self._state = "INITIALIZING"
        if self.admin is not None:
            await self.admin.start()
        _config_log.info("loading %d cluster(s)", len(self.clusters.clusters))
        await self.clusters.start()
        await warmed([*(s for c in self.clusters.clusters.values() for s in c.subscriptions()),
                      *(s for lst in self.listeners for s in lst.subscriptions())])
        _config_log.info("loading %d listener(s)", len(self.listeners))
        for lst in self.listeners:
            lst.start()
            _log.info("listener '%s' on %s:%d", lst.name, *lst.address)
        # Config and runtime objects live as long as the server: keep the cyclic GC off them.
        gc.freeze()
        self.secrets.start()
        self._follow_acme(self.boot)
        self.background.start(self._rotate_tickets())
        if self.dynamic is not None:
            self.dynamic.start()
        self._state = "LIVE"
        self.store.gauge("server.concurrency").value = int(self.options.get("concurrency") or 1) \
            if self.worker is not None else 1
        _log.info("request path: %s", "compiled (mypyc)" if compiled.active() else "pure Python")
        _log.info("all dependencies initialized. starting workers")

    @property
    def state(self) -> str:
        """Envoy's server state; LIVE only once every listener the sites file asks for is
        there (HTTPS waits for a first certificate)."""
        if self._state == "LIVE" and (self.boot.waiting or (
                self.dynamic is not None and not self.dynamic.initialized.is_set())):
            return "INITIALIZING"
        return "DRAINING" if self.health_failed and self._state == "LIVE" else self._state

    def update_server_gauges(self) -> None:
        """The server.* gauges Envoy keeps, refreshed when the admin port is read."""
        g = self.store.gauge
        g("server.live").value = int(self.state == "LIVE")
        g("server.state").value = {"LIVE": 0, "DRAINING": 1, "PRE_INITIALIZING": 2,
                                   "INITIALIZING": 3}[self.state]
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

    # --- AdminBackend: what the admin port reads and commands ----------------------------

    async def current_state(self) -> str:
        return self.state

    async def waiting(self) -> list[str]:
        return list(self.boot.waiting)

    async def stats_store(self) -> Store:
        self.update_server_gauges()
        return self.store

    async def clusters_doc(self) -> dict[str, Any]:
        return clusters_doc(self.clusters)

    async def config_dump_doc(self) -> list[dict[str, Any]]:
        rds = list({c.hcm.rds.name: c.hcm.rds for lst in self.listeners for c in lst.all_chains
                    if c.hcm is not None and c.hcm.rds is not None and c.hcm.rds.raw}.values())
        return dump.build(self.raw_config, self.loaded_at, self.secrets.dump(),
                          self.boot.dynamic, [(r.version, r.raw, r.updated) for r in rds],
                          self.dynamic.version_of if self.dynamic else None,
                          frozenset(lst.name for lst, _ in self.warming.values()))

    async def certs_doc(self) -> dict[str, Any]:
        return {"certificates": self.certificates(), "rejected": self.secrets.rejected()}

    async def listeners_doc(self) -> dict[str, Any]:
        return listener_statuses(self.listeners)

    async def status_doc(self) -> dict[str, Any]:
        doc = status.status_doc(self.state, self.started, self.listeners, self.clusters,
                                self.store, self.secrets.rejected())
        doc["left_out"] = self.boot.left_out
        doc["acme"] = [st for c in self.acme for st in c.status()]
        doc["crowdsec"] = self.crowdsec.status()
        return doc

    async def server_info_doc(self) -> dict[str, Any]:
        return server_info(self.state, self.options, self.boot.node, self.started)

    async def xds_doc(self, after: int, epoch: str) -> dict[str, Any] | None:
        published = self.xds.published if self.xds is not None else None
        return await published.doc(after, epoch) if published is not None else None

    async def crowdsec_doc(self, url: str, after: int, epoch: str) -> dict[str, Any] | None:
        return self.crowdsec.doc(url, after, epoch)

    async def set_log_levels(self, levels: list[tuple[str | None, int]]) -> None:
        for component, level in levels:
            log.set_level(component, level)

    async def set_health_failed(self, failed: bool) -> None:
        self.health_failed = self.drainer.health_failed = failed

    async def drain_listeners(self, graceful: bool = False, skip_exit: bool = False) -> None:
        """Envoy's /drain_listeners: the HTTP connections drain by --drain-strategy; the
        listeners stop accepting now, or (graceful) once the drain time is over, or
        (skip_exit) not at all. A graceful drain asked for again while one lasts changes
        nothing."""
        if graceful and self.drainer.draining:
            return
        self.drainer.start([c for lst in self.listeners for c in lst.http_connections()])
        if skip_exit:
            return
        if not graceful:
            for lst in self.listeners:
                lst.stop_accepting()
            return

        def stop() -> None:
            for lst in self.listeners:
                lst.stop_accepting()

        asyncio.get_running_loop().call_later(self.drainer.drain_time, stop)

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
                for logger in chain.access_logs:
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

    def active_downstream(self) -> int:
        """The connections the global limit counts: accepted, on every listener that does
        not ignore it, old configs' included."""
        return sum(lst.active for lst in [*self.listeners, *self.retired_listeners])

    def open_connections(self) -> int:
        return sum(len(lst.open) for lst in [*self.listeners, *self.retired_listeners])

    def watched_files(self) -> list[str]:
        """The files a change of which reloads the config: -c, the LDS/CDS files, and what
        else the config was read from (a sites file's certificate directory)."""
        path = self.options.get("config_path")
        named = [p for p in (path, *dynamic_files(self.raw_config).values()) if p]
        return [*named, *(p for p in self.config_seen if p not in named)]

    def _config_files_now(self) -> dict[str, FileSignature]:
        return {p: file_signature(p) for p in self.watched_files()}

    async def _watch(self) -> None:
        """Reloads when a config file changes: written in place, replaced by a rename, or a
        symlink swapped (as Kubernetes ConfigMaps do). Checked twice a second by stat rather
        than with file events: a config directory may hold busy files (logs, a web root) whose
        events would keep a watcher thread waking beside the event loop. What a change is
        measured against is the files as they were when the config was read, so a change
        made while the gateway was starting is seen too."""
        while self._stopped is not None and not self._stopped.is_set():
            await asyncio.sleep(CONFIG_POLL)
            now = self._config_files_now()
            if now != self.config_seen:
                last = self.config_seen
                changed = next((p for p in now if now[p] != last.get(p)), next(iter(now)))
                await asyncio.sleep(CONFIG_POLL)  # let a writer finish
                await self.reload(f"{os.path.normpath(changed)} changed")

    def _rejected(self, why: str, *problems: object) -> bool:
        for p in problems:
            _config_log.error("config reload (%s) rejected, still serving the previous config: "
                              "%s", why, p)
        self.store.counter("edgegw.config_reload.rejected").value += 1
        return False

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

    def _on_sighup(self) -> None:
        self.background.start(self.reload("SIGHUP"))

    async def run(self) -> None:
        await self.start()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGUSR1, self.reopen_logs)
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        if self.loader is not None and self.watched_files():
            self.background.start(self._watch())
        assert self._stopped is not None
        await self._stopped.wait()
        _log.info("shutting down")
        await self.drain(float(self.options.get("drain_time_s") or 600))
        await self.stop()

    async def stop(self) -> None:
        self._state = "DRAINING"
        self.background.cancel()
        if self.dynamic is not None:
            self.dynamic.stop()
        if self.xds is not None:
            self.xds.stop()
        for lst in [*self.listeners, *self.retired_listeners,
                    *(w for w, _ in self.warming.values())]:
            lst.stop()
        managers = [*self.retired, (self.clusters, self.secrets)]
        for i, (clusters, secrets) in enumerate(managers):
            clusters.stop(keep=[c for c, _ in managers[i + 1:]])
            secrets.stop()
        for c in self.acme:
            c.stop()
        self.crowdsec.stop()
        if self.admin is not None:
            await self.admin.stop()
        _log.info("exiting")
