"""Stopping without dropping anyone: SIGTERM (what ``docker stop`` sends) drains first."""

from __future__ import annotations

import signal
import socket
import threading
import time

import httpx

from .conftest import free_port
from .test_differential import parse
from .test_health import cluster, config


def test_sigterm_drains_idle_and_busy_connections_then_exits_0(gateway, backend) -> None:
    c = backend("127.0.0.22", "c")
    port = free_port()
    gw = gateway(config(port, [cluster("app", [c])]))
    idle = socket.create_connection(("127.0.0.1", port), timeout=5)
    idle.sendall(b"GET /status/200 HTTP/1.1\r\nHost: a\r\n\r\n")
    assert idle.recv(65536).startswith(b"HTTP/1.1 200")
    busy = socket.create_connection(("127.0.0.1", port), timeout=5)
    busy.sendall(b"GET /delay/1 HTTP/1.1\r\nHost: a\r\n\r\n")
    time.sleep(0.2)
    sent = time.monotonic()
    gw.proc.p.send_signal(signal.SIGTERM)
    assert idle.recv(65536) == b""  # the idle keep-alive connection is closed at once
    assert time.monotonic() - sent < 0.5
    raw = b""
    while chunk := busy.recv(65536):
        raw += chunk
    status, headers, body = parse(raw)
    assert status == 200 and headers["connection"] == "close"
    assert gw.proc.p.wait(timeout=5) == 0
    assert 0.5 < time.monotonic() - sent < 3
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        refused = False
    except OSError:
        refused = True
    assert refused


def test_drain_time_bounds_the_wait(gateway, backend, tmp_path) -> None:
    c = backend("127.0.0.22", "c")
    port = free_port()
    gw = gateway(config(port, [cluster("app", [c])], routes=[
        {"match": {"prefix": "/"}, "route": {"cluster": "app", "timeout": "0s"}}]))
    gw.proc.stop()
    # Restart the same config with a short drain time, as `docker stop -t` users would.
    import sys

    from .conftest import Proc, wait_port
    proc = Proc([sys.executable, "-m", "edgegw", "-c", str(gw.path), "--drain-time-s", "0.5"],
                tmp_path / "short.log")
    wait_port("127.0.0.1", port)
    result: dict[str, object] = {}

    def slow() -> None:
        try:
            result["r"] = httpx.get(f"http://127.0.0.1:{port}/delay/5", headers={"host": "a"},
                                    timeout=10)
        except httpx.HTTPError as e:
            result["r"] = e

    t = threading.Thread(target=slow)
    t.start()
    time.sleep(0.3)
    sent = time.monotonic()
    proc.p.send_signal(signal.SIGTERM)
    assert proc.p.wait(timeout=5) == 0
    assert time.monotonic() - sent < 2
    t.join(10)
    assert isinstance(result["r"], httpx.HTTPError)  # cut off after the drain time
    assert "drain time over" in proc.output()
