"""HTTP filters: what a filter sees of its stream, and the registry that builds them by @type.

As in Envoy, the connection manager runs the configured filters in order on each request's
headers; the last one is the router. A filter sees the stream only through
``FilterCallbacks``: the request, where it is routed, and the ways to answer or to hold it.
A filter that answers (or pauses) stops the chain; a paused one continues it later.

Each filter module registers a factory for the config class of its ``@type``; the connection
manager builds its filter chain from the registry, so a new filter is one new module.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from .codec import Headers, RequestHead

if TYPE_CHECKING:
    from ..stats import Store
    from ..upstream.cluster import Cluster, Host
    from .conn_manager import DownstreamConnection
    from .router.table import Route, VirtualHost


class FilterCallbacks(Protocol):
    """The stream as a filter sees it (Envoy's StreamDecoderFilterCallbacks)."""

    head: RequestHead
    headers: Headers
    """The request's headers, which filters before the router may change."""
    authority: str
    path: bytes
    method: bytes
    route: Route | None
    vhost: VirtualHost | None
    conn: DownstreamConnection
    cluster: Cluster | None
    host: Host | None
    details: str
    failure_reason: str
    request_done: bool
    response_started: bool
    response_done: bool
    bytes_received: int
    grpc: bool

    def add_flag(self, flag: str) -> None: ...
    def send_local_reply(self, status: int, body: bytes, details: str = "",
                         extra: Headers | None = None, mutate: bool = False,
                         close: bool = False) -> None: ...
    def pause_for(self, delay: float, then: Callable[[], bool],
                  abandoned: Callable[[], None]) -> None:
        """Holds the request ``delay`` seconds; then ``then`` says whether to go on."""
    def add_response_hook(self, hook: Callable[[Headers], None]) -> None:
        """Something to add to the response headers, local replies included."""
    def expand(self, value: str) -> str:
        """The %OPERATORS% a header value may carry, for this stream."""


class HttpFilter(Protocol):
    """A filter before the router, built once per filter config and shared by streams."""

    def decode_headers(self, cb: FilterCallbacks, route_config: object) -> bool:
        """True to go on with the next filter; False when this filter replied or paused.
        ``route_config`` is the route's typed_per_filter_config for this filter, if any."""


FilterFactory = Callable[[Any, "Store", str], HttpFilter]
"""(the filter's typed_config, the stats store, the HCM's stat_prefix) → the filter."""

_REGISTRY: dict[type, FilterFactory] = {}
F = TypeVar("F", bound=FilterFactory)


def register(config_type: type) -> Callable[[F], F]:
    """Declares the factory of the filter whose typed_config parses as ``config_type``."""
    def add(factory: F) -> F:
        _REGISTRY[config_type] = factory
        return factory
    return add


def build(typed_config: object, store: Store, stat_prefix: str) -> HttpFilter:
    factory = _REGISTRY.get(type(typed_config))
    if factory is None:
        raise LookupError(f"no HTTP filter registered for {type(typed_config).__name__}")
    return factory(typed_config, store, stat_prefix)

