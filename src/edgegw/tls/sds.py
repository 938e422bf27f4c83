"""The secret manager: named secrets from SDS files or a control plane, rotated without a
restart.

Envoy reacts only to files moved into place (and to ``watched_directory``). Users and certbot
hooks also rewrite files in place or ``cp`` over them, Kubernetes swaps a ``..data`` symlink,
bind mounts and network filesystems deliver no events at all, and events alone miss rotations
(envoy#39498). So every secret is re-checked by ``stat`` (following symlinks) on a short poll,
and inotify (through watchfiles) only makes the check happen sooner. A change is debounced,
read twice and compared, checked (key matches, not expired when the current one is valid) and
only then swapped in; anything wrong leaves the last good secret serving, with a log line
naming the file and the problem and a counter. A control plane's secret (``XdsSecret``) is
checked the same way as it arrives, and NACKed when refused.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .. import log
from ..config import model as m
from ..config.subscription import Cancel, SubscriptionError, Watches, first_version, parse
from ..stats import Counter, StatSet, Store
from .secrets import (
    Material,
    SecretError,
    Signature,
    files_of,
    materialize,
    now_stamp,
    read_sds_file,
    signature_of,
    stable_materialize,
    validity_problem,
)
from .tickets import TicketKeys

if TYPE_CHECKING:
    from .cert_dir import CertDirectory

_log = log.get("secret")

POLL_INTERVAL = 0.25
DEBOUNCE = 0.05


class SdsStats(StatSet):
    """``sds.<secret name>.*``."""

    update_attempt: Counter
    update_success: Counter
    update_rejected: Counter
    update_failure: Counter
    key_rotation_failed: Counter


class Subscription:
    """One named secret and its last good value; others subscribe to its changes."""

    def __init__(self, name: str, source: m.ConfigSource | None, static: m.Secret | None,
                 store: Store) -> None:
        self.name = name
        self.path = source.file if source else None
        self.watched_directory = source.watched_directory if source else None
        self.static = static
        self.stats = SdsStats(store, f"sds.{name}.")
        self.value: Material | None = None
        self.secret: m.Secret | None = None
        self.updated_at = ""
        self.files: list[str] = []
        self.signature: Signature = ()
        self.callbacks: list[Callable[[], None]] = []
        self.problem: dict[str, str] | None = None
        """The file on disk that was refused, until it is fixed."""
        self.owners = 0
        """The secret managers holding it: a reload's new manager takes over the previous
        one's subscriptions of the same source, so what they serve stays as it is."""

    def _reject(self, why: str) -> None:
        self.stats.update_rejected.value += 1
        self.stats.key_rotation_failed.value += 1
        self.problem = {"name": self.name, "file": self.path or "", "problem": why,
                        "since": now_stamp()}
        _log.warning("secret '%s': update rejected, still serving the previous one: %s",
                     self.name, why)

    def _read(self) -> tuple[m.Secret, Material]:
        secret = read_sds_file(self.path, self.name) if self.path else self.static
        if secret is None:
            raise SecretError(f"secret '{self.name}' is not in static_resources.secrets")
        return secret, stable_materialize(secret)

    def _watch_list(self, secret: m.Secret) -> list[str]:
        return ([self.path] if self.path else []) + files_of(secret)

    def load(self) -> None:
        """The first load, at start: a failure here is a configuration error."""
        secret, mat = self._read()
        self.value, self.secret = mat, secret
        self.updated_at = now_stamp()
        self.files = self._watch_list(secret)
        self.signature = signature_of(self.files)
        problem = validity_problem(mat)
        if problem:
            _log.warning("secret '%s': %s", self.name, problem)

    def changed(self) -> bool:
        return signature_of(self.files) != self.signature

    def refresh(self) -> bool:
        """Reloads after a change; True when a new value was swapped in."""
        sig = signature_of(self.files)
        self.stats.update_attempt.value += 1
        try:
            secret, mat = self._read()
        except SecretError as e:
            self.signature = sig  # look again only when something changes again
            self._reject(str(e))
            return False
        self.files = self._watch_list(secret)
        self.signature = signature_of(self.files)
        if self.value is not None and mat.digest == self.value.digest:
            self.problem = None
            return False
        if self.value is not None and validity_problem(self.value) is None:
            problem = validity_problem(mat)
            if problem:
                self._reject(problem)
                return False
        self.problem = None
        self.value, self.secret = mat, secret
        self.updated_at = now_stamp()
        self.stats.update_success.value += 1
        _log.info("secret '%s' updated from %s", self.name, self.path or "static_resources")
        for cb in self.callbacks:
            cb()
        return True


class XdsSecret(Subscription):
    """A secret from a control plane (``sds_config`` with ``ads`` or ``api_config_source``):
    none until the first version is in (``ready``, what warming waits for)."""

    def __init__(self, name: str, source: m.ConfigSource, store: Store, xds: Watches) -> None:
        super().__init__(name, None, None, store)
        self.source, self.xds = source, xds
        self.prefix = f"sds.{name}."
        self.timeouts = store.counter(self.prefix + "init_fetch_timeout")
        self.version = ""
        self.ready = asyncio.Event()
        self._watch: Cancel | None = None

    def load(self) -> None:
        if self._watch is None:
            self.stats.update_attempt.value += 1  # (Envoy counts the first request)
            self._watch = self.xds.watch(self.source, m.SECRET_TYPE, self.name, self)

    def changed(self) -> bool:
        return False  # (no file to poll)

    def xds_update(self, version: str, resources: dict[str, dict[str, Any]], count: bool,
                   versions: dict[str, str] | None = None) -> str | None:
        if count:
            self.stats.update_attempt.value += 1
        try:
            secret = parse(resources[self.name], m.Secret, f"secret '{self.name}': ")
            mat = materialize(secret)
            problem = (validity_problem(mat) if self.value is not None
                       and validity_problem(self.value) is None else None)
            if problem:
                raise SecretError(problem)
        except (SubscriptionError, SecretError) as e:
            if count:
                self._reject(str(e))
            return str(e)
        self.version = (versions or {}).get(self.name, version)
        self.ready.set()
        if self.value is not None and mat.digest == self.value.digest:
            return None
        self.problem = None
        self.value, self.secret = mat, secret
        self.updated_at = now_stamp()
        if count:
            self.stats.update_success.value += 1
            _log.info("secret '%s' updated from the control plane (version %s)", self.name,
                      self.version)
        for cb in self.callbacks:
            cb()
        return None

    def xds_refused(self, why: str) -> None:
        self.stats.update_attempt.value += 1
        self._reject(why)

    def xds_failed(self) -> None:
        self.stats.update_failure.value += 1

    async def warmed(self) -> None:
        await first_version(self.ready, self.source, self.timeouts, f"sds: secret '{self.name}'")

    def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None


class SecretManager:
    """All secrets of the running config, watched together. Built again by a reload with the
    previous manager at hand: a secret whose source did not change is taken over as it is
    (its value, its watch on the control plane), so the clusters carried over with it and
    the contexts built anew see the same secret."""

    def __init__(self, boot: m.Bootstrap, store: Store, xds: Watches | None = None,
                 previous: SecretManager | None = None) -> None:
        self.store = store
        self.xds = xds
        self.previous = previous
        self.tickets = TicketKeys()
        """The session ticket keys the server contexts share (the server's, once set)."""
        self.static = {s.name: s for s in boot.static_resources.secrets}
        self.subs: dict[tuple[str, str | None], Subscription] = {}
        self.cert_dirs: dict[str, CertDirectory] = {}
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self.mode = os.environ.get("EDGEGW_WATCH", "auto")

    def subscribe(self, cfg: m.SdsSecretConfig) -> Subscription:
        key = (cfg.name, cfg.sds_config.file if cfg.sds_config else None)
        sub = self.subs.get(key)
        if sub is not None:
            return sub
        sub = self.previous.subs.get(key) if self.previous is not None else None
        if sub is not None and sub.static == self.static.get(cfg.name) and (
                not isinstance(sub, XdsSecret) or sub.source == cfg.sds_config):
            sub.owners += 1
            self.subs[key] = sub
            return sub
        if cfg.sds_config is not None and cfg.sds_config.xds:
            assert self.xds is not None  # (a control plane's source makes a mux)
            sub = XdsSecret(cfg.name, cfg.sds_config, self.store, self.xds)
        else:
            sub = Subscription(cfg.name, cfg.sds_config, self.static.get(cfg.name), self.store)
        sub.load()
        sub.owners = 1
        self.subs[key] = sub
        return sub

    def directory(self, path: str) -> CertDirectory:
        """The drop-in certificate directory at ``path`` (edgegw-only), watched with the rest."""
        from .cert_dir import CertDirectory

        d = self.cert_dirs.get(path)
        if d is None:
            d = self.cert_dirs[path] = CertDirectory(path, self.store)
        return d

    def _watched(self) -> list[Subscription | CertDirectory]:
        return [*self.subs.values(), *self.cert_dirs.values()]

    def dump(self) -> list[dict[str, Any]]:
        """The SDS secrets in /config_dump's ``dynamic_active_secrets`` shape."""
        out = []
        for sub in self.subs.values():
            if (sub.path is None and not isinstance(sub, XdsSecret)) or sub.secret is None:
                continue
            version = sub.version if isinstance(sub, XdsSecret) else \
                str(sub.stats.update_success.value)
            out.append({"name": sub.name, "version_info": version,
                        "last_updated": sub.updated_at,
                        "secret": {"@type": m.SECRET_TYPE,
                                   **sub.secret.model_dump(exclude_none=True)}})
        return out

    def rejected(self) -> list[dict[str, str]]:
        """Certificate files on disk that were refused (the previous ones are served)."""
        out = [sub.problem for sub in self.subs.values() if sub.problem is not None]
        for d in self.cert_dirs.values():
            out.extend(d.problems.values())
        return out

    def start(self) -> None:
        if self._watched() and self._task is None:
            self._task = asyncio.ensure_future(self._run())

    def from_control_plane(self) -> list[XdsSecret]:
        return [s for s in self.subs.values() if isinstance(s, XdsSecret)]

    def stop(self) -> None:
        """Stops watching; a control plane's secret is unsubscribed once no manager holds it."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self.previous = None
        for sub in self.subs.values():
            sub.owners -= 1
            if sub.owners == 0 and isinstance(sub, XdsSecret):
                sub.stop()

    def directories(self) -> set[str]:
        dirs = set()
        for sub in self._watched():
            for f in sub.files:
                dirs.add(os.path.dirname(os.path.abspath(f)))
            if sub.watched_directory:
                dirs.add(os.path.abspath(sub.watched_directory))
        return {d for d in dirs if os.path.isdir(d)}

    async def _run(self) -> None:
        files = sum(len(s.files) for s in self._watched())
        how = "by polling only" if self.mode == "poll" else "with file events and polling"
        _log.info("watching %d secret file(s) %s every %.2fs", files, how, POLL_INTERVAL)
        watcher = asyncio.ensure_future(self._inotify()) if self.mode != "poll" else None
        try:
            while True:
                try:
                    await asyncio.wait_for(self._wake.wait(), POLL_INTERVAL)
                except TimeoutError:
                    pass
                self._wake.clear()
                await self.check()
        finally:
            if watcher is not None:
                watcher.cancel()

    async def check(self) -> None:
        """Reloads every secret whose files changed and then stayed still for a moment."""
        changed = [s for s in self._watched() if s.changed()]
        if not changed:
            return
        await asyncio.sleep(DEBOUNCE)
        for sub in changed:
            sub.refresh()

    async def _inotify(self) -> None:
        """Wakes the checker on file events (watchfiles/inotify); polling goes on regardless.
        The watcher's thread takes the GIL once per ``step``: 100 ms (not 10) cut an idle
        worker's CPU from 9-10 to 3-4 ms/s, and a change still arrives within ~130 ms."""
        try:
            from watchfiles import awatch
        except ImportError:
            _log.info("watchfiles is not installed: watching certificate files by polling")
            return
        while True:
            dirs = sorted(self.directories())
            if not dirs:
                return
            stop = asyncio.Event()
            try:
                async for _ in awatch(*dirs, stop_event=stop, debounce=30, step=100,
                                      recursive=False, rust_timeout=1000, yield_on_timeout=True):
                    self._wake.set()
                    if sorted(self.directories()) != dirs:
                        stop.set()
            except (OSError, RuntimeError) as e:
                _log.warning("file events unavailable (%s): watching certificate files by "
                             "polling every %.2fs", e, POLL_INTERVAL)
                return
