"""What gRPC changes at the connection manager (Envoy's Grpc::Utility): the client's
grpc-timeout, and local replies as trailers-only responses with a gRPC status."""

from __future__ import annotations

from .codec import Headers
from .router.table import Forward

_GRPC_UNITS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}


def grpc_timeout(value: bytes | None) -> float | None:
    """A grpc-timeout header (``100m``, ``5S`` …: up to 8 digits and a unit) in seconds."""
    if not value or len(value) > 9 or not value[:-1].isdigit():
        return None
    unit = _GRPC_UNITS.get(value[-1:])
    return int(value[:-1]) * unit if unit is not None else None


def stream_deadline(action: object, grpc_timeout_header: bytes | None) -> float:
    """Envoy's max_stream_duration.grpc_timeout_header_max: the client's grpc-timeout (capped,
    less the offset) bounds the stream from its start; 0 when nothing does."""
    if not isinstance(action, Forward) or action.grpc_timeout_max is None:
        return 0.0
    limit = action.grpc_timeout_max
    asked = grpc_timeout(grpc_timeout_header)
    if not asked:
        return 0.0
    if limit and asked > limit:
        asked = limit
    return max(asked - action.grpc_timeout_offset, 0.0)


_GRPC_STATUS = {400: b"13", 401: b"16", 403: b"7", 404: b"12", 429: b"14", 502: b"14",
                503: b"14", 504: b"14"}
"""Envoy's Grpc::Utility::httpToGrpcStatus; anything else is 2 (UNKNOWN)."""


def grpc_local_reply(status: int, body: bytes, headers: Headers,
                     grpc_status: bytes | None) -> tuple[int, bytes]:
    """Envoy answers a gRPC request with a trailers-only response: 200, grpc-status (and
    grpc-message), added to ``headers``; returns the status and body to send."""
    headers[:0] = [(b"content-type", b"application/grpc"),
                   (b"grpc-status", grpc_status or _GRPC_STATUS.get(status, b"2"))]
    if body:
        headers.insert(2, (b"grpc-message", body))
    return 200, b""
