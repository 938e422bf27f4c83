"""Choosing a listener's filter chain, as Envoy's filter chain manager does.

The criteria are narrowed in Envoy's order, keeping only the most specific survivors at each
step: server name (exact, then the longest ``*.`` wildcard, then chains without
server_names), transport protocol, then ALPN. When nothing survives, the
default_filter_chain is used if there is one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Generic, TypeVar

from ..config.model import FilterChainMatch

T = TypeVar("T")


class FilterChainIndex(Generic[T]):
    def __init__(self, chains: Sequence[tuple[FilterChainMatch, T]], default: T | None = None):
        self.chains = list(chains)
        self.default = default
        self.uses_sni = any(m.server_names for m, _ in self.chains)
        self.uses_transport = any(m.transport_protocol for m, _ in self.chains)
        self.uses_alpn = any(m.application_protocols for m, _ in self.chains)

    @property
    def needs_inspection(self) -> bool:
        return self.uses_sni or self.uses_transport or self.uses_alpn

    def find(self, server_name: str | None, transport: str, alpn: Sequence[str] = ()) -> T | None:
        survivors = self._by_server_name(server_name)
        survivors = _narrow(survivors, lambda m: m.transport_protocol == transport,
                            lambda m: not m.transport_protocol)
        survivors = _narrow(survivors,
                            lambda m: any(p in m.application_protocols for p in alpn),
                            lambda m: not m.application_protocols)
        if survivors:
            return survivors[0][1]
        return self.default

    def _by_server_name(self, name: str | None) -> list[tuple[FilterChainMatch, T]]:
        if name:
            name = name.lower()
            exact = [c for c in self.chains if name in (n.lower() for n in c[0].server_names)]
            if exact:
                return exact
            labels = name.split(".")
            for i in range(1, len(labels)):
                wildcard = "*." + ".".join(labels[i:])
                found = [c for c in self.chains
                         if wildcard in (n.lower() for n in c[0].server_names)]
                if found:
                    return found
        return [c for c in self.chains if not c[0].server_names]


def _narrow(chains: list[tuple[FilterChainMatch, T]], specific, general
            ) -> list[tuple[FilterChainMatch, T]]:
    best = [c for c in chains if specific(c[0])]
    return best or [c for c in chains if general(c[0])]
