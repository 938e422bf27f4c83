"""The store in Envoy's admin shapes: /stats text, ?format=json and Prometheus.

Prometheus names come from Envoy's default tag extractors, so existing Envoy dashboards work:
``cluster.x.upstream_rq_503`` becomes
``envoy_cluster_upstream_rq{envoy_response_code="503",envoy_cluster_name="x"}``.
"""

from __future__ import annotations

import json
import math
import re

from . import BUCKETS, Histogram, Store

QUANTILES = (0, 25, 50, 75, 90, 95, 99, 99.5, 99.9, 100)

# (regex, tag): the first group is removed from the name, the second is the tag's value.
_EXTRACTORS = [
    (re.compile(r"_rq(_(\d{3}))$"), "envoy_response_code"),
    (re.compile(r"_rq_((\d))xx$"), "envoy_response_code_class"),
    (re.compile(r"^cluster\.((.+?)\.)"), "envoy_cluster_name"),
    (re.compile(r"^http\.((.*?)\.)"), "envoy_http_conn_manager_prefix"),
    (re.compile(r"^listener\.(((?:[_.\d]*|[_\[\]aAbBcCdDeEfF\d]*))\.)"), "envoy_listener_address"),
    (re.compile(r"^sds\.((.+?)\.)"), "envoy_sds_name"),
]
_UNSAFE = re.compile(r"[^a-zA-Z0-9_]")


def _keep(name: str, value: float, rx: re.Pattern[str] | None, usedonly: bool) -> bool:
    if rx is not None and not rx.search(name):
        return False
    return not usedonly or value != 0


def _fmt(v: float | None) -> str:
    if v is None:
        return "nan"
    return f"{v:g}"


def text(store: Store, filter_re: str | None = None, usedonly: bool = False) -> str:
    rx = re.compile(filter_re) if filter_re else None
    lines = [f"{n}: {v}" for n, v in sorted(store.values().items()) if _keep(n, v, rx, usedonly)]
    for name, h in sorted(store.histograms.items()):
        if not _keep(name, h.count, rx, usedonly):
            continue
        if not h.count:
            lines.append(f"{name}: No recorded values")
            continue
        qs = " ".join(f"P{q:g}(nan,{_fmt(h.quantile(q / 100))})" for q in QUANTILES)
        lines.append(f"{name}: {qs}")
    return "".join(line + "\n" for line in lines)


def as_json(store: Store, filter_re: str | None = None, usedonly: bool = False) -> str:
    rx = re.compile(filter_re) if filter_re else None
    stats: list[dict[str, object]] = [{"name": n, "value": v}
                                      for n, v in sorted(store.values().items())
                                      if _keep(n, v, rx, usedonly)]
    hists = [(n, h) for n, h in sorted(store.histograms.items())
             if _keep(n, h.count, rx, usedonly)]
    if hists:
        stats.append({"histograms": {
            "supported_quantiles": list(QUANTILES),
            "computed_quantiles": [{"name": n, "values": [
                {"cumulative": h.quantile(q / 100), "interval": None} for q in QUANTILES]}
                for n, h in hists]}})
    return json.dumps({"stats": stats})


def tags(name: str) -> tuple[str, list[tuple[str, str]]]:
    """Envoy's tag extraction: the tag-free name and the tags, in extraction order."""
    found = []
    for rx, tag in _EXTRACTORS:
        m = rx.search(name)
        if m:
            found.append((tag, m.group(2)))
            name = name[: m.start(1)] + name[m.end(1):]
    return "envoy_" + _UNSAFE.sub("_", name), found


def _labels(pairs: list[tuple[str, str]], extra: str = "") -> str:
    body = ",".join(f'{k}="{v}"' for k, v in pairs)
    if extra:
        body = f"{body},{extra}" if body else extra
    return "{" + body + "}"


def prometheus(store: Store, filter_re: str | None = None, usedonly: bool = False) -> str:
    rx = re.compile(filter_re) if filter_re else None
    families: dict[str, tuple[str, list[str]]] = {}

    def add(kind: str, full: str, lines: list[str]) -> None:
        families.setdefault(full, (kind, []))[1].extend(lines)

    for kind, items in (("counter", store.counters.items()), ("gauge", store.gauges.items())):
        for n, stat in items:
            if _keep(n, stat.value, rx, usedonly):
                full, t = tags(n)
                add(kind, full, [f"{full}{_labels(t)} {stat.value}"])
    for n, h in store.histograms.items():
        if _keep(n, h.count, rx, usedonly):
            full, t = tags(n)
            add("histogram", full, _histogram_lines(full, t, h))
    out = []
    for full in sorted(families):
        kind, lines = families[full]
        out.append(f"# TYPE {full} {kind}")
        out.extend(sorted(lines) if kind != "histogram" else lines)
    return "\n".join(out) + "\n"


def _bound(b: float) -> str:
    return str(int(b)) if b == int(b) else str(b)


def _histogram_lines(full: str, t: list[tuple[str, str]], h: Histogram) -> list[str]:
    lines = []
    for bound, c in zip([_bound(b) for b in BUCKETS] + ["+Inf"], h.cumulative() + [h.count],
                        strict=True):
        le = 'le="' + bound + '"'
        lines.append(f"{full}_bucket{_labels(t, le)} {c}")
    total = h.sum if math.isfinite(h.sum) else 0
    lines.append(f"{full}_sum{_labels(t)} {total:g}")
    lines.append(f"{full}_count{_labels(t)} {h.count}")
    return lines
