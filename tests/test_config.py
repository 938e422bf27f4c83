"""Loading bootstraps: the supported subset, merge rules, and errors that name path and line."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgegw.config import ConfigError, load_bootstrap
from edgegw.config.source import merge

from .conftest import EXAMPLES, PACKAGE, TEST_CONFIGS

HCM_T = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"


def problems(tmp_path: Path, text: str) -> list[str]:
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_bootstrap(str(f))
    return e.value.problems


MINIMAL = f"""
static_resources:
  listeners:
  - name: l
    address: {{socket_address: {{address: 127.0.0.1, port_value: 10000}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": {HCM_T}
          stat_prefix: p
          http_filters: [{{name: envoy.filters.http.router}}]
          route_config:
            virtual_hosts:
            - name: v
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route: {{cluster: c, timeout: 1.5s}}
  clusters:
  - name: c
    connect_timeout: 0.25s
    load_assignment:
      cluster_name: c
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.20, port_value: 80}}}}}}}}]}}]
"""


def test_minimal_config_with_bare_router_loads(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(MINIMAL)
    boot = load_bootstrap(str(f))
    route = boot.static_resources.listeners[0].filter_chains[0].filters[0].typed_config \
        .route_config.virtual_hosts[0].routes[0].route
    assert route is not None and route.timeout == 1.5
    assert boot.static_resources.clusters[0].connect_timeout == 0.25


@pytest.mark.parametrize("path", [TEST_CONFIGS / "tutorial-simple.yaml",
                                  TEST_CONFIGS / "tutorial-timeout.yaml",
                                  TEST_CONFIGS / "tutorial-retry.yaml",
                                  TEST_CONFIGS / "tutorial-docker.yaml",
                                  EXAMPLES / "front-proxy.yaml"], ids=lambda p: p.name)
def test_tutorial_configs_load(path: Path) -> None:
    load_bootstrap(str(path))


def test_unsupported_field_in_a_tutorial_config_names_the_path_and_line(tmp_path: Path) -> None:
    f = tmp_path / "hedged.yaml"
    text = (TEST_CONFIGS / "tutorial-retry.yaml").read_text()
    line = text.splitlines().index("                  retry_policy:") + 1
    f.write_text(text.replace("retry_policy:", "hedge_policy:"))
    with pytest.raises(ConfigError) as e:
        load_bootstrap(str(f))
    [p] = e.value.problems
    assert "routes[0].route.hedge_policy" in p and "not supported by edgegw" in p
    assert f"hedged.yaml:{line}" in p


def test_xds_bootstrap_loads_and_what_it_lacks_is_named(tmp_path: Path) -> None:
    """A control plane's bootstrap loads; AGGREGATED_GRPC (Envoy's deprecated name) is refused
    at its line; a control plane's cluster must be static and speak HTTP/2 for gRPC."""
    boot = load_bootstrap(str(TEST_CONFIGS / "xds-bootstrap.yaml"))
    assert boot.dynamic_resources and boot.dynamic_resources.lds_config
    text = (TEST_CONFIGS / "xds-bootstrap.yaml").read_text()
    f = tmp_path / "agg.yaml"
    f.write_text(text.replace("api_type: GRPC", "api_type: AGGREGATED_GRPC", 1))
    with pytest.raises(ConfigError) as e:
        load_bootstrap(str(f))
    [p] = e.value.problems
    line = text.splitlines().index("      api_type: GRPC") + 1
    assert p.startswith("dynamic_resources.lds_config.api_config_source.api_type: "
                        "'AGGREGATED_GRPC' is not supported by edgegw here (supported: 'GRPC', "
                        "'DELTA_GRPC' or 'REST')")
    assert p.endswith(f"agg.yaml:{line})")
    f.write_text(text.replace("          http2_protocol_options: {}\n", ""))
    with pytest.raises(ConfigError) as e:
        load_bootstrap(str(f))
    assert all("must speak HTTP/2 for gRPC" in p for p in e.value.problems)
    f.write_text(text.replace("cluster_name: control_plane }", "cluster_name: nope }"))
    with pytest.raises(ConfigError) as e:
        load_bootstrap(str(f))
    assert "must have a statically defined non-EDS cluster: 'nope'" in e.value.problems[0]


def test_unknown_field_is_an_error_with_line(tmp_path: Path) -> None:
    text = MINIMAL.replace("connect_timeout: 0.25s", "connect_timeout: 0.25s\n    bogus_field: 1")
    [p] = problems(tmp_path, text)
    assert p.startswith("static_resources.clusters[0].bogus_field: field 'bogus_field' is not "
                        "supported by edgegw")
    line = text.splitlines().index("    bogus_field: 1") + 1
    assert p.endswith(f"c.yaml:{line})")


def test_every_error_is_reported(tmp_path: Path) -> None:
    text = MINIMAL.replace("cluster: c,", "cluster: nope,").replace("0.25s", "5")
    ps = problems(tmp_path, text)
    assert any("connect_timeout" in p and "duration" in p for p in ps)
    ps = problems(tmp_path, MINIMAL.replace("cluster: c,", "cluster: nope,"))
    assert any("unknown cluster 'nope'" in p and "route.cluster" in p for p in ps)


def test_a_field_known_elsewhere_is_not_suggested_to_itself(tmp_path: Path) -> None:
    """Envoy Gateway puts access_log on listeners; edgegw has it on the connection manager
    only. "did you mean 'access_log'?" said nothing."""
    [p] = problems(tmp_path, MINIMAL.replace("  - name: l\n", "  - name: l\n    access_log: []\n"))
    assert "listeners[0].access_log" in p
    assert "is not supported by edgegw on this message (only on others)" in p
    assert "did you mean" not in p


def test_unsupported_enum_value(tmp_path: Path) -> None:
    [p] = problems(tmp_path, MINIMAL.replace("  - name: c\n", "  - name: c\n    type: ORIGINAL_DST\n"))
    assert "clusters[0].type" in p and "'ORIGINAL_DST' is not supported by edgegw" in p


def test_duplicate_domains_are_an_error(tmp_path: Path) -> None:
    text = MINIMAL.replace("""              - match: {prefix: "/"}
                route: {cluster: c, timeout: 1.5s}""", """              - match: {prefix: "/"}
                route: {cluster: c, timeout: 1.5s}
            - name: w
              domains: ["a.com", "*"]""")
    [p] = problems(tmp_path, text)
    assert "virtual_hosts[1].domains[1]" in p and "unique" in p


def test_unknown_typed_config_type(tmp_path: Path) -> None:
    text = MINIMAL.replace("[{name: envoy.filters.http.router}]",
                           "[{name: envoy.filters.http.cors, typed_config: "
                           "{'@type': type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors}}"
                           ", {name: envoy.filters.http.router}]")
    [p] = problems(tmp_path, text)
    assert "http_filters[0].typed_config" in p and "is not supported by edgegw" in p


def test_router_must_be_last(tmp_path: Path) -> None:
    fault = ("{name: envoy.filters.http.fault, typed_config: {'@type': type.googleapis.com/"
             "envoy.extensions.filters.http.fault.v3.HTTPFault}}")
    [p] = problems(tmp_path, MINIMAL.replace("[{name: envoy.filters.http.router}]",
                                             f"[{fault}]"))
    assert "http_filters[0].name" in p and "must be envoy.filters.http.router" in p


def test_key_that_does_not_match_certificate(tmp_path: Path, certs: Path) -> None:
    text = MINIMAL.replace("    filter_chains:\n    - filters:", f"""    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            tls_certificates:
            - certificate_chain: {{filename: {certs}/a.example.com.pem}}
              private_key: {{filename: {certs}/b.example.com.key}}
      filters:""")
    [p] = problems(tmp_path, text)
    assert "tls_certificates[0]" in p and "does not match the certificate" in p
    [p] = problems(tmp_path, text.replace("b.example.com.key", "missing.key"))
    assert "unable to read file" in p and "missing.key" in p


def test_camel_case_json_names_are_accepted(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(MINIMAL.replace("stat_prefix", "statPrefix").replace("connect_timeout",
                                                                      "connectTimeout"))
    load_bootstrap(str(f))


def test_merge_follows_protobuf_merge_from() -> None:
    base = {"admin": {"address": {"socket_address": {"address": "0.0.0.0", "port_value": 9901}}},
            "static_resources": {"clusters": [{"name": "a"}]}}
    over = {"admin": {"address": {"socket_address": {"port_value": 9902}}},
            "static_resources": {"clusters": [{"name": "b"}]}}
    out = merge(base, over)
    assert out["admin"]["address"]["socket_address"] == {"address": "0.0.0.0", "port_value": 9902}
    assert [c["name"] for c in out["static_resources"]["clusters"]] == ["a", "b"]


def test_config_yaml_merges_over_file() -> None:
    boot = load_bootstrap(str(EXAMPLES / "front-proxy.yaml"),
                          (EXAMPLES / "admin-override.yaml").read_text())
    assert boot.admin.address is not None
    assert boot.admin.address.socket_address.address == "127.0.0.1"
    assert boot.admin.address.socket_address.port_value == 9902
    assert boot.static_resources.clusters[0].name == "backend_b"


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgegw", *args], capture_output=True,
                          text=True, timeout=30)


def test_validate_mode_prints_ok() -> None:
    r = run_cli("--mode", "validate", "-c", str(EXAMPLES / "front-proxy.yaml"))
    assert r.returncode == 0
    assert r.stdout == f"configuration '{EXAMPLES / 'front-proxy.yaml'}' OK\n"


def test_validate_mode_fails_with_every_error(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(MINIMAL.replace("connect_timeout: 0.25s", "connect_timeout: 5").replace(
        "name: v", "name: v\n              bogus: 1"))
    r = run_cli("--mode", "validate", "-c", str(f))
    assert r.returncode == 1
    assert "connect_timeout: '5' is not a duration" in r.stderr and "field 'bogus'" in r.stderr
    assert "[critical][main]" in r.stderr
    f.write_text(MINIMAL.replace("cluster: c,", "cluster: nope,").replace(
        "stat_prefix: p", "stat_prefix: p\n          access_log: [{typed_config: {'@type': "
        "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog, "
        "path: /nonexistent/dir/log}}]"))
    r = run_cli("--mode", "validate", "-c", str(f))
    assert r.returncode == 1
    assert "unknown cluster 'nope'" in r.stderr and "/nonexistent/dir" in r.stderr


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    [p] = problems(tmp_path, "static_resources:\n  listeners: [\n")
    assert "unable to parse" in p and "c.yaml:" in p


def test_version_and_log_levels() -> None:
    assert run_cli("--version").stdout.startswith("edgegw version: ")
    r = run_cli("--component-log-level", "nosuch:debug", "--mode", "validate", "-c", "x")
    assert r.returncode == 1 and "unknown logger component 'nosuch'" in r.stderr


def test_log_path_and_envoy_log_line_shape(tmp_path: Path, certs: Path) -> None:
    from .conftest import free_port, wait_port

    port, admin = free_port(), free_port()
    cfg = tmp_path / "c.yaml"
    cfg.write_text(MINIMAL.replace("port_value: 10000", f"port_value: {port}").replace(
        "static_resources:", f"admin: {{address: {{socket_address: {{address: 127.0.0.1, "
        f"port_value: {admin}}}}}}}\nstatic_resources:", 1))
    log = tmp_path / "gw.log"
    p = subprocess.Popen([sys.executable, "-m", "edgegw", "-c", str(cfg), "--log-path", str(log),
                          "-l", "warning", "--component-log-level", "main:info"],
                         stderr=subprocess.PIPE, text=True)
    try:
        wait_port("127.0.0.1", port)
        deadline = time.monotonic() + 10  # the port opens just before the line is written
        while "all dependencies initialized" not in log.read_text():
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        p.terminate()
        _, err = p.communicate(timeout=10)
    lines = log.read_text().splitlines()
    assert err == ""
    pattern = r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}\]\[\d+\]\[info\]\[main\] \[edgegw/[\w/]+\.py:\d+\] "
    assert lines and all(__import__("re").match(pattern, ln) for ln in lines), lines
    assert any("all dependencies initialized" in ln for ln in lines)
    assert not any("[admin]" in ln for ln in lines)  # admin stays at warning


def test_a_log_line_from_compiled_code_names_no_event_loop_line() -> None:
    """Compiled modules have no Python frame: the nearest is asyncio's, and a line such as
    ``[runners.py:118]`` sent readers to the event loop. Such a line says compiled instead."""
    import logging

    from edgegw.log import EnvoyFormatter

    def line(name: str, pathname: str) -> str:
        return EnvoyFormatter().format(logging.LogRecord(
            name, logging.WARNING, pathname, 118, "cannot connect", None, None))

    assert line("edgegw.upstream", "/usr/lib/python3.11/asyncio/runners.py").endswith(
        "[warning][upstream] [edgegw (compiled)] cannot connect")
    assert line("edgegw.upstream", "/x/src/edgegw/upstream/pool.py").endswith(
        "[upstream] [edgegw/upstream/pool.py:118] cannot connect")
    assert line("asyncio", "/usr/lib/python3.11/asyncio/runners.py").endswith(
        "[main] [runners.py:118] cannot connect")


def test_admin_bound_beyond_loopback_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    """Checked without binding: tests never listen beyond loopback."""
    import logging

    from edgegw.admin import Admin

    root = logging.getLogger("edgegw")
    saved, root.propagate = root.propagate, True
    try:
        with caplog.at_level(logging.WARNING, logger="edgegw.admin"):
            Admin(backend=None, host="0.0.0.0", port=9901, access_log_path="")  # type: ignore[arg-type]
            Admin(backend=None, host="127.0.0.1", port=9901, access_log_path="")  # type: ignore[arg-type]
    finally:
        root.propagate = saved
    warnings = [r.getMessage() for r in caplog.records if r.name == "edgegw.admin"]
    assert len(warnings) == 1
    assert "0.0.0.0:9901" in warnings[0] and "stop the server" in warnings[0]


def test_weighted_clusters_are_checked(tmp_path: Path) -> None:
    wc = "weighted_clusters: {clusters: [{name: c, weight: 1}, {name: nope, weight: 1}]}"
    ps = problems(tmp_path, MINIMAL.replace("route: {cluster: c, timeout: 1.5s}",
                                            "route: {" + wc + "}"))
    assert any("weighted_clusters.clusters[1].name" in p and "unknown cluster 'nope'" in p
               for p in ps)
    ps = problems(tmp_path, MINIMAL.replace("route: {cluster: c, timeout: 1.5s}",
                                            "route: {cluster: c, " + wc + "}"))
    assert any("only one of cluster, weighted_clusters" in p for p in ps)


def _imports(path: Path, module: str) -> set[str]:
    """The package's modules ``module`` imports, those only type checking sees included."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[:len(package.split(".")) - node.level + 1] \
                if node.level else []
            name = ".".join(base + ([node.module] if node.module else []))
            if name.split(".")[0] == "edgegw":
                for alias in node.names:  # (a name imported from a package may be a module)
                    sub = PACKAGE.parent / f"{name}.{alias.name}".replace(".", "/")
                    is_module = sub.with_suffix(".py").exists() or sub.is_dir()
                    found.add(f"{name}.{alias.name}" if is_module else name)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "edgegw"}
    return found - {module}


def test_no_module_imports_itself_through_others() -> None:
    """A newcomer can open any module first, and read each module before those that use it:
    the import graph, type-only imports included, has no circle."""
    graph = {}
    for p in PACKAGE.rglob("*.py"):
        module = p.relative_to(PACKAGE.parent).with_suffix("").as_posix().replace("/", ".")
        module = module.removesuffix(".__init__")
        graph[module] = _imports(p, module)
    state: dict[str, int] = {}  # 1: on the path being walked, 2: done
    circles = []

    def walk(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                circles.append(path[path.index(d):] + [d])
            elif d in graph and d not in state:
                walk(d, [*path, d])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            walk(m, [m])
    assert not circles, circles
    assert graph["edgegw.upstream.pool"] >= {"edgegw.upstream.connect"}  # (the walk sees edges)
    from edgegw.http.codec import http2

    unbuilt = {"edgegw.http.codec.http2.native"} if http2.native is None else set()
    for m in sorted(graph):  # and each imports (in one interpreter: no order can matter now)
        if not m.endswith("__main__") and m not in unbuilt:  # (the tree has no binding)
            importlib.import_module(m)


def test_log_components_are_exactly_those_the_code_logs_under() -> None:
    import re

    from edgegw import log

    used = {name for p in (PACKAGE).rglob("*.py")
            for name in re.findall(r'log\.get\("(\w+)"\)', p.read_text())}
    assert used == set(log.COMPONENTS)
    assert log.parse_component_levels("hc:debug,config:trace")
    with pytest.raises(ValueError):
        log.parse_component_levels("filter:debug")


def test_every_control_plane_source_is_known_sds_too() -> None:
    """A secret from ADS alone (the listeners static) is a control plane's source: it needs
    ads_config, and with it the gateway opens the stream for it."""
    import json

    from edgegw.config.checks import config_sources

    cfg = {"node": {"id": "n", "cluster": "c"}, "static_resources": {
        "listeners": [{"name": "tls", "address": {"socket_address": {
            "address": "127.0.0.1", "port_value": 8443}},
            "filter_chains": [{"transport_socket": {
                "name": "envoy.transport_sockets.tls", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."
                             "DownstreamTlsContext",
                    "common_tls_context": {"tls_certificate_sds_secret_configs": [
                        {"name": "site", "sds_config": {"ads": {}}}]}}},
                "filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network."
                             "tcp_proxy.v3.TcpProxy", "stat_prefix": "t", "cluster": "c"}}]}]}],
        "clusters": [{"name": "c", "type": "STATIC", "connect_timeout": "1s",
                      "typed_extension_protocol_options": {
                          "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                              "@type": "type.googleapis.com/envoy.extensions.upstreams.http."
                                       "v3.HttpProtocolOptions",
                              "explicit_http_config": {"http2_protocol_options": {}}}},
                      "load_assignment": {"cluster_name": "c", "endpoints": [{"lb_endpoints": [
                          {"endpoint": {"address": {"socket_address": {
                              "address": "127.0.0.2", "port_value": 18000}}}}]}]}}]}}
    with pytest.raises(ConfigError, match="ads: {} needs dynamic_resources.ads_config"):
        load_bootstrap(None, json.dumps(cfg))
    cfg["dynamic_resources"] = {"ads_config": {
        "api_type": "GRPC", "grpc_services": [{"envoy_grpc": {"cluster_name": "c"}}]}}
    boot = load_bootstrap(None, json.dumps(cfg))
    assert [p for p, s in config_sources(boot) if s.xds] == [("secret", "site", "sds_config")]
