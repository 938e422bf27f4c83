"""``make demo``: dev certificates, the two demo backends and the gateway, all on loopback."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

from ..workers import die_with_parent
from .certs import make

CONFIG = "configs/demo.yaml"
BACKENDS = (
    ["--listen", "127.0.0.20:8080", "--name", "a"],
    ["--listen", "127.0.0.21:8443", "--name", "b", "--cert", "certs/b.internal.pem",
     "--key", "certs/b.internal.key", "--expect-sni", "b.internal"],
)
HELP = """
edgegw demo is up (Ctrl-C stops it). Try:

  curl --cacert certs/dev-ca.pem --resolve a.example.com:8443:127.0.0.1 https://a.example.com:8443/
  curl --cacert certs/dev-ca.pem --resolve b.example.com:8443:127.0.0.1 https://b.example.com:8443/headers
  curl -i http://127.0.0.1:8080/hello            # redirects to https
  curl http://127.0.0.1:9901/stats               # admin port (loopback only)
"""


def _listening(address: str, proc: subprocess.Popen[bytes], timeout: float = 5.0) -> bool:
    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            socket.create_connection((host, int(port)), timeout=0.2).close()
            return True
        except OSError:
            time.sleep(0.1)
    return False


def _stop(signum: int, frame: object) -> None:
    raise SystemExit(0)


def main() -> None:
    # SIGTERM (what `kill` and make send) stops the backends and the gateway, as Ctrl-C does;
    # and each of them dies with this process even if it is killed outright.
    signal.signal(signal.SIGTERM, _stop)
    die_with_parent()
    try:
        make("certs")
    except ValueError as e:
        raise SystemExit(f"demo certificates: {e}") from None
    procs = [subprocess.Popen([sys.executable, "-m", "edgegw.demo.backend", *args],
                              preexec_fn=die_with_parent) for args in BACKENDS]
    gw = None
    try:
        for args, p in zip(BACKENDS, procs, strict=True):
            if not _listening(args[1], p):
                print(f"demo backend on {args[1]} did not start (is something else using that "
                      "address?)", file=sys.stderr)
                sys.exit(1)
        gw = subprocess.Popen([sys.executable, "-m", "edgegw", "-c", CONFIG, *sys.argv[1:]],
                              preexec_fn=die_with_parent)
        procs.append(gw)
        if _listening("127.0.0.1:8443", gw):
            print(HELP, flush=True)
        gw.wait()
    except KeyboardInterrupt:
        pass
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
    sys.exit(1 if gw is None else gw.returncode or 0)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
