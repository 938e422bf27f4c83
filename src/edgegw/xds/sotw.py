"""The state-of-the-world protocol of one resource type on one stream, without I/O.

What a request says (``version_info``, ``response_nonce``, ``resource_names``, an
``error_detail`` for a NACK) follows from what was accepted and what is watched:
- a response is ACKed with its own version and nonce, NACKed with the last accepted version,
  its nonce and the error, and what was served before stays;
- LDS and CDS are wildcard (every resource; absence deletes); RDS, EDS and SDS name the
  resources watched, and a response may carry some of them only;
- after a reconnect every type is asked again with the last accepted version and no nonce.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from .resources import CLUSTER, ENDPOINTS, LISTENER, ROUTES, SECRET, WRAPPER, ResourceError

NOUNS = {LISTENER: "listener", CLUSTER: "cluster", ROUTES: "route configuration",
         ENDPOINTS: "cluster load assignment", SECRET: "secret"}
Resources = dict[str, dict[str, Any]]
"""Resources by name, each as JSON."""


class Watcher(Protocol):
    prefix: str
    """Where its stats are: of the watchers that share it, only the newest counts."""

    def xds_update(self, version: str, resources: Resources, count: bool,
                   versions: dict[str, str] | None = None) -> str | None:
        """Takes a new version of the resources watched (a wildcard watcher gets them all,
        others only theirs); returns why it refuses them, or None. ``count``: count it in
        the stats (not when a new watcher is given what was accepted before, nor when a
        newer watcher with the same stats also gets it, as the next config's cluster does
        beside the one it replaces). ``versions``: each resource's own version (delta)."""

    def xds_refused(self, why: str) -> None:
        """A response of its type was refused as a whole (unreadable): counted, logged."""

    def xds_failed(self) -> None:
        """The stream failed (counted in ``update_failure``)."""


class Unwatches(Protocol):
    def unwatch(self, w: Watch) -> None: ...


class Watch:
    """A watcher's registration on a channel; ``cancel`` ends it."""

    def __init__(self, channel: Unwatches, type_url: str, name: str, watcher: Watcher) -> None:
        self.channel, self.type_url, self.name, self.watcher = channel, type_url, name, watcher

    def cancel(self) -> None:
        self.channel.unwatch(self)


@dataclass
class Request:
    type_url: str
    version: str
    nonce: str
    names: list[str]
    error: str | None = None


def name_of(type_url: str, resource: dict[str, Any]) -> str:
    return str(resource.get("cluster_name" if type_url == ENDPOINTS else "name", ""))


class TypeState:
    """One type's subscription on a stream: who watches what, and what was accepted."""

    def __init__(self, type_url: str, wildcard: bool) -> None:
        self.type_url = type_url
        self.wildcard = wildcard
        self.watchers: dict[str, list[Watcher]] = {}
        """By resource name ("" for a wildcard watcher)."""
        self.version = ""
        """The last version accepted (ACKed)."""
        self.nonce = ""
        self.accepted: Resources = {}
        """The last accepted version of each named resource: given at once to a new watcher."""
        self.accepted_version: dict[str, str] = {}
        self.read_names: list[str] = []
        """The name of each resource of the response read last, in its order."""

    def names(self) -> list[str]:
        return [] if self.wildcard else sorted(n for n, ws in self.watchers.items() if ws)

    def request(self, error: str | None = None) -> Request:
        return Request(self.type_url, self.version, self.nonce, self.names(), error)

    def reconnected(self) -> None:
        self.nonce = ""

    def failed(self) -> None:
        """The stream failed: each watcher counts it once per stats prefix."""
        for w in {w.prefix: w for ws in self.watchers.values() for w in ws}.values():
            w.xds_failed()

    def add(self, name: str, watcher: Watcher) -> bool:
        """Adds a watcher; True when the names asked for changed."""
        ws = self.watchers.setdefault("" if self.wildcard else name, [])
        ws.append(watcher)
        known = self.accepted.get(name)
        if known is not None:
            watcher.xds_update(self.accepted_version[name], {name: known}, False)
        return len(ws) == 1 and not self.wildcard

    def remove(self, name: str, watcher: Watcher) -> bool:
        """Removes a watcher; True when the names asked for changed."""
        key = "" if self.wildcard else name
        ws = self.watchers.get(key, [])
        if watcher in ws:
            ws.remove(watcher)
        if ws or self.wildcard:
            return False
        self.watchers.pop(key, None)
        self.accepted.pop(name, None)
        return True

    def respond(self, version: str, nonce: str,
                resources: list[tuple[str, Callable[[], dict[str, Any]]]]) -> Request:
        """A response: each resource as its type URL and a way to read it. Returns the ACK
        or the NACK to send."""
        self.nonce = nonce
        try:
            got, duplicates = self.read(resources)
        except ResourceError as e:
            return self.request(str(e))
        error = self.deliver(version, got, got, duplicates)
        if error:
            return self.request(error)
        self.version = version
        return self.request()

    def read(self, resources: list[tuple[str, Callable[[], dict[str, Any]]]]
             ) -> tuple[Resources, str]:
        """The resources by name, and why some were dropped (names given twice: the first
        is taken, as in Envoy). A response that cannot be read is refused whole: its
        watchers count it, and the ResourceError says why."""
        got: Resources = {}
        errors = []
        noun = NOUNS.get(self.type_url, "resource")
        self.read_names.clear()
        try:
            for url, read in resources:
                if url not in (self.type_url, WRAPPER):
                    raise ResourceError(f"{url} does not match the message-wide type URL "
                                        f"{self.type_url} in DiscoveryResponse")
                res = read()
                name = name_of(self.type_url, res)
                self.read_names.append(name)
                if name in got:
                    errors.append(f"Error adding/updating {noun}(s) {name}: duplicate {noun} "
                                  f"{name} found")
                else:
                    got[name] = res
        except ResourceError as e:
            for w in {w.prefix: w for ws in self.watchers.values() for w in ws}.values():
                w.xds_refused(str(e))
            raise
        return got, "\n".join(errors)

    def deliver(self, version: str, got: Resources, every: Resources, duplicates: str,
                versions: dict[str, str] | None = None) -> str:
        """Gives the watchers what is theirs of ``got`` (a wildcard watcher: ``every``, the
        whole set), with each one's ``versions`` if they have their own; returns the errors
        (with ``duplicates``), empty when all was taken."""
        errors = [duplicates] if duplicates else []
        for name, ws in list(self.watchers.items()):
            given = every if self.wildcard else ({name: got[name]} if name in got else None)
            if given is None:
                continue
            counting = {w.prefix: w for w in ws}.values()
            refused = [why for w in list(ws) if (why := w.xds_update(
                version, given, w in counting and not duplicates, versions))]
            errors += refused
            if not refused and not self.wildcard:
                self.accepted[name] = got[name]
                self.accepted_version[name] = (versions or {}).get(name, version)
            if duplicates:  # (what was taken is counted as a rejected update, as in Envoy)
                for w in counting:
                    w.xds_refused(duplicates)
        return "\n".join(errors)
