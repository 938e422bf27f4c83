"""``make demo``: dev certificates, the two demo backends and the gateway, all on loopback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

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


def main() -> None:
    make("certs")
    procs = [subprocess.Popen([sys.executable, "-m", "edgegw.demo.backend", *args])
             for args in BACKENDS]
    time.sleep(0.5)
    gw = subprocess.Popen([sys.executable, "-m", "edgegw", "-c", CONFIG, *sys.argv[1:]])
    procs.append(gw)
    time.sleep(1.0)
    if gw.poll() is None:
        print(HELP, flush=True)
    try:
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
    sys.exit(gw.returncode or 0)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
