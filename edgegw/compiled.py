"""The request path compiled with mypyc, and the guard against running stale compiled code.

mypyc turns the modules below into C extensions from their type annotations (``make compile``;
the Docker image's build stage). They are the ones every request goes through; compiled, a
request costs a third less CPU (bench C1). Every module also stays plain Python: a
checkout without the extensions, or a machine without a C compiler, runs the same code pure.

Python imports an extension in preference to the source beside it, so an extension built
before its source was edited would run the old code. In a source checkout, ``check`` refuses
that with the command that fixes it. This file is read by ``setup.py`` too: no imports from
the package.
"""

from __future__ import annotations

import importlib.machinery
import os
import sys

MODULES = (  # no package __init__: compiled, it cannot import its submodules (mypyc 1.x–2.4)
    "edgegw.http.codec.http1",
    "edgegw.http.codec.http2",
    "edgegw.http.conn_manager",
    "edgegw.http.filters.basic_auth",
    "edgegw.http.filters.rbac",
    "edgegw.http.headers",
    "edgegw.http.router.filter",
    "edgegw.http.router.upstream_request",
    "edgegw.http.stream",
    "edgegw.listener.filter_chain",
    "edgegw.listener.tls_inspector",
    "edgegw.upstream.pool",
)

_PACKAGE = os.path.dirname(os.path.abspath(__file__))


def source(module: str) -> str:
    return os.path.join(_PACKAGE, *module.split(".")[1:]) + ".py"


def library() -> str | None:
    """The compiled modules' shared library (the per-module extensions only point into it),
    if it was built."""
    base = os.path.join(_PACKAGE, "compiled__mypyc")
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        if os.path.exists(base + suffix):
            return base + suffix
    return None


def stale() -> list[str]:
    """Sources edited after the compiled modules were built (this file names them)."""
    lib = library()
    if lib is None:
        return []
    built = os.path.getmtime(lib)
    paths = [source(m) for m in MODULES] + [os.path.abspath(__file__)]
    return [os.path.relpath(p, os.path.dirname(_PACKAGE)) for p in paths
            if os.path.getmtime(p) > built]


def active() -> bool:
    """Whether the request path runs compiled (reported at start-up)."""
    mod = sys.modules.get(MODULES[0])
    return mod is not None and not (mod.__file__ or "").endswith(".py")


def check() -> None:
    """In a source checkout, stop before importing a compiled module older than its source.
    (An installed package is built once from its sources: nothing to compare there.)"""
    if not os.path.exists(os.path.join(_PACKAGE, os.pardir, "pyproject.toml")):
        return
    edited = stale()
    if edited:
        sys.exit(f"edgegw: {', '.join(edited)} changed after the compiled modules were built: "
                 f"run `make compile` to rebuild them, or `make pure` to run without them")
