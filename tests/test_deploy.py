"""The shipped configs, docker-compose.yml and Dockerfile, checked without a Docker engine:
parsed, validated by edgegw and by Envoy, and run natively with the compose command line."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import httpx
import pytest
import trustme
import yaml

from edgegw import compiled

from .conftest import ENVOY, ROOT, Backends, Proc, free_port, wait_for, wait_port

CONFIGS = sorted((ROOT / "configs").glob("*.yaml")) + sorted((ROOT / "configs").glob("examples/*.yaml"))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory, certs: Path) -> Path:
    """A stand-in for /etc/edgegw: configs/ and sds/ as mounted, certs/ made by trustme."""
    d = tmp_path_factory.mktemp("etc-edgegw")
    shutil.copytree(ROOT / "configs", d / "configs")
    shutil.copytree(ROOT / "sds", d / "sds")
    shutil.copytree(certs, d / "certs")
    shutil.copytree(certs, d / "demo-certs")
    return d


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_validates_in_edgegw_and_envoy(config: Path, workdir: Path) -> None:
    rel = str(config.relative_to(ROOT))
    r = subprocess.run([sys.executable, "-m", "edgegw", "--mode", "validate", "-c", rel],
                       cwd=workdir, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and r.stdout == f"configuration '{rel}' OK\n", r.stderr
    if ENVOY is None:
        return
    if "sites" in yaml.safe_load(config.read_text()):  # a sites file: Envoy runs its expansion
        r = subprocess.run([sys.executable, "-m", "edgegw", "expand", rel], cwd=workdir,
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        rel = "expanded.yaml"
        (workdir / rel).write_text(r.stdout)
    elif "edgegw-only" in config.read_text():
        return
    r = subprocess.run([ENVOY, "--mode", "validate", "-c", rel, "--base-id",
                        str(free_port())], cwd=workdir, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]


def test_shipped_configs_bind_admin_to_loopback() -> None:
    for config in [*CONFIGS, ROOT / "sites.yaml"]:
        doc = yaml.safe_load(config.read_text())
        admin = doc.get("admin", {})
        if "sites" in doc:
            assert admin.startswith("127.0.0.1:"), config
        elif admin:
            assert admin["address"]["socket_address"]["address"] == "127.0.0.1", config


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_publishes_80_and_443_and_not_admin() -> None:
    gw = compose()["services"]["gateway"]
    assert sorted(gw["ports"]) == ["443:8443", "80:8080"]
    mounts = {v.split(":")[1]: v for v in gw["volumes"]}
    assert mounts["/etc/edgegw/sites.yaml"] == "./sites.yaml:/etc/edgegw/sites.yaml:ro"
    assert mounts["/etc/edgegw/certs"] == "./certs:/etc/edgegw/certs"  # ACME writes there
    assert gw["command"][:2] == ["-c", "sites.yaml"]
    sites = yaml.safe_load((ROOT / "sites.yaml").read_text())
    assert (sites["listen"]["https"], sites["listen"]["http"]) == ("0.0.0.0:8443",
                                                                   "0.0.0.0:8080")
    assert sites["admin"].startswith("127.0.0.1:")


def test_every_service_restarts_and_the_demo_is_a_profile() -> None:
    services = compose()["services"]
    for name, svc in services.items():
        assert svc.get("restart") in ("unless-stopped", "on-failure"), name
        assert "chown" not in json.dumps(svc), name
    assert {n for n, s in services.items() if "demo" in s.get("profiles", [])} == {
        "demo-gateway", "demo-certs", "backend-a", "backend-b"}
    assert "profiles" not in services["gateway"]
    assert services["gateway"]["healthcheck"]["test"][:2] == ["CMD", "python"]


def test_dockerfile_matches_compose() -> None:
    text = (ROOT / "Dockerfile").read_text()
    lines = [ln.split(None, 1) for ln in text.splitlines() if ln and not ln.startswith("#")]
    instr: dict[str, list[str]] = {}
    for k, v in lines:
        instr.setdefault(k, []).append(v)
    assert instr["WORKDIR"][-1] == "/etc/edgegw"
    assert json.loads(instr["ENTRYPOINT"][0]) == ["edgegw"]
    assert json.loads(instr["CMD"][0]) == compose()["services"]["gateway"]["command"][:2]
    assert set(instr["EXPOSE"][0].split()) == {"8080", "8443"}
    assert [f.split()[0] for f in instr["FROM"]] == ["python:3.11", "python:3.11-slim"]
    assert "USER" in instr


def build_stage() -> list[tuple[str, str]]:
    """The Dockerfile's first stage, as (instruction, arguments) lines."""
    stage = (ROOT / "Dockerfile").read_text().split("\nFROM ")[1]
    return [tuple(ln.split(None, 1)) for ln in stage.splitlines()[1:]  # type: ignore[misc]
            if ln and not ln.startswith("#")]


@pytest.mark.skipif(not compiled.active(),
                    reason="pure run: the compiled build is tested in `make test-compiled`")
def test_image_build_stage_builds_from_what_it_copies_the_wheel_the_tests_run(
        tmp_path: Path) -> None:
    """The build stage run natively: its COPY lines into a bare folder, its RUN line there.
    Its command is the one `make compile` runs (the compiled suite runs on that wheel, and
    test_compiled checks its request path is compiled); built here without mypyc, what the
    image copies makes a wheel of the same files, the extensions aside."""
    src, wheels = tmp_path / "src", tmp_path / "wheels"
    src.mkdir()
    runs = []
    make = (ROOT / "Makefile").read_text()
    for op, args in build_stage():
        if op == "COPY":
            *names, _ = args.split()
            for n in names:
                if (ROOT / n).is_dir():
                    shutil.copytree(ROOT / n, src / n, ignore=shutil.ignore_patterns(
                        "__pycache__", "*.egg-info"))
                else:
                    shutil.copy(ROOT / n, src / n)
        elif op == "RUN" and args.startswith("apt-get "):  # what `make sysdeps` installs here
            for pkg in args.split("--no-install-recommends")[1].split():
                assert pkg in make and shutil.which("dpkg") and subprocess.run(
                    ["dpkg", "-s", pkg], capture_output=True).returncode == 0, pkg
        elif op == "RUN":
            runs.append(args)
    assert len(runs) == 1 and runs[0].startswith("EDGEGW_MYPYC=1 pip wheel "), runs
    assert "\tEDGEGW_MYPYC=1 $(PY) -m pip wheel -q --no-deps " in make
    cmd = runs[0].replace("/wheels", str(wheels)).split()
    r = subprocess.run([sys.executable, "-m", *cmd[1:], "--no-build-isolation"], cwd=src,
                       capture_output=True, text=True, timeout=300,
                       env={**os.environ, "EDGEGW_MYPYC": "0"})
    assert r.returncode == 0, r.stderr[-3000:]

    def files(wheel: Path) -> set[str]:
        with zipfile.ZipFile(wheel) as z:
            return {n for n in z.namelist() if not n.endswith((".so", "/RECORD", "/WHEEL"))}

    (image,) = wheels.glob("edgegw-*.whl")
    (built,) = (ROOT / "build" / "wheel").glob("edgegw-*.whl")
    assert files(image) == files(built)
    assert "edgegw/http/stream.py" in files(image)


def native_sites(text: str, backends: Backends, https: int, http: int, admin: int) -> str:
    """A shipped sites file as the tests run it: loopback, free ports, the test backends."""
    return (text.replace("0.0.0.0:8443", f"127.0.0.1:{https}")
            .replace("0.0.0.0:8080", f"127.0.0.1:{http}")
            .replace("127.0.0.1:9901", f"127.0.0.1:{admin}")
            .replace("http://192.168.1.20:80", f"http://127.0.0.20:{backends.a[1]}")
            .replace("https://192.168.1.21:443", f"https://127.0.0.21:{backends.b[1]}")
            .replace("http://backend-a:8080", f"http://127.0.0.20:{backends.a[1]}")
            .replace("https://backend-b:8443", f"https://127.0.0.21:{backends.b[1]}")
            .replace("# ca: certs/internal-ca.pem", "ca: certs/internal-ca.pem")  # its own CA
            .replace("certs/internal-ca.pem", "certs/backend-ca.pem"))


def healthcheck(svc: dict, admin: int) -> int:
    """The service's healthcheck command, run here against the admin port given."""
    cmd = [c.replace("127.0.0.1:9901", f"127.0.0.1:{admin}") for c in svc["healthcheck"]["test"]]
    assert cmd[0] == "CMD" and cmd[1] == "python"
    return subprocess.run([sys.executable, *cmd[2:]], capture_output=True, timeout=10).returncode


def serves_both_sites(https: int, ca: Path, proc: Proc) -> None:
    for name, backend in (("a.example.com", "a"), ("b.example.com", "b")):
        r = subprocess.run(["curl", "-sS", "--cacert", str(ca), "--resolve",
                            f"{name}:{https}:127.0.0.1", f"https://{name}:{https}/headers"],
                           capture_output=True, text=True, timeout=10)
        assert r.returncode == 0, r.stderr + proc.output()
        assert json.loads(r.stdout)["backend"] == backend


def test_compose_command_runs_natively(workdir: Path, backends: Backends, tmp_path: Path) -> None:
    """Runs the gateway service's exact command on the shipped sites.yaml (its upstreams
    pointed at the test backends, its binds at loopback) in a tree laid out like its
    mounts; the healthcheck passes, port 80 redirects, SIGTERM drains."""
    gw = compose()["services"]["gateway"]
    https, http, admin = free_port(), free_port(), free_port()
    (workdir / "sites.yaml").write_text(
        native_sites((ROOT / "sites.yaml").read_text(), backends, https, http, admin))
    assert healthcheck(gw, admin) != 0  # nothing listens yet
    proc = Proc([sys.executable, "-m", "edgegw", *gw["command"]], tmp_path / "gw.log",
                cwd=workdir)
    try:
        wait_port("127.0.0.1", https)
        serves_both_sites(https, workdir / "certs" / "dev-ca.pem", proc)
        r = httpx.get(f"http://127.0.0.1:{http}/x", headers={"Host": "a.example.com"})
        assert (r.status_code, r.headers["location"]) == (301,
                                                          f"https://a.example.com:{https}/x")
        wait_for(lambda: healthcheck(gw, admin) == 0, timeout=10)
        # a sites file runs one process by default (a home lab's traffic, a worker's memory)
        assert "workers" not in httpx.get(f"http://127.0.0.1:{admin}/server_info").json()
        # docker stop: SIGTERM, then SIGKILL after stop_grace_period; edgegw drains and exits 0
        # before that (its --drain-time-s is shorter than the grace period).
        grace = float(gw["stop_grace_period"].rstrip("s"))
        drain = float(gw["command"][gw["command"].index("--drain-time-s") + 1])
        assert drain < grace
        proc.p.send_signal(signal.SIGTERM)
        assert proc.p.wait(timeout=grace) == 0
    finally:
        proc.stop()


def test_demo_profile_makes_dev_certificates_only_where_none_exist(
        backends: Backends, certs: Path, tmp_path: Path) -> None:
    """The demo-certs service's exact command, twice, in a folder that already holds a real
    certificate for a.example.com: that one is kept, the rest made once; then the
    demo-gateway's exact command serves the demo sites with them."""
    services = compose()["services"]
    root = tmp_path / "etc-edgegw"
    shutil.copytree(ROOT / "configs", root / "configs")
    (root / "demo-certs").mkdir()
    real = trustme.CA().issue_cert("a.example.com")
    real.cert_chain_pems[0].write_to_path(str(root / "demo-certs" / "a.example.com.crt"))
    real.private_key_pem.write_to_path(str(root / "demo-certs" / "a.example.com.key"))
    before = (root / "demo-certs" / "a.example.com.crt").read_bytes()
    cmd = services["demo-certs"]["entrypoint"]
    assert cmd[:3] == ["python", "-m", "edgegw.demo.certs"]
    for _ in range(2):
        r = subprocess.run([sys.executable, *cmd[1:]], cwd=root, capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0, r.stderr
    (try_b,) = [x.split() for x in r.stdout.splitlines() if "https://b.example.com" in x]
    assert (root / "demo-certs" / "a.example.com.crt").read_bytes() == before
    assert not (root / "demo-certs" / "a.example.com.pem").exists()
    assert "nothing missing" in r.stdout
    made = sorted(p.name for p in (root / "demo-certs").iterdir())
    assert "b.example.com.pem" in made and "b.internal.pem" in made
    demo = services["demo-gateway"]
    https, http, admin = free_port(), free_port(), free_port()
    cfg = root / demo["command"][1]
    cfg.write_text(native_sites(cfg.read_text(), backends, https, http, admin))
    # the test backends' b.internal comes from the tests' CA: trust that one for this run
    shutil.copy(certs / "backend-ca.pem", root / "demo-certs" / "backend-ca.pem")
    proc = Proc([sys.executable, "-m", "edgegw", *demo["command"]], tmp_path / "gw.log",
                cwd=root)
    try:
        wait_port("127.0.0.1", https)
        # the line the demo-certs service prints, on this run's port
        args = [w.replace("8443", str(https)) for w in try_b]
        assert args[0] == "curl"
        r = subprocess.run([args[0], "-sS", *args[1:]], cwd=root, capture_output=True,
                           text=True, timeout=10)
        assert json.loads(r.stdout)["backend"] == "b", r.stderr + proc.output()
        wait_for(lambda: healthcheck(demo, admin) == 0, timeout=10)
    finally:
        proc.stop()


DEMO_PORTS = [("127.0.0.1", 8443), ("127.0.0.1", 8080), ("127.0.0.1", 9901),
              ("127.0.0.20", 8080), ("127.0.0.21", 8443)]


def listening(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=0.5).close()
        return True
    except OSError:
        return False


def test_the_demo_stopped_with_sigterm_leaves_nothing_running(tmp_path: Path) -> None:
    """``make demo`` then ``kill`` (or make passing on SIGTERM): the backends and the gateway
    go too, and every demo port is free again."""
    if any(listening(*a) for a in DEMO_PORTS):
        pytest.skip("a demo port is in use on this machine")
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    shutil.copytree(ROOT / "sds", tmp_path / "sds")
    demo = Proc([sys.executable, "-m", "edgegw.demo"], tmp_path / "demo.log", cwd=tmp_path)
    try:
        deadline = time.monotonic() + 30
        while "edgegw demo is up" not in demo.output():
            assert demo.p.poll() is None and time.monotonic() < deadline, demo.output()
            time.sleep(0.1)
        assert all(listening(*a) for a in DEMO_PORTS)
        children = [int(p) for p in
                    open(f"/proc/{demo.p.pid}/task/{demo.p.pid}/children").read().split()]
        assert len(children) == 3  # two backends and the gateway
        demo.p.send_signal(signal.SIGTERM)
        assert demo.p.wait(timeout=15) == 0
    finally:
        demo.stop()
    for pid in children:
        assert not os.path.exists(f"/proc/{pid}") or \
            open(f"/proc/{pid}/stat").read().split()[2] == "Z", f"pid {pid} still runs"
    assert not any(listening(*a) for a in DEMO_PORTS)


def test_edge_hardened_config_serves_with_its_protections(workdir: Path, backends: Backends,
                                                          tmp_path: Path) -> None:
    """configs/edge-hardened.yaml run as shipped (ports and backends pointed at the test's):
    sites served over both protocols, and each of its protections seen from a client."""
    https, http, admin = free_port(), free_port(), free_port()
    text = ((ROOT / "configs" / "edge-hardened.yaml").read_text()
            .replace("port_value: 8443 }", f"port_value: {https} }}", 1)
            .replace("port_value: 8080 }", f"port_value: {http} }}", 1)
            .replace("port_value: 9901", f"port_value: {admin}")
            .replace("address: 127.0.0.20, port_value: 8080", f"address: 127.0.0.20, "
                     f"port_value: {backends.a[1]}")
            .replace("address: 127.0.0.21, port_value: 8443", f"address: 127.0.0.21, "
                     f"port_value: {backends.b[1]}"))
    (workdir / "hardened.yaml").write_text(text)
    proc = Proc([sys.executable, "-m", "edgegw", "-c", "hardened.yaml", "--concurrency", "1"],
                tmp_path / "gw.log", cwd=workdir)
    ca = str(workdir / "certs" / "dev-ca.pem")

    def curl(name: str, path: str, *args: str) -> tuple[str, str]:
        r = subprocess.run(["curl", "-sS", "-D", "-", "--cacert", ca, "--resolve",
                            f"{name}:{https}:127.0.0.1", *args,
                            f"https://{name}:{https}{path}"],
                           capture_output=True, text=True, timeout=10)
        head, body = re.split(r"\r?\n\r?\n", r.stdout, maxsplit=1)
        return head.splitlines()[0], body

    try:
        wait_port("127.0.0.1", https)
        for name, backend in (("a.example.com", "a"), ("b.example.com", "b")):
            status, body = curl(name, "//headers", "--http2", "--path-as-is")
            assert status.startswith("HTTP/2 200"), status + proc.output()
            doc = json.loads(body)
            assert (doc["backend"], doc["path"]) == (backend, "/headers")
        for proto in ("--http1.1", "--http2"):
            assert curl("a.example.com", "/x/..%2Fheaders", proto,
                        "--path-as-is")[0].split()[1] == "307"
            assert curl("a.example.com", "/headers", proto, "-H", "Host: b.example.com"
                        )[0].split()[1] == "421"
        assert curl("a.example.com", "/headers", "--http1.1", "-H", "x_user: admin"
                    )[0].split()[1] == "400"
    finally:
        proc.stop()


def test_proxy_protocol_from_a_balancer_in_front(workdir: Path, backends: Backends,
                                                tmp_path: Path) -> None:
    """The shipped sites.yaml with ``listen: {proxy_protocol: true}``, run behind a real
    HAProxy that sends PROXY v2: the backend learns the client's address (127.0.0.9), not
    HAProxy's."""
    if shutil.which("haproxy") is None:
        pytest.skip("haproxy (apt) missing")
    https, http, admin, front = free_port(), free_port(), free_port(), free_port()
    text = native_sites((ROOT / "sites.yaml").read_text(), backends, https, http, admin)
    text = text.replace(f"  http: 127.0.0.1:{http}\n",
                        f"  http: 127.0.0.1:{http}\n  proxy_protocol: true\n")
    (workdir / "pp-sites.yaml").write_text(text)
    conf = tmp_path / "haproxy.cfg"
    conf.write_text("defaults\n  mode tcp\n  timeout connect 2s\n  timeout client 10s\n"
                    f"  timeout server 10s\nfrontend fe\n  bind 127.0.0.1:{front}\n"
                    f"  default_backend be\nbackend be\n  server gw 127.0.0.1:{https} "
                    "send-proxy-v2\n")
    gw = Proc([sys.executable, "-m", "edgegw", "-c", "pp-sites.yaml", "--concurrency", "1"],
              tmp_path / "gw.log", cwd=workdir)
    ha = Proc(["haproxy", "-db", "-f", str(conf)], tmp_path / "haproxy.log")
    try:
        wait_port("127.0.0.1", https)
        wait_port("127.0.0.1", front)
        r = subprocess.run(["curl", "-sS", "--interface", "127.0.0.9", "--cacert",
                            str(workdir / "certs" / "dev-ca.pem"), "--resolve",
                            f"a.example.com:{front}:127.0.0.1",
                            f"https://a.example.com:{front}/headers"],
                           capture_output=True, text=True, timeout=10)
        assert r.returncode == 0, r.stderr + gw.output()
        # (x-forwarded-for gets the node's address for a loopback client, as in Envoy)
        assert json.loads(r.stdout)["headers"]["x-envoy-external-address"] == "127.0.0.9"
        direct = subprocess.run(["curl", "-sS", "--cacert", str(workdir / "certs" / "dev-ca.pem"),
                                 "--resolve", f"a.example.com:{https}:127.0.0.1",
                                 f"https://a.example.com:{https}/headers"],
                                capture_output=True, text=True, timeout=10)
        assert direct.returncode != 0  # no PROXY header: refused
    finally:
        ha.stop()
        gw.stop()
