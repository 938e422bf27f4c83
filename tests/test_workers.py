"""--concurrency N: worker processes sharing the ports, one admin port adding them up."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from .conftest import Proc, cluster, config, free_port, served_serial, versioned, wait_port
from .helpers import Resumer


def admin_config(port: int) -> dict:
    return {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}


class Supervised:
    """edgegw under its supervisor, with an admin port, ready to serve."""

    def __init__(self, proc: Proc, admin: int, path: Path) -> None:
        self.proc = proc
        self.admin = f"http://127.0.0.1:{admin}"
        self.admin_cfg = admin_config(admin)
        self.path = path

    def workers(self) -> list[dict]:
        return httpx.get(f"{self.admin}/server_info").json()["workers"]

    def stats(self) -> str:
        return httpx.get(f"{self.admin}/stats").text


@pytest.fixture
def supervised(tmp_path: Path) -> Iterator:
    """``supervised(config, *flags)`` starts ``edgegw --concurrency 2`` on the config (an admin
    address is added) and waits until every worker is ready."""
    started: list[Proc] = []

    def start(cfg: dict, *flags: str) -> Supervised:
        admin = free_port()
        path = tmp_path / f"gw-{admin}.yaml"
        path.write_text(yaml.safe_dump({**cfg, "admin": admin_config(admin)}))
        gw = Supervised(Proc([sys.executable, "-m", "edgegw", "-c", str(path), "--concurrency",
                              "2", *flags], tmp_path / f"gw-{admin}.log"), admin, path)
        started.append(gw.proc)
        wait_port("127.0.0.1", admin)
        deadline = time.monotonic() + 20
        while httpx.get(f"{gw.admin}/ready").status_code != 200:
            assert time.monotonic() < deadline, gw.proc.output()
            time.sleep(0.1)
        return gw

    yield start
    for proc in started:
        proc.stop()


def worker_stats(sock: str) -> dict[str, int]:
    with httpx.Client(transport=httpx.HTTPTransport(uds=sock), timeout=5) as c:
        text = c.get("http://worker/stats").text
    return {n: int(v) for n, _, v in (ln.rpartition(": ") for ln in text.splitlines())
            if v.strip().lstrip("-").isdigit()}


def alive(pid: int) -> bool:
    try:
        return open(f"/proc/{pid}/stat").read().split()[2] != "Z"
    except OSError:
        return False


def get(port: int) -> httpx.Response:
    """One request on a new connection: the kernel picks the worker for each."""
    return httpx.get(f"http://127.0.0.1:{port}/headers", headers={"host": "a",
                                                                  "connection": "close"})


def test_workers_share_the_port_and_the_admin_adds_them_up(backend, supervised) -> None:
    c = backend("127.0.0.22", "c")
    port = free_port()
    gw = supervised(config(port, [cluster("app", [c])]), "--drain-time-s", "5")
    assert all(get(port).status_code == 200 for _ in range(40))
    workers = gw.workers()
    assert len(workers) == 2 and all(w["ready"] for w in workers)
    each = [worker_stats(w["admin_socket"])["http.ingress.downstream_rq_total"]
            for w in workers]
    assert all(n > 0 for n in each) and sum(each) == 40
    stats = gw.stats()
    assert "http.ingress.downstream_rq_total: 40\n" in stats
    assert "server.concurrency: 2\n" in stats
    assert "cluster.app.membership_total: 1\n" in stats  # a shared fact, not added up
    prom = httpx.get(f"{gw.admin}/stats/prometheus").text
    assert 'envoy_http_downstream_rq_time_count{envoy_http_conn_manager_prefix="ingress"} 40' \
        in prom
    assert f"app::{c[0]}:{c[1]}::rq_total::40" in httpx.get(f"{gw.admin}/clusters").text

    # A worker that dies is started again; the port keeps answering.
    first = workers[0]["pid"]
    os.kill(first, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while not (gw.workers()[0]["pid"] != first and gw.workers()[0]["ready"]):
        assert time.monotonic() < deadline, gw.proc.output()
        time.sleep(0.1)
    assert f"worker 0 (pid {first}) exited with status -9" in gw.proc.output()
    assert "edgegw.worker_restarts: 1\n" in gw.stats()
    assert all(get(port).status_code == 200 for _ in range(10))

    # SIGTERM (docker stop): every worker drains and the supervisor exits 0.
    pids = [w["pid"] for w in gw.workers()]
    gw.proc.p.send_signal(signal.SIGTERM)
    assert gw.proc.p.wait(timeout=15) == 0
    assert not any(alive(pid) for pid in pids)


def test_certificate_rotation_reaches_every_worker(site, backends, supervised) -> None:
    port = free_port()
    gw = supervised(site.config(port, backends))
    workers = gw.workers()
    new = site.move_in_new_secret()

    def serials(sock: str) -> set[int]:
        with httpx.Client(transport=httpx.HTTPTransport(uds=sock), timeout=5) as c:
            doc = c.get("http://worker/certs").json()
        return {int(cert["serial_number"], 16) for entry in doc["certificates"]
                for cert in entry["cert_chain"]}

    deadline = time.monotonic() + 5
    while not all(new in serials(w["admin_socket"]) for w in workers):
        assert time.monotonic() < deadline, [serials(w["admin_socket"]) for w in workers]
        time.sleep(0.05)
    # And what clients get, over many new connections spread by the kernel: only the new one.
    assert {served_serial(port, site.ca_file) for _ in range(20)} == {new}


def test_sessions_resume_on_every_worker(site, backends, supervised) -> None:
    """A client that offers its session again resumes whichever worker the kernel hands
    the connection to: the workers share their ticket key."""
    port = free_port()
    gw = supervised(site.config(port, backends))
    client = Resumer(site.ca_file)
    assert client.connect(port, "a.example.com") is False
    resumed = [client.connect(port, "a.example.com") for _ in range(30)]
    assert resumed == [True] * 30  # (without shared keys: about half)
    name = f"listener.127.0.0.1_{port}.ssl."
    per_worker = [worker_stats(w["admin_socket"]) for w in gw.workers()]
    assert all(st[name + "handshake"] > 0 for st in per_worker)  # (both took connections)
    assert f"{name}session_reused: 30\n" in gw.stats()


def test_the_admin_port_tells_the_truth_about_every_worker(site, backends, supervised) -> None:
    """A broken certificate file is one rejected update (not one per worker), and /certs and
    /status name it; /listeners, /status and the ssl stats describe the workers together."""
    port = free_port()
    gw = supervised(site.config(port, backends))
    for _ in range(4):
        served_serial(port, site.ca_file)  # handshakes spread over the workers
    pem = site.crt.read_bytes()
    site.crt.write_bytes(pem[: len(pem) // 2])
    deadline = time.monotonic() + 5
    while any(worker_stats(w["admin_socket"]).get("sds.site_a.update_rejected") != 1
              for w in gw.workers()):
        assert time.monotonic() < deadline, gw.proc.output()[-2000:]
        time.sleep(0.05)
    stats = gw.stats()
    assert "sds.site_a.update_rejected: 1\n" in stats
    assert f"listener.127.0.0.1_{port}.ssl.handshake: 4\n" in stats
    certs = httpx.get(f"{gw.admin}/certs").json()
    assert [(r["name"], r["file"]) for r in certs["rejected"]] == [("site_a", str(
        site.sds / "site_a.yaml"))]
    assert len(certs["certificates"]) == 1  # the same served certificate, listed once
    status = httpx.get(f"{gw.admin}/status.json").json()
    assert [r["name"] for r in status["rejected_certificates"]] == ["site_a"]
    assert status["sites"][0]["requests"] == 0 and len(status["workers"]) == 2
    assert status["clusters"][0]["hosts"][0]["healthy"] is True
    listeners = httpx.get(f"{gw.admin}/listeners", params={"format": "json"}).json()
    assert listeners == {"listener_statuses": [{"name": "https", "local_address": {
        "socket_address": {"address": "127.0.0.1", "port_value": port}}}]}
    site.write_pair()  # fixed: the problem goes away everywhere
    deadline = time.monotonic() + 5
    while httpx.get(f"{gw.admin}/certs").json()["rejected"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_workers_do_not_outlive_a_killed_supervisor(backend, supervised) -> None:
    c = backend("127.0.0.22", "c")
    port = free_port()
    gw = supervised(config(port, [cluster("app", [c])]))
    pids = [w["pid"] for w in gw.workers()]
    gw.proc.p.kill()
    gw.proc.p.wait(5)
    deadline = time.monotonic() + 10
    while any(alive(p) for p in pids):
        assert time.monotonic() < deadline, "workers outlived their supervisor"
        time.sleep(0.1)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_a_config_change_reaches_every_worker(backend, supervised) -> None:
    c = backend("127.0.0.22", "c")
    port = free_port()
    gw = supervised(versioned(port, c, "1"))
    tmp = gw.path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump({**versioned(port, c, "2"), "admin": gw.admin_cfg}))
    tmp.rename(gw.path)
    deadline = time.monotonic() + 5
    while any(worker_stats(w["admin_socket"]).get("edgegw.config_reload.success") != 1
              for w in gw.workers()):
        assert time.monotonic() < deadline, gw.proc.output()[-2000:]
        time.sleep(0.1)
    assert {get(port).headers["x-version"] for _ in range(20)} == {"2"}
    # One change of the file, reloaded by each worker, is one reload (as Envoy counts it).
    assert "edgegw.config_reload.success: 1\n" in gw.stats()


def test_admin_commands_and_queries_reach_the_workers(backend, supervised) -> None:
    c = backend("127.0.0.22", "c")
    gw = supervised(config(free_port(), [cluster("app", [c])]))
    # A query with characters that need encoding reaches the worker intact.
    dump = httpx.get(f"{gw.admin}/config_dump", params={"resource": "static_clusters",
                                                        "mask": "cluster.name"}).json()
    assert [d["cluster"]["name"] for d in dump["configs"]] == ["app"]
    r = httpx.post(f"{gw.admin}/logging", params={"upstream": "debug"})
    assert r.status_code == 200 and "upstream: debug" in r.text
    for w in gw.workers():
        with httpx.Client(transport=httpx.HTTPTransport(uds=w["admin_socket"])) as client:
            assert "upstream: debug" in client.post("http://worker/logging").text
    assert httpx.post(f"{gw.admin}/healthcheck/fail").status_code == 200
    assert httpx.get(f"{gw.admin}/ready").text == "DRAINING\n"
    assert httpx.post(f"{gw.admin}/healthcheck/ok").status_code == 200
    assert httpx.get(f"{gw.admin}/ready").text == "LIVE\n"


@pytest.mark.parametrize("concurrency", ["1", "2"])
def test_a_second_gateway_on_a_taken_port_exits_and_names_the_address(
        backend, supervised, tmp_path: Path, concurrency: str) -> None:
    """Workers bind with SO_REUSEPORT, which would let a second gateway share the port
    unnoticed: it must refuse to start instead, naming the address."""
    c = backend("127.0.0.22", "c")
    port = free_port()
    cfg = config(port, [cluster("app", [c])])
    supervised(cfg)
    path = tmp_path / "second.yaml"
    path.write_text(yaml.safe_dump(cfg))
    started = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "edgegw", "-c", str(path), "--concurrency",
                        concurrency], capture_output=True, text=True, timeout=30)
    assert r.returncode == 1, r.stderr
    assert f"cannot bind 127.0.0.1:{port}: Address already in use" in r.stderr
    assert time.monotonic() - started < 10
    assert "worker 0 started" not in r.stderr  # refused before any worker ran


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs a machine of 2 CPUs or more")
def test_cpuset_threads_counts_the_cpus_the_gateway_may_run_on(backend, tmp_path: Path) -> None:
    """Envoy's --cpuset-threads: without --concurrency, one worker per CPU of the process's
    cpuset (taskset here, a container's CPU set in Envoy Gateway's pods), not per CPU of the
    machine."""
    c = backend("127.0.0.22", "c")
    admin = free_port()
    cfg = {**config(free_port(), [cluster("app", [c])]), "admin": admin_config(admin)}
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(cfg))
    gw = Proc(["taskset", "-c", "0", sys.executable, "-m", "edgegw", "-c", str(path),
               "--cpuset-threads"], tmp_path / "gw.log")
    try:
        wait_port("127.0.0.1", admin)
        stats = httpx.get(f"http://127.0.0.1:{admin}/stats", timeout=5).text
        assert "server.concurrency: 1\n" in stats
        assert "worker 0 started" not in gw.output()  # one process, no supervisor
    finally:
        gw.stop()
