"""The request path compiled with mypyc.

mypyc turns the modules below into C extensions from their type annotations when the wheel is
built with ``EDGEGW_MYPYC=1`` (``make compile``; the Docker image's build stage). They are the
ones every request goes through; compiled, a request costs a third less CPU (bench C1). The
source tree is never compiled in place: it always runs as the plain Python it shows, and the
built wheel runs the same code compiled. This file is read by ``setup.py`` too: no imports from
the package.
"""

from __future__ import annotations

import importlib.util
import os

MODULES = (  # no package __init__: compiled, it cannot import its submodules (mypyc 1.x–2.4)
    "edgegw.http.codec.head",
    "edgegw.http.codec.http1.client",
    "edgegw.http.codec.http1.common",
    "edgegw.http.codec.http1.server",
    "edgegw.http.codec.http2.client",
    "edgegw.http.codec.http2.common",
    "edgegw.http.codec.http2.connection",
    "edgegw.http.codec.http2.native",
    "edgegw.http.codec.http2.server",
    "edgegw.http.conn_manager",
    "edgegw.http.filters.basic_auth",
    "edgegw.http.filters.rbac",
    "edgegw.http.head_checks",
    "edgegw.http.headers",
    "edgegw.http.router.filter",
    "edgegw.http.router.header_parser",
    "edgegw.http.router.request_headers",
    "edgegw.http.router.response_headers",
    "edgegw.http.router.table",
    "edgegw.http.router.upstream_request",
    "edgegw.http.sink",
    "edgegw.http.stream",
    "edgegw.http.stream_info",
    "edgegw.http.websocket",
    "edgegw.listener.filter_chain",
    "edgegw.listener.listener",
    "edgegw.listener.tls_inspector",
    "edgegw.rbac",
    "edgegw.stats.values",
    "edgegw.tls.transport",
    "edgegw.upstream.cluster",
    "edgegw.upstream.cluster_info",
    "edgegw.upstream.lb",
    "edgegw.upstream.pool",
)

_PACKAGE = os.path.dirname(os.path.abspath(__file__))


def source(module: str) -> str:
    return os.path.join(_PACKAGE, *module.split(".")[1:]) + ".py"


def active() -> bool:
    """Whether the request path runs compiled: the package imported is a built wheel's, with
    the extensions beside the sources (``--version``, ``/server_info`` and the start-up log
    say so)."""
    spec = importlib.util.find_spec(MODULES[0])
    return spec is not None and not (spec.origin or "").endswith(".py")


def build() -> str:
    """The last part of the version string: how the request path runs."""
    return "compiled" if active() else "pure"
