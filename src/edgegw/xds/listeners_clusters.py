"""LDS and CDS from a control plane: Envoy's listener manager and cluster manager updates.

Each response is the whole set of its kind (absent = removed). It is checked as one config
with everything else (``check``: the same loader and checks as ``--mode validate``), and
accepted per resource, as Envoy 1.40 accepts it: when some listeners (or clusters) of a
response are refused, the others are taken, the refused ones stay as they were, and the
response is NACKed with their errors (the version stays the last one accepted). What is
taken goes to ``apply``, which builds and warms it before it serves.

Envoy's order: clusters first; listeners are asked for once the first clusters are in (or
their ``initial_fetch_timeout`` is over), so that their routes find their clusters.

Stats: ``cluster_manager.cds.*`` and ``listener_manager.lds.*`` (``update_attempt``,
``update_success``, ``update_rejected``, ``version`` as the xxHash64 of ``version_info``);
``version_text`` is shown in /config_dump.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import xxhash

from .. import log
from ..config import ConfigError
from ..config import model as m
from ..config.dynamic import XdsResources
from ..config.subscription import first_version
from ..stats import Counter, Gauge, StatSet, Store
from ..tasks import Tasks
from .mux import XdsMux
from .resources import CLUSTER, LISTENER
from .sotw import Watch

_log = log.get("config")

KINDS = {"clusters": (CLUSTER, "cds", "cluster_manager.cds.", "cluster"),
         "listeners": (LISTENER, "lds", "listener_manager.lds.", "listener")}

Check = Callable[[XdsResources], Any]
"""Builds the config these resources make with everything else; raises ConfigError."""
Apply = Callable[[Any, str], Any]
"""Serves a config ``check`` built (a coroutine function), with why."""


class XdsUpdateStats(StatSet):
    update_attempt: Counter
    update_success: Counter
    update_rejected: Counter
    update_failure: Counter
    init_fetch_timeout: Counter
    version: Gauge


class _Kind:
    """One kind's subscription: a wildcard watcher of the mux."""

    def __init__(self, owner: DynamicConfig, field: str, source: m.ConfigSource,
                 store: Store) -> None:
        self.owner, self.field, self.source = owner, field, source
        self.url, self.short, self.prefix, self.noun = KINDS[field]
        self.stats = XdsUpdateStats(store, self.prefix)
        self.watch: Watch | None = None
        self.first = asyncio.Event()
        """Set once a first response was taken."""

    def xds_update(self, version: str, resources: dict[str, dict[str, Any]],
                   count: bool, versions: dict[str, str] | None = None) -> str | None:
        error = self.owner.take(self, version, resources, versions or {})
        if error is not None:
            _log.warning("%s: %s", self.short, error)
        if count and error is not None:
            self.stats.update_attempt.value += 1
            self.stats.update_rejected.value += 1
        elif count:
            self.stats.update_attempt.value += 1
            self.stats.update_success.value += 1
            self.stats.version.value = xxhash.xxh64_intdigest(version.encode())
        self.first.set()
        return error

    def xds_refused(self, why: str) -> None:
        self.stats.update_attempt.value += 1
        self.stats.update_rejected.value += 1
        self.first.set()

    def xds_failed(self) -> None:
        self.stats.update_failure.value += 1


class DynamicConfig:
    """The listeners and clusters a control plane gave, as accepted."""

    def __init__(self, dyn: m.DynamicResources, mux: XdsMux, store: Store, check: Check,
                 apply: Apply) -> None:
        self.mux, self.check, self.apply = mux, check, apply
        self.kinds = {field: _Kind(self, field, source, store) for field, source in
                      (("clusters", dyn.cds_config), ("listeners", dyn.lds_config))
                      if source is not None and source.xds}
        self.resources: XdsResources = {field: [] for field in self.kinds}
        self.updated: dict[tuple[str, str], tuple[str, float]] = {}
        """When each resource last changed, and in which version (for /config_dump)."""
        self.initialized = asyncio.Event()
        """Set once the first listeners (and clusters) were taken, or waited for long
        enough: the server is LIVE from then on."""
        self.tasks = Tasks()
        self.last: asyncio.Task[Any] | None = None
        """The latest apply."""

    def start(self) -> None:
        self.tasks.start(self._initialize())

    async def _initialize(self) -> None:
        for field in ("clusters", "listeners"):
            kind = self.kinds.get(field)
            if kind is None:
                continue
            kind.stats.update_attempt.value += 1  # (Envoy counts the first request)
            kind.watch = self.mux.watch(kind.source, kind.url, "", kind)
            await first_version(kind.first, kind.source, kind.stats.init_fetch_timeout,
                                kind.short)
            if self.last is not None:  # (what was taken serves before the next kind)
                await asyncio.wait([self.last])
        self.initialized.set()

    def take(self, kind: _Kind, version: str, given: dict[str, dict[str, Any]],
             versions: dict[str, str]) -> str | None:
        """A response of ``kind`` (``versions``: each resource's own, on a delta stream):
        what of it is taken goes to ``apply``; returns the NACK's error, or None."""
        field = kind.field
        before = {r.get("name", ""): r for r in self.resources[field]}
        wanted = dict(given)
        refused: dict[str, list[str]] = {}
        while True:
            snapshot = {**self.resources, field: list(wanted.values())}
            try:
                built = self.check(snapshot)
                break
            except ConfigError as e:
                bad = {name: [p for p in e.problems if p.startswith(f"{kind.noun} '{name}'")]
                       for name in wanted if wanted[name] != before.get(name)}
                bad = {name: ps for name, ps in bad.items() if ps}
                if not bad:  # (a problem that is not one resource's: refuse them all)
                    return "\n".join(e.problems)
                for name, problems in bad.items():
                    refused[name] = problems
                    if name in before:
                        wanted[name] = before[name]
                    else:
                        del wanted[name]
        if snapshot == self.resources:  # (a response sent again: nothing to build)
            return "\n".join(p for ps in refused.values() for p in ps) or None
        now = time.time()
        for name, res in wanted.items():
            if before.get(name) != res:
                self.updated[(field, name)] = (versions.get(name, version), now)
        for name in set(before) - set(wanted):
            self.updated.pop((field, name), None)
        self.resources = snapshot
        if self.last is not None and not self.last.done():
            self.last.cancel()  # (still warming: this update supersedes it)
        self.last = self.tasks.start(self.apply(built, f"{kind.short} update, version "
                                                       f"{version!r}"))
        if refused:
            return "\n".join(p for ps in refused.values() for p in ps)
        return None

    def version_of(self, field: str, name: str) -> tuple[str, float]:
        return self.updated.get((field, name), ("", 0.0))

    def stop(self) -> None:
        self.tasks.cancel()
        for kind in self.kinds.values():
            if kind.watch is not None:
                kind.watch.cancel()
