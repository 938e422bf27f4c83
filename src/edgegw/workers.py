"""--concurrency N: N worker processes behind one admin port, and a supervisor that keeps them.

Python runs one thread of Python at a time, so edgegw uses every core the way nginx does:
processes. Each worker is a whole gateway (the same command line, plus ``--worker I``) that
binds every listener with SO_REUSEPORT, so the kernel spreads new connections over them, and
serves its admin API on a private Unix socket. The supervisor serves the configured admin
port as an ``AdminBackend`` over all workers: stats are added up (counters and histograms
sum, except those of facts every worker counts for itself; gauges of things in progress sum,
gauges of shared facts such as membership take the highest), /clusters and /status add up
host counters, /certs, /listeners and /config_dump list what any worker serves, and commands
(logging levels, health check fail/ok, drain) go to every worker. A worker that dies is
started again (logged, counted in ``edgegw.worker_restarts``). SIGTERM drains every worker, then the supervisor exits; SIGHUP
and SIGUSR1 are passed on.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from typing import Any
from urllib.parse import urlencode

from . import __version__, log
from .admin import Admin, server_info
from .config import Bootstrap
from .listener import check_addresses_free
from .stats import Store
from .tls.tickets import shared_master

_log = log.get("main")

READY_TIMEOUT = 60.0


class Worker:
    def __init__(self, index: int, socket_path: str) -> None:
        self.index = index
        self.socket_path = socket_path
        self.proc: asyncio.subprocess.Process | None = None
        self.started = 0.0
        self.ready = False

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc is not None else 0

    async def ask(self, method: str, target: str) -> tuple[int, str, bytes]:
        """One admin request to this worker over its Unix socket."""
        reader, writer = await asyncio.wait_for(
            asyncio.open_unix_connection(self.socket_path), 5)
        try:
            writer.write(f"{method} {target} HTTP/1.1\r\nhost: worker\r\nconnection: close\r\n"
                         f"content-length: 0\r\n\r\n".encode())
            raw = await asyncio.wait_for(reader.read(), 30)
        finally:
            writer.close()
        head, _, body = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        ctype = next((ln.split(":", 1)[1].strip() for ln in lines[1:]
                      if ln.lower().startswith("content-type:")), "text/plain")
        return int(lines[0].split()[1]), ctype, body


class Supervisor:
    def __init__(self, boot: Bootstrap, argv: list[str], count: int,
                 options: dict[str, Any]) -> None:
        self.boot = boot
        self.argv = argv
        self.options = options
        self.store = Store()
        self.restarts = self.store.counter("edgegw.worker_restarts")
        self.started = time.time()
        self.health_failed = False
        self.stopping = False
        self.finishing: asyncio.Task[None] | None = None
        self.folder = tempfile.mkdtemp(prefix="edgegw-workers-")
        shared_master(None, self.folder)  # (the workers' session ticket keys come from it)
        self.workers = [Worker(i, os.path.join(self.folder, f"worker-{i}.sock"))
                        for i in range(count)]
        self.admin: Admin | None = None
        if boot.admin.address is not None:
            sa = boot.admin.address.socket_address
            self.admin = Admin(self, sa.address, sa.port_value, boot.admin.access_log_path)
        self._done = asyncio.Event()

    # --- workers ----------------------------------------------------------------------------

    async def _spawn(self, w: Worker) -> None:
        if os.path.exists(w.socket_path):
            os.unlink(w.socket_path)
        w.ready = False
        w.started = time.monotonic()
        # A session of its own: a terminal's Ctrl-C reaches the supervisor alone, which passes
        # it on once (drain), not twice (stop at once).
        w.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "edgegw", *self.argv, "--worker", str(w.index),
            "--admin-socket", w.socket_path, start_new_session=True)
        _log.info("worker %d started (pid %d)", w.index, w.pid)

    async def _wait_ready(self, w: Worker) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline and w.proc is not None and w.proc.returncode is None:
            try:
                code, _, body = await w.ask("GET", "/ready")
                if code == 200 or b"\nwaiting for " in body:  # (started, HTTPS waits for a
                    w.ready = True                               # first certificate)
                    return
            except (OSError, ValueError, IndexError, TimeoutError):
                pass
            await asyncio.sleep(0.05)

    async def _keep(self, w: Worker) -> None:
        """Waits on a worker; one that exits while the server runs is started again, with a
        growing pause if it keeps dying at once (a bad config file, a port taken…)."""
        pause = 0.5
        while True:
            assert w.proc is not None
            code = await w.proc.wait()
            if self.stopping:
                return
            lived = time.monotonic() - w.started
            self.restarts.value += 1
            _log.error("worker %d (pid %d) exited with status %s after %.1fs: starting it again",
                       w.index, w.pid, code, lived)
            pause = 0.5 if lived > 10 else min(pause * 2, 30.0)
            await asyncio.sleep(pause if lived < 10 else 0)
            if not await self._restart(w):
                return

    async def _restart(self, w: Worker) -> bool:
        """Starts an exited worker again, unless stopping began during the pause."""
        if self.stopping:
            return False
        await self._spawn(w)
        await self._wait_ready(w)
        return True

    def _signal_all(self, sig: int) -> None:
        for w in self.workers:
            if w.proc is not None and w.proc.returncode is None:
                try:
                    w.proc.send_signal(sig)
                except ProcessLookupError:
                    pass

    def request_stop(self) -> None:
        """SIGTERM/SIGINT or /quitquitquit: every worker drains; asked twice, they stop now."""
        if self.stopping:
            self._signal_all(signal.SIGTERM)
            return
        self.stopping = True
        _log.info("shutting down: draining %d worker(s)", len(self.workers))
        self._signal_all(signal.SIGTERM)
        self.finishing = asyncio.ensure_future(self._finish())

    async def _finish(self) -> None:
        await asyncio.gather(*(w.proc.wait() for w in self.workers if w.proc is not None))
        self._done.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        for sig in (signal.SIGHUP, signal.SIGUSR1):
            loop.add_signal_handler(sig, self._signal_all, sig)
        check_addresses_free(self.boot.static_resources.listeners)
        if self.admin is not None:
            await self.admin.start()
        for w in self.workers:
            await self._spawn(w)
        await asyncio.gather(*(self._wait_ready(w) for w in self.workers))
        failed = [w for w in self.workers if not w.ready]
        if failed and not self.stopping:
            self.stopping = True
            self._signal_all(signal.SIGTERM)
            await asyncio.gather(*(w.proc.wait() for w in self.workers if w.proc is not None))
            if self.admin is not None:
                await self.admin.stop()
            self._cleanup()
            _log.critical("worker %d did not start (its error is above): stopping",
                          failed[0].index)
            raise SystemExit(1)
        keepers = [asyncio.ensure_future(self._keep(w)) for w in self.workers]
        _log.info("%d workers serving", sum(w.ready for w in self.workers))
        await self._done.wait()
        for k in keepers:
            k.cancel()
        if self.admin is not None:
            await self.admin.stop()
        self._cleanup()
        _log.info("exiting")

    def _cleanup(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)  # (sockets, the ticket master secret)

    # --- what the admin port asks -----------------------------------------------------------

    def live(self) -> list[Worker]:
        return [w for w in self.workers if w.ready and w.proc is not None
                and w.proc.returncode is None]

    async def ask_all(self, method: str, target: str) -> list[tuple[int, str, bytes]]:
        results = await asyncio.gather(*(w.ask(method, target) for w in self.live()),
                                       return_exceptions=True)
        return [r for r in results if not isinstance(r, BaseException)]

    async def merged_store(self) -> Store:
        answers = await self.ask_all("GET", "/edgegw/store")
        return Store.merged([json.loads(body) for code, _, body in answers if code == 200]
                            + [self.store.dump()])

    async def docs(self, target: str) -> list[dict[str, Any]]:
        """Every live worker's JSON answer to a GET."""
        return [json.loads(body) for code, _, body in await self.ask_all("GET", target)
                if code == 200]

    async def broadcast(self, target: str) -> None:
        await self.ask_all("POST", target)

    # --- AdminBackend: the admin port speaks for every worker -------------------------------

    async def current_state(self) -> str:
        if self.stopping or self.health_failed:
            return "DRAINING"
        states = [body.decode().split("\n", 1)[0]
                  for _, _, body in await self.ask_all("GET", "/ready")]
        if len(states) < len(self.workers):
            return "INITIALIZING"
        return next((s for s in states if s != "LIVE"), "LIVE")

    async def waiting(self) -> list[str]:
        waits = [line[len("waiting for "):] for _, _, body in await self.ask_all("GET", "/ready")
                 for line in body.decode().splitlines()[1:]]
        return list(dict.fromkeys(waits))

    async def stats_store(self) -> Store:
        store = await self.merged_store()
        store.gauge("server.concurrency").value = len(self.workers)
        return store

    async def clusters_doc(self) -> dict[str, Any]:
        docs = await self.docs("/clusters?format=json")
        return _add_clusters(docs) if docs else {"cluster_statuses": []}

    async def config_dump_doc(self) -> list[dict[str, Any]]:
        """One dump when the workers agree; while a reload has reached some workers and not
        others, each repeated field holds the entries of both configs."""
        docs = [d["configs"] for d in await self.docs("/config_dump")]
        if not docs:
            return []
        out = json.loads(json.dumps(docs[0]))
        for other in docs[1:]:
            for mine, theirs in zip(out, other, strict=False):
                for key, value in theirs.items():
                    if isinstance(value, list) and isinstance(mine.get(key), list):
                        _union(mine[key], value)
        return out

    async def certs_doc(self) -> dict[str, Any]:
        out: dict[str, Any] = {"certificates": [], "rejected": []}
        for doc in await self.docs("/certs"):
            _union(out["certificates"], doc.get("certificates", []))
            _union(out["rejected"], doc.get("rejected", []))
        return out

    async def listeners_doc(self) -> dict[str, Any]:
        out: dict[str, Any] = {"listener_statuses": []}
        for doc in await self.docs("/listeners?format=json"):
            _union(out["listener_statuses"], doc["listener_statuses"])
        return out

    async def status_doc(self) -> dict[str, Any]:
        docs = await self.docs("/status.json")
        if not docs:
            return {"version": __version__, "state": await self.current_state(),
                    "uptime_s": int(time.time() - self.started), "time": time.time(),
                    "sites": [], "clusters": [], "rejected_certificates": []}
        out = _add_status(docs)
        out["state"] = await self.current_state()
        out["uptime_s"] = int(time.time() - self.started)
        out["workers"] = [{"index": w.index, "pid": w.pid, "ready": w.ready}
                          for w in self.workers]
        return out

    async def server_info_doc(self) -> dict[str, Any]:
        doc = server_info("DRAINING" if self.stopping else "LIVE", self.options, self.boot.node,
                          self.started)
        doc["workers"] = [{"index": w.index, "pid": w.pid, "ready": w.ready,
                           "admin_socket": w.socket_path} for w in self.workers]
        return doc

    async def set_log_levels(self, levels: list[tuple[str | None, int]]) -> None:
        for component, level in levels:
            log.set_level(component, level)  # the supervisor's own log too
        query = urlencode([(c or "level", log.name_of(lv)) for c, lv in levels])
        await self.broadcast(f"/logging?{query}")

    async def set_health_failed(self, failed: bool) -> None:
        self.health_failed = failed
        await self.broadcast("/healthcheck/fail" if failed else "/healthcheck/ok")

    async def drain_listeners(self, graceful: bool = False, skip_exit: bool = False
                              ) -> None:
        flags = [f for f, on in (("graceful", graceful), ("skip_exit", skip_exit)) if on]
        await self.broadcast("/drain_listeners" + (f"?{'&'.join(flags)}" if flags else ""))

    async def xds_doc(self, after: int, epoch: str) -> dict[str, Any] | None:
        return None  # (workers follow worker 0 directly)

    async def crowdsec_doc(self, url: str, after: int, epoch: str) -> dict[str, Any] | None:
        return None  # (as for xds)


def _union(into: list[Any], more: list[Any]) -> None:
    """Appends the entries of ``more`` that ``into`` does not hold yet (when each worker
    loaded them is not what tells them apart)."""
    seen = {_identity(x) for x in into}
    for x in more:
        key = _identity(x)
        if key not in seen:
            seen.add(key)
            into.append(x)


def _identity(entry: Any) -> str:
    if isinstance(entry, dict):
        entry = {k: v for k, v in entry.items() if k not in ("last_updated", "since")}
    return json.dumps(entry, sort_keys=True)


def _add_status(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """Workers' status documents as one: request counts add up, a host is healthy only if
    every worker finds it so, and every refused certificate file is listed."""
    out = json.loads(json.dumps(docs[0]))
    for other in docs[1:]:
        for part, key in (("sites", "id"), ("clusters", "name")):
            mine = {x[key]: x for x in out[part]}
            for x in other[part]:
                m = mine.get(x[key])
                if m is None:
                    continue
                for f in ("requests", "errors", "errors_4xx", "websockets", "websocket_bytes",
                          "connect_failures", "time_sum_ms", "time_count"):
                    if f in x:
                        m[f] += x[f]
                hosts = {h["address"]: h for h in m.get("hosts", [])}
                for h in x.get("hosts", []):
                    mh = hosts.get(h["address"])
                    if mh is not None:
                        mh["healthy"] = mh["healthy"] and h["healthy"]
                        for f in ("cx_active", "rq_active", "rq_total", "rq_error"):
                            mh[f] += h[f]
        _union(out["rejected_certificates"], other.get("rejected_certificates", []))
        out["acme"] = out.get("acme") or other.get("acme", [])  # worker 0's, whichever answers
    return out


def _add_clusters(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """Workers' /clusters documents as one: host counters and gauges add up; health is the
    first worker's."""
    out = json.loads(json.dumps(docs[0]))
    for other in docs[1:]:
        for c, oc in zip(out["cluster_statuses"], other["cluster_statuses"], strict=False):
            hosts = {(h["address"]["socket_address"]["address"],
                      h["address"]["socket_address"]["port_value"]): h
                     for h in c.get("host_statuses", [])}
            for oh in oc.get("host_statuses", []):
                sa = oh["address"]["socket_address"]
                h = hosts.get((sa["address"], sa["port_value"]))
                if h is None:
                    continue
                mine = {st["name"]: st for st in h["stats"]}
                for st in oh["stats"]:
                    if st["name"] in mine:
                        mine[st["name"]]["value"] = str(int(mine[st["name"]]["value"])
                                                        + int(st["value"]))
    return out


def die_with_parent() -> None:
    """Be sent SIGTERM when the parent (a supervisor, ``make demo``) dies, so that no orphan
    keeps the ports."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() == 1:
        os.kill(os.getpid(), signal.SIGTERM)  # the supervisor was already gone
