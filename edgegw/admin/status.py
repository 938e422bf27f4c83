"""The status page on the admin port (an edgegw addition; Envoy has none).

``/status`` is one self-contained HTML page that polls ``/status.json`` every two seconds and
shows what a person wants to see at a glance: each site with its certificates and days left,
and each cluster with its hosts, their health and request and error rates.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..tls.certs import days_left

if TYPE_CHECKING:
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
            if chain.hcm is not None:
                routes = chain.hcm.routes
                domains = sorted(routes.exact) + sorted("*" + s for s, _ in routes.suffixes) + \
                    sorted(p + "*" for p, _ in routes.prefixes) + (
                        ["*"] if routes.default else [])
                http = f"http.{chain.hcm.stat_prefix}."
                requests = stats.get(http + "downstream_rq_total", 0)
                errors = stats.get(http + "downstream_rq_5xx", 0)
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
                "requests": requests, "errors": errors,
                "kind": "http" if chain.hcm is not None else "tcp",
            })
    cluster_docs = []
    for c in clusters.clusters.values():
        prefix = f"cluster.{c.name}."
        cluster_docs.append({
            "name": c.name, "type": c.cfg.type,
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
 .num{font-variant-numeric:tabular-nums}
</style></head><body>
<header><h1>edgegw</h1><span id="state">loading…</span><span id="uptime"></span></header>
<main>
 <section id="rejected" hidden><h2 class="bad">Certificate files refused</h2><p>The gateway
  serves the previous certificate; it would not start with these files.</p><ul></ul></section>
 <section><h2>Sites</h2><table id="sites"><thead><tr><th>Listener</th><th>Domains</th>
  <th>Certificates</th><th>Requests/s</th><th>5xx/s</th></tr></thead><tbody></tbody></table></section>
 <section><h2>Clusters</h2><table id="clusters"><thead><tr><th>Cluster</th><th>Hosts</th>
  <th>Requests/s</th><th>5xx/s</th><th>Connect failures</th></tr></thead><tbody></tbody></table></section>
</main>
<script>
let last = null;
const esc = s => String(s).replace(/[&<>"]/g, c => ({"&":"&amp;","<":"&lt;",">":"&gt;",'"':"&quot;"}[c]));
let cur = null;
function perSec(now, prevList, key, field) {
  if (!last) return "–";
  const p = prevList.find(x => x[key] === now[key]);
  if (!p) return "–";
  return ((now[field] - p[field]) / Math.max(0.5, cur.time - last.time)).toFixed(1);
}
function days(d) { const cls = d < 7 ? "bad" : d < 21 ? "warn" : "ok";
  return `<span class="${cls}">${d} days</span>`; }
async function refresh() {
  try {
    cur = await (await fetch("status.json", {cache: "no-store"})).json();
  } catch (e) { document.getElementById("state").textContent = "unreachable"; return; }
  document.getElementById("state").innerHTML =
    `state <b>${esc(cur.state)}</b> · version ${esc(cur.version)}`;
  document.getElementById("uptime").textContent = `up ${cur.uptime_s} s`;
  const rej = document.getElementById("rejected");
  rej.hidden = !cur.rejected_certificates.length;
  rej.querySelector("ul").innerHTML = cur.rejected_certificates.map(r =>
    `<li><b>${esc(r.name)}</b> <span class="num">${esc(r.file)}</span>: ${esc(r.problem)}
     <small>(since ${esc(r.since)})</small></li>`).join("");
  document.querySelector("#sites tbody").innerHTML = cur.sites.map(s => `<tr>
    <td><b>${esc(s.listener)}</b><br><span class="num">${esc(s.address)}</span>${s.tls ? " · TLS" : ""}</td>
    <td>${s.domains.map(d => `<span class="pill">${esc(d)}</span>`).join(" ")}</td>
    <td>${s.certificates.map(c => `${c.names.map(esc).join(", ")}: ${days(c.days_left)}
       <small>(until ${esc(c.expires)})</small>`).join("<br>") || "–"}</td>
    <td class="num">${perSec(s, last ? last.sites : [], "id", "requests")}</td>
    <td class="num">${perSec(s, last ? last.sites : [], "id", "errors")}</td>
  </tr>`).join("");
  document.querySelector("#clusters tbody").innerHTML = cur.clusters.map(c => `<tr>
    <td><b>${esc(c.name)}</b><br><small>${esc(c.type)}</small></td>
    <td>${c.hosts.map(h => `<span class="${h.healthy ? "ok" : "bad"}">●</span>
       <span class="num">${esc(h.address)}</span> <small>${h.cx_active} conns,
       ${h.rq_total} req, ${h.rq_error} err</small>`).join("<br>") || '<span class="bad">no hosts</span>'}</td>
    <td class="num">${perSec(c, last ? last.clusters : [], "name", "requests")}</td>
    <td class="num">${perSec(c, last ? last.clusters : [], "name", "errors")}</td>
    <td class="num">${c.connect_failures}</td></tr>`).join("");
  last = cur;
}
refresh(); setInterval(refresh, 2000);
</script></body></html>
"""
