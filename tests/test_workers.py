"""--concurrency N: worker processes sharing the ports, one admin port adding them up."""

from __future__ import annotations

import os
import signal
import socket
import sys
import time

import httpx
import pytest
import yaml

from .conftest import Proc, free_port, served_serial, wait_port
from .test_health import cluster, config


def worker_stats(sock: str) -> dict[str, int]:
    with httpx.Client(transport=httpx.HTTPTransport(uds=sock), timeout=5) as c:
        text = c.get("http://worker/stats").text
    return {n: int(v) for n, _, v in (ln.rpartition(": ") for ln in text.splitlines())
            if v.strip().lstrip("-").isdigit()}


def test_workers_share_the_port_and_the_admin_adds_them_up(backend, tmp_path) -> None:
    c = backend("127.0.0.22", "c")
    port, admin = free_port(), free_port()
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(yaml.safe_dump({**config(port, [cluster("app", [c])]), "admin": {
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}}}))
    proc = Proc([sys.executable, "-m", "edgegw", "-c", str(cfg), "--concurrency", "2",
                 "--drain-time-s", "5"], tmp_path / "gw.log")
    base = f"http://127.0.0.1:{admin}"
    try:
        wait_port("127.0.0.1", admin)
        deadline = time.monotonic() + 20
        while httpx.get(f"{base}/ready").status_code != 200:
            assert time.monotonic() < deadline, proc.output()
            time.sleep(0.1)
        for _ in range(40):  # a new connection each time: the kernel picks a worker for each
            r = httpx.get(f"http://127.0.0.1:{port}/headers", headers={"host": "a",
                                                                         "connection": "close"})
            assert r.status_code == 200
        info = httpx.get(f"{base}/server_info").json()
        workers = info["workers"]
        assert len(workers) == 2 and all(w["ready"] for w in workers)
        each = [worker_stats(w["admin_socket"])["http.ingress.downstream_rq_total"]
                for w in workers]
        assert all(n > 0 for n in each) and sum(each) == 40
        stats = httpx.get(f"{base}/stats").text
        assert "http.ingress.downstream_rq_total: 40\n" in stats
        assert "server.concurrency: 2\n" in stats
        assert "cluster.app.membership_total: 1\n" in stats  # a shared fact, not added up
        prom = httpx.get(f"{base}/stats/prometheus").text
        assert 'envoy_http_downstream_rq_time_count{envoy_http_conn_manager_prefix="ingress"} 40' \
            in prom
        hosts = httpx.get(f"{base}/clusters").text
        assert f"app::{c[0]}:{c[1]}::rq_total::40" in hosts

        # A worker that dies is started again; the port keeps answering.
        first = workers[0]["pid"]
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while True:
            w0 = httpx.get(f"{base}/server_info").json()["workers"][0]
            if w0["pid"] != first and w0["ready"]:
                break
            assert time.monotonic() < deadline, proc.output()
            time.sleep(0.1)
        assert f"worker 0 (pid {first}) exited with status -9" in proc.output()
        assert "edgegw.worker_restarts: 1\n" in httpx.get(f"{base}/stats").text
        for _ in range(10):
            assert httpx.get(f"http://127.0.0.1:{port}/headers", headers={
                "host": "a", "connection": "close"}).status_code == 200

        # SIGTERM (docker stop): every worker drains and the supervisor exits 0.
        pids = [w["pid"] for w in httpx.get(f"{base}/server_info").json()["workers"]]
        proc.p.send_signal(signal.SIGTERM)
        assert proc.p.wait(timeout=15) == 0
        for pid in pids:
            assert not os.path.exists(f"/proc/{pid}") or \
                open(f"/proc/{pid}/stat").read().split()[2] == "Z"
    finally:
        proc.stop()


def test_certificate_rotation_reaches_every_worker(site, backends, tmp_path) -> None:
    port, admin = free_port(), free_port()
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(yaml.safe_dump({**site.config(port, backends), "admin": {
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}}}))
    proc = Proc([sys.executable, "-m", "edgegw", "-c", str(cfg), "--concurrency", "2"],
                tmp_path / "gw.log")
    try:
        wait_port("127.0.0.1", admin)
        deadline = time.monotonic() + 20
        while httpx.get(f"http://127.0.0.1:{admin}/ready").status_code != 200:
            assert time.monotonic() < deadline, proc.output()
            time.sleep(0.1)
        workers = httpx.get(f"http://127.0.0.1:{admin}/server_info").json()["workers"]
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
    finally:
        proc.stop()


def test_workers_do_not_outlive_a_killed_supervisor(backend, tmp_path) -> None:
    c = backend("127.0.0.22", "c")
    port, admin = free_port(), free_port()
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(yaml.safe_dump({**config(port, [cluster("app", [c])]), "admin": {
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}}}))
    proc = Proc([sys.executable, "-m", "edgegw", "-c", str(cfg), "--concurrency", "2"],
                tmp_path / "gw.log")
    try:
        wait_port("127.0.0.1", admin)
        deadline = time.monotonic() + 20
        while httpx.get(f"http://127.0.0.1:{admin}/ready").status_code != 200:
            assert time.monotonic() < deadline, proc.output()
            time.sleep(0.1)
        pids = [w["pid"] for w in
                httpx.get(f"http://127.0.0.1:{admin}/server_info").json()["workers"]]
        proc.p.kill()
        proc.p.wait(5)
        deadline = time.monotonic() + 10

        def alive(pid: int) -> bool:
            try:
                return open(f"/proc/{pid}/stat").read().split()[2] != "Z"
            except OSError:
                return False

        while any(alive(p) for p in pids):
            assert time.monotonic() < deadline, "workers outlived their supervisor"
            time.sleep(0.1)
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
    finally:
        proc.stop()


def test_a_config_change_reaches_every_worker(backend, tmp_path) -> None:
    from .test_lifecycle import _versioned

    c = backend("127.0.0.22", "c")
    port, admin = free_port(), free_port()
    cfg = tmp_path / "gw.yaml"
    admin_cfg = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}}
    cfg.write_text(yaml.safe_dump({**_versioned(port, c, "1"), "admin": admin_cfg}))
    proc = Proc([sys.executable, "-m", "edgegw", "-c", str(cfg), "--concurrency", "2"],
                tmp_path / "gw.log")
    try:
        wait_port("127.0.0.1", admin)
        deadline = time.monotonic() + 20
        while httpx.get(f"http://127.0.0.1:{admin}/ready").status_code != 200:
            assert time.monotonic() < deadline, proc.output()
            time.sleep(0.1)
        tmp = cfg.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump({**_versioned(port, c, "2"), "admin": admin_cfg}))
        tmp.rename(cfg)
        deadline = time.monotonic() + 5
        while "edgegw.config_reload.success: 2\n" not in httpx.get(
                f"http://127.0.0.1:{admin}/stats").text:
            assert time.monotonic() < deadline, proc.output()[-2000:]
            time.sleep(0.1)
        versions = {httpx.get(f"http://127.0.0.1:{port}/headers", headers={
            "host": "a", "connection": "close"}).headers["x-version"] for _ in range(20)}
        assert versions == {"2"}
    finally:
        proc.stop()
