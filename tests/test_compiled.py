"""The source tree always runs as plain Python, whatever was built, and the version says how
the request path runs (the compiled build lives apart, in build/compiled: `make compile`)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from edgegw import compiled

from .conftest import PACKAGE, ROOT


def run_tree(*code: str) -> list[str]:
    """Lines printed by a fresh interpreter that imports edgegw from the source tree."""
    r = subprocess.run([sys.executable, "-P", "-c", "; ".join(code)], capture_output=True,
                       text=True, timeout=60, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": str(PACKAGE.parent)})
    assert r.returncode == 0, r.stderr
    return r.stdout.splitlines()


def version(env: dict[str, str]) -> str:
    r = subprocess.run([sys.executable, "-m", "edgegw", "--version"], capture_output=True,
                       text=True, timeout=60, env=env)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_the_source_tree_runs_its_own_python_and_says_pure() -> None:
    """Edited or not, the tree's modules are the ones imported: no extension beside them."""
    stream = PACKAGE / "http" / "stream.py"
    assert run_tree("import edgegw.http.stream as s", "print(s.__file__)") == [str(stream)]
    assert not list((PACKAGE.parent).rglob("*.so"))
    assert version({**os.environ, "PYTHONPATH": str(PACKAGE.parent)}) == \
        "edgegw version: 0.1.0/Python/RELEASE/pure+h2+tls-loop"  # (no binding in the tree)


@pytest.mark.skipif(not compiled.active(), reason="the source tree: `make test-compiled` runs "
                    "this on the compiled build")
def test_the_compiled_build_says_compiled_in_its_version_and_server_info() -> None:
    """Built where libnghttp2's and OpenSSL's headers are (`make sysdeps`), HTTP/2 runs on the
    system's libnghttp2 and downstream TLS on OpenSSL driven on the socket, and each says so;
    EDGEGW_HTTP2_CODEC=h2 and EDGEGW_TLS_TRANSPORT=loop choose the fallbacks."""
    def package(name: str) -> str:
        return subprocess.run(["dpkg-query", "-W", "-f", "${Version}", name],
                              capture_output=True, text=True).stdout.split("-")[0]

    codec = f"nghttp2-{package('libnghttp2-14')}"
    tls = f"tls-openssl-{package('libssl3')}"
    assert version(dict(os.environ)) == \
        f"edgegw version: 0.1.0/Python/RELEASE/compiled+{codec}+{tls}"
    assert version({**os.environ, "EDGEGW_HTTP2_CODEC": "h2", "EDGEGW_TLS_TRANSPORT": "loop"}) \
        == "edgegw version: 0.1.0/Python/RELEASE/compiled+h2+tls-loop"
    from edgegw.admin import server_info
    from edgegw.config.model import Node

    assert server_info("LIVE", {}, Node(), 0.0)["version"] == \
        f"edgegw/0.1.0/Python/RELEASE/compiled+{codec}+{tls}"
