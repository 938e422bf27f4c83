"""HTTP/2 both ways (RFC 9113): many streams under one connection.

Two codecs behind the same interfaces, chosen once at start:
- ``nghttp2`` (``native``): libnghttp2 through a cffi binding built with the wheel, where the
  library's headers are installed (``make sysdeps``, the Docker image). The default.
- ``h2`` (``server``, ``client``): the pure-Python h2 library, where the binding is missing.
``EDGEGW_HTTP2_CODEC=h2|nghttp2`` forces one (edgegw's own setting, for tests and comparison);
``/server_info`` names the one running.

Over either, edgegw adds what a proxy needs: flow control that carries back-pressure, Envoy's
flood protections (``http2_protocol_options``), streams past ``max_concurrent_streams``
refused one by one, a graceful GOAWAY on drain, and Envoy's ``http2.*`` stats
(``cluster.<name>.http2.*`` upstream).
"""

import os
from collections.abc import Callable
from typing import Any

from ....stats import Store
from .client import Http2Connection
from .client import client_codec as _h2_client_codec
from .common import PREFACE, Http2Stats, Options
from .server import Http2ServerCodec

try:
    from . import native
except ImportError:  # built without libnghttp2's headers, or the source tree
    native = None  # type: ignore[assignment]

CODEC = os.environ.get("EDGEGW_HTTP2_CODEC") or ("nghttp2" if native is not None else "h2")
"""The HTTP/2 codec this process runs."""
if CODEC not in ("h2", "nghttp2") or (CODEC == "nghttp2" and native is None):
    raise SystemExit(f"EDGEGW_HTTP2_CODEC={CODEC}: this build has "
                     + ("h2 and nghttp2" if native is not None else "h2 only"))

ServerCodec: Any = native.NativeServerCodec if CODEC == "nghttp2" else Http2ServerCodec
"""The server codec's class (both take the same arguments)."""


def client_codec(opts: Options, store: Store, cluster_name: str) -> Callable[[Any], Any]:
    """The cluster's factory of HTTP/2 connections, on the codec this process runs."""
    make = native.client_codec if CODEC == "nghttp2" else _h2_client_codec
    return make(opts, store, cluster_name)


def describe() -> str:
    """The codec, as ``/server_info`` shows it."""
    return f"nghttp2-{native.VERSION}" if CODEC == "nghttp2" else "h2"


__all__ = ["CODEC", "PREFACE", "Http2Connection", "Http2ServerCodec", "Http2Stats", "Options",
           "ServerCodec", "client_codec", "describe"]
