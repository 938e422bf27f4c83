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
from .stream_info import ConnectionInfo, StreamInfo

if TYPE_CHECKING:
    import asyncio

    from ..stats import Store
    from ..upstream.cluster import ClusterManager


class Downstream(ConnectionInfo, Protocol):
    """The client connection as filters see it."""

    closed: bool
    loop: asyncio.AbstractEventLoop
    buckets: dict[int, Any]
    """Per-connection token buckets (local_rate_limit_per_downstream_connection)."""


class FilterCallbacks(Protocol):
    """The stream as a filter sees it (Envoy's StreamDecoderFilterCallbacks): the request,
    its record (where it is routed, flags, details, upstream), and the ways to answer."""

    head: RequestHead
    headers: Headers
    """The request's headers, which filters before the router may change."""
    authority: str
    path: bytes
    method: bytes
    protocol: str
    info: StreamInfo
    request_done: bool
    response_started: bool
    response_done: bool
    grpc: bool

    @property
    def conn(self) -> Downstream: ...
    def send_local_reply(self, status: int, body: bytes, details: str = "",
                         extra: Headers | None = None, mutate: bool = False,
                         close: bool = False, grpc_status: bytes | None = None,
                         content_type: bytes | None = None) -> None: ...
    def pause_for(self, delay: float, then: Callable[[], bool],
                  abandoned: Callable[[], None]) -> None:
        """Holds the request ``delay`` seconds; then ``then`` says whether to go on."""
    def continue_decoding(self) -> None:
        """Goes on with the next filter, after one returned False and did not reply."""
    @property
    def clusters(self) -> ClusterManager:
        """Every cluster, for a filter that calls a service of its own (ext_authz)."""
    def add_response_hook(self, hook: Callable[[Headers], None]) -> None:
        """Something to add to the response headers, local replies included."""
    def add_response_transform(self, transform: ResponseTransform) -> None:
        """Something that changes an upstream response's headers and body (compression)."""
    def add_response_override(self, override: Callable[[int, Headers], bool]) -> None:
        """Something that may reply instead of the upstream's response (custom_response),
        returning True when it did."""
    @property
    def filter_state(self) -> dict[str, Any]:
        """What the filters of one stream share (Envoy's FilterState)."""
    def buffer_body(self, limit: int, then: Callable[[bytes, bool], None]) -> None:
        """Calls ``then(body, complete)`` once the request's whole body is in, or at least
        ``limit`` bytes of it; the body stays buffered for the filters after this one."""
    def read_disable(self, reason: str, disable: bool) -> None:
        """Stops (or resumes) reading this stream's request body from the client."""
    def arm_deadline(self, timeout: float) -> None:
        """Starts the route timeout: ``deadline_passed`` reaches the router when it ends."""
    def encode_headers(self, status: int, headers: Headers, end_stream: bool) -> None: ...
    def encode_data(self, data: bytes, end_stream: bool) -> None: ...
    def encode_trailers(self, trailers: Headers) -> None: ...
    def flush(self) -> None: ...
    def reset_stream(self) -> None: ...


class ResponseTransform(Protocol):
    """An encoder-side change of an upstream response: its headers once, then each piece
    of its body (``end_stream`` on the last; an empty last piece before trailers)."""

    def headers(self, status: int, headers: Headers, end_stream: bool) -> None: ...
    def data(self, data: bytes, end_stream: bool) -> bytes: ...


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

