"""One site's broken files never take the others down (sites file, edgegw-only): the site is left
out with why in the sites file's words, the others are served, /status shows it in red, and it
is served once its files are fixed, without a restart."""

from __future__ import annotations

import os
import re
import shutil
import ssl
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from edgegw.demo.certs import make_for

from .conftest import Backends, wait_for
from .helpers import EDGEGW, Lab


@pytest.fixture
def lab(backends: Backends, certs: Path) -> Iterator[Lab]:
    """A lab in a directory every user may enter (the gateway may run as another user), with
    a third site, c.example.com, and every file readable."""
    root = Path(tempfile.mkdtemp(prefix="edgegw-lab-"))
    root.chmod(0o755)
    lab = Lab(root, backends, certs)
    make_for(str(root / "certs"), ("c.example.com",))
    (root / "certs").chmod(0o755)
    for f in (root / "certs").iterdir():
        f.chmod(0o644)
    yield lab
    lab.stop()
    shutil.rmtree(root)


def three_sites(b: Backends, b_ca: str = "certs/backend-ca.pem") -> str:
    return (f"sites:\n"
            f"  a.example.com: http://{b.a[0]}:{b.a[1]}\n"
            f"  b.example.com:\n"
            f"    upstream: https://{b.b[0]}:{b.b[1]}\n"
            f"    sni: b.internal\n"
            f"    ca: {b_ca}\n"
            f"  c.example.com: http://{b.a[0]}:{b.a[1]}\n")


def served(lab: Lab, name: str) -> bool:
    try:
        return lab.get(name)[0] == 200
    except (ssl.SSLError, OSError):
        return False


def left_out(lab: Lab) -> dict[str, str]:
    doc = httpx.get(f"http://127.0.0.1:{lab.admin}/status.json", timeout=5).json()
    return {s["site"]: s["why"] for s in doc["left_out"]}


def test_a_key_the_gateway_cannot_read_takes_down_only_its_site(lab: Lab) -> None:
    lab.write(three_sites(lab.backends))
    key = lab.root / "certs" / "c.example.com.key"
    key.chmod(0o600)
    if os.getuid() == 0:  # root reads anything: run the gateway as nobody, as the image's uid
        prefix: tuple[str, ...] = ("setpriv", "--reuid=65534", "--regid=65534",
                                   "--clear-groups", "--")
        who = "owner root:root, mode 0600; the gateway runs as uid 65534"
    else:
        prefix = ()
        key.chmod(0)
        who = f"mode 0000; the gateway runs as uid {os.getuid()}"
    proc = lab.run("-c", "sites.yaml", prefix=prefix)
    why = "cannot read the key certs/c.example.com.key: permission denied"
    assert re.search(rf"site c\.example\.com \(sites\.yaml:12\) is left out: {why} "
                     rf"\([^)]*{re.escape(who)}\); the other sites are served", proc.output())
    assert served(lab, "a.example.com") and served(lab, "b.example.com")
    assert not served(lab, "c.example.com")
    assert list(left_out(lab)) == ["c.example.com"]
    assert left_out(lab)["c.example.com"].startswith(why)

    key.chmod(0o644)  # fixed: served without a restart, and the log says so
    wait_for(lambda: served(lab, "c.example.com"), timeout=15)
    assert re.search(r"config reload \(certs/c\.example\.com\.key changed\): now serving the "
                     r"new config \(.*, now serving c\.example\.com\)", proc.output())
    assert left_out(lab) == {}
    assert served(lab, "a.example.com")
    assert proc.p.poll() is None


def test_a_garbage_key_and_a_missing_ca_leave_out_their_sites_and_say_why(lab: Lab) -> None:
    (lab.root / "certs" / "c.example.com.key").write_text("not a key\n")
    lab.write(three_sites(lab.backends, b_ca="certs/lab-ca.pem"))
    proc = lab.run("-c", "sites.yaml")
    out = proc.output()
    assert ("site b.example.com (sites.yaml:8) is left out: the CA file (ca:) "
            "certs/lab-ca.pem does not exist;") in out
    assert ("site c.example.com (sites.yaml:12) is left out: the key "
            "certs/c.example.com.key is not a usable PEM private key") in out
    assert "static_resources" not in out
    assert served(lab, "a.example.com")
    assert sorted(left_out(lab)) == ["b.example.com", "c.example.com"]

    shutil.copy(lab.root / "certs" / "backend-ca.pem", lab.root / "certs" / "lab-ca.pem")
    wait_for(lambda: served(lab, "b.example.com"), timeout=15)
    assert list(left_out(lab)) == ["c.example.com"]


def test_validate_names_a_site_left_out_and_the_expansion_leaves_it_out(lab: Lab) -> None:
    lab.write(three_sites(lab.backends, b_ca="certs/lab-ca.pem"))
    r = subprocess.run([*EDGEGW, "--mode", "validate", "-c", "sites.yaml"], cwd=lab.root,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert "site b.example.com (sites.yaml:8) is left out: the CA file (ca:) " \
           "certs/lab-ca.pem does not exist" in r.stderr
    bootstrap = "\n".join(line for line in lab.expand().read_text().splitlines()
                          if not line.startswith("#"))
    assert "b.example.com" not in bootstrap and "c.example.com" in bootstrap


def test_the_shipped_template_names_no_file_that_is_not_there() -> None:
    """A ``ca:`` that does not exist in the template would make every start fail once the
    user's certificates exist (and ``restart: unless-stopped`` loop)."""
    root = Path(__file__).parent.parent
    for line in (root / "sites.yaml").read_text().splitlines():
        field = line.split("#", 1)[0].strip()
        if field.startswith(("ca:", "users_file:")):
            assert (root / field.split(":", 1)[1].strip()).exists(), line


def test_a_site_added_without_a_certificate_is_warned_about_on_reload(lab: Lab) -> None:
    b = lab.backends
    site_a = f"sites:\n  a.example.com: http://{b.a[0]}:{b.a[1]}\n"
    lab.write(site_a)
    proc = lab.run("-c", "sites.yaml")
    both = site_a + f"  d.example.com: http://{b.a[0]}:{b.a[1]}\n"
    lab.write(both)
    warning = ("config reload (sites.yaml changed): site d.example.com (sites.yaml:8): no "
               "certificate for it in certs/ yet")
    wait_for(lambda: warning in proc.output(), timeout=10)
    lab.write(both + "# touched\n")  # loaded again, nothing new to say: said once
    wait_for(lambda: proc.output().count("the config is unchanged") == 2, timeout=10)
    assert proc.output().count(warning) == 1
