"""The admin status page as a person sees it: rendered by headless Chromium, JavaScript run,
and a screenshot checked for content."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest
from PIL import Image

from .conftest import Backends, curl, edge_config, free_port

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is installed by make sysdeps")


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CHROMIUM or "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", *args],
        capture_output=True, text=True, timeout=60)


def test_status_page_shows_sites_certificates_and_clusters(gateway, certs: Path,
                                                          backends: Backends,
                                                          tmp_path: Path) -> None:
    port = free_port()
    g = gateway(edge_config(certs, backends, port))
    for _ in range(3):
        curl(port, certs, "a.example.com", "/status/200")
    curl(port, certs, "a.example.com", "/dead")
    url = f"http://127.0.0.1:{g.admin_port}/status"
    dom = chromium(tmp_path, "--virtual-time-budget=3000", "--dump-dom", url).stdout
    assert "state <b>LIVE</b>" in dom
    assert ">a.example.com<" in dom and ">b.example.com<" in dom
    assert "days</span>" in dom  # certificates with days left, computed by the page
    assert "<b>dead</b>" in dom and "127.0.0.20:" in dom
    shot = tmp_path / "status.png"
    chromium(tmp_path, "--virtual-time-budget=3000", "--window-size=1280,900",
             f"--screenshot={shot}", url)
    deadline = time.monotonic() + 5
    while not shot.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    img = Image.open(shot).convert("RGB")
    assert img.size == (1280, 900)
    colors = img.getcolors(maxcolors=1 << 16) or []
    assert len(colors) > 50, "the screenshot is (nearly) blank"
    header = img.crop((0, 0, 1280, 40)).getcolors(maxcolors=1 << 16) or []
    dark = max(header, key=lambda c: c[0])[1]
    assert sum(dark) < 200, "the dark header bar is missing"
