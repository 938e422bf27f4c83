"""The incremental (delta) protocol of one resource type on one stream, without I/O: what
Envoy Gateway speaks (``DELTA_GRPC``).

A response carries only what changed (each resource with its own version) and the names of
what was removed; a request carries only the names subscribed and unsubscribed since the last
one, and the response's nonce (an ACK), with an ``error_detail`` for a NACK. LDS and CDS are
wildcard: the watcher is given the whole set as it stands after each response. After a
reconnect the first request names every resource again, with the version held of each
(``initial_resource_versions``), so the control plane sends only what changed meanwhile.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .resources import ResourceError
from .sotw import Resources, TypeState, Watcher


@dataclass
class DeltaRequest:
    type_url: str
    nonce: str
    subscribe: list[str]
    unsubscribe: list[str]
    initial_versions: dict[str, str] = field(default_factory=dict)
    error: str | None = None


class DeltaState(TypeState):
    """One type's delta subscription: who watches what, what is held, at which versions."""

    def __init__(self, type_url: str, wildcard: bool) -> None:
        super().__init__(type_url, wildcard)
        self.held: Resources = {}
        """Every resource the control plane gave and did not remove (a wildcard's set)."""
        self.versions: dict[str, str] = {}
        self.subscribe: set[str] = set()
        self.unsubscribe: set[str] = set()
        self.first = True
        """The next request is the stream's first for this type."""

    def add(self, name: str, watcher: Watcher) -> bool:
        changed = super().add(name, watcher)
        if changed:
            self.subscribe.add(name)
            self.unsubscribe.discard(name)
        return changed

    def remove(self, name: str, watcher: Watcher) -> bool:
        changed = super().remove(name, watcher)
        if changed:
            self.unsubscribe.add(name)
            self.subscribe.discard(name)
            self.versions.pop(name, None)
            self.held.pop(name, None)
        return changed

    def reconnected(self) -> None:
        super().reconnected()
        self.first = True

    def request(self, error: str | None = None) -> DeltaRequest:  # type: ignore[override]
        """A request that answers no response (a subscription change, a stream's first):
        without a nonce, as Envoy sends it."""
        return self._request("", error)

    def _request(self, nonce: str, error: str | None) -> DeltaRequest:
        if self.first:
            self.first = False
            req = DeltaRequest(self.type_url, "", self.names(), [], dict(self.versions))
        else:
            req = DeltaRequest(self.type_url, nonce, sorted(self.subscribe),
                               sorted(self.unsubscribe), error=error)
        self.subscribe.clear()
        self.unsubscribe.clear()
        return req

    def respond_delta(self, version: str, nonce: str,
                      resources: list[tuple[str, str, str, Callable[[], dict[str, Any]]]],
                      removed: list[str]) -> DeltaRequest:
        """A response: each resource as its name, version, type URL and a way to read it;
        the names removed. Returns the ACK or the NACK to send."""
        self.nonce = nonce
        try:
            got, duplicates = self.read([(url, read) for _, _, url, read in resources])
        except ResourceError as e:
            return self._request(nonce, str(e))
        held = {**self.held, **got}
        for name in removed:
            held.pop(name, None)
        given = {name: v for name, v, _, _ in resources if name in got}
        error = self.deliver(version, got, held, duplicates, {**self.versions, **given})
        self.held = held
        self.versions.update(given)
        for name in removed:
            self.versions.pop(name, None)
        return self._request(nonce, error or None)
