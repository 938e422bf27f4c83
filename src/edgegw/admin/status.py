"""The status page on the admin port (an edgegw addition; Envoy has none).

``/status`` is one self-contained HTML page (no CDN, no external script: it works offline)
that polls ``/status.json`` and draws what a home lab keeps an eye on: each site's and each
cluster's request rate, error rate and latency over the last hour as small charts, each
certificate's days left with the files on disk that were refused, each host's health
history, and the sites of a sites file left out for their broken files. The history is kept here, where the page is served: every ``SAMPLE_S`` seconds the
cumulative counters are sampled, and the page gets the rates between samples.
"""

from __future__ import annotations

import math
import time
from array import array
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..http.router.table import Direct
from ..tls.certs import days_left

if TYPE_CHECKING:
    from ..http.router.table import VirtualHost
    from ..listener import Listener
    from ..stats import Store
    from ..upstream.cluster import ClusterManager


def status_doc(state: str, started: float, listeners: list[Listener],
               clusters: ClusterManager, store: Store,
               rejected: list[dict[str, Any]]) -> dict[str, Any]:
    """``rejected``: certificate files on disk that were refused (the previous ones are
    served, but the gateway would not start on these)."""
    sites = []
    stats = store.values()
    for lst in listeners:
        for i, chain in enumerate(lst.all_chains):
            certs = []
            if chain.tls is not None:
                for pair, path in chain.tls.pairs():
                    leaf = pair.leaf
                    certs.append({"names": pair.dns_names(), "path": path,
                                  "days_left": days_left(leaf),
                                  "expires": leaf.not_valid_after_utc.strftime("%Y-%m-%d")})
            time_sum, time_count = 0.0, 0
            errors_4xx = upgrades = upgrade_bytes = 0
            if chain.hcm is not None:
                routes = chain.hcm.routes
                domains = sorted(routes.exact) + sorted("*" + s for s, _ in routes.suffixes) + \
                    sorted(p + "*" for p, _ in routes.prefixes) + (
                        ["*"] if routes.default and not _misdirected(routes.default) else [])
                http = f"http.{chain.hcm.stat_prefix}."
                requests = stats.get(http + "downstream_rq_total", 0)
                errors = stats.get(http + "downstream_rq_5xx", 0)
                errors_4xx = stats.get(http + "downstream_rq_4xx", 0)
                upgrades = stats.get(http + "downstream_cx_upgrades_active", 0)
                timing = store.histograms.get(http + "downstream_rq_time")
                tunnels = store.private.get(http + "upgrade_time")
                carried = store.private.get(http + "upgrade_bytes")
                upgrade_bytes = int(carried.sum) if carried else 0
                if timing is not None:  # WebSockets are not latency: their time is apart
                    time_sum = timing.sum - (tunnels.sum if tunnels else 0.0)
                    time_count = timing.count - (tunnels.count if tunnels else 0)
            else:  # a TCP proxy: its server names, connections rather than requests
                assert chain.tcp is not None
                domains = lst.server_names(chain)
                tcp = f"tcp.{chain.tcp.stat_prefix}."
                requests = stats.get(tcp + "downstream_cx_total", 0)
                errors = stats.get(tcp + "downstream_cx_no_route", 0)
            sites.append({
                "id": f"{lst.name}#{i}", "listener": lst.name,
                "address": f"{lst.address[0]}:{lst.address[1]}",
                "tls": chain.tls is not None, "domains": domains, "certificates": certs,
                "requests": requests, "errors": errors, "errors_4xx": errors_4xx,
                "websockets": upgrades, "websocket_bytes": upgrade_bytes,
                "time_sum_ms": time_sum, "time_count": time_count,
                "kind": "http" if chain.hcm is not None else "tcp",
            })
    cluster_docs = []
    for c in clusters.clusters.values():
        prefix = f"cluster.{c.name}."
        timing = store.histograms.get(prefix + "upstream_rq_time")
        cluster_docs.append({
            "name": c.name, "type": c.cfg.type,
            "time_sum_ms": timing.sum if timing else 0.0,
            "time_count": timing.count if timing else 0,
            "requests": stats.get(prefix + "upstream_rq_total", 0),
            "errors": stats.get(prefix + "upstream_rq_5xx", 0),
            "connect_failures": stats.get(prefix + "upstream_cx_connect_fail", 0),
            "hosts": [{"address": h.label, "hostname": h.hostname, "healthy": h.healthy,
                       "cx_active": h.cx_active, "rq_active": h.rq_active,
                       "rq_total": h.rq_total, "rq_error": h.rq_error} for h in c.hosts],
        })
    return {"version": __version__, "state": state,
            "uptime_s": int(time.time() - started), "time": time.time(),
            "sites": sites, "clusters": cluster_docs, "rejected_certificates": rejected}


def _misdirected(vhost: VirtualHost) -> bool:
    """A catch-all that only answers 421 (the sites file's, for names of other sites): not
    one of the site's names."""
    return all(isinstance(r.action, Direct) and r.action.status == 421 for r in vhost.routes)


SAMPLE_S = 5.0
KEEP = 720
"""An hour of samples."""


class History:
    """The last hour of each site's, cluster's and host's counters, as the page draws them:
    per interval between two samples, requests/s, 5xx/s, 4xx/s, mean latency (ms) and
    health. Kept as arrays of numbers, one per series: an hour of a six-site lab's samples as
    dicts of tuples took 3.3 MB, a tenth of that this way."""

    FIELDS = 5
    """requests, errors, time_sum_ms, time_count, errors_4xx: per sample, per series."""

    def __init__(self) -> None:
        self.times = array("d")
        self.counts: dict[tuple[str, str], array[float]] = {}
        """("sites" or "clusters", its id) → FIELDS numbers a sample, NaN while absent."""
        self.health: dict[str, array[int]] = {}
        """"cluster/address" → 1 healthy, 0 not, -1 absent, a sample."""

    def add(self, doc: dict[str, Any]) -> None:
        n = len(self.times)
        self.times.append(doc["time"])
        rows = {**{("sites", x["id"]): x for x in doc["sites"]},
                **{("clusters", x["name"]): x for x in doc["clusters"]}}
        for key in rows.keys() - self.counts.keys():
            self.counts[key] = array("d", _ABSENT * n)
        for key, a in self.counts.items():
            x = rows.get(key)
            a.extend(_ABSENT if x is None else (
                x["requests"], x["errors"], x.get("time_sum_ms", 0.0), x.get("time_count", 0),
                x.get("errors_4xx", 0)))
        hosts = {f"{c['name']}/{h['address']}": h["healthy"]
                 for c in doc["clusters"] for h in c["hosts"]}
        for name in hosts.keys() - self.health.keys():
            self.health[name] = array("b", [-1] * n)
        for name, h in self.health.items():
            healthy = hosts.get(name)
            h.append(-1 if healthy is None else int(bool(healthy)))
        if len(self.times) > KEEP:  # an hour is kept; what was absent all of it is forgotten
            del self.times[0]
            for a in self.counts.values():
                del a[:self.FIELDS]
            for h in self.health.values():
                del h[0]
            self.counts = {k: a for k, a in self.counts.items()
                           if not all(math.isnan(v) for v in a[::self.FIELDS])}
            self.health = {k: h for k, h in self.health.items() if max(h) >= 0}

    def series(self) -> dict[str, Any]:
        f = self.FIELDS
        out: dict[str, Any] = {"t": list(self.times[1:]), "sites": {}, "clusters": {},
                               "hosts": {}}
        for (part, key), a in self.counts.items():
            rps: list[float | None] = []
            err: list[float | None] = []
            err4: list[float | None] = []
            lat: list[float | None] = []
            for i in range(1, len(self.times)):
                pa, pb = a[(i - 1) * f:i * f], a[i * f:(i + 1) * f]
                if math.isnan(pa[0]) or math.isnan(pb[0]):
                    for series in (rps, err, err4, lat):
                        series.append(None)
                    continue
                dt = max(self.times[i] - self.times[i - 1], 1e-3)
                n = pb[3] - pa[3]
                rps.append(round(max(pb[0] - pa[0], 0) / dt, 2))
                err.append(round(max(pb[1] - pa[1], 0) / dt, 2))
                err4.append(round(max(pb[4] - pa[4], 0) / dt, 2))
                lat.append(round((pb[2] - pa[2]) / n, 1) if n > 0 else None)
            out[part][key] = {"rps": rps, "errors": err, "errors_4xx": err4,
                              "latency_ms": lat}
        for name, h in self.health.items():
            out["hosts"][name] = [None if v < 0 else bool(v) for v in h[1:]]
        return out


_ABSENT = array("d", [math.nan] * History.FIELDS)


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>edgegw status</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
 body{font:14px/1.4 system-ui,sans-serif;margin:0;background:#f4f6f8;color:#1d2733}
 header{background:#1d2733;color:#fff;padding:14px 24px;display:flex;gap:24px;align-items:baseline}
 header h1{font-size:20px;margin:0} header span{opacity:.8}
 main{padding:16px 24px;display:grid;gap:20px}
 section{background:#fff;border-radius:8px;box-shadow:0 1px 3px #0002;padding:12px 16px}
 h2{font-size:16px;margin:4px 0 10px} table{border-collapse:collapse;width:100%}
 th,td{text-align:left;padding:6px 8px;border-bottom:1px solid #e3e7eb;vertical-align:top}
 th{font-size:12px;text-transform:uppercase;color:#5b6775}
 .ok{color:#137a2f;font-weight:600}.warn{color:#a86400;font-weight:600}.bad{color:#b3261e;font-weight:600}
 .pill{display:inline-block;background:#e8eef5;border-radius:10px;padding:1px 8px;margin:1px 2px}
 .num{font-variant-numeric:tabular-nums;white-space:nowrap}
 .legend{font-size:12px;color:#5b6775} .legend i{display:inline-block;width:10px;height:3px;margin:0 4px 3px 8px}
 svg.chart{background:#fafbfc;border:1px solid #e3e7eb;border-radius:4px;display:block}
</style></head><body>
<header><h1>edgegw</h1><span id="state">loading…</span><span id="uptime"></span></header>
<main>
 <section id="rejected" hidden><h2 class="bad">Certificate files refused</h2><p>The gateway
  serves the previous certificate; it would not start with these files.</p><ul></ul></section>
 <section><h2>Certificates</h2><table id="certs"><thead><tr><th>Names</th><th>Days left</th>
  <th>Expires</th><th>File</th></tr></thead><tbody></tbody></table>
  <div id="acme" hidden><h2>ACME</h2><table><thead><tr><th>Name</th><th>Expires</th>
  <th>Renews after</th><th>Last problem</th></tr></thead><tbody></tbody></table></div></section>
 <section id="crowdsec" hidden><h2>CrowdSec</h2><table><thead><tr><th>Local API</th><th>State</th>
  <th>Decisions in force</th></tr></thead><tbody></tbody></table></section>
 <section><h2>Sites <span class="legend">last hour:<i style="background:#2563eb"></i>requests/s
  <i style="background:#dc2626"></i>5xx/s<i style="background:#7c3aed"></i>latency ms</span></h2>
  <table id="sites"><thead><tr><th>Site</th><th>Requests/s</th><th>4xx/s</th><th>5xx/s</th>
  <th>Latency</th><th>Traffic</th><th>Latency</th></tr></thead><tbody></tbody></table></section>
 <section><h2>Clusters</h2><table id="clusters"><thead><tr><th>Cluster</th><th>Requests/s</th>
  <th>5xx/s</th><th>Latency</th><th>Traffic</th><th>Hosts and their health (last hour)</th></tr>
  </thead><tbody></tbody></table></section>
</main>
<script>
const esc = s => String(s).replace(/[&<>"]/g, c => ({"&":"&amp;","<":"&lt;",">":"&gt;",'"':"&quot;"}[c]));
const W = 240, H = 60, TOP = 15, BOTTOM = H - 14;  // lines between TOP and BOTTOM, labels outside
function last(xs) { for (let i = xs.length - 1; i >= 0; i--) if (xs[i] !== null) return xs[i]; return null; }
function fmt(v, unit) { return v === null || v === undefined ? "–" : `${v < 10 ? v.toFixed(1) : Math.round(v)}${unit}`; }
function size(b) { return b < 1e6 ? fmt(b / 1e3, " kB") : fmt(b / 1e6, " MB"); }
function path(xs, n, top) {
  let d = "", pen = false;
  xs.forEach((v, i) => {
    if (v === null) { pen = false; return; }
    const x = n > 1 ? (i * (W - 4)) / (n - 1) + 2 : W / 2, y = BOTTOM - (v / top) * (BOTTOM - TOP);
    d += `${pen ? "L" : "M"}${x.toFixed(1)},${y.toFixed(1)}`; pen = true;
  });
  return d;
}
let span = "";
function chart(lines) {
  const n = Math.max(0, ...lines.map(l => l.values.length));
  const top = Math.max(1e-9, ...lines.flatMap(l => l.values.filter(v => v !== null)));
  const body = n < 2 ? `<text x="8" y="${(TOP + BOTTOM) / 2 + 4}" fill="#8a96a3" font-size="11">collecting…</text>` :
    lines.map(l => `<path d="${path(l.values, n, top)}" fill="none" stroke="${l.color}"
      stroke-width="2" stroke-linejoin="round"/>`).join("");
  return `<svg class="chart" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}">${body}
    <text x="${W - 4}" y="11" text-anchor="end" fill="#8a96a3" font-size="10">${n < 2 ? "" : fmt(top, "")}</text>
    <text x="4" y="${H - 2}" fill="#8a96a3" font-size="10">${n < 2 ? "" : span}</text></svg>`;
}
function health(xs) {
  if (!xs || !xs.length) return "";
  const w = Math.max(1, Math.floor(180 / Math.max(xs.length, 1)));
  return `<svg width="${Math.min(180, w * xs.length)}" height="10">${xs.map((v, i) =>
    `<rect x="${i * w}" y="0" width="${w}" height="10" fill="${v === null ? "#d0d5db" : v ? "#16a34a" : "#dc2626"}"/>`
  ).join("")}</svg>`;
}
function days(d) { const cls = d < 7 ? "bad" : d < 21 ? "warn" : "ok";
  return `<span class="${cls}">${d} days</span>`; }
async function refresh() {
  let cur;
  try {
    cur = await (await fetch("status.json", {cache: "no-store"})).json();
  } catch (e) { document.getElementById("state").textContent = "unreachable"; return; }
  const hist = cur.history || {t: [], sites: {}, clusters: {}, hosts: {}};
  const secs = hist.t.length ? hist.t[hist.t.length - 1] - hist.t[0] + cur.sample_s : 0;
  span = secs >= 120 ? `last ${Math.round(secs / 60)} min` : `last ${Math.round(secs)} s`;
  document.getElementById("state").innerHTML =
    `state <b>${esc(cur.state)}</b> · version ${esc(cur.version)}`;
  document.getElementById("uptime").textContent = `up ${cur.uptime_s} s`;
  const rej = document.getElementById("rejected");
  rej.hidden = !cur.rejected_certificates.length;
  rej.querySelector("ul").innerHTML = cur.rejected_certificates.map(r =>
    `<li><b>${esc(r.name)}</b> <span class="num">${esc(r.file)}</span>: ${esc(r.problem)}
     <small>(since ${esc(r.since)})</small></li>`).join("");
  const acme = cur.acme || [];
  document.getElementById("acme").hidden = !acme.length;
  document.querySelector("#acme tbody").innerHTML = acme.map(a => `<tr>
    <td><span class="pill">${esc(a.name)}</span>${a.managed ? "" : " <small>(not written by edgegw)</small>"}</td>
    <td class="num">${esc(a.expires || "not yet")}</td><td class="num">${esc(a.renews_at)}
      <small>${a.renewal_from === "ari" ? "(the CA's window)" : ""}</small></td>
    <td>${a.last_error ? `<span class="bad">${esc(a.last_error)}</span> <small>at
      ${esc(a.last_error_at)}, ${a.failures} failure(s), next try ${esc(a.next_attempt)}</small>`
      : '<span class="ok">none</span>'}</td></tr>`).join("");
  const cs = cur.crowdsec || [];
  document.getElementById("crowdsec").hidden = !cs.length;
  document.querySelector("#crowdsec tbody").innerHTML = cs.map(c => `<tr>
    <td class="num">${esc(c.url)}</td><td>${c.up ? '<span class="ok">following</span>'
      : `<span class="bad">unreachable</span> <small>${esc(c.last_error || "not asked yet")}:
      the last decisions stay in force</small>`}</td><td class="num">${c.decisions}</td></tr>`
  ).join("");
  const certs = new Map();
  cur.sites.forEach(s => s.certificates.forEach(c => certs.set(c.path + c.names, c)));
  document.querySelector("#certs tbody").innerHTML = [...certs.values()].sort(
    (a, b) => a.days_left - b.days_left).map(c => `<tr>
    <td>${c.names.map(n => `<span class="pill">${esc(n)}</span>`).join(" ")}</td>
    <td>${days(c.days_left)}</td><td class="num">${esc(c.expires)}</td>
    <td class="num">${esc(c.path)}</td></tr>`).join("") || `<tr><td colspan="4">none</td></tr>`;
  document.querySelector("#sites tbody").innerHTML = cur.sites.map(s => {
    const h = hist.sites[s.id] || {rps: [], errors: [], errors_4xx: [], latency_ms: []};
    return `<tr>
    <td>${s.domains.map(d => `<span class="pill">${esc(d)}</span>`).join(" ")}<br>
      <small>${esc(s.listener)} <span class="num">${esc(s.address)}</span>${s.tls ? " · TLS" : ""}
      ${s.kind === "tcp" ? " · passthrough" : ""}${s.websockets ? ` · ${s.websockets} open
      WebSocket(s)` : ""}${s.websocket_bytes ? ` · ${size(s.websocket_bytes)} by closed
      WebSockets` : ""}</small></td>
    <td class="num">${fmt(last(h.rps), "")}</td><td class="num">${fmt(last(h.errors_4xx), "")}</td>
    <td class="num">${fmt(last(h.errors), "")}</td>
    <td class="num">${fmt(last(h.latency_ms), " ms")}</td>
    <td>${chart([{values: h.rps, color: "#2563eb"}, {values: h.errors, color: "#dc2626"}])}</td>
    <td>${chart([{values: h.latency_ms, color: "#7c3aed"}])}</td></tr>`;}).join("") +
    (cur.left_out || []).map(s => `<tr><td><span class="pill">${esc(s.site)}</span><br>
      <small class="num">${esc(s.where)}</small></td><td colspan="6"><span class="bad">left
      out: ${esc(s.why)}</span><br><small>The other sites are served; this one is once its
      files are fixed.</small></td></tr>`).join("");
  document.querySelector("#clusters tbody").innerHTML = cur.clusters.map(c => {
    const h = hist.clusters[c.name] || {rps: [], errors: [], latency_ms: []};
    return `<tr>
    <td><b>${esc(c.name)}</b><br><small>${esc(c.type)} · ${c.connect_failures} connect failures</small></td>
    <td class="num">${fmt(last(h.rps), "")}</td><td class="num">${fmt(last(h.errors), "")}</td>
    <td class="num">${fmt(last(h.latency_ms), " ms")}</td>
    <td>${chart([{values: h.rps, color: "#2563eb"}, {values: h.errors, color: "#dc2626"}])}</td>
    <td>${c.hosts.map(x => `<div><span class="${x.healthy ? "ok" : "bad"}">●</span>
       <span class="num">${esc(x.address)}</span> <small>${x.cx_active} conns, ${x.rq_total} req,
       ${x.rq_error} err</small><br>${health(hist.hosts[c.name + "/" + x.address])}</div>`).join("")
       || '<span class="bad">no hosts</span>'}</td></tr>`;}).join("");
}
refresh(); setInterval(refresh, 2000);
</script></body></html>
"""
