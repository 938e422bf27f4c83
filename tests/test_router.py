"""Virtual host and route matching, redirects and header mutations, as Envoy defines them."""

from __future__ import annotations

from edgegw.config import model as m
from edgegw.http.router.table import (
    Direct,
    Forward,
    HeaderOps,
    Redirect,
    compile_routes,
    redirect_location,
)


def table(vhosts: list[dict], **rc: object):
    return compile_routes(m.RouteConfiguration.model_validate({"virtual_hosts": vhosts, **rc}))


def vh(name: str, *domains: str, routes: list[dict] | None = None) -> dict:
    return {"name": name, "domains": list(domains),
            "routes": routes or [{"match": {"prefix": "/"}, "route": {"cluster": name}}]}


def test_domain_order_exact_suffix_prefix_default() -> None:
    t = table([vh("exact", "www.foo.com"), vh("suffix", "*.foo.com"),
               vh("longsuffix", "*.bar.foo.com"), vh("prefix", "www.*"), vh("any", "*")])

    def name(host: str) -> str | None:
        v = t.virtual_host(host)
        return v.name if v else None

    assert name("www.foo.com") == "exact"
    assert name("WWW.FOO.COM") == "exact"
    assert name("a.foo.com") == "suffix"
    assert name("x.bar.foo.com") == "longsuffix"
    assert name("www.other.org") == "prefix"
    assert name("foo.com") == "any"  # a wildcard never matches the empty string


def test_port_in_host_is_part_of_the_match_unless_ignored() -> None:
    t = table([vh("a", "a.com")])
    assert t.virtual_host("a.com:8443") is None
    t = table([vh("a", "a.com")], ignore_port_in_host_matching=True)
    assert t.virtual_host("a.com:8443") is not None
    assert t.virtual_host("[::1]:80") is None


def test_routes_first_match_with_headers_and_regex() -> None:
    routes = [
        {"match": {"prefix": "/api", "headers": [{"name": "x-canary", "present_match": True}]},
         "route": {"cluster": "canary"}},
        {"match": {"path": "/exact"}, "route": {"cluster": "exact"}},
        {"match": {"safe_regex": {"regex": "/v[0-9]+/.*"}}, "route": {"cluster": "versioned"}},
        {"match": {"prefix": "/API", "case_sensitive": False}, "route": {"cluster": "api"}},
        {"match": {"prefix": "/", "headers": [{"name": "x-env", "string_match": {
            "exact": "dev"}, "invert_match": True}]}, "route": {"cluster": "default"}},
    ]
    t = table([vh("v", "*", routes=routes)])

    def cluster(path: str, headers: list[tuple[bytes, bytes]] = []) -> str | None:  # noqa: B006
        _, r = t.route("h", path, headers)
        return r.action.cluster if r and isinstance(r.action, Forward) else None

    assert cluster("/api/x", [(b"x-canary", b"1")]) == "canary"
    assert cluster("/api/x") == "api"
    assert cluster("/exact") == "exact"
    assert cluster("/exact?q=1") == "exact"
    assert cluster("/exactly") == "default"
    assert cluster("/v2/items") == "versioned"
    assert cluster("/v2/items?page=2") == "versioned"
    assert cluster("/other") == "default"
    assert cluster("/other", [(b"x-env", b"dev")]) is None


def test_redirect_and_direct_actions() -> None:
    routes = [
        {"match": {"prefix": "/old"}, "redirect": {"prefix_rewrite": "/new",
                                                    "response_code": "PERMANENT_REDIRECT"}},
        {"match": {"prefix": "/"}, "redirect": {"https_redirect": True}},
    ]
    t = table([vh("v", "*", routes=routes)])
    _, r = t.route("a.com", "/old/x?y=1", [])
    assert isinstance(r.action, Redirect) and r.action.status == 308
    assert redirect_location(r.action, "http", "a.com", "/old/x?y=1") == "http://a.com/new/x?y=1"
    _, r = t.route("a.com:8080", "/p", [])
    assert redirect_location(r.action, "http", "a.com:8080", "/p") == "https://a.com:8080/p"
    assert redirect_location(r.action, "http", "a.com:80", "/p") == "https://a.com/p"
    t = table([vh("v", "*", routes=[{"match": {"prefix": "/"}, "direct_response": {
        "status": 200, "body": {"inline_string": "ok"}}}])])
    _, r = t.route("x", "/", [])
    assert r.action == Direct(200, b"ok")


def test_header_matchers_see_the_pseudo_headers_as_envoy_s_do() -> None:
    """``:method``, ``:path``, ``:authority`` and ``:scheme`` match like headers (a route for
    GET only must not take a POST)."""
    get = {"name": ":method", "string_match": {"exact": "GET"}}
    routes = [
        {"match": {"prefix": "/", "headers": [get, {"name": ":scheme", "string_match": {
            "exact": "https"}}]}, "route": {"cluster": "get"}},
        {"match": {"prefix": "/", "headers": [{"name": ":path", "string_match": {
            "suffix": "?x=1"}}, {"name": ":authority", "string_match": {"exact": "h"}}]},
         "route": {"cluster": "path"}},
    ]
    t = table([vh("v", "*", routes=routes)])

    def cluster(method: bytes, path: str = "/", scheme: bytes = b"https") -> str | None:
        _, r = t.route("h", path, [], method, scheme)
        return r.action.cluster if r and isinstance(r.action, Forward) else None

    assert cluster(b"GET") == "get"
    assert cluster(b"POST") is None
    assert cluster(b"GET", scheme=b"http") is None
    assert cluster(b"POST", "/a?x=1") == "path"


def test_header_mutations_append_overwrite_add_if_absent_remove() -> None:
    ops = HeaderOps(frozenset({b"x-drop"}), (
        (b"x-a", "1", b"1", "APPEND_IF_EXISTS_OR_ADD", False),
        (b"x-b", "2", b"2", "OVERWRITE_IF_EXISTS_OR_ADD", False),
        (b"x-c", "3", b"3", "ADD_IF_ABSENT", False),
        (b"x-d", "4", b"4", "OVERWRITE_IF_EXISTS", False),
    ))
    h = [(b"x-a", b"0"), (b"x-b", b"0"), (b"x-c", b"0"), (b"x-drop", b"z")]
    ops.apply(h)
    assert h == [(b"x-a", b"0"), (b"x-c", b"0"), (b"x-a", b"1"), (b"x-b", b"2")]


def test_mutation_levels_apply_route_then_vhost_then_route_config() -> None:
    t = table([{"name": "v", "domains": ["*"],
                "request_headers_to_add": [{"header": {"key": "x-l", "value": "vhost"}}],
                "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "c"},
                            "request_headers_to_add": [{"header": {"key": "x-l",
                                                                   "value": "route"}}]}]}],
              request_headers_to_add=[{"header": {"key": "x-l", "value": "global"}}])
    _, r = t.route("h", "/", [])
    h: list[tuple[bytes, bytes]] = []
    for mut in r.mutations:
        mut.request.apply(h)
    assert [v for _, v in h] == [b"route", b"vhost", b"global"]
