"""envoy.filters.http.header_mutation: request and response headers changed as listed.

Each mutation removes a header or adds one (with Envoy's append actions and ``%FIELD%``
values), in order: the filter's own first, then the route's ``HeaderMutationPerRoute``
(the most specific one; ``most_specific_header_mutations_wins`` orders Envoy's several
levels of it, of which edgegw reads one). Response mutations reach edgegw's own replies too,
as Envoy's reach local replies.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...config import model as m
from ...stats import Store
from ..filter import register
from ..router.header_parser import HeaderOps, header_ops

if TYPE_CHECKING:
    from ..codec import Headers
    from ..filter import FilterCallbacks

Ops = tuple[HeaderOps, ...]


def _compile(rules: list[m.HeaderMutationRule]) -> Ops:
    return tuple(header_ops([r.append] if r.append else [], [r.remove] if r.remove else [])
                 for r in rules)


@register(m.HeaderMutation)
class HeaderMutationFilter:
    def __init__(self, cfg: m.HeaderMutation, store: Store, hcm_prefix: str) -> None:
        self.request = _compile(cfg.mutations.request_mutations)
        self.response = _compile(cfg.mutations.response_mutations)
        self.per_route: dict[int, tuple[Ops, Ops]] = {}
        """Each route's HeaderMutationPerRoute after the filter's, in the order they run."""

    def _for(self, route_cfg: object) -> tuple[Ops, Ops]:
        if not isinstance(route_cfg, m.HeaderMutationPerRoute):
            return self.request, self.response
        key = id(route_cfg)
        if key not in self.per_route:
            req = _compile(route_cfg.mutations.request_mutations)
            resp = _compile(route_cfg.mutations.response_mutations)
            self.per_route[key] = (self.request + req, self.response + resp)
        return self.per_route[key]

    def decode_headers(self, cb: FilterCallbacks, route_cfg: object) -> bool:
        request, response = self._for(route_cfg)
        expand = cb.info.expand
        for ops in request:
            ops.apply(cb.headers, expand)
        if response:
            def mutate(headers: Headers) -> None:
                for ops in response:
                    ops.apply(headers, expand)
            cb.add_response_hook(mutate)
        return True
